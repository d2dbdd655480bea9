//! The claim sweeper: collects claim znodes when they are not TTL znodes.
//!
//! Only used when the server has no TTL znodes (`extendedTypesEnabled=false`) or
//! [`crate::ZkRegistryConfig::ttl_claims`] is `false`. It only collects garbage: an expired
//! claim already counts as absent for claims and listings. One registry at a time sweeps a
//! namespace: the one whose shared session holds the ephemeral lock `{root}/sweeper`. Ages are
//! judged on the server's clock only (each claim's `ctime` + retention against the `mtime` of
//! a znode written for the purpose). A claim znode is deleted when it has no children and
//! expired more than a grace period ago (twice the sweep interval, at least a second, so that a
//! sweeper that lost its lock mid-pass never races the next one on a young claim) — whatever
//! its generation and whatever happened to its name since: claims end only with their
//! retention. Claim znodes of earlier builds (`{generation}_{instant ms}`, no longer read) are
//! collected by the same rule. A chain of takeovers is collected from its end, one link per
//! pass. Each pass deletes at most [`MAX_PER_PASS`] claims.

use std::sync::Weak;
use std::time::Duration;

use dcron_core::Result;
use zookeeper_async::{CreateMode, ZkError};

use crate::claims::ClaimData;
use crate::keys::{parse_claim_name, parse_legacy_claim_name, SUCCESSOR};
use crate::registry::{Inner, ZkRegistry};

/// The most claims one pass deletes.
pub(crate) const MAX_PER_PASS: usize = 10_000;

pub(crate) async fn run(registry: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    let mut lock_session = None;
    loop {
        tick.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let reg = ZkRegistry::from_inner(inner);
        let grace = i64::try_from((interval * 2).max(Duration::from_secs(1)).as_millis())
            .unwrap_or(i64::MAX);
        match sweep_once(&reg, &mut lock_session, grace).await {
            Ok(n) if n > 0 => {
                metrics::counter!("dcron_zk_swept_claims_total").increment(n as u64);
                tracing::debug!(deleted = n, "zookeeper: swept claims");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "zookeeper: claim sweep failed"),
        }
    }
}

/// One pass; answers how many claims it deleted (0 when another registry holds the lock).
pub(crate) async fn sweep_once(
    reg: &ZkRegistry,
    lock_session: &mut Option<i64>,
    grace: i64,
) -> Result<usize> {
    let conn = reg.conn();
    let lock = reg.layout().sweeper_lock();
    match conn
        .create(
            &lock,
            Vec::new(),
            CreateMode::Ephemeral,
            None,
            &[ZkError::NodeExists],
        )
        .await?
    {
        Ok((_, stat)) => *lock_session = Some(stat.ephemeral_owner),
        Err(_) => match conn.exists(&lock).await? {
            Some(stat) if Some(stat.ephemeral_owner) == *lock_session => {}
            _ => return Ok(0),
        },
    }
    let now = reg.server_now().await?;
    let tasks = reg.layout().tasks_dir();
    let mut deleted = 0;
    for child in conn.children(&tasks).await? {
        let dir = format!("{tasks}/{child}");
        for claim in conn.children(&dir).await? {
            if parse_claim_name(&claim).is_none() && parse_legacy_claim_name(&claim).is_none() {
                continue;
            }
            let mut path = format!("{dir}/{claim}");
            // Walk to the end of the chain: only a znode without children can go.
            loop {
                if deleted >= MAX_PER_PASS {
                    return Ok(deleted);
                }
                let Some((bytes, stat)) = conn.get_data(&path).await? else {
                    break;
                };
                if stat.num_children > 0 {
                    path = format!("{path}/{SUCCESSOR}");
                    continue;
                }
                let expired = ClaimData::decode(&path, &bytes)
                    .map(|d| d.expiry(stat.ctime).saturating_add(grace) <= now)
                    .unwrap_or(false);
                if expired {
                    conn.delete(
                        &path,
                        Some(stat.version),
                        &[ZkError::NoNode, ZkError::BadVersion, ZkError::NotEmpty],
                    )
                    .await?
                    .ok();
                    deleted += 1;
                }
                break;
            }
        }
    }
    Ok(deleted)
}
