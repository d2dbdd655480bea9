//! Watch cases: node and task events are delivered within a bound, and a watcher that reads
//! late still converges by applying events and re-listing on `Resync`.
//!
//! Delivery is at-least-once and may coalesce, so every case accepts a `Resync` in place of the
//! awaited event, provided a fresh listing then shows the expected state.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use dcron_core::{
    Error, NodeEvent, NodeStatus, PutMode, Registry, TaskMeta, TaskMetaEvent, Tombstone,
    WatchStream, MAX_WATCH_DELAY,
};
use futures::StreamExt;
use tokio::time::Instant;

use crate::harness::{node_listed, now_millis, CaseContext, CaseError, CaseResult};
use crate::{ensure, ensure_eq};

/// How long an event may take to arrive after the write that causes it: the contract's
/// [`MAX_WATCH_DELAY`].
pub const DELIVERY_BOUND: Duration = MAX_WATCH_DELAY;

/// Checks the watch capability: when watches are declared unsupported, both `watch_*` calls must
/// answer `Unsupported` and the case is skipped.
async fn require_watch(reg: &dyn Registry) -> CaseResult {
    if reg.capabilities().watch {
        return Ok(());
    }
    let nodes = reg.watch_nodes().await.err();
    let tasks = reg.watch_tasks().await.err();
    ensure!(
        matches!(nodes, Some(Error::Unsupported { .. })),
        "capabilities.watch is false but watch_nodes answered {nodes:?}"
    );
    ensure!(
        matches!(tasks, Some(Error::Unsupported { .. })),
        "capabilities.watch is false but watch_tasks answered {tasks:?}"
    );
    Err(CaseError::Skipped(
        "capabilities.watch is false (watch_* answer Unsupported as declared)".into(),
    ))
}

/// How an awaited event was observed.
enum Seen {
    /// The event itself.
    Event,
    /// A resync marker: the caller checks the state by listing.
    Resync,
}

/// Reads events until one satisfies `wanted` (or a resync arrives), within `within`.
async fn await_event<T: std::fmt::Debug>(
    stream: &mut WatchStream<T>,
    within: Duration,
    what: &str,
    is_resync: impl Fn(&T) -> bool,
    wanted: impl Fn(&T) -> bool,
) -> Result<Seen, CaseError> {
    let deadline = Instant::now() + within;
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(CaseError::Failed(format!(
                    "{what}: not delivered within {within:?}; other events seen: {skipped:?}"
                )))
            }
            Ok(None) => return Err(CaseError::Failed(format!("{what}: the watch stream ended"))),
            Ok(Some(event)) if wanted(&event) => return Ok(Seen::Event),
            Ok(Some(event)) if is_resync(&event) => return Ok(Seen::Resync),
            Ok(Some(event)) => skipped.push(event),
        }
    }
}

async fn await_node_event(
    stream: &mut WatchStream<NodeEvent>,
    within: Duration,
    what: &str,
    wanted: impl Fn(&NodeEvent) -> bool,
) -> Result<Seen, CaseError> {
    await_event(
        stream,
        within,
        what,
        |e| matches!(e, NodeEvent::Resync),
        wanted,
    )
    .await
}

async fn await_task_event(
    stream: &mut WatchStream<TaskMetaEvent>,
    what: &str,
    wanted: impl Fn(&TaskMetaEvent) -> bool,
) -> Result<Seen, CaseError> {
    await_event(
        stream,
        DELIVERY_BOUND,
        what,
        |e| matches!(e, TaskMetaEvent::Resync),
        wanted,
    )
    .await
}

/// After a resync, checks the state with a listing.
async fn confirm<F, Fut>(seen: Seen, what: &str, check: F) -> CaseResult
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<bool, CaseError>>,
{
    match seen {
        Seen::Event => Ok(()),
        Seen::Resync => {
            ensure!(check().await?, "{what}: after Resync the listing disagrees");
            Ok(())
        }
    }
}

/// Watches are either supported, or both `watch_*` calls answer `Unsupported` as declared.
pub async fn watch_capability_is_honest(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    match require_watch(reg.as_ref()).await {
        // Declared unsupported, and both calls answer `Unsupported`: honest.
        Err(CaseError::Skipped(_)) => return Ok(()),
        other => other?,
    }
    let nodes = reg.watch_nodes().await;
    ensure!(nodes.is_ok(), "watch_nodes failed: {:?}", nodes.err());
    let tasks = reg.watch_tasks().await;
    ensure!(tasks.is_ok(), "watch_tasks failed: {:?}", tasks.err());
    Ok(())
}

/// Node register, status update and unregister (by another client) are delivered within the bound.
pub async fn node_put_and_delete_delivered(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    let mut stream = watcher.watch_nodes().await?;
    let mut node = cx.node("watched");
    let lease = writer.register(&node, cx.min_ttl() * 10).await?;
    let id = node.id.clone();
    let seen = await_node_event(
        &mut stream,
        DELIVERY_BOUND,
        "node put",
        |e| matches!(e, NodeEvent::Put(n) if n.id == id),
    )
    .await?;
    confirm(seen, "node put", || node_listed(watcher.as_ref(), &node.id)).await?;

    node.status = NodeStatus::Working;
    writer.update_node(&lease, &node).await?;
    let seen = await_node_event(
        &mut stream,
        DELIVERY_BOUND,
        "node update",
        |e| matches!(e, NodeEvent::Put(n) if n.id == id && n.status == NodeStatus::Working),
    )
    .await?;
    confirm(seen, "node update", || async {
        let listed = watcher.list_nodes().await?;
        Ok(listed
            .items
            .iter()
            .any(|n| n.id == node.id && n.status == NodeStatus::Working))
    })
    .await?;

    writer.unregister(&lease).await?;
    let seen = await_node_event(
        &mut stream,
        DELIVERY_BOUND,
        "node delete",
        |e| matches!(e, NodeEvent::Delete { id: d } if *d == id),
    )
    .await?;
    confirm(seen, "node delete", || async {
        Ok(!node_listed(watcher.as_ref(), &node.id).await?)
    })
    .await
}

/// A node whose lease expires is delivered as `Delete` within TTL + slack + the bound.
pub async fn node_expiry_delivered(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    let mut stream = watcher.watch_nodes().await?;
    let node = cx.node("expiring");
    let lease = writer.register(&node, cx.min_ttl()).await?;
    let id = node.id.clone();
    let seen = await_node_event(
        &mut stream,
        lease.ttl + dcron_core::expiry_tolerance(lease.ttl) + DELIVERY_BOUND,
        "node expiry",
        |e| matches!(e, NodeEvent::Delete { id: d } if *d == id),
    )
    .await?;
    confirm(seen, "node expiry", || async {
        Ok(!node_listed(watcher.as_ref(), &node.id).await?)
    })
    .await
}

/// Task create and update (by another client) are delivered as `Put` with the new record.
pub async fn task_put_delivered(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    let mut stream = watcher.watch_tasks().await?;
    let v1 = crate::harness::task_meta("watched", "@hourly").with_payload("v1");
    writer.put_task(&v1, PutMode::CreateOnly).await?;
    let seen = await_task_event(
        &mut stream,
        "task create",
        |e| matches!(e, TaskMetaEvent::Put(m) if *m == v1),
    )
    .await?;
    confirm(seen, "task create", || async {
        Ok(watcher.get_task("watched").await? == Some(v1.clone()))
    })
    .await?;
    let v2 = v1.clone().with_payload("v2");
    writer.put_task(&v2, PutMode::Update).await?;
    let seen = await_task_event(
        &mut stream,
        "task update",
        |e| matches!(e, TaskMetaEvent::Put(m) if *m == v2),
    )
    .await?;
    confirm(seen, "task update", || async {
        Ok(watcher.get_task("watched").await? == Some(v2.clone()))
    })
    .await
}

/// `mark_deleted` is delivered as `Tombstoned`, `clear_tombstone` as `TombstoneCleared`.
pub async fn tombstone_events_delivered(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    let mut stream = watcher.watch_tasks().await?;
    let at = now_millis();
    writer.mark_deleted("tombed", at).await?;
    let expected = Tombstone {
        name: "tombed".into(),
        deleted_at: at,
    };
    let seen = await_task_event(
        &mut stream,
        "tombstone",
        |e| matches!(e, TaskMetaEvent::Tombstoned(t) if *t == expected),
    )
    .await?;
    confirm(seen, "tombstone", || async {
        Ok(watcher.get_tombstone("tombed").await?.is_some())
    })
    .await?;
    writer.clear_tombstone("tombed").await?;
    let seen = await_task_event(
        &mut stream,
        "tombstone cleared",
        |e| matches!(e, TaskMetaEvent::TombstoneCleared { name } if name == "tombed"),
    )
    .await?;
    confirm(seen, "tombstone cleared", || async {
        Ok(watcher.get_tombstone("tombed").await?.is_none())
    })
    .await
}

/// `cleanup_task` of a record is delivered as `Removed`.
pub async fn task_removed_delivered(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    writer
        .put_task(
            &crate::harness::task_meta("removed", "@hourly"),
            PutMode::CreateOnly,
        )
        .await?;
    let mut stream = watcher.watch_tasks().await?;
    writer.cleanup_task("removed").await?;
    let seen = await_task_event(
        &mut stream,
        "task removed",
        |e| matches!(e, TaskMetaEvent::Removed { name } if name == "removed"),
    )
    .await?;
    confirm(seen, "task removed", || async {
        Ok(watcher.get_task("removed").await?.is_none())
    })
    .await
}

/// What a watch consumer believes the registry holds.
#[derive(Debug, Default, PartialEq, Eq)]
struct Model {
    tasks: BTreeMap<String, TaskMeta>,
    tombstones: BTreeMap<String, Tombstone>,
}

impl Model {
    async fn listed(reg: &dyn Registry) -> Result<Model, CaseError> {
        Ok(Model {
            tasks: reg
                .list_tasks()
                .await?
                .items
                .into_iter()
                .map(|m| (m.name.clone(), m))
                .collect(),
            tombstones: reg
                .list_tombstones()
                .await?
                .items
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
        })
    }

    async fn apply(&mut self, event: TaskMetaEvent, reg: &dyn Registry) -> CaseResult {
        match event {
            TaskMetaEvent::Put(m) => {
                self.tasks.insert(m.name.clone(), m);
            }
            TaskMetaEvent::Removed { name } => {
                self.tasks.remove(&name);
            }
            TaskMetaEvent::Tombstoned(t) => {
                self.tombstones.insert(t.name.clone(), t);
            }
            TaskMetaEvent::TombstoneCleared { name } => {
                self.tombstones.remove(&name);
            }
            TaskMetaEvent::Resync => *self = Model::listed(reg).await?,
        }
        Ok(())
    }
}

/// Consumes events into the model until it equals a fresh listing after a quiet period, or the
/// deadline passes.
async fn converge(
    stream: &mut WatchStream<TaskMetaEvent>,
    model: &mut Model,
    reg: &dyn Registry,
    within: Duration,
) -> CaseResult {
    let deadline = Instant::now() + within;
    let quiet = Duration::from_millis(300);
    loop {
        match tokio::time::timeout(quiet, stream.next()).await {
            Ok(Some(event)) => model.apply(event, reg).await?,
            Ok(None) => {
                return Err(CaseError::Failed("the watch stream ended".into()));
            }
            Err(_) => {
                let truth = Model::listed(reg).await?;
                if *model == truth {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let missing: Vec<_> = truth
                        .tasks
                        .keys()
                        .filter(|k| model.tasks.get(*k) != truth.tasks.get(*k))
                        .take(10)
                        .collect();
                    return Err(CaseError::Failed(format!(
                        "the watcher's model did not converge within {within:?}: {} tasks / {} tombstones in the model, {} / {} listed; differing tasks include {missing:?}",
                        model.tasks.len(),
                        model.tombstones.len(),
                        truth.tasks.len(),
                        truth.tombstones.len()
                    )));
                }
            }
        }
    }
}

/// A watcher that reads only after 500 writes, and one reading all along, both converge
/// (events applied, re-list on `Resync`) to what `list_tasks`/`list_tombstones` show; the
/// unread watcher never blocks the writers.
pub async fn late_reader_converges(cx: &CaseContext) -> CaseResult {
    let late = cx.open().await?;
    require_watch(late.as_ref()).await?;
    let eager = cx.open().await?;
    let writer = cx.open().await?;
    let mut late_stream = late.watch_tasks().await?;
    let mut eager_stream = eager.watch_tasks().await?;
    let eager_task = tokio::spawn(async move {
        let mut model = Model::default();
        // Consume until told the writes are done (the stream is read all along).
        while let Some(event) = eager_stream.next().await {
            if matches!(&event, TaskMetaEvent::Put(m) if m.name == "zz-done") {
                model.apply(event, eager.as_ref()).await?;
                break;
            }
            model.apply(event, eager.as_ref()).await?;
        }
        Ok::<_, CaseError>((model, eager_stream, eager))
    });

    let writes = async {
        for i in 0..500usize {
            let name = format!("late-{}", i % 120);
            let m = crate::harness::task_meta(&name, "@hourly").with_payload(i.to_string());
            match i % 10 {
                0..=5 => writer.put_task(&m, PutMode::Force).await?,
                6 => writer.mark_deleted(&name, now_millis()).await?,
                7 => match writer.clear_tombstone(&name).await {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                },
                8 => writer.cleanup_task(&name).await?,
                _ => match writer.put_task(&m, PutMode::Update).await {
                    Ok(()) | Err(Error::NotFound { .. } | Error::Tombstoned { .. }) => {}
                    Err(e) => return Err(e.into()),
                },
            }
        }
        writer
            .put_task(
                &crate::harness::task_meta("zz-done", "@hourly"),
                PutMode::Force,
            )
            .await?;
        Ok::<_, CaseError>(())
    };
    match tokio::time::timeout(Duration::from_secs(120), writes).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(CaseError::Failed(
                "501 writes did not finish within 120 s while a watcher was not reading".into(),
            ))
        }
    }

    let within = DELIVERY_BOUND * 2;
    let mut late_model = Model::default();
    converge(&mut late_stream, &mut late_model, late.as_ref(), within).await?;
    ensure!(
        late_model.tasks.contains_key("zz-done"),
        "the late watcher's model lacks the last write"
    );

    let (mut eager_model, mut eager_stream, eager) =
        match tokio::time::timeout(within, eager_task).await {
            Ok(Ok(result)) => result?,
            Ok(Err(e)) => return Err(CaseError::Failed(format!("eager watcher failed: {e}"))),
            Err(_) => {
                return Err(CaseError::Failed(
                    "the eager watcher never saw the last write".into(),
                ))
            }
        };
    converge(&mut eager_stream, &mut eager_model, eager.as_ref(), within).await?;
    ensure_eq!(
        eager_model,
        late_model,
        "both watchers agree with each other"
    );
    Ok(())
}

async fn listed_nodes(reg: &dyn Registry) -> Result<BTreeMap<String, dcron_core::Node>, CaseError> {
    Ok(reg
        .list_nodes()
        .await?
        .items
        .into_iter()
        .map(|n| (n.id.clone(), n))
        .collect())
}

/// A node watcher that reads only after 100 registrations and unregistrations converges to
/// `list_nodes` (events applied, re-list on `Resync`).
pub async fn node_watch_converges(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    let mut stream = watcher.watch_nodes().await?;
    let ttl = cx.min_ttl() * 30;
    let mut leases = Vec::new();
    for i in 0..100usize {
        let mut node = cx.node(&format!("n{i}"));
        let lease = writer.register(&node, ttl).await?;
        if i % 3 == 0 {
            node.status = NodeStatus::Working;
            writer.update_node(&lease, &node).await?;
        }
        if i % 4 == 0 {
            writer.unregister(&lease).await?;
        } else {
            leases.push(lease);
        }
    }
    let mut model = BTreeMap::new();
    let deadline = Instant::now() + DELIVERY_BOUND * 2;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Ok(Some(NodeEvent::Put(n))) => {
                model.insert(n.id.clone(), n);
            }
            Ok(Some(NodeEvent::Delete { id })) => {
                model.remove(&id);
            }
            Ok(Some(NodeEvent::Resync)) => model = listed_nodes(watcher.as_ref()).await?,
            Ok(None) => return Err(CaseError::Failed("the node watch stream ended".into())),
            Err(_) => {
                let truth = listed_nodes(watcher.as_ref()).await?;
                if model == truth {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "node model did not converge: {} in the model, {} listed",
                    model.len(),
                    truth.len()
                );
            }
        }
    }
    ensure_eq!(model.len(), 75, "live nodes in the converged model");
    for lease in &leases {
        writer.unregister(lease).await?;
    }
    Ok(())
}

/// Watch streams opened and dropped (20 of them) never block writers, and a new watcher still
/// receives events.
pub async fn dropped_watchers_do_not_block(cx: &CaseContext) -> CaseResult {
    let reg = cx.open().await?;
    require_watch(reg.as_ref()).await?;
    for _ in 0..20 {
        let tasks = reg.watch_tasks().await?;
        let nodes = reg.watch_nodes().await?;
        drop((tasks, nodes));
    }
    let writes = async {
        for i in 0..200 {
            reg.put_task(
                &crate::harness::task_meta(format!("after-drop-{i}"), "@hourly"),
                PutMode::CreateOnly,
            )
            .await?;
        }
        Ok::<_, CaseError>(())
    };
    match tokio::time::timeout(Duration::from_secs(60), writes).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(CaseError::Failed(
                "200 writes did not finish within 60 s after watchers were dropped".into(),
            ))
        }
    }
    let mut stream = reg.watch_tasks().await?;
    let last = crate::harness::task_meta("after-drop-last", "@hourly");
    reg.put_task(&last, PutMode::CreateOnly).await?;
    let seen = await_task_event(
        &mut stream,
        "event after dropped watchers",
        |e| matches!(e, TaskMetaEvent::Put(m) if *m == last),
    )
    .await?;
    confirm(seen, "event after dropped watchers", || async {
        Ok(reg.get_task("after-drop-last").await?.is_some())
    })
    .await
}

/// `cleanup_all` is delivered (per-name events or a `Resync`): the watcher's model ends empty.
pub async fn cleanup_all_delivered(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    let mut stream = watcher.watch_tasks().await?;
    let mut model = Model::default();
    for i in 0..20 {
        let name = format!("wiped-{i}");
        writer
            .put_task(
                &crate::harness::task_meta(&name, "@hourly"),
                PutMode::CreateOnly,
            )
            .await?;
        if i % 2 == 0 {
            writer.mark_deleted(&name, now_millis()).await?;
        }
    }
    writer.mark_deleted("wiped-static", now_millis()).await?;
    converge(
        &mut stream,
        &mut model,
        watcher.as_ref(),
        DELIVERY_BOUND * 2,
    )
    .await?;
    ensure_eq!(model.tasks.len(), 20, "tasks before cleanup_all");
    ensure_eq!(model.tombstones.len(), 11, "tombstones before cleanup_all");
    writer.cleanup_all().await?;
    converge(
        &mut stream,
        &mut model,
        watcher.as_ref(),
        DELIVERY_BOUND * 2,
    )
    .await?;
    ensure!(
        model.tasks.is_empty() && model.tombstones.is_empty(),
        "after cleanup_all the watcher still holds {} tasks and {} tombstones",
        model.tasks.len(),
        model.tombstones.len()
    );
    Ok(())
}

/// Reads task events until both `keys` reached version `last` (or a `Resync` and a listing
/// show it), then for a quiet period; fails when a `Put` of a key carries an older version
/// than one already seen for it (a stale duplicate or an event out of order).
async fn versions_never_go_back<T: std::fmt::Debug>(
    stream: &mut WatchStream<T>,
    what: &str,
    last: u64,
    keys: &[String],
    version_of: impl Fn(&T) -> Option<(String, u64)>,
    is_resync: impl Fn(&T) -> bool,
    listed: impl Fn() -> futures::future::BoxFuture<'static, Result<BTreeMap<String, u64>, CaseError>>,
) -> CaseResult {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut settled = false;
    let mut deadline = Instant::now() + DELIVERY_BOUND;
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) if settled => return Ok(()),
            Err(_) => {
                return Err(CaseError::Failed(format!(
                    "{what}: version {last} of every key not delivered within {DELIVERY_BOUND:?}; seen {seen:?}"
                )))
            }
            Ok(None) => return Err(CaseError::Failed(format!("{what}: the watch stream ended"))),
            Ok(Some(event)) => event,
        };
        if is_resync(&event) {
            let now = listed().await?;
            for key in keys {
                if let Some(v) = now.get(key) {
                    let entry = seen.entry(key.clone()).or_insert(0);
                    *entry = (*entry).max(*v);
                }
            }
        } else if let Some((key, version)) = version_of(&event) {
            if let Some(previous) = seen.get(&key) {
                ensure!(
                    version >= *previous,
                    "{what}: `{key}` version {version} arrived after version {previous} (a stale event)"
                );
            }
            seen.insert(key, version);
        }
        if !settled && keys.iter().all(|k| seen.get(k) == Some(&last)) {
            settled = true;
            // Anything stale still in flight must show up within a short quiet period.
            deadline = Instant::now() + Duration::from_millis(500);
        }
    }
}

/// Task events of one name arrive in the order of its changes: 20 quick versions of two
/// interleaved tasks are seen with versions that never go back, ending at the last one.
pub async fn task_events_never_go_back(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    let mut stream = watcher.watch_tasks().await?;
    let keys = vec!["ordered-a".to_string(), "ordered-b".to_string()];
    const LAST: u64 = 20;
    for v in 1..=LAST {
        for key in &keys {
            let meta =
                crate::harness::task_meta(key.as_str(), "@hourly").with_payload(v.to_string());
            let mode = if v == 1 {
                PutMode::CreateOnly
            } else {
                PutMode::Update
            };
            writer.put_task(&meta, mode).await?;
        }
    }
    let lister = watcher.clone();
    versions_never_go_back(
        &mut stream,
        "task versions",
        LAST,
        &keys,
        |e| match e {
            TaskMetaEvent::Put(m) => m.payload.parse().ok().map(|v| (m.name.clone(), v)),
            _ => None,
        },
        |e| matches!(e, TaskMetaEvent::Resync),
        move || {
            let reg = lister.clone();
            Box::pin(async move {
                Ok(reg
                    .list_tasks()
                    .await?
                    .items
                    .into_iter()
                    .filter_map(|m| m.payload.parse().ok().map(|v| (m.name, v)))
                    .collect())
            })
        },
    )
    .await
}

/// Node events of one node arrive in the order of its changes: 20 quick record updates are
/// seen with weights that never go back, ending at the last one.
pub async fn node_events_never_go_back(cx: &CaseContext) -> CaseResult {
    let watcher = cx.open().await?;
    require_watch(watcher.as_ref()).await?;
    let writer = cx.open().await?;
    let mut stream = watcher.watch_nodes().await?;
    let mut node = cx.node("ordered");
    node.weight = 0;
    let lease = writer.register(&node, cx.min_ttl() * 30).await?;
    const LAST: u64 = 20;
    for v in 1..=LAST {
        node.weight = v as u32;
        writer.update_node(&lease, &node).await?;
    }
    let id = node.id.clone();
    let lister = watcher.clone();
    let result = versions_never_go_back(
        &mut stream,
        "node record versions",
        LAST,
        std::slice::from_ref(&id),
        |e| match e {
            NodeEvent::Put(n) => Some((n.id.clone(), u64::from(n.weight))),
            _ => None,
        },
        |e| matches!(e, NodeEvent::Resync),
        move || {
            let reg = lister.clone();
            Box::pin(async move {
                Ok(reg
                    .list_nodes()
                    .await?
                    .items
                    .into_iter()
                    .map(|n| (n.id, u64::from(n.weight)))
                    .collect())
            })
        },
    )
    .await;
    writer.unregister(&lease).await?;
    result
}
