//! Watches as blocking queries on a KV prefix.
//!
//! Each watch has one loop: `GET /v1/kv/<prefix>?recurse&index=<last X-Consul-Index>&wait=…`
//! answers once something under the prefix changed (or `wait` passed); the loop diffs the new
//! listing against the previous one (by key and `ModifyIndex`) and sends one event per changed
//! key, in key order (so a task's record comes before its tombstone, as the memory registry
//! orders them). When the index goes backwards (a snapshot restore, a new cluster, KV tombstones
//! reaped) the listing is taken as a fresh start and a `Resync` is sent; on an error the loop
//! backs off (100 ms doubling to 5 s), retries and sends a `Resync` once it works again. The
//! loop ends when the stream is dropped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use dcron_core::{ResyncEvent, WatchSender};

use crate::client::{Client, Ctx, KvEntry};

/// A change of one key under the watched prefix.
pub(crate) enum Change<'a> {
    /// Created or modified.
    Put(&'a KvEntry),
    /// Removed.
    Delete(&'a str),
}

/// The last listing: key → ModifyIndex.
pub(crate) type Snapshot = HashMap<String, u64>;

pub(crate) fn snapshot(entries: &[KvEntry]) -> Snapshot {
    entries
        .iter()
        .map(|e| (e.key.clone(), e.modify_index))
        .collect()
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often a loop parked on a blocking query checks whether its stream was dropped.
const CLOSED_POLL: Duration = Duration::from_millis(200);

/// Resolves once the receiving side of `tx` is gone.
async fn closed<E: ResyncEvent>(tx: &WatchSender<E>) {
    while !tx.is_closed() {
        tokio::time::sleep(CLOSED_POLL).await;
    }
}

/// The changes from `last` to `entries`, in key order.
fn changes<'a>(last: &'a Snapshot, entries: &'a [KvEntry]) -> Vec<Change<'a>> {
    let mut out: BTreeMap<&str, Change<'a>> = BTreeMap::new();
    for entry in entries {
        if last.get(&entry.key) != Some(&entry.modify_index) {
            out.insert(entry.key.as_str(), Change::Put(entry));
        }
    }
    let now: std::collections::HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    for key in last.keys() {
        if !now.contains(key.as_str()) {
            out.insert(key.as_str(), Change::Delete(key.as_str()));
        }
    }
    out.into_values().collect()
}

/// Runs the blocking-query loop of one prefix until the receiver is dropped.
pub(crate) async fn run<E, F>(
    client: Client,
    prefix: String,
    wait: Duration,
    mut index: u64,
    mut last: Snapshot,
    tx: WatchSender<E>,
    to_event: F,
) where
    E: ResyncEvent,
    F: Fn(Change<'_>) -> Option<E>,
{
    let mut backoff = Duration::from_millis(100);
    let mut failed = false;
    let ctx = Ctx::new("watch", &prefix);
    loop {
        let answer = tokio::select! {
            answer = client.kv_list(&prefix, Some((index.max(1), wait)), ctx) => answer,
            _ = closed(&tx) => return,
        };
        match answer {
            Ok((entries, new_index)) => {
                backoff = Duration::from_millis(100);
                let reset = new_index < index;
                if failed || reset {
                    failed = false;
                    // Queued as an event rather than `WatchSender::resync()`, which only flags
                    // the channel and would not wake a reader parked on an empty buffer.
                    if !tx.send(E::resync()) {
                        return;
                    }
                }
                if !reset {
                    for change in changes(&last, &entries) {
                        if let Some(event) = to_event(change) {
                            if !tx.send(event) {
                                return;
                            }
                        }
                    }
                }
                last = snapshot(&entries);
                // Consul asks clients never to block on index 0.
                index = new_index.max(1);
            }
            Err(error) => {
                tracing::warn!(%prefix, %error, ?backoff, "consul watch failed; retrying");
                failed = true;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = closed(&tx) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, index: u64) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: None,
            modify_index: index,
            session: None,
        }
    }

    #[test]
    fn changes_come_in_key_order() {
        let last: Snapshot = [
            ("ns/tasks/meta/a".to_string(), 5),
            ("ns/tasks/tomb/b".to_string(), 6),
        ]
        .into_iter()
        .collect();
        let now = vec![
            entry("ns/tasks/meta/a", 5),
            entry("ns/tasks/meta/b", 9),
            entry("ns/tasks/tomb/a", 9),
        ];
        let keys: Vec<String> = changes(&last, &now)
            .into_iter()
            .map(|c| match c {
                Change::Put(e) => format!("put {}", e.key),
                Change::Delete(k) => format!("delete {k}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "put ns/tasks/meta/b",
                "put ns/tasks/tomb/a",
                "delete ns/tasks/tomb/b"
            ]
        );
    }
}
