//! The OpenAI-compatible HTTP server (feature `router`, which needs no
//! engine client; `server` adds the engines and the bootstrap): the
//! gateway's axum routes for a host to mount into its own app ([`router`],
//! or [`routes`] to merge), and [`serve`] with the connection handling the
//! gateway needs (no Nagle, a modest send buffer, graceful shutdown,
//! closing a stalled client's connection) for any tower service the host
//! builds around them; [`serve_and_drain`] adds the shutdown sequence of
//! the `gateway` binary (readiness phase, drain, settlement).
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `POST /v1/embeddings`, `GET /v1/models`, `GET /health`, `GET /ready`, `GET /metrics`,
//! `GET /admin/tenants/{id}/usage`.
//!
//! [`serve_with`] adds the edge limits of [`ServeOptions`]: a cap on
//! connections (a fast 503 beyond it), header-read, keep-alive and body-read
//! timeouts, a request-head size limit answered with a JSON 431, per-tenant
//! connection caps (429 `too_many_connections`) and a readiness phase before
//! a shutdown (`/ready` answers 503).
//!
//! # In a host's axum app
//!
//! [`router`] is the whole server: the routes and a fallback answering
//! every other path with the gateway's JSON 404. [`routes`] is the same
//! routes without that fallback, for a host that has paths of its own:
//!
//! - **`merge`** [`routes`] into the host's router: the gateway's paths sit
//!   beside the host's, and every other path gets the host's fallback (or
//!   axum's empty 404). Merging [`router`] instead panics if the host's
//!   router has a fallback too (axum: "Cannot merge two `Router`s that both
//!   have a fallback"), and without one the gateway's JSON 404 answers the
//!   host's unknown paths.
//! - **`nest`** [`router`] under a prefix (say `/llm`, and clients use
//!   `base_url = "http://host/llm/v1"`): the gateway's JSON 404 answers the
//!   unknown paths under the prefix, the host's fallback the rest. Nest
//!   [`routes`] instead to leave the unknown paths under the prefix to the
//!   host's fallback too.
//!
//! [`routes`] returns a `Router<S>` for any host state `S`, so it merges
//! into a router that has not had its `with_state` yet. The gateway's
//! routes carry their own request-id middleware (a fresh
//! [`RequestId::generate`](gateway_core::RequestId::generate) per request,
//! the client's `x-request-id` echoed); the host's layers added after the
//! merge or nest wrap them too (a host-wide request timeout would cut long
//! streams). [`RouterOptions::default`] has the config file's defaults
//! (bodies up to 1 MiB). Serve the host's app with [`serve`],
//! [`serve_with`] or [`serve_and_drain`] to keep the gateway's connection
//! handling: they take any tower service over axum's request type, so the
//! host may wrap its router in its own layers (`Router::layer`, or a
//! `tower::ServiceBuilder` whose result is no `Router`) and keep the
//! stalled-client kill and the edge timeouts. With `axum::serve` the
//! routes still work, but a client that stops reading a stream has only
//! its stream ended, not its connection closed, and none of the edge
//! limits of [`ServeOptions`] apply.
//!
//! ```
//! use std::sync::Arc;
//! use axum::Router;
//! use axum::routing::get;
//! use gateway_adapters::server::{RouterOptions, router, routes};
//! use gateway_adapters::sim::{SimBackend, SimConfig};
//! use gateway_policy::{Gateway, ModelSpec, Settings, Tenant};
//! use http::StatusCode;
//!
//! let sim = SimBackend::new(SimConfig::zero_delay()); // serves model `sim`
//! let gateway = Gateway::builder(Settings::default())
//!     .tenant_with_api_key(Tenant::new("team-a"), "sk-a")
//!     .model(ModelSpec::new("sim", 8192))
//!     .backend(Arc::new(sim), "sim", "sim", None)
//!     .build()
//!     .unwrap();
//!
//! // Beside the host's own paths, which keep the host's fallback.
//! let merged: Router = Router::new()
//!     .route("/", get(|| async { "the host's service" }))
//!     .merge(routes(gateway.clone(), RouterOptions::default()))
//!     .fallback(|| async { (StatusCode::NOT_FOUND, "not here") });
//!
//! // Under a prefix: /llm/v1/chat/completions, /llm/health, ...
//! let nested: Router = Router::new()
//!     .route("/", get(|| async { "the host's service" }))
//!     .nest("/llm", router(gateway, RouterOptions::default()))
//!     .fallback(|| async { (StatusCode::NOT_FOUND, "not here") });
//! # let _ = (merged, nested);
//! ```

mod body;
mod conn;
mod drain;
mod edge;
mod edge_io;
mod handlers;
mod respond;

use axum::Router;
use axum::routing::{get, post};
use gateway_policy::Gateway;

use crate::openai::pass_through::{BodyLimits, PassThrough};

pub use body::SseBody;
pub use conn::{ConnectionKill, serve, serve_with};
pub use drain::serve_and_drain;
pub use edge::{ServeOptions, TenantConnectionCaps};

/// Options of the router.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// SHA-256 of the admin key; `None` hides the admin routes (404).
    pub admin_key_sha256: Option<[u8; 32]>,
    /// SHA-256 of the key `GET /metrics` requires (`Authorization: Bearer`
    /// or `api-key`; else 401 `invalid_api_key`); `None` leaves it open.
    pub metrics_key_sha256: Option<[u8; 32]>,
    /// Largest request body; larger ones get 413 (0 counts as 1).
    pub max_body_bytes: usize,
    /// The caps on chat and completions bodies and which extra fields
    /// reach each model's engines (the default: default caps, every extra
    /// field passed).
    pub pass_through: PassThrough,
}

impl Default for RouterOptions {
    /// The server config file's defaults: no admin routes (no
    /// `admin_key`), `/metrics` open (no `metrics_key`), bodies up to
    /// `max_body_bytes` = 1 MiB, the default body caps and
    /// `unknown_fields = "reject"` with no per-model field lists (so every
    /// extra field passes: the lists come from the config's engines, see
    /// `bootstrap::pass_through`, feature `server`).
    ///
    /// ```
    /// use gateway_adapters::config::GatewayConfig;
    /// use gateway_adapters::server::RouterOptions;
    ///
    /// let options = RouterOptions::default();
    /// assert_eq!(options.max_body_bytes, 1 << 20);
    /// let file = GatewayConfig::embedded_default();
    /// assert_eq!(options.max_body_bytes, file.server.max_body_bytes.get());
    /// ```
    fn default() -> Self {
        RouterOptions {
            admin_key_sha256: None,
            metrics_key_sha256: None,
            max_body_bytes: crate::config::defaults::MAX_BODY_BYTES.get(),
            pass_through: PassThrough::new(
                BodyLimits::default(),
                crate::config::defaults::UNKNOWN_FIELDS,
            ),
        }
    }
}

/// The gateway's routes with a fallback that answers every other path with
/// the gateway's JSON 404: the whole server, to serve as it is or to
/// `nest` under a prefix of a host's router. To `merge` into a host's
/// router, use [`routes`] (see [the module docs](self)).
pub fn router(gateway: Gateway, options: RouterOptions) -> Router {
    build(gateway, options, true)
}

/// The gateway's routes without a fallback, to `merge` into a host's
/// router (with its own fallback or not) or to `nest` under a prefix
/// leaving the unknown paths to the host (see [the module docs](self)).
/// The router is generic over the host's state `S`; the routes use none
/// of it.
pub fn routes<S>(gateway: Gateway, options: RouterOptions) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    build(gateway, options, false)
}

/// The routes, with the JSON 404 fallback when `fallback`.
fn build<S>(gateway: Gateway, options: RouterOptions, fallback: bool) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let app = handlers::App {
        gateway,
        admin_key_sha256: options.admin_key_sha256,
        metrics_key_sha256: options.metrics_key_sha256,
        max_body_bytes: options.max_body_bytes.max(1),
        pass_through: std::sync::Arc::new(options.pass_through),
    };
    let routes = Router::new()
        .route("/v1/chat/completions", post(handlers::completion::<true>))
        .route("/v1/completions", post(handlers::completion::<false>))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::models))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .route("/admin/tenants/{id}/usage", get(handlers::tenant_usage));
    let routes = if fallback {
        routes.fallback(handlers::fallback)
    } else {
        routes
    };
    routes
        .method_not_allowed_fallback(handlers::fallback)
        .layer(axum::middleware::from_fn(handlers::request_id))
        .with_state(app)
}
