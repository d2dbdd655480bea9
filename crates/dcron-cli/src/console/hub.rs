//! The console's live feed: one [`crate::watch::run`] per console (the code behind
//! `dcronctl watch`: registry watches plus polls of claims, pauses and status records), fanned
//! out to every open page over server-sent events, and the recent fires it has seen, kept for
//! the timeline.
//!
//! The registry keeps no fire history beyond the claims it retains (about a minute and a half
//! by default) and each task's last result. So the timeline holds: the retained claims found
//! when the console started (`source: "claim"`), then every fire (a new claim) and every
//! completed run (a status record whose run count grew; triggered runs show only as these) the
//! console observed since (`source: "watch"`), for the last hour.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Claim, Registry};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::{broadcast, watch as signal};

use crate::ops::Snapshot;
use crate::secret::Secrets;
use crate::watch::{self, Stamped, WatchEvent, WatchOptions};

/// How long the timeline keeps an entry.
pub const TIMELINE_SPAN: Duration = Duration::from_secs(3600);
/// The most entries the timeline keeps.
pub const TIMELINE_MAX: usize = 5000;
/// How many server-sent events a slow page may fall behind before it is told to resync.
const FEED_CAPACITY: usize = 256;

/// What one timeline entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A fire was claimed by a node (it runs there).
    Fire,
    /// A node recorded a completed run (scheduled or triggered) in the task's status.
    Result,
}

/// One fire or completed run on the timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// Fire or completed run.
    pub kind: EntryKind,
    /// Task name.
    pub task: String,
    /// The scheduled instant (for a result: the last fire its status record names).
    pub instant: Option<DateTime<Utc>>,
    /// The node that claimed or ran it.
    pub node: Option<String>,
    /// The claim's fencing token (fires).
    pub token: Option<u64>,
    /// `ok`, `failed: …` or `no handler on …` (results).
    pub result: Option<String>,
    /// When the console saw it.
    pub seen_at: DateTime<Utc>,
    /// `claim` (a claim retained when the console started) or `watch` (seen live).
    pub source: &'static str,
}

impl TimelineEntry {
    fn from_claim(c: &Claim, seen_at: DateTime<Utc>) -> Self {
        TimelineEntry {
            kind: EntryKind::Fire,
            task: c.fire.task.clone(),
            instant: Some(c.fire.instant),
            node: Some(c.node_id.clone()),
            token: Some(c.token),
            result: None,
            seen_at,
            source: "claim",
        }
    }

    fn from_event(s: &Stamped) -> Option<Self> {
        match &s.event {
            WatchEvent::Fire {
                task,
                instant,
                node,
                token,
            } => Some(TimelineEntry {
                kind: EntryKind::Fire,
                task: task.clone(),
                instant: Some(*instant),
                node: Some(node.clone()),
                token: Some(*token),
                result: None,
                seen_at: s.at,
                source: "watch",
            }),
            WatchEvent::Result {
                task,
                instant,
                node,
                result,
                ..
            } => Some(TimelineEntry {
                kind: EntryKind::Result,
                task: task.clone(),
                instant: *instant,
                node: node.clone(),
                token: None,
                result: Some(result.clone()),
                seen_at: s.at,
                source: "watch",
            }),
            _ => None,
        }
    }

    fn same_fire(&self, other: &TimelineEntry) -> bool {
        self.kind == EntryKind::Fire
            && other.kind == EntryKind::Fire
            && self.task == other.task
            && self.instant == other.instant
            && self.token == other.token
    }
}

/// One message for the pages: an SSE event name and its data (one line of JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedMessage {
    /// `dcron` (a [`Stamped`] event), `warning` or `ready`.
    pub name: &'static str,
    /// JSON.
    pub data: String,
}

/// The shared feed and timeline.
#[derive(Debug)]
pub struct Hub {
    feed: broadcast::Sender<Arc<FeedMessage>>,
    timeline: Mutex<VecDeque<TimelineEntry>>,
    secrets: Secrets,
}

impl Hub {
    /// An empty hub; `secrets` are scrubbed from every warning it passes on.
    pub fn new(secrets: Secrets) -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Hub {
            feed,
            timeline: Mutex::new(VecDeque::new()),
            secrets,
        }
    }

    /// A new subscription to the feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedMessage>> {
        self.feed.subscribe()
    }

    /// The timeline, oldest first.
    pub fn timeline(&self) -> Vec<TimelineEntry> {
        match self.timeline.lock() {
            Ok(t) => t.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        }
    }

    /// Adds an entry (a fire already present is not added twice) and drops the expired ones.
    pub fn record(&self, entry: TimelineEntry) {
        let mut t = match self.timeline.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        if entry.kind == EntryKind::Fire && t.iter().any(|e| e.same_fire(&entry)) {
            return;
        }
        let horizon = chrono::Duration::from_std(TIMELINE_SPAN)
            .ok()
            .and_then(|span| entry.seen_at.checked_sub_signed(span));
        t.push_back(entry);
        while t.len() > TIMELINE_MAX
            || t.front()
                .zip(horizon)
                .is_some_and(|(e, h)| e.seen_at < h && e.instant.is_none_or(|i| i < h))
        {
            t.pop_front();
        }
    }

    fn publish(&self, name: &'static str, data: String) {
        // No page listening is not an error.
        let _ = self.feed.send(Arc::new(FeedMessage { name, data }));
    }

    fn warn(&self, text: &str) {
        let text = self.secrets.scrub(text);
        self.publish(
            "warning",
            serde_json::json!({ "at": Utc::now(), "warning": text }).to_string(),
        );
    }

    fn emit(&self, ev: &Stamped) {
        if let Some(entry) = TimelineEntry::from_event(ev) {
            self.record(entry);
        }
        let mut value = serde_json::to_value(ev).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("line".into(), self.secrets.scrub(&ev.line()).into());
        }
        self.publish("dcron", value.to_string());
    }

    /// Lists the claims the registry retains for the snapshot's tasks into the timeline.
    async fn backfill(&self, registry: &dyn Registry, snap: &Snapshot) -> dcron_core::Result<()> {
        let mut names: Vec<String> = snap
            .tasks
            .iter()
            .map(|t| t.name.clone())
            .chain(snap.tombstones.iter().map(|t| t.name.clone()))
            .chain(snap.static_names.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        let listed: Vec<Vec<Claim>> = futures::stream::iter(names)
            .map(|name| async move {
                Ok::<_, dcron_core::Error>(registry.list_claims(&name).await?.items)
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let now = Utc::now();
        let mut claims: Vec<Claim> = listed.into_iter().flatten().collect();
        claims.sort_by_key(|c| c.fire.instant);
        for c in &claims {
            self.record(TimelineEntry::from_claim(c, now));
        }
        Ok(())
    }

    /// Feeds the hub from the registry until `shutdown` turns true: backfills the timeline,
    /// then runs the watch (restarted after a non-retryable error, which is reported to the
    /// pages as a warning).
    pub async fn run(
        self: Arc<Self>,
        registry: Arc<dyn Registry>,
        interval: Duration,
        mut shutdown: signal::Receiver<bool>,
    ) {
        let retry = interval.max(Duration::from_millis(100)).saturating_mul(5);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = async {
                let snap = Snapshot::load(registry.as_ref()).await?;
                self.backfill(registry.as_ref(), &snap)
                    .await
                    .map_err(crate::error::CliError::from)?;
                Ok::<_, crate::error::CliError>(snap)
            };
            let result = match started.await {
                Ok(snap) => {
                    self.publish("ready", "{}".into());
                    let opts = WatchOptions {
                        interval,
                        extra_tasks: snap.static_names.iter().cloned().collect(),
                        ..WatchOptions::default()
                    };
                    let mut stop = shutdown.clone();
                    let stop = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let mut emit = |ev: &Stamped| {
                        self.emit(ev);
                        true
                    };
                    let mut warn = |w: &str| self.warn(w);
                    watch::run(registry.clone(), &opts, stop, &mut emit, &mut warn).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return,
                Err(e) => self.warn(&format!(
                    "{e} (retrying in {})",
                    crate::duration::format_duration(retry)
                )),
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcron_core::FireKey;

    #[test]
    fn fires_are_kept_once_and_for_an_hour() {
        let hub = Hub::new(Secrets::new());
        let t0 = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("valid");
        let claim = |s: i64, token| Claim {
            fire: FireKey::new("t", t0 + chrono::Duration::seconds(s)),
            node_id: "n1".into(),
            epoch: 1,
            generation: 1,
            token,
        };
        hub.record(TimelineEntry::from_claim(&claim(0, 1), t0));
        hub.record(TimelineEntry::from_claim(&claim(0, 1), t0));
        hub.record(TimelineEntry::from_claim(&claim(1, 2), t0));
        assert_eq!(hub.timeline().len(), 2);
        let late = t0 + chrono::Duration::seconds(3601);
        hub.record(TimelineEntry::from_claim(&claim(3601, 3), late));
        let kept: Vec<Option<u64>> = hub.timeline().iter().map(|e| e.token).collect();
        assert_eq!(kept, [Some(2), Some(3)]);
    }

    #[test]
    fn results_enter_the_timeline_and_warnings_are_scrubbed() {
        let mut secrets = Secrets::new();
        secrets.add("hunter22");
        let hub = Hub::new(secrets);
        let mut rx = hub.subscribe();
        hub.emit(&Stamped {
            at: Utc::now(),
            event: WatchEvent::Result {
                task: "t".into(),
                instant: None,
                node: Some("n1".into()),
                result: "ok".into(),
                runs: 1,
                failures: 0,
            },
        });
        assert_eq!(hub.timeline()[0].kind, EntryKind::Result);
        assert_eq!(rx.try_recv().expect("event").name, "dcron");
        hub.warn("redis://u:hunter22@h unreachable");
        let w = rx.try_recv().expect("warning");
        assert!(w.name == "warning" && !w.data.contains("hunter22"), "{w:?}");
    }
}
