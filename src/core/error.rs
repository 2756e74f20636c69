//! Errors of the event core and of its effects.

use crate::annotations::AnnotationError;

/// Why the core refused or failed a runtime request. The protocol edge maps each kind to one
/// ttrpc status code (`nri::service::to_ttrpc`); the message is what the user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A hook annotation is malformed: the create is refused with the key and field at fault.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// The core's event loop has ended (the plugin is shutting down).
    #[error("the plugin is shutting down")]
    ShuttingDown,
}

/// Why an effect could not be carried out. Never fatal to the core: it logs and goes on.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    #[error("the runtime has not configured the plugin yet")]
    NotConfigured,
    #[error("container {id} has no known init process")]
    NoInit { id: String },
    #[error("container {id}: {source}")]
    Process {
        id: String,
        source: crate::ns::Error,
    },
    #[error(transparent)]
    Gate(#[from] crate::gate::GateError),
    #[error("the PreStop gate binary is unavailable: {reason}")]
    NoGateBinary { reason: String },
    #[error("cannot write the termination message of container {id} to {path}: {source}")]
    TerminationMessage {
        id: String,
        path: String,
        source: std::io::Error,
    },
}
