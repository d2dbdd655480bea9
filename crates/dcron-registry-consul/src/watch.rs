//! Watches as blocking queries on a KV prefix.
//!
//! Each watched prefix has a loop: `GET /v1/kv/<prefix>?recurse&index=<last X-Consul-Index>&wait=…`
//! answers once something under the prefix changed (or `wait` passed); the loop diffs the new
//! listing against the previous one (by key and `ModifyIndex`) and sends one event per change.
//! When the index goes backwards (a snapshot restore, a new cluster) the listing is taken as a
//! fresh start and a `Resync` is sent; on an error the loop backs off (100 ms doubling to 5 s),
//! retries and sends a `Resync` once it works again. The loop ends when the stream is dropped.

use std::collections::HashMap;
use std::time::Duration;

use dcron_core::{ResyncEvent, WatchSender};

use crate::client::{Client, KvEntry};

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

/// Resolves once the receiving side of `tx` is gone.
async fn closed<E: ResyncEvent>(tx: &WatchSender<E>) {
    while !tx.is_closed() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    loop {
        let answer = tokio::select! {
            answer = client.kv_list(&prefix, Some((index.max(1), wait))) => answer,
            _ = closed(&tx) => return,
        };
        match answer {
            Ok((entries, new_index)) => {
                backoff = Duration::from_millis(100);
                let next = snapshot(&entries);
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
                    for entry in &entries {
                        if last.get(&entry.key) != Some(&entry.modify_index) {
                            if let Some(event) = to_event(Change::Put(entry)) {
                                if !tx.send(event) {
                                    return;
                                }
                            }
                        }
                    }
                    for key in last.keys() {
                        if !next.contains_key(key) {
                            if let Some(event) = to_event(Change::Delete(key)) {
                                if !tx.send(event) {
                                    return;
                                }
                            }
                        }
                    }
                }
                last = next;
                // Consul asks clients to never block on index 0.
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
