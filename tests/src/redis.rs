//! A Redis for the tests of the Redis ledger and limiter.
//!
//! [`redis_url`] is the Redis to test against: `GATEWAY_TEST_REDIS_URL`
//! (`scripts/test` starts one with `scripts/redis` and exports it). Without
//! it, under `CI` the tests fail; elsewhere a throwaway `redis-server` is
//! started on a free loopback port (stopped when the test process exits),
//! or the test fails saying how to get one. [`OwnServer`] is a redis-server
//! of a test's own, for tests that stop and restart it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The Redis to test against (see the module docs), the same for every
/// call in a process.
#[expect(clippy::panic, reason = "a test without its Redis must fail")]
pub fn redis_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("GATEWAY_TEST_REDIS_URL") {
            return url;
        }
        if std::env::var_os("CI").is_some() {
            panic!(
                "GATEWAY_TEST_REDIS_URL is not set under CI: scripts/test starts a redis-server \
                 (scripts/redis) and exports it"
            );
        }
        own_redis()
    })
    .clone()
}

/// A free loopback TCP port (bound once, then released).
#[expect(clippy::panic, reason = "a test without a free port must fail")]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A key prefix no other test (or run) uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("test:{test}:{}:{nanos}:", std::process::id())
}

/// Whether a Redis on loopback `port` answers `PING`.
pub fn ping(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

/// Starts `redis-server` on a free loopback port under a shell that kills
/// it when this process's end of its stdin closes (at exit).
#[expect(clippy::panic, reason = "a test without its Redis must fail")]
fn own_redis() -> String {
    static CHILD: OnceLock<Mutex<Child>> = OnceLock::new();
    let port = free_port();
    let script = format!(
        "redis-server --bind 127.0.0.1 --port {port} --save '' --appendonly no \
         --loglevel warning >/dev/null 2>&1 & pid=$!; read _; kill $pid"
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
    for _ in 0..100 {
        if ping(port) {
            let _ = CHILD.set(Mutex::new(child));
            return format!("redis://127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(child.stdin.take());
    let _ = child.wait();
    panic!(
        "GATEWAY_TEST_REDIS_URL is not set and no redis-server could be started on port {port}: \
         install one (bash scripts/redis install), or start one (bash scripts/redis start 6390) \
         and set GATEWAY_TEST_REDIS_URL=redis://127.0.0.1:6390"
    );
}

/// A redis-server of a test's own on a loopback port, stopped (by its pid)
/// when dropped.
#[derive(Debug)]
pub struct OwnServer {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl OwnServer {
    /// Starts one on `port` and waits until it answers.
    #[expect(clippy::panic, reason = "a test without its Redis must fail")]
    pub fn start(port: u16) -> OwnServer {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): install it with `bash scripts/redis install`"
                )
            });
        for _ in 0..100 {
            if ping(port) {
                return OwnServer { child, port };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server on port {port} did not answer");
    }

    /// Its process id (to pause it with `SIGSTOP` and resume it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
