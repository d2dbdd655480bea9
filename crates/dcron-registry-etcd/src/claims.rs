//! Fire claims: one transaction per batch, each fire a nested transaction deciding it alone, the
//! claims attached to a shared retention lease.
//!
//! Each fire of a batch is a nested transaction of the batch's transaction:
//!
//! ```text
//! if   tombstone.create_revision == 0      (not tombstoned)
//!  and life.mod_revision == generation     (the request's life is the current one)
//!  and claim.create_revision == 0          (nobody holds the fire)
//! then put claim {claimant, generation, slot} with the retention lease
//! else get tombstone (count), get life (key only), get claim
//! ```
//!
//! etcd applies the whole batch at one revision, atomically; each nested transaction has its own
//! condition, so every fire is decided alone (one fire's state never decides another's). When
//! the condition fails, the reads of the `else` branch, taken at the same revision, say why, and
//! [`dcron_core::claim::decide_claim`] answers in the contract's order: tombstoned, superseded,
//! won earlier by the same claimant (node id and epoch) or lost to another. etcd transactions
//! have no clock to compare with, so this registry never answers `Late`
//! (`Capabilities::clock` is false): the node checks every deadline itself.
//!
//! A batch larger than the server's `--max-txn-ops` allows is split into several transactions
//! (at most `max_txn_ops - 3` fires each: etcd counts the outer transaction's operations plus
//! the widest part of each nested one), sent concurrently over the one connection. A server
//! configured with a lower limit than `EtcdRegistryConfig::max_txn_ops` refuses the transaction
//! as too large; it is then halved until it fits (logged, so the setting can be fixed). A
//! transaction that fails (the connection, the server) fails only its own fires, each answered
//! `Failed`.
//!
//! **Fencing tokens.** The fires of one transaction share its revision, so a token is
//! `create_revision × 128 + slot`, the slot being the fire's position in its transaction (stored
//! in the claim, at most 127): distinct for every claim, and greater for every later
//! transaction, across cleanups and new lives (etcd revisions never go back).
//!
//! **Retention.** A retention lease is shared by the claims of a while rather than granted per
//! fire: a lease with TTL `retention + window` is reused for `window` after it was granted
//! (window = a quarter of the retention, between 1 s and 60 s), so every claim attached to it
//! lives at least `retention` and at most `retention + window` plus etcd's expiry granularity
//! (whole-second TTLs, at least 2 s, checked every 500 ms): within
//! `dcron_core::expiry_tolerance(retention)` for retentions of 1 s and more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dcron_core::claim::{decide_claim, ClaimDecision, Holder};
use dcron_core::{
    check_claims, validate_task_name, Claim, ClaimOutcome, ClaimRequest, Claimant, Error, FireKey,
    Life, Result,
};
use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use crate::error::{malformed, BACKEND};
use crate::{ttl_seconds, EtcdRegistry, Failure};

/// Fires per transaction are also bounded by this, and a token is `revision × TOKEN_SLOTS +
/// slot`.
pub(crate) const TOKEN_SLOTS: usize = 128;

/// Operations of one nested claim transaction's widest part (its three compares, or the three
/// reads of its `else` branch), counted against `--max-txn-ops` with the outer operations.
const NESTED_OPS: usize = 3;

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
    fn forget(&self, id: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.retain(|_, s| s.id != id);
    }
}

/// A retention lease for `retention`: the shared one while it may be reused, else a new one.
async fn retention_lease(reg: &EtcdRegistry, retention: Duration) -> Result<i64> {
    let (ttl, window) = plan(retention);
    if let Some(id) = reg.inner.retention.current(ttl) {
        return Ok(id);
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
    Ok(id)
}

/// A claim as stored: the [`Claim`] fields with `token: 0`, plus the fire's `slot` in its
/// transaction.
fn stored_value(claimant: &Claimant, request: &ClaimRequest, slot: usize) -> Vec<u8> {
    let claim = Claim {
        fire: request.fire.clone(),
        node_id: claimant.node_id.clone(),
        epoch: claimant.epoch,
        generation: request.generation,
        token: 0,
    };
    match serde_json::to_value(&claim) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("slot".into(), slot.into());
            serde_json::Value::Object(fields).to_string().into_bytes()
        }
        // A plain struct always serialises to an object; keep the slot-less form otherwise.
        _ => claim.encode(),
    }
}

/// The fencing token of a claim written at `revision` in `slot`.
fn token(revision: i64, slot: u64) -> Option<u64> {
    u64::try_from(revision)
        .ok()
        .filter(|r| *r > 0)?
        .checked_mul(TOKEN_SLOTS as u64)?
        .checked_add(slot.min(TOKEN_SLOTS as u64 - 1))
}

/// Decodes a stored claim, its token from the key's `create_revision` and the stored slot.
pub(crate) fn decode_claim(key: &str, kv: &KeyValue) -> Result<Claim> {
    let mut claim = crate::sized(key, kv).and_then(|v| Claim::decode(key, v))?;
    let slot = serde_json::from_slice::<serde_json::Value>(kv.value())
        .ok()
        .and_then(|v| v.get("slot").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    claim.token = token(kv.create_revision(), slot).ok_or_else(|| Error::Corrupt {
        key: key.to_string(),
        reason: format!("create revision {}", kv.create_revision()),
    })?;
    Ok(claim)
}

/// One fire of a transaction: the request, its claim key and its retention lease.
struct Planned<'a> {
    request: &'a ClaimRequest,
    claim_key: String,
    lease: i64,
}

fn nested(reg: &EtcdRegistry, claimant: &Claimant, fire: &Planned<'_>, slot: usize) -> TxnOp {
    let keys = reg.keys();
    let task = &fire.request.fire.task;
    let tomb = keys.tombstone(task);
    let life = keys.life(task);
    // A missing life key compares as revision 0: a request of generation 0 (or beyond the
    // revisions) must never match it, so it compares with -1, which no key has.
    let generation = i64::try_from(fire.request.generation)
        .ok()
        .filter(|g| *g > 0)
        .unwrap_or(-1);
    TxnOp::txn(
        Txn::new()
            .when([
                Compare::create_revision(tomb.as_str(), CompareOp::Equal, 0),
                Compare::mod_revision(life.as_str(), CompareOp::Equal, generation),
                Compare::create_revision(fire.claim_key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(
                fire.claim_key.as_str(),
                stored_value(claimant, fire.request, slot),
                Some(PutOptions::new().with_lease(fire.lease)),
            )])
            .or_else([
                TxnOp::get(tomb.as_str(), Some(GetOptions::new().with_count_only())),
                TxnOp::get(life.as_str(), Some(GetOptions::new().with_keys_only())),
                TxnOp::get(fire.claim_key.as_str(), None),
            ]),
    )
}

/// Why the condition of a fire's nested transaction failed, from its `else` reads.
fn refused(claimant: &Claimant, fire: &Planned<'_>, answer: &TxnResponse) -> ClaimOutcome {
    let reads = answer.op_responses();
    let get = |i: usize| match reads.get(i) {
        Some(TxnOpResponse::Get(get)) => Some(get),
        _ => None,
    };
    let (Some(tomb), Some(life), Some(claim)) = (get(0), get(1), get(2)) else {
        return ClaimOutcome::Failed(malformed(
            format!("claim {}", fire.claim_key),
            "the refused claim transaction read nothing",
        ));
    };
    let tombstoned = tomb.count() > 0;
    let life = life.kvs().first().map(|kv| {
        Life::new(
            u64::try_from(kv.mod_revision()).unwrap_or(0),
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        )
    });
    let stored = claim
        .kvs()
        .first()
        .map(|kv| decode_claim(&fire.claim_key, kv));
    let existing = match &stored {
        Some(Ok(c)) => Some(Holder {
            node_id: &c.node_id,
            epoch: c.epoch,
            token: c.token,
        }),
        _ => None,
    };
    match decide_claim(
        tombstoned,
        life.as_ref(),
        existing,
        None,
        claimant,
        fire.request,
    ) {
        ClaimDecision::Answer(outcome) => outcome,
        // The claim exists but does not decode: this fire alone cannot be decided.
        ClaimDecision::Write => match stored {
            Some(Err(e)) => ClaimOutcome::Failed(e),
            _ => ClaimOutcome::Failed(malformed(
                format!("claim {}", fire.claim_key),
                "the claim transaction was refused although every condition holds",
            )),
        },
    }
}

/// Sends one transaction of fires; the outcomes in the order of `fires`.
async fn claim_chunk(
    reg: &EtcdRegistry,
    claimant: &Claimant,
    fires: &[Planned<'_>],
) -> std::result::Result<Vec<ClaimOutcome>, Failure> {
    let ops: Vec<TxnOp> = fires
        .iter()
        .enumerate()
        .map(|(slot, fire)| nested(reg, claimant, fire, slot))
        .collect();
    let txn = Txn::new().and_then(ops);
    let resp = reg
        .raw(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let answers = resp.op_responses();
    if answers.len() != fires.len() {
        return Err(Failure::Mapped(malformed(
            format!("claim {} fire(s)", fires.len()),
            "one answer per nested transaction",
        )));
    }
    Ok(fires
        .iter()
        .zip(answers)
        .enumerate()
        .map(|(slot, (fire, answer))| match answer {
            TxnOpResponse::Txn(t) if t.succeeded() => match token(revision, slot as u64) {
                Some(token) => ClaimOutcome::Won { token },
                None => ClaimOutcome::Failed(malformed(
                    format!("claim {}", fire.claim_key),
                    "no revision in the transaction header",
                )),
            },
            TxnOpResponse::Txn(t) => refused(claimant, fire, &t),
            _ => ClaimOutcome::Failed(malformed(
                format!("claim {}", fire.claim_key),
                "not a nested transaction's answer",
            )),
        })
        .collect())
}

/// A copy of an error for each fire of a transaction that failed as a whole (errors are not
/// `Clone`): the message, and whether it is retryable.
fn copy_error(e: &Error) -> Error {
    if e.is_retryable() {
        Error::unavailable(e.to_string())
    } else {
        Error::Backend {
            backend: BACKEND,
            message: e.to_string(),
            source: None,
        }
    }
}

/// Leases for `requests`, one per distinct TTL.
async fn leases_for(reg: &EtcdRegistry, requests: &[&ClaimRequest]) -> Result<Vec<i64>> {
    let mut by_retention: HashMap<Duration, i64> = HashMap::new();
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let lease = match by_retention.get(&r.retention) {
            Some(id) => *id,
            None => {
                let id = retention_lease(reg, r.retention).await?;
                by_retention.insert(r.retention, id);
                id
            }
        };
        out.push(lease);
    }
    Ok(out)
}

/// Claims one transaction's worth of requests, taking fresh leases once when a shared one
/// turned out to be gone (a claim with a missing lease writes nothing), and halving the
/// transaction when the server allows fewer operations than configured.
fn claim_group<'a>(
    reg: &'a EtcdRegistry,
    claimant: &'a Claimant,
    requests: &'a [&'a ClaimRequest],
) -> futures::future::BoxFuture<'a, Result<Vec<ClaimOutcome>>> {
    Box::pin(claim_group_inner(reg, claimant, requests))
}

async fn claim_group_inner(
    reg: &EtcdRegistry,
    claimant: &Claimant,
    requests: &[&ClaimRequest],
) -> Result<Vec<ClaimOutcome>> {
    let context = || format!("claim {} fire(s) for {claimant}", requests.len());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let leases = leases_for(reg, requests).await?;
        let planned: Vec<Planned<'_>> = requests
            .iter()
            .zip(&leases)
            .map(|(request, lease)| Planned {
                request,
                claim_key: reg
                    .keys()
                    .claim(&request.fire.task, request.fire.instant_millis()),
                lease: *lease,
            })
            .collect();
        match claim_chunk(reg, claimant, &planned).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(f) if f.is_lease_not_found() && attempt < 2 => {
                for lease in leases {
                    reg.inner.retention.forget(lease);
                }
            }
            // The server's `--max-txn-ops` is lower than configured: two halves, each deciding
            // its fires alone, as the whole would have.
            Err(f) if f.is_too_many_ops() && requests.len() > 1 => {
                tracing::warn!(
                    fires = requests.len(),
                    configured = reg.inner.config.max_txn_ops,
                    "etcd refused a claim transaction as too large; configure max_txn_ops to \
                     the server's --max-txn-ops"
                );
                let (a, b) = requests.split_at(requests.len() / 2);
                let (a, b) =
                    futures::join!(claim_group(reg, claimant, a), claim_group(reg, claimant, b));
                let mut outcomes = a?;
                outcomes.extend(b?);
                return Ok(outcomes);
            }
            Err(f) => return Err(f.into_error(&context())),
        }
    }
}

/// [`dcron_core::Registry::claim`] for etcd.
pub(crate) async fn claim_batch(
    reg: &EtcdRegistry,
    claimant: &Claimant,
    requests: &[ClaimRequest],
) -> Result<Vec<ClaimOutcome>> {
    check_claims(requests)?;
    let mut outcomes: Vec<Option<ClaimOutcome>> = requests
        .iter()
        .map(|r| {
            validate_task_name(&r.fire.task)
                .err()
                .map(ClaimOutcome::Failed)
        })
        .collect();
    // A fire asked twice goes once (a transaction may not write one key twice); the copies
    // answer as a retry would.
    let mut first_of: HashMap<&FireKey, usize> = HashMap::new();
    let mut copies: Vec<(usize, usize)> = Vec::new();
    let mut distinct: Vec<usize> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        match first_of.get(&r.fire) {
            Some(&first) => copies.push((i, first)),
            None => {
                first_of.insert(&r.fire, i);
                distinct.push(i);
            }
        }
    }
    let per_txn = reg
        .inner
        .config
        .max_txn_ops
        .saturating_sub(NESTED_OPS)
        .clamp(1, TOKEN_SLOTS);
    let groups: Vec<&[usize]> = distinct.chunks(per_txn).collect();
    let calls = groups.iter().map(|group| {
        let members: Vec<&ClaimRequest> = group.iter().map(|&i| &requests[i]).collect();
        async move { claim_group(reg, claimant, &members).await }
    });
    let answers = futures::future::join_all(calls).await;
    let mut first_error = None;
    let mut decided = 0usize;
    for (group, answer) in groups.iter().zip(answers) {
        match answer {
            Ok(group_outcomes) => {
                decided += group.len();
                for (&i, outcome) in group.iter().zip(group_outcomes) {
                    outcomes[i] = Some(outcome);
                }
            }
            Err(e) => {
                for &i in group.iter() {
                    outcomes[i] = Some(ClaimOutcome::Failed(copy_error(&e)));
                }
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        if decided == 0 {
            return Err(e);
        }
    }
    for (i, first) in copies {
        outcomes[i] = Some(match &outcomes[first] {
            Some(ClaimOutcome::Won { token }) => ClaimOutcome::WonEarlier { token: *token },
            Some(ClaimOutcome::Failed(e)) => ClaimOutcome::Failed(copy_error(e)),
            Some(other) => other.clone(),
            None => ClaimOutcome::Failed(Error::unavailable("not decided")),
        });
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| ClaimOutcome::Failed(Error::unavailable("not decided"))))
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
            // ...and none outlives its retention by more than the tolerance (less etcd's
            // half-second expiry check) once the retention is at least a second.
            if secs >= 1 {
                let bound = retention + dcron_core::expiry_tolerance(retention);
                assert!(
                    ttl + Duration::from_millis(500) <= bound,
                    "{secs}: {ttl:?} > {bound:?}"
                );
            }
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
        leases.forget(8);
        assert_eq!(leases.current(5), Some(7));
        leases.forget(7);
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

    #[test]
    fn tokens_grow_with_the_revision_and_differ_by_slot() {
        assert_eq!(token(1, 0), Some(128));
        assert_eq!(token(1, 127), Some(255));
        assert!(token(2, 0) > token(1, 127));
        assert_eq!(token(0, 3), None);
        assert_eq!(token(-1, 3), None);
        // A slot out of range (damaged value) stays within its revision.
        assert_eq!(token(1, 1000), Some(255));
    }

    #[test]
    fn stored_claims_carry_their_slot() {
        let request = ClaimRequest::new(
            FireKey::new("t", chrono::DateTime::<chrono::Utc>::UNIX_EPOCH),
            4,
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            Duration::from_secs(1),
        );
        let bytes = stored_value(&Claimant::new("n", 2), &request, 17);
        let claim = Claim::decode("k", &bytes).expect("decodes as a claim");
        assert_eq!(
            (claim.node_id.as_str(), claim.epoch, claim.generation),
            ("n", 2, 4)
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v.get("slot").and_then(serde_json::Value::as_u64), Some(17));
    }
}
