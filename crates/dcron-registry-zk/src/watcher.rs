//! Watch streams: children **and** data watches on the registry's directories, re-armed after
//! every trigger and after every reconnect.
//!
//! ZooKeeper watches fire once. For each watched directory the task keeps a children watch on
//! the directory and a data watch on every child, and remembers each child's `mzxid`. A
//! children trigger re-lists the directory (new children → a put, missing children → a
//! removal); a data trigger re-reads that child (changed → a put, gone → a removal). After a
//! reconnect (the client does not restore watches) or a failed re-arm, the stream yields a
//! resync marker and everything is armed again. Events go through [`dcron_core::watch_channel`],
//! so a slow reader never blocks anything: overflow becomes one resync.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Result, WatchSender};
use tokio::sync::mpsc;
use zookeeper_async::{WatchedEvent, ZkError};

use crate::conn::Conn;

/// A change seen in one watched directory.
pub(crate) enum Change<'a> {
    /// A child appeared or its data changed.
    Put { child: &'a str, data: &'a [u8] },
    /// A child is gone.
    Gone { child: &'a str },
}

/// Turns a directory change into the stream's event (`None`: nothing to report).
pub(crate) type Mapper<E> = Box<dyn Fn(usize, Change<'_>) -> Option<E> + Send + Sync>;

enum Trigger {
    Children(usize),
    Data(usize, String),
}

/// How long to wait before re-arming after a failure.
const RETRY: Duration = Duration::from_millis(500);

struct Watcher<E: dcron_core::ResyncEvent> {
    conn: Arc<Conn>,
    dirs: Vec<String>,
    known: Vec<HashMap<String, i64>>,
    triggers: mpsc::UnboundedSender<Trigger>,
    out: WatchSender<E>,
    map: Mapper<E>,
}

/// Starts watching `dirs`, feeding `out` until its receiver is dropped. Returns once the first
/// arming succeeded (so changes made after the call returns are seen).
pub(crate) async fn spawn<E>(
    conn: Arc<Conn>,
    dirs: Vec<String>,
    out: WatchSender<E>,
    map: Mapper<E>,
) -> Result<()>
where
    E: dcron_core::ResyncEvent + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut w = Watcher {
        known: vec![HashMap::new(); dirs.len()],
        conn,
        dirs,
        triggers: tx,
        out,
        map,
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
                    Some(Trigger::Children(i)) => self.arm_children(i, true).await,
                    Some(Trigger::Data(i, child)) => self.arm_data(i, &child, true).await,
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

    /// Arms every directory; `report` says whether differences become events (not on the first
    /// arming, where the consumer lists anyway).
    async fn arm_all(&mut self, report: bool) -> Result<()> {
        for i in 0..self.dirs.len() {
            self.arm_children(i, report).await?;
            let children: Vec<String> = self.known[i].keys().cloned().collect();
            for child in children {
                self.arm_data(i, &child, report).await?;
            }
        }
        Ok(())
    }

    async fn arm_children(&mut self, i: usize, report: bool) -> Result<()> {
        let dir = self.dirs[i].clone();
        let tx = self.triggers.clone();
        let listed = self
            .conn
            .call_or(&dir, &[ZkError::NoNode], |zk| {
                let (dir, tx) = (dir.clone(), tx.clone());
                async move {
                    zk.get_children_w(&dir, move |_: WatchedEvent| {
                        let _ = tx.send(Trigger::Children(i));
                    })
                    .await
                }
            })
            .await?
            .unwrap_or_default();
        let gone: Vec<String> = self.known[i]
            .keys()
            .filter(|k| !listed.contains(k))
            .cloned()
            .collect();
        for child in gone {
            self.known[i].remove(&child);
            if report {
                self.emit(i, Change::Gone { child: &child });
            }
        }
        for child in listed {
            if !self.known[i].contains_key(&child) {
                self.known[i].insert(child.clone(), -1);
                self.arm_data(i, &child, report).await?;
            }
        }
        Ok(())
    }

    async fn arm_data(&mut self, i: usize, child: &str, report: bool) -> Result<()> {
        let path = format!("{}/{child}", self.dirs[i]);
        let tx = self.triggers.clone();
        let owned = child.to_string();
        let read = self
            .conn
            .call_or(&path, &[ZkError::NoNode], |zk| {
                let (path, tx, owned) = (path.clone(), tx.clone(), owned.clone());
                async move {
                    zk.get_data_w(&path, move |_: WatchedEvent| {
                        let _ = tx.send(Trigger::Data(i, owned));
                    })
                    .await
                }
            })
            .await?;
        match read {
            Ok((data, stat)) => {
                let before = self.known[i].insert(child.to_string(), stat.mzxid);
                if report && before != Some(stat.mzxid) {
                    self.emit(i, Change::Put { child, data: &data });
                }
            }
            Err(_) => {
                if self.known[i].remove(child).is_some() && report {
                    self.emit(i, Change::Gone { child });
                }
            }
        }
        Ok(())
    }

    fn emit(&self, i: usize, change: Change<'_>) {
        if let Some(event) = (self.map)(i, change) {
            self.out.send(event);
        }
    }
}
