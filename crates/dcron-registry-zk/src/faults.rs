//! [`FaultInjector`]: a hook in the connection layer that fails, or drops the reply of, one
//! chosen request, for tests that prove every operation survives a fault between any two steps.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// What happens to the request a [`FaultInjector`] is armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The request is never sent: the call fails as on a connection loss before sending.
    Fail,
    /// The request is sent and applied by the server, and its reply is thrown away: the call
    /// fails as on a connection loss after sending (the outcome is unknown to the caller).
    DropReply,
}

const NONE: u8 = 0;
const FAIL: u8 = 1;
const DROP: u8 = 2;

/// Injects one fault into the requests a [`crate::ZkRegistry`] sends, for tests.
///
/// Give a clone to [`crate::ZkRegistryConfig::fault_injector`]; then [`FaultInjector::arm`] it
/// before an operation: the `k`-th request sent from then on (counting from 1, across every
/// session of the registry) fails or loses its reply. [`FaultInjector::sent`] tells how many
/// requests were counted, so a test can run an operation once unarmed to learn its number of
/// requests, then once armed for every `k` up to it.
///
/// ```
/// use dcron_registry_zk::{Fault, FaultInjector};
///
/// let faults = FaultInjector::new();
/// faults.arm(2, Fault::DropReply);
/// assert_eq!(faults.sent(), 0);
/// assert!(!faults.fired());
/// ```
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Requests counted since the last `arm` or `reset`.
    sent: AtomicU64,
    /// The request number to hit (0: none).
    target: AtomicU64,
    kind: AtomicU8,
    fired: AtomicU64,
}

impl FaultInjector {
    /// An injector that injects nothing until armed.
    pub fn new() -> Self {
        FaultInjector::default()
    }

    /// Restarts the count and makes the `k`-th request from now on (`k >= 1`) suffer `fault`.
    /// `k = 0` only restarts the count.
    pub fn arm(&self, k: u64, fault: Fault) {
        let i = &self.inner;
        i.target.store(0, Ordering::SeqCst);
        i.sent.store(0, Ordering::SeqCst);
        i.fired.store(0, Ordering::SeqCst);
        i.kind.store(
            match fault {
                Fault::Fail => FAIL,
                Fault::DropReply => DROP,
            },
            Ordering::SeqCst,
        );
        i.target.store(k, Ordering::SeqCst);
    }

    /// Restarts the count and injects nothing.
    pub fn reset(&self) {
        let i = &self.inner;
        i.target.store(0, Ordering::SeqCst);
        i.kind.store(NONE, Ordering::SeqCst);
        i.sent.store(0, Ordering::SeqCst);
        i.fired.store(0, Ordering::SeqCst);
    }

    /// How many requests were counted since the last [`FaultInjector::arm`] or
    /// [`FaultInjector::reset`].
    pub fn sent(&self) -> u64 {
        self.inner.sent.load(Ordering::SeqCst)
    }

    /// Whether the armed fault was injected.
    pub fn fired(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst) > 0
    }

    /// Counts one request and answers the fault it suffers, if any.
    pub(crate) fn next(&self) -> Option<Fault> {
        let i = &self.inner;
        let n = i.sent.fetch_add(1, Ordering::SeqCst) + 1;
        if i.target.load(Ordering::SeqCst) != n {
            return None;
        }
        i.fired.fetch_add(1, Ordering::SeqCst);
        match i.kind.load(Ordering::SeqCst) {
            FAIL => Some(Fault::Fail),
            DROP => Some(Fault::DropReply),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_exactly_the_kth_request() {
        let f = FaultInjector::new();
        assert_eq!(f.next(), None);
        f.arm(3, Fault::Fail);
        assert_eq!(f.next(), None);
        assert_eq!(f.next(), None);
        assert_eq!(f.next(), Some(Fault::Fail));
        assert_eq!(f.next(), None);
        assert!(f.fired());
        assert_eq!(f.sent(), 4);
        f.reset();
        assert!(!f.fired());
        assert_eq!(f.sent(), 0);
    }
}
