//! What every simulator shares around its wire: the handle a test holds
//! ([`Sim`]: start, the accessors and the [`EngineProbe`] impl, written
//! once) and the state its server and its handle share ([`SimCore`]: the
//! requests received, the aborts counted per phase and logged, the
//! requests in flight, the fault script and the arrival count). What
//! differs per engine (options, faults, the request and abort records,
//! any further records, the routes) comes with its [`Engine`]:
//! [`crate::vllm::Vllm`], [`crate::sglang::Sglang`],
//! [`crate::triton::Triton`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gateway_core::testkit::conformance::EngineProbe;
use gateway_core::{AbortCounts, EnginePhase, RequestId};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::http::HttpRequest;
use crate::slots::{Live, LiveTable};

/// One engine a [`Sim`] reproduces: its types and its routes.
pub trait Engine: fmt::Debug + Sized + Send + Sync + 'static {
    /// Its name in messages (`vLLM`).
    const NAME: &'static str;
    /// Whether `/metrics` has a listener of its own (Triton's metrics
    /// port), served by the same routes.
    const METRICS_LISTENER: bool = false;
    /// How the simulator behaves.
    type Options: fmt::Debug + Send + Sync + 'static;
    /// What a scripted generation request does differently.
    type Fault: Clone + fmt::Debug + Send + Sync + 'static;
    /// One request the simulator received.
    type Record: Clone + fmt::Debug + Send + Sync + 'static;
    /// One abort the simulator counted.
    type Abort: Clone + fmt::Debug + Send + Sync + 'static;
    /// What else the simulator records.
    type Extra: Default + fmt::Debug + Send + 'static;

    /// The options the shared core reads.
    fn basics(options: &Self::Options) -> Basics<'_, Self::Fault>;

    /// Whether `record` is a generation request.
    fn is_generation(record: &Self::Record) -> bool;

    /// Serves the connections of `listener` with the engine's routes until
    /// `stop`.
    fn serve(core: &Arc<SimCore<Self>>, listener: TcpListener, stop: &CancellationToken);
}

/// The options of an engine that the shared core reads.
#[derive(Debug, Clone, Copy)]
pub struct Basics<'a, F> {
    /// Requests running at once.
    pub slots: usize,
    /// KV-cache size in tokens.
    pub kv_capacity_tokens: u64,
    /// Report a phase through [`EngineProbe::phase`] only once `/metrics`
    /// has shown it to a finished scrape.
    pub lagged_probe: bool,
    /// Faults of the arriving generation requests, in order; then none.
    pub script: &'a [F],
}

/// One request a simulator received (SGLang, Triton; vLLM's
/// [`crate::vllm::Recorded`] has the prompt tokens instead of the time).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Headers, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: String,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// `request`, arrived now.
    pub(crate) fn of(request: &HttpRequest) -> Recorded {
        Recorded {
            method: request.method.clone(),
            path: request.path.clone(),
            headers: request.headers.clone(),
            body: String::from_utf8_lossy(&request.body).into_owned(),
            at: Instant::now(),
        }
    }
}

/// What a simulator records, behind [`SimCore`]'s lock.
#[derive(Debug)]
pub(crate) struct State<E: Engine> {
    /// The requests in flight and the scrape count.
    pub(crate) live: LiveTable,
    /// The aborts counted, per phase.
    pub(crate) aborts: AbortCounts,
    /// Every abort counted, in order.
    pub(crate) abort_log: Vec<E::Abort>,
    /// Every request received (that the engine records), in order.
    pub(crate) requests: Vec<E::Record>,
    /// The faults of the generation requests still to come.
    script: VecDeque<E::Fault>,
    /// Generation requests arrived.
    arrivals: u64,
    /// Requests that finished normally.
    pub(crate) completed: u64,
    /// The engine's own records.
    pub(crate) extra: E::Extra,
}

/// The state a simulator's server and its handle share; opaque outside
/// this crate.
#[derive(Debug)]
pub struct SimCore<E: Engine> {
    /// How the simulator behaves.
    pub(crate) options: E::Options,
    /// The slots a request runs in (FIFO; never closed).
    pub(crate) slots: Arc<Semaphore>,
    /// When the simulator started.
    pub(crate) started: Instant,
    state: Mutex<State<E>>,
}

impl<E: Engine> SimCore<E> {
    fn new(options: E::Options) -> SimCore<E> {
        let basics = E::basics(&options);
        let state = State {
            live: LiveTable::default(),
            aborts: AbortCounts::default(),
            abort_log: Vec::new(),
            requests: Vec::new(),
            script: basics.script.iter().cloned().collect(),
            arrivals: 0,
            completed: 0,
            extra: E::Extra::default(),
        };
        SimCore {
            slots: Arc::new(Semaphore::new(basics.slots)),
            started: Instant::now(),
            state: Mutex::new(state),
            options,
        }
    }

    /// The records (a poisoned lock is taken as it is).
    pub(crate) fn state(&self) -> MutexGuard<'_, State<E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request that is not a generation.
    pub(crate) fn record(&self, record: E::Record) {
        self.state().requests.push(record);
    }

    /// Records a generation request and gives its fault (none once the
    /// script is done) and its arrival number (from 0).
    pub(crate) fn arrive(&self, record: E::Record) -> (Option<E::Fault>, u64) {
        let mut st = self.state();
        st.requests.push(record);
        st.arrivals += 1;
        (st.script.pop_front(), st.arrivals - 1)
    }

    /// Moves `id` (if still in flight) to `phase`.
    pub(crate) fn set_phase(&self, id: &str, phase: EnginePhase) {
        self.state().live.set_phase(id, phase);
    }

    /// Running, waiting and KV use.
    pub(crate) fn gauges(&self) -> (u64, u64, f64) {
        let capacity = E::basics(&self.options).kv_capacity_tokens;
        self.state().live.gauges(capacity)
    }

    /// Whether the waiting requests reach `max` (no bound: never).
    pub(crate) fn queue_full(&self, max: Option<usize>) -> bool {
        max.is_some_and(|max| {
            let (_, waiting, _) = self.gauges();
            waiting >= max as u64
        })
    }

    /// Ends `id` normally if it is still in flight.
    pub(crate) fn finish(&self, id: &str) {
        let mut st = self.state();
        if st.live.remove(id).is_some() {
            st.completed += 1;
        }
    }

    /// Ends `id` as aborted if it is still in flight: `log` gives, from the
    /// request as it was, the phase to count and the record to log.
    /// Returns whether it was in flight (nothing is counted otherwise).
    pub(crate) fn abort_with(
        &self,
        id: &str,
        log: impl FnOnce(&Live) -> (EnginePhase, E::Abort),
    ) -> bool {
        let mut st = self.state();
        let Some(live) = st.live.remove(id) else {
            return false;
        };
        let (phase, record) = log(&live);
        st.aborts.add(phase);
        st.abort_log.push(record);
        true
    }
}

/// A running simulator of engine `E` on `127.0.0.1`; it stops when
/// dropped. [`crate::vllm::VllmSim`], [`crate::sglang::SglangSim`] and
/// [`crate::triton::TritonSim`] name the three.
#[derive(Debug)]
pub struct Sim<E: Engine> {
    pub(crate) core: Arc<SimCore<E>>,
    addr: SocketAddr,
    /// The metrics listener's address (the main one but for Triton).
    pub(crate) metrics_addr: SocketAddr,
    _stop: DropGuard,
}

impl<E: Engine> Sim<E> {
    /// Starts a simulator on `127.0.0.1:0` (Triton: and its metrics
    /// listener), for tests.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound ([`Sim::try_start`] returns that
    /// error instead).
    #[expect(clippy::panic, reason = "a test fixture: no port, no test")]
    pub async fn start(options: E::Options) -> Arc<Sim<E>> {
        match Self::try_start(options).await {
            Ok(sim) => sim,
            Err(e) => panic!(
                "the {} simulator could not listen on 127.0.0.1:0: {e}",
                E::NAME
            ),
        }
    }

    /// Starts a simulator on `127.0.0.1:0` (Triton: and its metrics
    /// listener); it runs until dropped.
    ///
    /// # Errors
    ///
    /// A listener's bind error.
    pub async fn try_start(options: E::Options) -> io::Result<Arc<Sim<E>>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let metrics = if E::METRICS_LISTENER {
            Some(TcpListener::bind("127.0.0.1:0").await?)
        } else {
            None
        };
        let addr = listener.local_addr()?;
        let metrics_addr = match &metrics {
            Some(metrics) => metrics.local_addr()?,
            None => addr,
        };
        let core = Arc::new(SimCore::new(options));
        let stop = CancellationToken::new();
        E::serve(&core, listener, &stop);
        if let Some(metrics) = metrics {
            E::serve(&core, metrics, &stop);
        }
        Ok(Arc::new(Sim {
            core,
            addr,
            metrics_addr,
            _stop: stop.drop_guard(),
        }))
    }

    /// `http://127.0.0.1:<port>` (Triton: its HTTP port).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The aborts counted so far, per phase.
    pub fn abort_counts(&self) -> AbortCounts {
        self.core.state().aborts
    }

    /// Every abort counted, in order.
    pub fn abort_log(&self) -> Vec<E::Abort> {
        self.core.state().abort_log.clone()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<E::Record> {
        self.core.state().requests.clone()
    }

    /// The generation requests received, in order (vLLM: the `POST`s;
    /// SGLang: `/generate` and `/v1/...`; Triton: `generate_stream`).
    pub fn generations(&self) -> Vec<E::Record> {
        self.requests()
            .into_iter()
            .filter(E::is_generation)
            .collect()
    }

    /// The real phase of a live request (ignores `lagged_probe`).
    pub fn phase_now(&self, id: &str) -> Option<EnginePhase> {
        self.core.state().live.phase(id)
    }

    /// Requests that finished normally.
    pub fn completed(&self) -> u64 {
        self.core.state().completed
    }

    /// Running, waiting and KV use, as `/metrics` would say now.
    pub fn gauges(&self) -> (u64, u64, f64) {
        self.core.gauges()
    }

    /// How many `/metrics` requests arrived.
    pub fn scrapes(&self) -> u64 {
        self.core.state().live.scrapes()
    }
}

impl<E: Engine> EngineProbe for Sim<E> {
    fn aborts(&self) -> AbortCounts {
        self.abort_counts()
    }

    fn phase(&self, id: &RequestId) -> Option<EnginePhase> {
        let lagged = E::basics(&self.core.options).lagged_probe;
        self.core.state().live.probed_phase(id.as_str(), lagged)
    }
}
