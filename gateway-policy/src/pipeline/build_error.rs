//! [`BuildError`]: why a [`GatewayBuilder`](super::GatewayBuilder) could
//! not build.

/// Why a [`GatewayBuilder`](super::GatewayBuilder) could not build: one
/// variant per mistake, each naming what it is about.
///
/// ```
/// use std::sync::Arc;
/// use gateway_core::testkit::MockBackend;
/// use gateway_policy::{BuildError, Gateway, ModelSpec, Settings};
///
/// // A backend that serves `small`, registered for `large`.
/// let (mock, _handle) = MockBackend::new("mock-0", "small");
/// let err = Gateway::builder(Settings::default())
///     .model(ModelSpec::new("large", 4096))
///     .backend(Arc::new(mock), "large", "large", None)
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, BuildError::BackendModelMismatch { .. }));
/// assert_eq!(
///     err.to_string(),
///     "invalid gateway: backend mock-0 is registered for model large (served as large), \
///      but it serves only [small]"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two models were added with one name.
    #[error("invalid gateway: model {model} added twice")]
    DuplicateModel {
        /// The name.
        model: String,
    },
    /// Two backends were added with one name (`BackendInfo::name`).
    #[error("invalid gateway: backend {backend} added twice")]
    DuplicateBackend {
        /// The name.
        backend: String,
    },
    /// Two tenants were added with one id.
    #[error("invalid gateway: tenant {tenant} added twice")]
    DuplicateTenant {
        /// The id.
        tenant: String,
    },
    /// A name refers to a model that was not added with
    /// [`GatewayBuilder::model`](super::GatewayBuilder::model).
    #[error("invalid gateway: {}", unknown_model(model, by))]
    UnknownModel {
        /// The unknown name.
        model: String,
        /// Where it was named.
        by: ModelReference,
    },
    /// A backend registered for a model it says it does not serve: its
    /// `BackendInfo::models` names neither the public model nor the name it
    /// is served as there, so every request sent to it would fail. (A
    /// backend whose `models` is empty says nothing and is not checked.)
    #[error(
        "invalid gateway: backend {backend} is registered for model {model} (served as {served_model}), but it serves only [{}]",
        .serves.join(", ")
    )]
    BackendModelMismatch {
        /// The backend's name.
        backend: String,
        /// The public model it was registered for.
        model: String,
        /// The model name it was to be sent.
        served_model: String,
        /// What the backend says it serves (`BackendInfo::models`).
        serves: Vec<String>,
    },
    /// A model with no backend: every request for it would fail.
    #[error("invalid gateway: model {model} has no backend")]
    ModelWithoutBackend {
        /// The model.
        model: String,
    },
    /// A model lists itself as one of its fallbacks.
    #[error("invalid gateway: model {model} lists itself as a fallback")]
    FallbackToItself {
        /// The model.
        model: String,
    },
    /// Capabilities were set for a backend that was not added
    /// ([`GatewayBuilder::serves`](super::GatewayBuilder::serves)).
    #[error("invalid gateway: capabilities set for unknown backend {backend}")]
    UnknownBackend {
        /// The unknown name.
        backend: String,
    },
    /// A model lists one fallback twice.
    #[error("invalid gateway: model {model} lists fallback {fallback} twice")]
    RepeatedFallback {
        /// The model.
        model: String,
        /// The fallback listed twice.
        fallback: String,
    },
}

/// Where a [`BuildError::UnknownModel`] was named.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelReference {
    /// A backend was registered for it
    /// ([`GatewayBuilder::backend`](super::GatewayBuilder::backend)).
    Backend(String),
    /// Fallbacks were set for it
    /// ([`GatewayBuilder::fallbacks`](super::GatewayBuilder::fallbacks)).
    FallbacksOf,
    /// This model lists it as a fallback.
    FallbackOf(String),
    /// An admission queue size was set for it
    /// ([`GatewayBuilder::admission_queue`](super::GatewayBuilder::admission_queue)).
    AdmissionQueue,
    /// Latency targets were set for it
    /// ([`GatewayBuilder::slo`](super::GatewayBuilder::slo)).
    Slo,
    /// Engine preferences were set for it
    /// ([`GatewayBuilder::prefer`](super::GatewayBuilder::prefer)).
    PreferenceOf,
    /// A continuation was set for it
    /// ([`GatewayBuilder::continuation`](super::GatewayBuilder::continuation)).
    Continuation,
}

/// The message of a [`BuildError::UnknownModel`].
fn unknown_model(model: &str, by: &ModelReference) -> String {
    match by {
        ModelReference::Backend(backend) => {
            format!("backend {backend} is registered for unknown model {model}")
        }
        ModelReference::FallbacksOf => format!("fallbacks set for unknown model {model}"),
        ModelReference::FallbackOf(of) => format!("model {of} falls back to unknown model {model}"),
        ModelReference::AdmissionQueue => {
            format!("admission queue size set for unknown model {model}")
        }
        ModelReference::Slo => format!("latency targets set for unknown model {model}"),
        ModelReference::PreferenceOf => {
            format!("engine preference set for unknown model {model}")
        }
        ModelReference::Continuation => format!("continuation set for unknown model {model}"),
    }
}
