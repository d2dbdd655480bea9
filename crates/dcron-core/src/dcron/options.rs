//! [`TaskOptions`]: per-task options of static tasks.

use super::*;

/// Per-task options for static tasks ([`Dcron::add_task_with`]); what is left unset takes the
/// builder's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskOptions {
    pub(super) time_zone: Option<String>,
    retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    overlap: Option<OverlapPolicy>,
    misfire: Option<MisfirePolicy>,
    misfire_window: Option<Duration>,
    run_if_past: bool,
    tags: Vec<String>,
    max_concurrent: Option<u32>,
}

impl TaskOptions {
    /// No options: every policy from the builder, UTC.
    pub fn new() -> Self {
        TaskOptions::default()
    }

    /// The IANA time zone the schedule is evaluated in.
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = Some(zone.into());
        self
    }

    /// The retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The timeout of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The overlap policy.
    pub fn overlap(mut self, overlap: OverlapPolicy) -> Self {
        self.overlap = Some(overlap);
        self
    }

    /// The misfire policy.
    pub fn misfire(mut self, misfire: MisfirePolicy) -> Self {
        self.misfire = Some(misfire);
        self
    }

    /// The misfire window.
    pub fn misfire_window(mut self, window: Duration) -> Self {
        self.misfire_window = Some(window);
        self
    }

    /// For an `@at` schedule already past when the task is added: run it once at once instead
    /// of refusing it.
    pub fn run_if_past(mut self) -> Self {
        self.run_if_past = true;
        self
    }

    /// A tag (see [`TaskMeta::tags`]).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
        self
    }

    /// The most fires of the task that run at once (see [`TaskMeta::max_concurrent`]).
    pub fn max_concurrent(mut self, limit: u32) -> Self {
        self.max_concurrent = Some(limit);
        self
    }

    pub(super) fn apply(&self, meta: &mut TaskMeta) {
        meta.time_zone.clone_from(&self.time_zone);
        meta.retry = self.retry;
        meta.timeout_ms = self
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        meta.overlap = self.overlap;
        meta.misfire = self.misfire;
        meta.misfire_window_ms = self
            .misfire_window
            .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        meta.run_if_past = self.run_if_past;
        meta.tags.clone_from(&self.tags);
        meta.max_concurrent = self.max_concurrent;
    }
}
