//! Running slots: one persistent znode per task name, `{root}/slots/{task}`, never deleted,
//! whose data names the holder or is empty (free).
//!
//! - **Lives with the lease as the node record does.** The data is the holder's
//!   [`SlotRecord`] plus the name of its registration znode (`{node id}.{sequence}` under
//!   `nodes/`). A holder counts only while that registration znode exists and is owned by the
//!   holder's session (the lease id is the session id): exactly the node record's liveness.
//!   It disappears when the session ends (expiry, the watchdog after a TTL without
//!   keep-alive), on `unregister`, and when a newer registration of the node replaces it (from
//!   any process). Registration paths are never reused, so a holder once gone never comes back.
//! - **One compare-and-set.** A slot is taken with one write: `create` when the znode does not
//!   exist, else `setData` with the version read. The znode is never deleted (release and
//!   `cleanup_all` write it empty), so its version only grows and a write can never land on a
//!   slot it was not decided on. `NodeExists`/`BadVersion`: another writer came first, read
//!   again and decide again.
//! - `acquire_slot` reads the slot and checks the caller's own registration in one pipelined
//!   round trip (a lease that ended answers `LeaseLost`, nothing written); a holder other than
//!   the caller's own lease costs one more read (its registration).

use dcron_core::{check_slot, Error, FireKey, Lease, Result, SlotOutcome, SlotRecord};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use zookeeper_async::{CreateMode, Stat, ZkError};

use crate::conn::{Conn, BACKEND};
use crate::keys::parse_node_child;
use crate::nodes::{lease_lost, LeaseSession};
use crate::registry::{ZkRegistry, CONCURRENCY};

/// How many times one call reads and writes again after losing a compare-and-set to another
/// writer before it gives up (`Unavailable`).
const MAX_ROUNDS: usize = 64;

/// The data of a held slot.
#[derive(Debug, Serialize, Deserialize)]
struct SlotData {
    /// Who holds the slot for which fire.
    holder: SlotRecord,
    /// The holder's registration znode under `nodes/` (`{escaped node id}.{sequence}`).
    registration: String,
}

impl SlotData {
    /// Encodes the data (JSON, never empty: empty means free).
    fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Backend {
            backend: BACKEND,
            message: format!("cannot encode a running slot record: {e}"),
            source: None,
        })
    }

    /// Decodes a slot's data: `None` when free (empty).
    ///
    /// # Errors
    /// [`Error::Corrupt`] (keyed by the task name) for data this crate did not write.
    fn decode(task: &str, path: &str, data: &[u8]) -> Result<Option<SlotData>> {
        if data.is_empty() {
            return Ok(None);
        }
        let corrupt = |reason: String| Error::Corrupt {
            key: task.to_string(),
            reason: format!("{reason} (running slot znode `{path}`)"),
        };
        dcron_core::backend::check_stored_size(task, data.len(), crate::MAX_VALUE_BYTES)?;
        let slot: SlotData = serde_json::from_slice(data)
            .map_err(|e| corrupt(format!("not a running slot record: {e}")))?;
        match parse_node_child(&slot.registration) {
            Some((id, _)) if id == slot.holder.node_id => Ok(Some(slot)),
            _ => Err(corrupt(format!(
                "the holder's registration `{}` is not one of node `{}`",
                slot.registration, slot.holder.node_id
            ))),
        }
    }
}

/// What one round of `acquire_slot` ends with.
enum Round {
    Done(SlotOutcome),
    /// A compare-and-set lost to another writer: read again.
    Again,
}

impl ZkRegistry {
    pub(crate) async fn acquire_task_slot(
        &self,
        lease: &Lease,
        fire: &FireKey,
    ) -> Result<SlotOutcome> {
        check_slot(lease, fire)?;
        let Some(s) = self.lease(&lease.id) else {
            return Err(lease_lost(lease));
        };
        if s.is_lost() {
            return Err(self.drop_lease(&lease.id, &s).await);
        }
        let path = self.layout().slot(&fire.task);
        let registration = s.path.rsplit('/').next().unwrap_or_default().to_string();
        let mine = SlotData {
            holder: SlotRecord::new(lease, fire),
            registration,
        }
        .encode()?;
        for _ in 0..MAX_ROUNDS {
            match self.acquire_round(&s, lease, fire, &path, &mine).await {
                Ok(Round::Done(outcome)) => return Ok(outcome),
                Ok(Round::Again) => {}
                // A request refused because the lease's session ended.
                Err(_) if s.is_lost() => return Err(self.drop_lease(&lease.id, &s).await),
                Err(e) => return Err(e),
            }
        }
        Err(Error::unavailable(format!(
            "zookeeper: the running slot `{path}` changed under {MAX_ROUNDS} attempts in a row"
        )))
    }

    /// One read-decide-write round of `acquire_slot`, through the lease's own session.
    async fn acquire_round(
        &self,
        s: &LeaseSession,
        lease: &Lease,
        fire: &FireKey,
        path: &str,
        mine: &[u8],
    ) -> Result<Round> {
        // Both requests in flight at once: one round trip.
        let (own, slot) = futures::join!(s.conn.exists(&s.path), s.conn.get_data(path));
        match own? {
            Some(stat) if stat.ephemeral_owner == s.session_id => {}
            // The registration is gone (expired, unregistered, replaced): the lease has ended.
            _ => return Err(self.drop_lease(&lease.id, s).await),
        }
        let written = match slot? {
            None => s
                .conn
                .create(
                    path,
                    mine.to_vec(),
                    CreateMode::Persistent,
                    None,
                    &[ZkError::NodeExists, ZkError::NoNode],
                )
                .await?
                .map(|_| ()),
            Some((data, stat)) => {
                if let Some(held) = SlotData::decode(&fire.task, path, &data)? {
                    if held.holder.is(lease, fire) {
                        return Ok(Round::Done(SlotOutcome::Taken));
                    }
                    // Another fire of the caller's own (live) lease, or a live holder.
                    if held.holder.lease == lease.id || self.holds(&s.conn, &held).await? {
                        return Ok(Round::Done(held.holder.held()));
                    }
                }
                write_over(&s.conn, path, mine.to_vec(), &stat).await?
            }
        };
        match written {
            Ok(()) => Ok(Round::Done(SlotOutcome::Taken)),
            Err(ZkError::NoNode) => {
                // The slots directory is missing (removed by hand): put it back.
                s.conn.ensure_dir(&self.layout().slots_dir()).await?;
                Ok(Round::Again)
            }
            Err(_) => Ok(Round::Again),
        }
    }

    /// Whether the holder's lease still holds: its registration znode exists and is owned by
    /// the holder's session.
    async fn holds(&self, conn: &Conn, held: &SlotData) -> Result<bool> {
        let registration = format!("{}/{}", self.layout().nodes_dir(), held.registration);
        Ok(conn
            .exists(&registration)
            .await?
            .is_some_and(|stat| format!("{:016x}", stat.ephemeral_owner) == held.holder.lease))
    }

    pub(crate) async fn release_task_slot(&self, lease: &Lease, fire: &FireKey) -> Result<()> {
        check_slot(lease, fire)?;
        let path = self.layout().slot(&fire.task);
        for _ in 0..MAX_ROUNDS {
            let Some((data, stat)) = self.conn().get_data(&path).await? else {
                return Ok(());
            };
            match SlotData::decode(&fire.task, &path, &data)? {
                Some(held) if held.holder.is(lease, fire) => {}
                _ => return Ok(()),
            }
            match write_over(self.conn(), &path, Vec::new(), &stat).await? {
                Ok(()) | Err(ZkError::NoNode) => return Ok(()),
                // Written meanwhile (cleanup, or a new holder after the lease ended): read again.
                Err(_) => {}
            }
        }
        Err(Error::unavailable(format!(
            "zookeeper: the running slot `{path}` changed under {MAX_ROUNDS} attempts in a row"
        )))
    }

    /// Frees every running slot of the namespace: each slot znode is written empty (kept, so
    /// its version keeps counting). Every slot is tried; the first failure is returned.
    pub(crate) async fn free_all_slots(&self) -> Result<()> {
        let dir = self.layout().slots_dir();
        let conn = self.conn();
        let results: Vec<Result<()>> = futures::stream::iter(conn.children(&dir).await?)
            .map(|child| {
                let path = format!("{dir}/{child}");
                async move {
                    conn.set_data(&path, Vec::new(), None, &[ZkError::NoNode])
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// Writes `data` over the slot at the version read; `BadVersion`/`NoNode` come back as the
/// inner error.
async fn write_over(
    conn: &Conn,
    path: &str,
    data: Vec<u8>,
    read: &Stat,
) -> Result<std::result::Result<(), ZkError>> {
    Ok(conn
        .set_data(
            path,
            data,
            Some(read.version),
            &[ZkError::BadVersion, ZkError::NoNode],
        )
        .await?
        .map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn lease(node: &str, id: &str) -> Lease {
        Lease {
            node_id: node.into(),
            id: id.into(),
            ttl: std::time::Duration::from_secs(10),
        }
    }

    #[test]
    fn slot_data_round_trips_and_refuses_foreign_bytes() {
        let fire = FireKey::new(
            "job",
            DateTime::from_timestamp_millis(1_900_000_000_000).expect("instant"),
        );
        let data = SlotData {
            holder: SlotRecord::new(&lease("node a", "00000000000000ff"), &fire),
            registration: format!("{}0000000007", crate::keys::node_prefix("node a")),
        };
        let back = SlotData::decode("job", "/p", &data.encode().expect("encodes"))
            .expect("decodes")
            .expect("held");
        assert!(back.holder.is(&lease("node a", "00000000000000ff"), &fire));
        assert!(SlotData::decode("job", "/p", b"").expect("free").is_none());
        for bad in [
            b"{".to_vec(),
            b"null".to_vec(),
            SlotData {
                registration: "other.0000000001".into(),
                ..SlotData::decode("job", "/p", &data.encode().expect("encodes"))
                    .expect("ok")
                    .expect("held")
            }
            .encode()
            .expect("encodes"),
        ] {
            assert!(
                matches!(SlotData::decode("job", "/p", &bad), Err(Error::Corrupt { ref key, .. }) if key == "job"),
                "{bad:?}"
            );
        }
    }
}
