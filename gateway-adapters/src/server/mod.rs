//! The OpenAI-compatible HTTP server (feature `server`): a [`router`] a host
//! can mount into its own axum app, and [`serve`] with the connection
//! handling the gateway needs (no Nagle, a modest send buffer, graceful
//! shutdown, closing a stalled client's connection).
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

mod body;
mod conn;
mod edge;
mod edge_io;
mod handlers;
mod respond;

use axum::Router;
use axum::routing::{get, post};
use gateway_policy::Gateway;

use crate::openai::pass_through::PassThrough;

pub use conn::{ConnectionKill, serve, serve_with};
pub use edge::{ServeOptions, TenantConnectionCaps};

/// Options of the router.
#[derive(Debug, Clone, Default)]
pub struct RouterOptions {
    /// SHA-256 of the admin key; `None` hides the admin routes (404).
    pub admin_key_sha256: Option<[u8; 32]>,
    /// SHA-256 of the key `GET /metrics` requires (`Authorization: Bearer`
    /// or `api-key`; else 401 `invalid_api_key`); `None` leaves it open.
    pub metrics_key_sha256: Option<[u8; 32]>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// The caps on chat and completions bodies and which extra fields
    /// reach each model's engines (the default: default caps, every extra
    /// field passed).
    pub pass_through: PassThrough,
}

/// The gateway's routes, ready to serve or to nest in a host's router.
pub fn router(gateway: Gateway, options: RouterOptions) -> Router {
    let app = handlers::App {
        gateway,
        admin_key_sha256: options.admin_key_sha256,
        metrics_key_sha256: options.metrics_key_sha256,
        max_body_bytes: options.max_body_bytes.max(1),
        pass_through: std::sync::Arc::new(options.pass_through),
    };
    Router::new()
        .route("/v1/chat/completions", post(handlers::completion::<true>))
        .route("/v1/completions", post(handlers::completion::<false>))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::models))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .route("/admin/tenants/{id}/usage", get(handlers::tenant_usage))
        .fallback(handlers::fallback)
        .method_not_allowed_fallback(handlers::fallback)
        .layer(axum::middleware::from_fn(handlers::request_id))
        .with_state(app)
}
