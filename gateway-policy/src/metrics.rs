//! The gateway's Prometheus metrics (the contract's minimum set, and a few
//! more). Label values come only from configuration (tenant ids, model and
//! backend names) or fixed enums, never from request content.
//!
//! Three families carry a `tenant` label (`gateway_requests_total`,
//! `gateway_tokens_total`, `gateway_spend_usd_total`). A registry made
//! with [`Metrics::with_tenant_labels`]`(false)` writes [`ALL_TENANTS`]
//! there instead of the tenant's id, so a scrape tells nothing about who
//! uses the gateway or what each tenant spends; `unauthenticated` (requests
//! refused before a tenant was known) stays as it is.

use std::fmt;
use std::sync::atomic::AtomicU64;

use gateway_core::Usage;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `tenant` label of every tenant when tenant labels are off.
pub const ALL_TENANTS: &str = "all";

/// Labels `tenant, model, outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Tenant id, or `unauthenticated`.
    pub tenant: String,
    /// Model name, or `unknown`.
    pub model: String,
    /// `ok`, `canceled`, `stream_error`, or the error code of a refused request.
    pub outcome: &'static str,
}

/// Label `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model name.
    pub model: String,
}

/// Labels `model, backend`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelBackendLabels {
    /// Model name.
    pub model: String,
    /// Backend name.
    pub backend: String,
}

/// Labels `tenant, model, kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Tenant id.
    pub tenant: String,
    /// Model name.
    pub model: String,
    /// prompt, cached, completion, accepted, drafted, rejected, canceled.
    pub kind: &'static str,
}

/// Label `tenant`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// Tenant id.
    pub tenant: String,
}

/// Label `backend`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Backend name.
    pub backend: String,
}

/// Labels `model, class, kind, outcome` of a latency target check.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SloLabels {
    /// Model name.
    pub model: String,
    /// `interactive` or `batch`.
    pub class: &'static str,
    /// `ttft` (time to first token, from arrival) or `itl` (mean time
    /// between output tokens).
    pub kind: &'static str,
    /// `met` or `missed`.
    pub outcome: &'static str,
}

/// Labels `backend, phase`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AbortLabels {
    /// Backend name.
    pub backend: String,
    /// queued, prefill, decode.
    pub phase: &'static str,
}

/// Labels `backend, outcome` of a drained request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrainLabels {
    /// Backend name.
    pub backend: String,
    /// finished (read to the end), timed_out (the drain timeout closed the
    /// connection), stopped (shutdown, or the stream failed).
    pub outcome: &'static str,
}

/// The outcomes of a drain, for [`DrainLabels::outcome`].
pub const DRAIN_OUTCOMES: [&str; 3] = ["finished", "timed_out", "stopped"];

/// Labels `from, to` of a request that fell back to another model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// The model the client asked for.
    pub from: String,
    /// The fallback model tried.
    pub to: String,
}

/// Labels `model, from, to` of a stream continued on another backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContinuationLabels {
    /// The model.
    pub model: String,
    /// The backend whose stream failed after its first token.
    pub from: String,
    /// The backend the stream went on on.
    pub to: String,
}

/// Labels `backend, kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Backend name.
    pub backend: String,
    /// The failure kind.
    pub kind: &'static str,
}

/// Label `reason` of an answer the HTTP edge gave itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    /// [`EdgeReason::as_str`].
    pub reason: &'static str,
}

/// Why the HTTP edge (the accept loop, before the router) answered or
/// closed a connection itself: the `reason` of
/// `gateway_edge_rejections_total`. A fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeReason {
    /// A request head not complete within `header_read_timeout`: the
    /// connection closed without an answer.
    HeaderTimeout,
    /// A request body not complete within `body_read_timeout`: 408
    /// `request_timeout`.
    BodyTimeout,
    /// A request head above `max_header_bytes`: 431 `headers_too_large`.
    HeadersTooLarge,
    /// A request URI too long for the parser: 414 `uri_too_long`.
    UriTooLong,
    /// A request head that is not HTTP: 400 `invalid_request`.
    MalformedRequest,
    /// A tenant at its `max_connections`: 429 `too_many_connections`.
    TooManyConnections,
    /// A connection beyond `server.max_connections`: 503 `overloaded`.
    ConnectionCap,
    /// A connection beyond `server.max_connections` and the 256 answered
    /// ones: closed at once without an answer.
    ConnectionCapClosed,
}

impl EdgeReason {
    /// Every reason, in label order.
    pub const ALL: [EdgeReason; 8] = [
        EdgeReason::HeaderTimeout,
        EdgeReason::BodyTimeout,
        EdgeReason::HeadersTooLarge,
        EdgeReason::UriTooLong,
        EdgeReason::MalformedRequest,
        EdgeReason::TooManyConnections,
        EdgeReason::ConnectionCap,
        EdgeReason::ConnectionCapClosed,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            EdgeReason::HeaderTimeout => "header_timeout",
            EdgeReason::BodyTimeout => "body_timeout",
            EdgeReason::HeadersTooLarge => "headers_too_large",
            EdgeReason::UriTooLong => "uri_too_long",
            EdgeReason::MalformedRequest => "malformed_request",
            EdgeReason::TooManyConnections => "too_many_connections",
            EdgeReason::ConnectionCap => "connection_cap",
            EdgeReason::ConnectionCapClosed => "connection_cap_closed",
        }
    }
}

/// `gateway_edge_rejections_total{reason}`: what the HTTP edge answered or
/// closed itself. A handle: clones count into the same series, so the
/// accept loop gets a clone of the gateway's ([`Metrics::edge_rejections`]);
/// one made with `default()` counts into a family no registry exports.
#[derive(Clone, Debug, Default)]
pub struct EdgeRejections(Family<EdgeLabels, Counter>);

impl EdgeRejections {
    /// Counts one.
    pub fn count(&self, reason: EdgeReason) {
        self.0
            .get_or_create(&EdgeLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// The count so far.
    pub fn get(&self, reason: EdgeReason) -> u64 {
        self.0
            .get_or_create(&EdgeLabels {
                reason: reason.as_str(),
            })
            .get()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn abort_histogram() -> Histogram {
    // 0.1 ms .. ~3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

fn ratio_histogram() -> Histogram {
    Histogram::new([
        -0.5, -0.2, -0.1, -0.05, -0.01, 0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
    ])
}

/// Every metric the gateway records, in one registry.
pub struct Metrics {
    registry: Registry,
    /// `gateway_requests_total{tenant,model,outcome}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `gateway_request_duration_seconds{model}`.
    pub request_duration: Family<ModelLabels, Histogram>,
    /// `gateway_time_to_first_token_seconds{model,backend}`.
    pub time_to_first_token: Family<ModelBackendLabels, Histogram>,
    /// `gateway_tokens_total{tenant,model,kind}`.
    pub tokens: Family<TokenLabels, Counter>,
    /// `gateway_spend_usd_total{tenant}`.
    pub spend_usd: Family<TenantLabels, Counter<f64, AtomicU64>>,
    /// `gateway_inflight_requests{backend}`.
    pub inflight: Family<BackendLabels, Gauge>,
    /// `gateway_backend_queue_depth{backend}`.
    pub queue_depth: Family<BackendLabels, Gauge>,
    /// `gateway_upstream_aborts_total{backend,phase}`.
    pub upstream_aborts: Family<AbortLabels, Counter>,
    /// `gateway_abort_propagation_seconds`: cancel fired until the backend
    /// confirmed the abort.
    pub abort_propagation: Histogram,
    /// `gateway_backend_failures_total{backend,kind}`.
    pub backend_failures: Family<FailureLabels, Counter>,
    /// `gateway_estimate_error_ratio{model}`.
    pub estimate_error: Family<ModelLabels, Histogram>,
    /// `gateway_retries_total{backend}`: attempts that failed before the
    /// first token and were retried on another backend.
    pub retries: Family<BackendLabels, Counter>,
    /// `gateway_client_stalls_total{backend}`: streams dropped because the
    /// client stopped reading.
    pub client_stalls: Family<BackendLabels, Counter>,
    /// `gateway_drained_requests_total{backend,outcome}`: requests whose
    /// client left and whose upstream stream was read on
    /// (`on_disconnect = "drain"`) instead of aborted.
    pub drained: Family<DrainLabels, Counter>,
    /// `gateway_circuit_state{backend}`: 0 closed, 1 half-open, 2 open.
    pub circuit_state: Family<BackendLabels, Gauge>,
    /// `gateway_backend_limit{backend}`: the adaptive concurrency limit.
    pub backend_limit: Family<BackendLabels, Gauge>,
    /// `gateway_fallbacks_total{from,to}`: requests for model `from` that
    /// its backends could not start before the first token and that were
    /// moved to its fallback `to` (counted when the fallback is tried).
    pub fallbacks: Family<FallbackLabels, Counter>,
    /// `gateway_continuations_total{model,from,to}`: streams that failed
    /// on backend `from` after their first token and went on on `to`
    /// (counted when `to` produced its first token).
    pub continuations: Family<ContinuationLabels, Counter>,
    /// `gateway_continuation_prefill_tokens_total{model}`: the prompt
    /// tokens of continuations (the original prompt plus the tokens
    /// already delivered), prefilled again at the operator's cost; the
    /// tenant is not charged for them.
    pub continuation_prefill_tokens: Family<ModelLabels, Counter>,
    /// `gateway_admission_queue_depth{model}`: requests waiting in the
    /// model's fair queue for a backend with capacity.
    pub admission_queue: Family<ModelLabels, Gauge>,
    /// `gateway_embedding_inputs_total{model}`: inputs embedded (one vector
    /// each) by successful embeddings requests.
    pub embedding_inputs: Family<ModelLabels, Counter>,
    /// Whether `tenant` labels name the tenant (else [`ALL_TENANTS`]).
    tenant_labels: bool,
    /// `gateway_estimate_drift_tokens_total{model}`: prompt tokens the
    /// engines counted beyond the reserved estimate (not charged).
    pub estimate_drift_tokens: Family<ModelLabels, Counter>,
    /// `gateway_prompt_overrun_total{model,backend}`: requests whose
    /// engine-counted prompt exceeded the reserved estimate (charged at the
    /// estimate).
    pub prompt_overruns: Family<ModelBackendLabels, Counter>,
    /// `gateway_edge_rejections_total{reason}`: connections and requests
    /// the HTTP edge answered or closed itself (every reason at zero from
    /// the start).
    pub edge_rejections: EdgeRejections,
    /// `gateway_tokenizer_cache_hits_total{model}`,
    /// `gateway_tokenizer_cache_misses_total{model}`: long prompt pieces
    /// found in / missing from the model's tokenizer segment cache.
    pub tokenizer_cache_hits: Family<ModelLabels, Counter>,
    /// See [`Metrics::tokenizer_cache_hits`].
    pub tokenizer_cache_misses: Family<ModelLabels, Counter>,
    /// `gateway_tokenizer_cache_bytes{model}`: what the cache holds.
    pub tokenizer_cache_bytes: Family<ModelLabels, Gauge>,
    /// Two scrapes at once move the cache counters once.
    tokenizer_cache_sync: std::sync::Mutex<()>,
    /// `gateway_slo_total{model,class,kind,outcome}`: finished requests of
    /// a model with latency targets, checked against their class's target
    /// of each kind (attainment = met / (met + missed)).
    pub slo: Family<SloLabels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered, all at zero; `tenant`
    /// labels name the tenant.
    pub fn new() -> Self {
        Metrics::with_tenant_labels(true)
    }

    /// [`Metrics::new`], with `tenant` labels naming the tenant (`true`) or
    /// reading [`ALL_TENANTS`] for every tenant (`false`).
    ///
    /// ```
    /// use gateway_core::Usage;
    /// use gateway_policy::Metrics;
    ///
    /// let m = Metrics::with_tenant_labels(false);
    /// m.register_tenant("team-a");
    /// m.request("team-a", "m", "ok");
    /// m.spend("team-b", 0.25);
    /// let text = m.encode();
    /// assert!(!text.contains("team-"));
    /// assert!(text.contains(r#"gateway_requests_total{tenant="all",model="m",outcome="ok"} 1"#));
    /// assert!(text.contains(r#"gateway_spend_usd_total{tenant="all"} 0.25"#));
    /// ```
    pub fn with_tenant_labels(tenant_labels: bool) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by tenant, model and outcome",
            requests.clone(),
        );
        let request_duration = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from arrival to the end of the response",
            request_duration.clone(),
        );
        let time_to_first_token = Family::<ModelBackendLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from arrival to the first token",
            time_to_first_token.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register("tokens", "Tokens by tenant, model and kind", tokens.clone());
        let spend_usd = Family::<TenantLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "spend_usd",
            "Money charged to tenants, in USD",
            spend_usd.clone(),
        );
        let inflight = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "inflight_requests",
            "Requests in flight per backend",
            inflight.clone(),
        );
        let queue_depth = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "backend_queue_depth",
            "Requests waiting at the engine, from its pressure",
            queue_depth.clone(),
        );
        let upstream_aborts = Family::<AbortLabels, Counter>::default();
        registry.register(
            "upstream_aborts",
            "Requests aborted at the engine, by the phase the abort reached",
            upstream_aborts.clone(),
        );
        let abort_propagation = abort_histogram();
        registry.register(
            "abort_propagation_seconds",
            "Time from a cancel to the backend confirming the abort",
            abort_propagation.clone(),
        );
        let backend_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "backend_failures",
            "Backend failures by kind",
            backend_failures.clone(),
        );
        let estimate_error = Family::<ModelLabels, Histogram>::new_with_constructor(
            ratio_histogram as fn() -> Histogram,
        );
        registry.register(
            "estimate_error_ratio",
            "(estimated - actual) / actual prompt tokens",
            estimate_error.clone(),
        );
        let retries = Family::<BackendLabels, Counter>::default();
        registry.register(
            "retries",
            "Attempts that failed before the first token and were retried elsewhere",
            retries.clone(),
        );
        let client_stalls = Family::<BackendLabels, Counter>::default();
        registry.register(
            "client_stalls",
            "Streams dropped because the client stopped reading",
            client_stalls.clone(),
        );
        let drained = Family::<DrainLabels, Counter>::default();
        registry.register(
            "drained_requests",
            "Requests whose client left and whose upstream was drained instead of aborted",
            drained.clone(),
        );
        let circuit_state = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "circuit_state",
            "Circuit breaker per backend: 0 closed, 1 half-open, 2 open",
            circuit_state.clone(),
        );
        let backend_limit = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "backend_limit",
            "Adaptive concurrency limit per backend (backends with max_concurrency)",
            backend_limit.clone(),
        );
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "fallbacks",
            "Requests moved to a fallback model before their first token",
            fallbacks.clone(),
        );
        let continuations = Family::<ContinuationLabels, Counter>::default();
        registry.register(
            "continuations",
            "Streams continued on another backend after a failure after their first token",
            continuations.clone(),
        );
        let continuation_prefill_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "continuation_prefill_tokens",
            "Prompt tokens prefilled again by continuations (not charged to tenants)",
            continuation_prefill_tokens.clone(),
        );
        let admission_queue = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "admission_queue_depth",
            "Requests waiting in a model's fair admission queue",
            admission_queue.clone(),
        );
        let embedding_inputs = Family::<ModelLabels, Counter>::default();
        registry.register(
            "embedding_inputs",
            "Inputs embedded by successful embeddings requests",
            embedding_inputs.clone(),
        );
        let estimate_drift_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "estimate_drift_tokens",
            "Prompt tokens engines counted beyond the reserved estimate (not charged)",
            estimate_drift_tokens.clone(),
        );
        let prompt_overruns = Family::<ModelBackendLabels, Counter>::default();
        registry.register(
            "prompt_overrun",
            "Requests whose engine-counted prompt exceeded the reserved estimate",
            prompt_overruns.clone(),
        );
        let edge_rejections = EdgeRejections::default();
        registry.register(
            "edge_rejections",
            "Connections and requests the HTTP edge answered or closed itself, by reason",
            edge_rejections.0.clone(),
        );
        for reason in EdgeReason::ALL {
            drop(edge_rejections.0.get_or_create(&EdgeLabels {
                reason: reason.as_str(),
            }));
        }
        let tokenizer_cache_hits = Family::<ModelLabels, Counter>::default();
        registry.register(
            "tokenizer_cache_hits",
            "Long prompt pieces found in the model's tokenizer segment cache",
            tokenizer_cache_hits.clone(),
        );
        let tokenizer_cache_misses = Family::<ModelLabels, Counter>::default();
        registry.register(
            "tokenizer_cache_misses",
            "Long prompt pieces not found in the model's tokenizer segment cache (then tokenized)",
            tokenizer_cache_misses.clone(),
        );
        let tokenizer_cache_bytes = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "tokenizer_cache_bytes",
            "Bytes the model's tokenizer segment cache holds",
            tokenizer_cache_bytes.clone(),
        );
        let slo = Family::<SloLabels, Counter>::default();
        registry.register(
            "slo",
            "Finished requests checked against their class's latency target, by kind and outcome",
            slo.clone(),
        );
        Metrics {
            tokenizer_cache_sync: std::sync::Mutex::new(()),
            tokenizer_cache_hits,
            tokenizer_cache_misses,
            tokenizer_cache_bytes,
            slo,
            tenant_labels,
            registry,
            edge_rejections,
            embedding_inputs,
            estimate_drift_tokens,
            prompt_overruns,
            fallbacks,
            continuations,
            continuation_prefill_tokens,
            admission_queue,
            circuit_state,
            backend_limit,
            requests,
            request_duration,
            time_to_first_token,
            tokens,
            spend_usd,
            inflight,
            queue_depth,
            upstream_aborts,
            abort_propagation,
            backend_failures,
            estimate_error,
            retries,
            client_stalls,
            drained,
        }
    }

    /// Creates a backend's series at zero, so every metric is exported
    /// before the first request.
    pub fn register_backend(&self, backend: &str, model: &str) {
        let labels = BackendLabels {
            backend: backend.to_owned(),
        };
        drop(self.inflight.get_or_create(&labels));
        drop(self.queue_depth.get_or_create(&labels));
        drop(self.retries.get_or_create(&labels));
        drop(self.client_stalls.get_or_create(&labels));
        for outcome in DRAIN_OUTCOMES {
            drop(self.drained.get_or_create(&DrainLabels {
                backend: backend.to_owned(),
                outcome,
            }));
        }
        drop(self.circuit_state.get_or_create(&labels));
        for phase in gateway_core::EnginePhase::ALL {
            drop(self.upstream_aborts.get_or_create(&AbortLabels {
                backend: backend.to_owned(),
                phase: phase.as_str(),
            }));
        }
        for kind in gateway_core::FailureKind::ALL {
            drop(self.backend_failures.get_or_create(&FailureLabels {
                backend: backend.to_owned(),
                kind: kind.as_str(),
            }));
        }
        let model_backend = ModelBackendLabels {
            model: model.to_owned(),
            backend: backend.to_owned(),
        };
        drop(self.prompt_overruns.get_or_create(&model_backend));
        drop(self.time_to_first_token.get_or_create(&model_backend));
    }

    /// Records an engine's prompt count `actual` above the reserved
    /// `estimate` for `model` on `backend`: the excess in
    /// `gateway_estimate_drift_tokens_total`, one in
    /// `gateway_prompt_overrun_total`. Nothing when `actual <= estimate`.
    pub fn prompt_overrun(&self, model: &str, backend: &str, estimate: u64, actual: u64) {
        let Some(excess) = actual.checked_sub(estimate).filter(|e| *e > 0) else {
            return;
        };
        self.estimate_drift_tokens
            .get_or_create(&ModelLabels {
                model: model.to_owned(),
            })
            .inc_by(excess);
        self.prompt_overruns
            .get_or_create(&ModelBackendLabels {
                model: model.to_owned(),
                backend: backend.to_owned(),
            })
            .inc();
    }

    /// Creates a model's series at zero.
    pub fn register_model(&self, model: &str) {
        let labels = ModelLabels {
            model: model.to_owned(),
        };
        drop(self.request_duration.get_or_create(&labels));
        drop(self.estimate_error.get_or_create(&labels));
        drop(self.embedding_inputs.get_or_create(&labels));
        drop(self.estimate_drift_tokens.get_or_create(&labels));
    }

    /// Sets `model`'s tokenizer cache series to `stats` (the counters
    /// move up to the cache's own totals).
    pub fn tokenizer_cache(&self, model: &str, stats: &gateway_core::CounterCacheStats) {
        let labels = ModelLabels {
            model: model.to_owned(),
        };
        let _one_at_a_time = self
            .tokenizer_cache_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (family, total) in [
            (&self.tokenizer_cache_hits, stats.hits),
            (&self.tokenizer_cache_misses, stats.misses),
        ] {
            let counter = family.get_or_create(&labels);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.tokenizer_cache_bytes
            .get_or_create(&labels)
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
    }

    /// Creates the latency-target series of `model` at zero: each class
    /// and kind that has a target (`targets`: `(class, kind)` pairs).
    pub fn register_slo(&self, model: &str, targets: &[(&'static str, &'static str)]) {
        for &(class, kind) in targets {
            for outcome in ["met", "missed"] {
                drop(self.slo.get_or_create(&SloLabels {
                    model: model.to_owned(),
                    class,
                    kind,
                    outcome,
                }));
            }
        }
    }

    /// Counts one check of a finished request of `model` against its
    /// `class`'s target of `kind`.
    pub fn slo_check(&self, model: &str, class: &'static str, kind: &'static str, met: bool) {
        self.slo
            .get_or_create(&SloLabels {
                model: model.to_owned(),
                class,
                kind,
                outcome: if met { "met" } else { "missed" },
            })
            .inc();
    }

    /// Creates the continuation prefill series of `model` at zero.
    pub fn register_continuation(&self, model: &str) {
        drop(
            self.continuation_prefill_tokens
                .get_or_create(&ModelLabels {
                    model: model.to_owned(),
                }),
        );
    }

    /// Creates the series of model `from` falling back to `to` at zero.
    pub fn register_fallback(&self, from: &str, to: &str) {
        drop(self.fallbacks.get_or_create(&FallbackLabels {
            from: from.to_owned(),
            to: to.to_owned(),
        }));
    }

    /// The `tenant` label value of `tenant`: its id, or [`ALL_TENANTS`]
    /// when tenant labels are off (`unauthenticated` stays).
    pub fn tenant_label<'a>(&self, tenant: &'a str) -> &'a str {
        if self.tenant_labels || tenant == crate::pipeline::UNAUTHENTICATED {
            tenant
        } else {
            ALL_TENANTS
        }
    }

    /// Creates a tenant's spend series at zero.
    pub fn register_tenant(&self, tenant: &str) {
        drop(self.spend_usd.get_or_create(&TenantLabels {
            tenant: self.tenant_label(tenant).to_owned(),
        }));
    }

    /// Adds money charged to `tenant`, in USD.
    pub fn spend(&self, tenant: &str, usd: f64) {
        self.spend_usd
            .get_or_create(&TenantLabels {
                tenant: self.tenant_label(tenant).to_owned(),
            })
            .inc_by(usd);
    }

    /// Counts one request's outcome.
    pub fn request(&self, tenant: &str, model: &str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: self.tenant_label(tenant).to_owned(),
                model: model.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Adds a settled request's tokens.
    pub fn tokens(&self, tenant: &str, model: &str, usage: &Usage) {
        let kinds = [
            ("prompt", usage.prompt()),
            ("cached", usage.cached()),
            ("completion", usage.completion()),
            ("accepted", usage.accepted()),
            ("drafted", usage.drafted()),
            ("rejected", usage.rejected()),
            ("canceled", usage.canceled()),
        ];
        for (kind, n) in kinds {
            self.tokens
                .get_or_create(&TokenLabels {
                    tenant: self.tenant_label(tenant).to_owned(),
                    model: model.to_owned(),
                    kind,
                })
                .inc_by(n);
        }
    }

    /// Counts a backend failure.
    pub fn failure(&self, backend: &str, kind: &'static str) {
        self.backend_failures
            .get_or_create(&FailureLabels {
                backend: backend.to_owned(),
                kind,
            })
            .inc();
    }

    /// The registry, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
