//! Questions about one task, a handle on it, and running a node until the process is asked to
//! stop: [`Dcron::owner_of`], [`Dcron::next_fires`], [`TaskHandle`],
//! [`Dcron::run_until_shutdown`].

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::dcron::{Dcron, TaskOptions};
use crate::engine::ownership;
use crate::error::{Error, Result};
use crate::lifecycle::NodeState;
use crate::policy::{TaskStatus, TriggerRecord};
use crate::signal::{Shutdown, ShutdownSignal};
use crate::task::{FireContext, TaskResult};
use crate::types::validate_task_name;

impl Dcron {
    /// The node that owns task `name` now, as this node judges it: the same assigner, over the
    /// nodes the registry lists as working (this node included while it works). `Ok(None)`
    /// when this node does not know the task (never added here nor seen in the registry, or
    /// marked deleted), or when no node is working.
    ///
    /// This node answers for itself from its own view: a task in [`Dcron::my_running_tasks`]
    /// is owned by [`Dcron::node_id`]. For other tasks it lists the nodes (one registry call),
    /// so during a rebalance two nodes may answer differently for up to one poll interval; the
    /// claims still make every fire run once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
    /// use dcron_core::{Dcron, MemoryRegistry};
    /// let node = Dcron::builder(MemoryRegistry::new()).node_name("solo").build()?;
    /// node.add_func("report", "0 0 * * * *", |_ctx| async { Ok(()) }).await?;
    /// node.start().await?;
    /// assert_eq!(node.owner_of("report").await?.as_deref(), Some(node.node_id()));
    /// assert_eq!(node.owner_of("unknown").await?, None);
    /// node.stop().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; registry errors listing the nodes; the assigner's error.
    pub async fn owner_of(&self, name: &str) -> Result<Option<String>> {
        validate_task_name(name)?;
        let (known, owned, all) = self.read_view(|v| {
            (
                v.all.iter().any(|n| &**n == name),
                v.owned.iter().any(|n| &**n == name),
                v.all.clone(),
            )
        });
        if owned {
            return Ok(Some(self.node_id().to_string()));
        }
        if !known {
            return Ok(None);
        }
        let nodes = self.registry().list_nodes().await?;
        let cfg = &self.inner.cfg;
        let active = self.state() == NodeState::Working;
        let members = ownership::members(&nodes.items, self.node_id(), active, cfg.weight);
        if members.is_empty() {
            return Ok(None);
        }
        let placement = cfg.assigner.prepare(&members).map_err(|e| {
            Error::InvalidState(format!(
                "the assigner cannot place tasks on {} nodes: {e}",
                members.len()
            ))
        })?;
        // The view lists no tombstoned name, as the driver's task list does.
        let sorted =
            ownership::sorted_names(cfg.assigner.depends_on_task_list(), all.iter(), |_| false);
        let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
        Ok(placement.owner(name, &refs).map(str::to_string))
    }

    /// The next `n` instants of task `name`'s schedule after now (this node's clock), oldest
    /// first: a preview, saying nothing of pauses or of a one-shot task that already ran.
    /// Static tasks are looked up on this node, dynamic tasks in the registry.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
    /// use dcron_core::{Dcron, MemoryRegistry};
    /// let node = Dcron::builder(MemoryRegistry::new()).build()?;
    /// node.add_func("quarterly", "0 0 0 1 1,4,7,10 *", |_ctx| async { Ok(()) }).await?;
    /// let next = node.next_fires("quarterly", 4).await?;
    /// assert_eq!(next.len(), 4);
    /// assert!(next.windows(2).all(|w| w[0] < w[1]));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; [`Error::NotFound`] for a task neither added on this node
    /// nor stored in the registry; [`Error::InvalidArgument`] for `n` above
    /// [`MAX_PREVIEW_FIRES`](crate::MAX_PREVIEW_FIRES); [`Error::InvalidSchedule`] for a stored record whose schedule
    /// does not parse; registry errors.
    pub async fn next_fires(&self, name: &str, n: usize) -> Result<Vec<DateTime<Utc>>> {
        validate_task_name(name)?;
        let schedule = match self.static_schedule(name) {
            Some(s) => s,
            None => {
                let meta = self
                    .registry()
                    .get_task(name)
                    .await?
                    .ok_or_else(|| Error::task_not_found(name))?;
                crate::schedule::Schedule::parse(
                    &meta.cron_format,
                    meta.time_zone.as_deref(),
                    self.inner.cfg.seconds,
                )?
            }
        };
        schedule.next_fires(self.inner.clock.now(), n)
    }

    /// A handle on task `name` (static or dynamic): pause, resume, trigger, remove, status and
    /// schedule preview without repeating the name. The task need not exist yet; each call
    /// answers as the node method it stands for.
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`].
    pub fn task(&self, name: &str) -> Result<TaskHandle> {
        validate_task_name(name)?;
        Ok(TaskHandle {
            node: self.clone(),
            name: Arc::from(name),
        })
    }

    /// [`Dcron::add_func_with`], answering a [`TaskHandle`] on the new task.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
    /// use dcron_core::{Dcron, MemoryRegistry, TaskOptions};
    /// let node = Dcron::builder(MemoryRegistry::new()).build()?;
    /// let nightly = node
    ///     .add_func_with_handle("nightly", "0 30 2 * * *", TaskOptions::new(), |_ctx| async {
    ///         Ok(())
    ///     })
    ///     .await?;
    /// assert_eq!(nightly.name(), "nightly");
    /// assert_eq!(nightly.next_fires(2).await?.len(), 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Dcron::add_func_with`].
    pub async fn add_func_with_handle<F, Fut>(
        &self,
        name: &str,
        cron: &str,
        options: TaskOptions,
        f: F,
    ) -> Result<TaskHandle>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_func_with(name, cron, options, f).await?;
        self.task(name)
    }

    /// Starts the node, runs it until `shutdown` resolves, then stops it gracefully
    /// ([`Dcron::stop`]); answers what `shutdown` produced. Ends early, with an error, if the
    /// node fails meanwhile (it has then unregistered already).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
    /// use std::time::Duration;
    /// use dcron_core::{Dcron, MemoryRegistry, NodeState};
    /// let node = Dcron::builder(MemoryRegistry::new()).build()?;
    /// node.add_func("tick", "* * * * * *", |_ctx| async { Ok(()) }).await?;
    /// node.run_until(tokio::time::sleep(Duration::from_millis(10))).await?;
    /// assert_eq!(node.state(), NodeState::Stopped);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Dcron::start`]; [`Error::InvalidState`] when the node fails while running.
    pub async fn run_until<F: Future>(&self, shutdown: F) -> Result<F::Output> {
        self.start().await?;
        let mut health = self.inner.health.subscribe();
        let failed = async move {
            // The guard `wait_for` answers is dropped at once: it must not live across an await.
            let _ = health
                .wait_for(|h| matches!(h.state, NodeState::Failed(_)))
                .await
                .is_ok();
        };
        tokio::select! {
            out = shutdown => {
                self.stop().await?;
                Ok(out)
            }
            _ = failed => {
                self.stop().await?;
                Err(Error::InvalidState(format!(
                    "node `{}` stopped running: {}",
                    self.node_id(),
                    self.state()
                )))
            }
        }
    }

    /// [`Dcron::run_until`] Ctrl-C or SIGTERM ([`ShutdownSignal`]); answers which one came.
    /// The signal handlers are installed before the node starts, so a signal arriving during
    /// the start is not lost.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use dcron_core::{Dcron, MemoryRegistry};
    /// let node = Dcron::builder(MemoryRegistry::new()).build()?;
    /// node.add_func("tick", "*/10 * * * * *", |_ctx| async { Ok(()) }).await?;
    /// let signal = node.run_until_shutdown().await?;
    /// eprintln!("stopped on {signal}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Dcron::run_until`]; [`Error::InvalidState`] when the signal handlers cannot be
    /// installed or listening fails.
    pub async fn run_until_shutdown(&self) -> Result<Shutdown> {
        let signal_error = |e: std::io::Error| {
            Error::InvalidState(format!("cannot listen for Ctrl-C and SIGTERM: {e}"))
        };
        let mut signal = ShutdownSignal::listen().map_err(signal_error)?;
        self.run_until(signal.recv()).await?.map_err(signal_error)
    }
}

/// A handle on one task of a node, from [`Dcron::task`] or [`Dcron::add_func_with_handle`].
/// Cheap to clone; each method is the node method of the same name for this task.
#[derive(Clone, Debug)]
pub struct TaskHandle {
    node: Dcron,
    name: Arc<str>,
}

impl TaskHandle {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node this handle works through.
    pub fn node(&self) -> &Dcron {
        &self.node
    }

    /// Pauses the task cluster-wide ([`Dcron::pause_task`]).
    ///
    /// # Errors
    /// As [`Dcron::pause_task`].
    pub async fn pause(&self) -> Result<()> {
        self.node.pause_task(&self.name).await
    }

    /// Resumes the task ([`Dcron::resume_task`]).
    ///
    /// # Errors
    /// As [`Dcron::resume_task`].
    pub async fn resume(&self) -> Result<()> {
        self.node.resume_task(&self.name).await
    }

    /// Runs the task once now, exactly once cluster-wide ([`Dcron::trigger_task`]).
    ///
    /// # Errors
    /// As [`Dcron::trigger_task`].
    pub async fn trigger(&self) -> Result<TriggerRecord> {
        self.node.trigger_task(&self.name).await
    }

    /// Removes the task cluster-wide: marks it deleted ([`Dcron::mark_task_deleted`]), so no
    /// node fires it again until it is reused or force-added.
    ///
    /// # Errors
    /// As [`Dcron::mark_task_deleted`].
    pub async fn remove(&self) -> Result<()> {
        self.node.mark_task_deleted(&self.name).await
    }

    /// The task's status ([`Dcron::task_status`]).
    ///
    /// # Errors
    /// As [`Dcron::task_status`].
    pub async fn status(&self) -> Result<Option<TaskStatus>> {
        self.node.task_status(&self.name).await
    }

    /// The task's owner as this node judges it ([`Dcron::owner_of`]).
    ///
    /// # Errors
    /// As [`Dcron::owner_of`].
    pub async fn owner(&self) -> Result<Option<String>> {
        self.node.owner_of(&self.name).await
    }

    /// The next `n` instants of the task's schedule ([`Dcron::next_fires`]), at most
    /// [`MAX_PREVIEW_FIRES`](crate::MAX_PREVIEW_FIRES).
    ///
    /// # Errors
    /// As [`Dcron::next_fires`].
    pub async fn next_fires(&self, n: usize) -> Result<Vec<DateTime<Utc>>> {
        self.node.next_fires(&self.name, n).await
    }
}
