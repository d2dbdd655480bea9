//! Criterion micro-benchmarks of dcron's hot paths: next-fire computation, assignment, claim
//! batching and the scheduler heap.
//!
//! `cargo bench -p dcron-bench --bench micro` (add `-- <filter>` to run one group).

// `criterion_group!` generates a public function without documentation.
#![allow(missing_docs)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use dcron_core::{
    ClaimRequest, Claimant, FireKey, Member, MemoryRegistry, Registry, Schedule, SecondsField,
    Strategy,
};

fn next_fire(c: &mut Criterion) {
    let mut g = c.benchmark_group("schedule/next_after");
    let after = Utc.with_ymd_and_hms(2025, 3, 30, 0, 59, 58).unwrap();
    for (label, expr, zone) in [
        ("every-second", "* * * * * *", None),
        ("hourly-spread", "17 42 * * * *", None),
        ("weekdays-9am", "0 0 9 * * MON-FRI", None),
        ("dst-berlin", "0 30 2 * * *", Some("Europe/Berlin")),
        ("last-friday", "0 0 12 ? * 5L", None),
        ("every-30s", "@every 30s", None),
    ] {
        let s = Schedule::parse(expr, zone, SecondsField::Optional).expect("valid schedule");
        g.bench_function(label, |b| {
            b.iter(|| black_box(s.next_after(black_box(after))))
        });
    }
    g.finish();
    c.bench_function("schedule/parse/6-field", |b| {
        b.iter(|| Schedule::parse(black_box("*/5 * * * * *"), None, SecondsField::Optional))
    });
}

fn assignment(c: &mut Criterion) {
    let members: Vec<Member> = (0..10)
        .map(|i| Member::new(format!("node-{i:02}"), 1))
        .collect();
    let names: Vec<String> = (0..10_000).map(|i| format!("task-{i:07}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sorted = refs.clone();
    sorted.sort_unstable();
    let mut g = c.benchmark_group("assign/prepare-10-members");
    for &strategy in Strategy::all() {
        let assigner = strategy.assigner();
        g.bench_with_input(strategy.name(), &members, |b, m| {
            b.iter(|| assigner.prepare(black_box(m)).expect("prepared"))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("assign/owner-10k-tasks");
    g.throughput(Throughput::Elements(refs.len() as u64));
    for &strategy in Strategy::all() {
        let placement = strategy.assigner().prepare(&members).expect("prepared");
        g.bench_function(strategy.name(), |b| {
            b.iter(|| {
                for name in &refs {
                    black_box(placement.owner(name, &sorted));
                }
            })
        });
    }
    g.finish();
}

fn claims(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let registry = MemoryRegistry::new();
    let retention = Duration::from_secs(1);
    let claimant = Claimant::new("node-a", 1);
    // Every task's life, once (as a node learns them when it gains its tasks).
    let names: Vec<(String, chrono::DateTime<Utc>)> = (0..2_048)
        .map(|i| (format!("task-{i:07}"), chrono::DateTime::<Utc>::UNIX_EPOCH))
        .collect();
    let generations: Vec<u64> = rt
        .block_on(registry.ensure_lives(&names))
        .expect("lives")
        .iter()
        .map(|l| l.generation)
        .collect();
    let requests = move |instant: i64, n: usize| -> Vec<ClaimRequest> {
        let at = Utc
            .timestamp_millis_opt(instant * 1000)
            .single()
            .expect("instant");
        (0..n)
            .map(|i| {
                ClaimRequest::new(
                    FireKey::new(format!("task-{i:07}"), at),
                    generations[i],
                    at + chrono::Duration::days(1),
                    retention,
                )
            })
            .collect()
    };
    let mut g = c.benchmark_group("claim/memory");
    let mut instant = 0i64;
    for batch in [1usize, 64, 2_048] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(BenchmarkId::new("one-call-per-batch", batch), |b| {
            b.to_async(&rt).iter_batched(
                || {
                    instant += 1;
                    requests(instant, batch)
                },
                |batch| {
                    let (registry, claimant) = (registry.clone(), claimant.clone());
                    async move { registry.claim(&claimant, &batch).await }
                },
                BatchSize::SmallInput,
            )
        });
    }
    // The same 2,048 fires as 2,048 calls of one fire: what batching saves per fire.
    g.throughput(Throughput::Elements(2_048));
    g.bench_function(BenchmarkId::new("one-call-per-fire", 2_048), |b| {
        b.to_async(&rt).iter_batched(
            || {
                instant += 1;
                requests(instant, 2_048)
            },
            |batch| {
                let (registry, claimant) = (registry.clone(), claimant.clone());
                async move {
                    for request in batch {
                        let _ = registry.claim(&claimant, &[request]).await;
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The driver's heap is private to dcron-core; this is the same structure (a min-heap of
/// `(instant ms, generation, task name)`, every task with its own generation as in the driver),
/// popped and refilled the way the driver does for one instant of n every-second tasks.
fn heap(c: &mut Criterion) {
    let mut g = c.benchmark_group("heap");
    for n in [10_000usize, 1_000_000] {
        let names: Vec<String> = (0..n).map(|i| format!("task-{i:07}")).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("pop-due-and-push-next", n), |b| {
            b.iter_batched(
                || {
                    let heap: BinaryHeap<Reverse<(i64, u64, String)>> = names
                        .iter()
                        .enumerate()
                        .map(|(i, name)| Reverse((1_000i64, i as u64, name.clone())))
                        .collect();
                    heap
                },
                |mut heap| {
                    let mut due = Vec::with_capacity(n);
                    while let Some(Reverse((ms, _, _))) = heap.peek() {
                        if *ms > 1_000 {
                            break;
                        }
                        if let Some(Reverse((ms, generation, name))) = heap.pop() {
                            due.push((ms, generation, name));
                        }
                    }
                    for (ms, generation, name) in due {
                        heap.push(Reverse((ms + 1_000, generation, name)));
                    }
                    heap
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = next_fire, assignment, claims, heap
}
criterion_main!(benches);
