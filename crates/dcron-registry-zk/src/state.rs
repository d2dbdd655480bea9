//! The state znode of a task name: everything one write must change, in one znode.
//!
//! Its data is one line of JSON (the header) followed by the task record's bytes exactly as
//! [`TaskMeta::encode`] wrote them:
//!
//! ```text
//! {"dcron_state":1,"record":true,"tombstone":"…","life":{"generation":7,"live_since":"…"},"fence":6,"write":"…"}
//! {"name":"report","cron_format":"0 * * * *",…}
//! ```
//!
//! - `record`: whether a task record follows the header (a record that does not decode is kept
//!   byte for byte and reported as corrupt);
//! - `tombstone`: the deletion time, when the name is marked deleted;
//! - `life`: the current life (generation and live-since), when the name has one;
//! - `fence`: the znode version written by the last change that can refuse a claim (a tombstone
//!   set, a life started or removed); a claim checks that it did not move while it was decided;
//! - `write`: a random id of the write that produced this state, so that a writer whose reply
//!   was lost can recognise its own write.
//!
//! Generations come from the znode's version: a life started by the write that produces
//! version `v` has generation `v + 1`. Versions of a znode only grow and the state znode of a
//! name is never deleted (cleanup writes an empty state), so generations of a name strictly
//! increase across every cleanup and new life, and need no counter of their own.
//!
//! Data whose first line is not such a header (written by something else) is read as a record
//! of its own, with no tombstone and no life: it is reported as corrupt unless it decodes, and
//! the next write puts a header in front of it.

use chrono::{DateTime, Utc};
use dcron_core::tombstone::{decide, Effects, NameState, Request};
use dcron_core::{Life, Result, TaskMeta, Tombstone};
use serde::{Deserialize, Serialize};

/// Decodes a task record, refusing unread one larger than [`crate::MAX_VALUE_BYTES`].
pub(crate) fn decode_record(key: &str, bytes: &[u8]) -> Result<TaskMeta> {
    dcron_core::backend::check_stored_size(key, bytes.len(), crate::MAX_VALUE_BYTES)?;
    TaskMeta::decode(key, bytes)
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The header line of a state znode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    /// The format marker and version (1).
    dcron_state: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    record: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tombstone: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    life: Option<Life>,
    #[serde(default)]
    fence: i64,
    #[serde(default)]
    write: String,
}

/// The decoded state of one task name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// The task record's bytes, when there is a record.
    pub(crate) record: Option<Vec<u8>>,
    /// The deletion time, when tombstoned.
    pub(crate) tombstone: Option<DateTime<Utc>>,
    /// The current life.
    pub(crate) life: Option<Life>,
    /// The version of the last change that can refuse a claim.
    pub(crate) fence: i64,
    /// The id of the write that produced this state.
    pub(crate) write: String,
}

impl State {
    /// Decodes a state znode's data (see the module docs for data without a header).
    pub(crate) fn decode(bytes: &[u8]) -> State {
        let (line, rest) = match bytes.iter().position(|b| *b == b'\n') {
            Some(i) => (&bytes[..i], &bytes[i + 1..]),
            None => (bytes, &[][..]),
        };
        match serde_json::from_slice::<Header>(line) {
            Ok(h) if h.dcron_state >= 1 => State {
                record: h.record.then(|| rest.to_vec()),
                tombstone: h.tombstone,
                life: h.life,
                fence: h.fence,
                write: h.write,
            },
            _ => State {
                record: Some(bytes.to_vec()),
                ..State::default()
            },
        }
    }

    /// The znode data of this state.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let header = Header {
            dcron_state: 1,
            record: self.record.is_some(),
            tombstone: self.tombstone,
            life: self.life,
            fence: self.fence,
            write: self.write.clone(),
        };
        // A plain struct of strings, numbers and times: serialising cannot fail.
        let mut out = serde_json::to_vec(&header).unwrap_or_default();
        out.push(b'\n');
        if let Some(record) = &self.record {
            out.extend_from_slice(record);
        }
        out
    }

    /// Whether the name has nothing: no record, no tombstone, no life.
    pub(crate) fn is_empty(&self) -> bool {
        self.record.is_none() && self.tombstone.is_none() && self.life.is_none()
    }

    /// The record, decoded; `None` without one.
    ///
    /// # Errors
    /// [`dcron_core::Error::Corrupt`] keyed by `key` when the bytes are not a task record.
    pub(crate) fn meta(&self, key: &str) -> Result<Option<TaskMeta>> {
        self.record
            .as_deref()
            .map(|b| decode_record(key, b))
            .transpose()
    }

    /// The tombstone as the core's type.
    pub(crate) fn tombstone_of(&self, name: &str) -> Option<Tombstone> {
        self.tombstone.map(|deleted_at| Tombstone {
            name: name.to_string(),
            deleted_at,
        })
    }

    /// Decides `request` with the core's tombstone rules and answers the state to write, or
    /// `None` when nothing is to be written. `version` is the znode's current version (`None`
    /// when the znode does not exist yet): generations and the fence derive from it.
    ///
    /// # Errors
    /// The refusals of [`dcron_core::tombstone::decide`].
    pub(crate) fn apply(
        &self,
        name: &str,
        version: Option<i32>,
        request: Request<'_>,
        write: &str,
    ) -> Result<Option<State>> {
        // A record that does not decode still exists for the rules (create-only refuses it).
        let placeholder;
        let decoded = self.record.as_deref().map(|b| decode_record(name, b));
        let meta = match &decoded {
            Some(Ok(meta)) => Some(meta),
            Some(Err(_)) => {
                placeholder = TaskMeta::new(name, "");
                Some(&placeholder)
            }
            None => None,
        };
        let tombstone = self.tombstone_of(name);
        let effects = decide(
            name,
            NameState {
                meta,
                tombstone: tombstone.as_ref(),
            },
            request,
        )?;
        if effects.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.with_effects(version, effects, write)))
    }

    /// The state after `effects`, written over `version`.
    fn with_effects(&self, version: Option<i32>, effects: Effects, write: &str) -> State {
        let next = next_version(version);
        let mut out = self.clone();
        out.write = write.to_string();
        if effects.remove_meta {
            out.record = None;
        }
        if let Some(meta) = &effects.write_meta {
            out.record = Some(meta.encode());
        }
        if effects.clear_tombstone {
            out.tombstone = None;
        }
        if let Some(t) = &effects.set_tombstone {
            out.tombstone = Some(t.deleted_at);
            out.fence = next;
        }
        if effects.remove_life {
            out.life = None;
            out.fence = next;
        }
        if let Some(at) = effects.start_life {
            out.life = Some(Life::new(generation_at(next), at));
            out.fence = next;
        }
        out
    }

    /// This state with a life started at `at` (for a name that has none), written over
    /// `version`.
    pub(crate) fn with_life(&self, version: Option<i32>, at: DateTime<Utc>, write: &str) -> State {
        let next = next_version(version);
        State {
            life: Some(Life::new(generation_at(next), at)),
            fence: next,
            write: write.to_string(),
            ..self.clone()
        }
    }
}

/// The version a successful write over `version` produces (0 for a create).
pub(crate) fn next_version(version: Option<i32>) -> i64 {
    version.map_or(0, |v| i64::from(v) + 1)
}

/// The generation of a life started by the write that produces `version`.
fn generation_at(version: i64) -> u64 {
    u64::try_from(version).unwrap_or(0) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(s)
    }

    fn meta(name: &str) -> TaskMeta {
        let mut m = TaskMeta::new(name, "@hourly");
        m.created_at = Some(at(5));
        m
    }

    #[test]
    fn round_trips_with_and_without_a_record() {
        let s = State {
            record: Some(b"{\"name\":\"a\",\n\"cron_format\":\"x\"}".to_vec()),
            tombstone: Some(at(1)),
            life: Some(Life::new(3, at(2))),
            fence: 2,
            write: "w".into(),
        };
        assert_eq!(State::decode(&s.encode()), s);
        let empty = State::default();
        assert_eq!(State::decode(&empty.encode()), empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn foreign_data_is_a_record_of_its_own() {
        for bytes in [&b"\xff\xfe garbage"[..], b"{", b"{\"name\":\"x\"}", b""] {
            let s = State::decode(bytes);
            assert_eq!(s.record.as_deref(), Some(bytes));
            assert!(s.tombstone.is_none() && s.life.is_none());
        }
        assert!(State::decode(b"{").meta("k").is_err());
    }

    #[test]
    fn generations_follow_versions_and_grow() {
        let m = meta("t");
        let created = State::default()
            .apply("t", None, Request::AddDynamic(&m), "w1")
            .expect("ok")
            .expect("write");
        assert_eq!(created.life, Some(Life::new(1, at(5))));
        assert_eq!(created.fence, 0);
        // Refusals are the core's.
        assert!(created
            .apply("t", Some(0), Request::AddDynamic(&m), "w")
            .is_err());
        let cleaned = created
            .apply("t", Some(0), Request::Cleanup, "w2")
            .expect("ok")
            .expect("write");
        assert!(cleaned.is_empty());
        assert_eq!(cleaned.fence, 1);
        let again = cleaned
            .apply("t", Some(1), Request::AddDynamic(&m), "w3")
            .expect("ok")
            .expect("write");
        assert_eq!(again.life.map(|l| l.generation), Some(3));
        let updated = again
            .apply("t", Some(2), Request::UpdateDynamic(&m), "w4")
            .expect("ok")
            .expect("write");
        assert_eq!(updated.life, again.life, "an update keeps the life");
        assert_eq!(updated.fence, again.fence, "an update moves no fence");
        let dead = updated
            .apply("t", Some(3), Request::MarkDeleted(at(9)), "w5")
            .expect("ok")
            .expect("write");
        assert_eq!(dead.tombstone, Some(at(9)));
        assert_eq!(dead.fence, 4);
        assert!(dead
            .apply("t", Some(4), Request::MarkDeleted(at(10)), "w")
            .expect("ok")
            .is_none());
        let restarted = dead
            .apply("t", Some(4), Request::ForceAddStatic(at(11)), "w6")
            .expect("ok")
            .expect("write");
        assert_eq!(restarted.tombstone, None);
        assert_eq!(restarted.life, Some(Life::new(6, at(11))));
        assert!(restarted.record.is_some(), "a restart keeps the record");
        let with = State::default().with_life(Some(8), at(1), "w");
        assert_eq!(with.life, Some(Life::new(10, at(1))));
    }

    #[test]
    fn a_corrupt_record_exists_for_the_rules() {
        let s = State::decode(b"{");
        assert!(matches!(
            s.apply("t", Some(0), Request::AddDynamic(&meta("t")), "w"),
            Err(dcron_core::Error::AlreadyExists { .. })
        ));
        let forced = s
            .apply("t", Some(0), Request::ForceAddDynamic(&meta("t")), "w")
            .expect("ok")
            .expect("write");
        assert!(forced.meta("t").expect("decodes").is_some());
    }
}
