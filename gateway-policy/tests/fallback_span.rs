//! The request span of a request that fell back names the model it asked
//! for in `fallback_from` (alone in its test binary: a thread-local
//! subscriber and tests running in parallel do not mix).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, Script};
use gateway_core::*;
use gateway_policy::*;

type Fields = Arc<Mutex<HashMap<String, String>>>;

/// Collects the fields of the `gateway.request` span.
struct Collect(Fields);

struct Visitor<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collect {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == telemetry::REQUEST_SPAN {
            attrs.record(&mut Visitor(&mut self.0.lock().unwrap()));
        }
    }
    fn on_record(
        &self,
        _id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        values.record(&mut Visitor(&mut self.0.lock().unwrap()));
    }
}

#[tokio::test(start_paused = true)]
async fn the_span_says_the_request_fell_back() {
    use tracing_subscriber::layer::SubscriberExt;
    let fields: Fields = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Collect(fields.clone()));
    let _default = tracing::subscriber::set_default(subscriber);

    let model = |name: &str| ModelSpec {
        name: name.into(),
        pricing: Pricing::default(),
        context_window: 1000,
        default_max_tokens: 8,
        media: gateway_policy::MediaCosts::default(),
        counter: Arc::new(ByteBound::default()),
    };
    let (big, big_handle) = MockBackend::new("big-0", "big");
    let (small, _) = MockBackend::new("small-0", "small");
    big_handle.push(Script::reject(FailureKind::Connect));
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("t"), key_hash("sk"))
        .model(model("big"))
        .model(model("small"))
        .fallbacks("big", &["small"])
        .backend(Arc::new(big), "big", "big", None)
        .backend(Arc::new(small), "small", "small", None)
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk")).unwrap();
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let request = ClientRequest::new("r1", "big", Prompt::Text("hello".into()));
    let mut stream = gateway.generate(&tenant, request, cancel).await.unwrap();
    while stream.next().await.is_some() {}
    drop(stream);
    for _ in 0..1000 {
        if gateway.active() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(gateway.active(), 0);
    let f = fields.lock().unwrap().clone();
    assert_eq!(f["gen_ai.request.model"], "big");
    assert_eq!(f["fallback_from"], "big");
    assert_eq!(f["gen_ai.response.model"], "small");
    assert_eq!(f["backend"], "small-0");
    assert_eq!(f["outcome"], "ok");
}
