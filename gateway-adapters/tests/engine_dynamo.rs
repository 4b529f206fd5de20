//! The Dynamo frontend adapter over loopback HTTP against the simulator in
//! Dynamo mode. Wire formats are ENGINES.md §7 and TV-18/TV-19, taken from
//! `ai-dynamo/dynamo:lib/llm/src/http/service/error.rs@43a0bb22fbd0`,
//! `disconnect.rs` (2026-08; older `disconnect.rs@02acc07eff50`),
//! `openai.rs`, `service_v2.rs`, `busy_threshold.rs@c54c6d44158a` and
//! `lib/runtime/src/metrics/prometheus_names.rs` (seen 2026-08).
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_dynamo {
    use std::sync::Arc;
    use std::time::Duration;

    use gateway_adapters::engines::{OpenAiCompatBackend, UpstreamConfig, dynamo};
    use gateway_core::testkit::conformance::{
        self, ConformanceConfig, ConformanceTarget, Instance, Scenario,
    };
    use gateway_core::{
        Backend, BackendRequest, ByteBound, CancelHandle, ChatMessage, EngineKind, FailureKind,
        FailurePhase, FinishReason, GenerateRequest, Health, Prompt,
    };

    use crate::support::kit::{chat, ms, run, text, wait_pressure, with_id};
    use gateway_sims::vllm::{
        DYNAMO_503, DYNAMO_529, Fault, SimEngine, SimOptions, VllmSim, text_of, token_text,
    };

    fn options() -> SimOptions {
        SimOptions {
            engine: SimEngine::Dynamo,
            ..SimOptions::default()
        }
    }

    fn config(sim: &VllmSim) -> UpstreamConfig {
        let mut c = UpstreamConfig::new("dynamo-0", sim.url(), "m");
        c.scrape_interval = ms(5);
        c
    }

    fn backend(sim: &VllmSim) -> OpenAiCompatBackend {
        dynamo::backend(config(sim)).unwrap()
    }

    // ------------------------------------------------------------ conformance

    struct Target;

    #[async_trait::async_trait]
    impl ConformanceTarget for Target {
        async fn instance(&self, scenario: Scenario) -> Option<Instance> {
            let o = crate::scenario_options!(
                scenario,
                SimOptions { ..options() },
                before: vec![Fault::Http {
                    status: 529,
                    body: DYNAMO_529.to_owned(),
                    retry_after: Some(1),
                }],
                after: vec![Fault::ErrorFrame {
                    after_tokens: 2,
                    code: 500,
                    kind: "internal_server_error".into(),
                    message: "Internal server error".into(),
                }],
                structured: |mut o: SimOptions| {
                    o.reasoning_tokens = 3;
                    o.tool_call = Some("get_weather".to_owned());
                    o.natural_tokens = 12;
                    Some(o)
                },
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
    async fn dynamo_adapter_conforms_over_http() {
        let report = conformance::run(&Target, &ConformanceConfig::default()).await;
        println!("{report}");
        report.assert_passed();
    }

    // -------------------------------------------------------- request mapping

    /// ENGINES.md §7.2: `nvext` (and every other extra field) is passed
    /// through byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nvext_and_extras_pass_through() {
        let sim = VllmSim::start(options()).await;
        let backend = backend(&sim);
        assert_eq!(backend.info().engine, EngineKind::Dynamo);
        let mut request =
            GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("Hi")]), 100)
                .with_id("dyn-1");
        request.extra = Some(
            r#"{"nvext":{"annotations":["request_id"],"backend_instance_id":7,"agent_hints":{"priority":1}},"top_k":5}"#
                .into(),
        );
        let mut request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        request.budget.max_completion_tokens = 6;
        let d = run(&backend, request).await.unwrap();
        assert_eq!(d.text(), text_of(6));
        let sent = sim.generations().pop().unwrap();
        assert_eq!(sent.path, "/v1/chat/completions");
        assert_eq!(
            sent.body,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":6,"stream":true,"stream_options":{"include_usage":true},"nvext":{"annotations":["request_id"],"backend_instance_id":7,"agent_hints":{"priority":1}},"top_k":5}"#
        );
        assert_eq!(sent.header("x-request-id"), Some("dyn-1"));
    }

    // ---------------------------------------------------------------- failures

    fn http(status: u16, body: &str) -> Fault {
        Fault::Http {
            status,
            body: body.to_owned(),
            retry_after: None,
        }
    }

    fn frame(after_tokens: u32, code: u16, kind: &str, message: &str) -> Fault {
        Fault::ErrorFrame {
            after_tokens,
            code,
            kind: kind.to_owned(),
            message: message.to_owned(),
        }
    }

    /// ENGINES.md §7.3, §9.3, TV-18, TV-19: flat bodies, 529/503 overload,
    /// 404 `Model not found`, the 2026 error frame + `[DONE]` and the older
    /// `event: error`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_dynamo_failure_shape_is_typed_with_its_phase() {
        use FailureKind as K;
        let pre = FailurePhase::BeforeFirstToken;
        let post = FailurePhase::AfterFirstToken;
        // (engine, fault, kind, phase, from start, upstream status)
        let new = SimEngine::Dynamo;
        let old = SimEngine::DynamoOld;
        let cases: Vec<(SimEngine, Fault, K, FailurePhase, bool, Option<u16>)> = vec![
            (
                new,
                http(529, DYNAMO_529),
                K::Overloaded,
                pre,
                true,
                Some(529),
            ),
            (
                old,
                http(503, DYNAMO_503),
                K::Overloaded,
                pre,
                true,
                Some(503),
            ),
            (
                new,
                http(
                    503,
                    r#"{"message":"Model temporarily unavailable","type":"Service Unavailable","code":503}"#,
                ),
                K::Overloaded,
                pre,
                true,
                Some(503),
            ),
            (
                new,
                http(
                    400,
                    r#"{"message":"max_tokens must be at least 1","type":"Bad Request","code":400}"#,
                ),
                K::InvalidRequest,
                pre,
                true,
                Some(400),
            ),
            (
                new,
                http(
                    500,
                    r#"{"message":"Internal server error","type":"Internal Server Error","code":500}"#,
                ),
                K::Internal,
                pre,
                true,
                Some(500),
            ),
            (
                old,
                http(404, r#"{"error":"Model not found"}"#),
                K::ModelNotFound,
                pre,
                true,
                Some(404),
            ),
            (
                new,
                frame(
                    0,
                    503,
                    "service_unavailable",
                    "Service temporarily unavailable",
                ),
                K::Overloaded,
                pre,
                false,
                None,
            ),
            (
                new,
                frame(2, 500, "internal_server_error", "Internal server error"),
                K::Internal,
                post,
                false,
                None,
            ),
            (
                old,
                frame(2, 500, "internal_server_error", "Internal server error"),
                K::Internal,
                post,
                false,
                None,
            ),
            (
                old,
                frame(0, 500, "internal_server_error", "Internal server error"),
                K::Internal,
                pre,
                false,
                None,
            ),
            (
                new,
                Fault::Reset { after_tokens: 2 },
                K::Connect,
                post,
                false,
                None,
            ),
        ];
        for (engine, fault, kind, phase, from_start, status) in cases {
            let sim = VllmSim::start(SimOptions {
                engine,
                script: vec![fault.clone()],
                ..SimOptions::default()
            })
            .await;
            let backend = backend(&sim);
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
                "{engine:?} {fault:?}: {error}"
            );
            assert_eq!(error.upstream_status(), status, "{fault:?}");
            let d = run(&backend, chat(64)).await.unwrap();
            assert_eq!(d.finish(), Some(FinishReason::Stop), "{fault:?}");
        }
    }

    /// TV-18: the simulator's own queue-full answer is 529 (503 for the
    /// older build), with the `Retry-After` kept and pressure marked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_full_is_529_overloaded_with_retry_after() {
        let sim = VllmSim::start(SimOptions {
            slots: 1,
            max_waiting: Some(1),
            natural_tokens: 10_000,
            token_interval: ms(5),
            ..options()
        })
        .await;
        let first = backend(&sim);
        let _a = first
            .start(with_id("a", 10_000), CancelHandle::new())
            .await
            .unwrap();
        // `a` holds the slot before `b` arrives: the simulator answers the
        // head before taking a slot, so a `b` sent while `a` still waits
        // would find the queue full.
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while sim.gauges().0 < 1 {
            assert!(tokio::time::Instant::now() < until);
            tokio::time::sleep(ms(2)).await;
        }
        let _b = first
            .start(with_id("b", 10_000), CancelHandle::new())
            .await
            .unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while sim.gauges().1 < 1 {
            assert!(tokio::time::Instant::now() < until);
            tokio::time::sleep(ms(2)).await;
        }
        let e = run(&first, chat(8)).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.phase(), e.upstream_status()),
            (
                FailureKind::Overloaded,
                FailurePhase::BeforeFirstToken,
                Some(529)
            )
        );
        assert!(e.message().contains("temporarily overloaded"), "{e}");
        assert!(first.pressure().overloaded);

        let sim = VllmSim::start(SimOptions {
            script: vec![Fault::Http {
                status: 529,
                body: DYNAMO_529.to_owned(),
                retry_after: Some(4),
            }],
            ..options()
        })
        .await;
        let second = backend(&sim);
        let e = run(&second, chat(8)).await.unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
    }

    // ------------------------------------------------- pressure, health, config

    /// ENGINES.md §7.5: `dynamo_frontend_inflight_requests` (which counts
    /// queued requests too) and `dynamo_frontend_queued_requests`, labelled
    /// `model`; another model's series is ignored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pressure_comes_from_frontend_gauges() {
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
        let p = wait_pressure(&backend, |p| p.running == 1 && p.waiting == 1).await;
        assert_eq!(p.kv_usage, 0.0);
        drop((a, b));
        wait_pressure(&backend, |p| p.queued_and_running() == 0).await;
    }

    /// Readiness is the served model in `/v1/models`: a real 1.6.1
    /// frontend answers `/health` 200 "healthy" while no worker serves the
    /// model (requests then get an empty 404).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_is_the_model_in_v1_models_and_config_builds_dynamo() {
        use gateway_adapters::config::BackendConfig;
        use gateway_adapters::engines::OnDisconnect;
        let sim = VllmSim::start(options()).await;
        assert_eq!(backend(&sim).health().await, Health::Healthy);
        let paths: Vec<String> = sim.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, vec!["/v1/models"]);
        // A frontend whose workers serve another model only.
        let other = VllmSim::start(SimOptions {
            model: "other".into(),
            ..options()
        })
        .await;
        assert_eq!(
            backend(&other).health().await,
            Health::Unhealthy("the engine does not list model `m`".into())
        );
        let entry = BackendConfig {
            name: "d0".into(),
            engine: EngineKind::Dynamo,
            url: Some(sim.url()),
            model: "m".into(),
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
        assert_eq!(built.info().engine, EngineKind::Dynamo);
        assert_eq!(run(&*built, chat(3)).await.unwrap().tokens(), 3);
    }

    // ------------------------------------------------- the 1.6.1 wire

    /// ai-dynamo 1.6.1's chat stream has no role-only chunk and sends the
    /// finish reason in a chunk of its own with an empty delta; its usage
    /// chunk always has `prompt_tokens_details`. The adapter reads every
    /// token once, the finish and the engine's usage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dynamo_chat_stream_is_read_exactly() {
        let sim = VllmSim::start(SimOptions {
            natural_tokens: 16,
            cached_tokens: 2,
            ..options()
        })
        .await;
        let backend = backend(&sim);
        let d = run(&backend, chat(5)).await.unwrap();
        assert!(d.error.is_none(), "{:?}", d.error);
        assert_eq!(
            d.deltas(),
            (0..5).map(|i| token_text(i).to_owned()).collect::<Vec<_>>()
        );
        assert_eq!(d.tokens(), 5);
        assert_eq!(d.finish(), Some(FinishReason::Length));
        let usage = d.usage().unwrap();
        let prompt = sim.generations().pop().unwrap().prompt_tokens;
        assert_eq!(
            (usage.prompt(), usage.cached(), usage.completion()),
            (prompt, 2, 5)
        );
        // A natural end: `stop` in the finish chunk.
        let d = run(&backend, chat(64)).await.unwrap();
        assert_eq!((d.tokens(), d.finish()), (16, Some(FinishReason::Stop)));
        assert_eq!(d.text(), text_of(16));
    }

    /// Completions: the finish chunk's empty `text` is no token, and
    /// `"usage":null` on every chunk is no usage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dynamo_completion_stream_is_read_exactly() {
        let sim = VllmSim::start(SimOptions {
            natural_tokens: 16,
            ..options()
        })
        .await;
        let backend = backend(&sim);
        let d = run(&backend, text(7)).await.unwrap();
        assert!(d.error.is_none(), "{:?}", d.error);
        assert_eq!(
            d.deltas(),
            (0..7).map(|i| token_text(i).to_owned()).collect::<Vec<_>>()
        );
        assert_eq!(d.tokens(), 7);
        assert_eq!(d.finish(), Some(FinishReason::Length));
        let usage = d.usage().unwrap();
        assert_eq!(
            (usage.prompt(), usage.cached(), usage.completion()),
            (3, 0, 7)
        );
        let sent = sim.generations().pop().unwrap();
        assert_eq!(sent.path, "/v1/completions");
        // A natural end: 16 tokens, then the finish chunk with `"text":""`
        // (one more token if it were read as vLLM's last chunk).
        let d = run(&backend, text(64)).await.unwrap();
        assert_eq!((d.tokens(), d.finish()), (16, Some(FinishReason::Stop)));
        assert_eq!(d.usage().unwrap().completion(), 16);
        assert_eq!(d.text(), text_of(16));
    }

    /// The frontend refuses an unknown `nvext` key with a 400 that names
    /// it: a typed `InvalidRequest` before the first token, the engine's
    /// message kept, the backend's pressure not marked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_nvext_key_is_invalid_request() {
        let sim = VllmSim::start(options()).await;
        let backend = backend(&sim);
        let mut request =
            GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("Hi")]), 100);
        request.extra = Some(r#"{"nvext":{"greed_sampling":true,"bogus":1}}"#.into());
        let request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        let e = run(&backend, request).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.phase(), e.upstream_status()),
            (
                FailureKind::InvalidRequest,
                FailurePhase::BeforeFirstToken,
                Some(400)
            )
        );
        assert!(e.message().contains("unknown field `bogus`"), "{e}");
        assert!(!backend.pressure().overloaded);
    }
}
