//! Two `gateway` processes sharing one Redis through `[ledger] kind =
//! "redis"`:
//!
//! - one budget: 200 concurrent requests split across both against a
//!   budget that fits 20. Exactly 20 are admitted, the budget is never
//!   overspent, each admitted request is charged once, and nothing stays
//!   reserved, as both replicas' admin views show;
//! - one rate limit: a tenant allowed 10 requests per minute sends one
//!   request to each replica, then 60 at once split across both. Exactly
//!   10 are admitted in all, the other 52 get 429 `rate_limit_exceeded`
//!   with `Retry-After`.
//!
//! Redis comes from `GATEWAY_TEST_REDIS_URL` (`scripts/test` starts one);
//! see `gateway_tests::redis` for what happens without it.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_core::Money;
use gateway_tests::redis::redis_url;
use gateway_tests::request;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const ADMIN: &str = "Bearer admin";
const REQUESTS: usize = 200;
const FITS: u64 = 20;

/// A running `gateway` process, killed (by its pid) when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, name: &str, config: &str) -> Replica {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).unwrap();
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
    let Some(addr) = line.trim().strip_prefix("gateway listening on http://") else {
        let _ = child.kill();
        panic!("{name} did not start: {line:?}");
    };
    Replica {
        addr: addr.parse().unwrap(),
        child,
    }
}

/// A replica's config: one tenant (with the `limits` lines, `budget_usd =
/// ...` say), one zero-delay sim whose completions always run past
/// `max_tokens`, so every request is charged exactly what it reserved.
fn config(ledger: &str, tenant: &str, limits: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_key = "admin"

{ledger}

[[tenants]]
id = "{tenant}"
api_key = "sk-race"
{limits}

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "sim-0"
engine = "sim"
model = "m"
max_concurrency = 512

[backends.sim]
slots = 512
queue_capacity = 1024
prefill_tokens_per_sec = 0.0
decode_tokens_per_sec = 0.0
base_latency_ms = 0
min_natural_tokens = 64
max_natural_tokens = 64
"#
    )
}

const BODY: &[u8] =
    br#"{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"the same prompt everywhere"}]}"#;

async fn complete(addr: SocketAddr) -> (u16, Value) {
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-race"),
            ("content-type", "application/json"),
        ],
        BODY,
    )
    .await
    .unwrap();
    (r.status, r.json())
}

async fn usage(addr: SocketAddr, tenant: &str) -> Value {
    let r = request(
        addr,
        "GET",
        &format!("/admin/tenants/{tenant}/usage"),
        &[("authorization", ADMIN)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    r.json()
}

fn picos(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap()
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget() {
    let url = redis_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let uniq = format!("{}-{nanos}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(format!("gateway-two-replicas-{uniq}")));
    std::fs::create_dir_all(&dir.0).unwrap();

    // What one request costs (= what it reserves): measured on a probe with
    // the in-memory ledger and no budget.
    let cost = {
        let probe = start(&dir.0, "probe", &config("", "probe", ""));
        let (status, body) = complete(probe.addr).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 16, "{body}");
        // The response can reach us just before the request settles.
        let mut u = usage(probe.addr, "probe").await;
        for _ in 0..100 {
            if picos(&u, "reserved_picousd") == 0 && u["requests"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            u = usage(probe.addr, "probe").await;
        }
        assert_eq!(
            (picos(&u, "reserved_picousd"), &u["requests"]),
            (0, &Value::from(1)),
            "{u}"
        );
        picos(&u, "spent_picousd")
    };
    let budget = Money::from_picos(FITS * cost);
    // The config gives dollars: this one round-trips to the exact budget.
    assert_eq!(Money::from_usd(budget.usd()).unwrap(), budget);

    let tenant = format!("race-{uniq}");
    // Each replica with its own settle journal; short holds, renewed.
    let journals = ["one", "two"].map(|name| dir.0.join(format!("{name}-journal")));
    let text = |journal: &Path| {
        let ledger = format!(
            "[ledger]\nkind = \"redis\"\nurl = \"{url}\"\nhold_ttl_ms = 3000\n\
             journal_dir = \"{}\"\njournal_max_entries = 1000",
            journal.display()
        );
        config(&ledger, &tenant, &format!("budget_usd = {}", budget.usd()))
    };
    let replicas = [
        start(&dir.0, "one", &text(&journals[0])),
        start(&dir.0, "two", &text(&journals[1])),
    ];
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();

    // Watch the spend on both replicas while the requests run.
    let most_spent = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (addrs, tenant, most_spent, watching) = (
            addrs.clone(),
            tenant.clone(),
            most_spent.clone(),
            watching.clone(),
        );
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                for &addr in &addrs {
                    let u = usage(addr, &tenant).await;
                    most_spent.fetch_max(picos(&u, "spent_picousd"), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let addr = addrs[i % 2];
            tokio::spawn(async move { (i % 2, complete(addr).await) })
        })
        .collect();
    let mut admitted = [0_u64; 2];
    let mut refused = [0_u64; 2];
    for task in tasks {
        let (replica, (status, body)) = task.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["usage"]["completion_tokens"], 16, "{body}");
                admitted[replica] += 1;
            }
            429 => {
                assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                refused[replica] += 1;
            }
            other => panic!("status {other}: {body}"),
        }
    }
    let elapsed = started.elapsed();

    // Settles run in the background and the admin views re-read Redis
    // every second: wait until both agree that nothing is held.
    let total: u64 = admitted.iter().sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let views = loop {
        let mut views = Vec::new();
        for &addr in &addrs {
            views.push(usage(addr, &tenant).await);
        }
        let settled = views
            .iter()
            .all(|u| picos(u, "reserved_picousd") == 0 && u["requests"].as_u64() == Some(total));
        if settled || tokio::time::Instant::now() > deadline {
            break views;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();

    println!(
        "{REQUESTS} requests in {elapsed:?}: admitted {total} (replica one {}, two {}), \
         refused {} (one {}, two {}); cost per request {cost} picoUSD, budget {} picoUSD, \
         most spent seen {} picoUSD",
        admitted[0],
        admitted[1],
        refused.iter().sum::<u64>(),
        refused[0],
        refused[1],
        budget.picos(),
        most_spent.load(Ordering::Relaxed),
    );
    for (name, u) in ["one", "two"].iter().zip(&views) {
        println!("ledger via replica {name}: {u}");
    }

    assert_eq!(total, FITS, "exactly the budget's worth is admitted");
    assert_eq!(refused.iter().sum::<u64>(), REQUESTS as u64 - FITS);
    assert!(most_spent.load(Ordering::Relaxed) <= budget.picos());
    for u in &views {
        assert_eq!(picos(u, "spent_picousd"), budget.picos(), "{u}");
        assert_eq!(picos(u, "reserved_picousd"), 0, "{u}");
        assert_eq!(u["requests"].as_u64(), Some(FITS), "charged once each: {u}");
        assert_eq!(u["completion_tokens"].as_u64(), Some(16 * FITS), "{u}");
    }
    assert_eq!(views[0], views[1]);
    // Every settle reached Redis: both journals are empty files.
    for journal in &journals {
        let file = journal.join("ledger.journal");
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            0,
            "{}",
            file.display()
        );
    }
}

/// A scratch directory for the replicas' configs and a name no other run
/// uses.
fn scratch(test: &str) -> (TempDir, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let uniq = format!("{}-{nanos}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(format!("gateway-{test}-{uniq}")));
    std::fs::create_dir_all(&dir.0).unwrap();
    (dir, uniq)
}

const LIMIT_REQUESTS: usize = 60;
const RPM: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_rate_limit() {
    let url = redis_url();
    let (dir, uniq) = scratch("two-replicas-limits");
    let tenant = format!("limited-{uniq}");
    let ledger = format!("[ledger]\nkind = \"redis\"\nurl = \"{url}\"");
    let text = config(&ledger, &tenant, &format!("requests_per_minute = {RPM}"));
    let replicas = [start(&dir.0, "one", &text), start(&dir.0, "two", &text)];
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();

    // One request on each replica first (both admitted): their Redis
    // connections are made before the race.
    let first = tokio::time::Instant::now();
    for &addr in &addrs {
        let (status, body) = complete(addr).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut admitted = [1_u64; 2];
    let mut refused = [0_u64; 2];
    let mut retry_after = Vec::new();

    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..LIMIT_REQUESTS)
        .map(|i| {
            let addr = addrs[i % 2];
            tokio::spawn(async move {
                let r = request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[
                        ("authorization", "Bearer sk-race"),
                        ("content-type", "application/json"),
                    ],
                    BODY,
                )
                .await
                .unwrap();
                let retry_after = r.header("retry-after").map(str::to_owned);
                (i % 2, r.status, r.json(), retry_after)
            })
        })
        .collect();
    for task in tasks {
        let (replica, status, body, after) = task.await.unwrap();
        match status {
            200 => admitted[replica] += 1,
            429 => {
                assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
                let after: u64 = after.unwrap_or_default().parse().unwrap();
                retry_after.push(after);
                refused[replica] += 1;
            }
            other => panic!("status {other}: {body}"),
        }
    }
    let elapsed = started.elapsed();
    let total: u64 = admitted.iter().sum();
    println!(
        "2 + {LIMIT_REQUESTS} concurrent requests at {RPM} requests/minute (the {LIMIT_REQUESTS} \
         in {elapsed:?}): admitted {total} (replica one {}, two {}), refused {} (one {}, two {}), \
         Retry-After {}..={} s",
        admitted[0],
        admitted[1],
        refused.iter().sum::<u64>(),
        refused[0],
        refused[1],
        retry_after.iter().min().unwrap(),
        retry_after.iter().max().unwrap(),
    );
    // One request comes back every 6 s: within that, the limit is exact.
    let since_first = first.elapsed();
    assert!(
        since_first < Duration::from_secs(6),
        "too slow to count: {since_first:?}"
    );
    assert_eq!(total, RPM, "exactly the limit's worth is admitted");
    assert_eq!(refused.iter().sum::<u64>(), LIMIT_REQUESTS as u64 + 2 - RPM);
    // 6 s until the next request fits, less the time since the first.
    let floor = 6 - since_first.as_secs() - 1;
    assert!(
        retry_after.iter().all(|&s| (floor..=6).contains(&s)),
        "{retry_after:?}"
    );
}
