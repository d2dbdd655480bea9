//! Fire claims: one create-if-absent transaction per fire, sent concurrently, attached to a
//! shared retention lease.
//!
//! Each claim is `if tombstone.create_revision == 0 and claim.create_revision == 0 then put claim
//! (with the retention lease) else count tombstone`: `Won` when the put happened, `Tombstoned`
//! when the tombstone exists, `Lost` otherwise. The fencing token is the revision of the
//! transaction, which is also the claim key's `create_revision`: non-zero, unique across the
//! cluster and increasing. (The stored JSON carries `token: 0`; readers take the token from the
//! key's `create_revision`, as [`dcron_core::Registry::list_claims`] does.)
//!
//! A retention lease is shared by the claims of a while rather than granted per fire: a lease
//! with TTL `retention + window` is reused for `window` after it was granted (window = a quarter
//! of the retention, between 1 s and 60 s), so every claim attached to it lives at least
//! `retention` and at most `retention + window` (plus etcd's expiry granularity).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dcron_core::{Claim, ClaimOutcome, FireKey, Result};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use futures::stream::{self, StreamExt};

use crate::{ttl_seconds, EtcdRegistry, Failure};

/// The most claim transactions of one batch in flight at once.
const MAX_IN_FLIGHT: usize = 64;

/// The retention leases currently handed out, by TTL in seconds.
#[derive(Debug, Default)]
pub(crate) struct RetentionLeases {
    leases: Mutex<HashMap<i64, Shared>>,
}

#[derive(Clone, Copy, Debug)]
struct Shared {
    id: i64,
    reuse_until: Instant,
}

/// The lease TTL (seconds) and the reuse window for a retention.
fn plan(retention: Duration) -> (i64, Duration) {
    let window = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    (ttl_seconds(retention.saturating_add(window)), window)
}

impl RetentionLeases {
    fn current(&self, ttl: i64) -> Option<i64> {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(&ttl)
            .filter(|s| Instant::now() < s.reuse_until)
            .map(|s| s.id)
    }

    fn store(&self, ttl: i64, shared: Shared) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.retain(|_, s| Instant::now() < s.reuse_until);
        leases.insert(ttl, shared);
    }

    /// Forgets a lease the server no longer knows (revoked, or expired early).
    fn forget(&self, ttl: i64, id: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if leases.get(&ttl).is_some_and(|s| s.id == id) {
            leases.remove(&ttl);
        }
    }
}

/// A retention lease for `retention`: the shared one while it may be reused, else a new one.
async fn retention_lease(reg: &EtcdRegistry, retention: Duration) -> Result<(i64, i64)> {
    let (ttl, window) = plan(retention);
    if let Some(id) = reg.inner.retention.current(ttl) {
        return Ok((ttl, id));
    }
    // Measured before the grant, so the lease surely outlives `granted + window + retention`.
    let started = Instant::now();
    let grant = reg
        .call(
            "claim: grant retention lease for",
            reg.keys().claims_prefix().as_str(),
            |mut c| async move { c.lease_grant(ttl, None).await },
        )
        .await?;
    let id = grant.id();
    reg.inner.retention.store(
        ttl,
        Shared {
            id,
            reuse_until: started + window,
        },
    );
    Ok((ttl, id))
}

async fn claim_one(
    reg: &EtcdRegistry,
    fire: &FireKey,
    node_id: &str,
    lease: i64,
) -> std::result::Result<ClaimOutcome, Failure> {
    let keys = reg.keys();
    let tomb = keys.tombstone(&fire.task);
    let claim = keys.claim(&fire.task, fire.instant_millis());
    let value = Claim {
        fire: fire.clone(),
        node_id: node_id.to_string(),
        token: 0,
    }
    .encode();
    let txn = Txn::new()
        .when([
            Compare::create_revision(tomb.as_str(), CompareOp::Equal, 0),
            Compare::create_revision(claim.as_str(), CompareOp::Equal, 0),
        ])
        .and_then([TxnOp::put(
            claim.as_str(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(
            tomb.as_str(),
            Some(GetOptions::new().with_count_only()),
        )]);
    let resp = reg
        .raw(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
    if resp.succeeded() {
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        return match u64::try_from(revision) {
            Ok(token) if token > 0 => Ok(ClaimOutcome::Won { token }),
            _ => Err(Failure::Mapped(crate::error::malformed(
                format!("claim {claim}"),
                "no revision in the transaction header",
            ))),
        };
    }
    let tombstoned = matches!(
        resp.op_responses().first(),
        Some(TxnOpResponse::Get(get)) if get.count() > 0
    );
    Ok(if tombstoned {
        ClaimOutcome::Tombstoned
    } else {
        ClaimOutcome::Lost
    })
}

/// Claims the distinct fires of a batch concurrently; outcomes in the order of `fires`.
async fn claim_distinct(
    reg: &EtcdRegistry,
    fires: &[&FireKey],
    node_id: &str,
    lease: i64,
) -> Vec<std::result::Result<ClaimOutcome, Failure>> {
    // Owned inputs: a closure over borrowed fires trips the `Send` check of `async_trait`.
    let owned: Vec<FireKey> = fires.iter().map(|f| (*f).clone()).collect();
    let node_id = node_id.to_string();
    stream::iter(owned.into_iter().map(move |fire| {
        let (reg, node_id) = (reg.clone(), node_id.clone());
        async move { claim_one(&reg, &fire, &node_id, lease).await }
    }))
    .buffered(MAX_IN_FLIGHT)
    .collect()
    .await
}

/// [`dcron_core::Registry::claim`] for etcd.
pub(crate) async fn claim_batch(
    reg: &EtcdRegistry,
    fires: &[FireKey],
    node_id: &str,
    retention: Duration,
) -> Result<Vec<ClaimOutcome>> {
    if fires.is_empty() {
        return Ok(Vec::new());
    }
    // A repeated fire is answered `Lost` without asking: only its first occurrence may win.
    let mut first_index: HashMap<&FireKey, usize> = HashMap::new();
    let mut distinct: Vec<&FireKey> = Vec::new();
    let slots: Vec<Option<usize>> = fires
        .iter()
        .map(|fire| match first_index.get(fire) {
            Some(_) => None,
            None => {
                first_index.insert(fire, distinct.len());
                distinct.push(fire);
                Some(distinct.len() - 1)
            }
        })
        .collect();

    let (ttl, mut lease) = retention_lease(reg, retention).await?;
    let mut results = claim_distinct(reg, &distinct, node_id, lease).await;
    // The shared lease may have been revoked or have expired early (a claim transaction with a
    // missing lease writes nothing): take a new one and claim those fires again.
    if results
        .iter()
        .any(|r| matches!(r, Err(f) if f.is_lease_not_found()))
    {
        reg.inner.retention.forget(ttl, lease);
        lease = retention_lease(reg, retention).await?.1;
        let retry: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(f) if f.is_lease_not_found()))
            .map(|(i, _)| i)
            .collect();
        let again: Vec<&FireKey> = retry.iter().map(|&i| distinct[i]).collect();
        let answers = claim_distinct(reg, &again, node_id, lease).await;
        for (i, answer) in retry.into_iter().zip(answers) {
            results[i] = answer;
        }
    }

    let mut outcomes = Vec::with_capacity(distinct.len());
    for (fire, result) in distinct.iter().zip(results) {
        match result {
            Ok(outcome) => outcomes.push(outcome),
            Err(f) => {
                let key = reg.keys().claim(&fire.task, fire.instant_millis());
                return Err(f.into_error(&format!("claim {key} for node {node_id}")));
            }
        }
    }
    Ok(slots
        .into_iter()
        .map(|slot| slot.map_or(ClaimOutcome::Lost, |i| outcomes[i]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_claim_lives_at_least_its_retention() {
        for secs in [0u64, 1, 2, 3, 10, 60, 600, 86_400] {
            let retention = Duration::from_secs(secs);
            let (ttl, window) = plan(retention);
            let ttl = Duration::from_secs(u64::try_from(ttl).expect("positive"));
            // A claim attached at the end of the reuse window still has `retention` left.
            assert!(ttl >= window + retention, "{secs}: {ttl:?} {window:?}");
            assert!(window >= Duration::from_secs(1) && window <= Duration::from_secs(60));
        }
        let (ttl, window) = plan(Duration::from_millis(1500));
        assert_eq!((ttl, window), (3, Duration::from_secs(1)));
    }

    #[test]
    fn leases_are_reused_only_within_their_window() {
        let leases = RetentionLeases::default();
        let now = Instant::now();
        leases.store(
            5,
            Shared {
                id: 7,
                reuse_until: now + Duration::from_secs(60),
            },
        );
        assert_eq!(leases.current(5), Some(7));
        assert_eq!(leases.current(6), None);
        leases.forget(5, 8);
        assert_eq!(leases.current(5), Some(7));
        leases.forget(5, 7);
        assert_eq!(leases.current(5), None);
        leases.store(
            5,
            Shared {
                id: 9,
                reuse_until: now,
            },
        );
        assert_eq!(leases.current(5), None);
    }
}
