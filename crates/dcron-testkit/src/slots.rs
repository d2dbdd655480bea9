//! Running-slot cases: the atomic, cluster-wide overlap guarantee of `Skip` and `Queue` tasks
//! ([`dcron_core::Registry::acquire_slot`]): one holder per task, idempotent for its holder,
//! released only by its holder, ending with the holder's lease.

use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Error, FireKey, Lease, Registry, SlotOutcome};
use futures::future::join_all;
use tokio::time::Instant;

use crate::harness::{holds_until, instant, reached, CaseContext, CaseError, CaseResult};
use crate::{ensure, ensure_eq, ensure_err};

/// A TTL long enough that no lease of a case ends by itself.
const LONG_TTL: Duration = Duration::from_secs(60);

fn fire(task: &str, offset_ms: i64) -> FireKey {
    FireKey::new(task, instant(offset_ms))
}

/// A client of the case's namespace with a node registered on it.
async fn member(cx: &CaseContext, prefix: &str) -> Result<(Arc<dyn Registry>, Lease), CaseError> {
    let reg = cx.open().await?;
    let lease = reg.register(&cx.node(prefix), LONG_TTL).await?;
    Ok((reg, lease))
}

fn held_by(outcome: &SlotOutcome, node: &str, holder: &FireKey) -> bool {
    matches!(outcome, SlotOutcome::Held { node_id, fire } if node_id == node && fire == holder)
}

/// Slots work, or both slot calls answer `Unsupported`, as `capabilities.slots` declares.
pub async fn slot_capability_is_honest(cx: &CaseContext) -> CaseResult {
    let (reg, lease) = member(cx, "honest").await?;
    let f = fire("honest", 0);
    let acquired = reg.acquire_slot(&lease, &f).await;
    let released = reg.release_slot(&lease, &f).await;
    if reg.capabilities().slots {
        ensure!(
            matches!(acquired, Ok(SlotOutcome::Taken)),
            "slots declared: a free slot must be taken, got {acquired:?}"
        );
        ensure!(
            released.is_ok(),
            "slots declared: release failed: {released:?}"
        );
    } else {
        ensure!(
            matches!(acquired, Err(Error::Unsupported { .. })),
            "slots not declared: acquire_slot must be Unsupported, got {acquired:?}"
        );
        ensure!(
            matches!(released, Err(Error::Unsupported { .. })),
            "slots not declared: release_slot must be Unsupported, got {released:?}"
        );
    }
    Ok(())
}

/// A free slot is taken; its holder taking it again for the same fire gets `Taken` again; any
/// other fire (of another node, or of the holder itself) gets `Held` naming the holder and its
/// fire. Slots of different tasks are independent.
pub async fn one_holder_per_task(cx: &CaseContext) -> CaseResult {
    let (a, lease_a) = member(cx, "a").await?;
    let (b, lease_b) = member(cx, "b").await?;
    let first = fire("job", 1000);
    let second = fire("job", 2000);
    ensure_eq!(
        a.acquire_slot(&lease_a, &first).await?,
        SlotOutcome::Taken,
        "a free slot"
    );
    ensure_eq!(
        a.acquire_slot(&lease_a, &first).await?,
        SlotOutcome::Taken,
        "the holder retrying the same fire"
    );
    for (who, reg, lease, f) in [
        ("another node, another fire", &b, &lease_b, &second),
        ("another node, the same fire", &b, &lease_b, &first),
        ("the holder, another fire", &a, &lease_a, &second),
    ] {
        let out = reg.acquire_slot(lease, f).await?;
        ensure!(
            held_by(&out, &lease_a.node_id, &first),
            "{who}: expected Held by {} for {first}, got {out:?}",
            lease_a.node_id
        );
    }
    ensure_eq!(
        b.acquire_slot(&lease_b, &fire("job-2", 2000)).await?,
        SlotOutcome::Taken,
        "another task's slot is independent (even one whose name extends the first)"
    );
    Ok(())
}

/// `release_slot` frees the slot only for its holder and fire; a release by anyone else, or
/// for another fire, is `Ok` and changes nothing; releasing twice is `Ok`.
pub async fn release_frees_only_its_own(cx: &CaseContext) -> CaseResult {
    let (a, lease_a) = member(cx, "a").await?;
    let (b, lease_b) = member(cx, "b").await?;
    let first = fire("job", 1000);
    let second = fire("job", 2000);
    ensure_eq!(
        a.acquire_slot(&lease_a, &first).await?,
        SlotOutcome::Taken,
        "free"
    );
    b.release_slot(&lease_b, &first).await?;
    a.release_slot(&lease_a, &second).await?;
    let out = b.acquire_slot(&lease_b, &second).await?;
    ensure!(
        held_by(&out, &lease_a.node_id, &first),
        "a release by another node or for another fire must not free the slot, got {out:?}"
    );
    a.release_slot(&lease_a, &first).await?;
    ensure_eq!(
        b.acquire_slot(&lease_b, &second).await?,
        SlotOutcome::Taken,
        "the holder's release frees the slot"
    );
    a.release_slot(&lease_a, &first).await?;
    let out = a.acquire_slot(&lease_a, &first).await?;
    ensure!(
        held_by(&out, &lease_b.node_id, &second),
        "a second release by the former holder must not free the new holder's slot, got {out:?}"
    );
    Ok(())
}

/// `(task, node, fire, answer)` of every racer's call.
type RaceAnswers = Vec<(String, String, FireKey, dcron_core::Result<SlotOutcome>)>;

/// Every member calls `acquire_slot` for every task at once (a barrier before each call), each
/// with its own fire (`round` keeps the fires of different rounds apart); checks one `Taken`
/// per task and that every loser sees the winner. Answers the winners by task.
async fn race(
    members: &[(Arc<dyn Registry>, Lease)],
    tasks: &[String],
    round: i64,
) -> Result<std::collections::BTreeMap<String, (usize, FireKey)>, CaseError> {
    let barrier = Arc::new(tokio::sync::Barrier::new(members.len()));
    let runs = members.iter().enumerate().map(|(i, (reg, lease))| {
        let (reg, lease, tasks, barrier) =
            (reg.clone(), lease.clone(), tasks.to_vec(), barrier.clone());
        tokio::spawn(async move {
            let mut out: RaceAnswers = Vec::new();
            for task in &tasks {
                let f = FireKey::new(task.as_str(), instant(round * 100_000 + i as i64 * 1000));
                // Everyone calls for this slot at the same moment.
                barrier.wait().await;
                let got = reg.acquire_slot(&lease, &f).await;
                out.push((task.clone(), lease.node_id.clone(), f, got));
            }
            (i, out)
        })
    });
    let mut winners: std::collections::BTreeMap<String, (usize, FireKey)> = Default::default();
    let mut holders: std::collections::BTreeMap<String, String> = Default::default();
    let mut answers = Vec::new();
    for joined in join_all(runs).await {
        let (i, rows) = joined.map_err(|e| CaseError::Failed(format!("a racer panicked: {e}")))?;
        for (task, node, f, got) in rows {
            match got? {
                SlotOutcome::Taken => {
                    if let Some(other) = holders.insert(task.clone(), node.clone()) {
                        return Err(CaseError::Failed(format!(
                            "round {round}: slot of {task} taken by both {other} and {node}"
                        )));
                    }
                    winners.insert(task.clone(), (i, f));
                }
                held => answers.push((task, held)),
            }
        }
    }
    ensure_eq!(
        winners.len(),
        tasks.len(),
        "round {round}: every task's slot is taken by someone"
    );
    for (task, held) in answers {
        let (node, f) = (&holders[&task], &winners[&task].1);
        ensure!(
            held_by(&held, node, f),
            "round {round}, {task}: a loser must see the winner {node} ({f}), got {held:?}"
        );
    }
    Ok(winners)
}

/// 16 nodes race, all at once, for the slots of 20 tasks: free slots, then the same slots
/// just released by their holders, then the same slots whose holders unregistered. Each time
/// exactly one `Taken` per task, and every loser sees the winner.
pub async fn racing_nodes_one_winner_per_task(cx: &CaseContext) -> CaseResult {
    const NODES: usize = 16;
    const TASKS: usize = 20;
    let mut members = Vec::new();
    for i in 0..NODES {
        members.push(member(cx, &format!("racer{i}")).await?);
    }
    let tasks: Vec<String> = (0..TASKS).map(|t| format!("race-{t}")).collect();
    // Free slots.
    let winners = race(&members, &tasks, 0).await?;
    // Just released.
    for (i, f) in winners.values() {
        let (reg, lease) = &members[*i];
        reg.release_slot(lease, f).await?;
    }
    let winners = race(&members, &tasks, 1).await?;
    // Holders whose leases ended: they leave the race.
    let mut gone: Vec<usize> = winners.values().map(|(i, _)| *i).collect();
    gone.sort_unstable();
    gone.dedup();
    for i in gone.iter().rev() {
        let (reg, lease) = members.remove(*i);
        reg.unregister(&lease).await?;
    }
    ensure!(
        members.len() >= 2,
        "at least two racers must remain for the third round"
    );
    race(&members, &tasks, 2).await?;
    Ok(())
}

/// A slot ends with its holder's lease: after `unregister`, after a new registration of the
/// holder node (the old lease is replaced), and after expiry without keep-alives — but not
/// before 0.8 of the TTL.
pub async fn slot_ends_with_the_lease(cx: &CaseContext) -> CaseResult {
    let (b, lease_b) = member(cx, "b").await?;
    // Unregister.
    let (a, lease_a) = member(cx, "a").await?;
    ensure_eq!(
        a.acquire_slot(&lease_a, &fire("gone", 0)).await?,
        SlotOutcome::Taken,
        "free"
    );
    a.unregister(&lease_a).await?;
    ensure_eq!(
        b.acquire_slot(&lease_b, &fire("gone", 1000)).await?,
        SlotOutcome::Taken,
        "the slot of an unregistered holder is free"
    );
    // A new registration of the holder replaces its lease.
    let node = cx.node("again");
    let old = a.register(&node, LONG_TTL).await?;
    ensure_eq!(
        a.acquire_slot(&old, &fire("again", 0)).await?,
        SlotOutcome::Taken,
        "free"
    );
    let new = a.register(&node, LONG_TTL).await?;
    ensure_eq!(
        b.acquire_slot(&lease_b, &fire("again", 1000)).await?,
        SlotOutcome::Taken,
        "the slot of a replaced lease is free"
    );
    let out = a.acquire_slot(&new, &fire("again", 0)).await?;
    ensure!(
        held_by(&out, &lease_b.node_id, &fire("again", 1000)),
        "the node's new lease does not inherit the old lease's slot, got {out:?}"
    );
    // Expiry.
    let ttl = cx.min_ttl();
    let mortal = a.register(&cx.node("mortal"), ttl).await?;
    let started = Instant::now();
    ensure_eq!(
        a.acquire_slot(&mortal, &fire("mortal", 0)).await?,
        SlotOutcome::Taken,
        "free"
    );
    let probe = fire("mortal", 1000);
    let kept = holds_until(started + ttl.mul_f64(0.8), || async {
        Ok(!b.acquire_slot(&lease_b, &probe).await?.is_taken())
    })
    .await?;
    ensure!(
        kept,
        "the slot was free after {:?}, before 0.8 of its holder's TTL {ttl:?}",
        started.elapsed()
    );
    let freed = reached(cx.expiry_bound(), || async {
        Ok(b.acquire_slot(&lease_b, &probe).await?.is_taken())
    })
    .await?;
    ensure!(
        freed,
        "the slot was still held {:?} after its holder's last keep-alive (TTL {ttl:?})",
        started.elapsed()
    );
    Ok(())
}

/// Keep-alives keep a slot held past twice the TTL.
pub async fn keep_alive_keeps_the_slot(cx: &CaseContext) -> CaseResult {
    let (b, lease_b) = member(cx, "b").await?;
    let a = cx.open().await?;
    let ttl = cx.min_ttl();
    let lease = a.register(&cx.node("kept"), ttl).await?;
    ensure_eq!(
        a.acquire_slot(&lease, &fire("kept", 0)).await?,
        SlotOutcome::Taken,
        "free"
    );
    let until = Instant::now() + ttl * 2 + cx.expiry_slack();
    while Instant::now() < until {
        a.keep_alive(&lease).await?;
        let out = b.acquire_slot(&lease_b, &fire("kept", 1000)).await?;
        ensure!(
            held_by(&out, &lease.node_id, &fire("kept", 0)),
            "a slot whose lease is kept alive must stay held, got {out:?}"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    Ok(())
}

/// A caller whose lease has ended gets `LeaseLost` and writes nothing.
pub async fn ended_lease_cannot_take_a_slot(cx: &CaseContext) -> CaseResult {
    let (a, lease_a) = member(cx, "a").await?;
    let (b, lease_b) = member(cx, "b").await?;
    a.unregister(&lease_a).await?;
    ensure_err!(
        a.acquire_slot(&lease_a, &fire("job", 0)).await,
        Error::LeaseLost { .. },
        "acquire_slot with an unregistered lease"
    );
    ensure_eq!(
        b.acquire_slot(&lease_b, &fire("job", 1000)).await?,
        SlotOutcome::Taken,
        "nothing was written by the refused call"
    );
    Ok(())
}

/// `cleanup_all` frees every slot of the namespace; slots of another namespace stay.
pub async fn cleanup_all_frees_slots_of_its_namespace(cx: &CaseContext) -> CaseResult {
    let (a, lease_a) = member(cx, "a").await?;
    let (b, lease_b) = member(cx, "b").await?;
    let other = cx.open_other().await?;
    let other_lease = other.register(&cx.node("o"), LONG_TTL).await?;
    let other_b = cx.open_other().await?;
    let other_lease_b = other_b.register(&cx.node("ob"), LONG_TTL).await?;
    ensure_eq!(
        a.acquire_slot(&lease_a, &fire("job", 0)).await?,
        SlotOutcome::Taken,
        "free"
    );
    ensure_eq!(
        other.acquire_slot(&other_lease, &fire("job", 0)).await?,
        SlotOutcome::Taken,
        "the same task name in another namespace has its own slot"
    );
    a.cleanup_all().await?;
    ensure_eq!(
        b.acquire_slot(&lease_b, &fire("job", 1000)).await?,
        SlotOutcome::Taken,
        "cleanup_all frees the namespace's slots"
    );
    let out = other_b
        .acquire_slot(&other_lease_b, &fire("job", 1000))
        .await?;
    ensure!(
        held_by(&out, &other_lease.node_id, &fire("job", 0)),
        "cleanup_all of one namespace must not free another's slot, got {out:?}"
    );
    Ok(())
}
