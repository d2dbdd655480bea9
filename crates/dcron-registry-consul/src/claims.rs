//! Batch claims over `/v1/txn`.
//!
//! # Algorithm
//!
//! A batch is deduplicated (a repeated fire is `Lost`), sorted by task and packed into chunks
//! of at most [`MAX_TXN_OPS`] operations; chunks are decided concurrently. One chunk holds, per
//! task, a `check-not-exists` of the task's tombstone and, per fire, a `cas` of the fire's claim
//! key with index 0 (create only) — one round trip when nothing is claimed yet. A transaction is
//! all-or-nothing, so when Consul rolls it back (409) its `Errors` name the failed operations:
//!
//! 1. a failed tombstone check decides every fire of that task: `Tombstoned`;
//! 2. the failed `cas` keys are read in one read-only transaction (`get-tree` on each claim key,
//!    which the prefix-free key layout makes exact): a live claim decides the fire `Lost`; an
//!    expired claim is retried with `cas` at the claim's `ModifyIndex` (replacing exactly that
//!    expired claim); a vanished one is retried with index 0;
//! 3. every fire not decided yet is sent again in a new transaction.
//!
//! Each rolled-back round decides or re-targets at least one fire, and every write is a `cas`
//! guarded by Consul's raft log, so across all clients at most one `cas` per claim key
//! succeeds: exactly one winner per fire.
//!
//! # Retention
//!
//! A claim's value records its expiry (`expires_at_ms`, wall clock of the claiming node + the
//! retention). An expired claim counts as absent: [`crate::ConsulRegistry::list_claims`] hides
//! it, and a new claim of the same fire replaces it with `cas`. Expired claims are deleted
//! lazily with `delete-cas` — by `list_claims` and by a background sweep of a task's claims that
//! a registry runs when it claims the task again one retention period (at least 1 s) after its
//! first claim or previous sweep — and all of a
//! task's claims go with `cleanup_task`, `cleanup_all` and `PutMode::Force`. Retention is judged
//! by the claimers' clocks, which is why the core's retention includes the maximum clock skew.
//!
//! # Fencing tokens
//!
//! Consul gives every key written by one transaction the same `ModifyIndex`, so the token is
//! `ModifyIndex × 64 + slot`, where `slot` (< 64, stored in the value) is the fire's position in
//! its chunk: non-zero, distinct among a task's claims, and larger for a later transaction.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Claim, ClaimOutcome, CorruptEntry, Error, FireKey, Listing, Result};
use serde::{Deserialize, Serialize};

use crate::client::{Client, KvEntry, TxnKvOp, TxnOutcome, BACKEND, MAX_TXN_OPS};
use crate::keys::Keys;

/// The stored value of a claim: the core's `Claim` fields (minus the token, which derives from
/// the key's `ModifyIndex`) plus the slot and the expiry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredClaim {
    pub fire: FireKey,
    pub node_id: String,
    pub slot: u8,
    pub expires_at_ms: i64,
}

impl StoredClaim {
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn token(&self, modify_index: u64) -> u64 {
        modify_index
            .saturating_mul(MAX_TXN_OPS as u64)
            .saturating_add(u64::from(self.slot))
            .max(1)
    }
}

fn retention_millis(retention: Duration) -> i64 {
    i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)
}

/// One fire of a chunk still waiting for its outcome.
#[derive(Clone, Debug)]
struct Pending {
    /// Index into the caller's `fires`.
    at: usize,
    /// Position in the chunk (part of the token).
    slot: u8,
    /// The `cas` index: 0 to create, or the ModifyIndex of the expired claim to replace.
    expect: u64,
    key: String,
}

/// What an operation of a claim transaction checks, by op index.
enum OpRole {
    Tombstone(String),
    Fire(usize),
}

/// Decides a batch of fires (see the module docs).
pub(crate) async fn claim_batch(
    client: &Client,
    keys: &Keys,
    now: impl Fn() -> DateTime<Utc> + Sync,
    fires: &[FireKey],
    node_id: &str,
    retention: Duration,
) -> Result<Vec<ClaimOutcome>> {
    let mut outcomes: Vec<Option<ClaimOutcome>> = vec![None; fires.len()];
    let mut seen = HashSet::new();
    let mut order: Vec<usize> = Vec::with_capacity(fires.len());
    for (i, fire) in fires.iter().enumerate() {
        if seen.insert(fire) {
            order.push(i);
        } else {
            outcomes[i] = Some(ClaimOutcome::Lost);
        }
    }
    order.sort_by(|&a, &b| fires[a].cmp(&fires[b]));

    // Pack into chunks of at most MAX_TXN_OPS operations: one per fire plus one per task.
    let mut chunks: Vec<Vec<Pending>> = Vec::new();
    let mut current: Vec<Pending> = Vec::new();
    let mut ops = 0usize;
    let mut last_task: Option<&str> = None;
    for at in order {
        let task = fires[at].task.as_str();
        let cost = if last_task == Some(task) { 1 } else { 2 };
        if ops + cost > MAX_TXN_OPS {
            chunks.push(std::mem::take(&mut current));
            ops = 0;
            last_task = None;
        }
        let cost = if last_task == Some(task) { 1 } else { 2 };
        ops += cost;
        last_task = Some(task);
        current.push(Pending {
            at,
            slot: u8::try_from(current.len()).unwrap_or(u8::MAX),
            expect: 0,
            key: keys.claim(task, fires[at].instant_millis()),
        });
    }
    if !current.is_empty() {
        chunks.push(current);
    }

    let decided = futures::future::try_join_all(
        chunks
            .into_iter()
            .map(|chunk| claim_chunk(client, keys, &now, fires, chunk, node_id, retention)),
    )
    .await?;
    for (at, outcome) in decided.into_iter().flatten() {
        outcomes[at] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.ok_or_else(|| Error::Backend {
                backend: BACKEND,
                message: "a claim was left undecided".into(),
                source: None,
            })
        })
        .collect()
}

async fn claim_chunk(
    client: &Client,
    keys: &Keys,
    now: &(impl Fn() -> DateTime<Utc> + Sync),
    fires: &[FireKey],
    mut pending: Vec<Pending>,
    node_id: &str,
    retention: Duration,
) -> Result<Vec<(usize, ClaimOutcome)>> {
    let mut decided = Vec::with_capacity(pending.len());
    let max_rounds = 2 * pending.len() + 4;
    for _ in 0..max_rounds {
        if pending.is_empty() {
            return Ok(decided);
        }
        let now_ms = now().timestamp_millis();
        let expires_at_ms = now_ms.saturating_add(retention_millis(retention));
        let mut ops = Vec::with_capacity(MAX_TXN_OPS);
        let mut roles = Vec::with_capacity(MAX_TXN_OPS);
        let mut checked: HashSet<&str> = HashSet::new();
        for (pos, p) in pending.iter().enumerate() {
            let fire = &fires[p.at];
            if checked.insert(fire.task.as_str()) {
                ops.push(TxnKvOp::check_not_exists(keys.tombstone(&fire.task)));
                roles.push(OpRole::Tombstone(fire.task.clone()));
            }
            let value = serde_json::to_vec(&StoredClaim {
                fire: fire.clone(),
                node_id: node_id.to_string(),
                slot: p.slot,
                expires_at_ms,
            })
            .unwrap_or_default();
            ops.push(TxnKvOp::cas(p.key.clone(), &value, p.expect));
            roles.push(OpRole::Fire(pos));
        }
        let errors = match client.txn(&ops, "claim batch").await? {
            TxnOutcome::Committed(entries) => {
                let by_key: HashMap<&str, &KvEntry> =
                    entries.iter().map(|e| (e.key.as_str(), e)).collect();
                for p in pending.drain(..) {
                    let entry = by_key.get(p.key.as_str()).ok_or_else(|| Error::Backend {
                        backend: BACKEND,
                        message: format!("transaction result lacks claim key {}", p.key),
                        source: None,
                    })?;
                    let token = entry
                        .modify_index
                        .saturating_mul(MAX_TXN_OPS as u64)
                        .saturating_add(u64::from(p.slot))
                        .max(1);
                    decided.push((p.at, ClaimOutcome::Won { token }));
                }
                return Ok(decided);
            }
            TxnOutcome::RolledBack(errors) => errors,
        };

        let mut tombstoned: HashSet<String> = HashSet::new();
        let mut contested: HashSet<usize> = HashSet::new();
        for e in &errors {
            match roles.get(e.op_index) {
                Some(OpRole::Tombstone(task)) => {
                    tombstoned.insert(task.clone());
                }
                Some(OpRole::Fire(pos)) => {
                    contested.insert(*pos);
                }
                None => {}
            }
        }
        if tombstoned.is_empty() && contested.is_empty() {
            let what: Vec<&str> = errors.iter().map(|e| e.what.as_str()).collect();
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!("claim transaction rolled back: {}", what.join("; ")),
                source: None,
            });
        }

        let mut still = Vec::with_capacity(pending.len());
        let mut to_read = Vec::new();
        for (pos, p) in pending.into_iter().enumerate() {
            if tombstoned.contains(&fires[p.at].task) {
                decided.push((p.at, ClaimOutcome::Tombstoned));
            } else if contested.contains(&pos) {
                to_read.push(p);
            } else {
                still.push(p);
            }
        }
        if !to_read.is_empty() {
            let reads: Vec<TxnKvOp> = to_read
                .iter()
                .map(|p| TxnKvOp::get_tree(p.key.clone()))
                .collect();
            let entries = match client.txn(&reads, "claim read").await? {
                TxnOutcome::Committed(entries) => entries,
                TxnOutcome::RolledBack(errors) => {
                    let what: Vec<&str> = errors.iter().map(|e| e.what.as_str()).collect();
                    return Err(Error::Backend {
                        backend: BACKEND,
                        message: format!("claim read rolled back: {}", what.join("; ")),
                        source: None,
                    });
                }
            };
            let by_key: HashMap<&str, &KvEntry> =
                entries.iter().map(|e| (e.key.as_str(), e)).collect();
            for mut p in to_read {
                match by_key.get(p.key.as_str()) {
                    None => {
                        p.expect = 0;
                        still.push(p);
                    }
                    Some(entry) => {
                        let live = match entry
                            .bytes()
                            .and_then(|b| StoredClaim::decode(&entry.key, &b))
                        {
                            Ok(stored) => stored.expires_at_ms > now_ms,
                            Err(e) => {
                                // Unreadable claim: keep treating the fire as taken (never a
                                // duplicate); cleanup removes it.
                                tracing::warn!(key = %entry.key, error = %e, "corrupt claim");
                                true
                            }
                        };
                        if live {
                            decided.push((p.at, ClaimOutcome::Lost));
                        } else {
                            p.expect = entry.modify_index;
                            still.push(p);
                        }
                    }
                }
            }
        }
        pending = still;
    }
    if pending.is_empty() {
        return Ok(decided);
    }
    Err(Error::Unavailable {
        message: format!(
            "consul claim batch still contended after {max_rounds} transactions ({} fires undecided)",
            pending.len()
        ),
        source: None,
    })
}

/// Lists the live claims of one task; returns them with the expired entries (key, index).
pub(crate) async fn list_claims(
    client: &Client,
    keys: &Keys,
    now_ms: i64,
    task: &str,
) -> Result<(Listing<Claim>, Vec<(String, u64)>)> {
    let (entries, _) = client.kv_list(&keys.claims_prefix(task), None).await?;
    let mut listing = Listing::default();
    let mut expired = Vec::new();
    for entry in entries {
        match entry
            .bytes()
            .and_then(|b| StoredClaim::decode(&entry.key, &b))
        {
            Ok(stored) if stored.expires_at_ms <= now_ms => {
                expired.push((entry.key.clone(), entry.modify_index));
            }
            Ok(stored) => listing.items.push(Claim {
                token: stored.token(entry.modify_index),
                fire: stored.fire,
                node_id: stored.node_id,
            }),
            Err(e) => listing.corrupt.push(CorruptEntry {
                key: entry.key.clone(),
                reason: e.to_string(),
            }),
        }
    }
    Ok((listing, expired))
}

/// Deletes expired claims with `delete-cas` (a claim re-taken meanwhile is left alone).
pub(crate) async fn delete_expired(client: &Client, expired: &[(String, u64)]) -> Result<()> {
    for chunk in expired.chunks(MAX_TXN_OPS) {
        let ops: Vec<TxnKvOp> = chunk
            .iter()
            .map(|(key, index)| TxnKvOp::delete_cas(key.clone(), *index))
            .collect();
        // A rolled-back sweep only means some claim changed meanwhile: the next sweep retries.
        let _ = client.txn(&ops, "claim sweep").await?;
    }
    Ok(())
}
