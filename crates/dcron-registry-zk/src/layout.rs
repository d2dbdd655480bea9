//! Where things live under the namespace, and how names become znode names.
//!
//! ```text
//! {root}/nodes/{escaped node id}            ephemeral, data = Node JSON
//! {root}/tasks/{escaped task name}          persistent, data = TaskMeta JSON
//! {root}/tombstones/{escaped task name}     persistent, data = Tombstone JSON
//! {root}/claims/{escaped task name}         persistent directory of one task's claims
//! {root}/claims/{escaped task name}/{ms}    TTL znode (or persistent + sweeper), data = Claim JSON
//! {root}/sweeper                            ephemeral lock of the claim sweeper (fallback only)
//! {root}/records                            persistent directory of records, created on demand
//! {root}/records/{kind}                     persistent directory of one kind (pause, trigger, status)
//! {root}/records/{kind}/{escaped key}       persistent, data = the record's opaque bytes
//! ```
//!
//! Escaping: every byte outside `[A-Za-z0-9_-]` becomes `%XX` (upper-case hex) — including `.`
//! (so `.` and `..` cannot occur), `%` itself, and every byte of non-ASCII characters, which
//! ZooKeeper restricts in path components. The mapping is one-to-one and reversible.

use dcron_core::{Error, RecordKind, Result};

/// Escapes a task name or node id into one znode name.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
    }
    out
}

fn hex_digit(v: u8) -> char {
    char::from_digit(u32::from(v), 16)
        .map(|c| c.to_ascii_uppercase())
        .unwrap_or('0')
}

/// Reverses [`escape`]; `None` when the znode name was not written by it.
pub(crate) fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = escaped.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Checks and normalises a namespace root: absolute, no empty, `.` or `..` components, no
/// trailing `/`, no control characters.
pub(crate) fn normalise_root(root: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "zookeeper namespace {root:?} {why}"
        )))
    };
    if !root.starts_with('/') {
        return bad("must start with `/`");
    }
    let trimmed = root.trim_end_matches('/');
    if trimmed.is_empty() {
        return bad("must not be the server root");
    }
    for part in trimmed[1..].split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("has an empty, `.` or `..` component");
        }
        if part.chars().any(|c| c.is_control() || c == '\u{0}') {
            return bad("contains control characters");
        }
    }
    Ok(trimmed.to_string())
}

/// The paths of one namespace.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: String,
}

impl Layout {
    pub(crate) fn new(root: String) -> Self {
        Layout { root }
    }

    pub(crate) fn root(&self) -> &str {
        &self.root
    }

    /// The directories created at connect time, parents first.
    pub(crate) fn directories(&self) -> Vec<String> {
        let mut dirs = Vec::new();
        let mut at = String::new();
        for part in self.root[1..].split('/') {
            at.push('/');
            at.push_str(part);
            dirs.push(at.clone());
        }
        for d in ["nodes", "tasks", "tombstones", "claims"] {
            dirs.push(format!("{}/{d}", self.root));
        }
        dirs
    }

    pub(crate) fn nodes_dir(&self) -> String {
        format!("{}/nodes", self.root)
    }
    pub(crate) fn tasks_dir(&self) -> String {
        format!("{}/tasks", self.root)
    }
    pub(crate) fn tombstones_dir(&self) -> String {
        format!("{}/tombstones", self.root)
    }
    pub(crate) fn claims_dir(&self) -> String {
        format!("{}/claims", self.root)
    }
    pub(crate) fn records_dir(&self) -> String {
        format!("{}/records", self.root)
    }
    pub(crate) fn records_kind_dir(&self, kind: RecordKind) -> String {
        format!("{}/records/{}", self.root, kind.as_str())
    }
    pub(crate) fn record(&self, kind: RecordKind, key: &str) -> String {
        format!("{}/records/{}/{}", self.root, kind.as_str(), escape(key))
    }
    pub(crate) fn sweeper_lock(&self) -> String {
        format!("{}/sweeper", self.root)
    }

    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}/nodes/{}", self.root, escape(id))
    }
    pub(crate) fn task(&self, name: &str) -> String {
        format!("{}/tasks/{}", self.root, escape(name))
    }
    pub(crate) fn tombstone(&self, name: &str) -> String {
        format!("{}/tombstones/{}", self.root, escape(name))
    }
    pub(crate) fn task_claims(&self, name: &str) -> String {
        format!("{}/claims/{}", self.root, escape(name))
    }
    pub(crate) fn claim(&self, name: &str, instant_ms: i64) -> String {
        format!("{}/claims/{}/{instant_ms}", self.root, escape(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_awkward_names() {
        for name in [
            "a",
            ".",
            "..",
            "report:daily v2",
            "ünïcode ✓ name",
            "100%",
            "with*star?and#hash@",
            "zookeeper",
            "a.b.c",
            "%41",
        ] {
            let e = escape(name);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'),
                "{e}"
            );
            assert_ne!(e, ".");
            assert_ne!(e, "..");
            assert_eq!(unescape(&e).as_deref(), Some(name), "{name:?}");
        }
        assert_eq!(escape("a.b"), "a%2Eb");
        assert_eq!(unescape("bad%"), None);
        assert_eq!(unescape("bad%zz"), None);
        assert_eq!(unescape("has space"), None);
        assert_eq!(unescape("%FF"), None, "not UTF-8");
    }

    #[test]
    fn namespace_roots_are_checked() {
        assert_eq!(normalise_root("/dcron").expect("ok"), "/dcron");
        assert_eq!(normalise_root("/a/b/").expect("ok"), "/a/b");
        for bad in [
            "", "dcron", "/", "//", "/a//b", "/a/./b", "/a/..", "/a\u{1}",
        ] {
            assert!(
                matches!(normalise_root(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let l = Layout::new("/x/y".into());
        assert_eq!(
            l.directories(),
            vec![
                "/x",
                "/x/y",
                "/x/y/nodes",
                "/x/y/tasks",
                "/x/y/tombstones",
                "/x/y/claims"
            ]
        );
        assert_eq!(l.claim("a b", -5), "/x/y/claims/a%20b/-5");
        assert_eq!(
            l.record(RecordKind::Trigger, "a b@1"),
            "/x/y/records/trigger/a%20b%401"
        );
        assert_eq!(
            l.record(RecordKind::Pause, ".."),
            "/x/y/records/pause/%2E%2E"
        );
        assert_eq!(
            l.records_kind_dir(RecordKind::Status),
            "/x/y/records/status"
        );
        assert_eq!(l.records_dir(), "/x/y/records");
    }
}
