//! How a burst of fires starts: fires claimed ahead of their instant wait in one pool per
//! instant and start inline, in chunks, on every runtime worker; a fire still pending after its
//! first poll continues in its own task; a handler that holds its first poll makes the rest
//! start in their own tasks. Every fire must run exactly once and never before its instant.
//! Nothing sleeps to wait: conditions are polled with deadlines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{Dcron, MemoryRegistry, SecondsField, TokioClock};

/// (task, scheduled, started) of each handler run.
type Starts = Arc<Mutex<Vec<(String, DateTime<Utc>, DateTime<Utc>)>>>;

/// Polls `cond` every 20 ms (real or virtual time) until it holds or `limit` passes.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let steps = (limit.as_millis() / 20).max(1);
    for _ in 0..steps {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out ({limit:?}) waiting for {what}");
}

/// Whether each of the `tasks` tasks has at least `times` runs in `runs`.
fn every_task_ran(runs: &Starts, tasks: usize, times: usize) -> bool {
    let runs = runs.lock().expect("lock");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (task, _, _) in runs.iter() {
        *seen.entry(task).or_default() += 1;
    }
    seen.len() == tasks && seen.values().all(|n| *n >= times)
}

/// Each (task, instant) ran once, no handler started before its instant, and the first two
/// instants of every task ran.
fn check_once_and_not_early(starts: &Starts, tasks: usize) {
    let starts = starts.lock().expect("lock");
    let mut runs: HashMap<(&str, DateTime<Utc>), usize> = HashMap::new();
    for (task, scheduled, started) in starts.iter() {
        assert!(
            started >= scheduled,
            "{task} started at {started}, before its instant {scheduled}"
        );
        *runs.entry((task.as_str(), *scheduled)).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fires ran more than once: {twice:?}");
    let mut per_task: HashMap<&str, usize> = HashMap::new();
    for (task, _) in runs.keys() {
        *per_task.entry(task).or_default() += 1;
    }
    assert_eq!(per_task.len(), tasks, "every task fired");
    assert!(per_task.values().all(|n| *n >= 2), "every task fired twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_claimed_ahead_starts_on_every_worker_once_and_never_early() {
    // Real time: the last stretch before the instant is slept on a blocking thread, and two
    // workers share the pool. 3,000 tasks make two claim batches and two starters.
    let tasks = 3000;
    let node = Dcron::builder(MemoryRegistry::new())
        .seconds(SecondsField::Required)
        .claim_ahead(Duration::from_millis(200))
        .build()
        .expect("builder");
    let starts: Starts = Arc::default();
    for i in 0..tasks {
        let starts = starts.clone();
        node.add_func(&format!("burst-{i}"), "* * * * * *", move |ctx| {
            let starts = starts.clone();
            async move {
                let now = Utc::now();
                starts
                    .lock()
                    .expect("lock")
                    .push((ctx.name().to_string(), ctx.scheduled, now));
                Ok(())
            }
        })
        .await
        .expect("add");
    }
    node.start().await.expect("start");
    wait_for(
        "two instants of every task",
        Duration::from_secs(20),
        || every_task_ran(&starts, tasks, 2),
    )
    .await;
    node.stop().await.expect("stop");
    check_once_and_not_early(&starts, tasks);
}

#[tokio::test(start_paused = true)]
async fn fires_pending_after_their_first_poll_and_a_handler_holding_it_all_finish_once() {
    // Virtual time. Task 0 holds its first poll for 2 ms of real time (longer than a start
    // may take inline), so the fires after it start in tasks of their own; every handler then
    // waits on a timer, so each fire is still pending after its first poll and finishes in
    // its own task.
    let tasks = 400;
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("date");
    let clock = TokioClock::starting_at(base);
    let node = Dcron::builder(MemoryRegistry::new())
        .clock(Arc::new(clock.clone()))
        .seconds(SecondsField::Required)
        .claim_ahead(Duration::from_millis(100))
        .build()
        .expect("builder");
    let starts: Starts = Arc::default();
    let finished: Starts = Arc::default();
    for i in 0..tasks {
        let (starts, finished, clock) = (starts.clone(), finished.clone(), clock.clone());
        node.add_func(&format!("pending-{i}"), "* * * * * *", move |ctx| {
            let (starts, finished, clock) = (starts.clone(), finished.clone(), clock.clone());
            async move {
                use dcron_core::Clock;
                let now = clock.now();
                starts
                    .lock()
                    .expect("lock")
                    .push((ctx.name().to_string(), ctx.scheduled, now));
                if i == 0 {
                    let held = Instant::now();
                    while held.elapsed() < Duration::from_millis(2) {
                        std::hint::spin_loop();
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.lock().expect("lock").push((
                    ctx.name().to_string(),
                    ctx.scheduled,
                    clock.now(),
                ));
                Ok(())
            }
        })
        .await
        .expect("add");
    }
    node.start().await.expect("start");
    wait_for(
        "two finished instants of every task",
        Duration::from_secs(30),
        || every_task_ran(&finished, tasks, 2),
    )
    .await;
    node.stop().await.expect("stop");
    check_once_and_not_early(&starts, tasks);
    check_once_and_not_early(&finished, tasks);
    // Each handler finished 300 ms (virtual) after it started: its timer was woken in the task
    // it continued in.
    let starts = starts.lock().expect("lock");
    let finished = finished.lock().expect("lock");
    let begun: HashMap<(&str, DateTime<Utc>), DateTime<Utc>> = starts
        .iter()
        .map(|(t, s, at)| ((t.as_str(), *s), *at))
        .collect();
    for (task, scheduled, end) in finished.iter() {
        let start = begun
            .get(&(task.as_str(), *scheduled))
            .expect("a finished fire started");
        assert!(
            *end - *start >= chrono::Duration::milliseconds(300),
            "{task} finished {} ms after it started",
            (*end - *start).num_milliseconds()
        );
    }
}

/// Counts the `ensure_lives` calls in flight at once (each takes 100 ms of virtual time).
#[derive(Debug)]
struct SlowLives {
    inner: MemoryRegistry,
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    names: std::sync::atomic::AtomicUsize,
    calls: std::sync::atomic::AtomicUsize,
}

#[dcron_core::async_trait]
impl dcron_core::layer::RegistryLayer for SlowLives {
    fn inner(&self) -> &dyn dcron_core::Registry {
        &self.inner
    }

    async fn ensure_lives(
        &self,
        names: &[(String, DateTime<Utc>)],
    ) -> dcron_core::Result<Vec<dcron_core::Life>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.calls.fetch_add(1, SeqCst);
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(n, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = dcron_core::Registry::ensure_lives(&self.inner, names).await;
        self.names.fetch_add(names.len(), SeqCst);
        self.now.fetch_sub(1, SeqCst);
        r
    }
}

/// A node gaining 12,000 tasks reads their lives in batches (not one read per task), at most
/// four batches at once (a million tasks must not queue a thousand reads at the registry), and
/// gets every life.
#[tokio::test(start_paused = true)]
async fn life_reads_of_a_large_gain_are_bounded_in_flight() {
    use std::sync::atomic::Ordering::SeqCst;
    let inner = MemoryRegistry::new();
    let created = Utc
        .with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
        .single()
        .expect("date");
    for i in 0..12_000 {
        let mut meta = dcron_core::TaskMeta::new(format!("t{i}"), "0 0 0 1 1 *");
        meta.created_at = Some(created);
        dcron_core::Registry::put_task(&inner, &meta, dcron_core::PutMode::CreateOnly)
            .await
            .expect("put");
    }
    let layer = Arc::new(dcron_core::layer::Layered(SlowLives {
        inner: inner.clone(),
        now: Default::default(),
        peak: Default::default(),
        names: Default::default(),
        calls: Default::default(),
    }));
    let registry: Arc<dyn dcron_core::Registry> = layer.clone();
    let node = Dcron::builder(registry)
        .clock(Arc::new(TokioClock::starting_at(
            Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
                .single()
                .expect("date"),
        )))
        .task_run_fn(|_ctx| async { Ok(()) })
        .build()
        .expect("valid config");
    node.start().await.expect("start");
    wait_for("every life read", Duration::from_secs(30), || {
        layer.0.names.load(SeqCst) >= 12_000
    })
    .await;
    let peak = layer.0.peak.load(SeqCst);
    assert!(
        (2..=4).contains(&peak),
        "life reads in flight at once: {peak}"
    );
    let calls = layer.0.calls.load(SeqCst);
    assert!(
        calls <= 24,
        "12,000 lives read in {calls} calls: batches of up to 1,000 expected"
    );
    node.stop().await.expect("stop");
}
