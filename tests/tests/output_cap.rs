//! The gateway's own `max_tokens` cap over real loopback HTTP: a runaway
//! vLLM simulator that ignores `max_tokens` and streams chunks of several
//! tokens' text with `"token_ids":[]`, counted by the real TinyLlama
//! tokenizer. Streaming and non-streaming clients get exactly `max_tokens`
//! tokens, `finish_reason: "length"` and that usage; the engine sees the
//! abort at once; the ledger charges exactly that.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::sync::Arc;
use std::time::Duration;

use gateway_adapters::engines::{UpstreamConfig, vllm};
use gateway_adapters::server::RouterOptions;
use gateway_core::*;
use gateway_policy::*;
use gateway_sims::vllm::{Fault, SimOptions, VllmSim};
use gateway_tests::{Server, open, request};
use serde_json::Value;
use tokio::time::Instant;

const KEY: &str = "sk-cap";

fn counter() -> Arc<HfTokenCounter> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/tokenizers/tinyllama.json"
    );
    Arc::new(HfTokenCounter::from_file(path, true).unwrap())
}

struct Rig {
    server: Server,
    sim: Arc<VllmSim>,
    tenant: TenantId,
    counter: Arc<HfTokenCounter>,
}

/// A gateway in front of a vLLM sim whose requests all run away: 1000
/// chunks of 3 tokens' text each, one every 5 ms.
async fn rig() -> Rig {
    let sim = VllmSim::start(SimOptions {
        model: "m".into(),
        token_interval: Duration::from_millis(5),
        script: vec![
            Fault::Runaway {
                chunks: 1000,
                tokens_per_chunk: 3,
            };
            4
        ],
        ..SimOptions::default()
    })
    .await;
    let backend = vllm::backend(UpstreamConfig::new("vllm-0", sim.url(), "m")).unwrap();
    let counter = counter();
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("team-a"), key_hash(KEY))
        .model(ModelSpec {
            name: "m".into(),
            pricing: Pricing {
                input: Money::from_picos(10),
                cached_input: Money::from_picos(1),
                output: Money::from_picos(100),
            },
            context_window: 4096,
            default_max_tokens: 16,
            media: MediaCosts::default(),
            counter: counter.clone(),
        })
        .backend(Arc::new(backend), "m", "m", None)
        .build()
        .unwrap();
    let options = RouterOptions {
        max_body_bytes: 1 << 20,
        ..RouterOptions::default()
    };
    Rig {
        server: Server::start(gateway, options).await.unwrap(),
        sim,
        tenant: TenantId::from("team-a"),
        counter,
    }
}

impl Rig {
    /// Waits (bounded) until the engine saw `n` aborts in decode; the time
    /// it took from `from`.
    async fn aborted(&self, n: u64, from: Instant) -> Duration {
        let until = Instant::now() + Duration::from_secs(5);
        while self.sim.abort_counts().decode < n {
            assert!(Instant::now() < until, "{:?}", self.sim.abort_counts());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        from.elapsed()
    }

    /// Waits (bounded) until nothing is reserved or in flight.
    async fn settled(&self) -> TenantAccount {
        let gateway = &self.server.gateway;
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let a = gateway.account(&self.tenant).unwrap();
            if a.reserved == Money::ZERO && gateway.active() == 0 {
                return a;
            }
            assert!(Instant::now() < until, "never settled: {a:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The tokens of `piece` as a continuation of earlier output (after a
    /// newline, less the newline's own), as the gateway counts a chunk.
    fn tokens(&self, piece: &str) -> u64 {
        let lead = self.counter.count_text("\n");
        let n = self.counter.count_text(&format!("\n{piece}"));
        assert!(n.is_exact() && lead.is_exact());
        n.value() - lead.value()
    }
}

fn body(stream: bool, max_tokens: u32) -> Vec<u8> {
    let options = if stream {
        r#","stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"Run."}}],"max_tokens":{max_tokens},"stream":{stream}{options}}}"#
    )
    .into_bytes()
}

fn headers() -> [(&'static str, &'static str); 2] {
    [
        ("authorization", "Bearer sk-cap"),
        ("content-type", "application/json"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_client_gets_exactly_max_tokens_from_a_runaway_engine() {
    let rig = rig().await;
    let mut s = open(
        rig.server.addr,
        "POST",
        "/v1/chat/completions",
        &headers(),
        &body(true, 5),
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    let (mut text, mut counted, mut finish, mut usage) = (String::new(), 0, None, None);
    while let Some(data) = s.next_event().await.unwrap() {
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if let Some(piece) = choice["delta"]["content"].as_str() {
            // Each chunk is counted on its own, as the gateway counts it.
            counted += rig.tokens(piece);
            text.push_str(piece);
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            finish = Some(r.to_owned());
        }
    }
    let ended = Instant::now();
    assert_eq!(finish.as_deref(), Some("length"));
    // "Hello wor" (2 tokens by TinyLlama), then "ld, é" (3 as the
    // continuation it is: `ld`, `,`, `▁é`): exactly the cap of 5, and the
    // engine's next chunk is cut to nothing.
    assert_eq!(text, "Hello world, é");
    assert_eq!(counted, 5, "{text:?}");
    let usage = usage.unwrap();
    assert_eq!(usage["completion_tokens"], 5);
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let latency = rig.aborted(1, ended).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let a = rig.settled().await;
    assert_eq!((a.usage.prompt(), a.usage.completion()), (prompt, 5));
    assert_eq!(a.usage.canceled(), 0);
    assert_eq!(a.spent, Money::from_picos(prompt * 10 + 5 * 100));
    // The engine sent far fewer chunks than it would have.
    assert!(rig.sim.tokens_sent() < 100, "{}", rig.sim.tokens_sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_client_gets_exactly_max_tokens_from_a_runaway_engine() {
    let rig = rig().await;
    let started = Instant::now();
    let r = request(
        rig.server.addr,
        "POST",
        "/v1/chat/completions",
        &headers(),
        &body(false, 5),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, "Hello world, é");
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    rig.aborted(1, started).await;
    let a = rig.settled().await;
    assert_eq!((a.usage.prompt(), a.usage.completion()), (prompt, 5));
    assert_eq!(a.spent, Money::from_picos(prompt * 10 + 5 * 100));
}
