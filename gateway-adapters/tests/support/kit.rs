//! Small helpers shared by the per-engine adapter tests: a request, a
//! stream drained with its event order checked, waiting for pressure.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::{
    Backend, BackendError, BackendRequest, ByteBound, CancelHandle, ChatMessage, EventOrder,
    FinishReason, GenerateRequest, Pressure, Prompt, TokenEvent, TokenStream, Usage,
};
use tokio::time::Instant;

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A chat request for model `m` with a completion cap of `max_tokens`.
pub fn chat(max_tokens: u32) -> BackendRequest {
    let request = GenerateRequest::new(
        "m",
        Prompt::Chat(vec![ChatMessage::user("tell me about the sea")]),
        max_tokens,
    );
    BackendRequest::new(request, Arc::new(ByteBound::default()))
}

/// A text (completions) request for model `m`.
pub fn text(max_tokens: u32) -> BackendRequest {
    let request = GenerateRequest::new("m", Prompt::Text("Once upon".into()), max_tokens);
    BackendRequest::new(request, Arc::new(ByteBound::default()))
}

/// A chat request with id `id`.
pub fn with_id(id: &str, max_tokens: u32) -> BackendRequest {
    let request =
        GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("hi")]), max_tokens)
            .with_id(id);
    BackendRequest::new(request, Arc::new(ByteBound::default()))
}

/// Everything a stream yielded, with the order checked.
#[derive(Debug, Default)]
pub struct Drained {
    /// The events, in order.
    pub events: Vec<TokenEvent>,
    /// The error that ended the stream, if any.
    pub error: Option<BackendError>,
}

impl Drained {
    /// The texts of the deltas that carry text, in order.
    pub fn deltas(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TokenEvent::Delta(d) if !d.text.is_empty() => Some(d.text.clone()),
                _ => None,
            })
            .collect()
    }

    /// The text of the deltas.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                TokenEvent::Delta(d) => Some(d.text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The tokens of the deltas.
    pub fn tokens(&self) -> u64 {
        self.events
            .iter()
            .map(|e| match e {
                TokenEvent::Delta(d) => u64::from(d.tokens),
                _ => 0,
            })
            .sum()
    }

    /// The usage event.
    pub fn usage(&self) -> Option<Usage> {
        self.events.iter().find_map(|e| match e {
            TokenEvent::Usage(u) => Some(*u),
            _ => None,
        })
    }

    /// The finish reason.
    pub fn finish(&self) -> Option<FinishReason> {
        self.events.iter().find_map(|e| match e {
            TokenEvent::Finished(r) => Some(*r),
            _ => None,
        })
    }
}

/// Reads `stream` to its end (at most 10 s), checking the event order.
pub async fn drain(mut stream: TokenStream) -> Drained {
    let mut order = EventOrder::new();
    let mut out = Drained::default();
    let until = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(item)) = tokio::time::timeout_at(until, stream.next()).await {
        match item {
            Ok(event) => {
                order.observe(&event).unwrap();
                out.events.push(event);
            }
            Err(e) => {
                order.observe_error().unwrap();
                out.error = Some(e);
            }
        }
    }
    assert!(order.is_ended(), "stream did not end: {out:?}");
    out
}

/// Runs `request`: the error of `start`, or the drained stream.
pub async fn run(backend: &dyn Backend, request: BackendRequest) -> Result<Drained, BackendError> {
    let stream = backend.start(request, CancelHandle::new()).await?;
    Ok(drain(stream).await)
}

/// Waits (at most 3 s) until `backend`'s pressure satisfies `ok`.
pub async fn wait_pressure(backend: &dyn Backend, ok: impl Fn(&Pressure) -> bool) -> Pressure {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let p = backend.pressure();
        if ok(&p) {
            return p;
        }
        assert!(Instant::now() < until, "pressure never matched: {p:?}");
        tokio::time::sleep(ms(2)).await;
    }
}

/// A simulator's options for a conformance [`Scenario`]:
/// `scenario_options!(scenario, SimOptions { field: value, ..base }, before: .., after: ..)`
/// for any simulator's `SimOptions` (they share these field names): a prompt
/// 24-token stream by default; a 5 s first prefill, a long decode, or one
/// slot held for seconds; or the engine's own failure before the first
/// token (`before`) or after two tokens (`after`), as a fault script; with
/// `structured: |o| ...`, the options for reasoning and a tool call (only
/// the vLLM simulator streams them).
/// `None` for scenarios the simulators do not stage.
///
/// [`Scenario`]: gateway_core::testkit::conformance::Scenario
#[macro_export]
macro_rules! scenario_options {
    (
        $scenario:expr,
        $options:ident { $($field:ident: $value:expr,)* ..$base:expr },
        before: $before:expr,
        after: $after:expr
        $(, structured: $structured:expr)? $(,)?
    ) => {{
        use gateway_core::testkit::conformance::Scenario;
        let ms = |n: u64| std::time::Duration::from_millis(n);
        let mut o = $options {
            lagged_probe: true,
            natural_tokens: 24,
            token_interval: ms(1),
            $($field: $value,)*
            ..$base
        };
        match $scenario {
            Scenario::Normal => Some(o),
            Scenario::LongPrefill => {
                o.first_prefill = Some(std::time::Duration::from_secs(5));
                o.natural_tokens = 200;
                o.token_interval = ms(20);
                Some(o)
            }
            Scenario::LongDecode => {
                o.natural_tokens = 1000;
                o.token_interval = ms(20);
                Some(o)
            }
            Scenario::Saturated => {
                o.slots = 1;
                o.natural_tokens = 1000;
                o.token_interval = ms(20);
                o.prefill = ms(50);
                Some(o)
            }
            Scenario::FailBeforeFirstToken => {
                o.script = $before;
                Some(o)
            }
            Scenario::FailAfterFirstToken => {
                o.script = $after;
                Some(o)
            }
            Scenario::StructuredOutput => $crate::scenario_options!(@structured o $(, $structured)?),
            // `Scenario` is non-exhaustive: newer scenarios are not staged.
            _ => None,
        }
    }};
    (@structured $o:ident) => {{
        let _ = $o;
        None
    }};
    (@structured $o:ident, $structured:expr) => {
        ($structured)($o)
    };
}

/// Reads `stream` until its first `Delta` (within 5 s of each event).
pub async fn first_delta(stream: &mut TokenStream) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(TokenEvent::Delta(_)))) => return,
            Ok(Some(Ok(_))) => {}
            other => panic!("no first delta: {other:?}"),
        }
    }
}

/// Reads `stream` to the error that ends it (within 1 s of each event),
/// and checks nothing follows it.
pub async fn drain_error(stream: &mut TokenStream) -> BackendError {
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                assert!(stream.next().await.is_none(), "something after the error");
                return e;
            }
            other => panic!("no error: {other:?}"),
        }
    }
}
