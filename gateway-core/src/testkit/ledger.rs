//! [`TestLedger`]: an in-memory [`Ledger`] that records every settlement,
//! for tests of anything that reserves money.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Charge, Ledger, LedgerError, Money, Reservation, ReserveRequest, TenantId};

/// One settled reservation as the ledger saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The reservation's request id.
    pub request_id: String,
    /// The amount that was held.
    pub reserved: Money,
    /// What was charged.
    pub charge: Charge,
}

#[derive(Debug, Default)]
struct Account {
    budget: Option<Money>,
    spent: Money,
    held: Money,
}

#[derive(Debug, Default)]
struct Book {
    accounts: HashMap<TenantId, Account>,
    settled: Vec<Settled>,
    next_ticket: u64,
    outstanding: HashMap<u64, Money>,
}

/// A simple, exact in-memory ledger for tests: optional budget per tenant,
/// refuses reservations that would overspend, records settlements.
#[derive(Debug, Clone, Default)]
pub struct TestLedger {
    book: Arc<Mutex<Book>>,
}

impl TestLedger {
    /// An empty ledger; unknown tenants have no budget limit.
    pub fn new() -> Self {
        TestLedger::default()
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives `tenant` a hard budget.
    pub fn set_budget(&self, tenant: &TenantId, budget: Money) {
        self.book()
            .accounts
            .entry(tenant.clone())
            .or_default()
            .budget = Some(budget);
    }

    /// Money charged to `tenant` so far.
    pub fn spent(&self, tenant: &TenantId) -> Money {
        self.book()
            .accounts
            .get(tenant)
            .map_or(Money::ZERO, |a| a.spent)
    }

    /// Money `tenant` holds in open reservations.
    pub fn held(&self, tenant: &TenantId) -> Money {
        self.book()
            .accounts
            .get(tenant)
            .map_or(Money::ZERO, |a| a.held)
    }

    /// Every settlement, in order.
    pub fn settled(&self) -> Vec<Settled> {
        self.book().settled.clone()
    }

    /// Reservations not yet settled.
    pub fn outstanding(&self) -> usize {
        self.book().outstanding.len()
    }
}

#[async_trait::async_trait]
impl Ledger for TestLedger {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, LedgerError> {
        let mut book = self.book();
        let account = book.accounts.entry(request.tenant.clone()).or_default();
        if let Some(budget) = account.budget {
            let available = budget.saturating_sub(account.spent.saturating_add(account.held));
            if request.amount > available {
                return Err(LedgerError::BudgetExceeded {
                    tenant: request.tenant.clone(),
                    needed: request.amount,
                    available,
                });
            }
        }
        account.held = account.held.saturating_add(request.amount);
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
        if book.outstanding.remove(&reservation.ticket()).is_none() {
            return;
        }
        if let Some(account) = book.accounts.get_mut(reservation.tenant()) {
            account.held = account.held.saturating_sub(reservation.amount());
            account.spent = account.spent.saturating_add(charge.cost);
        }
        book.settled.push(Settled {
            request_id: reservation.request_id().to_string(),
            reserved: reservation.amount(),
            charge,
        });
    }
}
