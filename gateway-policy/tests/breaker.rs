//! The health policies through the pipeline, in paused time, with their
//! measured figures printed: a backend's breaker from failures to open,
//! the requests it sheds while open, its half-open probes and its closing;
//! and the adaptive concurrency limit's trajectory under overload answers.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_core::testkit::{MockBackend, MockHandle, Script, Step};
use gateway_core::*;
use gateway_policy::health::{BreakerConfig, HealthConfig};
use gateway_policy::*;

const MODEL: &str = "m";

struct Setup {
    gateway: Gateway,
    tenant: Arc<Tenant>,
    mock: MockHandle,
}

fn setup(max_concurrency: Option<u32>, health: HealthConfig) -> Setup {
    let (mock, handle) = MockBackend::new("mock-0", MODEL);
    let gateway = Gateway::builder(Settings::default())
        .tenant(Tenant::new("t"), key_hash("sk"))
        .model(ModelSpec {
            name: MODEL.into(),
            pricing: Pricing::default(),
            context_window: 1000,
            default_max_tokens: 8,
            media: gateway_policy::MediaCosts::default(),
            counter: Arc::new(ByteBound::default()),
        })
        .backend_with(
            Arc::new(mock),
            MODEL,
            MODEL,
            max_concurrency.and_then(NonZeroU32::new),
            health,
        )
        .build()
        .unwrap();
    let tenant = gateway.authenticate(Some("sk")).unwrap();
    Setup {
        gateway,
        tenant,
        mock: handle,
    }
}

/// Runs one request to its end: `ok`, the code of its error before the
/// first token, or the kind of its failure after it.
async fn run(s: &Setup, id: String) -> &'static str {
    let guard = s.gateway.request_cancel();
    let cancel = guard.handle().clone();
    let request = ClientRequest::new(id, MODEL, Prompt::Text("hello".into()));
    match s.gateway.generate(&s.tenant, request, cancel).await {
        Ok(mut stream) => {
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    return e.kind().as_str();
                }
            }
            "ok"
        }
        Err(e) => e.code().as_str(),
    }
}

fn circuit_gauge(s: &Setup) -> String {
    let m = s.gateway.render_metrics();
    m.lines()
        .find(|l| l.starts_with(r#"gateway_circuit_state{backend="mock-0"}"#))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_sheds_probes_and_closes() {
    let health = HealthConfig {
        breaker: BreakerConfig {
            failures_to_open: 3,
            failure_window: Some(Duration::from_secs(30)),
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
            successes_to_close: 2,
        },
        ..HealthConfig::default()
    };
    let s = setup(None, health);
    s.mock.set_default(Script::reject(FailureKind::Connect));
    // One request a second for 16 s; the backend recovers at 5 s, while
    // the breaker is still open.
    let mut timeline = Vec::new();
    let mut shed = 0;
    for second in 0..16u64 {
        if second == 5 {
            s.mock.set_default(Script::default());
        }
        let state = s.gateway.backends()[0].breaker_state().as_str();
        let gauge = circuit_gauge(&s);
        let starts = s.mock.starts();
        let outcome = run(&s, format!("r{second}")).await;
        let sent = s.mock.starts() > starts;
        if !sent {
            shed += 1;
        }
        println!(
            "t={second:>2}s breaker {state:<9} (gauge {gauge}) -> {outcome:<14} {}",
            if sent { "sent" } else { "shed" }
        );
        timeline.push((state, outcome, sent));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let after = s.gateway.backends()[0].breaker_state().as_str();
    println!(
        "requests shed while open: {shed} of 16; sent to the backend: {}; breaker at the end: {after}",
        s.mock.starts()
    );
    let mut expected = vec![("closed", "upstream_error", true); 3];
    expected.extend([("open", "upstream_error", false); 9]);
    expected.extend([("half_open", "ok", true); 2]);
    expected.extend([("closed", "ok", true); 2]);
    assert_eq!(timeline, expected);
    assert_eq!((shed, s.mock.starts(), after), (9, 7, "closed"));
    let m = s.gateway.render_metrics();
    assert!(
        m.contains(r#"gateway_backend_failures_total{backend="mock-0",kind="connect"} 3"#),
        "{m}"
    );
    assert_eq!(circuit_gauge(&s), "0");
}

#[tokio::test(start_paused = true)]
async fn a_failure_window_keeps_slow_failures_from_opening_it() {
    let health = HealthConfig {
        breaker: BreakerConfig {
            failures_to_open: 3,
            failure_window: Some(Duration::from_secs(30)),
            ..BreakerConfig::default()
        },
        ..HealthConfig::default()
    };
    let s = setup(None, health);
    s.mock.set_default(Script::reject(FailureKind::Connect));
    // A failure every 20 s: never three within 30 s.
    for i in 0..6 {
        assert_eq!(run(&s, format!("slow{i}")).await, "upstream_error");
        tokio::time::advance(Duration::from_secs(20)).await;
    }
    assert_eq!(s.gateway.backends()[0].breaker_state().as_str(), "closed");
    assert_eq!(s.mock.starts(), 6);
    // Three within 30 s open it.
    for i in 0..3 {
        if i > 0 {
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        assert_eq!(run(&s, format!("fast{i}")).await, "upstream_error");
    }
    assert_eq!(s.gateway.backends()[0].breaker_state().as_str(), "open");
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_halves_to_its_floor_and_grows_back() {
    let health = HealthConfig {
        breaker: BreakerConfig {
            failures_to_open: 100,
            ..BreakerConfig::default()
        },
        min_concurrency: NonZeroU32::new(2).unwrap(),
    };
    let s = setup(Some(16), health);
    for _ in 0..4 {
        s.mock.push(Script::reject(FailureKind::Overloaded));
    }
    for _ in 0..12 {
        s.mock.push(Script::default());
    }
    s.mock.push(Script::reject(FailureKind::Overloaded));
    let mut outcomes = Vec::new();
    let mut limits = Vec::new();
    for i in 0..17 {
        outcomes.push(run(&s, format!("a{i}")).await);
        limits.push(s.gateway.backends()[0].limit().unwrap());
    }
    println!("answers: {outcomes:?}");
    println!("adaptive limit after each answer (max 16, floor 2): {limits:?}");
    let mut expected_outcomes = vec!["overloaded"; 4];
    expected_outcomes.extend(["ok"; 12]);
    expected_outcomes.push("overloaded");
    assert_eq!(outcomes, expected_outcomes);
    // Halved per overload answer down to the floor; +1/limit per success.
    assert_eq!(limits, [8, 4, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 2]);
    let m = s.gateway.render_metrics();
    assert!(
        m.contains(r#"gateway_backend_limit{backend="mock-0"} 2"#),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn streams_cut_together_are_one_incident() {
    // The default breaker: five consecutive failures open it for 10 s.
    let s = setup(None, HealthConfig::default());
    // Sixteen streams in flight are all cut at once after their first
    // token (an engine that restarts), the only backend of the model.
    let cut = Script::tokens(&["a"], Duration::ZERO)
        .then(Step::Token {
            text: "b".into(),
            delay: Duration::from_millis(100),
        })
        .then(Step::Fail(FailureKind::ProtocolViolation));
    for _ in 0..16 {
        s.mock.push(cut.clone());
    }
    let outcomes = futures::future::join_all((0..16).map(|i| run(&s, format!("cut{i}")))).await;
    assert_eq!(outcomes, vec!["protocol_violation"; 16]);
    let m = s.gateway.render_metrics();
    assert!(
        m.contains(
            r#"gateway_backend_failures_total{backend="mock-0",kind="protocol_violation"} 16"#
        ),
        "{m}"
    );
    // One incident, not sixteen failures: the breaker stays closed and the
    // next request is served.
    assert_eq!(s.gateway.backends()[0].breaker_state().as_str(), "closed");
    assert_eq!(run(&s, "after".into()).await, "ok");
    // Requests sent after a failure that fail count, one each: five
    // failures in a row open it.
    s.mock.set_default(Script::reject(FailureKind::Connect));
    let mut states = Vec::new();
    for i in 0..5 {
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(run(&s, format!("dead{i}")).await, "upstream_error");
        states.push(s.gateway.backends()[0].breaker_state().as_str());
    }
    assert_eq!(states, ["closed", "closed", "closed", "closed", "open"]);
}

#[tokio::test(start_paused = true)]
async fn health_checks_run_every_interval_until_stopped() {
    let s = setup(None, HealthConfig::default());
    s.mock.set_healthy(false);
    let stop = tokio_util::sync::CancellationToken::new();
    let checks = tokio::spawn({
        let (gateway, stop) = (s.gateway.clone(), stop.clone());
        async move {
            gateway
                .health_checks(Duration::from_secs(5), stop.cancelled_owned())
                .await;
        }
    });
    // The first check runs at once.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!s.gateway.backends()[0].is_healthy());
    // The backend recovers; the next check, 5 s after the first, sees it.
    s.mock.set_healthy(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!s.gateway.backends()[0].is_healthy());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(s.gateway.backends()[0].is_healthy());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), checks)
        .await
        .expect("the loop ends when stopped")
        .unwrap();
}
