//! Embedding the gateway in a host's own service without traps (issue 12):
//! a config whose backend does not serve its model fails at start-up with
//! the key it is about; the host reads exact usage once the request it
//! served has settled.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::Path;
use std::sync::Arc;

use gateway_adapters::bootstrap::{BootstrapError, build_gateway_with};
use gateway_adapters::config::GatewayConfig;
use gateway_adapters::server::RouterOptions;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::{Backend, Money, Pricing, RequestId, Usage};
use gateway_policy::{Gateway, ModelSpec, Settings, Tenant};
use gateway_tests::{Server, request};
use serde_json::Value;

const CONFIG: &str = r#"
[[tenants]]
id = "team-a"
api_key = "sk-a"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[models]]
name = "n"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "m-0"
engine = "sim"
model = "m"

[[backends]]
name = "n-0"
engine = "sim"
model = "n"
"#;

#[test]
fn a_host_backend_that_does_not_serve_its_model_fails_at_start_up_naming_the_key() {
    let config = GatewayConfig::parse(CONFIG, Path::new(".")).unwrap();
    // The host's own backend for `n-0`: the default sim, which serves `sim`.
    let err = build_gateway_with(&config, |b| {
        (b.name == "n-0")
            .then(|| Arc::new(SimBackend::new(SimConfig::default())) as Arc<dyn Backend>)
    })
    .unwrap_err();
    assert_eq!(
        err,
        BootstrapError {
            path: "backends[1].model".into(),
            message: "invalid gateway: backend sim-0 is registered for model n (served as n), \
                      but it serves only [sim]"
                .into(),
        }
    );
    // The config's own backends serve their models.
    assert!(build_gateway_with(&config, |_| None).is_ok());
}

/// A gateway with tenant `team-a` (key `sk-a`) and model `m` (10 and 100
/// picodollars per prompt and completion token) on a zero-delay sim that
/// always writes 5 tokens.
fn gateway() -> Gateway {
    let sim = SimBackend::new(SimConfig {
        name: "m-0".into(),
        models: vec!["m".into()],
        natural_length: 5..=5,
        ..SimConfig::zero_delay()
    });
    let pricing = Pricing {
        input: Money::from_picos(10),
        cached_input: Money::from_picos(1),
        output: Money::from_picos(100),
    };
    Gateway::builder(Settings::default())
        .tenant_with_api_key(Tenant::new("team-a"), "sk-a")
        .model(ModelSpec::new("m", 4096).with_pricing(pricing))
        .backend(Arc::new(sim), "m", "m", None)
        .build()
        .unwrap()
}

const CHAT: &[u8] =
    br#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"Say hi"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reads_exact_usage_once_the_request_it_served_has_settled() {
    let options = RouterOptions {
        max_body_bytes: 1 << 16,
        ..RouterOptions::default()
    };
    let server = Server::start(gateway(), options).await.unwrap();
    let r = request(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-a")],
        CHAT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let body: Value = r.json();
    // The response names the gateway's id of the request.
    let id = body["id"]
        .as_str()
        .unwrap()
        .strip_prefix("chatcmpl-")
        .unwrap();
    let id = RequestId::new(id);
    assert!(id.is_generated(), "{id}");
    let usage = &body["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!((prompt, completion), (40, 5));
    server.gateway.settled(&id).await;
    let tenant = server.gateway.tenant("team-a").unwrap();
    let account = server.gateway.account(&tenant.id).unwrap();
    assert_eq!(account.requests, 1);
    assert_eq!(account.usage, Usage::new(40, 5));
    // 40 prompt tokens * 10 + 5 completion tokens * 100.
    assert_eq!(
        (account.spent, account.reserved),
        (Money::from_picos(900), Money::ZERO)
    );
    // Nothing else is in flight either.
    assert!(
        server
            .gateway
            .wait_idle(std::time::Duration::from_secs(5))
            .await
    );
    server.stop().await;
}
