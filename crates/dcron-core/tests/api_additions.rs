//! The API a newcomer reaches for first: wrapping a registry ([`Layered`]), building
//! [`Capabilities`] outside the crate, `TaskMeta::with_misfire_window`, and previewing a
//! schedule with `Schedule::next_fires`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::layer::{Layered, RegistryLayer};
use dcron_core::{
    async_trait, Capabilities, ClaimOutcome, ClaimRequest, Claimant, Dcron, Error, FireKey,
    MemoryRegistry, MisfirePolicy, Node, PutMode, RecordKind, Registry, Result, Schedule,
    SecondsField, SlotOutcome, TaskMeta, MAX_PREVIEW_FIRES,
};
use futures::StreamExt;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 0)
        .single()
        .expect("valid instant")
}

/// Counts claim batches and changes nothing: every other method is the trait's forwarding
/// default.
#[derive(Debug)]
struct CountingClaims {
    inner: MemoryRegistry,
    batches: Arc<AtomicUsize>,
}

#[async_trait]
impl RegistryLayer for CountingClaims {
    fn inner(&self) -> &dyn Registry {
        &self.inner
    }

    async fn claim(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.inner.claim(claimant, requests).await
    }
}

/// The next event of a watch, within the registry's delivery bound.
async fn next_event<T>(stream: &mut dcron_core::WatchStream<T>) -> T {
    tokio::time::timeout(dcron_core::MAX_WATCH_DELAY, stream.next())
        .await
        .expect("an event in time")
        .expect("the watch is open")
}

fn counting() -> (Arc<dyn Registry>, MemoryRegistry, Arc<AtomicUsize>) {
    let inner = MemoryRegistry::new();
    let batches = Arc::new(AtomicUsize::new(0));
    let layered: Arc<dyn Registry> = Arc::new(Layered(CountingClaims {
        inner: inner.clone(),
        batches: batches.clone(),
    }));
    (layered, inner, batches)
}

/// Every `Registry` method reaches the wrapped registry: answers, errors and state are the
/// memory registry's own, including the record and slot methods whose trait defaults would
/// answer `Unsupported`.
#[tokio::test]
async fn a_layer_overriding_one_method_forwards_every_other() {
    let (reg, inner, batches) = counting();
    assert_eq!(reg.backend(), "memory");
    assert_eq!(reg.capabilities(), inner.capabilities());

    // Membership.
    let lease = reg
        .register(&Node::new("n1", at(0)), Duration::from_secs(30))
        .await
        .expect("register");
    reg.keep_alive(&lease).await.expect("keep_alive");
    let mut node_events = reg.watch_nodes().await.expect("watch_nodes");
    let mut renamed = Node::new("n1", at(0));
    renamed.weight = 7;
    reg.update_node(&lease, &renamed)
        .await
        .expect("update_node");
    let nodes = inner.list_nodes().await.expect("inner list_nodes");
    assert_eq!(nodes.items.len(), 1);
    assert_eq!(nodes.items[0].weight, 7, "update_node reached the store");
    assert_eq!(
        reg.list_nodes().await.expect("list_nodes").items,
        nodes.items
    );
    next_event(&mut node_events).await;

    // Tasks, with an error forwarded as it is.
    let mut task_events = reg.watch_tasks().await.expect("watch_tasks");
    let mut meta = TaskMeta::new("job", "* * * * *");
    meta.created_at = Some(at(0));
    reg.put_task(&meta, PutMode::CreateOnly)
        .await
        .expect("put_task");
    assert!(matches!(
        reg.put_task(&meta, PutMode::CreateOnly).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(inner.get_task("job").await.expect("inner get").is_some());
    assert!(reg.get_task("job").await.expect("get_task").is_some());
    assert_eq!(reg.list_tasks().await.expect("list_tasks").items.len(), 1);
    next_event(&mut task_events).await;

    // Lives and claims: the one overridden method is counted once per call.
    let lives = reg
        .ensure_lives(&[("job".to_string(), at(0))])
        .await
        .expect("ensure_lives");
    let generation = lives[0].generation;
    let who = Claimant::new("n1", 1);
    let request = ClaimRequest::new(
        FireKey::new("job", at(60)),
        generation,
        at(120),
        Duration::from_secs(600),
    );
    let first = reg
        .claim(&who, std::slice::from_ref(&request))
        .await
        .expect("claim");
    assert!(matches!(first[0], ClaimOutcome::Won { .. }), "{first:?}");
    let again = reg.claim(&who, &[request]).await.expect("claim again");
    assert!(
        matches!(again[0], ClaimOutcome::WonEarlier { .. }),
        "{again:?}"
    );
    assert_eq!(batches.load(Ordering::Relaxed), 2);
    assert_eq!(
        reg.list_claims("job")
            .await
            .expect("list_claims")
            .items
            .len(),
        1
    );

    // Running slots (a default method of the trait).
    let fire = FireKey::new("job", at(60));
    assert_eq!(
        reg.acquire_slot(&lease, &fire).await.expect("acquire_slot"),
        SlotOutcome::Taken
    );
    reg.release_slot(&lease, &fire).await.expect("release_slot");

    // Records (default methods of the trait answering `Unsupported`).
    reg.put_records(RecordKind::Pause, &[("job".into(), b"x".to_vec())])
        .await
        .expect("put_records");
    assert_eq!(
        inner
            .get_record(RecordKind::Pause, "job")
            .await
            .expect("inner get_record"),
        Some(b"x".to_vec())
    );
    assert_eq!(
        reg.get_record(RecordKind::Pause, "job")
            .await
            .expect("get_record"),
        Some(b"x".to_vec())
    );
    assert_eq!(
        reg.list_records(RecordKind::Pause)
            .await
            .expect("list_records")
            .len(),
        1
    );
    assert!(reg
        .delete_record(RecordKind::Pause, "job")
        .await
        .expect("delete_record"));
    assert!(!reg
        .delete_record(RecordKind::Pause, "job")
        .await
        .expect("delete_record again"));

    // Tombstones and cleanup.
    reg.mark_deleted("job", at(200))
        .await
        .expect("mark_deleted");
    assert!(reg
        .get_tombstone("job")
        .await
        .expect("get_tombstone")
        .is_some());
    assert_eq!(
        reg.list_tombstones()
            .await
            .expect("list_tombstones")
            .items
            .len(),
        1
    );
    reg.clear_tombstone("job").await.expect("clear_tombstone");
    assert!(inner.get_tombstone("job").await.expect("inner").is_none());
    let life = reg
        .restart_life("job", at(300))
        .await
        .expect("restart_life");
    assert!(life.generation > generation);
    reg.cleanup_task("job").await.expect("cleanup_task");
    assert!(inner.get_task("job").await.expect("inner get").is_none());
    reg.cleanup_all().await.expect("cleanup_all");
    reg.unregister(&lease).await.expect("unregister");
    assert!(inner.list_nodes().await.expect("inner").items.is_empty());
    assert_eq!(batches.load(Ordering::Relaxed), 2, "only claim is counted");
}

/// A node runs its tasks through a layer, and the layer sees its claims.
#[tokio::test]
async fn a_node_runs_through_a_layered_registry() {
    let (reg, _inner, batches) = counting();
    let node = Dcron::builder(reg)
        .node_name("layered")
        .build()
        .expect("build");
    let (ran, mut first) = tokio::sync::mpsc::unbounded_channel();
    node.add_func("tick", "* * * * * *", move |ctx| {
        let ran = ran.clone();
        async move {
            let _ = ran.send(ctx.scheduled);
            Ok(())
        }
    })
    .await
    .expect("add");
    node.start().await.expect("start");
    tokio::time::timeout(Duration::from_secs(10), first.recv())
        .await
        .expect("a fire within 10 s")
        .expect("the handler is alive");
    node.stop().await.expect("stop");
    assert!(
        batches.load(Ordering::Relaxed) >= 1,
        "claims went through the layer"
    );
}

/// The `fn` names declared between `start` and the first line that is a lone `}` after it.
fn fn_names(source: &str, start: &str) -> BTreeSet<String> {
    let from = source
        .find(start)
        .unwrap_or_else(|| panic!("`{start}` not found"));
    let body = &source[from..];
    let end = body.find("\n}\n").expect("the block ends");
    body[..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix("async fn ")
                .or_else(|| l.strip_prefix("fn "))?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Guards the promise that a wrapper never silently answers `Unsupported`: every method of
/// `Registry` has a forwarding default in `RegistryLayer` and is forwarded by `Layered`. A
/// method added to the trait and forgotten in `layer.rs` fails here.
#[test]
fn the_layer_covers_every_registry_method() {
    let registry = include_str!("../src/registry.rs");
    let layer = include_str!("../src/layer.rs");
    let trait_fns = fn_names(registry, "pub trait Registry:");
    assert!(trait_fns.len() >= 20, "parsed {trait_fns:?}");
    let mut layer_fns = fn_names(layer, "pub trait RegistryLayer:");
    assert!(layer_fns.remove("inner"));
    let layered_fns = fn_names(layer, "impl<L: RegistryLayer> Registry for Layered<L>");
    assert_eq!(layer_fns, trait_fns, "RegistryLayer's methods");
    assert_eq!(layered_fns, trait_fns, "Layered's forwards");
}

#[test]
fn capabilities_are_built_outside_the_crate() {
    let caps = Capabilities::with_max_value_bytes(4096)
        .with_records()
        .with_clock()
        .with_exactly_once()
        .with_slots()
        .without_watch();
    assert_eq!(caps.max_value_bytes, 4096);
    assert!(caps.records && caps.clock && caps.exactly_once && caps.slots);
    assert!(!caps.watch);
    let plain = Capabilities::new();
    assert_eq!(plain, Capabilities::default());
    assert!(plain.watch && !plain.records && !plain.slots);
}

#[test]
fn with_misfire_window_sets_the_window_and_is_bounded() {
    let meta = TaskMeta::new("t", "* * * * *")
        .with_misfire(MisfirePolicy::Skip)
        .with_misfire_window(Duration::from_millis(90_500));
    assert_eq!(meta.misfire_window_ms, Some(90_500));
    assert_eq!(meta.misfire, Some(MisfirePolicy::Skip));
    meta.check_bounds().expect("within bounds");

    let too_long = TaskMeta::new("t", "* * * * *")
        .with_misfire_window(dcron_core::limits::MAX_MISFIRE_WINDOW + Duration::from_secs(1));
    assert!(matches!(
        too_long.check_bounds(),
        Err(Error::InvalidArgument(m)) if m.contains("misfire_window_ms")
    ));
    // A window past u64 milliseconds saturates rather than wrapping to a small one.
    let huge = TaskMeta::new("t", "* * * * *").with_misfire_window(Duration::MAX);
    assert_eq!(huge.misfire_window_ms, Some(u64::MAX));
}

#[test]
fn next_fires_previews_a_schedule() {
    let cron = Schedule::parse("0 0 9 * * MON-FRI", None, SecondsField::Optional).expect("cron");
    // 2026-01-01 is a Thursday.
    let start = at(0);
    let fires = cron.next_fires(start, 4).expect("preview");
    let days: Vec<String> = fires
        .iter()
        .map(|f| f.format("%a %d %H:%M").to_string())
        .collect();
    assert_eq!(
        days,
        [
            "Thu 01 09:00",
            "Fri 02 09:00",
            "Mon 05 09:00",
            "Tue 06 09:00"
        ]
    );
    // Strictly after `after`: asking from the first fire starts at the second.
    assert_eq!(cron.next_fires(fires[0], 1).expect("one"), vec![fires[1]]);
    assert!(cron.next_fires(start, 0).expect("none").is_empty());

    let every = Schedule::parse("@every 90s", None, SecondsField::Optional).expect("every");
    let fires = every.next_fires(start, 3).expect("preview");
    assert_eq!(fires.len(), 3);
    assert!(fires
        .windows(2)
        .all(|w| w[1] - w[0] == chrono::Duration::seconds(90)));

    // A one-time schedule has one instant, then none.
    let once =
        Schedule::parse("@at 2026-01-01T00:10:00Z", None, SecondsField::Optional).expect("at");
    assert_eq!(once.next_fires(start, 5).expect("preview"), vec![at(600)]);
    assert!(once.next_fires(at(600), 5).expect("past").is_empty());

    // The bound: at most MAX_PREVIEW_FIRES, and a typed error above it.
    assert_eq!(
        every
            .next_fires(start, MAX_PREVIEW_FIRES)
            .expect("the bound itself")
            .len(),
        MAX_PREVIEW_FIRES
    );
    assert!(matches!(
        every.next_fires(start, MAX_PREVIEW_FIRES + 1),
        Err(Error::InvalidArgument(m)) if m.contains("at most 1000")
    ));
}
