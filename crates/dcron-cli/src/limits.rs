//! Size limits on what `dcronctl` accepts: every argument, the task name, the cron text, the
//! zone and the payload (inline or from a file). Each is refused before anything is parsed
//! further or sent, as a usage error (exit code 2) naming the limit.
//!
//! | what | limit | error |
//! |---|---|---|
//! | any one command-line argument (except the `--payload` text) | [`MAX_ARG_BYTES`] (8 KiB) | usage, exit 2 |
//! | task name | [`dcron_core::MAX_TASK_NAME_BYTES`] (200 bytes) | usage, exit 2 |
//! | cron text (`--cron`) | [`dcron_core::limits::MAX_SCHEDULE_BYTES`] (1024 bytes) | usage, exit 2 |
//! | zone (`--zone`) | [`dcron_core::limits::MAX_ZONE_BYTES`] (64 bytes) | usage, exit 2 |
//! | payload (`--payload` or `--payload-file`) | [`MAX_PAYLOAD_BYTES`] (256 KiB) | usage, exit 2 |
//!
//! A payload file's size is taken from its metadata before it is opened for reading, and the
//! read itself stops one byte past the limit, so neither a huge file nor an endless one (a
//! pipe, `/dev/zero`) is ever read whole.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;

use crate::error::{CliError, CliResult};

/// The longest payload `dcronctl add` accepts, in bytes: 256 KiB, below the smallest backend
/// limit on a whole task record (Consul's, about 376 KiB) so that an accepted payload fits
/// every registry.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The longest single command-line argument, in bytes (the `--payload` text has its own limit,
/// [`MAX_PAYLOAD_BYTES`]).
pub const MAX_ARG_BYTES: usize = 8 * 1024;

fn too_long(what: &str, len: usize, max: usize) -> CliError {
    CliError::usage(format!(
        "{what} is {len} bytes; dcronctl accepts at most {max} bytes"
    ))
}

/// Checks every command-line argument (program name excluded) against [`MAX_ARG_BYTES`], except
/// the value of `--payload`, which [`check_payload`] bounds later.
///
/// # Errors
/// A usage error naming the argument's position and size.
pub fn check_args(args: &[OsString]) -> CliResult<()> {
    let mut payload_value = false;
    for (i, arg) in args.iter().enumerate().skip(1) {
        let len = arg.len();
        let text = arg.to_string_lossy();
        let exempt = std::mem::take(&mut payload_value) || text.starts_with("--payload=");
        if text == "--payload" {
            payload_value = true;
        }
        if exempt {
            if len > MAX_PAYLOAD_BYTES {
                return Err(too_long("the payload", len, MAX_PAYLOAD_BYTES));
            }
        } else if len > MAX_ARG_BYTES {
            return Err(too_long(&format!("argument {i}"), len, MAX_ARG_BYTES));
        }
    }
    Ok(())
}

/// Checks an inline payload against [`MAX_PAYLOAD_BYTES`].
///
/// # Errors
/// A usage error naming both sizes.
pub fn check_payload(payload: &str) -> CliResult<()> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(too_long("the payload", payload.len(), MAX_PAYLOAD_BYTES));
    }
    Ok(())
}

/// Checks the cron text and the zone of a task against the core's bounds.
///
/// # Errors
/// A usage error naming the field and both sizes.
pub fn check_schedule(cron: &str, zone: Option<&str>) -> CliResult<()> {
    let max = dcron_core::limits::MAX_SCHEDULE_BYTES;
    if cron.len() > max {
        return Err(too_long("the cron text", cron.len(), max));
    }
    if let Some(zone) = zone {
        let max = dcron_core::limits::MAX_ZONE_BYTES;
        if zone.len() > max {
            return Err(too_long("the zone", zone.len(), max));
        }
    }
    Ok(())
}

/// Reads a payload file: refused from its metadata when larger than [`MAX_PAYLOAD_BYTES`],
/// read at most one byte past the limit otherwise (a file whose metadata says nothing, such as
/// a pipe, cannot make it read more), and required to be UTF-8 text.
///
/// # Errors
/// A usage error when the file cannot be read, is too large or is not UTF-8.
pub fn read_payload_file(path: &Path) -> CliResult<String> {
    let cannot = |e: std::io::Error| {
        CliError::usage(format!(
            "cannot read payload file `{}`: {e}",
            path.display()
        ))
    };
    let metadata = std::fs::metadata(path).map_err(cannot)?;
    if metadata.is_file() && metadata.len() > MAX_PAYLOAD_BYTES as u64 {
        return Err(CliError::usage(format!(
            "payload file `{}` is {} bytes; dcronctl accepts at most {MAX_PAYLOAD_BYTES} bytes",
            path.display(),
            metadata.len()
        )));
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_PAYLOAD_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(CliError::usage(format!(
            "payload file `{}` holds more than {MAX_PAYLOAD_BYTES} bytes; dcronctl accepts at \
             most {MAX_PAYLOAD_BYTES} bytes",
            path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        CliError::usage(format!(
            "payload file `{}` is not UTF-8 text",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EXIT_USAGE;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn an_argument_over_the_limit_is_a_usage_error() {
        let long = "x".repeat(MAX_ARG_BYTES + 1);
        let err = check_args(&args(&["dcronctl", "delete", &long])).expect_err("refused");
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.message().contains("argument 2"), "{}", err.message());
        let fits = "x".repeat(MAX_ARG_BYTES);
        assert!(check_args(&args(&["dcronctl", "delete", &fits])).is_ok());
    }

    #[test]
    fn the_payload_argument_has_its_own_limit() {
        let big = "p".repeat(MAX_ARG_BYTES * 2);
        assert!(check_args(&args(&["dcronctl", "add", "t", "--payload", &big])).is_ok());
        assert!(check_args(&args(&[
            "dcronctl",
            "add",
            "t",
            &format!("--payload={big}")
        ]))
        .is_ok());
        let huge = "p".repeat(MAX_PAYLOAD_BYTES + 1);
        let err =
            check_args(&args(&["dcronctl", "add", "t", "--payload", &huge])).expect_err("refused");
        assert_eq!(err.exit_code(), EXIT_USAGE);
        // Only the value right after `--payload` is exempt.
        let err =
            check_args(&args(&["dcronctl", "add", "--payload", "x", &big])).expect_err("refused");
        assert!(err.message().contains("argument 4"), "{}", err.message());
    }

    #[test]
    fn an_inline_payload_over_the_limit_is_refused() {
        assert!(check_payload(&"p".repeat(MAX_PAYLOAD_BYTES)).is_ok());
        let err = check_payload(&"p".repeat(MAX_PAYLOAD_BYTES + 1)).expect_err("refused");
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.message().contains("262145 bytes"), "{}", err.message());
    }

    #[test]
    fn cron_text_and_zone_over_the_limit_are_refused() {
        let cron = "*".repeat(dcron_core::limits::MAX_SCHEDULE_BYTES + 1);
        let err = check_schedule(&cron, None).expect_err("refused");
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.message().contains("cron text"), "{}", err.message());
        let zone = "Z".repeat(dcron_core::limits::MAX_ZONE_BYTES + 1);
        let err = check_schedule("@hourly", Some(&zone)).expect_err("refused");
        assert!(err.message().contains("zone"), "{}", err.message());
        assert!(check_schedule("@hourly", Some("Europe/Berlin")).is_ok());
    }

    #[test]
    fn a_payload_file_over_the_limit_is_refused_from_its_metadata() {
        let dir = std::env::temp_dir().join(format!("dcronctl-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("big.txt");
        // A sparse file: its metadata says 1 GiB without the bytes being written or read.
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(1 << 30).expect("set_len");
        let err = read_payload_file(&path).expect_err("refused");
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(
            err.message().contains("1073741824 bytes"),
            "{}",
            err.message()
        );
        let ok = dir.join("ok.txt");
        std::fs::write(&ok, "hello").expect("write");
        assert_eq!(read_payload_file(&ok).expect("read"), "hello");
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"\xff\xfe").expect("write");
        assert!(read_payload_file(&bad)
            .expect_err("not UTF-8")
            .message()
            .contains("not UTF-8"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn an_endless_payload_file_is_not_read_past_the_limit() {
        // `/dev/zero` has no size in its metadata and never ends.
        let err = read_payload_file(Path::new("/dev/zero")).expect_err("refused");
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.message().contains("more than"), "{}", err.message());
    }
}
