//! Client request parsing of `gateway_adapters::openai`: every accepted
//! shape, every validation error (message and param), uninterpreted
//! fields passed on verbatim, and no panic on any input.

#[cfg(test)]
mod openai_request {
    use gateway_adapters::openai::{
        ParsedRequest, RequestError, merge_extra, parse_chat, parse_completion,
    };
    use gateway_core::http::StatusCode;
    use gateway_core::{
        ChatMessage, ContentPart, MediaKind, MediaPart, Prompt, Role, SamplingParams, ToolCall,
    };
    use proptest::prelude::*;
    use serde_json::Value;

    fn chat(body: &str) -> ParsedRequest {
        match parse_chat(body.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("{body}: {e}"),
        }
    }

    fn completion(body: &str) -> ParsedRequest {
        match parse_completion(body.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("{body}: {e}"),
        }
    }

    const USER_HI: &str = r#""messages":[{"role":"user","content":"hi"}]"#;

    #[test]
    fn minimal_chat() {
        let p = chat(&format!(r#"{{"model":"m",{USER_HI}}}"#));
        assert_eq!(
            p,
            ParsedRequest {
                model: "m".into(),
                prompt: Prompt::Chat(vec![ChatMessage::user("hi")]),
                sampling: SamplingParams::default(),
                max_tokens: None,
                stream: false,
                include_usage: false,
                extra: None,
                tools: None,
            }
        );
    }

    #[test]
    fn full_chat() {
        let body = r#"{
            "model": "tiny-llama",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "rules"}]},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": []},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
                    {"id": "c2", "function": {"name": "g", "arguments": {"y": 2}}}
                ]},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}}, {"type": "text", "text": "what?"}]},
                {"role": "assistant"},
                {"role": "tool", "content": "42", "tool_call_id": "t1"},
                {"role": "user", "content": [], "name": "bob"}
            ],
            "temperature": 0.7, "top_p": 0.5, "seed": 18446744073709551615,
            "stop": ["\n\n", "", "END"],
            "max_tokens": 100, "max_completion_tokens": 50, "n": 1,
            "stream": true, "stream_options": {"include_usage": true, "continuous_usage_stats": true}
        }"#;
        let p = chat(body);
        assert_eq!(p.model, "tiny-llama");
        assert_eq!(
            p.prompt,
            Prompt::Chat(vec![
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage {
                    parts: vec![ContentPart::Text("rules".into())],
                    ..ChatMessage::new(Role::System, "rules")
                },
                ChatMessage {
                    parts: vec![ContentPart::Text("a".into()), ContentPart::Text("b".into())],
                    ..ChatMessage::new(Role::User, "a\nb")
                },
                ChatMessage::new(Role::Assistant, ""),
                ChatMessage {
                    tool_calls: vec![
                        ToolCall {
                            id: "c1".into(),
                            name: "f".into(),
                            arguments: "{\"x\": 1}".into(),
                        },
                        ToolCall {
                            id: "c2".into(),
                            name: "g".into(),
                            arguments: "{\"y\":2}".into(),
                        },
                    ],
                    ..ChatMessage::new(Role::Assistant, "")
                },
                ChatMessage {
                    parts: vec![
                        ContentPart::Media(MediaPart {
                            kind: MediaKind::Image,
                            json: r#"{"image_url":{"detail":"low","url":"data:,"},"type":"image_url"}"#
                                .into(),
                        }),
                        ContentPart::Text("what?".into()),
                    ],
                    ..ChatMessage::new(Role::User, "what?")
                },
                ChatMessage::new(Role::Assistant, ""),
                ChatMessage {
                    tool_call_id: Some("t1".into()),
                    ..ChatMessage::new(Role::Tool, "42")
                },
                ChatMessage {
                    name: Some("bob".into()),
                    ..ChatMessage::new(Role::User, "")
                },
            ])
        );
        assert_eq!(
            p.sampling,
            SamplingParams {
                temperature: Some(0.7),
                top_p: Some(0.5),
                seed: Some(u64::MAX),
                // The empty stop sequence is dropped.
                stop: vec!["\n\n".into(), "END".into()],
            }
        );
        // max_completion_tokens wins over max_tokens.
        assert_eq!(p.max_tokens, Some(50));
        assert!(p.stream && p.include_usage);
        assert_eq!(p.extra, None);
    }

    #[test]
    fn nulls_and_edges_are_accepted() {
        let p = chat(&format!(
            r#"{{"model":"m",{USER_HI},"temperature":null,"top_p":null,"seed":null,"stop":null,
                "max_tokens":null,"max_completion_tokens":null,"n":null,"stream":null,"stream_options":null}}"#
        ));
        assert_eq!(p.sampling, SamplingParams::default());
        assert_eq!(
            (p.max_tokens, p.stream, p.include_usage),
            (None, false, false)
        );
        assert_eq!(p.extra, None);

        let p = chat(&format!(
            r#"{{"model":"m",{USER_HI},"temperature":0,"top_p":1,"seed":0,"stop":"%%","max_tokens":4294967295}}"#
        ));
        assert_eq!(p.sampling.temperature, Some(0.0));
        assert_eq!(p.sampling.top_p, Some(1.0));
        assert_eq!(p.sampling.seed, Some(0));
        assert_eq!(p.sampling.stop, vec!["%%".to_owned()]);
        assert_eq!(p.max_tokens, Some(u32::MAX));

        let p = chat(&format!(
            r#"{{"model":"m",{USER_HI},"temperature":2.0,"stop":["a","b","c","d"],"max_tokens":7,
                "stream":true,"stream_options":{{}}}}"#
        ));
        assert_eq!(p.sampling.temperature, Some(2.0));
        assert_eq!(p.sampling.stop.len(), 4);
        assert_eq!(p.max_tokens, Some(7));
        assert!(p.stream && !p.include_usage);

        let p = chat(&format!(
            r#"{{"model":"m",{USER_HI},"stream":true,"stream_options":{{"include_usage":false}}}}"#
        ));
        assert!(p.stream && !p.include_usage);
    }

    #[test]
    fn unknown_fields_are_kept_verbatim() {
        let body = "{\"model\":\"m\",\"top_k\" : 20,\n \"repetition_penalty\":1.10,\"mod\\u0065\":1,\
                    \"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\
                    \"guided_json\":{\"type\": \"object\", \"x\": [1, 2.50e1, \"}\"]},\"logprobs\":null,\
                    \"user\":\"é\\n\",\"prompt\":\"not for chat\"}";
        let p = chat(body);
        assert_eq!(
            p.extra.as_deref(),
            Some(
                "{\"top_k\":20,\"repetition_penalty\":1.10,\"mod\\u0065\":1,\
                 \"guided_json\":{\"type\": \"object\", \"x\": [1, 2.50e1, \"}\"]},\"logprobs\":null,\
                 \"user\":\"é\\n\",\"prompt\":\"not for chat\"}"
            )
        );
        let extra: Value = serde_json::from_str(p.extra.as_deref().unwrap()).unwrap();
        assert_eq!(extra["mode"], 1);

        // Completions keep different fields: max_completion_tokens is not theirs.
        let p = completion(
            r#"{"model":"m","prompt":"p","logit_bias":{},"max_completion_tokens":3,"best_of":1,"suffix":null}"#,
        );
        assert_eq!(
            p.extra.as_deref(),
            Some(r#"{"logit_bias":{},"max_completion_tokens":3,"suffix":null}"#)
        );
        assert_eq!(p.max_tokens, None);
    }

    #[test]
    fn completion_prompts() {
        let prompt = |p: &str| completion(&format!(r#"{{"model":"m","prompt":{p}}}"#)).prompt;
        assert_eq!(prompt(r#""Once""#), Prompt::Text("Once".into()));
        assert_eq!(prompt(r#""""#), Prompt::Text(String::new()));
        assert_eq!(prompt(r#"["Once"]"#), Prompt::Text("Once".into()));
        assert_eq!(
            prompt("[1, 2, 4294967295]"),
            Prompt::Tokens(vec![1, 2, u32::MAX])
        );
        assert_eq!(prompt("[[7, 8]]"), Prompt::Tokens(vec![7, 8]));
        assert_eq!(prompt("[0]"), Prompt::Tokens(vec![0]));
        let p = completion(
            r#"{"model":"m","prompt":"x","max_tokens":16,"temperature":1.5,"stop":"\n","seed":3,
                "n":1,"stream":true,"stream_options":{"include_usage":true}}"#,
        );
        assert_eq!(p.max_tokens, Some(16));
        assert_eq!(p.sampling.temperature, Some(1.5));
        assert_eq!(p.sampling.stop, vec!["\n".to_owned()]);
        assert_eq!(p.sampling.seed, Some(3));
        assert!(p.stream && p.include_usage);
    }

    #[test]
    fn into_generate_request() {
        let p = chat(&format!(r#"{{"model":"m",{USER_HI},"seed":5,"top_k":2}}"#));
        let r = p.clone().into_generate_request(256);
        assert_eq!(r.model, "m");
        assert_eq!(r.prompt, p.prompt);
        assert_eq!(r.max_tokens, 256);
        assert_eq!(r.sampling.seed, Some(5));
        assert_eq!(r.extra.as_deref(), Some(r#"{"top_k":2}"#));
        let p = chat(&format!(r#"{{"model":"m",{USER_HI},"max_tokens":9}}"#));
        assert_eq!(p.into_generate_request(256).max_tokens, 9);
    }

    #[test]
    fn merges_extra_into_upstream_bodies() {
        let mut body = br#"{"model":"served","stream":true}"#.to_vec();
        merge_extra(&mut body, r#"{"top_k":20, "stream":false,"x":{"a": [1]}}"#).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"model":"served","stream":true,"top_k":20,"x":{"a": [1]}}"#
        );
        let mut body = b"{}".to_vec();
        merge_extra(&mut body, r#"{"a":1,"b":2}"#).unwrap();
        assert_eq!(&body, br#"{"a":1,"b":2}"#);
        let mut body = br#"{"a":1}"#.to_vec();
        merge_extra(&mut body, "{}").unwrap();
        assert_eq!(&body, br#"{"a":1}"#);
        let mut body = br#"{"a":1}"#.to_vec();
        let err = merge_extra(&mut body, "[1]").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("extra"));
        assert_eq!(&body, br#"{"a":1}"#);
        assert!(merge_extra(&mut body, "{\"a\":").is_err());
    }

    fn chat_error(body: &[u8]) -> (String, Option<String>) {
        let e = parse_chat(body).unwrap_err();
        (e.message, e.param)
    }

    fn completion_error(body: &[u8]) -> (String, Option<String>) {
        let e = parse_completion(body).unwrap_err();
        (e.message, e.param)
    }

    fn owned(message: &str, param: Option<&str>) -> (String, Option<String>) {
        (message.to_owned(), param.map(str::to_owned))
    }

    #[test]
    fn body_errors() {
        let cases: [(&[u8], &str, Option<&str>); 7] = [
            (b"\xff{}", "request body is not valid UTF-8", None),
            (
                b"",
                "malformed JSON: EOF while parsing a value at line 1 column 0",
                None,
            ),
            (
                b"{\"model\":",
                "malformed JSON: EOF while parsing a value at line 1 column 9",
                None,
            ),
            (
                b"{\"a\":1} x",
                "malformed JSON: trailing characters at line 1 column 9",
                None,
            ),
            (b"[1,2]", "request body must be a JSON object", None),
            (b"\"text\"", "request body must be a JSON object", None),
            (
                b"{\"model\":\"a\",\"mod\\u0065l\":\"b\"}",
                "duplicate field 'model'",
                Some("model"),
            ),
        ];
        for (body, message, param) in cases {
            assert_eq!(
                chat_error(body),
                owned(message, param),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(completion_error(body), owned(message, param));
        }
        assert_eq!(
            chat_error(br#"{"\ud800":1}"#),
            owned("malformed JSON: invalid key", None)
        );
        // Duplicate unknown fields too.
        assert_eq!(
            chat_error(format!(r#"{{"model":"m",{USER_HI},"x":1,"x":2}}"#).as_bytes()),
            owned("duplicate field 'x'", Some("x"))
        );
    }

    #[test]
    fn field_errors() {
        let cases: &[(&str, &str, &str)] = &[
            (r#""model":"", "#, "model must not be empty", "model"),
            (r#""model":7, "#, "model must be a string", "model"),
            (r#""model":null, "#, "model must be a string", "model"),
            (
                r#""temperature":"hot", "#,
                "temperature must be a number",
                "temperature",
            ),
            (
                r#""temperature":-0.1, "#,
                "temperature must be between 0 and 2",
                "temperature",
            ),
            (
                r#""temperature":2.01, "#,
                "temperature must be between 0 and 2",
                "temperature",
            ),
            (
                r#""top_p":0, "#,
                "top_p must be greater than 0 and at most 1",
                "top_p",
            ),
            (
                r#""top_p":1.5, "#,
                "top_p must be greater than 0 and at most 1",
                "top_p",
            ),
            (r#""top_p":[1], "#, "top_p must be a number", "top_p"),
            (
                r#""seed":-1, "#,
                "seed must be a non-negative integer",
                "seed",
            ),
            (r#""seed":1.5, "#, "seed must be an integer", "seed"),
            (r#""seed":"1", "#, "seed must be an integer", "seed"),
            (
                r#""stop":["a","b","c","d","e"], "#,
                "stop may hold at most 4 sequences",
                "stop",
            ),
            (
                r#""stop":3, "#,
                "stop must be a string or an array of strings",
                "stop",
            ),
            (
                r#""stop":["a",3], "#,
                "stop sequences must be strings",
                "stop[1]",
            ),
            (
                r#""max_tokens":0, "#,
                "max_tokens must be at least 1",
                "max_tokens",
            ),
            (
                r#""max_tokens":-5, "#,
                "max_tokens must be a non-negative integer",
                "max_tokens",
            ),
            (
                r#""max_tokens":1.5, "#,
                "max_tokens must be an integer",
                "max_tokens",
            ),
            (
                r#""max_tokens":"10", "#,
                "max_tokens must be an integer",
                "max_tokens",
            ),
            (
                r#""max_tokens":4294967296, "#,
                "max_tokens must be at most 4294967295",
                "max_tokens",
            ),
            (
                r#""max_completion_tokens":0, "#,
                "max_completion_tokens must be at least 1",
                "max_completion_tokens",
            ),
            (
                r#""n":2, "#,
                "n must be 1: only one choice is supported",
                "n",
            ),
            (
                r#""n":0, "#,
                "n must be 1: only one choice is supported",
                "n",
            ),
            (r#""n":true, "#, "n must be an integer", "n"),
            (r#""stream":"yes", "#, "stream must be a boolean", "stream"),
            (
                r#""stream_options":{"include_usage":true}, "#,
                "stream_options is only allowed when stream is true",
                "stream_options",
            ),
            (
                r#""stream":true, "stream_options":[], "#,
                "stream_options must be an object",
                "stream_options",
            ),
            (
                r#""stream":true, "stream_options":{"include_usage":1}, "#,
                "stream_options.include_usage must be a boolean",
                "stream_options.include_usage",
            ),
            (
                r#""temperature":1e400, "#,
                "invalid value for temperature: number out of range",
                "temperature",
            ),
            (
                r#""stop":"\udc00", "#,
                "invalid value for stop: lone leading surrogate in hex escape",
                "stop",
            ),
        ];
        for (field, message, param) in cases {
            let model = if field.starts_with("\"model\"") {
                ""
            } else {
                r#""model":"m", "#
            };
            let body = format!("{{{model}{field}{USER_HI}}}");
            assert_eq!(
                chat_error(body.as_bytes()),
                owned(message, Some(param)),
                "{body}"
            );
        }
        assert_eq!(
            completion_error(br#"{"model":"m","prompt":"p","best_of":3}"#),
            owned("best_of must be 1", Some("best_of"))
        );
        assert_eq!(
            chat_error(br#"{"messages":[{"role":"user","content":"hi"}]}"#),
            owned("model is required", Some("model"))
        );
    }

    #[test]
    fn message_errors() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "messages is required", "messages"),
            (r#","messages":null"#, "messages is required", "messages"),
            (
                r#","messages":"hi""#,
                "messages must be an array",
                "messages",
            ),
            (
                r#","messages":[]"#,
                "messages must not be empty",
                "messages",
            ),
            (
                r#","messages":["hi"]"#,
                "each message must be an object",
                "messages[0]",
            ),
            (
                r#","messages":[{"content":"hi"}]"#,
                "role is required",
                "messages[0].role",
            ),
            (
                r#","messages":[{"role":1,"content":"hi"}]"#,
                "role must be a string",
                "messages[0].role",
            ),
            (
                r#","messages":[{"role":"user","content":"a"},{"role":"robot","content":"hi"}]"#,
                "unknown role 'robot': expected system, developer, user, assistant or tool",
                "messages[1].role",
            ),
            (
                r#","messages":[{"role":"user"}]"#,
                "content is required",
                "messages[0].content",
            ),
            (
                r#","messages":[{"role":"system","content":null}]"#,
                "content is required",
                "messages[0].content",
            ),
            (
                r#","messages":[{"role":"user","content":5}]"#,
                "content must be a string or an array of content parts",
                "messages[0].content",
            ),
            (
                r#","messages":[{"role":"user","content":["hi"]}]"#,
                "each content part must be an object",
                "messages[0].content[0]",
            ),
            (
                r#","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image","image":{"url":"x"}}]}]"#,
                "unsupported content part type 'image': expected text, image_url, input_audio, audio_url or video_url",
                "messages[0].content[1].type",
            ),
            (
                r#","messages":[{"role":"user","content":[{"type":"image_url","image_url":"x"}]}]"#,
                "a part of type image_url needs the object image_url",
                "messages[0].content[0].image_url",
            ),
            (
                r#","messages":[{"role":"user","content":"a","tool_calls":[]}]"#,
                "only assistant messages may have tool_calls",
                "messages[0].tool_calls",
            ),
            (
                r#","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"arguments":"{}"}}]}]"#,
                "a tool call needs a function name",
                "messages[0].tool_calls[0].function.name",
            ),
            (
                r#","messages":[{"role":"tool","content":"42"}]"#,
                "a tool message needs the tool_call_id it answers",
                "messages[0].tool_call_id",
            ),
            (
                r#","messages":[{"role":"tool","content":"42","tool_call_id":7}]"#,
                "tool_call_id must be a string",
                "messages[0].tool_call_id",
            ),
            (
                r#","messages":[{"role":"user","content":"a"}],"tools":{}"#,
                "tools must be an array",
                "tools",
            ),
            (
                r#","messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{}}]"#,
                "a function tool needs a function name",
                "tools[0].function.name",
            ),
            (
                r#","messages":[{"role":"user","content":[{"text":"a"}]}]"#,
                "content part type must be a string",
                "messages[0].content[0].type",
            ),
            (
                r#","messages":[{"role":"user","content":[{"type":"text","text":null}]}]"#,
                "text part must have a string text",
                "messages[0].content[0].text",
            ),
        ];
        for (messages, message, param) in cases {
            let body = format!(r#"{{"model":"m"{messages}}}"#);
            assert_eq!(
                chat_error(body.as_bytes()),
                owned(message, Some(param)),
                "{body}"
            );
        }
        // Long client text is clipped in messages.
        let role = "r".repeat(100);
        let body = format!(r#"{{"model":"m","messages":[{{"role":"{role}","content":""}}]}}"#);
        let (message, _) = chat_error(body.as_bytes());
        assert!(
            message.starts_with(&format!("unknown role '{}...'", "r".repeat(64))),
            "{message}"
        );
    }

    #[test]
    fn prompt_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "prompt is required"),
            (r#","prompt":null"#, "prompt is required"),
            (
                r#","prompt":5"#,
                "prompt must be a string, an array of one string or an array of token ids",
            ),
            (
                r#","prompt":{}"#,
                "prompt must be a string, an array of one string or an array of token ids",
            ),
            (r#","prompt":[]"#, "prompt must not be empty"),
            (r#","prompt":[[]]"#, "prompt must not be empty"),
            (
                r#","prompt":["a","b"]"#,
                "batched prompts are not supported: send one prompt per request",
            ),
            (
                r#","prompt":[[1],[2]]"#,
                "batched prompts are not supported: send one prompt per request",
            ),
            (
                r#","prompt":[1,"a"]"#,
                "token ids must be integers between 0 and 4294967295",
            ),
            (
                r#","prompt":[-1]"#,
                "token ids must be integers between 0 and 4294967295",
            ),
            (
                r#","prompt":[4294967296]"#,
                "token ids must be integers between 0 and 4294967295",
            ),
            (
                r#","prompt":[1.5]"#,
                "token ids must be integers between 0 and 4294967295",
            ),
            (
                r#","prompt":[null]"#,
                "token ids must be integers between 0 and 4294967295",
            ),
        ];
        for (prompt, message) in cases {
            let body = format!(r#"{{"model":"m"{prompt}}}"#);
            assert_eq!(
                completion_error(body.as_bytes()),
                owned(message, Some("prompt")),
                "{body}"
            );
        }
    }

    #[test]
    fn error_rendering() {
        let e = parse_chat(br#"{"model":"m","messages":[]}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(RequestError::CODE, "invalid_request");
        assert_eq!(e.to_string(), "messages must not be empty (param messages)");
        assert_eq!(
            &e.to_body()[..],
            &br#"{"error":{"message":"messages must not be empty","type":"invalid_request_error","code":"invalid_request","param":"messages"}}"#[..]
        );
        let e = RequestError::new("bad", None);
        assert_eq!(e.to_string(), "bad");
        assert_eq!(
            &e.to_body()[..],
            &br#"{"error":{"message":"bad","type":"invalid_request_error","code":"invalid_request","param":null}}"#[..]
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const KEYS: [&str; 16] = [
        "model",
        "messages",
        "prompt",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "best_of",
        "stream",
        "stream_options",
        "x",
        "top_k",
        "",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_chat(&bytes);
            let _ = parse_completion(&bytes);
        }

        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            let text = serde_json::to_vec(&value).unwrap();
            let _ = parse_chat(&text);
            let _ = parse_completion(&text);
        }

        #[test]
        fn arbitrary_field_values_never_panic_and_extra_is_exact(
            key in proptest::sample::select(KEYS.to_vec()),
            value in json_value(),
            pretty in any::<bool>(),
        ) {
            let raw = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let key_json = serde_json::to_string(key).unwrap();
            let chat_body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":true,{key_json}: {raw} }}"#
            );
            let completion_body = format!(r#"{{"model":"m","prompt":"p","stream":true,{key_json}:{raw}}}"#);
            let chat_result = parse_chat(chat_body.as_bytes());
            let completion_result = parse_completion(completion_body.as_bytes());
            if ["x", "top_k", ""].contains(&key) {
                let expected = format!("{{{key_json}:{raw}}}");
                prop_assert_eq!(chat_result.unwrap().extra, Some(expected.clone()));
                prop_assert_eq!(completion_result.unwrap().extra, Some(expected));
            }
        }
    }
}
