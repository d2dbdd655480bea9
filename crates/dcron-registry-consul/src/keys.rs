//! The KV key layout of one namespace.
//!
//! ```text
//! <ns>/nodes/<node id>                 node record, acquired by the node's session
//! <ns>/tasks/<task name>               TaskMeta
//! <ns>/tombstones/<task name>          Tombstone
//! <ns>/claims/<task name>/<instant>    claim of one fire (instant: 20 digits, see below)
//! <ns>/records/<kind>/<record key>     record of a kind (pause, trigger, status): opaque bytes
//! ```
//!
//! Every variable segment is escaped (see [`escape`]) so it never contains `/`: the namespace is
//! one segment (namespaces `a` and `a/tasks` cannot overlap) and `…/claims/<task>/` holds exactly
//! one task's claims (`delete-tree` on it is exact). Claim instants have a fixed width, so no
//! claim key is a prefix of another: a `get-tree` on one claim key reads that key alone.

use dcron_core::RecordKind;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but `A-Z a-z 0-9 - _` is percent-encoded (so `/`, `%`, spaces, unicode…). Dots
/// are encoded too: a segment `.` or `..` in a URL path would be normalised away by HTTP clients
/// and servers before Consul saw the key.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// Escapes one key segment (a namespace, task name or node id).
pub(crate) fn escape(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Reverses [`escape`]; `None` when the result is not UTF-8.
pub(crate) fn unescape(segment: &str) -> Option<String> {
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
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
        format!("{}/nodes/{}", self.root, escape(node_id))
    }

    pub(crate) fn tasks_prefix(&self) -> String {
        format!("{}/tasks/", self.root)
    }

    pub(crate) fn task(&self, name: &str) -> String {
        format!("{}/tasks/{}", self.root, escape(name))
    }

    pub(crate) fn tombstones_prefix(&self) -> String {
        format!("{}/tombstones/", self.root)
    }

    pub(crate) fn tombstone(&self, name: &str) -> String {
        format!("{}/tombstones/{}", self.root, escape(name))
    }

    pub(crate) fn claims_root(&self) -> String {
        format!("{}/claims/", self.root)
    }

    pub(crate) fn claims_prefix(&self, name: &str) -> String {
        format!("{}/claims/{}/", self.root, escape(name))
    }

    pub(crate) fn claim(&self, name: &str, instant_millis: i64) -> String {
        format!(
            "{}/claims/{}/{}",
            self.root,
            escape(name),
            instant_segment(instant_millis)
        )
    }

    /// `<ns>/records/`: every record of every kind (removed by `cleanup_all`).
    pub(crate) fn records_root(&self) -> String {
        format!("{}/records/", self.root)
    }

    /// `<ns>/records/<kind>/`: the records of one kind.
    pub(crate) fn records_prefix(&self, kind: RecordKind) -> String {
        format!("{}/records/{}/", self.root, kind.as_str())
    }

    /// The key of one record (its key escaped into one segment).
    pub(crate) fn record(&self, kind: RecordKind, key: &str) -> String {
        format!("{}{}", self.records_prefix(kind), escape(key))
    }

    /// The unescaped last segment of a key under `prefix` (a task name or node id).
    pub(crate) fn name_under(prefix: &str, key: &str) -> Option<String> {
        let rest = key.strip_prefix(prefix)?;
        if rest.is_empty() || rest.contains('/') {
            return None;
        }
        unescape(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_never_contain_a_slash() {
        for name in [
            "a",
            "report:daily v2",
            "ünï/cödé",
            "100%",
            "*?#@!~",
            "a.b-c_d",
        ] {
            let e = escape(name);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(name));
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
        assert!(!k.claim("ab", 1).starts_with(&k.claim("a", 1)));
        assert!(!k.claims_prefix("ab").starts_with(&k.claims_prefix("a")));
        let nested = Keys::new("ns/tasks");
        assert!(!nested.task("x").starts_with(&k.tasks_prefix()));
        assert_eq!(
            Keys::name_under(&k.tasks_prefix(), &k.task("a b")).as_deref(),
            Some("a b")
        );
    }

    #[test]
    fn record_keys_are_one_segment_under_their_kind() {
        let k = Keys::new("ns");
        assert_eq!(k.record(RecordKind::Pause, ".."), "ns/records/pause/%2E%2E");
        assert_eq!(
            k.record(RecordKind::Trigger, "a/b@1"),
            "ns/records/trigger/a%2Fb%401"
        );
        assert!(k
            .records_prefix(RecordKind::Status)
            .starts_with(&k.records_root()));
        assert_eq!(
            Keys::name_under(
                &k.records_prefix(RecordKind::Trigger),
                &k.record(RecordKind::Trigger, "zürich 日本 *?#[]")
            )
            .as_deref(),
            Some("zürich 日本 *?#[]")
        );
    }
}
