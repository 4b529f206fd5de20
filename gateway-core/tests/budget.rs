//! The budget guard settles every reservation exactly once: on `settle`, on
//! drop, and while a panic unwinds.

use std::sync::Arc;

use gateway_core::testkit::TestLedger;
use gateway_core::*;

fn pricing() -> Pricing {
    Pricing {
        input: Money::from_picos(100),
        cached_input: Money::from_picos(10),
        output: Money::from_picos(1000),
    }
}

fn reserve_request(id: &str, amount: u64) -> ReserveRequest {
    ReserveRequest {
        tenant: TenantId::new("team-a"),
        request_id: RequestId::new(id),
        amount: Money::from_picos(amount),
    }
}

#[tokio::test]
async fn settle_charges_once_and_releases_the_rest() {
    let ledger = TestLedger::new();
    let tenant = TenantId::new("team-a");
    ledger.set_budget(&tenant, Money::from_picos(1_000_000));
    let guard = BudgetGuard::reserve(
        Arc::new(ledger.clone()),
        &reserve_request("r1", 50_000),
        pricing(),
        UsageMeter::new(),
    )
    .await
    .unwrap();
    assert_eq!(guard.reserved(), Money::from_picos(50_000));
    assert_eq!(ledger.held(&tenant), Money::from_picos(50_000));

    let usage = Usage::new(40, 7).with_cached(10).unwrap();
    let receipt = guard.settle(usage);
    // 30 * 100 + 10 * 10 + 7 * 1000
    assert_eq!(receipt.charged, Money::from_picos(10_100));
    assert_eq!(receipt.overrun(), Money::ZERO);
    assert_eq!(ledger.spent(&tenant), Money::from_picos(10_100));
    assert_eq!(ledger.held(&tenant), Money::ZERO);
    let settled = ledger.settled();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].charge.outcome, SettleOutcome::Settled);
    assert_eq!(settled[0].charge.usage, usage);
    assert_eq!(ledger.outstanding(), 0);
}

#[tokio::test]
async fn a_dropped_guard_settles_from_its_meter() {
    let ledger = TestLedger::new();
    let meter = UsageMeter::new();
    let guard = BudgetGuard::reserve(
        Arc::new(ledger.clone()),
        &reserve_request("r2", 90_000),
        pricing(),
        meter.clone(),
    )
    .await
    .unwrap();
    meter.set_prompt(20);
    meter.add_delivered(3);
    meter.add_canceled(5);
    drop(guard);
    let settled = ledger.settled();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].charge.outcome, SettleOutcome::Abandoned);
    assert_eq!(
        settled[0].charge.usage,
        Usage::new(20, 3).with_canceled(5).unwrap()
    );
    // Delivered tokens only: 20 * 100 + 3 * 1000.
    assert_eq!(settled[0].charge.cost, Money::from_picos(5_000));
    assert_eq!(ledger.held(&TenantId::new("team-a")), Money::ZERO);
}

#[tokio::test]
async fn a_panicking_task_still_settles() {
    let ledger = TestLedger::new();
    let meter = UsageMeter::new();
    let guard = BudgetGuard::reserve(
        Arc::new(ledger.clone()),
        &reserve_request("r3", 90_000),
        pricing(),
        meter.clone(),
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _guard = guard;
        meter.set_prompt(4);
        meter.add_delivered(2);
        panic!("a bug in the middle of a stream");
    });
    let err = task.await.unwrap_err();
    assert!(err.is_panic());
    let settled = ledger.settled();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].request_id, "r3");
    assert_eq!(settled[0].charge.outcome, SettleOutcome::Abandoned);
    assert_eq!(settled[0].charge.usage, Usage::new(4, 2));
    assert_eq!(ledger.outstanding(), 0);
}

#[tokio::test]
async fn a_refused_reservation_holds_nothing() {
    let ledger = TestLedger::new();
    let tenant = TenantId::new("team-a");
    ledger.set_budget(&tenant, Money::from_picos(100));
    let err = BudgetGuard::reserve(
        Arc::new(ledger.clone()),
        &reserve_request("r4", 101),
        pricing(),
        UsageMeter::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        LedgerError::BudgetExceeded {
            tenant: tenant.clone(),
            needed: Money::from_picos(101),
            available: Money::from_picos(100),
        }
    );
    assert_eq!(ledger.held(&tenant), Money::ZERO);
    assert_eq!(ledger.outstanding(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guards_never_overspend_and_all_settle() {
    let ledger = TestLedger::new();
    let tenant = TenantId::new("team-a");
    ledger.set_budget(&tenant, Money::from_picos(20_000));
    let shared: Arc<dyn Ledger> = Arc::new(ledger.clone());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let guard = BudgetGuard::reserve(
                    shared,
                    &reserve_request(&format!("c{i}"), 1_000),
                    pricing(),
                    UsageMeter::new(),
                )
                .await
                .ok()?;
                tokio::task::yield_now().await;
                // Each request used its whole reservation: 1 output token.
                Some(guard.settle(Usage::new(0, 1)))
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap().is_some() {
            admitted += 1;
        }
    }
    // Settled guards free nothing of the spend, so exactly 20 fit.
    assert_eq!(admitted, 20);
    assert_eq!(ledger.spent(&tenant), Money::from_picos(20_000));
    assert_eq!(ledger.held(&tenant), Money::ZERO);
    assert_eq!(ledger.settled().len(), 20);
}
