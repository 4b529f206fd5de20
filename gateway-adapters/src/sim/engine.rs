//! One request inside the engine: the task that queues, prefills and
//! decodes it, and the stream its events reach the consumer through.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use gateway_core::rng::Rng;
use gateway_core::{
    BackendError, CancelHandle, CancelReason, Delta, EnginePhase, FailureKind, FailurePhase,
    FinishReason, LiveGuard, TokenEvent, TokenResult, TokenStream, Usage,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, sleep, sleep_until};

use super::Fault;
use super::state::{Admission, KvGuard, Outcome, Shared};
use super::text::RequestRng;

/// Everything one request's task needs.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: mpsc::Sender<TokenResult>,
    /// The attempt's own cancel handle (a child of the caller's).
    pub(crate) cancel: CancelHandle,
    pub(crate) deadline: Option<Instant>,
    pub(crate) prompt_tokens: u64,
    /// Completion tokens to generate.
    pub(crate) target: u32,
    /// How generation ends when it reaches `target`.
    pub(crate) finish: FinishReason,
    pub(crate) fault: Option<Fault>,
    pub(crate) rng: RequestRng,
}

/// Why generation stopped early.
#[derive(Debug)]
enum Stop {
    Canceled(CancelReason),
    Failed(BackendError),
}

/// What the generation produced, for the final events.
#[derive(Debug, Default)]
struct Progress {
    /// Completion tokens sent in deltas.
    sent: u64,
    drafted: u64,
    accepted: u64,
}

impl Job {
    /// Runs the request to its end and delivers the final events.
    ///
    /// The slot, KV-cache tokens and registry entry are released before the
    /// final events are sent, so once a consumer has seen the end of the
    /// stream the engine holds nothing for it.
    pub(crate) async fn run(self, admission: Admission, live: LiveGuard) {
        let mut progress = Progress::default();
        let result = self.generate(admission, &live, &mut progress).await;
        let (outcome, last) = match result {
            Ok(()) => match self.usage(&progress) {
                Ok(usage) => (
                    Outcome::Completed,
                    vec![
                        Ok(TokenEvent::Usage(usage)),
                        Ok(TokenEvent::Finished(self.finish)),
                    ],
                ),
                Err(err) => (Outcome::Failed, vec![Err(self.error_at(&progress, err))]),
            },
            Err(Stop::Canceled(reason)) => (
                Outcome::Canceled,
                vec![Err(self.error_at(&progress, BackendError::canceled(reason)))],
            ),
            Err(Stop::Failed(err)) => (Outcome::Failed, vec![Err(err)]),
        };
        let phase = self.shared.finish(live, outcome);
        let last = last.into_iter().map(|item| match item {
            Err(e) if e.kind() == FailureKind::Canceled => Err(e.with_engine_phase(phase)),
            item => item,
        });
        for item in last {
            let Ok(permit) = self.tx.reserve().await else {
                return;
            };
            permit.send(item);
        }
    }

    fn usage(&self, progress: &Progress) -> Result<Usage, BackendError> {
        Usage::new(self.prompt_tokens, progress.sent)
            .with_cached(0)
            .and_then(|u| u.with_speculative(progress.drafted, progress.accepted))
            .map_err(|e| {
                BackendError::new(FailureKind::Internal, "sim usage is invalid").with_source(e)
            })
    }

    /// `err` in the phase the stream is in.
    fn error_at(&self, progress: &Progress, err: BackendError) -> BackendError {
        let phase = if progress.sent > 0 {
            FailurePhase::AfterFirstToken
        } else {
            FailurePhase::BeforeFirstToken
        };
        err.with_phase(phase)
    }

    fn fail(&self, progress: &Progress, kind: FailureKind, message: &str) -> Stop {
        let mut err = BackendError::new(kind, message);
        if kind == FailureKind::Overloaded {
            err = err.with_retry_after(self.shared.config.retry_after);
        }
        Stop::Failed(self.error_at(progress, err))
    }

    fn timed_out(&self, progress: &Progress) -> Stop {
        self.fail(
            progress,
            FailureKind::TotalTimeout,
            "the request's deadline passed",
        )
    }

    /// Stops at once if canceled or past the deadline (the fast path of
    /// zero-delay mode, where nothing awaits).
    fn check(&self, progress: &Progress) -> Result<(), Stop> {
        if self.cancel.is_canceled() {
            return Err(Stop::Canceled(
                self.cancel.reason().unwrap_or(CancelReason::Aborted),
            ));
        }
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(self.timed_out(progress)),
            _ => Ok(()),
        }
    }

    /// Runs `fut` unless the request is canceled or its deadline passes
    /// first. A cancel that already fired wins over a ready `fut`.
    async fn guarded<F: Future>(&self, progress: &Progress, fut: F) -> Result<F::Output, Stop> {
        tokio::select! {
            biased;
            reason = self.cancel.canceled() => Err(Stop::Canceled(reason)),
            () = until(self.deadline) => Err(self.timed_out(progress)),
            out = fut => Ok(out),
        }
    }

    /// Sleeps `duration` (not at all when zero), stopping on cancel.
    async fn pause(&self, progress: &Progress, duration: Duration) -> Result<(), Stop> {
        if duration.is_zero() {
            return self.check(progress);
        }
        self.guarded(progress, sleep(duration)).await
    }

    /// Sends `event`, waiting for channel room if the consumer lags.
    /// Returns whether it had to wait.
    async fn send(&self, progress: &Progress, event: TokenEvent) -> Result<bool, Stop> {
        let (permit, waited) = match self.tx.try_reserve() {
            Ok(permit) => (permit, false),
            Err(TrySendError::Full(())) => match self.guarded(progress, self.tx.reserve()).await? {
                Ok(permit) => (permit, true),
                Err(_) => return Err(self.gone()),
            },
            Err(TrySendError::Closed(())) => return Err(self.gone()),
        };
        permit.send(Ok(event));
        Ok(waited)
    }

    /// The consumer dropped the stream (which cancels the handle).
    fn gone(&self) -> Stop {
        Stop::Canceled(self.cancel.reason().unwrap_or(CancelReason::ClientGone))
    }

    async fn generate(
        &self,
        admission: Admission,
        live: &LiveGuard,
        progress: &mut Progress,
    ) -> Result<(), Stop> {
        // Queued: wait for a slot, first come first served.
        let _slot = match admission {
            Admission::Running(slot) => slot,
            Admission::Queued(queued) => match self.guarded(progress, queued.granted()).await? {
                Some(slot) => slot,
                None => {
                    return Err(self.fail(
                        progress,
                        FailureKind::Internal,
                        "sim queue lost the request",
                    ));
                }
            },
        };
        self.check(progress)?;

        // Prefill: the prompt takes its KV-cache tokens, then computes.
        live.enter(EnginePhase::Prefill);
        if let Some(Fault::FailAtPrefill(kind)) = self.fault {
            return Err(self.fail(progress, kind, "injected failure at prefill"));
        }
        let Some(mut kv) = KvGuard::alloc(&self.shared, self.prompt_tokens) else {
            return Err(self.fail(
                progress,
                FailureKind::OutOfMemory,
                "not enough free KV cache for the prompt",
            ));
        };
        let config = &self.shared.config;
        self.pause(progress, config.prefill_time(self.prompt_tokens))
            .await?;

        // Decode: prefill yields the first token, each decode step the next
        // (or several, with speculative decoding).
        let fault_point = match self.fault {
            Some(Fault::StallAfter(n) | Fault::ErrorAfter(n, _)) => Some(n),
            _ => None,
        };
        let step_time = config.decode_step_time();
        let mut rng = self.rng.accept.clone();
        let mut text_rng = self.rng.clone();
        let mut produced: u32 = 0;
        let mut next_step = Instant::now();
        while produced < self.target {
            if fault_point == Some(produced) {
                match self.fault {
                    Some(Fault::ErrorAfter(_, kind)) => {
                        return Err(self.fail(
                            progress,
                            kind,
                            "injected failure during generation",
                        ));
                    }
                    _ => {
                        // Stalled: nothing more until canceled or timed out.
                        self.guarded(progress, std::future::pending::<()>()).await?;
                    }
                }
            }
            let first = produced == 0;
            if !first && !step_time.is_zero() {
                // Steps keep a fixed cadence, so sub-millisecond steps add
                // up right despite the timer's millisecond resolution.
                next_step = match next_step.checked_add(step_time) {
                    Some(at) => at,
                    None => Instant::now(),
                };
                self.guarded(progress, sleep_until(next_step)).await?;
            } else {
                self.check(progress)?;
            }

            // How many tokens this step may produce: up to the target, and
            // up to a fault point not reached yet.
            let end = match fault_point {
                Some(point) if point > produced => point.min(self.target),
                _ => self.target,
            };
            let room = end - produced;
            let (drafted, accepted) = match config.speculative {
                Some(spec) if !first => {
                    let drafted = spec.draft_tokens.min(room - 1);
                    let rate = spec.rate();
                    let accepted =
                        (0..drafted).take_while(|_| rng.next_f64() < rate).count() as u32;
                    (drafted, accepted)
                }
                _ => (0, 0),
            };
            let tokens = accepted + 1;
            if !self.shared.step(&mut kv, tokens, drafted, accepted) {
                return Err(self.fail(
                    progress,
                    FailureKind::OutOfMemory,
                    "KV cache exhausted during decode",
                ));
            }
            produced += tokens;
            if first {
                live.enter(EnginePhase::Decode);
            }

            let mut delta = Delta {
                tokens,
                token_ids: Vec::with_capacity(tokens as usize),
                ..Delta::default()
            };
            text_rng.tokens(tokens, &mut delta.text, &mut delta.token_ids);
            let waited = self.send(progress, TokenEvent::Delta(delta)).await?;
            progress.sent += u64::from(tokens);
            progress.drafted += u64::from(drafted);
            progress.accepted += u64::from(accepted);
            if waited {
                // A consumer that held the engine back does not get a burst
                // of catch-up steps.
                next_step = next_step.max(Instant::now());
            }
        }
        Ok(())
    }
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending::<()>().await,
    }
}

/// The consumer's side: the channel's events, then the end. A channel that
/// closes without a final event (the engine task was torn down with its
/// runtime) ends with an `Internal` error instead of a silent end.
pub(crate) fn token_stream(
    mut rx: mpsc::Receiver<TokenResult>,
    cancel: CancelHandle,
) -> TokenStream {
    let mut ended = false;
    let mut delta_seen = false;
    let stream = futures::stream::poll_fn(move |cx| {
        if ended {
            return Poll::Ready(None);
        }
        match rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(item)) => {
                match &item {
                    Ok(TokenEvent::Delta(_)) => delta_seen = true,
                    Ok(TokenEvent::Finished(_)) | Err(_) => ended = true,
                    Ok(_) => {}
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                ended = true;
                let phase = if delta_seen {
                    FailurePhase::AfterFirstToken
                } else {
                    FailurePhase::BeforeFirstToken
                };
                Poll::Ready(Some(Err(BackendError::new(
                    FailureKind::Internal,
                    "the sim engine stopped without finishing the request",
                )
                .with_phase(phase))))
            }
        }
    });
    TokenStream::new(stream).cancel_on_drop(cancel)
}
