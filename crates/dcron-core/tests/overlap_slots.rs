//! The cluster-wide overlap guarantee rests on the registry's atomic running slot, not on the
//! running markers nodes publish in their records (which two nodes can both miss).
//!
//! Two nodes share a `Skip` task whose runs last longer than its period; its owner stops
//! gracefully while a run is in flight, and the other node takes the task over. The registry
//! layer here hides every published marker, so only the slot can stop the new owner. Runs on
//! virtual time (tokio's paused clock).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dcron_core::layer::{Layered, RegistryLayer};
use dcron_core::{
    async_trait, Capabilities, Clock, Dcron, DcronEvent, Lease, MemoryRegistry, Node,
    OverlapPolicy, Registry, Result, SkipReason, TokioClock,
};

/// Hides running markers from node records; declares slots or not.
#[derive(Debug)]
struct NoMarkers {
    inner: MemoryRegistry,
    slots: bool,
}

#[async_trait]
impl RegistryLayer for NoMarkers {
    fn inner(&self) -> &dyn Registry {
        &self.inner
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        caps.slots = self.slots;
        caps
    }

    async fn register(&self, node: &Node, ttl: Duration) -> Result<Lease> {
        let mut node = node.clone();
        node.running.clear();
        self.inner.register(&node, ttl).await
    }

    async fn update_node(&self, lease: &Lease, node: &Node) -> Result<()> {
        let mut node = node.clone();
        node.running.clear();
        self.inner.update_node(lease, &node).await
    }
}

/// `(node, start, end)` of every run.
type Runs = Arc<Mutex<Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)>>>;

/// Runs the handover; answers the runs and whether any fire was skipped as overlapping.
async fn handover(slots: bool) -> (Vec<(String, DateTime<Utc>, DateTime<Utc>)>, usize) {
    let start = Utc
        .with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("valid date");
    let clock = TokioClock::starting_at(start);
    let store = MemoryRegistry::new();
    let runs: Runs = Arc::default();
    let mut nodes = Vec::new();
    let mut events = Vec::new();
    for name in ["a", "b"] {
        let registry: Arc<dyn Registry> = Arc::new(Layered(NoMarkers {
            inner: store.clone(),
            slots,
        }));
        let node = Dcron::builder(registry)
            .node_name(name)
            .clock(Arc::new(clock.clone()))
            .ttl(Duration::from_secs(3))
            .poll_interval(Duration::from_secs(1))
            .grace_period(Duration::from_secs(10))
            .default_overlap(OverlapPolicy::Skip)
            .build()
            .expect("valid config");
        let (runs, clock, label) = (runs.clone(), clock.clone(), name.to_string());
        node.add_func("long", "*/2 * * * * *", move |ctx| {
            let (runs, clock, label) = (runs.clone(), clock.clone(), label.clone());
            async move {
                let i = {
                    let mut r = runs.lock().expect("runs");
                    r.push((label, clock.now(), None));
                    r.len() - 1
                };
                // Longer than the period; a cancelled run ends at once.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = ctx.cancel.cancelled() => {}
                }
                runs.lock().expect("runs")[i].2 = Some(clock.now());
                Ok(())
            }
        })
        .await
        .expect("task added");
        events.push(node.events());
        node.start().await.expect("started");
        nodes.push((name.to_string(), node));
    }
    // Let a run start, then stop its owner while it is in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while runs.lock().expect("runs").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no run started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owner = runs.lock().expect("runs")[0].0.clone();
    let (leaving, staying): (Vec<_>, Vec<_>) = nodes
        .into_iter()
        .zip(events)
        .partition(|((name, _), _)| *name == owner);
    let ((_, leaving), _) = leaving.into_iter().next().expect("the owner");
    let ((_, staying), mut staying_events) = staying.into_iter().next().expect("the other node");
    leaving.stop().await.expect("stop");
    tokio::time::sleep(Duration::from_secs(12)).await;
    staying.stop().await.expect("stop");
    let mut skipped = 0;
    while let Ok(e) = staying_events.try_recv() {
        if matches!(
            e,
            DcronEvent::Skipped {
                reason: SkipReason::Overlap,
                ..
            }
        ) {
            skipped += 1;
        }
    }
    let runs = runs
        .lock()
        .expect("runs")
        .iter()
        .map(|(n, s, e)| (n.clone(), *s, e.expect("every run ended")))
        .collect();
    (runs, skipped)
}

/// Pairs of runs on different nodes whose intervals overlap.
fn overlapping(
    runs: &[(String, DateTime<Utc>, DateTime<Utc>)],
) -> Vec<(String, DateTime<Utc>, String, DateTime<Utc>)> {
    let mut out = Vec::new();
    for (i, (n1, s1, e1)) in runs.iter().enumerate() {
        for (n2, s2, e2) in &runs[i + 1..] {
            if n1 != n2 && s1 < e2 && s2 < e1 {
                out.push((n1.clone(), *s1, n2.clone(), *s2));
            }
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn the_running_slot_keeps_a_skip_task_on_one_node_at_a_time() {
    let (runs, skipped) = handover(true).await;
    assert!(
        runs.iter().any(|(n, ..)| n != &runs[0].0),
        "the other node took the task over and ran it: {runs:?}"
    );
    assert!(
        skipped > 0,
        "the new owner skipped a fire while the old run was in flight: {runs:?}"
    );
    let both = overlapping(&runs);
    assert!(both.is_empty(), "runs on two nodes at once: {both:?}");
}

/// The control: without slots and without markers, the same handover does overlap, so the
/// test above watches a real race.
#[tokio::test(start_paused = true)]
async fn without_slots_or_markers_the_handover_overlaps() {
    let (runs, _) = handover(false).await;
    assert!(
        !overlapping(&runs).is_empty(),
        "the scenario must race without the slot: {runs:?}"
    );
}
