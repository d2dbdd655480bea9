//! Watches: `LISTEN` on the namespace's channel over a connection of their own.
//!
//! Writers `NOTIFY` small payloads, `<kind>|<version>|<key>`, in the same transaction as the
//! change (PostgreSQL delivers them at commit, in commit order, and never blocks the writer
//! on a slow listener: the server queues them). A watch task reads them as they come, drains
//! what is queued (up to [`NOTE_BATCH`]), drops keys whose version it already delivered, and
//! reads the current state of the remaining keys in **one** statement, then reports each key's
//! state as an event, in the order of the notifications. An event therefore always shows a
//! state at least as new as every event before it, so a stale event never follows a newer one;
//! repeats can happen and are harmless.
//!
//! When the connection breaks the task reconnects with exponential back-off and jitter,
//! listens again and yields `Resync` (the consumer lists everything). A node watch also removes
//! the namespace's expired node rows every `node_check_interval`, which notifies `Delete` for
//! each to every watcher: expiry is a decision of the server's clock, not of a write. The
//! task ends when the stream is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{
    watch_channel, Error, Node, NodeEvent, Result, TaskMeta, TaskMetaEvent, Tombstone, WatchSender,
    WatchStream,
};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Connection, Notification, Statement};

use crate::error::{map_pg, timed_out};
use crate::registry::{channel_of, Inner};
use crate::tls::Tls;

/// How many events each watch stream buffers before it overflows into one `Resync`.
pub const WATCH_BUFFER: usize = 1024;

/// How many notifications one fetch handles at most.
const NOTE_BATCH: usize = 1000;

/// How many notifications wait between the connection and the watch task before the task is
/// told it missed some (and resynchronises).
const NOTE_QUEUE: usize = 8192;

/// The longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts a node watch.
pub(crate) async fn watch_nodes(inner: Arc<Inner>) -> Result<WatchStream<NodeEvent>> {
    let (tx, rx) = watch_channel(WATCH_BUFFER);
    start(inner, Sender::Nodes(tx)).await?;
    Ok(rx)
}

/// Starts a task watch.
pub(crate) async fn watch_tasks(inner: Arc<Inner>) -> Result<WatchStream<TaskMetaEvent>> {
    let (tx, rx) = watch_channel(WATCH_BUFFER);
    start(inner, Sender::Tasks(tx)).await?;
    Ok(rx)
}

/// Listens before answering, so every change committed after the call is delivered.
async fn start(inner: Arc<Inner>, sender: Sender) -> Result<()> {
    let channel = channel_of(&inner, sender.is_nodes()).await?;
    let listener = Listener::connect(&inner, &channel, sender.is_nodes()).await?;
    tokio::spawn(run(inner, channel, listener, sender));
    Ok(())
}

enum Sender {
    Nodes(WatchSender<NodeEvent>),
    Tasks(WatchSender<TaskMetaEvent>),
}

impl Sender {
    fn is_nodes(&self) -> bool {
        matches!(self, Sender::Nodes(_))
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::Nodes(tx) => tx.is_closed(),
            Sender::Tasks(tx) => tx.is_closed(),
        }
    }

    /// Asks the consumer to list again; `false` once it is gone.
    fn resync(&self) -> bool {
        match self {
            Sender::Nodes(tx) => tx.resync(),
            Sender::Tasks(tx) => tx.resync(),
        }
    }
}

/// A dedicated connection listening on the channel, with its statements prepared.
struct Listener {
    client: Client,
    notes: mpsc::Receiver<Notification>,
    /// Set by the connection task when the queue was full and notifications were dropped.
    overflow: Arc<AtomicBool>,
    fetch: Statement,
    reap: Option<Statement>,
}

impl Listener {
    async fn connect(inner: &Inner, channel: &str, nodes: bool) -> Result<Listener> {
        let within = inner.command_timeout;
        match tokio::time::timeout(within, Self::connect_inner(inner, channel, nodes)).await {
            Ok(r) => r,
            Err(_) => Err(timed_out("watch: connect", within)),
        }
    }

    async fn connect_inner(inner: &Inner, channel: &str, nodes: bool) -> Result<Listener> {
        let overflow = Arc::new(AtomicBool::new(false));
        let (client, notes) = match &inner.tls {
            Tls::None => {
                let (client, connection) = inner
                    .pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| map_pg("watch: connect", e))?;
                (client, drive(connection, overflow.clone()))
            }
            Tls::Rustls(tls) => {
                let (client, connection) = inner
                    .pg
                    .connect(tls.clone())
                    .await
                    .map_err(|e| map_pg("watch: connect", e))?;
                (client, drive(connection, overflow.clone()))
            }
        };
        // The channel name is `dcron_` and hex digits (see the schema's `channel` function).
        if !channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::InvalidState(format!(
                "unexpected watch channel name `{channel}`"
            )));
        }
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .map_err(|e| map_pg("watch: listen", e))?;
        let fetch_sql = if nodes {
            &inner.sql.fetch_nodes
        } else {
            &inner.sql.fetch_task_state
        };
        let fetch = client
            .prepare(fetch_sql)
            .await
            .map_err(|e| map_pg("watch: prepare", e))?;
        let reap = if nodes {
            Some(
                client
                    .prepare(&inner.sql.reap_nodes)
                    .await
                    .map_err(|e| map_pg("watch: prepare", e))?,
            )
        } else {
            None
        };
        Ok(Listener {
            client,
            notes,
            overflow,
            fetch,
            reap,
        })
    }
}

/// Drives a connection in a task of its own, forwarding its notifications. The queue is
/// bounded: when it is full the notification is dropped and `overflow` set, so the watch
/// resynchronises instead of growing without bound. The task ends with the connection (the
/// receiver then sees the end of the queue).
fn drive<S, T>(
    mut connection: Connection<S, T>,
    overflow: Arc<AtomicBool>,
) -> mpsc::Receiver<Notification>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(NOTE_QUEUE);
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => match tx.try_send(note) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        overflow.store(true, Ordering::Release);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!(notice = %notice.message(), "watch connection notice");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "watch connection ended");
                    return;
                }
            }
        }
    });
    rx
}

/// A key of the dedup map: kind (`n`, `t`, `d`) and key.
type Key = (char, String);

async fn run(inner: Arc<Inner>, channel: String, listener: Listener, sender: Sender) {
    let mut listener = Some(listener);
    let mut delivered: HashMap<Key, i64> = HashMap::new();
    let mut tick = tokio::time::interval(inner.node_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    loop {
        if sender.is_closed() {
            return;
        }
        let Some(l) = listener.as_mut() else {
            tokio::time::sleep(jittered(backoff)).await;
            if sender.is_closed() {
                return;
            }
            match Listener::connect(&inner, &channel, sender.is_nodes()).await {
                Ok(l) => {
                    listener = Some(l);
                    backoff = Duration::from_millis(100);
                    delivered.clear();
                    if !sender.resync() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "watch: reconnecting failed");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };
        let broken = tokio::select! {
            note = l.notes.recv() => match note {
                Some(first) => {
                    let mut batch = vec![first];
                    while batch.len() < NOTE_BATCH {
                        match l.notes.try_recv() {
                            Ok(n) => batch.push(n),
                            Err(_) => break,
                        }
                    }
                    if l.overflow.swap(false, Ordering::AcqRel) {
                        delivered.clear();
                        if !sender.resync() {
                            return;
                        }
                    }
                    match handle(&inner, l, batch, &mut delivered, &sender).await {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::debug!(error = %e, "watch: reading changes failed");
                            true
                        }
                    }
                }
                None => true,
            },
            _ = tick.tick() => {
                match &l.reap {
                    Some(reap) => {
                        let limit = 1000_i64;
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                            [&inner.namespace, &limit];
                        let reaped = l.client.query(reap, &params);
                        match tokio::time::timeout(inner.command_timeout, reaped).await {
                            Ok(Ok(_)) => false,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "watch: removing expired nodes failed");
                                l.client.is_closed()
                            }
                            Err(_) => true,
                        }
                    }
                    None => l.client.is_closed(),
                }
            }
        };
        if broken {
            listener = None;
        }
    }
}

/// `d` plus up to a quarter of it, at random.
fn jittered(d: Duration) -> Duration {
    let quarter = u64::try_from(d.as_millis() / 4).unwrap_or(0).max(1);
    let random = u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(quarter)).unwrap_or(0);
    d.saturating_add(Duration::from_millis(random))
}

/// One parsed notification.
struct Note {
    kind: char,
    version: i64,
    key: String,
}

fn parse(payload: &str) -> Option<Note> {
    let mut parts = payload.splitn(3, '|');
    let kind = parts.next()?.chars().next()?;
    let version = parts.next()?.parse().ok()?;
    let key = parts.next()?.to_string();
    Some(Note { kind, version, key })
}

/// Handles a batch of notifications: one fetch of the current state of the changed keys, then
/// one event per key, in notification order.
async fn handle(
    inner: &Inner,
    l: &Listener,
    batch: Vec<Notification>,
    delivered: &mut HashMap<Key, i64>,
    sender: &Sender,
) -> Result<()> {
    // The newest version per key, keys in the order of their last notification.
    let mut order: Vec<Key> = Vec::new();
    let mut newest: HashMap<Key, i64> = HashMap::new();
    for n in &batch {
        let Some(note) = parse(n.payload()) else {
            tracing::warn!(payload = n.payload(), "watch: unreadable notification");
            delivered.clear();
            if !sender.resync() {
                return Ok(());
            }
            continue;
        };
        if note.kind == 'r' {
            delivered.clear();
            if !sender.resync() {
                return Ok(());
            }
            continue;
        }
        // Each watch listens on its own channel; anything else there is ignored.
        let expected = if sender.is_nodes() {
            note.kind == 'n'
        } else {
            note.kind == 't' || note.kind == 'd'
        };
        if !expected {
            continue;
        }
        let key = (note.kind, note.key);
        if delivered.get(&key).is_some_and(|v| *v >= note.version) {
            continue;
        }
        let entry = newest.entry(key.clone()).or_insert(note.version);
        *entry = (*entry).max(note.version);
        order.retain(|k| *k != key);
        order.push(key);
    }
    if order.is_empty() {
        return Ok(());
    }
    match sender {
        Sender::Nodes(tx) => {
            let ids: Vec<&str> = order.iter().map(|(_, k)| k.as_str()).collect();
            let rows = fetch(inner, l, &[&inner.namespace, &ids]).await?;
            let mut current: HashMap<String, (Vec<u8>, i64)> = HashMap::new();
            for row in rows {
                if let (Ok(id), Ok(record), Ok(version)) = (
                    row.try_get::<_, String>(0),
                    row.try_get::<_, Vec<u8>>(1),
                    row.try_get::<_, i64>(2),
                ) {
                    current.insert(id, (record, version));
                }
            }
            for key in order {
                let noted = newest.get(&key).copied().unwrap_or(0);
                let event = match current.remove(&key.1) {
                    Some((record, version)) => {
                        delivered.insert(key.clone(), version.max(noted));
                        match dcron_core::backend::check_stored_size(
                            &key.1,
                            record.len(),
                            crate::MAX_VALUE_BYTES,
                        )
                        .and_then(|()| Node::decode(&key.1, &record))
                        {
                            Ok(node) => NodeEvent::Put(node),
                            Err(_) => NodeEvent::Resync,
                        }
                    }
                    None => {
                        delivered.remove(&key);
                        NodeEvent::Delete { id: key.1 }
                    }
                };
                if !tx.send(event) {
                    return Ok(());
                }
            }
        }
        Sender::Tasks(tx) => {
            let records: Vec<&str> = order
                .iter()
                .filter(|(k, _)| *k == 't')
                .map(|(_, n)| n.as_str())
                .collect();
            let tombs: Vec<&str> = order
                .iter()
                .filter(|(k, _)| *k == 'd')
                .map(|(_, n)| n.as_str())
                .collect();
            let rows = fetch(inner, l, &[&inner.namespace, &records, &tombs]).await?;
            let mut tasks: HashMap<String, (Vec<u8>, i64)> = HashMap::new();
            let mut tombstones: HashMap<String, (DateTime<Utc>, i64)> = HashMap::new();
            for row in rows {
                let kind: String = row.try_get(0).unwrap_or_default();
                let Ok(name) = row.try_get::<_, String>(1) else {
                    continue;
                };
                let version: i64 = row.try_get(4).unwrap_or(0);
                if kind == "t" {
                    if let Ok(record) = row.try_get::<_, Vec<u8>>(2) {
                        tasks.insert(name, (record, version));
                    }
                } else if let Ok(at) = row.try_get::<_, DateTime<Utc>>(3) {
                    tombstones.insert(name, (at, version));
                }
            }
            for key in order {
                let noted = newest.get(&key).copied().unwrap_or(0);
                let event = if key.0 == 't' {
                    match tasks.remove(&key.1) {
                        Some((record, version)) => {
                            delivered.insert(key.clone(), version.max(noted));
                            match dcron_core::backend::check_stored_size(
                                &key.1,
                                record.len(),
                                crate::MAX_VALUE_BYTES,
                            )
                            .and_then(|()| TaskMeta::decode(&key.1, &record))
                            {
                                Ok(meta) => TaskMetaEvent::Put(meta),
                                Err(_) => TaskMetaEvent::Resync,
                            }
                        }
                        None => {
                            delivered.remove(&key);
                            TaskMetaEvent::Removed { name: key.1 }
                        }
                    }
                } else {
                    match tombstones.remove(&key.1) {
                        Some((deleted_at, version)) => {
                            delivered.insert(key.clone(), version.max(noted));
                            TaskMetaEvent::Tombstoned(Tombstone {
                                name: key.1,
                                deleted_at,
                            })
                        }
                        None => {
                            delivered.remove(&key);
                            TaskMetaEvent::TombstoneCleared { name: key.1 }
                        }
                    }
                };
                if !tx.send(event) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

async fn fetch(
    inner: &Inner,
    l: &Listener,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>> {
    match tokio::time::timeout(inner.command_timeout, l.client.query(&l.fetch, params)).await {
        Ok(r) => r.map_err(|e| map_pg("watch: read changes", e)),
        Err(_) => Err(timed_out("watch: read changes", inner.command_timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let n = parse("t|42|name|with|bars").expect("parses");
        assert_eq!(
            (n.kind, n.version, n.key.as_str()),
            ('t', 42, "name|with|bars")
        );
        let r = parse("r|0|").expect("parses");
        assert_eq!((r.kind, r.key.as_str()), ('r', ""));
        assert!(parse("garbage").is_none());
        assert!(parse("t|x|k").is_none());
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(400));
            assert!(d >= Duration::from_millis(400) && d < Duration::from_millis(500));
        }
    }
}
