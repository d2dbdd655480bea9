//! [`Assignment`]: the owner of every task of a list, and the tasks of every member.

/// Result of assigning a task list: the owner of each task and the tasks of each member.
///
/// Tasks are kept sorted and unique; a task whose owner is `None` (no eligible member) is still
/// part of the assignment. Built by [`Placement::assign`](crate::Placement::assign), or from
/// `(task, owner)` pairs with [`FromIterator`] (duplicated tasks keep their first owner).
///
/// ```
/// use dcron_assign::Assignment;
///
/// let assignment: Assignment = [("b", Some("n1")), ("a", Some("n2")), ("c", None)]
///     .into_iter()
///     .collect();
/// assert_eq!(assignment.owner_of("a"), Some("n2"));
/// assert_eq!(assignment.owner_of("c"), None);
/// assert_eq!(assignment.tasks_of("n1").collect::<Vec<_>>(), ["b"]);
/// assert_eq!(assignment.len(), 3);
/// assert_eq!(assignment.unowned().collect::<Vec<_>>(), ["c"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Task names, sorted ascending, unique.
    tasks: Vec<String>,
    /// Owner of `tasks[i]`, as an index into `members`.
    owners: Vec<Option<u32>>,
    /// Members owning at least one task, sorted ascending, unique.
    members: Vec<String>,
    /// Indices into `tasks` of the tasks of `members[j]`, ascending.
    by_member: Vec<Vec<u32>>,
}

impl Assignment {
    /// Builds from sorted, unique `tasks` and, for each, an index into `ids` (sorted, unique).
    pub(crate) fn from_sorted(tasks: &[&str], owners: &[Option<u32>], ids: &[String]) -> Self {
        debug_assert_eq!(tasks.len(), owners.len());
        // Keep only members that own something, remapping indices.
        let mut counts = vec![0usize; ids.len()];
        for owner in owners.iter().flatten() {
            counts[*owner as usize] += 1;
        }
        let mut remap = vec![u32::MAX; ids.len()];
        let mut members = Vec::new();
        let mut by_member = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            if counts[index] > 0 {
                remap[index] = members.len() as u32;
                members.push(id.clone());
                by_member.push(Vec::with_capacity(counts[index]));
            }
        }
        let owners: Vec<Option<u32>> = owners
            .iter()
            .map(|owner| owner.map(|o| remap[o as usize]))
            .collect();
        for (task_index, owner) in owners.iter().enumerate() {
            if let Some(owner) = owner {
                by_member[*owner as usize].push(task_index as u32);
            }
        }
        Self {
            tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
            owners,
            members,
            by_member,
        }
    }

    /// Owner of `task`; `None` when the task is not in the assignment or nobody owns it.
    pub fn owner_of(&self, task: &str) -> Option<&str> {
        let index = self.task_index(task)?;
        self.owners[index].map(|owner| self.members[owner as usize].as_str())
    }

    /// `true` when `task` is part of the assignment (owned or not).
    pub fn contains(&self, task: &str) -> bool {
        self.task_index(task).is_some()
    }

    /// Tasks owned by `member`, sorted ascending; empty for an unknown member.
    pub fn tasks_of(&self, member: &str) -> impl ExactSizeIterator<Item = &str> + '_ {
        let indices: &[u32] = match self.members.binary_search_by(|m| m.as_str().cmp(member)) {
            Ok(j) => &self.by_member[j],
            Err(_) => &[],
        };
        indices.iter().map(|&i| self.tasks[i as usize].as_str())
    }

    /// Number of tasks owned by `member`.
    pub fn count_of(&self, member: &str) -> usize {
        self.tasks_of(member).len()
    }

    /// Members that own at least one task, sorted ascending.
    pub fn members(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.members.iter().map(String::as_str)
    }

    /// Tasks nobody owns (every task, when there were no members), sorted ascending.
    pub fn unowned(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter()
            .filter(|(_, owner)| owner.is_none())
            .map(|(task, _)| task)
    }

    /// Number of distinct tasks (owned or not).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// `true` when there is no task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Every `(task, owner)` pair, in ascending task order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, Option<&str>)> + '_ {
        self.tasks.iter().zip(&self.owners).map(|(task, owner)| {
            (
                task.as_str(),
                owner.map(|o| self.members[o as usize].as_str()),
            )
        })
    }

    fn task_index(&self, task: &str) -> Option<usize> {
        self.tasks.binary_search_by(|t| t.as_str().cmp(task)).ok()
    }
}

impl<'a> FromIterator<(&'a str, Option<&'a str>)> for Assignment {
    fn from_iter<I: IntoIterator<Item = (&'a str, Option<&'a str>)>>(iter: I) -> Self {
        let mut pairs: Vec<(&str, Option<&str>)> = iter.into_iter().collect();
        // Stable sort by task only, so that the first owner of a duplicated task wins.
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        let mut ids: Vec<String> = pairs
            .iter()
            .filter_map(|(_, owner)| owner.map(str::to_owned))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let tasks: Vec<&str> = pairs.iter().map(|(task, _)| *task).collect();
        let owners: Vec<Option<u32>> = pairs
            .iter()
            .map(|(_, owner)| {
                owner.map(|o| {
                    ids.binary_search_by(|id| id.as_str().cmp(o))
                        .map_or(u32::MAX, |i| i as u32)
                })
            })
            .collect();
        Self::from_sorted(&tasks, &owners, &ids)
    }
}

impl<'a> IntoIterator for &'a Assignment {
    type Item = (&'a str, Option<&'a str>);
    type IntoIter = Box<dyn ExactSizeIterator<Item = (&'a str, Option<&'a str>)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_pairs_sorts_dedups_and_indexes() {
        let assignment: Assignment = [
            ("t3", Some("b")),
            ("t1", Some("a")),
            ("t2", Some("b")),
            ("t1", Some("b")),
            ("t4", None),
        ]
        .into_iter()
        .collect();
        assert_eq!(assignment.len(), 4);
        assert!(!assignment.is_empty());
        assert_eq!(assignment.owner_of("t1"), Some("a"));
        assert_eq!(assignment.owner_of("t4"), None);
        assert_eq!(assignment.owner_of("nope"), None);
        assert!(assignment.contains("t4"));
        assert!(!assignment.contains("nope"));
        assert_eq!(assignment.tasks_of("b").collect::<Vec<_>>(), ["t2", "t3"]);
        assert_eq!(assignment.count_of("a"), 1);
        assert_eq!(assignment.tasks_of("zzz").count(), 0);
        assert_eq!(assignment.members().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(assignment.unowned().collect::<Vec<_>>(), ["t4"]);
        let pairs: Vec<_> = (&assignment).into_iter().collect();
        assert_eq!(
            pairs,
            [
                ("t1", Some("a")),
                ("t2", Some("b")),
                ("t3", Some("b")),
                ("t4", None)
            ]
        );
    }

    #[test]
    fn members_without_tasks_are_not_listed() {
        let ids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let assignment = Assignment::from_sorted(&["x", "y"], &[Some(2), Some(2)], &ids);
        assert_eq!(assignment.members().collect::<Vec<_>>(), ["c"]);
        assert_eq!(assignment.owner_of("x"), Some("c"));
        assert_eq!(assignment.count_of("a"), 0);
    }

    #[test]
    fn empty() {
        let assignment = Assignment::default();
        assert!(assignment.is_empty());
        assert_eq!(assignment.iter().len(), 0);
    }
}
