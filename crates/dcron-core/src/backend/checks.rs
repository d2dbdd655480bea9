//! The checks every backend makes on its input, and the numeric promises of the contract.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::registry::{Capabilities, Lease, RecordKind, Registry};
use crate::types::{ClaimRequest, FireKey, Life, Node, TaskMeta};

/// The longest record key accepted, in bytes (a task name plus a request id).
pub const MAX_RECORD_KEY_BYTES: usize = 256;

/// Checks a record key: non-empty, at most [`MAX_RECORD_KEY_BYTES`], no control characters, no
/// `/` — the task-name rules with room for a `@<id>` suffix. Backends call it first.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the rule.
pub fn check_record_key(kind: RecordKind, key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "must not be empty"
    } else if key.len() > MAX_RECORD_KEY_BYTES {
        "must be at most 256 bytes"
    } else if key.chars().any(char::is_control) {
        "must not contain control characters"
    } else if key.contains('/') {
        "must not contain `/`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument(format!(
        "{kind} record key `{}` {reason}",
        key.chars().take(64).collect::<String>()
    )))
}

/// Checks a batch for [`Registry::put_records`]: every key and every value size.
///
/// # Errors
/// As [`check_record_key`], and [`Error::InvalidArgument`] for a value over `caps`.
pub fn check_records(
    kind: RecordKind,
    records: &[(String, Vec<u8>)],
    caps: &Capabilities,
) -> Result<()> {
    for (key, value) in records {
        check_record_key(kind, key)?;
        if value.len() > caps.max_value_bytes {
            return Err(Error::InvalidArgument(format!(
                "{kind} record `{key}` is {} bytes; this registry stores at most {} bytes",
                value.len(),
                caps.max_value_bytes
            )));
        }
    }
    Ok(())
}

/// Checks the arguments of [`Registry::acquire_slot`] and [`Registry::release_slot`]: a
/// valid task name and a lease naming a node. Backends call it first.
///
/// # Errors
/// [`Error::InvalidArgument`] for an invalid task name or an empty node id.
pub fn check_slot(lease: &Lease, fire: &FireKey) -> Result<()> {
    crate::types::validate_task_name(&fire.task)?;
    if lease.node_id.is_empty() {
        return Err(Error::InvalidArgument(
            "a running slot needs a lease naming a node".into(),
        ));
    }
    Ok(())
}

/// Checks the arguments of [`Registry::register`]: a non-zero TTL and a non-empty node id.
/// Backends call it first, so every registry refuses the same requests the same way.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the rule.
pub fn check_registration(node: &Node, ttl: Duration) -> Result<()> {
    if node.id.is_empty() {
        return Err(Error::InvalidArgument(
            "the node id must not be empty".into(),
        ));
    }
    if ttl.is_zero() {
        return Err(Error::InvalidArgument(format!(
            "node `{}`: the lease TTL must not be zero",
            node.id
        )));
    }
    Ok(())
}

/// The longest a watch may take to deliver a change (see [`Registry::watch_nodes`]).
pub const MAX_WATCH_DELAY: Duration = Duration::from_secs(3);

/// How much longer than promised a backend may keep a lease or a claim: half the duration, and
/// at least two seconds (expiry granularity of the servers: etcd and ZooKeeper tick in seconds).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(dcron_core::expiry_tolerance(Duration::from_secs(10)), Duration::from_secs(5));
/// assert_eq!(dcron_core::expiry_tolerance(Duration::from_secs(1)), Duration::from_secs(2));
/// ```
pub fn expiry_tolerance(d: Duration) -> Duration {
    (d / 2).max(Duration::from_secs(2))
}

/// Checks the retention of [`Registry::claim`]: it must not be zero.
///
/// # Errors
/// [`Error::InvalidArgument`].
pub fn check_retention(retention: Duration) -> Result<()> {
    if retention.is_zero() {
        return Err(Error::InvalidArgument(
            "the claim retention must not be zero".into(),
        ));
    }
    Ok(())
}

/// Checks a record against [`Capabilities::max_value_bytes`]; backends call it before writing.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the task and both sizes.
pub fn check_value_size(meta: &TaskMeta, encoded_len: usize, caps: &Capabilities) -> Result<()> {
    if encoded_len > caps.max_value_bytes {
        return Err(Error::InvalidArgument(format!(
            "task `{}` record is {} bytes; this registry stores at most {} bytes",
            meta.name, encoded_len, caps.max_value_bytes
        )));
    }
    Ok(())
}

/// Checks a value read back from the store before it is decoded: a value larger than
/// `max_value_bytes` was not written by dcron (every write is refused above the limit), so it
/// is refused unread, whatever it contains. Backends call it on every value they decode.
///
/// ```
/// use dcron_core::backend::check_stored_size;
/// use dcron_core::Error;
/// assert!(check_stored_size("ns:task:a", 10, 10).is_ok());
/// assert!(matches!(check_stored_size("ns:task:a", 11, 10), Err(Error::Corrupt { .. })));
/// ```
///
/// # Errors
/// [`Error::Corrupt`] naming the key, the value's size and the limit.
pub fn check_stored_size(key: &str, len: usize, max_value_bytes: usize) -> Result<()> {
    if len > max_value_bytes {
        return Err(Error::Corrupt {
            key: key.to_string(),
            reason: format!(
                "the stored value is {len} bytes, more than the {max_value_bytes} bytes this \
                 registry stores; refused without decoding"
            ),
        });
    }
    Ok(())
}

/// Checks a claim batch for [`Registry::claim`]: every retention must be non-zero.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the fire.
pub fn check_claims(requests: &[ClaimRequest]) -> Result<()> {
    for r in requests {
        if r.retention.is_zero() {
            return Err(Error::InvalidArgument(format!(
                "claim of {}: the retention must not be zero",
                r.fire
            )));
        }
    }
    Ok(())
}

/// [`Registry::ensure_lives`] for a registry without native lives: lives kept as
/// [`RecordKind::Life`] records, read and written in two steps (not atomic: two nodes racing
/// may start two lives with the same generation). Such a registry does not declare
/// [`Capabilities::exactly_once`].
///
/// # Errors
/// The registry's record errors.
pub async fn ensure_lives_in_records<R: Registry + ?Sized>(
    registry: &R,
    names: &[(String, DateTime<Utc>)],
) -> Result<Vec<Life>> {
    let mut out = Vec::with_capacity(names.len());
    let mut new = Vec::new();
    for (name, at) in names {
        let life = match registry.get_record(RecordKind::Life, name).await? {
            Some(bytes) => match Life::decode(name, &bytes) {
                Ok(life) => life,
                Err(_) => Life::new(1, *at),
            },
            None => {
                let life = Life::new(1, *at);
                new.push((name.clone(), life.encode()));
                life
            }
        };
        out.push(life);
    }
    if !new.is_empty() {
        registry.put_records(RecordKind::Life, &new).await?;
    }
    Ok(out)
}

/// [`Registry::restart_life`] for a registry without native lives: clears the tombstone, then
/// writes a [`RecordKind::Life`] record with the next generation (two steps, not atomic; claims
/// of the earlier life are kept). Such a registry does not declare
/// [`Capabilities::exactly_once`].
///
/// # Errors
/// The registry's errors.
pub async fn restart_life_in_records<R: Registry + ?Sized>(
    registry: &R,
    name: &str,
    at: DateTime<Utc>,
) -> Result<Life> {
    match registry.clear_tombstone(name).await {
        Ok(()) | Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let generation = match registry.get_record(RecordKind::Life, name).await? {
        Some(bytes) => Life::decode(name, &bytes).map_or(1, |l| l.generation) + 1,
        None => 1,
    };
    let life = Life::new(generation, at);
    registry
        .put_records(RecordKind::Life, &[(name.to_string(), life.encode())])
        .await?;
    Ok(life)
}
