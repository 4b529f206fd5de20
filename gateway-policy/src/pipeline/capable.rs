//! Only equivalent targets: which of a model's backends can serve what a
//! request asks for, the refusal when none can, and the per-model
//! preference by engine kind.
//!
//! The rules:
//! - A backend can serve a request when its capabilities hold every one
//!   the request needs ([`GenerateRequest::needs`]) and its own context
//!   window, if it has one, holds the prompt estimate plus `max_tokens`.
//!   Routing, retries and fallbacks consider only such backends; the others
//!   are never attempted, so their breakers never count the request.
//! - Before admission: when no backend of the model nor of any usable
//!   fallback can serve it, the request is refused with 400
//!   `unsupported_capability` (or `context_length_exceeded` when only
//!   backend windows are too small), naming what is missing; nothing is
//!   reserved or charged. Fallbacks none of whose backends can serve it are
//!   dropped from the request's chain (and from its reservation).
//! - This is a check of the configuration, not of health: when capable
//!   backends exist but are down or busy, the request waits or fails as
//!   any other does (503 `overloaded`, 502), and may move to a fallback.
//! - When the requested model cannot serve it and a fallback can, the
//!   request moves to that fallback at once (counted as a fallback), and
//!   the reservation covers that fallback.
//! - Preference: a model's `prefer` list of engine kinds puts its backends
//!   of those kinds first, in the list's order, for interactive requests;
//!   within a kind, and for the rest, the routing policy's order stands.
//!   Batch requests keep the routing policy's order.
//!
//! [`GenerateRequest::needs`]: gateway_core::GenerateRequest::needs

use gateway_core::{Capabilities, EngineKind, LatencyClass, Money};

use super::Gateway;
use super::fallback::Plan;
use crate::pool::BackendSlot;
use crate::{ErrorCode, GatewayError, ModelSpec};

/// What one request needs of a backend on one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Needs {
    /// The capabilities it asks for.
    pub(super) capabilities: Capabilities,
    /// Its prompt estimate on the model.
    pub(super) prompt: u64,
    /// Its completion cap on the model.
    pub(super) max_tokens: u32,
}

impl Needs {
    /// Prompt plus completion tokens.
    fn tokens(&self) -> u64 {
        self.prompt.saturating_add(u64::from(self.max_tokens))
    }

    /// Whether `slot` can serve it.
    pub(super) fn served_by(&self, slot: &BackendSlot) -> bool {
        slot.capabilities().contains_all(self.capabilities) && self.fits(slot)
    }

    /// Whether it fits `slot`'s own context window.
    fn fits(&self, slot: &BackendSlot) -> bool {
        slot.context_window()
            .is_none_or(|w| self.tokens() <= u64::from(w.get()))
    }
}

/// The requested model's fallback plans that can serve the request, and
/// whether the model itself can.
pub(super) struct Checked {
    /// The usable fallbacks that have a backend able to serve it, in order.
    pub(super) plans: Vec<Plan>,
    /// Whether the requested model has a backend able to serve it.
    pub(super) model_serves: bool,
}

impl Checked {
    /// The amount to reserve for the request's own model: `own`, the
    /// model's worst case, when it can serve the request; else the worst
    /// case of the first fallback that can, where the request goes first.
    pub(super) fn own_worst(&self, own: Money) -> Money {
        match (self.model_serves, self.plans.first()) {
            (false, Some(plan)) => plan.worst,
            _ => own,
        }
    }
}

/// Checks, before admission, that some backend of `model` or of one of its
/// usable fallbacks (`plans`) can serve the request.
///
/// # Errors
/// The 400 naming what is missing when none can.
pub(super) fn check(
    gateway: &Gateway,
    model: &ModelSpec,
    needs: Needs,
    plans: Vec<Plan>,
) -> Result<Checked, GatewayError> {
    let model_serves = slots(gateway, &model.name).any(|s| needs.served_by(s));
    let mut refused: Vec<(&str, Needs)> = Vec::new();
    if !model_serves {
        refused.push((&model.name, needs));
    }
    let mut kept = Vec::with_capacity(plans.len());
    let mut dropped = Vec::new();
    for plan in plans {
        let on_plan = Needs {
            prompt: plan.estimate.value(),
            max_tokens: plan.max_tokens,
            ..needs
        };
        if slots(gateway, &plan.model.name).any(|s| on_plan.served_by(s)) {
            kept.push(plan);
        } else {
            dropped.push((plan, on_plan));
        }
    }
    if model_serves || !kept.is_empty() {
        return Ok(Checked {
            plans: kept,
            model_serves,
        });
    }
    refused.extend(dropped.iter().map(|(p, n)| (p.model.name.as_str(), *n)));
    Err(chain_error(gateway, &refused))
}

/// The indices of `model`'s backends that can serve `needs` (all of them
/// without needs).
///
/// # Errors
/// The error naming what is missing when none can.
pub(super) fn backends(
    gateway: &Gateway,
    model: &ModelSpec,
    needs: Option<&Needs>,
) -> Result<Vec<usize>, GatewayError> {
    let all: &[usize] = gateway
        .inner
        .by_model
        .get(&model.name)
        .map_or(&[], Vec::as_slice);
    let Some(needs) = needs else {
        return Ok(all.to_vec());
    };
    let capable: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| gateway.slot(*i).is_some_and(|s| needs.served_by(s)))
        .collect();
    if capable.is_empty() && !all.is_empty() {
        return Err(model_error(gateway, &model.name, needs));
    }
    Ok(capable)
}

/// Whether `err` is this module's refusal (a model that cannot serve the
/// request), which says nothing of whether the models that could were
/// available.
pub(super) fn is_refusal(err: &GatewayError) -> bool {
    matches!(
        err.code(),
        ErrorCode::UnsupportedCapability | ErrorCode::ContextLengthExceeded
    )
}

/// `ranked` (indices of `model`'s backends) with those of the model's
/// preferred engine kinds first, in the preference's order, for an
/// interactive request; otherwise unchanged. The order within each group
/// stays.
pub(super) fn prefer(
    gateway: &Gateway,
    model: &ModelSpec,
    class: LatencyClass,
    mut ranked: Vec<usize>,
) -> Vec<usize> {
    if class != LatencyClass::Interactive {
        return ranked;
    }
    let Some(kinds) = gateway.inner.prefer.get(&model.name) else {
        return ranked;
    };
    ranked.sort_by_key(|i| {
        gateway
            .slot(*i)
            .and_then(|s| rank_of(kinds, s.backend.info().engine))
            .unwrap_or(kinds.len())
    });
    ranked
}

fn rank_of(kinds: &[EngineKind], engine: EngineKind) -> Option<usize> {
    kinds.iter().position(|k| *k == engine)
}

/// The backends of `model`.
fn slots<'a>(gateway: &'a Gateway, model: &str) -> impl Iterator<Item = &'a BackendSlot> {
    gateway
        .inner
        .by_model
        .get(model)
        .into_iter()
        .flatten()
        .filter_map(|i| gateway.slot(*i).map(|s| &**s))
}

/// The refusal when none of `refused` (each model with the request's needs
/// there) can serve the request: `context_length_exceeded` when every model
/// has a backend with every capability asked for, only with too small a
/// window; else `unsupported_capability`. One model's reason alone, or
/// each model's in turn.
fn chain_error(gateway: &Gateway, refused: &[(&str, Needs)]) -> GatewayError {
    let errors: Vec<GatewayError> = refused
        .iter()
        .map(|(model, needs)| model_error(gateway, model, needs))
        .collect();
    if errors.len() == 1 {
        if let Some(err) = errors.into_iter().next() {
            return err;
        }
        return GatewayError::new(ErrorCode::Internal, "no model was checked");
    }
    let code = if errors
        .iter()
        .all(|e| e.code() == ErrorCode::ContextLengthExceeded)
    {
        ErrorCode::ContextLengthExceeded
    } else {
        ErrorCode::UnsupportedCapability
    };
    let message = refused
        .iter()
        .zip(&errors)
        .enumerate()
        .map(|(i, ((model, _), err))| {
            let what = if i == 0 { "model" } else { "fallback" };
            format!("{what} {model}: {}", err.message())
        })
        .collect::<Vec<_>>()
        .join("; ");
    GatewayError::new(code, message)
}

/// Why no backend of `model` can serve `needs`.
fn model_error(gateway: &Gateway, model: &str, needs: &Needs) -> GatewayError {
    let asked = needs.capabilities;
    // Capabilities no backend has at all; whether one has them all.
    let mut nowhere = asked;
    let mut windows: Vec<u32> = Vec::new();
    for slot in slots(gateway, model) {
        let missing = asked.missing_from(slot.capabilities());
        nowhere = nowhere.intersection(missing);
        if missing.is_empty() {
            windows.extend(slot.context_window().map(|w| w.get()));
        }
    }
    // A backend with every capability asked for, yet unable to serve:
    // its window is too small.
    if !windows.is_empty() {
        let largest = windows.iter().copied().max().unwrap_or(0);
        let with = if asked.is_empty() {
            String::new()
        } else {
            format!(" with {asked}")
        };
        return GatewayError::new(
            ErrorCode::ContextLengthExceeded,
            format!(
                "the prompt ({} tokens) plus max_tokens ({}) needs {} tokens; the backends of model {model} that serve this request{with} take at most {largest}",
                needs.prompt,
                needs.max_tokens,
                needs.tokens(),
            ),
        );
    }
    let message = if nowhere.is_empty() {
        format!("no backend of model {model} supports {asked} together")
    } else {
        let asked_by: Vec<&str> = nowhere.iter().map(|c| c.asked_by()).collect();
        format!(
            "model {model} has no backend that supports {nowhere} (asked for by {})",
            asked_by.join("; ")
        )
    };
    GatewayError::new(ErrorCode::UnsupportedCapability, message)
}
