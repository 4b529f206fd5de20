//! Only equivalent targets over HTTP, from a config file, against the
//! wire-faithful vLLM and trtllm-serve simulators: one model served by a
//! vLLM backend started with a tool-call parser (`capabilities = ["tools",
//! "logprobs"]`) and a trtllm-serve backend without parsers
//! (`capabilities = []`), trtllm preferred for interactive traffic. A
//! plain request goes to trtllm-serve, a tools request only to vLLM, a
//! request for reasoning is a 400 naming what is missing, which no engine
//! sees, which reserves and charges nothing and is counted under its code.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::Path;

use gateway_adapters::bootstrap::{build_gateway, router_options};
use gateway_adapters::config::GatewayConfig;
use gateway_core::{Capabilities, Capability};
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
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
prefer = ["trtllm"]

[[backends]]
name = "vllm-0"
engine = "vllm"
url = "{vllm}"
model = "m"
capabilities = ["tools", "logprobs"]

[[backends]]
name = "trtllm-0"
engine = "trtllm"
url = "{trtllm}"
model = "m"
capabilities = []
context_window = 2048
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

fn chat(extra: &Value) -> Value {
    let mut body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "0123456789"}],
        "max_tokens": 4,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_only_to_backends_that_serve_what_they_ask_for() {
    let options = |engine| SimOptions {
        model: "m".to_owned(),
        natural_tokens: 4,
        engine,
        ..SimOptions::default()
    };
    let vllm = VllmSim::start(options(SimEngine::Vllm)).await;
    let trtllm = VllmSim::start(options(SimEngine::TrtLlm)).await;
    let text = config(&vllm.url(), &trtllm.url());
    let config = GatewayConfig::parse(&text, Path::new(".")).unwrap();
    assert_eq!(
        config.backends[0].capabilities,
        Some(Capabilities::from_iter([
            Capability::Tools,
            Capability::Logprobs
        ]))
    );
    let gateway = build_gateway(&config).unwrap();
    let slots = gateway.backends();
    assert_eq!(
        (
            slots[1].capabilities(),
            slots[1].context_window().map(|w| w.get())
        ),
        (Capabilities::NONE, Some(2048))
    );
    let server = Server::start(gateway, router_options(&config))
        .await
        .unwrap();
    let addr = server.addr;

    // Plain, interactive: the preferred trtllm-serve.
    let r = post(addr, &chat(&json!({}))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (vllm.generations().len(), trtllm.generations().len()),
        (0, 1)
    );

    // Tools: only vLLM has a tool-call parser, preferred or not.
    let tools = json!({
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "tool_choice": "auto",
    });
    for _ in 0..2 {
        let r = post(addr, &chat(&tools)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(
        (vllm.generations().len(), trtllm.generations().len()),
        (2, 1)
    );
    let sent: Value = serde_json::from_str(&vllm.generations()[1].body).unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    // The same tools with `tool_choice: "none"` ask for no parsing.
    let r = post(
        addr,
        &chat(&json!({"tools": tools["tools"], "tool_choice": "none"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (vllm.generations().len(), trtllm.generations().len()),
        (2, 2)
    );

    // More than trtllm-serve's own window (the prompt's bound plus 3000):
    // vLLM.
    let r = post(addr, &chat(&json!({"max_tokens": 3000}))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (vllm.generations().len(), trtllm.generations().len()),
        (3, 2)
    );

    // Reasoning: no backend runs a reasoning parser. 400, and no engine
    // sees it.
    let r = post(
        addr,
        &chat(&json!({"chat_template_kwargs": {"enable_thinking": true}})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"error":{"message":"model m has no backend that supports reasoning (asked for by `reasoning_effort` or a thinking switch in `chat_template_kwargs`)","type":"invalid_request_error","code":"unsupported_capability","param":null}}"#
    );
    // Tools and more than trtllm-serve's window: vLLM still serves it.
    let mut long_tools = tools.clone();
    long_tools["max_tokens"] = json!(3000);
    let r = post(addr, &chat(&long_tools)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (vllm.generations().len(), trtllm.generations().len()),
        (4, 2)
    );

    let u = server.settled_usage("admin-key", "team-a").await.unwrap();
    assert_eq!(u["requests"], 6, "{u}");
    let r = request(addr, "GET", "/metrics", &[], b"").await.unwrap();
    let m = String::from_utf8(r.body).unwrap();
    for line in [
        r#"gateway_requests_total{tenant="team-a",model="m",outcome="unsupported_capability"} 1"#,
        r#"gateway_requests_total{tenant="team-a",model="m",outcome="ok"} 6"#,
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }
}
