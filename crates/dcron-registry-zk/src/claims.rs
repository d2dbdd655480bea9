//! Fire claims: create-only znodes under the task's state znode, fenced by the state.
//!
//! A fire `(task, instant)` is claimed at `{root}/tasks/{task}/{instant ms}`, whatever the life
//! of the task: the generation, the claimant and the retention are in the znode's data, so a
//! claim made in one life is met by every later life of the name until its retention ends.
//! Deciding one request:
//!
//! 1. **R1**: read the task's state. Tombstoned → `Tombstoned`; no life or another generation
//!    → `Superseded`. Nothing is written in these cases.
//! 2. **Create** the claim znode (TTL = retention; data = claimant, generation, retention).
//!    `NodeExists`: read it; a claim whose stored expiry (`ctime` + retention) is still ahead
//!    of the server's clock is the holder, of whatever generation (`WonEarlier` for the same
//!    claimant, else `Lost`); an expired one is taken over by creating its child `n` (then
//!    `n/n`, …): the server refuses to delete a znode with children and to create a child
//!    under a deleted znode, so the chain can only be collected from its end and a takeover
//!    can only land on the very znode judged expired (checked by its `czxid` after the
//!    create).
//! 3. **R2**: read the state again. If its `fence` (the version of the last change that can
//!    refuse a claim: a tombstone, a new or removed life) is the one R1 read, nothing that
//!    refuses claims happened between R1 and R2 — and the create (or the read of the holder)
//!    happened in between — so the answer is exactly the one the rules give at that moment.
//!    A `Won` also stands when R2's version is R1's plus one and R2's `mzxid` is above the
//!    claim's `czxid`: the one write since R1 came after the create, so the state at the create
//!    was R1's. Otherwise the request is decided again from R2; a claim this call created
//!    stays (see below).
//!
//! Nothing removes a claim before its retention ends: not cleanup, a force write, a new life,
//! nor a call that created a claim it cannot confirm at R2. Such a claim may already have
//! answered another call (`Lost`, or `WonEarlier` to the same claimant), so removing it could
//! let a second claimant win a fire that one was told it holds. It stays held by its claimant,
//! who was answered from R2 (`Tombstoned`, `Superseded`) and runs the fire only if it claims it
//! again (`WonEarlier`): a race with a tombstone or a new life can cost that fire its run,
//! never add a second one. The one znode a call removes again is a takeover that landed under a claim
//! re-created since it was judged expired: that claim is fresh, so no walk reaches the
//! takeover below it before it is removed.
//!
//! The fencing token is the claim znode's `czxid`: unique, and greater than every zxid before
//! it in the ensemble, so tokens of a name increase strictly across cleanups and new lives.

use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use dcron_core::{
    check_claims, validate_task_name, Claim, ClaimOutcome, ClaimRequest, Claimant, CorruptEntry,
    Error, FireKey, Listing, Result,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use zookeeper_async::{CreateMode, ZkError};

use crate::keys::{parse_claim_name, SUCCESSOR};
use crate::names::Snapshot;
use crate::registry::{ZkRegistry, CONCURRENCY};

/// How many times one request is decided again after the task's state moved under it.
const MAX_ROUNDS: usize = 8;

/// How deep a chain of takeovers is followed.
const MAX_CHAIN: usize = 64;

/// The longest TTL ZooKeeper accepts on a znode (40 bits of milliseconds).
const MAX_TTL_MS: u64 = (1 << 40) - 1;

/// The data of a claim znode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClaimData {
    pub(crate) node_id: String,
    pub(crate) epoch: u64,
    pub(crate) generation: u64,
    pub(crate) retention_ms: u64,
}

impl ClaimData {
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<ClaimData> {
        dcron_core::backend::check_stored_size(key, bytes.len(), crate::MAX_VALUE_BYTES)?;
        serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// When the claim expires, by the server's clock (ms since the epoch).
    pub(crate) fn expiry(&self, ctime: i64) -> i64 {
        ctime.saturating_add(i64::try_from(self.retention_ms).unwrap_or(i64::MAX))
    }
}

/// The retention in whole milliseconds, within what a TTL znode accepts.
fn retention_ms(retention: Duration) -> u64 {
    u64::try_from(retention.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TTL_MS)
}

/// The server's clock, read at most once (lazily) for the requests sharing it.
#[derive(Default)]
struct ServerClock(OnceCell<i64>);

impl ServerClock {
    async fn now(&self, reg: &ZkRegistry) -> Result<i64> {
        self.0.get_or_try_init(|| reg.server_now()).await.copied()
    }
}

/// Who holds a fire after step 2.
enum Found {
    /// This call created the claim (the first unexpired one of the fire's chain) in the
    /// transaction `zxid`.
    Created { token: u64, zxid: i64 },
    /// An unexpired claim held by this claimant or another.
    Held {
        node_id: String,
        epoch: u64,
        token: u64,
    },
}

impl Found {
    fn outcome(&self, claimant: &Claimant) -> ClaimOutcome {
        match self {
            Found::Created { token, .. } => ClaimOutcome::Won { token: *token },
            Found::Held {
                node_id,
                epoch,
                token,
            } => {
                if *node_id == claimant.node_id && *epoch == claimant.epoch {
                    ClaimOutcome::WonEarlier { token: *token }
                } else {
                    ClaimOutcome::Lost {
                        holder: Some(node_id.clone()),
                    }
                }
            }
        }
    }
}

fn token_of(czxid: i64) -> u64 {
    u64::try_from(czxid).unwrap_or(0).max(1)
}

impl ZkRegistry {
    pub(crate) async fn claim_fires(
        &self,
        claimant: &Claimant,
        requests: &[ClaimRequest],
    ) -> Result<Vec<ClaimOutcome>> {
        check_claims(requests)?;
        // A fire asked twice is decided once; the copies answer as a retry would.
        let mut first_of: Vec<usize> = Vec::with_capacity(requests.len());
        let mut seen = std::collections::HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            first_of.push(
                *seen
                    .entry((r.fire.task.as_str(), r.fire.instant_millis()))
                    .or_insert(i),
            );
        }
        // R1 of every task of the batch at once.
        let mut tasks: Vec<String> = requests
            .iter()
            .map(|r| r.fire.task.clone())
            .filter(|t| validate_task_name(t).is_ok())
            .collect();
        tasks.sort_unstable();
        tasks.dedup();
        let snapshots: std::collections::HashMap<String, Result<Snapshot>> =
            futures::stream::iter(tasks)
                .map(|t| async move {
                    let s = self.read_state(&t).await;
                    (t, s)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let clock = Arc::new(ServerClock::default());
        let firsts: Vec<usize> = (0..requests.len()).filter(|i| first_of[*i] == *i).collect();
        let decided: Vec<(usize, ClaimOutcome)> = futures::stream::iter(firsts)
            .map(|i| {
                let r = &requests[i];
                let first = snapshots.get(&r.fire.task).map(|s| match s {
                    Ok(s) => Ok(s.clone()),
                    Err(e) if e.is_retryable() => Err(Error::unavailable(e.to_string())),
                    Err(e) => Err(Error::Backend {
                        backend: crate::conn::BACKEND,
                        message: e.to_string(),
                        source: None,
                    }),
                });
                let clock = clock.clone();
                async move { (i, self.claim_one(claimant, r, first, &clock).await) }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut outcomes: Vec<Option<ClaimOutcome>> = vec![None; requests.len()];
        for (i, o) in decided {
            outcomes[i] = Some(o);
        }
        let mut out = Vec::with_capacity(requests.len());
        for (i, f) in first_of.iter().enumerate() {
            let o = match (&outcomes[*f], *f == i) {
                (Some(o), true) => o.clone(),
                (Some(ClaimOutcome::Won { token }), false) => {
                    ClaimOutcome::WonEarlier { token: *token }
                }
                (Some(o), false) => o.clone(),
                (None, _) => ClaimOutcome::Failed(Error::unavailable("claim not decided")),
            };
            out.push(o);
        }
        // Nothing could be decided at all: the registry is unreachable.
        if !out.is_empty()
            && out
                .iter()
                .all(|o| matches!(o, ClaimOutcome::Failed(e) if e.is_retryable()))
        {
            if let Some(ClaimOutcome::Failed(e)) = out.pop() {
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Decides one request (see the module docs).
    async fn claim_one(
        &self,
        claimant: &Claimant,
        request: &ClaimRequest,
        first: Option<Result<Snapshot>>,
        shared_clock: &ServerClock,
    ) -> ClaimOutcome {
        let task = request.fire.task.as_str();
        if let Err(e) = validate_task_name(task) {
            return ClaimOutcome::Failed(e);
        }
        let mut next = first;
        let mut own_clock = ServerClock::default();
        for round in 0..MAX_ROUNDS {
            let snap = match next.take() {
                Some(Ok(s)) => s,
                Some(Err(e)) => return ClaimOutcome::Failed(e),
                None => match self.read_state(task).await {
                    Ok(s) => s,
                    Err(e) => return ClaimOutcome::Failed(e),
                },
            };
            if snap.state.tombstone.is_some() {
                return ClaimOutcome::Tombstoned;
            }
            match snap.state.life {
                Some(l) if l.generation == request.generation => {}
                other => {
                    return ClaimOutcome::Superseded {
                        current: other.map(|l| l.generation),
                    }
                }
            }
            // The shared clock was read after every R1 of the batch; a later round reads its
            // own, after its own R1.
            let clock = if round == 0 { shared_clock } else { &own_clock };
            let found = match self.find_holder(claimant, request, clock).await {
                Ok(f) => f,
                Err(e) => return ClaimOutcome::Failed(e),
            };
            let after = match self.read_state(task).await {
                Ok(s) => s,
                Err(e) => {
                    return ClaimOutcome::Failed(Error::Unavailable {
                        message: format!(
                            "zookeeper: claim of {} not confirmed (retrying as the same \
                             claimant is safe): {e}",
                            request.fire
                        ),
                        source: Some(Box::new(e)),
                    })
                }
            };
            if after.state.fence == snap.state.fence
                && after.state.tombstone.is_none()
                && after.state.life == snap.state.life
            {
                return found.outcome(claimant);
            }
            // One write landed on the state since R1, and after the claim was created: at the
            // create, the state was still R1's, so `Won` is the rules' answer at that moment.
            if let Found::Created { zxid, .. } = found {
                let one_write = matches!(
                    (snap.version, after.version),
                    (Some(r1), Some(r2)) if i64::from(r2) == i64::from(r1) + 1
                );
                if one_write && zxid < after.mzxid {
                    return found.outcome(claimant);
                }
            }
            // Decided again from R2. A claim created here is kept: it may already have
            // answered another call, and claims end only with their retention.
            next = Some(Ok(after));
            own_clock = ServerClock::default();
        }
        ClaimOutcome::Failed(Error::unavailable(format!(
            "zookeeper: the state of task `{task}` kept changing while {} was claimed",
            request.fire
        )))
    }

    /// Step 2: creates the claim, or finds its holder, taking an expired claim over.
    async fn find_holder(
        &self,
        claimant: &Claimant,
        request: &ClaimRequest,
        clock: &ServerClock,
    ) -> Result<Found> {
        let fire = &request.fire;
        let root = self.layout().claim(&fire.task, fire.instant_millis());
        let ms = retention_ms(request.retention);
        let data = serde_json::to_vec(&ClaimData {
            node_id: claimant.node_id.clone(),
            epoch: claimant.epoch,
            generation: request.generation,
            retention_ms: ms,
        })
        .unwrap_or_default();
        let mut path = root.clone();
        // The czxid of the expired claim the current `path` takes over.
        let mut expired_parent: Option<i64> = None;
        for _ in 0..MAX_CHAIN {
            let ttl = self.ttl_claims();
            let (mode, ttl_value) = if ttl {
                (
                    CreateMode::PersistentWithTTL,
                    Some(Duration::from_millis(ms)),
                )
            } else {
                (CreateMode::Persistent, None)
            };
            let started = Instant::now();
            let created = self
                .conn()
                .create(
                    &path,
                    data.clone(),
                    mode,
                    ttl_value,
                    &[ZkError::NodeExists, ZkError::NoNode, ZkError::Unimplemented],
                )
                .await?;
            match created {
                Ok((_, stat)) => {
                    let mine = Found::Created {
                        token: token_of(stat.czxid),
                        zxid: stat.czxid,
                    };
                    let Some(parent_czxid) = expired_parent else {
                        return Ok(mine);
                    };
                    // The takeover must sit on the very claim judged expired. Otherwise that
                    // claim was collected and created again meanwhile: the fresh one holds the
                    // fire, no walk passes it, and the takeover under it is removed again.
                    let parent = parent_of(&path);
                    match self.conn().exists(parent).await? {
                        Some(s) if s.czxid == parent_czxid => return Ok(mine),
                        _ => {
                            self.retract(&path, started, request.retention).await;
                            path = root.clone();
                            expired_parent = None;
                        }
                    }
                }
                Err(ZkError::Unimplemented) if ttl => {
                    // The server stopped offering TTL znodes: fall back, and say so.
                    self.start_sweeper();
                }
                Err(ZkError::Unimplemented) => {
                    return Err(crate::conn::map_err(
                        ZkError::Unimplemented,
                        "create",
                        &path,
                    ))
                }
                Err(ZkError::NoNode) => {
                    if expired_parent.is_none() {
                        return Err(Error::Backend {
                            backend: crate::conn::BACKEND,
                            message: format!(
                                "the state znode of task `{}` vanished under a claim",
                                fire.task
                            ),
                            source: None,
                        });
                    }
                    // The expired claim was collected meanwhile: start over at the root.
                    path = root.clone();
                    expired_parent = None;
                }
                Err(_) => {
                    let Some((bytes, stat)) = self.conn().get_data(&path).await? else {
                        continue;
                    };
                    let held = ClaimData::decode(&path, &bytes)?;
                    let now = clock.now(self).await?;
                    if held.expiry(stat.ctime) > now {
                        return Ok(Found::Held {
                            node_id: held.node_id,
                            epoch: held.epoch,
                            token: token_of(stat.czxid),
                        });
                    }
                    expired_parent = Some(stat.czxid);
                    path = format!("{path}/{SUCCESSOR}");
                }
            }
        }
        Err(Error::Backend {
            backend: crate::conn::BACKEND,
            message: format!("the claim chain of {fire} is longer than {MAX_CHAIN}"),
            source: None,
        })
    }

    /// Removes a takeover this call created under a claim other than the one it judged expired
    /// (see `find_holder`), while it is certainly fresh (well within its retention, so nobody
    /// can have taken it over or collected it and made the path another's). Otherwise it is
    /// left: it expires by itself. Nothing else ever removes a claim before its retention ends.
    async fn retract(&self, path: &str, created: Instant, retention: Duration) {
        if created.elapsed() >= retention / 2 {
            tracing::debug!(znode = %path, "zookeeper: a claim to retract is too old; it will expire");
            return;
        }
        if let Err(e) = self
            .conn()
            .delete(
                path,
                Some(0),
                &[ZkError::NoNode, ZkError::BadVersion, ZkError::NotEmpty],
            )
            .await
        {
            tracing::debug!(znode = %path, error = %e, "zookeeper: could not retract a claim; it will expire");
        }
    }

    /// Lists the holder of every claimed fire of `task`, whatever the generation it was claimed
    /// in and whether the name has a life now: the first unexpired claim of each chain.
    pub(crate) async fn list_fire_claims(&self, task: &str) -> Result<Listing<Claim>> {
        validate_task_name(task)?;
        let dir = self.layout().task(task);
        let roots: Vec<(String, i64)> = self
            .conn()
            .children(&dir)
            .await?
            .into_iter()
            .filter_map(|c| {
                let ms = parse_claim_name(&c)?;
                Some((c, ms))
            })
            .collect();
        if roots.is_empty() {
            return Ok(Listing::default());
        }
        let now = self.server_now().await?;
        let found: Vec<Result<Option<std::result::Result<Claim, CorruptEntry>>>> =
            futures::stream::iter(roots)
                .map(|(child, ms)| {
                    let path = format!("{dir}/{child}");
                    async move { self.holder_for_listing(task, &path, ms, now).await }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let mut listing = Listing::default();
        for f in found {
            match f? {
                Some(Ok(c)) => listing.items.push(c),
                Some(Err(c)) => listing.corrupt.push(c),
                None => {}
            }
        }
        Ok(listing)
    }

    /// The unexpired holder of the chain at `path`, if any.
    async fn holder_for_listing(
        &self,
        task: &str,
        path: &str,
        ms: i64,
        now: i64,
    ) -> Result<Option<std::result::Result<Claim, CorruptEntry>>> {
        let mut path = path.to_string();
        for _ in 0..MAX_CHAIN {
            let Some((bytes, stat)) = self.conn().get_data(&path).await? else {
                return Ok(None);
            };
            let data = match ClaimData::decode(&path, &bytes) {
                Ok(d) => d,
                Err(e) => {
                    return Ok(Some(Err(CorruptEntry {
                        key: path.clone(),
                        reason: e.to_string(),
                    })))
                }
            };
            if data.expiry(stat.ctime) > now {
                let Some(instant) = DateTime::from_timestamp_millis(ms) else {
                    return Ok(None);
                };
                return Ok(Some(Ok(Claim {
                    fire: FireKey::new(task, instant),
                    node_id: data.node_id,
                    epoch: data.epoch,
                    generation: data.generation,
                    token: token_of(stat.czxid),
                })));
            }
            if stat.num_children == 0 {
                return Ok(None);
            }
            path = format!("{path}/{SUCCESSOR}");
        }
        Ok(None)
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_fits_a_ttl() {
        assert_eq!(retention_ms(Duration::from_micros(10)), 1);
        assert_eq!(retention_ms(Duration::from_secs(2)), 2000);
        assert_eq!(retention_ms(Duration::MAX), MAX_TTL_MS);
        let d = ClaimData {
            node_id: "a".into(),
            epoch: 1,
            generation: 2,
            retention_ms: 500,
        };
        assert_eq!(d.expiry(1000), 1500);
        assert_eq!(parent_of("/a/b/n"), "/a/b");
    }
}
