//! The SGLang adapter over loopback HTTP against the wire-faithful SGLang
//! simulator: conformance, the native `/generate` body, cumulative text to
//! exact deltas (TV-07), usage with cached and speculative counts, every
//! failure shape, `/abort_request` per phase, pressure.
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_sglang {
    use std::sync::Arc;
    use std::time::Duration;

    use gateway_adapters::engines::UpstreamConfig;
    use gateway_adapters::engines::sglang::{self, SglangBackend, SglangOptions};
    use gateway_core::testkit::conformance::{
        self, ConformanceConfig, ConformanceTarget, Instance, Scenario,
    };
    use gateway_core::{
        Backend, BackendRequest, ByteBound, CancelHandle, CancelReason, ChatMessage, EngineKind,
        EnginePhase, FailureKind, FailurePhase, FinishReason, GenerateRequest, Health, Prompt,
        ReasoningField, TokenEvent, TokenLogprob, TopLogprob, Usage,
    };
    use serde_json::Value;
    use tokio::time::Instant;

    use crate::support::kit::{Drained, drain_error, first_delta, ms, run};
    use gateway_sims::sglang::{
        AbortSource, CONTEXT_400, Fault, INTERNAL_EVENT, INVALID_400, QUEUE_FULL_EVENT, SglangSim,
        SimOptions, VALUE_ERROR_EVENT, text_of, token_logprob, token_text, top_logprob,
    };

    fn config(sim: &SglangSim) -> UpstreamConfig {
        let mut c = UpstreamConfig::new("sglang-0", sim.url(), "m");
        c.scrape_interval = ms(5);
        c
    }

    fn backend(sim: &SglangSim) -> SglangBackend {
        sglang::backend(config(sim)).unwrap()
    }

    fn text(id: &str, max_tokens: u32) -> BackendRequest {
        let request = GenerateRequest::new(
            "m",
            Prompt::Text("Say hi to the sea".to_owned()),
            max_tokens,
        )
        .with_id(id);
        BackendRequest::new(request, Arc::new(ByteBound::default()))
    }

    // ------------------------------------------------------------ conformance

    struct Target;

    #[async_trait::async_trait]
    impl ConformanceTarget for Target {
        async fn instance(&self, scenario: Scenario) -> Option<Instance> {
            let options = crate::scenario_options!(
                scenario,
                SimOptions {
                    ..SimOptions::default()
                },
                before: vec![Fault::ErrorEvent {
                    after_tokens: 0,
                    json: QUEUE_FULL_EVENT.to_owned(),
                }],
                after: vec![Fault::ErrorEvent {
                    after_tokens: 2,
                    json: INTERNAL_EVENT.to_owned(),
                }],
                // Chat goes to SGLang's OpenAI route, with its parsers on.
                structured: |mut o: SimOptions| {
                    o.reasoning_tokens = 3;
                    o.tool_call = Some("get_weather".to_owned());
                    o.natural_tokens = 12;
                    Some(o)
                },
            )?;
            let sim = SglangSim::start(options).await;
            Some(Instance {
                backend: Arc::new(backend(&sim)),
                probe: sim,
                model: "m".to_owned(),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sglang_adapter_conforms_over_http() {
        let report = conformance::run(&Target, &ConformanceConfig::default()).await;
        println!("{report}");
        report.assert_passed();
    }

    // -------------------------------------------------- request and TV-07

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn text_prompts_go_to_generate_with_rid_and_sampling_params() {
        let sim = SglangSim::start(SimOptions::default()).await;
        let b = backend(&sim);
        let mut request =
            GenerateRequest::new("m", Prompt::Text("Say hi".to_owned()), 8).with_id("r-7");
        request.sampling.temperature = Some(0.0);
        request.sampling.top_p = Some(0.5);
        request.sampling.stop = vec!["\n".to_owned()];
        let request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        let d = run(&b, request).await.unwrap();
        assert_eq!(d.error.as_ref().map(ToString::to_string), None);
        let sent = sim.generations();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].path, "/generate");
        let body: Value = serde_json::from_str(&sent[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "text": "Say hi",
                "sampling_params": {"max_new_tokens": 8, "temperature": 0.0, "top_p": 0.5, "stop": ["\n"]},
                "stream": true,
                "rid": "r-7",
            })
        );
        // Token prompts go as input_ids.
        let request = GenerateRequest::new("m", Prompt::Tokens(vec![1, 2, 3]), 4).with_id("t");
        run(
            &b,
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        let body: Value = serde_json::from_str(&sim.generations()[1].body).unwrap();
        assert_eq!(body["input_ids"], serde_json::json!([1, 2, 3]));
        assert_eq!(body["rid"], "t");
        assert!(body.get("text").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cumulative_text_becomes_exact_deltas_even_split_mid_character() {
        for incremental in [false, true] {
            let sim = SglangSim::start(SimOptions {
                natural_tokens: 12,
                incremental_output: incremental,
                script: vec![Fault::SplitUtf8 { at_token: 3 }],
                ..SimOptions::default()
            })
            .await;
            let b = SglangBackend::new(
                config(&sim),
                SglangOptions {
                    incremental_streaming_output: incremental,
                    ..SglangOptions::default()
                },
            )
            .unwrap();
            let d = run(&b, text("a", 100)).await.unwrap();
            assert!(d.error.is_none(), "{:?}", d.error);
            let mut want: Vec<String> = (0..12).map(|i| token_text(i).to_owned()).collect();
            want[3] = "é🙂".to_owned();
            assert_eq!(d.deltas(), want, "incremental={incremental}");
            assert!(!d.text().contains('\u{FFFD}'));
            assert_eq!(d.tokens(), 12);
            assert_eq!(d.finish(), Some(FinishReason::Stop));
            // The multi-byte tokens of the vocabulary split across events.
            let d = run(&b, text("b", 10)).await.unwrap();
            assert_eq!(d.text(), text_of(10));
            assert_eq!(d.deltas()[5..8], [" é", "🙂", " 日本"]);
            assert_eq!(d.finish(), Some(FinishReason::Length));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_text_that_does_not_extend_the_previous_fails_loudly() {
        let sim = SglangSim::start(SimOptions {
            script: vec![Fault::NotAPrefix { at_token: 2 }],
            ..SimOptions::default()
        })
        .await;
        let d = run(&backend(&sim), text("np", 100)).await.unwrap();
        assert_eq!(d.deltas(), ["Hel", "lo"]);
        let e = d.error.unwrap();
        assert_eq!(
            (e.kind(), e.phase()),
            (
                FailureKind::ProtocolViolation,
                FailurePhase::AfterFirstToken
            )
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usage_has_cached_and_speculative_counts_exactly() {
        for new_names in [false, true] {
            let sim = SglangSim::start(SimOptions {
                natural_tokens: 10,
                cached_tokens: 3,
                spec_num_draft_tokens: Some(4),
                spec_new_names: new_names,
                ..SimOptions::default()
            })
            .await;
            let d = run(&backend(&sim), text("u", 100)).await.unwrap();
            // "Say hi to the sea": 5 words + 1.
            let u = d.usage().unwrap();
            assert_eq!((u.prompt(), u.cached(), u.completion()), (6, 3, 10));
            // 10 tokens in ceil(10/3) = 4 verify passes: 6 accepted of 4 × 3 proposed.
            assert_eq!((u.drafted(), u.accepted(), u.rejected()), (12, 6, 6));
            assert_eq!(u.canceled(), 0);
            assert_eq!(d.tokens(), 10);
        }
        // Without speculation or cache.
        let sim = SglangSim::start(SimOptions::default()).await;
        let d = run(&backend(&sim), text("plain", 4)).await.unwrap();
        assert_eq!(d.usage(), Some(Usage::new(6, 4)));
    }

    // --------------------------------------------------------------- logprobs

    fn asking(id: &str, max_tokens: u32, extra: &str) -> BackendRequest {
        let mut request = GenerateRequest::new(
            "m",
            Prompt::Text("Say hi to the sea".to_owned()),
            max_tokens,
        )
        .with_id(id);
        request.extra = Some(extra.into());
        BackendRequest::new(request, Arc::new(ByteBound::default()))
    }

    /// Every delta's logprobs, in order.
    fn logprobs(d: &Drained) -> Vec<TokenLogprob> {
        d.events
            .iter()
            .filter_map(|e| match e {
                TokenEvent::Delta(delta) => Some(delta.logprobs.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The simulator's logprobs of the first `n` tokens, `top` alternatives
    /// each.
    fn expected(n: u32, top: u32) -> Vec<TokenLogprob> {
        (0..n)
            .map(|i| TokenLogprob {
                token: token_text(i).to_owned(),
                logprob: token_logprob(i),
                bytes: None,
                top_logprobs: (0..top)
                    .map(|rank| {
                        let (_, token, logprob) = top_logprob(i, rank);
                        TopLogprob {
                            token,
                            logprob,
                            bytes: None,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// The logprob fields of the last `/generate` body.
    fn asked(sim: &SglangSim) -> [Value; 3] {
        let sent = sim.generations();
        let body: Value = serde_json::from_str(&sent[sent.len() - 1].body).unwrap();
        [
            "return_logprob",
            "top_logprobs_num",
            "return_text_in_logprobs",
        ]
        .map(|key| body.get(key).cloned().unwrap_or(Value::Null))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logprobs_asked_for_come_with_each_token_from_meta_info() {
        use serde_json::json;
        for incremental in [false, true] {
            let sim = SglangSim::start(SimOptions {
                natural_tokens: 6,
                incremental_output: incremental,
                ..SimOptions::default()
            })
            .await;
            let b = SglangBackend::new(
                config(&sim),
                SglangOptions {
                    incremental_streaming_output: incremental,
                    ..SglangOptions::default()
                },
            )
            .unwrap();
            // The completions form: `logprobs: 2` asks for two alternatives.
            let d = run(&b, asking("lp", 100, r#"{"logprobs":2,"echo":false}"#))
                .await
                .unwrap();
            assert!(d.error.is_none(), "{:?}", d.error);
            assert_eq!(asked(&sim), [json!(true), json!(2), json!(true)]);
            assert_eq!(logprobs(&d), expected(6, 2), "incremental={incremental}");
            // Each delta carries its own tokens' logprobs, only the new ones.
            for event in &d.events {
                if let TokenEvent::Delta(delta) = event {
                    assert_eq!(delta.logprobs.len(), delta.tokens as usize);
                    assert_eq!(delta.logprobs[0].token, delta.text);
                }
            }
            assert_eq!((d.text(), d.tokens()), (text_of(6), 6));
            assert_eq!(d.finish(), Some(FinishReason::Stop));
            // SGLang's own field: the tokens' logprobs, no alternatives.
            let d = run(&b, asking("native", 3, r#"{"return_logprob":true}"#))
                .await
                .unwrap();
            assert_eq!(asked(&sim), [json!(true), Value::Null, json!(true)]);
            assert_eq!(logprobs(&d), expected(3, 0));
            assert_eq!(d.finish(), Some(FinishReason::Length));
            // The chat form: `logprobs: true` with `top_logprobs`.
            let d = run(
                &b,
                asking("chat-form", 4, r#"{"logprobs":true,"top_logprobs":1}"#),
            )
            .await
            .unwrap();
            assert_eq!(asked(&sim), [json!(true), json!(1), json!(true)]);
            assert_eq!(logprobs(&d), expected(4, 1));
        }
        // Not asked, or asked not to: none of the fields go, no logprobs come.
        let sim = SglangSim::start(SimOptions::default()).await;
        for extra in [
            r#"{"logprobs":false}"#,
            r#"{"return_logprob":false,"logprobs":3}"#,
            r#"{"top_logprobs":2}"#,
        ] {
            let d = run(&backend(&sim), asking("no", 4, extra)).await.unwrap();
            assert_eq!(
                asked(&sim),
                [Value::Null, Value::Null, Value::Null],
                "{extra}"
            );
            assert!(logprobs(&d).is_empty());
            assert_eq!(d.text(), text_of(4));
        }
    }

    // --------------------------------------------------------------- failures

    fn http(status: u16, body: &str) -> Fault {
        Fault::Http {
            status,
            body: body.to_owned(),
        }
    }

    fn event(after_tokens: u32, json: &str) -> Fault {
        Fault::ErrorEvent {
            after_tokens,
            json: json.to_owned(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_failure_shape_is_typed_with_its_phase() {
        use FailureKind as K;
        use FailurePhase::{AfterFirstToken as Post, BeforeFirstToken as Pre};
        let cases: Vec<(Fault, FailureKind, FailurePhase)> = vec![
            (http(400, CONTEXT_400), K::ContextLengthExceeded, Pre),
            (
                http(
                    400,
                    r#"{"error":{"message":"Requested token count exceeds the model's maximum context length of 8192 tokens. You requested a total of 9000 tokens: 8000 tokens from the input messages and 1000 tokens for the completion. Please reduce the number of tokens in the input messages or the completion to fit within the limit."}}"#,
                ),
                K::ContextLengthExceeded,
                Pre,
            ),
            (http(400, INVALID_400), K::InvalidRequest, Pre),
            (
                http(
                    503,
                    r#"{"object":"error","message":"The request queue is full.","type":"503","param":null,"code":503}"#,
                ),
                K::Overloaded,
                Pre,
            ),
            (
                http(
                    500,
                    r#"{"object":"error","message":"Internal server error: 503: The request queue is full.","type":"InternalServerError","param":null,"code":500}"#,
                ),
                K::Overloaded,
                Pre,
            ),
            (
                http(
                    500,
                    r#"{"object":"error","message":"Internal server error: boom","type":"InternalServerError","param":null,"code":500}"#,
                ),
                K::Internal,
                Pre,
            ),
            (event(0, QUEUE_FULL_EVENT), K::Overloaded, Pre),
            (event(3, QUEUE_FULL_EVENT), K::Overloaded, Post),
            (event(0, INTERNAL_EVENT), K::Internal, Pre),
            (event(3, INTERNAL_EVENT), K::Internal, Post),
            (event(2, VALUE_ERROR_EVENT), K::Internal, Post),
            (
                Fault::AbortFinish {
                    after_tokens: 0,
                    status_code: Some(503),
                    message: "The request queue is full.".to_owned(),
                },
                K::Overloaded,
                Pre,
            ),
            (
                Fault::AbortFinish {
                    after_tokens: 2,
                    status_code: Some(500),
                    message: "CUDA out of memory.".to_owned(),
                },
                K::OutOfMemory,
                Post,
            ),
            (
                Fault::AbortFinish {
                    after_tokens: 2,
                    status_code: None,
                    message: "Abort in decode".to_owned(),
                },
                K::Canceled,
                Post,
            ),
            (
                Fault::Truncate { after_tokens: 0 },
                K::ProtocolViolation,
                Pre,
            ),
            (
                Fault::Truncate { after_tokens: 2 },
                K::ProtocolViolation,
                Post,
            ),
        ];
        let script: Vec<Fault> = cases.iter().map(|(f, _, _)| f.clone()).collect();
        let sim = SglangSim::start(SimOptions {
            script,
            ..SimOptions::default()
        })
        .await;
        let b = backend(&sim);
        for (i, (fault, kind, phase)) in cases.into_iter().enumerate() {
            let e = match run(&b, text(&format!("f{i}"), 100)).await {
                Err(e) => e,
                Ok(d) => {
                    let delivered = d.tokens();
                    let e = d.error.unwrap_or_else(|| panic!("{fault:?} did not fail"));
                    assert_eq!(delivered > 0, phase == Post, "{fault:?}");
                    e
                }
            };
            assert_eq!((e.kind(), e.phase()), (kind, phase), "{fault:?}: {e}");
            assert!(
                e.message().starts_with("engine: ")
                    || kind == K::ProtocolViolation
                    || kind == K::Canceled,
                "{e}"
            );
        }
        assert_eq!(b.pressure().inflight, 0);
        // The engine ended each of these itself: no abort was sent, except
        // for the cut streams (the engine may still hold those).
        tokio::time::sleep(ms(20)).await;
        let mut rids: Vec<String> = sim.abort_calls().into_iter().map(|(r, _)| r).collect();
        rids.sort();
        assert_eq!(rids, ["f14", "f15"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_overloaded_as_the_first_event_and_marks_pressure() {
        let sim = SglangSim::start(SimOptions {
            slots: 1,
            max_queued: Some(1),
            natural_tokens: 10_000,
            token_interval: ms(5),
            ..SimOptions::default()
        })
        .await;
        let b = backend(&sim);
        let _running = b
            .start(text("r", 10_000), CancelHandle::new())
            .await
            .unwrap();
        reach(&sim, "r", EnginePhase::Decode).await;
        let _queued = b
            .start(text("q", 10_000), CancelHandle::new())
            .await
            .unwrap();
        reach(&sim, "q", EnginePhase::Queued).await;
        let d = run(&b, text("x", 10)).await.unwrap();
        let e = d.error.unwrap();
        assert_eq!(
            (e.kind(), e.phase(), e.is_retryable()),
            (
                FailureKind::Overloaded,
                FailurePhase::BeforeFirstToken,
                true
            )
        );
        assert!(b.pressure().overloaded);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_refused_is_connect_before_the_first_token() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let b = sglang::backend(UpstreamConfig::new("gone", url, "m")).unwrap();
        let e = run(&b, text("c", 4)).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::Connect, FailurePhase::BeforeFirstToken)
        );
        assert!(!b.health().await.is_healthy());
    }

    // ------------------------------------------------------- aborts per phase

    async fn reach(sim: &SglangSim, id: &str, phase: EnginePhase) {
        let until = Instant::now() + Duration::from_secs(5);
        while sim.phase_now(id) != Some(phase) {
            assert!(Instant::now() < until, "{id} never reached {phase}");
            tokio::time::sleep(ms(1)).await;
        }
    }

    /// Waits for `/abort_request` of `rid`, checks the simulator counted it
    /// in `phase`, and returns how long after `since` it arrived.
    async fn abort_seen(
        sim: &SglangSim,
        rid: &str,
        phase: EnginePhase,
        since: Instant,
    ) -> Duration {
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            if let Some(record) = sim.abort_log().into_iter().find(|r| r.rid == rid) {
                assert_eq!(record.phase, phase, "{rid}");
                assert_eq!(record.source, AbortSource::AbortRequest, "{rid}");
                return record.at.saturating_duration_since(since);
            }
            assert!(Instant::now() < until, "{rid}: no abort_request seen");
            tokio::time::sleep(ms(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_request_reaches_the_engine_within_50ms_in_every_phase() {
        let sim = SglangSim::start(SimOptions {
            slots: 1,
            first_prefill: Some(Duration::from_secs(30)),
            natural_tokens: 10_000,
            token_interval: ms(10),
            ..SimOptions::default()
        })
        .await;
        let b = backend(&sim);
        let prefill_cancel = CancelHandle::new();
        let mut prefill = b
            .start(text("p", 100), prefill_cancel.clone())
            .await
            .unwrap();
        reach(&sim, "p", EnginePhase::Prefill).await;
        let queued_cancel = CancelHandle::new();
        let mut queued = b
            .start(text("q", 100), queued_cancel.clone())
            .await
            .unwrap();
        reach(&sim, "q", EnginePhase::Queued).await;
        // A cancel reaches the engine as the consumer reads on (it must
        // read or drop the stream: the reader runs in its polls).
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

        let decode_cancel = CancelHandle::new();
        let mut decode = b
            .start(text("d", 10_000), decode_cancel.clone())
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

        let mut dropped = b
            .start(text("x", 10_000), CancelHandle::new())
            .await
            .unwrap();
        first_delta(&mut dropped).await;
        let t0 = Instant::now();
        drop(dropped);
        let latency_drop = abort_seen(&sim, "x", EnginePhase::Decode, t0).await;

        assert!(!b.abort(&"nobody".into()).await.unwrap());
        let mut aborted = b
            .start(text("a", 10_000), CancelHandle::new())
            .await
            .unwrap();
        first_delta(&mut aborted).await;
        let t0 = Instant::now();
        assert!(b.abort(&"a".into()).await.unwrap());
        let (latency_abort, e) = tokio::join!(
            abort_seen(&sim, "a", EnginePhase::Decode, t0),
            drain_error(&mut aborted)
        );
        assert_eq!(e.kind(), FailureKind::Canceled);
        assert!(!b.abort(&"a".into()).await.unwrap());

        // The deadline aborts too.
        let mut late = text("t", 10_000);
        late.budget.deadline = Some(Instant::now() + ms(100));
        let d = run(&b, late).await.unwrap();
        assert_eq!(d.error.unwrap().kind(), FailureKind::TotalTimeout);
        let latency_deadline =
            abort_seen(&sim, "t", EnginePhase::Decode, Instant::now() - ms(1)).await;

        let latencies = [latency_q, latency_p, latency_d, latency_drop, latency_abort];
        println!(
            "abort_request latencies (queued, prefill, decode, drop, abort, deadline): {latencies:?} {latency_deadline:?}"
        );
        for latency in latencies {
            assert!(latency < ms(50), "{latencies:?}");
        }
        let aborts = sim.abort_counts();
        assert_eq!((aborts.queued, aborts.prefill, aborts.decode), (1, 1, 4));
        // Each rid was aborted exactly once, by `/abort_request`.
        let rids: Vec<String> = sim.abort_calls().into_iter().map(|(r, _)| r).collect();
        assert_eq!(rids, ["q", "p", "d", "x", "a", "t"]);
        assert_eq!(b.pressure().inflight, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_start_future_still_aborts() {
        let sim = SglangSim::start(SimOptions {
            first_prefill: Some(Duration::from_secs(30)),
            ..SimOptions::default()
        })
        .await;
        let b = backend(&sim);
        // The stream head arrives at once; drop the stream while in prefill.
        let s = b.start(text("p", 10), CancelHandle::new()).await.unwrap();
        reach(&sim, "p", EnginePhase::Prefill).await;
        let t0 = Instant::now();
        drop(s);
        let latency = abort_seen(&sim, "p", EnginePhase::Prefill, t0).await;
        assert!(latency < ms(50));
    }

    // ------------------------------------------------------------------- chat

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_goes_to_the_openai_route_with_rid_and_is_aborted_by_rid() {
        let sim = SglangSim::start(SimOptions {
            natural_tokens: 5,
            ..SimOptions::default()
        })
        .await;
        let b = backend(&sim);
        let chat = |id: &str, max: u32| {
            let request =
                GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("hi there")]), max)
                    .with_id(id);
            BackendRequest::new(request, Arc::new(ByteBound::default()))
        };
        let d = run(&b, chat("c1", 100)).await.unwrap();
        assert!(d.error.is_none(), "{:?}", d.error);
        assert_eq!(d.text(), text_of(5));
        assert_eq!(d.finish(), Some(FinishReason::Stop));
        let sent = &sim.generations()[0];
        assert_eq!(sent.path, "/v1/chat/completions");
        let body: Value = serde_json::from_str(&sent.body).unwrap();
        assert_eq!(body["rid"], "c1");
        assert_eq!(body["stream"], true);
        assert!(sim.abort_calls().is_empty());

        let sim = SglangSim::start(SimOptions {
            natural_tokens: 10_000,
            token_interval: ms(10),
            ..SimOptions::default()
        })
        .await;
        let b = backend(&sim);
        let cancel = CancelHandle::new();
        let mut s = b.start(chat("c2", 10_000), cancel.clone()).await.unwrap();
        first_delta(&mut s).await;
        cancel.cancel(CancelReason::ClientGone);
        let latency = abort_seen(
            &sim,
            "c2",
            EnginePhase::Decode,
            cancel.canceled_at().unwrap(),
        )
        .await;
        assert!(latency < ms(50));
        assert_eq!(drain_error(&mut s).await.kind(), FailureKind::Canceled);
        assert_eq!(b.pressure().inflight, 0);
    }

    // --------------------------------------------------------------- pressure

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pressure_is_read_from_sglang_metrics() {
        let sim = SglangSim::start(SimOptions {
            slots: 1,
            natural_tokens: 10_000,
            token_interval: ms(5),
            ..SimOptions::default()
        })
        .await;
        let mut c = config(&sim);
        c.max_concurrency = Some(8);
        let b = sglang::backend(c).unwrap();
        let idle = b.pressure();
        assert_eq!((idle.running, idle.waiting, idle.limit), (0, 0, Some(8)));
        let a = b
            .start(text("a", 10_000), CancelHandle::new())
            .await
            .unwrap();
        let q = b
            .start(text("b", 10_000), CancelHandle::new())
            .await
            .unwrap();
        assert_eq!(b.pressure().inflight, 2);
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let p = b.pressure();
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
        drop((a, q));
        let until = Instant::now() + Duration::from_secs(2);
        while b.pressure().queued_and_running() != 0 || b.pressure().inflight != 0 {
            assert!(Instant::now() < until, "pressure stuck: {:?}", b.pressure());
            tokio::time::sleep(ms(1)).await;
        }
        drop(b);
        tokio::time::sleep(ms(20)).await;
        let scrapes = sim.scrapes();
        tokio::time::sleep(ms(50)).await;
        assert_eq!(sim.scrapes(), scrapes);
    }

    // ------------------------------------------------------- health and config

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_and_config_entries() {
        use gateway_adapters::config::BackendConfig;
        use gateway_adapters::engines::{EngineError, OnDisconnect};
        let sim = SglangSim::start(SimOptions {
            model: "served".into(),
            natural_tokens: 10_000,
            token_interval: ms(10),
            ..SimOptions::default()
        })
        .await;
        let mut entry = BackendConfig {
            name: "s0".into(),
            engine: EngineKind::Sglang,
            url: Some(sim.url()),
            model: "public".into(),
            served_model: "served".into(),
            max_concurrency: std::num::NonZeroU32::new(3),
            on_disconnect: OnDisconnect::Abort,
            api_key_env: None,
            metrics_url: None,
            ca_file: None,
            capabilities: None,
            context_window: None,
            sim: None,
        };
        let b = entry.remote_backend().unwrap();
        assert_eq!(b.info().engine, EngineKind::Sglang);
        assert_eq!(b.info().models, vec!["public".to_owned()]);
        assert_eq!(b.pressure().limit, Some(3));
        assert_eq!(b.health().await, Health::Healthy);
        let _running = b
            .start(text("r", 10_000), CancelHandle::new())
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(3);
        while b.pressure().running != 1 {
            assert!(Instant::now() < until, "{:?}", b.pressure());
            tokio::time::sleep(ms(5)).await;
        }
        // The SGLang adapter only aborts.
        entry.on_disconnect = OnDisconnect::drain();
        assert_eq!(
            entry.remote_backend().unwrap_err(),
            EngineError::DrainUnsupported(EngineKind::Sglang)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chat_reasoning_and_tool_calls_keep_sglangs_shapes() {
        let sim = SglangSim::start(SimOptions {
            reasoning_tokens: 2,
            tool_call: Some("get_weather".into()),
            natural_tokens: 5,
            ..SimOptions::default()
        })
        .await;
        let request = GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("Hi")]), 20);
        let d = run(
            &backend(&sim),
            BackendRequest::new(request, Arc::new(ByteBound::default())),
        )
        .await
        .unwrap();
        let deltas: Vec<_> = d
            .events
            .iter()
            .filter_map(|e| match e {
                TokenEvent::Delta(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(deltas.len(), 5, "{:?}", d.events);
        // SGLang names reasoning `reasoning_content`: the client gets that name.
        assert!(
            deltas[..2]
                .iter()
                .all(|d| d.reasoning_field == ReasoningField::ReasoningContent && d.tokens == 1)
        );
        let first = &deltas[2].tool_calls[0];
        assert_eq!(
            (first.name.as_deref(), first.kind.as_deref()),
            (Some("get_weather"), Some("function"))
        );
        assert!(first.id.as_deref().unwrap().starts_with("call_"));
        // Later fragments carry `"id":null,"name":null`: no id, no name.
        assert!(
            deltas[3..]
                .iter()
                .all(|d| d.tool_calls[0].id.is_none() && d.tool_calls[0].name.is_none())
        );
        assert_eq!(d.finish(), Some(FinishReason::ToolCalls));
        assert_eq!(d.tokens(), 5);
    }
}
