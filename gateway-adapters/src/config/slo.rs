//! A model's latency targets, `[models.slo.interactive]` and
//! `[models.slo.batch]`, each with `ttft_ms` and `itl_ms`.

use std::time::Duration;

use gateway_policy::route::{Slo, SloTargets};

use super::walk::{Check, Problems, Reader};

const SLO_KEYS: &[&str] = &["interactive", "batch"];
const TARGET_KEYS: &[&str] = &["ttft_ms", "itl_ms"];

/// The most a target may be: an hour.
const MAX_TARGET_MS: i64 = 3_600_000;

/// The model's `slo` table: no targets when absent.
pub(super) fn slo(model: &Reader<'_>, p: &mut Problems) -> Check<Slo> {
    let Some(table) = model.table("slo", p)? else {
        return Ok(Slo::default());
    };
    let r = Reader::open(table, model.key_path("slo"), SLO_KEYS, p);
    let interactive = targets(&r, "interactive", p);
    let batch = targets(&r, "batch", p);
    Ok(Slo {
        interactive: interactive?,
        batch: batch?,
    })
}

/// One class's targets.
fn targets(slo: &Reader<'_>, class: &str, p: &mut Problems) -> Check<SloTargets> {
    let Some(table) = slo.table(class, p)? else {
        return Ok(SloTargets::default());
    };
    let r = Reader::open(table, slo.key_path(class), TARGET_KEYS, p);
    let millis = |key: &str, p: &mut Problems| {
        r.integer(key, 1, MAX_TARGET_MS, p).map(|ms| {
            ms.and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis)
        })
    };
    let ttft = millis("ttft_ms", p);
    let itl = millis("itl_ms", p);
    Ok(SloTargets {
        ttft: ttft?,
        itl: itl?,
    })
}
