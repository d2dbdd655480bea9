//! The claim sweeper: removes expired claims when they are not TTL znodes.
//!
//! Only used when the server refuses TTL znodes (`extendedTypesEnabled=false`) or
//! [`crate::ZkRegistryConfig::ttl_claims`] is `false`. One registry at a time sweeps a
//! namespace: the one whose shared session holds the ephemeral lock `{root}/sweeper`. Ages are
//! judged on the server's clock only (a claim's `ctime` against the `mtime` the lock gets when it
//! is touched), never against the local clock. Each pass deletes at most [`MAX_PER_PASS`] claims.

use std::sync::Weak;
use std::time::Duration;

use dcron_core::Result;
use zookeeper_async::{CreateMode, ZkError};

use crate::registry::{InnerRef, ZkRegistry};

/// The most claims one pass deletes.
pub(crate) const MAX_PER_PASS: usize = 10_000;

pub(crate) async fn run(registry: Weak<InnerRef>, interval: Duration) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    let mut lock_session = None;
    loop {
        tick.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let reg = ZkRegistry::from_inner(inner);
        match sweep_once(&reg, &mut lock_session).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "zookeeper: swept expired claims"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "zookeeper: claim sweep failed"),
        }
    }
}

/// One pass; answers how many claims it deleted (0 when another registry holds the lock).
pub(crate) async fn sweep_once(reg: &ZkRegistry, lock_session: &mut Option<i64>) -> Result<usize> {
    let conn = reg.shared_conn();
    let lock = reg.sweeper_lock();
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
        Ok(stat) => *lock_session = Some(stat.ephemeral_owner),
        Err(_) => match conn.exists(&lock).await? {
            Some(stat) if Some(stat.ephemeral_owner) == *lock_session => {}
            _ => return Ok(0),
        },
    }
    // The server's "now": the mtime the lock gets when touched.
    let now = match conn.set_data(&lock, Vec::new(), None, &[]).await? {
        Ok(stat) => stat.mtime,
        Err(_) => return Ok(0),
    };
    let mut deleted = 0;
    for dir in conn.children(&reg.claims_dir()).await? {
        let dir = format!("{}/{dir}", reg.claims_dir());
        for f in reg.fetch_dir(&dir).await? {
            if deleted >= MAX_PER_PASS {
                return Ok(deleted);
            }
            let retention = serde_json::from_slice::<serde_json::Value>(&f.data)
                .ok()
                .and_then(|v| v.get("retention_ms").and_then(|r| r.as_i64()));
            let Some(retention) = retention else { continue };
            if f.stat.ctime.saturating_add(retention) <= now {
                conn.delete(
                    &f.key,
                    Some(f.stat.version),
                    &[ZkError::NoNode, ZkError::BadVersion],
                )
                .await?
                .ok();
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}
