//! Hostile values: arbitrary bytes planted straight into the server as every kind of value the
//! backend stores (through the factory's [`RegistryFactory::write_raw`] hook), then every read
//! path called. Each answer must be a value, a corrupt entry or [`Error::Corrupt`]; nothing
//! panics; a value larger than [`dcron_core::Capabilities::max_value_bytes`] is refused without
//! being decoded; and a neighbour task's records in the same namespace read back unchanged.
//!
//! The inputs are a fixed list (an oversized valid encoding, empty, not UTF-8, truncated JSON,
//! JSON of the wrong shape, huge numbers, another kind's record, deep nesting) and
//! [`GENERATED`] more drawn by proptest from a fixed seed (arbitrary bytes, arbitrary strings,
//! JSON documents built from the field names dcron uses). The cases are async against a real
//! server, so proptest only draws the inputs (no shrinking): a failure names the input.
//!
//! [`RegistryFactory::write_raw`]: crate::RegistryFactory::write_raw

use std::time::Duration;

use dcron_core::{
    Claim, Error, FireKey, Lease, Life, Node, PauseRecord, PutMode, RecordKind, Registry,
    SlotOutcome, TaskMeta, TaskStatus, Tombstone, TriggerRecord,
};
use futures::{FutureExt, StreamExt};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use crate::harness::{claim_fires, instant, now_millis, task_meta, CaseContext, CaseError};
use crate::harness::{CaseResult, RawKind};
use crate::{ensure, ensure_eq};

/// How many inputs proptest draws per kind, beyond the fixed list (bounded so that a backend's
/// run of the whole group stays within seconds).
pub const GENERATED: usize = 12;

/// The task whose records must never change.
const NEIGHBOUR: &str = "neighbour";
/// The neighbour's tombstoned sibling.
const GONE: &str = "neighbour-gone";
/// The name (node id, task name) the hostile values are planted under.
const HOSTILE: &str = "hostile";
/// The record key of a hostile trigger-now record.
const HOSTILE_TRIGGER: &str = "hostile@7";

/// Arbitrary bytes as a node record.
pub async fn node_records(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Node).await
}

/// Arbitrary bytes as a task record.
pub async fn task_records(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Task).await
}

/// Arbitrary bytes as a tombstone.
pub async fn tombstones(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Tombstone).await
}

/// Arbitrary bytes as a stored claim.
pub async fn claims(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Claim).await
}

/// Arbitrary bytes as a native life.
pub async fn lives(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Life).await
}

/// Arbitrary bytes as a running slot.
pub async fn slots(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Slot).await
}

/// Arbitrary bytes as a pause record.
pub async fn pause_records(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Record(RecordKind::Pause)).await
}

/// Arbitrary bytes as a trigger-now record.
pub async fn trigger_records(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Record(RecordKind::Trigger)).await
}

/// Arbitrary bytes as a status record.
pub async fn status_records(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Record(RecordKind::Status)).await
}

/// Arbitrary bytes as a life record.
pub async fn life_records(cx: &CaseContext) -> CaseResult {
    hostile(cx, RawKind::Record(RecordKind::Life)).await
}

/// A running `Dcron` node keeps firing a static and a dynamic neighbour, each fire once, while
/// hostile values of every kind the factory writes (truncated JSON, not UTF-8, an oversized
/// valid encoding) sit beside them under the name `hostile`, itself a dynamic task name the
/// node knows (its record is among the planted values).
pub async fn a_node_keeps_firing_beside_hostile_values(cx: &CaseContext) -> CaseResult {
    use crate::cluster::{all_working, node_builder, record, EVERY_SECOND};
    let reg = cx.open().await?;
    let max = reg.capabilities().max_value_bytes;
    let ledger = crate::ledger::Ledger::new();
    let node = node_builder(cx, "n1", &ledger).await?.build()?;
    let statics = ledger.clone();
    node.add_func("static-neighbour", EVERY_SECOND, move |ctx| {
        let ledger = statics.clone();
        async move {
            record(&ledger, &ctx);
            Ok(())
        }
    })
    .await?;
    reg.put_task(&task_meta(NEIGHBOUR, EVERY_SECOND), PutMode::CreateOnly)
        .await?;
    node.start().await?;
    all_working(&[&node]).await?;
    let kinds = cx.raw_kinds().unwrap_or(&RawKind::ALL);
    let mut planted = 0;
    for kind in kinds {
        let oversized = inputs(*kind, max).into_iter().find(|i| i.oversized);
        let values: Vec<Vec<u8>> = [
            b"{\"name\":\"hostile\",\"cron_format\":".to_vec(),
            b"\xff\xfe\x00".to_vec(),
        ]
        .into_iter()
        .chain(oversized.map(|i| i.bytes))
        .collect();
        for bytes in values {
            if cx.write_raw(*kind, planted_name(*kind), &bytes).await? {
                planted += 1;
            }
        }
    }
    ensure!(planted > 0, "no hostile value could be planted");
    let since = now_millis();
    let count = |task: &str| {
        ledger
            .for_task(task)
            .iter()
            .filter(|e| e.fire.instant > since)
            .count()
    };
    let both = crate::harness::reached(Duration::from_secs(20), || {
        let done = count("static-neighbour") >= 3 && count(NEIGHBOUR) >= 3;
        async move { Ok::<bool, CaseError>(done) }
    })
    .await?;
    node.stop().await?;
    ensure!(
        both,
        "with {planted} hostile values planted, the neighbours did not fire 3 times each within 20 s: \
         static {}, dynamic {}",
        ledger.for_task("static-neighbour").len(),
        ledger.for_task(NEIGHBOUR).len()
    );
    let report = crate::ledger::check_allowed(
        &ledger,
        &std::collections::BTreeSet::new(),
        &std::collections::BTreeSet::new(),
    );
    ensure!(
        report.duplicates.is_empty(),
        "a fire ran twice beside hostile values: {report}"
    );
    Ok(())
}

/// The name a hostile value of `kind` is planted under.
fn planted_name(kind: RawKind) -> &'static str {
    match kind {
        RawKind::Record(RecordKind::Trigger) => HOSTILE_TRIGGER,
        _ => HOSTILE,
    }
}

/// A valid encoding of `kind` where dcron's own types define it (the oversized input pads it
/// with JSON whitespace, so only a size check refuses it); `None` for backend-specific forms.
fn valid_encoding(kind: RawKind) -> Option<Vec<u8>> {
    let at = now_millis();
    match kind {
        RawKind::Node => Some(Node::new(HOSTILE, at).encode()),
        RawKind::Task => Some(task_meta(HOSTILE, "@hourly").encode()),
        RawKind::Tombstone => Some(
            Tombstone {
                name: HOSTILE.into(),
                deleted_at: at,
            }
            .encode(),
        ),
        RawKind::Record(RecordKind::Pause) => Some(json_record(
            serde_json::json!({"task": HOSTILE, "paused": true, "changed_at": at}),
        )),
        RawKind::Record(RecordKind::Trigger) => Some(json_record(
            serde_json::json!({"task": HOSTILE, "id": 7, "requested_at": at}),
        )),
        RawKind::Record(RecordKind::Status) => Some(TaskStatus::new(HOSTILE, at).encode()),
        RawKind::Record(_) => Some(Life::new(1, at).encode()),
        _ => None,
    }
}

/// The JSON encoding of a record the core defines (built from its field names, as its types are
/// not constructible outside the core).
fn json_record(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap_or_default()
}

/// One hostile input: a label for failure messages, the bytes, and whether it is larger than
/// the registry's limit.
struct Input {
    label: String,
    bytes: Vec<u8>,
    oversized: bool,
}

fn fixed(label: &str, bytes: &[u8]) -> Input {
    Input {
        label: label.to_string(),
        bytes: bytes.to_vec(),
        oversized: false,
    }
}

/// The fixed inputs and the drawn ones for `kind`, with `max` the registry's value limit.
fn inputs(kind: RawKind, max: usize) -> Vec<Input> {
    let oversized = match valid_encoding(kind) {
        Some(mut valid) => {
            let len = max.saturating_add(1).max(valid.len());
            valid.resize(len, b' ');
            valid
        }
        None => vec![b'7'; max.saturating_add(1)],
    };
    let other_kind = match kind {
        RawKind::Task => Node::new(HOSTILE, now_millis()).encode(),
        _ => task_meta(HOSTILE, "@hourly").encode(),
    };
    let mut out = vec![
        Input {
            label: format!("a valid encoding padded to {} bytes", oversized.len()),
            bytes: oversized,
            oversized: true,
        },
        fixed("empty", b""),
        fixed("not UTF-8", b"\xff\xfe\xfd\x00\x80{\"name\":\"\xc3\x28\"}"),
        fixed("truncated JSON", b"{\"name\":\"hostile\",\"cron_format\":"),
        fixed("null", b"null"),
        fixed("an array", b"[1,2,3]"),
        fixed(
            "JSON of the wrong shape",
            b"{\"name\":42,\"node\":[],\"generation\":\"x\",\"fire\":{},\"paused\":\"yes\"}",
        ),
        fixed(
            "huge numbers",
            b"{\"generation\":1e400,\"token\":184467440737095516160000,\"epoch\":-1,\
              \"id\":99999999999999999999999,\"deleted_at\":-99999999999999999999}",
        ),
        fixed("a huge integer", b"340282366920938463463374607431768211456"),
        fixed(
            "colon-separated fields out of range",
            b"18446744073709551616:99999999999999999999:-1:node:x",
        ),
        fixed("another kind's record", &other_kind),
        fixed("deep nesting", "[".repeat(20_000).as_bytes()),
    ];
    out.extend(drawn(kind).into_iter().enumerate().map(|(i, bytes)| Input {
        label: format!("drawn input {i} ({} bytes)", bytes.len()),
        bytes,
        oversized: false,
    }));
    out
}

/// The field names dcron's records use, so that drawn JSON reaches the decoders' fields.
const FIELDS: [&str; 16] = [
    "name",
    "cron_format",
    "payload",
    "created_at",
    "node",
    "id",
    "deleted_at",
    "generation",
    "live_since",
    "token",
    "epoch",
    "fire",
    "task",
    "instant",
    "paused",
    "lease",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::String),
        Just(serde_json::Value::String("2030-01-01T00:00:00Z".into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS.to_vec()), inner), 0..8).prop_map(
                |fields| {
                    serde_json::Value::Object(
                        fields
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    )
                }
            ),
        ]
    })
}

/// [`GENERATED`] inputs drawn by proptest from a seed fixed per kind.
fn drawn(kind: RawKind) -> Vec<Vec<u8>> {
    let strategy = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        any::<String>().prop_map(String::into_bytes),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
    ];
    let seed = RawKind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as u8;
    let mut seed_bytes = [0x5a_u8; 32];
    seed_bytes[0] = seed;
    let mut runner = TestRunner::new_with_rng(
        proptest::test_runner::Config::default(),
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed_bytes,
        ),
    );
    (0..GENERATED)
        .filter_map(|_| strategy.new_tree(&mut runner).ok().map(|t| t.current()))
        .collect()
}

/// What the neighbour has, read back through every read path.
#[derive(Debug, PartialEq)]
struct View {
    task: Option<TaskMeta>,
    listed: bool,
    tombstone: Option<Tombstone>,
    claims: Vec<Claim>,
    node: Option<Node>,
    life: Life,
    records: Vec<(RecordKind, Option<Vec<u8>>)>,
    slot: Option<SlotOutcome>,
}

struct Neighbour {
    lease: Lease,
    other: Lease,
    fire: FireKey,
}

async fn plant_neighbour(cx: &CaseContext, reg: &dyn Registry) -> Result<Neighbour, CaseError> {
    let caps = reg.capabilities();
    reg.put_task(&task_meta(NEIGHBOUR, "@hourly"), PutMode::CreateOnly)
        .await?;
    reg.mark_deleted(GONE, now_millis()).await?;
    let fire = FireKey::new(NEIGHBOUR, instant(0));
    let won = claim_fires(
        reg,
        "nb-node",
        &[fire.clone(), FireKey::new(NEIGHBOUR, instant(60_000))],
        Duration::from_secs(600),
    )
    .await?;
    ensure!(won.iter().all(|o| o.is_won()), "neighbour claims: {won:?}");
    let ttl = Duration::from_secs(60).max(cx.min_ttl());
    let lease = reg.register(&cx.node("nb"), ttl).await?;
    let other = reg.register(&cx.node("prober"), ttl).await?;
    if caps.records {
        let at = now_millis();
        for (kind, key, bytes) in [
            (
                RecordKind::Pause,
                NEIGHBOUR.to_string(),
                json_record(
                    serde_json::json!({"task": NEIGHBOUR, "paused": false, "changed_at": at}),
                ),
            ),
            (
                RecordKind::Trigger,
                format!("{NEIGHBOUR}@1"),
                json_record(serde_json::json!({"task": NEIGHBOUR, "id": 1, "requested_at": at})),
            ),
            (
                RecordKind::Status,
                NEIGHBOUR.to_string(),
                TaskStatus::new(NEIGHBOUR, at).encode(),
            ),
            (
                RecordKind::Life,
                NEIGHBOUR.to_string(),
                Life::new(1, at).encode(),
            ),
        ] {
            reg.put_records(kind, &[(key, bytes)]).await?;
        }
    }
    if caps.slots {
        let taken = reg.acquire_slot(&lease, &fire).await?;
        ensure!(taken.is_taken(), "the neighbour's slot: {taken:?}");
    }
    Ok(Neighbour { lease, other, fire })
}

async fn view(reg: &dyn Registry, nb: &Neighbour) -> Result<View, CaseError> {
    let caps = reg.capabilities();
    let mut claims = reg.list_claims(NEIGHBOUR).await?.items;
    claims.sort_by_key(|c| c.fire.instant);
    let mut records = Vec::new();
    if caps.records {
        for kind in RecordKind::ALL {
            let key = match kind {
                RecordKind::Trigger => format!("{NEIGHBOUR}@1"),
                _ => NEIGHBOUR.to_string(),
            };
            records.push((kind, reg.get_record(kind, &key).await?));
        }
    }
    let slot = if caps.slots {
        Some(reg.acquire_slot(&nb.other, &nb.fire).await?)
    } else {
        None
    };
    Ok(View {
        task: reg.get_task(NEIGHBOUR).await?,
        listed: reg
            .list_tasks()
            .await?
            .items
            .iter()
            .any(|m| m.name == NEIGHBOUR),
        tombstone: reg.get_tombstone(GONE).await?,
        claims,
        node: reg
            .list_nodes()
            .await?
            .items
            .into_iter()
            .find(|n| n.id == nb.lease.node_id),
        life: reg
            .ensure_lives(&[(NEIGHBOUR.to_string(), instant(0))])
            .await?
            .first()
            .copied()
            .ok_or_else(|| CaseError::Failed("ensure_lives answered no life".into()))?,
        records,
        slot,
    })
}

/// `Ok` or [`Error::Corrupt`] pass; anything else fails the case naming the call and the input.
fn typed<T>(
    call: &str,
    input: &str,
    result: dcron_core::Result<T>,
) -> Result<Option<T>, CaseError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(Error::Corrupt { .. }) => Ok(None),
        Err(e) => Err(CaseError::Failed(format!(
            "{call} after {input}: expected a value or Error::Corrupt, got {e:?}"
        ))),
    }
}

/// Calls every read path touching the planted value and checks the answers.
async fn probe(
    reg: &dyn Registry,
    kind: RawKind,
    input: &Input,
    prober: &Lease,
) -> Result<bool, CaseError> {
    let caps = reg.capabilities();
    let label = input.label.as_str();
    let strict = input.oversized && valid_encoding(kind).is_some();
    // Whether some read path noticed the planted value (an `Error::Corrupt`, a corrupt entry
    // naming it, or its bytes), so that a hook writing to the wrong key cannot pass unseen.
    let mut seen = false;
    let names_it = |c: &dcron_core::CorruptEntry| c.key.contains(HOSTILE);

    let tasks = typed("list_tasks", label, reg.list_tasks().await)?;
    ensure!(
        tasks.is_some(),
        "list_tasks after {label} failed as a whole"
    );
    let task = typed("get_task", label, reg.get_task(HOSTILE).await)?;
    let nodes = typed("list_nodes", label, reg.list_nodes().await)?;
    ensure!(
        nodes.is_some(),
        "list_nodes after {label} failed as a whole"
    );
    let tomb = typed("get_tombstone", label, reg.get_tombstone(HOSTILE).await)?;
    let tombs = typed("list_tombstones", label, reg.list_tombstones().await)?;
    ensure!(
        tombs.is_some(),
        "list_tombstones after {label} failed as a whole"
    );
    seen |= task.is_none()
        || tomb.is_none()
        || tasks
            .as_ref()
            .is_some_and(|l| l.corrupt.iter().any(names_it))
        || nodes
            .as_ref()
            .is_some_and(|l| l.corrupt.iter().any(names_it))
        || tombs
            .as_ref()
            .is_some_and(|l| l.corrupt.iter().any(names_it));
    let claims = typed("list_claims", label, reg.list_claims(HOSTILE).await)?;
    seen |= claims
        .as_ref()
        .is_none_or(|l| l.corrupt.iter().any(names_it));
    seen |= typed(
        "ensure_lives",
        label,
        reg.ensure_lives(&[(HOSTILE.to_string(), instant(0))]).await,
    )?
    .is_none();
    let claimed = typed(
        "claim",
        label,
        claim_fires(
            reg,
            "prober",
            &[FireKey::new(HOSTILE, instant(0))],
            Duration::from_secs(600),
        )
        .await,
    )?;
    seen |= claimed.is_none_or(|outcomes| !outcomes.iter().all(|o| o.is_won()));
    if caps.slots {
        let fire = FireKey::new(HOSTILE, instant(0));
        let slot = typed("acquire_slot", label, reg.acquire_slot(prober, &fire).await)?;
        seen |= slot.is_none_or(|s| !s.is_taken());
        typed("release_slot", label, reg.release_slot(prober, &fire).await)?;
    }
    if caps.records {
        for k in RecordKind::ALL {
            let key = if k == RecordKind::Trigger {
                HOSTILE_TRIGGER
            } else {
                HOSTILE
            };
            let got = typed("get_record", label, reg.get_record(k, key).await)?;
            if kind == RawKind::Record(k) {
                seen |= got
                    .as_ref()
                    .is_none_or(|v| v.as_deref() == Some(input.bytes.as_slice()));
            }
            let listed = typed("list_records", label, reg.list_records(k).await)?;
            ensure!(
                listed.is_some(),
                "list_records({k}) after {label} failed as a whole"
            );
            // The core decodes records itself: its decoders answer typed errors too.
            if let Some(Some(bytes)) = &got {
                let _ = match k {
                    RecordKind::Pause => PauseRecord::decode(key, bytes).map(|_| ()),
                    RecordKind::Trigger => TriggerRecord::decode(key, bytes).map(|_| ()),
                    RecordKind::Status => TaskStatus::decode(key, bytes).map(|_| ()),
                    _ => Life::decode(key, bytes).map(|_| ()),
                };
            }
            if strict && kind == RawKind::Record(k) {
                ensure!(
                    got.is_none(),
                    "get_record({k}) of an oversized value ({label}) must be Error::Corrupt, got a value"
                );
                let listed = listed.unwrap_or_default();
                ensure!(
                    !listed.iter().any(|(key2, _)| key2 == key),
                    "list_records({k}) lists an oversized value ({label})"
                );
            }
        }
    }
    if strict {
        match kind {
            RawKind::Task => {
                ensure!(
                    task.is_none(),
                    "get_task of an oversized value ({label}) must be Error::Corrupt"
                );
                let tasks = tasks.unwrap_or_default();
                ensure!(
                    !tasks.items.iter().any(|m| m.name == HOSTILE)
                        && tasks.corrupt.iter().any(|c| c.key.contains(HOSTILE)),
                    "list_tasks must report an oversized value ({label}) as corrupt: {:?}",
                    tasks.corrupt
                );
            }
            // `Ok(None)` passes too: a backend keeping tombstones inside another value (the
            // ZooKeeper state header) reads no tombstone from a value that does not parse.
            RawKind::Tombstone => ensure!(
                !matches!(tomb, Some(Some(_))),
                "get_tombstone of an oversized value ({label}) must be Error::Corrupt, got a value: {:?}", tomb.map(|t| t.is_some())
            ),
            RawKind::Node => ensure!(
                !nodes
                    .unwrap_or_default()
                    .items
                    .iter()
                    .any(|n| n.id == HOSTILE),
                "list_nodes lists an oversized node record ({label})"
            ),
            _ => {}
        }
    }
    Ok(seen)
}

/// The body of every hostile case.
async fn hostile(cx: &CaseContext, kind: RawKind) -> CaseResult {
    if let Some(kinds) = cx.raw_kinds() {
        if !kinds.contains(&kind) {
            return Err(CaseError::Skipped(format!(
                "the factory does not write raw {kind} values (the backend keeps none, or the hook lacks them)"
            )));
        }
    }
    let reg = cx.open().await?;
    let caps = reg.capabilities();
    let nb = plant_neighbour(cx, &*reg).await?;
    let before = view(&*reg, &nb).await?;
    let mut watches = if caps.watch {
        Some((reg.watch_tasks().await?, reg.watch_nodes().await?))
    } else {
        None
    };
    let mut planted = 0;
    let mut seen = Vec::new();
    for input in inputs(kind, caps.max_value_bytes) {
        if !cx.write_raw(kind, planted_name(kind), &input.bytes).await? {
            continue;
        }
        planted += 1;
        if probe(&*reg, kind, &input, &nb.other).await? {
            seen.push(input.label.clone());
        }
        if let Some((tasks, nodes)) = &mut watches {
            // Whatever the watches decoded so far must not have broken them (drained without
            // waiting: the liveness check below waits once).
            while let Some(Some(_)) = tasks.next().now_or_never() {}
            while let Some(Some(_)) = nodes.next().now_or_never() {}
        }
        let after = view(&*reg, &nb).await?;
        ensure_eq!(
            after,
            before,
            "the neighbour's records after {kind} = {}",
            input.label
        );
    }
    ensure!(planted > 0, "the server refused every hostile {kind} value");
    // A life or slot that does not parse may rightly count as absent (a new life starts, the
    // slot is free): for those kinds nothing has to notice it.
    ensure!(
        !seen.is_empty() || matches!(kind, RawKind::Life | RawKind::Slot),
        "no read path noticed any of the {planted} hostile {kind} values: does the hook write \
         where the registry reads?"
    );
    if let Some((mut tasks, _)) = watches {
        // The task watch still delivers a change made after the hostile values.
        let fresh = task_meta("watched", "@daily");
        reg.put_task(&fresh, PutMode::CreateOnly).await?;
        let seen = tokio::time::timeout(dcron_core::MAX_WATCH_DELAY, async {
            while let Some(event) = tasks.next().await {
                match event {
                    dcron_core::TaskMetaEvent::Put(m) if m.name == "watched" => return true,
                    dcron_core::TaskMetaEvent::Resync => return true,
                    _ => {}
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        ensure!(
            seen,
            "the task watch delivered no event for a task written after the hostile {kind} values"
        );
    }
    reg.cleanup_task(HOSTILE).await?;
    let after = view(&*reg, &nb).await?;
    ensure_eq!(after, before, "the neighbour's records after cleanup_task");
    Ok(())
}
