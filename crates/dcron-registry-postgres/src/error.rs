//! Mapping the client's errors into [`dcron_core::Error`].
//!
//! | what failed | `dcron_core::Error` |
//! |---|---|
//! | connection refused, reset or closed; I/O; timeouts; pool exhausted | `Unavailable` (retryable) |
//! | SQLSTATE class `08` (connection), `53` (resources), `57` (operator intervention: shutdown, cancel), `40001`/`40P01` (serialization, deadlock), `25006` (read-only standby), `55P03` (lock not available) | `Unavailable` |
//! | SQLSTATE class `28` (authorization), `42501` (privilege), a missing password | `AccessDenied` |
//! | TLS handshake or certificate refused | `Backend` (a configuration problem: not retried) |
//! | anything else | `Backend` |

use std::error::Error as _;

use dcron_core::Error;
use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

/// The backend name in errors and logs.
pub(crate) const BACKEND: &str = "postgres";

/// Maps a client error, adding what was being done.
pub(crate) fn map_pg(context: &str, e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let class = &code.code()[..2.min(code.code().len())];
        let message = format!("{context}: {} ({})", db.message(), code.code());
        return if matches!(class, "08" | "53" | "57")
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            Error::Unavailable {
                message,
                source: Some(Box::new(e)),
            }
        } else if class == "28" || *code == SqlState::INSUFFICIENT_PRIVILEGE {
            Error::AccessDenied(message)
        } else {
            Error::Backend {
                backend: BACKEND,
                message,
                source: Some(Box::new(e)),
            }
        };
    }
    let text = e.to_string();
    if e.is_closed() {
        return Error::Unavailable {
            message: format!("{context}: connection closed"),
            source: Some(Box::new(e)),
        };
    }
    if tls_failure(&e) {
        return Error::Backend {
            backend: BACKEND,
            message: format!("{context}: TLS handshake refused: {}", chain(&e)),
            source: Some(Box::new(e)),
        };
    }
    // The server asked for a password and none was configured.
    if text == "authentication error" || chain(&e).ends_with("password missing") {
        return Error::AccessDenied(format!("{context}: {}", chain(&e)));
    }
    if has_io_source(&e) || text.starts_with("timeout") || text.starts_with("error connecting") {
        return Error::Unavailable {
            message: format!("{context}: {}", chain(&e)),
            source: Some(Box::new(e)),
        };
    }
    Error::Backend {
        backend: BACKEND,
        message: format!("{context}: {}", chain(&e)),
        source: Some(Box::new(e)),
    }
}

/// Maps a pool error: a timeout or a closed pool is `Unavailable`.
pub(crate) fn map_pool(context: &str, e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => map_pg(context, e),
        PoolError::Timeout(kind) => Error::unavailable(format!(
            "{context}: no database connection within the timeout ({kind:?})"
        )),
        PoolError::Closed => Error::unavailable(format!("{context}: the pool is closed")),
        PoolError::NoRuntimeSpecified => Error::Backend {
            backend: BACKEND,
            message: format!("{context}: the pool has no runtime"),
            source: None,
        },
        PoolError::PostCreateHook(e) => Error::Backend {
            backend: BACKEND,
            message: format!("{context}: connection set-up failed: {e}"),
            source: None,
        },
    }
}

/// The error and its sources, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn has_io_source(e: &tokio_postgres::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Whether the TLS layer refused the server (certificate, name, protocol).
fn tls_failure(e: &tokio_postgres::Error) -> bool {
    if e.to_string() == "error performing TLS handshake" {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// A timeout of one registry call.
pub(crate) fn timed_out(context: &str, after: std::time::Duration) -> Error {
    Error::unavailable(format!("{context}: no answer within {after:?}"))
}

/// A value read back that is not what the schema promises.
pub(crate) fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        key: key.into(),
        reason: reason.into(),
    }
}
