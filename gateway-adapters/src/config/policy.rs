//! The policy tables (additions to the contract): `[health]` — every
//! backend's circuit breaker and the floor of its adaptive concurrency
//! limit — and `[routing]` — prefix-affinity settings. Their defaults are
//! the policies' own ([`HealthConfig::default`],
//! [`AffinityConfig::default`]).

use std::num::NonZeroU32;
use std::time::Duration;

use gateway_policy::health::{BreakerConfig, HealthConfig};
use gateway_policy::route::AffinityConfig;

use super::walk::{Check, Problems, Reader};

pub(super) const HEALTH_KEYS: &[&str] = &[
    "failures_to_open",
    "failure_window_ms",
    "open_ms",
    "half_open_probes",
    "successes_to_close",
    "min_concurrency",
];
pub(super) const ROUTING_KEYS: &[&str] = &[
    "prefix_block_bytes",
    "prefix_block_tokens",
    "prefix_blocks",
    "affinity_saturation",
];

/// Most failures, probes or successes a breaker setting may ask for.
const MAX_COUNT: i64 = 10_000;
/// Longest breaker time: one day, in milliseconds.
const MAX_MS: i64 = 86_400_000;
/// Largest prefix block: 64 KiB.
const MAX_BLOCK_BYTES: i64 = 65_536;
/// Largest prefix block of token ids.
const MAX_BLOCK_TOKENS: i64 = 65_536;
/// Most prefix blocks hashed.
const MAX_BLOCKS: i64 = 64;
/// Highest saturation threshold (a load of 100 times the limit).
const MAX_SATURATION: f64 = 100.0;
/// Highest adaptive-limit floor.
const MAX_MIN_CONCURRENCY: i64 = 1_000_000;

/// A count in `1..=max`, or `default`.
fn count(r: &Reader<'_>, key: &str, max: i64, default: u32, p: &mut Problems) -> Check<u32> {
    Ok(r.integer(key, 1, max, p)?
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(default))
}

/// Milliseconds in `1..=MAX_MS`, if set.
fn millis(r: &Reader<'_>, key: &str, p: &mut Problems) -> Check<Option<Duration>> {
    Ok(r.integer(key, 1, MAX_MS, p)?
        .and_then(|n| u64::try_from(n).ok())
        .map(Duration::from_millis))
}

/// `[health]`: defaults when absent.
pub(super) fn health(top: &Reader<'_>, p: &mut Problems) -> Check<HealthConfig> {
    let default = HealthConfig::default();
    let Some(table) = top.table("health", p)? else {
        return Ok(default);
    };
    let r = Reader::open(table, "health", HEALTH_KEYS, p);
    let b = default.breaker;
    let failures_to_open = count(&r, "failures_to_open", MAX_COUNT, b.failures_to_open, p);
    let failure_window = millis(&r, "failure_window_ms", p);
    let open_for = millis(&r, "open_ms", p).map(|d| d.unwrap_or(b.open_for));
    let half_open_probes = count(&r, "half_open_probes", MAX_COUNT, b.half_open_probes, p);
    let successes_to_close = count(&r, "successes_to_close", MAX_COUNT, b.successes_to_close, p);
    let min_concurrency = count(
        &r,
        "min_concurrency",
        MAX_MIN_CONCURRENCY,
        default.min_concurrency.get(),
        p,
    )
    .map(|n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
    Ok(HealthConfig {
        breaker: BreakerConfig {
            failures_to_open: failures_to_open?,
            failure_window: failure_window?,
            open_for: open_for?,
            half_open_probes: half_open_probes?,
            successes_to_close: successes_to_close?,
        },
        min_concurrency: min_concurrency?,
    })
}

/// `[routing]`: defaults when absent.
pub(super) fn routing(top: &Reader<'_>, p: &mut Problems) -> Check<AffinityConfig> {
    let default = AffinityConfig::default();
    let Some(table) = top.table("routing", p)? else {
        return Ok(default);
    };
    let r = Reader::open(table, "routing", ROUTING_KEYS, p);
    let size = |key: &str, max: i64, default: usize, p: &mut Problems| -> Check<usize> {
        Ok(r.integer(key, 1, max, p)?
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(default))
    };
    let block_bytes = size(
        "prefix_block_bytes",
        MAX_BLOCK_BYTES,
        default.block_bytes,
        p,
    );
    let block_tokens = size(
        "prefix_block_tokens",
        MAX_BLOCK_TOKENS,
        default.block_tokens,
        p,
    );
    let blocks = size("prefix_blocks", MAX_BLOCKS, default.blocks, p);
    let saturation = r
        .number("affinity_saturation", 0.0, MAX_SATURATION, p)
        .map(|s| s.unwrap_or(default.saturation));
    Ok(AffinityConfig {
        block_bytes: block_bytes?,
        block_tokens: block_tokens?,
        blocks: blocks?,
        saturation: saturation?,
    })
}
