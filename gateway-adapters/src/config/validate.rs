//! The schema: walks a parsed TOML document section by section, records
//! every problem, and builds a [`GatewayConfig`] only when there is none.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_core::http::Uri;
use gateway_core::{EngineKind, LatencyClass, Money, Pricing};
use gateway_policy::MediaCosts;

use super::policy;
use super::serving;
use super::walk::{Check, Problems, Reader, Reported};
use super::{
    BackendConfig, ConfigErrors, ConfigProblem, GatewayConfig, LedgerConfig, ModelConfig,
    OnDisconnect, RedisLedgerSettings, ServerConfig, SimSettings, TenantConfig, TenantKey,
    defaults,
};
use crate::openai::pass_through::{BodyLimits, MAX_JSON_DEPTH_LIMIT, UnknownFields};
use crate::sim::Speculative;

const TOP_KEYS: &[&str] = &[
    "server", "ledger", "health", "routing", "tenants", "models", "backends",
];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "admin_key",
    "metrics_key",
    "metrics_key_sha256",
    "metrics_tenant_labels",
    "max_body_bytes",
    "stream_buffer_events",
    "first_token_timeout_ms",
    "idle_timeout_ms",
    "client_stall_timeout_ms",
    "shutdown_grace_ms",
    "admission_wait_ms",
    "request_timeout_ms",
    "estimate_drift_warn_ratio",
    "unknown_fields",
    "max_extra_bytes",
    "max_extra_depth",
    "max_json_depth",
    "header_read_timeout_ms",
    "keep_alive_timeout_ms",
    "body_read_timeout_ms",
    "max_header_bytes",
    "max_connections",
    "ready_drain_ms",
    "tokenizer_threads",
    "tokenizer_queue",
    "tokenizer_inline_bytes",
    "tokenizer_cache_bytes",
];
const LEDGER_KEYS: &[&str] = &[
    "kind",
    "url",
    "hold_ttl_ms",
    "settled_ttl_ms",
    "journal_dir",
    "journal_max_entries",
];
/// The `[ledger]` keys only `kind = "redis"` takes.
const REDIS_ONLY_KEYS: &[&str] = &[
    "url",
    "hold_ttl_ms",
    "settled_ttl_ms",
    "journal_dir",
    "journal_max_entries",
];
const TENANT_KEYS: &[&str] = &[
    "id",
    "api_key",
    "api_key_sha256",
    "budget_usd",
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrency",
    "max_connections",
    "weight",
    "priority",
    "allow_priority_raise",
    "models",
];
const MODEL_KEYS: &[&str] = &[
    "name",
    "tokenizer",
    "chat_template",
    "add_bos_token",
    "bos_token",
    "eos_token",
    "context_window",
    "input_usd_per_mtok",
    "cached_input_usd_per_mtok",
    "output_usd_per_mtok",
    "default_max_tokens",
    "fallbacks",
    "admission_queue",
    "continue_on_failure",
    "max_continuations",
    "continuation_ids",
    "unknown_fields",
    "slo",
    "image_tokens",
    "audio_tokens",
    "video_tokens",
    "prefer",
];
const BACKEND_KEYS: &[&str] = &[
    "name",
    "engine",
    "url",
    "model",
    "served_model",
    "max_concurrency",
    "on_disconnect",
    "drain_timeout_ms",
    "api_key_env",
    "metrics_url",
    "ca_file",
    "capabilities",
    "context_window",
    "sim",
];
const SIM_KEYS: &[&str] = &[
    "slots",
    "queue_capacity",
    "kv_capacity_tokens",
    "prefill_tokens_per_sec",
    "decode_tokens_per_sec",
    "base_latency_ms",
    "seed",
    "min_natural_tokens",
    "max_natural_tokens",
    "speculative",
];
const SPECULATIVE_KEYS: &[&str] = &["draft_tokens", "acceptance_rate"];

/// The engines a config file may name, with their config names.
const ENGINES: &[EngineKind] = &[
    EngineKind::Sim,
    EngineKind::Vllm,
    EngineKind::Sglang,
    EngineKind::TrtLlm,
    EngineKind::Triton,
    EngineKind::Nim,
    EngineKind::Dynamo,
    EngineKind::OpenAi,
];

/// Highest accepted price, USD per million tokens (a dollar per token).
const MAX_PRICE_PER_MTOK: f64 = 1e6;
/// Highest accepted budget, USD ([`Money`] ends at about 18 million).
const MAX_BUDGET_USD: f64 = 1e7;
/// Highest `server.estimate_drift_warn_ratio` (a count off by 100 times).
const MAX_DRIFT_RATIO: f64 = 100.0;
/// Highest edge timeout (`server.header_read_timeout_ms` and the like): an hour.
const MAX_EDGE_TIMEOUT_MS: i64 = 3_600_000;
/// Highest `server.ready_drain_ms`: ten minutes.
const MAX_READY_DRAIN_MS: i64 = 600_000;
/// `server.max_header_bytes` range.
const HEADER_BYTES: (i64, i64) = (1024, 256 * 1024);
/// Highest `server.max_connections`.
const MAX_CONNECTIONS: i64 = 1_000_000;
/// Highest `models[].admission_queue`.
const MAX_ADMISSION_QUEUE: i64 = 1_000_000;
/// Highest `server.tokenizer_threads`.
const MAX_TOKENIZER_THREADS: i64 = 1024;
/// Highest `server.tokenizer_inline_bytes` (1 GiB: everything inline).
const MAX_TOKENIZER_INLINE_BYTES: i64 = 1 << 30;
/// Highest `server.tokenizer_cache_bytes` (64 GiB).
const MAX_TOKENIZER_CACHE_BYTES: i64 = 1 << 36;
/// Default natural completion range of a sim backend.
const NATURAL_TOKENS: (u32, u32) = (16, 128);

/// Parses and validates `text`; `source` (the file) prefixes the path of a
/// syntax error.
pub(super) fn parse(
    text: &str,
    base_dir: &Path,
    source: Option<&Path>,
) -> Result<GatewayConfig, ConfigErrors> {
    let root = text.parse::<toml::Table>().map_err(|error| {
        let at = match error.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!("line {line}, column {column}")
            }
            None => "document".to_owned(),
        };
        let path = match source {
            Some(file) => format!("{}, {at}", file.display()),
            None => at,
        };
        let message = error
            .message()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        ConfigErrors {
            problems: vec![ConfigProblem::new(path, message)],
        }
    })?;
    validate(&root, base_dir)
}

/// The 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Validates a parsed document.
fn validate(root: &toml::Table, base_dir: &Path) -> Result<GatewayConfig, ConfigErrors> {
    let mut p = Problems::default();
    let top = Reader::open(root, "", TOP_KEYS, &mut p);
    // Names other sections refer to, as written (their own problems are
    // reported where they are defined, not at every reference).
    let model_names = raw_strings(root, "models", "name");
    let served = raw_strings(root, "backends", "model");
    let names = Names {
        models: &model_names,
        served: &served,
    };

    let server = server(&top, &mut p);
    let ledger = ledger(&top, &mut p);
    let health = policy::health(&top, &mut p);
    let routing = policy::routing(&top, &mut p);
    let admin_key = server.as_ref().ok().and_then(|s| s.admin_key);
    let tenants = tenants(&top, &model_names, admin_key, &mut p);
    let models = models(&top, &names, base_dir, &mut p);
    let backends = backends(&top, &names, base_dir, &mut p);

    match (server, ledger) {
        (Ok(server), Ok(ledger)) if p.is_empty() => Ok(GatewayConfig {
            server,
            ledger,
            health: health.unwrap_or_default(),
            routing: routing.unwrap_or_default(),
            tenants,
            models,
            backends,
        }),
        _ => {
            if p.is_empty() {
                p.push("config", "invalid (internal error: no problem recorded)");
            }
            Err(ConfigErrors {
                problems: p.into_vec(),
            })
        }
    }
}

/// Model names as written in the file, for references.
#[derive(Debug, Clone, Copy)]
struct Names<'a> {
    /// Every `models[].name`.
    models: &'a [&'a str],
    /// Every `backends[].model`.
    served: &'a [&'a str],
}

/// The string values of `key` in every table of the array `array`.
fn raw_strings<'a>(root: &'a toml::Table, array: &str, key: &str) -> Vec<&'a str> {
    root.get(array)
        .and_then(toml::Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.get(key).and_then(toml::Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of the array of tables `key`, reporting its absence.
fn entries<'a>(top: &Reader<'a>, key: &str, p: &mut Problems) -> Vec<(String, &'a toml::Table)> {
    let empty = match top.raw(key) {
        None => true,
        Some(toml::Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    };
    if empty {
        p.push(key, format!("at least one [[{key}]] entry is required"));
        return Vec::new();
    }
    top.tables(key, p).ok().flatten().unwrap_or_default()
}

/// Whether `s` is a safe metrics label value.
fn is_label(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A required, non-empty, label-safe name.
fn label<'a>(r: &Reader<'a>, key: &str, p: &mut Problems) -> Check<&'a str> {
    let name = r.required(key, r.non_empty(key, p), p)?;
    if is_label(name) {
        Ok(name)
    } else {
        Err(p.report(
            r.key_path(key),
            format!("must contain only A-Z, a-z, 0-9, '_', '.' and '-', found {name:?}"),
        ))
    }
}

/// A plaintext key: non-empty printable ASCII without spaces.
fn secret<'a>(r: &Reader<'a>, key: &str, p: &mut Problems) -> Check<Option<&'a str>> {
    match r.non_empty(key, p)? {
        Some(s) if !s.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(p.report(r.key_path(key), "must be printable ASCII without spaces"))
        }
        other => Ok(other),
    }
}

/// An `http://` or `https://` URL with a host, without a trailing `/`.
fn http_url(r: &Reader<'_>, key: &str, p: &mut Problems) -> Check<Option<String>> {
    let Some(url) = r.string(key, p)? else {
        return Ok(None);
    };
    let valid = url.parse::<Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
    });
    if valid {
        Ok(Some(url.trim_end_matches('/').to_owned()))
    } else {
        Err(p.report(
            r.key_path(key),
            "must be an http:// or https:// URL with a host",
        ))
    }
}

/// Milliseconds of at least `min`, or `default_ms`.
fn millis(
    r: &Reader<'_>,
    key: &str,
    min: u32,
    default_ms: u64,
    p: &mut Problems,
) -> Check<Duration> {
    Ok(Duration::from_millis(
        r.u64(key, min, p)?.unwrap_or(default_ms),
    ))
}

/// Milliseconds in `min..=max`, or `default_ms`.
fn bounded_millis(
    r: &Reader<'_>,
    key: &str,
    min: i64,
    max: i64,
    default_ms: u64,
    p: &mut Problems,
) -> Check<Duration> {
    let n = r.integer(key, min, max, p)?;
    Ok(Duration::from_millis(
        n.and_then(|n| u64::try_from(n).ok()).unwrap_or(default_ms),
    ))
}

/// A `usize` of at least 1, or `default`.
fn nonzero_usize(
    r: &Reader<'_>,
    key: &str,
    default: NonZeroUsize,
    p: &mut Problems,
) -> Check<NonZeroUsize> {
    let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
    let n = r.integer(key, 1, max, p)?;
    Ok(n.and_then(|n| usize::try_from(n).ok())
        .and_then(NonZeroUsize::new)
        .unwrap_or(default))
}

/// An optional `u32` of at least 1.
fn nonzero_u32(r: &Reader<'_>, key: &str, p: &mut Problems) -> Check<Option<NonZeroU32>> {
    Ok(r.u32(key, 1, p)?.and_then(NonZeroU32::new))
}

/// An optional `u64` of at least 1.
fn nonzero_u64(r: &Reader<'_>, key: &str, p: &mut Problems) -> Check<Option<NonZeroU64>> {
    Ok(r.u64(key, 1, p)?.and_then(NonZeroU64::new))
}

/// `[server]`.
fn server(top: &Reader<'_>, p: &mut Problems) -> Check<ServerConfig> {
    let Some(table) = top.table("server", p)? else {
        return Ok(defaults::server());
    };
    let r = Reader::open(table, "server", SERVER_KEYS, p);
    let listen = match r.string("listen", p) {
        Ok(Some(s)) => s.parse::<SocketAddr>().map_err(|_| {
            p.report(
                r.key_path("listen"),
                format!("invalid socket address {s:?} (expected IP:PORT, e.g. 127.0.0.1:8080)"),
            )
        }),
        Ok(None) => Ok(defaults::LISTEN),
        Err(e) => Err(e),
    };
    let admin_key = secret(&r, "admin_key", p);
    let metrics_key = metrics_key(&r, p);
    let metrics_tenant_labels = r
        .boolean("metrics_tenant_labels", p)
        .map(|b| b.unwrap_or(true));
    let max_body_bytes = nonzero_usize(&r, "max_body_bytes", defaults::MAX_BODY_BYTES, p);
    let stream_buffer_events = nonzero_usize(
        &r,
        "stream_buffer_events",
        defaults::STREAM_BUFFER_EVENTS,
        p,
    );
    let first_token_timeout = millis(
        &r,
        "first_token_timeout_ms",
        1,
        defaults::STREAM_TIMEOUT_MS,
        p,
    );
    let idle_timeout = millis(&r, "idle_timeout_ms", 1, defaults::STREAM_TIMEOUT_MS, p);
    let client_stall_timeout = millis(
        &r,
        "client_stall_timeout_ms",
        1,
        defaults::STREAM_TIMEOUT_MS,
        p,
    );
    let shutdown_grace = millis(&r, "shutdown_grace_ms", 0, defaults::SHUTDOWN_GRACE_MS, p);
    let admission_wait = millis(&r, "admission_wait_ms", 0, defaults::ADMISSION_WAIT_MS, p);
    let request_timeout = r.u64("request_timeout_ms", 1, p);
    let drift = r
        .number("estimate_drift_warn_ratio", 0.0, MAX_DRIFT_RATIO, p)
        .map(|d| d.unwrap_or(defaults::ESTIMATE_DRIFT_WARN_RATIO));
    let unknown_fields = unknown_fields(&r, p).map(|u| u.unwrap_or(defaults::UNKNOWN_FIELDS));
    let body_limits = body_limits(&r, p);
    let header_read_timeout = bounded_millis(
        &r,
        "header_read_timeout_ms",
        1,
        MAX_EDGE_TIMEOUT_MS,
        defaults::HEADER_READ_TIMEOUT_MS,
        p,
    );
    let keep_alive_timeout = bounded_millis(
        &r,
        "keep_alive_timeout_ms",
        1,
        MAX_EDGE_TIMEOUT_MS,
        defaults::KEEP_ALIVE_TIMEOUT_MS,
        p,
    );
    let body_read_timeout = bounded_millis(
        &r,
        "body_read_timeout_ms",
        1,
        MAX_EDGE_TIMEOUT_MS,
        defaults::BODY_READ_TIMEOUT_MS,
        p,
    );
    let max_header_bytes = r
        .integer("max_header_bytes", HEADER_BYTES.0, HEADER_BYTES.1, p)
        .map(|n| {
            n.and_then(|n| usize::try_from(n).ok())
                .unwrap_or(defaults::MAX_HEADER_BYTES)
        });
    let max_connections = r
        .integer("max_connections", 1, MAX_CONNECTIONS, p)
        .map(|n| {
            n.and_then(|n| usize::try_from(n).ok())
                .and_then(NonZeroUsize::new)
                .unwrap_or(defaults::MAX_CONNECTIONS)
        });
    let ready_drain = bounded_millis(&r, "ready_drain_ms", 0, MAX_READY_DRAIN_MS, 0, p);
    let count = |key: &str, max: i64, default: usize, p: &mut Problems| {
        r.integer(key, 0, max, p)
            .map(|n| n.and_then(|n| usize::try_from(n).ok()).unwrap_or(default))
    };
    let tokenizer_threads = count(
        "tokenizer_threads",
        MAX_TOKENIZER_THREADS,
        defaults::tokenizer_threads(),
        p,
    );
    let tokenizer_queue = count(
        "tokenizer_queue",
        MAX_ADMISSION_QUEUE,
        defaults::TOKENIZER_QUEUE,
        p,
    );
    let tokenizer_inline_bytes = count(
        "tokenizer_inline_bytes",
        MAX_TOKENIZER_INLINE_BYTES,
        defaults::TOKENIZER_INLINE_BYTES,
        p,
    );
    let tokenizer_cache_bytes = count(
        "tokenizer_cache_bytes",
        MAX_TOKENIZER_CACHE_BYTES,
        defaults::TOKENIZER_CACHE_BYTES,
        p,
    );
    Ok(ServerConfig {
        listen: listen?,
        admin_key: admin_key?.map(TenantKey::from_plaintext),
        metrics_key: metrics_key?,
        metrics_tenant_labels: metrics_tenant_labels?,
        max_body_bytes: max_body_bytes?,
        stream_buffer_events: stream_buffer_events?,
        first_token_timeout: first_token_timeout?,
        idle_timeout: idle_timeout?,
        client_stall_timeout: client_stall_timeout?,
        shutdown_grace: shutdown_grace?,
        admission_wait: admission_wait?,
        request_timeout: request_timeout?.map(Duration::from_millis),
        estimate_drift_warn_ratio: drift?,
        unknown_fields: unknown_fields?,
        body_limits: body_limits?,
        header_read_timeout: header_read_timeout?,
        keep_alive_timeout: keep_alive_timeout?,
        body_read_timeout: body_read_timeout?,
        max_header_bytes: max_header_bytes?,
        max_connections: max_connections?,
        ready_drain: ready_drain?,
        tokenizer_threads: tokenizer_threads?,
        tokenizer_queue: tokenizer_queue?,
        tokenizer_inline_bytes: tokenizer_inline_bytes?,
        tokenizer_cache_bytes: tokenizer_cache_bytes?,
    })
}

/// `unknown_fields` of `[server]` or a model: `reject` or `drop`.
fn unknown_fields(r: &Reader<'_>, p: &mut Problems) -> Check<Option<UnknownFields>> {
    match r.string("unknown_fields", p) {
        Ok(None) => Ok(None),
        Ok(Some("reject")) => Ok(Some(UnknownFields::Reject)),
        Ok(Some("drop")) => Ok(Some(UnknownFields::Drop)),
        Ok(Some(other)) => Err(p.report(
            r.key_path("unknown_fields"),
            format!("unknown value {other:?} (expected \"reject\" or \"drop\")"),
        )),
        Err(e) => Err(e),
    }
}

/// `max_extra_bytes`, `max_extra_depth` and `max_json_depth` of `[server]`.
fn body_limits(r: &Reader<'_>, p: &mut Problems) -> Check<BodyLimits> {
    let max_depth = i64::try_from(MAX_JSON_DEPTH_LIMIT).unwrap_or(i64::MAX);
    let bytes = nonzero_usize(r, "max_extra_bytes", defaults::MAX_EXTRA_BYTES, p);
    let depth = |key: &str, min: i64, default: usize, p: &mut Problems| {
        r.integer(key, min, max_depth, p)
            .map(|n| n.and_then(|n| usize::try_from(n).ok()).unwrap_or(default))
    };
    let extra_depth = depth("max_extra_depth", 1, defaults::MAX_EXTRA_DEPTH, p);
    let json_depth = depth("max_json_depth", 2, defaults::MAX_JSON_DEPTH, p);
    Ok(BodyLimits {
        max_extra_bytes: bytes?.get(),
        max_extra_depth: extra_depth?,
        max_json_depth: json_depth?,
    })
}

/// `server.metrics_key` or `server.metrics_key_sha256` (at most one).
fn metrics_key(r: &Reader<'_>, p: &mut Problems) -> Check<Option<TenantKey>> {
    let plain = secret(r, "metrics_key", p);
    let hashed = r.string("metrics_key_sha256", p).and_then(|hex| {
        hex.map(|hex| {
            TenantKey::from_sha256_hex(hex).ok_or_else(|| {
                p.report(
                    r.key_path("metrics_key_sha256"),
                    "must be 64 hexadecimal digits (the SHA-256 of the key)",
                )
            })
        })
        .transpose()
    });
    if r.has("metrics_key") && r.has("metrics_key_sha256") {
        return Err(p.report(
            r.path(),
            "metrics_key and metrics_key_sha256 are mutually exclusive; set one",
        ));
    }
    Ok(match (plain?, hashed?) {
        (Some(k), _) => Some(TenantKey::from_plaintext(k)),
        (None, hashed) => hashed,
    })
}

/// `[ledger]`.
fn ledger(top: &Reader<'_>, p: &mut Problems) -> Check<LedgerConfig> {
    let Some(table) = top.table("ledger", p)? else {
        return Ok(LedgerConfig::Memory);
    };
    let r = Reader::open(table, "ledger", LEDGER_KEYS, p);
    let kind = r.string("kind", p)?.unwrap_or("memory");
    match kind {
        "memory" => match REDIS_ONLY_KEYS.iter().find(|k| r.has(k)) {
            Some(key) => Err(p.report(r.key_path(key), "not allowed with kind = \"memory\"")),
            None => Ok(LedgerConfig::Memory),
        },
        "redis" => {
            let Some(url) = r.string("url", p)? else {
                return Err(p.report(r.key_path("url"), "required with kind = \"redis\""));
            };
            let valid = url.parse::<Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("redis" | "rediss"))
                    && uri.host().is_some_and(|h| !h.is_empty())
            });
            let settings = redis_ledger_settings(&r, p);
            if valid {
                Ok(LedgerConfig::Redis {
                    url: url.to_owned(),
                    settings: settings?,
                })
            } else {
                Err(p.report(
                    r.key_path("url"),
                    "must be a redis:// or rediss:// URL with a host",
                ))
            }
        }
        other => Err(p.report(
            r.key_path("kind"),
            format!("unknown ledger kind {other:?} (expected \"memory\" or \"redis\")"),
        )),
    }
}

/// The `[ledger]` keys of `kind = "redis"` beyond `url`.
fn redis_ledger_settings(r: &Reader<'_>, p: &mut Problems) -> Check<RedisLedgerSettings> {
    let d = RedisLedgerSettings::default();
    let hold = r.integer("hold_ttl_ms", 1000, 86_400_000, p);
    let settled = r.integer("settled_ttl_ms", 1000, 604_800_000, p);
    let dir = r.non_empty("journal_dir", p);
    let max = r.integer("journal_max_entries", 1, 10_000_000, p);
    let (hold, settled, dir, max) = (hold?, settled?, dir?, max?);
    let ms =
        |v: Option<i64>, default: u64| v.and_then(|n| u64::try_from(n).ok()).unwrap_or(default);
    Ok(RedisLedgerSettings {
        hold_ttl_ms: ms(hold, d.hold_ttl_ms),
        settled_ttl_ms: ms(settled, d.settled_ttl_ms),
        journal_dir: dir.map(str::to_owned),
        journal_max_entries: ms(max, d.journal_max_entries),
    })
}

/// `[[tenants]]`: the valid ones (all of them when nothing was reported).
fn tenants(
    top: &Reader<'_>,
    model_names: &[&str],
    admin_key: Option<TenantKey>,
    p: &mut Problems,
) -> Vec<TenantConfig> {
    let mut seen = Seen {
        names: Vec::new(),
        keys: Vec::new(),
    };
    let mut out = Vec::new();
    for (path, table) in entries(top, "tenants", p) {
        let r = Reader::open(table, path, TENANT_KEYS, p);
        out.extend(tenant(&r, model_names, admin_key, &mut seen, p).ok());
    }
    out
}

/// Names (and tenant keys) of earlier entries, with their table paths.
#[derive(Debug)]
struct Seen<'a> {
    names: Vec<(&'a str, String)>,
    keys: Vec<(TenantKey, String)>,
}

impl<'a> Seen<'a> {
    /// Reports `name` (at `key` of `r`) if an earlier entry had it.
    fn unique(
        &mut self,
        r: &Reader<'a>,
        key: &str,
        name: Check<&'a str>,
        what: &str,
        p: &mut Problems,
    ) {
        let Ok(name) = name else { return };
        if let Some((_, first)) = self.names.iter().find(|(n, _)| *n == name) {
            p.push(
                r.key_path(key),
                format!("duplicate {what} {name:?} (first at {first})"),
            );
        } else {
            self.names.push((name, r.path().to_owned()));
        }
    }
}

/// One tenant.
fn tenant<'a>(
    r: &Reader<'a>,
    model_names: &[&str],
    admin_key: Option<TenantKey>,
    seen: &mut Seen<'a>,
    p: &mut Problems,
) -> Check<TenantConfig> {
    let id = label(r, "id", p);
    seen.unique(r, "id", id, "tenant id", p);
    let key = tenant_key(r, p);
    if let Ok((key, key_name)) = &key {
        if admin_key == Some(*key) {
            p.push(r.key_path(key_name), "same key as server.admin_key");
        } else if let Some((_, first)) = seen.keys.iter().find(|(k, _)| k == key) {
            p.push(r.key_path(key_name), format!("same key as {first}"));
        } else {
            seen.keys.push((*key, r.path().to_owned()));
        }
    }
    let budget = r
        .number("budget_usd", 0.0, MAX_BUDGET_USD, p)
        .and_then(|usd| money(r, "budget_usd", usd, p));
    let requests_per_minute = nonzero_u32(r, "requests_per_minute", p);
    let tokens_per_minute = nonzero_u64(r, "tokens_per_minute", p);
    let max_concurrency = nonzero_u32(r, "max_concurrency", p);
    let max_connections = nonzero_u32(r, "max_connections", p);
    let weight = nonzero_u32(r, "weight", p).map(|w| w.unwrap_or(NonZeroU32::MIN));
    let priority = match r.string("priority", p) {
        Ok(None | Some("interactive")) => Ok(LatencyClass::Interactive),
        Ok(Some("batch")) => Ok(LatencyClass::Batch),
        Ok(Some(other)) => Err(p.report(
            r.key_path("priority"),
            format!("unknown value {other:?} (expected \"interactive\" or \"batch\")"),
        )),
        Err(e) => Err(e),
    };
    let allow_priority_raise = r
        .boolean("allow_priority_raise", p)
        .map(|b| b.unwrap_or(false));
    let models = allow_list(r, model_names, p);
    Ok(TenantConfig {
        id: id?.to_owned(),
        key: key?.0,
        budget: budget?,
        requests_per_minute: requests_per_minute?,
        tokens_per_minute: tokens_per_minute?,
        max_concurrency: max_concurrency?,
        max_connections: max_connections?,
        weight: weight?,
        priority: priority?,
        allow_priority_raise: allow_priority_raise?,
        models: models?,
    })
}

/// Dollars as [`Money`].
fn money(r: &Reader<'_>, key: &str, usd: Option<f64>, p: &mut Problems) -> Check<Option<Money>> {
    usd.map(|usd| Money::from_usd(usd).map_err(|e| p.report(r.key_path(key), e.to_string())))
        .transpose()
}

/// A tenant's key and the name of the key it came from.
fn tenant_key(r: &Reader<'_>, p: &mut Problems) -> Check<(TenantKey, &'static str)> {
    let plain = secret(r, "api_key", p);
    let hashed = r.string("api_key_sha256", p).and_then(|hex| {
        hex.map(|hex| {
            TenantKey::from_sha256_hex(hex).ok_or_else(|| {
                p.report(
                    r.key_path("api_key_sha256"),
                    "must be 64 hexadecimal digits (the SHA-256 of the key)",
                )
            })
        })
        .transpose()
    });
    match (r.has("api_key"), r.has("api_key_sha256")) {
        (true, true) => Err(p.report(
            r.path(),
            "api_key and api_key_sha256 are mutually exclusive; set one",
        )),
        (false, false) => Err(p.report(r.path(), "one of api_key or api_key_sha256 is required")),
        (true, false) => plain?
            .map(|k| (TenantKey::from_plaintext(k), "api_key"))
            .ok_or(Reported),
        (false, true) => hashed?.map(|k| (k, "api_key_sha256")).ok_or(Reported),
    }
}

/// A tenant's `models` allow-list.
fn allow_list(
    r: &Reader<'_>,
    model_names: &[&str],
    p: &mut Problems,
) -> Check<Option<Vec<String>>> {
    let Some(items) = r.strings("models", p)? else {
        return Ok(None);
    };
    if items.is_empty() {
        return Err(p.report(
            r.key_path("models"),
            "must name at least one model (leave it out to allow every model)",
        ));
    }
    let mut ok = true;
    for (path, name) in &items {
        if !model_names.contains(name) {
            p.push(path.as_str(), format!("unknown model {name:?}"));
            ok = false;
        }
    }
    if ok {
        Ok(Some(items.into_iter().map(|(_, m)| m.to_owned()).collect()))
    } else {
        Err(Reported)
    }
}

/// An optional file path, resolved against `base_dir`; the file must exist.
fn file(r: &Reader<'_>, key: &str, base_dir: &Path, p: &mut Problems) -> Check<Option<PathBuf>> {
    let Some(relative) = r.non_empty(key, p)? else {
        return Ok(None);
    };
    let path = base_dir.join(relative);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(Some(path)),
        Ok(_) => Err(p.report(r.key_path(key), format!("not a file: {}", path.display()))),
        Err(_) => Err(p.report(
            r.key_path(key),
            format!("file not found: {}", path.display()),
        )),
    }
}

/// `[[models]]`: the valid ones (all of them when nothing was reported).
fn models(
    top: &Reader<'_>,
    names: &Names<'_>,
    base_dir: &Path,
    p: &mut Problems,
) -> Vec<ModelConfig> {
    let mut seen = Seen {
        names: Vec::new(),
        keys: Vec::new(),
    };
    let mut out = Vec::new();
    for (path, table) in entries(top, "models", p) {
        let r = Reader::open(table, path, MODEL_KEYS, p);
        out.extend(model(&r, names, base_dir, &mut seen, p).ok());
    }
    out
}

/// One model.
fn model<'a>(
    r: &Reader<'a>,
    names: &Names<'_>,
    base_dir: &Path,
    seen: &mut Seen<'a>,
    p: &mut Problems,
) -> Check<ModelConfig> {
    let name = label(r, "name", p);
    seen.unique(r, "name", name, "model name", p);
    let tokenizer = file(r, "tokenizer", base_dir, p);
    let chat_template = file(r, "chat_template", base_dir, p);
    let add_bos_token = r.boolean("add_bos_token", p).map(|b| b.unwrap_or(true));
    let bos_token = r
        .string("bos_token", p)
        .map(|t| t.unwrap_or("<s>").to_owned());
    let eos_token = r
        .string("eos_token", p)
        .map(|t| t.unwrap_or("</s>").to_owned());
    if let (Ok(None), Ok(Some(_))) = (&tokenizer, &chat_template) {
        p.push(
            r.key_path("chat_template"),
            "needs a tokenizer to count with",
        );
    }
    let context_window = r.required("context_window", nonzero_u32(r, "context_window", p), p);
    let price = |key: &str, p: &mut Problems| r.number(key, 0.0, MAX_PRICE_PER_MTOK, p);
    let input = r.required("input_usd_per_mtok", price("input_usd_per_mtok", p), p);
    let cached = price("cached_input_usd_per_mtok", p);
    let output = r.required("output_usd_per_mtok", price("output_usd_per_mtok", p), p);
    let pricing = match (input, cached, output) {
        (Ok(input), Ok(cached), Ok(output)) => Pricing::per_million(input, cached, output)
            .map_err(|e| p.report(r.path(), e.to_string())),
        _ => Err(Reported),
    };
    let default_max_tokens = match (nonzero_u32(r, "default_max_tokens", p), context_window) {
        (Ok(Some(n)), Ok(window)) if n > window => Err(p.report(
            r.key_path("default_max_tokens"),
            format!("must be at most context_window ({window}), found {n}"),
        )),
        (Ok(Some(n)), _) => Ok(n),
        (Ok(None), Ok(window)) => Ok(defaults::DEFAULT_MAX_TOKENS.min(window)),
        (Ok(None), Err(_)) | (Err(_), _) => Err(Reported),
    };
    let fallbacks = fallbacks(r, name, names.models, p);
    let admission_queue = r
        .integer("admission_queue", 0, MAX_ADMISSION_QUEUE, p)
        .map(|n| {
            n.and_then(|n| usize::try_from(n).ok())
                .unwrap_or(defaults::ADMISSION_QUEUE)
        });
    let continuation = continuation(r, p);
    let media = |key: &str, p: &mut Problems| Ok(nonzero_u32(r, key, p)?.map(NonZeroU32::get));
    let (image, audio, video) = (
        media("image_tokens", p),
        media("audio_tokens", p),
        media("video_tokens", p),
    );
    let unknown = unknown_fields(r, p);
    let slo = super::slo::slo(r, p);
    let prefer = serving::prefer(r, ENGINES, p);
    if let Ok(name) = name {
        if !names.served.contains(&name) {
            p.push(r.path(), "no backend serves this model");
        }
    }
    Ok(ModelConfig {
        name: name?.to_owned(),
        tokenizer: tokenizer?,
        chat_template: chat_template?,
        add_bos_token: add_bos_token?,
        bos_token: bos_token?,
        eos_token: eos_token?,
        context_window: context_window?,
        pricing: pricing?,
        default_max_tokens: default_max_tokens?,
        fallbacks: fallbacks?,
        admission_queue: admission_queue?,
        continuation: continuation?,
        media: MediaCosts {
            image: image?,
            audio: audio?,
            video: video?,
        },
        unknown_fields: unknown?,
        slo: slo?,
        prefer: prefer?,
    })
}

/// Highest `models[].max_continuations`.
const MAX_CONTINUATIONS: i64 = 16;

/// A model's `continue_on_failure` and `max_continuations`.
fn continuation(r: &Reader<'_>, p: &mut Problems) -> Check<Option<gateway_policy::Continuation>> {
    use gateway_policy::ContinuationIds;
    let on = r.boolean("continue_on_failure", p);
    let max = r.integer("max_continuations", 1, MAX_CONTINUATIONS, p);
    let ids = match r.string("continuation_ids", p) {
        Ok(None) => Ok(None),
        Ok(Some("exact")) => Ok(Some(ContinuationIds::Exact)),
        Ok(Some("retokenize")) => Ok(Some(ContinuationIds::Retokenize)),
        Ok(Some(other)) => Err(p.report(
            r.key_path("continuation_ids"),
            format!("unknown value {other:?} (expected \"exact\" or \"retokenize\")"),
        )),
        Err(e) => Err(e),
    };
    let (on, max, ids) = (on?.unwrap_or(false), max?, ids?);
    if !on {
        for (key, set) in [
            ("max_continuations", max.is_some()),
            ("continuation_ids", ids.is_some()),
        ] {
            if set {
                p.push(r.key_path(key), "only with continue_on_failure = true");
            }
        }
        return if max.is_some() || ids.is_some() {
            Err(Reported)
        } else {
            Ok(None)
        };
    }
    let max = max
        .and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MIN);
    Ok(Some(
        gateway_policy::Continuation::new(max).with_ids(ids.unwrap_or_default()),
    ))
}

/// A model's `fallbacks`: other configured models, each once.
fn fallbacks(
    r: &Reader<'_>,
    own: Check<&str>,
    model_names: &[&str],
    p: &mut Problems,
) -> Check<Vec<String>> {
    let Some(items) = r.strings("fallbacks", p)? else {
        return Ok(Vec::new());
    };
    let mut ok = true;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (path, name) in items {
        let problem = if own == Ok(name) {
            Some("a model cannot fall back to itself".to_owned())
        } else if !model_names.contains(&name) {
            Some(format!("unknown model {name:?}"))
        } else if out.iter().any(|m| m == name) {
            Some(format!("duplicate fallback {name:?}"))
        } else {
            None
        };
        match problem {
            Some(message) => {
                p.push(path, message);
                ok = false;
            }
            None => out.push(name.to_owned()),
        }
    }
    if ok { Ok(out) } else { Err(Reported) }
}

/// `[[backends]]`: the valid ones (all of them when nothing was reported).
fn backends(
    top: &Reader<'_>,
    names: &Names<'_>,
    base_dir: &Path,
    p: &mut Problems,
) -> Vec<BackendConfig> {
    let mut seen = Seen {
        names: Vec::new(),
        keys: Vec::new(),
    };
    let mut out = Vec::new();
    for (path, table) in entries(top, "backends", p) {
        let r = Reader::open(table, path, BACKEND_KEYS, p);
        out.extend(backend(&r, names, base_dir, &mut seen, p).ok());
    }
    out
}

/// One backend.
fn backend<'a>(
    r: &Reader<'a>,
    names: &Names<'_>,
    base_dir: &Path,
    seen: &mut Seen<'a>,
    p: &mut Problems,
) -> Check<BackendConfig> {
    let name = label(r, "name", p);
    seen.unique(r, "name", name, "backend name", p);
    let engine = r
        .required("engine", r.string("engine", p), p)
        .and_then(|e| {
            ENGINES
                .iter()
                .copied()
                .find(|k| k.as_str() == e)
                .ok_or_else(|| {
                    let expected: Vec<&str> = ENGINES.iter().map(|k| k.as_str()).collect();
                    p.report(
                        r.key_path("engine"),
                        format!(
                            "unknown engine {e:?} (expected one of {})",
                            expected.join(", ")
                        ),
                    )
                })
        });
    let is_sim = engine.map(|e| e == EngineKind::Sim);
    let url = match is_sim {
        Ok(true) if r.has("url") => Err(not_for_sim(r, "url", p)),
        Ok(false) if !r.has("url") => Err(p.report(
            r.key_path("url"),
            format!(
                "required for engine {:?}",
                engine.map_or("", EngineKind::as_str)
            ),
        )),
        _ => http_url(r, "url", p),
    };
    let model = r
        .required("model", r.non_empty("model", p), p)
        .and_then(|m| {
            if names.models.contains(&m) {
                Ok(m)
            } else {
                Err(p.report(r.key_path("model"), format!("unknown model {m:?}")))
            }
        });
    let served_model = r.non_empty("served_model", p);
    let max_concurrency = nonzero_u32(r, "max_concurrency", p);
    let drain_timeout = r
        .integer("drain_timeout_ms", 1, MAX_DRAIN_TIMEOUT_MS, p)
        .map(|ms| {
            ms.and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis)
        });
    let on_disconnect = match r.string("on_disconnect", p) {
        Ok(None | Some("abort")) => match drain_timeout {
            Ok(Some(_)) => Err(p.report(
                r.key_path("drain_timeout_ms"),
                "only allowed with on_disconnect = \"drain\"",
            )),
            Ok(None) => Ok(OnDisconnect::Abort),
            Err(e) => Err(e),
        },
        Ok(Some("drain")) => match engine {
            // Self-hosted engines with their own abort: nothing bills a
            // request the gateway stopped reading.
            Ok(e @ (EngineKind::Sglang | EngineKind::Triton | EngineKind::Sim)) => Err(p.report(
                r.key_path("on_disconnect"),
                format!(
                    "\"drain\" is for hosted OpenAI-compatible APIs; engine {:?} aborts",
                    e.as_str()
                ),
            )),
            _ => drain_timeout.map(|t| OnDisconnect::Drain {
                timeout: t.unwrap_or(OnDisconnect::DEFAULT_DRAIN_TIMEOUT),
            }),
        },
        Ok(Some(other)) => Err(p.report(
            r.key_path("on_disconnect"),
            format!("unknown value {other:?} (expected \"abort\" or \"drain\")"),
        )),
        Err(e) => Err(e),
    };
    let api_key_env = if is_sim == Ok(true) && r.has("api_key_env") {
        Err(not_for_sim(r, "api_key_env", p))
    } else {
        env_name(r, "api_key_env", p)
    };
    let metrics_url = if is_sim == Ok(true) && r.has("metrics_url") {
        Err(not_for_sim(r, "metrics_url", p))
    } else {
        http_url(r, "metrics_url", p)
    };
    let ca_file = if is_sim == Ok(true) && r.has("ca_file") {
        Err(not_for_sim(r, "ca_file", p))
    } else {
        file(r, "ca_file", base_dir, p)
    };
    let capabilities = serving::capabilities(r, p);
    let context_window = nonzero_u32(r, "context_window", p);
    let sim = match r.table("sim", p) {
        Ok(Some(table)) => {
            let path = r.key_path("sim");
            let settings = sim_settings(table, &path, p);
            match is_sim {
                Ok(true) => settings.map(Some),
                Ok(false) => Err(p.report(path, "only allowed with engine = \"sim\"")),
                Err(e) => Err(e),
            }
        }
        Ok(None) => is_sim.map(|sim| sim.then(SimSettings::default)),
        Err(e) => Err(e),
    };
    let model = model?.to_owned();
    Ok(BackendConfig {
        name: name?.to_owned(),
        engine: engine?,
        url: url?,
        served_model: served_model?.map_or_else(|| model.clone(), str::to_owned),
        model,
        max_concurrency: max_concurrency?,
        on_disconnect: on_disconnect?,
        api_key_env: api_key_env?,
        metrics_url: metrics_url?,
        ca_file: ca_file?,
        capabilities: capabilities?,
        context_window: context_window?,
        sim: sim?,
    })
}

/// The longest `drain_timeout_ms`: one hour.
const MAX_DRAIN_TIMEOUT_MS: i64 = 3_600_000;

/// Reports `key` as meaningless for the `sim` engine.
fn not_for_sim(r: &Reader<'_>, key: &str, p: &mut Problems) -> Reported {
    p.report(r.key_path(key), "not allowed for engine \"sim\"")
}

/// An environment variable name: `[A-Z_][A-Z0-9_]*`.
fn env_name(r: &Reader<'_>, key: &str, p: &mut Problems) -> Check<Option<String>> {
    let Some(name) = r.string(key, p)? else {
        return Ok(None);
    };
    let valid = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_uppercase() || b == b'_' || (i > 0 && b.is_ascii_digit()));
    if valid && !name.is_empty() {
        Ok(Some(name.to_owned()))
    } else {
        Err(p.report(
            r.key_path(key),
            format!(
                "must be an environment variable name matching [A-Z_][A-Z0-9_]*, found {name:?}"
            ),
        ))
    }
}

/// `[backends.sim]`.
fn sim_settings(table: &toml::Table, path: &str, p: &mut Problems) -> Check<SimSettings> {
    let r = Reader::open(table, path, SIM_KEYS, p);
    let default = SimSettings::default();
    let slots = nonzero_u32(&r, "slots", p).map(|n| n.unwrap_or(default.slots));
    let queue_capacity = r
        .u32("queue_capacity", 0, p)
        .map(|n| n.unwrap_or(default.queue_capacity));
    let kv_capacity_tokens =
        nonzero_u64(&r, "kv_capacity_tokens", p).map(|n| n.unwrap_or(default.kv_capacity_tokens));
    let rate = |key: &str, default: Option<f64>, p: &mut Problems| {
        r.number(key, 0.0, f64::MAX, p)
            .map(|n| n.map_or(default, |n| (n > 0.0).then_some(n)))
    };
    let prefill = rate("prefill_tokens_per_sec", default.prefill_tokens_per_sec, p);
    let decode = rate("decode_tokens_per_sec", default.decode_tokens_per_sec, p);
    let base_latency = r
        .u64("base_latency_ms", 0, p)
        .map(|ms| ms.map_or(default.base_latency, Duration::from_millis));
    let seed = r.u64("seed", 0, p).map(|s| s.unwrap_or(default.seed));
    let natural = match (
        r.u32("min_natural_tokens", 1, p),
        r.u32("max_natural_tokens", 1, p),
    ) {
        (Ok(Some(min)), Ok(Some(max))) if max < min => Err(p.report(
            r.key_path("max_natural_tokens"),
            format!("must be at least min_natural_tokens ({min}), found {max}"),
        )),
        (Ok(min), Ok(max)) => {
            let min = min.unwrap_or(NATURAL_TOKENS.0.min(max.unwrap_or(u32::MAX)));
            let max = max.unwrap_or(NATURAL_TOKENS.1.max(min));
            Ok(min..=max)
        }
        _ => Err(Reported),
    };
    let speculative = match r.table("speculative", p) {
        Ok(Some(table)) => {
            let path = r.key_path("speculative");
            let s = Reader::open(table, &path, SPECULATIVE_KEYS, p);
            let draft = s.required("draft_tokens", s.u32("draft_tokens", 1, p), p);
            let rate = s.required(
                "acceptance_rate",
                s.number("acceptance_rate", 0.0, 1.0, p),
                p,
            );
            Ok(Some(Speculative::new(draft?, rate?)))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    Ok(SimSettings {
        slots: slots?,
        queue_capacity: queue_capacity?,
        kv_capacity_tokens: kv_capacity_tokens?,
        prefill_tokens_per_sec: prefill?,
        decode_tokens_per_sec: decode?,
        base_latency: base_latency?,
        seed: seed?,
        natural_tokens: natural?,
        speculative: speculative?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 3));
    }

    #[test]
    fn labels_and_env_names() {
        assert!(is_label("team-a_1.x"));
        assert!(!is_label("team a"));
        assert!(!is_label("tëam"));
    }
}
