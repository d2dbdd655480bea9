//! The commands' work, as functions over a [`Registry`] that return plain data
//! (rendered by [`crate::render`]).
//!
//! Ownership is computed the way nodes compute it: the members are the `working` nodes (id and
//! weight), the assigner is the strategy's default one, and strategies that depend on the task
//! list get the sorted names of the live (not tombstoned) tasks. Nodes do not publish what they
//! own, so the task names are the dynamic records plus the static tasks the registry knows of
//! (see [`Snapshot::static_names`]): a static task that never ran, was never paused and has no
//! running fire is invisible to `dcronctl`, and with `range` or `round-robin` (whose owners
//! depend on the whole task list) the owners shown can differ from the nodes' until it ran once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use dcron_core::{
    validate_task_name, Claim, Listing, Member, Node, NodeStatus, PutMode, Registry, Schedule,
    SecondsField, Strategy, TaskMeta, TaskStatus, Tombstone,
};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{CliError, CliResult};

/// How many claim listings run at once when `tasks` looks up the last fire of every task.
const CLAIM_LOOKUPS_IN_FLIGHT: usize = 8;

/// A registry value that did not decode (reported, never fatal).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CorruptRecord {
    /// Its key or name.
    pub key: String,
    /// Why it did not decode.
    pub reason: String,
}

fn corrupt_of<T>(listing: &Listing<T>) -> impl Iterator<Item = CorruptRecord> + '_ {
    listing.corrupt.iter().map(|c| CorruptRecord {
        key: c.key.clone(),
        reason: c.reason.clone(),
    })
}

/// Everything listed from the registry at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Live nodes (any status).
    pub nodes: Vec<Node>,
    /// Dynamic task records (tombstoned ones included).
    pub tasks: Vec<TaskMeta>,
    /// Tombstones.
    pub tombstones: Vec<Tombstone>,
    /// Static tasks (defined in the nodes' code, so without a record) that the registry knows
    /// of: names with a status record (written by the owner after a run), a pause, a life record
    /// (registries without native lives) or a running fire in a node record, and no dynamic
    /// record. Tombstoned ones included.
    pub static_names: BTreeSet<String>,
    /// Pause flags and status records.
    pub extras: TaskExtras,
    /// Values that did not decode.
    pub corrupt: Vec<CorruptRecord>,
}

impl Snapshot {
    /// Lists nodes, tasks and tombstones (concurrently).
    ///
    /// # Errors
    /// The registry's errors.
    pub async fn load(registry: &dyn Registry) -> CliResult<Self> {
        let cli = |e: dcron_core::Error| CliError::from(e);
        let (nodes, tasks, tombstones, extras, lives) = tokio::try_join!(
            async { registry.list_nodes().await.map_err(cli) },
            async { registry.list_tasks().await.map_err(cli) },
            async { registry.list_tombstones().await.map_err(cli) },
            crate::admin::extras(registry),
            crate::admin::life_names(registry),
        )?;
        let mut corrupt: Vec<CorruptRecord> = corrupt_of(&nodes)
            .chain(corrupt_of(&tasks))
            .chain(corrupt_of(&tombstones))
            .collect();
        corrupt.extend(extras.corrupt.iter().cloned());
        let mut snap = Snapshot {
            nodes: nodes.items,
            tasks: tasks.items,
            tombstones: tombstones.items,
            static_names: BTreeSet::new(),
            extras,
            corrupt,
        };
        snap.static_names = snap.static_names_from(lives);
        Ok(snap)
    }

    /// The static names this snapshot's records reveal, beside `lives` (names with a life).
    fn static_names_from(&self, lives: impl IntoIterator<Item = String>) -> BTreeSet<String> {
        let dynamic: BTreeSet<&str> = self.tasks.iter().map(|t| t.name.as_str()).collect();
        let running = self
            .nodes
            .iter()
            .flat_map(|n| n.running.iter().map(|r| r.task.clone()));
        self.extras
            .status
            .keys()
            .cloned()
            .chain(self.extras.paused.iter().cloned())
            .chain(running)
            .chain(lives)
            .filter(|n| !dynamic.contains(n.as_str()))
            .collect()
    }

    /// Names of the tasks that are not tombstoned (dynamic records and known static tasks),
    /// sorted: the task list the nodes assign.
    pub fn live_task_names(&self) -> Vec<String> {
        let dead: BTreeSet<&str> = self.tombstones.iter().map(|t| t.name.as_str()).collect();
        let names: BTreeSet<String> = self
            .tasks
            .iter()
            .map(|t| t.name.clone())
            .chain(self.static_names.iter().cloned())
            .filter(|n| !dead.contains(n.as_str()))
            .collect();
        names.into_iter().collect()
    }
}

/// Who owns which task under one strategy.
#[derive(Clone, Debug, Default)]
pub struct Ownership {
    /// The members (working nodes), sorted.
    pub members: Vec<Member>,
    /// Task name → owning node id (`None`: no working node can own it).
    pub owners: BTreeMap<String, Option<String>>,
    /// Why nobody owns anything, when the assigner refused the membership.
    pub warning: Option<String>,
}

impl Ownership {
    /// How many tasks `node` owns.
    pub fn count_for(&self, node: &str) -> usize {
        self.owners
            .values()
            .filter(|o| o.as_deref() == Some(node))
            .count()
    }
}

/// Computes the owners of `live_tasks` among the working `nodes`, as every node does.
pub fn compute_ownership(nodes: &[Node], live_tasks: &[String], strategy: Strategy) -> Ownership {
    let mut members: Vec<Member> = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Working)
        .map(|n| Member::new(n.id.clone(), n.weight))
        .collect();
    members.sort();
    let assigner = strategy.assigner();
    let mut owners = BTreeMap::new();
    let placement = match assigner.prepare(&members) {
        Ok(p) => p,
        Err(e) => {
            for t in live_tasks {
                owners.insert(t.clone(), None);
            }
            return Ownership {
                members,
                owners,
                warning: Some(format!("no task can be assigned: {e}")),
            };
        }
    };
    let mut sorted: Vec<&str> = live_tasks.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let list: &[&str] = if assigner.depends_on_task_list() {
        &sorted
    } else {
        &[]
    };
    for t in &sorted {
        owners.insert(t.to_string(), placement.owner(t, list).map(str::to_string));
    }
    Ownership {
        members,
        owners,
        warning: None,
    }
}

/// One line of `dcronctl nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    /// Node id.
    pub id: String,
    /// Optional stable name.
    pub name: Option<String>,
    /// Host name.
    pub hostname: String,
    /// IP address.
    pub ip: String,
    /// `starting`, `working` or `leaving`.
    pub status: String,
    /// Weight.
    pub weight: u32,
    /// Last time the node wrote its record (`last_alive` of the record: nodes rewrite it about
    /// every 30 s; liveness itself is the registration lease).
    pub last_alive: DateTime<Utc>,
    /// How long before the listing `last_alive` was (`12s`; `0ms` when the node's clock is
    /// ahead).
    pub last_alive_age: String,
    /// When it registered.
    pub created: DateTime<Utc>,
    /// How many tasks it owns under the strategy: dynamic ones and the static ones the registry
    /// knows of (see [`Snapshot::static_names`]).
    pub owned_tasks: usize,
}

/// The answer of `dcronctl nodes`.
#[derive(Clone, Debug, Serialize)]
pub struct NodesReport {
    /// The strategy used to count owned tasks.
    pub strategy: String,
    /// The nodes, sorted by id.
    pub nodes: Vec<NodeRow>,
    /// Values that did not decode.
    pub corrupt: Vec<CorruptRecord>,
    /// Set when the assigner refused the membership.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `dcronctl nodes`; `now` is the reference for the ages.
///
/// # Errors
/// The registry's errors.
pub async fn nodes(
    registry: &dyn Registry,
    strategy: Strategy,
    now: DateTime<Utc>,
) -> CliResult<NodesReport> {
    let snap = Snapshot::load(registry).await?;
    let own = compute_ownership(&snap.nodes, &snap.live_task_names(), strategy);
    let mut rows: Vec<NodeRow> = snap
        .nodes
        .iter()
        .map(|n| NodeRow {
            id: n.id.clone(),
            name: n.name.clone(),
            hostname: n.hostname.clone(),
            ip: n.ip.clone(),
            status: n.status.to_string(),
            weight: n.weight,
            last_alive: n.last_alive,
            last_alive_age: crate::duration::format_duration(
                (now - n.last_alive).to_std().unwrap_or_default(),
            ),
            created: n.create_time,
            owned_tasks: own.count_for(&n.id),
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(NodesReport {
        strategy: strategy.name().to_string(),
        nodes: rows,
        corrupt: snap.corrupt,
        warning: own.warning,
    })
}

/// A task's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Scheduled.
    Active,
    /// Paused by an operator: not fired until resumed.
    Paused,
    /// Marked deleted (tombstoned): never fired until reused, force-added or cleaned up.
    Deleted,
}

impl TaskState {
    /// The state's name.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Paused => "paused",
            TaskState::Deleted => "deleted",
        }
    }
}

/// One fire as recorded by its claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FireRow {
    /// The scheduled instant.
    pub instant: DateTime<Utc>,
    /// The node that claimed (and ran) it.
    pub node: String,
    /// The claim's fencing token.
    pub token: u64,
}

impl From<&Claim> for FireRow {
    fn from(c: &Claim) -> Self {
        FireRow {
            instant: c.fire.instant,
            node: c.node_id.clone(),
            token: c.token,
        }
    }
}

/// Where a task is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskOrigin {
    /// A record in the registry (added through the API or `dcronctl add`).
    Dynamic,
    /// The nodes' code: the registry has no record, only its traces (status, pause, claims,
    /// tombstone), so its schedule and zone are unknown here.
    Static,
}

impl TaskOrigin {
    /// The origin's name.
    pub fn name(self) -> &'static str {
        match self {
            TaskOrigin::Dynamic => "dynamic",
            TaskOrigin::Static => "static",
        }
    }
}

/// One line of `dcronctl tasks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskRow {
    /// Task name.
    pub name: String,
    /// `dynamic` or `static`.
    pub origin: TaskOrigin,
    /// Schedule expression (`None` for a static task: it lives in the nodes' code).
    pub schedule: Option<String>,
    /// Time zone (`UTC` when the record sets none, `-` for a static task).
    pub zone: String,
    /// Whether it runs once.
    pub one_shot: bool,
    /// The payload handed to the handler.
    pub payload: String,
    /// `active`, `paused` or `deleted`.
    pub state: TaskState,
    /// When it was marked deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Next scheduled fire (none when deleted, paused, static, or the schedule has no more
    /// instants).
    pub next_fire: Option<DateTime<Utc>>,
    /// The node that owns it under the strategy (none when deleted or no node works).
    pub owner: Option<String>,
    /// The most recent retained claim.
    pub last_fire: Option<FireRow>,
    /// How the last completed run ended (`ok` or `failed: <error>`), from the owner's status
    /// record.
    pub last_result: Option<String>,
    /// Completed runs, from the status record.
    pub run_count: Option<u64>,
    /// Failed runs, from the status record.
    pub failure_count: Option<u64>,
    /// When it was added.
    pub created_at: Option<DateTime<Utc>>,
    /// Its tags (none for a static task: they live in the nodes' code).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Why the stored schedule is unusable, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer of `dcronctl tasks`.
#[derive(Clone, Debug, Serialize)]
pub struct TasksReport {
    /// The strategy used to compute owners.
    pub strategy: String,
    /// The tasks, sorted by name.
    pub tasks: Vec<TaskRow>,
    /// Values that did not decode.
    pub corrupt: Vec<CorruptRecord>,
    /// Set when the assigner refused the membership.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Per-task state that lives outside [`TaskMeta`]: pause flags and the status records the
/// owners write.
#[derive(Clone, Debug, Default)]
pub struct TaskExtras {
    /// Paused task names.
    pub paused: BTreeSet<String>,
    /// Task name → its status record.
    pub status: HashMap<String, TaskStatus>,
    /// Records that did not decode.
    pub corrupt: Vec<CorruptRecord>,
}

/// The newest retained claim of each name.
///
/// # Errors
/// The registry's errors.
pub async fn last_fires(
    registry: &dyn Registry,
    names: &[String],
) -> CliResult<HashMap<String, Claim>> {
    let found: Vec<(String, Option<Claim>)> = futures::stream::iter(names.iter().cloned())
        .map(|name| async move {
            let listing = registry.list_claims(&name).await?;
            let newest = listing.items.into_iter().max_by_key(|c| c.fire.instant);
            Ok::<_, dcron_core::Error>((name, newest))
        })
        .buffer_unordered(CLAIM_LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|(n, c)| c.map(|c| (n, c)))
        .collect())
}

fn last_result(extras: &TaskExtras, name: &str) -> Option<String> {
    extras
        .status
        .get(name)
        .and_then(|s| s.last_result.as_ref())
        .map(crate::admin::result_text)
}

/// Builds the `tasks` rows from a snapshot (pure; `now` is the reference for next fires).
pub fn task_rows(
    snap: &Snapshot,
    own: &Ownership,
    last: &HashMap<String, Claim>,
    extras: &TaskExtras,
    now: DateTime<Utc>,
) -> Vec<TaskRow> {
    let tombs: HashMap<&str, &Tombstone> = snap
        .tombstones
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut rows: BTreeMap<String, TaskRow> = BTreeMap::new();
    for meta in &snap.tasks {
        let tomb = tombs.get(meta.name.as_str());
        let paused = extras.paused.contains(&meta.name);
        let state = match (tomb, paused) {
            (Some(_), _) => TaskState::Deleted,
            (None, true) => TaskState::Paused,
            (None, false) => TaskState::Active,
        };
        let parsed = Schedule::parse(
            &meta.cron_format,
            meta.time_zone.as_deref(),
            SecondsField::Optional,
        );
        let (next_fire, error) = match &parsed {
            Ok(s) if state == TaskState::Active => (s.next_after(now), None),
            Ok(_) => (None, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let owner = if state == TaskState::Deleted {
            None
        } else {
            own.owners.get(&meta.name).cloned().flatten()
        };
        rows.insert(
            meta.name.clone(),
            TaskRow {
                name: meta.name.clone(),
                origin: TaskOrigin::Dynamic,
                schedule: Some(meta.cron_format.clone()),
                zone: meta.time_zone.clone().unwrap_or_else(|| "UTC".to_string()),
                one_shot: meta.one_shot,
                payload: meta.payload.clone(),
                state,
                deleted_at: tomb.map(|t| t.deleted_at),
                next_fire,
                owner,
                last_fire: last.get(&meta.name).map(FireRow::from),
                last_result: last_result(extras, &meta.name),
                run_count: extras.status.get(&meta.name).map(|s| s.run_count),
                failure_count: extras.status.get(&meta.name).map(|s| s.failure_count),
                created_at: meta.created_at,
                tags: meta.tags.clone(),
                error,
            },
        );
    }
    let statics = snap
        .static_names
        .iter()
        .map(|n| (n.as_str(), tombs.get(n.as_str()).map(|t| t.deleted_at)))
        .chain(
            snap.tombstones
                .iter()
                .map(|t| (t.name.as_str(), Some(t.deleted_at))),
        );
    for (name, deleted_at) in statics {
        rows.entry(name.to_string()).or_insert_with(|| {
            let state = match (deleted_at, extras.paused.contains(name)) {
                (Some(_), _) => TaskState::Deleted,
                (None, true) => TaskState::Paused,
                (None, false) => TaskState::Active,
            };
            TaskRow {
                name: name.to_string(),
                origin: TaskOrigin::Static,
                schedule: None,
                zone: "-".to_string(),
                one_shot: false,
                payload: String::new(),
                state,
                deleted_at,
                next_fire: None,
                owner: if state == TaskState::Deleted {
                    None
                } else {
                    own.owners.get(name).cloned().flatten()
                },
                last_fire: last.get(name).map(FireRow::from),
                last_result: last_result(extras, name),
                run_count: extras.status.get(name).map(|s| s.run_count),
                failure_count: extras.status.get(name).map(|s| s.failure_count),
                created_at: None,
                tags: Vec::new(),
                error: None,
            }
        });
    }
    rows.into_values().collect()
}

/// `dcronctl tasks`.
///
/// # Errors
/// The registry's errors.
pub async fn tasks(
    registry: &dyn Registry,
    strategy: Strategy,
    now: DateTime<Utc>,
) -> CliResult<TasksReport> {
    let snap = Snapshot::load(registry).await?;
    let own = compute_ownership(&snap.nodes, &snap.live_task_names(), strategy);
    let names: Vec<String> = snap
        .tasks
        .iter()
        .map(|t| t.name.clone())
        .chain(snap.tombstones.iter().map(|t| t.name.clone()))
        .chain(snap.static_names.iter().cloned())
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    let last = last_fires(registry, &names).await?;
    Ok(TasksReport {
        strategy: strategy.name().to_string(),
        tasks: task_rows(&snap, &own, &last, &snap.extras, now),
        corrupt: snap.corrupt.clone(),
        warning: own.warning,
    })
}

/// What `add` and `force-add` write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddRequest {
    /// Task name.
    pub name: String,
    /// Schedule expression.
    pub cron: String,
    /// IANA time zone.
    pub zone: Option<String>,
    /// Payload.
    pub payload: String,
    /// Run once, then mark deleted.
    pub one_shot: bool,
    /// Tags.
    pub tags: Vec<String>,
    /// The most fires that run at once on a node.
    pub max_concurrent: Option<u32>,
}

/// Checks a request as the `Dcron` API does (task name, schedule, zone) and builds the record.
///
/// # Errors
/// Usage errors (exit code 2) for a bad name, schedule or zone.
pub fn build_meta(req: &AddRequest, now: DateTime<Utc>) -> CliResult<TaskMeta> {
    validate_task_name(&req.name)?;
    Schedule::parse(&req.cron, req.zone.as_deref(), SecondsField::Optional)?;
    let mut meta = TaskMeta::new(&req.name, &req.cron).with_payload(&req.payload);
    meta.time_zone = req.zone.clone();
    if req.one_shot {
        meta = meta.one_shot();
        meta.executed_and_mark_deleted = true;
    }
    meta.tags.clone_from(&req.tags);
    meta.max_concurrent = req.max_concurrent;
    meta.created_at = Some(now);
    meta.check_bounds()?;
    Ok(meta)
}

/// `dcronctl add` (`force == false`: refused when the name exists or is tombstoned) and
/// `dcronctl force-add` (`force == true`: replaces whatever exists, clearing the tombstone and
/// claims).
///
/// # Errors
/// Usage errors for bad input; conflicts (exit code 5) for `add` on an existing or deleted name;
/// the registry's errors.
pub async fn add(
    registry: &dyn Registry,
    req: &AddRequest,
    force: bool,
    now: DateTime<Utc>,
) -> CliResult<TaskMeta> {
    let mode = if force {
        PutMode::Force
    } else {
        PutMode::CreateOnly
    };
    put(registry, req, mode, now).await
}

/// Checks `req` and writes it with `mode`.
///
/// # Errors
/// Usage errors for bad input; the errors of [`PutMode`]; the registry's errors.
pub async fn put(
    registry: &dyn Registry,
    req: &AddRequest,
    mode: PutMode,
    now: DateTime<Utc>,
) -> CliResult<TaskMeta> {
    let meta = build_meta(req, now)?;
    registry.put_task(&meta, mode).await?;
    Ok(meta)
}

fn unknown_for_delete(name: &str) -> CliError {
    CliError::not_found(format!(
        "unknown task `{name}` (pass --static to mark a task defined in code that has not run yet deleted)"
    ))
}

fn check_name(name: &str) -> CliResult<()> {
    validate_task_name(name).map_err(CliError::from)
}

/// The answer of `dcronctl delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeleteOutcome {
    /// The task name.
    pub task: String,
    /// When it was marked deleted (the first time, when it already was).
    pub deleted_at: DateTime<Utc>,
    /// Whether it was already marked deleted.
    pub already: bool,
}

/// `dcronctl delete`: marks the task deleted cluster-wide. Names the registry knows nothing
/// about (no record, claims or status) are refused unless `allow_static` (a static task that has
/// not run yet has nothing in the registry).
///
/// # Errors
/// Usage error for a bad name; not found (exit code 4) for an unknown name; the registry's
/// errors.
pub async fn delete(
    registry: &dyn Registry,
    name: &str,
    allow_static: bool,
    now: DateTime<Utc>,
) -> CliResult<DeleteOutcome> {
    check_name(name)?;
    if let Some(t) = registry.get_tombstone(name).await? {
        return Ok(DeleteOutcome {
            task: name.to_string(),
            deleted_at: t.deleted_at,
            already: true,
        });
    }
    if !allow_static && !crate::admin::known(registry, name).await? {
        return Err(unknown_for_delete(name));
    }
    registry.mark_deleted(name, now).await?;
    let deleted_at = registry
        .get_tombstone(name)
        .await?
        .map_or(now, |t| t.deleted_at);
    Ok(DeleteOutcome {
        task: name.to_string(),
        deleted_at,
        already: false,
    })
}

/// `dcronctl reuse`: clears the tombstone so the task is scheduled again.
///
/// # Errors
/// Not found (exit code 4) when the name is not marked deleted; the registry's errors.
pub async fn reuse(registry: &dyn Registry, name: &str) -> CliResult<()> {
    check_name(name)?;
    match registry.clear_tombstone(name).await {
        Ok(()) => Ok(()),
        Err(dcron_core::Error::NotFound { .. }) => {
            if registry.get_task(name).await?.is_some() {
                Err(CliError::not_found(format!(
                    "task `{name}` is not marked deleted"
                )))
            } else {
                Err(CliError::not_found(format!("unknown task `{name}`")))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `dcronctl cleanup`: removes the record, the tombstone, the claims and the pause, status and
/// trigger records of the name (as `Dcron::cleanup_task` does).
///
/// # Errors
/// Not found (exit code 4) when the registry holds nothing for the name; the registry's errors.
pub async fn cleanup(registry: &dyn Registry, name: &str) -> CliResult<()> {
    check_name(name)?;
    if !crate::admin::known(registry, name).await? {
        return Err(CliError::not_found(format!("unknown task `{name}`")));
    }
    registry.cleanup_task(name).await?;
    crate::admin::forget(registry, name).await?;
    Ok(())
}

/// One record a destructive command would write or remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedChange {
    /// `write`, `replace` or `remove`.
    pub op: &'static str,
    /// The kind of record: `task`, `tombstone`, `claims`, `pause`, `status` or `trigger`.
    pub kind: &'static str,
    /// How many records of that kind.
    pub count: usize,
    /// What exactly, for people.
    pub detail: String,
}

/// What a destructive command (`delete`, `cleanup`, `force-add` over an existing task) will
/// change, read from the registry before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The command: `delete`, `cleanup` or `force-add`.
    pub action: &'static str,
    /// The task name.
    pub task: String,
    /// The records it changes; empty when it changes nothing that exists (then it needs no
    /// confirmation).
    pub changes: Vec<PlannedChange>,
    /// Whether `reuse`/`force-add` can undo it (`false` for `cleanup`).
    pub undoable: bool,
}

impl Plan {
    /// How many records the command changes.
    pub fn record_count(&self) -> usize {
        self.changes.iter().map(|c| c.count).sum()
    }
}

fn change(op: &'static str, kind: &'static str, count: usize, detail: String) -> PlannedChange {
    PlannedChange {
        op,
        kind,
        count,
        detail,
    }
}

fn describe(meta: &TaskMeta) -> String {
    let zone = meta.time_zone.as_deref().unwrap_or("UTC");
    let once = if meta.one_shot { ", once" } else { "" };
    format!(
        "`{}` in {zone}{once}, payload {} bytes",
        meta.cron_format,
        meta.payload.len()
    )
}

/// The plan of `dcronctl delete`: the tombstone it writes, and what it stops.
///
/// # Errors
/// As [`delete`]: usage error for a bad name, not found for an unknown one (unless
/// `allow_static`); the registry's errors.
pub async fn plan_delete(
    registry: &dyn Registry,
    name: &str,
    allow_static: bool,
) -> CliResult<Plan> {
    check_name(name)?;
    let mut plan = Plan {
        action: "delete",
        task: name.to_string(),
        changes: Vec::new(),
        undoable: true,
    };
    if registry.get_tombstone(name).await?.is_some() {
        return Ok(plan);
    }
    let record = registry.get_task(name).await?;
    if record.is_none() && !allow_static && !crate::admin::known(registry, name).await? {
        return Err(unknown_for_delete(name));
    }
    let what = match &record {
        Some(meta) => format!("dynamic task ({})", describe(meta)),
        None => "static task (defined in the nodes' code)".to_string(),
    };
    plan.changes.push(change(
        "write",
        "tombstone",
        1,
        format!("deletion mark on the {what}: it fires on no node until reused, force-added or cleaned up"),
    ));
    Ok(plan)
}

/// The plan of `dcronctl cleanup`: every record of the name it removes, counted.
///
/// # Errors
/// As [`cleanup`]: usage error for a bad name, not found for an unknown one; the registry's
/// errors.
pub async fn plan_cleanup(registry: &dyn Registry, name: &str) -> CliResult<Plan> {
    check_name(name)?;
    if !crate::admin::known(registry, name).await? {
        return Err(CliError::not_found(format!("unknown task `{name}`")));
    }
    let mut changes = Vec::new();
    if let Some(meta) = registry.get_task(name).await? {
        changes.push(change(
            "remove",
            "task",
            1,
            format!("task record ({})", describe(&meta)),
        ));
    }
    if let Some(t) = registry.get_tombstone(name).await? {
        changes.push(change(
            "remove",
            "tombstone",
            1,
            format!(
                "deletion mark (set {})",
                crate::duration::format_instant(t.deleted_at)
            ),
        ));
    }
    let claims = registry.list_claims(name).await?.items.len();
    if claims > 0 {
        changes.push(change(
            "remove",
            "claims",
            claims,
            format!("{claims} retained claims"),
        ));
    }
    if registry.capabilities().records {
        if dcron_core::admin::is_paused(registry, name).await? {
            changes.push(change("remove", "pause", 1, "pause record".into()));
        }
        if let Some(s) = dcron_core::admin::task_status(registry, name).await? {
            changes.push(change(
                "remove",
                "status",
                1,
                format!(
                    "status record ({} runs, {} failures)",
                    s.run_count, s.failure_count
                ),
            ));
        }
        let triggers = dcron_core::admin::pending_triggers(registry)
            .await?
            .items
            .iter()
            .filter(|t| t.task == name)
            .count();
        if triggers > 0 {
            changes.push(change(
                "remove",
                "trigger",
                triggers,
                format!("{triggers} pending trigger requests"),
            ));
        }
    }
    Ok(Plan {
        action: "cleanup",
        task: name.to_string(),
        changes,
        undoable: false,
    })
}

/// The plan of `dcronctl force-add`: the record it replaces and the deletion mark it clears
/// (no changes when the name is free: then it is a plain add).
///
/// # Errors
/// Usage errors for bad input; the registry's errors.
pub async fn plan_force_add(
    registry: &dyn Registry,
    req: &AddRequest,
    now: DateTime<Utc>,
) -> CliResult<Plan> {
    let meta = build_meta(req, now)?;
    let mut changes = Vec::new();
    if let Some(old) = registry.get_task(&req.name).await? {
        changes.push(change(
            "replace",
            "task",
            1,
            format!(
                "task record: {} becomes {} (a new life: fires restart from the new schedule)",
                describe(&old),
                describe(&meta)
            ),
        ));
    }
    if let Some(t) = registry.get_tombstone(&req.name).await? {
        changes.push(change(
            "remove",
            "tombstone",
            1,
            format!(
                "deletion mark (set {}): the task fires again",
                crate::duration::format_instant(t.deleted_at)
            ),
        ));
    }
    Ok(Plan {
        action: "force-add",
        task: req.name.clone(),
        changes,
        undoable: false,
    })
}

/// The answer of `dcronctl claims`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClaimsReport {
    /// The task name.
    pub task: String,
    /// How many claims the registry retains for it.
    pub total: usize,
    /// The newest claims first, at most the limit.
    pub claims: Vec<FireRow>,
}

/// `dcronctl claims`: the retained claims of a task, newest first, at most `limit`
/// (0: all).
///
/// # Errors
/// Not found (exit code 4) when the registry holds nothing for the name; the registry's errors.
pub async fn claims(registry: &dyn Registry, name: &str, limit: usize) -> CliResult<ClaimsReport> {
    check_name(name)?;
    let listing = registry.list_claims(name).await?;
    if listing.items.is_empty() && !crate::admin::known(registry, name).await? {
        return Err(CliError::not_found(format!("unknown task `{name}`")));
    }
    let mut rows: Vec<FireRow> = listing.items.iter().map(FireRow::from).collect();
    rows.sort_by(|a, b| b.instant.cmp(&a.instant).then(b.token.cmp(&a.token)));
    let total = rows.len();
    if limit > 0 {
        rows.truncate(limit);
    }
    Ok(ClaimsReport {
        task: name.to_string(),
        total,
        claims: rows,
    })
}

/// One node of `dcronctl assignment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AssignedNode {
    /// Node id.
    pub id: String,
    /// Status.
    pub status: String,
    /// Weight.
    pub weight: u32,
    /// The tasks it would own, sorted.
    pub tasks: Vec<String>,
}

/// The answer of `dcronctl assignment`.
#[derive(Clone, Debug, Serialize)]
pub struct AssignmentReport {
    /// The strategy.
    pub strategy: String,
    /// Every live node (non-working ones own nothing).
    pub nodes: Vec<AssignedNode>,
    /// Live tasks nobody would own (no working node).
    pub unassigned: Vec<String>,
    /// Set when the assigner refused the membership.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `dcronctl assignment`.
///
/// # Errors
/// The registry's errors.
pub async fn assignment(
    registry: &dyn Registry,
    strategy: Strategy,
) -> CliResult<AssignmentReport> {
    let snap = Snapshot::load(registry).await?;
    Ok(assignment_of(&snap, strategy))
}

/// The assignment of a snapshot (pure).
pub fn assignment_of(snap: &Snapshot, strategy: Strategy) -> AssignmentReport {
    let own = compute_ownership(&snap.nodes, &snap.live_task_names(), strategy);
    let mut by_node: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut unassigned = Vec::new();
    for (task, owner) in &own.owners {
        match owner {
            Some(o) => by_node.entry(o.as_str()).or_default().push(task.clone()),
            None => unassigned.push(task.clone()),
        }
    }
    let mut nodes: Vec<AssignedNode> = snap
        .nodes
        .iter()
        .map(|n| AssignedNode {
            id: n.id.clone(),
            status: n.status.to_string(),
            weight: n.weight,
            tasks: by_node.remove(n.id.as_str()).unwrap_or_default(),
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    AssignmentReport {
        strategy: strategy.name().to_string(),
        nodes,
        unassigned,
        warning: own.warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use dcron_core::{FireKey, MemoryRegistry};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    fn node(id: &str, status: NodeStatus, weight: u32) -> Node {
        let mut n = Node::new(id, t0());
        n.status = status;
        n.weight = weight;
        n
    }

    #[test]
    fn ownership_matches_the_assigner_over_working_nodes() {
        let nodes = vec![
            node("n-b", NodeStatus::Working, 1),
            node("n-a", NodeStatus::Working, 2),
            node("n-c", NodeStatus::Leaving, 1),
        ];
        let tasks: Vec<String> = (0..40).map(|i| format!("task-{i}")).collect();
        for &strategy in Strategy::all() {
            let own = compute_ownership(&nodes, &tasks, strategy);
            // The same computation as a node: sorted members, sorted task list when needed.
            let members = vec![Member::new("n-a", 2), Member::new("n-b", 1)];
            assert_eq!(own.members, members);
            let assigner = strategy.assigner();
            let placement = assigner.prepare(&members).expect("prepared");
            let sorted: Vec<&str> = tasks
                .iter()
                .map(String::as_str)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let list: &[&str] = if assigner.depends_on_task_list() {
                &sorted
            } else {
                &[]
            };
            for t in &tasks {
                assert_eq!(
                    own.owners[t].as_deref(),
                    placement.owner(t, list),
                    "{strategy} {t}"
                );
                assert_ne!(
                    own.owners[t].as_deref(),
                    Some("n-c"),
                    "leaving nodes own nothing"
                );
            }
            assert_eq!(
                own.count_for("n-a") + own.count_for("n-b"),
                40,
                "{strategy}"
            );
        }
    }

    #[test]
    fn ownership_without_members_or_weights() {
        let tasks = vec!["a".to_string()];
        let own = compute_ownership(&[], &tasks, Strategy::Consistent);
        assert_eq!(own.owners["a"], None);
        assert!(own.warning.is_none());
        let own = compute_ownership(
            &[node("z", NodeStatus::Working, 0)],
            &tasks,
            Strategy::Weighted,
        );
        assert_eq!(own.owners["a"], None);
        assert!(own.warning.expect("warned").contains("weight 0"));
    }

    #[test]
    fn task_rows_show_state_next_fire_and_owner() {
        let snap = Snapshot {
            nodes: vec![node("n1", NodeStatus::Working, 1)],
            tasks: vec![
                TaskMeta::new("every-5s", "*/5 * * * * *"),
                TaskMeta::new("berlin", "30 2 * * *").with_time_zone("Europe/Berlin"),
                TaskMeta::new("gone", "@hourly"),
                TaskMeta::new("broken", "not a cron"),
                TaskMeta::new("held", "@hourly"),
            ],
            tombstones: vec![
                Tombstone {
                    name: "gone".into(),
                    deleted_at: t0(),
                },
                Tombstone {
                    name: "static-only".into(),
                    deleted_at: t0(),
                },
            ],
            static_names: ["in-code".to_string()].into(),
            ..Snapshot::default()
        };
        let own = compute_ownership(&snap.nodes, &snap.live_task_names(), Strategy::Consistent);
        let mut extras = TaskExtras::default();
        extras.paused.insert("held".into());
        let mut status = TaskStatus::new("every-5s", t0());
        status.last_result = Some(dcron_core::LastResult::Ok);
        status.run_count = 12;
        extras.status.insert("every-5s".into(), status);
        let claim = Claim {
            fire: FireKey::new("every-5s", t0()),
            node_id: "n1".into(),
            epoch: 1,
            generation: 1,
            token: 7,
        };
        let last: HashMap<String, Claim> = [("every-5s".to_string(), claim)].into();
        let rows = task_rows(&snap, &own, &last, &extras, t0());
        let by: HashMap<&str, &TaskRow> = rows.iter().map(|r| (r.name.as_str(), r)).collect();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "berlin",
                "broken",
                "every-5s",
                "gone",
                "held",
                "in-code",
                "static-only"
            ]
        );
        let s = by["in-code"];
        assert_eq!(
            (s.origin, s.state, s.schedule.as_deref(), s.owner.as_deref()),
            (TaskOrigin::Static, TaskState::Active, None, Some("n1"))
        );
        assert_eq!(by["static-only"].origin, TaskOrigin::Static);
        assert_eq!(by["every-5s"].origin, TaskOrigin::Dynamic);
        let e = by["every-5s"];
        assert_eq!(e.state, TaskState::Active);
        assert_eq!(e.next_fire, Some(t0() + chrono::Duration::seconds(5)));
        assert_eq!(e.owner.as_deref(), Some("n1"));
        assert_eq!(e.last_fire.as_ref().map(|f| f.token), Some(7));
        assert_eq!(e.last_result.as_deref(), Some("ok"));
        assert_eq!((e.run_count, by["berlin"].run_count), (Some(12), None));
        // 02:30 in Berlin (CET, UTC+1 on 2 March) is 01:30 UTC.
        assert_eq!(
            by["berlin"].next_fire,
            Utc.with_ymd_and_hms(2026, 3, 2, 1, 30, 0).single()
        );
        assert_eq!(by["berlin"].zone, "Europe/Berlin");
        assert!(by["broken"].error.is_some() && by["broken"].next_fire.is_none());
        assert_eq!(by["gone"].state, TaskState::Deleted);
        assert_eq!(
            (by["gone"].owner.as_ref(), by["gone"].next_fire),
            (None, None)
        );
        assert_eq!(by["held"].state, TaskState::Paused);
        assert_eq!(by["held"].next_fire, None);
        assert_eq!(by["static-only"].schedule, None);
        assert_eq!(by["static-only"].state, TaskState::Deleted);
    }

    #[tokio::test]
    async fn static_names_come_from_the_registrys_traces() {
        let reg = MemoryRegistry::new();
        reg.put_task(&crate::testing::meta("dyn", "@hourly"), PutMode::CreateOnly)
            .await
            .expect("put");
        let status = |name: &str| (name.to_string(), TaskStatus::new(name, t0()).encode());
        reg.put_records(
            dcron_core::RecordKind::Status,
            &[status("dyn"), status("ran"), status("gone")],
        )
        .await
        .expect("status");
        dcron_core::admin::pause_task(&reg, "held", t0())
            .await
            .expect("paused");
        reg.mark_deleted("gone", t0()).await.expect("deleted");
        let mut n = node("n1", NodeStatus::Working, 1);
        n.running.push(dcron_core::RunningFire {
            task: "busy".into(),
            instant: t0(),
            token: 1,
        });
        reg.register(&n, std::time::Duration::from_secs(60))
            .await
            .expect("registered");

        let snap = Snapshot::load(&reg).await.expect("loaded");
        let names: Vec<&str> = snap.static_names.iter().map(String::as_str).collect();
        assert_eq!(names, ["busy", "gone", "held", "ran"]);
        assert_eq!(snap.live_task_names(), ["busy", "dyn", "held", "ran"]);
        let own = compute_ownership(&snap.nodes, &snap.live_task_names(), Strategy::Range);
        assert_eq!(own.count_for("n1"), 4);
    }

    #[tokio::test]
    async fn mutations_follow_the_dcron_rules() {
        let reg = MemoryRegistry::new();
        let req = AddRequest {
            name: "job".into(),
            cron: "*/10 * * * * *".into(),
            zone: Some("Asia/Tokyo".into()),
            payload: "hello".into(),
            one_shot: false,
            tags: vec!["team:ops".into()],
            max_concurrent: Some(2),
        };
        let meta = add(&reg, &req, false, t0()).await.expect("added");
        assert_eq!(meta.created_at, Some(t0()));
        assert_eq!(reg.get_task("job").await.expect("read"), Some(meta));
        let again = add(&reg, &req, false, t0()).await.expect_err("exists");
        assert_eq!(again.exit_code(), crate::error::EXIT_CONFLICT);

        // Bad input never reaches the registry.
        for (bad, what) in [
            (
                AddRequest {
                    name: "a/b".into(),
                    ..req.clone()
                },
                "name",
            ),
            (
                AddRequest {
                    cron: "61 * * * *".into(),
                    ..req.clone()
                },
                "cron",
            ),
            (
                AddRequest {
                    zone: Some("Mars/Olympus".into()),
                    ..req.clone()
                },
                "zone",
            ),
            (
                AddRequest {
                    tags: vec!["has space".into()],
                    ..req.clone()
                },
                "tag",
            ),
            (
                AddRequest {
                    max_concurrent: Some(0),
                    ..req.clone()
                },
                "max_concurrent",
            ),
        ] {
            let e = add(&reg, &bad, false, t0()).await.expect_err(what);
            assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{what}: {e}");
        }

        let d = delete(&reg, "job", false, t0()).await.expect("deleted");
        assert!(!d.already);
        let d2 = delete(&reg, "job", false, t0() + chrono::Duration::seconds(9))
            .await
            .expect("idempotent");
        assert!(d2.already && d2.deleted_at == t0());
        assert_eq!(
            add(&reg, &req, false, t0())
                .await
                .expect_err("tombstoned")
                .exit_code(),
            crate::error::EXIT_CONFLICT
        );
        reuse(&reg, "job").await.expect("reused");
        assert_eq!(
            reuse(&reg, "job")
                .await
                .expect_err("not deleted")
                .exit_code(),
            crate::error::EXIT_NOT_FOUND
        );
        add(&reg, &req, true, t0()).await.expect("force-add");
        cleanup(&reg, "job").await.expect("cleaned");
        assert!(reg.get_task("job").await.expect("read").is_none());
        for result in [
            cleanup(&reg, "job").await,
            reuse(&reg, "nope").await,
            delete(&reg, "nope", false, t0()).await.map(|_| ()),
            claims(&reg, "nope", 5).await.map(|_| ()),
        ] {
            assert_eq!(
                result.expect_err("unknown").exit_code(),
                crate::error::EXIT_NOT_FOUND
            );
        }
        // A static task (no record) can be tombstoned on request.
        delete(&reg, "static", true, t0())
            .await
            .expect("static delete");
        assert!(reg.get_tombstone("static").await.expect("read").is_some());
    }

    #[tokio::test]
    async fn claims_are_newest_first_and_limited() {
        let reg = MemoryRegistry::new();
        add(
            &reg,
            &AddRequest {
                name: "c".into(),
                cron: "* * * * * *".into(),
                ..AddRequest::default()
            },
            false,
            t0(),
        )
        .await
        .expect("added");
        let fires: Vec<FireKey> = (0..5)
            .map(|i| FireKey::new("c", t0() + chrono::Duration::seconds(i)))
            .collect();
        crate::testing::claim(&reg, "n1", &fires, std::time::Duration::from_secs(600))
            .await
            .expect("claimed");
        let r = claims(&reg, "c", 3).await.expect("listed");
        assert_eq!(r.total, 5);
        let secs: Vec<i64> = r
            .claims
            .iter()
            .map(|c| (c.instant - t0()).num_seconds())
            .collect();
        assert_eq!(secs, [4, 3, 2]);
        assert_eq!(claims(&reg, "c", 0).await.expect("all").claims.len(), 5);
    }
}
