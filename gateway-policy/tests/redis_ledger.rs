//! [`RedisLedger`] against a real Redis: exact values, idempotent settles,
//! refusals, exact arithmetic above 2^53, expiry of abandoned holds, and
//! 200 concurrent reservations from two ledgers against a budget that fits
//! 20.
//!
//! Redis comes from `GATEWAY_TEST_REDIS_URL` (`scripts/test` starts one);
//! see `gateway_tests::redis` for what happens without it.
#![cfg(feature = "redis")]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use std::sync::Arc;
use std::time::Duration;

use gateway_core::{
    Charge, Ledger, LedgerError, Money, RequestId, Reservation, ReserveRequest, SettleOutcome,
    TenantId, Usage,
};
use gateway_policy::{AccountLedger, RedisLedger, RedisLedgerConfig, TenantAccount};
use gateway_tests::redis::{OwnServer, redis_url, unique_prefix};

async fn ledger(prefix: &str) -> RedisLedger {
    RedisLedger::connect(RedisLedgerConfig::new(redis_url()).prefix(prefix))
        .await
        .unwrap()
}

fn ask(tenant: &str, request: &str, amount: u64) -> ReserveRequest {
    ReserveRequest {
        tenant: TenantId::new(tenant),
        request_id: RequestId::new(request),
        amount: Money::from_picos(amount),
    }
}

fn charge(cost: u64, usage: Usage) -> Charge {
    Charge {
        cost: Money::from_picos(cost),
        usage,
        outcome: SettleOutcome::Settled,
    }
}

fn refused_with(result: Result<Reservation, LedgerError>) -> Money {
    match result {
        Err(LedgerError::BudgetExceeded { available, .. }) => available,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserves_settles_and_refuses_exactly() {
    let ledger = ledger(&unique_prefix("exact")).await;
    let t = TenantId::new("t");
    ledger.open(&t, Some(Money::from_picos(100))).await.unwrap();
    let a = ledger.reserve(&ask("t", "a", 60)).await.unwrap();
    assert_eq!(
        refused_with(ledger.reserve(&ask("t", "x", 41)).await),
        Money::from_picos(40)
    );
    let b = ledger.reserve(&ask("t", "b", 40)).await.unwrap();
    let acct = ledger.fetch(&t).await.unwrap().account;
    assert_eq!(
        (acct.spent, acct.reserved),
        (Money::ZERO, Money::from_picos(100))
    );
    // The settle of `a`, remembered to settle it again below.
    let a_again = Reservation::new(
        a.tenant().clone(),
        a.request_id().clone(),
        a.amount(),
        a.ticket(),
    );
    let usage_a = Usage::new(3, 2)
        .with_cached(1)
        .unwrap()
        .with_speculative(4, 2)
        .unwrap()
        .with_canceled(1)
        .unwrap();
    ledger.settle(a, charge(25, usage_a));
    ledger.settle(b, charge(40, Usage::new(1, 1)));
    ledger.flush().await;
    let expected = TenantAccount {
        budget: Some(Money::from_picos(100)),
        spent: Money::from_picos(65),
        reserved: Money::ZERO,
        requests: 2,
        usage: usage_a.saturating_add(Usage::new(1, 1)),
    };
    assert_eq!(ledger.fetch(&t).await.unwrap().account, expected);
    // The admin view (a cache) follows the ledger's own replies.
    assert_eq!(ledger.account(&t), Some(expected));

    // A second settle of the same request's hold is a no-op.
    ledger.settle(a_again, charge(25, usage_a));
    ledger.flush().await;
    assert_eq!(ledger.fetch(&t).await.unwrap().account, expected);
    let stats = ledger.stats();
    assert_eq!(
        (
            stats.settles_queued,
            stats.settles_applied,
            stats.settles_duplicate
        ),
        (3, 2, 1),
        "{stats:?}"
    );

    // 35 left: a 36 reservation is refused, 35 fits, then nothing does.
    assert_eq!(
        refused_with(ledger.reserve(&ask("t", "c", 36)).await),
        Money::from_picos(35)
    );
    let c = ledger.reserve(&ask("t", "c", 35)).await.unwrap();
    assert_eq!(
        refused_with(ledger.reserve(&ask("t", "d", 1)).await),
        Money::ZERO
    );
    // A charge above what is left is capped: spent never passes the budget.
    ledger.settle(c, charge(80, Usage::new(1, 1)));
    ledger.flush().await;
    let acct = ledger.fetch(&t).await.unwrap().account;
    assert_eq!(
        (acct.spent, acct.reserved, acct.requests),
        (Money::from_picos(100), Money::ZERO, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_above_two_to_the_53_is_exact_and_unlimited_tenants_are_tracked() {
    let ledger = ledger(&unique_prefix("big")).await;
    let t = TenantId::new("big");
    // 10^19 picodollars (10 million USD): past 2^63 too.
    let budget = 10_000_000_000_000_000_000_u64;
    ledger
        .open(&t, Some(Money::from_picos(budget)))
        .await
        .unwrap();
    let odd = 9_007_199_254_740_993_u64; // 2^53 + 1: not a double
    let a = ledger.reserve(&ask("big", "a", odd)).await.unwrap();
    let b = ledger
        .reserve(&ask("big", "b", budget - odd))
        .await
        .unwrap();
    assert_eq!(
        refused_with(ledger.reserve(&ask("big", "c", 1)).await),
        Money::ZERO
    );
    assert_eq!(
        ledger.fetch(&t).await.unwrap().account.reserved.picos(),
        budget
    );
    ledger.settle(a, charge(odd - 2, Usage::new(1, 1)));
    ledger.settle(b, charge(1, Usage::new(1, 1)));
    ledger.flush().await;
    let acct = ledger.fetch(&t).await.unwrap().account;
    assert_eq!((acct.spent.picos(), acct.reserved), (odd - 1, Money::ZERO));
    assert_eq!(
        refused_with(ledger.reserve(&ask("big", "d", budget)).await).picos(),
        budget - (odd - 1)
    );

    // A tenant never opened has no budget: everything fits, all is counted.
    let free = TenantId::new("free");
    let r = ledger
        .reserve(&ask("free", "r", 1_000_000_000_000_000))
        .await
        .unwrap();
    ledger.settle(r, charge(7, Usage::new(1, 0)));
    ledger.flush().await;
    let acct = ledger.fetch(&free).await.unwrap().account;
    assert_eq!(
        (acct.budget, acct.spent, acct.reserved, acct.requests),
        (None, Money::from_picos(7), Money::ZERO, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_hold_returns_when_its_ttl_passes() {
    let prefix = unique_prefix("expiry");
    let config = RedisLedgerConfig::new(redis_url())
        .prefix(&prefix)
        .hold_ttl(Duration::from_millis(300));
    let ledger = RedisLedger::connect(config.clone()).await.unwrap();
    let t = TenantId::new("t");
    ledger.open(&t, Some(Money::from_picos(100))).await.unwrap();
    // A crashed replica: it reserves, never settles, and stops renewing.
    let crashed = RedisLedger::connect(config.clone()).await.unwrap();
    let lost = crashed.reserve(&ask("t", "lost", 70)).await.unwrap();
    drop(crashed);
    assert_eq!(
        refused_with(ledger.reserve(&ask("t", "x", 31)).await),
        Money::from_picos(30)
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    // The next reserve first releases the expired hold, exactly.
    let all = ledger.reserve(&ask("t", "all", 100)).await.unwrap();
    let redis = ledger.fetch(&t).await.unwrap();
    assert_eq!(redis.account.reserved, Money::from_picos(100));
    assert_eq!(redis.expired_holds, 1);
    ledger.settle(all, charge(60, Usage::new(1, 1)));
    ledger.flush().await;
    // A settle whose hold is gone (here: the crashed replica's reservation
    // settled on this one, which knows no such hold): charged what it
    // cost, capped at what the budget has left, counted as late.
    ledger.settle(lost, charge(50, Usage::new(1, 1)));
    ledger.flush().await;
    let redis = ledger.fetch(&t).await.unwrap();
    assert_eq!(
        (
            redis.account.spent,
            redis.account.reserved,
            redis.account.requests,
            redis.late_settles
        ),
        (Money::from_picos(100), Money::ZERO, 2, 1)
    );

    // Expiry also runs on a read, with no reserve at all.
    let crashed = RedisLedger::connect(config).await.unwrap();
    let _held = crashed.reserve(&ask("u", "held", 5)).await.unwrap();
    drop(crashed);
    let u = TenantId::new("u");
    assert_eq!(
        ledger.fetch(&u).await.unwrap().account.reserved,
        Money::from_picos(5)
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let redis = ledger.fetch(&u).await.unwrap();
    assert_eq!(
        (redis.account.reserved, redis.expired_holds),
        (Money::ZERO, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_hold_is_renewed_past_its_ttl_and_its_marker_is_short_lived() {
    let prefix = unique_prefix("renew");
    let ledger = RedisLedger::connect(
        RedisLedgerConfig::new(redis_url())
            .prefix(&prefix)
            .hold_ttl(Duration::from_millis(300))
            .settled_ttl(Duration::from_millis(700)),
    )
    .await
    .unwrap();
    let t = TenantId::new("t");
    ledger.open(&t, Some(Money::from_picos(100))).await.unwrap();
    // A stream that runs for five hold TTLs keeps its hold all along.
    let long = ledger.reserve(&ask("t", "long", 70)).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let redis = ledger.fetch(&t).await.unwrap();
        assert_eq!(
            (redis.account.reserved, redis.expired_holds),
            (Money::from_picos(70), 0)
        );
        assert_eq!(
            refused_with(ledger.reserve(&ask("t", "x", 31)).await),
            Money::from_picos(30)
        );
    }
    assert!(ledger.stats().holds_renewed >= 4, "{:?}", ledger.stats());
    ledger.settle(long, charge(64, Usage::new(2, 3)));
    ledger.flush().await;
    let redis = ledger.fetch(&t).await.unwrap();
    assert_eq!(
        (
            redis.account.spent,
            redis.account.reserved,
            redis.expired_holds
        ),
        (Money::from_picos(64), Money::ZERO, 0)
    );
    // The settled marker is named by the gateway (never the client's
    // request id) and goes away after `settled_ttl`.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{prefix}{{t}}:settled:*");
    let markers: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert!(!markers[0].contains("long"), "{markers:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&markers[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 700, "{ttl}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let markers: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(markers.is_empty(), "{markers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ledgers_admit_exactly_what_the_budget_fits() {
    let prefix = unique_prefix("race");
    let one = Arc::new(ledger(&prefix).await);
    let two = Arc::new(ledger(&prefix).await);
    let t = TenantId::new("t");
    let each = 1_000_000_u64;
    let budget = Money::from_picos(20 * each);
    // Both replicas open the same budget, as at start-up.
    one.open(&t, Some(budget)).await.unwrap();
    two.open(&t, Some(budget)).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let ledger = if i % 2 == 0 { one.clone() } else { two.clone() };
            tokio::spawn(async move {
                match ledger.reserve(&ask("t", &format!("r{i}"), each)).await {
                    Ok(r) => {
                        ledger.settle(r, charge(each, Usage::new(10, 5)));
                        true
                    }
                    Err(LedgerError::BudgetExceeded { .. }) => false,
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        if task.await.unwrap() {
            admitted += 1;
        }
    }
    one.flush().await;
    two.flush().await;
    let acct = one.fetch(&t).await.unwrap().account;
    println!("admitted {admitted} of 200; ledger {acct:?}");
    assert_eq!(admitted, 20);
    assert_eq!(
        (acct.spent, acct.reserved, acct.requests),
        (budget, Money::ZERO, 20)
    );
    assert_eq!(acct.usage, Usage::new(200, 100));
    assert_eq!(two.fetch(&t).await.unwrap().account, acct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = RedisLedger::connect(RedisLedgerConfig::new(&url))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::Unavailable(m) if m.contains("redis")),
        "{err}"
    );
    let err = RedisLedger::connect_blocking(RedisLedgerConfig::new(&url)).unwrap_err();
    assert!(matches!(err, LedgerError::Unavailable(_)), "{err}");
    assert!(RedisLedger::connect_blocking(RedisLedgerConfig::new("not a url")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_ledger_opens_budgets_and_starts_on_first_use() {
    let prefix = unique_prefix("blocking");
    let url = redis_url();
    let ledger = tokio::task::spawn_blocking(move || {
        let ledger =
            RedisLedger::connect_blocking(RedisLedgerConfig::new(url).prefix(&prefix)).unwrap();
        ledger
            .open_blocking(&TenantId::new("t"), Some(Money::from_picos(10)))
            .unwrap();
        ledger
    })
    .await
    .unwrap();
    let t = TenantId::new("t");
    assert_eq!(
        ledger.account(&t).map(|a| a.budget),
        Some(Some(Money::from_picos(10)))
    );
    let r = ledger.reserve(&ask("t", "r", 10)).await.unwrap();
    ledger.settle(r, charge(4, Usage::new(1, 1)));
    ledger.flush().await;
    assert_eq!(ledger.account(&t).unwrap().spent, Money::from_picos(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_then_recovers_and_settles() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = OwnServer::start(port);
    let ledger = RedisLedger::connect(RedisLedgerConfig::new(format!(
        "redis://127.0.0.1:{}",
        server.port
    )))
    .await
    .unwrap();
    let t = TenantId::new("t");
    ledger.open(&t, Some(Money::from_picos(100))).await.unwrap();
    let r = ledger.reserve(&ask("t", "r", 10)).await.unwrap();
    drop(server);

    // Down: reserves fail (the gateway answers 503), they do not hang.
    for attempt in 0..3 {
        let started = tokio::time::Instant::now();
        let err = ledger.reserve(&ask("t", "down", 10)).await.unwrap_err();
        let waited = started.elapsed();
        println!("reserve {attempt} with redis down failed after {waited:?}: {err}");
        assert!(matches!(err, LedgerError::Unavailable(_)), "{err}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    // A settle while down is retried until Redis is back.
    ledger.settle(r, charge(7, Usage::new(1, 1)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _server = OwnServer::start(port);
    // (The restarted Redis has no data: the budget comes back with the
    // next reserve; the settle finds no hold and is charged as late.)
    tokio::time::timeout(Duration::from_secs(20), ledger.flush())
        .await
        .unwrap();
    let stats = ledger.stats();
    println!("after recovery: {stats:?}");
    assert_eq!(
        (stats.settles_applied, stats.journal_pending),
        (1, 0),
        "{stats:?}"
    );
    let mut ok = None;
    for _ in 0..50 {
        match ledger.reserve(&ask("t", "again", 10)).await {
            Ok(r) => {
                ok = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(ok.is_some(), "no reserve after Redis came back");
    let acct = ledger.fetch(&t).await.unwrap().account;
    assert_eq!(acct.budget, Some(Money::from_picos(100)));
    assert_eq!(acct.reserved, Money::from_picos(10));
}
