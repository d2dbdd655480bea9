//! A lock-free, preallocated record of fires: `(scheduled instant, lateness)` per fire.
//!
//! Handlers of both systems call [`Recorder::record`] the same way, so the measurement costs
//! both the same. The storage is allocated and touched up front, so it is part of the memory
//! baseline, not of the memory measured per task.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Slot value meaning "not written yet".
const EMPTY: i64 = i64::MIN;

/// Fires recorded by handlers: the scheduled instant (ms since the epoch) and the lateness
/// (µs), plus a small tag (the node index in multi-node runs).
#[derive(Debug)]
pub struct Recorder {
    slots: Vec<[AtomicI64; 3]>,
    next: AtomicUsize,
    /// Fires scheduled before this instant (ms) are not kept (warm-up).
    from_ms: AtomicI64,
    /// Fires not kept because they were scheduled before `from_ms`.
    early: AtomicUsize,
}

/// One recorded fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fire {
    /// The scheduled instant, in milliseconds since the Unix epoch.
    pub scheduled_ms: i64,
    /// Handler start minus the scheduled instant, in microseconds.
    pub lateness_us: i64,
    /// The caller's tag (node index), 0 when unused.
    pub tag: i64,
}

impl Recorder {
    /// A recorder with room for `capacity` fires; later fires are counted as overflow.
    pub fn with_capacity(capacity: usize) -> Self {
        let slots = (0..capacity)
            .map(|_| {
                [
                    AtomicI64::new(EMPTY),
                    AtomicI64::new(EMPTY),
                    AtomicI64::new(EMPTY),
                ]
            })
            .collect();
        Recorder {
            slots,
            next: AtomicUsize::new(0),
            from_ms: AtomicI64::new(i64::MIN),
            early: AtomicUsize::new(0),
        }
    }

    /// From now on, fires scheduled before `ms` (ms since the epoch) are only counted, not
    /// kept, so that a long setup does not use up the capacity meant for the measured window.
    pub fn keep_from(&self, ms: i64) {
        self.from_ms.store(ms, Ordering::Relaxed);
    }

    /// Fires seen before the instant given to [`Recorder::keep_from`].
    pub fn early(&self) -> usize {
        self.early.load(Ordering::Relaxed)
    }

    /// Records a fire scheduled at `scheduled_us` (µs since the epoch) whose handler started at
    /// `now_us`.
    pub fn record(&self, scheduled_us: i64, now_us: i64, tag: i64) {
        if scheduled_us.div_euclid(1000) < self.from_ms.load(Ordering::Relaxed) {
            self.early.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.slots.get(i) {
            slot[2].store(tag, Ordering::Relaxed);
            slot[1].store(now_us - scheduled_us, Ordering::Relaxed);
            slot[0].store(scheduled_us.div_euclid(1000), Ordering::Release);
        }
    }

    /// How many fires were recorded, including those beyond the capacity.
    pub fn attempted(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// How many fires did not fit.
    pub fn overflow(&self) -> usize {
        self.attempted().saturating_sub(self.slots.len())
    }

    /// Every fire recorded so far (slots still being written are skipped).
    pub fn fires(&self) -> Vec<Fire> {
        let n = self.attempted().min(self.slots.len());
        self.slots[..n]
            .iter()
            .filter_map(|slot| {
                let scheduled_ms = slot[0].load(Ordering::Acquire);
                (scheduled_ms != EMPTY).then(|| Fire {
                    scheduled_ms,
                    lateness_us: slot[1].load(Ordering::Relaxed),
                    tag: slot[2].load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

/// The wall clock in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The fires scheduled in `[from_ms, to_ms)`.
pub fn in_window(fires: &[Fire], from_ms: i64, to_ms: i64) -> Vec<Fire> {
    fires
        .iter()
        .filter(|f| f.scheduled_ms >= from_ms && f.scheduled_ms < to_ms)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_overflows() {
        let r = Recorder::with_capacity(2);
        r.record(5_000_000, 5_000_250, 1);
        r.record(6_000_000, 6_001_000, 2);
        r.record(7_000_000, 7_000_000, 3);
        assert_eq!(r.attempted(), 3);
        assert_eq!(r.overflow(), 1);
        let fires = r.fires();
        assert_eq!(
            fires,
            vec![
                Fire {
                    scheduled_ms: 5_000,
                    lateness_us: 250,
                    tag: 1
                },
                Fire {
                    scheduled_ms: 6_000,
                    lateness_us: 1_000,
                    tag: 2
                }
            ]
        );
        assert_eq!(in_window(&fires, 6_000, 7_000).len(), 1);
        let r = Recorder::with_capacity(4);
        r.keep_from(6_000);
        r.record(5_999_999, 6_000_000, 1);
        r.record(6_000_000, 6_000_001, 1);
        assert_eq!(r.early(), 1);
        assert_eq!(r.fires().len(), 1);
    }
}
