//! Running slots on a real ZooKeeper, beyond the conformance suite's `slots::` cases: a slot
//! ends when another process replaces its holder's registration (while the holder's session
//! still lives), the slot znode is never deleted (its version keeps counting), and a slot whose
//! data this crate did not write is `Corrupt` until `cleanup_all` frees it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{shared_connect, shared_registry, unique, write_raw};
use dcron_core::{Error, FireKey, Lease, Node, Registry, SlotOutcome};
use dcron_registry_zk::ZkRegistry;
use futures::future::join_all;

const TTL: Duration = Duration::from_secs(60);

fn fire(task: &str, ms: i64) -> FireKey {
    FireKey::new(
        task,
        chrono::DateTime::from_timestamp_millis(1_900_000_000_000 + ms).expect("instant"),
    )
}

fn node(id: &str) -> Node {
    Node::new(id, Utc::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_from_another_process_frees_the_old_leases_slot() {
    let ns = unique("slot-replaced");
    let Some(a) = shared_registry(&ns).await else {
        return;
    };
    let Some(b) = shared_registry(&ns).await else {
        return;
    };
    let old = a.register(&node("n"), TTL).await.expect("register");
    let other = b.register(&node("m"), TTL).await.expect("register");
    assert_eq!(
        a.acquire_slot(&old, &fire("job", 0))
            .await
            .expect("acquire"),
        SlotOutcome::Taken
    );
    // Another handle (another process) registers node `n` again: the old registration is
    // deleted, while the old lease's session lives on in `a`.
    let new = b.register(&node("n"), TTL).await.expect("register again");
    assert!(
        a.session_id(&old).is_some(),
        "the old lease's session still lives in its own handle"
    );
    assert_eq!(
        b.acquire_slot(&other, &fire("job", 1000))
            .await
            .expect("acquire"),
        SlotOutcome::Taken,
        "the slot of a replaced lease is free at once"
    );
    assert_eq!(
        b.acquire_slot(&new, &fire("job", 0))
            .await
            .expect("acquire"),
        SlotOutcome::Held {
            node_id: "m".into(),
            fire: fire("job", 1000)
        },
        "the node's new lease does not inherit the slot"
    );
    assert!(
        matches!(
            a.acquire_slot(&old, &fire("other", 0)).await,
            Err(Error::LeaseLost { ref node }) if node == "n"
        ),
        "the replaced lease cannot take a slot"
    );
    // The old lease's release leaves the new holder alone.
    a.release_slot(&old, &fire("job", 0))
        .await
        .expect("release");
    assert!(!b
        .acquire_slot(&new, &fire("job", 0))
        .await
        .expect("acquire")
        .is_taken());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_znode_stays_and_its_version_keeps_counting() {
    let ns = unique("slot-znode");
    let Some(reg) = shared_registry(&ns).await else {
        return;
    };
    let lease = reg.register(&node("n"), TTL).await.expect("register");
    let path = format!("{}/slots/a%20job", reg.root());
    let zk = zookeeper_async::ZooKeeper::connect(&shared_connect(), Duration::from_secs(5), |_| {})
        .await
        .expect("plain client");
    let mut versions = Vec::new();
    for k in 0..3 {
        let f = fire("a job", k);
        assert!(reg
            .acquire_slot(&lease, &f)
            .await
            .expect("acquire")
            .is_taken());
        let (data, stat) = zk.get_data(&path, false).await.expect("held slot");
        assert!(!data.is_empty());
        versions.push(stat.version);
        reg.release_slot(&lease, &f).await.expect("release");
        let (data, stat) = zk.get_data(&path, false).await.expect("freed slot stays");
        assert!(data.is_empty(), "a freed slot is empty");
        versions.push(stat.version);
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions only grow: {versions:?}"
    );
    let _ = zk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_slot_is_corrupt_until_cleanup_all() {
    let ns = unique("slot-corrupt");
    let Some(reg) = shared_registry(&ns).await else {
        return;
    };
    let lease = reg.register(&node("n"), TTL).await.expect("register");
    let path = format!("{}/slots/job", reg.root());
    for (bytes, why) in [
        (&b"not json"[..], "not a running slot record"),
        (
            br#"{"holder":{"node_id":"x","lease":"1","fire":{"task":"job","instant":"2030-01-01T00:00:00Z"}},"registration":"y.0000000001"}"#,
            "registration",
        ),
    ] {
        write_raw(&shared_connect(), &path, bytes)
            .await
            .expect("plant");
        let got = reg.acquire_slot(&lease, &fire("job", 0)).await;
        assert!(
            matches!(got, Err(Error::Corrupt { ref key, ref reason }) if key == "job" && reason.contains(why)),
            "{got:?}"
        );
        let got = reg.release_slot(&lease, &fire("job", 0)).await;
        assert!(matches!(got, Err(Error::Corrupt { .. })), "{got:?}");
    }
    reg.cleanup_all().await.expect("cleanup_all");
    assert_eq!(
        reg.acquire_slot(&lease, &fire("job", 0))
            .await
            .expect("acquire"),
        SlotOutcome::Taken,
        "cleanup_all frees a corrupt slot too"
    );
}

/// `racers` acquire `f`'s slot at once (each through its own lease, let go together by a
/// barrier, each for its own fire so that a `Held` names who won); checks there is exactly one
/// `Taken` and every other answer is `Held` naming it; answers the winner's index and fire.
async fn race(racers: &[(ZkRegistry, Lease)], f: &FireKey) -> (usize, FireKey) {
    let barrier = Arc::new(tokio::sync::Barrier::new(racers.len()));
    let runs = racers.iter().enumerate().map(|(i, (reg, lease))| {
        let (reg, lease, barrier) = (reg.clone(), lease.clone(), barrier.clone());
        let mine = FireKey::new(
            f.task.as_str(),
            f.instant + chrono::Duration::seconds(i as i64),
        );
        tokio::spawn(async move {
            barrier.wait().await;
            let got = reg.acquire_slot(&lease, &mine).await.expect("acquire");
            (mine, got)
        })
    });
    let answers: Vec<(FireKey, SlotOutcome)> = join_all(runs)
        .await
        .into_iter()
        .map(|r| r.expect("racer"))
        .collect();
    let winners: Vec<usize> = (0..answers.len())
        .filter(|i| answers[*i].1.is_taken())
        .collect();
    assert_eq!(winners.len(), 1, "{}: one winner, got {answers:?}", f.task);
    let winner = winners[0];
    let held = SlotOutcome::Held {
        node_id: racers[winner].1.node_id.clone(),
        fire: answers[winner].0.clone(),
    };
    for (_, got) in &answers {
        assert!(got.is_taken() || *got == held, "{got:?} != {held:?}");
    }
    (winner, answers[winner].0.clone())
}

/// The conformance race mostly meets slots already held; here every write path of the slot is
/// raced: the first `create` of a slot znode, the compare-and-set over a released (empty) slot
/// and the one over a slot whose holder's lease ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_write_path_has_one_winner() {
    const HANDLES: usize = 8;
    const LEASES_PER_HANDLE: usize = 2;
    const TASKS: usize = 6;
    let ns = unique("slot-race");
    let mut racers: Vec<(ZkRegistry, Lease)> = Vec::new();
    for h in 0..HANDLES {
        let Some(reg) = shared_registry(&ns).await else {
            return;
        };
        for l in 0..LEASES_PER_HANDLE {
            let lease = reg
                .register(&node(&format!("racer-{h}-{l}")), TTL)
                .await
                .expect("register");
            racers.push((reg.clone(), lease));
        }
    }
    for t in 0..TASKS {
        let task = format!("fresh-{t}");
        // The slot znode does not exist yet: racing creates.
        let (winner, won) = race(&racers, &fire(&task, 0)).await;
        let (reg, lease) = &racers[winner];
        reg.release_slot(lease, &won).await.expect("release");
        // Released: racing compare-and-sets over the empty slot.
        let (winner, _) = race(&racers, &fire(&task, 100_000)).await;
        // The holder's lease ends: racing compare-and-sets over a slot of an ended lease.
        let (reg, lease) = racers.remove(winner);
        reg.unregister(&lease).await.expect("unregister");
        race(&racers, &fire(&task, 200_000)).await;
    }
}
