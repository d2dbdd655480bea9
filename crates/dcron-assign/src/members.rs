//! Validation and canonical ordering of a member list, shared by every built-in strategy.

use crate::{AssignError, Member};

/// Validates a member list as [`Assigner::prepare`] must, and returns the members that may own
/// tasks (weight > 0), sorted by id.
///
/// Errors, in this order: [`AssignError::DuplicateMember`] when two members (whatever their
/// weights) share an id, then [`AssignError::AllWeightsZero`] when the list is not empty but
/// every weight is 0. An empty list is valid and gives an empty result. Custom [`Assigner`]s can
/// start from this to honour the contract, and to be independent of the input order.
///
/// [`Assigner::prepare`]: crate::Assigner::prepare
/// [`Assigner`]: crate::Assigner
///
/// ```
/// use dcron_assign::{eligible_members, AssignError, Member};
///
/// let members = [Member::new("b", 1), Member::new("z", 0), Member::new("a", 2)];
/// let eligible: Vec<&str> = eligible_members(&members)?.iter().map(|m| m.id.as_str()).collect();
/// assert_eq!(eligible, ["a", "b"]);
/// assert_eq!(eligible_members(&[Member::new("a", 0)]), Err(AssignError::AllWeightsZero));
/// # Ok::<(), AssignError>(())
/// ```
pub fn eligible_members(members: &[Member]) -> Result<Vec<&Member>, AssignError> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].id == pair[1].id) {
        return Err(AssignError::DuplicateMember {
            id: pair[0].id.clone(),
        });
    }
    if !sorted.is_empty() && sorted.iter().all(|m| m.weight == 0) {
        return Err(AssignError::AllWeightsZero);
    }
    sorted.retain(|m| m.weight > 0);
    Ok(sorted)
}

/// The members that may own tasks (weight > 0), sorted by id: the canonical form every
/// built-in strategy works from, which makes results independent of the input order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Eligible {
    /// Ids, sorted ascending (byte-wise), unique.
    pub(crate) ids: Vec<String>,
    /// Weights, parallel to `ids`; all > 0.
    pub(crate) weights: Vec<u32>,
}

impl Eligible {
    /// Validates `members` (see [`eligible_members`]) and keeps those with a positive weight.
    pub(crate) fn from_members(members: &[Member]) -> Result<Self, AssignError> {
        let (ids, weights) = eligible_members(members)?
            .into_iter()
            .map(|m| (m.id.clone(), m.weight))
            .unzip();
        Ok(Self { ids, weights })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// `true` when every eligible member has the same weight.
    pub(crate) fn uniform_weights(&self) -> bool {
        self.weights.windows(2).all(|w| w[0] == w[1])
    }

    pub(crate) fn total_weight(&self) -> u64 {
        self.weights.iter().map(|&w| u64::from(w)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_filters_and_validates() {
        let set = Eligible::from_members(&[
            Member::new("c", 2),
            Member::new("a", 0),
            Member::new("b", 1),
        ])
        .unwrap();
        assert_eq!(set.ids, vec!["b", "c"]);
        assert_eq!(set.weights, vec![1, 2]);
        assert_eq!(set.total_weight(), 3);
        assert!(!set.uniform_weights());

        assert!(Eligible::from_members(&[]).unwrap().is_empty());
        assert_eq!(
            Eligible::from_members(&[Member::new("a", 0), Member::new("b", 0)]),
            Err(AssignError::AllWeightsZero)
        );
        assert_eq!(
            Eligible::from_members(&[
                Member::new("z", 1),
                Member::new("a", 1),
                Member::new("z", 0)
            ]),
            Err(AssignError::DuplicateMember { id: "z".into() })
        );
    }
}
