//! The ledger files the nodes append to, and the analysis of the merged ledger.
//!
//! One line per execution, written with a single `write` on a file opened with `O_APPEND`, so
//! lines of several processes never interleave and a killed process leaves no half line:
//! `task<TAB>scheduled instant (ms)<TAB>process<TAB>fencing token<TAB>start time (ms)`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use dcron_core::{Error, Result};

/// One execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The task.
    pub task: String,
    /// The fire's scheduled instant, in Unix milliseconds.
    pub instant_ms: i64,
    /// The process that ran it (`n1`, `n1.2` after two restarts).
    pub node: String,
    /// The claim's fencing token.
    pub token: u64,
    /// When the handler started, in Unix milliseconds.
    pub started_ms: i64,
}

impl Entry {
    /// The ledger line, with its newline.
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\n",
            self.task, self.instant_ms, self.node, self.token, self.started_ms
        )
    }

    /// Parses one line (without its newline).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the line is not five tab-separated fields of the right types.
    pub fn parse(line: &str) -> Result<Entry> {
        let bad = |why: &str| Error::Corrupt {
            key: "ledger line".into(),
            reason: format!("{why}: {:?}", line.chars().take(80).collect::<String>()),
        };
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            return Err(bad("expected 5 fields"));
        }
        Ok(Entry {
            task: f[0].to_string(),
            instant_ms: f[1].parse().map_err(|_| bad("bad instant"))?,
            node: f[2].to_string(),
            token: f[3].parse().map_err(|_| bad("bad token"))?,
            started_ms: f[4].parse().map_err(|_| bad("bad start time"))?,
        })
    }
}

/// Reads and merges ledger files; answers the entries and the number of unreadable lines.
///
/// # Errors
/// [`Error::InvalidArgument`] when a file cannot be read.
pub fn read_ledgers(paths: &[impl AsRef<Path>]) -> Result<(Vec<Entry>, usize)> {
    let mut entries = Vec::new();
    let mut bad = 0;
    for p in paths {
        let p = p.as_ref();
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "cannot read ledger {}: {e}",
                    p.display()
                )))
            }
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            match Entry::parse(line) {
                Ok(e) => entries.push(e),
                Err(_) => bad += 1,
            }
        }
    }
    Ok((entries, bad))
}

/// A process killed by the chaos run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    /// The process (`n1.2`).
    pub node: String,
    /// When, in Unix milliseconds.
    pub at_ms: i64,
}

/// What the merged ledger shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Every execution.
    pub fires: usize,
    /// Expected fires (every second of every task in the checked window).
    pub expected: usize,
    /// Fires run more than once: `(task, instant)`.
    pub duplicates: Vec<(String, i64)>,
    /// Expected fires never run: `(task, instant)`.
    pub missed: Vec<(String, i64)>,
    /// Executions that should not have happened at all: of a task the run does not define, at
    /// an instant that is not a whole second (the tasks' schedule), or before the task's
    /// live-since (it did not exist yet): `(task, instant, why)`.
    pub unexpected: Vec<(String, i64, &'static str)>,
    /// The longest time from a kill to the next execution of a task the killed process was
    /// running, in milliseconds.
    pub max_failover_ms: i64,
    /// The longest fire delay: from a fire's scheduled instant to its handler's start, over
    /// the executions of the checked window, in milliseconds (0 when there is none).
    pub max_delay_ms: i64,
    /// The fire of [`Analysis::max_delay_ms`]: `(task, instant)`.
    pub max_delay_fire: Option<(String, i64)>,
}

/// Checks the merged ledger: every second in `[from_ms, to_ms]` of every task once, and
/// nothing a task's schedule did not produce since its live-since (`live_since_ms`, by task;
/// a task missing there is checked for its schedule only).
pub fn analyze(
    entries: &[Entry],
    tasks: &[String],
    live_since_ms: &BTreeMap<String, i64>,
    from_ms: i64,
    to_ms: i64,
    kills: &[Kill],
) -> Analysis {
    let mut by_fire: BTreeMap<(&str, i64), usize> = BTreeMap::new();
    for e in entries {
        *by_fire.entry((e.task.as_str(), e.instant_ms)).or_default() += 1;
    }
    let mut a = Analysis {
        fires: entries.len(),
        ..Analysis::default()
    };
    a.duplicates = by_fire
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((t, i), _)| (t.to_string(), *i))
        .collect();
    let known: BTreeSet<&str> = tasks.iter().map(String::as_str).collect();
    for e in entries {
        let why = if !known.contains(e.task.as_str()) {
            Some("a task the run does not define")
        } else if e.instant_ms.rem_euclid(1000) != 0 {
            Some("not an instant of the schedule")
        } else if live_since_ms
            .get(&e.task)
            .is_some_and(|l| e.instant_ms < *l)
        {
            Some("before the task's live-since")
        } else {
            None
        };
        if let Some(why) = why {
            a.unexpected.push((e.task.clone(), e.instant_ms, why));
        }
    }
    let first = from_ms.div_euclid(1000) + 1;
    let last = to_ms.div_euclid(1000);
    for e in entries {
        let in_window = (first * 1000..=last * 1000).contains(&e.instant_ms);
        let delay = e.started_ms.saturating_sub(e.instant_ms);
        if in_window && known.contains(e.task.as_str()) && delay > a.max_delay_ms {
            a.max_delay_ms = delay;
            a.max_delay_fire = Some((e.task.clone(), e.instant_ms));
        }
    }
    for t in tasks {
        for s in first..=last {
            a.expected += 1;
            if !by_fire.contains_key(&(t.as_str(), s * 1000)) {
                a.missed.push((t.clone(), s * 1000));
            }
        }
    }
    // Failover: a kill, the tasks its victim ran in the 3 s before, their next execution.
    let mut starts: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in entries {
        starts
            .entry(e.task.as_str())
            .or_default()
            .push(e.started_ms);
    }
    for v in starts.values_mut() {
        v.sort_unstable();
    }
    for k in kills {
        let running: BTreeSet<&str> = entries
            .iter()
            .filter(|e| {
                e.node == k.node && e.started_ms <= k.at_ms && e.started_ms > k.at_ms - 3000
            })
            .map(|e| e.task.as_str())
            .collect();
        for t in running {
            let next = starts
                .get(t)
                .and_then(|v| v.iter().find(|s| **s > k.at_ms).copied());
            if let Some(n) = next {
                a.max_failover_ms = a.max_failover_ms.max(n - k.at_ms);
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(task: &str, s: i64, node: &str) -> Entry {
        Entry {
            task: task.into(),
            instant_ms: s * 1000,
            node: node.into(),
            token: 1,
            started_ms: s * 1000 + 5,
        }
    }

    #[test]
    fn lines_round_trip_and_junk_is_corrupt() {
        let x = e("chaos-01", 12, "n1.2");
        let line = x.line();
        assert!(line.ends_with('\n'));
        assert_eq!(Entry::parse(line.trim_end()).ok(), Some(x));
        assert!(Entry::parse("a\tb").is_err());
        assert!(Entry::parse("a\tx\tn\t1\t2").is_err());
    }

    #[test]
    fn unexpected_fires_are_found() {
        let tasks = vec!["chaos-01".to_string()];
        let live: BTreeMap<String, i64> = [("chaos-01".to_string(), 10_000)].into();
        let mut off = e("chaos-01", 12, "n1");
        off.instant_ms += 250;
        let entries = vec![
            e("chaos-01", 11, "n1"),
            e("chaos-01", 9, "n1"),
            off,
            e("intruder", 11, "n2"),
        ];
        let a = analyze(&entries, &tasks, &live, 10_000, 11_000, &[]);
        let why: Vec<&str> = a.unexpected.iter().map(|u| u.2).collect();
        assert_eq!(
            why,
            [
                "before the task's live-since",
                "not an instant of the schedule",
                "a task the run does not define"
            ]
        );
    }

    #[test]
    fn duplicates_misses_and_failover_are_found() {
        let tasks = vec!["a".to_string()];
        let mut entries: Vec<Entry> = (1..=10)
            .filter(|s| *s != 6)
            .map(|s| e("a", s, "n0"))
            .collect();
        entries.push(e("a", 4, "n1"));
        // n0 is killed at 5.5 s; n1 runs the next fire at 7 s.
        entries.retain(|x| !(x.node == "n0" && x.instant_ms >= 7000));
        entries.extend((7..=10).map(|s| e("a", s, "n1")));
        let kills = [Kill {
            node: "n0".into(),
            at_ms: 5_500,
        }];
        let a = analyze(&entries, &tasks, &BTreeMap::new(), 0, 10_000, &kills);
        assert_eq!(a.expected, 10);
        assert_eq!(a.duplicates, vec![("a".to_string(), 4000)]);
        assert_eq!(a.missed, vec![("a".to_string(), 6000)]);
        assert_eq!(a.max_failover_ms, 7_005 - 5_500);
        assert_eq!(a.fires, entries.len());
        assert_eq!(a.max_delay_ms, 5);
    }

    #[test]
    fn the_longest_delay_in_the_window_is_found() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        let mut late = e("b", 5, "n1");
        late.started_ms = 7_250;
        // Outside the window (and of an unknown task): not counted, however late.
        let mut early = e("a", 1, "n0");
        early.started_ms = 60_000;
        let mut stranger = e("x", 5, "n0");
        stranger.started_ms = 60_000;
        let entries = vec![e("a", 5, "n0"), late, early, stranger];
        let a = analyze(&entries, &tasks, &BTreeMap::new(), 3_000, 9_000, &[]);
        assert_eq!(a.max_delay_ms, 2_250);
        assert_eq!(a.max_delay_fire, Some(("b".to_string(), 5_000)));
    }
}
