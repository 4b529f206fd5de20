//! [`Tenant`]: who pays, and the limits that apply to them.

use std::collections::HashSet;
use std::num::{NonZeroU32, NonZeroU64};

use gateway_core::{LatencyClass, Money, PriceError, TenantId};

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
    /// Whether a request may ask for a class above `priority` (a batch
    /// tenant's `x-priority: interactive`); without it such a request runs
    /// in `priority`. See [`Tenant::class_for`].
    pub allow_priority_raise: bool,
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
            allow_priority_raise: false,
            models: None,
        }
    }

    /// Sets a hard budget of `budget`.
    ///
    /// ```
    /// use gateway_core::Money;
    /// use gateway_policy::Tenant;
    ///
    /// let t = Tenant::new("team-a").with_budget(Money::from_picos(5_000_000_000_000));
    /// assert_eq!(t.budget.map(Money::usd), Some(5.0));
    /// ```
    #[must_use]
    pub fn with_budget(mut self, budget: Money) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Sets a hard budget of `usd` US dollars (rounded to the picodollar),
    /// as the config file's `budget_usd`.
    ///
    /// # Errors
    /// [`PriceError`] if `usd` is negative, not finite, or too large for
    /// [`Money`].
    ///
    /// ```
    /// use gateway_core::Money;
    /// use gateway_policy::Tenant;
    ///
    /// let t = Tenant::new("team-a").with_budget_usd(12.5).unwrap();
    /// assert_eq!(t.budget, Some(Money::from_picos(12_500_000_000_000)));
    /// assert!(Tenant::new("team-b").with_budget_usd(-1.0).is_err());
    /// ```
    pub fn with_budget_usd(self, usd: f64) -> Result<Self, PriceError> {
        Ok(self.with_budget(Money::from_usd(usd)?))
    }

    /// The class a request runs in when it asked for `asked` (`None`: it
    /// named none). A request may always lower its class (interactive to
    /// batch); it may raise it above the tenant's `priority` only when
    /// `allow_priority_raise` is set, else it runs in `priority`.
    ///
    /// ```
    /// use gateway_core::LatencyClass::{Batch, Interactive};
    /// use gateway_policy::Tenant;
    ///
    /// let mut t = Tenant::new("nightly");
    /// t.priority = Batch;
    /// assert_eq!(t.class_for(Some(Interactive)), Batch);
    /// t.allow_priority_raise = true;
    /// assert_eq!(t.class_for(Some(Interactive)), Interactive);
    /// ```
    pub fn class_for(&self, asked: Option<LatencyClass>) -> LatencyClass {
        match (self.priority, asked) {
            (own, None) => own,
            (LatencyClass::Batch, Some(LatencyClass::Interactive))
                if !self.allow_priority_raise =>
            {
                LatencyClass::Batch
            }
            (_, Some(asked)) => asked,
        }
    }

    /// Whether it may use `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LatencyClass::{Batch, Interactive};

    #[test]
    fn a_request_may_lower_its_class_and_raise_it_only_when_allowed() {
        let mut t = Tenant::new("t");
        // Interactive tenant: anything asked goes.
        for (asked, runs) in [
            (None, Interactive),
            (Some(Interactive), Interactive),
            (Some(Batch), Batch),
        ] {
            assert_eq!(t.class_for(asked), runs, "{asked:?}");
        }
        // Batch tenant: interactive is refused, quietly.
        t.priority = Batch;
        for (asked, runs) in [
            (None, Batch),
            (Some(Interactive), Batch),
            (Some(Batch), Batch),
        ] {
            assert_eq!(t.class_for(asked), runs, "{asked:?}");
        }
        // Batch tenant allowed to raise.
        t.allow_priority_raise = true;
        for (asked, runs) in [
            (None, Batch),
            (Some(Interactive), Interactive),
            (Some(Batch), Batch),
        ] {
            assert_eq!(t.class_for(asked), runs, "{asked:?}");
        }
    }
}
