//! The Triton adapter over loopback HTTP against the wire-faithful Triton
//! simulator: conformance, the exact `generate_stream` body, per-step
//! `text_output` to exact deltas with the finish inferred (TV-15), split
//! characters, every failure shape (TV-16, TV-17), aborts by closing the
//! connection in every phase, pressure from Triton's and TRT-LLM's metric
//! names, and building from a `[[backends]]` entry.
//!
//! The wire format is the one ENGINES.md §5 documents from
//! `triton-inference-server/server:src/http_server.cc@e1db8a603d86`
//! (2026-08-19; `GenerateRequestClass`), the TRT-LLM ensemble
//! `NVIDIA/TensorRT-LLM:triton_backend/all_models/inflight_batcher_llm/ensemble/config.pbtxt@2a9abd9536aa`
//! and the metric names of `triton-inference-server/tensorrtllm_backend:README.md@0b9d7d5a1958`.
#![cfg(feature = "engines")]

#[cfg(test)]
pub mod support;

#[cfg(test)]
mod engine_triton {
    use std::sync::Arc;
    use std::time::Duration;

    use gateway_adapters::engines::UpstreamConfig;
    use gateway_adapters::engines::triton::{self, TritonBackend, TritonOptions};
    use gateway_core::testkit::conformance::{
        self, ConformanceConfig, ConformanceTarget, Instance, Scenario,
    };
    use gateway_core::{
        Backend, BackendRequest, ByteBound, CancelHandle, CancelReason, ChatMessage, EngineKind,
        EnginePhase, FailureKind, FailurePhase, FinishReason, GenerateRequest, Health, Prompt,
        TokenEvent, Usage,
    };
    use serde_json::Value;
    use tokio::time::Instant;

    use crate::support::kit::{drain_error, first_delta, ms, run};
    use gateway_sims::triton::{Fault, QUEUE_FULL, SimOptions, TritonSim, text_of, token_text};

    fn config(sim: &TritonSim) -> UpstreamConfig {
        let mut c = UpstreamConfig::new("triton-0", sim.url(), "m");
        c.served_model = Some("ensemble".to_owned());
        c.metrics_url = Some(sim.metrics_url());
        c.scrape_interval = ms(5);
        c
    }

    fn backend(sim: &TritonSim) -> TritonBackend {
        triton::backend(config(sim)).unwrap()
    }

    /// A text request served as `ensemble`.
    fn text(id: &str, max_tokens: u32) -> BackendRequest {
        let request = GenerateRequest::new(
            "m",
            Prompt::Text("Say hi to the sea".to_owned()),
            max_tokens,
        )
        .with_id(id);
        let mut request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        request.served_model = "ensemble".to_owned();
        request
    }

    // ------------------------------------------------------------ conformance

    struct Target;

    #[async_trait::async_trait]
    impl ConformanceTarget for Target {
        async fn instance(&self, scenario: Scenario) -> Option<Instance> {
            let options = crate::scenario_options!(
                scenario,
                SimOptions {
                    model: "m".to_owned(),
                    ..SimOptions::default()
                },
                before: vec![Fault::ErrorEvent {
                    after_tokens: 0,
                    message: QUEUE_FULL.to_owned(),
                }],
                after: vec![Fault::ErrorEvent {
                    after_tokens: 2,
                    message: "Encountered an error in forwardAsync".to_owned(),
                }],
            )?;
            let sim = TritonSim::start(options).await;
            let mut c = UpstreamConfig::new("triton-0", sim.url(), "m");
            c.metrics_url = Some(sim.metrics_url());
            c.scrape_interval = ms(5);
            Some(Instance {
                backend: Arc::new(triton::backend(c).unwrap()),
                probe: sim,
                model: "m".to_owned(),
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn triton_adapter_conforms_over_http() {
        let report = conformance::run(&Target, &ConformanceConfig::default()).await;
        println!("{report}");
        report.assert_passed();
    }

    // ------------------------------------------------------- request and TV-15

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_body_is_flat_json_keyed_by_input_tensor_names() {
        let sim = TritonSim::start(SimOptions::default()).await;
        let b = backend(&sim);
        let mut request =
            GenerateRequest::new("m", Prompt::Text("What is ML?".to_owned()), 16).with_id("q1");
        request.sampling.temperature = Some(0.5);
        request.sampling.top_p = Some(0.25);
        request.sampling.seed = Some(7);
        request.sampling.stop = vec!["\n".to_owned()];
        request.extra = Some(r#"{"logprobs":true}"#.into());
        let mut request = BackendRequest::new(request, Arc::new(ByteBound::default()));
        request.served_model = "ensemble".to_owned();
        request.budget.max_completion_tokens = 12;
        let d = run(&b, request).await.unwrap();
        assert!(d.error.is_none(), "{:?}", d.error);
        let sent = sim.generations();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].path, "/v2/models/ensemble/generate_stream");
        let body: Value = serde_json::from_str(&sent[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "q1",
                "text_input": "What is ML?",
                "max_tokens": 12,
                "stream": true,
                "temperature": 0.5,
                "top_p": 0.25,
                "seed": 7,
                "stop_words": ["\n"],
                "return_num_input_tokens": true,
                "return_num_output_tokens": true,
            })
        );

        // Without the count inputs, only the core fields go.
        let b2 = TritonBackend::new(
            config(&sim),
            TritonOptions {
                request_token_counts: false,
                ..TritonOptions::default()
            },
        )
        .unwrap();
        run(&b2, text("plain", 4)).await.unwrap();
        let body: Value = serde_json::from_str(&sim.generations()[1].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"id": "plain", "text_input": "Say hi to the sea", "max_tokens": 4, "stream": true})
        );

        // Chat and token prompts are refused before anything is sent.
        for prompt in [
            Prompt::Chat(vec![ChatMessage::user("hi")]),
            Prompt::Tokens(vec![1, 2, 3]),
        ] {
            let request = GenerateRequest::new("m", prompt, 4);
            let e = run(
                &b,
                BackendRequest::new(request, Arc::new(ByteBound::default())),
            )
            .await
            .unwrap_err();
            assert_eq!(
                (e.kind(), e.phase()),
                (FailureKind::InvalidRequest, FailurePhase::BeforeFirstToken)
            );
        }
        assert_eq!(sim.generations().len(), 2);
        assert_eq!(b.pressure().inflight, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn step_texts_become_exact_deltas_and_the_finish_is_inferred() {
        for (counts, cumulative) in [(true, false), (false, false), (true, true), (false, true)] {
            let sim = TritonSim::start(SimOptions {
                natural_tokens: 6,
                token_count_outputs: counts,
                cumulative_output: cumulative,
                ..SimOptions::default()
            })
            .await;
            let b = TritonBackend::new(
                config(&sim),
                TritonOptions {
                    request_token_counts: counts,
                    cumulative_output: cumulative,
                    ..TritonOptions::default()
                },
            )
            .unwrap();
            let label = format!("counts={counts} cumulative={cumulative}");
            // Stops on its own before the cap.
            let d = run(&b, text("s", 100)).await.unwrap();
            assert!(d.error.is_none(), "{label}: {:?}", d.error);
            let want: Vec<String> = (0..6).map(|i| token_text(i).to_owned()).collect();
            assert_eq!(d.deltas(), want, "{label}");
            assert_eq!(d.tokens(), 6, "{label}");
            assert_eq!(d.finish(), Some(FinishReason::Stop), "{label}");
            // Prompt: the engine's count (5 words + 1), else the counter's
            // byte bound (17 bytes + 2).
            let prompt = if counts { 6 } else { 19 };
            assert_eq!(d.usage(), Some(Usage::new(prompt, 6)), "{label}");
            // Reaches the cap: Length.
            let d = run(&b, text("l", 3)).await.unwrap();
            assert_eq!(d.text(), text_of(3), "{label}");
            assert_eq!(d.finish(), Some(FinishReason::Length), "{label}");
            assert_eq!(d.usage(), Some(Usage::new(prompt, 3)), "{label}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_characters_never_reach_the_client_as_replacement() {
        for cumulative in [false, true] {
            let sim = TritonSim::start(SimOptions {
                natural_tokens: 8,
                cumulative_output: cumulative,
                script: vec![
                    Fault::ReplacementThenFix { at_token: 3 },
                    Fault::RawSplit { at_token: 2 },
                ],
                ..SimOptions::default()
            })
            .await;
            let b = TritonBackend::new(
                config(&sim),
                TritonOptions {
                    cumulative_output: cumulative,
                    ..TritonOptions::default()
                },
            )
            .unwrap();
            let d = run(&b, text("fix", 100)).await.unwrap();
            assert!(d.error.is_none(), "{:?}", d.error);
            let mut want: Vec<String> = (0..8).map(|i| token_text(i).to_owned()).collect();
            want[3] = "é🙂".to_owned();
            want.remove(4);
            assert_eq!(d.deltas(), want, "cumulative={cumulative}");
            assert!(!d.text().contains('\u{FFFD}'));
            assert_eq!(d.tokens(), 8);
            // The held placeholder's token rides on the fixed piece.
            let fixed = d.events.iter().find_map(|e| match e {
                TokenEvent::Delta(x) if x.text == "é🙂" => Some(x.tokens),
                _ => None,
            });
            assert_eq!(fixed, Some(2));

            let d = run(&b, text("raw", 100)).await.unwrap();
            let mut want: Vec<String> = (0..8).map(|i| token_text(i).to_owned()).collect();
            want[2] = "é🙂".to_owned();
            assert_eq!(d.deltas(), want, "cumulative={cumulative}");
            assert_eq!(d.finish(), Some(FinishReason::Stop));
        }
    }

    // --------------------------------------------------------------- failures

    fn http(status: u16, message: &str, sse: bool) -> Fault {
        Fault::Http {
            status,
            message: message.to_owned(),
            sse,
        }
    }

    fn event(after_tokens: u32, message: &str) -> Fault {
        Fault::ErrorEvent {
            after_tokens,
            message: message.to_owned(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_failure_shape_is_typed_with_its_phase() {
        use FailureKind as K;
        use FailurePhase::{AfterFirstToken as Post, BeforeFirstToken as Pre};
        let cases: Vec<(Fault, FailureKind, FailurePhase)> = vec![
            // A model's error before its first token: 400 whatever its
            // code, SSE-framed (tritonserver 2.51); typed by its message.
            (
                http(400, "Encountered an error in forwardAsync", true),
                K::Internal,
                Pre,
            ),
            (
                http(400, "CUDA out of memory. Tried to allocate", true),
                K::OutOfMemory,
                Pre,
            ),
            // The frontend's refusal (JSON) is the request's fault.
            (
                http(400, "in ensemble 'ensemble', unexpected shape", false),
                K::InvalidRequest,
                Pre,
            ),
            (
                http(
                    400,
                    "Prompt length (9000) exceeds maximum input length (8192).",
                    true,
                ),
                K::ContextLengthExceeded,
                Pre,
            ),
            (
                http(404, "Request for unknown model: 'x' is not found", false),
                K::ModelNotFound,
                Pre,
            ),
            (http(500, "Executor failed", true), K::Internal, Pre),
            (
                http(500, "CUDA out of memory. Tried to allocate", true),
                K::OutOfMemory,
                Pre,
            ),
            (
                http(501, "unsupported operation", true),
                K::UpstreamStatus,
                Pre,
            ),
            (http(503, QUEUE_FULL, false), K::Overloaded, Pre),
            (http(503, QUEUE_FULL, true), K::Overloaded, Pre),
            (event(0, QUEUE_FULL), K::Overloaded, Pre),
            (event(0, "boom"), K::Internal, Pre),
            (event(3, "boom"), K::Internal, Post),
            (
                event(2, "[TensorRT-LLM][ERROR] CUDA out of memory"),
                K::OutOfMemory,
                Post,
            ),
            (event(2, QUEUE_FULL), K::Overloaded, Post),
            (Fault::Cut { after_tokens: 0 }, K::Connect, Pre),
            (Fault::Cut { after_tokens: 2 }, K::Connect, Post),
        ];
        let script: Vec<Fault> = cases.iter().map(|(f, _, _)| f.clone()).collect();
        let sim = TritonSim::start(SimOptions {
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
            assert_eq!(
                e.is_retryable(),
                phase == Pre
                    && matches!(
                        kind,
                        K::Connect
                            | K::Overloaded
                            | K::OutOfMemory
                            | K::Internal
                            | K::UpstreamStatus
                    ),
                "{fault:?}"
            );
            if kind != K::Connect {
                assert!(e.message().starts_with("engine: "), "{e}");
            }
        }
        assert_eq!(b.pressure().inflight, 0);

        // A model that does not declare the count inputs takes them as
        // request parameters (tritonserver 2.51): no counts come back, one
        // token per response, the prompt from the request's counter.
        let sim = TritonSim::start(SimOptions {
            token_count_outputs: false,
            ..SimOptions::default()
        })
        .await;
        let d = run(&backend(&sim), text("u", 4)).await.unwrap();
        assert!(d.error.is_none(), "{:?}", d.error);
        assert_eq!(d.text(), text_of(4));
        assert_eq!(d.usage(), Some(Usage::new(19, 4)));
        // An unknown model is 404.
        let mut request = text("nf", 4);
        request.served_model = "nope".to_owned();
        let e = run(&backend(&sim), request).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::ModelNotFound);
    }

    /// A model's error before its first token is a 400 with the error
    /// SSE-framed, whatever its code: typed by its message (the backend's
    /// fault, retried elsewhere), not as the request's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_error_before_the_first_token_is_not_the_requests_fault() {
        let sim = TritonSim::start(SimOptions {
            script: vec![event(0, "the model is unavailable")],
            ..SimOptions::default()
        })
        .await;
        let e = run(&backend(&sim), text("e0", 8)).await.unwrap_err();
        assert_eq!(
            (
                e.kind(),
                e.phase(),
                e.is_retryable(),
                e.upstream_status(),
                e.message()
            ),
            (
                FailureKind::Internal,
                FailurePhase::BeforeFirstToken,
                true,
                Some(400),
                "engine: the model is unavailable"
            )
        );
    }

    /// The simulator's refusals are tritonserver 2.51's: status, content
    /// type and body.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_simulator_refuses_like_tritonserver() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sim = TritonSim::start(SimOptions::default()).await;
        let addr = sim.url().trim_start_matches("http://").to_owned();
        let post = |body: &'static str| {
            let addr = addr.clone();
            async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let request = format!(
                    "POST /v2/models/ensemble/generate_stream HTTP/1.1\r\nhost: x\r\n\
                     content-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(request.as_bytes()).await.unwrap();
                // Read until the connection closes or stays quiet (the
                // simulator keeps it alive).
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) = tokio::time::timeout(ms(200), s.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                let out = String::from_utf8(raw).unwrap();
                let status: u16 = out[9..12].parse().unwrap();
                let json = out.contains("content-type: application/json");
                let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
                (status, json, body)
            }
        };
        let cases = [
            (
                "{bad",
                500,
                r#"{"error":"failed to parse the request JSON buffer: Invalid value. at 0"}"#,
            ),
            (
                "[]",
                500,
                r#"{"error":"attempt to get members for non-object"}"#,
            ),
            (
                r#"{"text_input":"hi","max_tokens":"x"}"#,
                500,
                r#"{"error":"Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer"}"#,
            ),
            (
                r#"{"text_input":"hi","max_tokens":2,"stream":true,"foo":[1]}"#,
                400,
                r#"{"error":"parameter 'foo' has invalid type. It should be either 'int', 'bool', or 'string'."}"#,
            ),
            (
                r#"{"text_input":"hi"}"#,
                400,
                r#"{"error":"[request id: <id_unknown>] expected number of inputs between 2 and 14 but got 1 inputs for model 'ensemble'. Got input(s) ['text_input'], but missing required input(s) ['max_tokens']. Please provide all required input(s)."}"#,
            ),
        ];
        for (body, status, want) in cases {
            let (got, json, text) = post(body).await;
            assert_eq!((got, json), (status, true), "{body}");
            assert!(text.contains(want), "{body}: {text}");
        }
        // An undeclared scalar is a parameter: accepted.
        let (got, _, text) =
            post(r#"{"text_input":"hi","max_tokens":2,"stream":true,"foo":1.5,"return_num_output_tokens":true}"#).await;
        assert_eq!(got, 200, "{text}");
        assert!(text.contains(r#""num_output_tokens":1"#), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_a_503_overload_and_marks_pressure() {
        let sim = TritonSim::start(SimOptions {
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
        let e = run(&b, text("x", 10)).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.phase(), e.is_retryable(), e.upstream_status()),
            (
                FailureKind::Overloaded,
                FailurePhase::BeforeFirstToken,
                true,
                Some(503)
            )
        );
        assert!(b.pressure().overloaded);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_refused_is_connect_before_the_first_token() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let b = triton::backend(UpstreamConfig::new("gone", url, "m")).unwrap();
        let e = run(&b, text("c", 4)).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::Connect, FailurePhase::BeforeFirstToken)
        );
        assert!(!b.health().await.is_healthy());
    }

    // ------------------------------------------------------- aborts per phase

    async fn reach(sim: &TritonSim, id: &str, phase: EnginePhase) {
        let until = Instant::now() + Duration::from_secs(5);
        while sim.phase_now(id) != Some(phase) {
            assert!(Instant::now() < until, "{id} never reached {phase}");
            tokio::time::sleep(ms(1)).await;
        }
    }

    /// Waits until the simulator stopped `id` (at its cancellation check),
    /// checks the phase, and returns how long after `since` that was.
    async fn abort_seen(sim: &TritonSim, id: &str, phase: EnginePhase, since: Instant) -> Duration {
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            if let Some(record) = sim.abort_log().into_iter().find(|r| r.id == id) {
                assert_eq!(record.phase, phase, "{id}");
                // The adapter closes at once; the engine's check comes later.
                let closed = record.closed_at.saturating_duration_since(since);
                assert!(closed < ms(50), "{id}: connection closed after {closed:?}");
                return record.at.saturating_duration_since(since);
            }
            assert!(Instant::now() < until, "{id}: the engine never stopped it");
            tokio::time::sleep(ms(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_the_connection_stops_the_engine_within_150ms_in_every_phase() {
        let sim = TritonSim::start(SimOptions {
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
        assert!(queued_cancel.cancel(CancelReason::ClientGone));
        let e = drain_error(&mut queued).await;
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::Canceled, FailurePhase::BeforeFirstToken)
        );
        let latency_q = abort_seen(
            &sim,
            "q",
            EnginePhase::Queued,
            queued_cancel.canceled_at().unwrap(),
        )
        .await;
        assert!(prefill_cancel.cancel(CancelReason::Timeout));
        assert_eq!(
            drain_error(&mut prefill).await.kind(),
            FailureKind::Canceled
        );
        let latency_p = abort_seen(
            &sim,
            "p",
            EnginePhase::Prefill,
            prefill_cancel.canceled_at().unwrap(),
        )
        .await;

        let decode_cancel = CancelHandle::new();
        let mut decode = b
            .start(text("d", 10_000), decode_cancel.clone())
            .await
            .unwrap();
        first_delta(&mut decode).await;
        decode_cancel.cancel(CancelReason::Budget);
        let e = drain_error(&mut decode).await;
        assert_eq!(
            (e.kind(), e.phase()),
            (FailureKind::Canceled, FailurePhase::AfterFirstToken)
        );
        let latency_d = abort_seen(
            &sim,
            "d",
            EnginePhase::Decode,
            decode_cancel.canceled_at().unwrap(),
        )
        .await;

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
        assert_eq!(
            drain_error(&mut aborted).await.kind(),
            FailureKind::Canceled
        );
        let latency_abort = abort_seen(&sim, "a", EnginePhase::Decode, t0).await;
        assert!(!b.abort(&"a".into()).await.unwrap());

        // The deadline closes it too.
        let mut late = text("t", 10_000);
        let deadline = Instant::now() + ms(100);
        late.budget.deadline = Some(deadline);
        let d = run(&b, late).await.unwrap();
        assert_eq!(d.error.unwrap().kind(), FailureKind::TotalTimeout);
        let latency_deadline = abort_seen(&sim, "t", EnginePhase::Decode, deadline).await;

        let latencies = [
            latency_q,
            latency_p,
            latency_d,
            latency_drop,
            latency_abort,
            latency_deadline,
        ];
        println!(
            "engine stop latencies (queued, prefill, decode, drop, abort, deadline): {latencies:?}"
        );
        for latency in latencies {
            assert!(latency < ms(150), "{latencies:?}");
        }
        let aborts = sim.abort_counts();
        assert_eq!((aborts.queued, aborts.prefill, aborts.decode), (1, 1, 4));
        assert_eq!(b.pressure().inflight, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_start_future_or_stream_before_the_head_still_closes() {
        let sim = TritonSim::start(SimOptions {
            slots: 1,
            first_prefill: Some(Duration::from_secs(30)),
            ..SimOptions::default()
        })
        .await;
        let b = backend(&sim);
        // No head while in prefill: the stream is handed out anyway.
        let s = b.start(text("p", 10), CancelHandle::new()).await.unwrap();
        reach(&sim, "p", EnginePhase::Prefill).await;
        let t0 = Instant::now();
        drop(s);
        assert!(abort_seen(&sim, "p", EnginePhase::Prefill, t0).await < ms(150));
        // A `start` future dropped inside the accept window.
        let sim = TritonSim::start(SimOptions {
            slots: 1,
            first_prefill: Some(Duration::from_secs(30)),
            ..SimOptions::default()
        })
        .await;
        let b = TritonBackend::new(
            config(&sim),
            TritonOptions {
                accept_window: Duration::from_secs(60),
                ..TritonOptions::default()
            },
        )
        .unwrap();
        let start = b.start(text("w", 10), CancelHandle::new());
        let t0 = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::pin!(start);
            tokio::select! {
                _ = &mut start => panic!("start resolved without a head"),
                () = reach(&sim, "w", EnginePhase::Prefill) => Instant::now(),
            }
        })
        .await
        .unwrap();
        assert!(abort_seen(&sim, "w", EnginePhase::Prefill, t0).await < ms(150));
        assert_eq!(b.pressure().inflight, 0);
    }

    // --------------------------------------------------------------- pressure

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pressure_is_read_from_triton_and_trtllm_metrics() {
        let sim = TritonSim::start(SimOptions {
            slots: 1,
            natural_tokens: 10_000,
            token_interval: ms(5),
            ..SimOptions::default()
        })
        .await;
        let mut c = config(&sim);
        c.max_concurrency = Some(8);
        let b = triton::backend(c).unwrap();
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
        assert_eq!(sim.scrapes(), scrapes, "the scraper outlived its backend");

        // Without metrics_url: no scrape, no engine gauges.
        let mut c = config(&sim);
        c.metrics_url = None;
        let b = triton::backend(c).unwrap();
        let _a = b
            .start(text("n", 10_000), CancelHandle::new())
            .await
            .unwrap();
        tokio::time::sleep(ms(50)).await;
        let p = b.pressure();
        assert_eq!((p.running, p.waiting, p.inflight), (0, 0, 1));
        assert!(p.updated_at.is_none());
        assert_eq!(sim.scrapes(), scrapes);
    }

    // ------------------------------------------------------- health and config

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_and_config_entries() {
        use gateway_adapters::config::BackendConfig;
        use gateway_adapters::engines::{EngineError, OnDisconnect};
        let sim = TritonSim::start(SimOptions {
            model: "served".into(),
            natural_tokens: 10_000,
            token_interval: ms(10),
            ..SimOptions::default()
        })
        .await;
        let mut entry = BackendConfig {
            name: "t0".into(),
            engine: EngineKind::Triton,
            url: Some(sim.url()),
            model: "public".into(),
            served_model: "served".into(),
            max_concurrency: std::num::NonZeroU32::new(3),
            on_disconnect: OnDisconnect::Abort,
            api_key_env: None,
            metrics_url: Some(sim.metrics_url()),
            ca_file: None,
            capabilities: None,
            context_window: None,
            sim: None,
        };
        let b = entry.remote_backend().unwrap();
        assert_eq!(b.info().engine, EngineKind::Triton);
        assert_eq!(b.info().models, vec!["public".to_owned()]);
        assert_eq!(b.pressure().limit, Some(3));
        assert_eq!(b.health().await, Health::Healthy);
        let paths: Vec<String> = sim.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/v2/health/ready", "/v2/models/served/ready"]);
        let mut request = text("r", 10_000);
        request.served_model = "served".to_owned();
        let _running = b.start(request, CancelHandle::new()).await.unwrap();
        let until = Instant::now() + Duration::from_secs(3);
        while b.pressure().running != 1 {
            assert!(Instant::now() < until, "{:?}", b.pressure());
            tokio::time::sleep(ms(5)).await;
        }
        // The model is not ready under another name.
        entry.served_model = "other".into();
        let other = entry.remote_backend().unwrap();
        assert!(!other.health().await.is_healthy());
        // The Triton adapter only aborts.
        entry.on_disconnect = OnDisconnect::drain();
        assert_eq!(
            entry.remote_backend().unwrap_err(),
            EngineError::DrainUnsupported(EngineKind::Triton)
        );
    }

    #[cfg(feature = "server")]
    #[test]
    fn a_triton_backends_entry_builds_a_gateway() {
        use gateway_adapters::bootstrap::build_gateway;
        use gateway_adapters::config::GatewayConfig;
        let text = r#"
[[tenants]]
id = "t"
api_key = "sk-t"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "triton-0"
engine = "triton"
url = "http://127.0.0.1:8000"
model = "m"
served_model = "ensemble"
metrics_url = "http://127.0.0.1:8002/metrics"
"#;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _enter = runtime.enter();
        let config = GatewayConfig::parse(text, std::path::Path::new("/nonexistent")).unwrap();
        assert_eq!(config.backends[0].engine, EngineKind::Triton);
        assert!(build_gateway(&config).is_ok());
        let bad = text.replace(
            "metrics_url = \"http://127.0.0.1:8002/metrics\"",
            "metrics_url = \"ftp://127.0.0.1:8002/metrics\"",
        );
        match GatewayConfig::parse(&bad, std::path::Path::new("/nonexistent")) {
            Ok(config) => {
                let e = build_gateway(&config).err().unwrap();
                assert_eq!(e.path, "backends[0].metrics_url");
            }
            Err(errors) => assert!(format!("{errors:?}").contains("metrics_url")),
        }
    }
}
