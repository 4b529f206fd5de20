//! The adapters' own HTTP/1.1 client for `http://` engines: one pooled
//! connection per request, read by the task that reads the answer.
//!
//! hyper's pooled client runs every connection as a task of its own and
//! hands the response body to the reader through a channel, one chunk at a
//! time: per streamed answer, each of the engine's chunks wakes two tasks,
//! and a client that leaves is seen by the connection task one hop later.
//! Profiled under the side-by-side benchmark, that connection task took
//! ~22% of the gateway's CPU. Here the [`Body`] owns the connection: the
//! reader's poll reads the socket itself, the chunks that one read brings
//! come out together, and dropping the body closes the socket at once
//! (which is how an engine learns of an abort). A body read to its end
//! puts the connection back in the pool.
//!
//! What a connection from the pool can have met while idle (the engine
//! closed it, or restarted): it is checked before use, and a request on a
//! reused connection that meets a closed socket before any byte of the
//! answer is sent again once on a new connection (the engine cannot have
//! started it: it closed without answering). `https://` engines keep
//! hyper's client (see [`super::upstream::HttpClient`]).

pub(crate) mod wire;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use gateway_core::http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use wire::{BodyDecoder, Decoded, WireError};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;

/// Why a request or its body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The URI has no host.
    #[error("the request's URI has no host")]
    NoHost,
    /// The TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The TCP connect took longer than the connect timeout.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    /// Reading or writing the socket failed.
    #[error("the connection to the engine failed: {0}")]
    Io(#[source] io::Error),
    /// The engine closed the connection before the answer ended.
    #[error("the engine closed the connection before the response ended")]
    Closed,
    /// The engine broke HTTP/1.1.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl Error {
    /// Whether the connection ended inside the answer (not a reset or
    /// another failure).
    pub(crate) fn is_cut_body(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Io(e) => e.kind() == io::ErrorKind::UnexpectedEof,
            _ => false,
        }
    }
}

/// A pooled HTTP/1.1 client over plain TCP (cheap to clone: one pool).
#[derive(Clone)]
pub(crate) struct Client {
    pool: Arc<Pool>,
}

impl Client {
    /// A client that keeps at most `max_idle` idle connections per host
    /// and port, each at most `idle_timeout`, and gives a connect
    /// `connect_timeout`.
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration, connect_timeout: Duration) -> Self {
        Client {
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                max_idle,
                idle_timeout,
                connect_timeout,
            }),
        }
    }

    /// Sends `request` and reads the answer's head; the body is read
    /// from the returned response. Dropping the future before the head
    /// closes the connection.
    pub(crate) fn request(
        &self,
        request: Request<Full<Bytes>>,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'static {
        let pool = self.pool.clone();
        async move { pool.send(request).await }
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.pool.lock().len()
    }
}

struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    key: Arc<str>,
    conn: Conn,
    since: Instant,
}

struct Conn {
    io: TcpStream,
    /// Read, not yet taken: a head's rest, the body's next bytes.
    buf: BytesMut,
}

impl Conn {
    /// Whether an idle connection is still open with nothing to read.
    fn is_open(&self) -> bool {
        let mut probe = [0_u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// How one exchange on a connection failed.
enum Failed {
    /// On a reused connection, before any byte of the answer: it was
    /// closed while idle; send again on a new one.
    Stale,
    Error(Error),
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn send(self: Arc<Self>, request: Request<Full<Bytes>>) -> Result<Response<Body>, Error> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let authority = parts.uri.authority().ok_or(Error::NoHost)?;
        // `host` and the pool's key: the authority without any userinfo.
        let without_user = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host)| host);
        let key: Arc<str> = Arc::from(without_user);
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = BytesMut::new();
        wire::encode_request(&mut out, &parts.method, path, &key, &parts.headers, &body);
        let out = out.freeze();
        // After a stale connection, a new one: sent again at most once.
        let mut fresh = false;
        loop {
            let pooled = if fresh { None } else { self.checkout(&key) };
            let (mut conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => (self.connect(host, port).await?, false),
            };
            let head = match exchange(&mut conn, &out, reused).await {
                Ok(head) => head,
                Err(Failed::Stale) => {
                    // The engine closed its idle connections (a restart, a
                    // keep-alive timeout): the others are as stale.
                    self.forget(&key);
                    fresh = true;
                    continue;
                }
                Err(Failed::Error(e)) => return Err(e),
            };
            let framing = wire::framing(&parts.method, &head)?;
            let home = wire::keeps_alive(&head).then(|| (self.clone(), key.clone()));
            let mut body = Body {
                conn: Some(conn),
                decoder: BodyDecoder::new(framing),
                home,
            };
            if body.decoder.is_done() {
                body.release();
            }
            let mut response = Response::new(body);
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            return Ok(response);
        }
    }

    /// The newest idle connection to `key` that is still open.
    fn checkout(&self, key: &str) -> Option<Conn> {
        let mut closed = Vec::new();
        let found = {
            let mut idle = self.lock();
            let mut found = None;
            while let Some(at) = idle.iter().rposition(|i| &*i.key == key) {
                let entry = idle.remove(at);
                if entry.since.elapsed() <= self.idle_timeout && entry.conn.is_open() {
                    found = Some(entry.conn);
                    break;
                }
                closed.push(entry);
            }
            found
        };
        drop(closed);
        found
    }

    /// Drops every idle connection to `key`.
    fn forget(&self, key: &str) {
        let gone: Vec<Idle> = {
            let mut idle = self.lock();
            let (gone, kept) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| &*i.key == key);
            *idle = kept;
            gone
        };
        drop(gone);
    }

    /// Puts a connection whose answer was read to its end back.
    fn put(&self, key: Arc<str>, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut idle = self.lock();
            let timeout = self.idle_timeout;
            let mut at = 0;
            while at < idle.len() {
                if idle[at].since.elapsed() > timeout {
                    dropped.push(idle.remove(at));
                } else {
                    at += 1;
                }
            }
            if idle.iter().filter(|i| i.key == key).count() >= self.max_idle
                && let Some(oldest) = idle.iter().position(|i| i.key == key)
            {
                dropped.push(idle.remove(oldest));
            }
            idle.push(Idle {
                key,
                conn,
                since: Instant::now(),
            });
        }
        drop(dropped);
    }

    async fn connect(&self, host: &str, port: u16) -> Result<Conn, Error> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = || format!("{host}:{port}");
        let io = match tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
        {
            Err(_) => return Err(Error::ConnectTimeout(addr())),
            Ok(Err(source)) => {
                return Err(Error::Connect {
                    addr: addr(),
                    source,
                });
            }
            Ok(Ok(io)) => io,
        };
        let _ = io.set_nodelay(true);
        Ok(Conn {
            io,
            buf: BytesMut::new(),
        })
    }
}

/// Writes `out` and reads the answer's head (1xx heads skipped).
async fn exchange(conn: &mut Conn, out: &[u8], reused: bool) -> Result<wire::Head, Failed> {
    let stale_or = |e: Error| {
        if reused {
            Failed::Stale
        } else {
            Failed::Error(e)
        }
    };
    if let Err(e) = conn.io.write_all(out).await {
        return Err(stale_or(Error::Io(e)));
    }
    let mut answered = false;
    loop {
        match wire::parse_head(&conn.buf, super::upstream::UPSTREAM_MAX_BUF) {
            Err(e) => return Err(Failed::Error(e.into())),
            Ok(Some(head)) => {
                conn.buf.advance(head.len);
                if head.status.is_informational() {
                    if head.status == gateway_core::http::StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Failed::Error(WireError::Head("unasked 101").into()));
                    }
                    continue;
                }
                return Ok(head);
            }
            Ok(None) => {}
        }
        conn.buf.reserve(READ_CHUNK);
        match tokio::io::AsyncReadExt::read_buf(&mut conn.io, &mut conn.buf).await {
            Ok(0) if answered => return Err(Failed::Error(Error::Closed)),
            Ok(0) => return Err(stale_or(Error::Closed)),
            Ok(_) => answered = true,
            Err(e)
                if !answered
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Err(stale_or(Error::Io(e)));
            }
            Err(e) => return Err(Failed::Error(Error::Io(e))),
        }
    }
}

/// A response's body, read from its connection as it is polled. Read to
/// its end, the connection goes back to the pool (if the engine keeps it
/// alive); dropped before, the connection is closed.
pub(crate) struct Body {
    conn: Option<Conn>,
    decoder: BodyDecoder,
    /// The pool and key to return the connection to.
    home: Option<(Arc<Pool>, Arc<str>)>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("open", &self.conn.is_some())
            .field("decoder", &self.decoder)
            .finish()
    }
}

impl Body {
    /// The body is over: the connection back to its pool when nothing of
    /// another answer came with it.
    fn release(&mut self) {
        let conn = self.conn.take();
        if let (Some(conn), Some((pool, key))) = (conn, self.home.take())
            && conn.buf.is_empty()
            && !self.decoder.ends_at_close()
        {
            pool.put(key, conn);
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.decoder = BodyDecoder::new(wire::Framing::Empty);
        Poll::Ready(Some(Err(error)))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e.into()),
            }
            conn.buf.reserve(READ_CHUNK);
            match conn.io.try_read_buf(&mut conn.buf) {
                Ok(0) => {
                    if this.decoder.at_eof() {
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(Error::Closed);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = ready!(conn.io.poll_read_ready(cx)) {
                        return this.fail(Error::Io(e));
                    }
                }
                Err(e) => return this.fail(Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            BodyDecoder::Length(n) => SizeHint::with_exact(n),
            BodyDecoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
