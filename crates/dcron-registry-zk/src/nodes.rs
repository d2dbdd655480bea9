//! Node registrations: one session per registration, whose ephemeral sequential znode
//! `{root}/nodes/{node id}.{sequence}` holds the node record.
//!
//! - The sequence number, handed out by the server, orders the registrations of one node id:
//!   `register` creates its znode, then deletes every znode of the same id with a smaller
//!   sequence (older registrations: their leases are lost). Listings show only the newest
//!   registration of each id.
//! - A registration's znode is written only by its own session (`update_node` is one `setData`
//!   on its own path) and its path is never used again (sequence numbers do not repeat): a stale
//!   lease can never overwrite a newer record; it finds its znode gone and answers `LeaseLost`.
//! - The server deletes the znode when the session ends; a watchdog ends the session when no
//!   `keep_alive` succeeded for the lease's TTL, so the record disappears TTL after the last
//!   keep-alive even while the process (and the client's own pings) live on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dcron_core::{Error, Lease, Listing, Node, NodeEvent, Result, WatchStream};
use tokio::sync::Notify;
use zookeeper_async::{CreateMode, ZkError};

use crate::config::MIN_SESSION_TIMEOUT;
use crate::conn::{Conn, ConnSpec, BACKEND};
use crate::events::{Events, ZkEvent};
use crate::keys::{node_prefix, parse_node_child};
use crate::registry::{corrupt, Inner, ZkRegistry};
use crate::watch::{self, Model};

/// One node registration: its own session, whose ephemeral znode holds the node record.
pub(crate) struct LeaseSession {
    pub(crate) node_id: String,
    pub(crate) path: String,
    pub(crate) conn: Arc<Conn>,
    pub(crate) session_id: i64,
    ttl: Duration,
    renewed_at: Mutex<tokio::time::Instant>,
    lost: AtomicBool,
    ended: Notify,
    events: Events,
}

impl LeaseSession {
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire) || self.conn.session_ended()
    }

    fn renewed_at(&self) -> tokio::time::Instant {
        self.renewed_at
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|p| *p.into_inner())
    }

    fn renew(&self, at: tokio::time::Instant) {
        if let Ok(mut t) = self.renewed_at.lock() {
            if at > *t {
                *t = at;
            }
        }
    }

    /// Ends the session (the server deletes the record); reports the lost lease once.
    pub(crate) async fn end(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            self.events.emit(ZkEvent::LeaseLost {
                node_id: self.node_id.clone(),
                session: self.session_id,
            });
        }
        self.ended.notify_one();
        self.conn.close().await;
    }

    fn lease_lost(&self) -> Error {
        Error::LeaseLost {
            node: self.node_id.clone(),
        }
    }
}

pub(crate) fn lease_lost(lease: &Lease) -> Error {
    Error::LeaseLost {
        node: lease.node_id.clone(),
    }
}

impl ZkRegistry {
    pub(crate) fn lease(&self, id: &str) -> Option<Arc<LeaseSession>> {
        self.inner
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(id).cloned())
    }

    fn forget(&self, id: &str) -> Option<Arc<LeaseSession>> {
        self.inner.leases.lock().ok().and_then(|mut l| l.remove(id))
    }

    /// Forgets and ends a lease found lost; answers `LeaseLost`.
    pub(crate) async fn drop_lease(&self, id: &str, s: &LeaseSession) -> Error {
        self.forget(id);
        s.end().await;
        s.lease_lost()
    }

    pub(crate) async fn register_node(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        dcron_core::check_registration(node, ttl)?;
        let cfg = &self.inner.config;
        let conn = Conn::open(ConnSpec {
            hosts: &self.inner.hosts,
            session_timeout: ttl.max(MIN_SESSION_TIMEOUT),
            connect_timeout: cfg.connect_timeout,
            op_timeout: cfg.operation_timeout,
            digest: cfg.digest.as_ref(),
            acl: self.inner.acl.clone(),
            faults: cfg.faults.clone(),
        })
        .await?;
        match self.create_registration(&conn, node).await {
            Ok((path, session_id)) => {
                let session = Arc::new(LeaseSession {
                    node_id: node.id.clone(),
                    path,
                    conn,
                    session_id,
                    ttl,
                    renewed_at: Mutex::new(tokio::time::Instant::now()),
                    lost: AtomicBool::new(false),
                    ended: Notify::new(),
                    events: self.inner.events.clone(),
                });
                let lease = Lease {
                    node_id: node.id.clone(),
                    id: format!("{session_id:016x}"),
                    ttl,
                };
                let replaced: Vec<Arc<LeaseSession>> = match self.inner.leases.lock() {
                    Ok(mut l) => {
                        let old: Vec<String> = l
                            .iter()
                            .filter(|(_, s)| s.node_id == node.id)
                            .map(|(k, _)| k.clone())
                            .collect();
                        let old = old.iter().filter_map(|k| l.remove(k)).collect();
                        l.insert(lease.id.clone(), session.clone());
                        old
                    }
                    Err(_) => Vec::new(),
                };
                for old in replaced {
                    old.end().await;
                }
                let dog = tokio::spawn(watchdog(self.downgrade(), lease.id.clone(), session));
                self.push_task(dog);
                Ok(lease)
            }
            Err(e) => {
                conn.close().await;
                Err(e)
            }
        }
    }

    /// Creates the registration's znode and removes the older registrations of the node id.
    async fn create_registration(&self, conn: &Conn, node: &Node) -> Result<(String, i64)> {
        let dir = self.layout().nodes_dir();
        let prefix = format!("{dir}/{}", node_prefix(&node.id));
        let (path, stat) = conn
            .create(
                &prefix,
                node.encode(),
                CreateMode::EphemeralSequential,
                None,
                &[],
            )
            .await?
            .map_err(|e| crate::conn::map_err(e, "create", &prefix))?;
        let mine = path
            .rsplit('/')
            .next()
            .and_then(parse_node_child)
            .map(|(_, seq)| seq)
            .ok_or_else(|| Error::Backend {
                backend: BACKEND,
                message: format!("the server named the registration `{path}`"),
                source: None,
            })?;
        for child in conn.children(&dir).await? {
            if let Some((id, seq)) = parse_node_child(&child) {
                if id == node.id && seq < mine {
                    conn.delete(&format!("{dir}/{child}"), None, &[ZkError::NoNode])
                        .await?
                        .ok();
                }
            }
        }
        Ok((path, stat.ephemeral_owner))
    }

    pub(crate) async fn keep_node_alive(&self, lease: &Lease) -> Result<()> {
        let Some(s) = self.lease(&lease.id) else {
            return Err(lease_lost(lease));
        };
        if s.is_lost() {
            return Err(self.drop_lease(&lease.id, &s).await);
        }
        let started = tokio::time::Instant::now();
        match s.conn.exists(&s.path).await {
            Ok(Some(stat)) if stat.ephemeral_owner == s.session_id && !s.is_lost() => {
                s.renew(started);
                Ok(())
            }
            Ok(_) => Err(self.drop_lease(&lease.id, &s).await),
            Err(_) if s.is_lost() => Err(self.drop_lease(&lease.id, &s).await),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn update_node_record(&self, lease: &Lease, node: &Node) -> Result<()> {
        if node.id != lease.node_id {
            return Err(Error::InvalidArgument(format!(
                "update of node `{}` with the lease of node `{}`",
                node.id, lease.node_id
            )));
        }
        let Some(s) = self.lease(&lease.id) else {
            return Err(lease_lost(lease));
        };
        if s.is_lost() {
            return Err(self.drop_lease(&lease.id, &s).await);
        }
        // The path is this registration's own and never reused: no version is needed.
        match s
            .conn
            .set_data(&s.path, node.encode(), None, &[ZkError::NoNode])
            .await
        {
            Ok(Ok(stat)) if stat.ephemeral_owner == s.session_id => Ok(()),
            Ok(_) => Err(self.drop_lease(&lease.id, &s).await),
            Err(_) if s.is_lost() => Err(self.drop_lease(&lease.id, &s).await),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn unregister_node(&self, lease: &Lease) -> Result<()> {
        let Some(s) = self.forget(&lease.id) else {
            return Ok(());
        };
        s.lost.store(true, Ordering::Release);
        s.ended.notify_one();
        if !s.conn.session_ended() {
            // Delete explicitly so the record is gone when this returns (closing a session does
            // not wait for the server).
            if let Err(e) = s.conn.delete(&s.path, None, &[ZkError::NoNode]).await {
                tracing::warn!(node = %s.node_id, error = %e,
                    "zookeeper: could not delete the node record; its session will expire");
            }
        }
        s.conn.close().await;
        Ok(())
    }

    pub(crate) async fn list_node_records(&self) -> Result<Listing<Node>> {
        let dir = self.layout().nodes_dir();
        let mut newest: HashMap<String, (u64, String)> = HashMap::new();
        let mut listing = Listing::default();
        for child in self.conn().children(&dir).await? {
            match parse_node_child(&child) {
                Some((id, seq)) => {
                    let slot = newest.entry(id).or_insert((seq, child.clone()));
                    if seq > slot.0 {
                        *slot = (seq, child);
                    }
                }
                None => listing.corrupt.push(corrupt(
                    &format!("{dir}/{child}"),
                    Error::Corrupt {
                        key: child.clone(),
                        reason: "a node znode name this crate did not write".into(),
                    },
                )),
            }
        }
        let children = newest.into_values().map(|(_, c)| c).collect();
        for f in self.fetch_children(&dir, children).await? {
            match dcron_core::backend::check_stored_size(
                &f.key,
                f.data.len(),
                crate::MAX_VALUE_BYTES,
            )
            .and_then(|()| Node::decode(&f.key, &f.data))
            {
                Ok(n) => listing.items.push(n),
                Err(e) => listing.corrupt.push(corrupt(&f.key, e)),
            }
        }
        Ok(listing)
    }

    pub(crate) async fn watch_node_records(&self) -> Result<WatchStream<NodeEvent>> {
        let (tx, rx) = dcron_core::watch_channel(self.inner.config.watch_buffer);
        watch::spawn(
            self.inner.conn.clone(),
            self.layout().nodes_dir(),
            tx,
            Box::new(NodeModel::default()),
        )
        .await?;
        Ok(rx)
    }
}

/// Turns registration znodes into node events: the newest registration of each id counts.
#[derive(Default)]
struct NodeModel {
    /// Per node id: its registrations' sequence numbers.
    by_id: HashMap<String, Vec<u64>>,
}

impl Model<NodeEvent> for NodeModel {
    fn put(&mut self, child: &str, data: &[u8], out: &mut Vec<NodeEvent>) {
        let Some((id, seq)) = parse_node_child(child) else {
            return;
        };
        let seqs = self.by_id.entry(id).or_default();
        if !seqs.contains(&seq) {
            seqs.push(seq);
        }
        if seqs.iter().any(|s| *s > seq) {
            return; // an older registration's record: a newer one counts
        }
        match dcron_core::backend::check_stored_size(child, data.len(), crate::MAX_VALUE_BYTES)
            .and_then(|()| Node::decode(child, data))
        {
            Ok(n) => out.push(NodeEvent::Put(n)),
            Err(e) => {
                tracing::warn!(error = %e, "zookeeper: skipping a node record");
                out.push(NodeEvent::Resync);
            }
        }
    }

    fn gone(&mut self, child: &str, out: &mut Vec<NodeEvent>) {
        let Some((id, seq)) = parse_node_child(child) else {
            return;
        };
        let Some(seqs) = self.by_id.get_mut(&id) else {
            return;
        };
        seqs.retain(|s| *s != seq);
        if seqs.is_empty() {
            self.by_id.remove(&id);
            out.push(NodeEvent::Delete { id });
        } else if seqs.iter().all(|s| *s < seq) {
            // The newest registration went and an older one is left: list again for its record.
            out.push(NodeEvent::Resync);
        }
    }
}

/// Ends a lease whose keep-alives stopped for its TTL: the session is closed, so the server
/// deletes the node record, exactly as an expiry would.
async fn watchdog(registry: Weak<Inner>, id: String, lease: Arc<LeaseSession>) {
    loop {
        let deadline = lease.renewed_at() + lease.ttl;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = lease.ended.notified() => {}
        }
        if lease.lost.load(Ordering::Acquire) {
            return;
        }
        if tokio::time::Instant::now() >= lease.renewed_at() + lease.ttl {
            tracing::info!(node = %lease.node_id, "zookeeper: no keep-alive for the lease TTL; ending the session");
            if let Some(inner) = registry.upgrade() {
                ZkRegistry::from_inner(inner).forget(&id);
            }
            lease.end().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn the_newest_registration_counts() {
        let mut m = NodeModel::default();
        let mut out = Vec::new();
        let n = Node::new("a", Utc::now());
        let first = format!("{}0000000001", node_prefix("a"));
        let second = format!("{}0000000002", node_prefix("a"));
        m.put(&first, &n.encode(), &mut out);
        assert_eq!(out, vec![NodeEvent::Put(n.clone())]);
        out.clear();
        m.put(&second, &n.encode(), &mut out);
        assert_eq!(out, vec![NodeEvent::Put(n.clone())]);
        out.clear();
        m.put(&first, &n.encode(), &mut out);
        assert!(out.is_empty(), "an older registration's record is not news");
        m.gone(&first, &mut out);
        assert!(
            out.is_empty(),
            "an older registration replaced: nothing to say"
        );
        m.gone(&second, &mut out);
        assert_eq!(out, vec![NodeEvent::Delete { id: "a".into() }]);
    }
}
