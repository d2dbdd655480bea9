//! The fires this process has started: a claim answered `WonEarlier` (a retry after a lost
//! reply, or a catch-up of an instant this node claimed before) starts a fire only if no other
//! path of this process started it already.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::types::FireKey;

/// Started fires, by instant, until their deadline has passed (after it no claim can be won
/// for them any more, so they need not be remembered).
#[derive(Debug, Default)]
pub(crate) struct Launched {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Task names started, by the fire's instant in milliseconds.
    by_instant: BTreeMap<i64, HashSet<String>>,
    /// `(deadline, instant)` of each bucket's latest deadline, for forgetting.
    deadlines: BTreeMap<i64, i64>,
}

impl Launched {
    /// Records that `fire` (whose deadline is `deadline`) starts now; `false` when this
    /// process started it already.
    pub(crate) fn insert(&self, fire: &FireKey, deadline: DateTime<Utc>) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let instant = fire.instant_millis();
        let bucket = inner.by_instant.entry(instant).or_default();
        if bucket.contains(&fire.task) {
            return false;
        }
        bucket.insert(fire.task.clone());
        let d = deadline.timestamp_millis();
        let latest = inner.deadlines.entry(instant).or_insert(d);
        *latest = (*latest).max(d);
        true
    }

    /// Forgets the fires whose deadline passed before `now`.
    pub(crate) fn forget_before(&self, now: DateTime<Utc>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = now.timestamp_millis();
        let expired: Vec<i64> = inner
            .deadlines
            .iter()
            .filter(|(_, deadline)| **deadline < now)
            .map(|(instant, _)| *instant)
            .collect();
        for instant in expired {
            inner.deadlines.remove(&instant);
            inner.by_instant.remove(&instant);
        }
    }

    /// How many fires are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_instant.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::seconds(s)
    }

    #[test]
    fn a_fire_starts_once_until_its_deadline_passed() {
        let l = Launched::default();
        let a = FireKey::new("a", at(10));
        assert!(l.insert(&a, at(70)));
        assert!(!l.insert(&a, at(70)));
        assert!(l.insert(&FireKey::new("b", at(10)), at(20)));
        assert!(l.insert(&FireKey::new("a", at(11)), at(71)));
        l.forget_before(at(70));
        assert_eq!(
            l.len(),
            3,
            "the bucket lives as long as its latest deadline"
        );
        l.forget_before(at(71));
        assert_eq!(l.len(), 1);
        l.forget_before(at(72));
        assert_eq!(l.len(), 0);
    }
}
