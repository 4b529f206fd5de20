//! The config parser on arbitrary text: never panics; a config it accepts
//! has its models and backends consistent (every backend serves a model
//! the config defines).
#![no_main]

use std::path::Path;

use gateway_adapters::config::GatewayConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths join onto a directory that does not exist.
    let Ok(config) = GatewayConfig::parse(text, Path::new("/nonexistent/gateway-fuzz")) else {
        return;
    };
    for backend in &config.backends {
        assert!(
            config.model(&backend.model).is_some(),
            "backend {} serves an undefined model {}",
            backend.name,
            backend.model
        );
    }
});
