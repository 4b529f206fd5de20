//! The `gateway` binary with `[server] metrics_key` and
//! `metrics_tenant_labels = false`: the config reaches the router and the
//! metrics, and engines see the gateway's request id, not the client's.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use gateway_core::RequestId;
use gateway_tests::request;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
metrics_key = "mk-bin"
metrics_tenant_labels = false

[[tenants]]
id = "secret-team"
api_key = "sk-t"
priority = "batch"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "sim-0"
engine = "sim"
model = "m"
"#;

/// The gateway process, killed when dropped unless [`Running::take`]n: a
/// failed assertion must not leave it running.
struct Running(Option<Child>);

impl Running {
    fn take(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start() -> (Running, SocketAddr, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("gateway-exposure-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let mut child = Command::new(BIN)
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
    (Running(Some(child)), addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_key_and_the_label_switch_come_from_the_config() {
    let (child, addr, dir) = start();
    let r = request(addr, "GET", "/metrics", &[], b"").await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": {
            "message": "metrics key required",
            "type": "authentication_error",
            "param": null,
            "code": "invalid_api_key",
        }})
    );

    let body = br#"{"model":"m","max_tokens":3,"messages":[{"role":"user","content":"hello"}]}"#;
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-t"),
            ("x-request-id", "bin-client-id"),
            ("x-priority", "interactive"),
        ],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-request-id"), Some("bin-client-id"));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(
        RequestId::new(id.strip_prefix("chatcmpl-").unwrap()).is_generated(),
        "{id}"
    );

    // The request settles (and is counted) just after its response ends:
    // read until it shows, within a bound.
    let settled = r#"gateway_requests_total{tenant="all",model="m",outcome="ok"} 1"#;
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let r = request(
            addr,
            "GET",
            "/metrics",
            &[("authorization", "Bearer mk-bin")],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body).unwrap();
        if text.lines().any(|l| l == settled) || tokio::time::Instant::now() > until {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(!text.contains("secret-team"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == r#"gateway_requests_total{tenant="all",model="m",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"gateway_tokens_total{tenant="all",model="m",kind="completion"} 3"#),
        "{text}"
    );

    let mut child = child.take();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
