//! etcd-specific checks of running slots on the shared server (the generic cases are the
//! conformance suite's `slots::`): the slot key is attached to the holder's etcd lease, a holder
//! whose lease outlived its registration (node key deleted, or moved to another lease without
//! the old one revoked) counts as ended, racing takeovers have one winner, and a damaged slot is
//! `Corrupt`.

mod common;

use std::time::Duration;

use chrono::Utc;
use dcron_core::{Error, FireKey, Lease, Node, Registry, SlotOutcome, SlotRecord};
use dcron_registry_etcd::EtcdRegistry;
use etcd_client::PutOptions;
use futures::future::join_all;

use common::{fire, shared, shared_in};

const LONG: Duration = Duration::from_secs(600);

fn slot_key(reg: &EtcdRegistry, task: &str) -> String {
    format!("/{}/slots/{task}", reg.namespace())
}

fn node_key(reg: &EtcdRegistry, node: &str) -> String {
    format!("/{}/nodes/{node}", reg.namespace())
}

fn lease_id(lease: &Lease) -> i64 {
    lease.id.parse().expect("numeric lease id")
}

async fn member(reg: &EtcdRegistry, node: &str) -> Lease {
    reg.register(&Node::new(node, Utc::now()), LONG)
        .await
        .expect("register")
}

fn held_by(outcome: &SlotOutcome, node: &str, holder: &FireKey) -> bool {
    matches!(outcome, SlotOutcome::Held { node_id, fire } if node_id == node && fire == holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_key_is_attached_to_the_holders_lease_and_released_only_by_it() {
    let Some(reg) = shared("slot_key_lease").await else {
        return;
    };
    let lease = member(&reg, "a").await;
    let f = fire("job", 0);
    assert_eq!(
        reg.acquire_slot(&lease, &f).await.expect("acquire"),
        SlotOutcome::Taken
    );
    let key = slot_key(&reg, "job");
    let resp = reg
        .client()
        .clone()
        .get(key.as_str(), None)
        .await
        .expect("get");
    let kv = resp.kvs().first().expect("the slot key is stored");
    assert_eq!(kv.lease(), lease_id(&lease), "attached to the node's lease");
    assert_eq!(
        SlotRecord::decode(&key, kv.value()).expect("a slot record"),
        SlotRecord::new(&lease, &f)
    );
    reg.release_slot(&lease, &f).await.expect("release");
    let resp = reg
        .client()
        .clone()
        .get(key.as_str(), None)
        .await
        .expect("get");
    assert!(resp.kvs().is_empty(), "released: the key is deleted");
}

/// A holder whose node key was deleted while its etcd lease lives on: the slot is free, taken
/// over by the next acquirer, and the former holder's own calls are `LeaseLost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_node_key_is_gone_counts_as_ended() {
    let Some(reg) = shared("slot_holder_gone").await else {
        return;
    };
    let a = member(&reg, "a").await;
    let b = member(&reg, "b").await;
    let held = fire("job", 0);
    assert_eq!(
        reg.acquire_slot(&a, &held).await.expect("acquire"),
        SlotOutcome::Taken
    );
    let out = reg
        .acquire_slot(&b, &fire("job", 1000))
        .await
        .expect("held");
    assert!(held_by(&out, "a", &held), "a lives: {out:?}");

    reg.client()
        .clone()
        .delete(node_key(&reg, "a"), None)
        .await
        .expect("raw delete of the node key");
    assert_eq!(
        reg.acquire_slot(&b, &fire("job", 1000))
            .await
            .expect("take over"),
        SlotOutcome::Taken,
        "the holder's node key is gone: the slot is free"
    );
    let resp = reg
        .client()
        .clone()
        .get(slot_key(&reg, "job"), None)
        .await
        .expect("get");
    assert_eq!(
        resp.kvs().first().map(|kv| kv.lease()),
        Some(lease_id(&b)),
        "the slot moved to the new holder's lease"
    );
    assert!(
        matches!(
            reg.acquire_slot(&a, &held).await,
            Err(Error::LeaseLost { .. })
        ),
        "the former holder's lease holds no registration"
    );
}

/// A holder whose node key moved to another lease while the old lease was not revoked (a
/// `register` that could not revoke it): the old lease's slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_re_registered_under_another_lease_counts_as_ended() {
    let Some(reg) = shared("slot_holder_moved").await else {
        return;
    };
    let old = member(&reg, "a").await;
    let b = member(&reg, "b").await;
    let held = fire("job", 0);
    assert_eq!(
        reg.acquire_slot(&old, &held).await.expect("acquire"),
        SlotOutcome::Taken
    );
    // What a re-registration does, except revoking the old lease.
    let mut client = reg.client().clone();
    let newer = client.lease_grant(600, None).await.expect("grant").id();
    client
        .put(
            node_key(&reg, "a"),
            Node::new("a", Utc::now()).encode(),
            Some(PutOptions::new().with_lease(newer)),
        )
        .await
        .expect("raw re-registration");
    let new = Lease {
        node_id: "a".into(),
        id: newer.to_string(),
        ttl: LONG,
    };
    assert!(
        matches!(
            reg.acquire_slot(&old, &held).await,
            Err(Error::LeaseLost { .. })
        ),
        "the replaced lease has ended"
    );
    assert_eq!(
        reg.acquire_slot(&new, &fire("job", 2000))
            .await
            .expect("take over"),
        SlotOutcome::Taken,
        "the node's new lease finds the old lease's slot free"
    );
    let out = reg.acquire_slot(&b, &held).await.expect("held");
    assert!(held_by(&out, "a", &fire("job", 2000)), "{out:?}");
    client.lease_revoke(newer).await.expect("revoke");
}

/// 16 nodes race to take over a slot whose holder has ended (node key deleted, lease alive):
/// exactly one `Taken`, every other answer `Held` naming the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_takeovers_have_one_winner() {
    let Some(reg) = shared("slot_takeover_race").await else {
        return;
    };
    let dead = member(&reg, "dead").await;
    assert_eq!(
        reg.acquire_slot(&dead, &fire("job", 0))
            .await
            .expect("acquire"),
        SlotOutcome::Taken
    );
    reg.client()
        .clone()
        .delete(node_key(&reg, "dead"), None)
        .await
        .expect("raw delete of the node key");
    let mut racers = Vec::new();
    for i in 0..16 {
        let client = shared_in("slot_takeover_race", reg.namespace())
            .await
            .expect("client");
        let lease = member(&client, &format!("r{i}")).await;
        racers.push((client, lease, fire("job", 1000 * (i + 1))));
    }
    let answers = join_all(racers.iter().map(|(client, lease, f)| async move {
        (
            lease.node_id.clone(),
            f.clone(),
            client.acquire_slot(lease, f).await.expect("acquire"),
        )
    }))
    .await;
    let winners: Vec<_> = answers
        .iter()
        .filter(|(_, _, out)| out.is_taken())
        .collect();
    assert_eq!(winners.len(), 1, "exactly one winner: {answers:?}");
    let (node, f, _) = winners[0];
    for (_, _, out) in &answers {
        assert!(
            out.is_taken() || held_by(out, node, f),
            "a loser sees the winner: {out:?}"
        );
    }
}

/// A slot value that is not a slot record is `Corrupt` for an acquirer; a release leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_slot_is_corrupt() {
    let Some(reg) = shared("slot_corrupt").await else {
        return;
    };
    let a = member(&reg, "a").await;
    let key = slot_key(&reg, "job");
    reg.client()
        .clone()
        .put(
            key.as_str(),
            b"not json".to_vec(),
            Some(PutOptions::new().with_lease(lease_id(&a))),
        )
        .await
        .expect("raw put");
    let got = reg.acquire_slot(&a, &fire("job", 0)).await;
    assert!(
        matches!(&got, Err(Error::Corrupt { key: k, .. }) if *k == key),
        "{got:?}"
    );
    reg.release_slot(&a, &fire("job", 0))
        .await
        .expect("release");
    let resp = reg
        .client()
        .clone()
        .get(key.as_str(), None)
        .await
        .expect("get");
    assert_eq!(resp.kvs().len(), 1, "not the caller's: left alone");
}
