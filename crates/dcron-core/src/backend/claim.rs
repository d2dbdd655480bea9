//! The claim rules of [`crate::Registry::claim`] as one pure function.
//!
//! A backend reads what it holds for the name and the fire (inside its transaction, script or
//! compare-and-set), asks [`decide_claim`], and either answers the outcome or writes the claim.
//! [`crate::MemoryRegistry`] does exactly this under its lock; backends whose rules run on the
//! server (a Lua script, a SQL statement) implement the same order, which the conformance suite
//! checks.
//!
//! | order | what the registry holds | answer |
//! |---|---|---|
//! | 1 | a tombstone for the name | `Tombstoned` |
//! | 2 | no life, or a life of another generation than the request's | `Superseded { current }` |
//! | 3 | a claim for the fire by the same claimant (node id and epoch) | `WonEarlier { token }` |
//! | 3 | a claim for the fire by another claimant | `Lost { holder }` |
//! | 4 | nothing, and the registry's clock (if it has one) is past the deadline | `Late` |
//! | 5 | nothing | write the claim: `Won { token }` with a new token |

use chrono::{DateTime, Utc};

use crate::types::{ClaimOutcome, ClaimRequest, Claimant, Life};

/// The claim a registry holds for a fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder<'a> {
    /// The node that holds it.
    pub node_id: &'a str,
    /// That node's registration epoch when it claimed.
    pub epoch: u64,
    /// The claim's fencing token.
    pub token: u64,
}

/// What to do with one claim request.
#[derive(Debug, PartialEq)]
pub enum ClaimDecision {
    /// Answer this outcome; write nothing.
    Answer(ClaimOutcome),
    /// Write the claim with a new token and answer `Won`.
    Write,
}

/// Decides one claim request (see the module table).
///
/// `now` is the registry's own clock, `None` for a registry without one (the node then checks
/// the deadline itself after the reply).
pub fn decide_claim(
    tombstoned: bool,
    life: Option<&Life>,
    existing: Option<Holder<'_>>,
    now: Option<DateTime<Utc>>,
    claimant: &Claimant,
    request: &ClaimRequest,
) -> ClaimDecision {
    if tombstoned {
        return ClaimDecision::Answer(ClaimOutcome::Tombstoned);
    }
    match life {
        Some(l) if l.generation == request.generation => {}
        other => {
            return ClaimDecision::Answer(ClaimOutcome::Superseded {
                current: other.map(|l| l.generation),
            })
        }
    }
    if let Some(h) = existing {
        return ClaimDecision::Answer(
            if h.node_id == claimant.node_id && h.epoch == claimant.epoch {
                ClaimOutcome::WonEarlier { token: h.token }
            } else {
                ClaimOutcome::Lost {
                    holder: Some(h.node_id.to_string()),
                }
            },
        );
    }
    if now.is_some_and(|now| now > request.deadline) {
        return ClaimDecision::Answer(ClaimOutcome::Late);
    }
    ClaimDecision::Write
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FireKey;
    use std::time::Duration;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(s)
    }

    fn req(generation: u64) -> ClaimRequest {
        ClaimRequest::new(
            FireKey::new("t", at(100)),
            generation,
            at(160),
            Duration::from_secs(200),
        )
    }

    #[test]
    fn rules_apply_in_order() {
        let me = Claimant::new("a", 1);
        let life = Life::new(7, at(0));
        let mine = Holder {
            node_id: "a",
            epoch: 1,
            token: 9,
        };
        let old_me = Holder { epoch: 0, ..mine };
        let other = Holder {
            node_id: "b",
            ..mine
        };
        let d = |t, l, e, now, g| decide_claim(t, l, e, now, &me, &req(g));
        assert_eq!(
            d(true, None, Some(mine), Some(at(999)), 7),
            ClaimDecision::Answer(ClaimOutcome::Tombstoned)
        );
        assert_eq!(
            d(false, None, None, None, 7),
            ClaimDecision::Answer(ClaimOutcome::Superseded { current: None })
        );
        assert_eq!(
            d(false, Some(&life), Some(mine), None, 6),
            ClaimDecision::Answer(ClaimOutcome::Superseded { current: Some(7) })
        );
        assert_eq!(
            d(false, Some(&life), Some(mine), Some(at(999)), 7),
            ClaimDecision::Answer(ClaimOutcome::WonEarlier { token: 9 })
        );
        assert_eq!(
            d(false, Some(&life), Some(old_me), None, 7),
            ClaimDecision::Answer(ClaimOutcome::Lost {
                holder: Some("a".into())
            })
        );
        assert_eq!(
            d(false, Some(&life), Some(other), None, 7),
            ClaimDecision::Answer(ClaimOutcome::Lost {
                holder: Some("b".into())
            })
        );
        assert_eq!(
            d(false, Some(&life), None, Some(at(161)), 7),
            ClaimDecision::Answer(ClaimOutcome::Late)
        );
        assert_eq!(
            d(false, Some(&life), None, Some(at(160)), 7),
            ClaimDecision::Write
        );
        assert_eq!(d(false, Some(&life), None, None, 7), ClaimDecision::Write);
    }
}
