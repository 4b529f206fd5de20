//! Responses of `gateway_adapters::openai`, byte for byte: the streamed
//! chat and legacy completions sequences, the failure frame, the
//! non-streamed bodies, the models list and error bodies; each also read
//! back through the serde wire types.

#[cfg(test)]
mod openai_encode {
    use bytes::Bytes;
    use gateway_adapters::openai::types::{
        ChatCompletion, ChatCompletionChunk, Completion, CompletionTokensDetails, CompletionUsage,
        ErrorBody, ErrorCode, ModelList, PromptTokensDetails,
    };
    use gateway_adapters::openai::{
        AssembleError, Assembler, ChunkEncoder, Endpoint, SseDecoder, error_body, error_type,
        models_body, stream_error_frame, unix_now,
    };
    use gateway_core::http::StatusCode;
    use gateway_core::{Delta, FailureKind, FinishReason, Started, TokenEvent, Usage};

    const HEAD: &str = r#"data: {"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1700000000,"model":"m","#;
    const TEXT_HEAD: &str =
        r#"data: {"id":"cmpl-r1","object":"text_completion","created":1700000000,"model":"m","#;

    fn spec_usage() -> Usage {
        Usage::new(9, 3)
            .with_cached(4)
            .and_then(|u| u.with_speculative(5, 2))
            .unwrap()
    }

    fn text(bytes: &Option<Bytes>) -> &str {
        std::str::from_utf8(bytes.as_deref().unwrap()).unwrap()
    }

    fn data_events(bytes: &[u8]) -> Vec<String> {
        let mut dec = SseDecoder::new();
        dec.push(bytes);
        dec.finish();
        dec.events().map(|e| e.unwrap().data).collect()
    }

    #[test]
    fn streamed_chat_with_usage_cached_and_speculative() {
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1_700_000_000, "m", true);
        assert_eq!(enc.id(), "chatcmpl-r1");
        assert_eq!(enc.endpoint(), Endpoint::Chat);
        let started = enc.encode(&TokenEvent::Started(Started {
            prompt_tokens: Some(9),
            cached_tokens: Some(4),
        }));
        assert_eq!(started, None);
        assert!(!enc.has_output(), "nothing before the first token");

        let first = enc.encode(&TokenEvent::Delta(Delta::text("Hel", 1)));
        assert!(enc.has_output());
        assert_eq!(
            text(&first),
            format!(
                "{HEAD}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n\
                 {HEAD}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hel\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            )
        );
        let second = enc.encode(&TokenEvent::Delta(Delta::text("lo \"q\"\n", 2)));
        assert_eq!(
            text(&second),
            format!(
                "{HEAD}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"lo \\\"q\\\"\\n\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            )
        );
        assert_eq!(enc.encode(&TokenEvent::Delta(Delta::text("", 0))), None);
        assert_eq!(enc.encode(&TokenEvent::Usage(spec_usage())), None);
        let end = enc.encode(&TokenEvent::Finished(FinishReason::Stop));
        assert_eq!(
            text(&end),
            format!(
                "{HEAD}\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n\
                 {HEAD}\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12,\
                 \"prompt_tokens_details\":{{\"cached_tokens\":4}},\
                 \"completion_tokens_details\":{{\"accepted_prediction_tokens\":2,\"rejected_prediction_tokens\":3}}}}}}\n\n\
                 data: [DONE]\n\n"
            )
        );
        // Nothing after the end.
        assert_eq!(enc.encode(&TokenEvent::Delta(Delta::text("x", 1))), None);

        // Read back through the wire types.
        let mut all = Vec::new();
        for part in [&first, &second, &end] {
            all.extend_from_slice(part.as_deref().unwrap());
        }
        let events = data_events(&all);
        assert_eq!(events.len(), 6);
        assert_eq!(events[5], "[DONE]");
        let chunks: Vec<ChatCompletionChunk> = events[..5]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(chunks.iter().all(|c| c.id == "chatcmpl-r1"
            && c.object == "chat.completion.chunk"
            && c.created == 1_700_000_000
            && c.model == "m"));
        assert_eq!(
            chunks[0].choices[0].delta.role.as_deref(),
            Some("assistant")
        );
        let content: String = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .filter_map(|c| c.delta.content.as_deref())
            .collect();
        assert_eq!(content, "Hello \"q\"\n");
        assert_eq!(chunks[3].choices[0].finish_reason.as_deref(), Some("stop"));
        assert!(chunks[4].choices.is_empty());
        assert_eq!(
            chunks[4].usage,
            Some(CompletionUsage {
                prompt_tokens: 9,
                completion_tokens: 3,
                total_tokens: 12,
                prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: 4 }),
                completion_tokens_details: Some(CompletionTokensDetails {
                    reasoning_tokens: None,
                    accepted_prediction_tokens: Some(2),
                    rejected_prediction_tokens: Some(3),
                }),
            })
        );
        assert_eq!(
            chunks[4].usage.unwrap().to_usage(),
            spec_usage().with_canceled(0).unwrap()
        );
    }

    #[test]
    fn streamed_legacy_completion() {
        let mut enc = ChunkEncoder::new(Endpoint::Completion, "r1", 1_700_000_000, "m", true);
        assert_eq!(enc.id(), "cmpl-r1");
        assert_eq!(enc.encode(&TokenEvent::Started(Started::default())), None);
        let a = enc.encode(&TokenEvent::Delta(Delta::text("Once", 1)));
        assert_eq!(
            text(&a),
            format!(
                "{TEXT_HEAD}\"choices\":[{{\"text\":\"Once\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            )
        );
        let b = enc.encode(&TokenEvent::Delta(Delta::text(" upon", 1)));
        assert_eq!(
            text(&b),
            format!(
                "{TEXT_HEAD}\"choices\":[{{\"text\":\" upon\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            )
        );
        assert_eq!(enc.encode(&TokenEvent::Usage(Usage::new(5, 2))), None);
        let end = enc.encode(&TokenEvent::Finished(FinishReason::Length));
        assert_eq!(
            text(&end),
            format!(
                "{TEXT_HEAD}\"choices\":[{{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}}]}}\n\n\
                 {TEXT_HEAD}\"choices\":[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\
                 \"prompt_tokens_details\":{{\"cached_tokens\":0}}}}}}\n\n\
                 data: [DONE]\n\n"
            )
        );
        let mut all = Vec::new();
        for part in [&a, &b, &end] {
            all.extend_from_slice(part.as_deref().unwrap());
        }
        let events = data_events(&all);
        let chunks: Vec<Completion> = events[..4]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let joined: String = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .map(|c| c.text.as_str())
            .collect();
        assert_eq!(joined, "Once upon");
        assert_eq!(
            chunks[2].choices[0].finish_reason.as_deref(),
            Some("length")
        );
        assert_eq!(chunks[3].usage.unwrap().completion_tokens_details, None);
    }

    #[test]
    fn without_include_usage_and_without_deltas() {
        // No usage chunk without include_usage, even with a usage.
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1_700_000_000, "m", false);
        enc.set_usage(Usage::new(1, 0));
        let end = enc.finish(FinishReason::Stop);
        assert_eq!(
            std::str::from_utf8(&end).unwrap(),
            format!(
                "{HEAD}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n\
                 {HEAD}\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n\
                 data: [DONE]\n\n"
            )
        );
        // include_usage but no usage known: no usage chunk.
        let mut enc = ChunkEncoder::new(Endpoint::Completion, "r1", 1_700_000_000, "m", true);
        let end = enc.finish(FinishReason::ContentFilter);
        assert_eq!(data_events(&end).len(), 2);
        // The gateway's usage replaces the engine's.
        let mut enc = ChunkEncoder::new(Endpoint::Completion, "r1", 1, "m", true);
        enc.encode(&TokenEvent::Usage(Usage::new(1, 1)));
        enc.set_usage(Usage::new(2, 2));
        let end = enc
            .encode(&TokenEvent::Finished(FinishReason::ToolCalls))
            .unwrap();
        let events = data_events(&end);
        let usage: Completion = serde_json::from_str(&events[1]).unwrap();
        assert_eq!(usage.usage.unwrap().total_tokens, 4);
        let finish: Completion = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(
            finish.choices[0].finish_reason.as_deref(),
            Some("tool_calls")
        );
    }

    #[test]
    fn failure_after_the_first_byte_is_one_frame() {
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1_700_000_000, "m", true);
        enc.encode(&TokenEvent::Delta(Delta::text("Par", 1)));
        let frame = enc.error(FailureKind::IdleTimeout, "engine went \"quiet\"");
        assert_eq!(
            &frame[..],
            &b"data: {\"error\":{\"message\":\"engine went \\\"quiet\\\"\",\"type\":\"upstream_error\",\"code\":\"idle_timeout\"}}\n\n"[..]
        );
        assert_eq!(
            frame,
            stream_error_frame(FailureKind::IdleTimeout, "engine went \"quiet\"")
        );
        // Nothing follows: no [DONE].
        assert_eq!(enc.encode(&TokenEvent::Finished(FinishReason::Stop)), None);
        for kind in FailureKind::ALL {
            let events = data_events(&stream_error_frame(kind, "m"));
            let body: ErrorBody = serde_json::from_str(&events[0]).unwrap();
            assert_eq!(body.error.kind, "upstream_error");
            assert_eq!(
                body.error.code,
                Some(ErrorCode::Text(kind.as_str().to_owned()))
            );
            assert_eq!(body.error.param, None);
        }
    }

    #[test]
    fn ids_and_models_are_escaped() {
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "a\"b\\c\u{1}", 7, "m/é\n", false);
        let frame = enc.delta("x");
        let events = data_events(&frame);
        let chunk: ChatCompletionChunk = serde_json::from_str(&events[1]).unwrap();
        assert_eq!(chunk.id, "chatcmpl-a\"b\\c\u{1}");
        assert_eq!(chunk.model, "m/é\n");
    }

    #[test]
    fn non_streamed_chat_body() {
        let mut asm = Assembler::new(Endpoint::Chat, "r1", 1_700_000_000, "m");
        for event in [
            TokenEvent::Started(Started::default()),
            TokenEvent::Delta(Delta::text("Hello", 1)),
            TokenEvent::Delta(Delta::text(" wörld\t", 2)),
            TokenEvent::Usage(spec_usage()),
            TokenEvent::Finished(FinishReason::Stop),
        ] {
            asm.push(&event).unwrap();
        }
        assert_eq!(asm.text(), "Hello wörld\t");
        assert_eq!(asm.finish_reason(), Some(FinishReason::Stop));
        let body = asm.body().unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "{\"id\":\"chatcmpl-r1\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"m\",\
             \"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello wörld\\t\"},\
             \"logprobs\":null,\"finish_reason\":\"stop\"}],\
             \"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12,\
             \"prompt_tokens_details\":{\"cached_tokens\":4},\
             \"completion_tokens_details\":{\"accepted_prediction_tokens\":2,\"rejected_prediction_tokens\":3}}}"
        );
        let parsed: ChatCompletion = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.object, "chat.completion");
        assert_eq!(
            parsed.choices[0].message.content.as_deref(),
            Some("Hello wörld\t")
        );
        assert_eq!(parsed.choices[0].message.role.as_deref(), Some("assistant"));
        assert_eq!(parsed.usage.unwrap().prompt_tokens, 9);
    }

    #[test]
    fn non_streamed_completion_body() {
        let mut asm = Assembler::new(Endpoint::Completion, "r1", 1_700_000_000, "m");
        assert_eq!(asm.body(), Err(AssembleError::NotFinished));
        asm.push(&TokenEvent::Delta(Delta::text("42", 1))).unwrap();
        asm.push(&TokenEvent::Finished(FinishReason::Length))
            .unwrap();
        assert_eq!(asm.body(), Err(AssembleError::MissingUsage));
        asm.set_usage(Usage::new(3, 1));
        let body = asm.body().unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "{\"id\":\"cmpl-r1\",\"object\":\"text_completion\",\"created\":1700000000,\"model\":\"m\",\
             \"choices\":[{\"text\":\"42\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\
             \"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4,\
             \"prompt_tokens_details\":{\"cached_tokens\":0}}}"
        );
        let parsed: Completion = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.choices[0].text, "42");
    }

    #[test]
    fn assembled_text_is_bounded() {
        let mut asm = Assembler::new(Endpoint::Chat, "r1", 1, "m").with_max_text_bytes(5);
        asm.push(&TokenEvent::Delta(Delta::text("abc", 1))).unwrap();
        assert_eq!(
            asm.push(&TokenEvent::Delta(Delta::text("def", 1))),
            Err(AssembleError::TextTooLarge { limit: 5 })
        );
        assert_eq!(asm.text(), "abc");
        assert_eq!(
            AssembleError::TextTooLarge { limit: 5 }.to_string(),
            "completion text exceeds 5 bytes"
        );
    }

    #[test]
    fn models_list() {
        let body = models_body(["tiny-llama", "sim-small"], 1_700_000_000, "gateway");
        assert_eq!(
            &body[..],
            &br#"{"object":"list","data":[{"id":"tiny-llama","object":"model","created":1700000000,"owned_by":"gateway"},{"id":"sim-small","object":"model","created":1700000000,"owned_by":"gateway"}]}"#[..]
        );
        let list: ModelList = serde_json::from_slice(&body).unwrap();
        assert_eq!(list.object, "list");
        assert_eq!(list.data[1].id, "sim-small");
        assert_eq!(
            &models_body([], 0, "x")[..],
            &br#"{"object":"list","data":[]}"#[..]
        );
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            &error_body(StatusCode::NOT_FOUND, "model_not_found", "model `x` is not configured", Some("model"))[..],
            &br#"{"error":{"message":"model `x` is not configured","type":"invalid_request_error","code":"model_not_found","param":"model"}}"#[..]
        );
        assert_eq!(
            &error_body(StatusCode::TOO_MANY_REQUESTS, "budget_exceeded", "budget", None)[..],
            &br#"{"error":{"message":"budget","type":"rate_limit_error","code":"budget_exceeded","param":null}}"#[..]
        );
        let table: Vec<(u16, &str)> = [400, 401, 403, 404, 413, 429, 500, 502, 503, 504]
            .into_iter()
            .map(|s| (s, error_type(StatusCode::from_u16(s).unwrap())))
            .collect();
        assert_eq!(
            table,
            vec![
                (400, "invalid_request_error"),
                (401, "authentication_error"),
                (403, "permission_error"),
                (404, "invalid_request_error"),
                (413, "invalid_request_error"),
                (429, "rate_limit_error"),
                (500, "server_error"),
                (502, "upstream_error"),
                (503, "server_error"),
                (504, "upstream_error"),
            ]
        );
        let parsed: ErrorBody = serde_json::from_slice(&error_body(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "no\nkey",
            None,
        ))
        .unwrap();
        assert_eq!(parsed.error.message, "no\nkey");
        assert_eq!(
            parsed.error.code,
            Some(ErrorCode::Text("invalid_api_key".into()))
        );
    }

    #[test]
    fn unix_now_is_recent() {
        assert!(unix_now() > 1_700_000_000);
    }
}

/// Frames held by a connection share few allocations: each 4 KiB block is
/// carved into many frames, not one allocation per frame once the first
/// block is used up.
#[test]
fn held_frames_share_blocks() {
    let mut enc = gateway_adapters::openai::ChunkEncoder::new(
        gateway_adapters::openai::Endpoint::Chat,
        "r",
        1,
        "m",
        false,
    );
    let frames: Vec<bytes::Bytes> = (0..200).map(|_| enc.delta("some token")).collect();
    let starts = frames
        .windows(2)
        .filter(|w| w[1].as_ptr() != w[0].as_ptr().wrapping_add(w[0].len()))
        .count();
    let total: usize = frames.iter().map(bytes::Bytes::len).sum();
    // One new block per 4 KiB of frames, give or take the first.
    assert!(
        starts <= total / 4096 + 1,
        "{starts} blocks for {total} bytes"
    );
}
