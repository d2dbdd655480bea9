//! Task records, tombstones and lives: every write is one compare-and-set of one name's state
//! znode (see `state`), decided by the core's tombstone rules on what was read.
//!
//! [`ZkRegistry::write_state`] is the only writer: read the state znode (data and version),
//! decide, then `create` it (when absent) or `setData` it with the version read. `NodeExists`
//! or `BadVersion` means another writer came first: read again and decide again. No step can be
//! half done, because there is only one step.
//!
//! No write here touches the children of a state znode: the name's claims stay through every
//! cleanup, force write and new life, until their retention ends (see `claims`).
//!
//! A write whose reply is lost (connection loss, timeout) may or may not have been applied.
//! Every write carries a random id in the state it writes; the writer reads again and finds
//! either its id (applied: the answer it planned), the version it wrote over (not applied:
//! decide and write again, still a compare-and-set), a version written by someone else right
//! over the one it read (not applied), or a later version by someone else: then it cannot know
//! and answers [`Error::Unavailable`] — never a made-up answer.

use chrono::{DateTime, Utc};
use dcron_core::tombstone::Request;
use dcron_core::{
    check_value_size, validate_task_name, Error, Life, Listing, PutMode, Registry, Result,
    TaskMeta, TaskMetaEvent, Tombstone, WatchStream,
};
use futures::{StreamExt, TryStreamExt};
use zookeeper_async::{CreateMode, ZkError};

use crate::keys::unescape;
use crate::registry::{corrupt, ZkRegistry, CONCURRENCY};
use crate::state::{next_version, State};
use crate::watch::{self, Model};

/// How many times a write is decided again after losing a race before giving up.
const MAX_WRITE_ATTEMPTS: usize = 64;

/// One name's state as read, with the znode version it was read at (`None`: no znode yet).
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub(crate) state: State,
    pub(crate) version: Option<i32>,
    /// The zxid of the write that produced this version (0 when there is no znode).
    pub(crate) mzxid: i64,
}

/// What to do after reading a state.
pub(crate) enum Plan<T> {
    /// Nothing to write; answer this.
    Done(T),
    /// Write this state (one compare-and-set), then answer this.
    Write(State, T),
}

impl ZkRegistry {
    /// Reads a name's state znode.
    pub(crate) async fn read_state(&self, name: &str) -> Result<Snapshot> {
        let path = self.layout().task(name);
        Ok(match self.conn().get_data(&path).await? {
            Some((data, stat)) => Snapshot {
                state: State::decode(&data),
                version: Some(stat.version),
                mzxid: stat.mzxid,
            },
            None => Snapshot {
                state: State::default(),
                version: None,
                mzxid: 0,
            },
        })
    }

    /// The one write path of a name's state: read, `plan`, compare-and-set; again after a lost
    /// race; recognises its own write after a lost reply (see the module docs).
    pub(crate) async fn write_state<T, F>(&self, name: &str, mut plan: F) -> Result<T>
    where
        T: Clone,
        F: FnMut(&Snapshot, &str) -> Result<Plan<T>>,
    {
        let path = self.layout().task(name);
        // Writes whose outcome is unknown: (write id, the version they would produce, answer).
        let mut unknown: Vec<(String, i64, T)> = Vec::new();
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let snap = match self.read_state(name).await {
                Ok(s) => s,
                Err(e) if !unknown.is_empty() => return Err(outcome_unknown(&path, e)),
                Err(e) => return Err(e),
            };
            let current = snap.version.map_or(-1, i64::from);
            if let Some((_, _, answer)) = unknown.iter().find(|(w, _, _)| *w == snap.state.write) {
                return Ok(answer.clone());
            }
            if unknown.iter().any(|(_, v, _)| current > *v) {
                // Ours may have been applied and then overwritten: nobody can tell now.
                return Err(outcome_unknown(
                    &path,
                    Error::unavailable("the state moved on past the lost write"),
                ));
            }
            let write = uuid::Uuid::new_v4().simple().to_string();
            let (state, answer) = match plan(&snap, &write)? {
                Plan::Done(answer) => return Ok(answer),
                Plan::Write(state, answer) => (state, answer),
            };
            let data = state.encode();
            let result = match snap.version {
                None => self
                    .conn()
                    .create(
                        &path,
                        data,
                        CreateMode::Persistent,
                        None,
                        &[ZkError::NodeExists],
                    )
                    .await
                    .map(|r| r.map(|_| ())),
                Some(v) => self
                    .conn()
                    .set_data(
                        &path,
                        data,
                        Some(v),
                        &[ZkError::BadVersion, ZkError::NoNode],
                    )
                    .await
                    .map(|r| r.map(|_| ())),
            };
            match result {
                Ok(Ok(())) => return Ok(answer),
                // Someone else wrote first: read and decide again.
                Ok(Err(_)) => {}
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, znode = %path, "zookeeper: write outcome unknown; reading back");
                    unknown.push((write, next_version(snap.version), answer));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::unavailable(format!(
            "zookeeper: `{path}` kept changing under {MAX_WRITE_ATTEMPTS} attempts to write it"
        )))
    }

    /// Decides one request of the tombstone rules and writes it.
    async fn write_request(&self, name: &str, request: Request<'_>) -> Result<()> {
        self.write_state(name, |snap, write| {
            Ok(
                match snap.state.apply(name, snap.version, request, write)? {
                    Some(state) => Plan::Write(state, ()),
                    None => Plan::Done(()),
                },
            )
        })
        .await
    }

    pub(crate) async fn put_task_record(&self, meta: &TaskMeta, mode: PutMode) -> Result<()> {
        validate_task_name(&meta.name)?;
        check_value_size(meta, meta.encode().len(), &self.capabilities())?;
        let request = match mode {
            PutMode::CreateOnly => Request::AddDynamic(meta),
            PutMode::Update => Request::UpdateDynamic(meta),
            PutMode::Force => Request::ForceAddDynamic(meta),
        };
        self.write_request(&meta.name, request).await
    }

    pub(crate) async fn get_task_record(&self, name: &str) -> Result<Option<TaskMeta>> {
        let snap = self.read_state(name).await?;
        snap.state.meta(&self.layout().task(name))
    }

    pub(crate) async fn list_task_records(&self) -> Result<Listing<TaskMeta>> {
        let mut listing = Listing::default();
        for f in self.fetch_dir(&self.layout().tasks_dir()).await? {
            let state = State::decode(&f.data);
            match state.meta(&f.key) {
                Ok(Some(m)) => listing.items.push(m),
                Ok(None) => {}
                Err(e) => listing.corrupt.push(corrupt(&f.key, e)),
            }
        }
        Ok(listing)
    }

    pub(crate) async fn watch_task_states(&self) -> Result<WatchStream<TaskMetaEvent>> {
        let (tx, rx) = dcron_core::watch_channel(self.inner.config.watch_buffer);
        watch::spawn(
            self.inner.conn.clone(),
            self.layout().tasks_dir(),
            tx,
            Box::new(TaskModel::default()),
        )
        .await?;
        Ok(rx)
    }

    pub(crate) async fn mark_name_deleted(&self, name: &str, at: DateTime<Utc>) -> Result<()> {
        validate_task_name(name)?;
        self.write_request(name, Request::MarkDeleted(at)).await
    }

    pub(crate) async fn get_name_tombstone(&self, name: &str) -> Result<Option<Tombstone>> {
        Ok(self.read_state(name).await?.state.tombstone_of(name))
    }

    pub(crate) async fn list_name_tombstones(&self) -> Result<Listing<Tombstone>> {
        let mut listing = Listing::default();
        for f in self.fetch_dir(&self.layout().tasks_dir()).await? {
            let state = State::decode(&f.data);
            if state.tombstone.is_none() {
                continue;
            }
            match f.key.rsplit('/').next().and_then(unescape) {
                Some(name) => listing.items.extend(state.tombstone_of(&name)),
                None => listing.corrupt.push(corrupt(
                    &f.key,
                    Error::Corrupt {
                        key: f.key.clone(),
                        reason: "a znode name this crate did not write".into(),
                    },
                )),
            }
        }
        Ok(listing)
    }

    pub(crate) async fn clear_name_tombstone(&self, name: &str) -> Result<()> {
        self.write_request(name, Request::Reuse).await
    }

    pub(crate) async fn cleanup_name(&self, name: &str) -> Result<()> {
        // The state znode stays, empty: its version carries the name's generations on, and
        // its children, the name's claims, stay until their retention ends.
        self.write_state(name, |snap, write| {
            if snap.state.is_empty() {
                return Ok(Plan::Done(()));
            }
            Ok(
                match snap
                    .state
                    .apply(name, snap.version, Request::Cleanup, write)?
                {
                    Some(state) => Plan::Write(state, ()),
                    None => Plan::Done(()),
                },
            )
        })
        .await
    }

    pub(crate) async fn cleanup_namespace(&self) -> Result<()> {
        let dir = self.layout().tasks_dir();
        let names: Vec<String> = self
            .conn()
            .children(&dir)
            .await?
            .into_iter()
            .filter_map(|c| unescape(&c))
            .collect();
        let results: Vec<Result<()>> = futures::stream::iter(names)
            .map(|n| async move { self.cleanup_name(&n).await })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let records = self.delete_all_records().await;
        // Every name was tried; the first failure is reported (never a silent `Ok`).
        results.into_iter().collect::<Result<Vec<()>>>()?;
        records
    }

    pub(crate) async fn ensure_name_lives(
        &self,
        names: &[(String, DateTime<Utc>)],
    ) -> Result<Vec<Life>> {
        for (name, _) in names {
            validate_task_name(name)?;
        }
        futures::stream::iter(names.to_vec())
            .map(|(name, at)| async move {
                self.write_state(&name, |snap, write| {
                    Ok(match snap.state.life {
                        Some(life) => Plan::Done(life),
                        None => {
                            let state = snap.state.with_life(snap.version, at, write);
                            let life = state.life.unwrap_or(Life::new(1, at));
                            Plan::Write(state, life)
                        }
                    })
                })
                .await
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }

    pub(crate) async fn restart_name_life(&self, name: &str, at: DateTime<Utc>) -> Result<Life> {
        validate_task_name(name)?;
        self.write_state(name, |snap, write| {
            let state = snap
                .state
                .apply(name, snap.version, Request::ForceAddStatic(at), write)?
                .ok_or_else(|| Error::InvalidState(format!("no new life for `{name}`")))?;
            let life = state
                .life
                .ok_or_else(|| Error::InvalidState(format!("no new life for `{name}`")))?;
            Ok(Plan::Write(state, life))
        })
        .await
    }
}

fn outcome_unknown(path: &str, e: Error) -> Error {
    Error::Unavailable {
        message: format!(
            "zookeeper: the outcome of the write of `{path}` is unknown (its reply was lost): {e}"
        ),
        source: Some(Box::new(e)),
    }
}

/// Turns state znodes into task events: what changed between two versions of one name.
#[derive(Default)]
struct TaskModel {
    known: std::collections::HashMap<String, State>,
}

impl Model<TaskMetaEvent> for TaskModel {
    fn put(&mut self, child: &str, data: &[u8], out: &mut Vec<TaskMetaEvent>) {
        let Some(name) = unescape(child) else {
            return;
        };
        let new = State::decode(data);
        let old = self.known.remove(child).unwrap_or_default();
        diff(&name, &old, &new, out);
        self.known.insert(child.to_string(), new);
    }

    fn gone(&mut self, child: &str, out: &mut Vec<TaskMetaEvent>) {
        let (Some(name), Some(old)) = (unescape(child), self.known.remove(child)) else {
            return;
        };
        diff(&name, &old, &State::default(), out);
    }
}

/// The events between two states of a name, in the reference order: removal, new record,
/// tombstone cleared, tombstone set.
fn diff(name: &str, old: &State, new: &State, out: &mut Vec<TaskMetaEvent>) {
    if old.record.is_some() && new.record.is_none() {
        out.push(TaskMetaEvent::Removed {
            name: name.to_string(),
        });
    }
    if let Some(bytes) = &new.record {
        if old.record.as_ref() != Some(bytes) {
            match crate::state::decode_record(name, bytes) {
                Ok(meta) => out.push(TaskMetaEvent::Put(meta)),
                Err(e) => {
                    tracing::warn!(error = %e, "zookeeper: a task record does not decode");
                    out.push(TaskMetaEvent::Resync);
                }
            }
        }
    }
    match (old.tombstone, new.tombstone) {
        (Some(_), None) => out.push(TaskMetaEvent::TombstoneCleared {
            name: name.to_string(),
        }),
        (before, Some(at)) if before != Some(at) => {
            out.push(TaskMetaEvent::Tombstoned(Tombstone {
                name: name.to_string(),
                deleted_at: at,
            }))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_follow_the_reference_order() {
        let meta = TaskMeta::new("t", "@hourly");
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let with = State {
            record: Some(meta.encode()),
            ..State::default()
        };
        let tomb = State {
            tombstone: Some(at),
            ..with.clone()
        };
        let mut out = Vec::new();
        diff("t", &State::default(), &with, &mut out);
        assert_eq!(out, vec![TaskMetaEvent::Put(meta.clone())]);
        out.clear();
        diff("t", &with, &tomb, &mut out);
        assert!(matches!(out.as_slice(), [TaskMetaEvent::Tombstoned(_)]));
        out.clear();
        diff("t", &tomb, &State::default(), &mut out);
        assert_eq!(
            out,
            vec![
                TaskMetaEvent::Removed { name: "t".into() },
                TaskMetaEvent::TombstoneCleared { name: "t".into() }
            ]
        );
        out.clear();
        // A life starting changes nothing a watcher reports.
        diff(
            "t",
            &with,
            &State {
                life: Some(Life::new(1, at)),
                ..with.clone()
            },
            &mut out,
        );
        assert!(out.is_empty());
    }
}
