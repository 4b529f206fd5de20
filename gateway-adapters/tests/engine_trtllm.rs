//! The trtllm-serve adapter over loopback HTTP against the simulator in
//! trtllm-serve mode. Wire formats are ENGINES.md §4 and TV-11..TV-13,
//! taken from `NVIDIA/TensorRT-LLM:tensorrt_llm/serve/openai_server.py@e7f7345e31e5`,
//! `serve/openai_protocol.py@54cf7be08a35`,
//! `serve/postprocess_handlers.py@7b437aaa73bf` and the 2026-08 build
//! (`tensorrt_llm/metrics/collector.py`).
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_trtllm {
    use std::sync::Arc;

    use gateway_adapters::engines::{OpenAiCompatBackend, UpstreamConfig, openai, trtllm};
    use gateway_core::testkit::conformance::{
        self, ConformanceConfig, ConformanceTarget, Instance, Scenario,
    };
    use gateway_core::{
        Backend, BackendRequest, ByteBound, CancelHandle, ChatMessage, EngineKind, FailureKind,
        FailurePhase, FinishReason, GenerateRequest, Health, Prompt, Usage,
    };

    use crate::support::kit::{chat, ms, run, text, wait_pressure, with_id};
    use gateway_sims::vllm::{Fault, SimEngine, SimOptions, VllmSim, text_of, trtllm_400};

    fn options() -> SimOptions {
        SimOptions {
            engine: SimEngine::TrtLlm,
            ..SimOptions::default()
        }
    }

    fn backend(sim: &VllmSim) -> OpenAiCompatBackend {
        let mut c = UpstreamConfig::new("trtllm-0", sim.url(), "m");
        c.scrape_interval = ms(5);
        trtllm::backend(c).unwrap()
    }

    // ------------------------------------------------------------ conformance

    struct Target;

    #[async_trait::async_trait]
    impl ConformanceTarget for Target {
        async fn instance(&self, scenario: Scenario) -> Option<Instance> {
            let o = crate::scenario_options!(
                scenario,
                SimOptions { ..options() },
                before: // trtllm-serve has no queue-full answer: its pre-stream
                // failures are all 400s.
                vec![Fault::Http {
                    status: 400,
                    body: trtllm_400("Generation failed: executor error"),
                    retry_after: None,
                }],
                after: // The kit sends text prompts: completions' error frame.
                vec![Fault::ErrorFrame {
                    after_tokens: 2,
                    code: 500,
                    kind: "server_error".into(),
                    message: "Internal error".into(),
                }],
            )?;
            let sim = VllmSim::start(o).await;
            Some(Instance {
                backend: Arc::new(backend(&sim)),
                probe: sim,
                model: "m".to_owned(),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trtllm_adapter_conforms_over_http() {
        let report = conformance::run(&Target, &ConformanceConfig::default()).await;
        println!("{report}");
        report.assert_passed();
    }

    // -------------------------------------------------------- request mapping

    /// ENGINES.md §4.2: `extra="forbid"`. Only allow-listed extras are
    /// sent; vLLM's `vllm_xargs`, Dynamo's `nvext` and unknown names are
    /// dropped (the simulator would answer 400 to any of them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_fields_trtllm_accepts_are_sent() {
        let sim = VllmSim::start(options()).await;
        let backend = backend(&sim);
        assert_eq!(backend.info().engine, EngineKind::TrtLlm);
        let mut request =
            GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("Hi")]), 100)
                .with_id("t-1");
        request.sampling.temperature = Some(0.5);
        request.extra = Some(
            r#"{"vllm_xargs":{"a":1},"top_k":20,"nvext":{"greed_sampling":true},"chat_template_kwargs":{"enable_thinking":false},"priority":3,"ignore_eos":true}"#
                .into(),
        );
        let mut request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        request.budget.max_completion_tokens = 7;
        let d = run(&backend, request).await.unwrap();
        assert_eq!((d.tokens(), d.finish()), (7, Some(FinishReason::Length)));
        let sent = sim.generations().pop().unwrap();
        assert_eq!(sent.path, "/v1/chat/completions");
        assert_eq!(
            sent.body,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":7,"temperature":0.5,"stream":true,"stream_options":{"include_usage":true},"chat_template_kwargs":{"enable_thinking":false},"ignore_eos":true,"top_k":20}"#
        );
        for absent in ["vllm_xargs", "nvext", "priority"] {
            assert!(!sent.body.contains(absent), "{absent} sent");
        }
        assert_eq!(sent.header("x-request-id"), Some("t-1"));
        // Completions: chat-only extras are dropped too.
        let mut request = GenerateRequest::new("m", Prompt::Text("Once upon".into()), 5);
        request.extra = Some(r#"{"documents":[{"t":"x"}],"min_tokens":2,"logprobs":1}"#.into());
        let d = run(
            &backend,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        assert_eq!(d.text(), text_of(5));
        let sent = sim.generations().pop().unwrap();
        assert_eq!(
            sent.body,
            r#"{"model":"m","prompt":"Once upon","max_tokens":5,"stream":true,"stream_options":{"include_usage":true},"min_tokens":2}"#
        );
        // Without extras nothing is added.
        run(&backend, chat(3)).await.unwrap();
        let sent = sim.generations().pop().unwrap();
        assert!(
            sent.body
                .ends_with(r#""stream_options":{"include_usage":true}}"#)
        );
    }

    /// OpenAI's own sampling fields, chat logprobs, the tool choice and the
    /// tools reach trtllm-serve (its request model has them); completions
    /// get the sampling fields but not `logprobs` (the 2025 build's 400).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openai_fields_trtllm_accepts_are_sent() {
        let sim = VllmSim::start(options()).await;
        let backend = backend(&sim);
        let mut request = GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("Hi")]), 4);
        request.extra = Some(
            r#"{"frequency_penalty":0.5,"presence_penalty":0.25,"logit_bias":{"7":-100},"user":"u1","logprobs":true,"top_logprobs":2,"tool_choice":"auto"}"#
                .into(),
        );
        request.tools =
            Some(r#"[{"type":"function","function":{"name":"f","parameters":{}}}]"#.into());
        run(
            &backend,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        let sent = sim.generations().pop().unwrap();
        assert!(
            sent.body.ends_with(r#""stream_options":{"include_usage":true},"frequency_penalty":0.5,"logit_bias":{"7":-100},"logprobs":true,"presence_penalty":0.25,"tool_choice":"auto","top_logprobs":2,"user":"u1","tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#),
            "{}",
            sent.body
        );
        let mut request = GenerateRequest::new("m", Prompt::Text("Once".into()), 3);
        request.extra = Some(r#"{"frequency_penalty":0.5,"user":"u1","logprobs":2}"#.into());
        run(
            &backend,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        let sent = sim.generations().pop().unwrap();
        assert!(
            sent.body.ends_with(
                r#""stream_options":{"include_usage":true},"frequency_penalty":0.5,"user":"u1"}"#
            ),
            "{}",
            sent.body
        );
    }

    /// TV-12: what happens when unknown fields do reach trtllm-serve (the
    /// generic adapter passes everything through): a flat 400.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_simulator_rejects_unknown_fields_like_trtllm() {
        let sim = VllmSim::start(options()).await;
        let generic = openai::backend(UpstreamConfig::new("g", sim.url(), "m")).unwrap();
        let mut request = GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("Hi")]), 8);
        request.extra = Some(r#"{"vllm_xargs":{}}"#.into());
        let e = run(
            &generic,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.kind(), e.phase(), e.upstream_status()),
            (
                FailureKind::InvalidRequest,
                FailurePhase::BeforeFirstToken,
                Some(400)
            )
        );
        assert!(e.message().contains("Extra inputs are not permitted"));
    }

    // ---------------------------------------------------------- stream quirks

    /// TV-11: a trailing space after the first frame, a new `id` per chunk,
    /// `reasoning_content:""`, usage on every chunk and in the final
    /// `choices:[]` chunk (a chat chunk on completions too), cached tokens
    /// always reported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_quirks_decode_to_clean_events() {
        let sim = VllmSim::start(SimOptions {
            natural_tokens: 9,
            cached_tokens: 2,
            script: vec![
                Fault::None,
                Fault::None,
                Fault::SplitFrames { bytes: 7 },
                Fault::SplitUtf8 { at_token: 1 },
            ],
            ..options()
        })
        .await;
        let backend = backend(&sim);
        let d = run(&backend, chat(64)).await.unwrap();
        let prompt = sim.generations()[0].prompt_tokens;
        assert_eq!(d.text(), text_of(9));
        assert_eq!((d.tokens(), d.finish()), (9, Some(FinishReason::Stop)));
        assert_eq!(
            d.usage(),
            Some(Usage::new(prompt, 9).with_cached(2).unwrap())
        );
        assert!(d.error.is_none());
        let d = run(&backend, text(64)).await.unwrap();
        assert_eq!(d.text(), text_of(9));
        assert_eq!(d.usage(), Some(Usage::new(3, 9).with_cached(2).unwrap()));
        let d = run(&backend, chat(64)).await.unwrap();
        assert_eq!(d.text(), text_of(9));
        let d = run(&backend, chat(4)).await.unwrap();
        assert_eq!(d.text(), format!("Helé🙂 wor{}", "ld"));
        assert_eq!((d.tokens(), d.finish()), (4, Some(FinishReason::Length)));
    }

    // ---------------------------------------------------------------- failures

    fn http(status: u16, body: String) -> Fault {
        Fault::Http {
            status,
            body,
            retry_after: None,
        }
    }

    fn frame(after_tokens: u32) -> Fault {
        Fault::ErrorFrame {
            after_tokens,
            code: 500,
            kind: "server_error".into(),
            message: "Internal error".into(),
        }
    }

    /// ENGINES.md §4.4, §9.3, TV-12, TV-13: every pre-stream exception is a
    /// 400 flat body (classified by its message); a failing chat stream is
    /// cut without `[DONE]`; a failing completions stream (2026-08) sends a
    /// `server_error` frame and `[DONE]`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_trtllm_failure_shape_is_typed_with_its_phase() {
        use FailureKind as K;
        let pre = FailurePhase::BeforeFirstToken;
        let post = FailurePhase::AfterFirstToken;
        // (fault, chat?, kind, phase, from start, upstream status)
        let cases: Vec<(Fault, bool, K, FailurePhase, bool, Option<u16>)> = vec![
            (
                http(
                    400,
                    trtllm_400(
                        "1 validation error for ChatCompletionRequest\nfoo\n  Extra inputs are not permitted",
                    ),
                ),
                true,
                K::InvalidRequest,
                pre,
                true,
                Some(400),
            ),
            (
                http(
                    400,
                    trtllm_400(
                        "The sum of prompt length (9000) and query length (0) should not exceed max_num_tokens (8192)",
                    ),
                ),
                true,
                K::ContextLengthExceeded,
                pre,
                true,
                Some(400),
            ),
            (
                http(
                    400,
                    trtllm_400("The prompt length (9000) exceeds max_seq_len (8192)"),
                ),
                false,
                K::ContextLengthExceeded,
                pre,
                true,
                Some(400),
            ),
            (
                http(
                    400,
                    trtllm_400("CUDA out of memory. Tried to allocate 2.00 GiB"),
                ),
                true,
                K::OutOfMemory,
                pre,
                true,
                Some(400),
            ),
            (
                http(
                    400,
                    trtllm_400("Generation failed: Encountered an error in forward function"),
                ),
                true,
                K::Internal,
                pre,
                true,
                Some(400),
            ),
            (frame(0), true, K::ProtocolViolation, pre, false, None),
            (frame(3), true, K::ProtocolViolation, post, false, None),
            (frame(0), false, K::Internal, pre, false, None),
            (frame(3), false, K::Internal, post, false, None),
            (
                Fault::Truncate { after_tokens: 2 },
                true,
                K::ProtocolViolation,
                post,
                false,
                None,
            ),
            (
                Fault::Reset { after_tokens: 2 },
                true,
                K::Connect,
                post,
                false,
                None,
            ),
        ];
        for (fault, is_chat, kind, phase, from_start, status) in cases {
            let sim = VllmSim::start(SimOptions {
                script: vec![fault.clone()],
                ..options()
            })
            .await;
            let backend = backend(&sim);
            let request = if is_chat { chat(64) } else { text(64) };
            let error = match run(&backend, request).await {
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
                "{fault:?} chat={is_chat}: {error}"
            );
            assert_eq!(error.upstream_status(), status, "{fault:?}");
            let d = run(&backend, chat(64)).await.unwrap();
            assert_eq!(d.finish(), Some(FinishReason::Stop), "{fault:?}");
        }
    }

    // ------------------------------------------------- pressure, health, config

    /// ENGINES.md §4.6/§9.1: `trtllm_num_requests_running`,
    /// `trtllm_num_requests_waiting`, `trtllm_kv_cache_utilization` from
    /// `/prometheus/metrics`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pressure_comes_from_trtllm_gauges() {
        let sim = VllmSim::start(SimOptions {
            slots: 1,
            natural_tokens: 10_000,
            token_interval: ms(5),
            ..options()
        })
        .await;
        let backend = backend(&sim);
        let a = backend
            .start(with_id("a", 10_000), CancelHandle::new())
            .await
            .unwrap();
        let b = backend
            .start(with_id("b", 10_000), CancelHandle::new())
            .await
            .unwrap();
        wait_pressure(&backend, |p| {
            p.running == 1 && p.waiting == 1 && p.kv_usage > 0.0
        })
        .await;
        assert!(sim.scrapes() > 0);
        drop((a, b));
        wait_pressure(&backend, |p| p.queued_and_running() == 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_is_get_health_and_config_builds_trtllm() {
        use gateway_adapters::config::BackendConfig;
        use gateway_adapters::engines::OnDisconnect;
        let sim = VllmSim::start(options()).await;
        assert_eq!(backend(&sim).health().await, Health::Healthy);
        let paths: Vec<String> = sim.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, vec!["/health"]);
        let entry = BackendConfig {
            name: "t0".into(),
            engine: EngineKind::TrtLlm,
            url: Some(sim.url()),
            model: "public".into(),
            served_model: "m".into(),
            max_concurrency: None,
            on_disconnect: OnDisconnect::Abort,
            api_key_env: None,
            metrics_url: None,
            ca_file: None,
            capabilities: None,
            context_window: None,
            sim: None,
        };
        let built = entry.remote_backend().unwrap();
        assert_eq!(built.info().engine, EngineKind::TrtLlm);
        let mut request = GenerateRequest::new("public", Prompt::Text("a".into()), 4);
        request.extra = Some(r#"{"vllm_xargs":{}}"#.into());
        let mut request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        request.served_model = "m".into();
        let d = run(&*built, request).await.unwrap();
        assert_eq!(d.tokens(), 4);
    }
}
