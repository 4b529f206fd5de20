//! What every HTTP adapter builds from its [`UpstreamConfig`] the same way:
//! the checked URLs, the `Authorization` header, the served model name, and
//! the pooled HTTP/1.1 client (`http://`, or `https://` over rustls with the
//! Mozilla roots plus the backend's own CA file), and the small body and
//! header helpers of the request path.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gateway_core::http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use gateway_core::{BackendError, FailureKind, FailurePhase};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

use super::http1;
use super::openai_compat::{EngineError, UpstreamConfig};

/// Bound on a metrics scrape's body.
pub(crate) const MAX_METRICS_BODY: usize = 8 * 1024 * 1024;
/// Bound on a call beside the stream: a health check, a scrape, an error
/// body, an abort call.
pub(crate) const SIDE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The adapters' HTTP client: pooled HTTP/1.1, the project's own client
/// ([`http1`](super::http1)) for `http://` URLs, hyper's over rustls for
/// `https://`.
#[derive(Clone)]
pub(crate) struct HttpClient {
    plain: http1::Client,
    tls: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// Sends `request` by its URI's scheme; resolves with the answer's
    /// head, its body read as it is polled.
    pub(crate) fn request(
        &self,
        request: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'static {
        enum Via {
            Plain(http1::Client),
            Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
        }
        let via = if request.uri().scheme_str() == Some("http") {
            Via::Plain(self.plain.clone())
        } else {
            Via::Tls(self.tls.clone())
        };
        async move {
            match via {
                Via::Plain(client) => Ok(client.request(request).await?.map(UpstreamBody::Plain)),
                Via::Tls(client) => Ok(client.request(request).await?.map(UpstreamBody::Tls)),
            }
        }
    }
}

/// An engine's response body, from either client.
pub(crate) enum UpstreamBody {
    Plain(http1::Body),
    Tls(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            UpstreamBody::Plain(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Tls(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain(body) => body.is_end_stream(),
            UpstreamBody::Tls(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Plain(body) => body.size_hint(),
            UpstreamBody::Tls(body) => body.size_hint(),
        }
    }
}

/// Why a call to an engine failed at the transport.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The project's client (`http://`).
    #[error(transparent)]
    Plain(#[from] http1::Error),
    /// hyper's client, before the head (`https://`).
    #[error(transparent)]
    Tls(#[from] hyper_util::client::legacy::Error),
    /// hyper's client, in the body (`https://`).
    #[error(transparent)]
    TlsBody(#[from] hyper::Error),
}

impl UpstreamError {
    /// Whether the connection closed inside the body (not a reset or
    /// another transport failure).
    pub(crate) fn is_cut_body(&self) -> bool {
        let error = match self {
            UpstreamError::Plain(e) => return e.is_cut_body(),
            UpstreamError::Tls(_) => return false,
            UpstreamError::TlsBody(e) => e,
        };
        if error.is_incomplete_message() {
            return true;
        }
        let mut source = std::error::Error::source(error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return io.kind() == std::io::ErrorKind::UnexpectedEof;
            }
            source = e.source();
        }
        false
    }
}

/// `url` as a URI: `http` or `https`, with a host.
pub(crate) fn parse_uri(url: &str) -> Result<Uri, EngineError> {
    let invalid = |reason: &str| EngineError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid("the scheme must be http or https"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(uri)
}

/// `Authorization: Bearer <api_key>` (marked sensitive), if there is a key.
pub(crate) fn auth_header(config: &UpstreamConfig) -> Result<Option<HeaderValue>, EngineError> {
    let Some(key) = &config.api_key else {
        return Ok(None);
    };
    let mut value =
        HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| EngineError::InvalidUrl {
            url: config.url.clone(),
            reason: "the API key is not a valid header value".to_owned(),
        })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// The model's name at the engine: `served_model`, else the first public
/// name, else the backend's name.
pub(crate) fn served_model(config: &UpstreamConfig) -> String {
    match (&config.served_model, config.models.first()) {
        (Some(served), _) => served.clone(),
        (None, Some(first)) => first.clone(),
        (None, None) => config.name.clone(),
    }
}

/// The longest response head, and the most hyper's `https` connections'
/// read buffer grows to (hyper's default is ~400 KiB: an engine that
/// streams faster than its client reads filled the buffer that far before
/// the gateway stopped reading it, ~135 KB per stream for 1,000 such
/// streams). Body bytes are handed on as they come (the `http://` client
/// reads at most 8 KiB at a time), so only a head must fit.
pub(crate) const UPSTREAM_MAX_BUF: usize = 16 * 1024;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The pooled client of `config`: `TCP_NODELAY`, its connect timeout and
/// idle pool; TLS 1.2/1.3 for `https` URLs, trusting the Mozilla roots and
/// the certificates in `config.ca_file`.
///
/// # Errors
/// [`EngineError::Tls`] if the CA file cannot be read or holds no usable
/// certificate.
pub(crate) fn client(config: &UpstreamConfig) -> Result<HttpClient, EngineError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.enforce_http(false);
    let tls = tls_config(config.ca_file.as_deref())?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let tls = Client::builder(TokioExecutor::new())
        .http1_max_buf_size(UPSTREAM_MAX_BUF)
        .pool_max_idle_per_host(config.pool_max_idle)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector);
    let plain = http1::Client::new(
        config.pool_max_idle,
        POOL_IDLE_TIMEOUT,
        config.connect_timeout,
    );
    Ok(HttpClient { plain, tls })
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, EngineError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let tls = |reason: String| EngineError::Tls {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| tls(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(e.to_string()))?;
        if certs.is_empty() {
            return Err(tls("no PEM certificate in the file".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| tls(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::Tls {
            path: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Reads at most `limit` bytes of `body`; `None` if it fails or is longer.
pub(crate) async fn read_limited(body: UpstreamBody, limit: usize) -> Option<Bytes> {
    Limited::new(body, limit)
        .collect()
        .await
        .ok()
        .map(http_body_util::Collected::to_bytes)
}

/// `Retry-After` in seconds (the HTTP-date form is ignored), at most an
/// hour.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// Resolves at `deadline`, never without one.
pub(crate) async fn deadline_passed(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The request ran past its deadline, in `phase`.
pub(crate) fn total_timeout(phase: FailurePhase) -> BackendError {
    BackendError::new(
        FailureKind::TotalTimeout,
        "the request ran past its deadline",
    )
    .with_phase(phase)
}

/// The connection to the engine failed, in `phase`.
pub(crate) fn transport_error(
    error: impl std::error::Error + Send + Sync + 'static,
    phase: FailurePhase,
) -> BackendError {
    BackendError::new(FailureKind::Connect, "the connection to the engine failed")
        .with_phase(phase)
        .with_source(error)
}

/// The engine broke its wire format, in `phase`.
pub(crate) fn protocol(message: impl Into<String>, phase: FailurePhase) -> BackendError {
    BackendError::new(FailureKind::ProtocolViolation, message).with_phase(phase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        assert!(parse_uri("http://h:1/v1").is_ok());
        assert!(parse_uri("https://h").is_ok());
        for bad in ["ftp://h", "h:80", "http://", "not a url"] {
            assert!(
                matches!(parse_uri(bad), Err(EngineError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let mut config = UpstreamConfig::new("b", "https://h", "m");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(client(&config), Err(EngineError::Tls { .. })));
        let empty =
            std::env::temp_dir().join(format!("gateway-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        config.ca_file = Some(empty.clone());
        let e = client(&config).err().unwrap();
        std::fs::remove_file(&empty).unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "TLS setup with `{}`: no PEM certificate in the file",
                empty.display()
            )
        );
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("2.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(2500)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("99999"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3600)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
