//! OTLP export (feature `otlp`): the `gateway` binary on its embedded sim
//! engine, pointed at a collector in this test that decodes the OTLP/HTTP
//! protobuf it receives. One plain and one streaming chat give exactly two
//! `gateway.request` spans carrying the gen_ai attributes with the values of
//! the responses; they are batched (nothing is sent while the gateway runs,
//! the batch delay being a minute) and flushed after the SIGTERM drain.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use gateway_core::RequestId;
use gateway_tests::{open, request};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const SERVICE: &str = "gateway-otlp-test";

/// What the collector received: each request's content type and its decoded body.
type Received = Arc<Mutex<Vec<(String, ExportTraceServiceRequest)>>>;

async fn traces(
    State(received): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let Ok(decoded) = ExportTraceServiceRequest::decode(body) else {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            b"not an ExportTraceServiceRequest".to_vec(),
        );
    };
    received.lock().unwrap().push((content_type, decoded));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// A collector on a free loopback port accepting `POST /v1/traces`.
async fn collector() -> (SocketAddr, Received) {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// The binary on the embedded default config, exporting to `collector`.
fn start_gateway(collector: SocketAddr) -> (Child, SocketAddr) {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["--listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_SERVICE_NAME", SERVICE)
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("gateway listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    (child, addr)
}

/// An attribute value, as far as these spans use them.
#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Str(String),
    Int(i64),
    Strs(Vec<String>),
}

fn attr(value: Option<&AnyValue>) -> Attr {
    match value.and_then(|v| v.value.as_ref()).unwrap() {
        Any::StringValue(s) => Attr::Str(s.clone()),
        Any::IntValue(i) => Attr::Int(*i),
        Any::ArrayValue(a) => Attr::Strs(
            a.values
                .iter()
                .map(|v| match v.value.as_ref().unwrap() {
                    Any::StringValue(s) => s.clone(),
                    other => format!("not a string: {other:?}"),
                })
                .collect(),
        ),
        other => Attr::Str(format!("unexpected value {other:?}")),
    }
}

/// The attributes by key (a duplicated key fails the test).
fn attributes(list: &[KeyValue]) -> BTreeMap<String, Attr> {
    let mut map = BTreeMap::new();
    for kv in list {
        let old = map.insert(kv.key.clone(), attr(kv.value.as_ref()));
        assert_eq!(old, None, "attribute {} twice", kv.key);
    }
    map
}

fn s(v: &str) -> Attr {
    Attr::Str(v.to_owned())
}

/// The attributes a successful chat of `max_tokens` on the sim engine
/// carries, with the usage and finish reason the client was told: the
/// gateway's own id (`request_id`, the response's `id` without its
/// `chatcmpl-`) and the client's `x-request-id` (`client_request_id`).
fn expected(
    request_id: &str,
    client_request_id: &str,
    max_tokens: i64,
    usage: &Value,
    finish: &str,
) -> Vec<(&'static str, Attr)> {
    vec![
        ("request_id", s(request_id)),
        ("client_request_id", s(client_request_id)),
        ("tenant", s("demo")),
        ("backend", s("sim-0")),
        ("outcome", s("ok")),
        ("gen_ai.operation.name", s("chat")),
        ("gen_ai.request.model", s("sim-small")),
        ("gen_ai.request.max_tokens", Attr::Int(max_tokens)),
        ("gen_ai.response.model", s("sim-small")),
        ("gen_ai.provider.name", s("sim")),
        (
            "gen_ai.usage.input_tokens",
            Attr::Int(usage["prompt_tokens"].as_i64().unwrap()),
        ),
        (
            "gen_ai.usage.output_tokens",
            Attr::Int(usage["completion_tokens"].as_i64().unwrap()),
        ),
        (
            "gen_ai.response.finish_reasons",
            Attr::Strs(vec![finish.to_owned()]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_collector_with_gen_ai_attributes() {
    let (collector_addr, received) = collector().await;
    let (mut child, addr) = start_gateway(collector_addr);
    let auth = ("authorization", "Bearer sk-demo");

    // A plain chat: 6 tokens asked, fewer than the sim engine's shortest
    // natural completion (16), so it stops on length.
    let plain = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[auth, ("x-request-id", "otlp-plain")],
        br#"{"model":"sim-small","max_tokens":6,"messages":[{"role":"user","content":"Hello there"}]}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        plain.status,
        200,
        "{}",
        String::from_utf8_lossy(&plain.body)
    );
    let plain = plain.json();
    assert_eq!(plain["usage"]["completion_tokens"], 6, "{plain}");
    let plain_finish = plain["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(plain_finish, "length");
    let plain_id = plain["id"].as_str().unwrap().to_owned();

    // A streaming chat with its usage in the last chunk.
    let mut stream = open(
        addr,
        "POST",
        "/v1/chat/completions",
        &[auth, ("x-request-id", "otlp-stream")],
        br#"{"model":"sim-small","max_tokens":9,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Tell me a longer story, please"}]}"#,
    )
    .await
    .unwrap();
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.header_value("x-request-id").as_deref(),
        Some("otlp-stream")
    );
    let (mut stream_usage, mut stream_finish, mut done) = (Value::Null, None, false);
    let mut stream_id = String::new();
    for _ in 0..1000 {
        let Some(event) = tokio::time::timeout(Duration::from_secs(10), stream.next_event())
            .await
            .unwrap()
            .unwrap()
        else {
            break;
        };
        if event == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(&event).unwrap();
        chunk["id"].as_str().unwrap().clone_into(&mut stream_id);
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            stream_finish = Some(reason.to_owned());
        }
        if !chunk["usage"].is_null() {
            stream_usage = chunk["usage"].clone();
        }
    }
    assert!(done, "the stream did not end with [DONE]");
    assert_eq!(stream_usage["completion_tokens"], 9, "{stream_usage}");
    assert_eq!(stream_finish.as_deref(), Some("length"));

    // Batched: nothing was sent while the gateway runs (the batch delay is a
    // minute and two spans are far from a full batch).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received.lock().unwrap().len(), 0);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));

    let received = std::mem::take(&mut *received.lock().unwrap());
    assert!(!received.is_empty(), "nothing was exported");
    let mut spans: Vec<(BTreeMap<String, Attr>, String, Span)> = Vec::new();
    for (content_type, export) in &received {
        assert_eq!(content_type, "application/x-protobuf");
        for resource_spans in &export.resource_spans {
            let resource = attributes(&resource_spans.resource.as_ref().unwrap().attributes);
            assert_eq!(resource.get("service.name"), Some(&s(SERVICE)));
            for scope_spans in &resource_spans.scope_spans {
                let scope = scope_spans.scope.as_ref().unwrap().name.clone();
                for span in &scope_spans.spans {
                    spans.push((resource.clone(), scope.clone(), span.clone()));
                }
            }
        }
    }
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let mut by_id = BTreeMap::new();
    for (_, scope, span) in &spans {
        assert_eq!(span.name, "gateway.request");
        assert_eq!(scope, "gateway");
        assert!(span.parent_span_id.is_empty(), "a root span");
        assert_eq!(span.trace_id.len(), 16);
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        let attrs = attributes(&span.attributes);
        let Some(Attr::Str(id)) = attrs.get("client_request_id").cloned() else {
            panic!("no client_request_id: {attrs:?}");
        };
        by_id.insert(id, attrs);
    }
    assert_ne!(spans[0].2.trace_id, spans[1].2.trace_id, "one trace each");
    assert_eq!(
        by_id.keys().collect::<Vec<_>>(),
        ["otlp-plain", "otlp-stream"]
    );
    for (id, response_id, max_tokens, usage, finish) in [
        (
            "otlp-plain",
            &plain_id,
            6,
            &plain["usage"],
            plain_finish.as_str(),
        ),
        ("otlp-stream", &stream_id, 9, &stream_usage, "length"),
    ] {
        let attrs = &by_id[id];
        // The gateway's id: fresh, and what the response's `id` names.
        let gateway_id = response_id.strip_prefix("chatcmpl-").unwrap();
        assert!(RequestId::new(gateway_id).is_generated(), "{response_id}");
        for (key, value) in expected(gateway_id, id, max_tokens, usage, finish) {
            assert_eq!(attrs.get(key), Some(&value), "{id}: {key} in {attrs:?}");
        }
        // Only the span's own fields: no location, thread or timing extras,
        // no error on a successful request.
        for key in attrs.keys() {
            assert!(
                key.starts_with("gen_ai.")
                    || [
                        "request_id",
                        "client_request_id",
                        "tenant",
                        "backend",
                        "outcome"
                    ]
                    .contains(&key.as_str()),
                "{id}: unexpected attribute {key}"
            );
        }
    }
    let input = |id: &str| by_id[id]["gen_ai.usage.input_tokens"].clone();
    assert_ne!(
        input("otlp-plain"),
        input("otlp-stream"),
        "prompts of different lengths"
    );
}

#[test]
fn an_endpoint_this_build_cannot_use_stops_the_start_with_exit_2() {
    for (name, value, says) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://127.0.0.1:4318",
            "is https",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "not a url",
            "OTLP export: invalid exporter configuration",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "protocol `grpc`"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "timeout `soon`"),
    ] {
        let mut command = Command::new(BIN);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(var);
            }
        }
        if name != "OTEL_EXPORTER_OTLP_ENDPOINT" && name != "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        }
        let out = command
            .args(["--listen", "127.0.0.1:0"])
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(says), "{name}={value}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}={value}: it started");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_not_there_costs_requests_nothing() {
    // A loopback port nobody listens on.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["--listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{gone}"))
        // Export at once, so the failures happen while requests run.
        .env("OTEL_BSP_SCHEDULE_DELAY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("gateway listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..3 {
        let response = request(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-demo")],
            br#"{"model":"sim-small","max_tokens":2,"messages":[{"role":"user","content":"Hi"}]}"#,
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200, "request {i}");
        assert_eq!(response.json()["usage"]["completion_tokens"], 2);
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // The flush gives up within its 5 s bound; the exit stays clean.
    let started = std::time::SystemTime::now();
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(started.elapsed().unwrap() < Duration::from_secs(9));
}
