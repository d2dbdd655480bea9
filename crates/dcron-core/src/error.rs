//! The one error type of dcron.

use std::time::Duration;

/// A boxed error from a backend client or a task handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, dcron_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error dcron returns.
///
/// Variants are semantic: callers and the conformance suite match on the variant, never on the
/// message text. Backends map their client's errors into it (`Unavailable` for connection loss and
/// timeouts, `Backend` for the rest) and add the key or node id they were working on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A create-only write found an existing task of that name.
    #[error("task `{name}` already exists")]
    AlreadyExists {
        /// The task name.
        name: String,
    },
    /// The task name is tombstoned (marked deleted); use `force_add_*`, `reuse_deleted_task` or
    /// `cleanup_task` first.
    #[error("task `{name}` is marked deleted")]
    Tombstoned {
        /// The task name.
        name: String,
    },
    /// The task, tombstone, node or lease does not exist.
    #[error("{what} `{name}` not found")]
    NotFound {
        /// What kind of thing was looked up (`task`, `tombstone`, `node`, `lease`).
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The registration lease or session is gone (expired, revoked or replaced): the node must
    /// register again with a new lease.
    #[error("lease of node `{node}` lost")]
    LeaseLost {
        /// The node id.
        node: String,
    },
    /// The schedule expression does not parse. The reason names the field and the rule it
    /// breaks, e.g. `invalid schedule "0 61 * * *": minute 61 is out of range 0–59`.
    #[error("invalid schedule \"{expr}\": {reason}")]
    InvalidSchedule {
        /// The expression as given.
        expr: String,
        /// Why it was refused.
        reason: String,
    },
    /// The time zone is not a known IANA zone name.
    #[error(
        "unknown time zone \"{zone}\": use an IANA zone name such as \"Europe/Berlin\", \
         \"America/New_York\" or \"UTC\""
    )]
    InvalidTimeZone {
        /// The zone as given.
        zone: String,
    },
    /// The task name breaks the naming rules (non-empty, at most 200 bytes, no control
    /// characters, no `/`).
    #[error("invalid task name {name:?}: {reason}")]
    InvalidTaskName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A request or configuration value is not acceptable (payload too large, zero TTL, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation needs something that was not configured (e.g. a dynamic task with no
    /// `task_run_fn`).
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// The node is not in a state that allows the operation (e.g. `start` after `stop`).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The registry cannot be reached right now (connection refused or lost, timeout). Retryable.
    #[error("registry unavailable: {message}")]
    Unavailable {
        /// What failed, with context.
        message: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend does not support this operation.
    #[error("operation `{operation}` is not supported by this registry")]
    Unsupported {
        /// The operation's name.
        operation: &'static str,
    },
    /// A value stored in the registry does not decode.
    #[error("corrupt value at `{key}`: {reason}")]
    Corrupt {
        /// The key (or task name) of the value.
        key: String,
        /// Why decoding failed.
        reason: String,
    },
    /// Authentication or authorisation was refused by the registry.
    #[error("access denied by the registry: {0}")]
    AccessDenied(String),
    /// A task handler returned an error.
    #[error("task `{task}` failed: {source}")]
    Task {
        /// The task name.
        task: String,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// A task handler panicked.
    #[error("task `{task}` panicked: {message}")]
    Panicked {
        /// The task name.
        task: String,
        /// The panic message.
        message: String,
    },
    /// A task handler ran longer than its timeout and was cancelled.
    #[error("task `{task}` timed out after {timeout:?}")]
    Timeout {
        /// The task name.
        task: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// Any other backend failure.
    #[error("{backend} error: {message}")]
    Backend {
        /// The backend's name (`redis`, `etcd`, `consul`, `zookeeper`, `memory`, …).
        backend: &'static str,
        /// What failed, with context.
        message: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed (the registry was unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Builds an [`Error::Unavailable`] with a message and no source.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// Builds an [`Error::Backend`] from a backend name, a message and a client error.
    pub fn backend(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Builds an [`Error::NotFound`] for a task name.
    pub fn task_not_found(name: impl Into<String>) -> Self {
        Error::NotFound {
            what: "task",
            name: name.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(Error::unavailable("down").is_retryable());
        assert!(!Error::AlreadyExists { name: "a".into() }.is_retryable());
        assert!(!Error::backend("memory", "x", "y").is_retryable());
    }
}
