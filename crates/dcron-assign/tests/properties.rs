//! Property tests of the `Assigner` / `Placement` contract, for every built-in strategy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use dcron_assign::{
    AssignError, Assigner, Assignment, ConsistentHash, HashSlots, Member, Rendezvous,
    Strategy as Builtin, Weighted,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// Every built-in strategy, plus consistent hashing with few virtual nodes (a different ring).
fn assigners() -> Vec<Arc<dyn Assigner>> {
    let mut all: Vec<Arc<dyn Assigner>> = Builtin::all().iter().map(|s| s.assigner()).collect();
    all.push(Arc::new(ConsistentHash::new(3)));
    all
}

/// `count` task names `task-000000`, `task-000001`, ...
fn task_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("task-{i:06}")).collect()
}

fn as_strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

fn sorted_dedup<'a>(tasks: &[&'a str]) -> Vec<&'a str> {
    let set: BTreeSet<&str> = tasks.iter().copied().collect();
    set.into_iter().collect()
}

/// Members with unique ids and weights in `weights`, at least one of them positive.
fn members_strategy(
    count: std::ops::RangeInclusive<usize>,
    weights: std::ops::RangeInclusive<u32>,
) -> impl Strategy<Value = Vec<Member>> {
    prop::collection::btree_map("[a-z0-9-]{1,10}", weights, count).prop_map(|map| {
        let mut members: Vec<Member> = map.into_iter().map(|(id, w)| Member::new(id, w)).collect();
        if members.iter().all(|m| m.weight == 0) {
            members[0].weight = 1;
        }
        members
    })
}

fn task_list_strategy() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z]{0,3}[0-9]{0,3}", 0..80)
}

/// Owner of `task` as the contract says callers ask for it.
fn owner_via_contract<'p>(
    assigner: &dyn Assigner,
    placement: &'p dyn dcron_assign::Placement,
    task: &str,
    sorted: &[&str],
) -> Option<&'p str> {
    if assigner.depends_on_task_list() {
        placement.owner(task, sorted)
    } else {
        placement.owner(task, &[])
    }
}

/// Fraction of the tasks of `before` whose owner differs in `after`.
fn moved_fraction(before: &Assignment, after: &Assignment) -> f64 {
    let changed = before
        .iter()
        .filter(|(task, owner)| after.owner_of(task) != *owner)
        .count();
    changed as f64 / before.len() as f64
}

fn ten_thousand_tasks() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| task_names(10_000))
}

fn hundred_thousand_tasks() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| task_names(100_000))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn deterministic_whatever_the_input_order(
        (members, shuffled_members) in members_strategy(1..=8, 0..=4)
            .prop_flat_map(|m| (Just(m.clone()), Just(m).prop_shuffle())),
        tasks in task_list_strategy(),
    ) {
        let task_refs = as_strs(&tasks);
        let mut reordered_tasks: Vec<&str> = task_refs.iter().rev().copied().collect();
        reordered_tasks.extend(task_refs.iter().take(5).copied()); // duplicates
        for assigner in assigners() {
            let a = assigner.prepare(&members).unwrap().assign(&task_refs);
            let b = assigner.prepare(&shuffled_members).unwrap().assign(&reordered_tasks);
            prop_assert_eq!(&a, &b, "{}", assigner.name());
            // And a second preparation of the same input gives the same result.
            let c = assigner.prepare(&members).unwrap().assign(&task_refs);
            prop_assert_eq!(&a, &c, "{}", assigner.name());
        }
    }

    #[test]
    fn every_task_has_exactly_one_owner_with_positive_weight(
        members in members_strategy(1..=8, 0..=3),
        tasks in task_list_strategy(),
    ) {
        let task_refs = as_strs(&tasks);
        let sorted = sorted_dedup(&task_refs);
        let weights: BTreeMap<&str, u32> =
            members.iter().map(|m| (m.id.as_str(), m.weight)).collect();
        for assigner in assigners() {
            let name = assigner.name().to_owned();
            let placement = assigner.prepare(&members).unwrap();
            let assignment = placement.assign(&task_refs);
            prop_assert_eq!(assignment.len(), sorted.len());
            let mut total = 0;
            for member in &members {
                let owned: Vec<&str> = assignment.tasks_of(&member.id).collect();
                if member.weight == 0 {
                    prop_assert!(owned.is_empty(), "{}: zero-weight {} owns {:?}", name, member.id, owned);
                }
                for task in &owned {
                    prop_assert_eq!(assignment.owner_of(task), Some(member.id.as_str()));
                }
                total += owned.len();
            }
            // The per-member lists partition the tasks: exactly one owner each.
            prop_assert_eq!(total, sorted.len(), "{}", name);
            for task in &sorted {
                let owner = assignment.owner_of(task);
                prop_assert!(owner.is_some(), "{}: {} has no owner", name, task);
                prop_assert!(weights.get(owner.unwrap()).is_some_and(|&w| w > 0), "{}", name);
                // `owner` agrees with `assign`, called as the contract says.
                prop_assert_eq!(
                    owner_via_contract(assigner.as_ref(), placement.as_ref(), task, &sorted),
                    owner,
                    "{}: owner() and assign() disagree on {}", name, task
                );
            }
            prop_assert_eq!(assignment.unowned().count(), 0);
        }
    }

    #[test]
    fn hash_strategies_ignore_the_task_list(
        members in members_strategy(1..=6, 1..=3),
        tasks in task_list_strategy(),
        probe in "[a-z0-9]{0,12}",
    ) {
        let task_refs = as_strs(&tasks);
        let sorted = sorted_dedup(&task_refs);
        for assigner in assigners() {
            let placement = assigner.prepare(&members).unwrap();
            if assigner.depends_on_task_list() {
                // A task outside the list has no owner.
                if !sorted.contains(&probe.as_str()) {
                    prop_assert_eq!(placement.owner(&probe, &sorted), None);
                }
            } else {
                prop_assert_eq!(placement.owner(&probe, &[]), placement.owner(&probe, &sorted));
                prop_assert!(placement.owner(&probe, &[]).is_some());
            }
        }
    }

    #[test]
    fn no_members_means_no_owner(tasks in task_list_strategy()) {
        let task_refs = as_strs(&tasks);
        let sorted = sorted_dedup(&task_refs);
        for assigner in assigners() {
            let placement = assigner.prepare(&[]).unwrap();
            let assignment = placement.assign(&task_refs);
            prop_assert_eq!(assignment.len(), sorted.len());
            prop_assert_eq!(assignment.unowned().count(), sorted.len());
            prop_assert_eq!(assignment.members().count(), 0);
            for task in &sorted {
                prop_assert_eq!(placement.owner(task, &sorted), None);
                prop_assert_eq!(placement.owner(task, &[]), None);
            }
        }
    }

    #[test]
    fn all_zero_weights_is_an_error(ids in prop::collection::btree_set("[a-z]{1,6}", 1..8)) {
        let members: Vec<Member> = ids.into_iter().map(|id| Member::new(id, 0)).collect();
        for assigner in assigners() {
            prop_assert_eq!(assigner.prepare(&members).unwrap_err(), AssignError::AllWeightsZero);
        }
    }

    #[test]
    fn duplicate_ids_are_an_error(
        members in members_strategy(1..=6, 0..=3),
        which in any::<Index>(),
        weight in 0u32..3,
    ) {
        let duplicated = members[which.index(members.len())].id.clone();
        let mut with_duplicate = members.clone();
        with_duplicate.insert(which.index(members.len() + 1), Member::new(duplicated.clone(), weight));
        for assigner in assigners() {
            prop_assert_eq!(
                assigner.prepare(&with_duplicate).unwrap_err(),
                AssignError::DuplicateMember { id: duplicated.clone() }
            );
        }
    }

    #[test]
    fn range_and_round_robin_are_balanced(
        members in members_strategy(1..=9, 0..=3),
        tasks in task_list_strategy(),
    ) {
        let task_refs = as_strs(&tasks);
        let sorted = sorted_dedup(&task_refs);
        let eligible: Vec<&str> = members
            .iter()
            .filter(|m| m.weight > 0)
            .map(|m| m.id.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for strategy in [Builtin::Range, Builtin::RoundRobin] {
            let assignment = strategy.assigner().prepare(&members).unwrap().assign(&task_refs);
            let counts: Vec<usize> = eligible.iter().map(|m| assignment.count_of(m)).collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(max - min <= 1, "{}: {:?}", strategy, counts);
            // The exact layout: position in the sorted task list decides.
            for (position, task) in sorted.iter().enumerate() {
                let owner = assignment.owner_of(task).unwrap();
                let member = eligible.iter().position(|m| *m == owner).unwrap();
                match strategy {
                    Builtin::RoundRobin => prop_assert_eq!(member, position % eligible.len()),
                    _ => {
                        // Blocks are contiguous and in member order: owners never go back.
                        if position > 0 {
                            let previous = assignment.owner_of(sorted[position - 1]).unwrap();
                            let previous = eligible.iter().position(|m| *m == previous).unwrap();
                            prop_assert!(previous <= member);
                        }
                        // Bigger blocks first.
                        prop_assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{:?}", counts);
                    }
                }
            }
        }
    }
}

proptest! {
    // Heavy cases (10k and 100k tasks): few of them, so the suite stays fast in debug builds.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn join_and_leave_move_at_most_a_quarter_more_than_ideal(
        ids in prop::collection::btree_set("[a-z0-9]{1,12}", 3..=13),
        which in any::<Index>(),
    ) {
        let tasks = as_strs(ten_thousand_tasks());
        let mut ids: Vec<String> = ids.into_iter().collect();
        // One of the ids is the member that joins (and then leaves again).
        let joiner = ids.remove(which.index(ids.len()));
        let before: Vec<Member> = ids.iter().map(|id| Member::new(id.clone(), 1)).collect();
        let mut after = before.clone();
        after.push(Member::new(joiner.clone(), 1));
        let n = before.len() as f64;
        for assigner in [
            Builtin::Consistent.assigner(),
            Builtin::HashSlot.assigner(),
            Builtin::Rendezvous.assigner(),
        ] {
            let small = assigner.prepare(&before).unwrap().assign(&tasks);
            let big = assigner.prepare(&after).unwrap().assign(&tasks);
            // Join: n -> n + 1, ideal 1 / (n + 1); leave: n + 1 -> n, ideal 1 / (n + 1) as
            // well (the member that leaves owned its fair share).
            let join = moved_fraction(&small, &big);
            let leave = moved_fraction(&big, &small);
            let ideal = 1.0 / (n + 1.0);
            prop_assert!(join <= 1.25 * ideal, "{}: join moved {} (ideal {})", assigner.name(), join, ideal);
            prop_assert!(leave <= 1.25 * ideal, "{}: leave moved {} (ideal {})", assigner.name(), leave, ideal);
            // Also a leave from the n-member cluster: n -> n - 1, ideal 1 / n.
            let leaver = &before[which.index(before.len())].id;
            let fewer: Vec<Member> = before.iter().filter(|m| &m.id != leaver).cloned().collect();
            let fewer = assigner.prepare(&fewer).unwrap().assign(&tasks);
            let leave = moved_fraction(&small, &fewer);
            prop_assert!(leave <= 1.25 / n, "{}: leave moved {} (ideal {})", assigner.name(), leave, 1.0 / n);
        }
    }

    #[test]
    fn join_moves_tasks_only_to_the_joiner(
        members in members_strategy(2..=8, 1..=3),
        joiner_weight in 1u32..=3,
    ) {
        let tasks = as_strs(&ten_thousand_tasks()[..2_000]);
        let joiner = "the-joiner".to_owned();
        prop_assume!(members.iter().all(|m| m.id != joiner));
        let mut after = members.clone();
        after.push(Member::new(joiner.clone(), joiner_weight));
        for assigner in [
            Builtin::Consistent.assigner(),
            Builtin::HashSlot.assigner(),
            Builtin::Rendezvous.assigner(),
        ] {
            let before = assigner.prepare(&members).unwrap().assign(&tasks);
            let joined = assigner.prepare(&after).unwrap().assign(&tasks);
            for (task, owner) in before.iter() {
                let new_owner = joined.owner_of(task);
                prop_assert!(
                    new_owner == owner || new_owner == Some(joiner.as_str()),
                    "{}: {} moved from {:?} to {:?}", assigner.name(), task, owner, new_owner
                );
            }
        }
    }

    #[test]
    fn shares_follow_the_weights_within_ten_percent(
        members in members_strategy(1..=6, 0..=8),
    ) {
        let tasks = as_strs(hundred_thousand_tasks());
        let total: f64 = members.iter().map(|m| f64::from(m.weight)).sum();
        let assigners: [Arc<dyn Assigner>; 2] = [Arc::new(Weighted), Arc::new(Rendezvous)];
        for assigner in assigners {
            let assignment = assigner.prepare(&members).unwrap().assign(&tasks);
            for member in &members {
                let expected = f64::from(member.weight) / total;
                let share = assignment.count_of(&member.id) as f64 / tasks.len() as f64;
                prop_assert!(
                    (share - expected).abs() <= 0.10 * expected,
                    "{}: {} (weight {}) has {} of the tasks, expected {}",
                    assigner.name(), member.id, member.weight, share, expected
                );
            }
        }
    }
}

#[test]
fn weighted_never_divides_by_zero() {
    // The seed system's default weight made its weighted strategy divide by zero.
    let members = [Member::new("a", 0), Member::new("b", 0)];
    assert_eq!(
        Weighted.prepare(&members).unwrap_err(),
        AssignError::AllWeightsZero
    );
    let members = [Member::new("a", 0), Member::new("b", 1)];
    let placement = Weighted.prepare(&members).unwrap();
    assert_eq!(placement.owner("anything", &[]), Some("b"));
}

#[test]
fn hash_slots_cover_every_slot() {
    let members: Vec<Member> = (0..5).map(|i| Member::new(format!("m{i}"), 1)).collect();
    let placement = HashSlots.prepare(&members).unwrap();
    // Every slot has an owner: probe one task per slot.
    let mut seen = vec![false; HashSlots::SLOTS as usize];
    let mut remaining = seen.len();
    let mut i = 0u64;
    while remaining > 0 {
        let task = format!("probe-{i}");
        let slot = HashSlots::slot_of(&task) as usize;
        if !seen[slot] {
            seen[slot] = true;
            remaining -= 1;
            assert!(placement.owner(&task, &[]).is_some());
        }
        i += 1;
    }
}
