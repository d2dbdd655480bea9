//! Fault injection between any two steps: for each operation, a first run counts its requests;
//! then, for every `k` up to that count, the `k`-th request fails (never sent) or loses its
//! reply (applied by the server, the answer thrown away). After each run the test checks that
//! the name's state is whole (one of the states before or after the operation, never a mix,
//! nothing stranded or wrongly deleted) and that what the operation answered is the truth: `Ok`
//! only when it happened, a refusal only when it was refused, `Unavailable` when the outcome is
//! unknown. Then a retry without faults converges.

mod common;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{shared_connect, unique};
use dcron_core::{
    ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Life, Node, PutMode, Registry, TaskMeta,
};
use dcron_registry_zk::{Fault, FaultInjector, ZkRegistry, ZkRegistryConfig};
use dcron_testkit::wait_until;

struct Rig {
    faulty: ZkRegistry,
    clean: ZkRegistry,
    faults: FaultInjector,
    /// Runs in which the armed fault was injected.
    fired: std::sync::atomic::AtomicU64,
}

async fn rig(label: &str) -> Option<Rig> {
    let root = common::root_of(&unique(label));
    let faults = FaultInjector::new();
    let base = ZkRegistryConfig::new(shared_connect())
        .namespace(root)
        .operation_timeout(Duration::from_secs(3));
    let clean = common::shared_registry_with(base.clone()).await?;
    let faulty = ZkRegistry::connect(base.fault_injector(faults.clone()))
        .await
        .expect("faulty client");
    Some(Rig {
        faulty,
        clean,
        faults,
        fired: std::sync::atomic::AtomicU64::new(0),
    })
}

impl Rig {
    /// Arms the injector for one run (`None`: count only).
    fn arm(&self, fault: Option<(u64, Fault)>) {
        match fault {
            Some((k, f)) => self.faults.arm(k, f),
            None => self.faults.arm(0, Fault::Fail),
        }
    }

    /// Ends a run: how many requests it sent; the injector injects nothing afterwards.
    fn disarm(&self) -> u64 {
        let sent = self.faults.sent();
        if self.faults.fired() {
            self.fired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.faults.reset();
        sent
    }

    async fn cleanup(&self) {
        self.clean.cleanup_all().await.expect("cleanup");
        self.faulty.close().await;
        self.clean.close().await;
    }
}

/// Runs `scenario` once to count its requests, then once per request and fault, checking that
/// every armed fault was injected.
async fn for_every_fault<F, Fut>(rig: &Rig, label: &str, scenario: F)
where
    F: Fn(String, Option<(u64, Fault)>) -> Fut,
    Fut: Future<Output = u64>,
{
    let n = scenario(format!("{label}-count"), None).await;
    assert!(n >= 1, "{label}: the operation sent no request");
    let before = rig.fired.load(std::sync::atomic::Ordering::SeqCst);
    for k in 1..=n {
        for fault in [Fault::Fail, Fault::DropReply] {
            scenario(format!("{label}-{k}-{fault:?}"), Some((k, fault))).await;
        }
    }
    let fired = rig.fired.load(std::sync::atomic::Ordering::SeqCst) - before;
    println!("{label}: {n} requests, {fired} faults injected");
    assert_eq!(fired, 2 * n, "{label}: every armed fault was injected");
}

fn meta(name: &str, payload: &str) -> TaskMeta {
    let mut m = TaskMeta::new(name, "@hourly").with_payload(payload);
    m.created_at = Some(Utc::now());
    m
}

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("now")
}

/// What a name holds, read without writing: record payload, tombstoned, current generation.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    payload: Option<String>,
    tombstoned: bool,
    generation: Option<u64>,
}

async fn seen(reg: &ZkRegistry, name: &str) -> Seen {
    let payload = reg.get_task(name).await.expect("get").map(|m| m.payload);
    let tombstoned = reg.get_tombstone(name).await.expect("tomb").is_some();
    // A claim of generation 0 is never written: it answers the current generation.
    let probe = ClaimRequest::new(
        FireKey::new(name, Utc::now()),
        0,
        Utc::now(),
        Duration::from_secs(1),
    );
    let generation = if tombstoned {
        // Tombstoned names answer `Tombstoned` first; read the life from a listing instead.
        None
    } else {
        match reg
            .claim(&Claimant::new("probe", 1), &[probe])
            .await
            .expect("probe")
            .remove(0)
        {
            ClaimOutcome::Superseded { current } => current,
            other => panic!("probe of {name}: {other:?}"),
        }
    };
    Seen {
        payload,
        tombstoned,
        generation,
    }
}

fn fire(name: &str) -> FireKey {
    FireKey::new(
        name,
        DateTime::from_timestamp_millis(1_900_000_000_000).expect("instant"),
    )
}

async fn claim_as(
    reg: &ZkRegistry,
    name: &str,
    who: &str,
    generation: u64,
) -> dcron_core::Result<Vec<ClaimOutcome>> {
    let f = fire(name);
    reg.claim(
        &Claimant::new(who, 1),
        &[ClaimRequest::new(
            f.clone(),
            generation,
            f.instant + chrono::Duration::days(1),
            Duration::from_secs(600),
        )],
    )
    .await
}

async fn life(reg: &ZkRegistry, name: &str) -> Life {
    reg.ensure_lives(&[(name.to_string(), at())])
        .await
        .expect("life")[0]
}

/// The claim `claim_as(.., "holder", generation)` wrote is listed alone, as written, whatever
/// happened to the name since (claims end only with their retention).
fn assert_claim_kept(claims: &[dcron_core::Claim], generation: u64, name: &str) {
    assert_eq!(claims.len(), 1, "{name}: the claim is kept: {claims:?}");
    assert_eq!(
        (
            claims[0].node_id.as_str(),
            claims[0].epoch,
            claims[0].generation
        ),
        ("holder", 1, generation),
        "{name}"
    );
    assert_eq!(claims[0].fire, fire(name), "{name}");
}

fn unknown<T: std::fmt::Debug>(res: &dcron_core::Result<T>) -> bool {
    matches!(res, Err(e) if e.is_retryable())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_writes_are_whole_and_truthful_under_faults() {
    let Some(rig) = rig("faults-tasks").await else {
        return;
    };
    let rig = &rig;

    // Create-only on a fresh name.
    for_every_fault(rig, "create", |name, fault| async move {
        rig.arm(fault);
        let res = rig
            .faulty
            .put_task(&meta(&name, "v1"), PutMode::CreateOnly)
            .await;
        let sent = rig.disarm();
        let s = seen(&rig.clean, &name).await;
        let created = Seen {
            payload: Some("v1".into()),
            tombstoned: false,
            generation: s.generation,
        };
        match &res {
            Ok(()) => assert_eq!(s, created, "{name}: Ok means created"),
            r if unknown(r) => assert!(
                s == created
                    || s == Seen {
                        payload: None,
                        tombstoned: false,
                        generation: None
                    },
                "{name}: half a create: {s:?}"
            ),
            other => panic!("{name}: {other:?} is not the truth"),
        }
        assert_eq!(
            s.payload.is_some(),
            s.generation.is_some(),
            "{name}: record and life go together"
        );
        let again = rig
            .clean
            .put_task(&meta(&name, "v1"), PutMode::CreateOnly)
            .await;
        match (&res, &again) {
            (Ok(()), Err(Error::AlreadyExists { .. })) => {}
            (_, Ok(())) if s.payload.is_none() => {}
            (_, Err(Error::AlreadyExists { .. })) if s.payload.is_some() => {}
            other => panic!("{name}: retry after {other:?}"),
        }
        sent
    })
    .await;

    // Update of a live record.
    for_every_fault(rig, "update", |name, fault| async move {
        rig.clean
            .put_task(&meta(&name, "v1"), PutMode::CreateOnly)
            .await
            .expect("setup");
        let before = seen(&rig.clean, &name).await;
        rig.arm(fault);
        let res = rig
            .faulty
            .put_task(&meta(&name, "v2"), PutMode::Update)
            .await;
        let sent = rig.disarm();
        let s = seen(&rig.clean, &name).await;
        let after = Seen {
            payload: Some("v2".into()),
            ..before.clone()
        };
        match &res {
            Ok(()) => assert_eq!(s, after, "{name}"),
            r if unknown(r) => assert!(s == before || s == after, "{name}: {s:?}"),
            other => panic!("{name}: {other:?} is not the truth"),
        }
        sent
    })
    .await;

    // Force over a tombstoned record with a claim: all of it or none of it; the claim stays
    // either way (claims end only with their retention).
    for_every_fault(rig, "force", |name, fault| async move {
        rig.clean
            .put_task(&meta(&name, "v1"), PutMode::CreateOnly)
            .await
            .expect("setup");
        let g1 = life(&rig.clean, &name).await.generation;
        assert!(claim_as(&rig.clean, &name, "holder", g1)
            .await
            .expect("claim")[0]
            .is_won());
        rig.clean
            .mark_deleted(&name, at())
            .await
            .expect("tombstone");
        rig.arm(fault);
        let res = rig
            .faulty
            .put_task(&meta(&name, "v2"), PutMode::Force)
            .await;
        let sent = rig.disarm();
        let s = seen(&rig.clean, &name).await;
        let claims = rig.clean.list_claims(&name).await.expect("claims").items;
        let applied = s.payload.as_deref() == Some("v2");
        if applied {
            assert!(!s.tombstoned, "{name}: tombstone cleared with the write");
            assert!(
                s.generation.is_some_and(|g| g > g1),
                "{name}: new life {s:?}"
            );
        } else {
            assert_eq!(s.payload.as_deref(), Some("v1"), "{name}");
            assert!(s.tombstoned, "{name}: untouched");
        }
        assert_claim_kept(&claims, g1, &name);
        if let Some(g2) = s.generation.filter(|_| applied) {
            assert_eq!(
                claim_as(&rig.clean, &name, "rival", g2)
                    .await
                    .expect("rival")[0],
                ClaimOutcome::Lost {
                    holder: Some("holder".into())
                },
                "{name}: the new life meets the claim of the old one"
            );
        }
        match &res {
            Ok(()) => assert!(applied, "{name}: Ok but not applied"),
            r if unknown(r) => {}
            other => panic!("{name}: {other:?}"),
        }
        sent
    })
    .await;

    // Mark deleted.
    for_every_fault(rig, "mark-deleted", |name, fault| async move {
        rig.clean
            .put_task(&meta(&name, "v1"), PutMode::CreateOnly)
            .await
            .expect("setup");
        rig.arm(fault);
        let res = rig.faulty.mark_deleted(&name, at()).await;
        let sent = rig.disarm();
        let s = seen(&rig.clean, &name).await;
        assert_eq!(
            s.payload.as_deref(),
            Some("v1"),
            "{name}: the record is kept"
        );
        match &res {
            Ok(()) => assert!(s.tombstoned, "{name}"),
            r if unknown(r) => {}
            other => panic!("{name}: {other:?}"),
        }
        sent
    })
    .await;

    // Clear a tombstone: never `NotFound` for a name that was tombstoned.
    for_every_fault(rig, "clear-tombstone", |name, fault| async move {
        rig.clean
            .put_task(&meta(&name, "v1"), PutMode::CreateOnly)
            .await
            .expect("setup");
        rig.clean
            .mark_deleted(&name, at())
            .await
            .expect("tombstone");
        rig.arm(fault);
        let res = rig.faulty.clear_tombstone(&name).await;
        let sent = rig.disarm();
        let s = seen(&rig.clean, &name).await;
        assert_eq!(
            s.payload.as_deref(),
            Some("v1"),
            "{name}: the record is kept"
        );
        match &res {
            Ok(()) => assert!(!s.tombstoned, "{name}"),
            r if unknown(r) => {}
            other => panic!("{name}: clear_tombstone answered {other:?} for a tombstoned name"),
        }
        sent
    })
    .await;

    // Cleanup of a record with a tombstone and a claim: the claim stays either way.
    for_every_fault(rig, "cleanup", |name, fault| async move {
        rig.clean
            .put_task(&meta(&name, "v1"), PutMode::CreateOnly)
            .await
            .expect("setup");
        let g1 = life(&rig.clean, &name).await.generation;
        assert!(claim_as(&rig.clean, &name, "holder", g1)
            .await
            .expect("claim")[0]
            .is_won());
        rig.clean
            .mark_deleted(&name, at())
            .await
            .expect("tombstone");
        rig.arm(fault);
        let res = rig.faulty.cleanup_task(&name).await;
        let sent = rig.disarm();
        let s = seen(&rig.clean, &name).await;
        let gone = Seen {
            payload: None,
            tombstoned: false,
            generation: None,
        };
        assert_claim_kept(
            &rig.clean.list_claims(&name).await.expect("claims").items,
            g1,
            &name,
        );
        if s != gone {
            assert_eq!(
                s.payload.as_deref(),
                Some("v1"),
                "{name}: half a cleanup {s:?}"
            );
            assert!(s.tombstoned, "{name}: half a cleanup {s:?}");
        }
        match &res {
            Ok(()) => assert_eq!(s, gone, "{name}: Ok but not cleaned"),
            r if unknown(r) => {}
            other => panic!("{name}: {other:?}"),
        }
        // After a cleanup the sequence goes on: a new life is greater, and meets the claim.
        let next = life(&rig.clean, &name).await.generation;
        if s == gone {
            assert!(next > g1, "{name}: {next} after {g1}");
        } else {
            assert_eq!(next, g1, "{name}");
        }
        assert_eq!(
            claim_as(&rig.clean, &name, "rival", next)
                .await
                .expect("rival")[0],
            if s == gone {
                ClaimOutcome::Lost {
                    holder: Some("holder".into()),
                }
            } else {
                ClaimOutcome::Tombstoned
            },
            "{name}: the fire claimed before the cleanup"
        );
        sent
    })
    .await;

    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lives_and_claims_are_whole_and_truthful_under_faults() {
    let Some(rig) = rig("faults-lives").await else {
        return;
    };
    let rig = &rig;

    for_every_fault(rig, "ensure", |name, fault| async move {
        rig.arm(fault);
        let res = rig.faulty.ensure_lives(&[(name.clone(), at())]).await;
        let sent = rig.disarm();
        let stored = life(&rig.clean, &name).await;
        match &res {
            Ok(l) => assert_eq!(
                l,
                &vec![stored],
                "{name}: the answered life is the stored one"
            ),
            r if unknown(r) => {}
            other => panic!("{name}: {other:?}"),
        }
        let again = rig
            .faulty
            .ensure_lives(&[(name.clone(), at())])
            .await
            .expect("retry");
        assert_eq!(again, vec![stored], "{name}: one life");
        sent
    })
    .await;

    for_every_fault(rig, "restart", |name, fault| async move {
        rig.clean
            .put_task(&meta(&name, "v1"), PutMode::CreateOnly)
            .await
            .expect("setup");
        let g1 = life(&rig.clean, &name).await.generation;
        assert!(claim_as(&rig.clean, &name, "holder", g1)
            .await
            .expect("claim")[0]
            .is_won());
        rig.clean
            .mark_deleted(&name, at())
            .await
            .expect("tombstone");
        rig.arm(fault);
        let res = rig.faulty.restart_life(&name, at()).await;
        let sent = rig.disarm();
        let s = seen(&rig.clean, &name).await;
        assert_eq!(
            s.payload.as_deref(),
            Some("v1"),
            "{name}: the record is kept"
        );
        let restarted = !s.tombstoned;
        let claims = rig.clean.list_claims(&name).await.expect("claims").items;
        assert_claim_kept(&claims, g1, &name);
        if restarted {
            assert!(s.generation.is_some_and(|g| g > g1), "{name}: {s:?}");
            let g2 = s.generation.unwrap_or_default();
            assert_eq!(
                claim_as(&rig.clean, &name, "holder", g2)
                    .await
                    .expect("holder again")[0],
                ClaimOutcome::WonEarlier {
                    token: claims[0].token
                },
                "{name}: the holder meets its own claim in the new life"
            );
        }
        match &res {
            Ok(l) => {
                assert!(restarted, "{name}: Ok but not restarted");
                assert_eq!(Some(l.generation), s.generation, "{name}");
            }
            r if unknown(r) => {}
            other => panic!("{name}: {other:?}"),
        }
        sent
    })
    .await;

    for_every_fault(rig, "claim", |name, fault| async move {
        let g = life(&rig.clean, &name).await.generation;
        rig.arm(fault);
        let res = claim_as(&rig.faulty, &name, "me", g).await;
        let sent = rig.disarm();
        let listed = rig.clean.list_claims(&name).await.expect("claims").items;
        assert!(listed.len() <= 1, "{name}: {listed:?}");
        assert!(
            listed.iter().all(|c| c.node_id == "me"),
            "{name}: {listed:?}"
        );
        match &res {
            Ok(out) => match &out[0] {
                ClaimOutcome::Won { token } => {
                    assert_eq!(listed.len(), 1, "{name}: Won but nothing stored");
                    assert_eq!(listed[0].token, *token, "{name}");
                }
                ClaimOutcome::Failed(e) => assert!(e.is_retryable(), "{name}: {e}"),
                other => panic!("{name}: {other:?}"),
            },
            r if unknown(r) => {}
            other => panic!("{name}: {other:?}"),
        }
        // The claimant retries: the same claim, or a fresh one; exactly one in the end.
        let retry = claim_as(&rig.faulty, &name, "me", g).await.expect("retry");
        let token = retry[0]
            .token()
            .unwrap_or_else(|| panic!("{name}: retry {retry:?}"));
        let listed = rig.clean.list_claims(&name).await.expect("claims").items;
        assert_eq!(listed.len(), 1, "{name}");
        assert_eq!(listed[0].token, token, "{name}");
        if let Ok(out) = &res {
            if let Some(t) = out[0].token() {
                assert_eq!(retry[0], ClaimOutcome::WonEarlier { token: t }, "{name}");
            }
        }
        assert_eq!(
            claim_as(&rig.clean, &name, "rival", g)
                .await
                .expect("rival")[0],
            ClaimOutcome::Lost {
                holder: Some("me".into())
            },
            "{name}"
        );
        sent
    })
    .await;

    // A fire held by another: `Lost` naming it, or unknown; never a second holder.
    for_every_fault(rig, "claim-lost", |name, fault| async move {
        let g = life(&rig.clean, &name).await.generation;
        assert!(claim_as(&rig.clean, &name, "holder", g)
            .await
            .expect("claim")[0]
            .is_won());
        rig.arm(fault);
        let res = claim_as(&rig.faulty, &name, "me", g).await;
        let sent = rig.disarm();
        match &res {
            Ok(out) => assert!(
                matches!(&out[0], ClaimOutcome::Lost { holder: Some(h) } if h == "holder")
                    || matches!(&out[0], ClaimOutcome::Failed(e) if e.is_retryable()),
                "{name}: {out:?}"
            ),
            r if unknown(r) => {}
            other => panic!("{name}: {other:?}"),
        }
        let listed = rig.clean.list_claims(&name).await.expect("claims").items;
        assert_eq!(listed.len(), 1, "{name}");
        assert_eq!(listed[0].node_id, "holder", "{name}");
        sent
    })
    .await;

    // An expired claim taken over: one holder in the end, the taker or nobody new.
    for_every_fault(rig, "claim-takeover", |name, fault| async move {
        let g = life(&rig.clean, &name).await.generation;
        let f = fire(&name);
        let short = ClaimRequest::new(
            f.clone(),
            g,
            f.instant + chrono::Duration::days(1),
            Duration::from_millis(50),
        );
        assert!(rig
            .clean
            .claim(&Claimant::new("old", 1), &[short])
            .await
            .expect("claim")[0]
            .is_won());
        wait_until(
            &format!("{name}: the short claim expires"),
            Duration::from_secs(5),
            || async {
                rig.clean
                    .list_claims(&name)
                    .await
                    .expect("claims")
                    .items
                    .is_empty()
            },
        )
        .await
        .expect("wait");
        rig.arm(fault);
        let res = claim_as(&rig.faulty, &name, "me", g).await;
        let sent = rig.disarm();
        let listed = rig.clean.list_claims(&name).await.expect("claims").items;
        assert!(listed.len() <= 1, "{name}: {listed:?}");
        assert!(
            listed.iter().all(|c| c.node_id == "me"),
            "{name}: {listed:?}"
        );
        match &res {
            Ok(out) => match &out[0] {
                ClaimOutcome::Won { token } => {
                    assert_eq!(listed.len(), 1, "{name}");
                    assert_eq!(listed[0].token, *token, "{name}");
                }
                ClaimOutcome::Failed(e) => assert!(e.is_retryable(), "{name}: {e}"),
                other => panic!("{name}: {other:?}"),
            },
            r if unknown(r) => {}
            other => panic!("{name}: {other:?}"),
        }
        let retry = claim_as(&rig.faulty, &name, "me", g).await.expect("retry");
        assert!(retry[0].is_won(), "{name}: {retry:?}");
        assert_eq!(
            claim_as(&rig.clean, &name, "rival", g)
                .await
                .expect("rival")[0],
            ClaimOutcome::Lost {
                holder: Some("me".into())
            },
            "{name}"
        );
        sent
    })
    .await;

    rig.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_records_are_whole_and_truthful_under_faults() {
    let Some(rig) = rig("faults-nodes").await else {
        return;
    };
    let rig = &rig;
    let listed = |id: String| async move {
        rig.clean
            .list_nodes()
            .await
            .expect("list")
            .items
            .into_iter()
            .filter(|n| n.id == id)
            .collect::<Vec<Node>>()
    };

    for_every_fault(rig, "register", |id, fault| async move {
        rig.arm(fault);
        let res = rig
            .faulty
            .register(&Node::new(&id, Utc::now()), Duration::from_secs(10))
            .await;
        let sent = rig.disarm();
        match &res {
            Ok(lease) => {
                assert_eq!(listed(id.clone()).await.len(), 1, "{id}");
                rig.faulty.unregister(lease).await.expect("unregister");
            }
            r if unknown(r) => {
                // A registration that failed leaves nothing behind (its session is closed).
                wait_until(
                    &format!("{id}: a failed registration is not left listed"),
                    Duration::from_secs(10),
                    || {
                        let id = id.clone();
                        async move { listed(id).await.is_empty() }
                    },
                )
                .await
                .expect("wait");
            }
            other => panic!("{id}: {other:?}"),
        }
        assert!(listed(id.clone()).await.is_empty(), "{id}");
        sent
    })
    .await;

    for_every_fault(rig, "update-node", |id, fault| async move {
        let mut n = Node::new(&id, Utc::now());
        let lease = rig
            .faulty
            .register(&n, Duration::from_secs(10))
            .await
            .expect("register");
        n.weight = 9;
        rig.arm(fault);
        let res = rig.faulty.update_node(&lease, &n).await;
        let sent = rig.disarm();
        let now = listed(id.clone()).await;
        assert_eq!(now.len(), 1, "{id}: the record never goes missing");
        match &res {
            Ok(()) => assert_eq!(now[0].weight, 9, "{id}"),
            r if unknown(r) => assert!(now[0].weight == 9 || now[0].weight == 1, "{id}"),
            other => panic!("{id}: {other:?}"),
        }
        rig.faulty.update_node(&lease, &n).await.expect("retry");
        rig.faulty.unregister(&lease).await.expect("unregister");
        sent
    })
    .await;

    rig.cleanup().await;
}
