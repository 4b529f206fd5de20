//! Engine adapters for the AI gateway.
//!
//! Each adapter implements [`gateway_core::Backend`]. The first is
//! [`sim`]: an in-process engine that behaves like a GPU inference server
//! (slots and a bounded queue, prefill and decode times, a KV cache,
//! speculative decoding, cancellation in every phase, injected faults),
//! deterministic from a seed. It is the default engine of the example
//! server, the engine of the benchmarks ([`SimConfig::zero_delay`]) and of
//! many tests.
//!
//! [`config`] reads and validates the gateway's TOML config file, reporting
//! every problem with its key path. Inside the crate the arrows go one way:
//! `config` depends on [`engines`] and [`sim`] (it names their settings,
//! such as [`engines::OnDisconnect`], and turns an entry into an engine's
//! `UpstreamConfig` or a `SimConfig`); neither of them knows the config
//! file. `bootstrap` builds each backend with one call,
//! `engines::build(kind, upstream)`, or a sim.
//!
//! Alongside, [`openai`] holds the OpenAI wire types and the SSE codec
//! shared by the gateway's HTTP server and the OpenAI-speaking adapters.
//!
//! [`SimConfig::zero_delay`]: sim::SimConfig::zero_delay
//!
//! # Features
//!
//! All off by default; without any, the crate is the sim engine, the
//! config file and the OpenAI wire types.
//!
//! - `router`: the HTTP surface a host mounts and serves, without any
//!   engine client: `server::router` / `server::routes` (the OpenAI
//!   routes as an axum `Router`), `server::SseBody`, and `server::serve`,
//!   `server::serve_with` and `server::serve_and_drain`, which serve any
//!   tower service over axum's request type (the router wrapped in the
//!   host's own layers included) with the gateway's edge: the
//!   stalled-client kill, the header, keep-alive and body timeouts,
//!   connection caps, the readiness phase and the drain at shutdown.
//!   axum and hyper's server side only: no HTTP client, no TLS.
//! - `engines`: the adapters of remote engines (`engines`: vLLM, SGLang,
//!   TensorRT-LLM, Triton, NIM, Dynamo, any OpenAI-compatible server), a
//!   pooled HTTP/1.1 client over http or https (rustls) with background
//!   metric scrapes.
//! - `server`: `router` + `engines` + `bootstrap` (from a config file to a
//!   running gateway): what the `gateway` binary uses.
//! - `tokenizers`, `redis`: exact token counts from a `tokenizer.json`, the
//!   Redis ledger (both from `gateway-policy`).
//! - `fuzzing`: hidden entry points for the fuzz targets.
//!
//! # Examples
//!
//! Build a sim backend, start a request and collect its text:
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use gateway_adapters::sim::{SimBackend, SimConfig};
//! use gateway_core::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let sim = SimBackend::new(SimConfig {
//!     natural_length: 12..=12,
//!     ..SimConfig::zero_delay()
//! });
//! let backend: Arc<dyn Backend> = Arc::new(sim.clone());
//!
//! let request = GenerateRequest::new("sim", Prompt::Text("Tell me a story".into()), 64);
//! let counter: Arc<dyn TokenCounter> = Arc::new(ByteBound::default());
//! let guard = CancelHandle::guarded(); // dropping it cancels the request
//! let mut stream = backend.start(BackendRequest::new(request, counter), guard.handle().clone()).await.unwrap();
//!
//! let (mut text, mut order) = (String::new(), EventOrder::new());
//! while let Some(item) = stream.next().await {
//!     let event = item.unwrap();
//!     order.observe(&event).unwrap();
//!     match event {
//!         TokenEvent::Delta(d) => text.push_str(&d.text),
//!         TokenEvent::Usage(u) => assert_eq!((u.prompt(), u.completion()), (17, 12)),
//!         TokenEvent::Finished(reason) => assert_eq!(reason, FinishReason::Stop),
//!         TokenEvent::Started(_) => {}
//!     }
//! }
//! assert!(!text.is_empty());
//! assert_eq!(sim.stats().completed, 1);
//! assert_eq!(backend.pressure().inflight, 0);
//! # }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "server")]
pub mod bootstrap;
pub mod config;
pub mod engines;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod openai;
#[cfg(feature = "router")]
pub mod server;

/// The axum the [`server`] router is built on: a host mounts the
/// gateway's routes with this version (`gateway_adapters::axum::Router`),
/// whatever axum it names in its own manifest.
#[cfg(feature = "router")]
pub use axum;
pub mod sim;
