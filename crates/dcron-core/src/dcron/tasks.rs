//! Adding tasks to a node: static tasks (a handler in code), dynamic task records, one-shots.

use super::*;

impl Dcron {
    async fn add_static(
        &self,
        name: &str,
        cron: &str,
        task: Arc<dyn Task>,
        one_shot: bool,
        force: bool,
    ) -> Result<()> {
        self.add_static_with(name, cron, task, one_shot, force, &TaskOptions::default())
            .await
    }

    async fn add_static_with(
        &self,
        name: &str,
        cron: &str,
        task: Arc<dyn Task>,
        one_shot: bool,
        force: bool,
        options: &TaskOptions,
    ) -> Result<()> {
        validate_task_name(name)?;
        let schedule = self.parse(cron, options.time_zone.as_deref())?;
        let mut meta = TaskMeta::new(name, cron);
        options.apply(&mut meta);
        meta.one_shot = one_shot;
        meta.executed_and_mark_deleted = one_shot;
        check_policies(&meta)?;
        check_fires(&meta, &schedule, self.inner.clock.now())?;
        {
            let statics = self.inner.statics.lock().unwrap_or_else(|p| p.into_inner());
            if !force && statics.contains_key(name) {
                return Err(Error::AlreadyExists {
                    name: name.to_string(),
                });
            }
        }
        let mut new_life = None;
        if force {
            // A new life: the tombstone and the old claims go, and nothing of the previous
            // life (its last fires) is ever replayed. A dynamic record of the name is kept.
            new_life = Some(
                self.inner
                    .registry
                    .restart_life(name, self.inner.clock.now())
                    .await?,
            );
        } else {
            match self.inner.registry.get_tombstone(name).await {
                Ok(Some(_)) => {
                    return Err(Error::Tombstoned {
                        name: name.to_string(),
                    })
                }
                Ok(None) => {}
                // The registry is unreachable: add locally anyway; the claim refuses a
                // tombstoned name at fire time, so this cannot run a deleted task.
                Err(e) if e.is_retryable() => {
                    tracing::warn!(task = name, error = %e, "registry unreachable while adding a static task; tombstone enforced at fire time");
                }
                Err(e) => return Err(e),
            }
        }
        {
            let mut statics = self.inner.statics.lock().unwrap_or_else(|p| p.into_inner());
            if !force && statics.contains_key(name) {
                return Err(Error::AlreadyExists {
                    name: name.to_string(),
                });
            }
            statics.insert(name.to_string(), (schedule.clone(), meta.tags.clone()));
        }
        self.send(Command::UpsertStatic(StaticDef {
            meta: Arc::new(meta),
            schedule,
            task,
        }));
        if let Some(life) = new_life {
            self.send(Command::LifeStarted(name.to_string(), life));
        }
        Ok(())
    }

    /// Adds a static task run by a [`Task`] value (the seed's `AddTask`).
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`], [`Error::InvalidSchedule`], [`Error::AlreadyExists`] (a
    /// static task of that name on this node), [`Error::Tombstoned`] (marked deleted in the
    /// registry).
    pub async fn add_task(&self, name: &str, cron: &str, task: impl Task) -> Result<()> {
        self.add_static(name, cron, Arc::new(task), false, false)
            .await
    }

    /// Adds a static task run by an async closure (the seed's `AddFunc`).
    ///
    /// # Errors
    /// As [`Dcron::add_task`].
    pub async fn add_func<F, Fut>(&self, name: &str, cron: &str, f: F) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static(name, cron, Arc::new(FnTask(f)), false, false)
            .await
    }

    /// Adds a static task that runs once cluster-wide: after its first successful run it is
    /// marked deleted in the registry (the seed's `AddOneShotTask`).
    ///
    /// # Errors
    /// As [`Dcron::add_task`].
    pub async fn add_one_shot_task(&self, name: &str, cron: &str, task: impl Task) -> Result<()> {
        self.add_static(name, cron, Arc::new(task), true, false)
            .await
    }

    /// Closure form of [`Dcron::add_one_shot_task`] (the seed's `AddOneShotFunc`).
    ///
    /// # Errors
    /// As [`Dcron::add_task`].
    pub async fn add_one_shot_func<F, Fut>(&self, name: &str, cron: &str, f: F) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static(name, cron, Arc::new(FnTask(f)), true, false)
            .await
    }

    /// Adds or replaces a static task whatever exists, clearing its tombstone and claims in the
    /// registry (the seed's `ForceAddTask`).
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`], [`Error::InvalidSchedule`], registry errors.
    pub async fn force_add_task(&self, name: &str, cron: &str, task: impl Task) -> Result<()> {
        self.add_static(name, cron, Arc::new(task), false, true)
            .await
    }

    /// Closure form of [`Dcron::force_add_task`] (the seed's `ForceAddFunc`).
    ///
    /// # Errors
    /// As [`Dcron::force_add_task`].
    pub async fn force_add_func<F, Fut>(&self, name: &str, cron: &str, f: F) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static(name, cron, Arc::new(FnTask(f)), false, true)
            .await
    }

    /// One-shot form of [`Dcron::force_add_task`] (the seed's `ForceAddOneShotTask`).
    ///
    /// # Errors
    /// As [`Dcron::force_add_task`].
    pub async fn force_add_one_shot_task(
        &self,
        name: &str,
        cron: &str,
        task: impl Task,
    ) -> Result<()> {
        self.add_static(name, cron, Arc::new(task), true, true)
            .await
    }

    /// Closure form of [`Dcron::force_add_one_shot_task`] (the seed's `ForceAddOneShotFunc`).
    ///
    /// # Errors
    /// As [`Dcron::force_add_task`].
    pub async fn force_add_one_shot_func<F, Fut>(&self, name: &str, cron: &str, f: F) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static(name, cron, Arc::new(FnTask(f)), true, true)
            .await
    }

    fn check_meta(&self, meta: &TaskMeta) -> Result<TaskMeta> {
        if self.inner.cfg.task_run_fn.is_none() {
            return Err(Error::NotConfigured(
                "dynamic tasks need a handler: set DcronBuilder::task_run_fn".into(),
            ));
        }
        validate_task_name(&meta.name)?;
        let schedule = self.parse(&meta.cron_format, meta.time_zone.as_deref())?;
        check_policies(meta)?;
        let now = self.inner.clock.now();
        check_fires(meta, &schedule, now)?;
        let mut meta = meta.clone();
        // The task's live-since is the moment of this write, whatever the caller put there.
        meta.created_at = Some(now);
        Ok(meta)
    }

    /// Adds a dynamic task to the registry; every node sees it and its owner runs it with the
    /// `task_run_fn` handler (the seed's `AddTaskMeta`).
    ///
    /// # Errors
    /// [`Error::NotConfigured`] without a `task_run_fn`; [`Error::InvalidTaskName`],
    /// [`Error::InvalidSchedule`]; [`Error::AlreadyExists`], [`Error::Tombstoned`]; registry
    /// errors.
    pub async fn add_task_meta(&self, meta: TaskMeta) -> Result<()> {
        let meta = self.check_meta(&meta)?;
        self.inner
            .registry
            .put_task(&meta, PutMode::CreateOnly)
            .await?;
        self.send(Command::UpsertDynamic(Arc::new(meta)));
        Ok(())
    }

    /// Adds or replaces a dynamic task whatever exists, clearing its tombstone and claims (the
    /// seed's `ForceAddTaskMeta`).
    ///
    /// # Errors
    /// As [`Dcron::add_task_meta`] minus the existence checks.
    pub async fn force_add_task_meta(&self, meta: TaskMeta) -> Result<()> {
        let meta = self.check_meta(&meta)?;
        self.inner.registry.put_task(&meta, PutMode::Force).await?;
        let life = if self.inner.registry.capabilities().exactly_once {
            None
        } else {
            // A registry without native lives: start the new life as a second step.
            let at = meta.created_at.unwrap_or_else(|| self.inner.clock.now());
            Some(self.inner.registry.restart_life(&meta.name, at).await?)
        };
        let name = meta.name.clone();
        self.send(Command::UpsertDynamic(Arc::new(meta)));
        if let Some(life) = life {
            self.send(Command::LifeStarted(name, life));
        }
        Ok(())
    }

    /// Marks a task deleted cluster-wide: it never fires again on any node until it is reused,
    /// force-added or cleaned up (the seed's `MarkTaskDeleted`).
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; registry errors.
    pub async fn mark_task_deleted(&self, name: &str) -> Result<()> {
        validate_task_name(name)?;
        let now: DateTime<Utc> = self.inner.clock.now();
        self.inner.registry.mark_deleted(name, now).await?;
        self.send(Command::Tombstoned(name.to_string()));
        Ok(())
    }

    /// Clears a task's tombstone so it is scheduled again (the seed's `ReuseDeletedTask`). The
    /// task starts a new life now: the occurrences that fell while it was deleted are never
    /// caught up.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the task is not marked deleted; registry errors.
    pub async fn reuse_deleted_task(&self, name: &str) -> Result<()> {
        validate_task_name(name)?;
        if self.inner.registry.get_tombstone(name).await?.is_none() {
            return Err(Error::NotFound {
                what: "tombstone",
                name: name.to_string(),
            });
        }
        let life = self
            .inner
            .registry
            .restart_life(name, self.inner.clock.now())
            .await?;
        self.send(Command::TombstoneCleared(name.to_string()));
        self.send(Command::LifeStarted(name.to_string(), life));
        Ok(())
    }

    /// Removes every trace of a task in the registry: record, tombstone and claims (the seed's
    /// `CleanupTask`). A static task of that name keeps running from code.
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; registry errors.
    pub async fn cleanup_task(&self, name: &str) -> Result<()> {
        validate_task_name(name)?;
        self.inner.registry.cleanup_task(name).await?;
        crate::admin::forget_task_records(&*self.inner.registry, name).await?;
        self.send(Command::Removed(name.to_string()));
        Ok(())
    }

    /// Removes every dynamic task, tombstone and claim of the namespace (the seed's
    /// `ForceCleanupAllTasks`). Dangerous: meant for tests and resets, from one node only.
    ///
    /// # Errors
    /// Registry errors.
    pub async fn force_cleanup_all_tasks(&self) -> Result<()> {
        self.inner.registry.cleanup_all().await?;
        self.send(Command::Resync);
        Ok(())
    }

    /// Adds a static task with per-task options: time zone, retries, timeout, overlap and
    /// misfire policies (builder defaults apply to what the options leave unset).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dcron_core::Result<()> {
    /// use std::time::Duration;
    /// use dcron_core::{Dcron, MemoryRegistry, OverlapPolicy, RetryPolicy, TaskOptions};
    /// let node = Dcron::builder(MemoryRegistry::new()).build()?;
    /// let options = TaskOptions::new()
    ///     .time_zone("Europe/Berlin")
    ///     .retry(RetryPolicy::exponential(3, Duration::from_secs(1)).with_jitter())
    ///     .timeout(Duration::from_secs(30))
    ///     .overlap(OverlapPolicy::Skip);
    /// node.add_func_with("nightly", "0 30 2 * * *", options, |_ctx| async { Ok(()) }).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Dcron::add_task`], plus [`Error::InvalidSchedule`] for an unknown time zone and
    /// [`Error::InvalidArgument`] for an invalid policy.
    pub async fn add_task_with(
        &self,
        name: &str,
        cron: &str,
        options: TaskOptions,
        task: impl Task,
    ) -> Result<()> {
        self.add_static_with(name, cron, Arc::new(task), false, false, &options)
            .await
    }

    /// [`Dcron::add_task_with`] for an async closure.
    ///
    /// # Errors
    /// As [`Dcron::add_task_with`].
    pub async fn add_func_with<F, Fut>(
        &self,
        name: &str,
        cron: &str,
        options: TaskOptions,
        f: F,
    ) -> Result<()>
    where
        F: Fn(FireContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.add_static_with(name, cron, Arc::new(FnTask(f)), false, false, &options)
            .await
    }

    /// Schedules one run of the `task_run_fn` handler after `delay`, with `payload`: a
    /// dynamic one-shot task `@at <now + delay>` that is cleaned up after it succeeds. Runs once
    /// cluster-wide, on whichever node owns the name then. Answers the instant it chose (to
    /// the millisecond); a zero delay runs it at once.
    ///
    /// # Errors
    /// As [`Dcron::add_task_meta`]; [`Error::InvalidArgument`] for a delay past year 9999.
    pub async fn schedule_once(
        &self,
        name: &str,
        delay: Duration,
        payload: impl Into<String>,
    ) -> Result<DateTime<Utc>> {
        let at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| self.inner.clock.now().checked_add_signed(d))
            .ok_or_else(|| Error::InvalidArgument("schedule_once: delay too long".into()))?;
        let at = FireKey::new(name, at).instant;
        let mut meta = TaskMeta::new(
            name,
            format!(
                "@at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        )
        .with_payload(payload)
        .one_shot();
        meta.executed_and_cleanup = true;
        // A zero (or tiny) delay may already be past when the record is written.
        meta.run_if_past = true;
        self.add_task_meta(meta).await?;
        Ok(at)
    }
}

/// Checks the policies of a task record against [`crate::limits`].
fn check_policies(meta: &TaskMeta) -> Result<()> {
    meta.check_bounds()?;
    if let Some(retry) = &meta.retry {
        retry.validate()?;
    }
    Ok(())
}

/// Refuses a schedule that can never fire again: an `@at` in the past (unless the task asks to
/// run it at once) or a cron expression with no future occurrence (30 February).
fn check_fires(meta: &TaskMeta, schedule: &Schedule, now: DateTime<Utc>) -> Result<()> {
    if schedule.next_after(now).is_some() || (meta.run_if_past && schedule.is_one_time()) {
        return Ok(());
    }
    let reason = if schedule.is_one_time() {
        "the instant is in the past; set `run_if_past` to run it once at once".to_string()
    } else {
        "it has no occurrence after now: it would never fire".to_string()
    };
    Err(Error::InvalidSchedule {
        expr: meta.cron_format.clone(),
        reason,
    })
}
