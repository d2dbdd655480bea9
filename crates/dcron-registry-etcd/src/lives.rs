//! Lives: one key per task name, `/{ns}/lives/{name}`, whose value is the live-since (RFC 3339,
//! to the nanosecond) and whose `mod_revision` is the generation.
//!
//! A life is only ever written to start a new one (create-only and force writes, `restart_life`,
//! `ensure_lives` for a name without one), each time at a new revision of the store: etcd
//! revisions only grow, across deletions and compactions, so generations strictly increase per
//! name across cleanups and new lives without a counter of their own. Claims compare the life
//! key's `mod_revision` with the request's generation inside their transaction.
//!
//! `ensure_lives` is one transaction per batch (split by `--max-txn-ops`, sent concurrently):
//! each name a nested `if life absent then put life else get life`, so racing callers are
//! ordered by etcd and all get the life of the first.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use dcron_core::{validate_task_name, Error, Life, Result};
use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};

use crate::error::malformed;
use crate::EtcdRegistry;

/// The stored value of a life starting at `at`.
pub(crate) fn since_value(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Reads a life key: its generation (`mod_revision`) and live-since (`None` when the value is
/// not an instant).
fn read_life(kv: &KeyValue) -> (u64, Option<DateTime<Utc>>) {
    let generation = u64::try_from(kv.mod_revision()).unwrap_or(0);
    let since = Some(kv.value())
        .filter(|v| v.len() <= crate::MAX_VALUE_BYTES)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    (generation, since)
}

/// What one nested transaction found or did for a name.
enum Found {
    Life(Life),
    /// A life key whose value is not an instant, at this `mod_revision`: to be replaced.
    Damaged(i64),
    /// No life (removed since the last pass): to be started.
    Absent,
}

/// One transaction over `names`: each nested transaction compares the life key with `expect`
/// (`None`: absent; `Some(rev)`: still the damaged value at `rev`) and writes a new life when
/// it matches, else reads it. Halved when the server allows fewer operations than configured.
fn pass<'a>(
    reg: &'a EtcdRegistry,
    names: &'a [(&'a str, DateTime<Utc>, Option<i64>)],
) -> futures::future::BoxFuture<'a, Result<Vec<Found>>> {
    Box::pin(pass_inner(reg, names))
}

async fn pass_inner(
    reg: &EtcdRegistry,
    names: &[(&str, DateTime<Utc>, Option<i64>)],
) -> Result<Vec<Found>> {
    let ops: Vec<TxnOp> = names
        .iter()
        .map(|(name, at, expect)| {
            let key = reg.keys().life(name);
            let compare = match expect {
                None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Some(rev) => Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev),
            };
            TxnOp::txn(
                Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.as_str(), since_value(*at), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]),
            )
        })
        .collect();
    let context = format!("ensure_lives ({} names)", names.len());
    let txn = Txn::new().and_then(ops);
    let resp = match reg
        .raw(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    {
        Ok(resp) => resp,
        Err(f) if f.is_too_many_ops() && names.len() > 1 => {
            let (a, b) = names.split_at(names.len() / 2);
            let (a, b) = futures::join!(pass(reg, a), pass(reg, b));
            let mut found = a?;
            found.extend(b?);
            return Ok(found);
        }
        Err(f) => return Err(f.into_error(&format!("{context} {}", reg.keys().lives_prefix()))),
    };
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let answers = resp.op_responses();
    if answers.len() != names.len() {
        return Err(malformed(&context, "one answer per nested transaction"));
    }
    names
        .iter()
        .zip(answers)
        .map(|((_, at, _), answer)| match answer {
            TxnOpResponse::Txn(t) if t.succeeded() => u64::try_from(revision)
                .ok()
                .filter(|r| *r > 0)
                .map(|generation| Found::Life(Life::new(generation, *at)))
                .ok_or_else(|| malformed(&context, "no revision in the header")),
            TxnOpResponse::Txn(t) => {
                let kv = match t.op_responses().first() {
                    Some(TxnOpResponse::Get(get)) => get.kvs().first().cloned(),
                    _ => None,
                };
                // Removed between two passes: start over with "absent".
                let Some(kv) = kv else {
                    return Ok(Found::Absent);
                };
                match read_life(&kv) {
                    (generation, Some(since)) if generation > 0 => {
                        Ok(Found::Life(Life::new(generation, since)))
                    }
                    _ => Ok(Found::Damaged(kv.mod_revision())),
                }
            }
            _ => Err(malformed(&context, "not a nested transaction's answer")),
        })
        .collect()
}

/// [`dcron_core::Registry::ensure_lives`] for etcd.
pub(crate) async fn ensure_lives(
    reg: &EtcdRegistry,
    names: &[(String, DateTime<Utc>)],
) -> Result<Vec<Life>> {
    for (name, _) in names {
        validate_task_name(name)?;
    }
    // Each name once per transaction (one key may not be written twice in one).
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut distinct: Vec<(&str, DateTime<Utc>)> = Vec::new();
    for (name, at) in names {
        index.entry(name.as_str()).or_insert_with(|| {
            distinct.push((name.as_str(), *at));
            distinct.len() - 1
        });
    }
    let per_txn = reg.inner.config.max_txn_ops.saturating_sub(1).max(1);
    let calls = distinct.chunks(per_txn).map(|chunk| async move {
        // A damaged value is replaced by a new life (compared on its revision, so a racing
        // repair wins once); a few passes settle any race.
        let mut lives: Vec<Option<Life>> = vec![None; chunk.len()];
        let mut expect: Vec<Option<i64>> = vec![None; chunk.len()];
        for _ in 0..3 {
            let todo: Vec<usize> = (0..chunk.len()).filter(|&i| lives[i].is_none()).collect();
            if todo.is_empty() {
                break;
            }
            let asked: Vec<(&str, DateTime<Utc>, Option<i64>)> = todo
                .iter()
                .map(|&i| (chunk[i].0, chunk[i].1, expect[i]))
                .collect();
            for (&i, found) in todo.iter().zip(pass(reg, &asked).await?) {
                match found {
                    Found::Life(life) => lives[i] = Some(life),
                    Found::Damaged(rev) => expect[i] = Some(rev),
                    Found::Absent => expect[i] = None,
                }
            }
        }
        lives
            .into_iter()
            .zip(chunk)
            .map(|(life, (name, _))| {
                life.ok_or_else(|| Error::Corrupt {
                    key: reg.keys().life(name),
                    reason: "the life could not be read or replaced".into(),
                })
            })
            .collect::<Result<Vec<Life>>>()
    });
    let mut found = Vec::with_capacity(distinct.len());
    for chunk in futures::future::join_all(calls).await {
        found.extend(chunk?);
    }
    Ok(names
        .iter()
        .map(|(name, _)| found[index[name.as_str()]])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn since_values_round_trip_to_the_nanosecond() {
        let at = Utc
            .timestamp_opt(1_700_000_000, 123_456_789)
            .single()
            .expect("instant");
        let kv_value = since_value(at);
        let parsed = DateTime::parse_from_rfc3339(&kv_value)
            .expect("rfc3339")
            .with_timezone(&Utc);
        assert_eq!(parsed, at);
    }
}
