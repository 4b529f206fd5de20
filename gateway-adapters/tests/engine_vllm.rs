//! The vLLM and generic OpenAI adapters over loopback HTTP against the
//! wire-faithful vLLM simulator: conformance, request mapping, usage,
//! every failure shape, split streams, abort latency per phase, pressure.
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_vllm {
    use std::sync::Arc;
    use std::time::Duration;

    use gateway_adapters::engines::{self, OpenAiCompatBackend, UpstreamConfig, openai, vllm};
    use gateway_core::testkit::conformance::{
        self, ConformanceConfig, ConformanceTarget, Instance, Scenario,
    };
    use gateway_core::{
        Backend, BackendRequest, ByteBound, CancelHandle, CancelReason, ChatMessage, Delta,
        EngineKind, EnginePhase, FailureKind, FailurePhase, FinishReason, GenerateRequest, Health,
        Prompt, ReasoningField, Role, TokenEvent, ToolCall, Usage,
    };
    use tokio::time::Instant;

    use crate::support::kit::{chat, drain_error, first_delta, ms, run, text, with_id};
    use gateway_sims::vllm::{
        BUSY_503, CONTEXT_400, Fault, INVALID_400, SimOptions, SimSpec, VllmSim, text_of,
        token_text,
    };

    fn config(sim: &VllmSim) -> UpstreamConfig {
        let mut c = UpstreamConfig::new("vllm-0", sim.url(), "m");
        c.scrape_interval = ms(5);
        c
    }

    fn vllm_backend(sim: &VllmSim) -> OpenAiCompatBackend {
        vllm::backend(config(sim)).unwrap()
    }

    // ------------------------------------------------------------ conformance

    struct Target {
        generic: bool,
    }

    #[async_trait::async_trait]
    impl ConformanceTarget for Target {
        async fn instance(&self, scenario: Scenario) -> Option<Instance> {
            let options = crate::scenario_options!(
                scenario,
                SimOptions {
                    ..SimOptions::default()
                },
                before: vec![Fault::Http {
                    status: 503,
                    body: BUSY_503.to_owned(),
                    retry_after: None,
                }],
                after: vec![Fault::ErrorFrame {
                    after_tokens: 2,
                    code: 500,
                    kind: "InternalServerError".to_owned(),
                    message: "Internal server error".to_owned(),
                }],
                structured: |mut o: SimOptions| {
                    o.reasoning_tokens = 3;
                    o.tool_call = Some("get_weather".to_owned());
                    o.natural_tokens = 12;
                    Some(o)
                },
            )?;
            let sim = VllmSim::start(options).await;
            let backend = if self.generic {
                let mut c = config(&sim);
                c.metrics_url = Some(format!("{}/metrics", sim.url()));
                openai::backend(c).unwrap()
            } else {
                vllm_backend(&sim)
            };
            Some(Instance {
                backend: Arc::new(backend),
                probe: sim,
                model: "m".to_owned(),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vllm_adapter_conforms_over_http() {
        let report =
            conformance::run(&Target { generic: false }, &ConformanceConfig::default()).await;
        println!("{report}");
        report.assert_passed();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openai_adapter_conforms_over_http() {
        let report =
            conformance::run(&Target { generic: true }, &ConformanceConfig::default()).await;
        println!("{report}");
        report.assert_passed();
    }

    // ------------------------------------------------- output beyond text

    /// A chat request offered `get_weather`, as the gateway passes it on.
    fn tool_request(tool_choice: Option<&str>, extra: &str) -> GenerateRequest {
        let mut request = GenerateRequest::new(
            "m",
            Prompt::Chat(vec![
                ChatMessage::user("Weather in Paris?"),
                ChatMessage {
                    tool_calls: vec![ToolCall {
                        id: "call-1".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city": "Paris"}"#.into(),
                    }],
                    ..ChatMessage::new(Role::Assistant, "")
                },
                ChatMessage {
                    tool_call_id: Some("call-1".into()),
                    ..ChatMessage::new(Role::Tool, "18°C")
                },
            ]),
            20,
        );
        request.tools = Some(
            r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]"#
                .into(),
        );
        let choice = tool_choice.map_or(String::new(), |c| format!(r#""tool_choice":{c},"#));
        request.extra = Some(format!("{{{choice}{extra}}}").into());
        request
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reasoning_tool_calls_and_logprobs_come_as_typed_deltas() {
        let sim = VllmSim::start(SimOptions {
            reasoning_tokens: 2,
            natural_tokens: 6,
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let request = tool_request(
            Some(r#"{"type":"function","function":{"name":"get_weather"}}"#),
            r#""logprobs":true,"top_logprobs":2"#,
        );
        let d = run(
            &backend,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        // The tools go to the engine as written, the messages with their calls.
        let sent = sim.generations().pop().unwrap();
        assert!(
            sent.body.contains(r#""messages":[{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call-1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},{"role":"tool","content":"18°C","tool_call_id":"call-1"}]"#),
            "{}",
            sent.body
        );
        assert!(
            sent.body.ends_with(r#","tool_choice":{"type":"function","function":{"name":"get_weather"}},"logprobs":true,"top_logprobs":2,"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}"#),
            "{}",
            sent.body
        );
        let deltas: Vec<&Delta> = d
            .events
            .iter()
            .filter_map(|e| match e {
                TokenEvent::Delta(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(deltas.len(), 6, "{:?}", d.events);
        // Two tokens of reasoning, under vLLM's field name.
        for (i, delta) in deltas[..2].iter().enumerate() {
            assert_eq!(delta.reasoning, token_text(i as u32));
            assert_eq!(delta.reasoning_field, ReasoningField::Reasoning);
            assert_eq!((delta.text.as_str(), delta.tokens), ("", 1));
        }
        // Then the named call: its first fragment names it, the rest are
        // pieces of the arguments.
        assert_eq!(deltas[2].tool_calls.len(), 1);
        let first = &deltas[2].tool_calls[0];
        assert_eq!(
            (first.index, first.kind.as_deref(), first.name.as_deref()),
            (0, Some("function"), Some("get_weather"))
        );
        assert!(first.id.as_deref().unwrap().starts_with("chatcmpl-tool-"));
        let arguments: String = deltas[3..]
            .iter()
            .map(|d| d.tool_calls[0].arguments.as_str())
            .collect();
        assert_eq!(arguments, (3..6).map(token_text).collect::<String>());
        // One logprob entry per token, with its two alternatives.
        for (i, delta) in deltas.iter().enumerate() {
            assert_eq!(delta.logprobs.len(), 1);
            let lp = &delta.logprobs[0];
            assert_eq!(lp.logprob, -(i as f64 + 1.0) / 8.0);
            assert_eq!(lp.bytes.as_deref(), Some(token_text(i as u32).as_bytes()));
            let tops: Vec<&str> = lp.top_logprobs.iter().map(|t| t.token.as_str()).collect();
            assert_eq!(tops, [token_text(i as u32), "alt1"]);
        }
        // A named call ends with `stop`, as vLLM's does; 6 tokens charged.
        assert_eq!(d.finish(), Some(FinishReason::Stop));
        assert_eq!(d.tokens(), 6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completion_logprobs_keep_the_engines_order() {
        let sim = VllmSim::start(SimOptions {
            natural_tokens: 3,
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let mut request = GenerateRequest::new("m", Prompt::Text("Hi".into()), 10);
        request.extra = Some(r#"{"logprobs":2}"#.into());
        let d = run(
            &backend,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        let entries: Vec<(String, Vec<String>)> = d
            .events
            .iter()
            .filter_map(|e| match e {
                TokenEvent::Delta(d) => Some(d.logprobs.iter().map(|l| {
                    (
                        l.token.clone(),
                        l.top_logprobs.iter().map(|t| t.token.clone()).collect(),
                    )
                })),
                _ => None,
            })
            .flatten()
            .collect();
        let expected: Vec<(String, Vec<String>)> = (0..3)
            .map(|i| {
                let t = token_text(i).to_owned();
                (t.clone(), vec![t, "alt1".into(), "alt2".into()])
            })
            .collect();
        assert_eq!(entries, expected);
        assert_eq!(d.text(), text_of(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_auto_tool_call_finishes_with_tool_calls() {
        let sim = VllmSim::start(SimOptions {
            tool_call: Some("get_weather".into()),
            natural_tokens: 4,
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let d = run(
            &backend,
            BackendRequest::new(tool_request(None, ""), Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        assert_eq!(d.finish(), Some(FinishReason::ToolCalls));
        assert_eq!(d.text(), "");
        assert_eq!(d.tokens(), 4);
    }

    // -------------------------------------------------------- request mapping

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_request_maps_to_the_exact_upstream_body() {
        let sim = VllmSim::start(SimOptions {
            model: "served-m".into(),
            api_key: Some("sk-test".into()),
            ..SimOptions::default()
        })
        .await;
        let mut c = UpstreamConfig::new("vllm-0", format!("{}/v1/", sim.url()), "public-m");
        c.api_key = Some("sk-test".into());
        c.served_model = Some("served-m".into());
        let backend = vllm::backend(c).unwrap();
        assert_eq!(backend.info().models, vec!["public-m".to_owned()]);
        assert_eq!(backend.info().engine, EngineKind::Vllm);
        let mut request = GenerateRequest::new(
            "public-m",
            Prompt::Chat(vec![
                ChatMessage::system("Be brief."),
                ChatMessage::user("Hi"),
            ]),
            100,
        )
        .with_id("req-map-1");
        request.sampling.temperature = Some(0.5);
        request.sampling.stop = vec!["\n\n".into()];
        request.extra = Some(r#"{"top_k":20,"stream":false,"vllm_xargs":{"a":[1,"é"]}}"#.into());
        let mut request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        request.served_model = String::new(); // the backend's default applies
        request.budget.max_completion_tokens = 7;
        let d = run(&backend, request).await.unwrap();
        assert_eq!(d.finish(), Some(FinishReason::Length));
        assert_eq!(d.tokens(), 7);
        let sent = sim.generations().pop().unwrap();
        assert_eq!(sent.path, "/v1/chat/completions");
        assert_eq!(
            sent.body,
            r#"{"model":"served-m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":7,"temperature":0.5,"stop":["\n\n"],"stream":true,"stream_options":{"include_usage":true},"return_token_ids":true,"top_k":20,"vllm_xargs":{"a":[1,"é"]}}"#
        );
        assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
        assert_eq!(sent.header("x-request-id"), Some("req-map-1"));
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("accept"), Some("text/event-stream"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn text_and_token_prompts_go_to_completions() {
        let sim = VllmSim::start(SimOptions::default()).await;
        let backend = vllm_backend(&sim);
        let request = GenerateRequest::new("m", Prompt::Text("Once upon".into()), 5);
        let d = run(
            &backend,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        assert_eq!(d.text(), text_of(5));
        assert_eq!((d.tokens(), d.finish()), (5, Some(FinishReason::Length)));
        let request = GenerateRequest::new("m", Prompt::Tokens(vec![1, 2, 3]), 40);
        let d = run(
            &backend,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        assert_eq!((d.tokens(), d.finish()), (16, Some(FinishReason::Stop)));
        assert_eq!(d.usage(), Some(Usage::new(3, 16)));
        let sent = sim.generations();
        assert_eq!(sent[0].path, "/v1/completions");
        assert_eq!(
            sent[0].body,
            r#"{"model":"m","prompt":"Once upon","max_tokens":5,"stream":true,"stream_options":{"include_usage":true},"return_token_ids":true}"#
        );
        assert!(
            sent[1]
                .body
                .starts_with(r#"{"model":"m","prompt":[1,2,3],"max_tokens":40,"#)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usage_comes_from_the_usage_chunk_with_cached_tokens() {
        let sim = VllmSim::start(SimOptions {
            prompt_tokens_details: true,
            cached_tokens: 3,
            natural_tokens: 9,
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let d = run(&backend, chat(64)).await.unwrap();
        let prompt = sim.generations()[0].prompt_tokens;
        assert_eq!(
            d.usage(),
            Some(Usage::new(prompt, 9).with_cached(3).unwrap())
        );
        assert_eq!(d.text(), text_of(9));
        assert_eq!((d.tokens(), d.finish()), (9, Some(FinishReason::Stop)));
        // Started comes first, without prompt counts (vLLM tells them at the end).
        assert!(matches!(d.events[0], TokenEvent::Started(s) if s.prompt_tokens.is_none()));
        // Completions too.
        let request = GenerateRequest::new("m", Prompt::Text("a b c".into()), 64);
        let d = run(
            &backend,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        assert_eq!(d.usage(), Some(Usage::new(4, 9).with_cached(3).unwrap()));
    }

    /// vLLM streams a speculative step's accepted drafts in one chunk. The
    /// vLLM adapter asks for `return_token_ids`, so each chunk is counted
    /// by its ids; an engine that gives none (the generic OpenAI adapter
    /// does not ask) is counted one token per chunk, and the tokens its
    /// usage reports beyond that come as a last empty delta before the
    /// usage. Either way what is delivered (and charged) is the engine's
    /// count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn speculative_chunks_are_counted_to_the_engines_usage() {
        let spec = SimSpec {
            tokens_per_step: 3,
            draft_tokens: 3,
        };
        let sim = VllmSim::start(SimOptions {
            natural_tokens: 10,
            speculative: Some(spec),
            ..SimOptions::default()
        })
        .await;
        let steps = || {
            vec![
                text_of(3),
                text_of(6)[text_of(3).len()..].to_owned(),
                text_of(9)[text_of(6).len()..].to_owned(),
                text_of(10)[text_of(9).len()..].to_owned(),
            ]
        };
        // Four steps (3 + 3 + 3 + 1 tokens): by ids, each its own count;
        // without ids one counted each, then the six the chunks did not
        // show.
        let by_ids: Vec<(String, u32)> = steps().into_iter().zip([3, 3, 3, 1]).collect();
        let mut by_chunks: Vec<(String, u32)> = steps().into_iter().zip([1, 1, 1, 1]).collect();
        by_chunks.push((String::new(), 6));
        let generic = gateway_adapters::engines::openai::backend(config(&sim)).unwrap();
        for (backend, expected) in [(vllm_backend(&sim), by_ids), (generic, by_chunks)] {
            for request in [chat(64), text(64)] {
                let d = run(&backend, request).await.unwrap();
                let deltas: Vec<(String, u32)> = d
                    .events
                    .iter()
                    .filter_map(|e| match e {
                        TokenEvent::Delta(d) => Some((d.text.clone(), d.tokens)),
                        _ => None,
                    })
                    .collect();
                assert_eq!(deltas, expected);
                assert_eq!(spec.counts(10), (4, 12, 6));
                let prompt = sim.generations().last().unwrap().prompt_tokens;
                assert_eq!(
                    d.usage(),
                    Some(Usage::new(prompt, 10).with_speculative(12, 6).unwrap())
                );
                assert_eq!((d.tokens(), d.finish()), (10, Some(FinishReason::Stop)));
            }
        }
        // Capped at max_tokens: 4 tokens, two steps (3 + 1).
        let d = run(&vllm_backend(&sim), chat(4)).await.unwrap();
        assert_eq!((d.text(), d.tokens()), (text_of(4), 4));
        assert_eq!(d.usage().map(|u| (u.drafted(), u.accepted())), Some((6, 2)));
    }

    // ---------------------------------------------------------------- failures

    fn http(status: u16, body: &str) -> Fault {
        Fault::Http {
            status,
            body: body.to_owned(),
            retry_after: None,
        }
    }

    fn frame(after_tokens: u32, code: u16, kind: &str) -> Fault {
        Fault::ErrorFrame {
            after_tokens,
            code,
            kind: kind.to_owned(),
            message: "Internal server error".to_owned(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_failure_shape_is_typed_with_its_phase() {
        use FailureKind as K;
        let pre = FailurePhase::BeforeFirstToken;
        let post = FailurePhase::AfterFirstToken;
        // (fault, kind, phase, from start, upstream status)
        let cases: Vec<(Fault, K, FailurePhase, bool, Option<u16>)> = vec![
            (
                http(400, CONTEXT_400),
                K::ContextLengthExceeded,
                pre,
                true,
                Some(400),
            ),
            (
                http(400, INVALID_400),
                K::InvalidRequest,
                pre,
                true,
                Some(400),
            ),
            (
                http(401, r#"{"error":"Unauthorized"}"#),
                K::Unauthorized,
                pre,
                true,
                Some(401),
            ),
            (http(403, ""), K::Unauthorized, pre, true, Some(403)),
            (
                http(404, &gateway_sims::vllm::not_found_404("m")),
                K::ModelNotFound,
                pre,
                true,
                Some(404),
            ),
            (http(429, ""), K::Overloaded, pre, true, Some(429)),
            (http(503, BUSY_503), K::Overloaded, pre, true, Some(503)),
            (
                http(
                    529,
                    r#"{"message":"Service temporarily overloaded","type":"UnknownError","code":529}"#,
                ),
                K::Overloaded,
                pre,
                true,
                Some(529),
            ),
            (http(500, ""), K::Internal, pre, true, Some(500)),
            (
                http(
                    501,
                    r#"{"error":{"message":"x","type":"NotImplementedError","param":null,"code":501}}"#,
                ),
                K::UpstreamStatus,
                pre,
                true,
                Some(501),
            ),
            (
                frame(0, 503, "Service Unavailable"),
                K::Overloaded,
                pre,
                false,
                None,
            ),
            (
                frame(0, 500, "InternalServerError"),
                K::Internal,
                pre,
                false,
                None,
            ),
            (
                frame(2, 500, "InternalServerError"),
                K::Internal,
                post,
                false,
                None,
            ),
            (
                frame(2, 400, "BadRequestError"),
                K::InvalidRequest,
                post,
                false,
                None,
            ),
            (
                Fault::Malformed { after_tokens: 0 },
                K::ProtocolViolation,
                pre,
                false,
                None,
            ),
            (
                Fault::Malformed { after_tokens: 3 },
                K::ProtocolViolation,
                post,
                false,
                None,
            ),
            (
                Fault::Truncate { after_tokens: 0 },
                K::ProtocolViolation,
                pre,
                false,
                None,
            ),
            (
                Fault::Truncate { after_tokens: 2 },
                K::ProtocolViolation,
                post,
                false,
                None,
            ),
            (
                Fault::Reset { after_tokens: 0 },
                K::Connect,
                pre,
                false,
                None,
            ),
            (
                Fault::Reset { after_tokens: 2 },
                K::Connect,
                post,
                false,
                None,
            ),
        ];
        for (fault, kind, phase, from_start, status) in cases {
            let sim = VllmSim::start(SimOptions {
                script: vec![fault.clone()],
                ..SimOptions::default()
            })
            .await;
            let backend = vllm_backend(&sim);
            let error = match run(&backend, chat(64)).await {
                Err(e) => {
                    assert!(from_start, "{fault:?}: start failed: {e}");
                    e
                }
                Ok(d) => {
                    assert!(!from_start, "{fault:?}: start succeeded");
                    let tokens = d.tokens();
                    let e = d
                        .error
                        .unwrap_or_else(|| panic!("{fault:?}: no error: {:?}", d.events));
                    assert_eq!(tokens > 0, phase == post, "{fault:?}");
                    e
                }
            };
            assert_eq!(
                (error.kind(), error.phase()),
                (kind, phase),
                "{fault:?}: {error}"
            );
            assert_eq!(error.upstream_status(), status, "{fault:?}");
            // The backend still serves the next request.
            let d = run(&backend, chat(64)).await.unwrap();
            assert_eq!(d.finish(), Some(FinishReason::Stop), "{fault:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overload_carries_retry_after_and_marks_pressure() {
        let sim = VllmSim::start(SimOptions {
            script: vec![Fault::Http {
                status: 503,
                body: BUSY_503.to_owned(),
                retry_after: Some(2),
            }],
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let e = run(&backend, chat(8)).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::Overloaded);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert!(e.message().contains("currently busy"), "{}", e.message());
        assert!(backend.pressure().overloaded);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_model_and_missing_key_are_typed() {
        let sim = VllmSim::start(SimOptions {
            api_key: Some("right".into()),
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let e = run(&backend, chat(8)).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::Unauthorized);
        let mut c = config(&sim);
        c.api_key = Some("right".into());
        c.served_model = Some("nope".into());
        let backend = vllm::backend(c).unwrap();
        let mut request = chat(8);
        request.served_model = String::new();
        let e = run(&backend, request).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::ModelNotFound);
        assert!(
            e.message().contains("`nope` does not exist"),
            "{}",
            e.message()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_refused_is_connect_before_the_first_token() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let backend = vllm::backend(UpstreamConfig::new("dead", url, "m")).unwrap();
        let e = run(&backend, chat(8)).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::Connect, FailurePhase::BeforeFirstToken)
        );
        assert!(!backend.health().await.is_healthy());
    }

    // ------------------------------------------------------------ split input

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_utf8_and_split_frames_decode_exactly() {
        let sim = VllmSim::start(SimOptions {
            natural_tokens: 6,
            script: vec![
                Fault::SplitUtf8 { at_token: 2 },
                Fault::SplitFrames { bytes: 5 },
            ],
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let d = run(&backend, chat(64)).await.unwrap();
        let deltas: Vec<&str> = d
            .events
            .iter()
            .filter_map(|e| match e {
                TokenEvent::Delta(delta) => Some(delta.text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas, vec!["Hel", "lo", "é🙂", "ld", ",", " é"]);
        assert!(!d.text().contains('\u{fffd}'));
        assert_eq!((d.tokens(), d.finish()), (6, Some(FinishReason::Stop)));
        let d = run(&backend, chat(64)).await.unwrap();
        assert_eq!(d.text(), text_of(6));
        assert_eq!(d.usage().map(|u| u.completion()), Some(6));
    }

    // ------------------------------------------------------- aborts per phase

    /// Waits until the simulator sees request `id` in `phase`.
    async fn reach(sim: &VllmSim, id: &str, phase: EnginePhase) {
        let until = Instant::now() + Duration::from_secs(5);
        while sim.phase_now(id) != Some(phase) {
            assert!(Instant::now() < until, "{id} never reached {phase}");
            tokio::time::sleep(ms(1)).await;
        }
    }

    /// Waits for the simulator's abort of `id` and returns how long after
    /// `since` it noticed it.
    async fn abort_seen(sim: &VllmSim, id: &str, phase: EnginePhase, since: Instant) -> Duration {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(record) = sim.abort_log().into_iter().find(|r| r.id == id) {
                assert_eq!(record.phase, phase, "{id}");
                return record.at.saturating_duration_since(since);
            }
            assert!(Instant::now() < until, "{id}: no abort seen");
            tokio::time::sleep(ms(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engine_sees_each_abort_within_50ms() {
        let sim = VllmSim::start(SimOptions {
            slots: 1,
            first_prefill: Some(Duration::from_secs(30)),
            natural_tokens: 10_000,
            token_interval: ms(10),
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        // Prefill: the first request holds the only slot in a long prefill.
        let prefill_cancel = CancelHandle::new();
        let mut prefill = backend
            .start(with_id("p", 100), prefill_cancel.clone())
            .await
            .unwrap();
        reach(&sim, "p", EnginePhase::Prefill).await;
        // Queued: the second waits for the slot.
        let queued_cancel = CancelHandle::new();
        let mut queued = backend
            .start(with_id("q", 100), queued_cancel.clone())
            .await
            .unwrap();
        reach(&sim, "q", EnginePhase::Queued).await;
        assert!(queued_cancel.cancel(CancelReason::ClientGone));
        let (latency_q, e) = tokio::join!(
            abort_seen(
                &sim,
                "q",
                EnginePhase::Queued,
                queued_cancel.canceled_at().unwrap(),
            ),
            drain_error(&mut queued)
        );
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::Canceled, FailurePhase::BeforeFirstToken)
        );
        assert!(prefill_cancel.cancel(CancelReason::Timeout));
        let (latency_p, e) = tokio::join!(
            abort_seen(
                &sim,
                "p",
                EnginePhase::Prefill,
                prefill_cancel.canceled_at().unwrap(),
            ),
            drain_error(&mut prefill)
        );
        assert_eq!(e.kind(), FailureKind::Canceled);
        // Decode, by cancel, by dropping the stream, by abort(id).
        let decode_cancel = CancelHandle::new();
        let mut decode = backend
            .start(with_id("d", 10_000), decode_cancel.clone())
            .await
            .unwrap();
        first_delta(&mut decode).await;
        decode_cancel.cancel(CancelReason::Budget);
        let (latency_d, e) = tokio::join!(
            abort_seen(
                &sim,
                "d",
                EnginePhase::Decode,
                decode_cancel.canceled_at().unwrap(),
            ),
            drain_error(&mut decode)
        );
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::Canceled, FailurePhase::AfterFirstToken)
        );

        let mut dropped = backend
            .start(with_id("x", 10_000), CancelHandle::new())
            .await
            .unwrap();
        first_delta(&mut dropped).await;
        let t0 = Instant::now();
        drop(dropped);
        let latency_drop = abort_seen(&sim, "x", EnginePhase::Decode, t0).await;

        assert!(!backend.abort(&"nobody".into()).await.unwrap());
        let mut aborted = backend
            .start(with_id("a", 10_000), CancelHandle::new())
            .await
            .unwrap();
        first_delta(&mut aborted).await;
        let t0 = Instant::now();
        assert!(backend.abort(&"a".into()).await.unwrap());
        let (latency_abort, e) = tokio::join!(
            abort_seen(&sim, "a", EnginePhase::Decode, t0),
            drain_error(&mut aborted)
        );
        assert_eq!(e.kind(), FailureKind::Canceled);
        assert!(!backend.abort(&"a".into()).await.unwrap());

        let latencies = [latency_q, latency_p, latency_d, latency_drop, latency_abort];
        println!("abort latencies (queued, prefill, decode, drop, abort): {latencies:?}");
        for latency in latencies {
            assert!(latency < ms(50), "{latencies:?}");
        }
        let aborts = sim.abort_counts();
        assert_eq!((aborts.queued, aborts.prefill, aborts.decode), (1, 1, 3));
        assert_eq!(backend.pressure().inflight, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_deadline_ends_the_stream_with_total_timeout() {
        let sim = VllmSim::start(SimOptions {
            natural_tokens: 10_000,
            token_interval: ms(10),
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let mut request = chat(10_000);
        request.budget.deadline = Some(Instant::now() + ms(100));
        let d = run(&backend, request).await.unwrap();
        let e = d.error.unwrap();
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::TotalTimeout, FailurePhase::AfterFirstToken)
        );
        tokio::time::sleep(ms(50)).await;
        assert_eq!(sim.abort_counts().decode, 1);
    }

    // ---------------------------------------------------------------- pressure

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pressure_follows_the_simulator_and_is_read_without_awaiting() {
        let sim = VllmSim::start(SimOptions {
            slots: 1,
            natural_tokens: 10_000,
            token_interval: ms(5),
            ..SimOptions::default()
        })
        .await;
        let mut c = config(&sim);
        c.max_concurrency = Some(8);
        let backend = vllm::backend(c).unwrap();
        let idle = backend.pressure();
        assert_eq!((idle.running, idle.waiting, idle.limit), (0, 0, Some(8)));
        let a = backend
            .start(with_id("a", 10_000), CancelHandle::new())
            .await
            .unwrap();
        let b = backend
            .start(with_id("b", 10_000), CancelHandle::new())
            .await
            .unwrap();
        assert_eq!(backend.pressure().inflight, 2);
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let p = backend.pressure();
            if p.running == 1 && p.waiting == 1 && p.kv_usage > 0.0 {
                assert!(p.updated_at.is_some());
                break;
            }
            assert!(
                Instant::now() < until,
                "pressure never showed the load: {p:?}"
            );
            tokio::time::sleep(ms(1)).await;
        }
        drop((a, b));
        let until = Instant::now() + Duration::from_secs(2);
        while backend.pressure().queued_and_running() != 0 || backend.pressure().inflight != 0 {
            assert!(
                Instant::now() < until,
                "pressure stuck: {:?}",
                backend.pressure()
            );
            tokio::time::sleep(ms(1)).await;
        }
        // Scrapes keep coming: `updated_at` moves.
        let first = backend.pressure().updated_at.unwrap();
        tokio::time::sleep(ms(30)).await;
        assert!(backend.pressure().updated_at.unwrap() > first);
        // Dropping the backend stops its scraper.
        drop(backend);
        tokio::time::sleep(ms(20)).await;
        let scrapes = sim.scrapes();
        tokio::time::sleep(ms(50)).await;
        assert_eq!(sim.scrapes(), scrapes);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_kv_metric_name_is_read_too() {
        let sim = VllmSim::start(SimOptions {
            old_kv_metric: true,
            natural_tokens: 10_000,
            ..SimOptions::default()
        })
        .await;
        let backend = vllm_backend(&sim);
        let _a = backend
            .start(chat(10_000), CancelHandle::new())
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while backend.pressure().kv_usage <= 0.0 {
            assert!(Instant::now() < until, "{:?}", backend.pressure());
            tokio::time::sleep(ms(2)).await;
        }
    }

    // ------------------------------------------------------- health and config

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_checks_per_engine() {
        let sim = VllmSim::start(SimOptions::default()).await;
        assert_eq!(vllm_backend(&sim).health().await, Health::Healthy);
        assert_eq!(
            openai::backend(config(&sim)).unwrap().health().await,
            Health::Healthy
        );
        let mut c = config(&sim);
        c.served_model = Some("other".into());
        let other = openai::backend(c).unwrap();
        assert!(!other.health().await.is_healthy());
        let paths: Vec<String> = sim.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, vec!["/health", "/v1/models", "/v1/models"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backends_build_from_config_entries() {
        use gateway_adapters::config::BackendConfig;
        use gateway_adapters::engines::OnDisconnect;
        let sim = VllmSim::start(SimOptions {
            model: "served".into(),
            api_key: Some("k-123".into()),
            natural_tokens: 10_000,
            token_interval: ms(10),
            ..SimOptions::default()
        })
        .await;
        let mut entry = BackendConfig {
            name: "b0".into(),
            engine: EngineKind::Vllm,
            url: Some(sim.url()),
            model: "public".into(),
            served_model: "served".into(),
            max_concurrency: std::num::NonZeroU32::new(3),
            on_disconnect: OnDisconnect::Abort,
            api_key_env: Some("GATEWAY_TEST_NO_SUCH_VARIABLE_SET".into()),
            metrics_url: None,
            ca_file: None,
            capabilities: None,
            context_window: None,
            sim: None,
        };
        assert_eq!(
            entry.remote_backend().unwrap_err(),
            engines::EngineError::MissingApiKey("GATEWAY_TEST_NO_SUCH_VARIABLE_SET".into())
        );
        entry.api_key_env = Some("PATH".into());
        let wrong_key = entry.remote_backend().unwrap();
        assert_eq!(
            run(&*wrong_key, chat(4)).await.unwrap_err().kind(),
            FailureKind::Unauthorized
        );
        entry.api_key_env = None;
        // A sim is built in-process, not at a URL.
        entry.engine = EngineKind::Sim;
        assert_eq!(
            entry.remote_backend().unwrap_err(),
            engines::EngineError::UnsupportedEngine(EngineKind::Sim)
        );
        entry.engine = EngineKind::OpenAi;
        entry.metrics_url = Some(format!("{}/metrics", sim.url()));
        assert_eq!(
            entry.upstream().unwrap().served_model.as_deref(),
            Some("served")
        );
        let generic = entry.remote_backend().unwrap();
        assert_eq!(generic.info().engine, EngineKind::OpenAi);
        assert_eq!(generic.info().models, vec!["public".to_owned()]);
        assert_eq!(generic.pressure().limit, Some(3));
        // Its scraper reads the gauges of the served model's name.
        let mut c = UpstreamConfig::new("direct", sim.url(), "public");
        c.served_model = Some("served".into());
        c.api_key = Some("k-123".into());
        let direct = vllm::backend(c).unwrap();
        let mut request = chat(10_000);
        request.served_model = "served".into();
        let _running = direct.start(request, CancelHandle::new()).await.unwrap();
        let until = Instant::now() + Duration::from_secs(3);
        while generic.pressure().running != 1 {
            assert!(Instant::now() < until, "{:?}", generic.pressure());
            tokio::time::sleep(ms(5)).await;
        }
    }
}
