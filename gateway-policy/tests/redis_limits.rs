//! [`RedisLimiter`] against a real Redis: requests and tokens per minute
//! shared exactly by two limiters, refusals that consume nothing,
//! `Retry-After` from the script within its exact bound, concurrency leases
//! that return on drop, after their TTL when their holder crashed, stay
//! while their holder lives, and come back after a Redis restart; and a
//! Redis that cannot be reached refuses (fails closed: 503
//! `limiter_unavailable`, at once after the first failure).
//!
//! Redis comes from `GATEWAY_TEST_REDIS_URL` (`scripts/test` starts one);
//! see `gateway_tests::redis` for what happens without it.
#![cfg(feature = "redis")]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use gateway_policy::{
    AdmitError, LimitError, LimitKind, LimitPermit, Limiter, RedisLimiter, RedisLimiterConfig,
    Tenant,
};
use gateway_tests::redis::{OwnServer, free_port, redis_url, unique_prefix};
use tokio::time::Instant;

fn tenant(rpm: Option<u32>, tpm: Option<u64>, concurrency: Option<u32>) -> Tenant {
    Tenant {
        requests_per_minute: rpm.and_then(NonZeroU32::new),
        tokens_per_minute: tpm.and_then(NonZeroU64::new),
        max_concurrency: concurrency.and_then(NonZeroU32::new),
        ..Tenant::new("t")
    }
}

async fn limiter(config: RedisLimiterConfig) -> Arc<RedisLimiter> {
    Arc::new(RedisLimiter::connect(config).await.unwrap())
}

/// Two limiters sharing one prefix, as two replicas do.
async fn pair(test: &str, lease_ttl: Duration) -> [Arc<RedisLimiter>; 2] {
    let config = RedisLimiterConfig::new(redis_url())
        .prefix(unique_prefix(test))
        .lease_ttl(lease_ttl);
    [limiter(config.clone()).await, limiter(config).await]
}

async fn admit(limiter: &RedisLimiter, t: &Tenant, tokens: u64) -> Result<LimitPermit, AdmitError> {
    limiter.admit(t, tokens, Instant::now()).await
}

fn refused(result: Result<LimitPermit, AdmitError>) -> LimitError {
    match result {
        Err(AdmitError::Limited(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Admits `n` requests at once, alternating between the limiters.
async fn hammer(
    limiters: &[Arc<RedisLimiter>; 2],
    t: &Tenant,
    tokens: u64,
    n: usize,
) -> (Vec<LimitPermit>, Vec<LimitError>) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (limiter, t) = (limiters[i % 2].clone(), t.clone());
            tokio::spawn(async move { limiter.admit(&t, tokens, Instant::now()).await })
        })
        .collect();
    let (mut ok, mut no) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await.unwrap() {
            Ok(p) => ok.push(p),
            Err(AdmitError::Limited(e)) => no.push(e),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    (ok, no)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_are_shared_exactly_by_two_limiters() {
    let limiters = pair("rpm", Duration::from_secs(30)).await;
    let t = tenant(Some(10), None, None);
    let started = Instant::now();
    let (ok, no) = hammer(&limiters, &t, 0, 30).await;
    let elapsed = started.elapsed();
    let waits: Vec<u128> = no.iter().map(|e| e.retry_after.as_millis()).collect();
    println!(
        "30 concurrent admits over two limiters in {elapsed:?}: {} admitted (limiter one {}, \
         two {}), {} refused, retry-after {}..={} ms",
        ok.len(),
        limiters[0].stats().admitted,
        limiters[1].stats().admitted,
        no.len(),
        waits.iter().min().unwrap(),
        waits.iter().max().unwrap(),
    );
    assert_eq!((ok.len(), no.len()), (10, 20));
    assert_eq!(
        limiters[0].stats().admitted + limiters[1].stats().admitted,
        10
    );
    assert_eq!(
        limiters[0].stats().refused + limiters[1].stats().refused,
        20
    );
    // One request per 6 s; the bucket refilled for at most `elapsed`
    // since the last request was taken.
    let floor = 6000 - elapsed.as_millis() - 1;
    for e in &no {
        assert_eq!(e.kind, LimitKind::Requests);
        let ms = e.retry_after.as_millis();
        assert!(ms <= 6000 && ms >= floor, "{ms} ms not in {floor}..=6000");
    }
    // Rate limits hold no lease: dropping the permits returns nothing.
    drop(ok);
    assert_eq!(
        refused(admit(&limiters[0], &t, 0).await).kind,
        LimitKind::Requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_count_tokens_and_refusals_consume_nothing() {
    let [one, two] = pair("tpm", Duration::from_secs(30)).await;
    let t = tenant(Some(10), Some(600), None);
    let started = Instant::now();
    let _a = admit(&one, &t, 500).await.unwrap();
    let err = refused(admit(&two, &t, 200).await);
    let elapsed = started.elapsed().as_millis();
    assert_eq!(err.kind, LimitKind::Tokens);
    // 100 missing at 10 tokens/s: 10 s, less what refilled meanwhile.
    let ms = err.retry_after.as_millis();
    assert!(ms <= 10_000 && ms >= 10_000 - elapsed - 1, "{ms} ms");
    // A request larger than a minute's allowance waits a minute.
    assert_eq!(
        refused(admit(&one, &t, 601).await).retry_after,
        Duration::from_secs(60)
    );
    // The refused requests took no request tokens: 9 more fit, across both.
    for i in 0..9 {
        drop(admit([&one, &two][i % 2], &t, 0).await.unwrap());
    }
    assert_eq!(refused(admit(&two, &t, 0).await).kind, LimitKind::Requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_when_the_bucket_has_room() {
    let [one, two] = pair("retry", Duration::from_secs(30)).await;
    // One token per millisecond.
    let t = tenant(None, Some(60_000), None);
    let started = Instant::now();
    drop(admit(&one, &t, 60_000).await.unwrap());
    let err = refused(admit(&two, &t, 500).await);
    let elapsed = started.elapsed().as_millis();
    let ms = err.retry_after.as_millis();
    println!("500 tokens short of an empty 1/ms bucket after {elapsed} ms: retry after {ms} ms");
    assert_eq!(err.kind, LimitKind::Tokens);
    assert!(ms <= 500 && ms >= 500 - elapsed - 1, "{ms} ms");
    tokio::time::sleep(err.retry_after).await;
    drop(admit(&two, &t, 500).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_leases_are_shared_and_return_on_drop() {
    let limiters = pair("concurrency", Duration::from_secs(30)).await;
    let t = tenant(None, None, Some(3));
    let (mut ok, no) = hammer(&limiters, &t, 0, 20).await;
    println!(
        "20 concurrent admits, max 3 in flight: {} admitted (leases: limiter one {}, two {}), {} \
         refused",
        ok.len(),
        limiters[0].leases(),
        limiters[1].leases(),
        no.len()
    );
    assert_eq!((ok.len(), no.len()), (3, 17));
    assert_eq!(limiters[0].leases() + limiters[1].leases(), 3);
    for e in &no {
        assert_eq!(
            (e.kind, e.retry_after),
            (LimitKind::Concurrency, Duration::from_secs(1))
        );
    }
    // Dropping one permit frees one slot, for either limiter.
    drop(ok.pop());
    limiters[0].flush().await;
    limiters[1].flush().await;
    assert_eq!(limiters[0].leases() + limiters[1].leases(), 2);
    let again = admit(&limiters[1], &t, 0).await.unwrap();
    assert_eq!(
        refused(admit(&limiters[0], &t, 0).await).kind,
        LimitKind::Concurrency
    );
    drop((again, ok));
    limiters[0].flush().await;
    limiters[1].flush().await;
    let releases = limiters[0].stats().releases + limiters[1].stats().releases;
    assert_eq!(releases, 4);
    let (ok, _) = hammer(&limiters, &t, 0, 3).await;
    assert_eq!(ok.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holders_slot_returns_after_the_lease_ttl() {
    let ttl = Duration::from_millis(1500);
    let [crashed, alive] = pair("crash", ttl).await;
    let t = tenant(None, None, Some(1));
    let held_at = Instant::now();
    // The holder dies: its permit is never dropped, its refresher stops.
    let lost = std::mem::ManuallyDrop::new(admit(&crashed, &t, 0).await.unwrap());
    drop(crashed);
    assert_eq!(
        refused(admit(&alive, &t, 0).await).kind,
        LimitKind::Concurrency
    );
    let mut back_after = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(p) = admit(&alive, &t, 0).await {
            back_after = Some(held_at.elapsed());
            drop(p);
            break;
        }
    }
    let back_after = back_after.unwrap();
    println!("a crashed holder's slot came back after {back_after:?} (lease TTL {ttl:?})");
    assert!(back_after >= ttl, "{back_after:?}");
    assert!(
        back_after < ttl + Duration::from_millis(1500),
        "{back_after:?}"
    );
    let _ = lost;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_outlives_its_ttl() {
    // Refreshed every 333 ms: a request running 3.3 TTLs keeps its slot.
    let ttl = Duration::from_millis(1000);
    let [holder, other] = pair("live", ttl).await;
    let t = tenant(None, None, Some(1));
    let permit = admit(&holder, &t, 0).await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(330)).await;
        assert_eq!(
            refused(admit(&other, &t, 0).await).kind,
            LimitKind::Concurrency
        );
    }
    drop(permit);
    holder.flush().await;
    drop(admit(&other, &t, 0).await.unwrap());
    assert_eq!(holder.stats().leases_restored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_refuses_limited_tenants() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let err = RedisLimiter::connect(RedisLimiterConfig::new(&url))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdmitError::Unavailable(m) if m.starts_with("redis: ")),
        "{err}"
    );
    assert!(RedisLimiter::new(RedisLimiterConfig::new("not a url")).is_err());

    let limiter = RedisLimiter::new(RedisLimiterConfig::new(&url)).unwrap();
    let started = Instant::now();
    let err = admit(&limiter, &tenant(Some(10), None, Some(1)), 1)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    println!("admit with no redis failed after {waited:?}: {err}");
    assert!(matches!(err, AdmitError::Unavailable(_)), "{err}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // A tenant without limits needs no Redis.
    drop(admit(&limiter, &tenant(None, None, None), 1).await.unwrap());
    let stats = limiter.stats();
    assert_eq!(
        (stats.admitted, stats.refused, stats.unavailable),
        (0, 0, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_admits_resume_and_live_leases_are_put_back() {
    let port = free_port();
    let server = OwnServer::start(port);
    let config = RedisLimiterConfig::new(server.url()).lease_ttl(Duration::from_millis(1000));
    let [one, two] = [limiter(config.clone()).await, limiter(config).await];
    let t = tenant(None, None, Some(1));
    let held = admit(&one, &t, 0).await.unwrap();
    drop(server);

    let err = admit(&two, &t, 0).await.unwrap_err();
    assert!(matches!(err, AdmitError::Unavailable(_)), "{err}");

    // The restarted Redis is empty; the holder's refresher puts its live
    // lease back, so the slot stays taken.
    let _server = OwnServer::start(port);
    let mut restored = 0;
    for _ in 0..100 {
        restored = one.stats().leases_restored;
        if restored > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("after the restart: {:?}", one.stats());
    assert_eq!(restored, 1);
    // `two` marked Redis down at its failed admit: it asks again once
    // PROBE_EVERY has passed since.
    tokio::time::sleep(RedisLimiter::PROBE_EVERY).await;
    assert_eq!(
        refused(admit(&two, &t, 0).await).kind,
        LimitKind::Concurrency
    );
    drop(held);
    one.flush().await;
    drop(admit(&two, &t, 0).await.unwrap());
}

/// A gateway over a mock backend with `limiter` and one tenant `t`.
fn gateway(
    limiter: Arc<dyn Limiter>,
    t: Tenant,
) -> (gateway_policy::Gateway, gateway_core::testkit::MockHandle) {
    use gateway_core::testkit::MockBackend;
    use gateway_core::{ByteBound, Pricing};
    let (mock, handle) = MockBackend::new("mock-0", "tiny");
    let gateway = gateway_policy::Gateway::builder(gateway_policy::Settings::default())
        .tenant(t, gateway_policy::key_hash("sk-t"))
        .model(gateway_policy::ModelSpec {
            name: "tiny".into(),
            pricing: Pricing::per_million(1.0, None, 2.0).unwrap(),
            context_window: 4096,
            default_max_tokens: 64,
            media: gateway_policy::MediaCosts::default(),
            counter: Arc::new(ByteBound::default()),
        })
        .backend(Arc::new(mock), "tiny", "tiny", None)
        .limiter(limiter)
        .build()
        .unwrap();
    (gateway, handle)
}

/// A limiter whose Redis is a closed loopback port: every request of a
/// limited tenant is a 503 `limiter_unavailable` with `Retry-After: 1`; the
/// first waits for the refused connection, the next ones are answered at
/// once (the limiter marked Redis down), and after `PROBE_EVERY` one
/// request tries Redis again. Nothing leaks: no request active, nothing
/// reserved or spent in the budget, no lease held, no engine started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_fails_closed_with_503_when_the_limiter_cannot_reach_redis() {
    use gateway_core::{Money, Prompt};
    use gateway_policy::{ClientRequest, ErrorCode};
    let url = format!("redis://127.0.0.1:{}", free_port());
    let limiter = Arc::new(RedisLimiter::new(RedisLimiterConfig::new(url)).unwrap());
    let t = Tenant {
        budget: Some(Money::from_picos(1_000_000_000)),
        ..tenant(Some(10), None, Some(2))
    };
    let (gateway, mock) = gateway(limiter.clone(), t);
    let tenant = gateway.authenticate(Some("sk-t")).unwrap();
    let refuse = |id: &'static str| {
        let gateway = &gateway;
        let tenant = &tenant;
        async move {
            let guard = gateway.request_cancel();
            let cancel = guard.handle().clone();
            let request = ClientRequest::new(id, "tiny", Prompt::Text("hi".into()));
            let started = Instant::now();
            let Err(err) = gateway.generate(tenant, request, cancel).await else {
                panic!("admitted without its limiter");
            };
            let waited = started.elapsed();
            println!(
                "{id} with the limiter's redis down: {} {err} after {waited:?}",
                err.code().status()
            );
            assert_eq!(err.code(), ErrorCode::LimiterUnavailable);
            assert_eq!(
                (
                    err.code().status().as_u16(),
                    err.code().error_type(),
                    err.code().as_str()
                ),
                (503, "server_error", "limiter_unavailable")
            );
            assert!(
                err.message()
                    .starts_with("limits: limiter unavailable: redis: "),
                "{}",
                err.message()
            );
            assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
            waited
        }
    };
    let first = refuse("r-1").await;
    assert!(first < Duration::from_secs(5), "{first:?}");
    for id in ["r-2", "r-3", "r-4"] {
        let waited = refuse(id).await;
        assert!(waited < Duration::from_millis(50), "{id}: {waited:?}");
    }
    let stats = limiter.stats();
    assert_eq!(
        (stats.admitted, stats.refused, stats.unavailable),
        (0, 0, 4)
    );
    // After PROBE_EVERY one request asks Redis again (still refused).
    tokio::time::sleep(RedisLimiter::PROBE_EVERY + Duration::from_millis(50)).await;
    refuse("r-5").await;
    assert_eq!(limiter.stats().unavailable, 5);

    assert_eq!(gateway.active(), 0);
    assert_eq!(limiter.leases(), 0);
    assert_eq!(mock.starts(), 0);
    let account = gateway.account(&tenant.id).unwrap();
    assert_eq!(
        (account.reserved, account.spent, account.requests),
        (Money::ZERO, Money::ZERO, 0)
    );
    let metrics = gateway.render_metrics();
    let line = r#"gateway_requests_total{tenant="t",model="tiny",outcome="limiter_unavailable"} 5"#;
    assert!(metrics.contains(line), "{line} missing from {metrics}");
}
