//! `dcronctl watch`: a stream of node, task and fire events.
//!
//! Node and task events come from the registry's watches ([`Registry::watch_nodes`],
//! [`Registry::watch_tasks`]); the state is also listed again in full every few intervals and
//! after any gap the watches report, so nothing is missed when a watch is lost (and registries
//! without watches still work, by polling alone). Fire events come from polling the claims of
//! every known task each interval: a claim is the record of a fire and the node that ran it.
//! Static tasks are known to the registry only once they are deleted; name them with `--task`
//! to see their fires.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{
    Claim, Node, NodeEvent, Registry, TaskMeta, TaskMetaEvent, TaskStatus, WatchStream,
};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::duration::format_instant;
use crate::error::CliResult;
use crate::ops::Snapshot;

/// How many claim listings run at once per poll.
const CLAIM_POLLS_IN_FLIGHT: usize = 8;

/// One thing that happened in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// A node registered.
    NodeJoined {
        /// Node id.
        node: String,
        /// Status.
        status: String,
        /// Host name.
        hostname: String,
        /// Weight.
        weight: u32,
    },
    /// A node's status, weight or address changed.
    NodeChanged {
        /// Node id.
        node: String,
        /// Status.
        status: String,
        /// Host name.
        hostname: String,
        /// Weight.
        weight: u32,
    },
    /// A node unregistered or its lease expired.
    NodeLeft {
        /// Node id.
        node: String,
    },
    /// A dynamic task was added.
    TaskAdded {
        /// Task name.
        task: String,
        /// Schedule.
        schedule: String,
        /// Time zone.
        zone: String,
    },
    /// A dynamic task's record changed.
    TaskChanged {
        /// Task name.
        task: String,
        /// Schedule.
        schedule: String,
        /// Time zone.
        zone: String,
    },
    /// A dynamic task record was removed (cleanup).
    TaskRemoved {
        /// Task name.
        task: String,
    },
    /// A task was marked deleted.
    TaskDeleted {
        /// Task name.
        task: String,
    },
    /// A task's tombstone was cleared (reuse, force-add, cleanup).
    TaskRestored {
        /// Task name.
        task: String,
    },
    /// A task was paused.
    TaskPaused {
        /// Task name.
        task: String,
    },
    /// A task was resumed.
    TaskResumed {
        /// Task name.
        task: String,
    },
    /// A task's owner recorded a completed run (scheduled or triggered) in its status record.
    Result {
        /// Task name.
        task: String,
        /// The scheduled instant of the run.
        instant: Option<DateTime<Utc>>,
        /// The node that ran it.
        node: Option<String>,
        /// `ok` or `failed: <error>`.
        result: String,
        /// Completed runs so far.
        runs: u64,
        /// Failed runs so far.
        failures: u64,
    },
    /// A fire was claimed (and so run) by a node.
    Fire {
        /// Task name.
        task: String,
        /// The scheduled instant.
        instant: DateTime<Utc>,
        /// The node that claimed it.
        node: String,
        /// The claim's fencing token.
        token: u64,
    },
}

/// An event with the time `dcronctl` observed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stamped {
    /// When it was observed.
    pub at: DateTime<Utc>,
    /// The event.
    #[serde(flatten)]
    pub event: WatchEvent,
}

impl Stamped {
    /// One human-readable line (no newline).
    pub fn line(&self) -> String {
        let (what, detail) = match &self.event {
            WatchEvent::NodeJoined {
                node,
                status,
                hostname,
                weight,
            } => (
                "node joined",
                format!(
                    "{node} ({status}, host {}, weight {weight})",
                    dash(hostname)
                ),
            ),
            WatchEvent::NodeChanged {
                node,
                status,
                hostname,
                weight,
            } => (
                "node changed",
                format!(
                    "{node} ({status}, host {}, weight {weight})",
                    dash(hostname)
                ),
            ),
            WatchEvent::NodeLeft { node } => ("node left", node.clone()),
            WatchEvent::TaskAdded {
                task,
                schedule,
                zone,
            } => ("task added", format!("{task} ({schedule}, {zone})")),
            WatchEvent::TaskChanged {
                task,
                schedule,
                zone,
            } => ("task changed", format!("{task} ({schedule}, {zone})")),
            WatchEvent::TaskRemoved { task } => ("task removed", task.clone()),
            WatchEvent::TaskDeleted { task } => ("task deleted", task.clone()),
            WatchEvent::TaskRestored { task } => ("task restored", task.clone()),
            WatchEvent::TaskPaused { task } => ("task paused", task.clone()),
            WatchEvent::TaskResumed { task } => ("task resumed", task.clone()),
            WatchEvent::Result {
                task,
                instant,
                node,
                result,
                runs,
                failures,
            } => (
                "result",
                format!(
                    "{task} @ {} on {}: {result} (runs {runs}, failures {failures})",
                    instant.map_or_else(|| "-".into(), format_instant),
                    node.as_deref().unwrap_or("-")
                ),
            ),
            WatchEvent::Fire {
                task,
                instant,
                node,
                token,
            } => (
                "fire",
                format!(
                    "{task} @ {} on {node} (token {token})",
                    format_instant(*instant)
                ),
            ),
        };
        format!("{}  {what:<13}  {detail}", format_instant(self.at))
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn node_summary(n: &Node) -> (String, String, u32) {
    (n.status.to_string(), n.hostname.clone(), n.weight)
}

fn zone_of(meta: &TaskMeta) -> String {
    meta.time_zone.clone().unwrap_or_else(|| "UTC".into())
}

/// What the watcher knows, and the events each observation implies (pure, no I/O).
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    nodes: HashMap<String, Node>,
    tasks: HashMap<String, TaskMeta>,
    tombstones: HashSet<String>,
    seen: HashMap<String, HashSet<(i64, String, u64)>>,
    runs: HashMap<String, (u64, Option<DateTime<Utc>>)>,
    paused: BTreeSet<String>,
    extra: BTreeSet<String>,
}

impl Tracker {
    /// Starts from a snapshot, with extra task names whose claims are polled too.
    pub fn new(snap: &Snapshot, extra: &[String]) -> Self {
        Tracker {
            nodes: snap
                .nodes
                .iter()
                .map(|n| (n.id.clone(), n.clone()))
                .collect(),
            tasks: snap
                .tasks
                .iter()
                .map(|t| (t.name.clone(), t.clone()))
                .collect(),
            tombstones: snap.tombstones.iter().map(|t| t.name.clone()).collect(),
            seen: HashMap::new(),
            runs: HashMap::new(),
            paused: BTreeSet::new(),
            extra: extra.iter().cloned().collect(),
        }
    }

    /// The names whose claims are polled: dynamic tasks, tombstoned names and extra names.
    pub fn claim_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.tasks.keys().cloned().collect();
        names.extend(self.tombstones.iter().cloned());
        names.extend(self.extra.iter().cloned());
        names.into_iter().collect()
    }

    fn put_node(&mut self, node: Node) -> Option<WatchEvent> {
        let (status, hostname, weight) = node_summary(&node);
        let id = node.id.clone();
        match self.nodes.insert(id.clone(), node) {
            None => Some(WatchEvent::NodeJoined {
                node: id,
                status,
                hostname,
                weight,
            }),
            Some(old) if node_summary(&old) != (status.clone(), hostname.clone(), weight) => {
                Some(WatchEvent::NodeChanged {
                    node: id,
                    status,
                    hostname,
                    weight,
                })
            }
            Some(_) => None,
        }
    }

    fn remove_node(&mut self, id: &str) -> Option<WatchEvent> {
        self.nodes.remove(id).map(|_| WatchEvent::NodeLeft {
            node: id.to_string(),
        })
    }

    /// Applies a node watch event. `Resync` yields nothing: the caller lists again.
    pub fn node_event(&mut self, ev: NodeEvent) -> Vec<WatchEvent> {
        match ev {
            NodeEvent::Put(n) => self.put_node(n).into_iter().collect(),
            NodeEvent::Delete { id } => self.remove_node(&id).into_iter().collect(),
            NodeEvent::Resync => Vec::new(),
        }
    }

    /// Brings the node view to a full listing.
    pub fn reconcile_nodes(&mut self, nodes: Vec<Node>) -> Vec<WatchEvent> {
        let live: HashSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let mut gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|id| !live.contains(*id))
            .cloned()
            .collect();
        gone.sort();
        let mut out: Vec<WatchEvent> = gone.iter().filter_map(|id| self.remove_node(id)).collect();
        let mut nodes = nodes;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(nodes.into_iter().filter_map(|n| self.put_node(n)));
        out
    }

    fn put_task(&mut self, meta: TaskMeta) -> Option<WatchEvent> {
        let (task, schedule, zone) = (meta.name.clone(), meta.cron_format.clone(), zone_of(&meta));
        match self.tasks.insert(task.clone(), meta.clone()) {
            None => Some(WatchEvent::TaskAdded {
                task,
                schedule,
                zone,
            }),
            Some(old) if old != meta => Some(WatchEvent::TaskChanged {
                task,
                schedule,
                zone,
            }),
            Some(_) => None,
        }
    }

    fn remove_task(&mut self, name: &str) -> Option<WatchEvent> {
        self.tasks.remove(name).map(|_| WatchEvent::TaskRemoved {
            task: name.to_string(),
        })
    }

    fn tombstone(&mut self, name: &str) -> Option<WatchEvent> {
        self.tombstones
            .insert(name.to_string())
            .then(|| WatchEvent::TaskDeleted {
                task: name.to_string(),
            })
    }

    fn untombstone(&mut self, name: &str) -> Option<WatchEvent> {
        self.tombstones
            .remove(name)
            .then(|| WatchEvent::TaskRestored {
                task: name.to_string(),
            })
    }

    /// Applies a task watch event. `Resync` yields nothing: the caller lists again.
    pub fn task_event(&mut self, ev: TaskMetaEvent) -> Vec<WatchEvent> {
        let ev = match ev {
            TaskMetaEvent::Put(meta) => self.put_task(meta),
            TaskMetaEvent::Removed { name } => self.remove_task(&name),
            TaskMetaEvent::Tombstoned(t) => self.tombstone(&t.name),
            TaskMetaEvent::TombstoneCleared { name } => self.untombstone(&name),
            TaskMetaEvent::Resync => None,
        };
        ev.into_iter().collect()
    }

    /// Brings the task view to full listings of records and tombstoned names.
    pub fn reconcile_tasks(
        &mut self,
        tasks: Vec<TaskMeta>,
        tombstones: Vec<String>,
    ) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        let live: HashSet<String> = tasks.iter().map(|t| t.name.clone()).collect();
        let mut gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|n| !live.contains(*n))
            .cloned()
            .collect();
        gone.sort();
        out.extend(gone.iter().filter_map(|n| self.remove_task(n)));
        let mut tasks = tasks;
        tasks.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(tasks.into_iter().filter_map(|t| self.put_task(t)));
        let dead: HashSet<String> = tombstones.into_iter().collect();
        let mut cleared: Vec<String> = self
            .tombstones
            .iter()
            .filter(|n| !dead.contains(*n))
            .cloned()
            .collect();
        cleared.sort();
        out.extend(cleared.iter().filter_map(|n| self.untombstone(n)));
        let mut added: Vec<&String> = dead.iter().collect();
        added.sort();
        for n in added {
            out.extend(self.tombstone(n));
        }
        out
    }

    /// Records the retained claims of `task`; returns fires not seen before, oldest first.
    /// With `quiet`, records them without reporting (the state at start-up).
    pub fn claims(&mut self, task: &str, claims: &[Claim], quiet: bool) -> Vec<WatchEvent> {
        let now: HashSet<(i64, String, u64)> = claims
            .iter()
            .map(|c| (c.fire.instant_millis(), c.node_id.clone(), c.token))
            .collect();
        let seen = self.seen.entry(task.to_string()).or_default();
        let mut fresh: Vec<&Claim> = claims
            .iter()
            .filter(|c| !seen.contains(&(c.fire.instant_millis(), c.node_id.clone(), c.token)))
            .collect();
        fresh.sort_by_key(|c| (c.fire.instant, c.token));
        let out = if quiet {
            Vec::new()
        } else {
            fresh
                .into_iter()
                .map(|c| WatchEvent::Fire {
                    task: task.to_string(),
                    instant: c.fire.instant,
                    node: c.node_id.clone(),
                    token: c.token,
                })
                .collect()
        };
        // Only what is still retained is remembered, so memory stays bounded.
        *seen = now;
        out
    }
}

impl Tracker {
    /// Records the task status records; returns a result event for each task that completed a
    /// run since the last call. With `quiet`, records them without reporting.
    pub fn statuses(&mut self, statuses: &[TaskStatus], quiet: bool) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        let mut sorted: Vec<&TaskStatus> = statuses.iter().collect();
        sorted.sort_by(|a, b| a.task.cmp(&b.task));
        for st in sorted {
            let now = (st.run_count, st.last_fire);
            let before = self.runs.insert(st.task.clone(), now);
            let new_run = match before {
                None => st.run_count > 0,
                Some((count, last)) => {
                    st.run_count > count || (st.last_fire != last && st.last_fire.is_some())
                }
            };
            if quiet || !new_run {
                continue;
            }
            out.push(WatchEvent::Result {
                task: st.task.clone(),
                instant: st.last_fire,
                node: st.last_node.clone(),
                result: st
                    .last_result
                    .as_ref()
                    .map_or_else(|| "-".into(), crate::admin::result_text),
                runs: st.run_count,
                failures: st.failure_count,
            });
        }
        out
    }
}

impl Tracker {
    /// Records the set of paused names; returns pause and resume events since the last call.
    /// With `quiet`, records it without reporting.
    pub fn pauses(&mut self, paused: BTreeSet<String>, quiet: bool) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        if !quiet {
            out.extend(
                paused
                    .difference(&self.paused)
                    .map(|t| WatchEvent::TaskPaused { task: t.clone() }),
            );
            out.extend(
                self.paused
                    .difference(&paused)
                    .map(|t| WatchEvent::TaskResumed { task: t.clone() }),
            );
        }
        self.paused = paused;
        out
    }
}

/// The task statuses and paused names, empty for a registry without records.
async fn poll_records(
    registry: &dyn Registry,
) -> dcron_core::Result<(Vec<TaskStatus>, BTreeSet<String>)> {
    if !registry.capabilities().records {
        return Ok((Vec::new(), BTreeSet::new()));
    }
    let polled = tokio::try_join!(
        dcron_core::admin::list_status(registry),
        dcron_core::admin::pause_records(registry)
    );
    match polled {
        Ok((status, pauses)) => Ok((
            status.items,
            pauses
                .items
                .into_iter()
                .filter(|p| p.paused)
                .map(|p| p.task)
                .collect(),
        )),
        Err(dcron_core::Error::Unsupported { .. }) => Ok((Vec::new(), BTreeSet::new())),
        Err(e) => Err(e),
    }
}

/// Settings of a watch.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// How often claims are polled (and watches re-established).
    pub interval: Duration,
    /// Every this many intervals, nodes and tasks are listed in full even when watches work.
    pub reconcile_every: u32,
    /// Extra task names (static tasks) whose fires are reported.
    pub extra_tasks: Vec<String>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            interval: Duration::from_secs(1),
            reconcile_every: 5,
            extra_tasks: Vec::new(),
        }
    }
}

async fn next_event<T>(stream: &mut Option<WatchStream<T>>) -> Option<T> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// A watch subscription's state: the stream, or whether to try again.
struct Sub<T> {
    stream: Option<WatchStream<T>>,
    supported: bool,
    resync: bool,
}

impl<T> Sub<T> {
    fn new() -> Self {
        Sub {
            stream: None,
            supported: true,
            resync: true,
        }
    }

    fn take(&mut self, result: dcron_core::Result<WatchStream<T>>) -> dcron_core::Result<()> {
        match result {
            Ok(s) => {
                self.stream = Some(s);
                self.resync = true;
                Ok(())
            }
            Err(dcron_core::Error::Unsupported { .. }) => {
                self.supported = false;
                Ok(())
            }
            Err(e) if e.is_retryable() => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn wanted(&self) -> bool {
        self.supported && self.stream.is_none()
    }
}

async fn poll_claims(
    registry: &dyn Registry,
    names: Vec<String>,
) -> dcron_core::Result<Vec<(String, Vec<Claim>)>> {
    futures::stream::iter(names)
        .map(|name| async move {
            let listing = registry.list_claims(&name).await?;
            Ok::<_, dcron_core::Error>((name, listing.items))
        })
        .buffer_unordered(CLAIM_POLLS_IN_FLIGHT)
        .try_collect()
        .await
}

/// One poll: re-subscribe lost watches, list what needs listing, poll claims.
async fn tick(
    registry: &dyn Registry,
    tracker: &mut Tracker,
    nodes: &mut Sub<NodeEvent>,
    tasks: &mut Sub<TaskMetaEvent>,
    full: bool,
) -> dcron_core::Result<Vec<WatchEvent>> {
    if nodes.wanted() {
        nodes.take(registry.watch_nodes().await)?;
    }
    if tasks.wanted() {
        tasks.take(registry.watch_tasks().await)?;
    }
    let mut out = Vec::new();
    if full || nodes.resync || nodes.stream.is_none() {
        let listing = registry.list_nodes().await?;
        nodes.resync = false;
        out.extend(tracker.reconcile_nodes(listing.items));
    }
    if full || tasks.resync || tasks.stream.is_none() {
        let (records, tombs) = tokio::try_join!(registry.list_tasks(), registry.list_tombstones())?;
        tasks.resync = false;
        out.extend(tracker.reconcile_tasks(
            records.items,
            tombs.items.into_iter().map(|t| t.name).collect(),
        ));
    }
    let mut polled = poll_claims(registry, tracker.claim_names()).await?;
    polled.sort_by(|a, b| a.0.cmp(&b.0));
    let mut fires = Vec::new();
    for (name, claims) in polled {
        fires.extend(tracker.claims(&name, &claims, false));
    }
    fires.sort_by_key(|f| match f {
        WatchEvent::Fire { instant, .. } => Some(*instant),
        _ => None,
    });
    out.extend(fires);
    let (statuses, paused) = poll_records(registry).await?;
    out.extend(tracker.pauses(paused, false));
    out.extend(tracker.statuses(&statuses, false));
    Ok(out)
}

/// Streams events until `stop` completes or `emit` returns `false` (its output is gone).
/// `warn` receives one line when the registry becomes unreachable and one when it is back.
///
/// # Errors
/// The initial listing's errors (exit code 3 when the registry is unreachable); later,
/// non-retryable registry errors (an unreachable registry is retried, not an error).
pub async fn run(
    registry: Arc<dyn Registry>,
    opts: &WatchOptions,
    stop: impl Future<Output = ()>,
    emit: &mut dyn FnMut(&Stamped) -> bool,
    warn: &mut dyn FnMut(&str),
) -> CliResult<()> {
    let mut nodes: Sub<NodeEvent> = Sub::new();
    let mut tasks: Sub<TaskMetaEvent> = Sub::new();
    // Subscribe before listing, so that nothing between the two is missed.
    nodes.take(registry.watch_nodes().await)?;
    tasks.take(registry.watch_tasks().await)?;
    let snap = Snapshot::load(registry.as_ref()).await?;
    let mut tracker = Tracker::new(&snap, &opts.extra_tasks);
    nodes.resync = false;
    tasks.resync = false;
    for (name, claims) in poll_claims(registry.as_ref(), tracker.claim_names()).await? {
        tracker.claims(&name, &claims, true);
    }
    let (statuses, paused) = poll_records(registry.as_ref()).await?;
    tracker.statuses(&statuses, true);
    tracker.pauses(paused, true);

    let mut ticker = tokio::time::interval(opts.interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut ticks: u64 = 0;
    let mut unreachable = false;
    tokio::pin!(stop);
    let stamp = |event: WatchEvent| Stamped {
        at: Utc::now(),
        event,
    };
    loop {
        let events: Vec<WatchEvent> = tokio::select! {
            _ = &mut stop => return Ok(()),
            ev = next_event(&mut nodes.stream), if nodes.stream.is_some() => match ev {
                Some(NodeEvent::Resync) => { nodes.resync = true; Vec::new() }
                Some(ev) => tracker.node_event(ev),
                None => { nodes.stream = None; Vec::new() }
            },
            ev = next_event(&mut tasks.stream), if tasks.stream.is_some() => match ev {
                Some(TaskMetaEvent::Resync) => { tasks.resync = true; Vec::new() }
                Some(ev) => tracker.task_event(ev),
                None => { tasks.stream = None; Vec::new() }
            },
            _ = ticker.tick() => {
                ticks += 1;
                let full = ticks % u64::from(opts.reconcile_every.max(1)) == 0;
                let result = tokio::select! {
                    _ = &mut stop => return Ok(()),
                    r = tick(registry.as_ref(), &mut tracker, &mut nodes, &mut tasks, full) => r,
                };
                match result {
                    Ok(events) => {
                        if unreachable {
                            unreachable = false;
                            warn("registry reachable again");
                        }
                        events
                    }
                    Err(e) if e.is_retryable() => {
                        if !unreachable {
                            unreachable = true;
                            warn(&format!("{e} (retrying every {})", crate::duration::format_duration(opts.interval)));
                        }
                        Vec::new()
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        for ev in events {
            if !emit(&stamp(ev)) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use dcron_core::{FireKey, MemoryRegistry, NodeStatus, PutMode, Tombstone};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn tracker_reports_changes_once() {
        let mut tr = Tracker::new(&Snapshot::default(), &[]);
        let mut n = Node::new("n1", t0());
        assert!(matches!(
            tr.node_event(NodeEvent::Put(n.clone()))[..],
            [WatchEvent::NodeJoined { .. }]
        ));
        // A repeated delivery (at-least-once) or a last_alive-only change is not an event.
        assert!(tr.node_event(NodeEvent::Put(n.clone())).is_empty());
        n.last_alive = t0() + chrono::Duration::seconds(3);
        assert!(tr.node_event(NodeEvent::Put(n.clone())).is_empty());
        n.status = NodeStatus::Working;
        assert!(matches!(
            tr.node_event(NodeEvent::Put(n.clone()))[..],
            [WatchEvent::NodeChanged { .. }]
        ));
        assert_eq!(
            tr.reconcile_nodes(vec![]),
            vec![WatchEvent::NodeLeft { node: "n1".into() }]
        );
        assert!(tr
            .node_event(NodeEvent::Delete { id: "n1".into() })
            .is_empty());

        let meta = TaskMeta::new("t", "@hourly");
        assert_eq!(tr.task_event(TaskMetaEvent::Put(meta.clone())).len(), 1);
        assert!(tr.task_event(TaskMetaEvent::Put(meta.clone())).is_empty());
        let tomb = Tombstone {
            name: "t".into(),
            deleted_at: t0(),
        };
        assert_eq!(
            tr.task_event(TaskMetaEvent::Tombstoned(tomb)),
            vec![WatchEvent::TaskDeleted { task: "t".into() }]
        );
        assert_eq!(
            tr.reconcile_tasks(vec![meta], vec![]),
            vec![WatchEvent::TaskRestored { task: "t".into() }]
        );
        assert_eq!(
            tr.reconcile_tasks(vec![], vec![]),
            vec![WatchEvent::TaskRemoved { task: "t".into() }]
        );
    }

    #[test]
    fn claims_are_reported_once_and_quietly_at_start() {
        let mut tr = Tracker::new(&Snapshot::default(), &["static".to_string()]);
        assert_eq!(tr.claim_names(), vec!["static".to_string()]);
        let claim = |s: i64, token| Claim {
            fire: FireKey::new("static", t0() + chrono::Duration::seconds(s)),
            node_id: "n1".into(),
            epoch: 1,
            generation: 1,
            token,
        };
        assert!(tr.claims("static", &[claim(0, 1)], true).is_empty());
        let fresh = tr.claims("static", &[claim(0, 1), claim(2, 3), claim(1, 2)], false);
        let tokens: Vec<u64> = fresh
            .iter()
            .map(|e| match e {
                WatchEvent::Fire { token, .. } => *token,
                _ => 0,
            })
            .collect();
        assert_eq!(tokens, [2, 3], "new fires, oldest first");
        assert!(tr.claims("static", &[claim(2, 3)], false).is_empty());
    }

    #[test]
    fn results_are_reported_when_the_run_count_grows() {
        let mut tr = Tracker::new(&Snapshot::default(), &[]);
        let mut st = TaskStatus::new("t", t0());
        st.run_count = 2;
        st.last_fire = Some(t0());
        assert!(tr.statuses(&[st.clone()], true).is_empty());
        assert!(tr.statuses(&[st.clone()], false).is_empty(), "unchanged");
        st.run_count = 3;
        st.failure_count = 1;
        st.last_node = Some("n1".into());
        st.last_result = Some(dcron_core::LastResult::Failed {
            error: "boom".into(),
        });
        let got = tr.statuses(&[st], false);
        assert_eq!(
            got,
            vec![WatchEvent::Result {
                task: "t".into(),
                instant: Some(t0()),
                node: Some("n1".into()),
                result: "failed: boom".into(),
                runs: 3,
                failures: 1,
            }]
        );
        let line = Stamped {
            at: t0(),
            event: got[0].clone(),
        }
        .line();
        assert!(
            line.ends_with(
                "result         t @ 2026-03-01T12:00:00Z on n1: failed: boom (runs 3, failures 1)"
            ),
            "{line}"
        );
    }

    #[test]
    fn pauses_and_resumes_are_reported() {
        let mut tr = Tracker::new(&Snapshot::default(), &[]);
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert!(tr.pauses(set(&["a"]), true).is_empty());
        assert!(tr.pauses(set(&["a"]), false).is_empty());
        assert_eq!(
            tr.pauses(set(&["b"]), false),
            vec![
                WatchEvent::TaskPaused { task: "b".into() },
                WatchEvent::TaskResumed { task: "a".into() }
            ]
        );
    }

    #[test]
    fn lines_and_json() {
        let ev = Stamped {
            at: t0(),
            event: WatchEvent::Fire {
                task: "report".into(),
                instant: t0(),
                node: "n1".into(),
                token: 4,
            },
        };
        assert_eq!(
            ev.line(),
            "2026-03-01T12:00:00Z  fire           report @ 2026-03-01T12:00:00Z on n1 (token 4)"
        );
        let json = serde_json::to_value(&ev).expect("serialises");
        assert_eq!(json["event"], "fire");
        assert_eq!(json["task"], "report");
        assert_eq!(json["token"], 4);
        assert_eq!(json["at"], "2026-03-01T12:00:00Z");
    }

    #[tokio::test]
    async fn run_streams_task_and_fire_events_until_stopped() {
        let reg = MemoryRegistry::new();
        reg.put_task(&crate::testing::meta("old", "@hourly"), PutMode::CreateOnly)
            .await
            .expect("put");
        crate::testing::claim(
            &reg,
            "n0",
            &[FireKey::new("old", t0())],
            Duration::from_secs(600),
        )
        .await
        .expect("claimed");
        let registry: Arc<dyn Registry> = Arc::new(reg.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
        let opts = WatchOptions {
            interval: Duration::from_millis(20),
            ..WatchOptions::default()
        };
        let watcher = async move {
            let mut emit = |e: &Stamped| ev_tx.send(e.event.clone()).is_ok();
            run(
                registry,
                &opts,
                async {
                    let _ = stop_rx.await;
                },
                &mut emit,
                &mut |_| {},
            )
            .await
        };
        let driver = async move {
            // The watcher is live once a task added after it started is reported: add probes
            // until one is (polling with a deadline, no fixed sleep).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut got = Vec::new();
            let mut probe = 0;
            'live: loop {
                probe += 1;
                reg.put_task(
                    &crate::testing::meta(&format!("probe-{probe}"), "@hourly"),
                    PutMode::CreateOnly,
                )
                .await
                .expect("put");
                let wait = tokio::time::Instant::now() + Duration::from_millis(200);
                while let Ok(ev) = tokio::time::timeout_at(wait.min(deadline), ev_rx.recv()).await {
                    let ev = ev.expect("open");
                    let live = matches!(&ev, WatchEvent::TaskAdded { .. });
                    got.push(ev);
                    if live {
                        break 'live;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no event in time: {got:?}"
                );
            }
            reg.put_task(&crate::testing::meta("new", "@hourly"), PutMode::CreateOnly)
                .await
                .expect("put");
            while !got
                .iter()
                .any(|e| matches!(e, WatchEvent::TaskAdded { task, .. } if task == "new"))
            {
                let ev = tokio::time::timeout_at(deadline, ev_rx.recv())
                    .await
                    .expect("task event in time")
                    .expect("open");
                got.push(ev);
            }
            crate::testing::claim(
                &reg,
                "n1",
                &[FireKey::new("new", t0())],
                Duration::from_secs(600),
            )
            .await
            .expect("claimed");
            loop {
                let ev = tokio::time::timeout_at(deadline, ev_rx.recv())
                    .await
                    .expect("fire event in time")
                    .expect("open");
                if let WatchEvent::Fire { task, node, .. } = &ev {
                    assert_eq!((task.as_str(), node.as_str()), ("new", "n1"));
                    break;
                }
                got.push(ev);
            }
            assert!(
                !got.iter()
                    .any(|e| matches!(e, WatchEvent::Fire { task, .. } if task == "old")),
                "claims that existed at start are not reported: {got:?}"
            );
            stop_tx.send(()).expect("watcher alive");
        };
        // Both run in this task; the watcher ends once the driver has sent stop.
        let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(watcher, driver)
        })
        .await
        .expect("the watcher stops");
        result.expect("watch ends cleanly");
    }
}
