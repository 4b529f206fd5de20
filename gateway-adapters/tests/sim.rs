//! Behaviour of the `sim` engine, in paused time on a current-thread
//! runtime: queueing, timing, KV cache, cancellation, speculative decoding,
//! faults, text.

// Everything sits in a `cfg(test)` module so clippy treats the helpers
// as test code too.
#[cfg(test)]
mod sim {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use gateway_adapters::sim::{
        Fault, FaultPlan, FaultTrigger, SimBackend, SimConfig, SimStats, Speculative, VOCABULARY,
        token_text,
    };
    use gateway_core::testkit::conformance::{
        self, ConformanceConfig, ConformanceTarget, EngineProbe, Instance, Scenario,
    };
    use gateway_core::{
        AbortCounts, Backend, BackendError, BackendRequest, ByteBound, CancelHandle, CancelReason,
        ChatMessage, Delta, EnginePhase, EventOrder, FailureKind, FailurePhase, FinishReason,
        GenerateRequest, Health, Pressure, Prompt, RequestId, Started, TokenCounter, TokenEvent,
        TokenStream, Usage,
    };
    use tokio::time::Instant;

    // ---------------------------------------------------------------- helpers

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A text prompt that `ByteBound::default()` counts as exactly `tokens`
    /// tokens (one per byte plus 2).
    fn text_prompt(tokens: u64) -> Prompt {
        Prompt::Text("x".repeat(tokens as usize - 2))
    }

    fn counter() -> Arc<dyn TokenCounter> {
        Arc::new(ByteBound::default())
    }

    fn request(prompt: Prompt, max_tokens: u32) -> BackendRequest {
        BackendRequest::new(GenerateRequest::new("sim", prompt, max_tokens), counter())
    }

    /// A request of `prompt_tokens` prompt tokens with id `id`.
    fn request_id(id: &str, prompt_tokens: u64, max_tokens: u32) -> BackendRequest {
        BackendRequest::new(
            GenerateRequest::new("sim", text_prompt(prompt_tokens), max_tokens).with_id(id),
            counter(),
        )
    }

    /// Zero delay, natural length exactly `len` tokens.
    fn fixed(len: u32) -> SimConfig {
        SimConfig {
            natural_length: len..=len,
            ..SimConfig::zero_delay()
        }
    }

    /// Instant prefill, `step_ms` per decode step, natural length `len`.
    fn timed(step_ms: u64, len: u32) -> SimConfig {
        SimConfig {
            decode_tokens_per_sec: Some(1000.0 / step_ms as f64),
            ..fixed(len)
        }
    }

    /// Lets spawned engine tasks run until they block.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn idle() -> Pressure {
        Pressure {
            running: 0,
            waiting: 0,
            kv_usage: 0.0,
            inflight: 0,
            limit: None,
            updated_at: None,
            overloaded: false,
        }
    }

    /// The engine-side figures of a pressure snapshot (time and limit left out).
    fn load(b: &SimBackend) -> Pressure {
        let p = b.pressure();
        assert!(p.updated_at.is_some());
        Pressure {
            limit: None,
            updated_at: None,
            ..p
        }
    }

    /// Everything one stream yielded.
    #[derive(Debug, Default)]
    struct Run {
        started: Option<Started>,
        deltas: Vec<Delta>,
        first_delta: Option<Duration>,
        usage: Option<Usage>,
        finish: Option<FinishReason>,
        error: Option<BackendError>,
        ended: Option<Duration>,
    }

    impl Run {
        fn text(&self) -> String {
            self.deltas.iter().map(|d| d.text.as_str()).collect()
        }
        fn tokens(&self) -> u64 {
            self.deltas.iter().map(|d| u64::from(d.tokens)).sum()
        }
        fn error(&self) -> (FailureKind, FailurePhase) {
            let e = self.error.as_ref().expect("the stream ended with an error");
            (e.kind(), e.phase())
        }
        fn pieces(&self) -> Vec<(String, u32, Vec<u32>)> {
            self.deltas
                .iter()
                .map(|d| (d.text.clone(), d.tokens, d.token_ids.clone()))
                .collect()
        }
    }

    /// Reads a stream, checking every item against `EventOrder`.
    #[derive(Debug)]
    struct Reader {
        stream: TokenStream,
        order: EventOrder,
        t0: Instant,
        run: Run,
    }

    impl Reader {
        fn new(stream: TokenStream) -> Self {
            Reader {
                stream,
                order: EventOrder::new(),
                t0: Instant::now(),
                run: Run::default(),
            }
        }

        /// Reads one item; `false` once the stream is over.
        async fn step(&mut self) -> bool {
            let Some(item) = self.stream.next().await else {
                assert!(self.order.is_ended(), "stream stopped without an end");
                return false;
            };
            let at = Instant::now() - self.t0;
            match item {
                Ok(event) => {
                    self.order.observe(&event).expect("event order");
                    match event {
                        TokenEvent::Started(s) => {
                            assert_eq!(s.cached_tokens, Some(0));
                            assert!(s.prompt_tokens.is_some());
                            self.run.started = Some(s);
                        }
                        TokenEvent::Delta(d) => {
                            assert!(d.tokens >= 1);
                            assert_eq!(d.token_ids.len(), d.tokens as usize);
                            self.run.first_delta.get_or_insert(at);
                            self.run.deltas.push(d);
                        }
                        TokenEvent::Usage(u) => self.run.usage = Some(u),
                        TokenEvent::Finished(f) => self.run.finish = Some(f),
                    }
                }
                Err(e) => {
                    self.order.observe_error().expect("error order");
                    let expected = if self.run.deltas.is_empty() {
                        FailurePhase::BeforeFirstToken
                    } else {
                        FailurePhase::AfterFirstToken
                    };
                    assert_eq!(e.phase(), expected, "{e}");
                    self.run.error = Some(e);
                }
            }
            if self.order.is_ended() {
                self.run.ended = Some(at);
            }
            true
        }

        async fn deltas(&mut self, n: usize) {
            while self.run.deltas.len() < n {
                assert!(self.step().await, "stream ended before {n} deltas");
            }
        }

        async fn finish(mut self) -> Run {
            while self.step().await {}
            assert!(self.stream.next().await.is_none(), "nothing after the end");
            self.run
        }
    }

    async fn start(b: &SimBackend, r: BackendRequest) -> Result<Reader, BackendError> {
        b.start(r, CancelHandle::new()).await.map(Reader::new)
    }

    async fn run(b: &SimBackend, r: BackendRequest) -> Run {
        start(b, r).await.expect("accepted").finish().await
    }

    fn assert_completed(run: &Run, tokens: u64, finish: FinishReason) {
        assert!(run.error.is_none(), "{:?}", run.error);
        assert_eq!(run.tokens(), tokens);
        assert_eq!(run.usage.map(|u| u.completion()), Some(tokens));
        assert_eq!(run.finish, Some(finish));
    }

    // ---------------------------------------------------------------- queueing

    #[tokio::test(start_paused = true)]
    async fn queues_beyond_the_slots_in_fifo_order_and_refuses_beyond_the_queue() {
        let b = SimBackend::new(SimConfig {
            slots: 2,
            queue_capacity: 3,
            ..timed(10, 3)
        });
        // r0 stops at its cap of 2 tokens (10 ms), r1 at 3 tokens (20 ms).
        let caps = [2, 3, 3, 3, 3];
        let mut readers = Vec::new();
        for (i, cap) in caps.into_iter().enumerate() {
            let r = request_id(&format!("r{i}"), 10, cap);
            readers.push(start(&b, r).await.expect("accepted"));
        }
        let p = b.pressure();
        assert_eq!((p.running, p.waiting, p.inflight), (2, 3, 5));
        assert_eq!(p.limit, Some(2));
        assert!(p.overloaded);
        assert_eq!(b.phase(&"r1".into()), Some(EnginePhase::Prefill));
        assert_eq!(b.phase(&"r2".into()), Some(EnginePhase::Queued));

        let err = start(&b, request_id("r5", 10, 3))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), FailureKind::Overloaded);
        assert_eq!(err.phase(), FailurePhase::BeforeFirstToken);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        assert!(err.is_retryable());

        let runs = futures::future::join_all(readers.into_iter().map(Reader::finish)).await;
        let timeline: Vec<(Option<Duration>, Option<Duration>)> =
            runs.iter().map(|r| (r.first_delta, r.ended)).collect();
        // Each queued request takes the next slot that frees, in arrival order:
        // r2 the one r0 frees at 10 ms, r3 r1's at 20 ms, r4 r2's at 30 ms.
        assert_eq!(
            timeline,
            vec![
                (Some(ms(0)), Some(ms(10))),
                (Some(ms(0)), Some(ms(20))),
                (Some(ms(10)), Some(ms(30))),
                (Some(ms(20)), Some(ms(40))),
                (Some(ms(30)), Some(ms(50))),
            ]
        );
        assert_completed(&runs[0], 2, FinishReason::Length);
        for run in &runs[1..] {
            assert_completed(run, 3, FinishReason::Stop);
        }
        assert_eq!(load(&b), idle());
        let s = b.stats();
        assert_eq!(
            (s.start_calls, s.started, s.rejected, s.completed),
            (6, 5, 1, 5)
        );
        assert_eq!((s.peak_running, s.peak_waiting), (2, 3));
        assert_eq!(b.aborts(), AbortCounts::default());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_capacity_zero_refuses_when_slots_are_busy() {
        let b = SimBackend::new(SimConfig {
            slots: 1,
            queue_capacity: 0,
            ..timed(10, 3)
        });
        let first = start(&b, request(text_prompt(10), 3))
            .await
            .expect("accepted");
        assert!(b.pressure().overloaded);
        let err = start(&b, request(text_prompt(10), 3))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), FailureKind::Overloaded);
        assert_completed(&first.finish().await, 3, FinishReason::Stop);
        assert!(!b.pressure().overloaded);
        assert_completed(
            &run(&b, request(text_prompt(10), 3)).await,
            3,
            FinishReason::Stop,
        );
    }

    // ---------------------------------------------------------------- timing

    #[tokio::test(start_paused = true)]
    async fn ttft_grows_with_prompt_length() {
        let b = SimBackend::new(SimConfig {
            base_latency: ms(5),
            prefill_tokens_per_sec: Some(1000.0),
            ..timed(20, 4)
        });
        for (prompt, ttft) in [(10, 15), (100, 105), (400, 405)] {
            let run = run(&b, request(text_prompt(prompt), 100)).await;
            assert_eq!(run.started.and_then(|s| s.prompt_tokens), Some(prompt));
            assert_eq!(run.first_delta, Some(ms(ttft)), "prompt {prompt}");
            // Three more tokens, one decode step of 20 ms each.
            assert_eq!(run.ended, Some(ms(ttft + 3 * 20)), "prompt {prompt}");
            assert_completed(&run, 4, FinishReason::Stop);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sub_millisecond_decode_steps_keep_their_cadence() {
        // 4000 tokens/s: 250 µs per step, below the timer's resolution.
        let b = SimBackend::new(SimConfig {
            decode_tokens_per_sec: Some(4000.0),
            ..fixed(401)
        });
        let run = run(&b, request(text_prompt(10), 1000)).await;
        assert_completed(&run, 401, FinishReason::Stop);
        assert_eq!(run.ended, Some(ms(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_generates_1000_tokens_without_advancing_time() {
        let b = SimBackend::new(SimConfig {
            natural_length: 5000..=6000,
            ..SimConfig::zero_delay()
        });
        let t0 = Instant::now();
        let run = run(&b, request(text_prompt(300), 1000)).await;
        assert_eq!(Instant::now(), t0);
        assert_completed(&run, 1000, FinishReason::Length);
        assert_eq!(run.deltas.len(), 1000);
        assert_eq!(b.stats().tokens_generated, 1000);
    }

    // ---------------------------------------------------------------- limits

    #[tokio::test(start_paused = true)]
    async fn max_tokens_cap_finishes_with_length_at_exactly_the_cap() {
        let b = SimBackend::new(fixed(50));
        let run = run(&b, request(text_prompt(10), 7)).await;
        assert_completed(&run, 7, FinishReason::Length);
        assert_eq!(run.usage, Some(Usage::new(10, 7)));

        // Natural end exactly at the cap is a natural end.
        assert_completed(
            &self::run(&b, request(text_prompt(10), 50)).await,
            50,
            FinishReason::Stop,
        );

        // A cap of zero: no tokens at all.
        let run = self::run(&b, request(text_prompt(10), 0)).await;
        assert_completed(&run, 0, FinishReason::Length);
        assert!(run.deltas.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn natural_lengths_stay_in_the_configured_range() {
        let b = SimBackend::new(SimConfig {
            natural_length: 3..=9,
            ..SimConfig::zero_delay()
        });
        let mut lengths = Vec::new();
        for i in 0..40 {
            let run = run(&b, request(Prompt::Text(format!("prompt {i}")), 100)).await;
            assert_eq!(run.finish, Some(FinishReason::Stop));
            lengths.push(run.tokens());
        }
        assert!(lengths.iter().all(|n| (3..=9).contains(n)), "{lengths:?}");
        assert!(lengths.contains(&3) && lengths.contains(&9), "{lengths:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn context_window_exceeded_is_refused() {
        let b = SimBackend::new(SimConfig {
            context_window: 100,
            ..fixed(5)
        });
        let err = start(&b, request(text_prompt(50), 51))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), FailureKind::ContextLengthExceeded);
        assert_eq!(err.phase(), FailurePhase::BeforeFirstToken);
        assert!(!err.is_retryable());
        assert_completed(
            &run(&b, request(text_prompt(50), 50)).await,
            5,
            FinishReason::Stop,
        );
        assert_eq!(b.stats().rejected, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_model_is_refused() {
        let b = SimBackend::new(SimConfig::zero_delay());
        let r = BackendRequest::new(GenerateRequest::new("gpt-9", text_prompt(10), 5), counter());
        let err = start(&b, r).await.expect_err("refused");
        assert_eq!(err.kind(), FailureKind::ModelNotFound);
        assert_eq!(load(&b), idle());
    }

    // ---------------------------------------------------------------- KV cache

    #[tokio::test(start_paused = true)]
    async fn a_prompt_larger_than_the_kv_cache_is_refused_at_start() {
        let b = SimBackend::new(SimConfig {
            kv_capacity_tokens: 100,
            ..fixed(5)
        });
        let err = start(&b, request(text_prompt(150), 10))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), FailureKind::OutOfMemory);
        assert_eq!(err.phase(), FailurePhase::BeforeFirstToken);
        assert!(err.is_retryable());
        assert_eq!(b.kv_used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn kv_exhausted_during_decode_fails_after_the_first_token() {
        let b = SimBackend::new(SimConfig {
            kv_capacity_tokens: 100,
            ..fixed(80)
        });
        let run = run(&b, request(text_prompt(50), 80)).await;
        // 50 prompt tokens + 50 generated fill the cache; the 51st has no room.
        assert_eq!(run.tokens(), 50);
        assert_eq!(
            run.error(),
            (FailureKind::OutOfMemory, FailurePhase::AfterFirstToken)
        );
        assert!(run.usage.is_none() && run.finish.is_none());
        assert_eq!(b.kv_used(), 0);
        assert_eq!(load(&b), idle());
        let s = b.stats();
        assert_eq!(
            (s.failed, s.peak_kv_tokens, s.tokens_generated),
            (1, 100, 50)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn kv_short_at_prefill_fails_before_the_first_token() {
        let b = SimBackend::new(SimConfig {
            kv_capacity_tokens: 100,
            ..timed(100, 10)
        });
        let mut a = start(&b, request(text_prompt(60), 10))
            .await
            .expect("accepted");
        a.deltas(1).await;
        assert_eq!(b.kv_used(), 61);
        assert!((b.pressure().kv_usage - 0.61).abs() < 1e-6);

        let run = run(&b, request(text_prompt(60), 10)).await;
        assert_eq!(
            run.error(),
            (FailureKind::OutOfMemory, FailurePhase::BeforeFirstToken)
        );
        assert_eq!(b.kv_used(), 61);

        assert_completed(&a.finish().await, 10, FinishReason::Stop);
        assert_eq!(b.kv_used(), 0);
        assert_eq!(load(&b), idle());
    }

    // ---------------------------------------------------------------- cancellation

    #[tokio::test(start_paused = true)]
    async fn cancel_while_queued_counts_a_queued_abort_and_keeps_fifo() {
        let b = SimBackend::new(SimConfig {
            slots: 1,
            queue_capacity: 2,
            ..timed(10, 3)
        });
        let a = start(&b, request_id("a", 10, 3)).await.expect("accepted");
        let cancel_b = CancelHandle::new();
        let rb = b
            .start(request_id("b", 10, 3), cancel_b.clone())
            .await
            .map(Reader::new)
            .expect("accepted");
        let c = start(&b, request_id("c", 10, 3)).await.expect("accepted");
        assert_eq!(b.phase(&"b".into()), Some(EnginePhase::Queued));

        cancel_b.cancel(CancelReason::Timeout);
        let run_b = rb.finish().await;
        assert_eq!(
            run_b.error(),
            (FailureKind::Canceled, FailurePhase::BeforeFirstToken)
        );
        assert_eq!(
            run_b.error.as_ref().map(BackendError::message),
            Some("request canceled: timeout")
        );
        assert_eq!(run_b.ended, Some(ms(0)));
        assert_eq!(b.phase(&"b".into()), None);
        let p = b.pressure();
        assert_eq!((p.running, p.waiting), (1, 1));
        assert_eq!(
            b.aborts(),
            AbortCounts {
                queued: 1,
                prefill: 0,
                decode: 0
            }
        );

        let (ra, rc) = futures::join!(a.finish(), c.finish());
        assert_eq!(
            (ra.ended, rc.first_delta, rc.ended),
            (Some(ms(20)), Some(ms(20)), Some(ms(40)))
        );
        assert_eq!(load(&b), idle());
        assert_eq!(b.aborts().total(), 1);
        let s = b.stats();
        assert_eq!((s.completed, s.canceled), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_during_prefill_counts_a_prefill_abort_and_stops_at_once() {
        let b = SimBackend::new(SimConfig {
            prefill_tokens_per_sec: Some(100.0),
            ..fixed(5)
        });
        let cancel = CancelHandle::new();
        let reader = b
            .start(request_id("p", 100, 5), cancel.clone())
            .await
            .map(Reader::new)
            .expect("accepted");
        tokio::time::sleep(ms(500)).await;
        assert_eq!(b.phase(&"p".into()), Some(EnginePhase::Prefill));
        assert_eq!(b.kv_used(), 100);

        cancel.cancel(CancelReason::Shutdown);
        let run = reader.finish().await;
        assert_eq!(
            run.error(),
            (FailureKind::Canceled, FailurePhase::BeforeFirstToken)
        );
        assert_eq!(run.ended, Some(ms(500)));
        assert!(run.deltas.is_empty());
        assert_eq!(
            b.aborts(),
            AbortCounts {
                queued: 0,
                prefill: 1,
                decode: 0
            }
        );
        assert_eq!(load(&b), idle());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_stream_during_decode_counts_a_decode_abort() {
        let b = SimBackend::new(timed(20, 50));
        let mut reader = start(&b, request_id("d", 10, 50)).await.expect("accepted");
        reader.deltas(2).await;
        assert_eq!(b.phase(&"d".into()), Some(EnginePhase::Decode));
        assert_eq!(b.kv_used(), 12);
        drop(reader);
        settle().await;
        assert_eq!(
            b.aborts(),
            AbortCounts {
                queued: 0,
                prefill: 0,
                decode: 1
            }
        );
        assert_eq!(b.phase(&"d".into()), None);
        assert_eq!(load(&b), idle());
        let s = b.stats();
        assert_eq!((s.canceled, s.tokens_generated), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_cancel_guard_cancels_as_client_gone() {
        let b = SimBackend::new(timed(20, 50));
        let guard = CancelHandle::guarded();
        let mut reader = b
            .start(request(text_prompt(10), 50), guard.handle().clone())
            .await
            .map(Reader::new)
            .expect("accepted");
        reader.deltas(1).await;
        drop(guard);
        let run = reader.finish().await;
        assert_eq!(
            run.error(),
            (FailureKind::Canceled, FailurePhase::AfterFirstToken)
        );
        assert_eq!(
            run.error.as_ref().map(BackendError::message),
            Some("request canceled: client_gone")
        );
        assert_eq!(b.aborts().decode, 1);
        assert_eq!(load(&b), idle());
    }

    #[tokio::test(start_paused = true)]
    async fn backend_abort_cancels_by_id_in_any_phase() {
        let b = SimBackend::new(SimConfig {
            slots: 1,
            ..timed(20, 50)
        });
        let mut running = start(&b, request_id("run", 10, 50))
            .await
            .expect("accepted");
        let queued = start(&b, request_id("wait", 10, 50))
            .await
            .expect("accepted");
        running.deltas(3).await;

        assert_eq!(b.abort(&RequestId::from("nope")).await.ok(), Some(false));
        assert_eq!(b.abort(&RequestId::from("wait")).await.ok(), Some(true));
        let run = queued.finish().await;
        assert_eq!(
            run.error(),
            (FailureKind::Canceled, FailurePhase::BeforeFirstToken)
        );

        assert_eq!(b.abort(&RequestId::from("run")).await.ok(), Some(true));
        let run = running.finish().await;
        assert_eq!(
            run.error(),
            (FailureKind::Canceled, FailurePhase::AfterFirstToken)
        );
        assert_eq!(
            run.error.as_ref().map(BackendError::message),
            Some("request canceled: aborted")
        );
        assert_eq!(run.tokens(), 3);
        assert_eq!(b.abort(&RequestId::from("run")).await.ok(), Some(false));
        assert_eq!(
            b.aborts(),
            AbortCounts {
                queued: 1,
                prefill: 0,
                decode: 1
            }
        );
        assert_eq!(load(&b), idle());
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_does_not_read_stalls_the_engine_until_canceled() {
        let b = SimBackend::new(SimConfig {
            channel_capacity: 2,
            ..fixed(1000)
        });
        let cancel = CancelHandle::new();
        let mut reader = b
            .start(request_id("slow", 10, 1000), cancel.clone())
            .await
            .map(Reader::new)
            .expect("accepted");
        settle().await;
        // `Started` and one delta fill the channel; the second token waits.
        assert_eq!(b.stats().tokens_generated, 2);
        assert_eq!(b.phase(&"slow".into()), Some(EnginePhase::Decode));
        reader.deltas(1).await;
        settle().await;
        assert_eq!(b.stats().tokens_generated, 4);

        cancel.cancel(CancelReason::Timeout);
        let run = reader.finish().await;
        // Deltas already in the channel are still delivered, then the error.
        assert_eq!(run.tokens(), 3);
        assert_eq!(
            run.error(),
            (FailureKind::Canceled, FailurePhase::AfterFirstToken)
        );
        assert_eq!(b.aborts().decode, 1);
        assert_eq!(load(&b), idle());
    }

    #[tokio::test(start_paused = true)]
    async fn an_already_canceled_handle_is_refused_at_start() {
        let b = SimBackend::new(SimConfig::zero_delay());
        let cancel = CancelHandle::new();
        cancel.cancel(CancelReason::Budget);
        let err = b
            .start(request(text_prompt(10), 5), cancel)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), FailureKind::Canceled);
        assert_eq!(b.aborts(), AbortCounts::default());
        assert_eq!(b.stats().started, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_stream_with_total_timeout() {
        let b = SimBackend::new(timed(100, 50));
        let deadline = Instant::now() + ms(250);
        let r = BackendRequest::new(
            GenerateRequest::new("sim", text_prompt(10), 50).with_deadline(deadline),
            counter(),
        );
        let run = run(&b, r).await;
        // Tokens at 0, 100 and 200 ms; the deadline cuts the step due at 300.
        assert_eq!(run.tokens(), 3);
        assert_eq!(run.ended, Some(ms(250)));
        assert_eq!(
            run.error(),
            (FailureKind::TotalTimeout, FailurePhase::AfterFirstToken)
        );
        assert_eq!(b.aborts(), AbortCounts::default());
        assert_eq!(b.stats().failed, 1);
        assert_eq!(load(&b), idle());

        // A deadline already past is refused at start.
        let r = BackendRequest::new(
            GenerateRequest::new("sim", text_prompt(10), 50).with_deadline(Instant::now()),
            counter(),
        );
        let err = start(&b, r).await.expect_err("refused");
        assert_eq!(err.kind(), FailureKind::TotalTimeout);
    }

    // ---------------------------------------------------------------- speculative decoding

    fn speculative(rate: f64, len: u32) -> SimBackend {
        SimBackend::new(SimConfig {
            speculative: Some(Speculative::new(4, rate)),
            seed: 42,
            ..timed(10, len)
        })
    }

    /// Checks the counts of a speculative run; returns (drafted, accepted, deltas).
    fn spec_counts(b: &SimBackend, run: &Run) -> (u64, u64, usize) {
        let usage = run.usage.expect("usage");
        assert_eq!(usage.drafted(), usage.accepted() + usage.rejected());
        assert_eq!(run.tokens(), usage.completion());
        // One delta for the first token, one per decode step after it: every
        // step emits its accepted draft tokens plus one.
        let steps = run.deltas.len() as u64 - 1;
        assert_eq!(usage.completion(), 1 + steps + usage.accepted());
        // One decode step of 10 ms per delta after the first.
        assert_eq!(run.ended, Some(ms(10 * steps)));
        let s = b.stats();
        assert_eq!(s.tokens_generated, usage.completion());
        assert_eq!(
            (s.drafted_tokens, s.accepted_tokens),
            (usage.drafted(), usage.accepted())
        );
        (usage.drafted(), usage.accepted(), run.deltas.len())
    }

    #[tokio::test(start_paused = true)]
    async fn speculative_decoding_counts_drafts_exactly() {
        let b = speculative(0.6, 50);
        let run = run(&b, request(text_prompt(10), 100)).await;
        assert_completed(&run, 50, FinishReason::Stop);
        // Seed 42 at a 60 % acceptance rate: 71 drafted, 30 accepted, 41
        // rejected, over 19 decode steps.
        assert_eq!(spec_counts(&b, &run), (71, 30, 20));
        assert_eq!(run.usage.map(|u| u.rejected()), Some(41));
    }

    #[tokio::test(start_paused = true)]
    async fn speculative_decoding_with_full_acceptance_rejects_nothing() {
        let b = speculative(1.0, 50);
        let run = run(&b, request(text_prompt(10), 100)).await;
        assert_completed(&run, 50, FinishReason::Stop);
        // 1 + 9 steps of 5 tokens + a last step drafting 3 for the 4 left.
        assert_eq!(spec_counts(&b, &run), (39, 39, 11));
        let sizes: Vec<u32> = run.deltas.iter().map(|d| d.tokens).collect();
        assert_eq!(sizes, [1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn speculative_decoding_with_zero_acceptance_accepts_nothing() {
        let b = speculative(0.0, 50);
        let run = run(&b, request(text_prompt(10), 100)).await;
        assert_completed(&run, 50, FinishReason::Stop);
        // 49 steps of one token; drafts of 4 until fewer than 5 tokens are left.
        assert_eq!(spec_counts(&b, &run), (45 * 4 + 3 + 2 + 1, 0, 50));
    }

    #[tokio::test(start_paused = true)]
    async fn speculative_decoding_never_passes_the_cap() {
        let b = speculative(1.0, 50);
        let run = run(&b, request(text_prompt(10), 8)).await;
        assert_completed(&run, 8, FinishReason::Length);
        let sizes: Vec<u32> = run.deltas.iter().map(|d| d.tokens).collect();
        assert_eq!(sizes, [1, 5, 2]);
        assert_eq!(run.usage.map(|u| (u.drafted(), u.accepted())), Some((5, 5)));
    }

    // ---------------------------------------------------------------- faults

    #[tokio::test(start_paused = true)]
    async fn fail_before_first_token_is_returned_by_start() {
        let b = SimBackend::new(SimConfig {
            faults: FaultPlan::always(Fault::FailBeforeFirstToken(FailureKind::Overloaded)),
            ..fixed(5)
        });
        let err = start(&b, request(text_prompt(10), 5))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), FailureKind::Overloaded);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));

        b.set_faults(FaultPlan::always(Fault::FailBeforeFirstToken(
            FailureKind::Unauthorized,
        )));
        let err = start(&b, request(text_prompt(10), 5))
            .await
            .expect_err("refused");
        assert_eq!(
            (err.kind(), err.retry_after()),
            (FailureKind::Unauthorized, None)
        );
        assert_eq!(b.stats().rejected, 2);
        assert_eq!(load(&b), idle());
    }

    #[tokio::test(start_paused = true)]
    async fn fail_at_prefill_hits_only_the_nth_request() {
        let b = SimBackend::new(SimConfig {
            faults: FaultPlan::new().with(
                FaultTrigger::NthRequest(2),
                Fault::FailAtPrefill(FailureKind::Internal),
            ),
            ..fixed(5)
        });
        assert_completed(
            &run(&b, request(text_prompt(10), 5)).await,
            5,
            FinishReason::Stop,
        );
        let second = run(&b, request(text_prompt(10), 5)).await;
        assert!(second.started.is_some());
        assert_eq!(
            second.error(),
            (FailureKind::Internal, FailurePhase::BeforeFirstToken)
        );
        assert_completed(
            &run(&b, request(text_prompt(10), 5)).await,
            5,
            FinishReason::Stop,
        );
        assert_eq!(load(&b), idle());
        let s = b.stats();
        assert_eq!((s.completed, s.failed), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn error_after_n_tokens_matches_text_and_chat_prompts() {
        let b = SimBackend::new(SimConfig {
            faults: FaultPlan::new().with(
                FaultTrigger::PromptContains("boom".into()),
                Fault::ErrorAfter(3, FailureKind::UpstreamStatus),
            ),
            ..fixed(10)
        });
        let text = run(&b, request(Prompt::Text("it goes boom".into()), 10)).await;
        assert_eq!(text.tokens(), 3);
        assert_eq!(
            text.error(),
            (FailureKind::UpstreamStatus, FailurePhase::AfterFirstToken)
        );
        let chat = Prompt::Chat(vec![
            ChatMessage::system("be brief"),
            ChatMessage::user("boom?"),
        ]);
        let chat = run(&b, request(chat, 10)).await;
        assert_eq!(chat.tokens(), 3);
        assert_eq!(chat.error().0, FailureKind::UpstreamStatus);
        assert_completed(
            &run(&b, request(Prompt::Text("quiet".into()), 10)).await,
            10,
            FinishReason::Stop,
        );
        // Ending before the fault point: no fault.
        assert_completed(
            &run(&b, request(Prompt::Text("boom".into()), 2)).await,
            2,
            FinishReason::Length,
        );
        assert_eq!(load(&b), idle());
    }

    #[tokio::test(start_paused = true)]
    async fn error_after_zero_tokens_fails_before_the_first_token() {
        let b = SimBackend::new(SimConfig {
            faults: FaultPlan::always(Fault::ErrorAfter(0, FailureKind::Connect)),
            ..fixed(10)
        });
        let run = run(&b, request(text_prompt(10), 10)).await;
        assert!(run.deltas.is_empty());
        assert_eq!(
            run.error(),
            (FailureKind::Connect, FailurePhase::BeforeFirstToken)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn error_after_n_cuts_a_speculative_step_at_n() {
        let b = SimBackend::new(SimConfig {
            speculative: Some(Speculative::new(4, 1.0)),
            faults: FaultPlan::always(Fault::ErrorAfter(4, FailureKind::Internal)),
            ..fixed(50)
        });
        let run = run(&b, request(text_prompt(10), 50)).await;
        let sizes: Vec<u32> = run.deltas.iter().map(|d| d.tokens).collect();
        assert_eq!(sizes, [1, 3]);
        assert_eq!(run.error().0, FailureKind::Internal);
    }

    #[tokio::test(start_paused = true)]
    async fn stall_after_n_tokens_waits_for_the_cancel() {
        let b = SimBackend::new(SimConfig {
            faults: FaultPlan::always(Fault::StallAfter(2)),
            ..timed(10, 10)
        });
        let cancel = CancelHandle::new();
        let mut reader = b
            .start(request_id("s", 10, 10), cancel.clone())
            .await
            .map(Reader::new)
            .expect("accepted");
        reader.deltas(2).await;
        let next = tokio::time::timeout(Duration::from_secs(60), reader.step()).await;
        assert!(next.is_err(), "a stalled engine sends nothing");
        assert_eq!(b.phase(&"s".into()), Some(EnginePhase::Decode));
        assert_eq!(b.kv_used(), 12);

        cancel.cancel(CancelReason::Timeout);
        let run = reader.finish().await;
        assert_eq!(run.tokens(), 2);
        assert_eq!(
            run.error(),
            (FailureKind::Canceled, FailurePhase::AfterFirstToken)
        );
        assert_eq!(b.aborts().decode, 1);
        assert_eq!(load(&b), idle());
    }

    #[tokio::test(start_paused = true)]
    async fn stall_after_zero_stalls_in_prefill() {
        let b = SimBackend::new(SimConfig {
            faults: FaultPlan::always(Fault::StallAfter(0)),
            ..timed(10, 10)
        });
        let cancel = CancelHandle::new();
        let reader = b
            .start(request_id("s0", 10, 10), cancel.clone())
            .await
            .map(Reader::new)
            .expect("accepted");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(b.phase(&"s0".into()), Some(EnginePhase::Prefill));
        cancel.cancel(CancelReason::Timeout);
        let run = reader.finish().await;
        assert_eq!(
            run.error(),
            (FailureKind::Canceled, FailurePhase::BeforeFirstToken)
        );
        assert_eq!(
            b.aborts(),
            AbortCounts {
                queued: 0,
                prefill: 1,
                decode: 0
            }
        );
        assert_eq!(load(&b), idle());
    }

    #[tokio::test(start_paused = true)]
    async fn faults_and_health_can_change_at_runtime() {
        let b = SimBackend::new(fixed(5));
        assert!(b.faults().is_empty());
        assert_completed(
            &run(&b, request(text_prompt(10), 5)).await,
            5,
            FinishReason::Stop,
        );

        let plan = FaultPlan::always(Fault::FailAtPrefill(FailureKind::OutOfMemory));
        b.set_faults(plan.clone());
        assert_eq!(b.faults(), plan);
        let run_failed = run(&b, request(text_prompt(10), 5)).await;
        assert_eq!(run_failed.error().0, FailureKind::OutOfMemory);

        b.set_faults(FaultPlan::new());
        assert_completed(
            &run(&b, request(text_prompt(10), 5)).await,
            5,
            FinishReason::Stop,
        );

        assert_eq!(b.health().await, Health::Healthy);
        b.set_health(Health::Unhealthy("draining".into()));
        assert_eq!(b.health().await, Health::Unhealthy("draining".into()));
        b.set_health(Health::Healthy);
        assert!(b.health().await.is_healthy());
    }

    // ---------------------------------------------------------------- text

    #[tokio::test(start_paused = true)]
    async fn text_is_deterministic_per_seed_and_prompt() {
        let config = SimConfig {
            natural_length: 20..=40,
            seed: 7,
            ..SimConfig::zero_delay()
        };
        let prompt = || Prompt::Text("What is a gateway?".into());
        let a = run(&SimBackend::new(config.clone()), request(prompt(), 100)).await;
        let again = run(&SimBackend::new(config.clone()), request(prompt(), 100)).await;
        assert_eq!(a.pieces(), again.pieces());
        assert!(!a.text().is_empty());

        let other_seed = SimConfig {
            seed: 8,
            ..config.clone()
        };
        let b = run(&SimBackend::new(other_seed), request(prompt(), 100)).await;
        assert_ne!(a.text(), b.text());

        let mut with_seed = GenerateRequest::new("sim", prompt(), 100);
        with_seed.sampling.seed = Some(1);
        let seeded = || BackendRequest::new(with_seed.clone(), counter());
        let sim = SimBackend::new(config.clone());
        let c = run(&sim, seeded()).await;
        assert_ne!(a.text(), c.text());
        assert_eq!(c.pieces(), run(&sim, seeded()).await.pieces());

        let d = run(&sim, request(Prompt::Text("Another question".into()), 100)).await;
        assert_ne!(a.text(), d.text());
    }

    #[tokio::test(start_paused = true)]
    async fn multibyte_text_comes_in_whole_characters() {
        let b = SimBackend::new(SimConfig {
            speculative: Some(Speculative::new(3, 0.5)),
            ..fixed(300)
        });
        let run = run(&b, request(text_prompt(10), 300)).await;
        assert_completed(&run, 300, FinishReason::Stop);
        let text = run.text();
        assert!(text.chars().any(|c| c.len_utf8() > 1), "{text}");
        assert!(text.contains('🦀') || text.contains('日') || text.contains('é'));
        for delta in &run.deltas {
            let pieces: String = delta
                .token_ids
                .iter()
                .map(|id| token_text(*id).expect("a vocabulary id"))
                .collect();
            assert_eq!(delta.text, pieces);
            assert!(!delta.text.is_empty());
        }
        // Every vocabulary piece is used over a long enough text.
        let used: std::collections::BTreeSet<u32> = run
            .deltas
            .iter()
            .flat_map(|d| d.token_ids.iter().copied())
            .collect();
        assert_eq!(used.len(), VOCABULARY.len());
    }

    // ---------------------------------------------------------------- conformance

    /// The engine seen by the conformance kit.
    #[derive(Debug)]
    struct Probe(SimBackend);

    impl EngineProbe for Probe {
        fn aborts(&self) -> AbortCounts {
            self.0.aborts()
        }
        fn phase(&self, id: &RequestId) -> Option<EnginePhase> {
            self.0.phase(id)
        }
    }

    /// A sim engine set up for each conformance scenario.
    struct SimTarget;

    #[gateway_core::async_trait]
    impl ConformanceTarget for SimTarget {
        async fn instance(&self, scenario: Scenario) -> Option<Instance> {
            // 1000 tokens at 50 tokens/s: 20 s of decode, 20 ms apart.
            let long = timed(20, 1000);
            let config = match scenario {
                Scenario::Normal => timed(20, 64),
                Scenario::LongPrefill => SimConfig {
                    base_latency: Duration::from_secs(5),
                    ..long
                },
                Scenario::LongDecode => long,
                Scenario::Saturated => SimConfig { slots: 1, ..long },
                Scenario::FailBeforeFirstToken => SimConfig {
                    faults: FaultPlan::new().with(
                        FaultTrigger::NthRequest(1),
                        Fault::FailBeforeFirstToken(FailureKind::Overloaded),
                    ),
                    ..long
                },
                Scenario::FailAfterFirstToken => SimConfig {
                    faults: FaultPlan::always(Fault::ErrorAfter(2, FailureKind::Internal)),
                    ..long
                },
                _ => return None,
            };
            let sim = SimBackend::new(config);
            Some(Instance {
                backend: Arc::new(sim.clone()),
                probe: Arc::new(Probe(sim)),
                model: "sim".to_owned(),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passes_the_conformance_suite() {
        let report = conformance::run(&SimTarget, &ConformanceConfig::default()).await;
        report.assert_passed();
        // Paused time: every cancel reaches the engine without time passing,
        // but after a drop the kit sees it at its next 1 ms poll.
        assert!(
            report
                .abort_latency
                .iter()
                .all(|(_, latency)| *latency <= ms(1)),
            "{report}"
        );
    }

    /// The same suite in real time on a multi-threaded runtime: cancels
    /// must reach the engine within the kit's 250 ms bound for real.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite_in_real_time() {
        let report = conformance::run(&SimTarget, &ConformanceConfig::default()).await;
        println!("{report}");
        report.assert_passed();
        assert_eq!(report.abort_latency.len(), 5, "{report}");
    }

    // ---------------------------------------------------------------- concurrency

    /// Many requests on a multi-threaded runtime, ending every way there
    /// is: the accounting must come back to exactly zero.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounting_stays_exact_under_concurrency() {
        let b = SimBackend::new(SimConfig {
            slots: 4,
            queue_capacity: 200,
            kv_capacity_tokens: 2_000,
            channel_capacity: 1,
            natural_length: 1..=200,
            speculative: Some(Speculative::new(3, 0.5)),
            faults: FaultPlan::new()
                .with(
                    FaultTrigger::PromptContains("#7".into()),
                    Fault::ErrorAfter(5, FailureKind::Internal),
                )
                .with(
                    FaultTrigger::PromptContains("#3".into()),
                    Fault::FailAtPrefill(FailureKind::OutOfMemory),
                ),
            ..SimConfig::zero_delay()
        });
        let mut tasks = Vec::new();
        for i in 0..400u32 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("c{i}");
                let r = BackendRequest::new(
                    GenerateRequest::new(
                        "sim",
                        Prompt::Text(format!("request #{i} {}", "y".repeat(i as usize % 300))),
                        150,
                    )
                    .with_id(id.as_str()),
                    counter(),
                );
                let cancel = CancelHandle::new();
                let Ok(mut stream) = b.start(r, cancel.clone()).await else {
                    return;
                };
                let mut order = EventOrder::new();
                let mut seen = 0;
                while let Some(item) = stream.next().await {
                    match &item {
                        Ok(event) => order.observe(event).unwrap(),
                        Err(_) => order.observe_error().unwrap(),
                    }
                    seen += 1;
                    // `seen == 1` is `Started`: the request may still be
                    // queued or in prefill.
                    match (i % 6, seen) {
                        (0, 3) => {
                            cancel.cancel(CancelReason::Timeout);
                        }
                        (1, 1) | (3, 5) => return, // drops the stream
                        (2, 1) | (5, 4) => {
                            b.abort(&RequestId::from(id.as_str())).await.unwrap();
                        }
                        _ => {}
                    }
                    tokio::task::yield_now().await;
                }
                assert!(order.is_ended());
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = b.stats();
            if s.completed + s.failed + s.canceled == s.started {
                break;
            }
            assert!(Instant::now() < deadline, "requests never ended: {s:?}");
            tokio::time::sleep(ms(1)).await;
        }
        let s = b.stats();
        assert_eq!(s.started + s.rejected, 400);
        assert!(s.canceled > 0 && s.failed > 0 && s.completed > 0, "{s:?}");
        let aborts = b.aborts();
        assert_eq!(aborts.total(), s.canceled);
        assert!(aborts.queued > 0 && aborts.decode > 0, "{aborts:?}");
        assert_eq!(load(&b), idle());
        assert_eq!(b.kv_used(), 0);
        assert!(s.peak_running <= 4 && s.peak_waiting <= 200, "{s:?}");
        assert!(s.peak_kv_tokens <= 2_000);
        assert!(s.accepted_tokens <= s.drafted_tokens);
        for i in 0..400 {
            assert_eq!(b.phase(&RequestId::from(format!("c{i}").as_str())), None);
        }
    }

    // ---------------------------------------------------------------- stats

    #[tokio::test(start_paused = true)]
    async fn stats_add_up() {
        let b = SimBackend::new(fixed(6));
        for _ in 0..3 {
            run(&b, request(text_prompt(10), 100)).await;
        }
        assert_eq!(
            b.stats(),
            SimStats {
                start_calls: 3,
                started: 3,
                completed: 3,
                tokens_generated: 18,
                peak_running: 1,
                peak_kv_tokens: 16,
                ..SimStats::default()
            }
        );
    }
}
