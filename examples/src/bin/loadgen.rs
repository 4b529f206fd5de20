//! `loadgen`: a small, bounded HTTP load generator for streamed chat
//! completions, over loopback only.
//!
//! ```text
//! loadgen --url http://127.0.0.1:PORT [--key KEY] [-n REQUESTS] [-c CONCURRENCY]
//!         [--max-seconds S] [--timeout-seconds S] [--model M] [--max-tokens T]
//!         [--prompt TEXT] [--label NAME] [--threads T]
//! ```
//!
//! Sends `REQUESTS` `POST {url}/v1/chat/completions` with `"stream":true`,
//! `CONCURRENCY` at a time (one keep-alive HTTP/1.1 connection each), and
//! stops early when `--max-seconds` is over (requests not sent by then are
//! `unsent`, those still running count as errors). Per request it measures
//! the time to first token (from writing the request to the arrival of
//! the first byte of the first SSE frame carrying text) and the total time
//! (to the end of the body). A request fails on a connection error, a
//! status other than 200, an error frame, a stream without `data: [DONE]`
//! or without any token, or its timeout.
//!
//! Prints one line of `key=value` pairs (keys stable, in this order):
//!
//! ```text
//! label=.. requests=.. ok=.. errors=.. timeouts=.. unsent=.. concurrency=.. elapsed_s=..
//! rps=.. ttft_p50_ms=.. ttft_p99_ms=.. total_p50_ms=.. total_p99_ms=.. tokens_per_request=..
//! client_cpu_s=..
//! ```
//!
//! (`rps` counts successful requests per second of wall time;
//! `client_cpu_s` is this process's CPU time, `na` where `/proc` is
//! missing.) The first few errors go to stderr. Exit status: 0 when every
//! request succeeded, 1 when any failed or was not sent, 2 for bad
//! arguments.
//!
//! The client is deliberately minimal: a hand-written HTTP/1.1 writer and a
//! reader for `Content-Length`, chunked and close-delimited bodies, so the
//! client's own cost stays small and visible next to the server's.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const USAGE: &str = "usage: loadgen --url http://127.0.0.1:PORT [--key KEY] [-n REQUESTS] \
[-c CONCURRENCY] [--max-seconds S] [--timeout-seconds S] [--model M] [--max-tokens T] \
[--prompt TEXT] [--label NAME] [--threads T]";

/// Most requests one run may send.
const MAX_REQUESTS: usize = 1_000_000;
/// Most concurrent requests.
const MAX_CONCURRENCY: usize = 1024;
/// Longest run.
const MAX_SECONDS: f64 = 600.0;
/// Largest response head, and longest chunk-size or trailer line.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest SSE event kept while waiting for its end.
const MAX_EVENT_BYTES: usize = 1 << 20;
/// Error messages printed to stderr.
const ERRORS_SHOWN: usize = 5;

#[derive(Debug, Clone)]
struct Args {
    host: String,
    port: u16,
    prefix: String,
    key: Option<String>,
    requests: usize,
    concurrency: usize,
    max_duration: Duration,
    request_timeout: Duration,
    model: String,
    max_tokens: u32,
    prompt: String,
    label: String,
    threads: usize,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut url = None;
    let mut parsed = Args {
        host: String::new(),
        port: 80,
        prefix: String::new(),
        key: None,
        requests: 1000,
        concurrency: 16,
        max_duration: Duration::from_secs(60),
        request_timeout: Duration::from_secs(30),
        model: "sim-small".to_owned(),
        max_tokens: 32,
        prompt: "Tell me a story about a gateway.".to_owned(),
        label: "run".to_owned(),
        threads: 1,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--key" => parsed.key = Some(value()?),
            "-n" | "--requests" => parsed.requests = number(value()?)? as usize,
            "-c" | "--concurrency" => parsed.concurrency = number(value()?)? as usize,
            "--max-seconds" => {
                parsed.max_duration = Duration::from_secs_f64(number(value()?)?.min(MAX_SECONDS))
            }
            "--timeout-seconds" => {
                parsed.request_timeout = Duration::from_secs_f64(number(value()?)?.min(MAX_SECONDS))
            }
            "--model" => parsed.model = value()?,
            "--max-tokens" => parsed.max_tokens = number(value()?)? as u32,
            "--prompt" => parsed.prompt = value()?,
            "--label" => parsed.label = value()?,
            "--threads" => parsed.threads = number(value()?)? as usize,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("--url must start with http:// (no TLS)")?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in --url: {p}"))?,
        ),
        _ => (authority, 80),
    };
    parsed.host = host.to_owned();
    parsed.port = port;
    parsed.prefix = prefix.trim_end_matches('/').to_owned();
    if parsed.requests == 0 || parsed.requests > MAX_REQUESTS {
        return Err(format!("-n must be 1..={MAX_REQUESTS}"));
    }
    if parsed.concurrency == 0 || parsed.concurrency > MAX_CONCURRENCY {
        return Err(format!("-c must be 1..={MAX_CONCURRENCY}"));
    }
    parsed.concurrency = parsed.concurrency.min(parsed.requests);
    if parsed.max_tokens == 0 {
        return Err("--max-tokens must be at least 1".to_owned());
    }
    if parsed.max_duration.is_zero() || parsed.request_timeout.is_zero() {
        return Err("--max-seconds and --timeout-seconds must be positive".to_owned());
    }
    parsed.threads = parsed.threads.clamp(1, 64);
    Ok(parsed)
}

/// The request, the same bytes every time.
fn request_bytes(args: &Args) -> Vec<u8> {
    let body = serde_json::json!({
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "stream": true,
        "max_tokens": args.max_tokens,
    })
    .to_string();
    let mut head = format!(
        "POST {}/v1/chat/completions HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\n",
        args.prefix,
        args.host,
        args.port,
        body.len()
    );
    if let Some(key) = &args.key {
        head.push_str("Authorization: Bearer ");
        head.push_str(key);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// One connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    /// When the last read returned.
    read_at: Instant,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            read_at: Instant::now(),
        })
    }

    fn available(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Reads more bytes; `false` at the end of the connection.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.len() == self.buf.capacity() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(16 * 1024);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        self.read_at = Instant::now();
        Ok(n > 0)
    }

    /// The bytes up to the next `\r\n` (bounded), without it.
    async fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = find(self.available(), b"\r\n") {
                let line = self.available().get(..i).unwrap_or_default().to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.available().len() > MAX_HEAD_BYTES {
                return Err("line too long".to_owned());
            }
            if !self.fill().await? {
                return Err("connection closed mid-line".to_owned());
            }
        }
    }

    /// Feeds exactly `n` body bytes to `sink`, as they arrive.
    async fn exact(&mut self, mut n: usize, sink: &mut SseScan) -> Result<(), String> {
        while n > 0 {
            if self.available().is_empty() && !self.fill().await? {
                return Err("connection closed mid-body".to_owned());
            }
            let take = n.min(self.available().len());
            let at = self.read_at;
            sink.push(self.available().get(..take).unwrap_or_default(), at)?;
            self.pos += take;
            n -= take;
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The response head.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

async fn read_head(conn: &mut Conn) -> Result<Head, String> {
    let status_line = conn.line().await?;
    let status_line = String::from_utf8_lossy(&status_line).into_owned();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
    };
    let mut total = status_line.len();
    loop {
        let line = conn.line().await?;
        total += line.len() + 2;
        if total > MAX_HEAD_BYTES {
            return Err("response head too large".to_owned());
        }
        if line.is_empty() {
            return Ok(head);
        }
        let line = String::from_utf8_lossy(&line);
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line: {line:?}"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                head.content_length = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad content-length: {value}"))?,
                );
            }
            "transfer-encoding" => {
                head.chunked = value.to_ascii_lowercase().contains("chunked");
            }
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    head.close = true;
                } else if v.contains("keep-alive") {
                    head.close = false;
                }
            }
            _ => {}
        }
    }
}

/// Reads the body in whatever framing the head says into `scan`; returns
/// whether the connection can carry another request.
async fn read_body(conn: &mut Conn, head: &Head, scan: &mut SseScan) -> Result<bool, String> {
    if head.chunked {
        loop {
            let line = conn.line().await?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size: {size:?}"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while !conn.line().await?.is_empty() {}
                return Ok(!head.close);
            }
            conn.exact(size, scan).await?;
            if !conn.line().await?.is_empty() {
                return Err("chunk not followed by CRLF".to_owned());
            }
        }
    }
    if let Some(n) = head.content_length {
        conn.exact(n, scan).await?;
        return Ok(!head.close);
    }
    // Delimited by the end of the connection.
    loop {
        if !conn.available().is_empty() {
            let n = conn.available().len();
            conn.exact(n, scan).await?;
        }
        if !conn.fill().await? {
            return Ok(false);
        }
    }
}

/// Splits a body into SSE events and notes what they say.
#[derive(Default)]
struct SseScan {
    pending: Vec<u8>,
    /// When the first byte of the pending event arrived.
    since: Option<Instant>,
    first_token: Option<Instant>,
    tokens: u64,
    done: bool,
    error: Option<String>,
    /// The raw body, kept (bounded) for error messages of non-200 answers.
    raw: Vec<u8>,
    keep_raw: bool,
}

impl SseScan {
    fn push(&mut self, bytes: &[u8], at: Instant) -> Result<(), String> {
        if self.keep_raw {
            let room = 512usize.saturating_sub(self.raw.len());
            self.raw
                .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
            return Ok(());
        }
        if self.pending.is_empty() {
            self.since = Some(at);
        }
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some((end, next)) = event_end(self.pending.get(start..).unwrap_or_default()) {
            let event = self
                .pending
                .get(start..start + end)
                .unwrap_or_default()
                .to_vec();
            self.event(&event);
            start += next;
        }
        self.pending.drain(..start);
        if start > 0 {
            // What is left came in this read.
            self.since = Some(at);
        }
        if self.pending.len() > MAX_EVENT_BYTES {
            return Err("SSE event too large".to_owned());
        }
        Ok(())
    }

    fn event(&mut self, event: &[u8]) {
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                self.done = true;
            } else if data.starts_with(b"{\"error\"") {
                if self.error.is_none() {
                    let n = data.len().min(300);
                    self.error = Some(
                        String::from_utf8_lossy(data.get(..n).unwrap_or_default()).into_owned(),
                    );
                }
            } else if has_text(data) {
                self.tokens += 1;
                if self.first_token.is_none() {
                    self.first_token = self.since;
                }
            }
        }
    }
}

/// The end of the first event in `bytes` (a blank line): the event's
/// length and where the next one starts.
fn event_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let lf = find(bytes, b"\n\n").map(|i| (i, i + 2));
    let crlf = find(bytes, b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Whether a chunk carries text: a non-empty `"content"` (chat) or
/// `"text"` (completions).
fn has_text(data: &[u8]) -> bool {
    [&b"\"content\":\""[..], &b"\"text\":\""[..]]
        .iter()
        .any(|key| {
            find(data, key).is_some_and(|i| data.get(i + key.len()).is_some_and(|b| *b != b'"'))
        })
}

/// One successful request.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ttft: Duration,
    total: Duration,
    tokens: u64,
}

/// One request on `conn`; returns its sample and whether the connection
/// can be used again.
async fn one_request(conn: &mut Conn, request: &[u8]) -> Result<(Sample, bool), String> {
    let t0 = Instant::now();
    conn.stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let head = read_head(conn).await?;
    let mut scan = SseScan {
        keep_raw: head.status != 200,
        ..SseScan::default()
    };
    let reusable = read_body(conn, &head, &mut scan).await?;
    let end = Instant::now();
    if head.status != 200 {
        return Err(format!(
            "status {}: {}",
            head.status,
            String::from_utf8_lossy(&scan.raw)
        ));
    }
    if let Some(e) = scan.error {
        return Err(format!("error frame: {e}"));
    }
    if !scan.done {
        return Err("stream ended without data: [DONE]".to_owned());
    }
    let Some(first) = scan.first_token else {
        return Err("stream carried no token".to_owned());
    };
    Ok((
        Sample {
            ttft: first.saturating_duration_since(t0),
            total: end.saturating_duration_since(t0),
            tokens: scan.tokens,
        },
        reusable,
    ))
}

/// What every worker shares.
struct Plan {
    addr: SocketAddr,
    request: Vec<u8>,
    requests: usize,
    deadline: Instant,
    request_timeout: Duration,
    next: AtomicUsize,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    samples: Vec<Sample>,
    errors: usize,
    timeouts: usize,
    messages: Vec<String>,
}

impl Tally {
    fn fail(&mut self, message: String) {
        self.errors += 1;
        if self.messages.len() < ERRORS_SHOWN {
            self.messages.push(message);
        }
    }
}

async fn worker(plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    loop {
        let now = Instant::now();
        if now >= plan.deadline {
            break;
        }
        if plan.next.fetch_add(1, Ordering::Relaxed) >= plan.requests {
            break;
        }
        let until = (now + plan.request_timeout).min(plan.deadline);
        let result = tokio::time::timeout_at(until, async {
            let c = match conn.take() {
                Some(c) => c,
                None => Conn::open(plan.addr).await?,
            };
            let mut c = c;
            let (sample, reusable) = one_request(&mut c, &plan.request).await?;
            Ok::<_, String>((sample, reusable.then_some(c)))
        })
        .await;
        match result {
            Ok(Ok((sample, kept))) => {
                tally.samples.push(sample);
                conn = kept;
            }
            Ok(Err(message)) => tally.fail(message),
            Err(_) => {
                tally.timeouts += 1;
                tally.fail("timed out".to_owned());
            }
        }
    }
    tally
}

/// The nearest-rank `p` quantile of sorted `xs`, in milliseconds.
fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted
        .get(rank - 1)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// This process's CPU time (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 here,
    // in USER_HZ (100 on Linux).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

async fn resolve(args: &Args) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host((args.host.trim_matches(['[', ']']), args.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", args.host))?;
    let addr = addrs
        .next()
        .ok_or_else(|| format!("{} resolves to nothing", args.host))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: loadgen only targets this machine"
        ));
    }
    Ok(addr)
}

/// Runs the load; returns the report line and whether everything passed.
async fn run(args: Args) -> Result<(String, bool, Vec<String>), String> {
    let addr = resolve(&args).await?;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let plan = Arc::new(Plan {
        addr,
        request: request_bytes(&args),
        requests: args.requests,
        deadline: started + args.max_duration,
        request_timeout: args.request_timeout,
        next: AtomicUsize::new(0),
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(plan.clone())))
        .collect();
    let mut tally = Tally::default();
    for w in workers {
        match w.await {
            Ok(t) => {
                tally.samples.extend(t.samples);
                tally.errors += t.errors;
                tally.timeouts += t.timeouts;
                for m in t.messages {
                    if tally.messages.len() < ERRORS_SHOWN {
                        tally.messages.push(m);
                    }
                }
            }
            Err(e) => tally.fail(format!("worker failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, cpu_seconds()) {
        (Some(a), Some(b)) => format!("{:.2}", b - a),
        _ => "na".to_owned(),
    };
    let ok = tally.samples.len();
    let sent = plan.next.load(Ordering::Relaxed).min(args.requests);
    let unsent = args.requests - sent;
    let mut ttft: Vec<Duration> = tally.samples.iter().map(|s| s.ttft).collect();
    let mut total: Vec<Duration> = tally.samples.iter().map(|s| s.total).collect();
    ttft.sort_unstable();
    total.sort_unstable();
    let tokens: u64 = tally.samples.iter().map(|s| s.tokens).sum();
    let line = format!(
        "label={} requests={} ok={ok} errors={} timeouts={} unsent={unsent} concurrency={} \
         elapsed_s={:.3} rps={:.1} ttft_p50_ms={:.3} ttft_p99_ms={:.3} total_p50_ms={:.3} \
         total_p99_ms={:.3} tokens_per_request={:.1} client_cpu_s={cpu}",
        args.label,
        args.requests,
        tally.errors,
        tally.timeouts,
        args.concurrency,
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64().max(1e-9),
        quantile_ms(&ttft, 0.50),
        quantile_ms(&ttft, 0.99),
        quantile_ms(&total, 0.50),
        quantile_ms(&total, 0.99),
        if ok == 0 {
            0.0
        } else {
            tokens as f64 / ok as f64
        },
    );
    let passed = tally.errors == 0 && unsent == 0 && ok == args.requests;
    Ok((line, passed, tally.messages))
}

#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program reports on its terminal"
)]
fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok((line, passed, messages)) => {
            for m in &messages {
                eprintln!("loadgen: error: {m}");
            }
            println!("{line}");
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_tokens_are_recognized() {
        let mut scan = SseScan::default();
        let at = Instant::now();
        let body = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\nda";
        scan.push(body, at).unwrap();
        assert_eq!(scan.tokens, 1);
        assert_eq!(scan.first_token, Some(at));
        scan.push(b"ta: [DONE]\r\n\r\n", at).unwrap();
        assert!(scan.done);
        assert!(scan.error.is_none());
        let mut err = SseScan::default();
        err.push(b"data: {\"error\":{\"message\":\"x\"}}\n\n", at)
            .unwrap();
        assert!(err.error.is_some());
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let xs: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&xs, 0.5), 50.0);
        assert_eq!(quantile_ms(&xs, 0.99), 99.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn urls_parse() {
        let args: Vec<String> = ["--url", "http://127.0.0.1:8080/", "-n", "10", "-c", "20"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = parse_args(&args).unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        assert_eq!(a.concurrency, 10);
    }
}
