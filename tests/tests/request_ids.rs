//! Request ids that cannot collide: the id an engine sees is always the
//! gateway's own ([`RequestId::generate`]); a client's `x-request-id` is
//! echoed back and kept for correlation, never sent upstream. Two tenants
//! reusing one `x-request-id` against SGLang (which aborts by `rid`) are two
//! requests there, and one leaving does not abort the other.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use gateway_adapters::engines::UpstreamConfig;
use gateway_adapters::engines::{sglang, vllm};
use gateway_adapters::server::RouterOptions;
use gateway_core::*;
use gateway_policy::*;
use gateway_sims::{sglang::SglangSim, vllm::VllmSim};
use gateway_tests::{Server, Streaming, open, request};
use serde_json::Value;
use tokio::time::{Instant, sleep, timeout};

const SHARED: &str = "shared-client-id-7";

fn model() -> ModelSpec {
    ModelSpec {
        name: "m".into(),
        pricing: Pricing::default(),
        context_window: 4096,
        default_max_tokens: 64,
        media: gateway_policy::MediaCosts::default(),
        counter: Arc::new(ByteBound::default()),
    }
}

async fn serve(backend: Arc<dyn Backend>) -> Server {
    let gateway = Gateway::builder(Settings {
        stream_buffer_events: NonZeroUsize::new(4).unwrap(),
        ..Settings::default()
    })
    .tenant(Tenant::new("team-a"), key_hash("sk-a"))
    .tenant(Tenant::new("team-b"), key_hash("sk-b"))
    .model(model())
    .backend(backend, "m", "m", None)
    .build()
    .unwrap();
    let options = RouterOptions {
        max_body_bytes: 1 << 16,
        ..RouterOptions::default()
    };
    Server::start(gateway, options).await.unwrap()
}

const BODY: &[u8] = br#"{"model":"m","prompt":"Say hi to the sea","max_tokens":30,"stream":true}"#;

/// A streaming completion as `key`, with `x-request-id: SHARED`; returns
/// the open stream and the gateway id its first chunk names.
async fn start(server: &Server, key: &str) -> (Streaming, String) {
    let auth = format!("Bearer {key}");
    let mut s = open(
        server.addr,
        "POST",
        "/v1/completions",
        &[("authorization", &auth), ("x-request-id", SHARED)],
        BODY,
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(s.header_value("x-request-id").as_deref(), Some(SHARED));
    let event = s.next_event().await.unwrap().unwrap();
    let chunk: Value = serde_json::from_str(&event).unwrap();
    let id = chunk["id"].as_str().unwrap();
    let gateway_id = id.strip_prefix("cmpl-").unwrap().to_owned();
    assert!(RequestId::new(gateway_id.as_str()).is_generated(), "{id}");
    (s, gateway_id)
}

/// Reads `s` to `[DONE]`; returns the text chunks' count and the finish reason.
async fn drain(s: &mut Streaming) -> (usize, Option<String>) {
    let (mut texts, mut finish) = (0, None);
    while let Some(event) = timeout(Duration::from_secs(10), s.next_event())
        .await
        .unwrap()
        .unwrap()
    {
        if event == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event).unwrap();
        if chunk["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            texts += 1;
        }
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(reason.to_owned());
        }
    }
    (texts, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_reusing_one_request_id_cannot_abort_each_other_at_sglang() {
    // 30 tokens 20 ms apart: both streams live for about 600 ms.
    let sim = SglangSim::start(gateway_sims::sglang::SimOptions {
        token_interval: Duration::from_millis(20),
        natural_tokens: 100,
        ..Default::default()
    })
    .await;
    let config = UpstreamConfig::new("sglang-0", sim.url(), "m");
    let server = serve(Arc::new(sglang::backend(config).unwrap())).await;

    let (a, a_id) = start(&server, "sk-a").await;
    let (mut b, b_id) = start(&server, "sk-b").await;
    assert_ne!(a_id, b_id);

    // The engine saw two requests, each under its gateway id; the client's
    // string is in neither body nor any header.
    let sent = sim.generations();
    let rids: Vec<String> = sent
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["rid"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(rids, [a_id.clone(), b_id.clone()]);
    for r in &sent {
        assert!(!r.body.contains(SHARED), "{}", r.body);
        assert!(
            r.headers.iter().all(|(_, v)| !v.contains(SHARED)),
            "{:?}",
            r.headers
        );
    }

    // A leaves: the gateway aborts A's rid, and only A's.
    drop(a);
    let until = Instant::now() + Duration::from_secs(3);
    while sim.abort_calls().is_empty() {
        assert!(Instant::now() < until, "no /abort_request reached SGLang");
        sleep(Duration::from_millis(2)).await;
    }
    // B runs to its cap untouched: 29 more tokens after the one `start` read.
    let (texts, finish) = drain(&mut b).await;
    assert_eq!((texts, finish.as_deref()), (29, Some("length")));
    let aborted: Vec<String> = sim.abort_calls().into_iter().map(|(rid, _)| rid).collect();
    assert_eq!(aborted, [a_id]);
    assert_eq!(sim.abort_counts().total(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_sees_the_gateway_id_and_the_client_gets_its_own_back() {
    let sim = VllmSim::start(gateway_sims::vllm::SimOptions::default()).await;
    let config = UpstreamConfig::new("vllm-0", sim.url(), "m");
    let server = serve(Arc::new(vllm::backend(config).unwrap())).await;
    let body = br#"{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#;

    // With a client id: echoed; the engine gets a fresh gateway id.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = request(
            server.addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-a"), ("x-request-id", SHARED)],
            body,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-request-id"), Some(SHARED));
        let id = r.json()["id"].as_str().unwrap().to_owned();
        let gateway_id = id.strip_prefix("chatcmpl-").unwrap().to_owned();
        let sent = sim.generations().pop().unwrap();
        assert_eq!(sent.header("x-request-id"), Some(gateway_id.as_str()));
        assert!(RequestId::new(gateway_id.as_str()).is_generated());
        assert!(!sent.body.contains(SHARED));
        assert!(sent.headers.iter().all(|(_, v)| !v.contains(SHARED)));
        seen.push(gateway_id);
    }
    assert_ne!(
        seen[0], seen[1],
        "one id per request, even with one client id"
    );

    // Without one (or with one that is not usable): the gateway's id is
    // echoed, and it is the one the engine saw and the response names.
    for headers in [
        vec![("authorization", "Bearer sk-a")],
        vec![("authorization", "Bearer sk-a"), ("x-request-id", "")],
    ] {
        let r = request(server.addr, "POST", "/v1/chat/completions", &headers, body)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let echoed = r.header("x-request-id").unwrap().to_owned();
        assert!(RequestId::new(echoed.as_str()).is_generated(), "{echoed}");
        assert_eq!(r.json()["id"], format!("chatcmpl-{echoed}"));
        let sent = sim.generations().pop().unwrap();
        assert_eq!(sent.header("x-request-id"), Some(echoed.as_str()));
    }
    // Errors echo the client's id too.
    let r = request(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer nope"), ("x-request-id", SHARED)],
        body,
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.header("x-request-id")), (401, Some(SHARED)));
    server.stop().await;
}
