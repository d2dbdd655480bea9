//! The driver's view of the cluster: listings and watches of nodes and tasks, the task set,
//! and ownership (who runs which task, and what a gained task needs first: its life).

use super::*;

impl Driver {
    // ----- registry reads -----

    pub(super) fn list_all(&mut self) {
        let registry = self.registry.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let nodes = registry.list_nodes().await;
            let _ = tx.send(Internal::Nodes(nodes));
            let tasks = match registry.list_tasks().await {
                Ok(t) => registry.list_tombstones().await.map(|tb| (t, tb)),
                Err(e) => Err(e),
            };
            let _ = tx.send(Internal::Tasks(tasks));
            if registry.capabilities().records {
                let records = match crate::admin::pause_records(&*registry).await {
                    Ok(p) => crate::admin::pending_triggers(&*registry)
                        .await
                        .map(|t| (p, t)),
                    Err(e) => Err(e),
                };
                let _ = tx.send(Internal::Records(records));
            }
        });
    }

    pub(super) fn open_watches(&mut self) {
        if self.node_watch.is_none() {
            let registry = self.registry.clone();
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Internal::NodeWatch(registry.watch_nodes().await));
            });
        }
        if self.task_watch.is_none() {
            let registry = self.registry.clone();
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Internal::TaskWatch(registry.watch_tasks().await));
            });
        }
    }

    pub(super) fn retry_watches(&mut self) {
        if self.watch_retry_pending || !self.is_active() {
            return;
        }
        self.watch_retry_pending = true;
        let tx = self.internal_tx.clone();
        let delay = self.cfg.retry_backoff.max(Duration::from_millis(100));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Internal::RetryWatches);
        });
    }

    pub(super) fn node_event(&mut self, ev: NodeEvent) {
        match ev {
            NodeEvent::Put(node) => {
                // A watch event can arrive after a listing that already holds a newer record of
                // the same node (the node writes `last_alive` with every record): keep the newer.
                let stale = self
                    .nodes
                    .get(&node.id)
                    .is_some_and(|known| known.last_alive > node.last_alive);
                if !stale {
                    self.nodes.insert(node.id.clone(), node);
                }
            }
            NodeEvent::Delete { id } => {
                self.nodes.remove(&id);
            }
            NodeEvent::Resync => {
                self.list_all();
                return;
            }
        }
        self.refresh_remote_running();
        self.rebalance();
    }

    pub(super) fn task_event(&mut self, ev: TaskMetaEvent) {
        match ev {
            TaskMetaEvent::Put(meta) => self.upsert_dynamic(Arc::new(meta)),
            TaskMetaEvent::Removed { name } => {
                // A cleanup ended the name's life; a static task of that name starts another.
                self.remove_dynamic(&name);
                self.life_stale(&name);
            }
            TaskMetaEvent::Tombstoned(t) => self.set_tombstone(t.name),
            TaskMetaEvent::TombstoneCleared { name } => self.clear_tombstone(&name),
            TaskMetaEvent::Resync => self.list_all(),
        }
    }

    pub(super) fn report_corrupt(&self, corrupt: &[crate::types::CorruptEntry]) {
        for c in corrupt {
            tracing::warn!(key = %c.key, reason = %c.reason, "corrupt registry record skipped");
            let _ = self.events.send(DcronEvent::CorruptRecord {
                key: c.key.clone(),
                reason: c.reason.clone(),
            });
        }
    }

    pub(super) fn reconcile_tasks(
        &mut self,
        tasks: Listing<TaskMeta>,
        tombstones: Listing<Tombstone>,
    ) {
        self.report_corrupt(&tasks.corrupt);
        self.report_corrupt(&tombstones.corrupt);
        let new_tombs: HashSet<String> = tombstones.items.into_iter().map(|t| t.name).collect();
        let cleared: Vec<String> = self
            .tasks
            .tombstones()
            .difference(&new_tombs)
            .cloned()
            .collect();
        for name in new_tombs
            .difference(self.tasks.tombstones())
            .cloned()
            .collect::<Vec<_>>()
        {
            self.set_tombstone(name);
        }
        for name in cleared {
            self.clear_tombstone(&name);
        }
        let listed: HashSet<String> = tasks.items.iter().map(|m| m.name.clone()).collect();
        let gone: Vec<Arc<str>> = self
            .tasks
            .values()
            .filter(|e| !e.is_static && !listed.contains(&*e.name))
            .map(|e| e.name.clone())
            .collect();
        for name in gone {
            self.remove_dynamic(&name);
        }
        for meta in tasks.items {
            self.upsert_dynamic(Arc::new(meta));
        }
    }

    // ----- task set -----

    pub(super) fn upsert_dynamic(&mut self, meta: Arc<TaskMeta>) {
        if let Some(existing) = self.tasks.get(&meta.name) {
            if existing.is_static {
                tracing::warn!(task = %meta.name, "dynamic task has the name of a static task on this node; the static task wins here");
                return;
            }
            if *existing.meta == *meta {
                return;
            }
        }
        // A record any client may have written: outside the bounds it is reported as corrupt
        // and skipped (an earlier version of it stops too); the other tasks keep firing.
        let checked = meta.check_bounds().and_then(|()| {
            Schedule::parse(
                &meta.cron_format,
                meta.time_zone.as_deref(),
                self.cfg.seconds,
            )
        });
        match checked {
            Ok(schedule) => {
                let name = meta.name.clone();
                self.upsert(name, meta, schedule, None, false);
            }
            Err(e) => {
                tracing::warn!(task = %meta.name.chars().take(64).collect::<String>(), error = %e, "dynamic task record refused: skipped");
                self.report_corrupt(&[crate::types::CorruptEntry {
                    key: meta.name.chars().take(256).collect(),
                    reason: e.to_string(),
                }]);
                (self.cfg.error_handler)(&meta, &e);
                if crate::types::validate_task_name(&meta.name).is_ok() {
                    self.remove_dynamic(&meta.name);
                }
            }
        }
    }

    pub(super) fn upsert(
        &mut self,
        name: String,
        meta: Arc<TaskMeta>,
        schedule: Schedule,
        task: Option<Arc<dyn Task>>,
        is_static: bool,
    ) {
        let up = self.tasks.upsert(&name, meta, schedule, task, is_static);
        if up.new_name && self.cfg.assigner.depends_on_task_list() {
            self.rebalance_all();
        } else {
            self.place(&name, up.was_owned);
        }
        if up.was_owned && !self.tasks.get(&name).is_some_and(|e| e.owned) {
            self.disown(&name);
        }
        self.publish_view();
    }

    /// Cancels the owner token of a task this node stopped owning (or forgot).
    pub(super) fn disown(&mut self, name: &str) {
        if let Some(t) = self.owners.remove(name) {
            t.cancel();
        }
    }

    pub(super) fn remove_dynamic(&mut self, name: &str) {
        if self.tasks.remove_dynamic(name) {
            self.disown(name);
            if self.cfg.assigner.depends_on_task_list() {
                self.rebalance_all();
            }
            self.publish_view();
        }
    }

    pub(super) fn set_tombstone(&mut self, name: String) {
        if self.tasks.tombstone(name.clone()) {
            self.disown(&name);
        }
        self.publish_view();
    }

    pub(super) fn clear_tombstone(&mut self, name: &str) {
        if self.tasks.clear_tombstone(name) {
            if self.tasks.get(name).is_some() {
                self.place(name, false);
            }
            self.publish_view();
        }
    }

    // ----- assignment -----

    pub(super) fn rebalance(&mut self) {
        let members = ownership::members(
            self.nodes.values(),
            &self.node_id,
            self.is_active(),
            self.cfg.weight,
        );
        if members == self.members && self.placement.is_some() {
            return;
        }
        self.placement = match self.cfg.assigner.prepare(&members) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "assignment failed; owning nothing");
                None
            }
        };
        self.members = members;
        self.rebalance_all();
    }

    pub(super) fn rebalance_all(&mut self) {
        let before = self.tasks.owned_count();
        let sorted = self.sorted_names();
        let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
        let view = self.ownership_view(&refs);
        let ownership::Diff { gained, lost } = ownership::diff(self.tasks.values().map(|e| {
            let should = view.owns(&e.name, self.tasks.is_tombstoned(&e.name));
            (e.name.clone(), e.owned, should)
        }));
        let lost_count = lost.len();
        for name in lost {
            if self.tasks.lose(&name) {
                self.disown(&name);
            }
        }
        let lost = lost_count;
        let count_gained = gained.len();
        self.gain(gained);
        if count_gained > 0 || lost > 0 {
            let owned = before + count_gained - lost;
            tracing::info!(node = %self.node_id, gained = count_gained, lost, owned, members = self.members.len(), "rebalanced");
            let _ = self.events.send(DcronEvent::Rebalanced {
                node: self.node_id.to_string(),
                gained: count_gained,
                lost,
                owned,
                members: self.members.len(),
            });
            metrics::counter!("dcron_rebalances_total").increment(1);
            self.publish_view();
        }
    }

    pub(super) fn sorted_names(&self) -> Vec<String> {
        ownership::sorted_names(
            self.cfg.assigner.depends_on_task_list(),
            self.tasks.names(),
            |n| self.tasks.is_tombstoned(n),
        )
    }

    /// What ownership is judged from; `sorted` comes from [`Driver::sorted_names`].
    pub(super) fn ownership_view<'a>(&'a self, sorted: &'a [&'a str]) -> ownership::View<'a> {
        ownership::View {
            me: &self.node_id,
            active: self.is_active(),
            placement: self.placement.as_deref(),
            sorted,
        }
    }

    /// Places one task after it was added or changed.
    pub(super) fn place(&mut self, name: &str, was_owned: bool) {
        let sorted = self.sorted_names();
        let refs: Vec<&str> = sorted.iter().map(String::as_str).collect();
        let should = self
            .ownership_view(&refs)
            .owns(name, self.tasks.is_tombstoned(name));
        let life_known = self.tasks.get(name).is_some_and(|e| e.life.is_some());
        match ownership::place(should, was_owned, life_known) {
            Placed::Elsewhere => {}
            Placed::Reschedule => {
                // Schedule changed on an owned task in the same life: no catch-up, just the
                // next occurrence.
                self.tasks.keep(name);
                self.schedule_next(name, self.clock.now());
            }
            Placed::Gain => {
                let key = self.tasks.get(name).map(|e| e.name.clone());
                self.gain(key.into_iter().collect());
            }
        }
    }

    pub(super) fn drop_ownership(&mut self) {
        for name in self.tasks.lose_all() {
            self.disown(&name);
        }
        self.heap.clear();
        self.members.clear();
        self.placement = None;
        self.publish_view();
    }

    /// Takes tasks over: learn their lives (one batch for those not known yet), then catch up
    /// what nobody claimed and schedule (see [`Driver::plan_gained`]).
    pub(super) fn gain(&mut self, names: Vec<Arc<str>>) {
        if names.is_empty() {
            return;
        }
        let mut unknown = Vec::new();
        let mut known = Vec::new();
        for name in names {
            // Counts stored meanwhile by other owners are read again before the next write.
            self.statuses.gained(&name);
            match self.tasks.gain(&name) {
                Gain::Plan => known.push(name),
                Gain::ReadLife => unknown.push(name),
                Gain::Pending | Gain::Unknown => {}
            }
        }
        self.plan_gained(known);
        self.ensure_lives(unknown);
    }

    /// Reads the lives of `names` from the registry, starting a life now for a name without
    /// one (the first registration of a static task): the names are queued, and the driver's
    /// loop sends the queue in batches after the message at hand ([`Driver::send_life_reads`]),
    /// so a listing or a burst of task events costs a batch, not a read per task; the replies
    /// come back as [`Internal::Lives`].
    pub(super) fn ensure_lives(&mut self, names: Vec<Arc<str>>) {
        self.lives_wanted.extend(names);
    }

    /// Sends the queued life reads in batches of [`LIFE_BATCH`], at most
    /// [`LIFE_READS_IN_FLIGHT`] batches at once across the node: one gaining a million tasks
    /// must not queue a thousand reads at the registry (they would time out and be retried).
    pub(super) fn send_life_reads(&mut self) {
        if self.lives_wanted.is_empty() {
            return;
        }
        let names = std::mem::take(&mut self.lives_wanted);
        let now = self.clock.now();
        for chunk in names.chunks(LIFE_BATCH) {
            let chunk = chunk.to_vec();
            let registry = self.registry.clone();
            let tx = self.internal_tx.clone();
            let permits = self.life_reads.clone();
            tokio::spawn(async move {
                // The semaphore is never closed.
                let _permit = permits.acquire_owned().await.ok();
                let request: Vec<(String, DateTime<Utc>)> =
                    chunk.iter().map(|n| (n.to_string(), now)).collect();
                let r = match registry.ensure_lives(&request).await {
                    Ok(lives) if lives.len() != chunk.len() => Err(Error::Backend {
                        backend: registry.backend(),
                        message: format!(
                            "ensure_lives answered {} lives for {} names",
                            lives.len(),
                            chunk.len()
                        ),
                        source: None,
                    }),
                    other => other,
                };
                let _ = tx.send(Internal::Lives(chunk, r));
            });
        }
    }

    /// Applies lives read from the registry.
    pub(super) fn lives_read(&mut self, names: Vec<Arc<str>>, result: Result<Vec<Life>>) {
        match result {
            Ok(lives) => {
                let mut plan = Vec::new();
                for (name, life) in names.into_iter().zip(lives) {
                    if self.set_life(&name, life) {
                        plan.push(name);
                    }
                }
                self.plan_gained(plan);
            }
            Err(e) => {
                tracing::warn!(node = %self.node_id, error = %e, tasks = names.len(), "reading task lives failed; retrying");
                self.tasks.life_unread(&names);
                if !self.lives_retry_pending {
                    self.lives_retry_pending = true;
                    let tx = self.internal_tx.clone();
                    let delay = self.cfg.retry_backoff.max(Duration::from_millis(100));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Internal::RetryLives);
                    });
                }
            }
        }
    }

    /// Records a task's life; answers whether the task is owned and must be (re)planned: its
    /// life is new to this node. A changed life drops what was scheduled for the old one.
    pub(super) fn set_life(&mut self, name: &str, life: Life) -> bool {
        self.tasks.set_life(name, life)
    }

    /// Forgets a task's life (it changed or ended in the registry) and, when the task is owned,
    /// reads it again.
    pub(super) fn life_stale(&mut self, name: &str) {
        if let Some(key) = self.tasks.life_stale(name) {
            self.ensure_lives(vec![key]);
        }
    }

    /// The earliest instant from which some working node is known to have run: instants at or
    /// after it that nobody claimed fell in an ownership gap and are all caught up. Node
    /// records carry their creation on their own clock: the largest skew is allowed for.
    pub(super) fn gap_floor(&self) -> Option<DateTime<Utc>> {
        ownership::gap_floor(
            self.nodes.values(),
            &self.node_id,
            self.working_since,
            self.cfg.max_clock_skew,
        )
    }

    /// Catches up and schedules owned tasks whose lives are known.
    pub(super) fn plan_gained(&mut self, names: Vec<Arc<str>>) {
        if names.is_empty() {
            return;
        }
        let now = self.clock.now();
        let gap_floor = self.gap_floor();
        let mut catch_up = Vec::new();
        for name in names {
            let pause = self.paused.state(&name);
            let Some(entry) = self.tasks.get_mut(&name) else {
                continue;
            };
            if !entry.owned {
                continue;
            }
            let Some(fires) = entry.fires() else {
                continue;
            };
            let window = window_of(&entry.meta, self.cfg.misfire_window);
            let missed = plan::catch_up(&CatchUp {
                fires,
                now,
                window,
                policy: entry.meta.misfire.unwrap_or(self.cfg.misfire),
                gap_floor,
                pause,
            });
            let life = fires.life.generation;
            match entry.task.clone().or_else(|| self.cfg.task_run_fn.clone()) {
                Some(task) => {
                    if !missed.is_empty() {
                        let _ = self.events.send(DcronEvent::CaughtUp {
                            task: name.to_string(),
                            fires: missed.len(),
                        });
                        metrics::counter!("dcron_catch_up_fires_total")
                            .increment(missed.len() as u64);
                    }
                    let owner = owner_token(&mut self.owners, entry, &self.cfg);
                    let mono = self.clock.monotonic();
                    let stamp = entry.stamp_now();
                    for instant in missed {
                        let deadline = plan::plus(instant, window);
                        catch_up.push(PendingFire {
                            key: FireKey::new(&*name, instant),
                            meta: entry.meta.clone(),
                            task: task.clone(),
                            kind: FireKind::CatchUp,
                            window,
                            owner: owner.clone(),
                            life,
                            deadline,
                            deadline_at: mono + until(now, deadline),
                            min_retention: Duration::ZERO,
                            stamp: stamp.clone(),
                        });
                    }
                }
                None => self.no_handler(&name),
            }
            self.schedule_next(&name, now);
        }
        if !catch_up.is_empty() {
            for chunk in catch_up.chunks(MAX_BATCH) {
                self.claim_batch(chunk.to_vec());
            }
        }
    }

    /// Reports, once per task and node, that this node owns a dynamic task it cannot run.
    pub(super) fn no_handler(&mut self, name: &str) {
        if !self.no_handler.insert(name.to_string()) {
            return;
        }
        tracing::error!(node = %self.node_id, task = name, "this node owns a dynamic task but has no task_run_fn: its fires are not run here");
        metrics::counter!("dcron_tasks_without_handler_total").increment(1);
        let _ = self.events.send(DcronEvent::NoHandler {
            task: name.to_string(),
            node: self.node_id.to_string(),
        });
        self.statuses.no_handler(name, &self.node_id);
    }

    pub(super) fn schedule_next(&mut self, name: &str, after: DateTime<Utc>) {
        let Some(entry) = self.tasks.get(name) else {
            return;
        };
        if !entry.owned {
            return;
        }
        if let Some(next) = entry.fires().and_then(|f| f.next_after(after)) {
            self.heap.push(next, entry.generation, entry.name.clone());
        }
    }
}
