#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod assignment;
mod hash;
mod members;
mod strategies;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use assignment::Assignment;
pub use hash::stable_hash;
pub use members::eligible_members;
pub use strategies::consistent::ConsistentHash;
pub use strategies::range::RangeAssigner;
pub use strategies::rendezvous::Rendezvous;
pub use strategies::round_robin::RoundRobin;
pub use strategies::sharding::HashSharding;
pub use strategies::slots::HashSlots;
pub use strategies::weighted::Weighted;

/// A cluster member as the assigner sees it: an id and a weight.
///
/// Members with weight 0 take part in the cluster but own no task. How a positive weight is
/// used depends on the strategy (see the crate documentation): proportional strategies
/// (`weighted`, `rendezvous`, `hash-slot`, `consistent`) give a member a share of the tasks
/// proportional to its weight; the others (`hash-sharding`, `range`, `round-robin`) treat every
/// member with a positive weight alike.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Unique id of the member (the node id). Assigners compare ids byte-wise.
    pub id: String,
    /// Relative weight; 0 means "owns nothing".
    pub weight: u32,
}

impl Member {
    /// A member with the given id and weight.
    pub fn new(id: impl Into<String>, weight: u32) -> Self {
        Self {
            id: id.into(),
            weight,
        }
    }
}

/// Why an [`Assigner`] could not prepare a placement.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssignError {
    /// The member list is not empty but every member has weight 0, so nobody could own a task.
    #[error("every member has weight 0: at least one member needs a positive weight")]
    AllWeightsZero,
    /// Two members share an id.
    #[error("member id `{id}` appears more than once")]
    DuplicateMember {
        /// The duplicated id (the smallest one, if several are duplicated).
        id: String,
    },
    /// The assigner's own configuration is unusable (for example zero virtual nodes).
    #[error("invalid assigner configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
}

/// A task-assignment strategy: turns a membership into a [`Placement`].
///
/// This is where custom strategies plug in. An implementation must be a *pure, deterministic*
/// function of its configuration, the member set and the task names: every node of a cluster
/// runs it independently and all must reach the same answer. In particular it must not depend
/// on the order of the members, on the process (no `RandomState`, no `DefaultHasher`, no
/// pointer values), on the platform (no hashing of `usize`, no native endianness) or on
/// history.
pub trait Assigner: Send + Sync + fmt::Debug {
    /// Short name of the strategy, for logs and metrics.
    fn name(&self) -> &str;

    /// `true` when a task's owner depends on the whole task list (range, round-robin): callers
    /// must then pass the full, sorted task list to [`Placement::owner`] and recompute
    /// ownership whenever the task list changes. `false` (the default) when it depends only on
    /// the members and the task's own name (hash strategies).
    fn depends_on_task_list(&self) -> bool {
        false
    }

    /// Prepares a placement for one membership. Called once per membership change; this is
    /// where rings and slot tables are built, so that [`Placement::owner`] is cheap.
    ///
    /// Contract, for every implementation:
    /// - members may come in any order and the result must not depend on that order;
    /// - members with weight 0 own nothing;
    /// - an empty member list is `Ok`, and every owner is then `None`;
    /// - a non-empty list whose weights are all 0 is [`AssignError::AllWeightsZero`];
    /// - duplicate ids are [`AssignError::DuplicateMember`].
    fn prepare(&self, members: &[Member]) -> Result<Box<dyn Placement>, AssignError>;
}

/// The answer of an [`Assigner`] for one membership: who owns which task.
pub trait Placement: Send + Sync + fmt::Debug {
    /// Owner of `task`, as a member id.
    ///
    /// `tasks` is the full task list, sorted ascending and deduplicated. Strategies whose
    /// assigner has [`Assigner::depends_on_task_list`]` == false` ignore it (callers pass
    /// `&[]`); the others return `None` when `task` is not in `tasks`. `None` also when there
    /// are no members.
    fn owner(&self, task: &str, tasks: &[&str]) -> Option<&str>;

    /// Full assignment of `tasks`, which may come in any order and contain duplicates.
    ///
    /// The default implementation sorts and deduplicates `tasks` and asks [`Placement::owner`]
    /// for each one; the built-in placements override it with faster equivalents. For every
    /// task, `assign(tasks).owner_of(task)` equals `owner(task, sorted_dedup(tasks))`.
    fn assign(&self, tasks: &[&str]) -> Assignment {
        let sorted = sorted_dedup(tasks);
        sorted
            .iter()
            .map(|task| (*task, self.owner(task, &sorted)))
            .collect()
    }
}

/// Sorts and deduplicates a task list: the canonical form [`Placement::owner`] expects.
pub fn sorted_dedup<'a>(tasks: &[&'a str]) -> Vec<&'a str> {
    let mut sorted = tasks.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// The built-in strategies.
///
/// `Strategy` parses from and displays as its [name](Strategy::name), so it can come from a
/// configuration file or a command line.
///
/// ```
/// use dcron_assign::{Member, Strategy};
///
/// let strategy: Strategy = "rendezvous".parse().unwrap();
/// let placement = strategy
///     .assigner()
///     .prepare(&[Member::new("node-a", 1), Member::new("node-b", 1)])
///     .unwrap();
/// assert!(placement.owner("backup", &[]).is_some());
/// assert!("nope".parse::<Strategy>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Consistent hashing on a ring with virtual nodes ([`ConsistentHash`]); the default.
    #[default]
    Consistent,
    /// `stable_hash(task) % members` ([`HashSharding`]).
    HashSharding,
    /// 16384 hash slots, each owned by its rendezvous winner ([`HashSlots`]).
    HashSlot,
    /// Contiguous blocks of the sorted task names ([`RangeAssigner`]).
    Range,
    /// Exactly weight-proportional slot allocation ([`Weighted`]).
    Weighted,
    /// Sorted task names dealt in turn to sorted members ([`RoundRobin`]).
    RoundRobin,
    /// Weighted highest-random-weight hashing ([`Rendezvous`]).
    Rendezvous,
}

impl Strategy {
    const ALL: [Strategy; 7] = [
        Strategy::Consistent,
        Strategy::HashSharding,
        Strategy::HashSlot,
        Strategy::Range,
        Strategy::Weighted,
        Strategy::RoundRobin,
        Strategy::Rendezvous,
    ];

    /// The assigner implementing this strategy, with its default configuration.
    pub fn assigner(self) -> Arc<dyn Assigner> {
        match self {
            Strategy::Consistent => Arc::new(ConsistentHash::default()),
            Strategy::HashSharding => Arc::new(HashSharding),
            Strategy::HashSlot => Arc::new(HashSlots),
            Strategy::Range => Arc::new(RangeAssigner),
            Strategy::Weighted => Arc::new(Weighted),
            Strategy::RoundRobin => Arc::new(RoundRobin),
            Strategy::Rendezvous => Arc::new(Rendezvous),
        }
    }

    /// Every built-in strategy, in a fixed order.
    pub fn all() -> &'static [Strategy] {
        &Self::ALL
    }

    /// The strategy's name: `consistent`, `hash-sharding`, `hash-slot`, `range`, `weighted`,
    /// `round-robin` or `rendezvous`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Consistent => "consistent",
            Strategy::HashSharding => "hash-sharding",
            Strategy::HashSlot => "hash-slot",
            Strategy::Range => "range",
            Strategy::Weighted => "weighted",
            Strategy::RoundRobin => "round-robin",
            Strategy::Rendezvous => "rendezvous",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names no built-in [`Strategy`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("unknown strategy `{input}`; valid strategies: {}", valid_names())]
pub struct ParseStrategyError {
    /// The string that was parsed.
    pub input: String,
}

impl ParseStrategyError {
    /// The valid names, in the order of [`Strategy::all`].
    pub fn valid(&self) -> impl Iterator<Item = &'static str> {
        Strategy::all().iter().map(|s| s.name())
    }
}

fn valid_names() -> String {
    Strategy::all()
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Strategy {
    type Err = ParseStrategyError;

    /// Parses a strategy name. Exact names only (no case folding, no aliases), so that a typo
    /// in a configuration is an error rather than a silently different strategy.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::all()
            .iter()
            .copied()
            .find(|strategy| strategy.name() == s)
            .ok_or_else(|| ParseStrategyError {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(Strategy::all().len(), 7);
        for &strategy in Strategy::all() {
            assert_eq!(strategy.name().parse::<Strategy>(), Ok(strategy));
            assert_eq!(strategy.to_string(), strategy.name());
            assert_eq!(strategy.assigner().name(), strategy.name());
        }
        assert_eq!(Strategy::default(), Strategy::Consistent);
    }

    #[test]
    fn parse_error_lists_the_valid_names() {
        let err = "Consistent".parse::<Strategy>().unwrap_err();
        assert_eq!(err.input, "Consistent");
        let message = err.to_string();
        for &strategy in Strategy::all() {
            assert!(message.contains(strategy.name()), "{message}");
        }
        assert_eq!(err.valid().count(), 7);
    }

    #[test]
    fn task_list_dependence_is_declared() {
        for &strategy in Strategy::all() {
            let expected = matches!(strategy, Strategy::Range | Strategy::RoundRobin);
            assert_eq!(
                strategy.assigner().depends_on_task_list(),
                expected,
                "{strategy}"
            );
        }
    }

    #[test]
    fn sorted_dedup_sorts_and_dedups() {
        assert_eq!(
            sorted_dedup(&["b", "a", "b", "c", "a"]),
            vec!["a", "b", "c"]
        );
        assert!(sorted_dedup(&[]).is_empty());
    }
}
