//! The Redis ledger under faults, through a [`Gateway`] over a mock
//! engine, against redis-servers of the tests' own: paused with `SIGSTOP`
//! for 5 s under load, killed and restarted without persistence mid-load,
//! and behind a proxy that delays every reply by 2 s. After each: the spend
//! recorded in Redis is exactly what the clients were charged, no hold is
//! left, no budget is overspent, and while Redis cannot be reached new
//! requests get a fast 503 `ledger_unavailable` with `Retry-After`. Also: a
//! gateway that stops with settles in its journal file replays them at its
//! next start.
#![cfg(feature = "redis")]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test helpers outside #[test] functions"
)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, MockHandle, Script};
use gateway_core::{
    ByteBound, Charge, Ledger, Money, Pricing, Prompt, RequestId, ReserveRequest, SettleOutcome,
    TenantId, TokenEvent, Usage,
};
use gateway_policy::{
    ClientRequest, ErrorCode, Gateway, MediaCosts, ModelSpec, RedisLedger, RedisLedgerConfig,
    Settings, Tenant, key_hash,
};
use gateway_tests::redis::{OwnServer, free_port, unique_prefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

fn pricing() -> Pricing {
    Pricing::per_million(1.0, None, 2.0).unwrap()
}

/// A gateway over a mock engine (5 tokens, 40 ms apart) with `ledger`
/// and the tenant `t`.
fn gateway(ledger: Arc<RedisLedger>) -> (Gateway, MockHandle) {
    let (mock, handle) = MockBackend::new("mock-0", "tiny");
    handle.set_default(Script::tokens(
        &["a", "b", "c", "d", "e"],
        Duration::from_millis(40),
    ));
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("t"), key_hash("sk-t"))
        .model(ModelSpec {
            name: "tiny".into(),
            pricing: pricing(),
            context_window: 4096,
            default_max_tokens: 16,
            media: MediaCosts::default(),
            counter: Arc::new(ByteBound::default()),
        })
        .backend(Arc::new(mock), "tiny", "tiny", None)
        .ledger(ledger)
        .build()
        .unwrap();
    (gateway, handle)
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    /// Completed requests.
    ok: AtomicU64,
    /// What they were charged: their usage at the model's prices.
    charged: AtomicU64,
    /// 503 `ledger_unavailable` answers.
    unavailable: AtomicU64,
    /// When the first of them came back.
    first_503: std::sync::Mutex<Option<Instant>>,
    /// The slowest of those sent after the first came back (ms): the
    /// ledger knew by then that Redis was unreachable.
    slowest_fast_503_ms: AtomicU64,
    /// 429 `budget_exceeded` answers.
    budget: AtomicU64,
    /// Anything else.
    other: AtomicU64,
}

impl Tally {
    fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }
}

/// One request through the gateway, counted in `tally`.
async fn one(gateway: &Gateway, i: u64, tally: &Tally) {
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let request = ClientRequest::new(format!("r-{i}"), "tiny", Prompt::Text("hello".into()));
    let started = Instant::now();
    match gateway.generate(&tenant, request, cancel).await {
        Ok(mut stream) => {
            let mut usage = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(TokenEvent::Usage(u)) => usage = Some(u),
                    Ok(_) => {}
                    Err(e) => panic!("stream {i} failed: {e}"),
                }
            }
            let usage = usage.unwrap_or_else(|| panic!("stream {i} had no usage"));
            tally
                .charged
                .fetch_add(pricing().cost(&usage).picos(), Ordering::Relaxed);
            tally.ok.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) if e.code() == ErrorCode::LedgerUnavailable => {
            assert_eq!(e.code().status().as_u16(), 503);
            assert_eq!(e.code().as_str(), "ledger_unavailable");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(1)), "{e}");
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap();
            tally.unavailable.fetch_add(1, Ordering::Relaxed);
            let mut first = tally.first_503.lock().unwrap();
            match *first {
                Some(at) if started > at => {
                    tally.slowest_fast_503_ms.fetch_max(ms, Ordering::Relaxed);
                }
                Some(_) => {}
                None => *first = Some(Instant::now()),
            }
        }
        Err(e) if e.code() == ErrorCode::BudgetExceeded => {
            tally.budget.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            println!("request {i}: {e}");
            tally.other.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `workers` clients sending requests back to back (at most `per_worker`
/// each) until `run_for` has passed; a failed request waits 50 ms.
async fn load(gateway: &Gateway, workers: u64, per_worker: u64, run_for: Duration) -> Tally {
    let tally = Tally::default();
    let until = Instant::now() + run_for;
    let clients = (0..workers).map(|w| {
        let tally = &tally;
        async move {
            for n in 0..per_worker {
                if Instant::now() >= until {
                    break;
                }
                let before = tally.ok.load(Ordering::Relaxed);
                one(gateway, w * 1_000_000 + n, tally).await;
                if tally.ok.load(Ordering::Relaxed) == before {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    futures::future::join_all(clients).await;
    tally
}

fn signal(server: &OwnServer, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} failed");
}

async fn ledger(config: RedisLedgerConfig) -> Arc<RedisLedger> {
    Arc::new(RedisLedger::connect(config).await.unwrap())
}

/// Waits (bounded) until `requests` settles were handed to the ledger (the
/// gateway settles just after a stream's last event) and all are in Redis.
async fn settled(ledger: &RedisLedger, requests: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.stats().settles_queued < requests {
        assert!(Instant::now() < deadline, "{:?}", ledger.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(60), ledger.flush())
        .await
        .unwrap_or_else(|_| panic!("settles not in redis after 60 s: {:?}", ledger.stats()));
}

/// A budget the load exhausts: spent never passes it.
const BUDGET: u64 = 4_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_for_five_seconds_under_load_loses_no_charge() {
    let server = OwnServer::start(free_port());
    let mut config = RedisLedgerConfig::new(server.url())
        .prefix(unique_prefix("sigstop"))
        .response_timeout(Duration::from_millis(500));
    config.refresh_interval = Duration::from_millis(200);
    let ledger = ledger(config).await;
    let t = TenantId::new("t");
    ledger
        .open(&t, Some(Money::from_picos(BUDGET)))
        .await
        .unwrap();
    let (gateway, _mock) = gateway(ledger.clone());

    let pause = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        signal(&server, "-STOP");
        tokio::time::sleep(Duration::from_secs(5)).await;
        signal(&server, "-CONT");
    };
    let (tally, ()) = tokio::join!(load(&gateway, 16, 400, Duration::from_secs(9)), pause);
    settled(&ledger, tally.ok.load(Ordering::Relaxed)).await;
    let redis = ledger.fetch(&t).await.unwrap();
    let stats = ledger.stats();
    println!("sigstop: {tally:?}\n{redis:?}\n{stats:?}");
    assert!(tally.ok.load(Ordering::Relaxed) > 20, "{tally:?}");
    assert!(tally.unavailable.load(Ordering::Relaxed) > 10, "{tally:?}");
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "{tally:?}");
    // The first requests waited one reply timeout (500 ms); once the
    // ledger knew, every later one was refused at once.
    assert!(
        tally.slowest_fast_503_ms.load(Ordering::Relaxed) <= 250,
        "{tally:?}"
    );
    assert_eq!(redis.account.spent.picos(), tally.charged());
    assert_eq!(redis.account.reserved, Money::ZERO);
    assert!(redis.account.spent.picos() <= BUDGET);
    assert_eq!(redis.expired_holds, 0);
    assert_eq!(redis.account.requests, tally.ok.load(Ordering::Relaxed));
    assert_eq!(stats.journal_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty_mid_load_gets_every_later_charge() {
    let port = free_port();
    let server = OwnServer::start(port);
    let journal = tempdir("kill");
    let mut config = RedisLedgerConfig::new(server.url())
        .prefix(unique_prefix("kill"))
        .journal_dir(&journal)
        .response_timeout(Duration::from_millis(500));
    config.refresh_interval = Duration::from_millis(200);
    let prefix = config.prefix.clone();
    let ledger = ledger(config).await;
    let t = TenantId::new("t");
    // Large enough that the load does not reach it: the totals are exact.
    let budget = 1_000_000_000_000;
    ledger
        .open(&t, Some(Money::from_picos(budget)))
        .await
        .unwrap();
    let (gateway, _mock) = gateway(ledger.clone());

    let account = format!("{prefix}{{t}}:account");
    let fault = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Freeze writes, read what Redis has charged, then kill it: the
        // spend it loses is exactly what was read.
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg("30000")
            .arg("WRITE")
            .query_async(&mut conn)
            .await
            .unwrap();
        let lost: Option<u64> = redis::cmd("HGET")
            .arg(&account)
            .arg("spent")
            .query_async(&mut conn)
            .await
            .unwrap();
        drop(server);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let restarted = OwnServer::start(port);
        (lost.unwrap_or(0), restarted)
    };
    let (tally, (lost, _restarted)) =
        tokio::join!(load(&gateway, 16, 400, Duration::from_secs(7)), fault);
    settled(&ledger, tally.ok.load(Ordering::Relaxed)).await;
    let redis = ledger.fetch(&t).await.unwrap();
    let stats = ledger.stats();
    println!("kill: lost {lost}, {tally:?}\n{redis:?}\n{stats:?}");
    assert!(
        lost > 0 && tally.ok.load(Ordering::Relaxed) > 20,
        "{tally:?}"
    );
    assert!(tally.unavailable.load(Ordering::Relaxed) > 5, "{tally:?}");
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "{tally:?}");
    assert!(
        tally.slowest_fast_503_ms.load(Ordering::Relaxed) <= 250,
        "{tally:?}"
    );
    // Redis lost what it had; every charge made after the read is there.
    assert_eq!(redis.account.spent.picos(), tally.charged() - lost);
    assert_eq!(redis.account.reserved, Money::ZERO);
    assert!(redis.account.spent.picos() <= budget);
    assert_eq!(stats.journal_pending, 0);
    assert_eq!(
        std::fs::metadata(journal.join("ledger.journal"))
            .unwrap()
            .len(),
        0
    );
    let _ = std::fs::remove_dir_all(&journal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_proxy_slows_settles_but_does_not_queue_them() {
    let server = OwnServer::start(free_port());
    let proxy = delay_proxy(server.port, Duration::from_secs(2)).await;
    let mut config = RedisLedgerConfig::new(format!("redis://127.0.0.1:{proxy}"))
        .prefix(unique_prefix("proxy"))
        .response_timeout(Duration::from_secs(6));
    config.connect_timeout = Duration::from_secs(6);
    let ledger = ledger(config).await;
    let t = TenantId::new("t");
    ledger
        .open(&t, Some(Money::from_picos(BUDGET)))
        .await
        .unwrap();
    let (gateway, _mock) = gateway(ledger.clone());

    let tally = load(&gateway, 32, 6, Duration::from_secs(8)).await;
    // Up to 32 streams settled at about the same time: pipelined, they
    // reach Redis within a few round trips, not one after another.
    let started = Instant::now();
    settled(&ledger, tally.ok.load(Ordering::Relaxed)).await;
    let flushed = started.elapsed();
    let redis = ledger.fetch(&t).await.unwrap();
    println!("proxy: flush {flushed:?} {tally:?}\n{redis:?}");
    assert!(flushed < Duration::from_secs(7), "{flushed:?}");
    assert!(tally.ok.load(Ordering::Relaxed) >= 32, "{tally:?}");
    assert_eq!(tally.unavailable.load(Ordering::Relaxed), 0, "{tally:?}");
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "{tally:?}");
    assert_eq!(redis.account.spent.picos(), tally.charged());
    assert_eq!(redis.account.reserved, Money::ZERO);
    assert!(redis.account.spent.picos() <= BUDGET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_left_in_the_journal_are_replayed_at_the_next_start() {
    let port = free_port();
    let server = OwnServer::start(port);
    let journal = tempdir("replay");
    let prefix = unique_prefix("replay");
    let config = RedisLedgerConfig::new(server.url())
        .prefix(&prefix)
        .journal_dir(&journal)
        .response_timeout(Duration::from_millis(500));
    let first = RedisLedger::connect(config.clone()).await.unwrap();
    let t = TenantId::new("t");
    let mut holds = Vec::new();
    for i in 0..3u64 {
        let ask = ReserveRequest {
            tenant: t.clone(),
            request_id: RequestId::new(format!("r-{i}")),
            amount: Money::from_picos(100),
        };
        holds.push(first.reserve(&ask).await.unwrap());
    }
    drop(server);
    for (i, hold) in holds.into_iter().enumerate() {
        let cost = 10 * (u64::try_from(i).unwrap() + 1);
        first.settle(
            hold,
            Charge {
                cost: Money::from_picos(cost),
                usage: Usage::new(1, 1),
                outcome: SettleOutcome::Settled,
            },
        );
    }
    // Down: the settles wait in the journal file, fsynced.
    let file = journal.join("ledger.journal");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "settles not journaled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.stats().journal_pending, 3);
    // The gateway stops (a crash would leave the same file).
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _server = OwnServer::start(port);
    let second = RedisLedger::connect(config).await.unwrap();
    assert_eq!(second.stats().replayed, 3);
    settled(&second, 0).await;
    let redis = second.fetch(&t).await.unwrap();
    // Redis restarted empty: the holds are gone, the charges are all there.
    assert_eq!(
        (
            redis.account.spent,
            redis.account.reserved,
            redis.account.requests
        ),
        (Money::from_picos(60), Money::ZERO, 3)
    );
    assert_eq!(second.stats().settles_applied, 3);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
    drop(second);
    let _ = std::fs::remove_dir_all(&journal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_new_requests_with_503() {
    let server = OwnServer::start(free_port());
    let ledger = ledger(
        RedisLedgerConfig::new(server.url())
            .prefix(unique_prefix("full"))
            .journal_max_entries(2),
    )
    .await;
    let ask = |i: u64| ReserveRequest {
        tenant: TenantId::new("t"),
        request_id: RequestId::new(format!("r-{i}")),
        amount: Money::from_picos(1),
    };
    let a = ledger.reserve(&ask(1)).await.unwrap();
    let _b = ledger.reserve(&ask(2)).await.unwrap();
    let err = ledger.reserve(&ask(3)).await.unwrap_err();
    assert!(err.to_string().contains("journal full"), "{err}");
    assert_eq!(ledger.stats().refused_journal_full, 1);
    // Through the gateway: 503 ledger_unavailable with Retry-After.
    let (gateway, _mock) = gateway(ledger.clone());
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let request = ClientRequest::new("r-x", "tiny", Prompt::Text("hello".into()));
    let Err(err) = gateway.generate(&tenant, request, cancel).await else {
        panic!("admitted with a full journal");
    };
    assert_eq!(
        (err.code().status().as_u16(), err.code().as_str()),
        (503, "ledger_unavailable")
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    // A settle makes room.
    ledger.settle(
        a,
        Charge {
            cost: Money::from_picos(1),
            usage: Usage::new(1, 1),
            outcome: SettleOutcome::Settled,
        },
    );
    settled(&ledger, 1).await;
    assert!(ledger.reserve(&ask(4)).await.is_ok());
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_prefix(name).replace(':', "-"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A TCP proxy on a free loopback port to Redis on `port` that holds every
/// chunk Redis sends back for `delay` (in order); what the client sends
/// goes through at once. Returns its port; it runs until the test ends.
async fn delay_proxy(port: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut up_read, mut up_write) = upstream.into_split();
                let to_redis = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 || up_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1024);
                let from_redis = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = up_read.read(&mut buf).await {
                        if n == 0
                            || tx
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                };
                let delayed = async move {
                    while let Some((due, bytes)) = rx.recv().await {
                        tokio::time::sleep_until(due).await;
                        if client_write.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(to_redis, from_redis, delayed);
            });
        }
    });
    own
}
