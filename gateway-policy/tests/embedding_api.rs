//! The embedding API without traps (issue 12): a host that embeds the
//! gateway in-process gets a cancel guard it cannot drop by accident.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, MockHandle, Script};
use gateway_core::*;
use gateway_policy::*;

const MODEL: &str = "tiny";

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mock: MockHandle,
}

fn setup() -> Setup {
    let (mock, handle) = MockBackend::new("mock-0", MODEL);
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("team-a"), key_hash("sk-a"))
        .model(ModelSpec {
            name: MODEL.into(),
            pricing: Pricing {
                input: Money::from_picos(10),
                cached_input: Money::from_picos(1),
                output: Money::from_picos(100),
            },
            context_window: 1000,
            default_max_tokens: 16,
            media: MediaCosts::default(),
            counter: Arc::new(ByteBound::default()),
        })
        .backend(Arc::new(mock), MODEL, MODEL, None)
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk-a")).unwrap();
    Setup {
        gateway,
        tenant,
        mock: handle,
    }
}

/// A 10-byte prompt: `ByteBound` counts 12 tokens.
fn request(id: &str) -> ClientRequest {
    let mut r = ClientRequest::new(id, MODEL, Prompt::Text("0123456789".into()));
    r.max_tokens = Some(8);
    r
}

/// The stream's text, its event names and its error, if any.
async fn collect(stream: &mut GatewayStream) -> (String, Vec<&'static str>, Option<BackendError>) {
    let (mut text, mut names, mut error) = (String::new(), Vec::new(), None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if let TokenEvent::Delta(d) = &event {
                    text.push_str(&d.text);
                }
                names.push(event.name());
            }
            Err(e) => error = Some(e),
        }
    }
    (text, names, error)
}

#[tokio::test(start_paused = true)]
async fn the_documented_cancel_guard_pattern_runs_the_request_to_its_end() {
    let s = setup();
    // As `Gateway::request_cancel` documents it: the guard alone, its
    // handle cloned for the request, the guard kept while the stream is read.
    let guard = s.gateway.request_cancel();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r1"), guard.handle().clone())
        .await
        .unwrap();
    let (text, names, error) = collect(&mut stream).await;
    assert_eq!(text, "Hello, world");
    assert_eq!(
        names,
        ["Started", "Delta", "Delta", "Delta", "Usage", "Finished"]
    );
    assert!(error.is_none(), "{error:?}");
    assert_eq!(guard.handle().reason(), None);
    let handle = guard.disarm();
    assert_eq!(handle.reason(), None);
    assert_eq!(s.mock.aborts().decode, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_is_the_client_leaving() {
    let s = setup();
    s.mock.push(Script::repeat(100, Duration::from_millis(10)));
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let mut stream = s
        .gateway
        .generate(&s.tenant, request("r2"), cancel.clone())
        .await
        .unwrap();
    // Started and one Delta, then the guard goes.
    for _ in 0..2 {
        stream.next().await.unwrap().unwrap();
    }
    drop(guard);
    assert_eq!(cancel.reason(), Some(CancelReason::ClientGone));
    // The stream just ends: the client is gone, nobody reads an error.
    let (text, names, error) = collect(&mut stream).await;
    assert_eq!((text.as_str(), names.len()), ("", 0));
    assert!(error.is_none(), "{error:?}");
    assert_eq!(s.mock.aborts().decode, 1);
}
