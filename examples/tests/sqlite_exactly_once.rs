//! `SqliteRegistry` (examples/custom-registry) against the exactly-once contract: lives and
//! generations, the claim rules in order with the host's clock, one damaged row failing one
//! fire, tokens across cleanups, a claim whose answer is lost, and a database written by the
//! earlier version of the example upgraded in place.

#[allow(dead_code)] // the program uses more of the registry's API than these tests
#[path = "../custom-registry/sqlite_registry.rs"]
mod sqlite_registry;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{
    ClaimOutcome, ClaimRequest, Claimant, Error, FireKey, Life, PutMode, Registry, TaskMeta,
};
use sqlite_registry::{ScratchDatabase, SqliteRegistry};

const LONG: Duration = Duration::from_secs(600);

fn at(offset_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_893_456_000_000 + offset_ms)
        .single()
        .expect("valid instant")
}

fn fire(task: &str, i: i64) -> FireKey {
    FireKey::new(task, at(i * 1000))
}

fn request(fire: &FireKey, life: &Life) -> ClaimRequest {
    ClaimRequest::new(
        fire.clone(),
        life.generation,
        fire.instant + chrono::Duration::days(1),
        LONG,
    )
}

async fn life_of(reg: &SqliteRegistry, name: &str) -> Life {
    reg.ensure_lives(&[(name.to_string(), Utc::now())])
        .await
        .expect("ensure_lives")[0]
}

fn meta(name: &str, created: DateTime<Utc>) -> TaskMeta {
    let mut meta = TaskMeta::new(name, "@hourly");
    meta.created_at = Some(created);
    meta
}

#[tokio::test]
async fn lives_start_keep_and_end_with_the_writes() {
    let db = ScratchDatabase::new();
    let reg = SqliteRegistry::open(db.path(), "ns").await.expect("open");
    let other = SqliteRegistry::open(db.path(), "ns").await.expect("open");
    let caps = reg.capabilities();
    assert!(caps.exactly_once && caps.clock);

    // Racing callers on two connections get the same life.
    let names: Vec<(String, DateTime<Utc>)> = (0..20).map(|i| (format!("s{i}"), at(0))).collect();
    let later: Vec<(String, DateTime<Utc>)> =
        names.iter().map(|(n, _)| (n.clone(), at(5))).collect();
    let (a, b) = tokio::join!(reg.ensure_lives(&names), other.ensure_lives(&later));
    assert_eq!(a.expect("lives"), b.expect("lives"));

    reg.put_task(&meta("dyn", at(0)), PutMode::CreateOnly)
        .await
        .expect("put");
    let first = life_of(&reg, "dyn").await;
    assert_eq!(first.live_since, at(0));
    reg.put_task(&meta("dyn", at(1)), PutMode::Update)
        .await
        .expect("update");
    reg.mark_deleted("dyn", Utc::now()).await.expect("mark");
    reg.clear_tombstone("dyn").await.expect("clear");
    assert_eq!(life_of(&reg, "dyn").await, first);
    reg.put_task(&meta("dyn", at(2)), PutMode::Force)
        .await
        .expect("force");
    let forced = life_of(&reg, "dyn").await;
    assert!(forced.generation > first.generation);
    assert_eq!(forced.live_since, at(2));
    let f = FireKey::new("dyn", at(0));
    assert!(reg
        .claim(&Claimant::new("a", 1), &[request(&f, &forced)])
        .await
        .expect("claim")[0]
        .is_won());
    let restarted = reg.restart_life("dyn", at(3)).await.expect("restart");
    // The claim of the earlier life stays.
    assert_eq!(
        reg.claim(&Claimant::new("b", 1), &[request(&f, &restarted)])
            .await
            .expect("claim")[0],
        ClaimOutcome::Lost {
            holder: Some("a".into())
        }
    );
    assert!(restarted.generation > forced.generation);
    assert_eq!(life_of(&reg, "dyn").await, restarted);
    assert!(reg.get_task("dyn").await.expect("get").is_some());
    reg.cleanup_task("dyn").await.expect("cleanup");
    let after = reg
        .ensure_lives(&[("dyn".into(), at(4))])
        .await
        .expect("lives")[0];
    assert!(after.generation > restarted.generation);
    assert_eq!(after.live_since, at(4));
    for mode in [PutMode::CreateOnly, PutMode::Force] {
        assert!(matches!(
            reg.put_task(&TaskMeta::new("no-since", "@hourly"), mode)
                .await,
            Err(Error::InvalidArgument(_))
        ));
    }
}

#[tokio::test]
async fn claim_rules_apply_in_order_with_the_hosts_clock() {
    let db = ScratchDatabase::new();
    let reg = SqliteRegistry::open(db.path(), "ns").await.expect("open");
    let life = life_of(&reg, "t").await;
    let me = Claimant::new("node-a", 1);
    let f0 = fire("t", 0);
    assert_eq!(
        reg.claim(&me, &[request(&fire("lifeless", 0), &life)])
            .await
            .expect("claim"),
        vec![ClaimOutcome::Superseded { current: None }]
    );
    let zero = Life::new(0, life.live_since);
    assert_eq!(
        reg.claim(&me, &[request(&f0, &zero)]).await.expect("claim"),
        vec![ClaimOutcome::Superseded {
            current: Some(life.generation)
        }]
    );
    let stale = Life::new(life.generation + 100, life.live_since);
    assert_eq!(
        reg.claim(&me, &[request(&f0, &stale)])
            .await
            .expect("claim"),
        vec![ClaimOutcome::Superseded {
            current: Some(life.generation)
        }]
    );
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
    let won = reg.claim(&me, &[request(&f0, &life)]).await.expect("claim");
    let token = won[0].token().expect("won");
    assert_eq!(
        reg.claim(&me, &[past, request(&f0, &life)])
            .await
            .expect("claim"),
        vec![
            ClaimOutcome::WonEarlier { token },
            ClaimOutcome::WonEarlier { token }
        ]
    );
    for other in [Claimant::new("node-b", 1), Claimant::new("node-a", 2)] {
        assert_eq!(
            reg.claim(&other, &[request(&f0, &life)])
                .await
                .expect("claim"),
            vec![ClaimOutcome::Lost {
                holder: Some("node-a".into())
            }]
        );
    }
    let listed = reg.list_claims("t").await.expect("list").items;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].claimant(), listed[0].generation, listed[0].token),
        (me.clone(), life.generation, token)
    );
    reg.mark_deleted("t", Utc::now()).await.expect("mark");
    assert_eq!(
        reg.claim(&me, &[request(&f0, &stale)])
            .await
            .expect("claim"),
        vec![ClaimOutcome::Tombstoned]
    );
}

#[tokio::test]
async fn one_damaged_row_fails_one_fire_and_tokens_keep_growing() {
    let db = ScratchDatabase::new();
    let reg = SqliteRegistry::open(db.path(), "ns").await.expect("open");
    let life = life_of(&reg, "t").await;
    let me = Claimant::new("n", 1);
    let first = reg
        .claim(&me, &[request(&fire("t", 0), &life)])
        .await
        .expect("claim");
    let raw = rusqlite::Connection::open(db.path()).expect("raw");
    raw.execute(
        "UPDATE claims SET token = 'junk' WHERE ns = 'ns' AND task = 't'",
        [],
    )
    .expect("damage");
    let out = reg
        .claim(
            &me,
            &[
                request(&fire("t", 0), &life),
                request(&FireKey::new("a/b", at(0)), &life),
                request(&fire("t", 1), &life),
            ],
        )
        .await
        .expect("claim");
    assert!(
        matches!(out[0], ClaimOutcome::Failed(Error::Corrupt { .. })),
        "{out:?}"
    );
    assert!(
        matches!(out[1], ClaimOutcome::Failed(Error::InvalidTaskName { .. })),
        "{out:?}"
    );
    let token = out[2].token().expect("won");
    assert!(token > first[0].token().expect("won"));
    let listing = reg.list_claims("t").await.expect("list");
    assert_eq!((listing.items.len(), listing.corrupt.len()), (1, 1));

    // Tokens and generations keep growing across cleanups, and claims outlive them.
    reg.cleanup_all().await.expect("cleanup");
    let life2 = life_of(&reg, "t").await;
    assert!(life2.generation > life.generation);
    let again = reg
        .claim(
            &Claimant::new("m", 1),
            &[
                request(&fire("t", 5), &life2),
                request(&fire("t", 1), &life2),
            ],
        )
        .await
        .expect("claim");
    assert!(again[0].token().expect("won") > token);
    assert_eq!(
        again[1],
        ClaimOutcome::Lost {
            holder: Some("n".into())
        }
    );
}

#[tokio::test]
async fn a_claim_whose_answer_is_lost_is_answered_won_earlier_on_retry() {
    let db = ScratchDatabase::new();
    let reg = SqliteRegistry::open(db.path(), "ns").await.expect("open");
    let life = life_of(&reg, "t").await;
    let me = Claimant::new("n", 1);
    let r = request(&fire("t", 0), &life);
    // Another connection holds the write lock, so the claim's transaction waits; the call is
    // polled once (its transaction is queued on the connection thread) and dropped; then the lock
    // is released: the claim is applied and its answer lost.
    let raw = rusqlite::Connection::open(db.path()).expect("raw");
    raw.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let first =
        tokio::time::timeout(Duration::ZERO, reg.claim(&me, std::slice::from_ref(&r))).await;
    assert!(first.is_err(), "the answer was not awaited");
    raw.execute_batch("ROLLBACK").expect("unlock");
    let retried = reg.claim(&me, &[r]).await.expect("claim");
    let held = reg.list_claims("t").await.expect("list").items;
    assert_eq!(held.len(), 1);
    assert_eq!(
        retried,
        vec![ClaimOutcome::WonEarlier {
            token: held[0].token
        }]
    );
}

#[tokio::test]
async fn a_database_of_the_earlier_version_is_upgraded() {
    let db = ScratchDatabase::new();
    {
        let raw = rusqlite::Connection::open(db.path()).expect("raw");
        raw.execute_batch(
            "CREATE TABLE claims (
                ns TEXT NOT NULL, task TEXT NOT NULL, instant_ms INTEGER NOT NULL,
                node TEXT NOT NULL, token INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,
                PRIMARY KEY (ns, task, instant_ms)) WITHOUT ROWID;
             INSERT INTO claims VALUES ('ns', 'old', 1893456000000, 'n', 7, 9999999999999);",
        )
        .expect("old schema");
    }
    let reg = SqliteRegistry::open(db.path(), "ns").await.expect("open");
    let listed = reg.list_claims("old").await.expect("list").items;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].epoch, listed[0].generation, listed[0].token),
        (0, 0, 7)
    );
    let life = life_of(&reg, "old").await;
    // The old claim (epoch 0) is another claimant's.
    assert_eq!(
        reg.claim(&Claimant::new("n", 1), &[request(&fire("old", 0), &life)])
            .await
            .expect("claim"),
        vec![ClaimOutcome::Lost {
            holder: Some("n".into())
        }]
    );
}
