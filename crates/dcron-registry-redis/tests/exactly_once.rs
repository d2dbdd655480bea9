//! The exactly-once contract on the shared Redis server (`DCRON_TEST_REDIS_URL`): lives and
//! generations, the claim rules in order (with the server's clock), one outcome per fire, tokens
//! across cleanups, retention and lease bounds, stale leases, watch order and isolation, and a
//! claim whose reply is lost. Unreachable server → skipped with the reason printed (fails under
//! `DCRON_TEST_REQUIRE=1`).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{meta, proxy::Proxy};
use dcron_core::{
    expiry_tolerance, ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Life, Node, NodeEvent,
    PutMode, Registry, TaskMetaEvent, MAX_WATCH_DELAY,
};
use dcron_registry_redis::{RedisRegistry, RedisRegistryConfig};
use dcron_testkit::{holds_until, wait_until};
use futures::StreamExt;
use redis::AsyncCommands;
use tokio::time::Instant;

const LONG: Duration = Duration::from_secs(600);

fn namespace(label: &str) -> String {
    format!(
        "dcron-eo-{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A registry on a fresh namespace of the shared server, or `None` (skipped).
async fn open(label: &str) -> Option<RedisRegistry> {
    let url = RedisRegistry::env_url();
    match common::open(&url, &namespace(label)).await {
        Ok(reg) => Some(reg),
        Err(e) => {
            common::skip(&format!("redis at {url} unreachable: {e}"));
            None
        }
    }
}

fn at(offset_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_893_456_000_000 + offset_ms)
        .single()
        .expect("valid instant")
}

fn fire(task: &str, i: i64) -> FireKey {
    FireKey::new(task, at(i * 1000))
}

/// A request for `fire` in `life` whose deadline is a day away.
fn request(fire: &FireKey, life: &Life) -> ClaimRequest {
    ClaimRequest::new(
        fire.clone(),
        life.generation,
        fire.instant + chrono::Duration::days(1),
        LONG,
    )
}

async fn life_of(reg: &RedisRegistry, name: &str) -> Life {
    reg.ensure_lives(&[(name.to_string(), Utc::now())])
        .await
        .expect("ensure_lives")[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_callers_get_the_same_lives_in_one_call_each() {
    let Some(reg) = open("lives").await else {
        return;
    };
    let names: Vec<String> = (0..50).map(|i| format!("static:{i}")).collect();
    let calls = (0..8).map(|c| {
        let reg = reg.clone();
        let asked: Vec<(String, DateTime<Utc>)> =
            names.iter().map(|n| (n.clone(), at(c * 1000))).collect();
        async move { reg.ensure_lives(&asked).await.expect("ensure_lives") }
    });
    let answers = futures::future::join_all(calls).await;
    for answer in &answers {
        assert_eq!(answer.len(), names.len(), "one life per name, in order");
        assert_eq!(answer, &answers[0], "every caller gets the same lives");
    }
    let generations: BTreeSet<u64> = answers[0].iter().map(|l| l.generation).collect();
    assert_eq!(generations.len(), names.len(), "one generation per name");
    assert!(!generations.contains(&0));
    for life in &answers[0] {
        assert!(
            (0..8).any(|c| life.live_since == at(c * 1000)),
            "live-since is one caller's instant: {life:?}"
        );
    }
    // A name asked twice in one call gets one life.
    let twice = reg
        .ensure_lives(&[("dup".into(), at(1)), ("dup".into(), at(2))])
        .await
        .expect("ensure_lives");
    assert_eq!(twice[0], twice[1]);
    assert_eq!(twice[0].live_since, at(1));
    // Sub-millisecond live-since instants are kept exactly.
    let precise = Utc
        .timestamp_opt(1_900_000_000, 123_456_789)
        .single()
        .expect("instant");
    let life = reg
        .ensure_lives(&[("precise".into(), precise)])
        .await
        .expect("ensure_lives")[0];
    assert_eq!(life.live_since, precise);
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_start_keep_and_remove_lives() {
    let Some(reg) = open("life-writes").await else {
        return;
    };
    let mut task = meta("dyn", "@hourly");
    task.created_at = Some(at(0));
    reg.put_task(&task, PutMode::CreateOnly).await.expect("put");
    let first = life_of(&reg, "dyn").await;
    assert_eq!(first.live_since, at(0), "create-only starts the life");

    reg.put_task(&task.clone().with_payload("v2"), PutMode::Update)
        .await
        .expect("update");
    reg.mark_deleted("dyn", Utc::now()).await.expect("mark");
    reg.clear_tombstone("dyn").await.expect("clear");
    assert_eq!(
        life_of(&reg, "dyn").await,
        first,
        "update, mark-deleted and clear keep the life"
    );

    task.created_at = Some(at(5000));
    reg.put_task(&task, PutMode::Force).await.expect("force");
    let forced = life_of(&reg, "dyn").await;
    assert!(
        forced.generation > first.generation,
        "force starts a new life"
    );
    assert_eq!(forced.live_since, at(5000));

    reg.cleanup_task("dyn").await.expect("cleanup");
    let after = reg
        .ensure_lives(&[("dyn".into(), at(9000))])
        .await
        .expect("ensure_lives")[0];
    assert!(after.generation > forced.generation, "cleanup removed it");
    assert_eq!(after.live_since, at(9000));

    // A tombstoned name gets its life too.
    reg.mark_deleted("gone", Utc::now()).await.expect("mark");
    assert!(life_of(&reg, "gone").await.generation > 0);
    reg.cleanup_all().await.expect("cleanup");
    let fresh = life_of(&reg, "gone").await;
    assert!(
        fresh.generation > after.generation,
        "cleanup_all removed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_life_clears_tombstone_and_claims_and_keeps_the_record() {
    let Some(reg) = open("restart").await else {
        return;
    };
    let task = meta("reused", "@hourly");
    reg.put_task(&task, PutMode::CreateOnly).await.expect("put");
    let old = life_of(&reg, "reused").await;
    let me = Claimant::new("a", 1);
    let f = fire("reused", 0);
    assert!(reg.claim(&me, &[request(&f, &old)]).await.expect("claim")[0].is_won());
    reg.mark_deleted("reused", Utc::now()).await.expect("mark");
    let mut events = reg.watch_tasks().await.expect("watch");

    let new = reg.restart_life("reused", at(7)).await.expect("restart");
    assert!(new.generation > old.generation);
    assert_eq!(new.live_since, at(7));
    assert_eq!(life_of(&reg, "reused").await, new);
    assert_eq!(reg.get_tombstone("reused").await.expect("get"), None);
    assert_eq!(reg.get_task("reused").await.expect("get"), Some(task));
    assert_eq!(
        reg.list_claims("reused").await.expect("list").items.len(),
        1,
        "claims are kept"
    );
    let event = tokio::time::timeout(MAX_WATCH_DELAY, events.next()).await;
    assert_eq!(
        event.ok().flatten(),
        Some(TaskMetaEvent::TombstoneCleared {
            name: "reused".into()
        })
    );
    // The old life's requests are refused; in the new life the instant claimed in the old one
    // stays claimed, and other instants are claimable.
    assert_eq!(
        reg.claim(&me, &[request(&f, &old)]).await.expect("claim")[0],
        ClaimOutcome::Superseded {
            current: Some(new.generation)
        }
    );
    assert_eq!(
        reg.claim(&Claimant::new("b", 1), &[request(&f, &new)])
            .await
            .expect("claim")[0],
        ClaimOutcome::Lost {
            holder: Some("a".into())
        }
    );
    assert!(reg
        .claim(&me, &[request(&fire("reused", 1), &new)])
        .await
        .expect("claim")[0]
        .is_won());
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_rules_apply_in_order() {
    let Some(reg) = open("rules").await else {
        return;
    };
    let life = life_of(&reg, "t").await;
    let me = Claimant::new("node-a", 1);
    let f0 = fire("t", 0);

    // No life, or another generation: superseded, nothing written.
    let out = reg
        .claim(&me, &[request(&fire("lifeless", 0), &life)])
        .await
        .expect("claim");
    assert_eq!(out, vec![ClaimOutcome::Superseded { current: None }]);
    // Generation 0 is no life: refused with or without a life for the name.
    let zero = Life::new(0, life.live_since);
    assert_eq!(
        reg.claim(
            &me,
            &[
                request(&fire("lifeless", 1), &zero),
                request(&fire("t", 99), &zero)
            ]
        )
        .await
        .expect("claim"),
        vec![
            ClaimOutcome::Superseded { current: None },
            ClaimOutcome::Superseded {
                current: Some(life.generation)
            }
        ]
    );
    let stale = Life::new(life.generation + 1000, life.live_since);
    assert_eq!(
        reg.claim(&me, &[request(&f0, &stale)])
            .await
            .expect("claim"),
        vec![ClaimOutcome::Superseded {
            current: Some(life.generation)
        }]
    );
    assert!(reg.list_claims("t").await.expect("list").items.is_empty());

    // Past the deadline by the server's clock: late, nothing written.
    let past = ClaimRequest::new(
        f0.clone(),
        life.generation,
        Utc::now() - chrono::Duration::seconds(5),
        LONG,
    );
    assert_eq!(
        reg.claim(&me, std::slice::from_ref(&past))
            .await
            .expect("claim"),
        vec![ClaimOutcome::Late]
    );
    assert!(reg.list_claims("t").await.expect("list").items.is_empty());

    // Won, then the same claimant again: the same claim and token, even past the deadline.
    let won = reg.claim(&me, &[request(&f0, &life)]).await.expect("claim");
    let token = won[0].token().expect("won");
    assert_eq!(won[0], ClaimOutcome::Won { token });
    assert_eq!(
        reg.claim(&me, &[request(&f0, &life)]).await.expect("claim"),
        vec![ClaimOutcome::WonEarlier { token }]
    );
    assert_eq!(
        reg.claim(&me, &[past]).await.expect("claim"),
        vec![ClaimOutcome::WonEarlier { token }]
    );
    // Another node, or the same node under another epoch, loses to the holder.
    for other in [Claimant::new("node-b", 1), Claimant::new("node-a", 2)] {
        assert_eq!(
            reg.claim(&other, &[request(&f0, &life)])
                .await
                .expect("claim"),
            vec![ClaimOutcome::Lost {
                holder: Some("node-a".into())
            }],
            "{other}"
        );
    }
    let listed = reg.list_claims("t").await.expect("list");
    assert_eq!(listed.items.len(), 1);
    let claim = &listed.items[0];
    assert_eq!(
        (
            claim.fire.clone(),
            claim.claimant(),
            claim.generation,
            claim.token
        ),
        (f0.clone(), me.clone(), life.generation, token)
    );

    // A fire twice in one batch is decided once: the copy answers as a retry would.
    let f1 = fire("t", 1);
    let out = reg
        .claim(&me, &[request(&f1, &life), request(&f1, &life)])
        .await
        .expect("claim");
    let t1 = out[0].token().expect("won");
    assert_eq!(
        out,
        vec![
            ClaimOutcome::Won { token: t1 },
            ClaimOutcome::WonEarlier { token: t1 }
        ]
    );

    // Tombstoned first of all, whatever else holds.
    reg.mark_deleted("t", Utc::now()).await.expect("mark");
    for r in [request(&f0, &life), request(&fire("t", 9), &stale)] {
        assert_eq!(
            reg.claim(&me, &[r]).await.expect("claim"),
            vec![ClaimOutcome::Tombstoned]
        );
    }
    assert!(reg.claim(&me, &[]).await.expect("empty batch").is_empty());
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_key_fails_one_fire() {
    let Some(reg) = open("bad-key").await else {
        return;
    };
    let mut raw = common::raw(&RedisRegistry::env_url()).await.expect("raw");
    let keys = reg.keys().clone();
    let lives = reg
        .ensure_lives(&[("good".into(), at(0)), ("broken".into(), at(0))])
        .await
        .expect("lives");
    // A claim key of the wrong type, and a life key that holds no life.
    let damaged = fire("good", 1);
    let claim_key = format!("{}{}", keys.claim_prefix("good"), damaged.instant_millis());
    let _: () = raw.set(&claim_key, "junk").await.expect("set");
    let _: () = raw.set(keys.life("broken"), "junk").await.expect("set");
    let me = Claimant::new("n", 1);
    let bad_name = FireKey::new("a/b", at(0));
    let batch = vec![
        request(&fire("good", 0), &lives[0]),
        request(&damaged, &lives[0]),
        request(&fire("broken", 0), &lives[1]),
        request(&bad_name, &lives[0]),
        request(&fire("good", 2), &lives[0]),
    ];
    let out = reg.claim(&me, &batch).await.expect("the batch is decided");
    assert_eq!(out.len(), batch.len());
    assert!(out[0].is_won(), "{out:?}");
    assert!(
        matches!(&out[1], ClaimOutcome::Failed(Error::Corrupt { key, .. }) if *key == claim_key),
        "{out:?}"
    );
    assert!(
        matches!(out[2], ClaimOutcome::Failed(Error::Corrupt { .. })),
        "{out:?}"
    );
    assert!(
        matches!(out[3], ClaimOutcome::Failed(Error::InvalidTaskName { .. })),
        "{out:?}"
    );
    assert!(out[4].is_won(), "{out:?}");
    // The damaged claim key is listed as corrupt next to the good claims.
    let listed = reg.list_claims("good").await.expect("list");
    assert_eq!(listed.items.len(), 2);
    // ensure_lives replaces a damaged life with a new one.
    let repaired = reg
        .ensure_lives(&[("broken".into(), at(5))])
        .await
        .expect("lives")[0];
    assert!(repaired.generation > lives[1].generation);
    assert!(reg
        .claim(&me, &[request(&fire("broken", 0), &repaired)])
        .await
        .expect("claim")[0]
        .is_won());
    let _: () = raw.del(&claim_key).await.expect("del");
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_generations_grow_across_cleanup_force_and_cleanup_all() {
    let Some(reg) = open("tokens").await else {
        return;
    };
    let me = Claimant::new("n", 1);
    let mut last_token = 0;
    let mut last_generation = 0;
    let mut check = |life: Life, outcomes: Vec<ClaimOutcome>| {
        assert!(
            life.generation > last_generation,
            "generation {life:?} after {last_generation}"
        );
        last_generation = life.generation;
        for o in outcomes {
            let token = o.token().expect("won");
            assert!(token > last_token, "token {token} after {last_token}");
            last_token = token;
        }
    };
    // Each call claims other instants: claims outlive cleanups and new lives.
    let mut calls = 0;
    let mut batch = |life: Life| -> Vec<ClaimRequest> {
        calls += 1;
        (0..20)
            .map(|i| request(&fire("fenced", calls * 100 + i), &life))
            .collect()
    };
    for round in 0..3 {
        let life = life_of(&reg, "fenced").await;
        let out = reg.claim(&me, &batch(life)).await.expect("claim");
        check(life, out);
        match round {
            0 => reg.cleanup_task("fenced").await.expect("cleanup"),
            1 => reg.cleanup_all().await.expect("cleanup all"),
            _ => {}
        }
    }
    let mut task = meta("fenced", "@hourly");
    reg.put_task(&task, PutMode::Force).await.expect("force");
    let life = life_of(&reg, "fenced").await;
    check(life, reg.claim(&me, &batch(life)).await.expect("claim"));
    task.created_at = Some(Utc::now());
    reg.put_task(&task, PutMode::Force).await.expect("force");
    let life = life_of(&reg, "fenced").await;
    check(life, reg.claim(&me, &batch(life)).await.expect("claim"));
    let life = reg
        .restart_life("fenced", Utc::now())
        .await
        .expect("restart");
    check(life, reg.claim(&me, &batch(life)).await.expect("claim"));
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_kept_for_their_retention_and_gone_within_the_tolerance() {
    let Some(reg) = open("retention").await else {
        return;
    };
    let retention = Duration::from_secs(2);
    let life = life_of(&reg, "kept").await;
    let short = fire("kept", 0);
    let long = fire("kept", 1);
    let started = Instant::now();
    let out = reg
        .claim(
            &Claimant::new("a", 1),
            &[
                ClaimRequest::new(
                    short.clone(),
                    life.generation,
                    at(0) + chrono::Duration::days(1),
                    retention,
                ),
                request(&long, &life),
            ],
        )
        .await
        .expect("claim");
    assert!(out.iter().all(ClaimOutcome::is_won), "{out:?}");
    let other = Claimant::new("b", 1);
    // Held by `a` (listed, and lost by others) until the retention has passed...
    let kept = holds_until(started + retention.mul_f64(0.9), || async {
        let probe = reg
            .claim(&other, &[request(&short, &life)])
            .await
            .expect("claim");
        matches!(probe[0], ClaimOutcome::Lost { .. })
    })
    .await;
    assert_eq!(
        kept,
        Ok(true),
        "claim gone after {:?} of {retention:?}",
        started.elapsed()
    );
    // ...and gone (not listed, claimable) within the tolerance after it.
    let bound = retention + expiry_tolerance(retention);
    if let Err(e) = wait_until(
        "the expired claim unlisted",
        bound.saturating_sub(started.elapsed()),
        || async {
            let listed = reg.list_claims("kept").await.expect("list");
            !listed.items.iter().any(|c| c.fire == short)
        },
    )
    .await
    {
        panic!("{e}; a claim with retention {retention:?} still listed after {bound:?}");
    }
    assert!(reg
        .claim(&other, &[request(&short, &life)])
        .await
        .expect("claim")[0]
        .is_won());
    // The other claim of the batch keeps its own, longer retention.
    assert_eq!(
        reg.claim(&other, &[request(&long, &life)])
            .await
            .expect("claim"),
        vec![ClaimOutcome::Lost {
            holder: Some("a".into())
        }]
    );
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_leases_are_kept_for_their_ttl_and_end_within_the_tolerance() {
    let Some(reg) = open("ttl").await else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let mut watch = reg.watch_nodes().await.expect("watch");
    let lease = reg
        .register(&Node::new("short", Utc::now()), ttl)
        .await
        .expect("register");
    assert!(lease.ttl >= ttl, "granted {:?} for {ttl:?}", lease.ttl);
    // The scenario: renew half a second into the lease, so that a TTL counted from the
    // registration instead of the last keep-alive would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let renewed = Instant::now();
    reg.keep_alive(&lease).await.expect("keep alive");
    // Listed for the whole TTL after the last keep-alive...
    let listed = holds_until(renewed + ttl.mul_f64(0.9), || async {
        reg.list_nodes()
            .await
            .expect("list")
            .items
            .iter()
            .any(|n| n.id == "short")
    })
    .await;
    assert_eq!(
        listed,
        Ok(true),
        "node gone {:?} after its keep-alive (TTL {ttl:?})",
        renewed.elapsed()
    );
    // ...gone within the tolerance after it, and the watch says so within its delay.
    let bound = lease.ttl + expiry_tolerance(lease.ttl);
    if let Err(e) = wait_until(
        "the expired node unlisted",
        bound.saturating_sub(renewed.elapsed()),
        || async {
            !reg.list_nodes()
                .await
                .expect("list")
                .items
                .iter()
                .any(|n| n.id == "short")
        },
    )
    .await
    {
        panic!("{e}; node still listed {bound:?} after its last keep-alive");
    }
    let deadline = renewed + bound + MAX_WATCH_DELAY;
    let mut deleted = false;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, watch.next()).await {
        if event == (NodeEvent::Delete { id: "short".into() }) {
            deleted = true;
            break;
        }
    }
    assert!(deleted, "no Delete for the expired node");
    assert!(matches!(
        reg.keep_alive(&lease).await,
        Err(Error::LeaseLost { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_lease_can_neither_update_nor_remove_the_newer_registration() {
    let Some(reg) = open("stale-lease").await else {
        return;
    };
    let mut node = Node::new("n", Utc::now());
    let old = reg.register(&node, LONG).await.expect("register");
    node.hostname = "newer".into();
    let new = reg.register(&node, LONG).await.expect("register again");
    assert_ne!(old.id, new.id);
    let mut stale = node.clone();
    stale.hostname = "stale".into();
    assert!(matches!(
        reg.update_node(&old, &stale).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        reg.keep_alive(&old).await,
        Err(Error::LeaseLost { .. })
    ));
    reg.unregister(&old)
        .await
        .expect("a stale unregister is Ok");
    assert_eq!(
        reg.list_nodes().await.expect("list").items,
        vec![node.clone()]
    );
    reg.keep_alive(&new).await.expect("the newer lease lives");
    reg.unregister(&new).await.expect("unregister");
    assert!(reg.list_nodes().await.expect("list").items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_watch_never_reports_an_event_older_than_one_it_reported() {
    // A node check every 2 ms races the published messages as hard as it can.
    let url = RedisRegistry::env_url();
    let ns = namespace("order");
    let reg = match RedisRegistryConfig::new(&url)
        .namespace(&ns)
        .node_check_interval(Duration::from_millis(2))
        .build()
    {
        Ok(reg) if reg.ping().await.is_ok() => reg,
        _ => {
            common::skip(&format!("redis at {url} unreachable"));
            return;
        }
    };
    let mut watch = reg.watch_nodes().await.expect("watch");
    const UPDATES: u32 = 300;
    let writer = {
        let reg = reg.clone();
        tokio::spawn(async move {
            for round in 0..3u32 {
                let mut node = Node::new("racer", Utc::now());
                node.weight = round * 1000;
                let lease = reg.register(&node, LONG).await.expect("register");
                for i in 1..=UPDATES {
                    node.weight = round * 1000 + i;
                    reg.update_node(&lease, &node).await.expect("update");
                }
                reg.unregister(&lease).await.expect("unregister");
            }
        })
    };
    writer.await.expect("writer");
    // Everything the watch reports, until it has been quiet for a while after the last change.
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await
    {
        events.push(event);
        assert!(Instant::now() < deadline, "the watch never went quiet");
    }
    // Weights only grow; after a Delete only a newer registration (a later round) comes. A
    // Delete between rounds may be coalesced away, never reordered.
    let mut last: Option<u32> = None;
    let mut deleted_after: Option<u32> = None;
    let mut rounds = BTreeSet::new();
    for (i, event) in events.iter().enumerate() {
        match event {
            NodeEvent::Put(node) => {
                if let Some(last) = last {
                    assert!(
                        node.weight > last,
                        "event {i}: Put of weight {} after weight {last}",
                        node.weight
                    );
                }
                if let Some(d) = deleted_after {
                    assert!(
                        node.weight / 1000 > d / 1000,
                        "event {i}: Put of weight {} after the Delete that followed {d}",
                        node.weight
                    );
                }
                rounds.insert(node.weight / 1000);
                last = Some(node.weight);
                deleted_after = None;
            }
            NodeEvent::Delete { .. } => {
                assert!(deleted_after.is_none(), "event {i}: two Deletes in a row");
                deleted_after = last;
            }
            NodeEvent::Resync => panic!("event {i}: a Resync on a healthy watch"),
        }
    }
    assert_eq!(
        events.last(),
        Some(&NodeEvent::Delete { id: "racer".into() }),
        "the final unregister is reported last ({} events)",
        events.len()
    );
    assert_eq!(rounds.len(), 3, "every registration reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_of_a_namespace_that_is_a_prefix_of_another_see_only_their_own() {
    let url = RedisRegistry::env_url();
    let base = namespace("prefix");
    let mut regs = Vec::new();
    for ns in [base.clone(), format!("{base}-b"), format!("{base}:b")] {
        match common::open(&url, &ns).await {
            Ok(reg) => regs.push(reg),
            Err(e) => {
                common::skip(&format!("redis at {url} unreachable: {e}"));
                return;
            }
        }
    }
    let mut task_watches = Vec::new();
    let mut node_watches = Vec::new();
    for reg in &regs {
        task_watches.push(reg.watch_tasks().await.expect("watch"));
        node_watches.push(reg.watch_nodes().await.expect("watch"));
    }
    let mut leases = Vec::new();
    for (i, reg) in regs.iter().enumerate() {
        reg.put_task(&meta(&format!("task-{i}"), "@hourly"), PutMode::CreateOnly)
            .await
            .expect("put");
        leases.push(
            reg.register(&Node::new(format!("node-{i}"), Utc::now()), LONG)
                .await
                .expect("register"),
        );
    }
    for (i, (tasks, nodes)) in task_watches.iter_mut().zip(&mut node_watches).enumerate() {
        let own_task = format!("task-{i}");
        let got = tokio::time::timeout(MAX_WATCH_DELAY, tasks.next())
            .await
            .ok()
            .flatten();
        assert!(
            matches!(&got, Some(TaskMetaEvent::Put(m)) if m.name == own_task),
            "namespace {i}: {got:?}"
        );
        let got = tokio::time::timeout(MAX_WATCH_DELAY, nodes.next())
            .await
            .ok()
            .flatten();
        assert!(
            matches!(&got, Some(NodeEvent::Put(n)) if n.id == format!("node-{i}")),
            "namespace {i}: {got:?}"
        );
        // Nothing of the other namespaces follows.
        let more = tokio::time::timeout(Duration::from_millis(300), tasks.next()).await;
        assert!(more.is_err(), "namespace {i}: unexpected {more:?}");
        let more = tokio::time::timeout(Duration::from_millis(300), nodes.next()).await;
        assert!(more.is_err(), "namespace {i}: unexpected {more:?}");
    }
    for (reg, lease) in regs.iter().zip(&leases) {
        reg.unregister(lease).await.expect("unregister");
        reg.cleanup_all().await.expect("cleanup");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_is_lost_is_answered_won_earlier_on_retry() {
    let url = RedisRegistry::env_url();
    let Some(direct) = open("lost-reply").await else {
        return;
    };
    let upstream = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(&upstream).await.expect("proxy");
    let through = RedisRegistryConfig::new(format!("redis://{}", proxy.addr()))
        .namespace(direct.namespace())
        .command_timeout(Duration::from_millis(500))
        .pool_size(1)
        .build()
        .expect("config");
    let life = life_of(&through, "lossy").await;
    let me = Claimant::new("winner", 3);
    // Warm up: the claim script is loaded, so the lost call is a single EVALSHA.
    assert!(through
        .claim(&me, &[request(&fire("lossy", 0), &life)])
        .await
        .expect("claim")[0]
        .is_won());

    let f = fire("lossy", 1);
    proxy.swallow_replies_after(b"EVALSHA");
    let lost = through.claim(&me, &[request(&f, &life)]).await;
    assert!(
        proxy.triggered(),
        "the claim request went through the proxy"
    );
    assert!(matches!(&lost, Err(e) if e.is_retryable()), "{lost:?}");
    // The server applied it: the claim is there, held by this claimant.
    wait_until("the claim applied", Duration::from_secs(5), || async {
        direct
            .list_claims("lossy")
            .await
            .expect("list")
            .items
            .iter()
            .any(|c| c.fire == f)
    })
    .await
    .expect("wait");
    let token = direct
        .list_claims("lossy")
        .await
        .expect("list")
        .items
        .into_iter()
        .find(|c| c.fire == f)
        .map(|c| {
            assert_eq!(c.claimant(), me);
            c.token
        })
        .expect("listed");
    proxy.disarm();
    proxy.cut();

    // The retry (after the connection is back) learns it won, with the same token.
    let decided = std::sync::Mutex::new(None);
    wait_until(
        "the retried claim decided",
        Duration::from_secs(10),
        || async {
            match through.claim(&me, &[request(&f, &life)]).await {
                Ok(out) => {
                    *decided.lock().expect("decided") = Some(out);
                    true
                }
                Err(e) if e.is_retryable() => false,
                Err(e) => panic!("retry failed: {e}"),
            }
        },
    )
    .await
    .expect("wait");
    let retried = decided
        .into_inner()
        .expect("decided")
        .expect("the claim was decided");
    assert_eq!(retried, vec![ClaimOutcome::WonEarlier { token }]);
    assert_eq!(
        direct
            .claim(&Claimant::new("other", 1), &[request(&f, &life)])
            .await
            .expect("claim"),
        vec![ClaimOutcome::Lost {
            holder: Some("winner".into())
        }]
    );
    direct.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_one_script_are_split_invisibly() {
    let Some(reg) = open("split").await else {
        return;
    };
    let names: Vec<(String, DateTime<Utc>)> =
        (0..2500).map(|i| (format!("wide-{i}"), at(0))).collect();
    let lives = reg.ensure_lives(&names).await.expect("lives");
    assert_eq!(lives.len(), names.len());
    let batch: Vec<ClaimRequest> = (0..2500)
        .map(|i| request(&fire(&format!("wide-{}", i % 2500), i), &lives[i as usize]))
        .collect();
    let out = reg
        .claim(&Claimant::new("a", 1), &batch)
        .await
        .expect("claim");
    assert_eq!(out.len(), batch.len());
    let tokens: BTreeSet<u64> = out.iter().map(|o| o.token().expect("won")).collect();
    assert_eq!(tokens.len(), batch.len(), "distinct tokens");
    let again = reg
        .claim(&Claimant::new("b", 1), &batch)
        .await
        .expect("claim");
    assert!(again.iter().all(|o| *o
        == ClaimOutcome::Lost {
            holder: Some("a".into())
        }));
    let by_name: HashMap<String, u64> = reg
        .list_claims("wide-1234")
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|c| (c.fire.task, c.token))
        .collect();
    assert_eq!(by_name.get("wide-1234").copied(), out[1234].token());
    reg.cleanup_all().await.expect("cleanup");
}
