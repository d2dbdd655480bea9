//! Running slots: one key per task, attached to the holder's etcd lease, taken and freed by
//! transactions.
//!
//! The slot of task `t` is the key `/{ns}/slots/{t}`, valued the [`SlotRecord`] of its holder
//! (node id, lease id, fire) and **attached to the holder node's etcd lease**: it disappears with
//! the lease (expiry, `unregister`'s revoke, `register` revoking a replaced lease) with nothing
//! to renew or sweep. `acquire_slot` is one transaction:
//!
//! ```text
//! if   nodes/{caller}.lease == caller's lease     (the caller's lease has not ended)
//!  and slots/{t}.create_revision == 0             (nobody holds the slot)
//! then put slots/{t} = {caller, lease, fire} with the caller's lease
//! else get slots/{t}, get nodes/ (keys only: each node key and the lease it is attached to)
//! ```
//!
//! When the condition fails, the reads of the same revision say why: the caller's node key is
//! gone or attached to another lease → `LeaseLost`; the slot holds this lease's own fire →
//! `Taken` (a retry); the holder's node key is still attached to the holder's lease → `Held`.
//! Otherwise the holder's lease outlived its registration (a `register` that replaced it could
//! not revoke it, or its node key was deleted): the holder counts as ended and the slot as
//! free, taken over by a second transaction that compares everything the decision rested on:
//!
//! ```text
//! if   nodes/{caller}.lease == caller's lease
//!  and slots/{t}.mod_revision == the revision read
//!  and nodes/{holder}.lease != holder's lease     (0 when the key is gone)
//! then put slots/{t} = {caller, lease, fire} with the caller's lease
//! ```
//!
//! A takeover that loses a race starts over (a few times). `release_slot` is one transaction
//! `if slots/{t}.value == the caller's record and slots/{t}.lease == its lease then delete`.
//! `cleanup_all` deletes the `slots/` range with the rest of the namespace's data.

use dcron_core::{check_slot, Error, FireKey, Lease, Result, SlotOutcome, SlotRecord};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};

use crate::error::{malformed, BACKEND};
use crate::keys::Keys;
use crate::{lease_lost, parse_lease_id, EtcdRegistry};

/// How many times `acquire_slot` starts over after losing the race to take over a slot whose
/// holder has ended (each time, someone else's transaction changed the slot in between).
const TAKEOVER_ATTEMPTS: usize = 5;

/// What the failed condition's reads say about the slot.
enum Seen {
    /// The caller's lease has ended.
    LeaseLost,
    /// Answer this.
    Answer(SlotOutcome),
    /// The holder has ended: take the slot over if it is still at `mod_revision` and the
    /// holder's node key is still not attached to `holder_lease`.
    Ended {
        mod_revision: i64,
        holder_node: String,
        holder_lease: i64,
    },
}

/// Takes the running slot of `fire.task` for `fire` under `lease`.
pub(crate) async fn acquire(
    reg: &EtcdRegistry,
    lease: &Lease,
    fire: &FireKey,
) -> Result<SlotOutcome> {
    check_slot(lease, fire)?;
    let Some(id) = parse_lease_id(lease) else {
        return Err(lease_lost(lease));
    };
    let keys = reg.keys();
    let slot = keys.slot(&fire.task);
    let node = keys.node(&lease.node_id);
    let value = SlotRecord::new(lease, fire).encode();
    let put = || {
        TxnOp::put(
            slot.as_str(),
            value.clone(),
            Some(PutOptions::new().with_lease(id)),
        )
    };
    let caller_alive = || Compare::lease(node.as_str(), CompareOp::Equal, id);
    for _ in 0..TAKEOVER_ATTEMPTS {
        let txn = Txn::new()
            .when([
                caller_alive(),
                Compare::create_revision(slot.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([put()])
            .or_else([
                TxnOp::get(slot.as_str(), None),
                TxnOp::get(
                    keys.nodes_prefix(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            ]);
        let resp = send(reg, lease, "acquire_slot", &slot, txn).await?;
        if resp.succeeded() {
            return Ok(SlotOutcome::Taken);
        }
        let (held_by, nodes) = reads(&resp, &slot)?;
        let (mod_revision, holder_node, holder_lease) = match judge(
            keys,
            lease,
            id,
            fire,
            &node,
            &slot,
            held_by.as_ref(),
            &nodes,
        )? {
            Seen::LeaseLost => return Err(lease_lost(lease)),
            Seen::Answer(outcome) => return Ok(outcome),
            Seen::Ended {
                mod_revision,
                holder_node,
                holder_lease,
            } => (mod_revision, holder_node, holder_lease),
        };
        tracing::info!(
            slot = %slot,
            holder = %holder_node,
            holder_lease = %format!("{holder_lease:x}"),
            "running slot held under a lease that no longer holds its node's registration: taking it over"
        );
        let takeover = Txn::new()
            .when([
                caller_alive(),
                Compare::mod_revision(slot.as_str(), CompareOp::Equal, mod_revision),
                Compare::lease(
                    keys.node(&holder_node).as_str(),
                    CompareOp::NotEqual,
                    holder_lease,
                ),
            ])
            .and_then([put()]);
        if send(reg, lease, "acquire_slot (take over)", &slot, takeover)
            .await?
            .succeeded()
        {
            return Ok(SlotOutcome::Taken);
        }
        // The caller's lease, the slot or the holder's registration changed meanwhile: read
        // again.
    }
    Err(Error::unavailable(format!(
        "{BACKEND}: acquire_slot {slot}: the slot changed under {TAKEOVER_ATTEMPTS} takeovers in a row"
    )))
}

/// Frees the running slot of `fire.task` when `lease` holds it for `fire`.
pub(crate) async fn release(reg: &EtcdRegistry, lease: &Lease, fire: &FireKey) -> Result<()> {
    check_slot(lease, fire)?;
    let Some(id) = parse_lease_id(lease) else {
        // No etcd lease has this id: it holds nothing.
        return Ok(());
    };
    let slot = reg.keys().slot(&fire.task);
    let txn = Txn::new()
        .when([
            Compare::value(
                slot.as_str(),
                CompareOp::Equal,
                SlotRecord::new(lease, fire).encode(),
            ),
            Compare::lease(slot.as_str(), CompareOp::Equal, id),
        ])
        .and_then([TxnOp::delete(slot.as_str(), None)]);
    reg.txn("release_slot", &slot, txn).await?;
    Ok(())
}

/// The op that deletes every slot of the namespace (part of `cleanup_all`'s transaction).
pub(crate) fn delete_all(keys: &Keys) -> TxnOp {
    TxnOp::delete(
        keys.slots_prefix().as_str(),
        Some(DeleteOptions::new().with_prefix()),
    )
}

/// Sends a slot transaction; a lease the server no longer knows is `LeaseLost`.
async fn send(
    reg: &EtcdRegistry,
    lease: &Lease,
    what: &str,
    slot: &str,
    txn: Txn,
) -> Result<TxnResponse> {
    let result = reg
        .raw(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await;
    match result {
        Ok(resp) => Ok(resp),
        Err(f) if f.is_lease_not_found() => Err(lease_lost(lease)),
        Err(f) => Err(f.into_error(&format!("{what} {slot}"))),
    }
}

/// The `else` reads of a failed acquire: the slot (if any) and the node keys.
fn reads(resp: &TxnResponse, slot: &str) -> Result<(Option<KeyValue>, Vec<KeyValue>)> {
    let mut ops = resp.op_responses().into_iter();
    match (ops.next(), ops.next(), ops.next()) {
        (Some(TxnOpResponse::Get(mut held)), Some(TxnOpResponse::Get(mut nodes)), None) => {
            Ok((held.take_kvs().into_iter().next(), nodes.take_kvs()))
        }
        _ => Err(malformed(
            format!("acquire_slot {slot}"),
            "expected two reads after a failed condition",
        )),
    }
}

/// The lease a node key is attached to among the `nodes` read (0 when the key is absent).
fn attached(nodes: &[KeyValue], key: &str) -> i64 {
    nodes
        .iter()
        .find(|kv| kv.key() == key.as_bytes())
        .map_or(0, KeyValue::lease)
}

/// Decides a failed acquire from its reads.
#[allow(clippy::too_many_arguments)]
fn judge(
    keys: &Keys,
    lease: &Lease,
    id: i64,
    fire: &FireKey,
    node: &str,
    slot: &str,
    held_by: Option<&KeyValue>,
    nodes: &[KeyValue],
) -> Result<Seen> {
    if attached(nodes, node) != id {
        return Ok(Seen::LeaseLost);
    }
    let Some(kv) = held_by else {
        // The condition failed with the caller alive, so the slot existed: a read without it
        // is not an etcd answer.
        return Err(malformed(
            format!("acquire_slot {slot}"),
            "the slot was neither absent nor read",
        ));
    };
    let record = crate::sized(slot, kv).and_then(|v| SlotRecord::decode(slot, v))?;
    if record.lease.parse::<i64>().ok() != Some(kv.lease()) || kv.lease() == 0 {
        return Err(Error::Corrupt {
            key: slot.to_string(),
            reason: format!(
                "slot record names lease `{}` but the key is attached to etcd lease {:x}",
                record.lease,
                kv.lease()
            ),
        });
    }
    if record.is(lease, fire) {
        return Ok(Seen::Answer(SlotOutcome::Taken));
    }
    if attached(nodes, &keys.node(&record.node_id)) == kv.lease() {
        return Ok(Seen::Answer(record.held()));
    }
    Ok(Seen::Ended {
        mod_revision: kv.mod_revision(),
        holder_node: record.node_id,
        holder_lease: kv.lease(),
    })
}
