//! [`MemoryLedger`]: budgets held in this process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use gateway_core::{Charge, Ledger, LedgerError, Money, Reservation, ReserveRequest, TenantId};

use super::{AccountLedger, TenantAccount};

#[derive(Debug, Default)]
struct Book {
    accounts: HashMap<TenantId, TenantAccount>,
    outstanding: HashMap<u64, Money>,
    next_ticket: u64,
}

/// Budgets held in this process. Reserve and settle take one short lock,
/// so concurrent requests can never together overspend a budget: a
/// reservation is refused unless `spent + reserved + amount <= budget`.
///
/// A settle charges the request's cost, capped so that `spent` never
/// passes the budget (the cap only bites when the engine counted more
/// tokens than the exact estimate allowed for). Settling a ticket twice is
/// a no-op.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    book: Mutex<Book>,
}

impl MemoryLedger {
    /// An empty ledger; tenants without a budget get an account on first use.
    pub fn new() -> Self {
        MemoryLedger::default()
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens (or updates) `tenant`'s account with a budget.
    pub fn open(&self, tenant: &TenantId, budget: Option<Money>) {
        self.book()
            .accounts
            .entry(tenant.clone())
            .or_default()
            .budget = budget;
    }
}

#[async_trait::async_trait]
impl Ledger for MemoryLedger {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, LedgerError> {
        let mut book = self.book();
        let account = book.accounts.entry(request.tenant.clone()).or_default();
        if let Some(budget) = account.budget {
            let available = budget.saturating_sub(account.spent.saturating_add(account.reserved));
            if request.amount > available {
                return Err(LedgerError::BudgetExceeded {
                    tenant: request.tenant.clone(),
                    needed: request.amount,
                    available,
                });
            }
        }
        account.reserved = account.reserved.saturating_add(request.amount);
        book.next_ticket += 1;
        let ticket = book.next_ticket;
        book.outstanding.insert(ticket, request.amount);
        Ok(Reservation::new(
            request.tenant.clone(),
            request.request_id.clone(),
            request.amount,
            ticket,
        ))
    }

    fn settle(&self, reservation: Reservation, charge: Charge) {
        let mut book = self.book();
        let Some(held) = book.outstanding.remove(&reservation.ticket()) else {
            return;
        };
        let account = book
            .accounts
            .entry(reservation.tenant().clone())
            .or_default();
        account.reserved = account.reserved.saturating_sub(held);
        let cost = match account.budget {
            Some(budget) => charge.cost.min(budget.saturating_sub(account.spent)),
            None => charge.cost,
        };
        account.spent = account.spent.saturating_add(cost);
        account.requests += 1;
        account.usage = account.usage.saturating_add(charge.usage);
    }
}

#[async_trait::async_trait]
impl AccountLedger for MemoryLedger {
    fn account(&self, tenant: &TenantId) -> Option<TenantAccount> {
        self.book().accounts.get(tenant).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::{RequestId, SettleOutcome, Usage};

    fn ask(amount: u64) -> ReserveRequest {
        ReserveRequest {
            tenant: TenantId::new("t"),
            request_id: RequestId::new("r"),
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

    #[tokio::test]
    async fn reserves_within_budget_and_settles_exactly() {
        let ledger = MemoryLedger::new();
        let t = TenantId::new("t");
        ledger.open(&t, Some(Money::from_picos(100)));
        let a = ledger.reserve(&ask(60)).await.unwrap();
        assert!(matches!(
            ledger.reserve(&ask(41)).await,
            Err(LedgerError::BudgetExceeded { .. })
        ));
        let b = ledger.reserve(&ask(40)).await.unwrap();
        assert_eq!(ledger.account(&t).unwrap().reserved, Money::from_picos(100));
        ledger.settle(a, charge(25, Usage::new(3, 2)));
        ledger.settle(b, charge(40, Usage::new(1, 1)));
        let acct = ledger.account(&t).unwrap();
        assert_eq!(acct.spent, Money::from_picos(65));
        assert_eq!(acct.reserved, Money::ZERO);
        assert_eq!(acct.requests, 2);
        assert_eq!(acct.usage, Usage::new(4, 3));
        // 35 left: a 36 reservation is refused, 35 fits.
        assert!(ledger.reserve(&ask(36)).await.is_err());
        assert!(ledger.reserve(&ask(35)).await.is_ok());
    }

    #[tokio::test]
    async fn a_charge_never_passes_the_budget() {
        let ledger = MemoryLedger::new();
        let t = TenantId::new("t");
        ledger.open(&t, Some(Money::from_picos(50)));
        let r = ledger.reserve(&ask(50)).await.unwrap();
        ledger.settle(r, charge(80, Usage::new(1, 1)));
        assert_eq!(ledger.account(&t).unwrap().spent, Money::from_picos(50));
    }

    #[tokio::test]
    async fn tenants_without_budget_are_tracked() {
        let ledger = MemoryLedger::new();
        let r = ledger.reserve(&ask(1_000_000)).await.unwrap();
        ledger.settle(r, charge(7, Usage::new(1, 0)));
        let acct = ledger.account(&TenantId::new("t")).unwrap();
        assert_eq!(
            (acct.budget, acct.spent, acct.requests),
            (None, Money::from_picos(7), 1)
        );
    }
}
