//! The NIM adapter over loopback HTTP against the simulator in NIM mode.
//! NIM is closed source: its facts are NVIDIA's documentation as cited in
//! ENGINES.md §6 (https://docs.nvidia.com/nim/large-language-models/latest/observability.html,
//! the 2.0.0 and 2.1.4 migration guides); its inference wire is the
//! bundled engine's (vLLM here, ENGINES.md §2).
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_nim {
    use std::sync::Arc;
    use std::time::Duration;

    use gateway_adapters::engines::{self, OpenAiCompatBackend, UpstreamConfig, nim, vllm};
    use gateway_core::testkit::conformance::{
        self, ConformanceConfig, ConformanceTarget, Instance, Scenario,
    };
    use gateway_core::{
        Backend, BackendRequest, ByteBound, CancelHandle, ChatMessage, EngineKind, FailureKind,
        FailurePhase, GenerateRequest, Health, Prompt,
    };

    use crate::support::kit::{chat, ms, run, wait_pressure, with_id};
    use gateway_sims::vllm::{BUSY_503, Fault, SimEngine, SimOptions, VllmSim, text_of};

    const KEY: &str = "nvapi-test";

    fn options() -> SimOptions {
        SimOptions {
            engine: SimEngine::Nim,
            api_key: Some(KEY.into()),
            ..SimOptions::default()
        }
    }

    fn backend(sim: &VllmSim) -> OpenAiCompatBackend {
        let mut c = UpstreamConfig::new("nim-0", sim.url(), "m");
        c.scrape_interval = ms(5);
        c.api_key = Some(KEY.into());
        nim::backend(c).unwrap()
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
                    status: 503,
                    body: BUSY_503.to_owned(),
                    retry_after: None,
                }],
                after: vec![Fault::ErrorFrame {
                    after_tokens: 2,
                    code: 500,
                    kind: "InternalServerError".into(),
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
    async fn nim_adapter_conforms_over_http() {
        let report = conformance::run(&Target, &ConformanceConfig::default()).await;
        println!("{report}");
        report.assert_passed();
    }

    // -------------------------------------------------------- request mapping

    /// NIM 1.x takes `nvext`; 2.x is vLLM/SGLang, which accept unknown
    /// fields: extras pass through; the key goes as a bearer token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_maps_with_key_and_extras() {
        let sim = VllmSim::start(options()).await;
        let backend = backend(&sim);
        assert_eq!(backend.info().engine, EngineKind::Nim);
        let mut request =
            GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("Hi")]), 100)
                .with_id("nim-1");
        request.extra = Some(r#"{"nvext":{"top_k":3,"repetition_penalty":1.1}}"#.into());
        let mut request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        request.budget.max_completion_tokens = 5;
        let d = run(&backend, request).await.unwrap();
        assert_eq!(d.text(), text_of(5));
        let sent = sim.generations().pop().unwrap();
        assert_eq!(sent.path, "/v1/chat/completions");
        assert_eq!(
            sent.body,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true},"nvext":{"top_k":3,"repetition_penalty":1.1}}"#
        );
        assert_eq!(sent.header("authorization"), Some("Bearer nvapi-test"));
        assert_eq!(sent.header("x-request-id"), Some("nim-1"));
    }

    /// The bundled engine's failures are typed as for vLLM (ENGINES.md §6:
    /// "wire behaviour = bundled engine"); a wrong key is `Unauthorized`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_are_typed_with_their_phase() {
        let sim = VllmSim::start(SimOptions {
            script: vec![
                Fault::Http {
                    status: 503,
                    body: BUSY_503.to_owned(),
                    retry_after: Some(2),
                },
                Fault::ErrorFrame {
                    after_tokens: 2,
                    code: 500,
                    kind: "InternalServerError".into(),
                    message: "Internal server error".into(),
                },
            ],
            ..options()
        })
        .await;
        let backend = backend(&sim);
        let e = run(&backend, chat(8)).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.phase(), e.retry_after()),
            (
                FailureKind::Overloaded,
                FailurePhase::BeforeFirstToken,
                Some(Duration::from_secs(2))
            )
        );
        let e = run(&backend, chat(8)).await.unwrap().error.unwrap();
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::Internal, FailurePhase::AfterFirstToken)
        );
        let mut c = UpstreamConfig::new("nim-bad", sim.url(), "m");
        c.api_key = Some("wrong".into());
        let e = run(&nim::backend(c).unwrap(), chat(8)).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::Unauthorized);
    }

    // ------------------------------------------------- pressure, health, config

    /// ENGINES.md §6: unprefixed `num_requests_running`,
    /// `num_requests_waiting`, `gpu_cache_usage_perc` at `/v1/metrics`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pressure_comes_from_v1_metrics() {
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

    /// Readiness is `GET /v1/health/ready`; NIM serves no `/health`, so a
    /// vLLM adapter pointed at it is unhealthy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_is_v1_health_ready() {
        let sim = VllmSim::start(options()).await;
        assert_eq!(backend(&sim).health().await, Health::Healthy);
        let wrong = vllm::backend(UpstreamConfig::new("v", sim.url(), "m")).unwrap();
        assert!(!wrong.health().await.is_healthy());
        // (The vLLM adapter's scraper may also have asked for `/metrics`.)
        let paths: Vec<String> = sim
            .requests()
            .into_iter()
            .map(|r| r.path)
            .filter(|p| p != "/metrics")
            .collect();
        assert_eq!(paths, vec!["/v1/health/ready", "/health"]);
    }

    /// A self-hosted NIM needs no key: built without `api_key_env`, it
    /// serves and sends no `Authorization`. NVIDIA's hosted API needs one:
    /// without it building fails; a variable that is unset fails too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_api_key_is_optional_except_for_the_hosted_api() {
        use gateway_adapters::config::BackendConfig;
        use gateway_adapters::engines::OnDisconnect;
        let open_sim = VllmSim::start(SimOptions {
            api_key: None,
            ..options()
        })
        .await;
        let mut entry = BackendConfig {
            name: "n0".into(),
            engine: EngineKind::Nim,
            url: Some(open_sim.url()),
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
        let self_hosted = entry.remote_backend().unwrap();
        let answer = run(&*self_hosted, chat(4)).await.unwrap();
        assert_eq!((answer.error.is_none(), answer.tokens()), (true, 4));
        let chats: Vec<_> = open_sim
            .requests()
            .into_iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .collect();
        assert_eq!(chats.len(), 1);
        assert!(
            !chats[0]
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("authorization")),
            "{:?}",
            chats[0].headers
        );
        // The hosted API without a key is refused at build.
        entry.url = Some("https://integrate.api.nvidia.com".into());
        assert_eq!(
            entry.remote_backend().unwrap_err(),
            engines::EngineError::ApiKeyRequired(EngineKind::Nim)
        );
        // A keyed self-hosted NIM sends the key.
        let sim = VllmSim::start(options()).await;
        entry.url = Some(sim.url());
        entry.api_key_env = Some("GATEWAY_TEST_NO_SUCH_NIM_KEY".into());
        assert_eq!(
            entry.remote_backend().unwrap_err(),
            engines::EngineError::MissingApiKey("GATEWAY_TEST_NO_SUCH_NIM_KEY".into())
        );
        // A set variable builds it (PATH is not the key: 401 at the engine).
        entry.api_key_env = Some("PATH".into());
        let built = entry.remote_backend().unwrap();
        assert_eq!(built.info().engine, EngineKind::Nim);
        assert_eq!(
            run(&*built, chat(4)).await.unwrap_err().kind(),
            FailureKind::Unauthorized
        );
    }
}
