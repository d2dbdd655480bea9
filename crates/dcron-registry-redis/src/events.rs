//! Change notifications: what the scripts publish and how a watcher reads it.
//!
//! A message is a two-letter kind, `:`, and a payload:
//!
//! | message | channel | meaning |
//! |---|---|---|
//! | `np:<version>:<node JSON>` | nodes | a node registered or changed |
//! | `nd:<version>:<node id>` | nodes | a node unregistered |
//! | `tp:<task JSON>` | tasks | a task record was written |
//! | `tr:<name>` | tasks | a task record was removed |
//! | `tt:<tombstone JSON>` | tasks | a name was marked deleted |
//! | `tc:<name>` | tasks | a tombstone was cleared |
//! | `ta:` | tasks | many records changed at once (`cleanup_all`): list again |
//!
//! A message that does not parse becomes a `Resync`: the consumer lists everything again.
//!
//! The `<version>` of a node message is the number the change took from the namespace's
//! node-change counter (`<ns>:nodever`) in the same script; the node watch uses it to drop a
//! message older than what it already reported (see `watch`).

use dcron_core::{Node, NodeEvent, TaskMeta, TaskMetaEvent, Tombstone};

/// The message published by `cleanup_all`.
pub(crate) const TASKS_RESYNC: &str = "ta:";

fn split(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    if payload.len() >= 3 && payload[2] == b':' {
        Some((&payload[..2], &payload[3..]))
    } else {
        None
    }
}

fn text(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Splits `<version>:<rest>`.
fn versioned(body: &[u8]) -> Option<(u64, &[u8])> {
    let colon = body.iter().position(|&b| b == b':')?;
    let version = std::str::from_utf8(&body[..colon]).ok()?.parse().ok()?;
    Some((version, &body[colon + 1..]))
}

/// Turns a message of the nodes channel into an event and the version of the change (`None`
/// with a `Resync` for a message that does not parse).
pub(crate) fn node_event(channel: &str, payload: &[u8]) -> (Option<u64>, NodeEvent) {
    let parsed = split(payload).and_then(|(kind, body)| {
        let (version, rest) = versioned(body)?;
        let event = match kind {
            b"np" => Node::decode(channel, rest).ok().map(NodeEvent::Put),
            b"nd" => text(rest).map(|id| NodeEvent::Delete { id }),
            _ => None,
        }?;
        Some((Some(version), event))
    });
    parsed.unwrap_or((None, NodeEvent::Resync))
}

/// Turns a message of the tasks channel into an event.
pub(crate) fn task_event(channel: &str, payload: &[u8]) -> TaskMetaEvent {
    let parsed = split(payload).and_then(|(kind, body)| match kind {
        b"tp" => TaskMeta::decode(channel, body).ok().map(TaskMetaEvent::Put),
        b"tr" => text(body).map(|name| TaskMetaEvent::Removed { name }),
        b"tt" => Tombstone::decode(channel, body)
            .ok()
            .map(TaskMetaEvent::Tombstoned),
        b"tc" => text(body).map(|name| TaskMetaEvent::TombstoneCleared { name }),
        _ => None,
    });
    parsed.unwrap_or(TaskMetaEvent::Resync)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    #[test]
    fn node_messages() {
        let node = Node::new("n:1", DateTime::<Utc>::UNIX_EPOCH);
        let mut msg = b"np:17:".to_vec();
        msg.extend(node.encode());
        assert_eq!(node_event("c", &msg), (Some(17), NodeEvent::Put(node)));
        assert_eq!(
            node_event("c", b"nd:18:n:1"),
            (Some(18), NodeEvent::Delete { id: "n:1".into() })
        );
        for bad in [
            &b""[..],
            b"np",
            b"np:{",
            b"np:1:{",
            b"zz:1:x",
            b"nd:1:\xff",
            b"nd:n:1",
            b"nd:-1:n",
        ] {
            assert_eq!(node_event("c", bad), (None, NodeEvent::Resync), "{bad:?}");
        }
    }

    #[test]
    fn task_messages() {
        let meta = TaskMeta::new("a:b c", "@hourly");
        let mut msg = b"tp:".to_vec();
        msg.extend(meta.encode());
        assert_eq!(task_event("c", &msg), TaskMetaEvent::Put(meta));
        assert_eq!(
            task_event("c", b"tr:a:b c"),
            TaskMetaEvent::Removed {
                name: "a:b c".into()
            }
        );
        let tomb = Tombstone {
            name: "x".into(),
            deleted_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let mut msg = b"tt:".to_vec();
        msg.extend(tomb.encode());
        assert_eq!(task_event("c", &msg), TaskMetaEvent::Tombstoned(tomb));
        assert_eq!(
            task_event("c", b"tc:x"),
            TaskMetaEvent::TombstoneCleared { name: "x".into() }
        );
        assert_eq!(
            task_event("c", TASKS_RESYNC.as_bytes()),
            TaskMetaEvent::Resync
        );
        assert_eq!(task_event("c", b"tp:[]"), TaskMetaEvent::Resync);
    }
}
