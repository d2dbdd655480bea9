//! What the driver writes besides claims: the overlap markers in its node record, the task
//! statuses, and the API's view.

use super::*;

impl Driver {
    // ----- overlap markers -----

    /// Rebuilds the set of tasks other nodes publish as running.
    pub(super) fn refresh_remote_running(&mut self) {
        let remote = ownership::remote_running(self.nodes.values(), &self.node_id);
        self.running.set_remote(remote);
    }

    /// Writes this node's record with its current running markers (one write in flight at a
    /// time; changes meanwhile are coalesced into the next write).
    pub(super) fn publish_markers(&mut self) {
        let markers = self.running.markers();
        if markers == self.record.running && !self.markers_dirty {
            return;
        }
        let Some((epoch, lease)) = self.lease.clone() else {
            return;
        };
        if self.markers_inflight {
            self.markers_dirty = true;
            return;
        }
        self.markers_dirty = false;
        self.markers_inflight = true;
        self.record.running = markers;
        self.write_record(epoch, lease, Internal::MarkersWritten);
    }

    /// Writes this node's record (with a fresh `last_alive`) in its own task; `done` wraps the
    /// outcome for the loop.
    pub(super) fn write_record(
        &mut self,
        epoch: u64,
        lease: Lease,
        done: fn(u64, Result<()>) -> Internal,
    ) {
        self.record.last_alive = self.clock.now();
        let record = self.record.clone();
        let registry = self.registry.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = registry.update_node(&lease, &record).await;
            let _ = tx.send(done(epoch, r));
        });
    }

    // ----- status -----

    /// Takes the fires that ended since the last look into the local status counts.
    pub(super) fn collect_ended(&mut self) {
        for e in self.ended.drain() {
            self.fire_ended(&e.meta.name, e.scheduled, e.error);
        }
    }

    pub(super) fn fire_ended(
        &mut self,
        name: &str,
        scheduled: DateTime<Utc>,
        error: Option<String>,
    ) {
        if self.cfg.status_interval.is_zero() {
            return;
        }
        self.statuses.fire_ended(name, scheduled, error);
    }

    pub(super) fn status_record(&self, name: &str, st: &StatusLocal) -> TaskStatus {
        let owned = self.tasks.get(name).is_some_and(|e| e.owned);
        st.record(name, &self.node_id, owned, self.clock.now())
    }

    /// Writes the status of tasks whose fires ended since the last flush, in one batch; the
    /// first time a task is written here, its stored counts are read and added.
    pub(super) fn flush_status(&mut self) {
        self.collect_ended();
        if self.status_inflight
            || !self.statuses.is_dirty()
            || !self.registry.capabilities().records
        {
            return;
        }
        let tasks = &self.tasks;
        let (records, unloaded) = self.statuses.take_dirty(
            &self.node_id,
            |name| tasks.get(name).is_some_and(|e| e.owned),
            self.clock.now(),
        );
        self.status_inflight = true;
        let registry = self.registry.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = async {
                let mut bases = HashMap::new();
                if !unloaded.is_empty() {
                    let stored = crate::admin::list_status(&*registry).await?;
                    for s in stored.items {
                        if unloaded.contains(&s.task) {
                            bases.insert(s.task.clone(), (s.run_count, s.failure_count));
                        }
                    }
                    for name in &unloaded {
                        bases.entry(name.clone()).or_insert((0, 0));
                    }
                }
                let batch: Vec<(String, Vec<u8>)> = records
                    .into_iter()
                    .map(|mut rec| {
                        if let Some((runs, failures)) = bases.get(&rec.task) {
                            rec.run_count += runs;
                            rec.failure_count += failures;
                        }
                        (rec.task.clone(), rec.encode())
                    })
                    .collect();
                for chunk in batch.chunks(500) {
                    registry.put_records(RecordKind::Status, chunk).await?;
                }
                Ok(bases)
            }
            .await;
            let _ = tx.send(Internal::StatusFlushed(r));
        });
    }

    /// Leaves once no status write is in flight and none is due.
    pub(super) fn finish_drain(&mut self) {
        if !self.status_inflight {
            self.flush_status();
        }
        if !self.status_inflight && self.drained_pending {
            self.drained_pending = false;
            self.lifecycle(Input::Drained);
        }
    }

    /// What this node knows of a task: its local counts (when loaded), its owner and next fire.
    pub(super) fn local_status(&self, name: &str) -> Option<TaskStatus> {
        let entry = self.tasks.get(name)?;
        let now = self.clock.now();
        let mut out = match self.statuses.get(name) {
            Some(st) if st.base_loaded => self.status_record(name, st),
            _ => TaskStatus::new(name, now),
        };
        if entry.owned {
            out.owner = Some(self.node_id.to_string());
            // Life-aware: nothing before live-since, a one-shot's one fire only.
            out.next_fire = entry.fires().and_then(|f| f.next_after(now));
        }
        Some(out)
    }

    /// Publishes the API's view now (sorting every name: O(n log n)).
    pub(super) fn flush_view(&mut self) {
        let started = std::time::Instant::now();
        self.view_dirty = false;
        self.view_flushed = Instant::now();
        let mut owned: Vec<Arc<str>> = self
            .tasks
            .values()
            .filter(|e| e.owned)
            .map(|e| e.name.clone())
            .collect();
        owned.sort();
        let mut all: Vec<Arc<str>> = self
            .tasks
            .values()
            .filter(|e| !self.tasks.is_tombstoned(&e.name))
            .map(|e| e.name.clone())
            .collect();
        all.sort();
        if let Ok(mut v) = self.view.write() {
            v.owned = owned;
            v.all = all;
        }
        self.view_flush_every = VIEW_FLUSH.max(started.elapsed() * 10);
    }
}
