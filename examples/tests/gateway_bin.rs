//! The `gateway` binary: `--check-config` exit codes and output, and a
//! SIGTERM that drains, aborts what outlives the grace period, settles and
//! exits 0.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gateway_tests::{open, request};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml");
    let out = Command::new(BIN)
        .args(["--check-config", example])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with("ok (2 tenants, 1 models, 2 backends)\n"),
        "{stdout}"
    );
}

#[test]
fn check_config_lists_every_problem_with_its_key_path() {
    let dir = std::env::temp_dir().join(format!("gateway-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        r#"
[server]
listen = "not an address"
colour = "blue"

[[tenants]]
id = "t"
api_key = "k"

[[models]]
name = "m"
context_window = 100
input_usd_per_mtok = -1.0
output_usd_per_mtok = 1.0

[[backends]]
name = "b"
engine = "vllm"
model = "m"
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for path in [
        "server.colour",
        "server.listen",
        "models[0].input_usd_per_mtok",
        "backends[0].url",
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(path)),
            "no problem at {path}:\n{stderr}"
        );
    }
    assert_eq!(
        Command::new(BIN)
            .arg("--nonsense")
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the binary on a config and returns it with its address; the
/// process pinned to `cpu` (with `taskset`) if given.
fn start_on(config: &str, cpu: Option<&str>) -> (Child, SocketAddr, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "gateway-bin-{}-{}-{}",
        std::process::id(),
        config.len(),
        cpu.unwrap_or("any")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config).unwrap();
    let mut command = match cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", cpu, BIN]);
            taskset
        }
        None => Command::new(BIN),
    };
    let mut child = command
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("gateway listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    (child, addr, dir)
}

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_key = "admin"
shutdown_grace_ms = 300

[[tenants]]
id = "t"
api_key = "sk-t"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "sim-0"
engine = "sim"
model = "m"

[backends.sim]
decode_tokens_per_sec = 20.0
min_natural_tokens = 2000
max_natural_tokens = 2000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_aborts_the_rest_and_exits_zero() {
    sigterm_drain(None).await;
}

/// Pinned to one CPU the binary runs on one thread (no runtime workers, no
/// blocking threads for the sim; besides jemalloc's purging thread), and
/// serves, drains and exits alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_one_thread_serves_drains_and_exits_zero() {
    sigterm_drain(Some("0")).await;
}

async fn sigterm_drain(cpu: Option<&str>) {
    let (mut child, addr, dir) = start_on(CONFIG, cpu);
    let body = br#"{"model":"m","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"hello"}]}"#;
    let mut stream = open(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-t")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(stream.status, 200);
    stream.next_event().await.unwrap().unwrap();
    // The threads by name: the allocator's purging thread aside, the
    // runtime's.
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim().to_owned())
        .collect();
    names.sort();
    let allocator = names.iter().filter(|n| *n == "jemalloc_bg_thd").count();
    assert_eq!(allocator, 1, "jemalloc's background thread: {names:?}");
    let runtime = names.len() - allocator;
    if cpu.is_some() {
        assert_eq!(runtime, 1, "one CPU, one thread: {names:?}");
    } else if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert_ne!(runtime, 1, "several CPUs, runtime workers: {names:?}");
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The stream outlives the 300 ms grace: it ends with a typed error.
    let mut last = String::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), stream.next_event())
        .await
        .unwrap()
        .unwrap()
    {
        last = event;
    }
    let last: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["error"]["code"], "canceled", "{last}");
    let exit = tokio::task::spawn_blocking(move || {
        let code = child.wait().unwrap().code();
        let mut rest = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut rest).unwrap();
        (code, rest)
    })
    .await
    .unwrap();
    assert_eq!(exit.0, Some(0));
    assert!(
        exit.1
            .contains("stopped: 1 streams aborted at shutdown, 0 unsettled"),
        "{}",
        exit.1
    );
    // New connections are refused once it stopped.
    assert!(request(addr, "GET", "/health", &[], b"").await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
