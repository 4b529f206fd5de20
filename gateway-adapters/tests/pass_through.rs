//! The pass-through policy: the caps on a request body and its extra
//! fields (exact 400 bodies naming the field), the prompt fields refused
//! on every engine, and per engine which extra fields are forwarded,
//! refused or dropped.
#![cfg(feature = "engines")]
#![expect(clippy::unwrap_used, reason = "tests")]

use gateway_adapters::engines;
use gateway_adapters::openai::pass_through::{
    BodyLimits, ModelFields, PROMPT_FIELDS, PassThrough, UnknownFields,
};
use gateway_adapters::openai::{
    Endpoint, RequestError, parse_chat, parse_chat_with, parse_completion_with,
};
use gateway_core::EngineKind;

fn body_of(e: &RequestError) -> String {
    String::from_utf8(e.to_body().to_vec()).unwrap()
}

fn error(message: &str, param: &str) -> String {
    format!(
        r#"{{"error":{{"message":"{message}","type":"invalid_request_error","code":"invalid_request","param":"{param}"}}}}"#
    )
}

/// `{"model":"m","messages":[...]` then `rest` and `}`.
fn chat(rest: &str) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{rest}}}"#)
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn the_body_nesting_cap_names_the_top_level_field() {
    // The body is depth 1, so a field nested 63 deep reaches 64: accepted.
    let ok = chat(&format!(r#","top_k":{}"#, nested(31)));
    assert!(parse_chat(ok.as_bytes()).is_ok());
    let limits = BodyLimits {
        max_extra_depth: 128,
        ..BodyLimits::default()
    };
    let at_cap = chat(&format!(r#","x":{}"#, nested(63)));
    assert!(parse_chat_with(at_cap.as_bytes(), &limits).is_ok());
    let over = chat(&format!(r#","x":{}"#, nested(64)));
    let e = parse_chat_with(over.as_bytes(), &limits).unwrap_err();
    assert_eq!(
        body_of(&e),
        error("the request body nests deeper than 64 levels", "x")
    );
    // Deeper than serde_json's own limit (128): still this error, not
    // serde's "recursion limit exceeded".
    let deep = chat(&format!(r#","x\"y":{}"#, nested(500)));
    let e = parse_chat(deep.as_bytes()).unwrap_err();
    assert_eq!(
        body_of(&e),
        error("the request body nests deeper than 64 levels", "x\\\"y")
    );
    // Deep inside the messages: the messages are named.
    let messages = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hi","x":{}}}]}}"#,
        nested(70)
    );
    let e = parse_chat(messages.as_bytes()).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages"));
    // Brackets inside strings do not count.
    let strings = chat(&format!(r#","user":"{}""#, "[".repeat(200)));
    assert!(parse_chat(strings.as_bytes()).is_ok());
}

#[test]
fn an_extra_field_nested_past_its_cap_is_refused_by_name() {
    let ok = chat(&format!(r#","vllm_xargs":{}"#, nested(32)));
    assert!(parse_chat(ok.as_bytes()).is_ok());
    let over = chat(&format!(r#","vllm_xargs":{}"#, nested(33)));
    let e = parse_chat(over.as_bytes()).unwrap_err();
    assert_eq!(
        body_of(&e),
        error(
            "field 'vllm_xargs' nests deeper than 32 levels",
            "vllm_xargs"
        )
    );
    // The known fields are not extra: tools are bounded by the body's cap.
    let limits = BodyLimits {
        max_extra_depth: 1,
        ..BodyLimits::default()
    };
    let tools = chat(
        r#","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]"#,
    );
    assert!(parse_chat_with(tools.as_bytes(), &limits).is_ok());
}

#[test]
fn the_extra_fields_size_cap_names_the_largest_field() {
    let limits = BodyLimits {
        max_extra_bytes: 40,
        ..BodyLimits::default()
    };
    // `"user":"abc","top_k":1234567890123456789` is 40 bytes: accepted.
    let at_cap = chat(r#","user":"abc","top_k":1234567890123456789"#);
    assert!(parse_chat_with(at_cap.as_bytes(), &limits).is_ok());
    let over = chat(r#","user":"abcd","top_k":1234567890123456789"#);
    let e = parse_chat_with(over.as_bytes(), &limits).unwrap_err();
    assert_eq!(
        body_of(&e),
        error(
            "the extra fields take 41 bytes, more than the limit of 40",
            "top_k"
        )
    );
    // The default: 64 KiB.
    let big = chat(&format!(r#","user":"{}""#, "u".repeat(64 * 1024)));
    let e = parse_chat(big.as_bytes()).unwrap_err();
    assert_eq!(
        body_of(&e),
        error(
            "the extra fields take 65545 bytes, more than the limit of 65536",
            "user"
        )
    );
    // Known fields do not count towards it.
    let text = chat(&format!(r#","stop":"{}""#, "s".repeat(70 * 1024)));
    assert!(parse_chat(text.as_bytes()).is_ok());
}

#[test]
fn fields_that_change_the_prompt_are_refused_on_every_engine() {
    for field in PROMPT_FIELDS {
        let body = chat(&format!(r#","{field}":{{}}"#));
        let e = parse_chat(body.as_bytes()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(*field));
        let completion = format!(r#"{{"model":"m","prompt":"hi","{field}":true}}"#);
        let e = parse_completion_with(completion.as_bytes(), &BodyLimits::default()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(*field));
    }
    let e = parse_chat(chat(r#","chat_template":"{{ 'x' * 100000 }}""#).as_bytes()).unwrap_err();
    assert_eq!(
        body_of(&e),
        error(
            "field 'chat_template' changes the prompt the engine counts, which the gateway cannot count beforehand; it is not accepted",
            "chat_template"
        )
    );
    // Inside Dynamo's and NIM's nvext: the keys that replace the prompt.
    let e = parse_chat(chat(r#","nvext":{"greed_sampling":true,"token_data":[1,2]}"#).as_bytes())
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("nvext.token_data"));
    let ok = chat(r#","nvext":{"greed_sampling":true}"#);
    assert!(parse_chat(ok.as_bytes()).is_ok());
    // null is the field's absence.
    let null = chat(r#","documents":null"#);
    assert!(parse_chat(null.as_bytes()).is_ok());
}

fn policy(unknown: UnknownFields, kinds: &[EngineKind]) -> PassThrough {
    PassThrough::new(BodyLimits::default(), unknown).with_model(
        "m",
        ModelFields::new(kinds.iter().map(|k| engines::fields(*k))),
    )
}

fn applied(
    policy: &PassThrough,
    endpoint: Endpoint,
    body: &str,
) -> Result<(Option<String>, Vec<String>), RequestError> {
    let mut parsed = match endpoint {
        Endpoint::Chat => parse_chat(body.as_bytes()),
        Endpoint::Completion => parse_completion_with(body.as_bytes(), &policy.limits),
    }?;
    let dropped = policy.apply(endpoint, &mut parsed)?;
    Ok((parsed.extra, dropped))
}

#[test]
fn each_engine_forwards_openai_fields_and_its_own_extras_and_refuses_the_rest() {
    let reject = |kinds: &[EngineKind]| policy(UnknownFields::Reject, kinds);
    let body = chat(
        r#","top_k":20,"tool_choice":"auto","logprobs":true,"response_format":{"type":"json_object"}"#,
    );
    // vLLM: OpenAI's fields and its extras pass, as written, in order.
    let (extra, dropped) = applied(&reject(&[EngineKind::Vllm]), Endpoint::Chat, &body).unwrap();
    assert_eq!(
        extra.as_deref(),
        Some(
            r#"{"top_k":20,"tool_choice":"auto","logprobs":true,"response_format":{"type":"json_object"}}"#
        )
    );
    assert!(dropped.is_empty());
    // An unknown field is a 400 naming it.
    let e = applied(
        &reject(&[EngineKind::Vllm]),
        Endpoint::Chat,
        &chat(r#","top_k":1,"vllm_secret_knob":1"#),
    )
    .unwrap_err();
    assert_eq!(
        body_of(&e),
        error(
            "unknown field 'vllm_secret_knob': the engines serving model m do not take it",
            "vllm_secret_knob"
        )
    );
    // The generic OpenAI engine takes OpenAI's fields only.
    let e = applied(&reject(&[EngineKind::OpenAi]), Endpoint::Chat, &body).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("top_k"));
    // Dynamo takes nvext; vLLM does not.
    let nvext = chat(r#","nvext":{"greed_sampling":true}"#);
    assert!(applied(&reject(&[EngineKind::Dynamo]), Endpoint::Chat, &nvext).is_ok());
    assert!(applied(&reject(&[EngineKind::Nim]), Endpoint::Chat, &nvext).is_ok());
    let e = applied(&reject(&[EngineKind::Vllm]), Endpoint::Chat, &nvext).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("nvext"));
    // ai-dynamo 1.6.1 answers `safety_identifier` with a 400: the gateway
    // names it instead (vLLM takes it); its other OpenAI fields pass.
    let safety = chat(r#","safety_identifier":"s""#);
    let e = applied(&reject(&[EngineKind::Dynamo]), Endpoint::Chat, &safety).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("safety_identifier"));
    assert!(applied(&reject(&[EngineKind::Vllm]), Endpoint::Chat, &safety).is_ok());
    let openai = chat(
        r#","metadata":{"a":"b"},"store":false,"service_tier":"auto","prompt_cache_key":"k","reasoning_effort":"low","parallel_tool_calls":true,"user":"u""#,
    );
    assert!(applied(&reject(&[EngineKind::Dynamo]), Endpoint::Chat, &openai).is_ok());
    // trtllm-serve: its own list, without parallel_tool_calls.
    let parallel = chat(r#","top_k":2,"parallel_tool_calls":false"#);
    let e = applied(&reject(&[EngineKind::TrtLlm]), Endpoint::Chat, &parallel).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("parallel_tool_calls"));
    // A model served by vLLM and trtllm takes what both take.
    let e = applied(
        &reject(&[EngineKind::Vllm, EngineKind::TrtLlm]),
        Endpoint::Chat,
        &parallel,
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("parallel_tool_calls"));
    assert!(
        applied(
            &reject(&[EngineKind::Vllm, EngineKind::TrtLlm]),
            Endpoint::Chat,
            &chat(r#","top_k":2,"min_p":0.1,"user":"u""#)
        )
        .is_ok()
    );
    // Triton sends no extra field at all; SGLang's native completions
    // route only the logprob asks.
    let completion = r#"{"model":"m","prompt":"hi","logprobs":2,"user":"u"}"#;
    let e = applied(
        &reject(&[EngineKind::Triton]),
        Endpoint::Completion,
        completion,
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("logprobs"));
    let e = applied(
        &reject(&[EngineKind::Sglang]),
        Endpoint::Completion,
        completion,
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("user"));
    // Chat-only OpenAI fields are not completions fields.
    let e = applied(
        &reject(&[EngineKind::Vllm]),
        Endpoint::Completion,
        r#"{"model":"m","prompt":"hi","tool_choice":"auto"}"#,
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tool_choice"));
    // A model the policy does not know: left alone (the gateway answers 404).
    let other = r#"{"model":"other","messages":[{"role":"user","content":"hi"}],"zzz":1}"#;
    let (extra, _) = applied(&reject(&[EngineKind::Vllm]), Endpoint::Chat, other).unwrap();
    assert_eq!(extra.as_deref(), Some(r#"{"zzz":1}"#));
}

#[test]
fn drop_mode_removes_unknown_fields_and_keeps_the_rest_byte_for_byte() {
    let drop = policy(UnknownFields::Drop, &[EngineKind::TrtLlm]);
    let body = chat(r#","a":{"x" : [1, "é"]},"top_k" : 20,"parallel_tool_calls":false,"user":"u""#);
    let (extra, dropped) = applied(&drop, Endpoint::Chat, &body).unwrap();
    assert_eq!(extra.as_deref(), Some(r#"{"top_k":20,"user":"u"}"#));
    assert_eq!(dropped, ["a", "parallel_tool_calls"]);
    // Everything dropped: no extra fields at all.
    let (extra, dropped) = applied(&drop, Endpoint::Chat, &chat(r#","zzz":1"#)).unwrap();
    assert_eq!((extra, dropped.len()), (None, 1));
    // A model's own setting wins over the server's.
    let mixed = PassThrough::new(BodyLimits::default(), UnknownFields::Drop).with_model(
        "m",
        ModelFields::new([engines::fields(EngineKind::Vllm)])
            .with_unknown(Some(UnknownFields::Reject)),
    );
    let e = applied(&mixed, Endpoint::Chat, &chat(r#","zzz":1"#)).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("zzz"));
    // Prompt fields and caps are refused in drop mode too.
    let e = applied(&drop, Endpoint::Chat, &chat(r#","documents":[]"#)).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("documents"));
}
