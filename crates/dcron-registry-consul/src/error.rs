//! Typed errors: every answer of the agent that is not a success, named by operation.

use dcron_core::Error;

use crate::client::BACKEND;

/// An answer of the Consul agent that is not a success: the dcron operation that sent the
/// request, what it was about, the HTTP status and the agent's own message.
///
/// It is the `source` of the [`dcron_core::Error`] the registry returns (or its message, for
/// [`Error::AccessDenied`]), so callers can downcast to it:
///
/// ```
/// use dcron_registry_consul::AgentError;
///
/// fn status_of(e: &dcron_core::Error) -> Option<u16> {
///     std::error::Error::source(e)?.downcast_ref::<AgentError>()?.status()
/// }
/// # assert_eq!(status_of(&dcron_core::Error::unavailable("x")), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentError {
    operation: &'static str,
    subject: String,
    status: Option<u16>,
    message: String,
}

impl AgentError {
    /// An error of `operation` about `subject` (a key, task name, node id or session id).
    pub(crate) fn new(
        operation: &'static str,
        subject: impl Into<String>,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> Self {
        AgentError {
            operation,
            subject: subject.into(),
            status,
            message: message.into(),
        }
    }

    /// The registry operation that sent the request (`put_task`, `claim`, `register`, …).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// What the operation was about: a task name, node id, key or session id.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The HTTP status of the answer (409 for a failed transaction operation).
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The agent's message (the body of its answer, or the `What` of a failed transaction
    /// operation).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the agent refused the request for its ACL token.
    pub fn is_access_denied(&self) -> bool {
        matches!(self.status, Some(401 | 403)) || denied_message(&self.message)
    }

    /// Whether the agent said it cannot serve right now (no leader, servers unreachable, rate
    /// limited, overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(self.status, Some(429 | 502 | 503 | 504))
            || (self.status == Some(500) && transient_message(&self.message))
    }

    /// Maps into the dcron error: `AccessDenied`, `Unavailable` (transient) or `Backend`.
    pub(crate) fn into_error(self) -> Error {
        if self.is_access_denied() {
            return Error::AccessDenied(self.to_string());
        }
        if self.is_transient() {
            return Error::Unavailable {
                message: self.to_string(),
                source: Some(Box::new(self)),
            };
        }
        Error::Backend {
            backend: BACKEND,
            message: self.to_string(),
            source: Some(Box::new(self)),
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "consul {} `{}`: ", self.operation, self.subject)?;
        match self.status {
            Some(status) => write!(f, "agent answered {status}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for AgentError {}

/// Whether an agent message is an ACL refusal (`Permission denied`, `ACL not found`, …).
pub(crate) fn denied_message(message: &str) -> bool {
    message.contains("Permission denied")
        || message.contains("ACL not found")
        || message.contains("ACL support disabled")
}

/// Whether a 500 message says the cluster cannot serve right now.
fn transient_message(message: &str) -> bool {
    [
        "No cluster leader",
        "No known Consul servers",
        "No path to datacenter",
        "Remote DC has no server currently reachable",
        "rpc error making call: EOF",
        "i/o timeout",
        "connection reset",
        "leadership lost",
        "raft is already shutdown",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// How a failed operation of a rolled-back transaction failed, from its `What`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The operation's own condition did not hold (a check failed, a `cas` index was stale, a
    /// `get` found nothing, a lock was held): the expected answer to a conditional write.
    Condition,
    /// A `lock` refused during a lock-delay.
    LockDelay,
    /// The ACL token may not do this.
    Denied,
    /// Anything else (an unknown verb, a missing session, a storage error).
    Other,
}

impl Failure {
    /// Classifies a `What` of Consul's transaction errors (the messages of
    /// `agent/consul/state/txn.go`, `kvs.go` and `txn_endpoint.go`).
    pub(crate) fn of(what: &str) -> Failure {
        if denied_message(what) {
            Failure::Denied
        } else if what.contains("due to lock delay") {
            Failure::LockDelay
        } else if [
            "index is stale",
            "doesn't exist",
            "\" exists",
            "failed index check",
            "failed session check",
            "lock is already held",
            "lock isn't held",
        ]
        .iter()
        .any(|m| what.contains(m))
        {
            Failure::Condition
        } else {
            Failure::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages_map_to_semantic_errors() {
        let denied = AgentError::new("get_task", "t", Some(403), "Permission denied");
        assert!(matches!(denied.into_error(), Error::AccessDenied(m) if m.contains("get_task")));
        let acl = AgentError::new(
            "claim",
            "t",
            Some(409),
            "Permission denied: token lacks key:write",
        );
        assert!(matches!(acl.into_error(), Error::AccessDenied(_)));
        for (status, msg) in [(503, ""), (429, "rate limited"), (500, "No cluster leader")] {
            assert!(AgentError::new("list_nodes", "ns", Some(status), msg)
                .into_error()
                .is_retryable());
        }
        let other = AgentError::new(
            "register",
            "n1",
            Some(500),
            "Invalid Session TTL '1000000000'",
        );
        match other.into_error() {
            Error::Backend {
                backend,
                message,
                source,
            } => {
                assert_eq!(backend, "consul");
                assert!(message.contains("register `n1`"), "{message}");
                assert!(message.contains("500") && message.contains("Invalid Session TTL"));
                let source = source.expect("source");
                let agent = source.downcast_ref::<AgentError>().expect("AgentError");
                assert_eq!(agent.status(), Some(500));
                assert_eq!(agent.operation(), "register");
            }
            e => panic!("expected Backend, got {e:?}"),
        }
    }

    #[test]
    fn transaction_failures_are_classified_by_their_message() {
        for what in [
            "key \"ns/tasks/tomb/x\" exists",
            "failed to set key \"k\", index is stale",
            "key \"k\" doesn't exist",
            "failed to check index, key \"k\" doesn't exist",
            "failed index check for key \"k\", current modify index 7 != 3",
            "failed session check for key \"k\", current session \"a\" != \"b\"",
            "failed to lock key \"k\", lock is already held",
        ] {
            assert_eq!(Failure::of(what), Failure::Condition, "{what}");
        }
        assert_eq!(Failure::of("Permission denied"), Failure::Denied);
        assert_eq!(
            Failure::of("failed to lock key \"k\" due to lock delay"),
            Failure::LockDelay
        );
        assert_eq!(Failure::of("unknown KV verb \"x\""), Failure::Other);
        assert_eq!(Failure::of("invalid session \"s\""), Failure::Other);
    }
}
