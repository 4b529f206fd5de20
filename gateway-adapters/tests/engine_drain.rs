//! `on_disconnect = "drain"` end to end: the real `Gateway` pipeline over
//! an adapter built from a `[[backends]]` entry, against the vLLM
//! simulator over loopback HTTP. A client leaves after 3 of 20 tokens:
//! with drain the engine serves all 20 without seeing a close and the
//! tenant is charged what a hosted provider bills (prompt + 20); a drain
//! timeout shorter than the generation closes at the timeout and charges
//! what was read; with the default abort nothing changes (abort seen,
//! charged 3).
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_drain {
    use std::num::NonZeroUsize;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use gateway_adapters::bootstrap::build_gateway;
    use gateway_adapters::config::{BackendConfig, GatewayConfig};
    use gateway_adapters::engines::OnDisconnect;
    use gateway_core::{
        ByteBound, CancelReason, ChatMessage, EngineKind, EnginePhase, FailureKind, Money, Pricing,
        Prompt, TokenEvent, Usage,
    };
    use gateway_policy::metrics::{AbortLabels, DrainLabels};
    use gateway_policy::{
        ClientRequest, Gateway, GatewayStream, ModelSpec, Settings, Tenant, TenantAccount, key_hash,
    };
    use tokio::time::Instant;

    use gateway_sims::vllm::{AbortRecord, SimOptions, VllmSim};

    const MODEL: &str = "m";
    const BACKEND: &str = "hosted-0";
    /// The generation: 20 tokens, `max_tokens` = 20.
    const TOKENS: u32 = 20;
    /// Tokens the client takes before it leaves.
    const TAKEN: u64 = 3;

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

    fn settings() -> Settings {
        Settings {
            stream_buffer_events: NonZeroUsize::new(4).unwrap(),
            abort_wait: ms(500),
            ..Settings::default()
        }
    }

    fn sim_options(token_interval: Duration) -> SimOptions {
        SimOptions {
            model: MODEL.to_owned(),
            token_interval,
            natural_tokens: TOKENS,
            ..SimOptions::default()
        }
    }

    /// The `[[backends]]` entry of a hosted OpenAI-compatible API at `sim`.
    fn entry(sim: &VllmSim, on_disconnect: OnDisconnect) -> BackendConfig {
        BackendConfig {
            name: BACKEND.to_owned(),
            engine: EngineKind::OpenAi,
            url: Some(sim.url()),
            model: MODEL.to_owned(),
            served_model: MODEL.to_owned(),
            max_concurrency: None,
            on_disconnect,
            api_key_env: None,
            metrics_url: None,
            ca_file: None,
            capabilities: None,
            context_window: None,
            sim: None,
        }
    }

    struct Setup {
        gateway: Gateway,
        tenant: Arc<Tenant>,
    }

    fn setup(entry: &BackendConfig) -> Setup {
        let backend = entry.remote_backend().unwrap();
        assert_eq!(
            backend.drain_on_client_gone(),
            entry.on_disconnect.drain_timeout()
        );
        let gateway = Gateway::builder(settings())
            .tenant(Tenant::new("team-a"), key_hash("sk-t"))
            .model(ModelSpec {
                name: MODEL.into(),
                pricing: pricing(),
                context_window: 4096,
                default_max_tokens: 16,
                media: gateway_policy::MediaCosts::default(),
                counter: Arc::new(ByteBound::default()),
            })
            .backend(backend, MODEL, MODEL, None)
            .build()
            .unwrap();
        let tenant = gateway.authenticate(Some("sk-t")).unwrap();
        Setup { gateway, tenant }
    }

    fn request(id: &str) -> ClientRequest {
        let mut r = ClientRequest::new(
            id,
            MODEL,
            Prompt::Chat(vec![ChatMessage::user("tell me about the sea")]),
        );
        r.max_tokens = Some(TOKENS);
        r
    }

    /// Starts a request and takes events until `TAKEN` tokens arrived;
    /// returns the stream (drop it to leave).
    async fn take_three(s: &Setup, id: &str) -> GatewayStream {
        let guard = s.gateway.request_cancel();
        let cancel = guard.handle().clone();
        let mut stream = s
            .gateway
            .generate(&s.tenant, request(id), cancel)
            .await
            .unwrap();
        // The request's lifetime is the stream's from here on.
        let _ = guard.disarm();
        let mut taken = 0;
        while taken < TAKEN {
            match stream.next().await {
                Some(Ok(TokenEvent::Delta(d))) => taken += u64::from(d.tokens),
                Some(Ok(_)) => {}
                other => panic!("the stream ended early: {other:?}"),
            }
        }
        assert_eq!(stream.delivered(), TAKEN);
        stream
    }

    /// Polls (at most 5 s) until nothing is held or active.
    async fn settled(s: &Setup) -> TenantAccount {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let a = s.gateway.account(&s.tenant.id).unwrap();
            if a.reserved == Money::ZERO && a.requests == 1 && s.gateway.active() == 0 {
                return a;
            }
            assert!(Instant::now() < until, "never settled: {a:?}");
            tokio::time::sleep(ms(2)).await;
        }
    }

    /// Waits (at most 2 s) until the simulator noticed `n` closes; the
    /// gateway may settle before the engine notices.
    async fn aborts_seen(sim: &VllmSim, n: usize) -> Vec<AbortRecord> {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let log = sim.abort_log();
            if log.len() >= n {
                assert_eq!(log.len(), n, "{log:?}");
                return log;
            }
            assert!(Instant::now() < until, "{log:?}");
            tokio::time::sleep(ms(2)).await;
        }
    }

    fn upstream_aborts(s: &Setup) -> u64 {
        EnginePhase::ALL
            .iter()
            .map(|phase| {
                s.gateway
                    .metrics()
                    .upstream_aborts
                    .get_or_create(&AbortLabels {
                        backend: BACKEND.to_owned(),
                        phase: phase.as_str(),
                    })
                    .get()
            })
            .sum()
    }

    fn drained(s: &Setup, outcome: &'static str) -> u64 {
        s.gateway
            .metrics()
            .drained
            .get_or_create(&DrainLabels {
                backend: BACKEND.to_owned(),
                outcome,
            })
            .get()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_reads_the_generation_to_its_end_and_charges_what_the_provider_bills() {
        let sim = VllmSim::start(sim_options(ms(10))).await;
        let s = setup(&entry(&sim, OnDisconnect::drain()));
        let stream = take_three(&s, "drain-1").await;
        drop(stream);
        let account = settled(&s).await;

        // The engine never saw a close: it served all 20 and finished (its
        // books may trail the gateway's settle by a moment).
        let until = Instant::now() + Duration::from_secs(2);
        while sim.completed() == 0 {
            assert!(Instant::now() < until, "{:?}", sim.abort_log());
            tokio::time::sleep(ms(2)).await;
        }
        tokio::time::sleep(ms(50)).await;
        assert_eq!(sim.abort_counts().total(), 0, "{:?}", sim.abort_log());
        assert_eq!(sim.completed(), 1);
        assert_eq!(sim.tokens_sent(), u64::from(TOKENS));

        // Charged prompt + 20 completion tokens (the provider's usage), the
        // 17 the client never took recorded as canceled.
        let prompt = sim.generations()[0].prompt_tokens;
        assert!(prompt > 0);
        let billed = Usage::new(prompt, u64::from(TOKENS))
            .with_canceled(u64::from(TOKENS) - TAKEN)
            .unwrap();
        assert_eq!(account.usage, billed);
        assert_eq!(account.usage.canceled(), 17);
        assert_eq!(account.spent, pricing().cost(&Usage::new(prompt, 20)));
        assert_eq!(
            account.spent,
            Money::from_picos(10 * prompt + 100 * u64::from(TOKENS))
        );
        assert_eq!(account.reserved, Money::ZERO);
        assert_eq!(account.requests, 1);

        // A drain is not an abort.
        assert_eq!(upstream_aborts(&s), 0);
        assert_eq!(drained(&s, "finished"), 1);
        assert_eq!(drained(&s, "timed_out"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drain_timeout_shorter_than_the_generation_closes_and_charges_what_was_read() {
        // 20 tokens 25 ms apart (~500 ms); the drain gives up after 80 ms.
        let sim = VllmSim::start(sim_options(ms(25))).await;
        let timeout = ms(80);
        let s = setup(&entry(&sim, OnDisconnect::Drain { timeout }));
        let stream = take_three(&s, "drain-2").await;
        let left = Instant::now();
        drop(stream);
        let account = settled(&s).await;

        // The connection closed at the drain timeout, mid-decode.
        let log = aborts_seen(&sim, 1).await;
        assert_eq!(log[0].phase, EnginePhase::Decode);
        let closed_after = log[0].at.saturating_duration_since(left);
        assert!(
            closed_after >= timeout && closed_after < timeout + ms(200),
            "closed {closed_after:?} after the client left"
        );
        assert_eq!(sim.completed(), 0);

        // Charged what was read: more than the 3 taken, fewer than 20, at
        // most what the engine sent; no provider usage arrived, so the
        // prompt is the gateway's own count.
        let usage = account.usage;
        let sent = sim.tokens_sent();
        assert!(sent < u64::from(TOKENS), "sent {sent}");
        assert!(
            usage.completion() > TAKEN && usage.completion() <= sent,
            "{usage} (engine sent {sent})"
        );
        assert_eq!(usage.canceled(), usage.completion() - TAKEN);
        assert!(usage.prompt() >= sim.generations()[0].prompt_tokens);
        assert_eq!(account.spent, pricing().cost(&usage));
        assert_eq!(account.reserved, Money::ZERO);
        assert_eq!(drained(&s, "timed_out"), 1);
        assert_eq!(drained(&s, "finished"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_stays_the_default_and_charges_what_was_delivered() {
        let sim = VllmSim::start(sim_options(ms(10))).await;
        let config = entry(&sim, OnDisconnect::default());
        assert_eq!(config.on_disconnect, OnDisconnect::Abort);
        let s = setup(&config);
        let stream = take_three(&s, "abort-1").await;
        drop(stream);
        let account = settled(&s).await;

        let log = aborts_seen(&sim, 1).await;
        assert_eq!(log[0].phase, EnginePhase::Decode);
        assert_eq!(sim.completed(), 0);
        assert!(sim.tokens_sent() < u64::from(TOKENS));

        // Charged the 3 delivered tokens; the prompt is the gateway's count
        // (the engine's usage never came).
        let usage = account.usage;
        assert_eq!(usage.completion(), TAKEN);
        assert_eq!(account.spent, pricing().cost(&usage));
        assert_eq!(account.reserved, Money::ZERO);
        assert_eq!(upstream_aborts(&s), 1);
        assert_eq!(drained(&s, "finished") + drained(&s, "timed_out"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_cuts_a_drain_and_settles() {
        // 20 tokens 50 ms apart (~1 s), a 60 s drain: shutdown must not wait.
        let sim = VllmSim::start(sim_options(ms(50))).await;
        let s = setup(&entry(&sim, OnDisconnect::drain()));
        let stream = take_three(&s, "drain-3").await;
        drop(stream);
        tokio::time::sleep(ms(60)).await;
        assert_eq!(s.gateway.active(), 1, "the drain is in progress");
        let started = Instant::now();
        let report = s.gateway.drain(Duration::ZERO).await;
        assert_eq!(report.unsettled, 0);
        assert!(started.elapsed() < ms(500), "{:?}", started.elapsed());
        let account = settled(&s).await;
        let log = aborts_seen(&sim, 1).await;
        assert_eq!(log[0].phase, EnginePhase::Decode);
        assert_eq!(sim.completed(), 0);
        // Charged what was read before the cut.
        let usage = account.usage;
        assert!(usage.completion() >= TAKEN && usage.completion() < u64::from(TOKENS));
        assert_eq!(usage.canceled(), usage.completion() - TAKEN);
        assert_eq!(account.spent, pricing().cost(&usage));
        assert_eq!(drained(&s, "stopped"), 1);
    }

    const CONFIG: &str = r#"
[[tenants]]
id = "t"
api_key = "sk-t"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "hosted-0"
engine = "openai"
url = "http://127.0.0.1:9"
model = "m"
"#;

    fn parse(extra: &str) -> Result<GatewayConfig, Vec<(String, String)>> {
        let text = format!("{CONFIG}{extra}");
        GatewayConfig::parse(&text, Path::new("/nonexistent/gateway.toml")).map_err(|e| {
            e.problems
                .into_iter()
                .map(|p| (p.path, p.message))
                .collect()
        })
    }

    #[tokio::test]
    async fn on_disconnect_and_drain_timeout_reach_the_adapter_through_bootstrap() {
        let cases = [
            ("", None),
            ("on_disconnect = \"abort\"\n", None),
            (
                "on_disconnect = \"drain\"\n",
                Some(OnDisconnect::DEFAULT_DRAIN_TIMEOUT),
            ),
            (
                "on_disconnect = \"drain\"\ndrain_timeout_ms = 1500\n",
                Some(ms(1500)),
            ),
        ];
        for (extra, drain) in cases {
            let config = parse(extra).unwrap();
            assert_eq!(config.backends[0].on_disconnect.drain_timeout(), drain);
            let gateway = build_gateway(&config).unwrap();
            assert_eq!(
                gateway.backends()[0].backend.drain_on_client_gone(),
                drain,
                "{extra}"
            );
        }
        assert_eq!(
            parse("drain_timeout_ms = 1500\n").unwrap_err(),
            vec![(
                "backends[0].drain_timeout_ms".to_owned(),
                "only allowed with on_disconnect = \"drain\"".to_owned()
            )]
        );
        let zero = parse("on_disconnect = \"drain\"\ndrain_timeout_ms = 0\n").unwrap_err();
        assert_eq!(zero.len(), 1, "{zero:?}");
        assert_eq!(zero[0].0, "backends[0].drain_timeout_ms");
        let long = parse("on_disconnect = \"drain\"\ndrain_timeout_ms = 3600001\n").unwrap_err();
        assert_eq!(long[0].0, "backends[0].drain_timeout_ms");
    }

    /// The backend alone: after a `ClientGone` cancel a draining stream
    /// goes on to `Usage` and `Finished`; any other reason still aborts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_client_gone_drains() {
        use crate::support::kit::{chat, drain};
        use gateway_core::CancelHandle;

        let sim = VllmSim::start(sim_options(ms(5))).await;
        let backend = entry(&sim, OnDisconnect::drain()).remote_backend().unwrap();

        let cancel = CancelHandle::new();
        let stream = backend.start(chat(TOKENS), cancel.clone()).await.unwrap();
        cancel.cancel(CancelReason::ClientGone);
        let rest = drain(stream).await;
        assert!(rest.error.is_none(), "{:?}", rest.error);
        assert_eq!(
            rest.usage().map(|u| u.completion()),
            Some(u64::from(TOKENS))
        );
        assert!(rest.finish().is_some());
        assert_eq!(sim.abort_counts().total(), 0);

        for reason in [
            CancelReason::Timeout,
            CancelReason::Budget,
            CancelReason::Shutdown,
            CancelReason::Aborted,
        ] {
            let cancel = CancelHandle::new();
            let stream = backend.start(chat(TOKENS), cancel.clone()).await.unwrap();
            cancel.cancel(reason);
            let rest = drain(stream).await;
            let error = rest.error.as_ref().expect("an abort ends with an error");
            assert_eq!(error.kind(), FailureKind::Canceled, "{reason}");
            assert!(rest.finish().is_none(), "{reason}");
        }
        let until = Instant::now() + Duration::from_secs(2);
        while sim.abort_counts().total() < 4 {
            assert!(Instant::now() < until, "{:?}", sim.abort_log());
            tokio::time::sleep(ms(2)).await;
        }
    }
}
