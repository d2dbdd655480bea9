//! Mapping `etcd-client` errors into [`dcron_core::Error`], with the key or operation as context.

use std::fmt::Display;

use dcron_core::Error;
use etcd_client::Error as EtcdError;
use tonic::Code;

/// The backend name used in errors, logs and metrics.
pub(crate) const BACKEND: &str = "etcd";

/// Maps a client error; `context` names the operation and key (`put_task /dcron/tasks/x`).
///
/// Connection loss, timeouts and an overloaded or leaderless cluster are [`Error::Unavailable`]
/// (retryable); refused credentials and missing permissions are [`Error::AccessDenied`];
/// everything else is [`Error::Backend`].
pub(crate) fn map_err(e: EtcdError, context: impl Display) -> Error {
    // A refused certificate is a configuration error, never cured by retrying.
    if let Some(why) = certificate_failure(&e) {
        let detail = status(&e).map_or_else(|| e.to_string(), |s| s.message().to_string());
        return Error::AccessDenied(format!("{BACKEND}: {context}: {why} ({detail})"));
    }
    match &e {
        EtcdError::GRpcStatus(status) => {
            let message = status.message();
            match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Aborted => unavailable(e, context),
                Code::Unauthenticated | Code::PermissionDenied => {
                    Error::AccessDenied(format!("{context}: {message}"))
                }
                // etcd answers a wrong user name or password, or a missing token while
                // authentication is enabled, with InvalidArgument.
                Code::InvalidArgument
                    if message.contains("authentication failed")
                        || message.contains("user name is empty") =>
                {
                    Error::AccessDenied(format!("{context}: {message}"))
                }
                // A connection that broke mid-request surfaces as Unknown with a transport cause.
                Code::Unknown if is_transport_message(message) => unavailable(e, context),
                _ => backend(e, context),
            }
        }
        EtcdError::TransportError(_) | EtcdError::IoError(_) => unavailable(e, context),
        // Both are raised when a stream ends before its first answer: the connection went away.
        EtcdError::WatchError(_) | EtcdError::LeaseKeepAliveError(_) => unavailable(e, context),
        EtcdError::InvalidArgs(_) | EtcdError::InvalidUri(_) | EtcdError::EndpointError(_) => {
            Error::InvalidArgument(format!("{context}: {e}"))
        }
        _ => backend(e, context),
    }
}

fn unavailable(e: EtcdError, context: impl Display) -> Error {
    Error::Unavailable {
        message: format!("{BACKEND}: {context}: {e}"),
        source: Some(Box::new(e)),
    }
}

fn backend(e: EtcdError, context: impl Display) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("{context}: {e}"),
        source: Some(Box::new(e)),
    }
}

fn is_transport_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "transport",
        "connection",
        "broken pipe",
        "h2 protocol",
        "timeout",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// What went wrong in a TLS handshake, in words, when the error (whose text includes rustls's)
/// says it was a certificate: the server's was not trusted, or ours was refused.
fn certificate_failure(e: &EtcdError) -> Option<&'static str> {
    let text = match status(e) {
        Some(s) => format!("{} {e}", s.message()),
        None => e.to_string(),
    };
    certificate_failure_in(&text)
}

/// [`certificate_failure`] on an error's text.
pub(crate) fn certificate_failure_in(text: &str) -> Option<&'static str> {
    if text.contains("invalid peer certificate") {
        Some(
            "TLS: the server certificate failed verification (not signed by the configured CA, \
             expired, or not valid for the endpoint's host or the configured domain)",
        )
    } else if text.contains("fatal alert")
        && ["Certificate", "UnknownCA", "HandshakeFailure"]
            .iter()
            .any(|alert| text.contains(alert))
    {
        Some(
            "TLS: the server refused the client certificate (none given, or not signed by a \
             CA the server trusts)",
        )
    } else {
        None
    }
}

fn status(e: &EtcdError) -> Option<&tonic::Status> {
    match e {
        EtcdError::GRpcStatus(s) => Some(s),
        _ => None,
    }
}

/// Whether the server said the lease does not exist (expired or revoked).
pub(crate) fn is_lease_not_found(e: &EtcdError) -> bool {
    match e {
        EtcdError::GRpcStatus(s) => {
            s.code() == Code::NotFound && s.message().contains("lease not found")
        }
        EtcdError::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Whether the auth token was refused as unknown or expired (simple tokens are lost when the
/// server restarts): authenticating again fixes it.
pub(crate) fn is_invalid_auth_token(e: &EtcdError) -> bool {
    status(e).is_some_and(|s| {
        s.code() == Code::Unauthenticated && s.message().contains("invalid auth token")
    })
}

/// Whether the token was refused because users or roles changed after it was issued
/// (`revision of auth store is old`): authenticating again fixes it.
pub(crate) fn is_auth_old_revision(e: &EtcdError) -> bool {
    status(e).is_some_and(|s| s.message().contains("revision of auth store is old"))
}

/// Whether the server runs without authentication although credentials were given.
pub(crate) fn is_auth_not_enabled(e: &EtcdError) -> bool {
    status(e).is_some_and(|s| s.message().contains("authentication is not enabled"))
}

/// Whether the request carried no token although the server requires one (authentication was
/// enabled after this client connected).
pub(crate) fn is_token_missing(e: &EtcdError) -> bool {
    status(e).is_some_and(|s| s.message().contains("user name is empty"))
}

/// Whether a read asked for a revision that has been compacted away.
pub(crate) fn is_compacted(e: &EtcdError) -> bool {
    status(e).is_some_and(|s| s.code() == Code::OutOfRange && s.message().contains("compacted"))
}

/// Whether the server refused a transaction with more operations than its `--max-txn-ops`.
pub(crate) fn is_too_many_ops(e: &EtcdError) -> bool {
    status(e).is_some_and(|s| {
        s.code() == Code::InvalidArgument && s.message().contains("too many operations")
    })
}

/// An error for a response that lacks what every etcd response carries.
pub(crate) fn malformed(context: impl Display, what: &str) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("{context}: malformed response: {what}"),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(code: Code, msg: &str) -> EtcdError {
        EtcdError::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn connection_problems_are_unavailable() {
        for e in [
            grpc(Code::Unavailable, "connection refused"),
            grpc(Code::DeadlineExceeded, "etcdserver: request timed out"),
            grpc(Code::Cancelled, "Timeout expired"),
            grpc(Code::Unknown, "transport error"),
            EtcdError::WatchError("failed to create watch".into()),
        ] {
            assert!(map_err(e, "op").is_retryable());
        }
    }

    #[test]
    fn auth_problems_are_access_denied() {
        for e in [
            grpc(
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            grpc(Code::PermissionDenied, "etcdserver: permission denied"),
            grpc(Code::InvalidArgument, "etcdserver: user name is empty"),
            grpc(Code::Unauthenticated, "etcdserver: invalid auth token"),
        ] {
            assert!(matches!(map_err(e, "op"), Error::AccessDenied(_)));
        }
    }

    #[test]
    fn refused_certificates_are_access_denied_naming_the_cause() {
        let mapped = map_err(
            grpc(Code::Unavailable, "invalid peer certificate: UnknownIssuer"),
            "connect",
        );
        assert!(
            matches!(&mapped, Error::AccessDenied(m) if m.contains("server certificate failed verification")),
            "{mapped:?}"
        );
        let mapped = map_err(
            grpc(Code::Unknown, "received fatal alert: CertificateRequired"),
            "connect",
        );
        assert!(
            matches!(&mapped, Error::AccessDenied(m) if m.contains("refused the client certificate")),
            "{mapped:?}"
        );
    }

    #[test]
    fn other_errors_are_backend_errors_with_context() {
        let e = map_err(
            grpc(Code::InvalidArgument, "etcdserver: too many operations"),
            "put_task /ns/tasks/x",
        );
        match e {
            Error::Backend {
                backend, message, ..
            } => {
                assert_eq!(backend, "etcd");
                assert!(message.contains("/ns/tasks/x"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn classifiers() {
        assert!(is_lease_not_found(&grpc(
            Code::NotFound,
            "etcdserver: requested lease not found"
        )));
        assert!(is_lease_not_found(&EtcdError::LeaseKeepAliveError(
            "lease not found".into()
        )));
        assert!(!is_lease_not_found(&grpc(Code::NotFound, "other")));
        assert!(is_invalid_auth_token(&grpc(
            Code::Unauthenticated,
            "etcdserver: invalid auth token"
        )));
        assert!(is_auth_old_revision(&grpc(
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old"
        )));
        assert!(is_too_many_ops(&grpc(
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )));
        assert!(!is_too_many_ops(&grpc(Code::InvalidArgument, "other")));
        assert!(is_compacted(&grpc(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )));
    }
}
