//! The add / force-add / mark-deleted / reuse / cleanup rules, as pure functions.
//!
//! Given what the registry holds for one name (a task record, a tombstone, both or neither) and a
//! request, [`decide`] answers either a typed refusal or the [`Effects`] to apply atomically.
//! [`crate::MemoryRegistry`] applies them under one lock; every other backend implements the same
//! table with its own atomic primitive and proves it with the conformance suite.
//!
//! | request | record | tombstone | result |
//! |---|---|---|---|
//! | `AddDynamic` (`add_task_meta`) | present | any | `AlreadyExists` |
//! | `AddDynamic` | absent | present | `Tombstoned` |
//! | `AddDynamic` | absent | absent | write record, new life |
//! | `UpdateDynamic` | any | present | `Tombstoned` |
//! | `UpdateDynamic` | absent | absent | `NotFound` |
//! | `UpdateDynamic` | present | absent | write record (claims kept) |
//! | `ForceAddDynamic` (`force_add_task_meta`) | any | any | write record, clear tombstone, new life |
//! | `AddStatic` (`add_task`, `add_func`, `add_one_shot_*`) | any | present | `Tombstoned` |
//! | `AddStatic` | any | absent | nothing to write (static tasks live in code) |
//! | `ForceAddStatic` (`force_add_task`, …; also `reuse_deleted_task`) | any | any | clear tombstone, new life |
//! | `MarkDeleted` (`mark_task_deleted`) | any | absent | write tombstone (record kept) |
//! | `MarkDeleted` | any | present | nothing (first time kept) |
//! | `Reuse` (`reuse_deleted_task`) | any | absent | `NotFound` (tombstone) |
//! | `Reuse` | any | present | clear tombstone |
//! | `Cleanup` (`cleanup_task`) | any | any | remove record, tombstone and life |
//!
//! A *new life* has a generation greater than any the name had and starts at the instant of the
//! request (the record's `created_at` for dynamic writes); `UpdateDynamic`, `MarkDeleted` and
//! `Reuse` keep the life (see [`crate::Life`]).
//!
//! No request removes claims: a claim lives until its retention ends, whatever happens to its
//! name. A fire claimed in a previous life therefore stays claimed in the next one, so no
//! instant is ever run twice across a cleanup or a force-add, whatever the clocks of the nodes
//! that start the new life say (a new life's live-since comes from a node's clock, which may be
//! behind the instants the previous life already ran).
//!
//! `force_cleanup_all_tasks` is `Cleanup` for every name of the namespace.
//! A local duplicate of a static task (`AlreadyExists`) is decided by the node before it asks.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::types::{TaskMeta, Tombstone};

/// What the registry holds for one name.
#[derive(Clone, Copy, Debug, Default)]
pub struct NameState<'a> {
    /// The dynamic task record, if any.
    pub meta: Option<&'a TaskMeta>,
    /// The tombstone, if any.
    pub tombstone: Option<&'a Tombstone>,
}

/// A request about one name.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// Create a dynamic task record, refusing an existing or tombstoned name.
    AddDynamic(&'a TaskMeta),
    /// Replace a live dynamic task record.
    UpdateDynamic(&'a TaskMeta),
    /// Write a dynamic task record whatever is there, clearing the tombstone; a new life.
    ForceAddDynamic(&'a TaskMeta),
    /// Add a static task: refused when the name is tombstoned.
    AddStatic,
    /// Force-add a static task (or reuse a deleted one): clears the tombstone and starts a new
    /// life at the instant.
    ForceAddStatic(DateTime<Utc>),
    /// Mark the name deleted at an instant.
    MarkDeleted(DateTime<Utc>),
    /// Clear the tombstone.
    Reuse,
    /// Remove every trace of the name.
    Cleanup,
}

/// The writes that carry out an accepted request, to apply atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Write this record.
    pub write_meta: Option<TaskMeta>,
    /// Remove the record.
    pub remove_meta: bool,
    /// Write this tombstone.
    pub set_tombstone: Option<Tombstone>,
    /// Remove the tombstone.
    pub clear_tombstone: bool,
    /// Start a new life with this live-since (the generation comes from the name's sequence).
    pub start_life: Option<DateTime<Utc>>,
    /// Remove the life.
    pub remove_life: bool,
}

impl Effects {
    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        *self == Effects::default()
    }
}

/// Decides a request against the current state of a name (see the module table).
///
/// # Errors
/// [`Error::AlreadyExists`], [`Error::Tombstoned`] or [`Error::NotFound`] as in the table;
/// [`Error::InvalidArgument`] for a dynamic write that starts a life without `created_at`.
pub fn decide(name: &str, state: NameState<'_>, request: Request<'_>) -> Result<Effects> {
    let tombstoned = || Error::Tombstoned {
        name: name.to_string(),
    };
    match request {
        Request::AddDynamic(meta) => {
            if state.meta.is_some() {
                Err(Error::AlreadyExists {
                    name: name.to_string(),
                })
            } else if state.tombstone.is_some() {
                Err(tombstoned())
            } else {
                Ok(Effects {
                    write_meta: Some(meta.clone()),
                    start_life: Some(live_since(meta)?),
                    ..Effects::default()
                })
            }
        }
        Request::UpdateDynamic(meta) => {
            if state.tombstone.is_some() {
                Err(tombstoned())
            } else if state.meta.is_none() {
                Err(Error::task_not_found(name))
            } else {
                Ok(Effects {
                    write_meta: Some(meta.clone()),
                    ..Effects::default()
                })
            }
        }
        Request::ForceAddDynamic(meta) => Ok(Effects {
            write_meta: Some(meta.clone()),
            clear_tombstone: state.tombstone.is_some(),
            start_life: Some(live_since(meta)?),
            ..Effects::default()
        }),
        Request::AddStatic => {
            if state.tombstone.is_some() {
                Err(tombstoned())
            } else {
                Ok(Effects::default())
            }
        }
        Request::ForceAddStatic(at) => Ok(Effects {
            clear_tombstone: state.tombstone.is_some(),
            start_life: Some(at),
            ..Effects::default()
        }),
        Request::MarkDeleted(at) => {
            if state.tombstone.is_some() {
                Ok(Effects::default())
            } else {
                Ok(Effects {
                    set_tombstone: Some(Tombstone {
                        name: name.to_string(),
                        deleted_at: at,
                    }),
                    ..Effects::default()
                })
            }
        }
        Request::Reuse => {
            if state.tombstone.is_some() {
                Ok(Effects {
                    clear_tombstone: true,
                    ..Effects::default()
                })
            } else {
                Err(Error::NotFound {
                    what: "tombstone",
                    name: name.to_string(),
                })
            }
        }
        Request::Cleanup => Ok(Effects {
            remove_meta: state.meta.is_some(),
            clear_tombstone: state.tombstone.is_some(),
            remove_life: true,
            ..Effects::default()
        }),
    }
}

/// The live-since of a dynamic write: the record's `created_at`, which the node sets.
fn live_since(meta: &TaskMeta) -> Result<DateTime<Utc>> {
    meta.created_at.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "task `{}`: a create-only or force write needs `created_at` (its live-since)",
            meta.name
        ))
    })
}

/// Whether a fire of the name may run: never while it is tombstoned.
pub fn may_fire(tombstone: Option<&Tombstone>) -> bool {
    tombstone.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TaskMeta {
        let mut m = TaskMeta::new("t", "* * * * *");
        m.created_at = Some(DateTime::<Utc>::UNIX_EPOCH);
        m
    }
    fn tomb() -> Tombstone {
        Tombstone {
            name: "t".into(),
            deleted_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }
    fn st<'a>(m: Option<&'a TaskMeta>, t: Option<&'a Tombstone>) -> NameState<'a> {
        NameState {
            meta: m,
            tombstone: t,
        }
    }

    #[test]
    fn add_task_meta_refuses_existing_then_tombstoned() {
        let (m, t) = (meta(), tomb());
        assert!(matches!(
            decide("t", st(Some(&m), Some(&t)), Request::AddDynamic(&m)),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            decide("t", st(None, Some(&t)), Request::AddDynamic(&m)),
            Err(Error::Tombstoned { .. })
        ));
        let e = decide("t", st(None, None), Request::AddDynamic(&m)).expect("accepted");
        assert_eq!(e.start_life, m.created_at);
        assert_eq!(e.write_meta, Some(m));
        assert!(!e.clear_tombstone);
        let mut no_time = meta();
        no_time.created_at = None;
        assert!(matches!(
            decide("t", st(None, None), Request::AddDynamic(&no_time)),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn update_needs_a_live_record() {
        let (m, t) = (meta(), tomb());
        assert!(matches!(
            decide("t", st(Some(&m), Some(&t)), Request::UpdateDynamic(&m)),
            Err(Error::Tombstoned { .. })
        ));
        assert!(matches!(
            decide("t", st(None, None), Request::UpdateDynamic(&m)),
            Err(Error::NotFound { what: "task", .. })
        ));
        let e = decide("t", st(Some(&m), None), Request::UpdateDynamic(&m)).expect("ok");
        assert!(e.write_meta.is_some());
        assert!(e.start_life.is_none() && !e.remove_life);
    }

    #[test]
    fn force_add_task_meta_overwrites_and_clears() {
        let (m, t) = (meta(), tomb());
        for (mm, tt) in [
            (None, None),
            (Some(&m), None),
            (None, Some(&t)),
            (Some(&m), Some(&t)),
        ] {
            let e = decide("t", st(mm, tt), Request::ForceAddDynamic(&m)).expect("always ok");
            assert_eq!(e.write_meta.as_ref(), Some(&m));
            assert_eq!(e.start_life, m.created_at);
            assert_eq!(e.clear_tombstone, tt.is_some());
        }
    }

    #[test]
    fn static_add_refused_only_when_tombstoned() {
        let t = tomb();
        assert!(matches!(
            decide("t", st(None, Some(&t)), Request::AddStatic),
            Err(Error::Tombstoned { .. })
        ));
        assert!(decide("t", st(None, None), Request::AddStatic)
            .expect("ok")
            .is_empty());
    }

    #[test]
    fn static_force_add_clears_the_tombstone_and_starts_a_life() {
        let t = tomb();
        let at = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(9);
        let e = decide("t", st(None, Some(&t)), Request::ForceAddStatic(at)).expect("ok");
        assert!(e.clear_tombstone && e.write_meta.is_none());
        assert_eq!(e.start_life, Some(at));
    }

    #[test]
    fn mark_deleted_keeps_record_and_first_time() {
        let (m, t) = (meta(), tomb());
        let at = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(5);
        let e = decide("t", st(Some(&m), None), Request::MarkDeleted(at)).expect("ok");
        assert_eq!(e.set_tombstone.map(|t| t.deleted_at), Some(at));
        assert!(!e.remove_meta);
        assert!(
            decide("t", st(Some(&m), Some(&t)), Request::MarkDeleted(at))
                .expect("idempotent")
                .is_empty()
        );
        // No record (a static task) is fine too.
        assert!(decide("t", st(None, None), Request::MarkDeleted(at))
            .expect("ok")
            .set_tombstone
            .is_some());
    }

    #[test]
    fn reuse_needs_a_tombstone() {
        let t = tomb();
        assert!(matches!(
            decide("t", st(None, None), Request::Reuse),
            Err(Error::NotFound {
                what: "tombstone",
                ..
            })
        ));
        assert!(
            decide("t", st(None, Some(&t)), Request::Reuse)
                .expect("ok")
                .clear_tombstone
        );
    }

    #[test]
    fn cleanup_removes_everything_and_is_idempotent() {
        let (m, t) = (meta(), tomb());
        let e = decide("t", st(Some(&m), Some(&t)), Request::Cleanup).expect("ok");
        assert!(e.remove_meta && e.clear_tombstone && e.remove_life);
        let e = decide("t", st(None, None), Request::Cleanup).expect("ok");
        assert!(!e.remove_meta && !e.clear_tombstone && e.remove_life);
    }

    #[test]
    fn tombstoned_names_never_fire() {
        assert!(may_fire(None));
        assert!(!may_fire(Some(&tomb())));
    }
}
