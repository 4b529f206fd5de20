//! Each request gets one `gateway.request` span with the gen_ai attributes
//! filled in when it settles.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use gateway_core::testkit::MockBackend;
use gateway_core::*;
use gateway_policy::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

type Fields = Arc<Mutex<HashMap<String, String>>>;

/// Collects the fields of every `gateway.request` span.
struct Collect(Fields);

struct Visitor<'a>(&'a mut HashMap<String, String>);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Collect {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() == telemetry::REQUEST_SPAN {
            attrs.record(&mut Visitor(&mut self.0.lock().unwrap()));
        }
    }
    fn on_record(&self, _id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        values.record(&mut Visitor(&mut self.0.lock().unwrap()));
    }
}

#[tokio::test]
async fn the_request_span_carries_gen_ai_attributes() {
    let fields: Fields = Arc::default();
    let subscriber = tracing_subscriber::registry().with(Collect(fields.clone()));
    let _default = tracing::subscriber::set_default(subscriber);

    let (mock, _handle) = MockBackend::new("mock-0", "tiny-served");
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("team-a"), key_hash("sk-a"))
        .model(ModelSpec {
            name: "tiny".into(),
            pricing: Pricing::default(),
            context_window: 4096,
            default_max_tokens: 64,
            media: gateway_policy::MediaCosts::default(),
            counter: Arc::new(ByteBound::default()),
        })
        .backend(Arc::new(mock), "tiny", "tiny-served", None)
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk-a")).unwrap();
    let guard = gateway.request_cancel();
    let cancel = guard.handle().clone();
    let request = ClientRequest::new(
        "req-42",
        "tiny",
        Prompt::Chat(vec![ChatMessage::user("hi")]),
    );
    let mut stream = gateway.generate(&tenant, request, cancel).await.unwrap();
    while stream.next().await.is_some() {}
    // The pump settles on its own task; wait for it.
    while gateway.active() > 0 {
        tokio::task::yield_now().await;
    }
    let f = fields.lock().unwrap().clone();
    let get = |k: &str| f.get(k).map(String::as_str);
    assert_eq!(get("request_id"), Some("req-42"));
    assert_eq!(get("tenant"), Some("team-a"));
    assert_eq!(get("gen_ai.operation.name"), Some("chat"));
    assert_eq!(get("gen_ai.request.model"), Some("tiny"));
    assert_eq!(get("gen_ai.response.model"), Some("tiny-served"));
    assert_eq!(get("gen_ai.provider.name"), Some("custom"));
    assert_eq!(get("backend"), Some("mock-0"));
    // ByteBound: 2 bytes + 2 + 32 for one message; three tokens delivered.
    assert_eq!(get("gen_ai.usage.input_tokens"), Some("36"));
    assert_eq!(get("gen_ai.usage.output_tokens"), Some("3"));
    assert_eq!(get("gen_ai.response.finish_reasons"), Some("stop"));
    assert_eq!(get("outcome"), Some("ok"));
}
