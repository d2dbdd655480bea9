//! Rendezvous (highest random weight) hashing, weighted.

use super::{assign_each, EmptyPlacement, Hrw};
use crate::hash::{member_seed, stable_hash};
use crate::members::Eligible;
use crate::{AssignError, Assigner, Assignment, Member, Placement};

/// Salt of the member seeds of rendezvous hashing (decorrelates them from other uses).
pub(crate) const RENDEZVOUS_SALT: u64 = 0x5244_565a_5f48_5257; // "RDVZ_HRW"

/// Rendezvous hashing (highest random weight), weighted: every member scores every task with
/// a hash of the pair, and the best score wins.
///
/// With equal weights the score is the 64-bit hash of (task, member) and the highest wins.
/// With different weights a member wins the task when it minimises `-ln(u) / weight`, where
/// `u` in (0, 1) is derived from the pair hash: the standard weighted rendezvous form, under
/// which member `i` wins a task with probability exactly `weight_i / Σ weight`. The logarithm
/// is computed with plain IEEE-754 arithmetic (not the platform's libm), so scores are
/// bit-identical everywhere.
///
/// Movement is minimal by construction: when a member joins, the only tasks that move are
/// those it now wins; when a member leaves, only its own tasks move. Balance is as good as a
/// hash gets (no virtual nodes to tune), and nothing needs to be built per membership; the
/// price is a lookup cost of O(members) per task instead of O(log points).
///
/// ```
/// use dcron_assign::{Assigner, Member, Rendezvous};
///
/// let placement = Rendezvous.prepare(&[Member::new("a", 1), Member::new("b", 1)])?;
/// assert!(matches!(placement.owner("task", &[]), Some("a" | "b")));
/// # Ok::<(), dcron_assign::AssignError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rendezvous;

#[derive(Debug)]
struct RendezvousPlacement {
    ids: Vec<String>,
    hrw: Hrw,
}

impl RendezvousPlacement {
    fn owner_index(&self, task: &str) -> u32 {
        self.hrw.winner(stable_hash(task.as_bytes()))
    }
}

impl Placement for RendezvousPlacement {
    fn owner(&self, task: &str, _tasks: &[&str]) -> Option<&str> {
        Some(self.ids[self.owner_index(task) as usize].as_str())
    }

    fn assign(&self, tasks: &[&str]) -> Assignment {
        assign_each(tasks, &self.ids, |task| Some(self.owner_index(task)))
    }
}

impl Assigner for Rendezvous {
    fn name(&self) -> &str {
        "rendezvous"
    }

    fn prepare(&self, members: &[Member]) -> Result<Box<dyn Placement>, AssignError> {
        let eligible = Eligible::from_members(members)?;
        if eligible.is_empty() {
            return Ok(Box::new(EmptyPlacement {
                strategy: "rendezvous",
            }));
        }
        let seeds = eligible
            .ids
            .iter()
            .map(|id| member_seed(id, RENDEZVOUS_SALT))
            .collect();
        let hrw = Hrw::new(seeds, &eligible.weights, eligible.uniform_weights());
        Ok(Box::new(RendezvousPlacement {
            ids: eligible.ids,
            hrw,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_pinned() {
        // Cross-checked against an independent Python implementation.
        let members = [
            Member::new("n1", 1),
            Member::new("n2", 1),
            Member::new("n3", 1),
        ];
        let placement = Rendezvous.prepare(&members).unwrap();
        let owners: Vec<_> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| placement.owner(t, &[]).unwrap().to_owned())
            .collect();
        assert_eq!(owners, ["n2", "n3", "n2", "n2", "n2", "n3"]);

        let weighted = [
            Member::new("n1", 1),
            Member::new("n2", 2),
            Member::new("n3", 3),
        ];
        let placement = Rendezvous.prepare(&weighted).unwrap();
        let owners: Vec<_> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| placement.owner(t, &[]).unwrap().to_owned())
            .collect();
        assert_eq!(owners, ["n3", "n3", "n2", "n2", "n2", "n3"]);
    }

    #[test]
    fn equal_weights_of_any_size_give_the_same_owners() {
        let ones = Rendezvous
            .prepare(&[Member::new("a", 1), Member::new("b", 1)])
            .unwrap();
        let sevens = Rendezvous
            .prepare(&[Member::new("a", 7), Member::new("b", 7)])
            .unwrap();
        for i in 0..500 {
            let task = format!("task-{i}");
            assert_eq!(ones.owner(&task, &[]), sevens.owner(&task, &[]));
        }
    }

    #[test]
    fn huge_weights_are_numerically_safe() {
        let placement = Rendezvous
            .prepare(&[Member::new("a", u32::MAX), Member::new("b", 1)])
            .unwrap();
        let names: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
        let tasks: Vec<&str> = names.iter().map(String::as_str).collect();
        let assignment = placement.assign(&tasks);
        assert_eq!(assignment.count_of("a"), 2000);
    }
}
