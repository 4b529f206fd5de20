//! Budgets: [`MemoryLedger`] (in this process), [`RedisLedger`] (shared by
//! replicas, feature `redis`), and [`AccountLedger`], the view of a tenant's
//! account that the admin route shows.

use gateway_core::{Ledger, Money, TenantId, Usage};

#[cfg(feature = "redis")]
mod journal;
mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use self::memory::MemoryLedger;
#[cfg(feature = "redis")]
pub use self::redis::{RedisAccount, RedisLedger, RedisLedgerConfig, RedisLedgerStats};

/// A tenant's account: exact ledger values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantAccount {
    /// Hard budget, if any.
    pub budget: Option<Money>,
    /// Charged by settled requests; only grows.
    pub spent: Money,
    /// Held by requests in flight; zero when nothing is in flight.
    pub reserved: Money,
    /// Settled requests.
    pub requests: u64,
    /// Tokens of settled requests, summed.
    pub usage: Usage,
}

/// A [`Ledger`] that can show a tenant's account.
#[async_trait::async_trait]
pub trait AccountLedger: Ledger {
    /// The account of `tenant`, if the ledger knows it.
    fn account(&self, tenant: &TenantId) -> Option<TenantAccount>;

    /// Waits until every settle handed to the ledger is applied (a ledger
    /// that settles in the background must not lose charges at shutdown).
    /// Immediate for ledgers that settle in place.
    async fn flush(&self) {}
}
