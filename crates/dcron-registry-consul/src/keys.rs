//! The KV key layout of one namespace, and the escape that puts any name into a key.
//!
//! ```text
//! <ns>/nodes/<node id>                 node record, locked by the node's session
//! <ns>/tasks/meta/<task name>          TaskMeta
//! <ns>/tasks/tomb/<task name>/         Tombstone
//! <ns>/lives/<task name>/              the name's current life (generation = its ModifyIndex)
//! <ns>/claims/<task name>/<instant>    claim of one fire (instant: 20 digits, see below)
//! <ns>/records/<kind>/<record key>     record of a kind (pause, trigger, status, life)
//! <ns>/slots/<task name>/held          running slot: SlotRecord, locked by the holder's session
//! <ns>/slots/<task name>/fire/<instant> the holder's fire (empty), locked by the same session
//! ```
//!
//! # Escape
//!
//! Consul's plain KV endpoints accept only some characters in a key, and which ones changed
//! between versions (1.21: `^[a-zA-Z0-9,_./\-?&=]+$` and no `..`; 1.22: `a-zA-Z0-9 ,-_./`, no
//! `..` at either end or before a `/`, no key ending in a "suspicious" extension such as `.json`
//! or `.com`). Transactions check nothing, so a key written by a transaction may be unreadable by
//! a plain GET. Every variable segment (namespace, task name, node id, record key) is therefore
//! escaped into `[A-Za-z0-9-]` plus `_` as the escape character: each byte outside
//! `[A-Za-z0-9-]` (including `_` itself, `.`, `%`, `/` and every byte of a non-ASCII character)
//! becomes `_` and two upper-case hex digits. An escaped segment never contains `.`, `%`, `/`
//! or `..`, is never empty, and is accepted by every Consul version; the escape is injective, so
//! two distinct names never share a key.
//!
//! Because escaped segments never contain `/`, the namespace is one segment (namespaces `a` and
//! `a-b`, or `a` and `a/tasks`, cannot overlap) and `…/claims/<task>/` holds exactly one task's
//! claims (`delete-tree` on it is exact). Claim instants have a fixed width, and tombstone and
//! life keys end with `/`, so none of these keys is a prefix of another: a transaction's
//! `get-tree` on one of them (the only read that does not fail on a missing key) reads that key
//! alone, whatever other names share its beginning.

use dcron_core::RecordKind;

/// Bytes kept as they are in a key segment.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Escapes one key segment (a namespace, task name, node id or record key).
///
/// ```text
/// billing.report-v2  ->  billing_2Ereport-v2
/// a:b                ->  a_3Ab
/// a..b               ->  a_2E_2Eb
/// zürich             ->  z_C3_BCrich
/// ```
pub(crate) fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
    out
}

/// Reverses [`escape`]; `None` for a segment [`escape`] cannot have produced.
pub(crate) fn unescape(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_plain(b) {
            out.push(b);
            i += 1;
        } else if b == b'_' {
            let hex = segment.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
            {
                return None;
            }
            let value = u8::from_str_radix(hex, 16).ok()?;
            if is_plain(value) {
                // `escape` never escapes these: not a segment it wrote.
                return None;
            }
            out.push(value);
            i += 3;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a fire instant (ms since the epoch, possibly negative) as 20 digits that sort like
/// the instant: the value shifted by 2^63 into `u64`.
pub(crate) fn instant_segment(millis: i64) -> String {
    let shifted = (millis as u64) ^ (1u64 << 63);
    format!("{shifted:020}")
}

/// The keys of one namespace.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    root: String,
}

impl Keys {
    /// The layout under the escaped `namespace`.
    pub(crate) fn new(namespace: &str) -> Self {
        Keys {
            root: escape(namespace),
        }
    }

    pub(crate) fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.root)
    }

    pub(crate) fn node(&self, node_id: &str) -> String {
        format!("{}{}", self.nodes_prefix(), escape(node_id))
    }

    /// `<ns>/tasks/`: records and tombstones, watched together.
    pub(crate) fn tasks_root(&self) -> String {
        format!("{}/tasks/", self.root)
    }

    pub(crate) fn metas_prefix(&self) -> String {
        format!("{}/tasks/meta/", self.root)
    }

    pub(crate) fn task(&self, name: &str) -> String {
        format!("{}{}", self.metas_prefix(), escape(name))
    }

    pub(crate) fn tombstones_prefix(&self) -> String {
        format!("{}/tasks/tomb/", self.root)
    }

    pub(crate) fn tombstone(&self, name: &str) -> String {
        format!("{}{}/", self.tombstones_prefix(), escape(name))
    }

    pub(crate) fn lives_prefix(&self) -> String {
        format!("{}/lives/", self.root)
    }

    pub(crate) fn life(&self, name: &str) -> String {
        format!("{}{}/", self.lives_prefix(), escape(name))
    }

    pub(crate) fn claims_root(&self) -> String {
        format!("{}/claims/", self.root)
    }

    pub(crate) fn claims_prefix(&self, name: &str) -> String {
        format!("{}{}/", self.claims_root(), escape(name))
    }

    pub(crate) fn claim(&self, name: &str, instant_millis: i64) -> String {
        format!(
            "{}{}",
            self.claims_prefix(name),
            instant_segment(instant_millis)
        )
    }

    /// `<ns>/records/`: every record of every kind (removed by `cleanup_all`).
    pub(crate) fn records_root(&self) -> String {
        format!("{}/records/", self.root)
    }

    /// `<ns>/records/<kind>/`: the records of one kind.
    pub(crate) fn records_prefix(&self, kind: RecordKind) -> String {
        format!("{}{}/", self.records_root(), kind.as_str())
    }

    /// The key of one record (its key escaped into one segment).
    pub(crate) fn record(&self, kind: RecordKind, key: &str) -> String {
        format!("{}{}", self.records_prefix(kind), escape(key))
    }

    /// `<ns>/slots/`: every running slot (removed by `cleanup_all`).
    pub(crate) fn slots_root(&self) -> String {
        format!("{}/slots/", self.root)
    }

    /// The running slot of a task: its holder's `SlotRecord`, locked by the holder's session.
    pub(crate) fn slot(&self, name: &str) -> String {
        format!("{}{}/held", self.slots_root(), escape(name))
    }

    /// `<ns>/slots/<task>/fire/`: the fire marker of a task's slot (one key at most).
    pub(crate) fn slot_fires(&self, name: &str) -> String {
        format!("{}{}/fire/", self.slots_root(), escape(name))
    }

    /// The fire marker of `name`'s slot held for the fire at `instant_millis`.
    pub(crate) fn slot_fire(&self, name: &str, instant_millis: i64) -> String {
        format!(
            "{}{}",
            self.slot_fires(name),
            instant_segment(instant_millis)
        )
    }

    /// The unescaped last segment of a key under `prefix` (a task name, node id, record key),
    /// with or without the closing `/` of tombstone and life keys.
    pub(crate) fn name_under(prefix: &str, key: &str) -> Option<String> {
        let rest = key.strip_prefix(prefix)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') {
            return None;
        }
        unescape(rest)
    }
}

/// Whether a key passes the plain KV endpoint checks of every Consul version this crate knows
/// (the intersection of the 1.21 and 1.22 rules).
#[cfg(test)]
pub(crate) fn portable_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && !key.contains("..")
        && !key.contains('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWKWARD: [&str; 14] = [
        "a",
        "billing.report-v2",
        "a:b",
        "a..b",
        "..",
        ".",
        "report:daily v2",
        "ünï/cödé",
        "100%",
        "*?#@!~&=",
        "a_5Fb",
        "_",
        "x.json",
        "日本",
    ];

    #[test]
    fn names_round_trip_and_every_key_is_portable() {
        let k = Keys::new("ns.with:odd chars");
        for name in AWKWARD {
            let e = escape(name);
            assert!(
                !e.contains('/') && !e.contains('.') && !e.contains('%'),
                "{e}"
            );
            assert_eq!(unescape(&e).as_deref(), Some(name), "{e}");
            for key in [
                k.node(name),
                k.task(name),
                k.tombstone(name),
                k.life(name),
                k.claim(name, -5),
                k.claims_prefix(name),
                k.record(RecordKind::Trigger, name),
                k.slot(name),
                k.slot_fire(name, -5),
            ] {
                assert!(portable_key(&key), "{key}");
            }
        }
        assert_eq!(escape("billing.report-v2"), "billing_2Ereport-v2");
        assert_eq!(escape("a:b"), "a_3Ab");
        assert_eq!(escape("a..b"), "a_2E_2Eb");
        assert_eq!(escape("zürich"), "z_C3_BCrich");
    }

    #[test]
    fn escape_is_injective() {
        let mut seen = std::collections::HashMap::new();
        for name in AWKWARD {
            if let Some(other) = seen.insert(escape(name), name) {
                panic!("{name:?} and {other:?} share a key");
            }
        }
        // The escape character itself is escaped, so `_` sequences cannot be forged.
        assert_ne!(escape("a_2Eb"), escape("a.b"));
    }

    #[test]
    fn segments_escape_did_not_write_are_refused() {
        for bad in ["a.b", "a_2", "a_zz", "a_2e", "a_41", "a%20", "", "_C3"] {
            if bad.is_empty() {
                assert_eq!(unescape(bad).as_deref(), Some(""));
                continue;
            }
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn instants_sort_and_have_fixed_width() {
        let xs = [i64::MIN, -1_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let segs: Vec<String> = xs.iter().map(|&x| instant_segment(x)).collect();
        assert!(segs.iter().all(|s| s.len() == 20));
        let mut sorted = segs.clone();
        sorted.sort();
        assert_eq!(sorted, segs);
    }

    #[test]
    fn layout_is_prefix_free_across_names_and_namespaces() {
        let k = Keys::new("ns");
        assert!(!k.claim("a", 10).starts_with(&k.claim("a", 1)));
        assert!(!k.claim("ab", 1).starts_with(&k.claims_prefix("a")));
        assert!(!k.claims_prefix("ab").starts_with(&k.claims_prefix("a")));
        let nested = Keys::new("ns/tasks");
        assert!(!nested.task("x").starts_with(&k.tasks_root()));
        let extended = Keys::new("ns-b");
        assert!(!extended.task("x").starts_with(&k.tasks_root()));
        assert!(k.task("x").starts_with(&k.tasks_root()));
        assert!(k.tombstone("x").starts_with(&k.tasks_root()));
        assert_eq!(
            Keys::name_under(&k.metas_prefix(), &k.task("a b")).as_deref(),
            Some("a b")
        );
        assert_eq!(Keys::name_under(&k.metas_prefix(), &k.tombstone("a")), None);
        assert_eq!(
            Keys::name_under(&k.tombstones_prefix(), &k.tombstone("a.b")).as_deref(),
            Some("a.b")
        );
        // A task's slot keys are apart from every other task's, and `delete-tree` of one task's
        // fire markers touches no other key.
        assert!(!k.slot("ab").starts_with(&format!("{}a/", k.slots_root())));
        assert!(!k.slot_fires("ab").starts_with(&k.slot_fires("a")));
        assert!(!k.slot("a").starts_with(&k.slot_fires("a")));
        assert!(k.slot_fire("a", 1).starts_with(&k.slot_fires("a")));
        assert!(!extended.slot("x").starts_with(&k.slots_root()));
        // Point keys read with `get-tree` are not prefixes of any other key.
        for (a, b) in [("a", "ab"), ("a", "a_2E"), ("x", "x.")] {
            assert!(!k.tombstone(b).starts_with(&k.tombstone(a)), "{a} {b}");
            assert!(!k.life(b).starts_with(&k.life(a)), "{a} {b}");
        }
    }
}
