//! Weighted: an exactly weight-proportional allocation of the 16384 hash slots.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::slots::{slot_key, SlotPlacement};
use super::EmptyPlacement;
use crate::hash::{member_seed, pair_score};
use crate::members::Eligible;
use crate::{AssignError, Assigner, HashSlots, Member, Placement};

/// Salt of the member seeds of the weighted allocation.
const WEIGHTED_SALT: u64 = 0x5745_4947_4854_4544; // "WEIGHTED"

/// Weighted: the 16384 hash slots of [`HashSlots`] are split between the members *exactly* in
/// proportion to their weights, and a task belongs to the owner of its slot.
///
/// Each member's quota is `16384 × weight / Σ weight`, rounded by the largest-remainder method
/// (ties to the smaller id), so quotas always add up to 16384. Which slots a member gets is
/// decided by a capacitated rendezvous: every (slot, member) pair has a hash score, and the
/// allocation is the stable matching in which no slot and member both prefer each other to
/// what they hold. It is computed with the Gale–Shapley algorithm, but, scores being one
/// common ranking of the pairs, that stable matching is unique: a pure function of the member
/// set, whatever the input order or history. Shares therefore match the weights to within one
/// slot (1/16384), and membership changes move little more than the ideal fraction.
///
/// Weight 0 means no slot; a positive weight so small that its quota rounds to 0 also gets no
/// slot (the resolution is 1/16384 of the total weight). All weights 0 is
/// [`AssignError::AllWeightsZero`]; no division by zero is possible (the seed system divided
/// by zero with its default weight).
///
/// ```
/// use dcron_assign::{Assigner, Member, Weighted};
///
/// let placement = Weighted.prepare(&[Member::new("big", 3), Member::new("small", 1)])?;
/// let names: Vec<String> = (0..10_000).map(|i| format!("task-{i}")).collect();
/// let tasks: Vec<&str> = names.iter().map(String::as_str).collect();
/// let big = placement.assign(&tasks).count_of("big") as f64 / 10_000.0;
/// assert!((big - 0.75).abs() < 0.03);
/// # Ok::<(), dcron_assign::AssignError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Weighted;

impl Assigner for Weighted {
    fn name(&self) -> &str {
        "weighted"
    }

    fn prepare(&self, members: &[Member]) -> Result<Box<dyn Placement>, AssignError> {
        let eligible = Eligible::from_members(members)?;
        if eligible.is_empty() {
            return Ok(Box::new(EmptyPlacement {
                strategy: "weighted",
            }));
        }
        let quotas = quotas(&eligible.weights, HashSlots::SLOTS);
        let seeds: Vec<u64> = eligible
            .ids
            .iter()
            .map(|id| member_seed(id, WEIGHTED_SALT))
            .collect();
        let table = stable_allocation(&seeds, &quotas, HashSlots::SLOTS);
        Ok(Box::new(SlotPlacement {
            ids: eligible.ids,
            table,
        }))
    }
}

/// Splits `total` into shares proportional to `weights` (all > 0, at least one), by the
/// largest-remainder method, ties to the lower index. The shares add up to `total`.
fn quotas(weights: &[u32], total: u32) -> Vec<u32> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    debug_assert!(sum > 0);
    let mut quotas = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (index, &weight) in weights.iter().enumerate() {
        let exact = u128::from(total) * u128::from(weight);
        // `sum > 0`: the caller guarantees a positive weight.
        quotas.push((exact / sum) as u32);
        remainders.push((exact % sum, index));
    }
    let assigned: u32 = quotas.iter().sum();
    let leftover = (total - assigned) as usize; // < weights.len()
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, index) in remainders.iter().take(leftover) {
        quotas[index] += 1;
    }
    quotas
}

/// The stable allocation of `slots` slots to members with capacities `quotas` (summing to
/// `slots`), both sides ranking each other by the pair score: the owner of every slot, as an
/// index into `quotas`.
///
/// Slot-proposing Gale–Shapley: a free slot proposes to its best member it has not proposed to
/// yet; a full member keeps its best `quota` proposals and releases the worst. Every slot ends
/// up held, since the quotas add up to the number of slots.
fn stable_allocation(seeds: &[u64], quotas: &[u32], slots: u32) -> Vec<u32> {
    // Rank keys: the score, then an index tie-break, so that all preferences are strict.
    let member_rank = |key: u64, member: usize| -> u128 {
        (u128::from(pair_score(key, seeds[member])) << 32) | u128::from(u32::MAX - member as u32)
    };
    let keys: Vec<u64> = (0..slots).map(slot_key).collect();
    // The rank below which the slot's next proposal must fall (it proposed to everything above).
    let mut bound = vec![u128::MAX; slots as usize];
    let mut held: Vec<BinaryHeap<Reverse<u128>>> = quotas
        .iter()
        .map(|&q| BinaryHeap::with_capacity(q as usize))
        .collect();
    let mut owner = vec![u32::MAX; slots as usize];
    let mut free: Vec<u32> = (0..slots).rev().collect();
    while let Some(slot) = free.pop() {
        let s = slot as usize;
        let mut best: Option<(u128, usize)> = None;
        for (member, &quota) in quotas.iter().enumerate() {
            if quota == 0 {
                continue;
            }
            let rank = member_rank(keys[s], member);
            if rank < bound[s] && best.is_none_or(|(best_rank, _)| rank > best_rank) {
                best = Some((rank, member));
            }
        }
        let Some((rank, member)) = best else {
            // Unreachable: a slot rejected by every member would mean that all `slots` places
            // are held by other slots. Leave it to the fallback below rather than panic.
            debug_assert!(false, "slot {slot} rejected by every member");
            continue;
        };
        bound[s] = rank;
        // The member ranks the slot by the same score, tie-broken by slot index.
        let slot_rank = (rank >> 32 << 32) | u128::from(u32::MAX - slot);
        let heap = &mut held[member];
        if heap.len() < quotas[member] as usize {
            heap.push(Reverse(slot_rank));
            owner[s] = member as u32;
        } else if let Some(&Reverse(worst)) = heap.peek() {
            if slot_rank > worst {
                heap.pop();
                heap.push(Reverse(slot_rank));
                owner[s] = member as u32;
                let released = u32::MAX - (worst & u128::from(u32::MAX)) as u32;
                owner[released as usize] = u32::MAX;
                free.push(released);
            } else {
                free.push(slot);
            }
        }
    }
    // Defensive only (see above): give any unheld slot to the first member with a quota.
    let fallback = quotas.iter().position(|&q| q > 0).unwrap_or(0) as u32;
    for o in &mut owner {
        if *o == u32::MAX {
            *o = fallback;
        }
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_proportional_and_add_up() {
        assert_eq!(quotas(&[1, 1, 1], 10), [4, 3, 3]);
        assert_eq!(quotas(&[1, 2, 1], 16384), [4096, 8192, 4096]);
        assert_eq!(quotas(&[u32::MAX, 1], 16384), [16384, 0]);
        assert_eq!(
            quotas(&[u32::MAX, u32::MAX, u32::MAX], 16384)
                .iter()
                .sum::<u32>(),
            16384
        );
        assert_eq!(quotas(&[3], 16384), [16384]);
    }

    #[test]
    fn every_member_gets_exactly_its_quota() {
        let seeds: Vec<u64> = (0..7)
            .map(|i| member_seed(&format!("m{i}"), WEIGHTED_SALT))
            .collect();
        let weights = [1, 2, 3, 4, 5, 6, 7];
        let quotas = quotas(&weights, HashSlots::SLOTS);
        let owner = stable_allocation(&seeds, &quotas, HashSlots::SLOTS);
        for (member, &quota) in quotas.iter().enumerate() {
            let held = owner.iter().filter(|&&o| o as usize == member).count();
            assert_eq!(held, quota as usize, "member {member}");
        }
    }

    #[test]
    fn allocation_is_stable() {
        // No slot and member both prefer each other to what they have.
        let seeds: Vec<u64> = (0..4)
            .map(|i| member_seed(&format!("m{i}"), WEIGHTED_SALT))
            .collect();
        let quotas = [30, 10, 50, 10];
        let owner = stable_allocation(&seeds, &quotas, 100);
        let score = |slot: u32, member: usize| pair_score(slot_key(slot), seeds[member]);
        for slot in 0..100u32 {
            let mine = owner[slot as usize] as usize;
            for other in 0..4 {
                if other == mine || score(slot, other) < score(slot, mine) {
                    continue;
                }
                // The slot prefers `other`: then `other` must prefer all the slots it holds.
                let worst_held = (0..100u32)
                    .filter(|&s| owner[s as usize] as usize == other)
                    .map(|s| score(s, other))
                    .min()
                    .unwrap();
                assert!(
                    worst_held > score(slot, other),
                    "blocking pair ({slot}, {other})"
                );
            }
        }
    }
}
