//! Running slots on the node's Consul session.
//!
//! # Keys
//!
//! A task's slot is two keys, both locked by the holder's session (the session of its node
//! registration, `Lease::id`, created with `Behavior: delete`):
//!
//! ```text
//! <ns>/slots/<task>/held             the holder's SlotRecord (node id, session id, fire)
//! <ns>/slots/<task>/fire/<instant>   empty: which fire holds the slot, for the release
//! ```
//!
//! When the session ends — expiry without renewal, `unregister` (session destroy), or a new
//! registration of the node (which destroys the older session) — Consul deletes every key the
//! session holds in the same raft write: the slot ends with the lease exactly as the node record
//! does, and needs no renewal of its own.
//!
//! # Acquire
//!
//! One transaction:
//!
//! ```text
//! 0 check-session  <ns>/nodes/<node>         the lease is the node's live registration
//! 1 check-not-exists <ns>/slots/<task>/held  the slot is free
//! 2 delete-tree    <ns>/slots/<task>/fire/   (no marker is left without its slot; defensive)
//! 3 lock           <ns>/slots/<task>/held    = SlotRecord, with the session
//! 4 lock           <ns>/slots/<task>/fire/<instant>, with the session
//! ```
//!
//! It commits when the slot is free: `Taken`, one round trip. Raft orders the transactions of
//! concurrent acquirers, so exactly one of them finds the slot absent. A failed operation 0
//! means the lease has ended (`LeaseLost`, nothing written). Otherwise the slot key is in the
//! way: a read-only transaction (`get`, `?consistent`) reads it and decides — held by this
//! session for this fire → `Taken` (a retry after a lost reply), held by any session for
//! anything else → `Held` naming the record's node and fire. A key without a session (never
//! written so by dcron) counts as free and is replaced, guarded by `check-index` at the index
//! read instead of operation 1.
//!
//! # Release
//!
//! One transaction: `check-session` of both keys with the caller's session, then `delete` of
//! both. A rollback on those checks means the slot is not held by this lease for this fire (it
//! ended with its lease, or was taken since by another fire): nothing to do.

use dcron_core::{check_slot, Error, FireKey, Lease, Result, SlotOutcome, SlotRecord};

use crate::client::{Client, Ctx, KvEntry, TxnKvOp, TxnOutcome};
use crate::error::Failure;
use crate::keys::Keys;

/// Write-then-read rounds before an acquire reports contention (a round repeats only when the
/// slot was freed between the rolled-back write and the read).
const MAX_ROUNDS: usize = 8;

/// What the acquire transaction expects of the slot key.
#[derive(Clone, Copy)]
enum Expect {
    /// No key.
    Absent,
    /// A key without a session, unchanged since the read at this `ModifyIndex`.
    Unlocked(u64),
}

fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        node: lease.node_id.clone(),
    }
}

/// Takes `fire.task`'s slot for `fire` under `lease` (see the module docs).
pub(crate) async fn acquire(
    client: &Client,
    keys: &Keys,
    lease: &Lease,
    fire: &FireKey,
) -> Result<SlotOutcome> {
    check_slot(lease, fire)?;
    if lease.id.is_empty() {
        // No session: nothing can be held under it.
        return Err(lease_lost(lease));
    }
    let ctx = Ctx::new("acquire_slot", &fire.task);
    let slot = keys.slot(&fire.task);
    let record = SlotRecord::new(lease, fire).encode();
    let mut expect = Expect::Absent;
    for _ in 0..MAX_ROUNDS {
        let guard = match expect {
            Expect::Absent => TxnKvOp::check_not_exists(slot.clone()),
            Expect::Unlocked(index) => TxnKvOp::check_index(slot.clone(), index),
        };
        let ops = [
            TxnKvOp::check_session(keys.node(&lease.node_id), &lease.id),
            guard,
            TxnKvOp::delete_tree(keys.slot_fires(&fire.task)),
            TxnKvOp::lock(slot.clone(), &record, &lease.id),
            TxnKvOp::lock(
                keys.slot_fire(&fire.task, fire.instant.timestamp_millis()),
                &[],
                &lease.id,
            ),
        ];
        match client.txn(&ops, ctx).await? {
            TxnOutcome::Committed(_) => return Ok(SlotOutcome::Taken),
            TxnOutcome::RolledBack(failures) => {
                // The node key is not held by this session: the lease has ended (the `lock`s
                // then also fail, with "invalid session" when the session is gone).
                if failures
                    .iter()
                    .any(|f| f.op_index == 0 && f.kind() == Failure::Condition)
                {
                    return Err(lease_lost(lease));
                }
                TxnOutcome::conditions_only(&failures, &ops, ctx)?;
                if failures.is_empty() {
                    return Err(ctx.rolled_back(&failures));
                }
            }
        }
        // The slot key is in the way: who holds it?
        let Some(entry) = read(client, &slot, ctx).await? else {
            // Freed since: try again.
            expect = Expect::Absent;
            continue;
        };
        match entry.session.as_deref() {
            None => expect = Expect::Unlocked(entry.modify_index),
            Some(session) => {
                let held = SlotRecord::decode(&entry.key, &entry.bytes()?)?;
                if session == lease.id && held.is(lease, fire) {
                    return Ok(SlotOutcome::Taken);
                }
                return Ok(held.held());
            }
        }
    }
    Err(Error::unavailable(format!(
        "consul acquire_slot `{}`: still contended after {MAX_ROUNDS} rounds",
        fire.task
    )))
}

/// Reads the slot key with a read-only transaction (`?consistent`); `None` when absent.
async fn read(client: &Client, slot: &str, ctx: Ctx<'_>) -> Result<Option<KvEntry>> {
    let ops = [TxnKvOp::get(slot.to_string())];
    match client.txn(&ops, ctx).await? {
        TxnOutcome::Committed(entries) => Ok(entries.into_iter().find(|e| e.key == slot)),
        TxnOutcome::RolledBack(failures) => {
            TxnOutcome::conditions_only(&failures, &ops, ctx)?;
            if failures.is_empty() {
                return Err(ctx.rolled_back(&failures));
            }
            // `get` of a missing key.
            Ok(None)
        }
    }
}

/// Frees `fire.task`'s slot when `lease` holds it for `fire` (see the module docs).
pub(crate) async fn release(
    client: &Client,
    keys: &Keys,
    lease: &Lease,
    fire: &FireKey,
) -> Result<()> {
    check_slot(lease, fire)?;
    if lease.id.is_empty() {
        // `check-session` with an empty session would pass on a key without one.
        return Ok(());
    }
    let ctx = Ctx::new("release_slot", &fire.task);
    let slot = keys.slot(&fire.task);
    let marker = keys.slot_fire(&fire.task, fire.instant.timestamp_millis());
    let ops = [
        TxnKvOp::check_session(slot.clone(), &lease.id),
        TxnKvOp::check_session(marker.clone(), &lease.id),
        TxnKvOp::delete(marker),
        TxnKvOp::delete(slot),
    ];
    match client.txn(&ops, ctx).await? {
        TxnOutcome::Committed(_) => Ok(()),
        TxnOutcome::RolledBack(failures) => {
            TxnOutcome::conditions_only(&failures, &ops, ctx)?;
            if failures.is_empty() {
                return Err(ctx.rolled_back(&failures));
            }
            // Not held by this lease for this fire: nothing to free.
            Ok(())
        }
    }
}
