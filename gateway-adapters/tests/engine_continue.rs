//! Stream continuation end to end: the real `Gateway` pipeline over two
//! engine adapters against two engine simulators over loopback HTTP. The
//! first engine fails after 5 of 16 tokens; with vLLM (which returns each
//! token's id, asked with `return_token_ids`) the stream goes on on the
//! second engine from the prompt's and the 5 delivered tokens' ids
//! (`/v1/completions` with a token-id `prompt`), and the client gets the
//! whole answer once; a failure of the request's own does not continue;
//! SGLang's native `/generate` (its `output_ids`, cumulative or
//! incremental) continues the same way from `input_ids`; engines that
//! return no ids (trtllm-serve, a generic OpenAI-compatible server) do not
//! continue.
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_continue {
    use std::num::{NonZeroU32, NonZeroUsize};
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use gateway_adapters::engines::sglang;
    use gateway_adapters::engines::{OpenAiCompatBackend, UpstreamConfig, openai, trtllm, vllm};
    use gateway_core::{
        BackendError, ByteBound, FailureKind, Money, Pricing, Prompt, TokenEvent, Usage,
    };
    use gateway_policy::route::LeastLoaded;
    use gateway_policy::{
        ClientRequest, Continuation, Gateway, ModelSpec, Settings, Tenant, key_hash,
    };
    use gateway_sims::sglang::{self as sglang_sim, INTERNAL_EVENT, SglangSim};
    use gateway_sims::vllm::{Fault, SimEngine, SimOptions, VllmSim, text_of, token_id};
    use serde_json::Value;

    const MODEL: &str = "m";
    /// The whole answer: 16 tokens, then `stop`.
    const TOKENS: u32 = 16;
    /// Tokens the first engine sends before it fails.
    const BEFORE: u32 = 5;
    /// The prompt's ids.
    const PROMPT: [u32; 3] = [1, 2, 3];

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pricing() -> Pricing {
        Pricing {
            input: Money::from_picos(10),
            cached_input: Money::from_picos(1),
            output: Money::from_picos(100),
        }
    }

    fn options(engine: SimEngine, script: Vec<Fault>) -> SimOptions {
        SimOptions {
            model: MODEL.to_owned(),
            token_interval: ms(2),
            natural_tokens: TOKENS,
            engine,
            script,
            ..SimOptions::default()
        }
    }

    type Build =
        fn(UpstreamConfig) -> Result<OpenAiCompatBackend, gateway_adapters::engines::EngineError>;

    struct Setup {
        gateway: Gateway,
        tenant: Arc<Tenant>,
        sims: [Arc<VllmSim>; 2],
    }

    fn gateway(backends: Vec<Arc<dyn gateway_core::Backend>>) -> (Gateway, Arc<Tenant>) {
        let mut builder = Gateway::builder(Settings {
            stream_buffer_events: NonZeroUsize::new(4).unwrap(),
            idle_timeout: ms(300),
            abort_wait: ms(500),
            ..Settings::default()
        })
        .tenant(Tenant::new("team-a"), key_hash("sk-t"))
        // Ties go to the first backend: the failing one serves first.
        .route_policy(Arc::new(LeastLoaded))
        .model(
            ModelSpec::new(MODEL, 4096)
                .with_pricing(pricing())
                .with_counter(Arc::new(ByteBound::default())),
        )
        .continuation(MODEL, Continuation::new(NonZeroU32::MIN));
        for backend in backends {
            builder = builder.backend(backend, MODEL, MODEL, None);
        }
        let gateway = builder.build().unwrap();
        let tenant = gateway.authenticate(Some("sk-t")).unwrap();
        (gateway, tenant)
    }

    /// Two engines of one kind, `build` adapters; the first fails with
    /// `fault`, the second serves normally.
    async fn setup(engine: SimEngine, build: Build, fault: Fault) -> Setup {
        let first = VllmSim::start(options(engine, vec![fault])).await;
        let second = VllmSim::start(options(engine, Vec::new())).await;
        let mut backends: Vec<Arc<dyn gateway_core::Backend>> = Vec::new();
        for (i, sim) in [&first, &second].into_iter().enumerate() {
            let mut config = UpstreamConfig::new(format!("engine-{i}"), sim.url(), MODEL);
            config.scrape_interval = ms(5);
            backends.push(Arc::new(build(config).unwrap()));
        }
        let (gateway, tenant) = gateway(backends);
        Setup {
            gateway,
            tenant,
            sims: [first, second],
        }
    }

    struct Outcome {
        text: String,
        names: Vec<&'static str>,
        usage: Option<Usage>,
        error: Option<BackendError>,
    }

    async fn run(s: &Setup) -> Outcome {
        run_on(&s.gateway, &s.tenant).await
    }

    async fn run_on(gateway: &Gateway, tenant: &Arc<Tenant>) -> Outcome {
        let guard = gateway.request_cancel();
        let cancel = guard.handle().clone();
        let mut request = ClientRequest::new("r1", MODEL, Prompt::Tokens(PROMPT.to_vec()));
        request.max_tokens = Some(TOKENS + 4);
        let mut stream = gateway.generate(tenant, request, cancel).await.unwrap();
        assert_eq!(stream.backend(), "engine-0");
        let mut out = Outcome {
            text: String::new(),
            names: Vec::new(),
            usage: None,
            error: None,
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    match &event {
                        TokenEvent::Delta(d) => out.text.push_str(&d.text),
                        TokenEvent::Usage(u) => out.usage = Some(*u),
                        _ => {}
                    }
                    out.names.push(event.name());
                }
                Err(e) => {
                    out.names.push("Error");
                    out.error = Some(e);
                }
            }
        }
        let _ = guard.disarm();
        gateway.settled(&"r1".into()).await;
        out
    }

    /// The charge of `prompt` and `completion` tokens.
    fn charge(prompt: u64, completion: u64) -> Money {
        Money::from_picos(prompt * 10 + completion * 100)
    }

    async fn continues(fault: Fault) {
        let s = setup(SimEngine::Vllm, vllm::backend, fault.clone()).await;
        let out = run(&s).await;
        // The whole answer, once: no gap, nothing repeated.
        assert_eq!(out.text, text_of(TOKENS), "{fault:?}");
        assert!(out.error.is_none(), "{fault:?}: {:?}", out.error);
        assert_eq!(out.names.first(), Some(&"Started"));
        assert_eq!(&out.names[out.names.len() - 2..], ["Usage", "Finished"]);
        assert_eq!(
            out.names.iter().filter(|n| **n == "Started").count(),
            1,
            "{fault:?}"
        );
        assert_eq!(
            out.usage,
            Some(Usage::new(3, u64::from(TOKENS))),
            "{fault:?}"
        );
        // The second engine was asked the prompt and the 5 delivered ids,
        // on the completions route, for what is left of max_tokens.
        let asked = s.sims[1].generations();
        assert_eq!(asked.len(), 1, "{fault:?}");
        assert_eq!(asked[0].path, "/v1/completions");
        assert_eq!(asked[0].prompt_tokens, 3 + u64::from(BEFORE));
        let body: Value = serde_json::from_str(&asked[0].body).unwrap();
        let mut ids: Vec<u64> = PROMPT.iter().map(|i| u64::from(*i)).collect();
        ids.extend((0..BEFORE).map(|i| u64::from(token_id(i))));
        assert_eq!(body["prompt"], Value::from(ids), "{fault:?}");
        assert_eq!(body["max_tokens"], Value::from(TOKENS + 4 - BEFORE));
        assert_eq!(body["return_token_ids"], Value::Bool(true));
        // Charged once: the prompt and the 16 tokens received.
        let account = s.gateway.account(&s.tenant.id).unwrap();
        assert_eq!(account.spent, charge(3, u64::from(TOKENS)), "{fault:?}");
        let metrics = s.gateway.render_metrics();
        assert!(
            metrics.contains(
                r#"gateway_continuations_total{model="m",from="engine-0",to="engine-1"} 1"#
            ),
            "{fault:?}: {metrics}"
        );
        assert!(metrics.contains(r#"gateway_continuation_prefill_tokens_total{model="m"} 8"#));
    }

    async fn ends(engine: SimEngine, build: Build, fault: Fault, kind: FailureKind) {
        let s = setup(engine, build, fault.clone()).await;
        let out = run(&s).await;
        assert_eq!(out.text, text_of(BEFORE), "{fault:?}");
        assert_eq!(out.names.last(), Some(&"Error"), "{fault:?}");
        assert_eq!(out.error.unwrap().kind(), kind, "{fault:?}");
        assert!(s.sims[1].generations().is_empty(), "{fault:?}");
        let account = s.gateway.account(&s.tenant.id).unwrap();
        assert_eq!(account.spent, charge(3, u64::from(BEFORE)), "{fault:?}");
    }

    #[tokio::test]
    async fn a_vllm_stream_continues_after_a_reset() {
        continues(Fault::Reset {
            after_tokens: BEFORE,
        })
        .await;
    }

    #[tokio::test]
    async fn a_vllm_stream_continues_after_a_cut_body() {
        continues(Fault::Truncate {
            after_tokens: BEFORE,
        })
        .await;
    }

    #[tokio::test]
    async fn a_vllm_stream_continues_after_a_stall() {
        continues(Fault::Stall {
            after_tokens: BEFORE,
        })
        .await;
    }

    #[tokio::test]
    async fn a_vllm_stream_continues_after_a_broken_frame() {
        continues(Fault::Malformed {
            after_tokens: BEFORE,
        })
        .await;
    }

    #[tokio::test]
    async fn a_vllm_stream_continues_after_an_engine_error_frame() {
        continues(Fault::ErrorFrame {
            after_tokens: BEFORE,
            code: 500,
            kind: "InternalServerError".into(),
            message: "EngineCore encountered an issue".into(),
        })
        .await;
    }

    #[tokio::test]
    async fn a_vllm_stream_failed_by_its_request_does_not_continue() {
        ends(
            SimEngine::Vllm,
            vllm::backend,
            Fault::ErrorFrame {
                after_tokens: BEFORE,
                code: 400,
                kind: "BadRequestError".into(),
                message: "invalid value".into(),
            },
            FailureKind::InvalidRequest,
        )
        .await;
    }

    #[tokio::test]
    async fn engines_without_token_ids_do_not_continue() {
        ends(
            SimEngine::TrtLlm,
            trtllm::backend,
            Fault::Reset {
                after_tokens: BEFORE,
            },
            FailureKind::Connect,
        )
        .await;
        // A generic OpenAI-compatible server is not asked for ids.
        ends(
            SimEngine::Vllm,
            openai::backend,
            Fault::Reset {
                after_tokens: BEFORE,
            },
            FailureKind::Connect,
        )
        .await;
    }

    /// Two SGLang engines (native `/generate`); the first fails with `fault`.
    async fn sglang_continues(fault: sglang_sim::Fault, incremental: bool) {
        let options = |script: Vec<sglang_sim::Fault>| sglang_sim::SimOptions {
            model: MODEL.to_owned(),
            token_interval: ms(2),
            natural_tokens: TOKENS,
            incremental_output: incremental,
            script,
            ..sglang_sim::SimOptions::default()
        };
        let first = SglangSim::start(options(vec![fault.clone()])).await;
        let second = SglangSim::start(options(Vec::new())).await;
        let mut backends: Vec<Arc<dyn gateway_core::Backend>> = Vec::new();
        for (i, sim) in [&first, &second].into_iter().enumerate() {
            let mut config = UpstreamConfig::new(format!("engine-{i}"), sim.url(), MODEL);
            config.scrape_interval = ms(5);
            let options = sglang::SglangOptions {
                incremental_streaming_output: incremental,
                ..sglang::SglangOptions::default()
            };
            backends.push(Arc::new(
                sglang::SglangBackend::new(config, options).unwrap(),
            ));
        }
        let (gateway, tenant) = gateway(backends);
        let out = run_on(&gateway, &tenant).await;
        assert_eq!(out.text, text_of(TOKENS), "{fault:?}");
        assert!(out.error.is_none(), "{fault:?}: {:?}", out.error);
        assert_eq!(
            out.usage,
            Some(Usage::new(3, u64::from(TOKENS))),
            "{fault:?}"
        );
        let asked: Vec<_> = second
            .generations()
            .into_iter()
            .filter(|r| r.path == "/generate")
            .collect();
        assert_eq!(asked.len(), 1, "{fault:?}");
        let body: Value = serde_json::from_str(&asked[0].body).unwrap();
        let mut ids: Vec<u64> = PROMPT.iter().map(|i| u64::from(*i)).collect();
        ids.extend((0..u64::from(BEFORE)).map(|i| 1000 + i));
        assert_eq!(body["input_ids"], Value::from(ids), "{fault:?}");
        assert_eq!(
            body["sampling_params"]["max_new_tokens"],
            Value::from(TOKENS + 4 - BEFORE)
        );
        let account = gateway.account(&tenant.id).unwrap();
        assert_eq!(account.spent, charge(3, u64::from(TOKENS)), "{fault:?}");
    }

    #[tokio::test]
    async fn an_sglang_stream_continues_from_its_output_ids() {
        for incremental in [false, true] {
            sglang_continues(
                sglang_sim::Fault::Truncate {
                    after_tokens: BEFORE,
                },
                incremental,
            )
            .await;
            sglang_continues(
                sglang_sim::Fault::ErrorEvent {
                    after_tokens: BEFORE,
                    json: INTERNAL_EVENT.to_owned(),
                },
                incremental,
            )
            .await;
        }
    }
}
