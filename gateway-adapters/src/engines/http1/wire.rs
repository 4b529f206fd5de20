//! HTTP/1.1 on the wire, without I/O: the request's bytes, the response
//! head, and the body's framing (RFC 9112 §6: `Transfer-Encoding:
//! chunked`, `Content-Length`, or to the end of the connection).
//!
//! Everything here is a pure function of its input, so the fuzz target
//! (`upstream_http1`) and the unit tests drive it byte by byte.

use std::fmt::Write as _;

use bytes::{Buf, Bytes, BytesMut};
use gateway_core::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};

/// The most headers a response head may have.
pub(crate) const MAX_HEADERS: usize = 96;
/// The longest chunk-size line (size, extensions and CRLF) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// The most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// How the engine broke HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// The response head is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    Head(&'static str),
    /// The response head passed the size bound before it ended.
    #[error("the response head is longer than {0} bytes")]
    HeadTooLong(usize),
    /// `Content-Length` is not one number, or disagrees with itself.
    #[error("invalid content-length")]
    ContentLength,
    /// A transfer coding other than a final `chunked`.
    #[error("unsupported transfer-encoding")]
    TransferEncoding,
    /// A chunk's size line or its end is malformed.
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}

/// Appends `method path HTTP/1.1`, `host` (unless `headers` has one),
/// `headers`, `content-length` (when there is a body or the method sends
/// one) and the body.
pub(crate) fn encode_request(
    out: &mut BytesMut,
    method: &Method,
    path_and_query: &str,
    authority: &str,
    headers: &HeaderMap,
    body: &[u8],
) {
    out.reserve(64 + path_and_query.len() + authority.len() + 48 * headers.len() + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(if path_and_query.is_empty() {
        b"/"
    } else {
        path_and_query.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// Its length in bytes, the blank line included.
    pub(crate) len: usize,
}

/// The response head at the start of `buf`: `Ok(None)` while it is
/// incomplete (an error once `buf` holds `max` bytes without its end).
///
/// # Errors
/// [`WireError`] when the head is malformed or too long.
pub(crate) fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head>, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max => {
            return Err(WireError::HeadTooLong(max));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::Head("too many headers")),
        Err(_) => return Err(WireError::Head("not an HTTP/1.x status line and headers")),
    };
    if len > max {
        return Err(WireError::HeadTooLong(max));
    }
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(WireError::Head("invalid status code"))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| WireError::Head("header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| WireError::Head("header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        len,
    }))
}

/// Whether the connection can carry another request after this response
/// (RFC 9112 §9.3).
pub(crate) fn keeps_alive(head: &Head) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in head.headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    match head.version {
        Version::HTTP_10 => keep_alive && !close,
        _ => !close,
    }
}

/// How the response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (a `204`, a `304`, an answer to `HEAD`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// To the end of the connection (HTTP/1.0 style).
    Close,
}

/// The body's framing of a response to `method` (RFC 9112 §6.3).
///
/// # Errors
/// [`WireError::TransferEncoding`] for a coding other than a final
/// `chunked`, [`WireError::ContentLength`] for a length that is not one
/// number.
pub(crate) fn framing(method: &Method, head: &Head) -> Result<Framing, WireError> {
    if *method == Method::HEAD
        || head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let mut codings = head
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .peekable();
    if codings.peek().is_some() {
        let last = codings
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .last();
        return match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(WireError::TransferEncoding),
        };
    }
    let mut length = None;
    for value in head.headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(WireError::ContentLength);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(WireError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// What [`BodyDecoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes (every complete piece the buffer held, in order).
    Data(Bytes),
    /// More bytes are needed.
    NeedMore,
    /// The body is complete; what follows in the buffer is not its.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Reading a size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last (zero) chunk: trailer lines up to the blank one,
    /// this many bytes of them seen.
    Trailers(usize),
    Done,
}

/// Takes a response's body out of the connection's read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyDecoder {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => BodyDecoder::Done,
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::Chunked(Chunk::Size),
            Framing::Close => BodyDecoder::Close,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    /// Whether the body ends with the connection (so the connection does
    /// not go back to the pool).
    pub(crate) fn ends_at_close(&self) -> bool {
        matches!(self, BodyDecoder::Close)
    }

    /// Takes what it can of the body from the front of `buf`.
    ///
    /// # Errors
    /// [`WireError::Chunk`] when the chunked framing is broken.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        match self {
            BodyDecoder::Done => Ok(Decoded::Done),
            BodyDecoder::Close => {
                if buf.is_empty() {
                    Ok(Decoded::NeedMore)
                } else {
                    Ok(Decoded::Data(buf.split().freeze()))
                }
            }
            BodyDecoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                let data = buf.split_to(take).freeze();
                if *left == 0 {
                    *self = BodyDecoder::Done;
                }
                Ok(Decoded::Data(data))
            }
            BodyDecoder::Chunked(state) => {
                let (data, state) = decode_chunks(*state, buf)?;
                *self = if state == Chunk::Done {
                    BodyDecoder::Done
                } else {
                    BodyDecoder::Chunked(state)
                };
                Ok(match data {
                    Some(data) => Decoded::Data(data),
                    None if self.is_done() => Decoded::Done,
                    None => Decoded::NeedMore,
                })
            }
        }
    }

    /// The connection ended: whether that ends the body cleanly.
    pub(crate) fn at_eof(&mut self) -> bool {
        if matches!(self, BodyDecoder::Close) {
            *self = BodyDecoder::Done;
        }
        self.is_done()
    }
}

/// Every complete piece of chunk data at the front of `buf`: one piece
/// without a copy, several gathered into one buffer.
fn decode_chunks(
    mut state: Chunk,
    buf: &mut BytesMut,
) -> Result<(Option<Bytes>, Chunk), WireError> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut push = |piece: Bytes| match (&mut more, &first) {
        (Some(more), _) => more.extend_from_slice(&piece),
        (None, Some(one)) => {
            let mut joined = BytesMut::with_capacity(one.len() + piece.len() + 256);
            joined.extend_from_slice(one);
            joined.extend_from_slice(&piece);
            more = Some(joined);
        }
        (None, None) => first = Some(piece),
    };
    loop {
        match state {
            Chunk::Size => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(WireError::Chunk("chunk-size line too long"));
                    }
                    break;
                };
                if end > MAX_CHUNK_LINE {
                    return Err(WireError::Chunk("chunk-size line too long"));
                }
                let line = &buf[..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let size = chunk_size(line)?;
                buf.advance(end + 1);
                state = if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    break;
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                push(buf.split_to(take).freeze());
                let left = left - take as u64;
                state = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
            }
            Chunk::DataEnd => match buf.first() {
                None => break,
                Some(b'\n') => {
                    buf.advance(1);
                    state = Chunk::Size;
                }
                Some(b'\r') => match buf.get(1) {
                    None => break,
                    Some(b'\n') => {
                        buf.advance(2);
                        state = Chunk::Size;
                    }
                    Some(_) => return Err(WireError::Chunk("no CRLF after a chunk's data")),
                },
                Some(_) => return Err(WireError::Chunk("no CRLF after a chunk's data")),
            },
            Chunk::Trailers(seen) => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    if seen + buf.len() > MAX_TRAILERS {
                        return Err(WireError::Chunk("trailers too long"));
                    }
                    break;
                };
                let line = &buf[..end];
                let blank = line.is_empty() || line == b"\r";
                buf.advance(end + 1);
                if blank {
                    state = Chunk::Done;
                    break;
                }
                if seen + end + 1 > MAX_TRAILERS {
                    return Err(WireError::Chunk("trailers too long"));
                }
                state = Chunk::Trailers(seen + end + 1);
            }
            Chunk::Done => break,
        }
    }
    let data = match (more, first) {
        (Some(more), _) => Some(more.freeze()),
        (None, first) => first,
    };
    Ok((data, state))
}

/// The size of a chunk-size line (hex digits, then optional extensions
/// after `;`, which are ignored).
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() {
        return Err(WireError::Chunk("no chunk size"));
    }
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(WireError::Chunk("junk after the chunk size"));
    }
    let mut size: u64 = 0;
    for &d in digits {
        let v = u64::from(char::from(d).to_digit(16).unwrap_or(0));
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(v))
            .ok_or(WireError::Chunk("chunk size overflows"))?;
    }
    Ok(size)
}

/// For the fuzz target: an answer to a `POST` read from `reads` (the
/// bytes of each socket read, in order) as the client reads it, then the
/// connection's end. The status, the body, and whether the body ended
/// before the connection did; or the error.
#[cfg(feature = "fuzzing")]
pub(crate) fn read_answer(
    reads: &[&[u8]],
    max_head: usize,
) -> Result<(u16, Vec<u8>, bool), String> {
    let mut buf = BytesMut::new();
    let mut reads = reads.iter();
    let head = loop {
        if let Some(head) = parse_head(&buf, max_head).map_err(|e| e.to_string())? {
            buf.advance(head.len);
            if head.status.is_informational() {
                continue;
            }
            break head;
        }
        let read = reads.next().ok_or("the connection ended before the head")?;
        buf.extend_from_slice(read);
    };
    let mut decoder = BodyDecoder::new(framing(&Method::POST, &head).map_err(|e| e.to_string())?);
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Done => return Ok((head.status.as_u16(), body, true)),
            Decoded::NeedMore => match reads.next() {
                Some(read) => buf.extend_from_slice(read),
                None if decoder.at_eof() => return Ok((head.status.as_u16(), body, false)),
                None => return Err("the connection ended inside the body".to_owned()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes(), 16 * 1024).unwrap().unwrap()
    }

    /// Feeds `wire` to a decoder `step` bytes at a time; the body and
    /// whether it ended.
    fn decode_all(framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, bool, BytesMut) {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut done = decoder.is_done();
        for piece in wire.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::NeedMore => break,
                    Decoded::Done => {
                        done = true;
                        break;
                    }
                }
            }
            if done {
                break;
            }
        }
        (body, done, buf)
    }

    #[test]
    fn the_request_carries_host_length_and_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let mut out = BytesMut::new();
        encode_request(
            &mut out,
            &Method::POST,
            "/v1/chat/completions",
            "127.0.0.1:8000",
            &headers,
            b"{}",
        );
        assert_eq!(
            &out[..],
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let mut out = BytesMut::new();
        encode_request(&mut out, &Method::GET, "", "h", &HeaderMap::new(), b"");
        assert_eq!(&out[..], b"GET / HTTP/1.1\r\nhost: h\r\n\r\n");
    }

    #[test]
    fn heads_parse_whole_or_not_yet_and_bounded() {
        let text = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nrest";
        let h = head(text);
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.len, text.len() - 4);
        assert_eq!(framing(&Method::POST, &h), Ok(Framing::Chunked));
        assert!(keeps_alive(&h));
        assert!(parse_head(&text.as_bytes()[..20], 1024).unwrap().is_none());
        assert_eq!(
            parse_head(&text.as_bytes()[..20], 20).unwrap_err(),
            WireError::HeadTooLong(20)
        );
        assert!(matches!(
            parse_head(b"SSH-2.0-OpenSSH\r\n\r\n", 1024),
            Err(WireError::Head(_))
        ));
        let h10 = head("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n");
        assert!(!keeps_alive(&h10));
        assert_eq!(framing(&Method::GET, &h10), Ok(Framing::Length(3)));
        let h10ka = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(keeps_alive(&h10ka));
        assert_eq!(framing(&Method::GET, &h10ka), Ok(Framing::Close));
        assert!(!keeps_alive(&head(
            "HTTP/1.1 200 OK\r\nconnection: upgrade, close\r\n\r\n"
        )));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |text: &str| framing(&Method::POST, &head(text));
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n"),
            Ok(Framing::Length(7))
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n"),
            Err(WireError::ContentLength)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"),
            Err(WireError::ContentLength)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n"),
            Err(WireError::ContentLength)
        );
        // Transfer-Encoding wins over Content-Length (§6.3 point 3).
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            Err(WireError::TransferEncoding)
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::Close));
        assert_eq!(
            framing(
                &Method::HEAD,
                &head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n")
            ),
            Ok(Framing::Empty)
        );
    }

    #[test]
    fn chunked_bodies_decode_at_any_split_and_gather_pieces() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..=wire.len() {
            let (body, done, rest) = decode_all(Framing::Chunked, wire, step);
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(done, "step {step}");
            // What follows the body stays in the buffer (or was never fed).
            assert!(b"NEXT".starts_with(&rest[..]), "step {step}");
        }
        // All at once: the two pieces come out as one.
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"hello, world")))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Done));
        assert_eq!(&buf[..], b"NEXT");
        // Bare LF line ends are accepted too.
        let (body, done, _) = decode_all(Framing::Chunked, b"3\nabc\n0\n\n", 2);
        assert_eq!((body.as_slice(), done), (&b"abc"[..], true));
    }

    #[test]
    fn broken_chunked_bodies_are_errors_not_panics() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"fffffffffffffffffff\r\n",
            b"5 junk\r\n",
            b"\r\n",
        ] {
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            let mut buf = BytesMut::from(bad);
            let mut result = Ok(Decoded::NeedMore);
            for _ in 0..4 {
                result = decoder.decode(&mut buf);
                if !matches!(result, Ok(Decoded::Data(_))) {
                    break;
                }
            }
            assert!(
                matches!(result, Err(WireError::Chunk(_))),
                "{bad:?}: {result:?}"
            );
        }
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&[b'1'; MAX_CHUNK_LINE + 2][..]);
        assert!(decoder.decode(&mut buf).is_err());
    }

    #[test]
    fn length_and_close_bodies() {
        let (body, done, rest) = decode_all(Framing::Length(5), b"helloEXTRA", 3);
        assert_eq!((body.as_slice(), done), (&b"hello"[..], true));
        assert!(b"EXTRA".starts_with(&rest[..]));
        let mut decoder = BodyDecoder::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"hel")))
        );
        assert!(!decoder.at_eof());
        let (body, done, _) = decode_all(Framing::Close, b"to the end", 4);
        assert_eq!((body.as_slice(), done), (&b"to the end"[..], false));
        let mut decoder = BodyDecoder::new(Framing::Close);
        assert!(decoder.ends_at_close());
        assert!(decoder.at_eof());
    }
}
