//! The driver's inbox: commands from the API handle and the answers of its own background
//! work (registry calls, watches, timers of retries).

use super::*;

impl Driver {
    // ----- messages -----

    pub(super) fn command(&mut self, cmd: Command) {
        match cmd {
            Command::UpsertStatic(def) => {
                let name = def.meta.name.clone();
                self.upsert(name, def.meta, def.schedule, Some(def.task), true);
            }
            Command::UpsertDynamic(meta) => self.upsert_dynamic(meta),
            Command::Tombstoned(name) => self.set_tombstone(name),
            Command::TombstoneCleared(name) => self.clear_tombstone(&name),
            Command::Removed(name) => {
                self.clear_tombstone(&name);
                self.remove_dynamic(&name);
                self.life_stale(&name);
            }
            Command::Resync => {
                if self.is_active() {
                    self.list_all();
                }
            }
            Command::PauseChanged(record) => self.apply_pause(record),
            Command::LifeStarted(name, life) => {
                if self.set_life(&name, life) {
                    let key: Option<Arc<str>> = self.tasks.get(&name).map(|e| e.name.clone());
                    self.plan_gained(key.into_iter().collect());
                }
            }
            Command::Backfill {
                name,
                from,
                to,
                reply,
            } => self.backfill(name, from, to, reply),
            Command::Status { name, reply } => {
                self.collect_ended();
                let _ = reply.send(self.local_status(&name));
            }
            Command::Stop(reply) => {
                self.stop_waiters.push(reply);
                if self.state == State::Stopped {
                    for w in std::mem::take(&mut self.stop_waiters) {
                        let _ = w.send(());
                    }
                } else {
                    self.lifecycle(Input::Stop);
                }
            }
        }
    }

    pub(super) fn internal(&mut self, msg: Internal) {
        let now = self.clock.monotonic();
        let status_write = matches!(msg, Internal::StatusWritten(..));
        match msg {
            Internal::Registered(epoch, Ok(lease), sent) => {
                if matches!(self.state, State::Starting { epoch: e } | State::Lost { epoch: e } if e == epoch)
                {
                    self.register_failures = 0;
                    if let Ok(mut slot) = self.lease_slot.lock() {
                        *slot = Some(lease.clone());
                    }
                    self.set_lease_until(Some((&lease, sent)));
                    self.lease = Some((epoch, lease));
                    self.lifecycle(Input::Registered { epoch, now });
                } else {
                    // A late registration for an abandoned epoch: release it.
                    let registry = self.registry.clone();
                    tokio::spawn(async move {
                        let _ = registry.unregister(&lease).await;
                    });
                }
            }
            Internal::Registered(epoch, Err(e), _) => {
                self.register_failures = self.register_failures.saturating_add(1);
                let attempt = self.register_failures;
                let delay = register_backoff(self.cfg.retry_backoff, attempt, self.jitter_seed());
                tracing::warn!(node = %self.node_id, error = %e, attempt, delay_ms = delay.as_millis() as u64, "registration failed; retrying");
                metrics::counter!("dcron_register_retries_total").increment(1);
                let _ = self.events.send(DcronEvent::RegisterRetry {
                    node: self.node_id.to_string(),
                    attempt,
                    error: e.to_string(),
                    delay,
                });
                let message = e.to_string();
                self.health.send_modify(|h| h.last_error = Some(message));
                self.lifecycle(Input::RegisterFailed { epoch });
            }
            Internal::RetryRegister(epoch) => {
                if matches!(self.state, State::Starting { epoch: e } | State::Lost { epoch: e } if e == epoch)
                {
                    self.register(epoch);
                }
            }
            Internal::Renewed(epoch, Ok(()), sent) => {
                // The lease is known to live a TTL from when the keep-alive was sent, not from
                // when its (possibly late) reply came back.
                // (Slot-holding fires watch that bound; the lifecycle keeps judging renewals by
                // their replies, as its TTL check of hung renewals always did.)
                if self.lease.as_ref().is_some_and(|(e, _)| *e == epoch) {
                    self.extend_lease_until(sent);
                }
                self.lifecycle(Input::Renewed { epoch, now });
                // Keep the informational `last_alive` of the record fresh (liveness itself is
                // the lease): one record write every LAST_ALIVE_REFRESH.
                let stale = (self.clock.now() - self.record.last_alive)
                    .to_std()
                    .is_ok_and(|age| age >= LAST_ALIVE_REFRESH);
                if self.record_stale || (self.is_active() && stale) {
                    self.markers_dirty = true;
                    self.publish_markers();
                }
            }
            Internal::Renewed(epoch, Err(e), _) | Internal::StatusWritten(epoch, Err(e)) => {
                let lease_lost = matches!(e, Error::LeaseLost { .. } | Error::NotFound { .. });
                if status_write {
                    // The record (its status) did not reach the registry: write it again at the
                    // next successful renewal, or peers never see this node's status change.
                    self.record_stale = true;
                }
                tracing::warn!(node = %self.node_id, error = %e, lease_lost, "lease renewal failed");
                self.lifecycle(Input::RenewFailed {
                    epoch,
                    lease_lost,
                    now,
                });
            }
            Internal::StatusWritten(_, Ok(())) => self.record_stale = false,
            Internal::Nodes(Ok(listing)) => {
                self.nodes = listing
                    .items
                    .into_iter()
                    .map(|n| (n.id.clone(), n))
                    .collect();
                self.refresh_remote_running();
                self.rebalance();
                if self.is_active() && !self.health.borrow().ready {
                    // Registered, and its share computed from a full listing: ready.
                    self.health.send_modify(|h| h.ready = true);
                }
            }
            Internal::Tasks(Ok((tasks, tombstones))) => self.reconcile_tasks(tasks, tombstones),
            Internal::Nodes(Err(e)) | Internal::Tasks(Err(e)) => {
                tracing::warn!(node = %self.node_id, error = %e, "listing failed; next poll retries");
            }
            Internal::NodeWatch(Ok(stream)) => self.node_watch = Some(stream),
            Internal::TaskWatch(Ok(stream)) => self.task_watch = Some(stream),
            Internal::NodeWatch(Err(e)) | Internal::TaskWatch(Err(e)) => {
                if !matches!(e, Error::Unsupported { .. }) {
                    tracing::debug!(error = %e, "watch failed; polling covers it, retrying");
                    self.retry_watches();
                }
            }
            Internal::RetryWatches => {
                self.watch_retry_pending = false;
                self.open_watches();
                self.list_all();
            }
            Internal::OneShotEnded { name, done } => {
                // A one-shot has one fire in its life, whatever its result: nothing to
                // schedule again. Done (deleted) means tombstoned here too at once.
                if done {
                    self.set_tombstone(name);
                }
            }
            Internal::Lives(names, r) => self.lives_read(names, r),
            Internal::RetryLives => {
                self.lives_retry_pending = false;
                let unknown = self.tasks.take_unread_lives();
                self.ensure_lives(unknown);
            }
            Internal::Superseded(name) => {
                tracing::info!(node = %self.node_id, task = %name, "a claim found the task's life changed: reading it again");
                self.life_stale(&name);
            }
            Internal::Drained => {
                // Handlers are done: store their status before the registration goes (a new
                // owner reads the stored counts), then leave.
                self.drained_pending = true;
                self.finish_drain();
            }
            Internal::RunningChanged => self.publish_markers(),
            Internal::MarkersWritten(epoch, r) => {
                self.markers_inflight = false;
                self.record_stale = r.is_err();
                if let Err(e) = r {
                    let lease_lost = matches!(e, Error::LeaseLost { .. } | Error::NotFound { .. });
                    if lease_lost {
                        self.lifecycle(Input::RenewFailed {
                            epoch,
                            lease_lost,
                            now,
                        });
                    } else {
                        tracing::debug!(error = %e, "publishing running markers failed; retried at the next change or renewal");
                    }
                }
                if self.markers_dirty {
                    self.publish_markers();
                }
            }
            Internal::Records(Ok((pauses, triggers))) => {
                self.report_corrupt(&pauses.corrupt);
                self.report_corrupt(&triggers.corrupt);
                for record in pauses.items {
                    self.apply_pause(record);
                }
                self.handle_triggers(triggers.items);
            }
            Internal::Records(Err(e)) => {
                if !matches!(e, Error::Unsupported { .. }) {
                    tracing::warn!(error = %e, "reading pause/trigger records failed; next poll retries");
                }
            }
            Internal::StatusFlushed(r) => {
                self.status_inflight = false;
                let failed = r.is_err();
                match r {
                    Ok(bases) => {
                        for (name, (runs, failures)) in bases {
                            self.statuses.load_base(&name, runs, failures);
                        }
                    }
                    Err(e) => {
                        if !matches!(e, Error::Unsupported { .. }) {
                            tracing::warn!(error = %e, "writing task status failed; written again after the task's next fire");
                        }
                    }
                }
                if self.drained_pending {
                    if failed {
                        // Unreachable registry: leave without the last status.
                        self.statuses.forget_dirty();
                    }
                    self.finish_drain();
                }
            }
            Internal::TriggerDone(key) => {
                self.triggers_inflight.remove(&key);
            }
        }
    }
}
