//! The pass-through policy over HTTP, against wire-faithful engine
//! simulators that record what they receive: a vLLM model forwards
//! OpenAI's fields and vLLM's extras and refuses anything else with a 400
//! naming the field (the server's `unknown_fields = "reject"`); a
//! trtllm-serve model set to `drop` loses the fields trtllm-serve does not
//! take and is served; prompt fields and oversized extras never reach an
//! engine; the ledger charges only what was served.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::Path;

use gateway_adapters::bootstrap::{build_gateway, router_options};
use gateway_adapters::config::GatewayConfig;
use gateway_sims::vllm::{SimEngine, SimOptions, VllmSim};
use gateway_tests::{Server, request};
use serde_json::{Value, json};

fn config(vllm: &str, trtllm: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_key = "admin-key"

[[tenants]]
id = "team-a"
api_key = "sk-a"

[[models]]
name = "v"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[models]]
name = "t"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
unknown_fields = "drop"

[[backends]]
name = "vllm-0"
engine = "vllm"
url = "{vllm}"
model = "v"

[[backends]]
name = "trtllm-0"
engine = "trtllm"
url = "{trtllm}"
model = "t"
"#
    )
}

async fn post(addr: std::net::SocketAddr, body: &Value) -> gateway_tests::Response {
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        body.to_string().as_bytes(),
    )
    .await
    .unwrap()
}

fn chat(model: &str, extra: &Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "0123456789"}],
        "max_tokens": 4,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_fields_are_forwarded_refused_or_dropped_per_engine() {
    let vllm = VllmSim::start(SimOptions {
        model: "v".to_owned(),
        natural_tokens: 4,
        ..SimOptions::default()
    })
    .await;
    let trtllm = VllmSim::start(SimOptions {
        model: "t".to_owned(),
        natural_tokens: 4,
        engine: SimEngine::TrtLlm,
        ..SimOptions::default()
    })
    .await;
    let text = config(&vllm.url(), &trtllm.url());
    let config = GatewayConfig::parse(&text, Path::new(".")).unwrap();
    let gateway = build_gateway(&config).unwrap();
    let server = Server::start(gateway, router_options(&config))
        .await
        .unwrap();
    let addr = server.addr;

    // vLLM: OpenAI's fields and vLLM's extras reach the engine as written.
    let r = post(
        addr,
        &chat(
            "v",
            &json!({"top_k": 5, "user": "u-1", "ignore_eos": true, "parallel_tool_calls": false}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let served = r.json()["usage"].clone();
    let sent: Value = serde_json::from_str(&vllm.generations()[0].body).unwrap();
    assert_eq!(
        (
            &sent["top_k"],
            &sent["user"],
            &sent["ignore_eos"],
            &sent["parallel_tool_calls"]
        ),
        (&json!(5), &json!("u-1"), &json!(true), &json!(false))
    );

    // A field vLLM does not document: 400 naming it, nothing sent.
    let r = post(addr, &chat("v", &json!({"top_k": 5, "x_knob": {"a": 1}}))).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"error":{"message":"unknown field 'x_knob': the engines serving model v do not take it","type":"invalid_request_error","code":"invalid_request","param":"x_knob"}}"#
    );
    // A field that changes the prompt: refused on every engine, even in
    // drop mode.
    for model in ["v", "t"] {
        let r = post(
            addr,
            &chat(model, &json!({"chat_template": "{{ 'x' * 9999 }}"})),
        )
        .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"]["param"], "chat_template");
    }
    // Extra fields past 64 KiB, or nested past 32 levels.
    let r = post(addr, &chat("v", &json!({"user": "u".repeat(70_000)}))).await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].clone()),
        (400, json!("user"))
    );
    let mut deep = json!(1);
    for _ in 0..33 {
        deep = json!([deep]);
    }
    let r = post(addr, &chat("v", &json!({"vllm_xargs": deep}))).await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].clone()),
        (400, json!("vllm_xargs"))
    );
    assert_eq!(vllm.generations().len(), 1);

    // trtllm, drop mode: what trtllm-serve takes is sent, the rest dropped
    // (it would answer 400 to them), and the request is served.
    let r = post(
        addr,
        &chat(
            "t",
            &json!({"x_knob": 1, "top_k": 3, "parallel_tool_calls": false, "min_p": 0.5}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let generations = trtllm.generations();
    assert_eq!(generations.len(), 1);
    let sent: Value = serde_json::from_str(&generations[0].body).unwrap();
    assert_eq!((&sent["top_k"], &sent["min_p"]), (&json!(3), &json!(0.5)));
    assert!(sent.get("x_knob").is_none(), "{sent}");
    assert!(sent.get("parallel_tool_calls").is_none(), "{sent}");

    // The ledger: two requests served, each charged its prompt at $1 and
    // its completion at $2 per million tokens; the refused ones nothing.
    let t_usage = r.json()["usage"].clone();
    let charge = |u: &Value| {
        u["prompt_tokens"].as_u64().unwrap() * 1_000_000
            + u["completion_tokens"].as_u64().unwrap() * 2_000_000
    };
    let u = server.settled_usage("admin-key", "team-a").await.unwrap();
    assert_eq!(
        (u["requests"].as_u64(), u["spent_picousd"].as_u64()),
        (Some(2), Some(charge(&served) + charge(&t_usage)))
    );
    server.stop().await;
}
