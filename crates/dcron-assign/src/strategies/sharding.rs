//! Hash sharding: `stable_hash(task) % members`.

use super::{assign_each, EmptyPlacement};
use crate::hash::stable_hash;
use crate::members::Eligible;
use crate::{AssignError, Assigner, Assignment, Member, Placement};

/// Hash sharding (modulo): a task belongs to member number `stable_hash(task) % n` among the
/// `n` members with a positive weight, sorted by id.
///
/// Cheapest lookup and a good balance, but nearly every task changes owner when the number of
/// members changes (a fraction of about `1 - 1/n` moves). Positive weights are all treated
/// alike. Use it for a fixed-size cluster; prefer [`ConsistentHash`](crate::ConsistentHash) or
/// [`Rendezvous`](crate::Rendezvous) when members come and go.
///
/// ```
/// use dcron_assign::{Assigner, HashSharding, Member};
///
/// let placement = HashSharding.prepare(&[Member::new("a", 1), Member::new("b", 1)])?;
/// assert!(placement.owner("task", &[]).is_some());
/// # Ok::<(), dcron_assign::AssignError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HashSharding;

#[derive(Debug)]
struct ShardPlacement {
    ids: Vec<String>,
}

impl ShardPlacement {
    fn owner_index(&self, task: &str) -> u32 {
        (stable_hash(task.as_bytes()) % self.ids.len() as u64) as u32
    }
}

impl Placement for ShardPlacement {
    fn owner(&self, task: &str, _tasks: &[&str]) -> Option<&str> {
        Some(self.ids[self.owner_index(task) as usize].as_str())
    }

    fn assign(&self, tasks: &[&str]) -> Assignment {
        assign_each(tasks, &self.ids, |task| Some(self.owner_index(task)))
    }
}

impl Assigner for HashSharding {
    fn name(&self) -> &str {
        "hash-sharding"
    }

    fn prepare(&self, members: &[Member]) -> Result<Box<dyn Placement>, AssignError> {
        let eligible = Eligible::from_members(members)?;
        if eligible.is_empty() {
            return Ok(Box::new(EmptyPlacement {
                strategy: "hash-sharding",
            }));
        }
        Ok(Box::new(ShardPlacement { ids: eligible.ids }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_hash_modulo_the_sorted_members() {
        let placement = HashSharding
            .prepare(&[
                Member::new("c", 1),
                Member::new("a", 5),
                Member::new("zero", 0),
                Member::new("b", 1),
            ])
            .unwrap();
        for task in ["x", "task-000042", "backup", ""] {
            let expected = ["a", "b", "c"][(stable_hash(task.as_bytes()) % 3) as usize];
            assert_eq!(placement.owner(task, &[]), Some(expected), "{task}");
        }
    }
}
