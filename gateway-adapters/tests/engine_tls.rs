//! The adapters over `https`: a TLS-terminating proxy on loopback (rustls,
//! the test certificate in `fixtures/tls/`, signed by the test CA) in front
//! of the wire-faithful simulators. The vLLM adapter passes the whole
//! conformance kit through it (aborts still reach the engine), SGLang and
//! Triton stream through it, and a server whose certificate is not trusted
//! is refused before anything reaches the engine.
#![cfg(feature = "engines")]
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

#[cfg(test)]
pub mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gateway_adapters::engines::{self, UpstreamConfig, sglang, triton, vllm};
use gateway_core::testkit::conformance::{
    self, ConformanceConfig, ConformanceTarget, Instance, Scenario,
};
use gateway_core::{Backend, FailureKind, FailurePhase, FinishReason, Health, Usage};
use gateway_sims::vllm::{BUSY_503, Fault, SimOptions, VllmSim};
use gateway_sims::{sglang as sglang_sim, triton as triton_sim};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::kit::{chat, ms, run, text, wait_pressure};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/tls")
        .join(name)
}

/// A TLS terminator on a loopback port forwarding each connection to
/// `target`; it stops when the guard drops.
struct TlsProxy {
    addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    _stop: DropGuard,
}

impl TlsProxy {
    async fn start(target: SocketAddr) -> TlsProxy {
        TlsProxy::start_on("127.0.0.1", target).await
    }

    /// On `ip:0` (a loopback address).
    async fn start_on(ip: &str, target: SocketAddr) -> TlsProxy {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fixture("server.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let handshakes = Arc::new(AtomicU64::new(0));
        let (token, count) = (stop.clone(), handshakes.clone());
        tokio::spawn(async move {
            loop {
                let (socket, _) = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let (acceptor, token, count) = (acceptor.clone(), token.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = upstream.set_nodelay(true);
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream) => {}
                    }
                });
            }
        });
        TlsProxy {
            addr,
            handshakes,
            _stop: stop.drop_guard(),
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

fn sim_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// The adapter config for `url`, trusting the test CA.
fn trusted(name: &str, url: String) -> UpstreamConfig {
    let mut c = UpstreamConfig::new(name, url, "m");
    c.scrape_interval = ms(5);
    c.ca_file = Some(fixture("ca.pem"));
    c
}

// ---------------------------------------------------------------- conformance

/// The vLLM simulator behind a TLS proxy, per scenario.
#[derive(Default)]
struct Target {
    proxies: Mutex<Vec<TlsProxy>>,
}

#[async_trait::async_trait]
impl ConformanceTarget for Target {
    async fn instance(&self, scenario: Scenario) -> Option<Instance> {
        let options = crate::scenario_options!(
            scenario,
            SimOptions {
                ..SimOptions::default()
            },
            before: vec![Fault::Http {
                status: 503,
                body: BUSY_503.to_owned(),
                retry_after: None,
            }],
            after: vec![Fault::ErrorFrame {
                after_tokens: 2,
                code: 500,
                kind: "InternalServerError".to_owned(),
                message: "Internal server error".to_owned(),
            }],
        )?;
        let sim = VllmSim::start(options).await;
        let proxy = TlsProxy::start(sim_addr(&sim.url())).await;
        let backend = vllm::backend(trusted("vllm-tls", proxy.url())).unwrap();
        self.proxies.lock().unwrap().push(proxy);
        Some(Instance {
            backend: Arc::new(backend),
            probe: sim,
            model: "m".to_owned(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_adapter_conforms_over_https() {
    let target = Target::default();
    let report = conformance::run(&target, &ConformanceConfig::default()).await;
    println!("{report}");
    report.assert_passed();
    let handshakes: u64 = target
        .proxies
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.handshakes.load(Ordering::Relaxed))
        .sum();
    println!("TLS handshakes through the proxies: {handshakes}");
    assert!(handshakes > 0);
}

// ------------------------------------------------------------- per engine

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_health_and_metrics_go_over_https() {
    let sim = VllmSim::start(SimOptions {
        natural_tokens: 9,
        token_interval: ms(1),
        ..SimOptions::default()
    })
    .await;
    let proxy = TlsProxy::start(sim_addr(&sim.url())).await;
    let backend = vllm::backend(trusted("vllm-tls", proxy.url())).unwrap();
    assert_eq!(backend.health().await, Health::Healthy);
    let d = run(&backend, chat(64)).await.unwrap();
    let prompt = sim.generations()[0].prompt_tokens;
    assert_eq!(d.usage(), Some(Usage::new(prompt, 9)));
    assert_eq!(d.text(), gateway_sims::vllm::text_of(9));
    assert_eq!(d.finish(), Some(FinishReason::Stop));
    // The scraper reads /metrics through TLS too.
    wait_pressure(&backend, |p| p.updated_at.is_some()).await;
    assert!(proxy.handshakes.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_before_the_engine_sees_a_request() {
    let sim = VllmSim::start(SimOptions::default()).await;
    let proxy = TlsProxy::start(sim_addr(&sim.url())).await;
    // The public roots only: the test CA is not among them.
    let mut config = trusted("vllm-tls", proxy.url());
    config.ca_file = None;
    let backend = vllm::backend(config).unwrap();
    let error = run(&backend, chat(8)).await.unwrap_err();
    assert_eq!(
        (error.kind(), error.phase()),
        (FailureKind::Connect, FailurePhase::BeforeFirstToken),
        "{error}"
    );
    assert!(
        format!("{error:?}").contains("UnknownIssuer"),
        "not an unknown issuer: {error:?}"
    );
    assert!(matches!(backend.health().await, Health::Unhealthy(_)));
    assert_eq!(proxy.handshakes.load(Ordering::Relaxed), 0);
    assert!(sim.requests().is_empty());
    // A trusted certificate for other names (it names 127.0.0.1 and
    // localhost, the proxy listens on 127.0.0.2) is refused the same way:
    // the connection is made, the handshake fails.
    let other = TlsProxy::start_on("127.0.0.2", sim_addr(&sim.url())).await;
    let wrong_name = format!("https://127.0.0.2:{}", other.addr.port());
    let backend = vllm::backend(trusted("vllm-tls", wrong_name)).unwrap();
    let error = run(&backend, chat(8)).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Connect, "{error}");
    assert!(
        format!("{error:?}").contains("NotValidForName"),
        "not a name mismatch: {error:?}"
    );
    assert_eq!(other.handshakes.load(Ordering::Relaxed), 0);
    assert!(sim.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_and_triton_stream_over_https() {
    let sim = sglang_sim::SglangSim::start(sglang_sim::SimOptions {
        natural_tokens: 7,
        ..sglang_sim::SimOptions::default()
    })
    .await;
    let proxy = TlsProxy::start(sim_addr(&sim.url())).await;
    let backend = sglang::backend(trusted("sglang-tls", proxy.url())).unwrap();
    let d = run(&backend, text(64)).await.unwrap();
    assert_eq!(d.text(), sglang_sim::text_of(7));
    assert_eq!((d.tokens(), d.finish()), (7, Some(FinishReason::Stop)));

    let sim = triton_sim::TritonSim::start(triton_sim::SimOptions {
        natural_tokens: 5,
        ..triton_sim::SimOptions::default()
    })
    .await;
    let proxy = TlsProxy::start(sim_addr(&sim.url())).await;
    let mut config = trusted("triton-tls", proxy.url());
    config.served_model = Some("ensemble".to_owned());
    let backend = triton::backend(config).unwrap();
    let mut request = text(64);
    request.served_model = "ensemble".to_owned();
    let d = run(&backend, request).await.unwrap();
    assert_eq!(d.text(), triton_sim::text_of(5));
    assert_eq!((d.tokens(), d.finish()), (5, Some(FinishReason::Stop)));
}

#[test]
fn a_ca_file_without_certificates_is_a_typed_error() {
    let mut config = UpstreamConfig::new("b", "https://localhost:1", "m");
    config.ca_file = Some(fixture("server.key"));
    let error = vllm::backend(config).unwrap_err();
    assert!(
        matches!(&error, engines::EngineError::Tls { reason, .. } if reason == "no PEM certificate in the file"),
        "{error}"
    );
}
