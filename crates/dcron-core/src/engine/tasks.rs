//! The task table: every task this node knows, whether it owns it, its life, and the two
//! counters that keep stale work from running.
//!
//! - The **generation** of a task moves whenever the timer entries scheduled for it must be
//!   ignored: it was lost, changed, tombstoned, or started a new life (see
//!   [`crate::engine::timers`]).
//! - The **stamp** of a task moves whenever a fire claimed ahead of its instant must not start:
//!   the task was deleted, paused, changed or started a new life. The fire compares it right
//!   before it starts; the claim stays, so no other node runs that fire either.
//!
//! The rules of lives (DESIGN §2): the life carries over when a record still belongs to it (a
//! static task registered again, a dynamic record updated in place with the same
//! `created_at`); a force-write (new `created_at`) or a reuse after a tombstone starts a new
//! life, which is read from the registry before anything is planned for it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::plan::Fires;
use crate::schedule::Schedule;
use crate::task::Task;
use crate::types::{Life, TaskMeta};

/// One task.
pub(crate) struct Entry {
    /// The name, shared with the timers and the API view (one allocation per task).
    pub(crate) name: Arc<str>,
    /// Its definition.
    pub(crate) meta: Arc<TaskMeta>,
    /// Its parsed schedule.
    pub(crate) schedule: Schedule,
    /// Static handler; dynamic tasks use the node's `task_run_fn`.
    pub(crate) task: Option<Arc<dyn Task>>,
    /// Registered in code on this node.
    pub(crate) is_static: bool,
    /// This node owns it.
    pub(crate) owned: bool,
    /// See the module docs.
    pub(crate) generation: u64,
    /// The task's current life in the registry, once known (nothing is scheduled before).
    pub(crate) life: Option<Life>,
    /// A read of its life is in flight.
    pub(crate) life_pending: bool,
    /// See the module docs; shared with the fires claimed for the task.
    pub(crate) stamp: Arc<AtomicU64>,
}

impl Entry {
    /// The task's fires in its current life (`None` until the life is known).
    pub(crate) fn fires(&self) -> Option<Fires<'_>> {
        Some(Fires {
            schedule: &self.schedule,
            life: self.life?,
            one_shot: self.meta.one_shot,
            run_if_past: self.meta.run_if_past,
        })
    }

    /// The stamp and its value now, for a fire planned now.
    pub(crate) fn stamp_now(&self) -> (Arc<AtomicU64>, u64) {
        (self.stamp.clone(), self.stamp.load(Ordering::Acquire))
    }

    fn invalidate(&self) {
        self.stamp.fetch_add(1, Ordering::AcqRel);
    }
}

/// What [`Tasks::upsert`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Upserted {
    /// The task was owned before (it is not any more until placed again).
    pub(crate) was_owned: bool,
    /// The name was not known.
    pub(crate) new_name: bool,
}

/// What taking a task over needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gain {
    /// Unknown name: nothing.
    Unknown,
    /// Its life is known: catch up and schedule now.
    Plan,
    /// Read its life first.
    ReadLife,
    /// Its life is being read already.
    Pending,
}

/// Every known task and every tombstoned name.
#[derive(Default)]
pub(crate) struct Tasks {
    entries: HashMap<Arc<str>, Entry>,
    tombstones: HashSet<String>,
    next_generation: u64,
}

impl Tasks {
    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// The task named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// The task named `name`, to change it.
    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Entry> {
        self.entries.get_mut(name)
    }

    /// Every task.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Every task's name.
    pub(crate) fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.keys()
    }

    /// How many tasks this node owns.
    pub(crate) fn owned_count(&self) -> usize {
        self.entries.values().filter(|e| e.owned).count()
    }

    /// Whether `name` is tombstoned.
    pub(crate) fn is_tombstoned(&self, name: &str) -> bool {
        self.tombstones.contains(name)
    }

    /// The tombstoned names.
    pub(crate) fn tombstones(&self) -> &HashSet<String> {
        &self.tombstones
    }

    /// Whether a timer entry of `name` scheduled at `generation` still counts.
    pub(crate) fn is_live(&self, name: &str, generation: u64) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.owned && e.generation == generation)
    }

    /// Adds or replaces a task; it is not owned until placed again. Its life carries over when
    /// the record still belongs to it (see the module docs), and its stamp moves.
    pub(crate) fn upsert(
        &mut self,
        name: &str,
        meta: Arc<TaskMeta>,
        schedule: Schedule,
        task: Option<Arc<dyn Task>>,
        is_static: bool,
    ) -> Upserted {
        let generation = self.bump();
        let (was_owned, life, stamp) = match self.entries.get(name) {
            Some(e) => {
                let same_life =
                    e.is_static == is_static && (is_static || e.meta.created_at == meta.created_at);
                // The task changed: what was claimed ahead for its previous form does not run.
                e.invalidate();
                (e.owned, e.life.filter(|_| same_life), e.stamp.clone())
            }
            None => (false, None, Arc::default()),
        };
        let new_name = !self.entries.contains_key(name);
        let key: Arc<str> = Arc::from(name);
        self.entries.insert(
            key.clone(),
            Entry {
                name: key,
                meta,
                schedule,
                task,
                is_static,
                owned: false,
                generation,
                life,
                life_pending: false,
                stamp,
            },
        );
        Upserted {
            was_owned,
            new_name,
        }
    }

    /// Removes a dynamic task (static ones stay); answers whether it was removed.
    pub(crate) fn remove_dynamic(&mut self, name: &str) -> bool {
        if self.entries.get(name).is_none_or(|e| e.is_static) {
            return false;
        }
        if let Some(e) = self.entries.remove(name) {
            e.invalidate();
        }
        true
    }

    /// Tombstones `name`: nobody runs it any more. Answers whether this node owned it.
    pub(crate) fn tombstone(&mut self, name: String) -> bool {
        let generation = self.bump();
        let was_owned = match self.entries.get_mut(&*name) {
            Some(e) => {
                e.invalidate();
                e.generation = generation;
                std::mem::replace(&mut e.owned, false)
            }
            None => false,
        };
        self.tombstones.insert(name);
        was_owned
    }

    /// Clears the tombstone of `name` (a reuse): a known task starts a new life, read before
    /// anything is planned. Answers whether the name was tombstoned.
    pub(crate) fn clear_tombstone(&mut self, name: &str) -> bool {
        if !self.tombstones.remove(name) {
            return false;
        }
        self.forget_life(name);
        true
    }

    /// Drops the known life of `name` (it changed or ended in the registry).
    fn forget_life(&mut self, name: &str) {
        let generation = self.next_generation + 1;
        if let Some(e) = self.entries.get_mut(name) {
            if e.life.take().is_some() {
                self.next_generation = generation;
                e.generation = generation;
                e.invalidate();
            }
        }
    }

    /// This node stops owning `name`; answers whether it owned it.
    pub(crate) fn lose(&mut self, name: &str) -> bool {
        let generation = self.next_generation + 1;
        match self.entries.get_mut(name) {
            Some(e) if e.owned => {
                e.owned = false;
                self.next_generation = generation;
                e.generation = generation;
                true
            }
            _ => false,
        }
    }

    /// This node stops owning everything (it left the cluster, or lost its lease); answers
    /// the names it owned. Every timer entry goes stale.
    pub(crate) fn lose_all(&mut self) -> Vec<Arc<str>> {
        let floor = self.bump();
        let mut lost = Vec::new();
        for e in self.entries.values_mut() {
            if std::mem::replace(&mut e.owned, false) {
                lost.push(e.name.clone());
            }
            e.generation = e.generation.max(floor);
        }
        lost
    }

    /// This node takes `name` over (see [`Gain`]).
    pub(crate) fn gain(&mut self, name: &str) -> Gain {
        let Some(e) = self.entries.get_mut(name) else {
            return Gain::Unknown;
        };
        e.owned = true;
        if e.life.is_some() {
            Gain::Plan
        } else if e.life_pending {
            Gain::Pending
        } else {
            e.life_pending = true;
            Gain::ReadLife
        }
    }

    /// Marks `name` as owned again after a change in place (its life is kept).
    pub(crate) fn keep(&mut self, name: &str) {
        if let Some(e) = self.entries.get_mut(name) {
            e.owned = true;
        }
    }

    /// Records the life read for `name`; answers whether the task is owned and must be
    /// (re)planned: its life is new to this node. A changed life makes what was scheduled
    /// and claimed ahead for the old one stale.
    pub(crate) fn set_life(&mut self, name: &str, life: Life) -> bool {
        let generation = self.next_generation + 1;
        let Some(e) = self.entries.get_mut(name) else {
            return false;
        };
        e.life_pending = false;
        if e.life == Some(life) {
            return false;
        }
        if e.life.is_some() {
            self.next_generation = generation;
            e.generation = generation;
            e.invalidate();
        }
        e.life = Some(life);
        e.owned
    }

    /// A read of the lives of `names` failed: they may be asked again.
    pub(crate) fn life_unread(&mut self, names: &[Arc<str>]) {
        for name in names {
            if let Some(e) = self.entries.get_mut(&**name) {
                e.life_pending = false;
            }
        }
    }

    /// Forgets the life of `name`; answers its key when it is owned and its life must be read
    /// again now.
    pub(crate) fn life_stale(&mut self, name: &str) -> Option<Arc<str>> {
        self.forget_life(name);
        let e = self.entries.get_mut(name)?;
        if e.owned && !e.life_pending {
            e.life_pending = true;
            Some(e.name.clone())
        } else {
            None
        }
    }

    /// The owned tasks whose lives are unknown and not being read; marked as being read.
    pub(crate) fn take_unread_lives(&mut self) -> Vec<Arc<str>> {
        self.entries
            .values_mut()
            .filter(|e| e.owned && e.life.is_none() && !e.life_pending)
            .map(|e| {
                e.life_pending = true;
                e.name.clone()
            })
            .collect()
    }

    /// Moves the stamp of `name`: fires claimed ahead for it do not start.
    pub(crate) fn invalidate(&self, name: &str) {
        if let Some(e) = self.entries.get(name) {
            e.invalidate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::timers::Timers;
    use crate::schedule::SecondsField;
    use chrono::{DateTime, TimeDelta, Utc};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(1_000_000 + s)
    }

    fn meta(name: &str, created: i64) -> Arc<TaskMeta> {
        let mut m = TaskMeta::new(name, "* * * * * *");
        m.created_at = Some(t(created));
        Arc::new(m)
    }

    fn schedule() -> Schedule {
        Schedule::parse("* * * * * *", None, SecondsField::Optional).expect("parses")
    }

    /// A dynamic task `job` created at 0, owned, in life 1 since 0.
    fn owned_job() -> Tasks {
        let mut tasks = Tasks::default();
        tasks.upsert("job", meta("job", 0), schedule(), None, false);
        assert_eq!(tasks.gain("job"), Gain::ReadLife);
        assert_eq!(tasks.gain("job"), Gain::Pending, "one read at a time");
        assert!(tasks.set_life("job", Life::new(1, t(0))), "owned: plan it");
        assert_eq!(tasks.gain("job"), Gain::Plan);
        tasks
    }

    fn stamp(tasks: &Tasks) -> u64 {
        tasks.get("job").expect("known").stamp_now().1
    }

    fn generation(tasks: &Tasks) -> u64 {
        tasks.get("job").expect("known").generation
    }

    #[test]
    fn an_update_in_place_keeps_the_life_a_force_write_starts_another() {
        let mut tasks = owned_job();
        let s0 = stamp(&tasks);
        // Same `created_at`: the same life, no longer owned until placed again.
        let up = tasks.upsert("job", meta("job", 0), schedule(), None, false);
        assert_eq!(
            up,
            Upserted {
                was_owned: true,
                new_name: false
            }
        );
        assert_eq!(
            tasks.get("job").and_then(|e| e.life),
            Some(Life::new(1, t(0)))
        );
        assert!(
            stamp(&tasks) > s0,
            "what was claimed ahead for the old form does not run"
        );
        assert!(!tasks.get("job").expect("known").owned);
        tasks.keep("job");
        // A force-write (new `created_at`): the life is read again.
        tasks.upsert("job", meta("job", 50), schedule(), None, false);
        assert_eq!(tasks.get("job").and_then(|e| e.life), None);
        assert_eq!(tasks.gain("job"), Gain::ReadLife);
    }

    #[test]
    fn a_static_task_registered_again_keeps_its_life() {
        let mut tasks = Tasks::default();
        tasks.upsert("job", meta("job", 0), schedule(), None, true);
        tasks.gain("job");
        tasks.set_life("job", Life::new(3, t(0)));
        tasks.upsert("job", meta("job", 99), schedule(), None, true);
        assert_eq!(
            tasks.get("job").and_then(|e| e.life),
            Some(Life::new(3, t(0)))
        );
        // A dynamic record of the same name is another life.
        tasks.upsert("job", meta("job", 99), schedule(), None, false);
        assert_eq!(tasks.get("job").and_then(|e| e.life), None);
        // And a static task is never removed as a dynamic one.
        tasks.upsert("s", meta("s", 0), schedule(), None, true);
        assert!(!tasks.remove_dynamic("s"));
        assert!(tasks.remove_dynamic("job"));
        assert!(tasks.get("job").is_none());
    }

    #[test]
    fn a_tombstone_stops_everything_scheduled_and_a_reuse_is_a_new_life() {
        let mut tasks = owned_job();
        let mut timers = Timers::default();
        timers.push(t(5), generation(&tasks), Arc::from("job"));
        let s0 = stamp(&tasks);
        assert!(tasks.tombstone("job".into()), "it was owned");
        assert!(tasks.is_tombstoned("job"));
        assert!(stamp(&tasks) > s0);
        assert_eq!(timers.earliest(|n, g| tasks.is_live(n, g)), None);
        // Cleared (a reuse): the life is forgotten and read again before anything is planned,
        // and the old timer entries stay stale even once the task is owned again.
        timers.push(t(6), generation(&tasks), Arc::from("job"));
        assert!(tasks.clear_tombstone("job"));
        assert!(!tasks.clear_tombstone("job"));
        assert_eq!(tasks.get("job").and_then(|e| e.life), None);
        assert_eq!(tasks.gain("job"), Gain::ReadLife);
        assert_eq!(timers.earliest(|n, g| tasks.is_live(n, g)), None);
        assert!(tasks.set_life("job", Life::new(2, t(40))));
        let fires = tasks.get("job").and_then(Entry::fires).expect("life known");
        assert_eq!(
            fires.next_after(t(6)),
            Some(t(40)),
            "nothing before the new live-since"
        );
    }

    #[test]
    fn a_new_life_makes_old_timers_and_claims_stale() {
        let mut tasks = owned_job();
        let g0 = generation(&tasks);
        let s0 = stamp(&tasks);
        // The same life read again: nothing moves, nothing to plan.
        assert!(!tasks.set_life("job", Life::new(1, t(0))));
        assert_eq!((generation(&tasks), stamp(&tasks)), (g0, s0));
        // A claim answered Superseded: the life is stale and read again, once.
        assert_eq!(tasks.life_stale("job"), Some(Arc::from("job")));
        assert_eq!(tasks.life_stale("job"), None, "already being read");
        assert!(generation(&tasks) > g0 && stamp(&tasks) > s0);
        // The read failed: it is asked again by the retry.
        tasks.life_unread(&[Arc::from("job")]);
        assert_eq!(tasks.take_unread_lives(), vec![Arc::<str>::from("job")]);
        assert!(tasks.take_unread_lives().is_empty());
        assert!(tasks.set_life("job", Life::new(2, t(30))));
    }

    #[test]
    fn losing_tasks_makes_their_timers_stale() {
        let mut tasks = owned_job();
        tasks.upsert("other", meta("other", 0), schedule(), None, false);
        tasks.gain("other");
        let mut timers = Timers::default();
        timers.push(t(5), generation(&tasks), Arc::from("job"));
        assert!(tasks.lose("job"));
        assert!(!tasks.lose("job"));
        assert_eq!(timers.earliest(|n, g| tasks.is_live(n, g)), None);
        // Regained: only what is scheduled from now on counts.
        assert_eq!(tasks.gain("job"), Gain::Plan);
        assert_eq!(timers.earliest(|n, g| tasks.is_live(n, g)), None);
        let g = generation(&tasks);
        timers.push(t(7), g, Arc::from("job"));
        assert_eq!(tasks.owned_count(), 2);
        let mut lost = tasks.lose_all();
        lost.sort();
        assert_eq!(lost, vec![Arc::<str>::from("job"), Arc::from("other")]);
        assert_eq!(tasks.owned_count(), 0);
        assert!(generation(&tasks) > g);
        assert_eq!(timers.earliest(|n, g| tasks.is_live(n, g)), None);
    }
}
