//! The raw HTTP/1.1 the simulators share: the accept loop and one
//! keep-alive connection per client, reading a request (head and a
//! `content-length` body), noticing a client's close, and writing full
//! responses, chunks of a chunked body and SSE frames.
//!
//! Raw bytes on a `tokio` socket rather than an HTTP library, so every
//! byte and every write of a response is under the simulator's control.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One request as read off the socket.
#[derive(Debug)]
pub(crate) struct HttpRequest {
    /// `GET`, `POST`, ...
    pub(crate) method: String,
    /// The request target as sent.
    pub(crate) path: String,
    /// Headers, names lowercased, values trimmed.
    pub(crate) headers: Vec<(String, String)>,
    /// The body (`content-length` bytes).
    pub(crate) body: Vec<u8>,
}

impl HttpRequest {
    /// The value of header `name` (lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to do with the connection after a response.
#[derive(Debug)]
pub(crate) enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
    /// Reset the connection (RST: linger zero, then close).
    Reset,
}

impl Next {
    /// Keep-alive after a response that went out (`ok`), else close.
    pub(crate) fn keep_alive_if(ok: bool) -> Next {
        if ok { Next::KeepAlive } else { Next::Close }
    }
}

/// A simulator's routes: answers `request` with the simulator's state
/// `S`; `rd` is there to notice the client's close.
pub(crate) type Routes<S> = for<'a> fn(
    &'a Arc<S>,
    HttpRequest,
    &'a mut OwnedReadHalf,
    &'a mut OwnedWriteHalf,
) -> Pin<Box<dyn Future<Output = Next> + Send + 'a>>;

/// Serves the connections of `listener` with `routes` over `state`, on a
/// task of its own, until `stop`.
pub(crate) fn serve<S: Send + Sync + 'static>(
    state: &Arc<S>,
    listener: TcpListener,
    stop: &CancellationToken,
    routes: Routes<S>,
) {
    tokio::spawn(accept_loop(listener, state.clone(), routes, stop.clone()));
}

/// Accepts connections until `stop`, serving each with `routes` over
/// `state`; every connection ends at `stop` too.
async fn accept_loop<S: Send + Sync + 'static>(
    listener: TcpListener,
    state: Arc<S>,
    routes: Routes<S>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = connection(stream, state, routes) => {}
            }
        });
    }
}

async fn connection<S>(stream: TcpStream, state: Arc<S>, routes: Routes<S>) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut rd, &mut buf).await else {
            return;
        };
        match routes(&state, request, &mut rd, &mut wr).await {
            Next::KeepAlive => {}
            Next::Close => return,
            Next::Reset => {
                if let Ok(stream) = rd.reunite(wr) {
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                }
                return;
            }
        }
    }
}

/// Where `needle` first occurs in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn read_request(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<HttpRequest> {
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).ok()?;
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_owned();
            let path = first.next()?.to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            if len > 4 << 20 {
                return None;
            }
            while buf.len() < end + 4 + len {
                let n = rd.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(HttpRequest {
                method,
                path,
                headers,
                body,
            });
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = rd.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Resolves when the client closed its side (or the socket failed).
pub(crate) async fn closed(rd: &mut OwnedReadHalf) {
    let mut tmp = [0u8; 1024];
    loop {
        match rd.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// What ended a wait inside a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The time is up.
    Ready,
    /// The client closed.
    Closed,
    /// The engine aborted the request.
    Aborted,
}

/// Sleeps `time` unless the client closes `rd` first or `abort` (if any)
/// fires. A zero `time` is no wait at all: `Ready` at once, without a timer
/// (a zero sleep would still wait for the timer's next tick, about 1 ms) and
/// without looking at the socket (a close then shows at the next write).
pub(crate) async fn wait(
    time: Duration,
    rd: &mut OwnedReadHalf,
    abort: Option<&CancellationToken>,
) -> Wake {
    if time.is_zero() {
        return Wake::Ready;
    }
    let aborted = async {
        match abort {
            Some(abort) => abort.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tokio::time::sleep(time) => Wake::Ready,
        () = closed(rd) => Wake::Closed,
        () = aborted => Wake::Aborted,
    }
}

/// FastAPI's 404 body (vLLM, SGLang).
pub(crate) const FASTAPI_404: &str = r#"{"detail":"Not Found"}"#;

/// The reason phrase of `status`.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a whole response with a `content-length` body in one write.
pub(crate) async fn write_full(
    wr: &mut OwnedWriteHalf,
    status: u16,
    content_type: &str,
    body: &str,
) -> Next {
    write_full_with(wr, status, content_type, body, &[]).await
}

/// [`write_full`] with `extra_headers` after the content headers.
pub(crate) async fn write_full_with(
    wr: &mut OwnedWriteHalf,
    status: u16,
    content_type: &str,
    body: &str,
    extra_headers: &[(&str, String)],
) -> Next {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    match wr.write_all(out.as_bytes()).await {
        Ok(()) => Next::KeepAlive,
        Err(_) => Next::Close,
    }
}

/// The head of a chunked `text/event-stream` response with `status`.
pub(crate) fn sse_head(status: u16) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n",
        reason(status)
    )
}

/// Writes one HTTP chunk (nothing for no data) and flushes.
pub(crate) async fn write_chunk(wr: &mut OwnedWriteHalf, data: &[u8]) -> bool {
    if data.is_empty() {
        return true;
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    wr.write_all(&out).await.is_ok() && wr.flush().await.is_ok()
}

/// The bytes of `tail` as the last chunk (none when empty), then the end
/// of the chunked body.
pub(crate) fn last_chunk(tail: &[u8]) -> Vec<u8> {
    let mut last = Vec::new();
    if !tail.is_empty() {
        last.extend(format!("{:x}\r\n", tail.len()).into_bytes());
        last.extend_from_slice(tail);
        last.extend_from_slice(b"\r\n");
    }
    last.extend_from_slice(b"0\r\n\r\n");
    last
}

/// Writes `tail` as the last chunk and the end of the chunked body, in
/// one write.
pub(crate) async fn write_last(wr: &mut OwnedWriteHalf, tail: &[u8]) -> bool {
    wr.write_all(&last_chunk(tail)).await.is_ok()
}

/// Writes `pieces` as chunks 10 ms apart, so each is its own read (after a
/// failed write the rest are skipped, the pauses kept).
pub(crate) async fn write_pieces(wr: &mut OwnedWriteHalf, pieces: [&[u8]; 3]) -> bool {
    let mut ok = true;
    for piece in pieces {
        ok = ok && write_chunk(wr, piece).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ok
}

/// One SSE event `data: {json}\n\n`.
pub(crate) fn frame(json: &str) -> Vec<u8> {
    format!("data: {json}\n\n").into_bytes()
}

/// `s` as a JSON string literal.
pub(crate) fn js(s: &str) -> String {
    Value::from(s).to_string()
}

/// `bytes` cut in three after the first byte of the first `é` and after
/// the first two bytes of the first `🙂` (TV-06), or `None` when the frame
/// lacks them.
pub(crate) fn split_inside_chars(bytes: &[u8]) -> Option<[&[u8]; 3]> {
    let at = find(bytes, "é".as_bytes())? + 1;
    let at2 = find(bytes, "🙂".as_bytes())? + 2;
    if at2 < at {
        return None;
    }
    let (a, rest) = bytes.split_at(at);
    let (b, c) = rest.split_at(at2 - at);
    Some([a, b, c])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero wait returns at once. A zero `sleep` would wait for the
    /// timer's next tick (about 1 ms of real time each, so 500 of them at
    /// least ~0.5 s), which paused time does not show: this runs in real
    /// time with a wide bound.
    #[tokio::test]
    async fn a_zero_wait_takes_no_timer_tick() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut rd, _wr) = server.into_split();
        let t0 = tokio::time::Instant::now();
        for _ in 0..500 {
            assert_eq!(wait(Duration::ZERO, &mut rd, None).await, Wake::Ready);
        }
        let zero = t0.elapsed();
        assert!(
            zero < Duration::from_millis(250),
            "500 zero waits took {zero:?}"
        );
        // A real wait still waits, and still sees a close.
        let t1 = tokio::time::Instant::now();
        assert_eq!(
            wait(Duration::from_millis(5), &mut rd, None).await,
            Wake::Ready
        );
        assert!(t1.elapsed() >= Duration::from_millis(5));
        drop(client);
        assert_eq!(
            wait(Duration::from_secs(10), &mut rd, None).await,
            Wake::Closed
        );
    }
}
