//! Multi-process chaos runs of dcron nodes against real registries.
//!
//! Two programs: `chaos-node` joins a cluster on a registry and appends every execution to a
//! ledger file; `chaos` starts several of them as separate processes, kills and restarts them,
//! cuts one off from the registry through a TCP proxy it controls, restarts the registry server
//! when it owns it (or, with `--cluster`, kills and restarts the leader and a follower of the
//! 3-member etcd cluster or ZooKeeper ensemble it runs), and finally merges the ledgers and
//! checks that every fire ran exactly once. This library holds what both share: the backends,
//! the registry clusters, the ledger format and the analysis, and the proxy.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod cluster;
pub mod ledger;
pub mod proxy;

/// The tasks every node registers: `chaos-00` … , each firing every second.
pub fn task_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("chaos-{i:02}")).collect()
}

/// The schedule of every chaos task: every second.
pub const EVERY_SECOND: &str = "* * * * * *";

/// Parses a duration given on the command line: a [`humantime`] duration (`90s`, `2m`,
/// `1h 30m`, `1500ms`) or, as the flags have always taken, a bare whole number of seconds
/// (`120`).
///
/// # Errors
/// [`dcron_core::Error::InvalidArgument`] naming the input when it is neither.
pub fn parse_duration(text: &str) -> dcron_core::Result<std::time::Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| {
        dcron_core::Error::InvalidArgument(format!(
            "invalid duration `{text}`: {e} (write seconds, `120`, or a duration, `2m`, `90s`)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_as_seconds_or_humantime() {
        assert_eq!(parse_duration("120").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m 30s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1500ms").ok(),
            Some(Duration::from_millis(1500))
        );
        let err = parse_duration("soon").err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("`soon`")),
            "{err:?}"
        );
        assert!(parse_duration("-3").is_err());
    }
}
