//! Test support (feature `testkit`): a scriptable [`MockBackend`], an
//! in-memory [`TestLedger`], and the backend [`conformance`] suite (with
//! feature `testkit`, [`LiveRequests`](crate::LiveRequests) is an
//! [`EngineProbe`](conformance::EngineProbe)).
//!
//! Run the suite from your backend's tests:
//!
//! ```no_run
//! # use gateway_core::testkit::conformance::{self, ConformanceConfig, ConformanceTarget};
//! # async fn check(my_target: &dyn ConformanceTarget) {
//! let report = conformance::run(my_target, &ConformanceConfig::default()).await;
//! report.assert_passed();
//! # }
//! ```

pub mod bench;
pub mod conformance;
mod ledger;
mod mock;
mod mock_target;

pub use ledger::{Settled, TestLedger};
pub use mock::{MockBackend, MockHandle, Script, Step};
pub use mock_target::MockTarget;
