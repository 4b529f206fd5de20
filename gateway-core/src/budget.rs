//! Budgets: the [`Ledger`] trait and the [`BudgetGuard`] that makes every
//! reservation settle exactly once.
//!
//! `reserve` is async (a shared ledger may sit in Redis); `settle` is
//! synchronous and must not block, so it can run in `Drop`, including while
//! a panic unwinds.

use std::fmt;
use std::sync::Arc;

use crate::{Money, Pricing, RequestId, TenantId, Usage, UsageMeter};

/// What to reserve: an amount for one request of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Who pays.
    pub tenant: TenantId,
    /// The request the money is held for (settlement is keyed by it).
    pub request_id: RequestId,
    /// The most the request can cost.
    pub amount: Money,
}

/// Money held for one request. Only a ledger makes one, only
/// [`Ledger::settle`] consumes one, and it is neither `Clone` nor `Copy`,
/// so the same reservation cannot be settled twice.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    tenant: TenantId,
    request_id: RequestId,
    amount: Money,
    ticket: u64,
}

impl Reservation {
    /// Made by a [`Ledger`] when it holds `amount`; `ticket` is the ledger's
    /// own handle for it.
    pub fn new(tenant: TenantId, request_id: RequestId, amount: Money, ticket: u64) -> Self {
        Reservation {
            tenant,
            request_id,
            amount,
            ticket,
        }
    }
    /// Who pays.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    /// The request.
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }
    /// The amount held.
    pub fn amount(&self) -> Money {
        self.amount
    }
    /// The ledger's handle.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }
}

/// How a reservation came to be settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SettleOutcome {
    /// `settle` was called with the request's final usage.
    Settled,
    /// The guard was dropped without `settle` (a path forgot, or a panic
    /// unwound); the charge comes from the meter.
    Abandoned,
}

/// What a settled request is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The money charged.
    pub cost: Money,
    /// The tokens it was charged for.
    pub usage: Usage,
    /// How it was settled.
    pub outcome: SettleOutcome,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Holding the amount would let the tenant overspend its budget.
    #[error("budget exceeded for tenant {tenant}: needs {needed}, {available} available")]
    BudgetExceeded {
        /// The tenant.
        tenant: TenantId,
        /// What the request needs.
        needed: Money,
        /// What is left after spent and held money.
        available: Money,
    },
    /// The ledger does not know the tenant.
    #[error("unknown tenant {0}")]
    UnknownTenant(TenantId),
    /// The ledger's store cannot be reached.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

/// Where budgets live: holds money for requests and charges them.
///
/// Implementations must never let a tenant's spent plus held money pass its
/// budget, whatever the concurrency.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + fmt::Debug + 'static {
    /// Holds `request.amount` for the request.
    ///
    /// # Errors
    /// [`LedgerError::BudgetExceeded`] when it would overspend, or another
    /// [`LedgerError`].
    ///
    /// # Cancel safety
    /// Implementations must not leave money held if the future is dropped
    /// before it returns the reservation.
    async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, LedgerError>;

    /// Releases the reservation and charges `charge.cost`. Synchronous and
    /// non-blocking; must not panic.
    fn settle(&self, reservation: Reservation, charge: Charge);
}

const _: fn(&dyn Ledger) = |_| {};

/// What settling a guard did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The amount that was held.
    pub reserved: Money,
    /// The amount charged.
    pub charged: Money,
    /// The tokens charged for.
    pub usage: Usage,
}

impl Receipt {
    /// How much the charge went above the reservation (zero when the
    /// estimate held).
    pub fn overrun(&self) -> Money {
        self.charged.saturating_sub(self.reserved)
    }
}

struct Pending {
    ledger: Arc<dyn Ledger>,
    reservation: Reservation,
    pricing: Pricing,
}

/// An RAII reservation: settles exactly once.
///
/// [`settle`](BudgetGuard::settle) consumes the guard, so a second settle
/// does not compile. A guard dropped without it (an early return, a
/// canceled task, a panic) settles in `Drop` from its [`UsageMeter`].
///
/// Settling twice does not compile:
///
/// ```compile_fail,E0382
/// use gateway_core::{BudgetGuard, Usage};
/// fn twice(guard: BudgetGuard) {
///     guard.settle(Usage::ZERO);
///     guard.settle(Usage::ZERO); // error[E0382]: use of moved value
/// }
/// ```
///
/// nor does settling one [`Reservation`] twice with a ledger:
///
/// ```compile_fail,E0382
/// use gateway_core::{Charge, Ledger, Reservation};
/// fn twice(ledger: &dyn Ledger, r: Reservation, c: Charge) {
///     ledger.settle(r, c);
///     ledger.settle(r, c); // error[E0382]: use of moved value
/// }
/// ```
#[must_use = "a BudgetGuard dropped without settle charges what its meter saw"]
pub struct BudgetGuard {
    pending: Option<Pending>,
    meter: UsageMeter,
}

impl fmt::Debug for BudgetGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetGuard")
            .field(
                "reservation",
                &self.pending.as_ref().map(|p| &p.reservation),
            )
            .field("meter", &self.meter.snapshot())
            .finish()
    }
}

impl BudgetGuard {
    /// Reserves `request.amount` in `ledger`; the guard charges at `pricing`
    /// and, if dropped, from `meter`.
    ///
    /// # Errors
    /// What the ledger's `reserve` returns.
    ///
    /// # Cancel safety
    /// As cancel safe as the ledger's `reserve`.
    pub async fn reserve(
        ledger: Arc<dyn Ledger>,
        request: &ReserveRequest,
        pricing: Pricing,
        meter: UsageMeter,
    ) -> Result<BudgetGuard, LedgerError> {
        let reservation = ledger.reserve(request).await?;
        Ok(BudgetGuard {
            pending: Some(Pending {
                ledger,
                reservation,
                pricing,
            }),
            meter,
        })
    }

    /// The meter a drop settles from.
    pub fn meter(&self) -> &UsageMeter {
        &self.meter
    }

    /// The amount held.
    pub fn reserved(&self) -> Money {
        self.pending
            .as_ref()
            .map_or(Money::ZERO, |p| p.reservation.amount())
    }

    /// Charges at `pricing` from now on, for a request that moved to another
    /// model (a fallback) before anything was charged. The amount held does
    /// not change: the caller must have reserved enough for the new prices.
    pub fn reprice(&mut self, pricing: Pricing) {
        if let Some(p) = &mut self.pending {
            p.pricing = pricing;
        }
    }

    /// Charges `usage` and releases the rest of the reservation.
    pub fn settle(mut self, usage: Usage) -> Receipt {
        self.finish(usage, SettleOutcome::Settled)
    }

    fn finish(&mut self, usage: Usage, outcome: SettleOutcome) -> Receipt {
        let Some(p) = self.pending.take() else {
            // Unreachable: `settle` consumes the guard and `Drop` runs once.
            return Receipt {
                reserved: Money::ZERO,
                charged: Money::ZERO,
                usage,
            };
        };
        let reserved = p.reservation.amount();
        let cost = p.pricing.cost(&usage);
        p.ledger.settle(
            p.reservation,
            Charge {
                cost,
                usage,
                outcome,
            },
        );
        Receipt {
            reserved,
            charged: cost,
            usage,
        }
    }
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        if self.pending.is_some() {
            let usage = self.meter.snapshot();
            self.finish(usage, SettleOutcome::Abandoned);
        }
    }
}
