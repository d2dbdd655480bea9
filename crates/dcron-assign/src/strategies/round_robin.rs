//! Round-robin: sorted task names dealt in turn to sorted members.

use super::EmptyPlacement;
use crate::members::Eligible;
use crate::{sorted_dedup, AssignError, Assigner, Assignment, Member, Placement};

/// Round-robin: the sorted task names are dealt in turn to the members with a positive
/// weight, sorted by id: task number `i` (in the sorted, deduplicated list) goes to member
/// number `i % n`.
///
/// The result is a pure function of the two sorted lists, so every node that sees the same
/// members and the same tasks computes the same owners (the seed system dealt tasks in the
/// order each node happened to learn them, and nodes disagreed). Member task counts differ by
/// at most 1. Adding or removing one task or one member shifts most owners, so the owner of a
/// task depends on the whole task list ([`Assigner::depends_on_task_list`] is `true`).
/// Positive weights are all treated alike.
///
/// ```
/// use dcron_assign::{Assigner, Member, RoundRobin};
///
/// let placement = RoundRobin.prepare(&[Member::new("b", 1), Member::new("a", 1)])?;
/// let tasks = ["t1", "t2", "t3"];
/// assert_eq!(placement.owner("t1", &tasks), Some("a"));
/// assert_eq!(placement.owner("t2", &tasks), Some("b"));
/// assert_eq!(placement.owner("t3", &tasks), Some("a"));
/// assert_eq!(placement.owner("not-listed", &tasks), None);
/// # Ok::<(), dcron_assign::AssignError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RoundRobin;

#[derive(Debug)]
struct RoundRobinPlacement {
    ids: Vec<String>,
}

impl RoundRobinPlacement {
    fn owner_of_index(&self, index: usize) -> u32 {
        (index % self.ids.len()) as u32
    }
}

impl Placement for RoundRobinPlacement {
    fn owner(&self, task: &str, tasks: &[&str]) -> Option<&str> {
        let index = tasks.binary_search(&task).ok()?;
        Some(self.ids[self.owner_of_index(index) as usize].as_str())
    }

    fn assign(&self, tasks: &[&str]) -> Assignment {
        let sorted = sorted_dedup(tasks);
        let owners: Vec<Option<u32>> = (0..sorted.len())
            .map(|index| Some(self.owner_of_index(index)))
            .collect();
        Assignment::from_sorted(&sorted, &owners, &self.ids)
    }
}

impl Assigner for RoundRobin {
    fn name(&self) -> &str {
        "round-robin"
    }

    fn depends_on_task_list(&self) -> bool {
        true
    }

    fn prepare(&self, members: &[Member]) -> Result<Box<dyn Placement>, AssignError> {
        let eligible = Eligible::from_members(members)?;
        if eligible.is_empty() {
            return Ok(Box::new(EmptyPlacement {
                strategy: "round-robin",
            }));
        }
        Ok(Box::new(RoundRobinPlacement { ids: eligible.ids }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deals_sorted_tasks_to_sorted_members() {
        let placement = RoundRobin
            .prepare(&[
                Member::new("n3", 1),
                Member::new("n1", 1),
                Member::new("n0", 0),
                Member::new("n2", 7),
            ])
            .unwrap();
        let assignment = placement.assign(&["e", "a", "d", "c", "b", "a"]);
        let pairs: Vec<_> = assignment.iter().collect();
        assert_eq!(
            pairs,
            [
                ("a", Some("n1")),
                ("b", Some("n2")),
                ("c", Some("n3")),
                ("d", Some("n1")),
                ("e", Some("n2")),
            ]
        );
    }
}
