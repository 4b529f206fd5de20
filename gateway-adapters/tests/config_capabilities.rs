//! `[[backends]] capabilities` and `context_window`, `[[models]] prefer`:
//! parsed, checked with key paths, and given to the gateway.
#![expect(clippy::panic, reason = "test helpers outside #[test] functions")]

use std::path::Path;

use gateway_adapters::bootstrap::build_gateway;
use gateway_adapters::config::{ConfigErrors, GatewayConfig};
use gateway_core::{Capabilities, Capability, EngineKind};

fn parse(text: &str) -> Result<GatewayConfig, ConfigErrors> {
    GatewayConfig::parse(text, Path::new("/nonexistent-gateway-config-test"))
}

fn problems(text: &str) -> Vec<(String, String)> {
    match parse(text) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(errors) => errors
            .problems
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect(),
    }
}

fn config(model_extra: &str, first: &str, second: &str) -> String {
    format!(
        r#"
[[tenants]]
id = "t"
api_key = "sk-t"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
{model_extra}

[[backends]]
name = "sim-0"
engine = "sim"
model = "m"
{first}

[[backends]]
name = "sim-1"
engine = "sim"
model = "m"
{second}
"#
    )
}

#[test]
fn capabilities_context_windows_and_preferences_reach_the_gateway() {
    let text = config(
        r#"prefer = ["trtllm", "nim"]"#,
        "capabilities = [\"tools\", \"image_input\"]\ncontext_window = 1024",
        "",
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.models[0].prefer,
        vec![EngineKind::TrtLlm, EngineKind::Nim]
    );
    let (first, second) = (&config.backends[0], &config.backends[1]);
    assert_eq!(
        first.capabilities,
        Some(Capabilities::from_iter([
            Capability::Tools,
            Capability::ImageInput
        ]))
    );
    assert_eq!(first.context_window.map(|w| w.get()), Some(1024));
    assert_eq!((second.capabilities, second.context_window), (None, None));
    let gateway = build_gateway(&config).unwrap();
    let slots = gateway.backends();
    assert_eq!(
        slots[0].capabilities(),
        Capabilities::from_iter([Capability::Tools, Capability::ImageInput])
    );
    assert_eq!(slots[0].context_window().map(|w| w.get()), Some(1024));
    // Absent: the engine's default (sim: everything), the model's window.
    assert_eq!(
        (slots[1].capabilities(), slots[1].context_window()),
        (Capabilities::ALL, None)
    );
    // An empty list: plain text only.
    let config = parse(&config_text_with_empty()).unwrap();
    assert_eq!(config.backends[0].capabilities, Some(Capabilities::NONE));
    let gateway = build_gateway(&config).unwrap();
    assert_eq!(gateway.backends()[0].capabilities(), Capabilities::NONE);
}

fn config_text_with_empty() -> String {
    config("", "capabilities = []", "")
}

#[test]
fn bad_values_are_reported_at_their_key_path() {
    let text = config(
        r#"prefer = ["trtllm", "tensorrt", "trtllm", 3]"#,
        "capabilities = [\"tools\", \"vision\", \"tools\"]\ncontext_window = 0",
        "capabilities = \"tools\"\ncontext_window = \"big\"",
    );
    assert_eq!(
        problems(&text),
        vec![
            (
                "models[0].prefer[3]".to_owned(),
                "expected a string, found an integer".to_owned()
            ),
            (
                "backends[0].capabilities[1]".to_owned(),
                "unknown capability \"vision\" (expected one of tools, reasoning, structured_output, image_input, logprobs)".to_owned()
            ),
            (
                "backends[0].capabilities[2]".to_owned(),
                "duplicate capability \"tools\"".to_owned()
            ),
            (
                "backends[0].context_window".to_owned(),
                "must be at least 1, found 0".to_owned()
            ),
            (
                "backends[1].capabilities".to_owned(),
                "expected an array, found a string".to_owned()
            ),
            (
                "backends[1].context_window".to_owned(),
                "expected an integer, found a string".to_owned()
            ),
        ]
    );
    let text = config(r#"prefer = ["trtllm", "tensorrt", "trtllm"]"#, "", "");
    assert_eq!(
        problems(&text),
        vec![
            (
                "models[0].prefer[1]".to_owned(),
                "unknown engine \"tensorrt\" (expected one of sim, vllm, sglang, trtllm, triton, nim, dynamo, openai)".to_owned()
            ),
            (
                "models[0].prefer[2]".to_owned(),
                "duplicate engine \"trtllm\"".to_owned()
            ),
        ]
    );
}
