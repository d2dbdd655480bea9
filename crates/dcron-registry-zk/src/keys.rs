//! Where things live under the namespace, and how names become znode names.
//!
//! ```text
//! {root}                                   the namespace marker (data `{"dcron_namespace":1}`)
//! {root}/nodes/{node id}.{sequence}        ephemeral sequential, data = Node JSON
//! {root}/tasks/{task name}                 persistent: the whole state of the name (see `state`)
//! {root}/tasks/{task name}/{ms}           the claim of the fire at that instant, whatever the
//!                                          life (TTL znode, or persistent + sweeper)
//! {root}/tasks/{task name}/{ms}/n          the claim that took the fire over after it expired
//!                                          (and `/n/n`, … for each later takeover)
//! {root}/clients/{uuid}                    ephemeral marker of one registry handle's session
//! {root}/sweeper                           ephemeral lock of the claim sweeper (without TTL)
//! {root}/records/{kind}/{record key}       persistent, data = the record's opaque bytes
//! {root}/slots/{task name}                 persistent, never deleted: the running slot of the
//!                                          name (holder, or empty when free; see `slots`)
//! ```
//!
//! Escaping: every byte outside `[A-Za-z0-9_-]` becomes `%XX` (upper-case hex) — including `.`
//! (so `.` and `..` cannot occur, and `.` is free as the separator before a node's sequence
//! number), `%` itself, and every byte of non-ASCII characters, which ZooKeeper restricts in
//! path components. The mapping is one-to-one and reversible.

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

/// The ancestors of a normalised root, outermost first (`/a/b/c` → `/a`, `/a/b`).
pub(crate) fn ancestors(root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = String::new();
    let parts: Vec<&str> = root[1..].split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push('/');
        at.push_str(part);
        out.push(at.clone());
    }
    out
}

/// The name of the claim znode of a fire: its instant in milliseconds since the epoch, alone
/// (the generation, claimant and retention are in the znode's data), so that every life of the
/// task meets the same claim.
pub(crate) fn claim_name(instant_ms: i64) -> String {
    instant_ms.to_string()
}

/// Reverses [`claim_name`]: only the exact form it writes (no sign but `-`, no leading zeros).
pub(crate) fn parse_claim_name(name: &str) -> Option<i64> {
    let ms: i64 = name.parse().ok()?;
    (claim_name(ms) == name).then_some(ms)
}

/// Reads a claim znode name of earlier builds of this crate, `{generation}_{instant ms}`. Such
/// claims are no longer read or listed; the sweeper still collects them once they expire.
pub(crate) fn parse_legacy_claim_name(name: &str) -> Option<(u64, i64)> {
    let (g, ms) = name.split_once('_')?;
    Some((g.parse().ok()?, ms.parse().ok()?))
}

/// The child name of a node record: `{escaped id}.` followed by the server's sequence number.
pub(crate) fn node_prefix(id: &str) -> String {
    format!("{}.", escape(id))
}

/// Reverses a node record's child name into `(node id, sequence)`.
pub(crate) fn parse_node_child(child: &str) -> Option<(String, u64)> {
    let (id, seq) = child.rsplit_once('.')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((unescape(id)?, seq.parse().ok()?))
}

/// The child a takeover of an expired claim creates under it.
pub(crate) const SUCCESSOR: &str = "n";

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

    /// The directories under the root, created at connect time.
    pub(crate) fn directories(&self) -> Vec<String> {
        ["nodes", "tasks", "clients", "records", "slots"]
            .iter()
            .map(|d| format!("{}/{d}", self.root))
            .collect()
    }

    pub(crate) fn nodes_dir(&self) -> String {
        format!("{}/nodes", self.root)
    }
    pub(crate) fn tasks_dir(&self) -> String {
        format!("{}/tasks", self.root)
    }
    pub(crate) fn client(&self, id: &str) -> String {
        format!("{}/clients/{id}", self.root)
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
    pub(crate) fn slots_dir(&self) -> String {
        format!("{}/slots", self.root)
    }
    /// The running slot znode of a task name.
    pub(crate) fn slot(&self, name: &str) -> String {
        format!("{}/slots/{}", self.root, escape(name))
    }
    pub(crate) fn sweeper_lock(&self) -> String {
        format!("{}/sweeper", self.root)
    }
    /// The state znode of a task name.
    pub(crate) fn task(&self, name: &str) -> String {
        format!("{}/tasks/{}", self.root, escape(name))
    }
    /// The claim znode of a fire (the first of its chain of takeovers).
    pub(crate) fn claim(&self, name: &str, instant_ms: i64) -> String {
        format!(
            "{}/tasks/{}/{}",
            self.root,
            escape(name),
            claim_name(instant_ms)
        )
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
        assert_eq!(ancestors("/x/y/z"), vec!["/x", "/x/y"]);
        assert!(ancestors("/x").is_empty());
        let l = Layout::new("/x/y".into());
        assert_eq!(
            l.directories(),
            vec![
                "/x/y/nodes",
                "/x/y/tasks",
                "/x/y/clients",
                "/x/y/records",
                "/x/y/slots"
            ]
        );
        assert_eq!(l.slot("a b"), "/x/y/slots/a%20b");
        assert_eq!(l.claim("a b", -5), "/x/y/tasks/a%20b/-5");
        assert_eq!(
            l.record(RecordKind::Trigger, "a b@1"),
            "/x/y/records/trigger/a%20b%401"
        );
        assert_eq!(
            l.record(RecordKind::Pause, ".."),
            "/x/y/records/pause/%2E%2E"
        );
    }

    #[test]
    fn child_names_parse_back() {
        for ms in [0, -12, 1_900_000_000_000, i64::MIN, i64::MAX] {
            assert_eq!(parse_claim_name(&claim_name(ms)), Some(ms));
        }
        for other in ["", "-", "+5", "05", "-0", "7_12", "x", "1.5", "n"] {
            assert_eq!(parse_claim_name(other), None, "{other:?}");
        }
        assert_eq!(parse_legacy_claim_name("7_-12"), Some((7, -12)));
        assert_eq!(parse_legacy_claim_name("7"), None);
        assert_eq!(parse_legacy_claim_name("x_1"), None);
        let child = format!("{}0000000042", node_prefix("node.a b"));
        assert_eq!(parse_node_child(&child), Some(("node.a b".to_string(), 42)));
        assert_eq!(parse_node_child("plain"), None);
        assert_eq!(parse_node_child("a."), None);
        assert_eq!(parse_node_child("a.1x"), None);
    }
}
