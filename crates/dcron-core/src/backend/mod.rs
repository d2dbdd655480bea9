//! For backend authors: what a [`Registry`](crate::Registry) implementation needs beyond the
//! trait itself. Applications never need this module.
//!
//! - [`claim`]: the claim rules as one pure function ([`claim::decide_claim`]), applied inside
//!   the backend's atomic write;
//! - [`tombstone`]: the add, force-add, delete, reuse and cleanup rules as pure functions;
//! - [`watch`]: a bounded watch channel that never blocks its sender ([`watch_channel`]);
//! - the input checks every backend makes first (`check_*`), the contract's tolerance on
//!   durations ([`expiry_tolerance`]) and delivery bound ([`MAX_WATCH_DELAY`]), and record
//!   helpers for registries without native lives ([`ensure_lives_in_records`],
//!   [`restart_life_in_records`]).
//!
//! The workspace's `CONTRIBUTING.md` lays out a backend crate, and the `dcron-testkit`
//! conformance suite is the executable definition of a correct one.

mod checks;
pub mod claim;
pub mod tombstone;
pub mod watch;

pub use checks::*;
pub use watch::{watch_channel, WatchSender};
