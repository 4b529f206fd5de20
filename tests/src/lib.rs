//! Support for the end-to-end tests: an in-process gateway server on a
//! loopback port, and a minimal HTTP/1.1 client that can stream SSE, stop
//! reading, or hang up at any moment; and a Redis for the tests of the
//! Redis ledger and limiter ([`redis`]).

use std::net::SocketAddr;
use std::time::Duration;

use gateway_adapters::server::{RouterOptions, router, serve};
use gateway_policy::Gateway;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod redis;

/// A gateway served on `127.0.0.1:0` in this process.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The gateway behind it.
    pub gateway: Gateway,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Serves `gateway` with `options`.
    ///
    /// # Errors
    /// If the port cannot be bound.
    pub async fn start(gateway: Gateway, options: RouterOptions) -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app = router(gateway.clone(), options);
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(serve(listener, app, shutdown, Duration::from_secs(5)));
        Ok(Server {
            addr,
            gateway,
            stop,
            task,
        })
    }

    /// Stops accepting and waits for the server task.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// `tenant`'s usage (`GET /admin/tenants/{tenant}/usage` with the
    /// admin key `admin_key`) once every request has settled: nothing in
    /// flight, nothing reserved. Polled for up to 5 s.
    ///
    /// # Errors
    /// Socket errors, or nothing settled within 5 s (the last usage in
    /// the message).
    pub async fn settled_usage(
        &self,
        admin_key: &str,
        tenant: &str,
    ) -> std::io::Result<serde_json::Value> {
        let auth = format!("Bearer {admin_key}");
        let path = format!("/admin/tenants/{tenant}/usage");
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let u = request(self.addr, "GET", &path, &[("authorization", &auth)], b"")
                .await?
                .json();
            if u["reserved_picousd"] == 0 && self.gateway.active() == 0 {
                return Ok(u);
            }
            if tokio::time::Instant::now() >= until {
                return Err(std::io::Error::other(format!("never settled: {u}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An open response whose body is read as it arrives.
#[derive(Debug)]
pub struct Streaming {
    reader: BufReader<TcpStream>,
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    left: Option<usize>,
    pending: Vec<u8>,
    done: bool,
}

fn io_error(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(message.into())
}

/// Sends one request (with `Connection: close` unless `headers` say
/// otherwise) and returns the response once its head has arrived.
///
/// # Errors
/// Socket errors and malformed responses.
pub async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Streaming> {
    send(
        TcpStream::connect(addr).await?,
        addr,
        method,
        path,
        headers,
        body,
    )
    .await
}

/// [`open`] on a socket whose receive buffer is `bytes`: a slow client
/// whose kernel does not soak up megabytes of stream.
///
/// # Errors
/// Socket errors and malformed responses.
pub async fn open_with_recv_buffer(
    addr: SocketAddr,
    bytes: u32,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Streaming> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(bytes)?;
    let stream = socket.connect(addr).await?;
    send(stream, addr, method, path, headers, body).await
}

async fn send(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Streaming> {
    stream.set_nodelay(true)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io_error(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let left = find("content-length").and_then(|v| v.parse().ok());
    Ok(Streaming {
        reader,
        status,
        headers,
        chunked,
        left,
        pending: Vec::new(),
        done: false,
    })
}

impl Streaming {
    /// The first header named `name` (lowercase).
    pub fn header_value(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// The next piece of body as the server sent it, `None` at the end.
    ///
    /// # Errors
    /// Socket errors and malformed chunking.
    pub async fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if self.chunked {
            let mut line = String::new();
            self.reader.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| io_error(format!("bad chunk size {line:?}")))?;
            let mut data = vec![0; size + 2];
            self.reader.read_exact(&mut data).await?;
            data.truncate(size);
            if size == 0 {
                self.done = true;
                return Ok(None);
            }
            return Ok(Some(data));
        }
        let want = self.left.unwrap_or(usize::MAX);
        if want == 0 {
            self.done = true;
            return Ok(None);
        }
        let mut buf = vec![0; want.min(64 * 1024)];
        let n = self.reader.read(&mut buf).await?;
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        buf.truncate(n);
        self.left = self.left.map(|l| l - n);
        Ok(Some(buf))
    }

    /// The next SSE event's data (`None` at the end of the body).
    ///
    /// # Errors
    /// Socket errors and malformed chunking.
    pub async fn next_event(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(at) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.pending.drain(..at + 2).collect();
                let text = String::from_utf8(frame).map_err(|_| io_error("frame is not UTF-8"))?;
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                    .collect();
                return Ok(Some(data.join("\n")));
            }
            match self.next_chunk().await? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }

    /// Reads the rest of the body.
    ///
    /// # Errors
    /// Socket errors and malformed chunking.
    pub async fn finish(mut self) -> std::io::Result<Response> {
        let mut body = std::mem::take(&mut self.pending);
        while let Some(chunk) = self.next_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status: self.status,
            headers: self.headers,
            body,
        })
    }
}

/// Sends one request and reads the whole response.
///
/// # Errors
/// Socket errors and malformed responses.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    open(addr, method, path, headers, body)
        .await?
        .finish()
        .await
}

/// The resident set size of this process in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
