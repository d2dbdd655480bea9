//! The schema: tables, functions, and the migrations that create them.
//!
//! Every migration runs inside one transaction holding a transaction-level advisory lock
//! derived from the schema name, so nodes starting together apply each migration once; a node
//! that finds the schema current does not take the lock at all. Applied versions are recorded
//! in `<schema>.migrations`. Migrations are only ever added, never edited.

use dcron_core::{Error, Result};
use deadpool_postgres::Client;

use crate::error::map_pg;

/// The version the crate's statements need.
pub(crate) const LATEST: i32 = 2;

/// Magic first key of the advisory lock (`'dcrn'`), the second is `hashtext(schema)`.
const LOCK_CLASS: i32 = 0x6463_726e;

/// The migrations, in order: `(version, description, SQL)`.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "tables and functions", V1), (2, "running slots", V2)];

/// Schema version 1.
///
/// `{s}` is the quoted schema name, `{lit}` the schema name as a string literal.
const V1: &str = r#"
CREATE SEQUENCE {s}.versions;

-- Fencing tokens and generations of every name come from this one sequence (CACHE 1: values are
-- handed out in increasing order across sessions), so they are distinct across names, and
-- increase per name because every write of a name runs under its counter row's lock.
CREATE SEQUENCE {s}.tokens CACHE 1;

-- Node registrations. A node is live while `expires_at` (server time) is in the future.
CREATE TABLE {s}.nodes (
    ns         text        NOT NULL,
    node_id    text        NOT NULL,
    lease_id   text        NOT NULL,
    ttl_us     bigint      NOT NULL CHECK (ttl_us > 0),
    expires_at timestamptz NOT NULL,
    record     bytea       NOT NULL,
    version    bigint      NOT NULL,
    PRIMARY KEY (ns, node_id)
);
CREATE INDEX nodes_by_expiry ON {s}.nodes (ns, expires_at);

-- Dynamic task records (TaskMeta JSON, kept as bytes so that a bad value is reported, not lost).
CREATE TABLE {s}.tasks (
    ns      text   NOT NULL,
    name    text   NOT NULL,
    record  bytea  NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (ns, name)
);

CREATE TABLE {s}.tombstones (
    ns         text        NOT NULL,
    name       text        NOT NULL,
    deleted_at timestamptz NOT NULL,
    version    bigint      NOT NULL,
    PRIMARY KEY (ns, name)
);

-- The current life of each name.
CREATE TABLE {s}.lives (
    ns         text        NOT NULL,
    name       text        NOT NULL,
    generation bigint      NOT NULL CHECK (generation > 0),
    live_since timestamptz NOT NULL,
    PRIMARY KEY (ns, name)
);

-- One row per name ever used: the lock every write of the name takes first, and the last
-- generation or fencing token the name got (its numbers only grow, even if the `tokens`
-- sequence were ever set back). Never deleted by cleanup.
CREATE TABLE {s}.counters (
    ns   text   NOT NULL,
    name text   NOT NULL,
    last bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, name)
);

CREATE TABLE {s}.claims (
    ns         text        NOT NULL,
    task       text        NOT NULL,
    instant_ms bigint      NOT NULL,
    node_id    text        NOT NULL,
    epoch      bigint      NOT NULL,
    generation bigint      NOT NULL,
    token      bigint      NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (ns, task, instant_ms)
);
-- Expired claims are purged across namespaces (a namespace nobody uses any more still loses them).
CREATE INDEX claims_by_expiry ON {s}.claims (expires_at);

CREATE TABLE {s}.records (
    ns    text  NOT NULL,
    kind  text  NOT NULL,
    key   text  NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (ns, kind, key)
);

-- The LISTEN/NOTIFY channels of a namespace, one for nodes (p_watch 'n') and one for tasks and
-- tombstones ('t'): identifiers of fixed length, distinct per schema and namespace.
CREATE FUNCTION {s}.channel(p_ns text, p_watch text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT 'dcron_' || p_watch || '_' || substr(md5({lit} || '/' || p_ns), 1, 32)
$$;

-- Tells the namespace's watchers that a key changed: `<kind>|<version>|<key>`, never the value.
-- Kinds: n (node), t (task record), d (tombstone), r (list the tasks again).
CREATE FUNCTION {s}.notify(p_ns text, p_kind text, p_version bigint, p_key text) RETURNS integer
LANGUAGE sql AS $$
    SELECT 1 FROM pg_notify(
        {s}.channel(p_ns, CASE WHEN p_kind = 'n' THEN 'n' ELSE 't' END),
        CASE WHEN octet_length(p_key) > 4000 THEN 'r|0|'
             ELSE p_kind || '|' || p_version::text || '|' || p_key END)
$$;

-- Locks the counter rows of `p_names` (creating them), in name order, so that writes of the
-- same names serialise and batches never deadlock.
CREATE FUNCTION {s}.lock_names(p_ns text, p_names text[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO {s}.counters AS c (ns, name, last)
    SELECT p_ns, d.name, 0
    FROM (SELECT DISTINCT n AS name FROM unnest(p_names) AS u(n)) AS d
    ORDER BY d.name
    ON CONFLICT (ns, name) DO UPDATE SET last = c.last
$$;

-- Starts a new life of a locked name: the next number of the sequence, above any the name had.
CREATE FUNCTION {s}.start_life(p_ns text, p_name text, p_at timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_generation bigint;
BEGIN
    UPDATE {s}.counters SET last = GREATEST(last + 1, nextval('{s}.tokens'))
    WHERE ns = p_ns AND name = p_name
    RETURNING last INTO v_generation;
    INSERT INTO {s}.lives AS l (ns, name, generation, live_since)
    VALUES (p_ns, p_name, v_generation, p_at)
    ON CONFLICT (ns, name) DO UPDATE
        SET generation = excluded.generation, live_since = excluded.live_since;
    RETURN v_generation;
END
$$;

-- put_task: create-only ('create'), update ('update') or force ('force'; clears the tombstone,
-- keeps the claims). Answers 'ok',
-- 'already_exists', 'tombstoned' or 'not_found'.
CREATE FUNCTION {s}.put_task(p_ns text, p_name text, p_record bytea, p_mode text,
                             p_live_since timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_has_task boolean;
    v_has_tomb boolean;
    v_version  bigint;
BEGIN
    PERFORM {s}.lock_names(p_ns, ARRAY[p_name]);
    v_has_task := EXISTS (SELECT 1 FROM {s}.tasks WHERE ns = p_ns AND name = p_name);
    v_has_tomb := EXISTS (SELECT 1 FROM {s}.tombstones WHERE ns = p_ns AND name = p_name);
    IF p_mode = 'create' THEN
        IF v_has_task THEN RETURN 'already_exists'; END IF;
        IF v_has_tomb THEN RETURN 'tombstoned'; END IF;
    ELSIF p_mode = 'update' THEN
        IF v_has_tomb THEN RETURN 'tombstoned'; END IF;
        IF NOT v_has_task THEN RETURN 'not_found'; END IF;
    ELSIF p_mode <> 'force' THEN
        RAISE EXCEPTION 'unknown put mode %', p_mode USING ERRCODE = '22023';
    END IF;
    IF p_mode <> 'update' AND p_live_since IS NULL THEN
        RETURN 'no_live_since';
    END IF;
    v_version := nextval('{s}.versions');
    INSERT INTO {s}.tasks AS t (ns, name, record, version)
    VALUES (p_ns, p_name, p_record, v_version)
    ON CONFLICT (ns, name) DO UPDATE SET record = excluded.record, version = excluded.version;
    PERFORM {s}.notify(p_ns, 't', v_version, p_name);
    IF p_mode = 'force' THEN
        DELETE FROM {s}.tombstones WHERE ns = p_ns AND name = p_name;
        IF FOUND THEN
            PERFORM {s}.notify(p_ns, 'd', nextval('{s}.versions'), p_name);
        END IF;
    END IF;
    IF p_mode <> 'update' THEN
        PERFORM {s}.start_life(p_ns, p_name, p_live_since);
    END IF;
    RETURN 'ok';
END
$$;

-- mark_deleted: the first tombstone (and its time) is kept.
CREATE FUNCTION {s}.mark_deleted(p_ns text, p_name text, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    PERFORM {s}.lock_names(p_ns, ARRAY[p_name]);
    v_version := nextval('{s}.versions');
    INSERT INTO {s}.tombstones (ns, name, deleted_at, version)
    VALUES (p_ns, p_name, p_at, v_version)
    ON CONFLICT (ns, name) DO NOTHING;
    IF FOUND THEN
        PERFORM {s}.notify(p_ns, 'd', v_version, p_name);
    END IF;
END
$$;

-- clear_tombstone: whether there was one.
CREATE FUNCTION {s}.clear_tombstone(p_ns text, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {s}.lock_names(p_ns, ARRAY[p_name]);
    DELETE FROM {s}.tombstones WHERE ns = p_ns AND name = p_name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM {s}.notify(p_ns, 'd', nextval('{s}.versions'), p_name);
    RETURN true;
END
$$;

-- cleanup_task: record, tombstone and life. Claims end only with their retention, and the
-- counter row stays.
CREATE FUNCTION {s}.cleanup_task(p_ns text, p_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM {s}.lock_names(p_ns, ARRAY[p_name]);
    DELETE FROM {s}.tasks WHERE ns = p_ns AND name = p_name;
    IF FOUND THEN
        PERFORM {s}.notify(p_ns, 't', nextval('{s}.versions'), p_name);
    END IF;
    DELETE FROM {s}.tombstones WHERE ns = p_ns AND name = p_name;
    IF FOUND THEN
        PERFORM {s}.notify(p_ns, 'd', nextval('{s}.versions'), p_name);
    END IF;
    DELETE FROM {s}.lives WHERE ns = p_ns AND name = p_name;
END
$$;

-- cleanup_all: everything of the namespace but nodes, claims (they end only with their
-- retention) and counters. Watchers get one event per removed record and tombstone, or a single
-- 'r' when there are more than p_max_events.
CREATE FUNCTION {s}.cleanup_all(p_ns text, p_max_events integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_changes bigint;
    v_row record;
BEGIN
    PERFORM 1 FROM {s}.counters WHERE ns = p_ns ORDER BY name FOR UPDATE;
    v_changes := (SELECT count(*) FROM {s}.tasks WHERE ns = p_ns)
               + (SELECT count(*) FROM {s}.tombstones WHERE ns = p_ns);
    IF v_changes > p_max_events THEN
        DELETE FROM {s}.tasks WHERE ns = p_ns;
        DELETE FROM {s}.tombstones WHERE ns = p_ns;
        PERFORM {s}.notify(p_ns, 'r', 0, '');
    ELSE
        FOR v_row IN DELETE FROM {s}.tasks WHERE ns = p_ns RETURNING name LOOP
            PERFORM {s}.notify(p_ns, 't', nextval('{s}.versions'), v_row.name);
        END LOOP;
        FOR v_row IN DELETE FROM {s}.tombstones WHERE ns = p_ns RETURNING name LOOP
            PERFORM {s}.notify(p_ns, 'd', nextval('{s}.versions'), v_row.name);
        END LOOP;
    END IF;
    DELETE FROM {s}.lives WHERE ns = p_ns;
    DELETE FROM {s}.records WHERE ns = p_ns;
END
$$;

-- ensure_lives: the life of each name, starting one (at the instant beside it) where none is.
CREATE FUNCTION {s}.ensure_lives(p_ns text, p_names text[], p_ats timestamptz[])
RETURNS TABLE (idx bigint, generation bigint, live_since timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_row record;
BEGIN
    PERFORM {s}.lock_names(p_ns, p_names);
    FOR v_row IN
        SELECT DISTINCT ON (u.name) u.name, u.at
        FROM unnest(p_names, p_ats) WITH ORDINALITY AS u(name, at, i)
        WHERE NOT EXISTS (SELECT 1 FROM {s}.lives l WHERE l.ns = p_ns AND l.name = u.name)
        ORDER BY u.name, u.i
    LOOP
        PERFORM {s}.start_life(p_ns, v_row.name, v_row.at);
    END LOOP;
    RETURN QUERY
        SELECT u.i, l.generation, l.live_since
        FROM unnest(p_names) WITH ORDINALITY AS u(name, i)
        JOIN {s}.lives l ON l.ns = p_ns AND l.name = u.name
        ORDER BY u.i;
END
$$;

-- restart_life: clears the tombstone, keeps the record and the claims, starts a new life.
CREATE FUNCTION {s}.restart_life(p_ns text, p_name text, p_at timestamptz)
RETURNS TABLE (generation bigint, live_since timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM {s}.lock_names(p_ns, ARRAY[p_name]);
    DELETE FROM {s}.tombstones WHERE ns = p_ns AND name = p_name;
    IF FOUND THEN
        PERFORM {s}.notify(p_ns, 'd', nextval('{s}.versions'), p_name);
    END IF;
    PERFORM {s}.start_life(p_ns, p_name, p_at);
    RETURN QUERY SELECT l.generation, l.live_since FROM {s}.lives l
        WHERE l.ns = p_ns AND l.name = p_name;
END
$$;

-- claim: one outcome per request, in order (see the crate README). The names are locked
-- first; the decisions and writes are then one statement over a snapshot that sees every
-- earlier write of those names, judged against the server clock read after the locks.
CREATE FUNCTION {s}.claim(p_ns text, p_node text, p_epoch bigint, p_tasks text[],
                          p_instants bigint[], p_generations bigint[],
                          p_deadlines timestamptz[], p_retentions_us bigint[])
RETURNS TABLE (idx bigint, outcome text, token bigint, holder text, current_generation bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz;
BEGIN
    PERFORM {s}.lock_names(p_ns, p_tasks);
    v_now := clock_timestamp();
    RETURN QUERY
    WITH req AS (
        SELECT r.task, r.instant_ms, r.generation, r.deadline, r.retention_us, r.idx
        FROM unnest(p_tasks, p_instants, p_generations, p_deadlines, p_retentions_us)
             WITH ORDINALITY AS r(task, instant_ms, generation, deadline, retention_us, idx)
    ),
    firsts AS (
        SELECT DISTINCT ON (q.task, q.instant_ms) q.*
        FROM req q
        ORDER BY q.task, q.instant_ms, q.idx
    ),
    decided AS (
        SELECT f.task, f.instant_ms, f.generation, f.retention_us, f.idx,
               CASE
                   WHEN t.name IS NOT NULL THEN 'tombstoned'
                   WHEN l.generation IS DISTINCT FROM f.generation THEN 'superseded'
                   WHEN c.node_id = p_node AND c.epoch = p_epoch THEN 'won_earlier'
                   WHEN c.node_id IS NOT NULL THEN 'lost'
                   WHEN v_now > f.deadline THEN 'late'
                   ELSE 'write'
               END AS decision,
               l.generation AS current_generation,
               c.node_id AS holder,
               c.token AS held_token
        FROM firsts f
        LEFT JOIN {s}.tombstones t ON t.ns = p_ns AND t.name = f.task
        LEFT JOIN {s}.lives l ON l.ns = p_ns AND l.name = f.task
        LEFT JOIN {s}.claims c ON c.ns = p_ns AND c.task = f.task
                              AND c.instant_ms = f.instant_ms AND c.expires_at > v_now
    ),
    writes AS (
        SELECT d.task, d.instant_ms, d.generation, d.retention_us,
               row_number() OVER (PARTITION BY d.task ORDER BY d.idx) AS k
        FROM decided d
        WHERE d.decision = 'write'
    ),
    -- One number of the sequence per write (materialised once: nextval is volatile).
    drawn AS (
        SELECT w.task, nextval('{s}.tokens') AS seq FROM writes w
    ),
    ranked AS (
        SELECT r.task, r.seq, row_number() OVER (PARTITION BY r.task ORDER BY r.seq) AS k
        FROM drawn r
    ),
    per_task AS (
        SELECT r.task, min(r.seq) AS min_seq, max(r.seq) AS max_seq, count(*) AS cnt
        FROM drawn r
        GROUP BY r.task
    ),
    -- The name's last number (its row is locked: this is current).
    old AS (
        SELECT n.name, n.last FROM {s}.counters n
        JOIN per_task p ON n.ns = p_ns AND n.name = p.task
    ),
    bumped AS (
        UPDATE {s}.counters AS n
        SET last = CASE WHEN p.min_seq > o.last THEN p.max_seq ELSE o.last + p.cnt END
        FROM per_task p
        JOIN old o ON o.name = p.task
        WHERE n.ns = p_ns AND n.name = p.task
        RETURNING n.name
    ),
    -- The k-th write of a name gets its k-th smallest number (or, should the sequence have
    -- been set back below the name's last number, the numbers after it).
    tokens AS (
        SELECT w.task, w.instant_ms, w.generation, w.retention_us,
               CASE WHEN p.min_seq > o.last THEN r.seq ELSE o.last + w.k END AS token
        FROM writes w
        JOIN ranked r ON r.task = w.task AND r.k = w.k
        JOIN per_task p ON p.task = w.task
        JOIN old o ON o.name = w.task
    ),
    inserted AS (
        INSERT INTO {s}.claims AS c
            (ns, task, instant_ms, node_id, epoch, generation, token, expires_at)
        SELECT p_ns, t.task, t.instant_ms, p_node, p_epoch, t.generation, t.token,
               v_now + t.retention_us * interval '1 microsecond'
        FROM tokens t
        WHERE EXISTS (SELECT 1 FROM bumped b WHERE b.name = t.task)
        ON CONFLICT (ns, task, instant_ms) DO UPDATE
            SET node_id = excluded.node_id, epoch = excluded.epoch,
                generation = excluded.generation, token = excluded.token,
                expires_at = excluded.expires_at
            WHERE c.expires_at <= v_now
        RETURNING c.task, c.instant_ms, c.token
    )
    SELECT q.idx,
           CASE
               WHEN d.decision = 'write' AND i.token IS NULL THEN 'failed'
               WHEN d.decision = 'write' AND q.idx = d.idx THEN 'won'
               WHEN d.decision = 'write' THEN 'won_earlier'
               ELSE d.decision
           END,
           COALESCE(i.token, d.held_token),
           d.holder,
           d.current_generation
    FROM req q
    JOIN decided d ON d.task = q.task AND d.instant_ms = q.instant_ms
    LEFT JOIN inserted i ON i.task = q.task AND i.instant_ms = q.instant_ms
    ORDER BY q.idx;
END
$$;
"#;

/// Schema version 2: running slots.
///
/// A slot row names its holder's node and lease id and the fire (instant in milliseconds, as
/// claims). It is held while that node's row still carries that lease id and has not expired
/// by the server's `now()` — the clock every lease decision uses — so it ends with the lease
/// (expiry, unregistration, a newer registration) without a renewal of its own. `cleanup_all`
/// is redefined to free the namespace's slots too.
const V2: &str = r#"
CREATE TABLE {s}.slots (
    ns         text   NOT NULL,
    task       text   NOT NULL,
    node_id    text   NOT NULL,
    lease_id   text   NOT NULL,
    instant_ms bigint NOT NULL,
    PRIMARY KEY (ns, task)
);

-- acquire_slot: 'lease_lost' (the caller's lease has ended; nothing written), 'taken' (free, its
-- holder's lease ended, or already held by this lease for this fire) or 'held' with the holder's
-- node id and instant. The INSERT .. ON CONFLICT DO UPDATE locks the slot row and judges its
-- latest version, so among concurrent callers exactly one takes a free slot; a caller that does
-- not take it reads the holder with a fresh snapshot (READ COMMITTED: this statement sees the
-- winner that made it wait), and tries again should the slot have been freed in between.
CREATE FUNCTION {s}.acquire_slot(p_ns text, p_task text, p_node text, p_lease text,
                                 p_instant_ms bigint)
RETURNS TABLE (outcome text, holder text, holder_instant_ms bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_holder  text;
    v_instant bigint;
BEGIN
    PERFORM 1 FROM {s}.nodes
    WHERE ns = p_ns AND node_id = p_node AND lease_id = p_lease AND expires_at > now();
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'lease_lost'::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;
    LOOP
        INSERT INTO {s}.slots AS s (ns, task, node_id, lease_id, instant_ms)
        VALUES (p_ns, p_task, p_node, p_lease, p_instant_ms)
        ON CONFLICT (ns, task) DO UPDATE
            SET node_id = excluded.node_id, lease_id = excluded.lease_id,
                instant_ms = excluded.instant_ms
            WHERE (s.node_id = excluded.node_id AND s.lease_id = excluded.lease_id
                   AND s.instant_ms = excluded.instant_ms)
               OR NOT EXISTS (
                   SELECT 1 FROM {s}.nodes n
                   WHERE n.ns = s.ns AND n.node_id = s.node_id AND n.lease_id = s.lease_id
                     AND n.expires_at > now());
        IF FOUND THEN
            RETURN QUERY SELECT 'taken'::text, NULL::text, NULL::bigint;
            RETURN;
        END IF;
        SELECT s.node_id, s.instant_ms INTO v_holder, v_instant
        FROM {s}.slots s WHERE s.ns = p_ns AND s.task = p_task;
        IF FOUND THEN
            RETURN QUERY SELECT 'held'::text, v_holder, v_instant;
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- cleanup_all (version 1's, and the namespace's running slots).
CREATE OR REPLACE FUNCTION {s}.cleanup_all(p_ns text, p_max_events integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_changes bigint;
    v_row record;
BEGIN
    PERFORM 1 FROM {s}.counters WHERE ns = p_ns ORDER BY name FOR UPDATE;
    v_changes := (SELECT count(*) FROM {s}.tasks WHERE ns = p_ns)
               + (SELECT count(*) FROM {s}.tombstones WHERE ns = p_ns);
    IF v_changes > p_max_events THEN
        DELETE FROM {s}.tasks WHERE ns = p_ns;
        DELETE FROM {s}.tombstones WHERE ns = p_ns;
        PERFORM {s}.notify(p_ns, 'r', 0, '');
    ELSE
        FOR v_row IN DELETE FROM {s}.tasks WHERE ns = p_ns RETURNING name LOOP
            PERFORM {s}.notify(p_ns, 't', nextval('{s}.versions'), v_row.name);
        END LOOP;
        FOR v_row IN DELETE FROM {s}.tombstones WHERE ns = p_ns RETURNING name LOOP
            PERFORM {s}.notify(p_ns, 'd', nextval('{s}.versions'), v_row.name);
        END LOOP;
    END IF;
    DELETE FROM {s}.lives WHERE ns = p_ns;
    DELETE FROM {s}.records WHERE ns = p_ns;
    DELETE FROM {s}.slots WHERE ns = p_ns;
END
$$;
"#;

/// The SQL of `template` for the schema `schema` (already validated: `[a-z0-9_]`).
pub(crate) fn render(template: &str, schema: &str) -> String {
    template
        .replace("{s}", &format!("\"{schema}\""))
        .replace("{lit}", &format!("'{schema}'"))
}

/// Creates or migrates the schema to [`LATEST`].
///
/// # Errors
/// The database's errors (`Unavailable` when it cannot be reached, `AccessDenied` without the
/// privilege to create the schema).
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    if current_version(client, schema).await? >= LATEST {
        return Ok(());
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| map_pg("migration: begin", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_CLASS, &schema],
    )
    .await
    .map_err(|e| map_pg("migration: advisory lock", e))?;
    tx.batch_execute(&render(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.migrations (
             version     integer     PRIMARY KEY,
             description text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         );",
        schema,
    ))
    .await
    .map_err(|e| map_pg("migration: create schema", e))?;
    let row = tx
        .query_one(
            &render(
                "SELECT COALESCE(max(version), 0) FROM {s}.migrations",
                schema,
            ),
            &[],
        )
        .await
        .map_err(|e| map_pg("migration: read version", e))?;
    let mut version: i32 = row.get(0);
    for (v, description, sql) in MIGRATIONS {
        if *v <= version {
            continue;
        }
        tx.batch_execute(&render(sql, schema))
            .await
            .map_err(|e| map_pg(&format!("migration to version {v}"), e))?;
        tx.execute(
            &render(
                "INSERT INTO {s}.migrations (version, description) VALUES ($1, $2)",
                schema,
            ),
            &[v, description],
        )
        .await
        .map_err(|e| map_pg("migration: record version", e))?;
        tracing::info!(schema, version = v, description, "dcron schema migrated");
        version = *v;
    }
    tx.commit()
        .await
        .map_err(|e| map_pg("migration: commit", e))?;
    Ok(())
}

/// The schema's version, 0 when it does not exist; a version newer than [`LATEST`] is logged
/// (migrations only add, so this crate's statements still work).
async fn current_version(client: &Client, schema: &str) -> Result<i32> {
    let exists = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("\"{schema}\".migrations")],
        )
        .await
        .map_err(|e| map_pg("migration: look up the schema", e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            &render(
                "SELECT COALESCE(max(version), 0) FROM {s}.migrations",
                schema,
            ),
            &[],
        )
        .await
        .map_err(|e| map_pg("migration: read version", e))?;
    let version: i32 = row.get(0);
    if version > LATEST {
        tracing::warn!(
            schema,
            version,
            known = LATEST,
            "the dcron schema is newer than this version of the crate; continuing"
        );
    }
    if version < 0 {
        return Err(Error::Corrupt {
            key: format!("{schema}.migrations"),
            reason: format!("negative schema version {version}"),
        });
    }
    Ok(version)
}
