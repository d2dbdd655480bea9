//! The built-in strategies and the helpers they share.

pub(crate) mod consistent;
pub(crate) mod range;
pub(crate) mod rendezvous;
pub(crate) mod round_robin;
pub(crate) mod sharding;
pub(crate) mod slots;
pub(crate) mod weighted;

use crate::hash::{ln_unit, pair_score, unit_open};
use crate::{sorted_dedup, Assignment, Placement};

/// The placement of a membership without eligible members: nobody owns anything.
pub(crate) struct EmptyPlacement {
    pub(crate) strategy: &'static str,
}

impl std::fmt::Debug for EmptyPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmptyPlacement")
            .field("strategy", &self.strategy)
            .finish()
    }
}

impl Placement for EmptyPlacement {
    fn owner(&self, _task: &str, _tasks: &[&str]) -> Option<&str> {
        None
    }

    fn assign(&self, tasks: &[&str]) -> Assignment {
        let sorted = sorted_dedup(tasks);
        Assignment::from_sorted(&sorted, &vec![None; sorted.len()], &[])
    }
}

/// Assigns `tasks` when each owner depends only on the task name: `owner_index` maps a task to
/// an index into `ids`.
pub(crate) fn assign_each(
    tasks: &[&str],
    ids: &[String],
    owner_index: impl Fn(&str) -> Option<u32>,
) -> Assignment {
    let sorted = sorted_dedup(tasks);
    let owners: Vec<Option<u32>> = sorted.iter().map(|task| owner_index(task)).collect();
    Assignment::from_sorted(&sorted, &owners, ids)
}

/// Weighted highest-random-weight choice among members, shared by [`Rendezvous`] and
/// [`HashSlots`].
///
/// With equal weights the winner is the member with the highest 64-bit pair score (exact
/// integer comparison). With different weights it is the member minimising `-ln(u) / w`, where
/// `u` in (0, 1) comes from the pair score: the standard weighted rendezvous form, whose winner
/// is member `i` with probability exactly `w_i / W`. The logarithm is computed with
/// [`ln_unit`] (plain IEEE arithmetic), so the result is bit-identical on every platform.
/// Ties (practically impossible) go to the smallest id.
///
/// [`Rendezvous`]: crate::Rendezvous
/// [`HashSlots`]: crate::HashSlots
#[derive(Clone, Debug)]
pub(crate) struct Hrw {
    seeds: Vec<u64>,
    /// `None` when all weights are equal.
    weights: Option<Vec<f64>>,
}

impl Hrw {
    pub(crate) fn new(seeds: Vec<u64>, weights: &[u32], uniform: bool) -> Self {
        Self {
            seeds,
            weights: (!uniform).then(|| weights.iter().map(|&w| f64::from(w)).collect()),
        }
    }

    /// Index of the winning member for `key`. There is at least one member.
    pub(crate) fn winner(&self, key: u64) -> u32 {
        match &self.weights {
            None => {
                let mut best = 0;
                let mut best_score = pair_score(key, self.seeds[0]);
                for (i, &seed) in self.seeds.iter().enumerate().skip(1) {
                    let score = pair_score(key, seed);
                    if score > best_score {
                        best = i;
                        best_score = score;
                    }
                }
                best as u32
            }
            Some(weights) => {
                let mut best = 0;
                let mut best_cost = f64::INFINITY;
                for (i, (&seed, &w)) in self.seeds.iter().zip(weights).enumerate() {
                    // -ln(u) / w: positive, finite, smaller wins.
                    let cost = -ln_unit(unit_open(pair_score(key, seed))) / w;
                    if cost < best_cost {
                        best = i;
                        best_cost = cost;
                    }
                }
                best as u32
            }
        }
    }
}
