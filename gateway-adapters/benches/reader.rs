//! The engine stream reader over loopback HTTP, against reading the same
//! response's bytes raw, measured in the same run (ratios, since the
//! machine is shared):
//!
//! - the engine: a loopback server in this bench that answers every POST
//!   with the same pre-rendered vLLM stream (the role chunk, 256 text
//!   chunks, the finish and usage chunks, `[DONE]`) in one write, so the
//!   engine side costs next to nothing;
//! - baseline: a POST with a pooled hyper client, reading the body to its
//!   end without decoding it;
//! - candidate: the vLLM adapter's `start` and a drain of its token stream:
//!   SSE decoding, each chunk read into a typed `Delta`, cap and phase
//!   accounting, the bounded hand-over to the consumer.
//!
//! The difference per chunk is what the reader costs a text stream.
#![expect(
    clippy::print_stdout,
    reason = "the bench prints each candidate/baseline ratio for the log"
)]
#![expect(clippy::unwrap_used, reason = "a bench: a failure should stop it")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gateway_adapters::engines::{UpstreamConfig, vllm};
use gateway_core::testkit::bench::compare;
use gateway_core::{
    Backend, BackendRequest, ByteBound, CancelHandle, ChatMessage, GenerateRequest, Prompt,
    TokenEvent,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKENS: u32 = 256;
const WORDS: [&str; 8] = [
    " The", " quick", " brown", " fox", " jumps", " over", " the", " café",
];

/// The HTTP response: vLLM's stream of `TOKENS` text chunks.
fn response() -> Vec<u8> {
    let head =
        r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","#;
    let mut body = format!(
        "{head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}],\"prompt_token_ids\":null}}\n\n"
    );
    for i in 0..TOKENS as usize {
        body.push_str(&format!(
            "{head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n",
            WORDS[i % WORDS.len()]
        ));
    }
    body.push_str(&format!(
        "{head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"length\",\"stop_reason\":null}}]}}\n\n"
    ));
    body.push_str(&format!(
        "{head}\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"total_tokens\":{},\"completion_tokens\":{TOKENS}}}}}\n\ndata: [DONE]\n\n",
        9 + TOKENS
    ));
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Serves `response` to every request on keep-alive connections: reads a
/// request's head and its `content-length` body, answers in one write.
async fn serve(listener: TcpListener, response: Arc<Vec<u8>>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let _ = socket.set_nodelay(true);
        let response = response.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            loop {
                let head_end = loop {
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..head_end + length);
                if socket.write_all(&response).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(serve(listener, Arc::new(response())));
    let backend =
        rt.block_on(async { vllm::backend(UpstreamConfig::new("b", &url, "m")).unwrap() });
    let counter = Arc::new(ByteBound::default());
    let request = GenerateRequest::new("m", Prompt::Chat(vec![ChatMessage::user("Hi")]), TOKENS);
    let body = Bytes::from(format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"Hi"}}],"max_tokens":{TOKENS},"stream":true,"stream_options":{{"include_usage":true}}}}"#
    ));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("{url}/v1/chat/completions").parse().unwrap();

    let raw = || {
        rt.block_on(async {
            let req = hyper::Request::post(uri.clone())
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .unwrap();
            let response = client.request(req).await.unwrap();
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .len()
        })
    };
    let adapter = || {
        rt.block_on(async {
            let request = BackendRequest::new(request.clone(), counter.clone());
            let mut stream = backend.start(request, CancelHandle::new()).await.unwrap();
            let mut tokens = 0u64;
            while let Some(item) = stream.next().await {
                if let Ok(TokenEvent::Delta(d)) = item {
                    tokens += u64::from(d.tokens);
                }
            }
            assert_eq!(tokens, u64::from(TOKENS));
            tokens
        })
    };
    let c = compare(
        "vLLM adapter stream vs raw body read, 256 chunks",
        21,
        200,
        raw,
        adapter,
    );
    println!("{c}");
    let per_chunk = |d: Duration| d.as_secs_f64() * 1e9 / f64::from(TOKENS);
    println!(
        "{:<44} baseline {:>10.1} ns/chunk  candidate {:>10.1} ns/chunk  reader {:>8.1} ns/chunk",
        "reader per chunk",
        per_chunk(c.baseline),
        per_chunk(c.candidate),
        per_chunk(c.candidate.saturating_sub(c.baseline)),
    );
}
