//! The gateway's TOML config: exact problem lists, defaults, paths, the
//! embedded default and the example file.

// Everything sits in a `cfg(test)` module so clippy treats the helpers
// as test code too.
#[cfg(test)]
mod config {
    use std::net::SocketAddr;
    use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use gateway_adapters::config::{
        BackendConfig, ConfigErrors, ConfigProblem, DEMO_ADMIN_KEY, DEMO_API_KEY,
        EMBEDDED_DEFAULT_TOML, GatewayConfig, LedgerConfig, RedisLedgerSettings, SimSettings,
        TenantKey,
    };
    use gateway_adapters::engines::OnDisconnect;
    use gateway_adapters::sim::{SimConfig, Speculative};
    use gateway_core::{EngineKind, LatencyClass, Money, Pricing};
    use sha2::{Digest, Sha256};

    /// A base directory that does not exist, so file checks fail the same
    /// way everywhere.
    const NOWHERE: &str = "/nonexistent-gateway-config-test";

    /// The smallest valid config, followed by `extra`.
    const MINIMAL: &str = r#"
[[tenants]]
id = "t"
api_key = "sk-t"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "b"
engine = "sim"
model = "m"
"#;

    fn parse(text: &str) -> Result<GatewayConfig, ConfigErrors> {
        GatewayConfig::parse(text, Path::new(NOWHERE))
    }

    /// The problems of `text` as `(path, message)` pairs.
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

    /// Pairs of string slices as owned pairs, for comparing.
    fn owned(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
            .collect()
    }

    fn assert_problems(text: &str, expected: &[(&str, &str)]) {
        let got = problems(text);
        let expected = owned(expected);
        if got != expected {
            let show = |v: &[(String, String)]| {
                v.iter()
                    .map(|(p, m)| format!("  ({p:?}, {m:?}),"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "problems differ\n--- got:\n{}\n--- expected:\n{}",
                show(&got),
                show(&expected)
            );
        }
    }

    fn nz32(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// A fresh, empty temporary directory for one test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gateway-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
colour = "blue"

[server]
listen = "localhost:80"
max_body_bytes = 0
idle_timeout_ms = "30s"
lisen = "127.0.0.1:8080"

[ledger]
kind = "redis"

[[tenants]]
id = "team a"
api_key = "sk-1"
budget_usd = -1.0
weight = 0
priority = "urgent"
models = ["sim-small", "nope"]

[[tenants]]
id = "team-b"
api_key_sha256 = "xyz"
extra = 1

[[tenants]]
id = "team-b"
api_key = "sk-1"
requests_per_minute = 1.5

[[tenants]]
id = "team-d"

[[models]]
name = "sim-small"
tokenizer = "tok.json"
context_window = 1024
input_usd_per_mtok = 0.5
output_usd_per_mtok = "1.5"
default_max_tokens = 2048
fallbacks = ["sim-small", "ghost"]

[[models]]
name = "orphan"
context_window = 0
input_usd_per_mtok = 0.5
output_usd_per_mtok = 1.5

[[models]]
name = "sim-small"
context_window = 1024
input_usd_per_mtok = 0.5
output_usd_per_mtok = 1.5

[[backends]]
name = "sim-0"
engine = "sim"
url = "http://127.0.0.1:8000"
model = "sim-small"

[backends.sim]
slots = 0
speculative = { draft_tokens = 4, acceptance_rate = 1.5 }
colour = 1

[[backends]]
name = "vllm-0"
engine = "vllm"
url = "ftp://example.com"
model = "missing"
on_disconnect = "linger"
api_key_env = "lower_case"

[[backends]]
name = "sim-0"
engine = "tgi"
model = "sim-small"
"#;
        let not_found = format!("file not found: {NOWHERE}/tok.json");
        assert_problems(
            text,
            &[
                ("colour", "unknown key"),
                ("server.lisen", "unknown key (did you mean `listen`?)"),
                (
                    "server.listen",
                    "invalid socket address \"localhost:80\" (expected IP:PORT, e.g. 127.0.0.1:8080)",
                ),
                ("server.max_body_bytes", "must be at least 1, found 0"),
                (
                    "server.idle_timeout_ms",
                    "expected an integer, found a string",
                ),
                ("ledger.url", "required with kind = \"redis\""),
                (
                    "tenants[0].id",
                    "must contain only A-Z, a-z, 0-9, '_', '.' and '-', found \"team a\"",
                ),
                ("tenants[0].budget_usd", "must be at least 0, found -1"),
                ("tenants[0].weight", "must be at least 1, found 0"),
                (
                    "tenants[0].priority",
                    "unknown value \"urgent\" (expected \"interactive\" or \"batch\")",
                ),
                ("tenants[0].models[1]", "unknown model \"nope\""),
                ("tenants[1].extra", "unknown key"),
                (
                    "tenants[1].api_key_sha256",
                    "must be 64 hexadecimal digits (the SHA-256 of the key)",
                ),
                (
                    "tenants[2].id",
                    "duplicate tenant id \"team-b\" (first at tenants[1])",
                ),
                ("tenants[2].api_key", "same key as tenants[0]"),
                (
                    "tenants[2].requests_per_minute",
                    "expected an integer, found a float",
                ),
                ("tenants[3]", "one of api_key or api_key_sha256 is required"),
                ("models[0].tokenizer", &not_found),
                (
                    "models[0].output_usd_per_mtok",
                    "expected a number, found a string",
                ),
                (
                    "models[0].default_max_tokens",
                    "must be at most context_window (1024), found 2048",
                ),
                (
                    "models[0].fallbacks[0]",
                    "a model cannot fall back to itself",
                ),
                ("models[0].fallbacks[1]", "unknown model \"ghost\""),
                ("models[1].context_window", "must be at least 1, found 0"),
                ("models[1]", "no backend serves this model"),
                (
                    "models[2].name",
                    "duplicate model name \"sim-small\" (first at models[0])",
                ),
                ("backends[0].url", "not allowed for engine \"sim\""),
                ("backends[0].sim.colour", "unknown key"),
                ("backends[0].sim.slots", "must be at least 1, found 0"),
                (
                    "backends[0].sim.speculative.acceptance_rate",
                    "must be at most 1, found 1.5",
                ),
                (
                    "backends[1].url",
                    "must be an http:// or https:// URL with a host",
                ),
                ("backends[1].model", "unknown model \"missing\""),
                (
                    "backends[1].on_disconnect",
                    "unknown value \"linger\" (expected \"abort\" or \"drain\")",
                ),
                (
                    "backends[1].api_key_env",
                    "must be an environment variable name matching [A-Z_][A-Z0-9_]*, found \"lower_case\"",
                ),
                (
                    "backends[2].name",
                    "duplicate backend name \"sim-0\" (first at backends[0])",
                ),
                (
                    "backends[2].engine",
                    "unknown engine \"tgi\" (expected one of sim, vllm, sglang, trtllm, triton, nim, dynamo, openai)",
                ),
            ],
        );
    }

    #[test]
    fn missing_sections_and_required_keys() {
        assert_problems(
            "",
            &[
                ("tenants", "at least one [[tenants]] entry is required"),
                ("models", "at least one [[models]] entry is required"),
                ("backends", "at least one [[backends]] entry is required"),
            ],
        );
        assert_problems(
            "tenants = []\n[[models]]\n[[backends]]\n",
            &[
                ("tenants", "at least one [[tenants]] entry is required"),
                ("models[0].name", "missing required key"),
                ("models[0].context_window", "missing required key"),
                ("models[0].input_usd_per_mtok", "missing required key"),
                ("models[0].output_usd_per_mtok", "missing required key"),
                ("backends[0].name", "missing required key"),
                ("backends[0].engine", "missing required key"),
                ("backends[0].model", "missing required key"),
            ],
        );
        assert_problems(
            "[[tenants]]\napi_key = \"\"\n",
            &[
                ("tenants[0].id", "missing required key"),
                ("tenants[0].api_key", "must not be empty"),
                ("models", "at least one [[models]] entry is required"),
                ("backends", "at least one [[backends]] entry is required"),
            ],
        );
    }

    #[test]
    fn sections_of_the_wrong_shape() {
        assert_problems(
            r#"
server = 1
ledger = "memory"
[tenants]
id = "t"
[[backends]]
name = "b"
engine = "vllm"
model = "m"
sim = { slots = 2 }
models = [1, { name = "m" }]
"#,
            &[
                ("server", "expected a table, found an integer"),
                ("ledger", "expected a table, found a string"),
                (
                    "tenants",
                    "expected an array of tables ([[tenants]]), found a table",
                ),
                ("models", "at least one [[models]] entry is required"),
                ("backends[0].models", "unknown key (did you mean `model`?)"),
                ("backends[0].url", "required for engine \"vllm\""),
                ("backends[0].model", "unknown model \"m\""),
                ("backends[0].sim", "only allowed with engine = \"sim\""),
            ],
        );
        // Not tables inside an array of tables, and an unknown key that is
        // not a bare key.
        assert_problems(
            &format!(
                "\"odd key\" = 1\n{MINIMAL}[[tenants]]\nid = \"u\"\napi_key = \"sk-u\"\nmodels = [\"m\", 3]\n"
            ),
            &[
                ("\"odd key\"", "unknown key"),
                (
                    "tenants[1].models[1]",
                    "expected a string, found an integer",
                ),
            ],
        );
        assert_problems(
            r#"
models = [1, { name = "m", context_window = 8, input_usd_per_mtok = 1, output_usd_per_mtok = 1 }]
backends = [{ name = "b", engine = "sim", model = "m" }, "b2"]
"#,
            &[
                ("tenants", "at least one [[tenants]] entry is required"),
                ("models[0]", "expected a table, found an integer"),
                ("backends[1]", "expected a table, found a string"),
            ],
        );
    }

    #[test]
    fn keys_hashes_and_collisions() {
        let sha = "F77894FDFA58E447C57E077EAA9708E8E009C84DC6ABA2DB80461275E9B85BE7";
        let text = format!(
            "[server]\nadmin_key = \"sk-t\"\n{MINIMAL}\n\
             [[tenants]]\nid = \"u\"\napi_key = \"sk-u\"\napi_key_sha256 = \"{sha}\"\n\
             [[tenants]]\nid = \"v\"\napi_key_sha256 = \"{sha}\"\n\
             [[tenants]]\nid = \"w\"\napi_key = \"sk-demo\"\n\
             [[tenants]]\nid = \"x\"\napi_key = \"sk x\"\n\
             [[tenants]]\nid = \"y\"\napi_key_sha256 = \"{}\"\n",
            "g".repeat(64)
        );
        assert_problems(
            &text,
            &[
                ("tenants[0].api_key", "same key as server.admin_key"),
                (
                    "tenants[1]",
                    "api_key and api_key_sha256 are mutually exclusive; set one",
                ),
                // The upper-case digest is the digest of "sk-demo".
                ("tenants[3].api_key", "same key as tenants[2]"),
                (
                    "tenants[4].api_key",
                    "must be printable ASCII without spaces",
                ),
                (
                    "tenants[5].api_key_sha256",
                    "must be 64 hexadecimal digits (the SHA-256 of the key)",
                ),
            ],
        );

        // A digest in upper case is stored as the same key.
        let config =
            parse(&MINIMAL.replace("api_key = \"sk-t\"", &format!("api_key_sha256 = \"{sha}\"")))
                .unwrap();
        assert_eq!(config.tenants[0].key, TenantKey::from_plaintext("sk-demo"));
        assert_eq!(config.tenants[0].key.to_hex(), sha.to_ascii_lowercase());
        assert!(config.tenants[0].key.matches("sk-demo"));
    }

    #[test]
    fn exposure_keys() {
        // Defaults: /metrics open, tenant labels on, x-priority only lowers.
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.server.metrics_key, None);
        assert!(config.server.metrics_tenant_labels);
        assert!(!config.tenants[0].allow_priority_raise);

        let sha = TenantKey::from_plaintext("mk-1").to_hex();
        let raise = MINIMAL.replace(
            "api_key = \"sk-t\"",
            "api_key = \"sk-t\"\nallow_priority_raise = true",
        );
        for key in [
            "metrics_key = \"mk-1\"".to_owned(),
            format!("metrics_key_sha256 = \"{sha}\""),
        ] {
            let text = format!("[server]\n{key}\nmetrics_tenant_labels = false\n{raise}");
            let config = parse(&text).unwrap();
            assert_eq!(
                config.server.metrics_key,
                Some(TenantKey::from_plaintext("mk-1"))
            );
            assert!(config.server.metrics_key.unwrap().matches("mk-1"));
            assert!(!config.server.metrics_tenant_labels);
            assert!(config.tenants[0].allow_priority_raise);
        }

        let text = format!(
            "[server]\nmetrics_key = \"mk-1\"\nmetrics_key_sha256 = \"{sha}\"\n\
             metrics_tenant_labels = \"no\"\n{}",
            MINIMAL.replace(
                "api_key = \"sk-t\"",
                "api_key = \"sk-t\"\nallow_priority_raise = 1"
            )
        );
        assert_problems(
            &text,
            &[
                (
                    "server",
                    "metrics_key and metrics_key_sha256 are mutually exclusive; set one",
                ),
                (
                    "server.metrics_tenant_labels",
                    "expected a boolean, found a string",
                ),
                (
                    "tenants[0].allow_priority_raise",
                    "expected a boolean, found an integer",
                ),
            ],
        );
        assert_problems(
            &format!("[server]\nmetrics_key = \"m k\"\n{MINIMAL}"),
            &[(
                "server.metrics_key",
                "must be printable ASCII without spaces",
            )],
        );
        assert_problems(
            &format!("[server]\nmetrics_key_sha256 = \"abc\"\n{MINIMAL}"),
            &[(
                "server.metrics_key_sha256",
                "must be 64 hexadecimal digits (the SHA-256 of the key)",
            )],
        );
    }

    #[test]
    fn ledger_variants() {
        let with = |ledger: &str| format!("[ledger]\n{ledger}\n{MINIMAL}");
        assert_eq!(
            parse(&with(
                "kind = \"redis\"\nurl = \"rediss://user:pw@cache:6380/0\""
            ))
            .unwrap()
            .ledger,
            LedgerConfig::Redis {
                url: "rediss://user:pw@cache:6380/0".to_owned(),
                settings: RedisLedgerSettings::default(),
            }
        );
        assert_eq!(
            parse(&with(
                "kind = \"redis\"\nurl = \"redis://cache\"\nhold_ttl_ms = 5000\n\
                 settled_ttl_ms = 60000\njournal_dir = \"/var/lib/gw\"\njournal_max_entries = 10"
            ))
            .unwrap()
            .ledger,
            LedgerConfig::Redis {
                url: "redis://cache".to_owned(),
                settings: RedisLedgerSettings {
                    hold_ttl_ms: 5000,
                    settled_ttl_ms: 60_000,
                    journal_dir: Some("/var/lib/gw".to_owned()),
                    journal_max_entries: 10,
                },
            }
        );
        assert_problems(
            &with("kind = \"memory\"\njournal_dir = \"/tmp/j\""),
            &[("ledger.journal_dir", "not allowed with kind = \"memory\"")],
        );
        assert_problems(
            &with(
                "kind = \"redis\"\nurl = \"redis://cache\"\nhold_ttl_ms = 10\njournal_max_entries = 0",
            ),
            &[
                ("ledger.hold_ttl_ms", "must be at least 1000, found 10"),
                ("ledger.journal_max_entries", "must be at least 1, found 0"),
            ],
        );
        assert_eq!(parse(&with("")).unwrap().ledger, LedgerConfig::Memory);
        assert_problems(
            &with("kind = \"memory\"\nurl = \"redis://cache\""),
            &[("ledger.url", "not allowed with kind = \"memory\"")],
        );
        assert_problems(
            &with("kind = \"redis\"\nurl = \"http://cache:6379\""),
            &[(
                "ledger.url",
                "must be a redis:// or rediss:// URL with a host",
            )],
        );
        assert_problems(
            &with("kind = \"sqlite\""),
            &[(
                "ledger.kind",
                "unknown ledger kind \"sqlite\" (expected \"memory\" or \"redis\")",
            )],
        );
    }

    #[test]
    fn numbers_out_of_range() {
        let text = format!(
            "{}\n[server]\nfirst_token_timeout_ms = 0\nshutdown_grace_ms = -1\n\
             stream_buffer_events = 0\nadmission_wait_ms = 0\n\
             [backends.sim]\nmin_natural_tokens = 64\nmax_natural_tokens = 32\nseed = -3\n\
             prefill_tokens_per_sec = -1.0\nspeculative = {{ draft_tokens = 0 }}\n",
            MINIMAL
                .replace(
                    "api_key = \"sk-t\"",
                    "api_key = \"sk-t\"\nbudget_usd = inf\ntokens_per_minute = 0\nmax_concurrency = 5000000000"
                )
                .replace("input_usd_per_mtok = 1.0", "input_usd_per_mtok = nan")
                .replace("output_usd_per_mtok = 2.0", "output_usd_per_mtok = 2e6\ncached_input_usd_per_mtok = -0.5")
        );
        assert_problems(
            &text,
            &[
                ("server.stream_buffer_events", "must be at least 1, found 0"),
                (
                    "server.first_token_timeout_ms",
                    "must be at least 1, found 0",
                ),
                ("server.shutdown_grace_ms", "must be at least 0, found -1"),
                (
                    "tenants[0].budget_usd",
                    "must be a finite number, found inf",
                ),
                (
                    "tenants[0].tokens_per_minute",
                    "must be at least 1, found 0",
                ),
                (
                    "tenants[0].max_concurrency",
                    "must be at most 4294967295, found 5000000000",
                ),
                (
                    "models[0].input_usd_per_mtok",
                    "must be a finite number, found NaN",
                ),
                (
                    "models[0].cached_input_usd_per_mtok",
                    "must be at least 0, found -0.5",
                ),
                (
                    "models[0].output_usd_per_mtok",
                    "must be at most 1000000, found 2000000",
                ),
                (
                    "backends[0].sim.prefill_tokens_per_sec",
                    "must be at least 0, found -1",
                ),
                ("backends[0].sim.seed", "must be at least 0, found -3"),
                (
                    "backends[0].sim.max_natural_tokens",
                    "must be at least min_natural_tokens (64), found 32",
                ),
                (
                    "backends[0].sim.speculative.draft_tokens",
                    "must be at least 1, found 0",
                ),
                (
                    "backends[0].sim.speculative.acceptance_rate",
                    "missing required key",
                ),
            ],
        );
    }

    #[test]
    fn other_engines_and_their_keys() {
        let text = r#"
[[tenants]]
id = "t"
api_key = "sk-t"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "nim-0"
engine = "nim"
url = "https://integrate.api.nvidia.com/"
model = "m"
served_model = "meta/llama-3.1-8b-instruct"
on_disconnect = "drain"
api_key_env = "NIM_API_KEY"
metrics_url = "http://10.0.0.5:8000/metrics"
max_concurrency = 8

[[backends]]
name = "sim-0"
engine = "sim"
model = "m"
api_key_env = "SIM_KEY"
metrics_url = "http://127.0.0.1:1/metrics"
"#;
        assert_problems(
            text,
            &[
                ("backends[1].api_key_env", "not allowed for engine \"sim\""),
                ("backends[1].metrics_url", "not allowed for engine \"sim\""),
            ],
        );
        let text = text
            .replace("api_key_env = \"SIM_KEY\"", "")
            .replace("metrics_url = \"http://127.0.0.1:1/metrics\"", "");
        let config = parse(&text).unwrap();
        let nim = &config.backends[0];
        assert_eq!(
            nim,
            &BackendConfig {
                name: "nim-0".to_owned(),
                engine: EngineKind::Nim,
                url: Some("https://integrate.api.nvidia.com".to_owned()),
                model: "m".to_owned(),
                served_model: "meta/llama-3.1-8b-instruct".to_owned(),
                max_concurrency: Some(nz32(8)),
                on_disconnect: OnDisconnect::drain(),
                api_key_env: Some("NIM_API_KEY".to_owned()),
                metrics_url: Some("http://10.0.0.5:8000/metrics".to_owned()),
                ca_file: None,
                capabilities: None,
                context_window: None,
                sim: None,
            }
        );
        assert_eq!(nim.sim_config(&config.models), None);
        assert_eq!(config.backends_for("m").count(), 2);
        assert_eq!(config.backends_for("other").count(), 0);

        // Every engine name parses; every one but sim needs a url.
        for engine in [
            "vllm", "sglang", "trtllm", "triton", "nim", "dynamo", "openai",
        ] {
            let text = MINIMAL.replace("engine = \"sim\"", &format!("engine = \"{engine}\""));
            assert_problems(
                &text,
                &[(
                    "backends[0].url",
                    &format!("required for engine \"{engine}\""),
                )],
            );
            let text = text.replace("model = \"m\"\n", "model = \"m\"\nurl = \"http://h:1\"\n");
            let config = parse(&text).unwrap();
            assert_eq!(config.backends[0].engine.as_str(), engine);
            assert_eq!(config.backends[0].url.as_deref(), Some("http://h:1"));
        }
        for bad in ["", "http://", "127.0.0.1:8000", "http://host name"] {
            let text = MINIMAL.replace(
                "engine = \"sim\"",
                &format!("engine = \"openai\"\nurl = \"{bad}\""),
            );
            assert_problems(
                &text,
                &[(
                    "backends[0].url",
                    "must be an http:// or https:// URL with a host",
                )],
            );
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let config = parse(MINIMAL).unwrap();
        let server = &config.server;
        assert_eq!(
            server.listen,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(server.admin_key, None);
        assert_eq!(server.max_body_bytes, NonZeroUsize::new(1 << 20).unwrap());
        assert_eq!(server.stream_buffer_events, NonZeroUsize::new(64).unwrap());
        assert_eq!(server.first_token_timeout, Duration::from_secs(30));
        assert_eq!(server.idle_timeout, Duration::from_secs(30));
        assert_eq!(server.client_stall_timeout, Duration::from_secs(30));
        assert_eq!(server.shutdown_grace, Duration::from_secs(10));
        assert_eq!(server.admission_wait, Duration::from_secs(5));
        assert_eq!(config.ledger, LedgerConfig::Memory);

        let tenant = &config.tenants[0];
        assert_eq!(tenant.id, "t");
        assert_eq!(tenant.key, TenantKey::from_plaintext("sk-t"));
        assert_eq!(tenant.budget, None);
        assert_eq!(tenant.requests_per_minute, None);
        assert_eq!(tenant.tokens_per_minute, None);
        assert_eq!(tenant.max_concurrency, None);
        assert_eq!(tenant.weight, nz32(1));
        assert_eq!(tenant.priority, LatencyClass::Interactive);
        assert_eq!(tenant.models, None);
        assert!(tenant.allows("m") && tenant.allows("anything"));

        let model = &config.models[0];
        assert_eq!(model.tokenizer, None);
        assert_eq!(model.chat_template, None);
        assert!(model.add_bos_token);
        assert_eq!(model.context_window, nz32(4096));
        assert_eq!(model.pricing, Pricing::per_million(1.0, None, 2.0).unwrap());
        assert_eq!(model.pricing.cached_input, model.pricing.input);
        assert_eq!(model.default_max_tokens, nz32(256));
        assert!(model.fallbacks.is_empty());

        let backend = &config.backends[0];
        assert_eq!(backend.engine, EngineKind::Sim);
        assert_eq!(backend.url, None);
        assert_eq!(backend.served_model, "m");
        assert_eq!(backend.max_concurrency, None);
        assert_eq!(backend.on_disconnect, OnDisconnect::Abort);
        assert_eq!(backend.api_key_env, None);
        assert_eq!(backend.metrics_url, None);
        // The sim knobs default to SimConfig::default's.
        let sim = backend.sim.clone().unwrap();
        assert_eq!(
            sim,
            SimSettings {
                slots: nz32(8),
                queue_capacity: 64,
                kv_capacity_tokens: NonZeroU64::new(131_072).unwrap(),
                prefill_tokens_per_sec: Some(10_000.0),
                decode_tokens_per_sec: Some(100.0),
                base_latency: Duration::ZERO,
                seed: 0,
                natural_tokens: 16..=128,
                speculative: None,
            }
        );
        assert_eq!(
            backend.sim_config(&config.models).unwrap(),
            SimConfig {
                name: "b".to_owned(),
                models: vec!["m".to_owned()],
                context_window: 4096,
                ..SimConfig::default()
            }
        );

        // Defaults that follow other values.
        let config = parse(
            &MINIMAL
                .replace("context_window = 4096", "context_window = 100")
                .replace(
                    "model = \"m\"\n",
                    "model = \"m\"\n[backends.sim]\nmin_natural_tokens = 200\nprefill_tokens_per_sec = 0\n",
                ),
        )
        .unwrap();
        assert_eq!(config.models[0].default_max_tokens, nz32(100));
        let sim = config.backends[0].sim.clone().unwrap();
        assert_eq!(sim.natural_tokens, 200..=200);
        assert_eq!(sim.prefill_tokens_per_sec, None);
        assert_eq!(sim.decode_tokens_per_sec, Some(100.0));
        let config = parse(&MINIMAL.replace(
            "model = \"m\"\n",
            "model = \"m\"\n[backends.sim]\nmax_natural_tokens = 8\n",
        ))
        .unwrap();
        assert_eq!(
            config.backends[0].sim.clone().unwrap().natural_tokens,
            8..=8
        );
    }

    #[test]
    fn every_key_is_read() {
        let dir = temp_dir("every-key");
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        std::fs::write(dir.join("template.jinja"), "").unwrap();
        std::fs::write(dir.join("ca.pem"), "").unwrap();
        let text = r#"
[server]
listen = "[::1]:9000"
admin_key = "admin-x"
max_body_bytes = 2048
stream_buffer_events = 8
first_token_timeout_ms = 1500
idle_timeout_ms = 2500
client_stall_timeout_ms = 3500
shutdown_grace_ms = 0
admission_wait_ms = 250

[[tenants]]
id = "team-a.1_x"
api_key = "sk-a"
budget_usd = 25
requests_per_minute = 600
tokens_per_minute = 200000
max_concurrency = 32
weight = 3
priority = "batch"
models = ["small"]

[[models]]
name = "small"
tokenizer = "tokenizer.json"
chat_template = "template.jinja"
add_bos_token = false
context_window = 2048
input_usd_per_mtok = 0.5
cached_input_usd_per_mtok = 0.05
output_usd_per_mtok = 1.5
default_max_tokens = 512
fallbacks = ["big"]

[[models]]
name = "big"
context_window = 8192
input_usd_per_mtok = 0
output_usd_per_mtok = 0

[[backends]]
name = "s"
engine = "sim"
model = "small"
served_model = "small-v2"
max_concurrency = 4

[backends.sim]
slots = 2
queue_capacity = 0
kv_capacity_tokens = 4096
prefill_tokens_per_sec = 500.5
decode_tokens_per_sec = 0
base_latency_ms = 7
seed = 42
min_natural_tokens = 3
max_natural_tokens = 9
speculative = { draft_tokens = 5, acceptance_rate = 1 }

[[backends]]
name = "b"
engine = "dynamo"
url = "https://frontend:8000"
model = "big"
on_disconnect = "drain"
ca_file = "ca.pem"
"#;
        let config = GatewayConfig::parse(text, &dir).unwrap();
        let server = &config.server;
        assert_eq!(server.listen, "[::1]:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(server.admin_key, Some(TenantKey::from_plaintext("admin-x")));
        assert_eq!(server.max_body_bytes.get(), 2048);
        assert_eq!(server.stream_buffer_events.get(), 8);
        assert_eq!(server.first_token_timeout, Duration::from_millis(1500));
        assert_eq!(server.idle_timeout, Duration::from_millis(2500));
        assert_eq!(server.client_stall_timeout, Duration::from_millis(3500));
        assert_eq!(server.shutdown_grace, Duration::ZERO);
        assert_eq!(server.admission_wait, Duration::from_millis(250));

        let tenant = config.tenant("team-a.1_x").unwrap();
        assert_eq!(tenant.budget, Some(Money::from_usd(25.0).unwrap()));
        assert_eq!(tenant.requests_per_minute, Some(nz32(600)));
        assert_eq!(tenant.tokens_per_minute, NonZeroU64::new(200_000));
        assert_eq!(tenant.max_concurrency, Some(nz32(32)));
        assert_eq!(tenant.weight, nz32(3));
        assert_eq!(tenant.priority, LatencyClass::Batch);
        assert_eq!(tenant.models, Some(vec!["small".to_owned()]));
        assert!(tenant.allows("small") && !tenant.allows("big"));

        let small = config.model("small").unwrap();
        assert_eq!(small.tokenizer, Some(dir.join("tokenizer.json")));
        assert_eq!(small.chat_template, Some(dir.join("template.jinja")));
        assert!(!small.add_bos_token);
        assert_eq!(small.context_window, nz32(2048));
        assert_eq!(
            small.pricing,
            Pricing::per_million(0.5, Some(0.05), 1.5).unwrap()
        );
        assert_eq!(small.pricing.cached_input.picos(), 50_000);
        assert_eq!(small.default_max_tokens, nz32(512));
        assert_eq!(small.fallbacks, vec!["big".to_owned()]);
        assert_eq!(config.model("big").unwrap().pricing, Pricing::default());

        let sim = &config.backends[0];
        assert_eq!(sim.served_model, "small-v2");
        assert_eq!(sim.max_concurrency, Some(nz32(4)));
        assert_eq!(sim.on_disconnect, OnDisconnect::Abort);
        assert_eq!(sim.ca_file, None);
        let settings = sim.sim.clone().unwrap();
        assert_eq!(
            settings,
            SimSettings {
                slots: nz32(2),
                queue_capacity: 0,
                kv_capacity_tokens: NonZeroU64::new(4096).unwrap(),
                prefill_tokens_per_sec: Some(500.5),
                decode_tokens_per_sec: None,
                base_latency: Duration::from_millis(7),
                seed: 42,
                natural_tokens: 3..=9,
                speculative: Some(Speculative::new(5, 1.0)),
            }
        );
        // The engine answers to the served name, with the model's window.
        assert_eq!(
            sim.sim_config(&config.models).unwrap(),
            SimConfig {
                name: "s".to_owned(),
                models: vec!["small-v2".to_owned()],
                slots: 2,
                queue_capacity: 0,
                kv_capacity_tokens: 4096,
                base_latency: Duration::from_millis(7),
                prefill_tokens_per_sec: Some(500.5),
                decode_tokens_per_sec: None,
                context_window: 2048,
                speculative: Some(Speculative::new(5, 1.0)),
                seed: 42,
                natural_length: 3..=9,
                ..SimConfig::default()
            }
        );
        assert_eq!(
            settings.to_sim_config("x", &["a", "b"], 7).models,
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert_eq!(config.backends[1].engine, EngineKind::Dynamo);
        assert_eq!(config.backends[1].on_disconnect, OnDisconnect::drain());
        assert_eq!(config.backends[1].ca_file, Some(dir.join("ca.pem")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn relative_paths_resolve_against_the_file_directory() {
        let dir = temp_dir("paths");
        let conf_dir = dir.join("conf");
        std::fs::create_dir_all(conf_dir.join("tok")).unwrap();
        std::fs::write(conf_dir.join("tok/tokenizer.json"), "{}").unwrap();
        std::fs::write(dir.join("template.jinja"), "").unwrap();
        let absolute_template = dir.join("template.jinja");
        let text = MINIMAL.replace(
            "context_window = 4096",
            &format!(
                "context_window = 4096\ntokenizer = \"tok/tokenizer.json\"\nchat_template = {:?}",
                absolute_template.display().to_string()
            ),
        );
        let file = conf_dir.join("gateway.toml");
        std::fs::write(&file, &text).unwrap();

        // Loading from the file: against the file's directory.
        let config = GatewayConfig::load(&file).unwrap();
        let model = &config.models[0];
        assert_eq!(model.tokenizer, Some(conf_dir.join("tok/tokenizer.json")));
        assert!(model.tokenizer.as_ref().unwrap().is_absolute());
        // An absolute path stays as it is.
        assert_eq!(model.chat_template, Some(absolute_template));

        // A path through `..` within the file's directory works too.
        let config = GatewayConfig::load(conf_dir.join("tok/../gateway.toml")).unwrap();
        assert_eq!(
            config.models[0].tokenizer,
            Some(conf_dir.join("tok/../tok/tokenizer.json"))
        );

        // Parsing the same text against another directory: not found there.
        let errors = GatewayConfig::parse(&text, &dir).unwrap_err();
        assert_eq!(
            errors.problems,
            vec![ConfigProblem::new(
                "models[0].tokenizer",
                format!(
                    "file not found: {}",
                    dir.join("tok/tokenizer.json").display()
                )
            )]
        );
        // A directory is not a file.
        let errors = GatewayConfig::parse(&text.replace("tok/tokenizer.json", "tok"), &conf_dir)
            .unwrap_err();
        assert_eq!(
            errors.problems,
            vec![ConfigProblem::new(
                "models[0].tokenizer",
                format!("not a file: {}", conf_dir.join("tok").display())
            )]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unreadable_files_and_syntax_errors() {
        let missing = Path::new(NOWHERE).join("gateway.toml");
        let errors = GatewayConfig::load(&missing).unwrap_err();
        assert_eq!(errors.problems.len(), 1);
        assert_eq!(errors.problems[0].path, missing.display().to_string());
        assert!(
            errors.problems[0]
                .message
                .starts_with("cannot read config file: "),
            "{errors}"
        );

        let text = "[server]\nlisten = \"127.0.0.1:8080\nidle_timeout_ms = 1\n";
        let errors = parse(text).unwrap_err();
        assert_eq!(errors.problems.len(), 1);
        assert_eq!(errors.problems[0].path, "line 2, column 25");
        assert_eq!(
            errors.problems[0].message,
            "invalid basic string, expected `\"`"
        );

        let dir = temp_dir("syntax");
        let file = dir.join("bad.toml");
        std::fs::write(&file, "a = 1\na = 2\n").unwrap();
        let errors = GatewayConfig::load(&file).unwrap_err();
        assert_eq!(errors.problems.len(), 1);
        assert_eq!(
            errors.problems[0].path,
            format!("{}, line 2, column 1", file.display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn display_prints_one_problem_per_line() {
        let errors = parse("[server]\nlisten = 8080\n[ledger]\nkind = \"redis\"\n").unwrap_err();
        assert_eq!(
            errors.to_string(),
            "server.listen: expected a string, found an integer\n\
             ledger.url: required with kind = \"redis\"\n\
             tenants: at least one [[tenants]] entry is required\n\
             models: at least one [[models]] entry is required\n\
             backends: at least one [[backends]] entry is required"
        );
        assert_eq!(
            ConfigProblem::new("backends[1].url", "bad").to_string(),
            "backends[1].url: bad"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(errors);
        assert_eq!(boxed.to_string().lines().count(), 5);
    }

    #[test]
    fn embedded_default_is_valid_and_as_documented() {
        let config = GatewayConfig::embedded_default();
        assert_eq!(
            GatewayConfig::parse(EMBEDDED_DEFAULT_TOML, Path::new(NOWHERE)),
            Ok(config.clone())
        );
        assert_eq!(
            config.server.listen,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(DEMO_ADMIN_KEY, "admin-demo");
        assert!(config.server.admin_key.unwrap().matches("admin-demo"));

        assert_eq!(config.tenants.len(), 1);
        let demo = &config.tenants[0];
        assert_eq!(demo.id, "demo");
        assert_eq!(DEMO_API_KEY, "sk-demo");
        // The stored key is sha256("sk-demo"), computed and pinned.
        let expected: [u8; 32] = Sha256::digest(b"sk-demo").into();
        assert_eq!(demo.key, TenantKey::Sha256(expected));
        assert_eq!(demo.key.sha256(), &expected);
        assert_eq!(
            demo.key.to_hex(),
            "f77894fdfa58e447c57e077eaa9708e8e009c84dc6aba2db80461275e9b85be7"
        );
        assert!(demo.key.matches("sk-demo"));
        assert!(!demo.key.matches("sk-dem0"));
        assert!(format!("{:?}", demo.key).contains("f77894fd"));

        assert_eq!(config.models.len(), 1);
        let model = &config.models[0];
        assert_eq!(model.name, "sim-small");
        assert_eq!(model.context_window, nz32(8192));
        assert_eq!(model.default_max_tokens, nz32(256));
        assert_eq!(
            model.pricing,
            Pricing::per_million(0.5, Some(0.05), 1.5).unwrap()
        );

        assert_eq!(config.backends.len(), 1);
        let backend = &config.backends[0];
        assert_eq!(
            (
                backend.name.as_str(),
                backend.engine,
                backend.model.as_str()
            ),
            ("sim-0", EngineKind::Sim, "sim-small")
        );
        let sim = backend.sim_config(&config.models).unwrap();
        assert_eq!(sim.name, "sim-0");
        assert_eq!(sim.models, vec!["sim-small".to_owned()]);
        assert_eq!(sim.context_window, 8192);
    }

    #[test]
    fn the_example_file_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway.toml");
        let config = GatewayConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(config.tenants.len(), 2);
        let a = config.tenant("team-a").unwrap();
        assert!(a.key.matches("sk-team-a"));
        assert_eq!(a.budget, Some(Money::from_usd(25.0).unwrap()));
        assert_eq!(a.requests_per_minute, Some(nz32(600)));
        assert_eq!(a.tokens_per_minute, NonZeroU64::new(200_000));
        assert_eq!(a.max_concurrency, Some(nz32(32)));
        assert_eq!(a.weight, nz32(2));
        assert_eq!(a.models, Some(vec!["sim-small".to_owned()]));
        let b = config.tenant("team-b").unwrap();
        assert!(b.key.matches("sk-team-b"));
        assert_eq!((b.budget, b.weight), (None, nz32(1)));

        assert_eq!(config.models.len(), 1);
        // The policy tables show the defaults.
        assert_eq!(
            config.health,
            gateway_policy::health::HealthConfig::default()
        );
        assert_eq!(
            config.routing,
            gateway_policy::route::AffinityConfig::default()
        );
        let model = config.model("sim-small").unwrap();
        assert_eq!(
            model.pricing,
            Pricing::per_million(0.5, Some(0.05), 1.5).unwrap()
        );

        let names: Vec<&str> = config
            .backends_for("sim-small")
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(names, ["sim-0", "sim-1"]);
        for backend in &config.backends {
            assert_eq!(backend.engine, EngineKind::Sim);
            let sim = backend.sim_config(&config.models).unwrap();
            assert_eq!(sim.name, backend.name);
            assert_eq!(sim.context_window, 8192);
        }
        let sim1 = config.backends[1].sim.clone().unwrap();
        assert_eq!(sim1.slots, nz32(4));
        assert_eq!(sim1.speculative, Some(Speculative::new(4, 0.7)));
        assert_eq!(
            config.backends[0].sim.clone().unwrap().base_latency,
            Duration::from_millis(5)
        );
    }
}

#[test]
fn a_chat_template_needs_a_tokenizer() {
    let dir = std::env::temp_dir().join(format!("gateway-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("t.jinja"), "{{ messages }}").unwrap();
    let text = r#"
[[tenants]]
id = "t"
api_key = "k"

[[models]]
name = "m"
chat_template = "t.jinja"
context_window = 100
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0

[[backends]]
name = "b"
engine = "sim"
model = "m"
"#;
    let err = gateway_adapters::config::GatewayConfig::parse(text, &dir).unwrap_err();
    assert_eq!(
        err.to_string(),
        "models[0].chat_template: needs a tokenizer to count with"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `on_disconnect = "drain"` only where the adapter drains; `ca_file` must
/// exist and is not for the in-process sim.
#[test]
fn drain_and_ca_file_are_checked_per_engine() {
    let text = r#"
[[tenants]]
id = "t"
api_key = "k"

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 0
output_usd_per_mtok = 0

[[backends]]
name = "sg"
engine = "sglang"
url = "http://127.0.0.1:30000"
model = "m"
on_disconnect = "drain"

[[backends]]
name = "tr"
engine = "triton"
url = "https://triton:8000"
model = "m"
on_disconnect = "drain"
ca_file = "no-such-ca.pem"

[[backends]]
name = "sim"
engine = "sim"
model = "m"
on_disconnect = "drain"
ca_file = "ca.pem"

[[backends]]
name = "hosted"
engine = "nim"
url = "https://integrate.api.nvidia.com"
model = "m"
api_key_env = "NIM_API_KEY"
on_disconnect = "drain"
"#;
    let dir = std::path::Path::new("/nonexistent-gateway-config-dir");
    let problems: Vec<(String, String)> = gateway_adapters::config::GatewayConfig::parse(text, dir)
        .unwrap_err()
        .problems
        .into_iter()
        .map(|p| (p.path, p.message))
        .collect();
    let drain = |engine: &str| {
        format!("\"drain\" is for hosted OpenAI-compatible APIs; engine \"{engine}\" aborts")
    };
    assert_eq!(
        problems,
        vec![
            ("backends[0].on_disconnect".to_owned(), drain("sglang")),
            ("backends[1].on_disconnect".to_owned(), drain("triton")),
            (
                "backends[1].ca_file".to_owned(),
                format!("file not found: {}", dir.join("no-such-ca.pem").display())
            ),
            ("backends[2].on_disconnect".to_owned(), drain("sim")),
            (
                "backends[2].ca_file".to_owned(),
                "not allowed for engine \"sim\"".to_owned()
            ),
        ]
    );
}

/// The policy keys (additions): `[health]`, `[routing]`,
/// `server.estimate_drift_warn_ratio`, `models[].admission_queue`.
#[cfg(test)]
mod policy_keys {
    use std::num::NonZeroU32;
    use std::path::Path;
    use std::time::Duration;

    use gateway_adapters::config::GatewayConfig;
    use gateway_policy::health::{BreakerConfig, HealthConfig};
    use gateway_policy::route::AffinityConfig;

    const TENANT_AND_BACKEND: &str = r#"
[[tenants]]
id = "t"
api_key = "sk-t"

[[backends]]
name = "b"
engine = "sim"
model = "m"
"#;

    fn parse(head: &str, model_extra: &str) -> Result<GatewayConfig, String> {
        let text = format!(
            "{head}\n{TENANT_AND_BACKEND}\n[[models]]\nname = \"m\"\ncontext_window = 4096\n\
             input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n{model_extra}\n"
        );
        GatewayConfig::parse(&text, Path::new("/nonexistent")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_todays_constants() {
        let config = parse("", "").unwrap();
        assert_eq!(
            config.health,
            HealthConfig {
                breaker: BreakerConfig {
                    failures_to_open: 5,
                    failure_window: None,
                    open_for: Duration::from_secs(10),
                    half_open_probes: 1,
                    successes_to_close: 2,
                },
                min_concurrency: NonZeroU32::MIN,
            }
        );
        assert_eq!(config.health, HealthConfig::default());
        assert_eq!(
            config.routing,
            AffinityConfig {
                block_bytes: 256,
                block_tokens: 64,
                blocks: 4,
                saturation: 1.0,
            }
        );
        assert_eq!(config.routing, AffinityConfig::default());
        assert_eq!(
            config.server.estimate_drift_warn_ratio.to_bits(),
            0.02f64.to_bits()
        );
        assert_eq!(config.models[0].admission_queue, 1024);
        let settings = gateway_adapters::bootstrap::settings(&config);
        assert_eq!(settings, gateway_policy::Settings::default());
    }

    #[test]
    fn every_key_is_read() {
        let head = r#"
[server]
estimate_drift_warn_ratio = 0.1

[health]
failures_to_open = 3
failure_window_ms = 60000
open_ms = 2500
half_open_probes = 2
successes_to_close = 4
min_concurrency = 2

[routing]
prefix_block_bytes = 64
prefix_block_tokens = 16
prefix_blocks = 8
affinity_saturation = 0
"#;
        let config = parse(head, "admission_queue = 0").unwrap();
        assert_eq!(
            config.health,
            HealthConfig {
                breaker: BreakerConfig {
                    failures_to_open: 3,
                    failure_window: Some(Duration::from_secs(60)),
                    open_for: Duration::from_millis(2500),
                    half_open_probes: 2,
                    successes_to_close: 4,
                },
                min_concurrency: NonZeroU32::new(2).unwrap(),
            }
        );
        assert_eq!(
            config.routing,
            AffinityConfig {
                block_bytes: 64,
                block_tokens: 16,
                blocks: 8,
                saturation: 0.0,
            }
        );
        assert_eq!(
            config.server.estimate_drift_warn_ratio.to_bits(),
            0.1f64.to_bits()
        );
        assert_eq!(config.models[0].admission_queue, 0);
        let settings = gateway_adapters::bootstrap::settings(&config);
        assert_eq!(settings.drift_warn_ratio.to_bits(), 0.1f64.to_bits());
    }

    #[test]
    fn problems_are_reported_by_key_path() {
        let head = r#"
[server]
estimate_drift_warn_ratio = -0.1

[health]
failures_to_open = 0
failure_window_ms = "1m"
open_ms = 86400001
half_open_probes = 1.5
successes_to_close = 10001
min_concurrency = 0
min_concurency = 2

[routing]
prefix_block_bytes = 0
prefix_blocks = 65
affinity_saturation = "high"
"#;
        assert_eq!(
            parse(head, "admission_queue = -1").unwrap_err(),
            "server.estimate_drift_warn_ratio: must be at least 0, found -0.1\n\
             health.min_concurency: unknown key (did you mean `min_concurrency`?)\n\
             health.failures_to_open: must be at least 1, found 0\n\
             health.failure_window_ms: expected an integer, found a string\n\
             health.open_ms: must be at most 86400000, found 86400001\n\
             health.half_open_probes: expected an integer, found a float\n\
             health.successes_to_close: must be at most 10000, found 10001\n\
             health.min_concurrency: must be at least 1, found 0\n\
             routing.prefix_block_bytes: must be at least 1, found 0\n\
             routing.prefix_blocks: must be at most 64, found 65\n\
             routing.affinity_saturation: expected a number, found a string\n\
             models[0].admission_queue: must be at least 0, found -1"
        );
        assert_eq!(
            parse("health = 5\nrouting = []\n", "admission_queue = 1000001").unwrap_err(),
            "health: expected a table, found an integer\n\
             routing: expected a table, found an array\n\
             models[0].admission_queue: must be at most 1000000, found 1000001"
        );
        assert_eq!(
            parse("[routing]\naffinity_saturation = 100.5\n", "").unwrap_err(),
            "routing.affinity_saturation: must be at most 100, found 100.5"
        );
    }

    #[test]
    fn latency_targets_per_class() {
        use gateway_policy::route::{Slo, SloTargets};
        assert_eq!(parse("", "").unwrap().models[0].slo, Slo::default());
        let config = parse(
            "",
            "[models.slo.interactive]
ttft_ms = 500
itl_ms = 50
[models.slo.batch]
ttft_ms = 30000",
        )
        .unwrap();
        assert_eq!(
            config.models[0].slo,
            Slo {
                interactive: SloTargets {
                    ttft: Some(Duration::from_millis(500)),
                    itl: Some(Duration::from_millis(50)),
                },
                batch: SloTargets {
                    ttft: Some(Duration::from_secs(30)),
                    itl: None,
                },
            }
        );
        // The inline form is the same table.
        let inline = parse(
            "",
            "slo = { interactive = { ttft_ms = 500, itl_ms = 50 }, batch = { ttft_ms = 30000 } }",
        )
        .unwrap();
        assert_eq!(inline.models[0].slo, config.models[0].slo);
        assert_eq!(
            parse(
                "",
                "[models.slo]
interactiv = {}
batch = 5
[models.slo.interactive]
ttft_ms = 0
itl_ms = 3600001
tfft_ms = 1"
            )
            .unwrap_err(),
            "models[0].slo.interactiv: unknown key (did you mean `interactive`?)\n\
             models[0].slo.interactive.tfft_ms: unknown key (did you mean `ttft_ms`?)\n\
             models[0].slo.interactive.ttft_ms: must be at least 1, found 0\n\
             models[0].slo.interactive.itl_ms: must be at most 3600000, found 3600001\n\
             models[0].slo.batch: expected a table, found an integer"
        );
    }

    #[test]
    fn media_costs_per_part() {
        let config = parse("", "").unwrap();
        assert_eq!(
            config.models[0].media,
            gateway_policy::MediaCosts::default()
        );
        let config = parse(
            "",
            "image_tokens = 576
video_tokens = 4096",
        )
        .unwrap();
        assert_eq!(
            config.models[0].media,
            gateway_policy::MediaCosts {
                image: Some(576),
                audio: None,
                video: Some(4096),
            }
        );
        assert_eq!(
            parse(
                "",
                "image_tokens = 0
audio_tokens = \"lots\""
            )
            .unwrap_err(),
            "models[0].image_tokens: must be at least 1, found 0\n\
             models[0].audio_tokens: expected an integer, found a string"
        );
    }
}

/// `models[].continue_on_failure` and `max_continuations` (additions).
#[cfg(test)]
mod continuation_keys {
    use std::num::NonZeroU32;
    use std::path::Path;

    use gateway_adapters::config::GatewayConfig;
    use gateway_policy::{Continuation, ContinuationIds};

    fn parse(model_extra: &str) -> Result<GatewayConfig, String> {
        let text = format!(
            "[[tenants]]\nid = \"t\"\napi_key = \"sk-t\"\n\
             [[backends]]\nname = \"b\"\nengine = \"sim\"\nmodel = \"m\"\n\
             [[models]]\nname = \"m\"\ncontext_window = 4096\n\
             input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n{model_extra}\n"
        );
        GatewayConfig::parse(&text, Path::new("/nonexistent")).map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_one_continuation_when_on() {
        assert_eq!(parse("").unwrap().models[0].continuation, None);
        assert_eq!(
            parse("continue_on_failure = false").unwrap().models[0].continuation,
            None
        );
        assert_eq!(
            parse("continue_on_failure = true").unwrap().models[0].continuation,
            Some(Continuation::new(NonZeroU32::MIN))
        );
        assert_eq!(
            parse("continue_on_failure = true\nmax_continuations = 16")
                .unwrap()
                .models[0]
                .continuation,
            Some(Continuation::new(NonZeroU32::new(16).unwrap()))
        );
    }

    #[test]
    fn retokenizing_is_chosen_by_name() {
        assert_eq!(
            parse("continue_on_failure = true\ncontinuation_ids = \"retokenize\"")
                .unwrap()
                .models[0]
                .continuation,
            Some(Continuation::new(NonZeroU32::MIN).with_ids(ContinuationIds::Retokenize))
        );
        assert_eq!(
            parse("continue_on_failure = true\ncontinuation_ids = \"exact\"")
                .unwrap()
                .models[0]
                .continuation,
            Some(Continuation::new(NonZeroU32::MIN))
        );
        assert_eq!(
            parse("continue_on_failure = true\ncontinuation_ids = \"guess\"").unwrap_err(),
            "models[0].continuation_ids: unknown value \"guess\" (expected \"exact\" or \"retokenize\")"
        );
    }

    #[test]
    fn problems_are_reported_by_key_path() {
        assert_eq!(
            parse("max_continuations = 2\ncontinuation_ids = \"exact\"").unwrap_err(),
            "models[0].max_continuations: only with continue_on_failure = true\n\
             models[0].continuation_ids: only with continue_on_failure = true"
        );
        assert_eq!(
            parse("max_continuations = 2").unwrap_err(),
            "models[0].max_continuations: only with continue_on_failure = true"
        );
        assert_eq!(
            parse("continue_on_failure = true\nmax_continuations = 0").unwrap_err(),
            "models[0].max_continuations: must be at least 1, found 0"
        );
        assert_eq!(
            parse("continue_on_failure = true\nmax_continuations = 17").unwrap_err(),
            "models[0].max_continuations: must be at most 16, found 17"
        );
        assert_eq!(
            parse("continue_on_failure = 1").unwrap_err(),
            "models[0].continue_on_failure: expected a boolean, found an integer"
        );
    }
}

/// The pass-through keys (additions): `server.unknown_fields`,
/// `max_extra_bytes`, `max_extra_depth`, `max_json_depth`,
/// `models[].unknown_fields`.
#[cfg(test)]
mod pass_through_keys {
    use std::path::Path;

    use gateway_adapters::config::{BodyLimits, GatewayConfig, UnknownFields};

    fn parse(server: &str, model_extra: &str) -> Result<GatewayConfig, String> {
        let text = format!(
            "[server]\n{server}\n[[tenants]]\nid = \"t\"\napi_key = \"sk-t\"\n\
             [[backends]]\nname = \"b\"\nengine = \"sim\"\nmodel = \"m\"\n\
             [[models]]\nname = \"m\"\ncontext_window = 4096\n\
             input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n{model_extra}\n"
        );
        GatewayConfig::parse(&text, Path::new("/nonexistent")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_keys_and_problems() {
        let config = parse("", "").unwrap();
        assert_eq!(config.server.unknown_fields, UnknownFields::Reject);
        assert_eq!(
            config.server.body_limits,
            BodyLimits {
                max_extra_bytes: 65536,
                max_extra_depth: 32,
                max_json_depth: 64,
            }
        );
        assert_eq!(config.models[0].unknown_fields, None);

        let config = parse(
            "unknown_fields = \"drop\"\nmax_extra_bytes = 10\nmax_extra_depth = 1\nmax_json_depth = 128",
            "unknown_fields = \"reject\"",
        )
        .unwrap();
        assert_eq!(config.server.unknown_fields, UnknownFields::Drop);
        assert_eq!(
            config.server.body_limits,
            BodyLimits {
                max_extra_bytes: 10,
                max_extra_depth: 1,
                max_json_depth: 128,
            }
        );
        assert_eq!(config.models[0].unknown_fields, Some(UnknownFields::Reject));

        assert_eq!(
            parse(
                "unknown_fields = \"ignore\"\nmax_extra_bytes = 0\nmax_extra_depth = 129\nmax_json_depth = 1",
                "unknown_fields = 1",
            )
            .unwrap_err(),
            "server.unknown_fields: unknown value \"ignore\" (expected \"reject\" or \"drop\")\n\
             server.max_extra_bytes: must be at least 1, found 0\n\
             server.max_extra_depth: must be at most 128, found 129\n\
             server.max_json_depth: must be at least 2, found 1\n\
             models[0].unknown_fields: expected a string, found an integer"
        );
    }
}

/// The edge limits of `[server]` and `tenants[].max_connections`.
#[cfg(test)]
mod edge_limits {
    use std::num::{NonZeroU32, NonZeroUsize};
    use std::path::Path;
    use std::time::Duration;

    use gateway_adapters::config::GatewayConfig;

    const TENANT_MODEL_BACKEND: &str = r#"
[[tenants]]
id = "t"
api_key = "sk-t"
TENANT_EXTRA

[[models]]
name = "m"
context_window = 4096
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[[backends]]
name = "b"
engine = "sim"
model = "m"
"#;

    fn parse(server: &str, tenant: &str) -> Result<GatewayConfig, String> {
        let text = format!(
            "[server]\n{server}\n{}",
            TENANT_MODEL_BACKEND.replace("TENANT_EXTRA", tenant)
        );
        GatewayConfig::parse(&text, Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let config = parse("", "").unwrap();
        let s = &config.server;
        assert_eq!(s.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.keep_alive_timeout, Duration::from_secs(60));
        assert_eq!(s.body_read_timeout, Duration::from_secs(30));
        assert_eq!(s.max_header_bytes, 32 * 1024);
        assert_eq!(s.max_connections, NonZeroUsize::new(10_000).unwrap());
        assert_eq!(s.ready_drain, Duration::ZERO);
        assert_eq!(config.tenants[0].max_connections, None);
        assert_eq!(
            GatewayConfig::embedded_default().server.max_connections,
            s.max_connections
        );
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            "header_read_timeout_ms = 1500\nkeep_alive_timeout_ms = 2500\n\
             body_read_timeout_ms = 3500\nmax_header_bytes = 8192\n\
             max_connections = 77\nready_drain_ms = 4500",
            "max_connections = 3",
        )
        .unwrap();
        let s = &config.server;
        assert_eq!(s.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(s.keep_alive_timeout, Duration::from_millis(2500));
        assert_eq!(s.body_read_timeout, Duration::from_millis(3500));
        assert_eq!(s.max_header_bytes, 8192);
        assert_eq!(s.max_connections.get(), 77);
        assert_eq!(s.ready_drain, Duration::from_millis(4500));
        assert_eq!(config.tenants[0].max_connections, NonZeroU32::new(3));
        // Zero drain is allowed.
        assert_eq!(
            parse("ready_drain_ms = 0", "").unwrap().server.ready_drain,
            Duration::ZERO
        );
    }

    #[test]
    fn out_of_range_values_are_reported_by_key_path() {
        assert_eq!(
            parse(
                "header_read_timeout_ms = 0\nkeep_alive_timeout_ms = 3600001\n\
                 body_read_timeout_ms = \"soon\"\nmax_header_bytes = 1023\n\
                 max_connections = 0\nready_drain_ms = -1",
                "max_connections = 0",
            )
            .unwrap_err(),
            "server.header_read_timeout_ms: must be at least 1, found 0\n\
             server.keep_alive_timeout_ms: must be at most 3600000, found 3600001\n\
             server.body_read_timeout_ms: expected an integer, found a string\n\
             server.max_header_bytes: must be at least 1024, found 1023\n\
             server.max_connections: must be at least 1, found 0\n\
             server.ready_drain_ms: must be at least 0, found -1\n\
             tenants[0].max_connections: must be at least 1, found 0"
        );
        assert_eq!(
            parse("max_header_bytes = 262145\nmax_connections = 1000001", "").unwrap_err(),
            "server.max_header_bytes: must be at most 262144, found 262145\n\
             server.max_connections: must be at most 1000000, found 1000001"
        );
    }

    #[test]
    fn tokenizer_cache_bytes_defaults_to_32_mib_and_may_be_zero() {
        assert_eq!(
            parse("", "").unwrap().server.tokenizer_cache_bytes,
            32 << 20
        );
        assert_eq!(
            GatewayConfig::embedded_default()
                .server
                .tokenizer_cache_bytes,
            32 << 20
        );
        let off = parse("tokenizer_cache_bytes = 0", "").unwrap();
        assert_eq!(off.server.tokenizer_cache_bytes, 0);
        assert_eq!(
            parse("tokenizer_cache_bytes = 68719476737", "").unwrap_err(),
            "server.tokenizer_cache_bytes: must be at most 68719476736, found 68719476737"
        );
    }
}
