//! OTLP export of the `gateway.request` spans (feature `otlp`).
//!
//! On when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`).
//! Spans go through the SDK's batch processor: a closed span is queued (dropped
//! when the queue is full, never waited for) and a background thread sends the
//! batches as OTLP/HTTP protobuf over plain HTTP/1.1, the requests running on
//! the binary's own runtime. The rest of the `OTEL_*` variables
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`) are read by the SDK.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Array, Context, Key, KeyValue, Value};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanProcessor, Tracer,
};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::registry::LookupSpan;

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// The OTLP default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names the service.
const SERVICE_NAME: &str = "gateway";
/// How long shutdown waits for the last batches to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The collector's answer is read up to this size.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Span attributes recorded through `tracing` as unsigned integers, which the
/// bridge turns into strings: exported as integers, as the conventions say.
const INT_ATTRIBUTES: [&str; 3] = [
    "gen_ai.request.max_tokens",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
];
/// A string array in the conventions, recorded as one string.
const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";

/// Why OTLP export cannot start.
#[derive(Debug)]
pub(crate) enum OtlpError {
    /// The endpoint is `https://`: this build speaks plain HTTP only.
    Https(String),
    /// A protocol other than `http/protobuf` was asked for.
    Protocol(String),
    /// A timeout variable is not a number of milliseconds.
    Timeout(String),
    /// The exporter refused its configuration.
    Exporter(opentelemetry_otlp::ExporterBuildError),
}

impl fmt::Display for OtlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtlpError::Https(endpoint) => write!(
                f,
                "OTLP export: `{endpoint}` is https, this build sends plain HTTP only (point it at a local collector)"
            ),
            OtlpError::Protocol(protocol) => write!(
                f,
                "OTLP export: protocol `{protocol}` is not built, only `http/protobuf`"
            ),
            OtlpError::Timeout(value) => write!(
                f,
                "OTLP export: timeout `{value}` is not a number of milliseconds"
            ),
            OtlpError::Exporter(e) => write!(f, "OTLP export: {e}"),
        }
    }
}

impl std::error::Error for OtlpError {}

/// A running export: the tracer for the layer and the provider to flush.
#[derive(Debug)]
pub(crate) struct Export {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

/// The value of an environment variable, if set and not empty.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The endpoint the environment asks to export to, if any.
pub(crate) fn configured_endpoint() -> Option<String> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return None;
    }
    var(TRACES_ENDPOINT).or_else(|| var(ENDPOINT))
}

/// Starts the export if the environment asks for it. `runtime` runs the
/// HTTP requests; it must outlive [`Export::shutdown`].
pub(crate) fn start(runtime: &tokio::runtime::Handle) -> Result<Option<Export>, OtlpError> {
    let Some(endpoint) = configured_endpoint() else {
        return Ok(None);
    };
    if endpoint
        .trim()
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        return Err(OtlpError::Https(endpoint));
    }
    if let Some(protocol) = var(TRACES_PROTOCOL).or_else(|| var(PROTOCOL)) {
        if protocol.trim() != "http/protobuf" {
            return Err(OtlpError::Protocol(protocol));
        }
    }
    let timeout = match var(TRACES_TIMEOUT).or_else(|| var(TIMEOUT)) {
        None => DEFAULT_TIMEOUT,
        Some(v) => Duration::from_millis(
            v.trim()
                .parse::<u64>()
                .map_err(|_| OtlpError::Timeout(v.clone()))?,
        ),
    };
    let client = RuntimeClient {
        client: Client::builder(TokioExecutor::new()).build_http(),
        runtime: runtime.clone(),
        timeout,
    };
    // The endpoint itself is resolved by the exporter from the same variables
    // (`OTEL_EXPORTER_OTLP_ENDPOINT` gets `/v1/traces` appended).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(timeout)
        .with_http_client(client)
        .build()
        .map_err(OtlpError::Exporter)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SemanticTypes(BatchSpanProcessor::builder(exporter).build()))
        .with_resource(resource())
        .build();
    let tracer = provider.tracer(SERVICE_NAME);
    Ok(Some(Export { provider, tracer }))
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, the
/// SDK's own attributes), with `service.name = gateway` unless named there.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder().with_service_name(SERVICE_NAME).build()
    }
}

impl Export {
    /// The `tracing` layer that turns `gateway.request` spans into OTel spans,
    /// their fields into attributes (no added location, thread or timing
    /// attributes), and warnings inside them into span events.
    pub(crate) fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|meta| {
                if meta.is_span() {
                    meta.name() == gateway_policy::telemetry::REQUEST_SPAN
                } else {
                    LevelFilter::WARN >= *meta.level()
                }
            }))
    }

    /// Sends what is queued and stops the export (bounded by 5 s).
    pub(crate) fn shutdown(&self) -> Result<(), String> {
        self.provider
            .shutdown_with_timeout(FLUSH_TIMEOUT)
            .map_err(|e| format!("OTLP export: flush at shutdown: {e}"))
    }
}

/// Gives the bridge's attributes their semantic-convention types before the
/// batch processor queues the span.
#[derive(Debug)]
struct SemanticTypes<P>(P);

impl<P: SpanProcessor> SpanProcessor for SemanticTypes<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        span.attributes.iter_mut().for_each(retype);
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Token counts become integers, the finish reason a one-element string array.
fn retype(attribute: &mut KeyValue) {
    let Value::String(text) = &attribute.value else {
        return;
    };
    let key = attribute.key.as_str();
    if INT_ATTRIBUTES.contains(&key) {
        if let Ok(n) = text.as_str().parse::<i64>() {
            attribute.value = Value::I64(n);
        }
    } else if key == FINISH_REASONS {
        attribute.value = Value::Array(Array::String(vec![text.clone()]));
    }
}

/// The exporter's HTTP client: hyper on the binary's runtime, called from the
/// batch processor's own thread.
#[derive(Debug)]
struct RuntimeClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let send = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, send).await });
        match task.await? {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from the collector within {timeout:?}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_become_integers_and_finish_reasons_an_array() {
        let mut attributes = vec![
            KeyValue::new("gen_ai.usage.input_tokens", "36"),
            KeyValue::new("gen_ai.usage.output_tokens", "7"),
            KeyValue::new("gen_ai.request.max_tokens", "not a number"),
            KeyValue::new("gen_ai.response.finish_reasons", "length"),
            KeyValue::new("tenant", "42"),
            KeyValue::new("gen_ai.usage.input_tokens", 5_i64),
        ];
        attributes.iter_mut().for_each(retype);
        assert_eq!(
            attributes,
            vec![
                KeyValue::new("gen_ai.usage.input_tokens", 36_i64),
                KeyValue::new("gen_ai.usage.output_tokens", 7_i64),
                KeyValue::new("gen_ai.request.max_tokens", "not a number"),
                KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    Value::Array(Array::String(vec!["length".into()])),
                ),
                KeyValue::new("tenant", "42"),
                KeyValue::new("gen_ai.usage.input_tokens", 5_i64),
            ]
        );
    }
}
