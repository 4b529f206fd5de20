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
fn embed_streams_and_reports_usage() {
    let out = run(env!("CARGO_BIN_EXE_embed"));
    let usage = out.lines().find(|l| l.starts_with("usage: ")).unwrap();
    // Speculative decoding is on: rejected = drafted - accepted, printed.
    assert!(
        usage.contains("drafted=") && usage.contains("rejected="),
        "{usage}"
    );
    assert!(out.contains("finished: "), "{out}");
    let delivered: u64 = out
        .lines()
        .find_map(|l| l.split("delivered tokens: ").nth(1))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(usage.contains(&format!("completion={delivered} ")), "{out}");
    // Through the gateway: the account read after `settled` is exact, the
    // reservation released.
    let account = out
        .lines()
        .find_map(|l| l.strip_prefix("gateway account: "))
        .unwrap();
    // 35 * $0.50 + 24 * $1.50 per million tokens = $0.0000535.
    assert_eq!(
        account,
        "1 request(s), 35 prompt + 24 completion tokens, spent $0.000053, held $0.000000, \
         budget $1.000000"
    );
}

#[test]
fn custom_backend_passes_the_conformance_kit() {
    let out = run(env!("CARGO_BIN_EXE_custom_backend"));
    assert!(out.contains("text: the quick brown fox the quick"), "{out}");
    assert!(
        out.contains(
            "conformance: all 13 required rules pass (1 optional skipped: [StructuredOutput])"
        ),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
}
