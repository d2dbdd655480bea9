//! Watches: an etcd watch started right after the revision of a snapshot, kept running by a
//! background task that feeds a [`dcron_core::watch_channel`].
//!
//! ```text
//!  watch_*() ── read revision R ──► spawn ──► etcd watch from R+1 ──► events ──► channel
//!                                     ▲             │ stream error / cancel
//!                                     │             ▼
//!                                     └── back-off, Resync, resume after the last event seen
//!                                         (compacted: Resync, restart from the current revision)
//! ```
//!
//! The task ends when the consumer drops the stream (checked on every event and once a second).

use std::time::Duration;

use dcron_core::{
    watch_channel, Node, NodeEvent, Result, ResyncEvent, TaskMeta, TaskMetaEvent, Tombstone,
    WatchSender, WatchStream,
};
use etcd_client::{Event, EventType, WatchOptions, WatchStream as EtcdWatchStream};

use crate::error::{self, map_err};
use crate::keys::{prefix_end, Keys};
use crate::EtcdRegistry;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle watch checks whether its consumer is gone.
const CLOSED_CHECK: Duration = Duration::from_secs(1);

/// Watches the node records of the namespace.
pub(crate) async fn watch_nodes(reg: EtcdRegistry) -> Result<WatchStream<NodeEvent>> {
    let prefix = reg.keys().nodes_prefix();
    let end = prefix_end(prefix.as_bytes());
    let translate = move |event: &Event| -> Option<NodeEvent> {
        let kv = event.kv()?;
        let id = Keys::name_under(&prefix, kv.key())?;
        match event.event_type() {
            EventType::Put => match crate::sized(&id, kv).and_then(|v| Node::decode(&id, v)) {
                Ok(node) => Some(NodeEvent::Put(node)),
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "corrupt node record in etcd watch");
                    None
                }
            },
            EventType::Delete => Some(NodeEvent::Delete { id }),
        }
    };
    start(
        reg.clone(),
        reg.keys().nodes_prefix().into_bytes(),
        end,
        translate,
    )
    .await
}

/// Watches the task records and tombstones of the namespace.
pub(crate) async fn watch_tasks(reg: EtcdRegistry) -> Result<WatchStream<TaskMetaEvent>> {
    let (start_key, end) = task_range(&reg);
    let translate = task_events(&reg);
    start(reg, start_key, end, translate).await
}

/// One range from `tasks/` to the end of `tombstones/`: nothing else of the layout sorts in
/// between (`claims/` and `nodes/` sort before `tasks/`), and keys are filtered anyway.
fn task_range(reg: &EtcdRegistry) -> (Vec<u8>, Vec<u8>) {
    (
        reg.keys().tasks_prefix().into_bytes(),
        prefix_end(reg.keys().tombstones_prefix().as_bytes()),
    )
}

/// Turns etcd events of the task range into task events.
fn task_events(reg: &EtcdRegistry) -> impl Fn(&Event) -> Option<TaskMetaEvent> + Send + Sync {
    let tasks = reg.keys().tasks_prefix();
    let tombstones = reg.keys().tombstones_prefix();
    move |event: &Event| -> Option<TaskMetaEvent> {
        let kv = event.kv()?;
        if let Some(name) = Keys::name_under(&tasks, kv.key()) {
            return match event.event_type() {
                EventType::Put => {
                    match crate::sized(&name, kv).and_then(|v| TaskMeta::decode(&name, v)) {
                        Ok(meta) if meta.name == name => Some(TaskMetaEvent::Put(meta)),
                        Ok(meta) => {
                            tracing::warn!(task = %name, stored = %meta.name, "task record stored under another name");
                            None
                        }
                        Err(e) => {
                            tracing::warn!(task = %name, error = %e, "corrupt task record in etcd watch");
                            None
                        }
                    }
                }
                EventType::Delete => Some(TaskMetaEvent::Removed { name }),
            };
        }
        let name = Keys::name_under(&tombstones, kv.key())?;
        match event.event_type() {
            EventType::Put => {
                match crate::sized(&name, kv).and_then(|v| Tombstone::decode(&name, v)) {
                    Ok(tombstone) => Some(TaskMetaEvent::Tombstoned(tombstone)),
                    Err(e) => {
                        tracing::warn!(task = %name, error = %e, "corrupt tombstone in etcd watch");
                        None
                    }
                }
            }
            EventType::Delete => Some(TaskMetaEvent::TombstoneCleared { name }),
        }
    }
}

async fn start<T, F>(
    reg: EtcdRegistry,
    key: Vec<u8>,
    range_end: Vec<u8>,
    translate: F,
) -> Result<WatchStream<T>>
where
    T: ResyncEvent + Send + Unpin + 'static,
    F: Fn(&Event) -> Option<T> + Send + Sync + 'static,
{
    // Everything after this revision is delivered: a list made before this call returned plus
    // the events misses nothing.
    let revision = reg.current_revision().await?;
    let (tx, rx) = watch_channel(reg.inner.config.watch_buffer);
    tokio::spawn(run(reg, key, range_end, revision + 1, tx, translate));
    Ok(rx)
}

/// How a watch stream ended.
enum End {
    /// The consumer dropped the stream: stop.
    ConsumerGone,
    /// The start revision was compacted away.
    Compacted,
    /// The stream broke (connection lost, server restart, cancelled by the server).
    Broken(String),
}

async fn run<T, F>(
    reg: EtcdRegistry,
    key: Vec<u8>,
    range_end: Vec<u8>,
    mut next_revision: i64,
    tx: WatchSender<T>,
    translate: F,
) where
    T: ResyncEvent + Send + Unpin + 'static,
    F: Fn(&Event) -> Option<T> + Send + Sync + 'static,
{
    let context = format!("watch {}", String::from_utf8_lossy(&key));
    let mut backoff = MIN_BACKOFF;
    loop {
        if tx.is_closed() {
            return;
        }
        let options = WatchOptions::new()
            .with_range(range_end.clone())
            .with_start_revision(next_revision)
            .with_progress_notify();
        let created = reg
            .raw(|mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.watch(key, Some(options)).await }
            })
            .await;
        let end = match created {
            // Dropping the stream (request and response halves together) cancels the watch.
            Ok(mut stream) => pump(&mut stream, &tx, &translate, &mut next_revision).await,
            Err(f) => End::Broken(f.into_error(&context).to_string()),
        };
        match end {
            End::ConsumerGone => return,
            End::Compacted => {
                tracing::info!(%context, "etcd watch revision compacted; restarting from now");
                if !resync(&tx) {
                    return;
                }
                match reg.current_revision().await {
                    Ok(revision) => {
                        next_revision = revision + 1;
                        backoff = MIN_BACKOFF;
                    }
                    Err(e) => {
                        tracing::warn!(%context, error = %e, "etcd watch cannot read the revision");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            End::Broken(reason) => {
                tracing::warn!(%context, %reason, retry_in = ?backoff, "etcd watch broken; reconnecting");
                // Resuming after the last event seen loses nothing, but the consumer is told to
                // list again all the same (events may have coalesced while disconnected).
                if !resync(&tx) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Tells the consumer to list again. Queued as an event rather than with
/// [`WatchSender::resync`], which only sets a flag and does not wake a consumer already
/// waiting on an empty channel (it would see the marker only with the next event); a full
/// buffer still turns it into the overflow marker.
fn resync<T: ResyncEvent>(tx: &WatchSender<T>) -> bool {
    tx.send(T::resync())
}

async fn pump<T, F>(
    stream: &mut EtcdWatchStream,
    tx: &WatchSender<T>,
    translate: &F,
    next_revision: &mut i64,
) -> End
where
    T: ResyncEvent + Send + Unpin + 'static,
    F: Fn(&Event) -> Option<T>,
{
    let mut check = tokio::time::interval(CLOSED_CHECK);
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = check.tick() => {
                if tx.is_closed() {
                    return End::ConsumerGone;
                }
                continue;
            }
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => return End::Broken("the server closed the watch stream".into()),
            Err(e) if error::is_compacted(&e) => return End::Compacted,
            Err(e) => return End::Broken(map_err(e, "watch stream").to_string()),
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return End::Compacted;
            }
            return End::Broken(format!("cancelled by the server: {}", resp.cancel_reason()));
        }
        if resp.events().is_empty() {
            // A progress notification: every later event has a higher revision.
            if let Some(header) = resp.header() {
                *next_revision = (*next_revision).max(header.revision() + 1);
            }
            continue;
        }
        for event in resp.events() {
            if let Some(kv) = event.kv() {
                *next_revision = (*next_revision).max(kv.mod_revision() + 1);
            }
            if let Some(item) = translate(event) {
                if !tx.send(item) {
                    return End::ConsumerGone;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EtcdRegistryConfig;
    use dcron_core::{Error, PutMode, Registry};
    use futures::StreamExt;

    fn meta(name: impl Into<String>) -> TaskMeta {
        let mut meta = TaskMeta::new(name, "@hourly");
        meta.created_at = Some(chrono::Utc::now());
        meta
    }

    async fn next_event(rx: &mut WatchStream<TaskMetaEvent>) -> Option<TaskMetaEvent> {
        tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .ok()
            .flatten()
    }

    /// A watch asked to start at a compacted revision yields `Resync`, then follows on from the
    /// current revision. (On the shared server; compaction never disturbs live watches.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compacted_start_revision_resyncs_and_continues() {
        let namespace = format!(
            "dcron-etcd-unit-compacted-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let reg = match EtcdRegistryConfig::from_env()
            .namespace(namespace)
            .connect()
            .await
        {
            Ok(reg) => reg,
            Err(e @ Error::Unavailable { .. }) => {
                assert!(
                    std::env::var("DCRON_TEST_REQUIRE").map_or(true, |v| v.trim() != "1"),
                    "etcd unreachable and DCRON_TEST_REQUIRE=1: {e}"
                );
                println!("skipped: etcd unreachable: {e}");
                return;
            }
            Err(e) => panic!("connect: {e}"),
        };
        let old = reg.current_revision().await.expect("revision");
        // Two writes, so that compacting at the second removes the revision of the first.
        for name in ["a", "a2"] {
            reg.put_task(&meta(name), PutMode::CreateOnly)
                .await
                .expect("put");
        }
        let now = reg.current_revision().await.expect("revision");
        match reg.client().clone().compact(now, None).await {
            Ok(_) => {}
            // Someone compacted further meanwhile: just as good.
            Err(e) if error::is_compacted(&e) => {}
            Err(e) => panic!("compact: {e}"),
        }
        let (start_key, end) = task_range(&reg);
        let (tx, mut rx) = watch_channel(16);
        let translate = task_events(&reg);
        tokio::spawn(run(reg.clone(), start_key, end, old + 1, tx, translate));
        let asked = tokio::time::Instant::now();
        assert_eq!(next_event(&mut rx).await, Some(TaskMetaEvent::Resync));
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "Resync took {:?} to arrive",
            asked.elapsed()
        );
        // Wait until the restarted watch runs: a put is seen eventually (earlier ones may be
        // missed while it restarts, which is what the Resync told the consumer).
        let mut seen = false;
        for i in 0..20 {
            let name = format!("b{i}");
            reg.put_task(&meta(name.clone()), PutMode::CreateOnly)
                .await
                .expect("put");
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            while tokio::time::Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(100), rx.next()).await {
                    Ok(Some(TaskMetaEvent::Put(m))) if m.name.starts_with('b') => seen = true,
                    Ok(Some(TaskMetaEvent::Put(m))) if m.name.starts_with('a') => {
                        panic!("a compacted event was delivered")
                    }
                    _ => {}
                }
                if seen {
                    break;
                }
            }
            if seen {
                break;
            }
        }
        assert!(seen, "the watch did not continue after the compaction");
        drop(rx);
        reg.cleanup_all().await.expect("cleanup");
    }
}
