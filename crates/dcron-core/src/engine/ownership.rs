//! Ownership: which tasks this node runs, from the membership and the assigner, and what
//! changes when either changes.
//!
//! The rules (DESIGN §1, §2):
//! - the members are the nodes whose records say `Working`, plus this node while it works
//!   (its own record may lag);
//! - a node owns nothing while it is not working, and nobody owns a tombstoned name;
//! - a change is applied as a diff: tasks gained are caught up and scheduled, tasks lost are
//!   dropped (their timer entries go stale, their retries are cancelled);
//! - a task changed in place on its owner keeps its life: it is rescheduled, not caught up;
//! - the **gap floor** is the earliest creation of a node working now (less the largest clock
//!   skew): instants after it fell while somebody was working, so a gain catches them all up.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_assign::{Member, Placement};

use crate::engine::plan;
use crate::types::{Node, NodeStatus};

/// The membership the assigner places tasks on, sorted.
pub(crate) fn members<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    active: bool,
    weight: u32,
) -> Vec<Member> {
    let mut members: Vec<Member> = nodes
        .into_iter()
        .filter(|n| n.status == NodeStatus::Working && n.id != me)
        .map(|n| Member::new(n.id.clone(), n.weight))
        .collect();
    if active {
        members.push(Member::new(me, weight));
    }
    members.sort();
    members
}

/// The sorted list of live (not tombstoned) names, for assigners that place a task by the
/// whole list; empty for the others.
pub(crate) fn sorted_names<'a>(
    depends_on_task_list: bool,
    names: impl IntoIterator<Item = &'a Arc<str>>,
    tombstoned: impl Fn(&str) -> bool,
) -> Vec<String> {
    if !depends_on_task_list {
        return Vec::new();
    }
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|n| !tombstoned(n))
        .map(|n| n.to_string())
        .collect();
    out.sort();
    out
}

/// What a node knows when it asks whether it owns a task.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    /// This node's id.
    pub(crate) me: &'a str,
    /// Whether this node is working.
    pub(crate) active: bool,
    /// The placement of the current membership (`None`: the assigner failed, or no listing).
    pub(crate) placement: Option<&'a dyn Placement>,
    /// See [`sorted_names`].
    pub(crate) sorted: &'a [&'a str],
}

impl View<'_> {
    /// Whether this node owns `name`.
    pub(crate) fn owns(&self, name: &str, tombstoned: bool) -> bool {
        if !self.active || tombstoned {
            return false;
        }
        let Some(placement) = self.placement else {
            return false;
        };
        placement.owner(name, self.sorted) == Some(self.me)
    }
}

/// The tasks whose ownership changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    /// Owned now, not before.
    pub(crate) gained: Vec<Arc<str>>,
    /// Owned before, not now.
    pub(crate) lost: Vec<Arc<str>>,
}

/// The diff of `(name, owned before, owned now)` triples.
pub(crate) fn diff(tasks: impl IntoIterator<Item = (Arc<str>, bool, bool)>) -> Diff {
    let mut out = Diff::default();
    for (name, owned, should) in tasks {
        if should && !owned {
            out.gained.push(name);
        } else if !should && owned {
            out.lost.push(name);
        }
    }
    out
}

/// What to do with one task after it was added or changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Not this node's.
    Elsewhere,
    /// Owned before and its life is known: schedule its next instant, no catch-up.
    Reschedule,
    /// Take it over (learn its life, catch up, schedule).
    Gain,
}

/// Decides [`Placed`] for a task this node should (or should not) own.
pub(crate) fn place(should_own: bool, was_owned: bool, life_known: bool) -> Placed {
    match (should_own, was_owned && life_known) {
        (false, _) => Placed::Elsewhere,
        (true, true) => Placed::Reschedule,
        (true, false) => Placed::Gain,
    }
}

/// The gap floor (see the module rules): from the nodes other than `me` working now, and when
/// this node started working.
pub(crate) fn gap_floor<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    working_since: Option<DateTime<Utc>>,
    max_clock_skew: Duration,
) -> Option<DateTime<Utc>> {
    let others = nodes
        .into_iter()
        .filter(|n| n.status == NodeStatus::Working && n.id != me)
        .map(|n| n.create_time);
    let earliest = others.chain(working_since).min()?;
    Some(plan::minus(earliest, max_clock_skew))
}

/// The tasks other nodes publish as running (for overlap policies).
pub(crate) fn remote_running<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
) -> HashSet<String> {
    nodes
        .into_iter()
        .filter(|n| n.id != me)
        .flat_map(|n| n.running.iter().map(|r| r.task.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::{catch_up, CatchUp, Fires, Pause};
    use crate::policy::RunningFire;
    use crate::schedule::{Schedule, SecondsField};
    use crate::types::{Life, MisfirePolicy};
    use chrono::TimeDelta;
    use dcron_assign::Strategy;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_000_000 + s)
    }

    fn node(id: &str, created: i64, status: NodeStatus) -> Node {
        let mut n = Node::new(id, t(created));
        n.status = status;
        n
    }

    /// Who owns each task in `names` as `me`, given `nodes` (this node active).
    fn owned_by(me: &str, nodes: &[Node], names: &[Arc<str>], active: bool) -> Vec<bool> {
        let assigner = Strategy::Consistent.assigner();
        let members = members(nodes, me, active, 1);
        let placement = assigner.prepare(&members).expect("placement");
        let view = View {
            me,
            active,
            placement: Some(&*placement),
            sorted: &[],
        };
        names.iter().map(|n| view.owns(n, false)).collect()
    }

    #[test]
    fn only_working_nodes_are_members() {
        let nodes = [
            node("a", 0, NodeStatus::Working),
            node("b", 0, NodeStatus::Starting),
            node("c", 0, NodeStatus::Leaving),
            // This node's own record, late: it counts as a member only while active.
            node("me", 0, NodeStatus::Working),
        ];
        let ids = |m: Vec<Member>| m.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(members(&nodes, "me", true, 1)), ["a", "me"]);
        assert_eq!(ids(members(&nodes, "me", false, 1)), ["a"]);
    }

    #[test]
    fn nothing_is_owned_while_inactive_or_tombstoned() {
        let assigner = Strategy::Consistent.assigner();
        let placement = assigner
            .prepare(&[Member::new("me", 1)])
            .expect("placement");
        let mut view = View {
            me: "me",
            active: true,
            placement: Some(&*placement),
            sorted: &[],
        };
        assert!(view.owns("job", false));
        assert!(!view.owns("job", true));
        view.active = false;
        assert!(!view.owns("job", false));
        view.active = true;
        view.placement = None;
        assert!(!view.owns("job", false));
    }

    #[test]
    fn a_handover_gains_the_leavers_tasks_and_catches_up_the_gap() {
        let names: Vec<Arc<str>> = (0..40).map(|i| Arc::from(format!("job-{i}"))).collect();
        // `a` and `b` share the tasks; `b` started working at +30 s.
        let both = [
            node("a", 0, NodeStatus::Working),
            node("b", 30, NodeStatus::Working),
        ];
        let before = owned_by("b", &both, &names, true);
        assert!(before.iter().any(|o| *o) && before.iter().any(|o| !*o));
        // `a` leaves (its record goes): `b` owns everything.
        let after = owned_by("b", &both[1..], &names, true);
        assert!(after.iter().all(|o| *o));
        let d = diff(
            names
                .iter()
                .cloned()
                .zip(before.iter().copied())
                .zip(after.iter().copied())
                .map(|((n, o), s)| (n, o, s)),
        );
        let expected: Vec<Arc<str>> = names
            .iter()
            .zip(&before)
            .filter(|(_, o)| !**o)
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(d.gained, expected);
        assert!(d.lost.is_empty());
        // `a` ran its tasks until +50 s and `b` gains them at +60 s. `b` has worked since
        // +30 s: the instants since then fell while somebody worked, so the whole gap
        // (+51..=+60 within the window) is caught up although the policy is FireOnce.
        let floor = gap_floor(&both[1..], "b", Some(t(30)), Duration::from_secs(1));
        assert_eq!(floor, Some(t(29)));
        let s = Schedule::parse("* * * * * *", None, SecondsField::Optional).expect("parses");
        let fires = Fires {
            schedule: &s,
            life: Life::new(1, t(0)),
            one_shot: false,
            run_if_past: false,
        };
        let out = catch_up(&CatchUp {
            fires,
            now: t(60),
            window: Duration::from_secs(10),
            policy: MisfirePolicy::FireOnce,
            gap_floor: floor,
            pause: Pause::None,
        });
        assert_eq!(out, (51..=60).map(t).collect::<Vec<_>>());
        // (The instants `a` claimed are found claimed: the claim decides, not the plan.)
    }

    #[test]
    fn losing_the_membership_loses_every_task() {
        let names: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("job-{i}"))).collect();
        let nodes = [node("me", 0, NodeStatus::Working)];
        let before = owned_by("me", &nodes, &names, true);
        assert!(before.iter().all(|o| *o));
        let after = owned_by("me", &nodes, &names, false);
        let d = diff(
            names
                .iter()
                .cloned()
                .zip(before)
                .zip(after)
                .map(|((n, o), s)| (n, o, s)),
        );
        assert!(d.gained.is_empty());
        assert_eq!(d.lost, names);
    }

    #[test]
    fn a_change_in_place_is_rescheduled_not_caught_up() {
        assert_eq!(place(true, true, true), Placed::Reschedule);
        // A new life (force-write, reuse): its life is read again and it is caught up.
        assert_eq!(place(true, true, false), Placed::Gain);
        assert_eq!(place(true, false, true), Placed::Gain);
        assert_eq!(place(false, true, true), Placed::Elsewhere);
    }

    #[test]
    fn the_gap_floor_is_the_earliest_working_node_less_the_skew() {
        let skew = Duration::from_secs(2);
        let nodes = [
            node("a", 10, NodeStatus::Working),
            node("b", 5, NodeStatus::Starting),
            node("me", 1, NodeStatus::Working),
        ];
        // `b` does not work yet and `me` counts by its own working-since, not its record.
        assert_eq!(gap_floor(&nodes, "me", Some(t(20)), skew), Some(t(8)));
        assert_eq!(gap_floor(&nodes, "me", Some(t(4)), skew), Some(t(2)));
        // Nobody known to work: no floor, the misfire policy alone decides.
        assert_eq!(gap_floor(&nodes[1..], "me", None, skew), None);
    }

    #[test]
    fn remote_running_ignores_this_node() {
        let mut a = node("a", 0, NodeStatus::Working);
        a.running.push(RunningFire {
            task: "x".into(),
            instant: t(1),
            token: 1,
        });
        let mut me = node("me", 0, NodeStatus::Working);
        me.running.push(RunningFire {
            task: "y".into(),
            instant: t(1),
            token: 2,
        });
        let remote = remote_running(&[a, me], "me");
        assert_eq!(remote, HashSet::from(["x".to_string()]));
    }

    #[test]
    fn range_assigners_see_live_names_sorted() {
        let names: Vec<Arc<str>> = ["c", "a", "b"].into_iter().map(Arc::from).collect();
        assert_eq!(sorted_names(true, &names, |n| n == "b"), ["a", "c"]);
        assert!(sorted_names(false, &names, |_| false).is_empty());
    }
}
