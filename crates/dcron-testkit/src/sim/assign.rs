//! [`ByNodeName`]: an assigner that places tasks by node *name* instead of node id.
//!
//! Node ids are `<name>-<random uuid>`, so the owner of a task under a hash strategy changes
//! from one run to the next. The simulator gives every process a unique name (`n2`, `n2.1` after
//! a restart) and wraps the default strategy so that it sees only those names: ownership, and
//! with it the whole run, becomes a function of the seed. Placement rules are otherwise the
//! wrapped strategy's.

use std::collections::BTreeMap;
use std::sync::Arc;

use dcron_assign::AssignError;
use dcron_core::{Assigner, Member, Placement};

/// Wraps an [`Assigner`] so that it sees each member's name (the id up to its last `-`).
#[derive(Debug)]
pub struct ByNodeName {
    inner: Arc<dyn Assigner>,
}

impl ByNodeName {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Assigner>) -> Self {
        ByNodeName { inner }
    }
}

/// The name part of a node id `<name>-<uuid>` (the whole id when it has no `-`).
pub fn node_name(id: &str) -> &str {
    id.rsplit_once('-').map_or(id, |(name, _)| name)
}

#[derive(Debug)]
struct NamedPlacement {
    inner: Box<dyn Placement>,
    ids: BTreeMap<String, String>,
}

impl Placement for NamedPlacement {
    fn owner(&self, task: &str, tasks: &[&str]) -> Option<&str> {
        let name = self.inner.owner(task, tasks)?;
        self.ids.get(name).map(String::as_str)
    }
}

impl Assigner for ByNodeName {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn depends_on_task_list(&self) -> bool {
        self.inner.depends_on_task_list()
    }

    fn prepare(&self, members: &[Member]) -> Result<Box<dyn Placement>, AssignError> {
        let mut ids = BTreeMap::new();
        let mut named = Vec::with_capacity(members.len());
        for m in members {
            let name = node_name(&m.id).to_string();
            if ids.insert(name.clone(), m.id.clone()).is_some() {
                return Err(AssignError::DuplicateMember { id: name });
            }
            named.push(Member::new(name, m.weight));
        }
        Ok(Box::new(NamedPlacement {
            inner: self.inner.prepare(&named)?,
            ids,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcron_core::Strategy;

    #[test]
    fn owners_follow_names_not_ids() {
        let a = ByNodeName::new(Strategy::default().assigner());
        let one = a
            .prepare(&[Member::new("n0-aaaa", 1), Member::new("n1-bbbb", 1)])
            .expect("prepare");
        let two = a
            .prepare(&[Member::new("n1-cccc", 1), Member::new("n0-dddd", 1)])
            .expect("prepare");
        for task in ["a", "b", "c", "d", "e", "f", "g"] {
            let x = one.owner(task, &[]).map(node_name);
            let y = two.owner(task, &[]).map(node_name);
            assert!(x.is_some());
            assert_eq!(x, y, "{task}");
        }
        assert_eq!(node_name("n2.1-0123"), "n2.1");
        assert_eq!(node_name("plain"), "plain");
        assert!(matches!(
            a.prepare(&[Member::new("n0-a", 1), Member::new("n0-b", 1)]),
            Err(AssignError::DuplicateMember { .. })
        ));
    }
}
