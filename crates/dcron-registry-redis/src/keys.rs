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

/// The keys and channels of one namespace in one Redis database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisKeys {
    prefix: String,
    node_channel: String,
    task_channel: String,
}

impl RedisKeys {
    /// The layout for `namespace` in database `db`.
    pub fn new(namespace: &str, db: i64) -> Self {
        let prefix = format!("{}:", escape(namespace));
        RedisKeys {
            node_channel: format!("{prefix}events:db{db}:nodes"),
            task_channel: format!("{prefix}events:db{db}:tasks"),
            prefix,
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

    /// The prefix of node keys (`<ns>:node:`); the rest is the escaped node id.
    pub fn node_prefix(&self) -> String {
        format!("{}node:", self.prefix)
    }

    /// The set of registered node ids (escaped).
    pub fn node_index(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The task record of a name.
    pub fn task(&self, name: &str) -> String {
        format!("{}{}", self.task_prefix(), escape(name))
    }

    /// The prefix of task record keys (`<ns>:task:`).
    pub fn task_prefix(&self) -> String {
        format!("{}task:", self.prefix)
    }

    /// The tombstone of a name.
    pub fn tombstone(&self, name: &str) -> String {
        format!("{}{}", self.tombstone_prefix(), escape(name))
    }

    /// The prefix of tombstone keys (`<ns>:tomb:`).
    pub fn tombstone_prefix(&self) -> String {
        format!("{}tomb:", self.prefix)
    }

    /// The prefix of one task's claim keys (`<ns>:claim:<name>:`); the rest is the instant in
    /// milliseconds since the Unix epoch.
    pub fn claim_prefix(&self, name: &str) -> String {
        format!("{}claim:{}:", self.prefix, escape(name))
    }

    /// The life (hash: generation and live-since) of a name.
    pub fn life(&self, name: &str) -> String {
        format!("{}life:{}", self.prefix, escape(name))
    }

    /// The claim index (sorted set) of a name.
    pub fn claim_index(&self, name: &str) -> String {
        format!("{}claims:{}", self.prefix, escape(name))
    }

    /// The running slot (hash: holder's lease id, node key and record) of a task.
    pub fn slot(&self, name: &str) -> String {
        format!("{}slot:{}", self.prefix, escape(name))
    }

    /// The hash holding every record of `kind` (`<ns>:records:<kind>`); its fields are the
    /// record keys as given (hash fields are binary-safe and never matched as globs).
    pub fn records(&self, kind: RecordKind) -> String {
        format!("{}records:{}", self.prefix, kind.as_str())
    }

    /// The namespace's sequence: fencing tokens and generations are its next numbers.
    pub fn token(&self) -> String {
        format!("{}token", self.prefix)
    }

    /// The namespace's node-change counter (the version of every node record and removal).
    pub fn node_version(&self) -> String {
        format!("{}nodever", self.prefix)
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
    fn channels_include_the_database() {
        assert_ne!(
            RedisKeys::new("ns", 0).node_channel(),
            RedisKeys::new("ns", 1).node_channel()
        );
    }
}
