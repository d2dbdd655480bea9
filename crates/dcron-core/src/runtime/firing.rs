//! The driver's firing path: catch-up of gained tasks, the timer heap, claim batches sent
//! ahead of the instants, and the pause, trigger-now and backfill requests.

use super::*;

impl Driver {
    // ----- firing -----

    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        let tasks = &self.tasks;
        let ms = self
            .heap
            .earliest(|name, generation| tasks.is_live(name, generation))?;
        // Claims go out `claim_ahead` before the instant; the handlers start at the instant.
        let target = timers::wake_at(ms, self.cfg.claim_ahead)?;
        Some(self.clock.monotonic() + until(self.clock.now(), target))
    }

    pub(super) fn fire_due(&mut self) {
        if !self.is_active() {
            return;
        }
        let now = self.clock.now();
        let mono = self.clock.monotonic();
        let horizon_ms = timers::horizon_ms(now, self.cfg.claim_ahead);
        let mut batch = Vec::new();
        let mut reschedule = Vec::new();
        let mut sent = 0;
        loop {
            let tasks = &self.tasks;
            let Some(due) = self.heap.pop_due(horizon_ms, |name, generation| {
                tasks.is_live(name, generation)
            }) else {
                break;
            };
            let name = due.name.clone();
            let Some(entry) = self.tasks.get_mut(&name) else {
                continue;
            };
            let Some(life) = entry.life else {
                continue;
            };
            let Some(instant) = due.instant() else {
                continue;
            };
            let window = window_of(&entry.meta, self.cfg.misfire_window);
            let task = entry.task.clone().or_else(|| self.cfg.task_run_fn.clone());
            let meta = entry.meta.clone();
            let owner = owner_token(&mut self.owners, entry, &self.cfg);
            let stamp = entry.stamp_now();
            reschedule.push((name.clone(), instant));
            let paused = self.paused.is_paused(&name);
            let deadline = match claims::judge_due(now, instant, window, paused, task.is_some()) {
                Due::Paused => {
                    let key = FireKey::new(&*name, instant);
                    let info = self.env.info(&key, FireKind::Scheduled);
                    metrics::counter!("dcron_fires_skipped_total", "reason" => SkipReason::Paused.as_str()).increment(1);
                    let _ = self.events.send(DcronEvent::Skipped {
                        fire: info,
                        reason: SkipReason::Paused,
                    });
                    continue;
                }
                Due::Missed => {
                    let key = FireKey::new(&*name, instant);
                    tracing::warn!(task = %name, scheduled = %instant, "fire later than its misfire window: not claimed");
                    metrics::counter!("dcron_fires_missed_total").increment(1);
                    let _ = self
                        .events
                        .send(DcronEvent::Missed(self.env.info(&key, FireKind::Scheduled)));
                    continue;
                }
                Due::NoHandler => {
                    self.no_handler(&name);
                    continue;
                }
                Due::Claim { deadline } => deadline,
            };
            let Some(task) = task else {
                continue;
            };
            let key = FireKey::new(&*name, instant);
            self.env
                .emit(|| DcronEvent::Scheduled(self.env.info(&key, FireKind::Scheduled)));
            batch.push(PendingFire {
                key,
                meta,
                task,
                kind: FireKind::Scheduled,
                window,
                owner,
                life: life.generation,
                deadline,
                deadline_at: mono + until(now, deadline),
                min_retention: Duration::ZERO,
                stamp,
            });
            // A full batch goes out at once, the first of a burst sooner: its
            // handlers start while the rest is still being claimed.
            if batch.len() >= claims::batch_limit(sent) {
                sent += batch.len();
                self.claim_batch(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            self.claim_batch(batch);
        }
        // The next occurrences are computed after the claims went out: the cron math of a
        // large burst then runs while the claims and handlers do, not before them.
        for (name, instant) in reschedule {
            self.schedule_next(&name, instant);
        }
    }

    /// The settings a claim's retention depends on.
    pub(super) fn claim_timing(cfg: &Config) -> ClaimTiming {
        ClaimTiming {
            max_clock_skew: cfg.max_clock_skew,
            ttl: cfg.ttl,
            claim_margin: cfg.claim_margin,
            claim_retention: cfg.claim_retention,
        }
    }

    /// The seed of this node's back-off jitter: its stable name when it has one (so that a
    /// replayed simulation waits the same), else its id.
    pub(super) fn jitter_seed(&self) -> u64 {
        let key = self.cfg.name.as_deref().unwrap_or(&self.node_id);
        dcron_assign::stable_hash(key.as_bytes())
    }

    /// The claimant this node claims as now: its id and its current registration epoch.
    pub(super) fn claimant(&self) -> Option<Claimant> {
        self.lease
            .as_ref()
            .map(|(epoch, _)| Claimant::new(self.node_id.to_string(), *epoch))
    }

    /// Claims a batch in one registry call (retried while the window is open), then runs the
    /// fires won. Runs in its own task so the loop keeps its timers.
    pub(super) fn claim_batch(&self, batch: Vec<PendingFire>) {
        self.claim_batch_with(batch, None);
    }

    pub(super) fn claim_batch_with(
        &self,
        batch: Vec<PendingFire>,
        report: Option<oneshot::Sender<(usize, usize, usize)>>,
    ) {
        let Some(claimant) = self.claimant() else {
            return;
        };
        let env = self.env.clone();
        let internal = self.internal_tx.clone();
        let timing = Driver::claim_timing(&self.cfg);
        let backoff = claims::first_backoff(self.cfg.retry_backoff);
        // Tracked with the handlers: a stop waits for claims in flight, and a fire that was
        // won still runs (nobody else can run it once it is claimed).
        let tracker = self.handlers.clone();
        tracker.spawn(async move {
            let now = env.clock.now();
            let mut pending: Vec<(PendingFire, ClaimRequest)> = batch
                .into_iter()
                .map(|f| {
                    let retention =
                        timing.retention(now, f.deadline).max(f.min_retention);
                    let request = ClaimRequest::new(f.key.clone(), f.life, f.deadline, retention);
                    (f, request)
                })
                .collect();
            let (mut won, mut lost, mut tombstoned) = (0, 0, 0);
            let mut delay = backoff;
            let mut first_attempt = true;
            while !pending.is_empty() {
                // The same claimant retries the same requests: a claim that was applied but
                // whose reply was lost answers `WonEarlier` now, so no fire is lost that way.
                let requests: Vec<ClaimRequest> = pending.iter().map(|(_, r)| r.clone()).collect();
                let t0 = Instant::now();
                let r = env.registry.claim(&claimant, &requests).await;
                metrics::histogram!("dcron_claim_batch_seconds").record(t0.elapsed().as_secs_f64());
                let mut retry = Vec::new();
                match r {
                    Ok(outcomes) if outcomes.len() == requests.len() => {
                        let mut launches = Vec::with_capacity(pending.len());
                        for ((fire, request), outcome) in pending.into_iter().zip(outcomes) {
                            match claims::judge_outcome(outcome, first_attempt) {
                                // Held by this node since an earlier call of another path (a
                                // catch-up of an instant it claimed before, a backfill of one
                                // it ran): started already; not started again.
                                Verdict::HeldAlready => lost += 1,
                                // A retry learning the claim it made when its reply was lost
                                // (`WonEarlier`), or a fresh win.
                                Verdict::Start { token } => match accept(&env, fire, token) {
                                    Accepted::Launch(launch) => {
                                        won += 1;
                                        launches.push(launch);
                                    }
                                    // Started here before: for a backfill, that is "already
                                    // claimed".
                                    Accepted::AlreadyStarted => lost += 1,
                                    Accepted::Late => {}
                                },
                                Verdict::Lost => {
                                    lost += 1;
                                    metrics::counter!("dcron_fires_lost_total").increment(1);
                                    env.emit(|| DcronEvent::LostClaim(env.info(&fire.key, fire.kind)));
                                }
                                Verdict::Late => {
                                    report_missed(&env, &fire, "the registry refused the claim past its deadline");
                                }
                                Verdict::Tombstoned => {
                                    tombstoned += 1;
                                    metrics::counter!("dcron_fires_skipped_total", "reason" => "tombstoned")
                                        .increment(1);
                                    env.emit(|| DcronEvent::SkippedTombstoned(env.info(&fire.key, fire.kind)));
                                    let _ = internal.send(Internal::OneShotEnded {
                                        name: fire.key.task.clone(),
                                        done: true,
                                    });
                                }
                                Verdict::Superseded => {
                                    // Planned for a life that ended: the driver learns the new
                                    // one and plans its fires.
                                    metrics::counter!("dcron_fires_superseded_total").increment(1);
                                    env.emit(|| DcronEvent::Superseded(env.info(&fire.key, fire.kind)));
                                    let _ = internal.send(Internal::Superseded(fire.key.task.clone()));
                                }
                                Verdict::Retry => retry.push((fire, request)),
                                Verdict::Failed(e) => {
                                    tracing::error!(error = %e, fire = %fire.key, "claim of one fire failed");
                                    report_missed(&env, &fire, "the claim failed");
                                }
                            }
                        }
                        env.launch_all(launches);
                    }
                    Ok(o) => {
                        tracing::error!(expected = requests.len(), got = o.len(), "registry answered a claim batch with the wrong number of outcomes; retrying it");
                        retry = pending;
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(error = %e, fires = requests.len(), "claim batch failed; retrying");
                        retry = pending;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, fires = requests.len(), "claim batch refused");
                        for (fire, _) in &pending {
                            report_missed(&env, fire, "the claim was refused");
                        }
                        break;
                    }
                }
                // Retry what is undecided while its deadline allows. A stop lets them go on
                // through its grace period (the claim may be this node's, and then nobody else
                // may run the fire); only the end of the grace period gives up.
                let mono = env.clock.monotonic();
                pending = Vec::new();
                for (fire, request) in retry {
                    if claims::gives_up(mono, fire.deadline_at, env.cancel.is_cancelled()) {
                        report_missed(&env, &fire, "its claim could not be decided before its deadline");
                    } else {
                        pending.push((fire, request));
                    }
                }
                if !pending.is_empty() {
                    first_attempt = false;
                    tokio::time::sleep(delay).await;
                    delay = claims::next_backoff(delay);
                }
            }
            metrics::counter!("dcron_fires_claimed_total").increment(won as u64);
            if let Some(report) = report {
                let _ = report.send((won, lost, tombstoned));
            }
        });
    }

    // ----- pause, trigger, backfill -----

    pub(super) fn apply_pause(&mut self, record: PauseRecord) {
        let task = record.task.clone();
        if self.paused.apply(record) {
            self.invalidate(&task);
        }
    }

    /// Moves a task's stamp: fires claimed ahead of their instant for it do not start.
    pub(super) fn invalidate(&self, name: &str) {
        self.tasks.invalidate(name);
    }

    /// Consumes the trigger requests of owned tasks (one atomic delete each: only the node
    /// whose delete succeeds runs the fire) and drops requests nobody knows after they expire.
    pub(super) fn handle_triggers(&mut self, triggers: Vec<TriggerRecord>) {
        let now = self.clock.now();
        for t in triggers {
            let key = t.key();
            if self.triggers_inflight.contains(&key) {
                continue;
            }
            let tombstoned = self.tasks.is_tombstoned(&t.task);
            let entry = self.tasks.get(&t.task);
            let seen = TriggerSeen {
                tombstoned,
                owned: entry.is_some_and(|e| e.owned),
                has_handler: entry.is_some_and(|e| e.task.is_some())
                    || self.cfg.task_run_fn.is_some(),
                requested_at: t.requested_at,
            };
            let launch = match control::judge_trigger(&seen, now, crate::admin::TRIGGER_EXPIRY) {
                Trigger::Leave => continue,
                Trigger::Drop(why) => Err(why),
                Trigger::Run => {
                    let Some(e) = self.tasks.get_mut(&t.task) else {
                        continue;
                    };
                    let owner = owner_token(&mut self.owners, e, &self.cfg);
                    let Some(task) = e.task.clone().or_else(|| self.cfg.task_run_fn.clone()) else {
                        continue;
                    };
                    Ok(Launch {
                        key: FireKey::new(t.task.clone(), t.requested_at),
                        meta: e.meta.clone(),
                        task,
                        token: t.id,
                        kind: FireKind::Trigger,
                        window: window_of(&e.meta, self.cfg.misfire_window),
                        owner,
                        deadline_at: None,
                        stamp: None,
                    })
                }
            };
            self.triggers_inflight.insert(key.clone());
            let env = self.env.clone();
            let internal = self.internal_tx.clone();
            tokio::spawn(async move {
                match env.registry.delete_record(RecordKind::Trigger, &key).await {
                    Ok(true) => match launch {
                        Ok(launch) => {
                            let info = env.info(&launch.key, FireKind::Trigger);
                            tracing::info!(task = %info.task, id = launch.token, "trigger-now request consumed");
                            metrics::counter!("dcron_fires_triggered_total").increment(1);
                            let _ = env.events.send(DcronEvent::Triggered(info));
                            env.launch_all(vec![launch]);
                        }
                        Err(why) => {
                            tracing::warn!(trigger = %key, reason = why, "trigger-now request dropped unrun");
                        }
                    },
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(trigger = %key, error = %e, "consuming a trigger-now request failed; next poll retries")
                    }
                }
                let _ = internal.send(Internal::TriggerDone(key));
            });
        }
    }

    pub(super) fn backfill(
        &mut self,
        name: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reply: oneshot::Sender<Result<BackfillReport>>,
    ) {
        let now = self.clock.now();
        let prepared = (|| {
            let range = claims::backfill_range(&name, from, to, now)?;
            if self.tasks.is_tombstoned(&name) {
                return Err(Error::Tombstoned { name: name.clone() });
            }
            let entry = self.tasks.get(&name).ok_or_else(|| Error::NotFound {
                what: "task",
                name: name.clone(),
            })?;
            let task = entry
                .task
                .clone()
                .or_else(|| self.cfg.task_run_fn.clone())
                .ok_or_else(|| {
                    Error::NotConfigured("task_run_fn (needed to run dynamic tasks)".into())
                })?;
            let fires = entry.fires().ok_or_else(|| {
                Error::InvalidState(format!(
                    "backfill of `{name}`: the task's life is not known on this node yet; try again"
                ))
            })?;
            let window = window_of(&entry.meta, self.cfg.misfire_window);
            let life = fires.life.generation;
            let plan = claims::plan_backfill(&name, &fires, range, now, window)?;
            let deadline_at = self.clock.monotonic() + window;
            let stamp = entry.stamp_now();
            let fires: Vec<PendingFire> = plan
                .instants
                .into_iter()
                .map(|instant| PendingFire {
                    key: FireKey::new(name.clone(), instant),
                    meta: entry.meta.clone(),
                    task: task.clone(),
                    kind: FireKind::Backfill,
                    window,
                    // A backfill is not bound to ownership (it runs where it was asked).
                    owner: None,
                    life,
                    deadline: plan.deadline,
                    deadline_at,
                    min_retention: plan.min_retention,
                    stamp: stamp.clone(),
                })
                .collect();
            Ok(fires)
        })();
        let fires = match prepared {
            Ok(f) => f,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let occurrences = fires.len();
        let mut waits = Vec::new();
        for chunk in fires.chunks(MAX_BATCH) {
            let (tx, rx) = oneshot::channel();
            self.claim_batch_with(chunk.to_vec(), Some(tx));
            waits.push(rx);
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut report = BackfillReport {
                occurrences,
                ..Default::default()
            };
            for rx in waits {
                match rx.await {
                    Ok((won, lost, tombstoned)) => {
                        report.claimed += won;
                        report.already_claimed += lost;
                        report.tombstoned += tombstoned;
                    }
                    Err(_) => report.unclaimed += 1,
                }
            }
            let _ = events.send(DcronEvent::Backfilled {
                task: name,
                claimed: report.claimed,
                already_claimed: report.already_claimed,
            });
            let _ = reply.send(Ok(report));
        });
    }
}
