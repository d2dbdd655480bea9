//! Human output: aligned tables and one-line summaries. (`--json` output is the reports'
//! `serde` form, see [`crate::app`].)

use chrono::{DateTime, Utc};

use crate::duration::{format_instant, relative};
use crate::ops::{
    AssignmentReport, ClaimsReport, CorruptRecord, NodesReport, Plan, TaskOrigin, TasksReport,
};

/// A text table in `dcronctl`'s style, drawn by [`comfy_table`]: a header row and data rows,
/// no borders, columns two spaces apart and padded to their widest cell, no trailing blanks,
/// never wrapped (scripts cut columns by position).
#[derive(Clone, Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row.
    pub fn render(&self) -> String {
        let mut table = comfy_table::Table::new();
        table
            .load_style(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
            .set_header(self.header.clone())
            .add_rows(self.rows.clone());
        // Cells are padded by one space on each side: none before the first column.
        if let Some(first) = table.column_mut(0) {
            first.set_padding((0, 1));
        }
        let mut out = String::new();
        for line in table.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn or_dash(v: Option<String>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

/// Longest last result shown in the `tasks` table (`--json` has the whole text).
const RESULT_WIDTH: usize = 40;

fn clip(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        s
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", format_instant(t), relative(t, now))
}

/// Warnings for records that did not decode.
pub fn corrupt_warnings(corrupt: &[CorruptRecord]) -> Vec<String> {
    corrupt
        .iter()
        .map(|c| {
            format!(
                "warning: skipped a record that does not decode: {} ({})",
                c.key, c.reason
            )
        })
        .collect()
}

/// What a destructive command will change, one line per record kind.
pub fn plan(plan: &Plan) -> String {
    if plan.changes.is_empty() {
        return format!("{} task `{}`: nothing to change\n", plan.action, plan.task);
    }
    let n = plan.record_count();
    let mut out = format!(
        "{} task `{}` will change {n} record{}:\n",
        plan.action,
        plan.task,
        if n == 1 { "" } else { "s" }
    );
    for c in &plan.changes {
        out.push_str(&format!("  {:<8} {}\n", c.op, c.detail));
    }
    if !plan.undoable {
        out.push_str("this cannot be undone\n");
    }
    out
}

/// `dcronctl nodes` as a table.
pub fn nodes(report: &NodesReport, now: DateTime<Utc>) -> String {
    if report.nodes.is_empty() {
        return "no live nodes in this namespace\n".into();
    }
    let mut t = Table::new(&["ID", "HOST", "STATUS", "WEIGHT", "LAST ALIVE", "TASKS"]);
    for n in &report.nodes {
        let host = match (n.hostname.is_empty(), n.ip.is_empty()) {
            (true, true) => "-".to_string(),
            (false, true) => n.hostname.clone(),
            (true, false) => n.ip.clone(),
            (false, false) => format!("{} ({})", n.hostname, n.ip),
        };
        t.row(vec![
            n.id.clone(),
            host,
            n.status.clone(),
            n.weight.to_string(),
            when(n.last_alive, now),
            n.owned_tasks.to_string(),
        ]);
    }
    t.render()
}

/// `dcronctl tasks` as a table.
pub fn tasks(report: &TasksReport, now: DateTime<Utc>) -> String {
    if report.tasks.is_empty() {
        return "no tasks in this namespace\n".into();
    }
    let mut t = Table::new(&[
        "NAME",
        "SCHEDULE",
        "ZONE",
        "STATE",
        "NEXT FIRE",
        "OWNER",
        "LAST FIRE",
        "LAST RESULT",
        "TAGS",
    ]);
    for r in &report.tasks {
        // A static task's schedule lives in the nodes' code.
        let schedule = match (&r.schedule, r.one_shot, r.origin) {
            (Some(s), true, _) => format!("{s} (once)"),
            (Some(s), false, _) => s.clone(),
            (None, _, TaskOrigin::Static) => TaskOrigin::Static.name().into(),
            (None, _, TaskOrigin::Dynamic) => "-".into(),
        };
        let next = match (&r.error, r.next_fire) {
            (Some(_), _) => "invalid schedule".to_string(),
            (None, Some(n)) => when(n, now),
            (None, None) => "-".to_string(),
        };
        let last = r.last_fire.as_ref().map(|f| {
            format!(
                "{} ({})",
                format_instant(f.instant),
                relative(f.instant, now)
            )
        });
        t.row(vec![
            r.name.clone(),
            schedule,
            r.zone.clone(),
            r.state.name().to_string(),
            next,
            or_dash(r.owner.clone()),
            or_dash(last),
            or_dash(r.last_result.clone().map(|s| clip(s, RESULT_WIDTH))),
            if r.tags.is_empty() {
                "-".to_string()
            } else {
                r.tags.join(",")
            },
        ]);
    }
    t.render()
}

/// `dcronctl claims` as a table.
pub fn claims(report: &ClaimsReport, now: DateTime<Utc>) -> String {
    if report.claims.is_empty() {
        return format!("no retained claims for task `{}`\n", report.task);
    }
    let mut t = Table::new(&["FIRE", "NODE", "TOKEN", "AGE"]);
    for c in &report.claims {
        t.row(vec![
            format_instant(c.instant),
            c.node.clone(),
            c.token.to_string(),
            relative(c.instant, now),
        ]);
    }
    let mut out = t.render();
    if report.claims.len() < report.total {
        out.push_str(&format!(
            "showing the newest {} of {} retained claims (--limit 0 shows all)\n",
            report.claims.len(),
            report.total
        ));
    }
    out
}

/// `dcronctl assignment` as a table.
pub fn assignment(report: &AssignmentReport) -> String {
    let mut out = format!("strategy: {}\n", report.strategy);
    if report.nodes.is_empty() {
        out.push_str("no live nodes in this namespace\n");
    } else {
        let mut t = Table::new(&["NODE", "STATUS", "WEIGHT", "COUNT", "TASKS"]);
        for n in &report.nodes {
            t.row(vec![
                n.id.clone(),
                n.status.clone(),
                n.weight.to_string(),
                n.tasks.len().to_string(),
                or_dash(Some(n.tasks.join(", "))),
            ]);
        }
        out.push_str(&t.render());
    }
    if !report.unassigned.is_empty() {
        out.push_str(&format!(
            "unassigned (no working node): {}\n",
            report.unassigned.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{FireRow, NodeRow, TaskRow, TaskState};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        t.row(vec!["ü".into()]);
        assert_eq!(t.render(), "A          LONGER\nwide cell  x\nü\n");
    }

    #[test]
    fn long_texts_are_clipped() {
        assert_eq!(clip("short".into(), 10), "short");
        assert_eq!(clip("0123456789abc".into(), 10), "012345678…");
    }

    #[test]
    fn nodes_table() {
        let report = NodesReport {
            strategy: "consistent".into(),
            nodes: vec![NodeRow {
                id: "node-1".into(),
                name: None,
                hostname: "web-1".into(),
                ip: "10.0.0.7".into(),
                status: "working".into(),
                weight: 2,
                last_alive: now() - chrono::Duration::seconds(4),
                last_alive_age: "4s".into(),
                created: now(),
                owned_tasks: 3,
            }],
            corrupt: vec![],
            warning: None,
        };
        let out = nodes(&report, now());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID      HOST              STATUS   WEIGHT  LAST ALIVE                     TASKS"
        );
        assert_eq!(
            lines[1],
            "node-1  web-1 (10.0.0.7)  working  2       2026-03-01T11:59:56Z (4s ago)  3"
        );
    }

    #[test]
    fn tasks_table_shows_dashes_for_unknowns() {
        let row = TaskRow {
            name: "report".into(),
            origin: TaskOrigin::Dynamic,
            schedule: Some("*/5 * * * * *".into()),
            zone: "UTC".into(),
            one_shot: false,
            payload: String::new(),
            state: TaskState::Active,
            deleted_at: None,
            next_fire: Some(now() + chrono::Duration::seconds(5)),
            owner: Some("node-1".into()),
            last_fire: Some(FireRow {
                instant: now(),
                node: "node-1".into(),
                token: 1,
            }),
            last_result: None,
            run_count: None,
            failure_count: None,
            created_at: None,
            tags: vec!["billing".into(), "daily".into()],
            error: None,
        };
        let gone = TaskRow {
            name: "old".into(),
            origin: TaskOrigin::Static,
            zone: "-".into(),
            schedule: None,
            state: TaskState::Deleted,
            next_fire: None,
            owner: None,
            last_fire: None,
            tags: Vec::new(),
            ..row.clone()
        };
        let out = tasks(
            &TasksReport {
                strategy: "consistent".into(),
                tasks: vec![row, gone],
                corrupt: vec![],
                warning: None,
            },
            now(),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("NAME    SCHEDULE       ZONE  STATE    NEXT FIRE"),
            "{out}"
        );
        assert!(
            lines[1].contains("active   2026-03-01T12:00:05Z (in 5s)  node-1"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("old     static         -     deleted  -"),
            "{out}"
        );
        assert!(lines[1].ends_with("billing,daily"), "{out}");
        assert!(lines[2].ends_with('-'), "{out}");
    }

    #[test]
    fn claims_table_mentions_the_limit() {
        let report = ClaimsReport {
            task: "t".into(),
            total: 3,
            claims: vec![FireRow {
                instant: now(),
                node: "n".into(),
                token: 9,
            }],
        };
        let out = claims(&report, now() + chrono::Duration::seconds(2));
        assert!(
            out.starts_with("FIRE                  NODE  TOKEN  AGE\n"),
            "{out}"
        );
        assert!(
            out.contains("2026-03-01T12:00:00Z  n     9      2s ago"),
            "{out}"
        );
        assert!(out.contains("newest 1 of 3"), "{out}");
        let empty = ClaimsReport {
            task: "t".into(),
            total: 0,
            claims: vec![],
        };
        assert_eq!(claims(&empty, now()), "no retained claims for task `t`\n");
    }
}
