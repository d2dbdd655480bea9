//! Range: contiguous blocks of the sorted task names.

use super::EmptyPlacement;
use crate::members::Eligible;
use crate::{sorted_dedup, AssignError, Assigner, Assignment, Member, Placement};

/// Range: the sorted task names are cut into contiguous blocks, one per member with a positive
/// weight, in the order of the sorted member ids; block sizes differ by at most 1 (the first
/// `tasks % members` members get one task more).
///
/// Neighbouring names stay together, which suits tasks whose names encode a partition
/// (`shard-000` … `shard-999`). The blocks are cut by *position in the sorted task list*; task
/// names are never compared with member ids (the seed system did, and sent everything to one
/// node). Adding a task or a member shifts the block boundaries, so the owner of a task
/// depends on the whole task list ([`Assigner::depends_on_task_list`] is `true`). Positive
/// weights are all treated alike.
///
/// ```
/// use dcron_assign::{Assigner, Member, RangeAssigner};
///
/// let placement = RangeAssigner.prepare(&[Member::new("b", 1), Member::new("a", 1)])?;
/// let tasks = ["t1", "t2", "t3", "t4", "t5"];
/// let owners: Vec<_> = tasks.iter().map(|t| placement.owner(t, &tasks).unwrap()).collect();
/// assert_eq!(owners, ["a", "a", "a", "b", "b"]);
/// # Ok::<(), dcron_assign::AssignError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeAssigner;

#[derive(Debug)]
struct RangePlacement {
    ids: Vec<String>,
}

impl RangePlacement {
    /// Member of the task at `index` in a sorted list of `len` tasks.
    fn owner_of_index(&self, index: usize, len: usize) -> u32 {
        let members = self.ids.len();
        let small = len / members;
        let big = small + 1;
        let bigs = len % members;
        let member = if index < bigs * big {
            index / big
        } else {
            // `small > 0` here: otherwise every index is below `bigs * big`.
            bigs + (index - bigs * big) / small
        };
        member as u32
    }
}

impl Placement for RangePlacement {
    fn owner(&self, task: &str, tasks: &[&str]) -> Option<&str> {
        let index = tasks.binary_search(&task).ok()?;
        Some(self.ids[self.owner_of_index(index, tasks.len()) as usize].as_str())
    }

    fn assign(&self, tasks: &[&str]) -> Assignment {
        let sorted = sorted_dedup(tasks);
        let owners: Vec<Option<u32>> = (0..sorted.len())
            .map(|index| Some(self.owner_of_index(index, sorted.len())))
            .collect();
        Assignment::from_sorted(&sorted, &owners, &self.ids)
    }
}

impl Assigner for RangeAssigner {
    fn name(&self) -> &str {
        "range"
    }

    fn depends_on_task_list(&self) -> bool {
        true
    }

    fn prepare(&self, members: &[Member]) -> Result<Box<dyn Placement>, AssignError> {
        let eligible = Eligible::from_members(members)?;
        if eligible.is_empty() {
            return Ok(Box::new(EmptyPlacement { strategy: "range" }));
        }
        Ok(Box::new(RangePlacement { ids: eligible.ids }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_contiguous_and_balanced() {
        let placement = RangePlacement {
            ids: vec!["a".into(), "b".into(), "c".into()],
        };
        for len in 0..40 {
            let owners: Vec<u32> = (0..len).map(|i| placement.owner_of_index(i, len)).collect();
            // Non-decreasing: contiguous blocks in member order.
            assert!(owners.windows(2).all(|w| w[0] <= w[1]), "{owners:?}");
            let counts: Vec<usize> = (0..3)
                .map(|m| owners.iter().filter(|&&o| o == m).count())
                .collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "len {len}: {counts:?}");
            assert_eq!(counts.iter().sum::<usize>(), len);
        }
    }

    #[test]
    fn task_names_are_never_compared_with_member_ids() {
        // Member ids sort after every task name: the seed system sent everything to one node.
        let placement = RangeAssigner
            .prepare(&[Member::new("zz-1", 1), Member::new("zz-2", 1)])
            .unwrap();
        let assignment = placement.assign(&["a", "b", "c", "d"]);
        assert_eq!(assignment.tasks_of("zz-1").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(assignment.tasks_of("zz-2").collect::<Vec<_>>(), ["c", "d"]);
    }
}
