//! Tracing: one `gateway.request` span per request, with the OpenTelemetry
//! gen_ai semantic-convention attributes. Names are constants here, in one
//! place. Prompts and completions are never recorded.

use gateway_core::Prompt;
use tracing::Span;
use tracing::field::Empty;

/// The span's name.
pub const REQUEST_SPAN: &str = "gateway.request";
/// `gen_ai.operation.name` for chat prompts.
pub const OPERATION_CHAT: &str = "chat";
/// `gen_ai.operation.name` for text or token prompts.
pub const OPERATION_TEXT_COMPLETION: &str = "text_completion";
/// `gen_ai.operation.name` of an embeddings request.
pub const OPERATION_EMBEDDINGS: &str = "embeddings";

/// The operation name of a prompt.
pub fn operation(prompt: &Prompt) -> &'static str {
    match prompt {
        Prompt::Chat(_) => OPERATION_CHAT,
        Prompt::Text(_) | Prompt::Tokens(_) => OPERATION_TEXT_COMPLETION,
    }
}

/// A new request span. `request_id` is the gateway's own id (the one
/// engines see); `client_request_id` (empty unless recorded) is the
/// client's `x-request-id`, kept for correlation only. Fields known later
/// (backend, usage, finish reason,
/// outcome, error type, and `fallback_from`: the requested model, set when
/// the request moved to one of its fallbacks; `continuations` and
/// `continuation_prefill_tokens`: how often its stream went on on another
/// backend after a failure, and the prompt tokens those prefilled again)
/// start empty and are recorded when known.
pub fn request_span(
    request_id: &str,
    tenant: &str,
    model: &str,
    operation: &'static str,
    max_tokens: Option<u32>,
) -> Span {
    tracing::info_span!(
        "gateway.request",
        request_id = request_id,
        client_request_id = Empty,
        tenant = tenant,
        gen_ai.operation.name = operation,
        gen_ai.request.model = model,
        gen_ai.request.max_tokens = max_tokens,
        gen_ai.response.model = Empty,
        gen_ai.provider.name = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        backend = Empty,
        fallback_from = Empty,
        continuations = Empty,
        continuation_prefill_tokens = Empty,
        outcome = Empty,
        error.type = Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        assert_eq!(operation(&Prompt::Text(String::new())), "text_completion");
        assert_eq!(operation(&Prompt::Chat(Vec::new())), "chat");
        assert_eq!(REQUEST_SPAN, "gateway.request");
    }
}
