//! The scheduling decisions, as pure functions and state with no runtime, clock or registry
//! (see DESIGN §1): the driver feeds them what it knows (time is always an argument) and
//! executes what they answer.
//!
//! ```text
//!   membership, assigner ──▶ ownership ──▶ gained / lost ─┐
//!   lives, pauses, window ─▶ plan (catch-up, live-since, one-shot) ─┤
//!   owned tasks' next instants ─▶ timers ──▶ due at `now` ───────────┼─▶ claims (deadline,
//!   claim outcomes ─────────────────────────────────────────────────┘    batch, verdict)
//!   pause / trigger records ─▶ control        fire endings ─▶ status
//! ```
//!
//! - [`plan`]: which instants of a task are fires (live-since, one-shot) and which of them a
//!   node catches up when it gains a task (ownership gaps, misfire policy, pauses).
//! - [`tasks`]: the task table: ownership flags, lives, and the generation and stamp that
//!   make stale timers and claimed-ahead fires of a changed task harmless.
//! - [`timers`]: the heap of owned tasks' next instants and when to wake up for them.
//! - [`claims`]: whether a due instant is claimed, its deadline and retention, batches, what
//!   a claim outcome means, and what a backfill claims.
//! - [`ownership`]: membership, who owns what, the diff of a change, the gap floor.
//! - [`control`]: pause records and trigger-now requests.
//! - [`status`]: the run counts and last result a node writes of its tasks.
//! - [`backoff`]: the registration back-off.
//! - [`config`]: the node's settings, read by the driver and the fires.
//! - [`launched`]: the fires this process has started, so that no path (a retried claim, a
//!   catch-up, a backfill) starts one twice.

pub(crate) mod backoff;
pub(crate) mod claims;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod launched;
pub(crate) mod ownership;
pub(crate) mod plan;
pub(crate) mod status;
pub(crate) mod tasks;
pub(crate) mod timers;
