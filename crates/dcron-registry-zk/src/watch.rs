//! Watch streams: a children watch on one directory **and** a data watch on every child,
//! re-armed after every trigger and after every reconnect.
//!
//! ZooKeeper watches fire once. The task keeps a children watch on the directory and a data
//! watch on every child, and remembers each child's `mzxid`. A children trigger re-lists the
//! directory; a data trigger re-reads that child. What a child's data means is up to a
//! [`Model`], which turns the latest data of a child (or its disappearance) into events: it
//! only ever sees a child's data with a greater `mzxid` than before, so one child's events
//! never go back to an older state. After a reconnect (the client restores no watches) or a
//! failed re-arm, the stream yields a resync marker and everything is armed again. Events go
//! through [`dcron_core::watch_channel`], so a slow reader never blocks anything: overflow
//! becomes one resync.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Result, WatchSender};
use tokio::sync::mpsc;
use zookeeper_async::{WatchedEvent, ZkError};

use crate::conn::Conn;

/// Turns the children of one watched directory into events.
pub(crate) trait Model<E>: Send + 'static {
    /// `child` has this (newer) data.
    fn put(&mut self, child: &str, data: &[u8], out: &mut Vec<E>);
    /// `child` is gone.
    fn gone(&mut self, child: &str, out: &mut Vec<E>);
}

enum Trigger {
    Children,
    Data(String),
}

/// How long to wait before re-arming after a failure.
const RETRY: Duration = Duration::from_millis(500);

struct Watcher<E: dcron_core::ResyncEvent> {
    conn: Arc<Conn>,
    dir: String,
    known: HashMap<String, i64>,
    triggers: mpsc::UnboundedSender<Trigger>,
    out: WatchSender<E>,
    model: Box<dyn Model<E>>,
}

/// Starts watching `dir`, feeding `out` until its receiver is dropped. Returns once the first
/// arming succeeded (so changes made after the call returns are seen).
pub(crate) async fn spawn<E>(
    conn: Arc<Conn>,
    dir: String,
    out: WatchSender<E>,
    model: Box<dyn Model<E>>,
) -> Result<()>
where
    E: dcron_core::ResyncEvent + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut w = Watcher {
        known: HashMap::new(),
        conn,
        dir,
        triggers: tx,
        out,
        model,
    };
    let reconnects = w.conn.reconnects();
    w.arm_all(false).await?;
    tokio::spawn(w.run(rx, reconnects));
    Ok(())
}

impl<E> Watcher<E>
where
    E: dcron_core::ResyncEvent + Send + Unpin + 'static,
{
    async fn run(
        mut self,
        mut triggers: mpsc::UnboundedReceiver<Trigger>,
        mut reconnects: tokio::sync::watch::Receiver<u64>,
    ) {
        reconnects.borrow_and_update();
        let mut rearm_at: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if self.out.is_closed() {
                return;
            }
            let retry = async {
                match rearm_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                changed = reconnects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    reconnects.borrow_and_update();
                    self.out.resync();
                    self.arm_all(true).await
                }
                _ = retry => {
                    rearm_at = None;
                    self.arm_all(true).await
                }
                trigger = triggers.recv() => match trigger {
                    Some(Trigger::Children) => self.arm_children(true).await,
                    Some(Trigger::Data(child)) => self.arm_data(&child, true).await,
                    None => return,
                },
                _ = tick.tick() => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "zookeeper watch: re-arming failed; will resync");
                self.out.resync();
                rearm_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }

    /// Arms the directory and every child; `report` says whether differences become events
    /// (not on the first arming, where the consumer lists anyway).
    async fn arm_all(&mut self, report: bool) -> Result<()> {
        self.arm_children(report).await?;
        let children: Vec<String> = self.known.keys().cloned().collect();
        for child in children {
            self.arm_data(&child, report).await?;
        }
        Ok(())
    }

    async fn arm_children(&mut self, report: bool) -> Result<()> {
        let dir = self.dir.clone();
        let tx = self.triggers.clone();
        let listed = self
            .conn
            .call_or("watch_children", &dir, &[ZkError::NoNode], |zk| {
                let (dir, tx) = (dir.clone(), tx.clone());
                async move {
                    zk.get_children_w(&dir, move |_: WatchedEvent| {
                        let _ = tx.send(Trigger::Children);
                    })
                    .await
                }
            })
            .await?
            .unwrap_or_default();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !listed.contains(k))
            .cloned()
            .collect();
        for child in gone {
            self.known.remove(&child);
            self.emit_gone(&child, report);
        }
        for child in listed {
            if !self.known.contains_key(&child) {
                self.known.insert(child.clone(), -1);
                self.arm_data(&child, report).await?;
            }
        }
        Ok(())
    }

    async fn arm_data(&mut self, child: &str, report: bool) -> Result<()> {
        let path = format!("{}/{child}", self.dir);
        let tx = self.triggers.clone();
        let owned = child.to_string();
        let read = self
            .conn
            .call_or("watch_data", &path, &[ZkError::NoNode], |zk| {
                let (path, tx, owned) = (path.clone(), tx.clone(), owned.clone());
                async move {
                    zk.get_data_w(&path, move |_: WatchedEvent| {
                        let _ = tx.send(Trigger::Data(owned));
                    })
                    .await
                }
            })
            .await?;
        match read {
            Ok((data, stat)) => {
                let before = self.known.get(child).copied().unwrap_or(-1);
                // Only a newer version of the child is news: never go back.
                if stat.mzxid > before {
                    self.known.insert(child.to_string(), stat.mzxid);
                    let mut events = Vec::new();
                    self.model.put(child, &data, &mut events);
                    self.send(events, report);
                }
            }
            Err(_) => {
                if self.known.remove(child).is_some() {
                    self.emit_gone(child, report);
                }
            }
        }
        Ok(())
    }

    fn emit_gone(&mut self, child: &str, report: bool) {
        let mut events = Vec::new();
        self.model.gone(child, &mut events);
        self.send(events, report);
    }

    fn send(&self, events: Vec<E>, report: bool) {
        if report {
            for event in events {
                self.out.send(event);
            }
        }
    }
}
