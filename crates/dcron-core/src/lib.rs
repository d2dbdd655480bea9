//! Distributed cron for Rust: many instances of a service share one schedule, and **every
//! scheduled fire of every task runs exactly once in the cluster**, on one node, while instances
//! join, leave, crash, lose the registry or disagree about the time.
//!
//! This crate holds everything but the registry clients: the [`Dcron`] node and its
//! [`DcronBuilder`], schedules, execution policies, the [`Registry`] trait a backend implements,
//! the one [`Error`] type, and [`MemoryRegistry`], the in-process registry for one process and
//! for tests. A cluster of several processes adds one backend crate (see [Backends](#backends)).
//!
//! # Example
//!
//! One node on a [`MemoryRegistry`] with a task that fires every second; the program waits for
//! its first run and stops the node.
//!
//! ```
//! use std::time::Duration;
//! use dcron_core::{Dcron, MemoryRegistry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let node = Dcron::builder(MemoryRegistry::new())
//!     .node_name("web-1")
//!     .build()?;
//!
//! let (ran, mut first_run) = tokio::sync::mpsc::unbounded_channel();
//! node.add_func("heartbeat", "* * * * * *", move |ctx| {
//!     let ran = ran.clone();
//!     async move {
//!         // `ctx.scheduled` is the fire's instant in UTC (never `now()`), `ctx.token` its
//!         // fencing token: strictly increasing per task.
//!         let _ = ran.send((ctx.scheduled, ctx.token));
//!         Ok(())
//!     }
//! })
//! .await?;
//!
//! node.start().await?; // registered, and its share of the tasks taken
//! let (scheduled, token) = tokio::time::timeout(Duration::from_secs(10), first_run.recv())
//!     .await?
//!     .ok_or("the handler was dropped")?;
//! println!("heartbeat ran for {scheduled} with token {token}");
//! node.stop().await?; // graceful: peers take over, in-flight handlers drain
//! # Ok(()) }
//! ```
//!
//! Dynamic tasks ([`TaskMeta`] records in the registry, run by the one handler set with
//! [`DcronBuilder::task_run_fn`]), one-shots, retries, timeouts, overlap, misfire, time zones,
//! pause, resume and trigger-now are described on [`Dcron`], [`TaskOptions`] and [`policy`]; the
//! workspace's `docs/GUIDE.md` goes from this example to a three-node deployment.
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`Dcron`], [`DcronBuilder`], [`TaskOptions`], [`TaskHandle`] (crate root) | the node API: build, add tasks, start, stop, pause, trigger, backfill, status, `owner_of`, `next_fires`, `run_until_shutdown` |
//! | [`signal`] | waiting for Ctrl-C or SIGTERM to stop a node gracefully ([`shutdown_signal`]) |
//! | [`schedule`] | parsing schedules (cron with 5, 6 or 7 fields, `@hourly`…, `@every 90s`, `@at <instant>`) and computing their instants in an IANA zone, DST included |
//! | [`task`] | what a handler sees ([`FireContext`]) and implements ([`Task`]) |
//! | [`policy`] | retries, timeouts, overlap, and the pause, trigger and status records |
//! | [`event`] | the [`DcronEvent`] stream: lifecycle, ownership and every step of a fire |
//! | [`types`] | the records kept in a registry ([`TaskMeta`], [`Node`], [`Claim`], [`FireKey`]…) and the input bounds ([`limits`]) |
//! | [`error`] | the one [`Error`] type and [`Result`] |
//! | [`registry`] | the [`Registry`] trait a backend implements and its [`Capabilities`] |
//! | [`backend`] | for backend authors: the pure claim and tombstone rules, the input checks, a watch channel |
//! | [`memory`] | [`MemoryRegistry`]: the in-process registry and the reference implementation of the trait |
//! | [`layer`] | wrapping a registry without forwarding every method by hand |
//! | [`admin`] | operations on a cluster through its registry alone, without a running node (what `dcronctl` uses) |
//! | [`clock`] | injected time: wall time for cron, monotonic time for leases ([`SystemClock`], [`TokioClock`]) |
//!
//! The assignment strategies (who owns which task) come from the `dcron-assign` crate and are
//! re-exported: [`Strategy`], [`Assigner`].
//!
//! # Backends
//!
//! Each registry lives in its own crate; depend only on the ones you use. The columns are the
//! [`Capabilities`] each backend's `capabilities()` declares:
//!
//! | registry | crate | type | task record size | watches | pause, trigger, status (`records`) | refuses late claims by its own clock (`clock`) | running slots for `Skip`/`Queue` (`slots`) |
//! |---|---|---|---|---|---|---|---|
//! | in memory (one process) | `dcron-core` | [`MemoryRegistry`] | 1 MiB | yes | yes | only with [`MemoryRegistry::with_clock`] | yes |
//! | Redis | [`dcron-registry-redis`](https://docs.rs/dcron-registry-redis) | `RedisRegistry` | 4 MiB | yes | yes | yes | yes |
//! | etcd | [`dcron-registry-etcd`](https://docs.rs/dcron-registry-etcd) | `EtcdRegistry` | 1 MiB | yes | yes | no | yes |
//! | PostgreSQL | [`dcron-registry-postgres`](https://docs.rs/dcron-registry-postgres) | `PostgresRegistry` | 1 MiB | yes | yes | yes | yes |
//! | ZooKeeper | [`dcron-registry-zk`](https://docs.rs/dcron-registry-zk) | `ZkRegistry` | 1,000,000 B | yes | yes | no | yes |
//! | Consul | [`dcron-registry-consul`](https://docs.rs/dcron-registry-consul) | `ConsulRegistry` | 385,024 B | yes | yes | no | yes |
//!
//! Every backend listed declares `exactly_once` (the whole contract natively: lives,
//! generation-checked claims, idempotent per claimant). On every backend the node checks each
//! fire's deadline on its monotonic clock, after the claim's reply and right before the handler
//! starts; a registry with a clock of its own also refuses a claim past it. Consul is verified against a test double of its
//! HTTP API, the others against real servers; the workspace README says how each is run.
//!
//! A registry of your own implements [`Registry`] (the `examples/custom-registry` program does it
//! on SQLite) and proves itself with the conformance suite of the `dcron-testkit` crate.
//!
//! # Exactly-once: what is promised
//!
//! Every fire, a task name and an instant its schedule produced, runs **at most once** in the
//! cluster, and every fire that falls while some node can reach the registry **runs**, within
//! the task's misfire window ([`DcronBuilder::misfire_window`], 60 s by default). How:
//!
//! - A node runs a fire only after it wins an atomic create-if-absent **claim** on the fire's key
//!   ([`FireKey`]). Claims are idempotent per claimant, so a claim whose reply was lost is
//!   retried and learns it won; they are kept until their retention ends (at least the fire's
//!   deadline + [`DcronBuilder::max_clock_skew`] + the lease TTL), whatever happens to the
//!   task's name.
//! - Each node schedules only the tasks the assignment gives it. Two nodes that both believe
//!   they own a task cannot both win a claim; a node that gains a task (at start, on a
//!   rebalance, when a peer dies, when the registry comes back) **catches up** the unclaimed
//!   instants of the misfire window, so a fire that falls between two owners is not lost.
//! - A task's fires are exactly the instants at or after its **live-since**, a durable instant
//!   kept in the registry; `cleanup_task`, `force_add_*` and `reuse_deleted_task` start a new
//!   life, and claims carry the life's generation, so nothing of an earlier life is replayed. A
//!   one-shot task has one fire in its life.
//! - Every fire has a **deadline**, its instant + its misfire window. No fire starts after it: a
//!   node frozen for minutes wakes up and runs nothing late.
//!
//! The limits, as built:
//!
//! - A claim is the right to run a fire, not a proof that it ran. A fire whose winner crashed
//!   (or whose scheduler failed) after the claim and before the handler started is not run by
//!   anyone; nor is one whose winner was frozen from before its instant until past its deadline.
//!   That is the at-most-once edge of any claim-based scheduler. Keep
//!   [`DcronBuilder::claim_ahead`] (100 ms by default) short for the same reason.
//! - Exactly-once is about *starting* a fire; a handler's side effects are yours. A fire holding
//!   a running slot is cancelled (`ctx.cancel`) once its node's lease is no longer known to live,
//!   but a handler that ignores `ctx.cancel`, or a lease revoked from outside, can overlap with
//!   the next holder. Fence writes with `ctx.token`.
//! - A fire is caught up only inside its misfire window. Instants that fell while no node was
//!   known to run (the whole cluster down) follow the misfire policy ([`MisfirePolicy`]:
//!   `FireOnce` by default, the latest one), and nothing inside a pause is caught up.
//! - Set [`DcronBuilder::max_clock_skew`] (5 s by default) to at least the largest clock
//!   difference between your nodes: it widens the claim retention so that a fire is never
//!   claimable twice across skewed clocks.
//! - [`Dcron::backfill`] can tell "ran" from "never ran" only within the
//!   claim retention ([`DcronBuilder::claim_retention`]).
//!
//! The whole contract, its invariants and the argument are in the workspace's `docs/DESIGN.md`;
//! the workspace README reports how it is checked (a fault-injecting simulator over 1,000 seeds
//! and chaos runs on real servers, each printing `duplicates`, `missed` and `unexpected`).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod clock;
mod dcron;
mod engine;
pub mod error;
pub mod event;
mod fire;
mod handle;
mod inflight;
mod instrument;
pub mod layer;
mod lifecycle;
pub mod memory;
pub mod policy;
pub mod registry;
mod runtime;
pub mod schedule;
pub mod signal;
pub mod task;
pub mod types;

// The backend helpers at their former paths, kept out of the docs until every backend imports
// them from `backend`.
#[doc(hidden)]
pub use backend::{claim, tombstone, watch};

/// Re-exported for implementing [`Registry`] and [`layer::RegistryLayer`].
pub use async_trait::async_trait;
#[doc(hidden)]
pub use backend::{
    check_claims, check_record_key, check_records, check_registration, check_retention, check_slot,
    check_value_size, ensure_lives_in_records, expiry_tolerance, restart_life_in_records,
    watch_channel, WatchSender, MAX_RECORD_KEY_BYTES,
};
pub use clock::{Clock, SystemClock, TokioClock};
pub use dcron::{
    BackfillReport, Dcron, DcronBuilder, IntoRegistry, TaskOptions, DEFAULT_CLAIM_AHEAD,
    MAX_CONCURRENT_FIRES, MAX_TASK_LABELS,
};
pub use dcron_assign::{Assigner, Member, Placement, Strategy};
pub use error::{BoxError, Error, Result};
pub use event::{DcronEvent, FireInfo};
pub use handle::TaskHandle;
pub use inflight::StopReport;
pub use lifecycle::NodeState;
pub use memory::MemoryRegistry;
pub use policy::{
    Backoff, LastResult, OverlapPolicy, PauseRecord, RetryPolicy, RunningFire, SkipReason,
    TaskStatus, TriggerRecord,
};
pub use registry::{
    Capabilities, Lease, PutMode, RecordKind, Registry, WatchStream, MAX_WATCH_DELAY,
};
pub use schedule::{Schedule, SecondsField, MAX_PREVIEW_FIRES};
pub use signal::{shutdown_signal, Shutdown, ShutdownSignal};
pub use task::{ErrorHandler, FireContext, Task, TaskResult};
pub use types::{
    limits, validate_task_name, Claim, ClaimOutcome, ClaimRequest, Claimant, CorruptEntry, FireKey,
    Life, Listing, MisfirePolicy, Node, NodeEvent, NodeStatus, ResyncEvent, SlotOutcome,
    SlotRecord, TaskMeta, TaskMetaEvent, Tombstone, DEFAULT_MISFIRE_WINDOW, MAX_TASK_NAME_BYTES,
};
