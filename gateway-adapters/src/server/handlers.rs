//! The route handlers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use gateway_core::{EmbedRequest, LatencyClass, RequestId, TenantId};
use gateway_policy::{ClientRequest, ErrorCode, Gateway, Tenant};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::body::{SseBody, assemble};
use super::conn::ConnectionKill;
use super::respond::{error, gateway_error, json, not_found, request_error};
use crate::openai::pass_through::PassThrough;
use crate::openai::{
    Assembler, ChunkEncoder, Endpoint, embeddings_body, models_body, parse_chat_with,
    parse_completion_with, parse_embeddings, unix_now,
};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) gateway: Gateway,
    pub(crate) admin_key_sha256: Option<[u8; 32]>,
    pub(crate) metrics_key_sha256: Option<[u8; 32]>,
    pub(crate) max_body_bytes: usize,
    pub(crate) pass_through: Arc<PassThrough>,
}

/// The request's ids: the gateway's own (always fresh, the one engines
/// see) and the client's `x-request-id` if usable (correlation only).
#[derive(Debug, Clone)]
pub(crate) struct RequestIds {
    /// [`RequestId::generate`]d for this request.
    pub(crate) gateway: RequestId,
    /// The client's `x-request-id`, when printable ASCII of 1..=128 bytes.
    pub(crate) client: Option<Arc<str>>,
}

impl RequestIds {
    /// What the response's `x-request-id` says: the client's id, else the
    /// gateway's.
    fn echoed(&self) -> &str {
        self.client.as_deref().unwrap_or(self.gateway.as_str())
    }
}

const REQUEST_ID: &str = "x-request-id";

fn usable_id(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(s)
}

/// Gives every request a fresh gateway id, keeps the client's
/// `x-request-id` beside it, and echoes the client's id (or the gateway's
/// when there is none) on every response.
pub(crate) async fn request_id(mut request: Request, next: Next) -> Response {
    let ids = RequestIds {
        gateway: RequestId::generate(),
        client: request
            .headers()
            .get(REQUEST_ID)
            .and_then(usable_id)
            .map(Arc::from),
    };
    request.extensions_mut().insert(ids.clone());
    let mut response = next.run(request).await;
    if let Ok(v) = HeaderValue::from_str(ids.echoed()) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The key from `Authorization: Bearer <key>` or `api-key: <key>`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(key) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(key.trim());
        }
    }
    headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The class a request runs in: its `x-priority` (`batch` or
/// `interactive`, any case; other values are ignored) as the tenant allows
/// it ([`Tenant::class_for`]): lowering is always allowed, raising above
/// the tenant's `priority` only with `allow_priority_raise`; a refused raise
/// runs in the tenant's class (logged at debug), it is not an error.
fn latency_class(headers: &HeaderMap, tenant: &Tenant) -> LatencyClass {
    let asked = match headers.get("x-priority").and_then(|v| v.to_str().ok()) {
        Some(v) if v.eq_ignore_ascii_case("batch") => Some(LatencyClass::Batch),
        Some(v) if v.eq_ignore_ascii_case("interactive") => Some(LatencyClass::Interactive),
        _ => None,
    };
    let class = tenant.class_for(asked);
    if asked.is_some_and(|asked| asked != class) {
        tracing::debug!(
            tenant = tenant.id.as_str(),
            asked = asked.map_or("", LatencyClass::as_str),
            class = class.as_str(),
            "x-priority above the tenant's class ignored"
        );
    }
    class
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ErrorCode> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ErrorCode::RequestTooLarge);
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ErrorCode::RequestTooLarge),
        Err(_) => Err(ErrorCode::InvalidRequest),
    }
}

/// `POST /v1/chat/completions` (`CHAT`) or `POST /v1/completions`.
pub(crate) async fn completion<const CHAT: bool>(
    State(app): State<App>,
    axum::Extension(ids): axum::Extension<RequestIds>,
    kill: Option<axum::Extension<ConnectionKill>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let endpoint = if CHAT {
        Endpoint::Chat
    } else {
        Endpoint::Completion
    };
    generate(app, endpoint, ids, kill.map(|k| k.0), &headers, body).await
}

/// The tenant of the request's key and the request's body (within
/// `max_body_bytes`), or the error response (counted).
async fn authenticated_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Arc<Tenant>, Bytes), Response> {
    let gateway = &app.gateway;
    let tenant = gateway
        .authenticate(presented_key(headers))
        .map_err(|e| gateway_error(&e))?;
    match read_body(body, headers, app.max_body_bytes).await {
        Ok(bytes) => Ok((tenant, bytes)),
        Err(code) => {
            gateway.record_rejection(Some(&tenant), None, code);
            let message = match code {
                ErrorCode::RequestTooLarge => {
                    format!("request body is larger than {} bytes", app.max_body_bytes)
                }
                _ => "could not read the request body".to_owned(),
            };
            Err(error(code, &message))
        }
    }
}

/// `POST /v1/embeddings`: the body validated (a 400 names the field), then
/// [`Gateway::embed`]; OpenAI's list of embeddings with its usage, or the
/// contract's error.
pub(crate) async fn embeddings(
    State(app): State<App>,
    axum::Extension(ids): axum::Extension<RequestIds>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let gateway = &app.gateway;
    let (tenant, bytes) = match authenticated_body(&app, &headers, body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let parsed = match parse_embeddings(&bytes) {
        Ok(p) => p,
        Err(e) => {
            gateway.record_rejection(Some(&tenant), None, ErrorCode::InvalidRequest);
            return request_error(&e);
        }
    };
    let mut request = EmbedRequest::new(parsed.model, parsed.inputs);
    request.id = ids.gateway;
    request.client_id = ids.client;
    request.encoding_format = parsed.encoding_format;
    request.dimensions = parsed.dimensions;
    request.latency_class = latency_class(&headers, &tenant);
    request.extra = parsed.extra.map(Arc::from);
    // Dropped with the handler (the client left): the request is canceled.
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let result = gateway.embed(&tenant, request, cancel).await;
    guard.disarm();
    match result {
        Ok(answer) => json(
            StatusCode::OK,
            embeddings_body(&answer.data, &answer.model, answer.usage.prompt()),
        ),
        Err(e) => gateway_error(&e),
    }
}

async fn generate(
    app: App,
    endpoint: Endpoint,
    ids: RequestIds,
    kill: Option<ConnectionKill>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let gateway = &app.gateway;
    let (tenant, bytes) = match authenticated_body(&app, headers, body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let policy = &app.pass_through;
    let parsed = match endpoint {
        Endpoint::Chat => parse_chat_with(&bytes, &policy.limits),
        Endpoint::Completion => parse_completion_with(&bytes, &policy.limits),
    };
    let parsed = parsed.and_then(|mut parsed| {
        let dropped = policy.apply(endpoint, &mut parsed)?;
        if !dropped.is_empty() {
            tracing::debug!(
                model = parsed.model.as_str(),
                fields = ?dropped,
                "extra fields the model's engines do not take were dropped"
            );
        }
        Ok(parsed)
    });
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            gateway.record_rejection(Some(&tenant), None, ErrorCode::InvalidRequest);
            return request_error(&e);
        }
    };
    let (stream_mode, include_usage) = (parsed.stream, parsed.include_usage);
    // The response's `id` (`chatcmpl-gw-...`) is the gateway's id: unique,
    // and the same in every chunk of a stream.
    let response_id = ids.gateway.clone();
    let id = response_id.as_str();
    // What it asks for beyond text, as it will be sent (after the policy).
    let needs = crate::openai::needs(&parsed);
    let request = ClientRequest {
        id: ids.gateway,
        client_id: ids.client,
        model: parsed.model,
        prompt: parsed.prompt,
        sampling: parsed.sampling,
        max_tokens: parsed.max_tokens,
        latency_class: latency_class(headers, &tenant),
        extra: parsed.extra.map(Arc::from),
        tools: parsed.tools.map(Arc::from),
        needs,
    };
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let stream = match gateway.generate(&tenant, request, cancel.clone()).await {
        Ok(s) => s,
        Err(e) => {
            guard.disarm();
            return gateway_error(&e);
        }
    };
    // The model that serves: the one asked for, or a fallback of it.
    let model = stream.model().to_owned();
    let created = unix_now();
    if !stream_mode {
        let assembler = Assembler::new(endpoint, id, created, &model);
        return match assemble(stream, assembler, guard).await {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => gateway_error(&e),
        };
    }
    // The stream's first events are in hand (the pump, just spawned,
    // relays them at its first poll): let it run before the response goes
    // back, so that hyper finds the first chunk ready when it writes the
    // head and sends both in one write, rather than the head alone and
    // the chunk after another wake-up of this connection.
    tokio::task::yield_now().await;
    let done = CancellationToken::new();
    if let Some(ConnectionKill(kill)) = kill {
        // A client that stopped reading is dropped: the pump cancels the
        // request as `ClientGone`; close the connection too.
        let done = done.clone();
        tokio::spawn(async move {
            tokio::select! {
                reason = cancel.canceled() => {
                    if reason == gateway_core::CancelReason::ClientGone {
                        kill.cancel();
                    }
                }
                () = done.cancelled() => {}
            }
        });
    }
    let encoder = ChunkEncoder::new(endpoint, id, created, &model, include_usage);
    let body = SseBody::with_done(stream, encoder, guard, Some(done));
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

pub(crate) async fn models(State(app): State<App>, headers: HeaderMap) -> Response {
    let tenant = match app.gateway.authenticate(presented_key(&headers)) {
        Ok(t) => t,
        Err(e) => return gateway_error(&e),
    };
    let names: Vec<Arc<gateway_policy::ModelSpec>> = app.gateway.models_for(&tenant);
    json(
        StatusCode::OK,
        models_body(names.iter().map(|m| m.name.as_str()), unix_now(), "gateway"),
    )
}

pub(crate) async fn health() -> Response {
    json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
}

pub(crate) async fn ready(State(app): State<App>) -> Response {
    match app.gateway.readiness() {
        Ok(()) => json(
            StatusCode::OK,
            Bytes::from_static(b"{\"status\":\"ready\"}"),
        ),
        Err(models) => {
            let body = serde_json::json!({
                "status": "not_ready",
                "reason": format!("no healthy backend for model(s): {}", models.join(", ")),
                "models": models,
            });
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from(body.to_string()),
            )
        }
    }
}

/// `GET /metrics`: open, or with `metrics_key_sha256` set only for a
/// request presenting that key (`Authorization: Bearer` or `api-key`;
/// digests compared in constant time), else 401 `invalid_api_key`.
pub(crate) async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(stored) = app.metrics_key_sha256 {
        let presented = presented_key(&headers).map(gateway_policy::key_hash);
        if !presented.is_some_and(|p| bool::from(p.ct_eq(&stored))) {
            let mut response = error(ErrorCode::InvalidApiKey, "metrics key required");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    let mut response = Response::new(Body::from(app.gateway.render_metrics()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn is_admin(app: &App, headers: &HeaderMap) -> Option<bool> {
    let stored = app.admin_key_sha256?;
    let presented = presented_key(headers).map(gateway_policy::key_hash);
    Some(presented.is_some_and(|p| bool::from(p.ct_eq(&stored))))
}

pub(crate) async fn tenant_usage(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match is_admin(&app, &headers) {
        None => return not_found(),
        Some(false) => return error(ErrorCode::InvalidApiKey, "admin key required"),
        Some(true) => {}
    }
    let Some(tenant) = app.gateway.tenant(&id) else {
        return json(
            StatusCode::NOT_FOUND,
            crate::openai::error_body(
                StatusCode::NOT_FOUND,
                "tenant_not_found",
                "no such tenant",
                None,
            ),
        );
    };
    json(StatusCode::OK, usage_body(&app.gateway, &tenant))
}

fn usage_body(gateway: &Gateway, tenant: &Tenant) -> Bytes {
    let id: &TenantId = &tenant.id;
    let account = gateway.account(id).unwrap_or_default();
    let u = account.usage;
    let body = serde_json::json!({
        "tenant": id.as_str(),
        "budget_usd": tenant.budget.map(|b| b.usd()),
        "spent_usd": account.spent.usd(),
        "reserved_usd": account.reserved.usd(),
        "spent_picousd": account.spent.picos(),
        "reserved_picousd": account.reserved.picos(),
        "requests": account.requests,
        "prompt_tokens": u.prompt(),
        "cached_tokens": u.cached(),
        "completion_tokens": u.completion(),
        "canceled_tokens": u.canceled(),
        "accepted_tokens": u.accepted(),
        "drafted_tokens": u.drafted(),
        "rejected_tokens": u.rejected(),
    });
    Bytes::from(body.to_string())
}

pub(crate) async fn fallback() -> Response {
    not_found()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_lowers_the_class_and_raises_it_only_when_allowed() {
        use LatencyClass::{Batch, Interactive};
        let with = |value: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert("x-priority", http::HeaderValue::from_static(v));
            }
            headers
        };
        let tenant = |priority, allow_priority_raise| Tenant {
            priority,
            allow_priority_raise,
            ..Tenant::new("t")
        };
        // (tenant's class, raise allowed, header) -> class run in.
        let cases = [
            (Interactive, false, None, Interactive),
            (Interactive, false, Some("whatever"), Interactive),
            (Interactive, false, Some("Batch"), Batch),
            (Interactive, false, Some("INTERACTIVE"), Interactive),
            (Batch, false, None, Batch),
            (Batch, false, Some("whatever"), Batch),
            (Batch, false, Some("batch"), Batch),
            (Batch, false, Some("interactive"), Batch),
            (Batch, true, Some("interactive"), Interactive),
            (Batch, true, None, Batch),
        ];
        for (priority, allow, header, runs) in cases {
            assert_eq!(
                latency_class(&with(header), &tenant(priority, allow)),
                runs,
                "{priority:?} allow={allow} {header:?}"
            );
        }
    }
}
