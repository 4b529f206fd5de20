//! Embedding the gateway in a host's own service without traps (issue 12):
//! a config whose backend does not serve its model fails at start-up with
//! the key it is about.

use std::path::Path;
use std::sync::Arc;

use gateway_adapters::bootstrap::{BootstrapError, build_gateway_with};
use gateway_adapters::config::GatewayConfig;
use gateway_adapters::sim::{SimBackend, SimConfig};
use gateway_core::Backend;

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
