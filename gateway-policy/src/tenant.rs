//! [`Tenant`]: who pays, and the limits that apply to them.

use std::collections::HashSet;
use std::num::{NonZeroU32, NonZeroU64};

use gateway_core::{LatencyClass, Money, TenantId};

/// A tenant and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Its id (a label value: from configuration only).
    pub id: TenantId,
    /// Hard budget; never overspent.
    pub budget: Option<Money>,
    /// Requests per minute.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Tokens per minute, counted as prompt estimate plus `max_tokens`.
    pub tokens_per_minute: Option<NonZeroU64>,
    /// Requests in flight at once.
    pub max_concurrency: Option<NonZeroU32>,
    /// Share of contended capacity.
    pub weight: NonZeroU32,
    /// The class of its requests that do not name one (the server's
    /// `x-priority` header): batch waits behind interactive work.
    pub priority: LatencyClass,
    /// Models it may use; `None` means all.
    pub models: Option<HashSet<String>>,
}

impl Tenant {
    /// A tenant with no limits, weight 1, interactive, all models allowed.
    pub fn new(id: &str) -> Self {
        Tenant {
            id: TenantId::new(id),
            budget: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrency: None,
            weight: NonZeroU32::MIN,
            priority: LatencyClass::Interactive,
            models: None,
        }
    }

    /// Whether it may use `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}
