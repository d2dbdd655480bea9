//! The records dcron keeps in a registry and the events it reports.
//!
//! # Stored format
//!
//! [`TaskMeta`], [`Node`], [`Tombstone`] and [`Claim`] are stored as JSON objects with the field
//! names shown in their docs. The format is stable: new versions only add optional fields (which
//! older versions ignore), so what is in a registry today still decodes after an upgrade. Use
//! [`TaskMeta::encode`]/[`TaskMeta::decode`] (and the same pair on the other records) rather than
//! calling `serde_json` directly: `decode` turns bad bytes into [`Error::Corrupt`] with the key.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::{OverlapPolicy, RetryPolicy, RunningFire};

/// The longest task name accepted, in bytes.
pub const MAX_TASK_NAME_BYTES: usize = 200;

/// Checks a task name against the naming rules: non-empty, at most
/// [`MAX_TASK_NAME_BYTES`] bytes, no control characters, no `/`.
///
/// # Errors
/// [`Error::InvalidTaskName`] naming the rule that is broken.
///
/// ```
/// assert!(dcron_core::validate_task_name("report:daily v2").is_ok());
/// assert!(dcron_core::validate_task_name("a/b").is_err());
/// ```
pub fn validate_task_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_TASK_NAME_BYTES {
        "must be at most 200 bytes"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else if name.contains('/') {
        "must not contain `/`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTaskName {
        name: name.chars().take(64).collect(),
        reason,
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode_json<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// What to do with occurrences a node finds unclaimed when it gains a task (start, rebalance, a
/// peer's death, the registry coming back) or when its own timer fires late.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(tag = "policy", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MisfirePolicy {
    /// Run nothing that was missed.
    Skip,
    /// Run the latest missed occurrence in the window, once.
    #[default]
    FireOnce,
    /// Run every missed occurrence in the window, oldest first, at most `max` of them.
    FireAll {
        /// The most occurrences run in one catch-up.
        max: u32,
    },
}

/// The default misfire window: how far back a node looks for unclaimed occurrences.
pub const DEFAULT_MISFIRE_WINDOW: Duration = Duration::from_secs(60);

/// The bounds of every duration and count a task record may carry. They are checked when a
/// task is added (a typed [`Error::InvalidArgument`]) and when a record is read from the
/// registry (a record outside them is reported as corrupt and skipped; the other tasks keep
/// firing).
pub mod limits {
    use std::time::Duration;

    /// The longest misfire window: 7 days.
    pub const MAX_MISFIRE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
    /// The longest timeout of one attempt: 7 days.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
    /// The most occurrences `FireAll` catches up at once.
    pub const MAX_FIRE_ALL: u32 = 10_000;
    /// The most attempts of one fire.
    pub const MAX_ATTEMPTS: u32 = 1_000;
    /// The longest retry delay (fixed delay, linear step, exponential start or cap): 1 day.
    pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);
    /// The longest schedule expression, in bytes.
    pub const MAX_SCHEDULE_BYTES: usize = 1024;
    /// The longest time zone name, in bytes.
    pub const MAX_ZONE_BYTES: usize = 64;
    /// The most tags on one task.
    pub const MAX_TAGS: usize = 16;
    /// The longest tag, in bytes.
    pub const MAX_TAG_BYTES: usize = 64;
    /// The highest per-task concurrency limit ([`crate::TaskMeta::max_concurrent`]).
    pub const MAX_CONCURRENT: u32 = 100_000;
}

/// Checks one tag: 1 to [`limits::MAX_TAG_BYTES`] bytes of ASCII letters, digits and
/// `-_.:/=`; the reason it is refused otherwise.
pub(crate) fn check_tag(tag: &str) -> std::result::Result<(), String> {
    if tag.is_empty() {
        return Err("is empty".into());
    }
    if tag.len() > limits::MAX_TAG_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {}",
            tag.len(),
            limits::MAX_TAG_BYTES
        ));
    }
    match tag
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:/=".contains(*c)))
    {
        Some(c) => Err(format!(
            "contains {c:?}; a tag is ASCII letters, digits and -_.:/="
        )),
        None => Ok(()),
    }
}

/// A dynamic task as stored in the registry (JSON field names in brackets).
///
/// The first six fields are the seed's; the rest are optional additions. Unknown fields are
/// ignored when decoding, so records written by newer versions still decode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct TaskMeta {
    /// Unique task name (`name`).
    pub name: String,
    /// Schedule expression (`cron_format`): cron with 5, 6 or 7 fields, a macro such as
    /// `@hourly`, `@every 30s`, or `@at <RFC 3339 instant>`.
    pub cron_format: String,
    /// Runs once: after its first successful execution the task is marked deleted, or cleaned up
    /// when [`TaskMeta::executed_and_cleanup`] is set (`one_shot`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub one_shot: bool,
    /// For a one-shot task: mark it deleted after a successful run (`executed_and_mark_deleted`).
    /// This is also what happens when neither post-action flag is set, so that no other node runs
    /// it again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub executed_and_mark_deleted: bool,
    /// For a one-shot task: remove every trace of it after a successful run; takes precedence
    /// over `executed_and_mark_deleted` (`executed_and_cleanup`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub executed_and_cleanup: bool,
    /// Opaque data handed to the handler (`payload`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload: String,
    /// IANA time zone the schedule is evaluated in; UTC when absent (`time_zone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Misfire policy; the node's default when absent (`misfire`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire: Option<MisfirePolicy>,
    /// Misfire window in milliseconds; the node's default when absent (`misfire_window_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misfire_window_ms: Option<u64>,
    /// When the record was created: the task's live-since, set by the node at the write (a
    /// caller's value is replaced); nothing before it ever fires (`created_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Retries of a failed fire; the node's default when absent (`retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Longest run of one attempt in milliseconds; the node's default when absent
    /// (`timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// What to do when the previous fire still runs; the node's default when absent
    /// (`overlap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<OverlapPolicy>,
    /// For a one-time schedule (`@at`) whose instant is already past when the task is added:
    /// run it once at once instead of refusing it (`run_if_past`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub run_if_past: bool,
    /// Free-form labels for grouping and filtering (`tags`): `dcronctl tasks --tag`,
    /// [`crate::Dcron::tasks_tagged`]. At most [`limits::MAX_TAGS`], each 1 to
    /// [`limits::MAX_TAG_BYTES`] bytes of ASCII letters, digits and `-_.:/=`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The most fires of this task that run at once on the node that runs them
    /// (`max_concurrent`); no limit when absent. A fire beyond it waits for one to end, at most
    /// until its deadline (instant plus misfire window), then is skipped
    /// ([`crate::SkipReason::ConcurrencyLimit`]). A task's scheduled fires run on its owner,
    /// so this bounds the task's concurrency in the cluster outside handovers; for a strict
    /// cluster-wide bound of one, use [`OverlapPolicy::Skip`] or [`OverlapPolicy::Queue`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

impl TaskMeta {
    /// A task with a name and a schedule and every other field at its default.
    pub fn new(name: impl Into<String>, cron_format: impl Into<String>) -> Self {
        TaskMeta {
            name: name.into(),
            cron_format: cron_format.into(),
            ..TaskMeta::default()
        }
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: impl Into<String>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Sets the IANA time zone.
    pub fn with_time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = Some(zone.into());
        self
    }

    /// Makes the task one-shot.
    pub fn one_shot(mut self) -> Self {
        self.one_shot = true;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets the timeout of one attempt.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sets the overlap policy.
    pub fn with_overlap(mut self, overlap: OverlapPolicy) -> Self {
        self.overlap = Some(overlap);
        self
    }

    /// Sets the misfire policy.
    pub fn with_misfire(mut self, misfire: MisfirePolicy) -> Self {
        self.misfire = Some(misfire);
        self
    }

    /// Adds a tag (see [`TaskMeta::tags`]); a tag already present is not added twice.
    ///
    /// ```
    /// use dcron_core::TaskMeta;
    ///
    /// let meta = TaskMeta::new("report", "0 * * * *").with_tag("billing").with_tag("daily");
    /// assert_eq!(meta.tags, ["billing", "daily"]);
    /// assert!(meta.has_tag("billing"));
    /// assert!(meta.check_bounds().is_ok());
    /// ```
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
        self
    }

    /// Whether the task carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Sets the most fires of this task that run at once (see [`TaskMeta::max_concurrent`]).
    ///
    /// ```
    /// use dcron_core::TaskMeta;
    ///
    /// let meta = TaskMeta::new("export", "* * * * * *").with_max_concurrent(2);
    /// assert_eq!(meta.max_concurrent, Some(2));
    /// assert!(TaskMeta::new("x", "* * * * *").with_max_concurrent(0).check_bounds().is_err());
    /// ```
    pub fn with_max_concurrent(mut self, limit: u32) -> Self {
        self.max_concurrent = Some(limit);
        self
    }

    /// Sets the misfire window: how far back catch-up looks, and the deadline of each fire
    /// (its instant plus the window). Kept to the millisecond; a window longer than
    /// [`limits::MAX_MISFIRE_WINDOW`] is refused when the record is added (see
    /// [`TaskMeta::check_bounds`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use dcron_core::{MisfirePolicy, TaskMeta};
    ///
    /// let meta = TaskMeta::new("report", "0 * * * *")
    ///     .with_misfire(MisfirePolicy::FireAll { max: 4 })
    ///     .with_misfire_window(Duration::from_secs(15 * 60));
    /// assert_eq!(meta.misfire_window_ms, Some(900_000));
    /// assert!(meta.check_bounds().is_ok());
    /// ```
    pub fn with_misfire_window(mut self, window: Duration) -> Self {
        self.misfire_window_ms = Some(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Checks every duration and count against [`limits`] (and the name's rules). The schedule
    /// itself is checked when it is parsed.
    ///
    /// # Errors
    /// [`Error::InvalidTaskName`]; [`Error::InvalidArgument`] naming the field, its value and
    /// the bound.
    pub fn check_bounds(&self) -> Result<()> {
        validate_task_name(&self.name)?;
        let bad = |field: &str, value: String, bound: String| {
            Err(Error::InvalidArgument(format!(
                "task `{}`: {field} is {value}; it must be {bound}",
                self.name
            )))
        };
        let max_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if self.cron_format.len() > limits::MAX_SCHEDULE_BYTES {
            return bad(
                "cron_format",
                format!("{} bytes", self.cron_format.len()),
                format!("at most {} bytes", limits::MAX_SCHEDULE_BYTES),
            );
        }
        if let Some(zone) = &self.time_zone {
            if zone.len() > limits::MAX_ZONE_BYTES {
                return bad(
                    "time_zone",
                    format!("{} bytes", zone.len()),
                    format!("at most {} bytes", limits::MAX_ZONE_BYTES),
                );
            }
        }
        if self.tags.len() > limits::MAX_TAGS {
            return bad(
                "tags",
                format!("{} tags", self.tags.len()),
                format!("at most {}", limits::MAX_TAGS),
            );
        }
        for tag in &self.tags {
            check_tag(tag).map_err(|reason| {
                Error::InvalidArgument(format!("task `{}`: tag {tag:?} {reason}", self.name))
            })?;
        }
        if let Some(n) = self.max_concurrent {
            if n == 0 || n > limits::MAX_CONCURRENT {
                return bad(
                    "max_concurrent",
                    n.to_string(),
                    format!("between 1 and {}", limits::MAX_CONCURRENT),
                );
            }
        }
        if let Some(w) = self.misfire_window_ms {
            if w > max_ms(limits::MAX_MISFIRE_WINDOW) {
                return bad(
                    "misfire_window_ms",
                    w.to_string(),
                    format!("at most {} (7 days)", max_ms(limits::MAX_MISFIRE_WINDOW)),
                );
            }
        }
        if let Some(t) = self.timeout_ms {
            if t > max_ms(limits::MAX_TIMEOUT) {
                return bad(
                    "timeout_ms",
                    t.to_string(),
                    format!("at most {} (7 days)", max_ms(limits::MAX_TIMEOUT)),
                );
            }
        }
        if let Some(MisfirePolicy::FireAll { max }) = self.misfire {
            if max == 0 || max > limits::MAX_FIRE_ALL {
                return bad(
                    "misfire FireAll max",
                    max.to_string(),
                    format!("between 1 and {}", limits::MAX_FIRE_ALL),
                );
            }
        }
        if let Some(retry) = &self.retry {
            if retry.max_attempts == 0 || retry.max_attempts > limits::MAX_ATTEMPTS {
                return bad(
                    "retry max_attempts",
                    retry.max_attempts.to_string(),
                    format!("between 1 and {}", limits::MAX_ATTEMPTS),
                );
            }
            let delay = match retry.backoff {
                crate::policy::Backoff::Fixed { delay_ms } => delay_ms,
                crate::policy::Backoff::Linear { step_ms } => step_ms,
                crate::policy::Backoff::Exponential { initial_ms } => initial_ms,
            };
            let cap = max_ms(limits::MAX_RETRY_DELAY);
            if delay > cap || retry.max_interval_ms.is_some_and(|m| m > cap) {
                return bad(
                    "retry delay",
                    format!("{delay} ms (cap {:?})", retry.max_interval_ms),
                    format!("at most {cap} ms (1 day)"),
                );
            }
        }
        Ok(())
    }

    /// The stored bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Decodes stored bytes; `key` names the value in the error.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the bytes are not a task record.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        decode_json(key, bytes)
    }
}

/// A node's status as stored in the registry. Only `Working` nodes are assigned tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NodeStatus {
    /// Registered, not yet taking tasks.
    #[default]
    Starting,
    /// Taking tasks.
    Working,
    /// Shutting down: peers take its tasks over.
    Leaving,
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeStatus::Starting => "starting",
            NodeStatus::Working => "working",
            NodeStatus::Leaving => "leaving",
        })
    }
}

fn default_weight() -> u32 {
    1
}

/// A member of the cluster as stored in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Node {
    /// Unique id of this process's node (`id`), generated at build time.
    pub id: String,
    /// Optional stable name chosen by the user, kept alongside the id (`name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// IP address the node reports (`ip`).
    #[serde(default)]
    pub ip: String,
    /// Host name (`hostname`).
    #[serde(default)]
    pub hostname: String,
    /// Last time the node wrote its record (`last_alive`). Informational: liveness is decided
    /// by the registry's lease, never by comparing clocks.
    pub last_alive: DateTime<Utc>,
    /// When the node registered (`create_time`).
    pub create_time: DateTime<Utc>,
    /// Status (`status`).
    pub status: NodeStatus,
    /// Weight for weighted strategies; 0 means "owns nothing" (`weight`, default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Fires the node is running of tasks whose overlap policy is not `Allow` (`running`); the
    /// cluster-wide overlap check reads them. They live and die with the node's lease.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<RunningFire>,
}

impl Node {
    /// A node record with the given id, status `Starting`, weight 1 and both times at `now`.
    pub fn new(id: impl Into<String>, now: DateTime<Utc>) -> Self {
        Node {
            id: id.into(),
            name: None,
            ip: String::new(),
            hostname: String::new(),
            last_alive: now,
            create_time: now,
            status: NodeStatus::Starting,
            weight: 1,
            running: Vec::new(),
        }
    }

    /// The stored bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Decodes stored bytes; `key` names the value in the error.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the bytes are not a node record.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        decode_json(key, bytes)
    }
}

/// A deletion marker for a task name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The task name (`name`).
    pub name: String,
    /// When it was marked deleted (`deleted_at`).
    pub deleted_at: DateTime<Utc>,
}

impl Tombstone {
    /// The stored bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Decodes stored bytes; `key` names the value in the error.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the bytes are not a tombstone record.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        decode_json(key, bytes)
    }
}

/// One scheduled fire: a task and the instant it was scheduled for, in UTC, truncated to the
/// millisecond. The unit of exactly-once; never `now()`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FireKey {
    /// The task name (`task`).
    pub task: String,
    /// The scheduled instant (`instant`).
    pub instant: DateTime<Utc>,
}

impl FireKey {
    /// A fire key, truncating the instant to the millisecond.
    pub fn new(task: impl Into<String>, instant: DateTime<Utc>) -> Self {
        let ms = instant.timestamp_millis();
        FireKey {
            task: task.into(),
            instant: Utc
                .timestamp_millis_opt(ms)
                .single()
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
        }
    }

    /// The instant as milliseconds since the Unix epoch: the part of a claim key after the task.
    pub fn instant_millis(&self) -> i64 {
        self.instant.timestamp_millis()
    }
}

impl std::fmt::Display for FireKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.task, self.instant.to_rfc3339())
    }
}

/// Who claims a fire: a node and the epoch of its current registration.
///
/// Claims are idempotent per claimant: claiming again a fire this claimant already won answers
/// [`ClaimOutcome::WonEarlier`] with the same token, so a claim whose reply was lost can be
/// retried safely. The same node under another epoch (after its lease was lost and it registered
/// again) is another claimant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Claimant {
    /// The node id (`node_id`).
    pub node_id: String,
    /// The node's registration epoch (`epoch`): 1 for its first registration, then one more
    /// each time it registers again.
    pub epoch: u64,
}

impl Claimant {
    /// A claimant.
    pub fn new(node_id: impl Into<String>, epoch: u64) -> Self {
        Claimant {
            node_id: node_id.into(),
            epoch,
        }
    }
}

impl std::fmt::Display for Claimant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.node_id, self.epoch)
    }
}

/// The current life of a task name in the registry.
///
/// A task exists in the cluster from its *live-since* instant; its fires are exactly the
/// schedule's instants at or after it. A dynamic task's life starts when its record is created
/// (or force-written); a static task's when any node first registers the name (see
/// [`crate::Registry::ensure_lives`]). `cleanup_task`, every force-add and a reuse of a deleted
/// task start a **new life**: a greater generation and a new live-since. A claim names the
/// generation it was planned for, and the registry refuses a claim for any other generation
/// ([`ClaimOutcome::Superseded`]), so a node with a stale view can never replay a fire of a
/// previous life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Life {
    /// Strictly increasing across the lives of one name (`generation`), never 0 for a life
    /// stored in a registry.
    pub generation: u64,
    /// The first instant of the life (`live_since`): nothing before it ever fires.
    pub live_since: DateTime<Utc>,
}

impl Life {
    /// A life.
    pub fn new(generation: u64, live_since: DateTime<Utc>) -> Self {
        Life {
            generation,
            live_since,
        }
    }

    /// The stored bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Decodes stored bytes; `key` names the value in the error.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the bytes are not a life record.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        decode_json(key, bytes)
    }
}

/// One fire to claim (see [`crate::Registry::claim`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimRequest {
    /// The fire.
    pub fire: FireKey,
    /// The generation of the task's life the fire belongs to ([`Life::generation`]).
    pub generation: u64,
    /// The fire's deadline: its instant plus its misfire window. A registry with a clock of its
    /// own refuses the claim after it ([`ClaimOutcome::Late`]).
    pub deadline: DateTime<Utc>,
    /// How long the registry keeps the claim once written: at least the time left to the
    /// deadline, plus the largest clock skew, plus the lease TTL (computed per fire by the
    /// node). Not zero.
    pub retention: Duration,
}

impl ClaimRequest {
    /// A request for `fire` of life `generation`, with its deadline and retention.
    pub fn new(
        fire: FireKey,
        generation: u64,
        deadline: DateTime<Utc>,
        retention: Duration,
    ) -> Self {
        ClaimRequest {
            fire,
            generation,
            deadline,
            retention,
        }
    }
}

/// A won claim as stored in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The fire (`fire`).
    pub fire: FireKey,
    /// The node that won it (`node_id`).
    pub node_id: String,
    /// The winner's registration epoch (`epoch`; 0 in claims written before epochs existed).
    #[serde(default)]
    pub epoch: u64,
    /// The generation of the life the fire belongs to (`generation`; 0 when unknown).
    #[serde(default)]
    pub generation: u64,
    /// Fencing token (`token`): non-zero, distinct across the claims of the namespace, and
    /// strictly greater than every token handed out earlier for the same task name, across
    /// cleanup and force-add.
    pub token: u64,
}

impl Claim {
    /// The claimant that holds the claim.
    pub fn claimant(&self) -> Claimant {
        Claimant::new(self.node_id.clone(), self.epoch)
    }

    /// The stored bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Decodes stored bytes; `key` names the value in the error.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the bytes are not a claim record.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        decode_json(key, bytes)
    }
}

/// The answer of [`crate::Registry::acquire_slot`]: whether the caller now holds its task's
/// running slot.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotOutcome {
    /// The caller holds the slot for its fire: taken now, or already held by the same lease
    /// for the same fire (a retried call whose reply was lost).
    Taken,
    /// Another fire holds the slot (of another node, or another fire of this node's lease):
    /// the caller's fire must not start now.
    Held {
        /// The holder's node id.
        node_id: String,
        /// The fire that holds the slot.
        fire: FireKey,
    },
}

impl SlotOutcome {
    /// Whether the caller holds the slot.
    pub fn is_taken(&self) -> bool {
        matches!(self, SlotOutcome::Taken)
    }
}

/// The stored value of a running slot: who holds it (node id and backend lease id) for which
/// fire. Backends that keep the slot as one opaque value use this encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SlotRecord {
    /// The holder's node id (`node_id`).
    pub node_id: String,
    /// The holder's [`crate::Lease::id`] (`lease`).
    pub lease: String,
    /// The fire holding the slot (`fire`).
    pub fire: FireKey,
}

impl SlotRecord {
    /// The record of `fire` held under `lease`.
    pub fn new(lease: &crate::Lease, fire: &FireKey) -> Self {
        SlotRecord {
            node_id: lease.node_id.clone(),
            lease: lease.id.clone(),
            fire: fire.clone(),
        }
    }

    /// Whether this record was written by `lease` for `fire`.
    pub fn is(&self, lease: &crate::Lease, fire: &FireKey) -> bool {
        self.node_id == lease.node_id && self.lease == lease.id && self.fire == *fire
    }

    /// The outcome for a caller that finds this record held by someone else.
    pub fn held(&self) -> SlotOutcome {
        SlotOutcome::Held {
            node_id: self.node_id.clone(),
            fire: self.fire.clone(),
        }
    }

    /// Encodes the record as stored (JSON).
    pub fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }

    /// Decodes stored bytes; `key` names the value in the error.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the bytes are not a slot record.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self> {
        decode_json(key, bytes)
    }
}

/// The answer for one fire of a batch claim: exactly one per requested fire, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// This claimant won the fire now and has the right to run it.
    Won {
        /// The fencing token of the claim.
        token: u64,
    },
    /// This claimant had already won the fire (an earlier call whose reply may have been
    /// lost): the same claim, the same token.
    WonEarlier {
        /// The fencing token of the claim.
        token: u64,
    },
    /// Another claimant holds the fire: do not run it.
    Lost {
        /// The holder's node id, when the backend knows it.
        holder: Option<String>,
    },
    /// The registry's clock is past the fire's deadline: nobody may run it any more.
    Late,
    /// The task name is tombstoned: do not run it.
    Tombstoned,
    /// The request's generation is not the name's current life (a new life started, or the
    /// name has none): the node's view is stale; it must learn the current life.
    Superseded {
        /// The current generation, when there is a life.
        current: Option<u64>,
    },
    /// This fire alone could not be decided (the others of the batch were); nothing is implied
    /// about it. Retryable when [`Error::is_retryable`] says so.
    Failed(Error),
}

impl ClaimOutcome {
    /// Whether this claimant holds the fire (`Won` or `WonEarlier`).
    pub fn is_won(&self) -> bool {
        matches!(
            self,
            ClaimOutcome::Won { .. } | ClaimOutcome::WonEarlier { .. }
        )
    }

    /// The fencing token when the fire is held by this claimant.
    pub fn token(&self) -> Option<u64> {
        match self {
            ClaimOutcome::Won { token } | ClaimOutcome::WonEarlier { token } => Some(*token),
            _ => None,
        }
    }

    /// A short name of the outcome (`won`, `won_earlier`, `lost`, `late`, `tombstoned`,
    /// `superseded`, `failed`), for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClaimOutcome::Won { .. } => "won",
            ClaimOutcome::WonEarlier { .. } => "won_earlier",
            ClaimOutcome::Lost { .. } => "lost",
            ClaimOutcome::Late => "late",
            ClaimOutcome::Tombstoned => "tombstoned",
            ClaimOutcome::Superseded { .. } => "superseded",
            ClaimOutcome::Failed(_) => "failed",
        }
    }
}

impl Clone for ClaimOutcome {
    /// A copy; a `Failed` outcome's error is copied as its message (and retryability).
    fn clone(&self) -> Self {
        match self {
            ClaimOutcome::Won { token } => ClaimOutcome::Won { token: *token },
            ClaimOutcome::WonEarlier { token } => ClaimOutcome::WonEarlier { token: *token },
            ClaimOutcome::Lost { holder } => ClaimOutcome::Lost {
                holder: holder.clone(),
            },
            ClaimOutcome::Late => ClaimOutcome::Late,
            ClaimOutcome::Tombstoned => ClaimOutcome::Tombstoned,
            ClaimOutcome::Superseded { current } => ClaimOutcome::Superseded { current: *current },
            ClaimOutcome::Failed(e) => ClaimOutcome::Failed(if e.is_retryable() {
                Error::unavailable(e.to_string())
            } else {
                Error::Backend {
                    backend: "claim",
                    message: e.to_string(),
                    source: None,
                }
            }),
        }
    }
}

impl PartialEq for ClaimOutcome {
    /// Equal variants with equal fields; two `Failed` are equal when their errors print alike.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ClaimOutcome::Won { token: a }, ClaimOutcome::Won { token: b })
            | (ClaimOutcome::WonEarlier { token: a }, ClaimOutcome::WonEarlier { token: b }) => {
                a == b
            }
            (ClaimOutcome::Lost { holder: a }, ClaimOutcome::Lost { holder: b }) => a == b,
            (ClaimOutcome::Late, ClaimOutcome::Late)
            | (ClaimOutcome::Tombstoned, ClaimOutcome::Tombstoned) => true,
            (ClaimOutcome::Superseded { current: a }, ClaimOutcome::Superseded { current: b }) => {
                a == b
            }
            (ClaimOutcome::Failed(a), ClaimOutcome::Failed(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// A change to the node list.
///
/// Deliberately exhaustive (not `#[non_exhaustive]`): backends produce these and watchers
/// fold them into a model, so a new kind is a breaking change the compiler points out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A node registered or its record changed.
    Put(Node),
    /// A node unregistered or its lease expired.
    Delete {
        /// The node id.
        id: String,
    },
    /// Events may have been lost (a buffer overflowed, a watch restarted): list again.
    Resync,
}

/// A change to the dynamic tasks or their tombstones.
///
/// Deliberately exhaustive (not `#[non_exhaustive]`): backends produce these and watchers
/// fold them into a model, so a new kind is a breaking change the compiler points out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskMetaEvent {
    /// A task was added or its record changed.
    Put(TaskMeta),
    /// A task record was removed (cleanup).
    Removed {
        /// The task name.
        name: String,
    },
    /// A task name was marked deleted.
    Tombstoned(Tombstone),
    /// A tombstone was cleared (reuse, force-add, cleanup).
    TombstoneCleared {
        /// The task name.
        name: String,
    },
    /// Events may have been lost (a buffer overflowed, a watch restarted): list again.
    Resync,
}

/// An event type with a "list again" marker, used by [`crate::watch_channel`].
pub trait ResyncEvent {
    /// The marker value.
    fn resync() -> Self;
}

impl ResyncEvent for NodeEvent {
    fn resync() -> Self {
        NodeEvent::Resync
    }
}

impl ResyncEvent for TaskMetaEvent {
    fn resync() -> Self {
        TaskMetaEvent::Resync
    }
}

/// A value read from a registry that did not decode, reported next to the good ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptEntry {
    /// The key (or task name) of the value.
    pub key: String,
    /// Why decoding failed.
    pub reason: String,
}

/// The answer of a list call: the records that decoded and the ones that did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T> {
    /// Records that decoded.
    pub items: Vec<T>,
    /// Values that did not decode; never a reason to fail the whole listing.
    pub corrupt: Vec<CorruptEntry>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            items: Vec::new(),
            corrupt: Vec::new(),
        }
    }
}

impl<T> Listing<T> {
    /// A listing with these items and nothing corrupt.
    pub fn of(items: Vec<T>) -> Self {
        Listing {
            items,
            corrupt: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_name_rules() {
        assert!(validate_task_name("a").is_ok());
        assert!(validate_task_name("ünïcode name with spaces:*?#@!").is_ok());
        assert!(validate_task_name(&"x".repeat(200)).is_ok());
        for bad in ["", "a/b", "tab\there", "nl\n"] {
            assert!(
                matches!(validate_task_name(bad), Err(Error::InvalidTaskName { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            validate_task_name(&"x".repeat(201)),
            Err(Error::InvalidTaskName { .. })
        ));
    }

    #[test]
    fn task_meta_format_is_stable() {
        // The seed's field names; absent optional fields are omitted.
        let json = br#"{"name":"n","cron_format":"* * * * *","one_shot":true,"payload":"p"}"#;
        let meta = TaskMeta::decode("k", json).expect("decodes");
        assert_eq!(meta.name, "n");
        assert!(meta.one_shot);
        assert_eq!(meta.payload, "p");
        assert_eq!(meta.misfire, None);
        let back = String::from_utf8(meta.encode()).expect("utf8");
        assert_eq!(
            back,
            r#"{"name":"n","cron_format":"* * * * *","one_shot":true,"payload":"p"}"#
        );
        // Fields from a newer version are ignored.
        let newer = br#"{"name":"n","cron_format":"@hourly","future_field":{"x":1}}"#;
        assert_eq!(TaskMeta::decode("k", newer).expect("decodes").name, "n");
        let with_policy = TaskMeta {
            misfire: Some(MisfirePolicy::FireAll { max: 3 }),
            ..TaskMeta::new("n", "@hourly")
        };
        let s = String::from_utf8(with_policy.encode()).expect("utf8");
        assert!(
            s.contains(r#""misfire":{"policy":"fire_all","max":3}"#),
            "{s}"
        );
    }

    #[test]
    fn corrupt_bytes_are_typed_errors() {
        for bytes in [&b"\xff\x00"[..], b"{", b"[]", b"{\"name\":1}"] {
            assert!(matches!(
                TaskMeta::decode("ns/tasks/x", bytes),
                Err(Error::Corrupt { .. })
            ));
            assert!(matches!(
                Node::decode("k", bytes),
                Err(Error::Corrupt { .. })
            ));
            assert!(matches!(
                Claim::decode("k", bytes),
                Err(Error::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn node_weight_defaults_to_one() {
        let json = br#"{"id":"a","last_alive":"2026-01-01T00:00:00Z","create_time":"2026-01-01T00:00:00Z","status":"working"}"#;
        let node = Node::decode("k", json).expect("decodes");
        assert_eq!(node.weight, 1);
        assert_eq!(node.status, NodeStatus::Working);
    }

    #[test]
    fn fire_key_truncates_to_millis() {
        let t = Utc
            .timestamp_opt(1_700_000_000, 123_456_789)
            .single()
            .expect("valid");
        let k = FireKey::new("t", t);
        assert_eq!(k.instant_millis(), 1_700_000_000_123);
        assert_eq!(k, FireKey::new("t", k.instant));
    }
}
