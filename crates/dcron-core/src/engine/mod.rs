//! The scheduling decisions, as pure functions and state with no runtime, clock or registry
//! (see DESIGN §1): the driver feeds them what it knows and executes what they answer.
//!
//! - [`plan`]: which instants of a task are fires (live-since, one-shot) and which of them a
//!   node catches up when it gains a task (ownership gaps, misfire policy, pauses).
//! - [`launched`]: the fires this process has started, so that no path (a retried claim, a
//!   catch-up, a backfill) starts one twice.

pub(crate) mod launched;
pub(crate) mod plan;
