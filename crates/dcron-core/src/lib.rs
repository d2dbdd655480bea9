//! dcron core: types, errors, the `Registry` trait, the node lifecycle, tombstone rules,
//! schedules, the scheduler driver, the `Dcron` API and the in-memory registry.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod claim;
pub mod clock;
mod dcron;
mod engine;
pub mod error;
pub mod event;
mod fire;
pub mod instrument;
pub mod layer;
pub mod lifecycle;
pub mod memory;
pub mod policy;
pub mod registry;
mod runtime;
pub mod schedule;
pub mod task;
pub mod tombstone;
pub mod types;
pub mod watch;

/// Re-exported for implementing [`Registry`] and [`layer::RegistryLayer`].
pub use async_trait::async_trait;
pub use clock::{Clock, SystemClock, TokioClock};
pub use dcron::{
    BackfillReport, Dcron, DcronBuilder, IntoRegistry, TaskOptions, DEFAULT_CLAIM_AHEAD,
};
pub use dcron_assign::{Assigner, Member, Placement, Strategy};
pub use error::{BoxError, Error, Result};
pub use event::{DcronEvent, FireInfo};
pub use instrument::InstrumentedRegistry;
pub use lifecycle::NodeState;
pub use memory::MemoryRegistry;
pub use policy::{
    Backoff, LastResult, OverlapPolicy, PauseRecord, RetryPolicy, RunningFire, SkipReason,
    TaskStatus, TriggerRecord,
};
pub use registry::{
    check_claims, check_record_key, check_records, check_registration, check_retention, check_slot,
    check_value_size, ensure_lives_in_records, expiry_tolerance, restart_life_in_records,
    Capabilities, Lease, PutMode, RecordKind, Registry, WatchStream, MAX_RECORD_KEY_BYTES,
    MAX_WATCH_DELAY,
};
pub use schedule::{Schedule, SecondsField};
pub use task::{ErrorHandler, FireContext, Task, TaskResult};
pub use types::{
    limits, validate_task_name, Claim, ClaimOutcome, ClaimRequest, Claimant, CorruptEntry, FireKey,
    Life, Listing, MisfirePolicy, Node, NodeEvent, NodeStatus, ResyncEvent, SlotOutcome,
    SlotRecord, TaskMeta, TaskMetaEvent, Tombstone, DEFAULT_MISFIRE_WINDOW, MAX_TASK_NAME_BYTES,
};
pub use watch::{watch_channel, WatchSender};
