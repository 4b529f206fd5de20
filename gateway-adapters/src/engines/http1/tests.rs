//! The client against scripted engines on loopback: each test's server
//! reads requests and writes exactly the bytes it is given.

use std::time::Duration;

use bytes::Bytes;
use gateway_core::http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

fn client() -> Client {
    Client::new(4, Duration::from_secs(30), Duration::from_secs(2))
}

fn post(addr: std::net::SocketAddr, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Reads one request (head and `content-length` body) from `io`; `None`
/// at the end of the connection.
async fn read_request(io: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.parse().unwrap());
            while buf.len() < end + 4 + length {
                let mut more = [0; 4096];
                let n = io.read(&mut more).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&more[..n]);
            }
            let request = String::from_utf8_lossy(&buf[..end + 4 + length]).to_string();
            buf.drain(..end + 4 + length);
            return Some(request);
        }
        let mut more = [0; 4096];
        let n = io.read(&mut more).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&more[..n]);
    }
}

/// An engine that answers every request on every connection with the
/// next of `answers` (in order, across connections), then closes that
/// connection if the answer says `close` or the next answer is `HANGUP`
/// (which it takes). `CLOSE` closes the connection instead of answering.
/// Reports each accepted connection's number and each request on `seen`.
async fn engine(
    answers: Vec<&'static [u8]>,
) -> (std::net::SocketAddr, mpsc::Receiver<(usize, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, rx) = mpsc::channel(64);
    let answers = std::sync::Arc::new(std::sync::Mutex::new(answers.into_iter()));
    tokio::spawn(async move {
        let mut number = 0;
        while let Ok((mut io, _)) = listener.accept().await {
            number += 1;
            let (seen, answers) = (seen.clone(), answers.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(request) = read_request(&mut io, &mut buf).await {
                    let _ = seen.send((number, request)).await;
                    let Some(answer) = answers.lock().unwrap().next() else {
                        return;
                    };
                    if answer == b"CLOSE" {
                        return;
                    }
                    io.write_all(answer).await.unwrap();
                    if answer.windows(17).any(|w| w == b"connection: close") {
                        return;
                    }
                    let mut answers = answers.lock().unwrap();
                    if answers.as_slice().first() == Some(&&b"HANGUP"[..]) {
                        answers.next();
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn text(response: Response<Body>) -> Result<String, Error> {
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

/// The body of a `POST {}` to `addr` through `client`.
async fn fetch(client: &Client, addr: std::net::SocketAddr) -> String {
    text(client.request(post(addr, "{}")).await.unwrap())
        .await
        .unwrap()
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
const CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n3\r\nab\n\r\n0\r\n\r\n";

#[tokio::test]
async fn a_connection_read_to_its_end_is_used_again() {
    let (addr, mut seen) = engine(vec![OK_HELLO, CHUNKED, OK_HELLO]).await;
    let client = client();
    let first = client.request(post(addr, "{\"a\":1}")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(text(first).await.unwrap(), "hello");
    assert_eq!(client.idle(), 1);
    assert_eq!(fetch(&client, addr).await, "data: ab\n");
    assert_eq!(fetch(&client, addr).await, "hello");
    let (number, request) = seen.recv().await.unwrap();
    assert_eq!(number, 1);
    assert_eq!(
        request,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
        )
    );
    assert_eq!(seen.recv().await.unwrap().0, 1);
    assert_eq!(seen.recv().await.unwrap().0, 1);
}

#[tokio::test]
async fn a_streamed_body_comes_as_it_is_written() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (step, mut steps) = mpsc::channel::<&'static [u8]>(16);
    tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_request(&mut io, &mut buf).await.unwrap();
        while let Some(bytes) = steps.recv().await {
            io.write_all(bytes).await.unwrap();
        }
    });
    let client = client();
    step.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut body = client.request(post(addr, "{}")).await.unwrap().into_body();
    step.send(b"5\r\nfirst\r\n").await.unwrap();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&frame[..], b"first");
    // A piece split across writes comes in parts, in order.
    step.send(b"6\r\nsec").await.unwrap();
    assert_eq!(
        &body.frame().await.unwrap().unwrap().into_data().unwrap()[..],
        b"sec"
    );
    step.send(b"ond\r\n0\r\n\r\n").await.unwrap();
    assert_eq!(
        &body.frame().await.unwrap().unwrap().into_data().unwrap()[..],
        b"ond"
    );
    assert!(body.frame().await.is_none());
    assert_eq!(client.idle(), 1);
}

#[tokio::test]
async fn an_idle_connection_the_engine_closed_is_replaced_without_an_error() {
    // Closed while idle: found closed at checkout, or met on the write or
    // the read; either way the request goes out on a new connection.
    let (addr, mut seen) = engine(vec![OK_HELLO, b"HANGUP", OK_HELLO]).await;
    let client = client();
    assert_eq!(fetch(&client, addr).await, "hello");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(fetch(&client, addr).await, "hello");
    assert_eq!(seen.recv().await.unwrap().0, 1);
    assert_eq!(seen.recv().await.unwrap().0, 2);
    // Closed when the request arrives, before any byte of an answer: the
    // engine did not start it; sent again once on a new connection.
    let (addr, mut seen) = engine(vec![OK_HELLO, b"CLOSE", OK_HELLO]).await;
    assert_eq!(fetch(&client, addr).await, "hello");
    assert_eq!(fetch(&client, addr).await, "hello");
    let numbers: Vec<usize> = [seen.recv().await, seen.recv().await, seen.recv().await]
        .into_iter()
        .flatten()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(numbers, [1, 1, 2]);
}

#[tokio::test]
async fn connection_close_answers_are_not_pooled() {
    let (addr, _seen) = engine(vec![
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
    ])
    .await;
    let client = client();
    assert_eq!(fetch(&client, addr).await, "ok");
    assert_eq!(client.idle(), 0);
}

#[tokio::test]
async fn a_body_that_ends_at_close_is_whole_and_a_cut_one_is_an_error() {
    let (addr, _seen) = engine(vec![
        b"HTTP/1.0 200 OK\r\nconnection: close\r\n\r\nuntil the end",
    ])
    .await;
    let client = client();
    assert_eq!(fetch(&client, addr).await, "until the end");
    for cut in [
        &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 10\r\n\r\nhalf"[..],
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n4\r\nhalf\r\n",
    ] {
        let (addr, _seen) = engine(vec![cut]).await;
        let response = client.request(post(addr, "{}")).await.unwrap();
        let mut body = response.into_body();
        assert_eq!(
            &body.frame().await.unwrap().unwrap().into_data().unwrap()[..],
            b"half"
        );
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(error, Error::Closed), "{error}");
        assert!(error.is_cut_body());
        assert!(body.frame().await.is_none());
    }
}

#[tokio::test]
async fn dropping_the_body_closes_the_connection_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_request(&mut io, &mut buf).await.unwrap();
        io.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await
            .unwrap();
        let mut rest = [0; 16];
        let n = io.read(&mut rest).await.unwrap_or(0);
        let _ = closed_tx.send(n);
    });
    let client = client();
    let mut body = client.request(post(addr, "{}")).await.unwrap().into_body();
    assert!(body.frame().await.unwrap().is_ok());
    drop(body);
    let n = tokio::time::timeout(Duration::from_secs(2), closed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the engine reads the end of the connection");
    assert_eq!(client.idle(), 0);
}

#[tokio::test]
async fn broken_answers_are_typed_errors() {
    let client = client();
    let long_head: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(20_000))
            .into_bytes()
            .into_boxed_slice(),
    );
    for (answer, check) in [
        (&b"SSH-2.0-nope\r\n\r\n"[..], "malformed response head"),
        (long_head, "longer than"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            "content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "transfer-encoding",
        ),
    ] {
        let (addr, _seen) = engine(vec![answer]).await;
        let error = client.request(post(addr, "{}")).await.unwrap_err();
        assert!(error.to_string().contains(check), "{error}");
    }
    // A fresh connection closed before any answer is an error, not a loop.
    let (addr, _seen) = engine(vec![b"CLOSE"]).await;
    assert!(matches!(
        client.request(post(addr, "{}")).await.unwrap_err(),
        Error::Closed
    ));
    // Nobody listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let error = client.request(post(port, "{}")).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let (addr, _seen) = engine(vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;
    let response = client().request(post(addr, "{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(text(response).await.unwrap(), "ok");
}
