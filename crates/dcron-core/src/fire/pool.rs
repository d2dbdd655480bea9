//! Starting many fires of one instant cheaply: pools of launches opened at their instant
//! (precisely, on a blocking thread for the last milliseconds), started inline in chunks.

use super::*;

/// Fires per runtime worker below which a pool is not shared with another worker.
pub(super) const GATE_MIN: usize = 256;

/// Fires a starting task takes from its pool at a time.
pub(super) const POOL_CHUNK: usize = 64;

/// Timers wake up to about two milliseconds late (tokio rounds to whole milliseconds, and so
/// does the kernel's poll timeout): a gate sleeps the last stretch before its instant on a
/// blocking thread, with the operating system's precision.
pub(super) const PRECISE_WAIT: Duration = Duration::from_millis(3);

/// What the fires of one gate share: a token (a child of the node's, so that cloning it per
/// fire does not contend with the other gates) and whether anyone listened for events when the
/// gate opened (asking costs a lock).
#[derive(Clone)]
pub(super) struct Share {
    pub(super) cancel: CancellationToken,
    pub(super) listening: bool,
}

/// Fires to start, shared by the tasks that start them.
pub(crate) struct Pool {
    pub(super) fires: Mutex<std::collections::VecDeque<Launch>>,
}

impl Pool {
    pub(super) fn new(fires: Vec<Launch>) -> Self {
        Pool {
            fires: Mutex::new(fires.into()),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Launch>> {
        self.fires.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn extend(&self, fires: Vec<Launch>) {
        self.lock().extend(fires);
    }

    /// Takes the next chunk of fires (empty when the pool is drained).
    pub(super) fn take(&self) -> Vec<Launch> {
        let mut fires = self.lock();
        let n = fires.len().min(POOL_CHUNK);
        fires.drain(..n).collect()
    }
}

/// Waits for the instant `at` of fires claimed ahead of it, then opens their pool. A won claim
/// is the right to run: a stop meanwhile does not cancel the wait.
pub(super) async fn open_at(env: Arc<FireEnv>, at: DateTime<Utc>, pool: Arc<Pool>) {
    wait_until(&*env.clock, at).await;
    // Fires of this instant claimed from now on start at once (see `launch_all`).
    env.waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&at);
    open(env, pool).await;
}

/// Starts every fire of `pool`: one task per runtime worker for a large pool, one for a small
/// one. They are spawned rather than run here, so that the scheduler hands them to idle workers
/// (a task spawned last waits for the spawning task's worker).
pub(super) async fn open(env: Arc<FireEnv>, pool: Arc<Pool>) {
    let listening = env.events.receiver_count() > 0;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let len = pool.lock().len();
    let starters = workers.min(len.div_ceil(GATE_MIN)).max(1);
    for _ in 0..starters {
        // Each starter its own copy of the environment and its own token: cloning an `Arc` or
        // a token per fire is then free of contention between the starters.
        let share = Share {
            cancel: env.cancel.child_token(),
            listening,
        };
        let mut own = FireEnv::clone(&env);
        // The node id is cloned into every fire's context: a copy of its own keeps that
        // reference count local too.
        own.node_id = Arc::from(&*env.node_id);
        let own = Arc::new(own);
        env.handlers.spawn(start_pool(own, pool.clone(), share));
    }
}

/// Takes chunks from `pool` until it is empty and starts them: inline while first polls are
/// fast, each fire in its own task once one was not.
pub(super) async fn start_pool(env: Arc<FireEnv>, pool: Arc<Pool>, share: Share) {
    let mut inline = true;
    loop {
        let chunk = pool.take();
        if chunk.is_empty() {
            return;
        }
        if !inline {
            for l in chunk {
                env.handlers.spawn(run(env.clone(), l, share.clone()));
            }
            continue;
        }
        let mut chunk = chunk.into_iter();
        std::future::poll_fn(|cx| {
            let mut last = std::time::Instant::now();
            for l in chunk.by_ref() {
                let mut fire = Box::pin(run(env.clone(), l, share.clone()));
                if !inline {
                    env.handlers.spawn(fire);
                    continue;
                }
                match std::panic::catch_unwind(AssertUnwindSafe(|| fire.as_mut().poll(cx))) {
                    Ok(Poll::Ready(())) => {}
                    Ok(Poll::Pending) => {
                        env.handlers.spawn(fire);
                    }
                    Err(panic) => {
                        tracing::error!(panic = %panic_message(&panic), "a fire panicked outside its handler");
                    }
                }
                let now = std::time::Instant::now();
                if now - last > INLINE_SLOW {
                    inline = false;
                }
                last = now;
            }
            Poll::Ready(())
        })
        .await;
    }
}

/// Sleeps until the wall clock reads `at`. With a clock that follows real time, the last
/// [`PRECISE_WAIT`] is slept on a blocking thread, whose sleep overshoots by microseconds rather
/// than the timer wheel's milliseconds.
pub(super) async fn wait_until(clock: &dyn Clock, at: DateTime<Utc>) {
    let wait = crate::clock::until(clock.now(), at);
    if wait.is_zero() {
        return;
    }
    if !clock.follows_real_time() {
        tokio::time::sleep(wait).await;
        return;
    }
    if wait > PRECISE_WAIT {
        tokio::time::sleep(wait - PRECISE_WAIT).await;
    }
    let rest = crate::clock::until(clock.now(), at);
    if !rest.is_zero() {
        // The timer stays armed too: if the blocking pool is busy with the application's own
        // work (or shutting down), the fire is no later than a timer would have made it.
        let precise = tokio::task::spawn_blocking(move || std::thread::sleep(rest));
        let timer = tokio::time::sleep(rest);
        tokio::pin!(timer);
        tokio::select! {
            slept = precise => {
                if slept.is_err() {
                    timer.await;
                }
            }
            () = &mut timer => {}
        }
    }
}
