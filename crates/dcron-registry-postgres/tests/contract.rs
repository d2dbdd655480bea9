//! The exactly-once contract on the shared server, case by case: idempotent claims, per-fire
//! outcomes, deadlines refused by the server's clock, lives and generations, tokens across
//! cleanup and force-add, retention and bounded purges, corrupt rows, schema isolation and
//! credentials never printed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{
    ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Node, PutMode, Registry, TaskMeta,
};
use dcron_registry_postgres::PostgresRegistry;
use dcron_testkit::{holds_until, wait_until};
use futures::future::join_all;
use tokio::time::Instant;

/// A registry on the shared server in a fresh namespace, or `None` (skipped).
async fn fresh() -> Option<PostgresRegistry> {
    let url = PostgresRegistry::env_url();
    let ns = format!("contract-{}", uuid::Uuid::new_v4().simple());
    match common::open(&url, &ns).await {
        Ok(r) => Some(r),
        Err(e) => {
            common::skip(&format!("PostgreSQL at {url} unreachable: {e}"));
            None
        }
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_893_456_000_000 + ms)
        .single()
        .expect("valid instant")
}

fn request(task: &str, ms: i64, generation: u64) -> ClaimRequest {
    ClaimRequest::new(
        FireKey::new(task, at(ms)),
        generation,
        at(ms) + chrono::Duration::days(1),
        Duration::from_secs(600),
    )
}

async fn life(reg: &PostgresRegistry, task: &str) -> u64 {
    reg.ensure_lives(&[(task.to_string(), at(0))])
        .await
        .expect("ensure_lives")[0]
        .generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_idempotent_per_claimant() {
    let Some(reg) = fresh().await else { return };
    let g = life(&reg, "t").await;
    let a = Claimant::new("a", 1);
    let won = reg.claim(&a, &[request("t", 0, g)]).await.expect("claim");
    let ClaimOutcome::Won { token } = won[0] else {
        panic!("expected Won, got {won:?}");
    };
    assert!(token > 0);
    // The same claimant again (its reply lost): the same win and token.
    let again = reg.claim(&a, &[request("t", 0, g)]).await.expect("claim");
    assert_eq!(again, vec![ClaimOutcome::WonEarlier { token }]);
    // The same node under a new epoch is another claimant.
    let later = reg
        .claim(&Claimant::new("a", 2), &[request("t", 0, g)])
        .await
        .expect("claim");
    assert_eq!(
        later,
        vec![ClaimOutcome::Lost {
            holder: Some("a".into())
        }]
    );
    let other = reg
        .claim(&Claimant::new("b", 1), &[request("t", 0, g)])
        .await
        .expect("claim");
    assert_eq!(
        other,
        vec![ClaimOutcome::Lost {
            holder: Some("a".into())
        }]
    );
    let listed = reg.list_claims("t").await.expect("list");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].token, token);
    assert_eq!(listed.items[0].claimant(), a);
    assert_eq!(listed.items[0].generation, g);
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_outcome_per_fire_in_order() {
    let Some(reg) = fresh().await else { return };
    let g = life(&reg, "t").await;
    let gt = life(&reg, "tomb").await;
    reg.mark_deleted("tomb", at(0)).await.expect("mark");
    let me = Claimant::new("me", 1);
    reg.claim(&Claimant::new("other", 1), &[request("t", 1000, g)])
        .await
        .expect("claim");
    let past = ClaimRequest::new(
        FireKey::new("t", at(2000)),
        g,
        Utc::now() - chrono::Duration::hours(1),
        Duration::from_secs(600),
    );
    let batch = vec![
        request("t", 0, g),           // won
        request("t", 1000, g),        // lost to other
        request("tomb", 0, gt),       // tombstoned
        request("t", 3000, g + 1000), // superseded
        request("nolife", 0, 1),      // superseded, no life
        past,                         // late
        request("bad/name", 0, 1),    // failed alone
        request("t", 0, g),           // repeat of the first: as a retry would
    ];
    let out = reg.claim(&me, &batch).await.expect("claim");
    assert_eq!(out.len(), batch.len());
    let token = out[0].token().expect("first fire won");
    assert!(matches!(out[0], ClaimOutcome::Won { .. }), "{out:?}");
    assert_eq!(
        out[1],
        ClaimOutcome::Lost {
            holder: Some("other".into())
        }
    );
    assert_eq!(out[2], ClaimOutcome::Tombstoned);
    assert_eq!(out[3], ClaimOutcome::Superseded { current: Some(g) });
    assert_eq!(out[4], ClaimOutcome::Superseded { current: None });
    assert_eq!(out[5], ClaimOutcome::Late);
    assert!(
        matches!(out[6], ClaimOutcome::Failed(Error::InvalidTaskName { .. })),
        "{:?}",
        out[6]
    );
    assert_eq!(out[7], ClaimOutcome::WonEarlier { token });
    // Nothing was written for the late fire.
    let listed = reg.list_claims("t").await.expect("list");
    assert!(listed.items.iter().all(|c| c.fire.instant != at(2000)));
    assert_eq!(listed.items.len(), 2);
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_judged_by_the_server_clock() {
    let Some(reg) = fresh().await else { return };
    let g = life(&reg, "t").await;
    let client = common::raw(&PostgresRegistry::env_url())
        .await
        .expect("raw client");
    let server_now: DateTime<Utc> = client
        .query_one("SELECT now()", &[])
        .await
        .expect("now")
        .get(0);
    let me = Claimant::new("me", 1);
    let fire = |ms: i64, deadline| {
        ClaimRequest::new(
            FireKey::new("t", at(ms)),
            g,
            deadline,
            Duration::from_secs(60),
        )
    };
    let out = reg
        .claim(
            &me,
            &[
                fire(0, server_now - chrono::Duration::milliseconds(1)),
                fire(1, server_now + chrono::Duration::minutes(5)),
            ],
        )
        .await
        .expect("claim");
    assert_eq!(out[0], ClaimOutcome::Late);
    assert!(matches!(out[1], ClaimOutcome::Won { .. }), "{out:?}");
    // A fire already won stays won by its claimant even past its deadline (a retry learns it).
    let retry = reg
        .claim(&me, &[fire(1, server_now - chrono::Duration::hours(1))])
        .await
        .expect("claim");
    assert!(
        matches!(retry[0], ClaimOutcome::WonEarlier { .. }),
        "{retry:?}"
    );
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_generations_only_grow() {
    let Some(reg) = fresh().await else { return };
    let me = Claimant::new("me", 1);
    let mut last_token = 0;
    let mut last_generation = 0;
    let mut check = |generation: u64, token: u64| {
        assert!(
            generation > last_generation,
            "{generation} after {last_generation}"
        );
        assert!(token > last_token, "{token} after {last_token}");
        last_generation = generation;
        last_token = token;
    };
    for round in 0..4 {
        let g = life(&reg, "t").await;
        // A new instant each round: claims outlive cleanup and new lives.
        let out = reg
            .claim(&me, &[request("t", round * 1000, g)])
            .await
            .expect("claim");
        let token = out[0].token().expect("won");
        check(g, token);
        match round {
            0 => reg.cleanup_task("t").await.expect("cleanup"),
            1 => {
                let mut meta = TaskMeta::new("t", "@hourly");
                meta.created_at = Some(at(5));
                reg.put_task(&meta, PutMode::Force).await.expect("force");
            }
            2 => {
                reg.restart_life("t", at(7)).await.expect("restart");
            }
            _ => reg.cleanup_all().await.expect("cleanup all"),
        }
    }
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lives_follow_the_writes() {
    let Some(reg) = fresh().await else { return };
    let mut meta = TaskMeta::new("dyn", "@hourly");
    meta.created_at = Some(at(1_234));
    reg.put_task(&meta, PutMode::CreateOnly)
        .await
        .expect("create");
    let first = reg
        .ensure_lives(&[("dyn".into(), at(99_999))])
        .await
        .expect("lives")[0];
    assert_eq!(first.live_since, at(1_234), "create-only starts the life");
    reg.put_task(&meta.clone().with_payload("v2"), PutMode::Update)
        .await
        .expect("update");
    let same = reg
        .ensure_lives(&[("dyn".into(), at(99_999))])
        .await
        .expect("lives")[0];
    assert_eq!(same, first, "an update keeps the life");
    // Without created_at a life-starting write is refused, after the existence checks.
    let bare = TaskMeta::new("bare", "@hourly");
    assert!(matches!(
        reg.put_task(&bare, PutMode::CreateOnly).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        reg.put_task(&TaskMeta::new("dyn", "@hourly"), PutMode::CreateOnly)
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    // Racing callers for a name without a life get the same one.
    let url = PostgresRegistry::env_url();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(common::open(&url, reg.namespace()).await.expect("client"));
    }
    let lives = join_all(clients.iter().enumerate().map(|(i, c)| async move {
        let i = i64::try_from(i).expect("small");
        c.ensure_lives(&[("static".into(), at(i)), ("dyn".into(), at(i))])
            .await
            .expect("lives")
    }))
    .await;
    for l in &lives {
        assert_eq!(l, &lives[0]);
        assert_eq!(l[1], first);
    }
    // A tombstoned name keeps its life; cleanup removes it and the next one is newer.
    reg.mark_deleted("static", at(0)).await.expect("mark");
    let kept = reg
        .ensure_lives(&[("static".into(), at(50))])
        .await
        .expect("lives")[0];
    assert_eq!(kept, lives[0][0]);
    reg.cleanup_task("static").await.expect("cleanup");
    let next = reg
        .ensure_lives(&[("static".into(), at(60))])
        .await
        .expect("lives")[0];
    assert!(next.generation > kept.generation);
    assert_eq!(next.live_since, at(60));
    assert_eq!(reg.get_tombstone("static").await.expect("get"), None);
    // restart_life clears the tombstone and keeps the record.
    reg.mark_deleted("dyn", at(0)).await.expect("mark");
    let restarted = reg.restart_life("dyn", at(70)).await.expect("restart");
    assert!(restarted.generation > first.generation);
    assert_eq!(restarted.live_since, at(70));
    assert_eq!(reg.get_tombstone("dyn").await.expect("get"), None);
    assert!(reg.get_task("dyn").await.expect("get").is_some());
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_outlive_cleanup_force_and_new_lives() {
    let Some(reg) = fresh().await else { return };
    let holder = Claimant::new("holder", 1);
    let other = Claimant::new("other", 1);
    let g = life(&reg, "t").await;
    let won = reg
        .claim(&holder, &[request("t", 0, g)])
        .await
        .expect("claim");
    let token = won[0].token().expect("won");
    let mut meta = TaskMeta::new("t", "@hourly");
    meta.created_at = Some(at(1));
    let steps: [&str; 4] = ["cleanup_task", "force", "restart_life", "cleanup_all"];
    for step in steps {
        match step {
            "cleanup_task" => reg.cleanup_task("t").await.expect("cleanup"),
            "force" => reg.put_task(&meta, PutMode::Force).await.expect("force"),
            "restart_life" => {
                reg.restart_life("t", at(2)).await.expect("restart");
            }
            _ => reg.cleanup_all().await.expect("cleanup all"),
        }
        // The fire stays claimed in the next life: its holder learns it, nobody else wins it.
        let g = life(&reg, "t").await;
        assert_eq!(
            reg.claim(&holder, &[request("t", 0, g)])
                .await
                .expect("claim"),
            vec![ClaimOutcome::WonEarlier { token }],
            "after {step}"
        );
        assert_eq!(
            reg.claim(&other, &[request("t", 0, g)])
                .await
                .expect("claim"),
            vec![ClaimOutcome::Lost {
                holder: Some("holder".into())
            }],
            "after {step}"
        );
        assert_eq!(reg.list_claims("t").await.expect("list").items.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_retention_runs_on_the_server_clock() {
    let Some(reg) = fresh().await else { return };
    let g = life(&reg, "t").await;
    let start = Instant::now();
    let short = ClaimRequest::new(
        FireKey::new("t", at(0)),
        g,
        at(0) + chrono::Duration::days(1),
        Duration::from_secs(2),
    );
    let out = reg
        .claim(&Claimant::new("a", 1), std::slice::from_ref(&short))
        .await
        .expect("claim");
    assert!(out[0].is_won());
    // Kept for at least the retention (watched over 1.5 s of the 2 s)...
    let kept = holds_until(start + Duration::from_millis(1500), || async {
        reg.list_claims("t").await.expect("list").items.len() == 1
    })
    .await;
    assert_eq!(kept, Ok(true), "the claim disappeared before its retention");
    // ...and gone (unlisted, claimable) within retention + tolerance.
    wait_until(
        "the claim unlisted within 4 s of its start",
        Duration::from_secs(4).saturating_sub(start.elapsed()),
        || async { reg.list_claims("t").await.expect("list").items.is_empty() },
    )
    .await
    .expect("expired claim");
    assert!(start.elapsed() >= Duration::from_secs(2));
    let again = reg
        .claim(&Claimant::new("b", 1), &[short])
        .await
        .expect("claim");
    assert!(matches!(again[0], ClaimOutcome::Won { .. }), "{again:?}");
    assert!(matches!(
        reg.claim(
            &Claimant::new("b", 1),
            &[ClaimRequest::new(
                FireKey::new("t", at(9)),
                g,
                at(9),
                Duration::ZERO
            )]
        )
        .await,
        Err(Error::InvalidArgument(_))
    ));
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_claims_are_purged_in_bounded_batches() {
    let Some(reg) = fresh().await else { return };
    let g = life(&reg, "bulk").await;
    let requests: Vec<ClaimRequest> = (0..2500)
        .map(|i| {
            ClaimRequest::new(
                FireKey::new("bulk", at(i)),
                g,
                at(i) + chrono::Duration::days(1),
                Duration::from_millis(1),
            )
        })
        .collect();
    let out = reg
        .claim(&Claimant::new("a", 1), &requests)
        .await
        .expect("claim");
    assert!(out.iter().all(ClaimOutcome::is_won));
    assert!(reg
        .list_claims("bulk")
        .await
        .expect("list")
        .items
        .is_empty());
    // The background purge may already have started; purge the rest by hand, 1000 at most.
    let mut removed = Vec::new();
    loop {
        let n = reg.purge_expired_claims(1000).await.expect("purge");
        assert!(n <= 1000);
        if n == 0 {
            break;
        }
        removed.push(n);
    }
    let client = common::raw(&PostgresRegistry::env_url())
        .await
        .expect("raw");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM dcron.claims WHERE ns = $1",
            &[&reg.namespace()],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "purged in batches {removed:?}");
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_leases_never_touch_a_newer_registration() {
    let Some(reg) = fresh().await else { return };
    let node = Node::new("n1", Utc::now());
    let old = reg
        .register(&node, Duration::from_secs(30))
        .await
        .expect("register");
    assert!(old.ttl >= Duration::from_secs(30));
    let new = reg
        .register(&node, Duration::from_secs(30))
        .await
        .expect("register");
    assert!(matches!(
        reg.keep_alive(&old).await,
        Err(Error::LeaseLost { .. })
    ));
    let mut changed = node.clone();
    changed.weight = 7;
    assert!(matches!(
        reg.update_node(&old, &changed).await,
        Err(Error::LeaseLost { .. })
    ));
    reg.unregister(&old)
        .await
        .expect("stale unregister is a no-op");
    let listed = reg.list_nodes().await.expect("list");
    assert_eq!(listed.items, vec![node.clone()]);
    reg.keep_alive(&new).await.expect("the new lease lives");
    reg.unregister(&new).await.expect("unregister");
    assert!(reg.list_nodes().await.expect("list").items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_reported_and_skipped() {
    let Some(reg) = fresh().await else { return };
    let url = PostgresRegistry::env_url();
    reg.register(&Node::new("good", Utc::now()), Duration::from_secs(30))
        .await
        .expect("register");
    reg.register(&Node::new("bad", Utc::now()), Duration::from_secs(30))
        .await
        .expect("register");
    let client = common::raw(&url).await.expect("raw");
    client
        .execute(
            "UPDATE dcron.nodes SET record = '\\xff00'::bytea WHERE ns = $1 AND node_id = 'bad'",
            &[&reg.namespace()],
        )
        .await
        .expect("plant");
    let nodes = reg.list_nodes().await.expect("list");
    assert_eq!(nodes.items.len(), 1);
    assert_eq!(nodes.items[0].id, "good");
    assert_eq!(nodes.corrupt.len(), 1);
    assert_eq!(nodes.corrupt[0].key, "bad");
    common::write_raw_task(&url, reg.namespace(), "broken", b"{not json")
        .await
        .expect("plant");
    assert!(matches!(
        reg.get_task("broken").await,
        Err(Error::Corrupt { .. })
    ));
    let tasks = reg.list_tasks().await.expect("list");
    assert_eq!(tasks.corrupt.len(), 1);
    // A claim row with a negative token is reported, the others listed.
    let g = life(&reg, "t").await;
    reg.claim(
        &Claimant::new("a", 1),
        &[request("t", 0, g), request("t", 1, g)],
    )
    .await
    .expect("claim");
    client
        .execute(
            "UPDATE dcron.claims SET token = -1 WHERE ns = $1 AND instant_ms = $2",
            &[&reg.namespace(), &at(1).timestamp_millis()],
        )
        .await
        .expect("plant");
    let claims = reg.list_claims("t").await.expect("list");
    assert_eq!((claims.items.len(), claims.corrupt.len()), (1, 1));
    client
        .execute("DELETE FROM dcron.nodes WHERE ns = $1", &[&reg.namespace()])
        .await
        .expect("clean nodes");
    reg.cleanup_all().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_and_namespaces_are_separate() {
    let url = PostgresRegistry::env_url();
    let ns = format!("iso-{}", uuid::Uuid::new_v4().simple());
    let schema = format!(
        "dcron_iso_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let a = match common::open(&url, &ns).await {
        Ok(r) => r,
        Err(e) => return common::skip(&format!("PostgreSQL unreachable: {e}")),
    };
    let b = common::open_in(&url, &schema, &ns)
        .await
        .expect("other schema");
    let c = a.with_namespace(&format!("{ns}-b")).expect("namespace");
    let mut meta = TaskMeta::new("shared", "@hourly");
    meta.created_at = Some(at(0));
    a.put_task(&meta, PutMode::CreateOnly).await.expect("put");
    assert_eq!(b.get_task("shared").await.expect("get"), None);
    assert_eq!(c.get_task("shared").await.expect("get"), None);
    b.put_task(&meta, PutMode::CreateOnly).await.expect("put");
    c.put_task(&meta, PutMode::CreateOnly).await.expect("put");
    a.cleanup_all().await.expect("cleanup");
    assert!(b.get_task("shared").await.expect("get").is_some());
    assert!(c.get_task("shared").await.expect("get").is_some());
    c.cleanup_all().await.expect("cleanup");
    let client = common::raw(&url).await.expect("raw");
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_never_printed() {
    let url = PostgresRegistry::env_url();
    // The test server trusts loopback, so any password is accepted: it must still not show.
    let with_password = url.replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1);
    if with_password == url {
        return common::skip("DCRON_TEST_POSTGRES_URL has a user:password already");
    }
    let reg = match common::open(&with_password, "print-check").await {
        Ok(r) => r,
        Err(e) => return common::skip(&format!("PostgreSQL unreachable: {e}")),
    };
    let shown = format!("{reg:?} {}", reg.server());
    assert!(!shown.contains("hunter2"), "{shown}");
    let reg: Arc<dyn Registry> = Arc::new(reg);
    assert!(!format!("{reg:?}").contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_rows_judged_by_the_server_clock() {
    let Some(reg) = fresh().await else { return };
    let ns = reg.namespace().to_string();
    let client = common::raw(&PostgresRegistry::env_url())
        .await
        .expect("raw");
    let long = Duration::from_secs(600);
    let a = reg
        .register(&Node::new("a", Utc::now()), long)
        .await
        .expect("a");
    let b = reg
        .register(&Node::new("b", Utc::now()), long)
        .await
        .expect("b");
    let first = FireKey::new("job", at(1_500));
    assert!(reg
        .acquire_slot(&a, &first)
        .await
        .expect("acquire")
        .is_taken());
    let row = client
        .query_one(
            "SELECT node_id, lease_id, instant_ms FROM dcron.slots WHERE ns = $1 AND task = 'job'",
            &[&ns],
        )
        .await
        .expect("the slot row");
    assert_eq!(row.get::<_, String>(0), "a");
    assert_eq!(row.get::<_, String>(1), a.id);
    assert_eq!(row.get::<_, i64>(2), first.instant_millis());

    // The holder's row expired by the server's clock (its client never said anything): the
    // slot is free, whatever the holder's own TTL said, and the holder has lost its lease.
    let second = FireKey::new("job", at(2_500));
    let held = reg.acquire_slot(&b, &second).await.expect("acquire");
    assert_eq!(
        held,
        dcron_core::SlotOutcome::Held {
            node_id: "a".into(),
            fire: first.clone()
        }
    );
    client
        .execute(
            "UPDATE dcron.nodes SET expires_at = now() - interval '1 millisecond'
             WHERE ns = $1 AND node_id = 'a'",
            &[&ns],
        )
        .await
        .expect("expire a");
    assert!(reg
        .acquire_slot(&b, &second)
        .await
        .expect("acquire")
        .is_taken());
    assert!(matches!(
        reg.acquire_slot(&a, &first).await,
        Err(Error::LeaseLost { .. })
    ));
    // A node id or lease id no registration can have is simply not live.
    let bad = dcron_core::Lease {
        node_id: "n\0".into(),
        id: "x".into(),
        ttl: long,
    };
    assert!(matches!(
        reg.acquire_slot(&bad, &first).await,
        Err(Error::LeaseLost { .. })
    ));
    reg.release_slot(&bad, &first).await.expect("a no-op");

    // cleanup_all removes the namespace's slot rows.
    reg.cleanup_all().await.expect("cleanup");
    let left: i64 = client
        .query_one("SELECT count(*) FROM dcron.slots WHERE ns = $1", &[&ns])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
}
