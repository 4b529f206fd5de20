//! The serde wire types of `gateway_adapters::openai::types`: lenient
//! decoding of engines' responses (unknown and `null` keys), the usage
//! mapping, upstream request bodies, and reading every error shape of
//! ENGINES.md §1.4 and §10.

#[cfg(test)]
mod openai_types {
    use gateway_adapters::openai::types::{
        ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Completion, CompletionRequest,
        CompletionTokensDetails, CompletionUsage, ErrorCode, ErrorDetail, MessageContent,
        ModelList, PromptInput, PromptTokensDetails, parse_finish_reason,
    };
    use gateway_adapters::openai::{merge_extra, parse_upstream_error};
    use gateway_core::{ChatMessage, FinishReason, GenerateRequest, Prompt, Usage};

    #[test]
    fn null_and_unknown_keys_are_tolerated() {
        let chunk: ChatCompletionChunk = serde_json::from_str(
            r#"{"id":null,"object":null,"created":null,"model":null,"choices":null,"usage":null,
                "system_fingerprint":"fp","prompt_token_ids":null}"#,
        )
        .unwrap();
        assert_eq!(chunk, ChatCompletionChunk::default());

        let chunk: ChatCompletionChunk = serde_json::from_str(
            r#"{"choices":[{"index":null,"delta":null,"finish_reason":null,"logprobs":null,"stop_reason":151645}]}"#,
        )
        .unwrap();
        assert_eq!(chunk.choices.len(), 1);
        assert_eq!(chunk.choices[0].delta.content, None);

        // TV-11 trtllm-serve content chunk: extensions ignored.
        let chunk: ChatCompletionChunk = serde_json::from_str(
            r#"{"id":"chatcmpl-03","object":"chat.completion.chunk","created":1,"model":"m",
                "choices":[{"index":0,"delta":{"content":"!","reasoning_content":""},"finish_reason":"stop",
                "avg_decoded_tokens_per_iter":1.0}],
                "usage":{"prompt_tokens":9,"total_tokens":11,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        )
        .unwrap();
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("!"));
        assert_eq!(chunk.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(chunk.usage.unwrap().to_usage(), Usage::new(9, 2));

        // vLLM tool-call delta: content null.
        let chunk: ChatCompletionChunk = serde_json::from_str(
            r#"{"choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"index":0}]}}]}"#,
        )
        .unwrap();
        assert_eq!(chunk.choices[0].delta.content, None);

        let completion: Completion = serde_json::from_str(
            r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m",
                "choices":[{"index":0,"text":null,"logprobs":null,"finish_reason":"length","stop_reason":null,
                "prompt_logprobs":null}],"usage":{"prompt_tokens":3,"completion_tokens":null,"total_tokens":3,
                "prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":0}}}"#,
        )
        .unwrap();
        assert_eq!(completion.choices[0].text, "");
        let usage = completion.usage.unwrap();
        assert_eq!(usage.completion_tokens, 0);
        assert_eq!(usage.prompt_tokens_details, None);
        assert_eq!(
            usage.completion_tokens_details.unwrap().reasoning_tokens,
            Some(0)
        );

        let response: ChatCompletion = serde_json::from_str(
            r#"{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"m",
                "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","reasoning_content":null,
                "tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],
                "usage":{"prompt_tokens":4,"total_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":null}},
                "prompt_logprobs":null,"kv_transfer_params":null}"#,
        )
        .unwrap();
        assert_eq!(response.choices[0].message.content.as_deref(), Some("Hi"));
        assert_eq!(
            response.usage.unwrap().prompt_tokens_details,
            Some(PromptTokensDetails { cached_tokens: 0 })
        );

        let models: ModelList = serde_json::from_str(
            r#"{"object":"list","data":[{"id":"m","object":"model","created":1,"owned_by":"vllm","root":"m","parent":null,"max_model_len":2048,"permission":[]}]}"#,
        )
        .unwrap();
        assert_eq!(models.data[0].owned_by, "vllm");
    }

    #[test]
    fn usage_mapping() {
        let plain = CompletionUsage::from(&Usage::new(10, 5));
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0}}"#
        );
        let usage = Usage::new(10, 5)
            .with_cached(6)
            .and_then(|u| u.with_speculative(8, 5))
            .unwrap();
        let wire = CompletionUsage::from(&usage);
        assert_eq!(
            wire.completion_tokens_details,
            Some(CompletionTokensDetails {
                reasoning_tokens: None,
                accepted_prediction_tokens: Some(5),
                rejected_prediction_tokens: Some(3),
            })
        );
        assert_eq!(wire.to_usage(), usage);
        // Engine reports that break the invariants are clamped.
        let odd = CompletionUsage {
            prompt_tokens: 3,
            completion_tokens: 1,
            total_tokens: 4,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 9 }),
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: None,
                accepted_prediction_tokens: Some(4),
                rejected_prediction_tokens: Some(1),
            }),
        };
        let u = odd.to_usage();
        assert_eq!((u.cached(), u.drafted(), u.accepted()), (3, 5, 1));
    }

    fn generate(prompt: Prompt) -> GenerateRequest {
        let mut request = GenerateRequest::new("public", prompt, 64);
        request.sampling.temperature = Some(0.5);
        request.sampling.stop = vec!["END".into()];
        request
    }

    #[test]
    fn upstream_request_bodies() {
        let request = generate(Prompt::Chat(vec![
            ChatMessage::system("be brief"),
            ChatMessage::user("hi"),
        ]));
        let body = ChatCompletionRequest::from_generate(&request, "served", true).unwrap();
        let mut bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"model":"served","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"max_tokens":64,"temperature":0.5,"stop":["END"],"stream":true,"stream_options":{"include_usage":true}}"#
        );
        merge_extra(
            &mut bytes,
            r#"{"top_k":20,"model":"evil","repetition_penalty":1.10}"#,
        )
        .unwrap();
        assert!(std::str::from_utf8(&bytes).unwrap().ends_with(
            r#""stream_options":{"include_usage":true},"top_k":20,"repetition_penalty":1.10}"#
        ));
        assert!(
            ChatCompletionRequest::from_generate(&generate(Prompt::Text("x".into())), "s", false)
                .is_none()
        );

        let body = CompletionRequest::from_generate(
            &generate(Prompt::Tokens(vec![1, 2])),
            "served",
            false,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"model":"served","prompt":[1,2],"max_tokens":64,"temperature":0.5,"stop":["END"],"stream":false}"#
        );
        let body =
            CompletionRequest::from_generate(&generate(Prompt::Text("Once".into())), "s", true)
                .unwrap();
        assert_eq!(body.prompt, PromptInput::Text("Once".into()));
        assert!(
            CompletionRequest::from_generate(&generate(Prompt::Chat(vec![])), "s", true).is_none()
        );
    }

    #[test]
    fn request_types_read_client_shapes() {
        let request: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"}]},
                {"role":"assistant","content":null}],"stop":"x","stream":null,"top_k":3}"#,
        )
        .unwrap();
        assert_eq!(request.stop, vec!["x".to_owned()]);
        assert!(!request.stream);
        assert!(
            matches!(request.messages[0].content, Some(MessageContent::Parts(ref p)) if p[0].kind == "text")
        );
        assert_eq!(request.messages[1].content, None);
        let request: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":[[1,2]],"stop":null}"#).unwrap();
        assert_eq!(request.prompt, PromptInput::TokenBatches(vec![vec![1, 2]]));
        assert!(request.stop.is_empty());
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(parse_finish_reason("stop"), Some(FinishReason::Stop));
        assert_eq!(parse_finish_reason("length"), Some(FinishReason::Length));
        assert_eq!(
            parse_finish_reason("tool_calls"),
            Some(FinishReason::ToolCalls)
        );
        assert_eq!(
            parse_finish_reason("function_call"),
            Some(FinishReason::ToolCalls)
        );
        assert_eq!(
            parse_finish_reason("content_filter"),
            Some(FinishReason::ContentFilter)
        );
        assert_eq!(parse_finish_reason("abort"), None);
        assert_eq!(parse_finish_reason("repetition"), None);
    }

    fn detail(
        message: &str,
        kind: &str,
        code: Option<ErrorCode>,
        param: Option<&str>,
    ) -> ErrorDetail {
        ErrorDetail {
            message: message.into(),
            kind: kind.into(),
            code,
            param: param.map(str::to_owned),
        }
    }

    #[test]
    fn upstream_error_shapes() {
        let n = |c| Some(ErrorCode::Number(c));
        let cases: Vec<(&str, ErrorDetail)> = vec![
            // OpenAI.
            (
                r#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":"invalid_value"}}"#,
                detail(
                    "bad",
                    "invalid_request_error",
                    Some(ErrorCode::Text("invalid_value".into())),
                    None,
                ),
            ),
            // TV-04 vLLM, code as a number.
            (
                r#"{"error":{"message":"too long","type":"BadRequestError","param":"input_tokens","code":400}}"#,
                detail("too long", "BadRequestError", n(400), Some("input_tokens")),
            ),
            // TV-03 vLLM mid-stream, Python json.dumps spacing.
            (
                r#"{"error": {"message": "Internal server error", "type": "InternalServerError", "param": null, "code": 500}}"#,
                detail("Internal server error", "InternalServerError", n(500), None),
            ),
            // TV-08 SGLang in-stream, with an inner "object".
            (
                r#"{"error": {"object": "error", "message": "The request queue is full.", "type": "SERVICE_UNAVAILABLE", "param": null, "code": 503}}"#,
                detail(
                    "The request queue is full.",
                    "SERVICE_UNAVAILABLE",
                    n(503),
                    None,
                ),
            ),
            // TV-09 SGLang flat.
            (
                r#"{"object":"error","message":"The input is too long.","type":"BadRequestError","param":null,"code":400}"#,
                detail("The input is too long.", "BadRequestError", n(400), None),
            ),
            // TV-12 trtllm-serve flat.
            (
                r#"{"object":"error","message":"extra_forbidden","type":"BadRequestError","param":null,"code":400}"#,
                detail("extra_forbidden", "BadRequestError", n(400), None),
            ),
            // TV-17 Triton and SGLang native.
            (
                r#"{"error":"Exceeds maximum queue size"}"#,
                detail("Exceeds maximum queue size", "", None, None),
            ),
            // TV-18 Dynamo flat, no "object".
            (
                r#"{"message":"Service temporarily overloaded","type":"UnknownError","code":529}"#,
                detail(
                    "Service temporarily overloaded",
                    "UnknownError",
                    n(529),
                    None,
                ),
            ),
            // TV-19 Dynamo 2026.
            (
                r#"{"error":{"message":"Internal server error","type":"internal_server_error","code":500}}"#,
                detail(
                    "Internal server error",
                    "internal_server_error",
                    n(500),
                    None,
                ),
            ),
            // The gateway's own frame.
            (
                r#"{"error":{"message":"m","type":"upstream_error","code":"idle_timeout"}}"#,
                detail(
                    "m",
                    "upstream_error",
                    Some(ErrorCode::Text("idle_timeout".into())),
                    None,
                ),
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(
                parse_upstream_error(json.as_bytes()),
                Some(expected),
                "{json}"
            );
        }
        for not_error in [
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"x"}}]}"#,
            r#"{"message":"hi","choices":[]}"#,
            r#"{"error":null}"#,
            r#"{"text_output":"Hello"}"#,
            "[DONE]",
            "[1]",
            "",
        ] {
            assert_eq!(
                parse_upstream_error(not_error.as_bytes()),
                None,
                "{not_error}"
            );
        }
    }
}
