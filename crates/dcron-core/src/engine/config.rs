//! The node's settings, as the driver and the fires read them: plain values fixed when the
//! node is built (the builder in `dcron.rs` checks them).

use std::sync::Arc;
use std::time::Duration;

use dcron_assign::Assigner;

use crate::policy::{OverlapPolicy, RetryPolicy};
use crate::schedule::SecondsField;
use crate::task::{ErrorHandler, Task};
use crate::types::MisfirePolicy;

/// The node's settings, fixed at build time.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) assigner: Arc<dyn Assigner>,
    pub(crate) seconds: SecondsField,
    pub(crate) task_run_fn: Option<Arc<dyn Task>>,
    pub(crate) error_handler: ErrorHandler,
    pub(crate) misfire: MisfirePolicy,
    pub(crate) misfire_window: Duration,
    pub(crate) ttl: Duration,
    pub(crate) renew_interval: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) grace_period: Duration,
    pub(crate) max_clock_skew: Duration,
    pub(crate) claim_margin: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) default_retry: RetryPolicy,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) default_overlap: OverlapPolicy,
    pub(crate) status_interval: Duration,
    pub(crate) overdue_threshold: Duration,
    pub(crate) claim_retention: Duration,
    pub(crate) claim_ahead: Duration,
    pub(crate) start_timeout: Duration,
    /// The most fires that run at once on the node; none: no limit.
    pub(crate) max_concurrent_fires: Option<usize>,
    /// The most distinct `task` labels on fire metrics; 0: no `task` label.
    pub(crate) task_label_limit: usize,
    pub(crate) name: Option<String>,
    pub(crate) weight: u32,
    pub(crate) ip: String,
    pub(crate) hostname: String,
}
