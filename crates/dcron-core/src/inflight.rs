//! What a node knows of the fires it is running, and the bounds on them: the in-flight
//! registry behind [`crate::Dcron::running_fires`] and the [`StopReport`], the node's and the
//! tasks' concurrency limits, and the bounded `task` label of the fire metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::SharedString;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::event::FireInfo;
use crate::types::TaskMeta;

/// What [`crate::Dcron::stop`] saw of the fires that were running when it was called.
///
/// A stop lets running handlers finish within the grace period
/// ([`crate::DcronBuilder::grace_period`]); the fires still running when it ends are
/// cancelled (their handlers see [`crate::FireContext::cancel`]) and listed in
/// [`StopReport::unfinished`]. Those still running five seconds after that are no longer waited
/// for and are listed in [`StopReport::abandoned`] too.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
/// use dcron_core::{Dcron, MemoryRegistry};
/// let node = Dcron::builder(MemoryRegistry::new()).build()?;
/// node.start().await?;
/// let report = node.stop().await?;
/// assert!(report.is_clean(), "nothing was running: {report:?}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopReport {
    /// Fires still running when the grace period ended: they were cancelled.
    pub unfinished: Vec<FireInfo>,
    /// Fires still running five seconds after their cancellation: their handlers ignore
    /// cancellation and were left running in the background.
    pub abandoned: Vec<FireInfo>,
    /// How long the stop waited for running work.
    pub waited: Duration,
}

impl StopReport {
    /// Whether every running fire ended within the grace period.
    pub fn is_clean(&self) -> bool {
        self.unfinished.is_empty() && self.abandoned.is_empty()
    }
}

/// Shards of the in-flight registry: fires starting on different threads seldom share one.
const SHARDS: usize = 16;

/// One running fire, as kept while it runs (cheap to make: the name stays in its record).
struct Entry {
    meta: Arc<TaskMeta>,
    scheduled: DateTime<Utc>,
    catch_up: bool,
}

/// The fires this node is running, from the start of their first attempt to the end of their
/// last. Each fire takes one uncontended lock at its start and one at its end.
pub(crate) struct InFlight {
    node: Arc<str>,
    next: AtomicU64,
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
}

impl InFlight {
    pub(crate) fn new(node: Arc<str>) -> Self {
        InFlight {
            node,
            next: AtomicU64::new(0),
            shards: Default::default(),
        }
    }

    /// Records a fire that starts; it is forgotten when the guard drops.
    pub(crate) fn enter(
        self: &Arc<Self>,
        meta: &Arc<TaskMeta>,
        scheduled: DateTime<Utc>,
        catch_up: bool,
    ) -> InFlightGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            meta: meta.clone(),
            scheduled,
            catch_up,
        };
        self.shard(id).insert(id, entry);
        InFlightGuard {
            set: self.clone(),
            id,
        }
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[(id % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The fires running now, by task and instant.
    pub(crate) fn snapshot(&self) -> Vec<FireInfo> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.values().map(|e| FireInfo {
                task: e.meta.name.clone(),
                scheduled: e.scheduled,
                node: self.node.to_string(),
                catch_up: e.catch_up,
            }));
        }
        out.sort_by(|a, b| (&a.task, a.scheduled).cmp(&(&b.task, b.scheduled)));
        out
    }
}

/// Removes its fire from the in-flight registry when dropped (the fire ended, failed,
/// panicked or was dropped).
pub(crate) struct InFlightGuard {
    set: Arc<InFlight>,
    id: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.shard(self.id).remove(&self.id);
    }
}

/// The node's concurrency limit and each limited task's.
pub(crate) struct Limits {
    node: Option<Arc<Semaphore>>,
    /// Each task with a limit: the limit its semaphore was made with, and the semaphore. A
    /// task whose limit changes gets a new semaphore (fires holding the old one keep it).
    tasks: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
}

/// The permits a fire holds while it runs.
pub(crate) struct Permits {
    _task: Option<OwnedSemaphorePermit>,
    _node: Option<OwnedSemaphorePermit>,
}

impl Limits {
    pub(crate) fn new(node: Option<usize>) -> Self {
        Limits {
            node: node.map(|n| Arc::new(Semaphore::new(n))),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any limit may apply to a fire of `meta` (when none does, a fire takes no
    /// permit and costs nothing here).
    pub(crate) fn applies(&self, meta: &TaskMeta) -> bool {
        self.node.is_some() || meta.max_concurrent.is_some()
    }

    fn task_semaphore(&self, meta: &TaskMeta) -> Option<Arc<Semaphore>> {
        let limit = meta.max_concurrent?;
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        match tasks.get(&meta.name) {
            Some((l, s)) if *l == limit => Some(s.clone()),
            _ => {
                let permits = usize::try_from(limit).unwrap_or(usize::MAX).max(1);
                let s = Arc::new(Semaphore::new(permits));
                tasks.insert(meta.name.clone(), (limit, s.clone()));
                Some(s)
            }
        }
    }

    /// Takes the task's permit, then the node's (so that a task's waiting fires never hold
    /// node permits), waiting as long as `wait` allows: `None` when `wait` ended first.
    pub(crate) async fn acquire(
        &self,
        meta: &TaskMeta,
        wait: impl std::future::Future<Output = ()>,
    ) -> Option<Permits> {
        let task = self.task_semaphore(meta);
        // The fast path: both free now, no waiting.
        let quick_task = match &task {
            Some(s) => s.clone().try_acquire_owned().ok(),
            None => None,
        };
        let quick_node = match (&self.node, task.is_none() || quick_task.is_some()) {
            (Some(s), true) => s.clone().try_acquire_owned().ok(),
            _ => None,
        };
        let task_done = task.is_none() || quick_task.is_some();
        let node_done = self.node.is_none() || quick_node.is_some();
        if task_done && node_done {
            return Some(Permits {
                _task: quick_task,
                _node: quick_node,
            });
        }
        let slow = async {
            let t = match (quick_task, &task) {
                (Some(p), _) => Some(p),
                (None, Some(s)) => Some(s.clone().acquire_owned().await.ok()?),
                (None, None) => None,
            };
            let n = match (quick_node, &self.node) {
                (Some(p), _) => Some(p),
                (None, Some(s)) => Some(s.clone().acquire_owned().await.ok()?),
                (None, None) => None,
            };
            Some(Permits { _task: t, _node: n })
        };
        tokio::select! {
            permits = slow => permits,
            () = wait => None,
        }
    }
}

/// The `task` label of the fire metrics, for at most a fixed number of distinct tasks.
pub(crate) struct TaskLabels {
    limit: usize,
    labels: Mutex<HashMap<String, SharedString>>,
}

/// The label of fires of tasks past the limit.
pub(crate) const OTHER_TASKS: &str = "_other";

impl TaskLabels {
    /// Labels for `limit` tasks; none when `limit` is 0 (no `task` label at all).
    pub(crate) fn new(limit: usize) -> Option<Self> {
        (limit > 0).then(|| TaskLabels {
            limit,
            labels: Mutex::new(HashMap::new()),
        })
    }

    /// The label of a fire of `task`: its name while fewer than `limit` tasks have one, else
    /// [`OTHER_TASKS`].
    pub(crate) fn label(&self, task: &str) -> SharedString {
        let mut labels = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = labels.get(task) {
            return l.clone();
        }
        if labels.len() >= self.limit {
            return SharedString::const_str(OTHER_TASKS);
        }
        let l = SharedString::from(task.to_string());
        labels.insert(task.to_string(), l.clone());
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let labels = TaskLabels::new(2).unwrap();
        assert_eq!(&*labels.label("a"), "a");
        assert_eq!(&*labels.label("b"), "b");
        assert_eq!(&*labels.label("c"), OTHER_TASKS);
        assert_eq!(&*labels.label("a"), "a", "a known task keeps its label");
        assert!(TaskLabels::new(0).is_none());
    }

    #[test]
    fn in_flight_lists_running_fires_until_they_end() {
        let set = Arc::new(InFlight::new(Arc::from("n1")));
        let meta = Arc::new(TaskMeta::new("t", "* * * * * *"));
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let g1 = set.enter(&meta, at, false);
        let g2 = set.enter(&meta, at + chrono::Duration::seconds(1), true);
        let running = set.snapshot();
        assert_eq!(running.len(), 2);
        assert_eq!(running[0].scheduled, at);
        assert!(running[1].catch_up);
        assert_eq!(running[0].node, "n1");
        drop(g1);
        assert_eq!(set.snapshot().len(), 1);
        drop(g2);
        assert!(set.snapshot().is_empty());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn limits_wait_then_give_up() {
        let limits = Limits::new(Some(3));
        let meta = TaskMeta::new("t", "* * * * * *").with_max_concurrent(1);
        let never = std::future::pending::<()>;
        let first = limits.acquire(&meta, never()).await;
        assert!(first.is_some());
        // The task's one permit is held: a second fire waits, and gives up when told.
        let second = limits
            .acquire(&meta, tokio::time::sleep(Duration::from_secs(1)))
            .await;
        assert!(second.is_none());
        // Other tasks still run, up to the node's limit of 3.
        let other = TaskMeta::new("u", "* * * * * *");
        let a = limits.acquire(&other, never()).await;
        let b = limits.acquire(&other, never()).await;
        assert!(a.is_some() && b.is_some());
        let c = limits
            .acquire(&other, tokio::time::sleep(Duration::from_secs(1)))
            .await;
        assert!(c.is_none(), "the node's limit is full");
        drop(first);
        // `first` gave back its node permit too: another task takes it.
        let d = limits.acquire(&other, never()).await;
        assert!(d.is_some());
        // The task's permit is free but the node's are not.
        let third = limits
            .acquire(&meta, tokio::time::sleep(Duration::from_secs(1)))
            .await;
        assert!(third.is_none());
        drop(a);
        assert!(limits.acquire(&meta, never()).await.is_some());
    }
}
