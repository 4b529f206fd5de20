//! Output beyond text through `gateway_adapters::openai`: reasoning (under
//! the engine's field name), tool-call fragments, refusals and logprobs,
//! streamed (one SSE frame per piece) and assembled (one body), for chat
//! and legacy completions, byte for byte and read back as JSON.

#[cfg(test)]
mod openai_structured {
    use bytes::Bytes;
    use gateway_adapters::openai::{Assembler, ChunkEncoder, Endpoint, SseDecoder};
    use gateway_core::{
        Delta, FinishReason, ReasoningField, TokenEvent, TokenLogprob, ToolCallDelta, TopLogprob,
        Usage,
    };
    use serde_json::{Value, json};

    const HEAD: &str =
        r#"{"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1,"model":"m","#;

    fn data(bytes: &[u8]) -> Vec<String> {
        let mut dec = SseDecoder::new();
        dec.push(bytes);
        dec.finish();
        dec.events().map(|e| e.unwrap().data).collect()
    }

    fn frames(enc: &mut ChunkEncoder, events: &[TokenEvent]) -> Vec<String> {
        let mut out = Vec::new();
        for event in events {
            if let Some(bytes) = enc.encode(event) {
                out.extend_from_slice(&bytes);
            }
        }
        data(&out)
    }

    fn call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(str::to_owned),
            kind: id.map(|_| "function".to_owned()),
            name: name.map(str::to_owned),
            arguments: arguments.to_owned(),
        }
    }

    fn tool_stream() -> Vec<TokenEvent> {
        vec![
            TokenEvent::Delta(Delta::tool_call(
                call(0, Some("call-a"), Some("get_weather"), ""),
                1,
            )),
            TokenEvent::Delta(Delta::tool_call(call(0, None, None, "{\"city\": "), 2)),
            TokenEvent::Delta(Delta::tool_call(call(0, None, None, "\"Paris\"}"), 2)),
            TokenEvent::Delta(Delta::tool_call(
                call(1, Some("call-b"), Some("get_time"), "{}"),
                3,
            )),
            TokenEvent::Usage(Usage::new(20, 8)),
            TokenEvent::Finished(FinishReason::ToolCalls),
        ]
    }

    #[test]
    fn streamed_tool_calls_keep_openai_shapes() {
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1, "m", true);
        let frames = frames(&mut enc, &tool_stream());
        let expected = [
            format!(
                r#"{HEAD}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{HEAD}"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"call-a","type":"function","function":{{"name":"get_weather","arguments":""}}}}]}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{HEAD}"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"{{\"city\": "}}}}]}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{HEAD}"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"\"Paris\"}}"}}}}]}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{HEAD}"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":1,"id":"call-b","type":"function","function":{{"name":"get_time","arguments":"{{}}"}}}}]}},"logprobs":null,"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{HEAD}"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"tool_calls"}}]}}"#
            ),
            format!(
                r#"{HEAD}"choices":[],"usage":{{"prompt_tokens":20,"completion_tokens":8,"total_tokens":28,"prompt_tokens_details":{{"cached_tokens":0}}}}}}"#
            ),
            "[DONE]".to_owned(),
        ];
        assert_eq!(frames, expected);
        // Reassembled as the openai SDK does: by tool index.
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for frame in &frames[..frames.len() - 1] {
            let v: Value = serde_json::from_str(frame).unwrap();
            for c in v["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let i = c["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.push(Default::default());
                }
                if let Some(id) = c["id"].as_str() {
                    calls[i].0 = id.to_owned();
                }
                if let Some(name) = c["function"]["name"].as_str() {
                    calls[i].1.push_str(name);
                }
                calls[i]
                    .2
                    .push_str(c["function"]["arguments"].as_str().unwrap());
            }
        }
        assert_eq!(
            calls,
            [
                (
                    "call-a".into(),
                    "get_weather".into(),
                    "{\"city\": \"Paris\"}".into()
                ),
                ("call-b".into(), "get_time".into(), "{}".into()),
            ]
        );
    }

    #[test]
    fn assembled_tool_calls_have_null_content() {
        let mut asm = Assembler::new(Endpoint::Chat, "r1", 1, "m");
        for event in tool_stream() {
            asm.push(&event).unwrap();
        }
        let body: Value = serde_json::from_slice(&asm.body().unwrap()).unwrap();
        assert_eq!(
            body["choices"][0],
            json!({
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [
                        {"id": "call-a", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                        {"id": "call-b", "type": "function",
                         "function": {"name": "get_time", "arguments": "{}"}},
                    ],
                },
                "logprobs": null,
                "finish_reason": "tool_calls",
            })
        );
        assert_eq!(body["usage"]["completion_tokens"], 8);
    }

    #[test]
    fn reasoning_keeps_the_engines_field_name() {
        for (field, names) in [
            (ReasoningField::Reasoning, &["reasoning"][..]),
            (ReasoningField::ReasoningContent, &["reasoning_content"][..]),
            (
                ReasoningField::Both,
                &["reasoning", "reasoning_content"][..],
            ),
        ] {
            let events = [
                TokenEvent::Delta(Delta::reasoning("Let me", field, 2)),
                TokenEvent::Delta(Delta::reasoning(" think.", field, 2)),
                TokenEvent::Delta(Delta::text("Yes", 1)),
                TokenEvent::Usage(Usage::new(3, 5)),
                TokenEvent::Finished(FinishReason::Stop),
            ];
            let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1, "m", false);
            let frames = frames(&mut enc, &events);
            let inner: String = names
                .iter()
                .map(|n| format!(r#""{n}":"Let me""#))
                .collect::<Vec<_>>()
                .join(",");
            assert_eq!(
                frames[1],
                format!(
                    r#"{HEAD}"choices":[{{"index":0,"delta":{{{inner}}},"logprobs":null,"finish_reason":null}}]}}"#
                ),
                "{field:?}"
            );
            // Text after reasoning takes the fast path: content only.
            assert_eq!(
                frames[3],
                format!(
                    r#"{HEAD}"choices":[{{"index":0,"delta":{{"content":"Yes"}},"logprobs":null,"finish_reason":null}}]}}"#
                )
            );
            let mut asm = Assembler::new(Endpoint::Chat, "r1", 1, "m");
            for event in &events {
                asm.push(event).unwrap();
            }
            let body: Value = serde_json::from_slice(&asm.body().unwrap()).unwrap();
            let message = &body["choices"][0]["message"];
            assert_eq!(message["content"], "Yes");
            for name in names {
                assert_eq!(message[*name], "Let me think.", "{field:?}");
            }
            assert_eq!(message.as_object().unwrap().len(), 2 + names.len());
        }
        // Only reasoning: content is null, as vLLM answers.
        let mut asm = Assembler::new(Endpoint::Chat, "r1", 1, "m");
        for event in [
            TokenEvent::Delta(Delta::reasoning("hm", ReasoningField::Reasoning, 4)),
            TokenEvent::Usage(Usage::new(3, 4)),
            TokenEvent::Finished(FinishReason::Length),
        ] {
            asm.push(&event).unwrap();
        }
        let body: Value = serde_json::from_slice(&asm.body().unwrap()).unwrap();
        assert_eq!(
            body["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "reasoning": "hm"})
        );
    }

    fn lp(token: &str, logprob: f64, top: &[(&str, f64)]) -> TokenLogprob {
        TokenLogprob {
            token: token.to_owned(),
            logprob,
            bytes: Some(token.as_bytes().to_vec()),
            top_logprobs: top
                .iter()
                .map(|(t, l)| TopLogprob {
                    token: (*t).to_owned(),
                    logprob: *l,
                    bytes: Some(t.as_bytes().to_vec()),
                })
                .collect(),
        }
    }

    fn logprob_stream() -> Vec<TokenEvent> {
        let piece = |text: &str, logprobs: Vec<TokenLogprob>| {
            TokenEvent::Delta(Delta {
                text: text.to_owned(),
                tokens: logprobs.len() as u32,
                logprobs,
                ..Delta::default()
            })
        };
        vec![
            piece("Hé", vec![lp("Hé", -0.25, &[("Hé", -0.25), ("Ho", -1.5)])]),
            piece(
                "llo!",
                vec![
                    lp("llo", -1e-7, &[("llo", -1e-7), ("lp", -9999.0)]),
                    lp("!", -3.0, &[("!", -3.0), ("?", -3.5)]),
                ],
            ),
            TokenEvent::Usage(Usage::new(4, 3)),
            TokenEvent::Finished(FinishReason::Length),
        ]
    }

    #[test]
    fn chat_logprobs_stream_and_assemble() {
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1, "m", false);
        let frames = frames(&mut enc, &logprob_stream());
        assert_eq!(
            frames[1],
            format!(
                r#"{HEAD}"choices":[{{"index":0,"delta":{{"content":"Hé"}},"logprobs":{{"content":[{{"token":"Hé","logprob":-0.25,"bytes":[72,195,169],"top_logprobs":[{{"token":"Hé","logprob":-0.25,"bytes":[72,195,169]}},{{"token":"Ho","logprob":-1.5,"bytes":[72,111]}}]}}]}},"finish_reason":null}}]}}"#
            )
        );
        let second: Value = serde_json::from_str(&frames[2]).unwrap();
        let content = &second["choices"][0]["logprobs"]["content"];
        assert_eq!(content[0]["logprob"], -1e-7);
        assert_eq!(content[0]["top_logprobs"][1]["logprob"], -9999.0);
        assert_eq!(content[1]["token"], "!");

        let mut asm = Assembler::new(Endpoint::Chat, "r1", 1, "m");
        for event in logprob_stream() {
            asm.push(&event).unwrap();
        }
        let body: Value = serde_json::from_slice(&asm.body().unwrap()).unwrap();
        let tokens: Vec<&str> = body["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["token"].as_str().unwrap())
            .collect();
        assert_eq!(tokens, ["Hé", "llo", "!"]);
        assert_eq!(body["choices"][0]["message"]["content"], "Héllo!");
    }

    #[test]
    fn completion_logprobs_use_the_legacy_shape() {
        let mut enc = ChunkEncoder::new(Endpoint::Completion, "r1", 1, "m", false);
        let frames = frames(&mut enc, &logprob_stream());
        let first: Value = serde_json::from_str(&frames[0]).unwrap();
        assert_eq!(
            first["choices"][0],
            json!({
                "text": "Hé", "index": 0, "finish_reason": null,
                "logprobs": {"text_offset": [0], "token_logprobs": [-0.25], "tokens": ["Hé"],
                             "top_logprobs": [{"Hé": -0.25, "Ho": -1.5}]},
            })
        );
        // Offsets count characters of the text sent before.
        let second: Value = serde_json::from_str(&frames[1]).unwrap();
        assert_eq!(
            second["choices"][0]["logprobs"]["text_offset"],
            json!([2, 5])
        );
        // The top entries keep their order (most likely first).
        assert!(frames[1].contains(r#"[{"llo":-1e-7,"lp":-9999.0},{"!":-3.0,"?":-3.5}]"#));

        let mut asm = Assembler::new(Endpoint::Completion, "r1", 1, "m");
        for event in logprob_stream() {
            asm.push(&event).unwrap();
        }
        let body: Value = serde_json::from_slice(&asm.body().unwrap()).unwrap();
        assert_eq!(
            body["choices"][0]["logprobs"]["text_offset"],
            json!([0, 2, 5])
        );
        assert_eq!(body["choices"][0]["text"], "Héllo!");
    }

    #[test]
    fn refusals_and_bounds() {
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1, "m", false);
        let refusal = Delta {
            refusal: "I can't".into(),
            tokens: 2,
            ..Delta::default()
        };
        let out: Bytes = enc.encode(&TokenEvent::Delta(refusal.clone())).unwrap();
        assert!(data(&out)[1].contains(r#""delta":{"refusal":"I can't"}"#));
        // A piece with tokens and nothing to show gives no frame.
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1, "m", false);
        assert_eq!(enc.encode(&TokenEvent::Delta(Delta::text("", 3))), None);
        assert!(!enc.has_output());
        // The assembler's bound covers every kind of output.
        let mut asm = Assembler::new(Endpoint::Chat, "r1", 1, "m").with_max_text_bytes(11);
        asm.push(&TokenEvent::Delta(Delta::reasoning(
            "12345",
            ReasoningField::Reasoning,
            1,
        )))
        .unwrap();
        let big = Delta::tool_call(call(0, Some("id"), Some("f"), "1234"), 1);
        assert!(asm.push(&TokenEvent::Delta(big)).is_err());
        let short = Delta {
            refusal: "No".into(),
            ..refusal
        };
        asm.push(&TokenEvent::Delta(short)).unwrap();
        asm.push(&TokenEvent::Usage(Usage::new(1, 3))).unwrap();
        asm.push(&TokenEvent::Finished(FinishReason::Stop)).unwrap();
        let body: Value = serde_json::from_slice(&asm.body().unwrap()).unwrap();
        assert_eq!(
            body["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "reasoning": "12345", "refusal": "No"})
        );
    }
}

#[cfg(test)]
mod reasoning_usage {
    use gateway_adapters::openai::types::{CompletionTokensDetails, CompletionUsage};
    use gateway_adapters::openai::{Assembler, ChunkEncoder, Endpoint};
    use gateway_core::{Delta, FinishReason, TokenEvent, Usage};
    use serde_json::{Value, json};

    #[test]
    fn reasoning_tokens_reach_the_usage_object() {
        let usage = Usage::new(3, 5).with_reasoning(2);
        let mut enc = ChunkEncoder::new(Endpoint::Chat, "r1", 1, "m", true);
        let _ = enc.encode(&TokenEvent::Delta(Delta::text("a", 5)));
        let _ = enc.encode(&TokenEvent::Usage(usage));
        let end = enc
            .encode(&TokenEvent::Finished(FinishReason::Stop))
            .unwrap();
        let text = std::str::from_utf8(&end).unwrap();
        assert!(
            text.contains(r#""completion_tokens_details":{"reasoning_tokens":2}}"#),
            "{text}"
        );
        // With speculative counts too, reasoning comes first.
        let both = usage.with_speculative(4, 3).unwrap();
        let mut asm = Assembler::new(Endpoint::Chat, "r1", 1, "m");
        asm.push(&TokenEvent::Delta(Delta::text("a", 5))).unwrap();
        asm.push(&TokenEvent::Usage(both)).unwrap();
        asm.push(&TokenEvent::Finished(FinishReason::Stop)).unwrap();
        let body: Value = serde_json::from_slice(&asm.body().unwrap()).unwrap();
        assert_eq!(
            body["usage"]["completion_tokens_details"],
            json!({"reasoning_tokens": 2, "accepted_prediction_tokens": 3, "rejected_prediction_tokens": 1})
        );
        // The serde mapping agrees, both ways.
        let wire = CompletionUsage::from(&both);
        assert_eq!(
            wire.completion_tokens_details,
            Some(CompletionTokensDetails {
                reasoning_tokens: Some(2),
                accepted_prediction_tokens: Some(3),
                rejected_prediction_tokens: Some(1),
            })
        );
        assert_eq!(wire.to_usage(), both);
        // No reasoning, no speculation: no details (as before).
        assert_eq!(
            CompletionUsage::from(&Usage::new(3, 5)).completion_tokens_details,
            None
        );
    }
}
