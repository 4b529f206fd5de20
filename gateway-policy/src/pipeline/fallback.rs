//! Model fallbacks: what a request would need on each fallback model of the
//! one it asked for, one reservation that covers them, and the switch to a
//! fallback when the requested model cannot start it.
//!
//! The rules:
//! - Only the requested model's own `fallbacks` are tried, in order (not
//!   theirs: no chains of chains), and only those the tenant may use, whose
//!   context window fits the prompt plus `max_tokens`, and whose worst case
//!   the reservation covers.
//! - A fallback is tried only when the model before it could not start the
//!   request before its first token: every backend open-circuited,
//!   unhealthy, at capacity past the admission wait, its queue full, or
//!   failing with a retryable kind. Never after a byte reached the client,
//!   never on a request fault (invalid, too long), a cancel or a limit.
//! - One reservation, taken before routing, covers the most expensive model
//!   of the chain; if that does not fit the budget, the requested model's
//!   own worst case is reserved and the fallbacks costing more are dropped.
//!   The request settles once, at the prices of the model that served it.

use std::sync::Arc;

use gateway_core::{
    BudgetGuard, Ledger, LedgerError, Money, Pricing, ReserveRequest, TokenCount, UsageMeter,
};

use super::attempt::Admitted;
use super::estimate::Estimate;
use super::{ClientRequest, Gateway};
use crate::metrics::FallbackLabels;
use crate::{ModelSpec, Tenant};

/// A fallback model a request may move to, with what it needs there.
pub(super) struct Plan {
    pub(super) model: Arc<ModelSpec>,
    pub(super) estimate: TokenCount,
    /// The prompt's leading token ids by this model's counter.
    pub(super) prefix: Option<Arc<[u32]>>,
    /// All the prompt's ids by this model's counter, when kept.
    pub(super) ids: Option<Arc<[u32]>>,
    pub(super) max_tokens: u32,
    /// The most the request can cost on this model.
    pub(super) worst: Money,
}

/// The usable fallbacks of `model` for this request, in order. `primary`
/// is the model's estimate with its media costs; `own` holds, for each
/// fallback of the chain in order, the prompt's estimate by its counter
/// before media costs (counted in the tokenizer pool beforehand).
pub(super) fn plans(
    gateway: &Gateway,
    tenant: &Tenant,
    model: &ModelSpec,
    primary: &Estimate,
    own: &[Option<Estimate>],
    request: &ClientRequest,
) -> Vec<Plan> {
    let (prompt, max_tokens) = (&request.prompt, request.max_tokens);
    let Some(chain) = gateway.inner.fallbacks.get(&model.name) else {
        return Vec::new();
    };
    chain
        .iter()
        .zip(own.iter().map(Some).chain(std::iter::repeat(None)))
        .filter(|(f, _)| tenant.may_use(&f.name))
        .filter_map(|(f, own)| {
            let max_tokens = max_tokens.unwrap_or(f.default_max_tokens);
            if max_tokens == 0 {
                return None;
            }
            // Models sharing a counter and media costs share the estimate;
            // a fallback that takes none of the request's media is skipped.
            let Estimate {
                count: estimate,
                prefix,
                ids,
            } = if Arc::ptr_eq(&f.counter, &model.counter) && f.media == model.media {
                primary.clone()
            } else {
                let own = own.cloned().flatten()?;
                super::estimate::with_media(own, prompt, &f.media).ok()?
            };
            let needed = estimate.value().saturating_add(u64::from(max_tokens));
            if needed > u64::from(f.context_window) {
                return None;
            }
            Some(Plan {
                model: f.clone(),
                estimate,
                prefix,
                ids,
                max_tokens,
                worst: f
                    .pricing
                    .worst_case(estimate.value(), u64::from(max_tokens)),
            })
        })
        .collect()
}

/// Reserves for `request`: the most expensive of `own` and the plans' worst
/// cases; when that does not fit, `own` alone, keeping only the plans it
/// covers. The guard charges at `pricing` until a switch reprices it.
///
/// # Errors
/// The ledger's refusal of `own`.
pub(super) async fn reserve(
    ledger: Arc<dyn Ledger>,
    request: ReserveRequest,
    pricing: Pricing,
    meter: UsageMeter,
    mut plans: Vec<Plan>,
) -> Result<(BudgetGuard, Vec<Plan>), LedgerError> {
    let own = request.amount;
    let most = plans.iter().map(|p| p.worst).fold(own, Money::max);
    if most > own {
        let wide = ReserveRequest {
            amount: most,
            ..request.clone()
        };
        match BudgetGuard::reserve(ledger.clone(), &wide, pricing, meter.clone()).await {
            Ok(guard) => return Ok((guard, plans)),
            Err(LedgerError::BudgetExceeded { .. }) => plans.retain(|p| p.worst <= own),
            Err(other) => return Err(other),
        }
    }
    let guard = BudgetGuard::reserve(ledger, &request, pricing, meter).await?;
    Ok((guard, plans))
}

/// Moves `admitted` to the fallback `plan`: its model, estimate, completion
/// cap and prices; counts it and marks the span.
pub(super) fn switch(gateway: &Gateway, admitted: &mut Admitted, plan: Plan, requested: &str) {
    gateway
        .inner
        .metrics
        .fallbacks
        .get_or_create(&FallbackLabels {
            from: requested.to_owned(),
            to: plan.model.name.clone(),
        })
        .inc();
    admitted.span.record("fallback_from", requested);
    tracing::info!(
        parent: &admitted.span,
        from = requested,
        to = plan.model.name.as_str(),
        "falling back to another model before the first token"
    );
    admitted.guard.reprice(plan.model.pricing);
    let mut request = (*admitted.request).clone();
    request.model = plan.model.name.clone();
    request.max_tokens = plan.max_tokens;
    admitted.request = Arc::new(request);
    admitted.estimate = plan.estimate;
    admitted.prefix = plan.prefix;
    admitted.slo = gateway.slo_of(&plan.model.name);
    admitted.prompt_ids = plan.ids;
    admitted.model = plan.model;
}
