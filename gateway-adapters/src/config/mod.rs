//! The gateway's TOML config file, validated, with every problem reported
//! by key path.
//!
//! [`GatewayConfig::load`] reads a file, [`GatewayConfig::parse`] a string,
//! and [`GatewayConfig::embedded_default`] is what the example server runs
//! without `--config`. Validation walks the whole document and collects
//! every problem — unknown keys, missing keys, wrong types, values out of
//! range, duplicate names, dangling references — into [`ConfigErrors`],
//! each with the path of the key it is about (`server.listen`,
//! `tenants[0].api_key`, `backends[1].url`; for a problem with a whole
//! table, the table's path, e.g. `tenants[2]`).
//!
//! The result is plain validated data: addresses are [`SocketAddr`]s,
//! times [`Duration`]s, counts that cannot be zero `NonZero*`, money
//! [`Money`] and [`Pricing`], engines [`EngineKind`], paths absolute (or
//! joined onto the base directory given to [`GatewayConfig::parse`]), and
//! API keys [`TenantKey`] digests — plaintext keys are hashed at load time
//! and not kept.
//!
//! # The file
//!
//! The format is the one of the example server's contract
//! (`SERVER-CONTRACT.md`); `examples/gateway.toml` is a commented,
//! complete example. Every table and key, with its default:
//!
//! ```toml
//! [server]                            # optional table
//! listen = "127.0.0.1:8080"           # IP:PORT; default 127.0.0.1:8080
//! admin_key = "admin-secret"          # optional; absent = /admin/* answers 404
//! metrics_key = "metrics-secret"      # optional, or metrics_key_sha256 (64 hex); absent = /metrics open (addition)
//! metrics_tenant_labels = true        # default true; false: every tenant label reads "all" (addition)
//! max_body_bytes = 1048576            # >= 1; default 1 MiB
//! stream_buffer_events = 64           # >= 1; default 64
//! first_token_timeout_ms = 30000      # > 0; default 30000
//! idle_timeout_ms = 30000             # > 0; default 30000
//! client_stall_timeout_ms = 30000     # > 0; default 30000
//! shutdown_grace_ms = 10000           # >= 0; default 10000
//! admission_wait_ms = 5000            # >= 0; default 5000 (addition to the contract)
//! request_timeout_ms = 600000         # >= 1; default none: total time per request (addition)
//! estimate_drift_warn_ratio = 0.02    # 0..=100; default 0.02: warn when an exact prompt count misses (or the engine's count passes the estimate) by more (addition)
//! unknown_fields = "reject"           # reject (default) | drop: extra request fields the model's engines do not forward (addition)
//! max_extra_bytes = 65536             # >= 1; default 65536: all extra request fields together, as written (addition)
//! max_extra_depth = 32                # 1..=128; default 32: JSON nesting of one extra field (addition)
//! max_json_depth = 64                 # 2..=128; default 64: JSON nesting of a whole request body (addition)
//! header_read_timeout_ms = 10000      # 1..=3600000; default 10000: a request head must arrive within this (addition)
//! keep_alive_timeout_ms = 60000       # 1..=3600000; default 60000: an idle kept-alive connection is closed after this (addition)
//! body_read_timeout_ms = 30000        # 1..=3600000; default 30000: a request body must arrive within this, else 408 (addition)
//! max_header_bytes = 32768            # 1024..=262144; default 32768: a larger request head gets a JSON 431 (addition)
//! max_connections = 10000             # 1..=1000000; default 10000 client connections; more get a fast 503 (addition)
//! ready_drain_ms = 0                  # 0..=600000; default 0: /ready answers 503 this long after SIGTERM before the listener closes (addition)
//! tokenizer_threads = 2               # 0..=1024; default: the CPU cores less one (at least 1); prompts tokenized at once off the runtime; 0 = inline (addition)
//! tokenizer_queue = 256               # 0..=1000000; default 256 prompts waiting for a tokenizer thread; beyond: 503 overloaded (addition)
//! tokenizer_inline_bytes = 16384      # 0..=1073741824; default 16384: smaller prompts are tokenized inline (addition)
//! tokenizer_cache_bytes = 33554432    # 0..=68719476736; default 32 MiB per model: long chat prompts' pieces cached per tenant; 0 = off (addition)
//!
//! [health]                            # optional table (addition): every backend's breaker and adaptive limit
//! failures_to_open = 5                # 1..=10000; default 5 consecutive failures open the breaker
//! failure_window_ms = 60000           # 1..=86400000; default none: a run of failures longer than this restarts
//! open_ms = 10000                     # 1..=86400000; default 10000: open this long, then half-open
//! half_open_probes = 1                # 1..=10000; default 1 probe at a time while half-open
//! successes_to_close = 2              # 1..=10000; default 2 good probes close it
//! min_concurrency = 1                 # 1..=1000000; default 1: floor of the adaptive limit (capped at max_concurrency)
//!
//! [routing]                           # optional table (addition): prefix affinity
//! prefix_block_bytes = 256            # 1..=65536; default 256 (prompts whose tokens are not known)
//! prefix_block_tokens = 64            # 1..=65536; default 64 token ids (a model with a tokenizer)
//! prefix_blocks = 4                   # 1..=64; default 4 blocks hashed per prompt
//! affinity_saturation = 1.0           # 0..=100; default 1.0: load at which an affinity match is ignored; 0 turns affinity off
//!
//! [ledger]                            # optional table
//! kind = "memory"                     # memory (default) | redis
//! # url = "redis://127.0.0.1:6379"    # required with redis, not allowed with memory
//! # hold_ttl_ms = 60000               # redis only; 1000..=86400000; default 60000: a hold not renewed for this long expires (live holds are renewed every third of it)
//! # settled_ttl_ms = 3600000          # redis only; 1000..=604800000; default 3600000: how long a settled marker keeps a replayed settle a no-op
//! # journal_dir = "/var/lib/gateway/ledger"  # redis only; default none (journal in memory): settles not yet in Redis, fsynced, replayed at start; one directory per replica
//! # journal_max_entries = 65536       # redis only; 1..=10000000; default 65536: live holds + settles waiting for Redis; beyond it requests get 503 ledger_unavailable
//!
//! [[tenants]]                         # at least one
//! id = "team-a"                       # required, unique, [A-Za-z0-9_.-]+
//! api_key = "sk-team-a"               # exactly one of api_key / api_key_sha256 (64 hex)
//! budget_usd = 25.0                   # optional, >= 0
//! requests_per_minute = 600           # optional, >= 1
//! tokens_per_minute = 200000          # optional, >= 1
//! max_concurrency = 32                # optional, >= 1
//! max_connections = 100               # optional, >= 1: open client connections of this tenant (addition)
//! weight = 1                          # >= 1; default 1
//! priority = "interactive"            # interactive (default) | batch: requests without x-priority (addition)
//! allow_priority_raise = false        # default false: x-priority may only lower the class (addition)
//! models = ["tiny-llama"]             # optional allow-list of configured models
//!
//! [[models]]                          # at least one; each served by a backend
//! name = "tiny-llama"                 # required, unique, [A-Za-z0-9_.-]+
//! tokenizer = "tokenizer.json"        # optional file, relative to the config file
//! chat_template = "template.jinja"    # optional file, relative to the config file
//! add_bos_token = true                # default true
//! bos_token = "<s>"                   # default "<s>": BOS as the chat template sees it (addition)
//! eos_token = "</s>"                  # default "</s>" (addition)
//! context_window = 2048               # required, >= 1
//! input_usd_per_mtok = 0.50           # required, >= 0
//! cached_input_usd_per_mtok = 0.05    # optional, >= 0; default = input price
//! output_usd_per_mtok = 1.50          # required, >= 0
//! default_max_tokens = 256            # 1..=context_window; default min(256, context_window)
//! fallbacks = []                      # other configured models; default none
//! admission_queue = 1024              # 0..=1000000; default 1024 requests waiting for capacity (addition)
//! continue_on_failure = false         # default false: a stream whose engine fails after its first token goes on on another backend (addition)
//! max_continuations = 1               # 1..=16, only with continue_on_failure; default 1 continuation per request (addition)
//! continuation_ids = "exact"          # exact | retokenize (not token-exact), only with continue_on_failure; default exact (addition)
//! # image_tokens = 576                # >= 1; prompt tokens reserved per image part; unset: images refused (addition)
//! # audio_tokens, video_tokens        # the same for input_audio / audio_url and video_url parts (addition)
//! # unknown_fields = "drop"           # reject | drop; default: server.unknown_fields (addition)
//! # prefer = ["trtllm", "nim"]        # engine kinds interactive requests try first, in order; default none (addition)
//!
//! [models.slo.interactive]            # optional latency targets of the model above, per class (addition):
//! ttft_ms = 500                       # 1..=3600000: time to first token, from arrival
//! itl_ms = 50                         # 1..=3600000: mean time between output tokens
//! # [models.slo.batch]                # the same keys for batch requests
//!
//! [[backends]]                        # at least one
//! name = "vllm-0"                     # required, unique, [A-Za-z0-9_.-]+
//! engine = "vllm"                     # required: sim | vllm | sglang | trtllm | triton | nim | dynamo | openai
//! url = "http://127.0.0.1:8000"       # http(s) URL; required, except for sim (not allowed there)
//! model = "tiny-llama"                # required, a configured model
//! served_model = "tiny-llama"         # default = model
//! max_concurrency = 64                # optional, >= 1
//! on_disconnect = "abort"             # abort (default) | drain (not for sglang, triton, sim)
//! drain_timeout_ms = 60000            # optional, only with drain, 1..=3600000; default 60000 (addition)
//! api_key_env = "NIM_API_KEY"         # optional env variable NAME ([A-Z_][A-Z0-9_]*); not for sim
//! metrics_url = "http://127.0.0.1:8000/metrics"  # optional http(s) URL; not for sim
//! ca_file = "certs/private-ca.pem"    # optional PEM file, trusted for https besides the public roots; not for sim (addition)
//! # capabilities = ["tools", "reasoning", "structured_output", "image_input", "logprobs"]  # default: the engine's (addition)
//! # context_window = 8192             # >= 1; default: the model's; its own smaller window (addition)
//!
//! [backends.sim]                      # optional, only with engine = "sim" (addition)
//! slots = 8                           # >= 1; default 8
//! queue_capacity = 64                 # >= 0; default 64
//! kv_capacity_tokens = 131072         # >= 1; default 131072
//! prefill_tokens_per_sec = 10000.0    # >= 0, 0 = instant; default 10000
//! decode_tokens_per_sec = 100.0       # >= 0, 0 = instant; default 100
//! base_latency_ms = 0                 # >= 0; default 0
//! seed = 0                            # >= 0; default 0
//! min_natural_tokens = 16             # >= 1; default min(16, max_natural_tokens)
//! max_natural_tokens = 128            # >= min_natural_tokens; default max(128, min_natural_tokens)
//! speculative = { draft_tokens = 4, acceptance_rate = 0.7 }   # optional; both keys required
//! ```
//!
//! `on_disconnect` defaults to `abort` for every engine, hosted ones
//! included: aborting is always safe for the GPU and for the tenant's
//! budget (only delivered tokens are charged), while `drain` keeps an
//! upstream generation running after the client left — worth it only when
//! the upstream bills the full generation anyway, which the gateway cannot
//! know, so it must be asked for.
//!
//! # Examples
//!
//! ```
//! use std::path::Path;
//! use gateway_adapters::config::GatewayConfig;
//!
//! let text = r#"
//! [server]
//! listen = "0.0.0.0:9000"
//! [[tenants]]
//! id = "team-a"
//! api_key = "sk-team-a"
//! [[models]]
//! name = "sim-small"
//! context_window = 4096
//! input_usd_per_mtok = 0.5
//! output_usd_per_mtok = 1.5
//! [[backends]]
//! name = "sim-0"
//! engine = "sim"
//! model = "sim-small"
//! "#;
//! let config = GatewayConfig::parse(text, Path::new("/etc/gateway")).unwrap();
//! assert_eq!(config.server.listen.port(), 9000);
//! assert!(config.tenants[0].key.matches("sk-team-a"));
//! assert_eq!(config.models[0].default_max_tokens.get(), 256);
//!
//! let errors = GatewayConfig::parse("[server]\nlisten = 8080\nport = 1\n", Path::new("."))
//!     .unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "server.port: unknown key\n\
//!      server.listen: expected a string, found an integer\n\
//!      tenants: at least one [[tenants]] entry is required\n\
//!      models: at least one [[models]] entry is required\n\
//!      backends: at least one [[backends]] entry is required"
//! );
//! ```

pub(crate) mod defaults;
mod key;
mod policy;
mod serving;
mod slo;
mod validate;
mod walk;

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_core::{Capabilities, EngineKind, LatencyClass, Money, Pricing};
use gateway_policy::MediaCosts;
use gateway_policy::health::HealthConfig;
use gateway_policy::route::{AffinityConfig, Slo};

use crate::engines::OnDisconnect;
pub use crate::openai::pass_through::{BodyLimits, UnknownFields};
use crate::sim::{SimConfig, Speculative};

pub use defaults::{DEMO_ADMIN_KEY, DEMO_API_KEY, EMBEDDED_DEFAULT_TOML};
pub use key::TenantKey;

/// A validated gateway configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// `[server]`: listening, limits and timeouts.
    pub server: ServerConfig,
    /// `[ledger]`: where budgets and rate limits are kept.
    pub ledger: LedgerConfig,
    /// `[health]` (an addition to the contract): every backend's circuit
    /// breaker and the floor of its adaptive concurrency limit. Default
    /// [`HealthConfig::default`].
    pub health: HealthConfig,
    /// `[routing]` (an addition to the contract): prefix-affinity settings.
    /// Default [`AffinityConfig::default`].
    pub routing: AffinityConfig,
    /// `[[tenants]]`, in file order; at least one, ids unique.
    pub tenants: Vec<TenantConfig>,
    /// `[[models]]`, in file order; at least one, names unique, each served
    /// by at least one backend.
    pub models: Vec<ModelConfig>,
    /// `[[backends]]`, in file order; at least one, names unique.
    pub backends: Vec<BackendConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `listen`: the address to bind. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// `admin_key`, hashed; `None` means the `/admin/*` routes answer 404.
    pub admin_key: Option<TenantKey>,
    /// `metrics_key` (hashed here) or `metrics_key_sha256` (an addition to
    /// the contract): the bearer key `GET /metrics` requires; `None` leaves
    /// it open.
    pub metrics_key: Option<TenantKey>,
    /// `metrics_tenant_labels` (an addition to the contract): whether
    /// metrics carry the tenant's id in their `tenant` label; off, every
    /// such label reads `all`. Default true.
    pub metrics_tenant_labels: bool,
    /// `max_body_bytes`: larger request bodies get 413. Default 1 MiB.
    pub max_body_bytes: NonZeroUsize,
    /// `stream_buffer_events`: events queued towards one slow client.
    /// Default 64.
    pub stream_buffer_events: NonZeroUsize,
    /// `first_token_timeout_ms`: per backend attempt, until the first token
    /// event. Default 30 s; never zero.
    pub first_token_timeout: Duration,
    /// `idle_timeout_ms`: the longest gap between two token events.
    /// Default 30 s; never zero.
    pub idle_timeout: Duration,
    /// `client_stall_timeout_ms`: a client that reads nothing this long is
    /// dropped and its request aborted upstream. Default 30 s; never zero.
    pub client_stall_timeout: Duration,
    /// `shutdown_grace_ms`: how long in-flight streams may finish after
    /// SIGINT/SIGTERM. Default 10 s; zero aborts at once.
    pub shutdown_grace: Duration,
    /// `admission_wait_ms` (an addition to the contract): how long a request
    /// waits for backend capacity before it is refused with 503
    /// `overloaded`. Default 5 s; zero refuses at once.
    pub admission_wait: Duration,
    /// `request_timeout_ms` (an addition to the contract): the total time a
    /// request may take, from arrival to its last token; `None` (absent)
    /// for no bound. Past it the stream ends with `total_timeout`.
    pub request_timeout: Option<Duration>,
    /// `estimate_drift_warn_ratio` (an addition to the contract): an exact
    /// prompt-token estimate off by more than this fraction of the engine's
    /// count logs a warning. Default 0.02.
    pub estimate_drift_warn_ratio: f64,
    /// `unknown_fields` (addition): what happens to a request's extra field
    /// that the model's engines do not forward: `reject` (default, a 400
    /// naming the field) or `drop`. A model's own `unknown_fields` wins.
    pub unknown_fields: UnknownFields,
    /// `max_extra_bytes`, `max_extra_depth`, `max_json_depth` (additions):
    /// caps on the extra fields' total size and nesting, and on the whole
    /// body's nesting. Defaults 65536, 32, 64.
    pub body_limits: BodyLimits,
    /// `header_read_timeout_ms` (an addition to the contract): a new
    /// connection's first request head, and any later head from its first
    /// byte, must arrive within this; else the connection is closed.
    /// Default 10 s; never zero.
    pub header_read_timeout: Duration,
    /// `keep_alive_timeout_ms` (an addition to the contract): a kept-alive
    /// connection with no request in flight and no new byte for this long
    /// is closed. Default 60 s; never zero.
    pub keep_alive_timeout: Duration,
    /// `body_read_timeout_ms` (an addition to the contract): the whole
    /// request body must arrive within this, counted from the end of its
    /// head; else 408 `request_timeout` and the connection is closed.
    /// Default 30 s; never zero.
    pub body_read_timeout: Duration,
    /// `max_header_bytes` (an addition to the contract): the largest request
    /// head (request line and headers); a larger one gets a JSON 431
    /// `headers_too_large` and the connection is closed. Default 32 KiB.
    pub max_header_bytes: usize,
    /// `max_connections` (an addition to the contract): client connections
    /// open at once; more get a fast 503 `overloaded`. Default 10000.
    pub max_connections: NonZeroUsize,
    /// `ready_drain_ms` (an addition to the contract): after SIGTERM or
    /// SIGINT, `/ready` answers 503 this long while the listener still
    /// serves, before the shutdown proper. Default zero.
    pub ready_drain: Duration,
    /// `tokenizer_threads` (an addition to the contract): prompts
    /// tokenized at once on blocking threads, off the async runtime.
    /// Default: the CPU cores; 0 tokenizes inline on the runtime.
    pub tokenizer_threads: usize,
    /// `tokenizer_queue` (an addition): prompts that may wait for a
    /// tokenizer thread (at most the admission wait); beyond, 503
    /// `overloaded` at once. Default 256.
    pub tokenizer_queue: usize,
    /// `tokenizer_inline_bytes` (an addition): prompts smaller than this
    /// are tokenized inline, where the hand-over costs more than the work.
    /// Default 16384.
    pub tokenizer_inline_bytes: usize,
    /// `tokenizer_cache_bytes` (an addition): the bound on each model's
    /// tokenizer segment cache (a model with `tokenizer` and
    /// `chat_template`): the ids of long pieces of rendered chat prompts,
    /// kept per tenant, so a shared system prompt is not tokenized with
    /// every request. Exact. Default 32 MiB; 0 turns it off.
    pub tokenizer_cache_bytes: usize,
}

/// `[ledger]`: where budgets and rate-limit counters live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LedgerConfig {
    /// `kind = "memory"` (the default): in this process only.
    #[default]
    Memory,
    /// `kind = "redis"`: shared by every replica using the same Redis.
    Redis {
        /// `url`: a `redis://` or `rediss://` URL.
        url: String,
        /// The hold TTL, the settled-marker TTL and the settle journal.
        settings: RedisLedgerSettings,
    },
}

/// The `[ledger]` keys of `kind = "redis"` beyond `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLedgerSettings {
    /// `hold_ttl_ms` (default 60000): a hold not renewed for this long
    /// expires; live holds are renewed every third of it.
    pub hold_ttl_ms: u64,
    /// `settled_ttl_ms` (default 3600000): how long a settled marker lives.
    pub settled_ttl_ms: u64,
    /// `journal_dir` (default none: in memory): where settles wait for
    /// Redis, fsynced; one directory per replica.
    pub journal_dir: Option<String>,
    /// `journal_max_entries` (default 65536): live holds plus settles
    /// waiting for Redis; beyond it requests are refused (503).
    pub journal_max_entries: u64,
}

impl Default for RedisLedgerSettings {
    fn default() -> Self {
        RedisLedgerSettings {
            hold_ttl_ms: 60_000,
            settled_ttl_ms: 3_600_000,
            journal_dir: None,
            journal_max_entries: 65_536,
        }
    }
}

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// `id`: unique, non-empty, `[A-Za-z0-9_.-]` (it is a metrics label).
    pub id: String,
    /// `api_key` (hashed here) or `api_key_sha256`; unique across tenants.
    pub key: TenantKey,
    /// `budget_usd`: a hard budget, or `None` for unlimited.
    pub budget: Option<Money>,
    /// `requests_per_minute`, if limited.
    pub requests_per_minute: Option<NonZeroU32>,
    /// `tokens_per_minute` (estimated prompt + max_tokens), if limited.
    pub tokens_per_minute: Option<NonZeroU64>,
    /// `max_concurrency`: requests in flight at once, if limited.
    pub max_concurrency: Option<NonZeroU32>,
    /// `max_connections` (an addition to the contract): client connections
    /// attributed to this tenant (by the API key of their requests) open at
    /// once, if limited; a request that would open one more gets 429
    /// `too_many_connections` and its connection is closed.
    pub max_connections: Option<NonZeroU32>,
    /// `weight`: share of contended capacity. Default 1.
    pub weight: NonZeroU32,
    /// `priority`: the class of requests without an `x-priority` header
    /// (an addition to the contract). Default interactive.
    pub priority: LatencyClass,
    /// `allow_priority_raise` (an addition to the contract): whether an
    /// `x-priority` above `priority` is honored (a batch tenant's
    /// `interactive`); lowering is always allowed. Default false: the
    /// request runs in `priority`.
    pub allow_priority_raise: bool,
    /// `models`: the allow-list (each a configured model), or `None` for
    /// every model.
    pub models: Option<Vec<String>>,
}

impl TenantConfig {
    /// Whether this tenant may use `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }
}

/// One `[[models]]` entry: a public model name and what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// `name`: what clients send; unique, `[A-Za-z0-9_.-]`.
    pub name: String,
    /// `tokenizer`: an HF `tokenizer.json` (an existing file), resolved
    /// against the config file's directory.
    pub tokenizer: Option<PathBuf>,
    /// `chat_template`: a chat template (an existing file), resolved against
    /// the config file's directory.
    pub chat_template: Option<PathBuf>,
    /// `add_bos_token`: whether the tokenizer prepends BOS. Default true.
    pub add_bos_token: bool,
    /// `bos_token` (addition): the BOS text the chat template sees.
    /// Default `<s>`.
    pub bos_token: String,
    /// `eos_token` (addition): the EOS text the chat template sees.
    /// Default `</s>`.
    pub eos_token: String,
    /// `context_window`: most prompt plus completion tokens.
    pub context_window: NonZeroU32,
    /// `input_usd_per_mtok`, `cached_input_usd_per_mtok` (default: the
    /// input price) and `output_usd_per_mtok`, per token.
    pub pricing: Pricing,
    /// `default_max_tokens`: the completion cap reserved for when a request
    /// sets none; at most `context_window`. Default 256 (or the context
    /// window, if smaller).
    pub default_max_tokens: NonZeroU32,
    /// `fallbacks`: other configured models a request may move to before
    /// its first byte, in order. Default none.
    pub fallbacks: Vec<String>,
    /// `admission_queue` (an addition to the contract): most requests
    /// waiting for this model's capacity; more get `overloaded`. Default
    /// 1024; 0 never queues.
    pub admission_queue: usize,
    /// `continue_on_failure`, `max_continuations` and `continuation_ids`
    /// (additions): whether, how often and from which ids a stream whose engine fails after its first token
    /// goes on on another of the model's backends
    /// ([`gateway_policy::Continuation`]). Default off.
    pub continuation: Option<gateway_policy::Continuation>,
    /// `image_tokens`, `audio_tokens`, `video_tokens` (additions): prompt
    /// tokens reserved per media part of a chat request; unset, the model
    /// takes no such input and such requests are refused (400).
    pub media: MediaCosts,
    /// `unknown_fields` (addition): this model's `reject` or `drop` of
    /// extra fields its engines do not forward; `None`: the server's.
    pub unknown_fields: Option<UnknownFields>,
    /// `slo` (addition): latency targets per priority class; with any,
    /// requests are routed to them (`gateway_policy::route::SloRouter`).
    pub slo: Slo,
    /// `prefer` (addition): engine kinds whose backends of this model
    /// interactive requests try first, in this order. Default none.
    pub prefer: Vec<EngineKind>,
}

/// One `[[backends]]` entry: an engine serving one model.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `name`: unique, `[A-Za-z0-9_.-]` (it is a metrics label).
    pub name: String,
    /// `engine`: never [`EngineKind::Custom`] (host applications add their
    /// own backends in code).
    pub engine: EngineKind,
    /// `url`: an `http://` or `https://` URL with a host, without a trailing
    /// `/`; `Some` exactly when the engine is not `sim`.
    pub url: Option<String>,
    /// `model`: the configured model it serves.
    pub model: String,
    /// `served_model`: the model's name at the engine. Default: `model`.
    pub served_model: String,
    /// `max_concurrency`: requests sent to it at once, if limited.
    pub max_concurrency: Option<NonZeroU32>,
    /// `on_disconnect`. Default [`OnDisconnect::Abort`].
    pub on_disconnect: OnDisconnect,
    /// `api_key_env`: the name of the environment variable holding the
    /// upstream credential (not read during validation).
    pub api_key_env: Option<String>,
    /// `metrics_url`: where to scrape pressure metrics, if not the engine's
    /// default.
    pub metrics_url: Option<String>,
    /// `ca_file`: a PEM file of certificates trusted for `https` URLs
    /// besides the public (Mozilla) roots, resolved against the config
    /// file's folder; it must exist.
    pub ca_file: Option<PathBuf>,
    /// `capabilities` (addition): what it serves beyond plain text; `None`
    /// (absent): its engine's
    /// [`default_capabilities`](EngineKind::default_capabilities).
    pub capabilities: Option<Capabilities>,
    /// `context_window` (addition): its own window (prompt plus completion
    /// tokens) when smaller than its model's; `None`: the model's.
    pub context_window: Option<NonZeroU32>,
    /// `[backends.sim]`: the simulated engine's knobs; `Some` exactly when
    /// the engine is `sim` (defaults when the table is absent).
    pub sim: Option<SimSettings>,
}

impl BackendConfig {
    /// The adapter of this entry's remote engine:
    /// [`engines::build`](crate::engines::build) of its `engine` and
    /// [`upstream`](Self::upstream) (a `sim` entry has none: see
    /// [`sim_config`](Self::sim_config)).
    ///
    /// # Errors
    /// As [`upstream`](Self::upstream), then as
    /// [`engines::build`](crate::engines::build).
    #[cfg(feature = "engines")]
    pub fn remote_backend(
        &self,
    ) -> Result<std::sync::Arc<dyn gateway_core::Backend>, crate::engines::EngineError> {
        crate::engines::build(self.engine, self.upstream()?)
    }

    /// Where the engine of this entry is and how to talk to it, for
    /// [`engines::build`](crate::engines::build): its URL, served model,
    /// `max_concurrency`, `metrics_url`, `on_disconnect` (with its drain
    /// timeout), `ca_file`, and the API key read now from the variable
    /// `api_key_env` names.
    ///
    /// # Errors
    /// [`EngineError::MissingApiKey`](crate::engines::EngineError::MissingApiKey)
    /// if the variable is unset or empty,
    /// [`EngineError::InvalidUrl`](crate::engines::EngineError::InvalidUrl)
    /// without a URL (a `sim` entry).
    #[cfg(feature = "engines")]
    pub fn upstream(&self) -> Result<crate::engines::UpstreamConfig, crate::engines::EngineError> {
        use crate::engines::{EngineError, UpstreamConfig};
        let Some(url) = &self.url else {
            return Err(EngineError::InvalidUrl {
                url: String::new(),
                reason: "a URL is required".to_owned(),
            });
        };
        let api_key = match &self.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.is_empty() => Some(key),
                _ => return Err(EngineError::MissingApiKey(var.clone())),
            },
            None => None,
        };
        let mut upstream = UpstreamConfig::new(self.name.clone(), url.clone(), self.model.clone());
        upstream.served_model = Some(self.served_model.clone());
        upstream.metrics_url = self.metrics_url.clone();
        upstream.api_key = api_key;
        upstream.max_concurrency = self.max_concurrency.map(NonZeroU32::get);
        upstream.on_disconnect = self.on_disconnect;
        upstream.ca_file = self.ca_file.clone();
        Ok(upstream)
    }

    /// The [`SimConfig`] of a `sim` backend (`None` for other engines), with
    /// its context window taken from its model in `models`.
    pub fn sim_config(&self, models: &[ModelConfig]) -> Option<SimConfig> {
        let settings = self.sim.as_ref()?;
        let context_window = models
            .iter()
            .find(|m| m.name == self.model)
            .map_or(SimConfig::default().context_window, |m| {
                u64::from(m.context_window.get())
            });
        Some(settings.to_sim_config(&self.name, &[self.served_model.as_str()], context_window))
    }
}

/// `[backends.sim]`: how a simulated backend behaves (see
/// [`SimConfig`] for the meaning of each field). The defaults are those of
/// [`SimConfig::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct SimSettings {
    /// `slots`: requests running at once. Default 8.
    pub slots: NonZeroU32,
    /// `queue_capacity`: requests waiting for a slot. Default 64.
    pub queue_capacity: u32,
    /// `kv_capacity_tokens`: KV-cache size in tokens. Default 131072.
    pub kv_capacity_tokens: NonZeroU64,
    /// `prefill_tokens_per_sec`; `None` (written `0`) is instant.
    /// Default 10000.
    pub prefill_tokens_per_sec: Option<f64>,
    /// `decode_tokens_per_sec`; `None` (written `0`) is instant. Default
    /// 100.
    pub decode_tokens_per_sec: Option<f64>,
    /// `base_latency_ms`: fixed time added to every prefill. Default 0.
    pub base_latency: Duration,
    /// `seed`: of every random choice. Default 0.
    pub seed: u64,
    /// `min_natural_tokens..=max_natural_tokens`: natural completion
    /// lengths. Default 16 to 128.
    pub natural_tokens: RangeInclusive<u32>,
    /// `speculative = { draft_tokens, acceptance_rate }`, if enabled.
    pub speculative: Option<Speculative>,
}

impl Default for SimSettings {
    fn default() -> Self {
        let sim = SimConfig::default();
        SimSettings {
            slots: NonZeroU32::new(sim.slots).unwrap_or(NonZeroU32::MIN),
            queue_capacity: sim.queue_capacity,
            kv_capacity_tokens: NonZeroU64::new(sim.kv_capacity_tokens).unwrap_or(NonZeroU64::MIN),
            prefill_tokens_per_sec: sim.prefill_tokens_per_sec,
            decode_tokens_per_sec: sim.decode_tokens_per_sec,
            base_latency: sim.base_latency,
            seed: sim.seed,
            natural_tokens: sim.natural_length,
            speculative: sim.speculative,
        }
    }
}

impl SimSettings {
    /// The engine config of backend `backend_name` answering to the engine
    /// model names `models`, enforcing `context_window`; everything these
    /// settings do not cover (faults, retry hint, channel size) is
    /// [`SimConfig::default`]'s.
    pub fn to_sim_config(
        &self,
        backend_name: &str,
        models: &[&str],
        context_window: u64,
    ) -> SimConfig {
        SimConfig {
            name: backend_name.to_owned(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            slots: self.slots.get(),
            queue_capacity: self.queue_capacity,
            kv_capacity_tokens: self.kv_capacity_tokens.get(),
            base_latency: self.base_latency,
            prefill_tokens_per_sec: self.prefill_tokens_per_sec,
            decode_tokens_per_sec: self.decode_tokens_per_sec,
            context_window,
            speculative: self.speculative,
            seed: self.seed,
            natural_length: self.natural_tokens.clone(),
            ..SimConfig::default()
        }
    }
}

/// One problem in a config file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigProblem {
    /// The key path (`server.listen`, `tenants[0].api_key`,
    /// `backends[1].sim.slots`), the table's path for a problem with a
    /// whole table, `line L, column C` for a syntax error, or the file's
    /// path when it cannot be read.
    pub path: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a config: its `Display` prints one per line as
/// `<path>: <message>`, in the order they were found (roughly file order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The problems; never empty.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl GatewayConfig {
    /// Reads and validates the file at `path`. Paths inside it are resolved
    /// against its directory (made absolute).
    ///
    /// # Errors
    /// Every problem: an unreadable file (at the file's path), a syntax
    /// error (at `<file>, line L, column C`) or every invalid key.
    pub fn load(path: impl AsRef<Path>) -> Result<GatewayConfig, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            problems: vec![ConfigProblem::new(
                path.display().to_string(),
                format!("cannot read config file: {e}"),
            )],
        })?;
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = absolute.parent().unwrap_or(Path::new("."));
        validate::parse(&text, base_dir, Some(path))
    }

    /// Validates config `text`; relative paths in it are joined onto
    /// `base_dir`.
    ///
    /// # Errors
    /// Every problem: a syntax error (at `line L, column C`) or every
    /// invalid key.
    pub fn parse(text: &str, base_dir: &Path) -> Result<GatewayConfig, ConfigErrors> {
        validate::parse(text, base_dir, None)
    }

    /// The config the example server runs without `--config`: listen on
    /// `127.0.0.1:8080`, admin key [`DEMO_ADMIN_KEY`], one tenant `demo`
    /// with key [`DEMO_API_KEY`] and no limits, one model `sim-small`
    /// (8192-token context window, $0.50 / $0.05 cached / $1.50 per million
    /// tokens), one `sim` backend `sim-0` serving it with the default
    /// [`SimSettings`]. It is [`EMBEDDED_DEFAULT_TOML`], parsed.
    pub fn embedded_default() -> GatewayConfig {
        defaults::embedded()
    }

    /// The tenant with id `id`.
    pub fn tenant(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.id == id)
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The backends serving `model`, in file order.
    pub fn backends_for<'a>(
        &'a self,
        model: &'a str,
    ) -> impl Iterator<Item = &'a BackendConfig> + 'a {
        self.backends.iter().filter(move |b| b.model == model)
    }
}
