//! Edge limits of the accept loop: [`ServeOptions`], the per-connection
//! clock that closes slow-header and idle connections ([`EdgeClock`], a
//! pure state machine with time passed in), per-tenant connection caps and
//! the canned answers the edge gives itself.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gateway_policy::{EdgeReason, EdgeRejections};
use http::StatusCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::openai::error_body;

/// How [`serve_with`](super::serve_with) treats connections. The defaults
/// are those of the `[server]` config keys of the same names.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// After shutdown, how long open connections may finish their current
    /// request before they are closed. Default 10 s.
    pub grace: Duration,
    /// A new connection's first request head, and any later head from its
    /// first byte, must arrive within this; else the connection is closed
    /// without an answer. Default 10 s.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no new byte for this
    /// long is closed. Default 60 s.
    pub keep_alive_timeout: Duration,
    /// A request body must arrive completely within this, counted from the
    /// end of its head; else 408 `request_timeout` and the connection is
    /// closed. Default 30 s.
    pub body_read_timeout: Duration,
    /// The largest request head (request line and headers) in bytes; a
    /// larger one gets 431 `headers_too_large` (JSON) and the connection is
    /// closed. Default 32 KiB.
    pub max_header_bytes: usize,
    /// Client connections open at once. Beyond it a few more are answered
    /// a fast 503 `overloaded` and closed; beyond those, the rest are closed
    /// at once. Default 10000.
    pub max_connections: usize,
    /// Connection caps per tenant, by API key. Default none.
    pub tenant_connections: TenantConnectionCaps,
    /// Cancel it to start the readiness phase before a shutdown: `GET
    /// /ready` answers 503 and every response carries `Connection: close`,
    /// while requests are still served.
    pub not_ready: CancellationToken,
    /// Where the edge counts its own answers and closes
    /// (`gateway_edge_rejections_total{reason}`): give it a clone of the
    /// gateway's ([`Metrics::edge_rejections`](gateway_policy::Metrics::edge_rejections))
    /// to export them on `/metrics`. Default: counted, not exported.
    pub edge_rejections: EdgeRejections,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            grace: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            tenant_connections: TenantConnectionCaps::default(),
            not_ready: CancellationToken::new(),
            edge_rejections: EdgeRejections::default(),
        }
    }
}

impl ServeOptions {
    /// The defaults with `grace`.
    pub fn with_grace(grace: Duration) -> Self {
        ServeOptions {
            grace,
            ..ServeOptions::default()
        }
    }
}

/// Per-tenant caps on open connections, looked up by the SHA-256 of the API
/// key a request presents. A connection counts against the tenant of its
/// latest request.
#[derive(Debug, Clone, Default)]
pub struct TenantConnectionCaps {
    by_key: HashMap<[u8; 32], Arc<TenantConnections>>,
}

impl TenantConnectionCaps {
    /// Caps `tenant`'s connections at `max`; `key_sha256` is (one of) its
    /// API keys' SHA-256. Keys of one tenant share one count.
    pub fn insert(&mut self, key_sha256: [u8; 32], tenant: &str, max: NonZeroU32) {
        let existing = self.by_key.values().find(|t| &*t.tenant == tenant).cloned();
        let entry = existing.unwrap_or_else(|| {
            Arc::new(TenantConnections {
                tenant: tenant.into(),
                max: max.get(),
                open: AtomicU32::new(0),
            })
        });
        self.by_key.insert(key_sha256, entry);
    }

    /// Whether no tenant is capped.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The count of the tenant with this key digest.
    pub(crate) fn get(&self, key_sha256: &[u8; 32]) -> Option<&Arc<TenantConnections>> {
        self.by_key.get(key_sha256)
    }
}

/// One capped tenant's open connections.
#[derive(Debug)]
pub(crate) struct TenantConnections {
    tenant: Arc<str>,
    max: u32,
    open: AtomicU32,
}

impl TenantConnections {
    /// One more connection of this tenant, unless it is at its cap.
    pub(crate) fn try_open(self: &Arc<Self>) -> Option<TenantSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| TenantSlot(self.clone()))
    }

    /// The tenant's id.
    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Its cap.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }
}

/// A connection counted against a tenant until dropped.
#[derive(Debug)]
pub(crate) struct TenantSlot(Arc<TenantConnections>);

impl TenantSlot {
    /// Whether it counts against `tenant`.
    pub(crate) fn is_of(&self, tenant: &Arc<TenantConnections>) -> bool {
        Arc::ptr_eq(&self.0, tenant)
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a connection is between requests: its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head since `since` (the connection's opening or
    /// the first byte after an idle spell).
    Head { since: Instant },
    /// No request in flight since `since`, no byte read since.
    Idle { since: Instant },
    /// `n` requests in flight (their heads are read): no deadline here
    /// (bodies have their own).
    Busy { n: usize },
}

/// The header-read and keep-alive deadlines of one connection.
///
/// Opening starts a head; a request (its head complete) makes it busy; the
/// end of the last response in flight makes it idle; a byte read while idle
/// starts the next head.
#[derive(Debug, Clone)]
pub(crate) struct EdgeClock {
    header: Duration,
    idle: Duration,
    phase: Phase,
}

impl EdgeClock {
    /// A connection opened at `now`.
    pub(crate) fn new(header: Duration, idle: Duration, now: Instant) -> Self {
        EdgeClock {
            header,
            idle,
            phase: Phase::Head { since: now },
        }
    }

    /// Bytes arrived at `now`; whether the deadline changed.
    pub(crate) fn on_read(&mut self, now: Instant) -> bool {
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Head { since: now };
            return true;
        }
        false
    }

    /// A request head is complete.
    pub(crate) fn on_request(&mut self) {
        self.phase = match self.phase {
            Phase::Busy { n } => Phase::Busy { n: n + 1 },
            Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { n: 1 },
        };
    }

    /// A response ended (or its request was dropped) at `now`.
    pub(crate) fn on_response_end(&mut self, now: Instant) {
        if let Phase::Busy { n } = self.phase {
            self.phase = if n > 1 {
                Phase::Busy { n: n - 1 }
            } else {
                Phase::Idle { since: now }
            };
        }
    }

    /// When the connection is to be closed, if nothing happens before.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Head { since } => Some(since + self.header),
            Phase::Idle { since } => Some(since + self.idle),
            Phase::Busy { .. } => None,
        }
    }

    /// Whether a request head is being read (or awaited): an expiry now is
    /// a header-read timeout, not a keep-alive close.
    pub(crate) fn reading_head(&self) -> bool {
        matches!(self.phase, Phase::Head { .. })
    }

    /// Whether the connection is to be closed at `now`.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

/// An HTTP/1.1 response with a JSON body that closes the connection.
pub(crate) fn closing_response(status: StatusCode, extra: &str, body: &[u8]) -> Bytes {
    let reason = status.canonical_reason().unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
        status.as_u16(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// The 503 given to a connection beyond `max_connections`.
pub(crate) fn at_capacity_response() -> Bytes {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    closing_response(
        status,
        "retry-after: 1\r\n",
        &error_body(
            status,
            "overloaded",
            "the gateway is at its connection limit",
            None,
        ),
    )
}

/// The JSON answer replacing hyper's own empty answer to an unreadable
/// request head, by its status, and the reason it is counted under.
pub(crate) fn parse_error_response(
    status: u16,
    max_header_bytes: usize,
) -> Option<(Bytes, EdgeReason)> {
    let (status, code, message, reason) = match status {
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request head is larger than {max_header_bytes} bytes"),
            EdgeReason::HeadersTooLarge,
        ),
        414 => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request URI is too long".to_owned(),
            EdgeReason::UriTooLong,
        ),
        400 => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "malformed HTTP request".to_owned(),
            EdgeReason::MalformedRequest,
        ),
        _ => return None,
    };
    let answer = closing_response(status, "", &error_body(status, code, &message, None));
    Some((answer, reason))
}

/// The body of `GET /ready` during the readiness phase of a shutdown.
pub(crate) const SHUTTING_DOWN_BODY: &[u8] =
    b"{\"status\":\"not_ready\",\"reason\":\"shutting down\",\"models\":[]}";

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(10);
    const I: Duration = Duration::from_secs(60);

    #[test]
    fn a_new_connection_has_the_header_deadline() {
        let t0 = Instant::now();
        let clock = EdgeClock::new(H, I, t0);
        assert_eq!(clock.deadline(), Some(t0 + H));
        assert!(!clock.expired(t0 + H - Duration::from_millis(1)));
        assert!(clock.expired(t0 + H));
    }

    #[test]
    fn slow_bytes_do_not_extend_a_head() {
        let t0 = Instant::now();
        let mut clock = EdgeClock::new(H, I, t0);
        for s in 1..10 {
            assert!(!clock.on_read(t0 + Duration::from_secs(s)));
        }
        assert_eq!(clock.deadline(), Some(t0 + H));
    }

    #[test]
    fn busy_has_no_deadline_then_idle_then_a_new_head() {
        let t0 = Instant::now();
        let mut clock = EdgeClock::new(H, I, t0);
        clock.on_request();
        assert_eq!(clock.deadline(), None);
        // A pipelined second request.
        clock.on_request();
        let t1 = t0 + Duration::from_secs(100);
        clock.on_response_end(t1);
        assert_eq!(clock.deadline(), None);
        clock.on_response_end(t1);
        assert_eq!(clock.deadline(), Some(t1 + I));
        // Bytes while busy were no new head; bytes while idle are.
        let t2 = t1 + Duration::from_secs(5);
        assert!(clock.on_read(t2));
        assert_eq!(clock.deadline(), Some(t2 + H));
        assert!(!clock.on_read(t2 + Duration::from_secs(1)));
        clock.on_request();
        assert_eq!(clock.deadline(), None);
        // An end without a request changes nothing.
        let mut fresh = EdgeClock::new(H, I, t0);
        fresh.on_response_end(t1);
        assert_eq!(fresh.deadline(), Some(t0 + H));
    }

    #[test]
    fn tenant_caps_count_per_tenant() {
        let mut caps = TenantConnectionCaps::default();
        let two = NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN);
        caps.insert([1; 32], "a", two);
        caps.insert([2; 32], "a", two);
        caps.insert([3; 32], "b", NonZeroU32::MIN);
        let (Some(a1), Some(a2), Some(b)) =
            (caps.get(&[1; 32]), caps.get(&[2; 32]), caps.get(&[3; 32]))
        else {
            unreachable!("inserted")
        };
        assert!(caps.get(&[4; 32]).is_none());
        let first = a1.try_open();
        let second = a2.try_open();
        assert!(first.is_some() && second.is_some());
        assert!(a1.try_open().is_none(), "a's two keys share its cap of 2");
        let only_b = b.try_open();
        assert!(only_b.as_ref().is_some_and(|s| s.is_of(b) && !s.is_of(a1)));
        assert!(b.try_open().is_none());
        drop(first);
        assert!(a2.try_open().is_some());
        assert_eq!((a1.tenant(), a1.max()), ("a", 2));
    }

    #[test]
    fn parse_errors_become_json() {
        let Some((r, reason)) = parse_error_response(431, 8192) else {
            unreachable!("431 is known")
        };
        let text = String::from_utf8_lossy(&r);
        let body = r#"{"error":{"message":"the request head is larger than 8192 bytes","type":"invalid_request_error","code":"headers_too_large","param":null}}"#;
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        );
        assert_eq!(reason, EdgeReason::HeadersTooLarge);
        let reason = |status| parse_error_response(status, 1).map(|(_, r)| r);
        assert_eq!(reason(400), Some(EdgeReason::MalformedRequest));
        assert_eq!(reason(414), Some(EdgeReason::UriTooLong));
        assert_eq!(reason(500), None);
    }
}
