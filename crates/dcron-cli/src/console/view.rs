//! What the page shows, as JSON: the nodes and tasks tables, built from one registry snapshot
//! with the same functions as `dcronctl nodes` and `dcronctl tasks` ([`crate::ops`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use dcron_core::{Registry, Schedule, SecondsField, Strategy};
use serde::Serialize;

use crate::error::CliResult;
use crate::ops::{self, CorruptRecord, Snapshot, TaskRow, TaskState};

/// How many upcoming fires each task's preview lists.
pub const PREVIEW_FIRES: usize = 5;

/// One running fire of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunningView {
    /// Task name.
    pub task: String,
    /// Its scheduled instant.
    pub instant: DateTime<Utc>,
    /// The fire's fencing token.
    pub token: u64,
}

/// One line of the nodes table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
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
    /// When the node last wrote its record. The registry lists only nodes whose lease is alive;
    /// the lease's remaining time is not exposed by the `Registry` trait.
    pub last_alive: DateTime<Utc>,
    /// When it registered.
    pub created: DateTime<Utc>,
    /// How many tasks it owns under the strategy (dynamic and known static ones).
    pub owned_tasks: usize,
    /// The fires it is running (tasks whose overlap policy is not `Allow`).
    pub running: Vec<RunningView>,
}

/// One line of the tasks table: the `dcronctl tasks` row plus the preview of upcoming fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskView {
    /// The row `dcronctl tasks --json` prints.
    #[serde(flatten)]
    pub row: TaskRow,
    /// The next [`PREVIEW_FIRES`] fires (active dynamic tasks only).
    pub next_fires: Vec<DateTime<Utc>>,
    /// The schedule in words when its fires are evenly spaced (`every 5s`), else `None`.
    pub cadence: Option<String>,
}

/// Everything the page's tables show.
#[derive(Clone, Debug, Serialize)]
pub struct StateView {
    /// When the state was read (the page computes ages against it).
    pub now: DateTime<Utc>,
    /// The registry, without credentials.
    pub registry: String,
    /// The strategy owners are computed with.
    pub strategy: String,
    /// Live nodes, sorted by id.
    pub nodes: Vec<NodeView>,
    /// Tasks, sorted by name (dynamic, known static, deleted).
    pub tasks: Vec<TaskView>,
    /// Values that did not decode.
    pub corrupt: Vec<CorruptRecord>,
    /// Set when the assigner refused the membership.
    pub warning: Option<String>,
}

/// The next `n` fires of a schedule after `now`.
pub fn upcoming(schedule: &Schedule, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(n);
    let mut after = now;
    while out.len() < n {
        match schedule.next_after(after) {
            Some(t) if t > after => {
                out.push(t);
                after = t;
            }
            _ => break,
        }
    }
    out
}

/// `every <gap>` when the fires are evenly spaced (at least three of them).
pub fn cadence(fires: &[DateTime<Utc>]) -> Option<String> {
    if fires.len() < 3 {
        return None;
    }
    let gaps: Vec<chrono::Duration> = fires.windows(2).map(|w| w[1] - w[0]).collect();
    let first = *gaps.first()?;
    if gaps.iter().any(|g| *g != first) {
        return None;
    }
    let gap = first.to_std().ok().filter(|d| *d > Duration::ZERO)?;
    Some(format!("every {}", crate::duration::format_duration(gap)))
}

/// Reads the registry once and builds the tables.
///
/// # Errors
/// The registry's errors.
pub async fn state(
    registry: &dyn Registry,
    registry_name: &str,
    strategy: Strategy,
    now: DateTime<Utc>,
) -> CliResult<StateView> {
    let snap = Snapshot::load(registry).await?;
    let own = ops::compute_ownership(&snap.nodes, &snap.live_task_names(), strategy);
    let mut names: Vec<String> = snap
        .tasks
        .iter()
        .map(|t| t.name.clone())
        .chain(snap.tombstones.iter().map(|t| t.name.clone()))
        .chain(snap.static_names.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    let last = ops::last_fires(registry, &names).await?;
    let rows = ops::task_rows(&snap, &own, &last, &snap.extras, now);
    let tasks = rows
        .into_iter()
        .map(|row| {
            let schedule = snap
                .tasks
                .iter()
                .find(|t| t.name == row.name)
                .and_then(|m| {
                    Schedule::parse(
                        &m.cron_format,
                        m.time_zone.as_deref(),
                        SecondsField::Optional,
                    )
                    .ok()
                });
            let all = schedule
                .as_ref()
                .map(|s| upcoming(s, now, PREVIEW_FIRES))
                .unwrap_or_default();
            let cadence = cadence(&all);
            let next_fires = if row.state == TaskState::Active {
                all
            } else {
                Vec::new()
            };
            TaskView {
                row,
                next_fires,
                cadence,
            }
        })
        .collect();
    let mut nodes: Vec<NodeView> = snap
        .nodes
        .iter()
        .map(|n| NodeView {
            id: n.id.clone(),
            name: n.name.clone(),
            hostname: n.hostname.clone(),
            ip: n.ip.clone(),
            status: n.status.to_string(),
            weight: n.weight,
            last_alive: n.last_alive,
            created: n.create_time,
            owned_tasks: own.count_for(&n.id),
            running: n
                .running
                .iter()
                .map(|r| RunningView {
                    task: r.task.clone(),
                    instant: r.instant,
                    token: r.token,
                })
                .collect(),
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(StateView {
        now,
        registry: registry_name.to_string(),
        strategy: strategy.name().to_string(),
        nodes,
        tasks,
        corrupt: snap.corrupt,
        warning: own.warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use dcron_core::{MemoryRegistry, PutMode};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn previews_and_cadence() {
        let every5 = Schedule::parse("*/5 * * * * *", None, SecondsField::Optional).expect("ok");
        let fires = upcoming(&every5, t0(), 5);
        assert_eq!(fires.len(), 5);
        assert_eq!(fires[0], t0() + chrono::Duration::seconds(5));
        assert_eq!(cadence(&fires).as_deref(), Some("every 5s"));
        let irregular =
            Schedule::parse("0 0 9 * * MON,WED", None, SecondsField::Optional).expect("ok");
        assert_eq!(cadence(&upcoming(&irregular, t0(), 5)), None);
        let once =
            Schedule::parse("@at 2026-03-01T13:00:00Z", None, SecondsField::Optional).expect("ok");
        assert_eq!(upcoming(&once, t0(), 5).len(), 1);
    }

    #[tokio::test]
    async fn state_lists_paused_tasks_without_a_preview() {
        let reg = MemoryRegistry::new();
        reg.put_task(
            &crate::testing::meta("a", "*/10 * * * * *"),
            PutMode::CreateOnly,
        )
        .await
        .expect("put");
        reg.put_task(&crate::testing::meta("b", "@hourly"), PutMode::CreateOnly)
            .await
            .expect("put");
        crate::admin::pause(&reg, "b", false, t0())
            .await
            .expect("paused");
        let s = state(&reg, "memory", Strategy::Consistent, t0())
            .await
            .expect("state");
        assert_eq!(s.tasks.len(), 2);
        assert_eq!(s.tasks[0].next_fires.len(), PREVIEW_FIRES);
        assert_eq!(s.tasks[0].cadence.as_deref(), Some("every 10s"));
        assert_eq!(s.tasks[1].row.state, TaskState::Paused);
        assert!(s.tasks[1].next_fires.is_empty());
    }
}
