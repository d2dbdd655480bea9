//! What a handler sees and implements: [`FireContext`], [`Task`], and the handler types.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::error::{BoxError, Error};
use crate::types::TaskMeta;

/// What a handler returns: `Ok(())`, or any error (reported to the error handler).
pub type TaskResult = Result<(), BoxError>;

/// Everything a handler knows about the fire it runs.
///
/// # Fencing your own writes
///
/// A claim makes a fire run once, but a handler that stalls (a GC pause, a frozen VM) may
/// still be writing when a later fire of the task runs elsewhere. [`FireContext::token`] is
/// the claim's fencing token: it grows with every claim of the task, across nodes, cleanups and
/// new lives. Hand it to the system you write to and let that system refuse a token lower than
/// the highest it has seen:
///
/// ```
/// use std::sync::Mutex;
/// use dcron_core::FireContext;
///
/// /// A store that remembers the highest token that wrote to it.
/// #[derive(Default)]
/// struct FencedStore {
///     last: Mutex<(u64, String)>,
/// }
///
/// impl FencedStore {
///     fn write(&self, token: u64, value: &str) -> Result<(), String> {
///         let mut last = self.last.lock().map_err(|e| e.to_string())?;
///         if token < last.0 {
///             return Err(format!("stale writer: token {token} < {}", last.0));
///         }
///         *last = (token, value.to_string());
///         Ok(())
///     }
/// }
///
/// async fn report(ctx: FireContext, store: &FencedStore) -> dcron_core::TaskResult {
///     store.write(ctx.token, &format!("report for {}", ctx.scheduled))?;
///     Ok(())
/// }
/// # let store = FencedStore::default();
/// # assert!(store.write(7, "new").is_ok());
/// # assert!(store.write(5, "stale").is_err());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FireContext {
    /// The task record (for static tasks, one built from the name and schedule).
    pub meta: Arc<TaskMeta>,
    /// The scheduled instant of this fire, in UTC (never `now()`).
    pub scheduled: DateTime<Utc>,
    /// The fencing token of the claim: pass it to downstream systems to reject stale writers.
    pub token: u64,
    /// The id of the node running the fire.
    pub node_id: Arc<str>,
    /// Whether the fire is a catch-up (or backfill) of an occurrence missed earlier.
    pub catch_up: bool,
    /// The attempt: 1 for the first run, 2 for the first retry, … (see
    /// [`crate::RetryPolicy`]).
    pub attempt: u32,
    /// Cancelled when the node stops and the grace period is over, when this attempt runs past
    /// the task's timeout, or when the node loses its lease while running a task whose overlap
    /// policy is not `Allow`: long handlers should watch it.
    pub cancel: CancellationToken,
}

impl FireContext {
    /// The task name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The task payload (empty for static tasks).
    pub fn payload(&self) -> &str {
        &self.meta.payload
    }
}

/// A task handler. Implemented for you by closures passed to `add_func`; implement it on a
/// type to pass it to `add_task` (the seed's `Tasker`).
#[async_trait]
pub trait Task: Send + Sync + 'static {
    /// Runs one fire.
    async fn run(&self, ctx: FireContext) -> TaskResult;
}

/// A [`Task`] made from an async closure.
pub(crate) struct FnTask<F>(pub(crate) F);

#[async_trait]
impl<F, Fut> Task for FnTask<F>
where
    F: Fn(FireContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    async fn run(&self, ctx: FireContext) -> TaskResult {
        (self.0)(ctx).await
    }
}

/// Called with the task and the error whenever a fire fails, panics or times out.
pub type ErrorHandler = Arc<dyn Fn(&TaskMeta, &Error) + Send + Sync>;

/// The default error handler: logs through `tracing` at error level (errors are never silent).
pub(crate) fn log_error(meta: &TaskMeta, err: &Error) {
    tracing::error!(task = %meta.name, error = %err, "dcron task failed");
}
