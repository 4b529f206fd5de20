//! Embeddings through an OpenAI-compatible engine: `POST /v1/embeddings`
//! with the served model name, the inputs, `encoding_format`,
//! `dimensions` and the request's extra fields, answered in one JSON body.
//!
//! - Which engines: vLLM (a pooling model: `--runner pooling`), any
//!   OpenAI-compatible server, NIM, the Dynamo frontend (ENGINES.md §7.1)
//!   and SGLang's OpenAI routes (`--is-embedding`). trtllm-serve has no
//!   embeddings route (`serve/openai_server.py` registers none): its
//!   adapter answers [`Unsupported`](FailureKind::Unsupported) at once.
//! - An engine without the route (vLLM serving a generative model answers
//!   FastAPI's `404 {"detail":"Not Found"}`), or one that says its model
//!   does not embed, is `Unsupported` too: the gateway tries the model's
//!   other backends, and answers 400 if none embeds.
//! - Other refusals are typed like a generation's ([`status_error_with`],
//!   with the engine's message rules); an answer that is not OpenAI's
//!   shape, or larger than [`MAX_EMBEDDINGS_BODY`], is a protocol
//!   violation.
//! - Canceling the handle, `abort(id)`, passing the deadline or dropping
//!   the future closes the connection (vLLM then drops the request).

use bytes::Bytes;
use gateway_core::http::{HeaderValue, Method, Request, header};
use gateway_core::{
    BackendError, CancelHandle, CancelReason, EmbedAttempt, Embeddings, EngineKind, FailureKind,
    FailurePhase,
};
use http_body_util::Full;

use super::super::upstream::{
    SIDE_CALL_TIMEOUT, deadline_passed, parse_uri, protocol, read_limited, retry_after,
    total_timeout, transport_error,
};
use super::{Inner, MAX_ERROR_BODY, status_error_with};
use crate::openai::{UpstreamBodyError, parse_upstream_embeddings, upstream_embeddings_body};

/// Most bytes of an embeddings answer read (2048 inputs of 1536 numbers
/// in JSON are about 64 MB).
pub(crate) const MAX_EMBEDDINGS_BODY: usize = 256 * 1024 * 1024;

/// The embeddings route of `engine`, if it has one.
pub(crate) const fn route(engine: EngineKind) -> Option<&'static str> {
    match engine {
        EngineKind::Vllm
        | EngineKind::OpenAi
        | EngineKind::Nim
        | EngineKind::Dynamo
        | EngineKind::Sglang => Some("/v1/embeddings"),
        _ => None,
    }
}

/// Whether a refusal means "this engine (or its model) does not embed".
fn is_unsupported(status: u16, body: Option<&[u8]>) -> bool {
    let text = body
        .map(|b| String::from_utf8_lossy(b).to_ascii_lowercase())
        .unwrap_or_default();
    // FastAPI's answer for a route that is not there.
    (status == 404 && text.contains("\"detail\""))
        || text.contains("does not support embedding")
        || text.contains("does not support the embeddings api")
}

pub(super) async fn embed(
    inner: &Inner,
    request: EmbedAttempt,
    cancel: CancelHandle,
) -> Result<Embeddings, BackendError> {
    let Some(path) = route(inner.info.engine) else {
        return Err(BackendError::unsupported("embeddings"));
    };
    inner.ensure_scraper();
    let live = inner.shared.live.register(&request.request.id, &cancel)?;
    let model = if request.served_model.is_empty() {
        inner.served_model.as_str()
    } else {
        request.served_model.as_str()
    };
    let body = upstream_embeddings_body(&request.request, model).map_err(|e| {
        let message = match e {
            UpstreamBodyError::MixedInputs => {
                "texts and token arrays cannot be mixed in one request".to_owned()
            }
            UpstreamBodyError::ChatInput => "chat messages cannot be embedded".to_owned(),
            UpstreamBodyError::Extra(e) => e.to_string(),
        };
        BackendError::new(FailureKind::InvalidRequest, message)
    })?;
    let uri = parse_uri(&format!("{}{path}", inner.base)).map_err(|e| {
        BackendError::new(FailureKind::Internal, "bad embeddings URL").with_source(e)
    })?;
    let id = request.request.id.clone();
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json");
    if let Ok(value) = HeaderValue::try_from(id.as_str()) {
        builder = builder.header("x-request-id", value);
    }
    if let Some(auth) = &inner.auth {
        builder = builder.header(header::AUTHORIZATION, auth.clone());
    }
    let http_request = builder.body(Full::new(Bytes::from(body))).map_err(|e| {
        BackendError::new(
            FailureKind::Internal,
            "could not build the upstream request",
        )
        .with_source(e)
    })?;
    let attempt = live.attempt();
    let hard_abort = attempt.abort_token();
    let before = FailurePhase::BeforeFirstToken;
    let call = async {
        let response = inner
            .client
            .request(http_request)
            .await
            .map_err(|e| transport_error(e, before))?;
        let status = response.status();
        if !status.is_success() {
            let retry = retry_after(response.headers());
            let read = read_limited(response.into_body(), MAX_ERROR_BODY);
            let body = tokio::time::timeout(SIDE_CALL_TIMEOUT, read)
                .await
                .ok()
                .flatten();
            if is_unsupported(status.as_u16(), body.as_deref()) {
                return Err(BackendError::new(
                    FailureKind::Unsupported,
                    format!("the engine does not serve embeddings (it answered {status})"),
                )
                .with_upstream_status(status.as_u16()));
            }
            let error =
                status_error_with(status, body.as_deref(), retry, inner.quirks.message_rules);
            if error.kind() == FailureKind::Overloaded {
                inner.shared.pressure.mark_overloaded(error.retry_after());
            }
            return Err(error);
        }
        let body = read_limited(response.into_body(), MAX_EMBEDDINGS_BODY)
            .await
            .ok_or_else(|| {
                protocol(
                    "the engine's embeddings answer was cut or too large",
                    before,
                )
            })?;
        parse_upstream_embeddings(&body).map_err(|why| protocol(why, before))
    };
    tokio::select! {
        biased;
        reason = cancel.canceled() => Err(BackendError::canceled(reason)),
        () = hard_abort.cancelled() => Err(BackendError::canceled(CancelReason::Aborted)),
        () = deadline_passed(request.deadline) => Err(total_timeout(before)),
        answer = call => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_mean_no_embeddings() {
        assert!(is_unsupported(404, Some(br#"{"detail":"Not Found"}"#)));
        assert!(!is_unsupported(
            404,
            Some(br#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#)
        ));
        assert!(is_unsupported(
            400,
            Some(
                br#"{"error":{"message":"The model does not support Embeddings API","code":400}}"#
            )
        ));
        assert!(!is_unsupported(400, Some(br#"{"error":{"message":"Model 'tiny-llama' does not support Matryoshka embeddings; dimensions must be unset (received dimensions=8).","code":400}}"#)));
        assert!(!is_unsupported(404, None));
        assert_eq!(route(EngineKind::TrtLlm), None);
        assert_eq!(route(EngineKind::Vllm), Some("/v1/embeddings"));
    }
}
