//! Mapping of client errors into [`dcron_core::Error`].

use dcron_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::BACKEND;

/// Maps a Redis client error; `context` says what was being done (operation, key, node).
pub(crate) fn from_redis(err: RedisError, context: &str) -> Error {
    let code = err.code().unwrap_or_default().to_owned();
    let message = format!("redis: {context}: {err}");
    // A refused certificate is a configuration error, never cured by retrying.
    #[cfg(feature = "tls")]
    if let Some(why) = crate::tls::certificate_failure(&message) {
        return Error::AccessDenied(format!("redis: {context}: {why} ({err})"));
    }
    if err.kind() == ErrorKind::AuthenticationFailed
        || err.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || matches!(code.as_str(), "WRONGPASS" | "NOAUTH" | "NOPERM")
        // Redis answers a large command from a client that never authenticated with a
        // protocol error ("unauthenticated multibulk/bulk length") instead of NOAUTH.
        || err.detail().is_some_and(|d| d.contains("unauthenticated"))
    {
        return Error::AccessDenied(message);
    }
    let transient_server = matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::ClusterDown
        )
    ) || matches!(code.as_str(), "MISCONF" | "BUSY");
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || transient_server
    {
        return Error::Unavailable {
            message,
            source: Some(Box::new(err)),
        };
    }
    Error::Backend {
        backend: BACKEND,
        message,
        source: Some(Box::new(err)),
    }
}

/// Maps an error of the connection pool.
pub(crate) fn from_pool(err: deadpool_redis::PoolError, context: &str) -> Error {
    use deadpool_redis::PoolError;
    match err {
        PoolError::Backend(e) => from_redis(e, context),
        PoolError::Timeout(kind) => Error::unavailable(format!(
            "redis: {context}: no connection within the timeout ({kind:?})"
        )),
        PoolError::Closed => Error::unavailable(format!("redis: {context}: pool closed")),
        other => Error::Backend {
            backend: BACKEND,
            message: format!("redis: {context}: {other}"),
            source: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_unavailable() {
        let err = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let mapped = from_redis(err, "op");
        assert!(mapped.is_retryable(), "{mapped:?}");
        let err = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(from_redis(err, "op").is_retryable());
    }

    #[test]
    fn auth_errors_are_access_denied() {
        let err = RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS"));
        assert!(matches!(from_redis(err, "op"), Error::AccessDenied(_)));
        let err = redis::make_extension_error("WRONGPASS".into(), Some("invalid".into()));
        assert!(matches!(from_redis(err, "op"), Error::AccessDenied(_)));
        let err = RedisError::from((
            ErrorKind::Client,
            "refused",
            "Protocol error: unauthenticated multibulk length".to_string(),
        ));
        assert!(matches!(from_redis(err, "op"), Error::AccessDenied(_)));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn refused_certificates_are_access_denied() {
        let err = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        let mapped = from_redis(err, "ping");
        assert!(
            matches!(&mapped, Error::AccessDenied(m) if m.contains("server certificate failed verification")),
            "{mapped:?}"
        );
    }

    #[test]
    fn other_errors_are_backend_errors() {
        let err = RedisError::from((ErrorKind::Parse, "bad reply"));
        assert!(matches!(
            from_redis(err, "op"),
            Error::Backend {
                backend: "redis",
                ..
            }
        ));
    }

    #[test]
    fn pool_timeouts_are_unavailable() {
        let err = deadpool_redis::PoolError::Timeout(deadpool_redis::TimeoutType::Wait);
        assert!(from_pool(err, "op").is_retryable());
    }
}
