//! The key layout: where each record lives in Redis.
//!
//! Every key of a namespace starts with `<ns>:` where `<ns>` is the namespace escaped with
//! [`escape`]. Task names and node ids are escaped the same way, so a name containing `:`, `*`,
//! spaces or unicode can neither collide with another key nor act as a `SCAN` glob.
//!
//! | key | type | content |
//! |---|---|---|
//! | `<ns>:node:<id>` | hash, `PX` TTL = lease TTL | `lease` (lease id), `node` ([`dcron_core::Node`] JSON), `ver` (the record's version) |
//! | `<ns>:nodes` | set | escaped ids of registered nodes (pruned when their key has expired) |
//! | `<ns>:nodever` | string (integer) | the namespace's node-change counter: every register, update and unregister takes the next number as the record's version |
//! | `<ns>:task:<name>` | string | [`dcron_core::TaskMeta`] JSON |
//! | `<ns>:tomb:<name>` | string | [`dcron_core::Tombstone`] JSON |
//! | `<ns>:life:<name>` | hash | the name's current [`dcron_core::Life`]: `gen` (generation), `since_s` and `since_ns` (live-since: seconds since the Unix epoch and nanoseconds) |
//! | `<ns>:claim:<name>:<millis>` | string, `PX` TTL = the request's retention | `<token>:<generation>:<epoch>:<node id>`: the fencing token, the life's generation and the claimant (the node id last, as it may contain `:`) |
//! | `<ns>:claims:<name>` | sorted set | claim index: member `<millis>`, score = expiry (server ms) |
//! | `<ns>:token` | string (integer) | the namespace's sequence (`INCR`): every fencing token and every generation is its next number, so both increase per name across cleanups and new lives |
//! | `<ns>:slot:<name>` | hash | the task's running slot: `lease` (the holder's lease id), `nkey` (the holder's node key), `rec` ([`dcron_core::SlotRecord`] JSON); held while `nkey` carries that lease id |
//! | `<ns>:records:<kind>` | hash | records of one [`dcron_core::RecordKind`] (`pause`, `trigger`, `status`): field = record key (unescaped: hash fields are binary-safe and no glob), value = the opaque record bytes |
//!
//! That is the standalone layout. The cluster layout ([`RedisKeys::cluster`]) puts a hash tag
//! after `<ns>:<kind>:`: `{n:<ns>}` for the node keys, running slots and record hashes,
//! `{b<k>:<ns>}` (the task's bucket) for the task-scoped keys and the bucket's sequence
//! (`<ns>:token{b<k>:<ns>}`); see the crate README.
//!
//! Change notifications are published on `<ns>:events:db<db>:nodes` and
//! `<ns>:events:db<db>:tasks` (Redis pub/sub ignores the database number, so it is part of the
//! channel name).

use dcron_core::RecordKind;

/// Every command a registry sends, for a restricted ACL user (see [`RedisKeys::acl_rules`]).
///
/// The registry's own commands, the commands its Lua scripts call (Redis checks a script's
/// commands and keys against the caller's ACL), the pool's health check (`UNWATCH`, `PING`),
/// loading the scripts (`SCRIPT LOAD`, once per server after a `NOSCRIPT`), pub/sub for watches,
/// and `SELECT` for a database other than 0. On Redis 7.2 and newer the client library also
/// names its connections with `CLIENT SETINFO`, whose refusal it ignores (it only shows in
/// `ACL LOG`): add `+client|setinfo` there to keep the log clean (Redis 7.0 refuses the rule).
pub const ACL_COMMANDS: &[&str] = &[
    // Connection set-up, health checks, watches.
    "ping",
    "select",
    "unwatch",
    "subscribe",
    "unsubscribe",
    // Scripts.
    "evalsha",
    "script|load",
    // Listings, records and cleanup.
    "scan",
    "mget",
    "get",
    "type",
    "unlink",
    "publish",
    "hset",
    "hget",
    "hscan",
    "hdel",
    // Called inside the scripts.
    "time",
    "exists",
    "set",
    "del",
    "incr",
    "incrby",
    "pexpire",
    "pttl",
    "hmget",
    "sadd",
    "srem",
    "smembers",
    "zadd",
    "zrange",
    "zremrangebyscore",
];

/// Percent-encodes everything but ASCII letters, digits, `-`, `_`, `.` and `~`.
///
/// The result never contains `:` (the key separator) nor a `SCAN` glob character, and the
/// encoding is injective, so distinct names give distinct keys.
///
/// ```
/// use dcron_registry_redis::keys::escape;
/// assert_eq!(escape("report:daily v2"), "report%3Adaily%20v2");
/// assert_eq!(escape("plain-name_1.0"), "plain-name_1.0");
/// ```
pub fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Reverses [`escape`]; `None` when `escaped` is not a valid escaped UTF-8 string.
///
/// ```
/// use dcron_registry_redis::keys::{escape, unescape};
/// assert_eq!(unescape(&escape("ünï:*")).as_deref(), Some("ünï:*"));
/// assert_eq!(unescape("%4"), None);
/// ```
pub fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// How many hash-tag buckets the task-scoped keys of a namespace are spread over in the
/// cluster layout (see [`RedisKeys::cluster`]).
pub const CLUSTER_BUCKETS: u16 = 256;

/// The bucket of an escaped task name in the cluster layout: 32-bit FNV-1a of its bytes,
/// modulo [`CLUSTER_BUCKETS`]. Part of the layout: it must never change.
fn bucket_of(escaped: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in escaped.as_bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // The remainder is below CLUSTER_BUCKETS, so it fits.
    u16::try_from(h % u32::from(CLUSTER_BUCKETS)).unwrap_or(0)
}

/// The keys and channels of one namespace in one Redis database.
///
/// Two layouts: the standalone one ([`RedisKeys::new`], a single server or a primary) and the
/// cluster one ([`RedisKeys::cluster`], Redis Cluster), where every key carries a hash tag so
/// that each script only touches keys of one hash slot. The prefix `<ns>:` and the kind that
/// follows it (`task:`, `node:`, …) are the same in both, so `SCAN` patterns, ACL rules and
/// [`RedisKeys::is_task_data`] do not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisKeys {
    prefix: String,
    node_channel: String,
    task_channel: String,
    /// The escaped namespace.
    ns: String,
    /// Whether this is the cluster layout.
    cluster: bool,
}

impl RedisKeys {
    /// The standalone layout for `namespace` in database `db`.
    pub fn new(namespace: &str, db: i64) -> Self {
        let ns = escape(namespace);
        let prefix = format!("{ns}:");
        RedisKeys {
            node_channel: format!("{prefix}events:db{db}:nodes"),
            task_channel: format!("{prefix}events:db{db}:tasks"),
            prefix,
            ns,
            cluster: false,
        }
    }

    /// The cluster layout for `namespace` (Redis Cluster has database 0 only).
    ///
    /// Namespace-wide keys (node records, the node index and counter, running slots, record
    /// hashes) carry the tag `{n:<ns>}`: one slot, so the lease checks of the slot script and
    /// the node listing stay single-slot. Task-scoped keys (record, tombstone, life, claims,
    /// claim index) and the sequence their tokens and generations come from carry the tag
    /// `{b<k>:<ns>}` of the task's bucket `k` (of [`CLUSTER_BUCKETS`]), so a claim batch is
    /// split into one script call per bucket and the buckets spread over the masters.
    ///
    /// ```
    /// use dcron_registry_redis::RedisKeys;
    /// let k = RedisKeys::cluster("billing");
    /// assert!(k.node("n1").starts_with("billing:node:{n:billing}"));
    /// let task = k.task("report");
    /// let tag = k.task_tag("report");
    /// assert!(task.starts_with("billing:task:{b") && task.ends_with("report"));
    /// assert!(k.claim_prefix("report").contains(&tag) && k.sequence("report").contains(&tag));
    /// ```
    pub fn cluster(namespace: &str) -> Self {
        RedisKeys {
            cluster: true,
            ..RedisKeys::new(namespace, 0)
        }
    }

    /// Whether this is the cluster layout.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The namespace-wide hash tag (`{n:<ns>}`; empty in the standalone layout).
    fn ns_tag(&self) -> String {
        if self.cluster {
            format!("{{n:{}}}", self.ns)
        } else {
            String::new()
        }
    }

    /// The bucket of a task name (always 0 in the standalone layout): a claim batch is split
    /// into one script call per bucket.
    pub fn bucket(&self, name: &str) -> u16 {
        if self.cluster {
            bucket_of(&escape(name))
        } else {
            0
        }
    }

    /// The hash tag of a task's keys (`{b<k>:<ns>}`; empty in the standalone layout).
    pub fn task_tag(&self, name: &str) -> String {
        if self.cluster {
            format!("{{b{}:{}}}", self.bucket(name), self.ns)
        } else {
            String::new()
        }
    }

    /// How tokens and generations are made from the sequence of a name's keys: the `n`th
    /// number of the sequence gives `n * scale + offset`. Standalone: `(1, 0)` (one sequence
    /// per namespace). Cluster: `(CLUSTER_BUCKETS, bucket)`, so numbers of different buckets
    /// never collide and each name's still grow.
    pub fn token_scale(&self, name: &str) -> (u64, u64) {
        if self.cluster {
            (u64::from(CLUSTER_BUCKETS), u64::from(self.bucket(name)))
        } else {
            (1, 0)
        }
    }

    /// The prefix every key of the namespace starts with (`<ns>:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash holding a node's record and lease id.
    pub fn node(&self, node_id: &str) -> String {
        format!("{}{}", self.node_prefix(), escape(node_id))
    }

    /// The prefix of node keys (`<ns>:node:`, cluster `<ns>:node:{n:<ns>}`); the rest is the
    /// escaped node id.
    pub fn node_prefix(&self) -> String {
        format!("{}node:{}", self.prefix, self.ns_tag())
    }

    /// The set of registered node ids (escaped).
    pub fn node_index(&self) -> String {
        format!("{}nodes{}", self.prefix, self.ns_tag())
    }

    /// The task record of a name.
    pub fn task(&self, name: &str) -> String {
        format!(
            "{}{}{}",
            self.task_prefix(),
            self.task_tag(name),
            escape(name)
        )
    }

    /// The prefix of task record keys (`<ns>:task:`).
    pub fn task_prefix(&self) -> String {
        format!("{}task:", self.prefix)
    }

    /// The tombstone of a name.
    pub fn tombstone(&self, name: &str) -> String {
        format!(
            "{}{}{}",
            self.tombstone_prefix(),
            self.task_tag(name),
            escape(name)
        )
    }

    /// The prefix of tombstone keys (`<ns>:tomb:`).
    pub fn tombstone_prefix(&self) -> String {
        format!("{}tomb:", self.prefix)
    }

    /// The name of the task record or tombstone `key` found under `prefix` (one of
    /// [`RedisKeys::task_prefix`] and [`RedisKeys::tombstone_prefix`]); `None` when the rest
    /// is not an escaped name (with the right tag in the cluster layout).
    pub fn name_of(&self, prefix: &str, key: &str) -> Option<String> {
        let rest = key.strip_prefix(prefix)?;
        if !self.cluster {
            return unescape(rest);
        }
        let end = rest.find('}')?;
        let name = unescape(&rest[end + 1..])?;
        (rest[..=end] == self.task_tag(&name)).then_some(name)
    }

    /// The prefix of one task's claim keys (`<ns>:claim:<name>:`); the rest is the instant in
    /// milliseconds since the Unix epoch.
    pub fn claim_prefix(&self, name: &str) -> String {
        format!(
            "{}claim:{}{}:",
            self.prefix,
            self.task_tag(name),
            escape(name)
        )
    }

    /// The life (hash: generation and live-since) of a name.
    pub fn life(&self, name: &str) -> String {
        format!(
            "{}life:{}{}",
            self.prefix,
            self.task_tag(name),
            escape(name)
        )
    }

    /// The claim index (sorted set) of a name.
    pub fn claim_index(&self, name: &str) -> String {
        format!(
            "{}claims:{}{}",
            self.prefix,
            self.task_tag(name),
            escape(name)
        )
    }

    /// The running slot (hash: holder's lease id, node key and record) of a task. In the
    /// cluster layout it carries the namespace-wide tag, as the slot script checks the
    /// holder's node key.
    pub fn slot(&self, name: &str) -> String {
        format!("{}slot:{}{}", self.prefix, self.ns_tag(), escape(name))
    }

    /// The hash holding every record of `kind` (`<ns>:records:<kind>`); its fields are the
    /// record keys as given (hash fields are binary-safe and never matched as globs).
    pub fn records(&self, kind: RecordKind) -> String {
        format!("{}records:{}{}", self.prefix, self.ns_tag(), kind.as_str())
    }

    /// The namespace's sequence of the standalone layout: fencing tokens and generations are
    /// its next numbers. The cluster layout has one per bucket: see [`RedisKeys::sequence`].
    pub fn token(&self) -> String {
        format!("{}token", self.prefix)
    }

    /// The sequence the tokens and generations of `name` come from (see
    /// [`RedisKeys::token_scale`]): the namespace's in the standalone layout, the bucket's in
    /// the cluster layout.
    pub fn sequence(&self, name: &str) -> String {
        format!("{}token{}", self.prefix, self.task_tag(name))
    }

    /// The namespace's node-change counter (the version of every node record and removal).
    pub fn node_version(&self) -> String {
        format!("{}nodever{}", self.prefix, self.ns_tag())
    }

    /// The pub/sub channel of node changes.
    pub fn node_channel(&self) -> &str {
        &self.node_channel
    }

    /// The pub/sub channel of task and tombstone changes.
    pub fn task_channel(&self) -> &str {
        &self.task_channel
    }

    /// The `ACL SETUSER` rules (after the user name, password and `on`) that grant exactly what a
    /// registry on this namespace needs: its keys `~<ns>:*`, its channels `&<ns>:events:*`, and
    /// the commands of [`ACL_COMMANDS`], everything else reset or removed.
    ///
    /// ```
    /// use dcron_registry_redis::RedisKeys;
    /// let rules = RedisKeys::new("billing", 0).acl_rules();
    /// assert_eq!(&rules[..4], ["resetkeys", "~billing:*", "resetchannels", "&billing:events:*"]);
    /// assert!(rules.contains(&"+evalsha".to_string()));
    /// ```
    pub fn acl_rules(&self) -> Vec<String> {
        let mut rules = vec![
            "resetkeys".to_string(),
            format!("~{}*", self.prefix),
            "resetchannels".to_string(),
            format!("&{}events:*", self.prefix),
            "-@all".to_string(),
        ];
        rules.extend(ACL_COMMANDS.iter().map(|c| format!("+{c}")));
        rules
    }

    /// Whether `key` (a key of this namespace) is removed by `cleanup_all`: task records,
    /// tombstones, lives, running slots and the record hashes, but not node registrations, the
    /// node-change counter, the token sequence or claims (they live until their retention ends).
    pub fn is_task_data(&self, key: impl AsRef<[u8]>) -> bool {
        key.as_ref()
            .strip_prefix(self.prefix.as_bytes())
            .is_some_and(|rest| {
                [&b"task:"[..], b"tomb:", b"life:", b"slot:", b"records:"]
                    .iter()
                    .any(|p| rest.starts_with(p))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn escape_round_trips_and_never_emits_separators_or_globs() {
        for raw in [
            "a",
            "report:daily v2",
            "*?[]\\%",
            "ünïcödé 名前",
            "x:y:z",
            &"é".repeat(100),
        ] {
            let e = escape(raw);
            assert!(
                !e.contains([':', '*', '?', '[', ']', '\\', ' ']),
                "{raw:?} -> {e}"
            );
            assert_eq!(unescape(&e).as_deref(), Some(raw));
        }
        assert_ne!(escape("a:b"), escape("a%3Ab"));
    }

    #[test]
    fn unescape_rejects_bad_input() {
        for bad in ["%", "%4", "%zz", "%FF"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn namespaces_cannot_overlap() {
        // `a` + `:task:x` must never equal a key of namespace `a:task:x`'s layout.
        let a = RedisKeys::new("a", 0);
        let b = RedisKeys::new("a:task", 0);
        assert!(!b.task("x").starts_with(a.prefix()));
        assert_eq!(a.task("x"), "a:task:x");
        assert_eq!(b.task("x"), "a%3Atask:task:x");
    }

    #[test]
    fn cleanup_keeps_nodes_the_sequences_and_claims() {
        let k = RedisKeys::new("ns", 0);
        for key in [
            k.task("t"),
            k.tombstone("t"),
            k.life("t"),
            k.slot("t"),
            k.records(RecordKind::Pause),
            k.records(RecordKind::Trigger),
            k.records(RecordKind::Status),
        ] {
            assert!(k.is_task_data(&key), "{key}");
        }
        for key in [
            k.node("n"),
            k.node_index(),
            k.node_version(),
            k.token(),
            k.claim_index("t"),
            format!("{}1", k.claim_prefix("t")),
            "other:task:t".into(),
        ] {
            assert!(!k.is_task_data(&key), "{key}");
        }
        assert!(k.is_task_data(b"ns:task:\xff"));
    }

    #[test]
    fn cluster_keys_of_one_task_share_a_tag_and_standalone_keys_are_unchanged() {
        let s = RedisKeys::new("ns", 0);
        assert_eq!(s.task("a:b"), "ns:task:a%3Ab");
        assert_eq!(s.sequence("a"), s.token());
        assert_eq!(s.token_scale("a"), (1, 0));
        assert_eq!(
            s.name_of(&s.task_prefix(), "ns:task:a%3Ab").as_deref(),
            Some("a:b")
        );
        let c = RedisKeys::cluster("ns");
        let tag = c.task_tag("a:b");
        for key in [
            c.task("a:b"),
            c.tombstone("a:b"),
            c.life("a:b"),
            c.claim_index("a:b"),
            c.claim_prefix("a:b"),
            c.sequence("a:b"),
        ] {
            assert!(key.starts_with("ns:") && key.contains(&tag), "{key}");
        }
        let ns_tag = "{n:ns}";
        for key in [c.node("x"), c.node_index(), c.node_version(), c.slot("a:b")] {
            assert!(key.contains(ns_tag), "{key}");
        }
        assert_eq!(
            c.name_of(&c.task_prefix(), &c.task("a:b")).as_deref(),
            Some("a:b")
        );
        // A key under another bucket's tag is not a task record.
        let other = format!(
            "{}{{b{}:ns}}a%3Ab",
            c.task_prefix(),
            (c.bucket("a:b") + 1) % CLUSTER_BUCKETS
        );
        assert_eq!(c.name_of(&c.task_prefix(), &other), None);
        assert!(c.is_task_data(c.task("a:b")) && c.is_task_data(c.slot("a:b")));
        assert!(!c.is_task_data(c.sequence("a:b")) && !c.is_task_data(c.node_version()));
        let buckets: HashSet<u16> = (0..2000).map(|i| c.bucket(&format!("t{i}"))).collect();
        assert!(
            buckets.len() > 200,
            "names spread over the buckets: {}",
            buckets.len()
        );
        let (scale, offset) = c.token_scale("a:b");
        assert_eq!((scale, offset), (256, u64::from(c.bucket("a:b"))));
    }

    #[test]
    fn channels_include_the_database() {
        assert_ne!(
            RedisKeys::new("ns", 0).node_channel(),
            RedisKeys::new("ns", 1).node_channel()
        );
    }
}
