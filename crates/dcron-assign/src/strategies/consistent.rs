//! Consistent hashing on a ring of virtual nodes (the `hashring` crate).

use std::fmt;
use std::hash::{Hash, Hasher};

use hashring::HashRing;

use super::{assign_each, EmptyPlacement};
use crate::hash::{fmix64, fnv1a, stable_hash, StableBuildHasher, FNV_OFFSET};
use crate::members::Eligible;
use crate::{AssignError, Assigner, Assignment, Member, Placement};

/// Consistent hashing: each member owns `virtual_nodes × weight` points on a 64-bit ring, and a
/// task belongs to the first point clockwise from the hash of its name.
///
/// When a member joins or leaves, only the tasks on the arcs it gains or loses move (about
/// `1 / members` of them); every other task keeps its owner. The balance improves with the
/// number of virtual nodes: the share of a member varies by about `1 / sqrt(virtual_nodes ×
/// weight)` around its ideal. The default, [`ConsistentHash::DEFAULT_VIRTUAL_NODES`], was
/// chosen by measurement (the `vnode_sweep` example of this crate; figures in the crate
/// documentation).
///
/// Weight scales the number of virtual nodes, so a member of weight 3 owns about three times
/// the tasks of a member of weight 1. Keep weights small: a ring is limited to
/// [`ConsistentHash::MAX_RING_POINTS`] points, and `prepare` returns
/// [`AssignError::InvalidConfig`] beyond.
///
/// Ring positions are platform-independent: a virtual node's position is the stable hash of
/// the member id's bytes followed by the virtual node's index as 4 little-endian bytes, and a
/// task's position is derived from [`stable_hash`] of its name, both hashed again through a
/// hasher that writes every integer little-endian.
///
/// ```
/// use dcron_assign::{Assigner, ConsistentHash, Member};
///
/// let ring = ConsistentHash::new(64).prepare(&[Member::new("a", 1), Member::new("b", 2)])?;
/// assert!(matches!(ring.owner("task", &[]), Some("a" | "b")));
/// # Ok::<(), dcron_assign::AssignError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsistentHash {
    /// Virtual nodes per unit of weight; must be at least 1.
    pub virtual_nodes: u32,
}

impl ConsistentHash {
    /// Default virtual nodes per unit of weight, chosen by measurement: with 10 members it
    /// keeps the busiest member within a few percent of the mean and the tasks moved on a join
    /// or leave close to the ideal `1 / members`, while a ring of 10 members still builds in
    /// well under a millisecond.
    pub const DEFAULT_VIRTUAL_NODES: u32 = 1024;

    /// Largest number of points (`Σ virtual_nodes × weight`) a ring may have.
    pub const MAX_RING_POINTS: u64 = 1 << 22;

    /// Consistent hashing with `virtual_nodes` points per unit of weight.
    pub fn new(virtual_nodes: u32) -> Self {
        Self { virtual_nodes }
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new(Self::DEFAULT_VIRTUAL_NODES)
    }
}

/// A point of the ring. Its `Hash` writes only the precomputed position, as a `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VirtualNode {
    position: u64,
    member: u32,
}

impl Hash for VirtualNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.position);
    }
}

/// A task's key on the ring: its stable hash.
struct TaskKey(u64);

impl Hash for TaskKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

struct RingPlacement {
    ids: Vec<String>,
    ring: HashRing<VirtualNode, StableBuildHasher>,
}

impl fmt::Debug for RingPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingPlacement")
            .field("members", &self.ids)
            .field("points", &self.ring.len())
            .finish()
    }
}

impl RingPlacement {
    fn owner_index(&self, task: &str) -> Option<u32> {
        self.ring
            .get(&TaskKey(stable_hash(task.as_bytes())))
            .map(|vnode| vnode.member)
    }
}

impl Placement for RingPlacement {
    fn owner(&self, task: &str, _tasks: &[&str]) -> Option<&str> {
        self.owner_index(task)
            .map(|index| self.ids[index as usize].as_str())
    }

    fn assign(&self, tasks: &[&str]) -> Assignment {
        assign_each(tasks, &self.ids, |task| self.owner_index(task))
    }
}

impl Assigner for ConsistentHash {
    fn name(&self) -> &str {
        "consistent"
    }

    fn prepare(&self, members: &[Member]) -> Result<Box<dyn Placement>, AssignError> {
        if self.virtual_nodes == 0 {
            return Err(AssignError::InvalidConfig {
                reason: "consistent hashing needs at least 1 virtual node per unit of weight"
                    .into(),
            });
        }
        let eligible = Eligible::from_members(members)?;
        if eligible.is_empty() {
            return Ok(Box::new(EmptyPlacement {
                strategy: "consistent",
            }));
        }
        let points = eligible.total_weight() * u64::from(self.virtual_nodes);
        if points > Self::MAX_RING_POINTS {
            return Err(AssignError::InvalidConfig {
                reason: format!(
                    "consistent hashing ring would have {points} points (virtual_nodes {} × total \
                     weight {}), more than the limit of {}; use smaller weights or fewer virtual \
                     nodes",
                    self.virtual_nodes,
                    eligible.total_weight(),
                    Self::MAX_RING_POINTS
                ),
            });
        }
        // Canonical insertion order (sorted ids, ascending index): `hashring` sorts stably, so
        // even colliding positions end up in the same order on every node.
        let mut vnodes = Vec::with_capacity(points as usize);
        for (member, (id, &weight)) in eligible.ids.iter().zip(&eligible.weights).enumerate() {
            let id_state = fnv1a(fnv1a(FNV_OFFSET, id.as_bytes()), &[0xff]);
            let count = u64::from(weight) * u64::from(self.virtual_nodes);
            for index in 0..count as u32 {
                vnodes.push(VirtualNode {
                    position: fmix64(fnv1a(id_state, &index.to_le_bytes())),
                    member: member as u32,
                });
            }
        }
        let mut ring = HashRing::with_hasher(StableBuildHasher);
        ring.batch_add(vnodes);
        Ok(Box::new(RingPlacement {
            ids: eligible.ids,
            ring,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(format!("node-{i}"), 1))
            .collect()
    }

    #[test]
    fn rejects_zero_virtual_nodes_and_oversized_rings() {
        assert!(matches!(
            ConsistentHash::new(0).prepare(&members(2)),
            Err(AssignError::InvalidConfig { .. })
        ));
        assert!(matches!(
            ConsistentHash::new(1 << 20).prepare(&members(5)),
            Err(AssignError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn owners_are_pinned() {
        // Pins the ring layout: the same on every platform and release (cross-checked against
        // an independent Python implementation of the ring).
        let placement = ConsistentHash::new(16).prepare(&members(3)).unwrap();
        let owners: Vec<_> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| placement.owner(t, &[]).unwrap().to_owned())
            .collect();
        assert_eq!(
            owners,
            ["node-2", "node-0", "node-1", "node-1", "node-0", "node-2"]
        );
    }

    #[test]
    fn weight_scales_the_share() {
        let placement = ConsistentHash::default()
            .prepare(&[Member::new("light", 1), Member::new("heavy", 3)])
            .unwrap();
        let names: Vec<String> = (0..20_000).map(|i| format!("t{i}")).collect();
        let tasks: Vec<&str> = names.iter().map(String::as_str).collect();
        let assignment = placement.assign(&tasks);
        let heavy = assignment.count_of("heavy") as f64 / 20_000.0;
        assert!((heavy - 0.75).abs() < 0.05, "heavy share {heavy}");
    }

    #[test]
    fn a_single_member_owns_everything() {
        let placement = ConsistentHash::new(1).prepare(&members(1)).unwrap();
        for task in ["x", "y", "z"] {
            assert_eq!(placement.owner(task, &[]), Some("node-0"));
        }
    }
}
