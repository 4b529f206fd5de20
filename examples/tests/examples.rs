//! The examples run and say what they should.

use std::process::Command;

#[expect(
    clippy::unwrap_used,
    reason = "test helper: a failed spawn fails the test"
)]
fn run(exe: &str) -> String {
    let out = Command::new(exe).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{exe} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn embed_settles_exactly_a_request_read_to_its_end_and_one_cancelled_by_drop() {
    let out = run(env!("CARGO_BIN_EXE_embed"));
    let lines: Vec<&str> = out.lines().collect();
    // 35 * $0.50 + 24 * $1.50 per million tokens = $0.0000535; the
    // cancelled request is charged its 35 prompt tokens and the 5 tokens
    // its client took: $0.000025 more.
    assert_eq!(
        lines,
        [
            r#"text: " and ok a a ñ ✓ in naïve of ✓. in naïve\n ñ über stream the engine of stream. ok is""#,
            "account after one request: 1 request(s), 35 prompt + 24 completion tokens, \
             spent $0.000053, held $0.000000, budget $1.000000",
            "cancelled after 5 tokens: engine aborts in decode 1",
            "account after the cancelled one: 2 request(s), 70 prompt + 29 completion tokens, \
             spent $0.000078, held $0.000000, budget $1.000000",
        ],
        "{out}"
    );
}

#[test]
fn host_serves_its_routes_and_the_gateways_under_its_middleware() {
    let out = run(env!("CARGO_BIN_EXE_host"));
    let lines: Vec<&str> = out.lines().collect();
    // 90 prompt tokens * $1 + 18 completion tokens * $2 per million.
    assert_eq!(
        lines,
        [
            r#"GET /: 200 "the host's own service" (x-served-by: host-app)"#,
            r#"canned: 200 45 prompt + 6 completion tokens, "Hello from the host's own backend." (x-served-by: host-app)"#,
            r#"sim-small: 200 45 prompt + 12 completion tokens, " and in über 🦀 Grüße a ok naïve is to ok stream" (x-served-by: host-app)"#,
            r#"GET /v1/models without a key: 401 "invalid_api_key" (x-served-by: host-app)"#,
            r#"GET /nope: 404 "not here" (x-served-by: host-app)"#,
            r#"GET /usage/team-a: 200 {"budget_usd":"$5.000000","completion_tokens":18,"held_usd":"$0.000000","prompt_tokens":90,"requests":2,"spent_usd":"$0.000126"}"#,
        ],
        "{out}"
    );
}

#[test]
fn custom_backend_passes_the_conformance_kit() {
    let out = run(env!("CARGO_BIN_EXE_custom_backend"));
    assert!(
        out.contains(
            "conformance: all 13 required rules pass (1 optional skipped: [StructuredOutput])"
        ),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
}
