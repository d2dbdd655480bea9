//! The key layout under one namespace, and the escaping of names into single key segments.
//!
//! ```text
//! /{ns}/nodes/{node id}                 node record, attached to the node's lease
//! /{ns}/tasks/{task name}               task record (TaskMeta JSON)
//! /{ns}/tombstones/{task name}          tombstone (Tombstone JSON)
//! /{ns}/lives/{task name}               the name's life: live-since (RFC 3339); its mod_revision
//!                                       is the generation
//! /{ns}/claims/{task name}/{instant ms} claim (Claim JSON), attached to a retention lease
//! /{ns}/records/{kind}/{record key}     record of a kind (pause, trigger, status): opaque bytes
//! /{ns}/slots/{task name}               running slot (SlotRecord JSON), attached to the
//!                                       holder node's lease
//! ```
//!
//! Every variable segment is escaped with [`escape`], so it never contains `/`: the namespace is
//! one segment (namespaces `a` and `a-b` or `a/b` can never see each other's keys), and the claims
//! of task `x` (prefix `/{ns}/claims/x/`) never include those of task `x y`.

use dcron_core::RecordKind;

/// Escapes a name into one key segment: ASCII letters, digits and `-_.~:@+=,` are kept, every
/// other byte (including `/`, `%`, spaces and the bytes of non-ASCII characters) becomes `%XX`.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:@+=,".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0f));
        }
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from(if n < 10 { b'0' + n } else { b'A' + n - 10 })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Reverses [`escape`]; `None` when the segment is not a valid escape of a UTF-8 name.
pub(crate) fn unescape(segment: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(segment.len());
    let mut i = 0;
    while i < segment.len() {
        if segment[i] == b'%' {
            let hi = hex_value(*segment.get(i + 1)?)?;
            let lo = hex_value(*segment.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(segment[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The smallest key greater than every key starting with `prefix` (etcd's "prefix end").
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // An all-0xff prefix: "\0" means "to the end of the key space" in etcd.
    vec![0]
}

/// The keys of one namespace.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    root: String,
}

impl Keys {
    /// The layout for `namespace` (escaped into one segment).
    pub(crate) fn new(namespace: &str) -> Self {
        Keys {
            root: format!("/{}/", escape(namespace)),
        }
    }

    /// `/{ns}/`: every key of the namespace.
    pub(crate) fn root(&self) -> &str {
        &self.root
    }

    pub(crate) fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.root)
    }

    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}nodes/{}", self.root, escape(id))
    }

    pub(crate) fn tasks_prefix(&self) -> String {
        format!("{}tasks/", self.root)
    }

    pub(crate) fn task(&self, name: &str) -> String {
        format!("{}tasks/{}", self.root, escape(name))
    }

    pub(crate) fn tombstones_prefix(&self) -> String {
        format!("{}tombstones/", self.root)
    }

    pub(crate) fn tombstone(&self, name: &str) -> String {
        format!("{}tombstones/{}", self.root, escape(name))
    }

    pub(crate) fn lives_prefix(&self) -> String {
        format!("{}lives/", self.root)
    }

    /// The life of a name: its value is the live-since, its `mod_revision` the generation.
    pub(crate) fn life(&self, name: &str) -> String {
        format!("{}lives/{}", self.root, escape(name))
    }

    pub(crate) fn claims_prefix(&self) -> String {
        format!("{}claims/", self.root)
    }

    /// `/{ns}/claims/{name}/`: the claims of one task, and only of that task.
    pub(crate) fn task_claims_prefix(&self, name: &str) -> String {
        format!("{}claims/{}/", self.root, escape(name))
    }

    pub(crate) fn claim(&self, name: &str, instant_ms: i64) -> String {
        format!("{}{instant_ms}", self.task_claims_prefix(name))
    }

    /// `/{ns}/records/`: every record of every kind (removed by `cleanup_all`).
    pub(crate) fn records_root(&self) -> String {
        format!("{}records/", self.root)
    }

    /// `/{ns}/records/{kind}/`: the records of one kind.
    pub(crate) fn records_prefix(&self, kind: RecordKind) -> String {
        format!("{}records/{}/", self.root, kind.as_str())
    }

    /// The key of one record (its key escaped into one segment).
    pub(crate) fn record(&self, kind: RecordKind, key: &str) -> String {
        format!("{}{}", self.records_prefix(kind), escape(key))
    }

    /// `/{ns}/slots/`: every running slot of the namespace (removed by `cleanup_all`).
    pub(crate) fn slots_prefix(&self) -> String {
        format!("{}slots/", self.root)
    }

    /// The running slot of a task.
    pub(crate) fn slot(&self, name: &str) -> String {
        format!("{}{}", self.slots_prefix(), escape(name))
    }

    /// The unescaped last segment of `key` when it lies directly under `prefix`.
    pub(crate) fn name_under(prefix: &str, key: &[u8]) -> Option<String> {
        let rest = key.strip_prefix(prefix.as_bytes())?;
        if rest.is_empty() || rest.contains(&b'/') {
            return None;
        }
        unescape(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_never_yields_a_slash() {
        for name in [
            "plain",
            "report:daily v2",
            "a/b",
            "100%",
            "ünïcode ✓ 名前",
            "*?#[]{}",
            "%2F",
            "",
        ] {
            let e = escape(name);
            assert!(!e.contains('/'), "{name:?} -> {e:?}");
            assert_eq!(unescape(e.as_bytes()).as_deref(), Some(name), "{e}");
        }
        assert_eq!(escape("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert_eq!(unescape(b"%"), None);
        assert_eq!(unescape(b"%2"), None);
        assert_eq!(unescape(b"%zz"), None);
        assert_eq!(unescape(b"%FF"), None); // not UTF-8
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn namespaces_and_task_claims_do_not_overlap() {
        let a = Keys::new("a");
        let ab = Keys::new("a-b");
        let slash = Keys::new("a/tasks");
        assert!(!ab.task("x").starts_with(&a.tasks_prefix()));
        assert!(!slash.task("x").starts_with(&a.tasks_prefix()));
        assert!(!a.claim("x y", 5).starts_with(&a.task_claims_prefix("x")));
        assert_eq!(a.claim("x", -5), "/a/claims/x/-5");
        assert_eq!(
            Keys::name_under(&a.tasks_prefix(), a.task("n/1 ✓").as_bytes()).as_deref(),
            Some("n/1 ✓")
        );
        assert_eq!(Keys::name_under(&a.tasks_prefix(), b"/a/tasks/x/y"), None);
        assert_eq!(Keys::name_under(&a.tasks_prefix(), b"/b/tasks/x"), None);
    }

    #[test]
    fn record_keys_are_one_segment_per_kind() {
        let a = Keys::new("a");
        assert_eq!(
            a.record(RecordKind::Trigger, "x/y@1"),
            "/a/records/trigger/x%2Fy@1"
        );
        assert!(a
            .record(RecordKind::Pause, "..")
            .starts_with(&a.records_prefix(RecordKind::Pause)));
        assert!(!a
            .record(RecordKind::Status, "s")
            .starts_with(&a.records_prefix(RecordKind::Pause)));
        assert!(a
            .records_prefix(RecordKind::Status)
            .starts_with(&a.records_root()));
        assert_eq!(
            Keys::name_under(
                &a.records_prefix(RecordKind::Trigger),
                a.record(RecordKind::Trigger, "zürich 日本 *?#[]")
                    .as_bytes()
            )
            .as_deref(),
            Some("zürich 日本 *?#[]")
        );
    }
}
