//! [`CliError`]: every failure of `dcronctl`, with the exit code scripts can rely on.

use std::fmt;

use crate::secret::Secrets;

/// Exit code of a successful command.
pub const EXIT_OK: i32 = 0;
/// Exit code when the operation failed (the registry reported an error, access was denied, …).
pub const EXIT_FAILED: i32 = 1;
/// Exit code of a usage error: bad flags, bad URL, bad cron, bad zone, bad task name.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the registry cannot be reached (connection refused, timeout).
pub const EXIT_UNREACHABLE: i32 = 3;
/// Exit code when the task (or its tombstone) does not exist.
pub const EXIT_NOT_FOUND: i32 = 4;
/// Exit code of a conflict: the task already exists or is marked deleted.
pub const EXIT_CONFLICT: i32 = 5;

/// The class of a failure; it decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The operation failed ([`EXIT_FAILED`]).
    Failed,
    /// The command line or one of its values is wrong ([`EXIT_USAGE`]).
    Usage,
    /// The registry cannot be reached ([`EXIT_UNREACHABLE`]).
    Unreachable,
    /// The named task does not exist ([`EXIT_NOT_FOUND`]).
    NotFound,
    /// The task already exists or is marked deleted ([`EXIT_CONFLICT`]).
    Conflict,
}

impl ErrorKind {
    /// The process exit code for this kind of failure.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Failed => EXIT_FAILED,
            ErrorKind::Usage => EXIT_USAGE,
            ErrorKind::Unreachable => EXIT_UNREACHABLE,
            ErrorKind::NotFound => EXIT_NOT_FOUND,
            ErrorKind::Conflict => EXIT_CONFLICT,
        }
    }
}

/// A failure of a `dcronctl` command: a kind (the exit code) and a one-line message.
///
/// Messages never contain credentials: errors built from registry errors go through
/// [`CliError::scrubbed`] before they are printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliError {
    kind: ErrorKind,
    message: String,
}

impl CliError {
    /// An error of `kind` with `message` (newlines are folded into spaces).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message: String = message.into();
        let message = message
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        CliError { kind, message }
    }

    /// A usage error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(ErrorKind::Usage, message)
    }

    /// A failed operation (exit code 1).
    pub fn failed(message: impl Into<String>) -> Self {
        CliError::new(ErrorKind::Failed, message)
    }

    /// An unreachable registry (exit code 3).
    pub fn unreachable(message: impl Into<String>) -> Self {
        CliError::new(ErrorKind::Unreachable, message)
    }

    /// An unknown task (exit code 4).
    pub fn not_found(message: impl Into<String>) -> Self {
        CliError::new(ErrorKind::NotFound, message)
    }

    /// A conflict (exit code 5).
    pub fn conflict(message: impl Into<String>) -> Self {
        CliError::new(ErrorKind::Conflict, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }

    /// The one-line message (without the `dcronctl: ` prefix).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with every known secret replaced by `***`.
    pub fn scrubbed(self, secrets: &Secrets) -> Self {
        CliError {
            kind: self.kind,
            message: secrets.scrub(&self.message),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<dcron_core::Error> for CliError {
    fn from(err: dcron_core::Error) -> Self {
        use dcron_core::Error as E;
        match err {
            E::AlreadyExists { name } => CliError::conflict(format!(
                "task `{name}` already exists (force-add replaces it)"
            )),
            E::Tombstoned { name } => CliError::conflict(format!(
                "task `{name}` is marked deleted (reuse, force-add or cleanup it first)"
            )),
            E::NotFound { what: "task", name } => {
                CliError::not_found(format!("unknown task `{name}`"))
            }
            E::NotFound {
                what: "tombstone",
                name,
            } => CliError::not_found(format!("task `{name}` is not marked deleted")),
            E::NotFound { what, name } => CliError::not_found(format!("{what} `{name}` not found")),
            e @ (E::InvalidSchedule { .. }
            | E::InvalidTimeZone { .. }
            | E::InvalidTaskName { .. }
            | E::InvalidArgument(_)) => CliError::usage(e.to_string()),
            E::Unavailable { message, .. } => {
                CliError::unreachable(format!("registry unreachable: {message}"))
            }
            e => CliError::failed(e.to_string()),
        }
    }
}

/// Shorthand for results of `dcronctl` operations.
pub type CliResult<T> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;
    use dcron_core::Error;

    #[test]
    fn core_errors_map_to_exit_codes() {
        let cases: Vec<(Error, i32)> = vec![
            (Error::AlreadyExists { name: "a".into() }, EXIT_CONFLICT),
            (Error::Tombstoned { name: "a".into() }, EXIT_CONFLICT),
            (Error::task_not_found("a"), EXIT_NOT_FOUND),
            (
                Error::NotFound {
                    what: "tombstone",
                    name: "a".into(),
                },
                EXIT_NOT_FOUND,
            ),
            (
                Error::InvalidSchedule {
                    expr: "x".into(),
                    reason: "bad".into(),
                },
                EXIT_USAGE,
            ),
            (
                Error::InvalidTimeZone {
                    zone: "Mars/Olympus".into(),
                },
                EXIT_USAGE,
            ),
            (Error::InvalidArgument("big".into()), EXIT_USAGE),
            (Error::unavailable("refused"), EXIT_UNREACHABLE),
            (Error::AccessDenied("no".into()), EXIT_FAILED),
            (Error::backend("redis", "oops", "inner"), EXIT_FAILED),
        ];
        for (err, code) in cases {
            let shown = err.to_string();
            assert_eq!(CliError::from(err).exit_code(), code, "{shown}");
        }
    }

    #[test]
    fn messages_are_one_line() {
        let e = CliError::failed("first\nsecond\r\n  third  ");
        assert_eq!(e.message(), "first second third");
        assert_eq!(e.to_string(), "first second third");
    }
}
