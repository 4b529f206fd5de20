//! `engine-sims KIND...`: runs one engine simulator per KIND on
//! `127.0.0.1:0` and prints where each listens, for driving the `gateway`
//! binary against every engine kind without GPUs (see `--help`).

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use gateway_sims::{sglang, triton, vllm};
use tokio_util::sync::CancellationToken;

const HELP: &str = "\
engine-sims: wire-faithful engine simulators on loopback, for the gateway

USAGE:
    engine-sims [--nim-api-key KEY] [--ignore-stdin] [--slots N]
                [--prefill-ms MS] [--token-ms MS] [--tokens N] KIND...
    engine-sims --help

KIND is one of: vllm, sglang, trtllm, triton, nim, dynamo, openai (a kind
may repeat). One simulator per KIND starts on 127.0.0.1 with a free port and
the simulators' default options: 4 slots, 5 ms prefill, 2 ms per token,
16 tokens per completion unless max_tokens is smaller (then it ends by
`length`, else by `stop`), token texts \"Hel\" \"lo\" \" wor\" \"ld\" \",\" \" é\"
\"🙂\" \" 日本\" \" sea\" \"!\" repeated. Only streamed requests are served (the
gateway's adapters always stream).

OPTIONS (each applies to every KIND):
    --slots N         requests running at once (1..=4096; default 4)
    --prefill-ms MS   prefill time of each request (0..=60000, decimals
                      allowed; default 5)
    --token-ms MS     time between two tokens (likewise; default 2)
    --tokens N        tokens per completion when max_tokens allows
                      (1..=100000; default 16)
`--prefill-ms 0 --token-ms 0` is the zero-delay engine: no timer at all, a
completion is written as fast as the socket takes it (for load tests).

Served model names: `m` for every kind but triton, whose model is `ensemble`.
  vllm    vLLM's OpenAI routes, /health, /metrics
  openai  the same server, used as a generic OpenAI-compatible one
  trtllm  trtllm-serve (unknown fields refused, /prometheus/metrics)
  dynamo  the Dynamo frontend (2026 wire, 529 on overload)
  nim     NIM: /v1/health/ready, /v1/metrics; the /v1 inference routes want
          `Authorization: Bearer KEY` (KEY from --nim-api-key, default
          nvapi-engine-sims)
  sglang  SGLang: native /generate, /v1/chat/completions, /abort_request
  triton  Triton with a TensorRT-LLM ensemble: generate_stream, and a
          separate metrics listener

OUTPUT (stdout), one line per KIND in the order given, then `ready`:
    KIND http://127.0.0.1:PORT
    triton http://127.0.0.1:PORT http://127.0.0.1:METRICS_PORT/metrics
    ready

It runs until SIGTERM or SIGINT, or until its stdin closes (so a parent that
dies takes it along); with --ignore-stdin only a signal stops it. Exit code 0
after a stop, 2 for a bad command line, 1 if a simulator cannot start.
";

/// The default NIM API key.
const DEFAULT_NIM_KEY: &str = "nvapi-engine-sims";

/// The engine kinds, as the config file names them.
const KINDS: [&str; 7] = [
    "vllm", "sglang", "trtllm", "triton", "nim", "dynamo", "openai",
];

/// Most slots `--slots` takes.
const MAX_SLOTS: usize = 4096;
/// Longest `--prefill-ms` or `--token-ms`.
const MAX_DELAY_MS: f64 = 60_000.0;
/// Most `--tokens`.
const MAX_TOKENS: u32 = 100_000;

/// What the command line asked for.
#[derive(Debug)]
struct Args {
    kinds: Vec<String>,
    nim_api_key: String,
    ignore_stdin: bool,
    engine: EngineKnobs,
}

/// The engine model's knobs the command line may set (`None`: the
/// simulator's default), for every kind alike.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct EngineKnobs {
    slots: Option<usize>,
    prefill: Option<Duration>,
    token_interval: Option<Duration>,
    natural_tokens: Option<u32>,
}

/// Sets `$opts`' engine-model fields from `$knobs` where given (the three
/// simulators' options name them alike).
macro_rules! apply_knobs {
    ($knobs:expr, $opts:expr) => {{
        let knobs: &EngineKnobs = $knobs;
        let mut opts = $opts;
        if let Some(slots) = knobs.slots {
            opts.slots = slots;
        }
        if let Some(prefill) = knobs.prefill {
            opts.prefill = prefill;
        }
        if let Some(interval) = knobs.token_interval {
            opts.token_interval = interval;
        }
        if let Some(tokens) = knobs.natural_tokens {
            opts.natural_tokens = tokens;
        }
        opts
    }};
}

/// `value` of `flag` as a whole number in `1..=max`.
fn count_arg(flag: &str, value: Option<&str>, max: u64) -> Result<u64, ArgsError> {
    value
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ArgsError::Usage(format!("{flag} needs a whole number in 1..={max}")))
}

/// `value` of `flag` as milliseconds in `0..=MAX_DELAY_MS` (decimals allowed).
fn millis_arg(flag: &str, value: Option<&str>) -> Result<Duration, ArgsError> {
    value
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| (0.0..=MAX_DELAY_MS).contains(ms))
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .ok_or_else(|| ArgsError::Usage(format!("{flag} needs milliseconds in 0..={MAX_DELAY_MS}")))
}

/// A command line that cannot run, or `--help`.
#[derive(Debug)]
enum ArgsError {
    Help,
    Usage(String),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, ArgsError> {
    let mut out = Args {
        kinds: Vec::new(),
        nim_api_key: DEFAULT_NIM_KEY.to_owned(),
        ignore_stdin: false,
        engine: EngineKnobs::default(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(ArgsError::Help),
            "--ignore-stdin" => out.ignore_stdin = true,
            "--nim-api-key" => match args.next() {
                Some(key) if !key.is_empty() => out.nim_api_key = key,
                _ => return Err(ArgsError::Usage("--nim-api-key needs a KEY".to_owned())),
            },
            "--slots" => {
                let n = count_arg(&arg, args.next().as_deref(), MAX_SLOTS as u64)?;
                out.engine.slots = Some(n as usize);
            }
            "--tokens" => {
                let n = count_arg(&arg, args.next().as_deref(), u64::from(MAX_TOKENS))?;
                out.engine.natural_tokens = Some(n as u32);
            }
            "--prefill-ms" => out.engine.prefill = Some(millis_arg(&arg, args.next().as_deref())?),
            "--token-ms" => {
                out.engine.token_interval = Some(millis_arg(&arg, args.next().as_deref())?)
            }
            kind if KINDS.contains(&kind) => out.kinds.push(kind.to_owned()),
            other => {
                return Err(ArgsError::Usage(format!(
                    "unknown engine kind `{other}` (expected one of: {})",
                    KINDS.join(", ")
                )));
            }
        }
    }
    if out.kinds.is_empty() {
        return Err(ArgsError::Usage(format!(
            "name at least one engine kind ({})",
            KINDS.join(", ")
        )));
    }
    Ok(out)
}

/// A running simulator; it stops when dropped.
#[derive(Debug)]
enum Running {
    Vllm(Arc<vllm::VllmSim>),
    Sglang(Arc<sglang::SglangSim>),
    Triton(Arc<triton::TritonSim>),
}

impl Running {
    /// Its stdout line, without the kind.
    fn urls(&self) -> String {
        match self {
            Running::Vllm(sim) => sim.url(),
            Running::Sglang(sim) => sim.url(),
            Running::Triton(sim) => format!("{} {}", sim.url(), sim.metrics_url()),
        }
    }
}

async fn start(kind: &str, nim_api_key: &str, knobs: &EngineKnobs) -> io::Result<Running> {
    let vllm_mode = |engine: vllm::SimEngine, api_key: Option<&str>| {
        apply_knobs!(
            knobs,
            vllm::SimOptions {
                engine,
                api_key: api_key.map(str::to_owned),
                ..vllm::SimOptions::default()
            }
        )
    };
    Ok(match kind {
        "sglang" => Running::Sglang(
            sglang::SglangSim::try_start(apply_knobs!(knobs, sglang::SimOptions::default()))
                .await?,
        ),
        "triton" => Running::Triton(
            triton::TritonSim::try_start(apply_knobs!(knobs, triton::SimOptions::default()))
                .await?,
        ),
        "trtllm" => {
            Running::Vllm(vllm::VllmSim::try_start(vllm_mode(vllm::SimEngine::TrtLlm, None)).await?)
        }
        "dynamo" => {
            Running::Vllm(vllm::VllmSim::try_start(vllm_mode(vllm::SimEngine::Dynamo, None)).await?)
        }
        "nim" => Running::Vllm(
            vllm::VllmSim::try_start(vllm_mode(vllm::SimEngine::Nim, Some(nim_api_key))).await?,
        ),
        // vllm, openai (parse_args admits only KINDS).
        _ => Running::Vllm(vllm::VllmSim::try_start(vllm_mode(vllm::SimEngine::Vllm, None)).await?),
    })
}

/// Resolves at SIGTERM or SIGINT.
async fn signalled() -> io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            result = tokio::signal::ctrl_c() => result,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Cancels `stop` once stdin is at its end (on a thread of its own: a
/// blocking read cannot be cancelled, and the process may exit under it).
fn stop_at_stdin_end(stop: CancellationToken) {
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        stop.cancel();
    });
}

async fn run(args: Args) -> ExitCode {
    let mut running = Vec::with_capacity(args.kinds.len());
    let mut lines = String::new();
    for kind in &args.kinds {
        match start(kind, &args.nim_api_key, &args.engine).await {
            Ok(sim) => {
                lines.push_str(&format!("{kind} {}\n", sim.urls()));
                running.push(sim);
            }
            Err(e) => {
                let _ = writeln!(io::stderr(), "engine-sims: cannot start {kind}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    lines.push_str("ready\n");
    let mut stdout = io::stdout().lock();
    if stdout
        .write_all(lines.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(stdout);
    let stop = CancellationToken::new();
    if !args.ignore_stdin {
        stop_at_stdin_end(stop.clone());
    }
    let code = tokio::select! {
        () = stop.cancelled() => ExitCode::SUCCESS,
        result = signalled() => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let _ = writeln!(io::stderr(), "engine-sims: cannot wait for signals: {e}");
                ExitCode::from(1)
            }
        },
    };
    drop(running);
    code
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(ArgsError::Help) => {
            let _ = io::stdout().write_all(HELP.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Usage(message)) => {
            let _ = writeln!(
                io::stderr(),
                "engine-sims: {message}\nusage: engine-sims [--nim-api-key KEY] [--ignore-stdin] [--slots N] [--prefill-ms MS] [--token-ms MS] [--tokens N] KIND... (see --help)"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(io::stderr(), "engine-sims: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ArgsError> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_kinds_in_order_with_repeats() {
        let args = parse(&["triton", "vllm", "--nim-api-key", "k", "vllm"]).unwrap();
        assert_eq!(args.kinds, ["triton", "vllm", "vllm"]);
        assert_eq!(args.nim_api_key, "k");
        assert!(!args.ignore_stdin);
    }

    #[test]
    fn refuses_unknown_kinds_and_empty_lines() {
        let Err(ArgsError::Usage(message)) = parse(&["vllm", "ollama"]) else {
            panic!("accepted an unknown kind");
        };
        assert_eq!(
            message,
            "unknown engine kind `ollama` (expected one of: vllm, sglang, trtllm, triton, nim, dynamo, openai)"
        );
        assert!(matches!(parse(&[]), Err(ArgsError::Usage(_))));
        assert!(matches!(
            parse(&["--nim-api-key"]),
            Err(ArgsError::Usage(_))
        ));
        assert!(matches!(parse(&["vllm", "--help"]), Err(ArgsError::Help)));
    }

    #[test]
    fn engine_knobs_parse_and_default_to_none() {
        assert_eq!(parse(&["vllm"]).unwrap().engine, EngineKnobs::default());
        let args = parse(&[
            "--slots",
            "64",
            "--prefill-ms",
            "0",
            "--token-ms",
            "0.5",
            "--tokens",
            "32",
            "vllm",
        ])
        .unwrap();
        assert_eq!(
            args.engine,
            EngineKnobs {
                slots: Some(64),
                prefill: Some(Duration::ZERO),
                token_interval: Some(Duration::from_micros(500)),
                natural_tokens: Some(32),
            }
        );
        for bad in [
            &["--slots", "0", "vllm"][..],
            &["--slots", "4097", "vllm"],
            &["--tokens", "-1", "vllm"],
            &["--prefill-ms", "-1", "vllm"],
            &["--token-ms", "NaN", "vllm"],
            &["--token-ms", "60001", "vllm"],
            &["vllm", "--tokens"],
        ] {
            assert!(
                matches!(parse(bad), Err(ArgsError::Usage(_))),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn knobs_reach_every_kind_options() {
        let knobs = EngineKnobs {
            slots: Some(7),
            prefill: Some(Duration::ZERO),
            token_interval: Some(Duration::ZERO),
            natural_tokens: Some(3),
        };
        let v = apply_knobs!(&knobs, vllm::SimOptions::default());
        assert_eq!(
            (v.slots, v.prefill, v.token_interval, v.natural_tokens),
            (7, Duration::ZERO, Duration::ZERO, 3)
        );
        let s = apply_knobs!(&knobs, sglang::SimOptions::default());
        assert_eq!((s.slots, s.natural_tokens), (7, 3));
        let t = apply_knobs!(&knobs, triton::SimOptions::default());
        assert_eq!((t.slots, t.token_interval), (7, Duration::ZERO));
        // Unset knobs keep the defaults.
        let d = apply_knobs!(&EngineKnobs::default(), vllm::SimOptions::default());
        assert_eq!(
            (d.slots, d.prefill, d.natural_tokens),
            (4, Duration::from_millis(5), 16)
        );
    }

    /// The zero-delay vLLM simulator streams a whole completion at once:
    /// under paused time no time passes (the defaults would take 5 ms of
    /// prefill and 2 ms per token).
    #[tokio::test(start_paused = true)]
    async fn zero_delay_vllm_streams_without_timers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let knobs = parse(&[
            "--prefill-ms",
            "0",
            "--token-ms",
            "0",
            "--tokens",
            "32",
            "vllm",
        ])
        .unwrap()
        .engine;
        let Running::Vllm(sim) = start("vllm", DEFAULT_NIM_KEY, &knobs).await.unwrap() else {
            panic!("not a vLLM simulator");
        };
        let addr = sim.url().trim_start_matches("http://").to_owned();
        let mut conn = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":64}"#;
        let t0 = tokio::time::Instant::now();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while !got.ends_with(b"0\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        let text = String::from_utf8_lossy(&got);
        // 32 token chunks (the role chunk's delta starts with `role`).
        assert_eq!(
            text.matches("\"delta\":{\"content\":").count(),
            32,
            "{text}"
        );
        assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
        assert!(text.contains("data: [DONE]"), "{text}");
        assert_eq!(sim.completed(), 1);
    }
}
