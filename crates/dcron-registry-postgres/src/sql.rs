//! The statements the registry sends, rendered once for its schema.

use crate::schema::render;

/// Every statement, with the schema filled in.
#[derive(Clone, Debug)]
pub(crate) struct Statements {
    pub(crate) register: String,
    pub(crate) keep_alive: String,
    pub(crate) update_node: String,
    pub(crate) unregister: String,
    pub(crate) reap_nodes: String,
    pub(crate) list_nodes: String,
    pub(crate) put_task: String,
    pub(crate) get_task: String,
    pub(crate) list_tasks: String,
    pub(crate) mark_deleted: String,
    pub(crate) get_tombstone: String,
    pub(crate) list_tombstones: String,
    pub(crate) clear_tombstone: String,
    pub(crate) cleanup_task: String,
    pub(crate) cleanup_all: String,
    pub(crate) ensure_lives: String,
    pub(crate) restart_life: String,
    pub(crate) claim: String,
    pub(crate) list_claims: String,
    pub(crate) acquire_slot: String,
    pub(crate) release_slot: String,
    pub(crate) purge_claims: String,
    pub(crate) put_records: String,
    pub(crate) get_record: String,
    pub(crate) list_records: String,
    pub(crate) delete_record: String,
    pub(crate) channel: String,
    pub(crate) fetch_nodes: String,
    pub(crate) fetch_task_state: String,
}

/// Registration: the row is replaced whole (a new lease id), expiring `ttl` after the server's
/// `now()`.
const REGISTER: &str = "
WITH up AS (
    INSERT INTO {s}.nodes AS n (ns, node_id, lease_id, ttl_us, expires_at, record, version)
    VALUES ($1, $2, $3, $4::bigint, now() + $4::bigint * interval '1 microsecond', $5,
            nextval('{s}.versions'))
    ON CONFLICT (ns, node_id) DO UPDATE
        SET lease_id = excluded.lease_id, ttl_us = excluded.ttl_us,
            expires_at = excluded.expires_at, record = excluded.record, version = excluded.version
    RETURNING n.node_id, n.version
)
SELECT {s}.notify($1, 'n', up.version, up.node_id) FROM up";

/// Renews a live lease; no row means the lease is gone (expired, replaced, unregistered).
const KEEP_ALIVE: &str = "
UPDATE {s}.nodes SET expires_at = now() + ttl_us * interval '1 microsecond'
WHERE ns = $1 AND node_id = $2 AND lease_id = $3 AND expires_at > now()
RETURNING 1";

const UPDATE_NODE: &str = "
WITH up AS (
    UPDATE {s}.nodes SET record = $4, version = nextval('{s}.versions')
    WHERE ns = $1 AND node_id = $2 AND lease_id = $3 AND expires_at > now()
    RETURNING node_id, version
)
SELECT {s}.notify($1, 'n', up.version, up.node_id) FROM up";

const UNREGISTER: &str = "
WITH gone AS (
    DELETE FROM {s}.nodes WHERE ns = $1 AND node_id = $2 AND lease_id = $3
    RETURNING node_id
)
SELECT {s}.notify($1, 'n', nextval('{s}.versions'), gone.node_id) FROM gone";

/// Removes up to `$2` expired node rows of the namespace (skipping rows another call holds),
/// telling the watchers.
const REAP_NODES: &str = "
WITH gone AS (
    DELETE FROM {s}.nodes
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM {s}.nodes
            WHERE ns = $1 AND expires_at <= now()
            LIMIT $2 FOR UPDATE SKIP LOCKED))
      AND expires_at <= now()
    RETURNING node_id
)
SELECT {s}.notify($1, 'n', nextval('{s}.versions'), gone.node_id) FROM gone";

const LIST_NODES: &str =
    "SELECT node_id, record FROM {s}.nodes WHERE ns = $1 AND expires_at > now()";

const PUT_TASK: &str = "SELECT {s}.put_task($1, $2, $3, $4, $5)";
const GET_TASK: &str = "SELECT record FROM {s}.tasks WHERE ns = $1 AND name = $2";
const LIST_TASKS: &str = "SELECT name, record FROM {s}.tasks WHERE ns = $1";
const MARK_DELETED: &str = "SELECT {s}.mark_deleted($1, $2, $3)";
const GET_TOMBSTONE: &str = "SELECT deleted_at FROM {s}.tombstones WHERE ns = $1 AND name = $2";
const LIST_TOMBSTONES: &str = "SELECT name, deleted_at FROM {s}.tombstones WHERE ns = $1";
const CLEAR_TOMBSTONE: &str = "SELECT {s}.clear_tombstone($1, $2)";
const CLEANUP_TASK: &str = "SELECT {s}.cleanup_task($1, $2)";
const CLEANUP_ALL: &str = "SELECT {s}.cleanup_all($1, $2)";
const ENSURE_LIVES: &str = "SELECT idx, generation, live_since FROM {s}.ensure_lives($1, $2, $3)";
const RESTART_LIFE: &str = "SELECT generation, live_since FROM {s}.restart_life($1, $2, $3)";
const CLAIM: &str = "SELECT idx, outcome, token, holder, current_generation
FROM {s}.claim($1, $2, $3, $4, $5, $6, $7, $8)";

/// Unexpired claims by the server's clock at the time of the read.
const LIST_CLAIMS: &str = "
SELECT instant_ms, node_id, epoch, generation, token FROM {s}.claims
WHERE ns = $1 AND task = $2 AND expires_at > clock_timestamp()";

/// Takes a running slot (schema function `acquire_slot`, one transaction).
const ACQUIRE_SLOT: &str =
    "SELECT outcome, holder, holder_instant_ms FROM {s}.acquire_slot($1, $2, $3, $4, $5)";

/// Frees a running slot held by this lease for this fire; anything else is left alone.
const RELEASE_SLOT: &str = "
DELETE FROM {s}.slots
WHERE ns = $1 AND task = $2 AND node_id = $3 AND lease_id = $4 AND instant_ms = $5";

/// Removes up to `$1` expired claims, of any namespace (they are invisible already; a namespace
/// nobody claims in any more still loses them), skipping rows another call holds: never a scan
/// of the table under a lock.
const PURGE_CLAIMS: &str = "
DELETE FROM {s}.claims
WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {s}.claims
        WHERE expires_at <= now()
        ORDER BY expires_at
        LIMIT $1 FOR UPDATE SKIP LOCKED))
  AND expires_at <= now()";

const PUT_RECORDS: &str = "
INSERT INTO {s}.records AS r (ns, kind, key, value)
SELECT $1, $2, u.k, u.v FROM unnest($3::text[], $4::bytea[]) AS u(k, v)
ON CONFLICT (ns, kind, key) DO UPDATE SET value = excluded.value";
const GET_RECORD: &str = "SELECT value FROM {s}.records WHERE ns = $1 AND kind = $2 AND key = $3";
const LIST_RECORDS: &str = "SELECT key, value FROM {s}.records WHERE ns = $1 AND kind = $2";
const DELETE_RECORD: &str =
    "DELETE FROM {s}.records WHERE ns = $1 AND kind = $2 AND key = $3 RETURNING 1";

const CHANNEL: &str = "SELECT {s}.channel($1, $2)";
const FETCH_NODES: &str = "
SELECT node_id, record, version FROM {s}.nodes
WHERE ns = $1 AND node_id = ANY ($2) AND expires_at > now()";
/// Records and tombstones of the given names, read in one snapshot.
const FETCH_TASK_STATE: &str = "
SELECT 't'::text AS kind, name, record, NULL::timestamptz AS deleted_at, version
FROM {s}.tasks WHERE ns = $1 AND name = ANY ($2::text[])
UNION ALL
SELECT 'd'::text, name, NULL::bytea, deleted_at, version
FROM {s}.tombstones WHERE ns = $1 AND name = ANY ($3::text[])";

impl Statements {
    /// The statements for `schema`.
    pub(crate) fn new(schema: &str) -> Self {
        let r = |t: &str| render(t, schema);
        Statements {
            register: r(REGISTER),
            keep_alive: r(KEEP_ALIVE),
            update_node: r(UPDATE_NODE),
            unregister: r(UNREGISTER),
            reap_nodes: r(REAP_NODES),
            list_nodes: r(LIST_NODES),
            put_task: r(PUT_TASK),
            get_task: r(GET_TASK),
            list_tasks: r(LIST_TASKS),
            mark_deleted: r(MARK_DELETED),
            get_tombstone: r(GET_TOMBSTONE),
            list_tombstones: r(LIST_TOMBSTONES),
            clear_tombstone: r(CLEAR_TOMBSTONE),
            cleanup_task: r(CLEANUP_TASK),
            cleanup_all: r(CLEANUP_ALL),
            ensure_lives: r(ENSURE_LIVES),
            restart_life: r(RESTART_LIFE),
            claim: r(CLAIM),
            list_claims: r(LIST_CLAIMS),
            acquire_slot: r(ACQUIRE_SLOT),
            release_slot: r(RELEASE_SLOT),
            purge_claims: r(PURGE_CLAIMS),
            put_records: r(PUT_RECORDS),
            get_record: r(GET_RECORD),
            list_records: r(LIST_RECORDS),
            delete_record: r(DELETE_RECORD),
            channel: r(CHANNEL),
            fetch_nodes: r(FETCH_NODES),
            fetch_task_state: r(FETCH_TASK_STATE),
        }
    }
}
