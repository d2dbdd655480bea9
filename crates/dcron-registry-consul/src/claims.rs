//! Batch claims over `/v1/txn`, decided per fire.
//!
//! # Algorithm
//!
//! A batch is packed into chunks that each fit one transaction (at most 128 operations and
//! 512 KiB of body), sent concurrently. A chunk holds, for each task (and generation) it
//! touches, `check-not-exists` of the task's tombstone and `check-index` of its life at the
//! request's generation, then one `cas` per fire creating its claim key (index 0). When nothing
//! is in the way the transaction commits: every fire is `Won`, one round trip.
//!
//! Consul rolls a transaction back as a whole (409) and names every failed operation with its
//! `OpIndex` and `What`. An ACL refusal or any other unexpected failure fails the fires of that
//! operation alone (`Failed`; a task-level check fails the task's fires). For the rest the chunk
//! reads a snapshot — one read-only transaction of `get-tree` on the tombstone, the life and
//! each claim key, exact keys kept — and decides every fire with the core's
//! [`dcron_core::claim::decide_claim`] (tombstone, then generation, then the existing claim:
//! same claimant → `WonEarlier` with the same token, another → `Lost`). Fires left to write go
//! into the next transaction, guarded again by the task checks; an expired claim is replaced
//! with `cas` at its `ModifyIndex`. A transaction whose reply is lost (connection reset,
//! timeout) is followed by such a snapshot too, so a claim that committed answers `WonEarlier`:
//! the commit-then-lost-reply case resolves through the idempotent claim.
//!
//! Every write is a `cas` through Consul's raft log, so across all clients exactly one writer
//! creates each claim key.
//!
//! # Retention
//!
//! Consul's transactions cannot compare a time, so a claim's value records its expiry
//! (`expires_at_ms`: the claimer's wall clock at the write + the request's retention). An
//! expired claim counts as absent: `list_claims` never lists it, a new claim of the fire
//! replaces it. No other operation removes a claim (cleanup, force writes and new lives keep
//! them, so an instant claimed in an earlier life is never run again). Expired claims are
//! deleted with `delete-cas` by `list_claims`, by a background sweep when a task is claimed
//! again a retention period after its previous sweep, and, for names removed by `cleanup_*`, by
//! a background task that deletes their claims as they expire. Retention is judged by the
//! claimers' clocks, which is why the core's retention includes the largest clock skew.
//!
//! # Fencing tokens
//!
//! Consul gives every key written by one transaction the same `ModifyIndex` (the raft index of
//! the write), which only grows, cleanup or not. The token is `ModifyIndex × 128 + slot`, where
//! `slot` (< 128, stored in the value) is the claim's operation index in its transaction:
//! non-zero, distinct, and larger for every later claim of the name.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::claim::{decide_claim, ClaimDecision, Holder};
use dcron_core::{
    check_claims, Claim, ClaimOutcome, ClaimRequest, Claimant, CorruptEntry, Error, FireKey, Life,
    Listing, Result,
};
use serde::{Deserialize, Serialize};

use crate::client::{Client, Ctx, KvEntry, TxnKvOp, TxnOutcome, MAX_TXN_BODY, MAX_TXN_OPS};
use crate::error::Failure;
use crate::keys::Keys;

/// Distinct slots per transaction: a token is `ModifyIndex × SLOTS + slot`.
const SLOTS: u64 = MAX_TXN_OPS as u64;

/// Write rounds (each after a snapshot) before the rest of a chunk is reported contended.
const MAX_ROUNDS: usize = 8;

/// Transport failures (reply lost, timeout) tolerated per chunk before it gives up.
const MAX_TRANSPORT_RETRIES: u32 = 2;

/// The stored value of a claim: the core's `Claim` fields (minus the token, which derives from
/// the key's `ModifyIndex`) plus the slot and the expiry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredClaim {
    pub fire: FireKey,
    pub node_id: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub generation: u64,
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
        token(modify_index, self.slot)
    }
}

fn token(modify_index: u64, slot: u8) -> u64 {
    modify_index
        .saturating_mul(SLOTS)
        .saturating_add(u64::from(slot))
        .max(1)
}

fn retention_millis(retention: Duration) -> i64 {
    i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)
}

/// Copies an error for several fires (the error type is not `Clone`), keeping its variant where
/// it matters to the caller.
pub(crate) fn replicate(e: &Error) -> Error {
    match e {
        Error::AccessDenied(m) => Error::AccessDenied(m.clone()),
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        e if e.is_retryable() => Error::unavailable(e.to_string()),
        e => Error::Backend {
            backend: crate::client::BACKEND,
            message: e.to_string(),
            source: None,
        },
    }
}

/// Everything a claim needs besides the requests.
pub(crate) struct ClaimContext<'a> {
    pub client: &'a Client,
    pub keys: &'a Keys,
    pub claimant: &'a Claimant,
    pub now: &'a (dyn Fn() -> DateTime<Utc> + Sync),
}

/// Decides a batch (see the module docs): one outcome per request, in order.
pub(crate) async fn claim_batch(
    cx: &ClaimContext<'_>,
    requests: &[ClaimRequest],
) -> Result<Vec<ClaimOutcome>> {
    check_claims(requests)?;
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    // The n-th copy of a fire goes in layer n: each layer is decided after the previous one,
    // so a repeated fire answers as a retry would.
    let mut copies: HashMap<&FireKey, usize> = HashMap::new();
    let mut layers: Vec<Vec<usize>> = Vec::new();
    for (at, request) in requests.iter().enumerate() {
        let n = copies.entry(&request.fire).or_insert(0);
        if layers.len() <= *n {
            layers.push(Vec::new());
        }
        layers[*n].push(at);
        *n += 1;
    }
    let mut outcomes: Vec<Option<ClaimOutcome>> = vec![None; requests.len()];
    let mut first_error: Option<Error> = None;
    let mut any_decided = false;
    for layer in layers {
        let chunks = pack(cx, requests, layer);
        let results = futures::future::join_all(
            chunks
                .into_iter()
                .map(|chunk| decide_chunk(cx, requests, chunk)),
        )
        .await;
        for result in results {
            any_decided |= !result.decided.is_empty();
            for (at, outcome) in result.decided {
                outcomes[at] = Some(outcome);
            }
            if let Some(error) = result.error {
                for at in result.undecided {
                    outcomes[at] = Some(ClaimOutcome::Failed(replicate(&error)));
                }
                first_error.get_or_insert(error);
            }
        }
    }
    if let (false, Some(error)) = (any_decided, first_error) {
        // Nothing was decided: the batch as a whole could not be (a retry is always safe).
        return Err(error);
    }
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                ClaimOutcome::Failed(Error::Backend {
                    backend: crate::client::BACKEND,
                    message: "consul claim: a fire was left undecided".into(),
                    source: None,
                })
            })
        })
        .collect())
}

/// The JSON value of a claim as written now.
fn claim_value(cx: &ClaimContext<'_>, request: &ClaimRequest, slot: u8, now_ms: i64) -> Vec<u8> {
    serde_json::to_vec(&StoredClaim {
        fire: request.fire.clone(),
        node_id: cx.claimant.node_id.clone(),
        epoch: cx.claimant.epoch,
        generation: request.generation,
        slot,
        expires_at_ms: now_ms.saturating_add(retention_millis(request.retention)),
    })
    .unwrap_or_default()
}

/// An upper bound of the body size of a check operation on `key`.
fn check_size(key: &str) -> usize {
    TxnKvOp::check_index(key.to_string(), u64::MAX).body_size()
}

/// Packs requests (indexes) into chunks that each fit one transaction, with the task checks of
/// every task a chunk touches.
fn pack(
    cx: &ClaimContext<'_>,
    requests: &[ClaimRequest],
    mut layer: Vec<usize>,
) -> Vec<Vec<usize>> {
    layer.sort_by(|&a, &b| {
        let (ra, rb) = (&requests[a], &requests[b]);
        (&ra.fire.task, ra.generation, ra.fire.instant).cmp(&(
            &rb.fire.task,
            rb.generation,
            rb.fire.instant,
        ))
    });
    let mut chunks = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut groups: HashSet<(&str, u64)> = HashSet::new();
    let (mut ops, mut bytes) = (0usize, 0usize);
    for at in layer {
        let r = &requests[at];
        let group = (r.fire.task.as_str(), r.generation);
        let (group_ops, group_bytes) = if groups.contains(&group) {
            (0, 0)
        } else {
            (
                2,
                check_size(&cx.keys.tombstone(&r.fire.task))
                    + check_size(&cx.keys.life(&r.fire.task)),
            )
        };
        let fire_bytes = TxnKvOp::cas(
            cx.keys.claim(&r.fire.task, r.fire.instant_millis()),
            &claim_value(cx, r, u8::MAX, i64::MIN),
            u64::MAX,
        )
        .body_size();
        let (need_ops, need_bytes) = (group_ops + 1, group_bytes + fire_bytes);
        if !current.is_empty()
            && (ops + need_ops > MAX_TXN_OPS || bytes + need_bytes > MAX_TXN_BODY)
        {
            chunks.push(std::mem::take(&mut current));
            groups.clear();
            ops = 0;
            bytes = 0;
            // The task's checks go into the new chunk too.
            ops += 2;
            bytes += check_size(&cx.keys.tombstone(&r.fire.task))
                + check_size(&cx.keys.life(&r.fire.task));
        } else {
            ops += group_ops;
            bytes += group_bytes;
        }
        groups.insert(group);
        ops += 1;
        bytes += fire_bytes;
        current.push(at);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// What a chunk decided; `error` applies to the fires left `undecided`.
struct ChunkResult {
    decided: Vec<(usize, ClaimOutcome)>,
    undecided: Vec<usize>,
    error: Option<Error>,
}

/// A fire still to decide, and the `cas` index its claim is written with (0 to create, or the
/// `ModifyIndex` of the expired claim it replaces).
#[derive(Clone, Copy, Debug)]
struct Pending {
    at: usize,
    expect: u64,
}

/// What an operation of a chunk's transaction is about.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// A check of the task of the fires at these positions of `pending` (by group index).
    Group(usize),
    /// The claim of the fire at this position of `pending`.
    Fire(usize),
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
}

async fn decide_chunk(
    cx: &ClaimContext<'_>,
    requests: &[ClaimRequest],
    chunk: Vec<usize>,
) -> ChunkResult {
    let mut pending: Vec<Pending> = chunk
        .into_iter()
        .map(|at| Pending { at, expect: 0 })
        .collect();
    let mut decided: Vec<(usize, ClaimOutcome)> = Vec::with_capacity(pending.len());
    let mut need_read = false;
    let mut transport_failures = 0u32;
    let subject = requests
        .get(pending.first().map_or(0, |p| p.at))
        .map_or("", |r| r.fire.task.as_str());
    let ctx = Ctx::new("claim", subject);
    let mut rounds = 0;
    while !pending.is_empty() && rounds < MAX_ROUNDS {
        if need_read {
            match snapshot(cx, requests, &pending, ctx).await {
                Ok(Snapshot::Read(snap)) => {
                    need_read = false;
                    let now_ms = (cx.now)().timestamp_millis();
                    let mut still = Vec::with_capacity(pending.len());
                    for p in pending {
                        match snap.decide(cx, &requests[p.at], now_ms) {
                            Decision::Answer(outcome) => decided.push((p.at, outcome)),
                            Decision::Write(expect) => still.push(Pending { at: p.at, expect }),
                        }
                    }
                    pending = still;
                    continue;
                }
                Ok(Snapshot::Refused(failed)) => {
                    let failed: HashMap<usize, Error> = failed.into_iter().collect();
                    let mut still = Vec::with_capacity(pending.len());
                    for (pos, p) in pending.into_iter().enumerate() {
                        match failed.get(&pos) {
                            Some(e) => decided.push((p.at, ClaimOutcome::Failed(replicate(e)))),
                            None => still.push(p),
                        }
                    }
                    pending = still;
                    continue;
                }
                Err(e) if e.is_retryable() && transport_failures < MAX_TRANSPORT_RETRIES => {
                    transport_failures += 1;
                    backoff(transport_failures).await;
                    continue;
                }
                Err(e) => return give_up(decided, pending, e),
            }
        }
        rounds += 1;
        let now_ms = (cx.now)().timestamp_millis();
        let (ops, roles, group_of) = write_ops(cx, requests, &pending, now_ms);
        match cx.client.txn(&ops, ctx).await {
            Ok(TxnOutcome::Committed(entries)) => {
                let by_key: HashMap<&str, &KvEntry> =
                    entries.iter().map(|e| (e.key.as_str(), e)).collect();
                for (i, role) in roles.iter().enumerate() {
                    let Role::Fire(pos) = *role else { continue };
                    let at = pending[pos].at;
                    let outcome = match by_key.get(ops[i].key()) {
                        Some(entry) => ClaimOutcome::Won {
                            token: token(entry.modify_index, slot_of(i)),
                        },
                        None => ClaimOutcome::Failed(ctx.agent(
                            None,
                            format!("the committed transaction lacks the claim {}", ops[i].key()),
                        )),
                    };
                    decided.push((at, outcome));
                }
                pending.clear();
            }
            Ok(TxnOutcome::RolledBack(failures)) => {
                // Conditions are decided from the snapshot; other failures fail their fires.
                let mut failed: HashMap<usize, Error> = HashMap::new();
                let mut understood = false;
                for f in &failures {
                    let (Some(role), Some(op)) = (roles.get(f.op_index), ops.get(f.op_index))
                    else {
                        continue;
                    };
                    understood = true;
                    if matches!(f.kind(), Failure::Condition | Failure::LockDelay) {
                        continue;
                    }
                    let error = ctx.op_failed(op, f);
                    match *role {
                        Role::Fire(pos) => {
                            failed.insert(pos, error);
                        }
                        Role::Group(g) => {
                            for (pos, _) in group_of.iter().enumerate().filter(|(_, gi)| **gi == g)
                            {
                                failed.insert(pos, replicate(&error));
                            }
                        }
                    }
                }
                if !understood {
                    return give_up(decided, pending, ctx.rolled_back(&failures));
                }
                let mut still = Vec::with_capacity(pending.len());
                for (pos, p) in pending.into_iter().enumerate() {
                    match failed.remove(&pos) {
                        Some(e) => decided.push((p.at, ClaimOutcome::Failed(e))),
                        None => still.push(p),
                    }
                }
                pending = still;
                need_read = true;
            }
            Err(e) if e.is_retryable() && transport_failures < MAX_TRANSPORT_RETRIES => {
                // The transaction may have committed: the snapshot tells.
                transport_failures += 1;
                need_read = true;
                backoff(transport_failures).await;
            }
            Err(e) => return give_up(decided, pending, e),
        }
    }
    if pending.is_empty() {
        return ChunkResult {
            decided,
            undecided: Vec::new(),
            error: None,
        };
    }
    let error = Error::unavailable(format!(
        "consul claim: {} fires still contended after {MAX_ROUNDS} transactions",
        pending.len()
    ));
    give_up(decided, pending, error)
}

fn give_up(
    decided: Vec<(usize, ClaimOutcome)>,
    pending: Vec<Pending>,
    error: Error,
) -> ChunkResult {
    ChunkResult {
        decided,
        undecided: pending.into_iter().map(|p| p.at).collect(),
        error: Some(error),
    }
}

/// The slot of the operation at index `i` (< 128: a transaction has at most 128 operations).
fn slot_of(i: usize) -> u8 {
    u8::try_from(i).unwrap_or(u8::MAX)
}

/// The write transaction of a round: per task group the two checks, then one `cas` per fire.
/// Also answers each operation's role and the group of each pending position.
fn write_ops(
    cx: &ClaimContext<'_>,
    requests: &[ClaimRequest],
    pending: &[Pending],
    now_ms: i64,
) -> (Vec<TxnKvOp>, Vec<Role>, Vec<usize>) {
    let mut ops = Vec::with_capacity(pending.len() + 4);
    let mut roles = Vec::with_capacity(pending.len() + 4);
    let mut groups: HashMap<(&str, u64), usize> = HashMap::new();
    let mut group_of = Vec::with_capacity(pending.len());
    for p in pending {
        let r = &requests[p.at];
        let next = groups.len();
        let g = *groups
            .entry((r.fire.task.as_str(), r.generation))
            .or_insert_with(|| {
                ops.push(TxnKvOp::check_not_exists(cx.keys.tombstone(&r.fire.task)));
                roles.push(Role::Group(next));
                ops.push(TxnKvOp::check_index(
                    cx.keys.life(&r.fire.task),
                    r.generation,
                ));
                roles.push(Role::Group(next));
                next
            });
        group_of.push(g);
    }
    for (pos, p) in pending.iter().enumerate() {
        let r = &requests[p.at];
        let slot = slot_of(ops.len());
        ops.push(TxnKvOp::cas(
            cx.keys.claim(&r.fire.task, r.fire.instant_millis()),
            &claim_value(cx, r, slot, now_ms),
            p.expect,
        ));
        roles.push(Role::Fire(pos));
    }
    (ops, roles, group_of)
}

enum Snapshot {
    Read(Snap),
    /// The read itself was refused for some fires (by position in `pending`).
    Refused(Vec<(usize, Error)>),
}

/// Tombstones, lives and claims as one read-only transaction saw them.
struct Snap {
    entries: HashMap<String, KvEntry>,
    tombstones: HashMap<String, String>,
    lives: HashMap<String, String>,
}

enum Decision {
    Answer(ClaimOutcome),
    Write(u64),
}

impl Snap {
    fn decide(&self, cx: &ClaimContext<'_>, r: &ClaimRequest, now_ms: i64) -> Decision {
        let task = &r.fire.task;
        let tombstoned = self
            .tombstones
            .get(task)
            .is_some_and(|key| self.entries.contains_key(key));
        let life = self
            .lives
            .get(task)
            .and_then(|key| self.entries.get(key))
            .map(|e| Life::new(e.modify_index, DateTime::<Utc>::UNIX_EPOCH));
        let claim_key = cx.keys.claim(task, r.fire.instant_millis());
        let entry = self.entries.get(&claim_key);
        let stored = entry.map(|e| e.bytes().and_then(|b| StoredClaim::decode(&e.key, &b)));
        let (holder, expired_index, corrupt) = match (entry, &stored) {
            (Some(e), Some(Ok(s))) if s.expires_at_ms > now_ms => (
                Some(Holder {
                    node_id: &s.node_id,
                    epoch: s.epoch,
                    token: s.token(e.modify_index),
                }),
                0,
                false,
            ),
            (Some(e), Some(Ok(_))) => (None, e.modify_index, false),
            (Some(e), Some(Err(error))) => {
                tracing::warn!(key = %e.key, %error, "corrupt claim: the fire counts as taken");
                (None, e.modify_index, true)
            }
            _ => (None, 0, false),
        };
        match decide_claim(tombstoned, life.as_ref(), holder, None, cx.claimant, r) {
            ClaimDecision::Answer(outcome) => Decision::Answer(outcome),
            // An unreadable claim keeps the fire taken (never a duplicate); cleanup removes it.
            ClaimDecision::Write if corrupt => {
                Decision::Answer(ClaimOutcome::Lost { holder: None })
            }
            ClaimDecision::Write => Decision::Write(expired_index),
        }
    }
}

/// Reads tombstones, lives and claims of the pending fires in one read-only transaction.
async fn snapshot(
    cx: &ClaimContext<'_>,
    requests: &[ClaimRequest],
    pending: &[Pending],
    ctx: Ctx<'_>,
) -> Result<Snapshot> {
    let mut ops = Vec::with_capacity(pending.len() + 4);
    // For each op, the pending positions it serves.
    let mut serves: Vec<Vec<usize>> = Vec::with_capacity(pending.len() + 4);
    let mut tombstones: HashMap<String, String> = HashMap::new();
    let mut lives: HashMap<String, String> = HashMap::new();
    let mut task_ops: HashMap<&str, (usize, usize)> = HashMap::new();
    for (pos, p) in pending.iter().enumerate() {
        let task = requests[p.at].fire.task.as_str();
        let (t, l) = *task_ops.entry(task).or_insert_with(|| {
            let tomb = cx.keys.tombstone(task);
            let life = cx.keys.life(task);
            tombstones.insert(task.to_string(), tomb.clone());
            lives.insert(task.to_string(), life.clone());
            ops.push(TxnKvOp::get_tree(tomb));
            serves.push(Vec::new());
            ops.push(TxnKvOp::get_tree(life));
            serves.push(Vec::new());
            (ops.len() - 2, ops.len() - 1)
        });
        serves[t].push(pos);
        serves[l].push(pos);
    }
    for (pos, p) in pending.iter().enumerate() {
        let r = &requests[p.at];
        ops.push(TxnKvOp::get_tree(
            cx.keys.claim(&r.fire.task, r.fire.instant_millis()),
        ));
        serves.push(vec![pos]);
    }
    match cx.client.txn(&ops, ctx).await? {
        TxnOutcome::Committed(entries) => Ok(Snapshot::Read(Snap {
            entries: entries.into_iter().map(|e| (e.key.clone(), e)).collect(),
            tombstones,
            lives,
        })),
        TxnOutcome::RolledBack(failures) => {
            let mut refused = Vec::new();
            for f in &failures {
                if let (Some(op), Some(positions)) = (ops.get(f.op_index), serves.get(f.op_index)) {
                    let error = ctx.op_failed(op, f);
                    refused.extend(positions.iter().map(|&pos| (pos, replicate(&error))));
                }
            }
            if refused.is_empty() {
                return Err(ctx.rolled_back(&failures));
            }
            Ok(Snapshot::Refused(refused))
        }
    }
}

/// The claims of one task as a listing saw them.
pub(crate) struct TaskClaims {
    /// The live claims (and the undecodable ones).
    pub listing: Listing<Claim>,
    /// The expired ones: key and `ModifyIndex`.
    pub expired: Vec<(String, u64)>,
    /// When the first live claim expires (ms since the epoch).
    pub next_expiry_ms: Option<i64>,
}

/// Lists the claims of one task, live and expired.
pub(crate) async fn list_claims(
    client: &Client,
    keys: &Keys,
    now_ms: i64,
    task: &str,
) -> Result<TaskClaims> {
    let (entries, _) = client
        .kv_list(
            &keys.claims_prefix(task),
            None,
            Ctx::new("list_claims", task),
        )
        .await?;
    let mut listing = Listing::default();
    let mut expired = Vec::new();
    let mut next_expiry_ms: Option<i64> = None;
    for entry in entries {
        match entry
            .bytes()
            .and_then(|b| StoredClaim::decode(&entry.key, &b))
        {
            Ok(stored) if stored.expires_at_ms <= now_ms => {
                expired.push((entry.key.clone(), entry.modify_index));
            }
            Ok(stored) => listing.items.push({
                next_expiry_ms = Some(
                    next_expiry_ms.map_or(stored.expires_at_ms, |n| n.min(stored.expires_at_ms)),
                );
                Claim {
                    token: stored.token(entry.modify_index),
                    fire: stored.fire,
                    node_id: stored.node_id,
                    epoch: stored.epoch,
                    generation: stored.generation,
                }
            }),
            Err(e) => listing.corrupt.push(CorruptEntry {
                key: entry.key.clone(),
                reason: match e {
                    Error::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                },
            }),
        }
    }
    Ok(TaskClaims {
        listing,
        expired,
        next_expiry_ms,
    })
}

/// Deletes expired claims with `delete-cas` (a claim re-taken meanwhile is left alone).
pub(crate) async fn delete_expired(
    client: &Client,
    task: &str,
    expired: &[(String, u64)],
) -> Result<()> {
    let ctx = Ctx::new("claim sweep", task);
    for chunk in expired.chunks(MAX_TXN_OPS) {
        let ops: Vec<TxnKvOp> = chunk
            .iter()
            .map(|(key, index)| TxnKvOp::delete_cas(key.clone(), *index))
            .collect();
        // A rolled-back sweep only means some claim changed meanwhile: the next sweep retries.
        let _ = client.txn(&ops, ctx).await?;
    }
    Ok(())
}
