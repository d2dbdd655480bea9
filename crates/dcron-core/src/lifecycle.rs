//! The node lifecycle as a pure state machine.
//!
//! ```text
//!            Start                Registered(e)
//!   Idle ───────────▶ Starting(e) ─────────────▶ Working(e) ◀──────────┐
//!                        │  ▲ RegisterFailed(e)       │                  │ Registered(e')
//!                        └──┘ (retry as e+1)          │ lease lost /     │
//!                                                     │ no renewal ≥ TTL │
//!                                                     ▼                  │
//!                                                  Lost(e') ─────────────┘
//!   Stop from Starting/Working/Lost ─▶ Leaving ── Drained ──▶ Stopped
//! ```
//!
//! [`step`] maps `(state, input)` to `(state, actions)`. It reads no clock (times come in the
//! inputs) and does no I/O: the driver executes the [`Action`]s and feeds the replies back as
//! inputs. Every registry call carries the registration epoch it was made for, and a reply for
//! an older epoch is dropped, so a late answer about an old lease can never touch the new one.
//! Pairs that make no sense (a reply in the wrong state) are ignored and logged, never a panic.

use std::time::Duration;

use tokio::time::Instant;

use crate::types::NodeStatus;

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Built, not started.
    Idle,
    /// Registering under epoch `epoch`.
    Starting {
        /// The registration attempt in flight.
        epoch: u64,
    },
    /// Registered and taking tasks.
    Working {
        /// The registration in force.
        epoch: u64,
        /// The last successful renewal (or the registration).
        last_renewal: Instant,
    },
    /// The lease is gone or could not be renewed for a TTL: not claiming, registering again.
    Lost {
        /// The registration attempt in flight.
        epoch: u64,
    },
    /// Stopping: peers take the tasks over; in-flight handlers drain.
    Leaving {
        /// The registration to remove at the end, if there is one.
        epoch: Option<u64>,
    },
    /// Stopped for good.
    Stopped,
}

impl State {
    /// Whether the node may claim fires in this state.
    pub fn is_working(&self) -> bool {
        matches!(self, State::Working { .. })
    }

    /// The status to publish in the node record for this state.
    pub fn status(&self) -> NodeStatus {
        match self {
            State::Working { .. } => NodeStatus::Working,
            State::Leaving { .. } | State::Stopped => NodeStatus::Leaving,
            _ => NodeStatus::Starting,
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// `start()` was called.
    Start,
    /// A registration succeeded.
    Registered {
        /// The epoch it was made for.
        epoch: u64,
        /// When.
        now: Instant,
    },
    /// A registration failed.
    RegisterFailed {
        /// The epoch it was made for.
        epoch: u64,
    },
    /// Time to renew the lease.
    RenewTick {
        /// When.
        now: Instant,
    },
    /// A renewal succeeded.
    Renewed {
        /// The epoch it was made for.
        epoch: u64,
        /// When.
        now: Instant,
    },
    /// A renewal (or status write) failed.
    RenewFailed {
        /// The epoch it was made for.
        epoch: u64,
        /// The registry said the lease is gone (not merely unreachable).
        lease_lost: bool,
        /// When.
        now: Instant,
    },
    /// `stop()` was called.
    Stop,
    /// In-flight handlers finished (or the grace period ended).
    Drained,
}

/// What the driver must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Register the node (status `Starting`) for `epoch`, after `delay`.
    Register {
        /// The epoch of the attempt.
        epoch: u64,
        /// Back-off before the attempt.
        delay: Duration,
    },
    /// Write the node's status under the lease of `epoch` (keeping the lease).
    WriteStatus {
        /// The epoch whose lease to use.
        epoch: u64,
        /// The status to write.
        status: NodeStatus,
    },
    /// Renew the lease of `epoch`.
    Renew {
        /// The epoch whose lease to renew.
        epoch: u64,
    },
    /// Start scheduling: reconcile membership and tasks, take owned tasks, catch up.
    Activate,
    /// Stop claiming: drop every owned task (another node will take them).
    Deactivate,
    /// Let in-flight handlers finish within the grace period, then report `Drained`.
    Drain,
    /// Remove the registration of `epoch` and release registry resources.
    Unregister {
        /// The epoch whose lease to release.
        epoch: u64,
    },
}

/// Tunables the machine needs (all durations, no clock).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The lease TTL: a node that could not renew for this long considers itself lost.
    pub ttl: Duration,
    /// Back-off before retrying a failed registration.
    pub retry: Duration,
}

/// One step of the machine.
pub fn step(state: State, input: Input, timing: &Timing) -> (State, Vec<Action>) {
    use Action as A;
    use Input as I;
    use State as S;
    match (state, input) {
        (S::Idle, I::Start) => (
            S::Starting { epoch: 1 },
            vec![A::Register {
                epoch: 1,
                delay: Duration::ZERO,
            }],
        ),
        (S::Starting { epoch } | S::Lost { epoch }, I::Registered { epoch: e, now })
            if e == epoch =>
        {
            (
                S::Working {
                    epoch,
                    last_renewal: now,
                },
                vec![
                    A::WriteStatus {
                        epoch,
                        status: NodeStatus::Working,
                    },
                    A::Activate,
                ],
            )
        }
        (S::Starting { epoch }, I::RegisterFailed { epoch: e }) if e == epoch => (
            S::Starting { epoch: epoch + 1 },
            vec![A::Register {
                epoch: epoch + 1,
                delay: timing.retry,
            }],
        ),
        (S::Lost { epoch }, I::RegisterFailed { epoch: e }) if e == epoch => (
            S::Lost { epoch: epoch + 1 },
            vec![A::Register {
                epoch: epoch + 1,
                delay: timing.retry,
            }],
        ),
        (
            S::Working {
                epoch,
                last_renewal,
            },
            I::RenewTick { now },
        ) => {
            // No renewal succeeded for a whole TTL (the calls fail, or hang without an answer:
            // a black-holed connection, a frozen process): the lease may be gone; stop
            // claiming and register again, even though no reply said so.
            if now.saturating_duration_since(last_renewal) >= timing.ttl {
                (
                    S::Lost { epoch: epoch + 1 },
                    vec![
                        A::Deactivate,
                        A::Register {
                            epoch: epoch + 1,
                            delay: Duration::ZERO,
                        },
                    ],
                )
            } else {
                (state, vec![A::Renew { epoch }])
            }
        }
        (S::Leaving { epoch: Some(epoch) }, I::RenewTick { .. }) => {
            (state, vec![A::Renew { epoch }])
        }
        (S::Working { epoch, .. }, I::Renewed { epoch: e, now }) if e == epoch => (
            S::Working {
                epoch,
                last_renewal: now,
            },
            vec![],
        ),
        (
            S::Working {
                epoch,
                last_renewal,
            },
            I::RenewFailed {
                epoch: e,
                lease_lost,
                now,
            },
        ) if e == epoch => {
            if lease_lost || now.saturating_duration_since(last_renewal) >= timing.ttl {
                (
                    S::Lost { epoch: epoch + 1 },
                    vec![
                        A::Deactivate,
                        A::Register {
                            epoch: epoch + 1,
                            delay: Duration::ZERO,
                        },
                    ],
                )
            } else {
                (state, vec![])
            }
        }
        (S::Starting { .. } | S::Lost { .. }, I::Stop) => {
            // A registration may be in flight; its reply will be stale. Nothing to unregister
            // that we know of, but the driver still tries the last lease it holds, if any.
            (S::Leaving { epoch: None }, vec![A::Deactivate, A::Drain])
        }
        (S::Working { epoch, .. }, I::Stop) => (
            S::Leaving { epoch: Some(epoch) },
            vec![
                A::WriteStatus {
                    epoch,
                    status: NodeStatus::Leaving,
                },
                A::Deactivate,
                A::Drain,
            ],
        ),
        (S::Leaving { epoch }, I::Drained) => (
            S::Stopped,
            epoch
                .map(|epoch| vec![A::Unregister { epoch }])
                .unwrap_or_default(),
        ),
        (S::Idle, I::Stop) => (S::Stopped, vec![]),
        (other, input) => {
            tracing::debug!(state = ?other, ?input, "lifecycle: input ignored in this state");
            (other, vec![])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        ttl: Duration::from_secs(10),
        retry: Duration::from_secs(1),
    };

    fn now() -> Instant {
        Instant::now()
    }

    fn working(epoch: u64, at: Instant) -> State {
        State::Working {
            epoch,
            last_renewal: at,
        }
    }

    #[test]
    fn start_registers_then_works() {
        let (s, a) = step(State::Idle, Input::Start, &T);
        assert_eq!(s, State::Starting { epoch: 1 });
        assert_eq!(
            a,
            vec![Action::Register {
                epoch: 1,
                delay: Duration::ZERO
            }]
        );
        let t = now();
        let (s, a) = step(s, Input::Registered { epoch: 1, now: t }, &T);
        assert_eq!(s, working(1, t));
        assert_eq!(
            a,
            vec![
                Action::WriteStatus {
                    epoch: 1,
                    status: NodeStatus::Working
                },
                Action::Activate
            ]
        );
        assert!(s.is_working());
        assert_eq!(s.status(), NodeStatus::Working);
    }

    #[test]
    fn failed_registration_retries_under_a_new_epoch_and_drops_the_old_reply() {
        let (s, a) = step(
            State::Starting { epoch: 1 },
            Input::RegisterFailed { epoch: 1 },
            &T,
        );
        assert_eq!(s, State::Starting { epoch: 2 });
        assert_eq!(
            a,
            vec![Action::Register {
                epoch: 2,
                delay: T.retry
            }]
        );
        // A late success for epoch 1 is stale.
        let (s2, a2) = step(
            s,
            Input::Registered {
                epoch: 1,
                now: now(),
            },
            &T,
        );
        assert_eq!(s2, s);
        assert!(a2.is_empty());
    }

    #[test]
    fn lease_lost_goes_lost_stops_claiming_and_reregisters() {
        let t = now();
        let (s, a) = step(
            working(3, t),
            Input::RenewFailed {
                epoch: 3,
                lease_lost: true,
                now: t,
            },
            &T,
        );
        assert_eq!(s, State::Lost { epoch: 4 });
        assert_eq!(
            a,
            vec![
                Action::Deactivate,
                Action::Register {
                    epoch: 4,
                    delay: Duration::ZERO
                }
            ]
        );
        assert!(!s.is_working());
        let t2 = now();
        let (s, a) = step(s, Input::Registered { epoch: 4, now: t2 }, &T);
        assert_eq!(s, working(4, t2));
        assert!(a.contains(&Action::Activate));
    }

    #[test]
    fn unreachable_registry_is_tolerated_until_a_ttl_without_renewal() {
        let t0 = now();
        let soon = t0 + Duration::from_secs(3);
        let (s, a) = step(
            working(1, t0),
            Input::RenewFailed {
                epoch: 1,
                lease_lost: false,
                now: soon,
            },
            &T,
        );
        assert_eq!(s, working(1, t0));
        assert!(a.is_empty());
        let late = t0 + T.ttl;
        let (s, a) = step(
            s,
            Input::RenewFailed {
                epoch: 1,
                lease_lost: false,
                now: late,
            },
            &T,
        );
        assert_eq!(s, State::Lost { epoch: 2 });
        assert!(a.contains(&Action::Deactivate));
    }

    #[test]
    fn stale_renewal_replies_are_ignored() {
        let t = now();
        let s = working(5, t);
        for input in [
            Input::Renewed {
                epoch: 4,
                now: t + Duration::from_secs(1),
            },
            Input::RenewFailed {
                epoch: 4,
                lease_lost: true,
                now: t,
            },
            Input::Registered { epoch: 4, now: t },
        ] {
            let (s2, a) = step(s, input, &T);
            assert_eq!(s2, s, "{input:?}");
            assert!(a.is_empty());
        }
    }

    #[test]
    fn renewals_that_never_answer_make_the_node_lost_after_a_ttl() {
        let t = now();
        // A tick before a TTL without a renewal renews again.
        let (s, a) = step(working(4, t), Input::RenewTick { now: t + T.ttl / 2 }, &T);
        assert_eq!(s, working(4, t));
        assert_eq!(a, vec![Action::Renew { epoch: 4 }]);
        // No reply at all for a whole TTL (a hung call, a frozen process): lost, without any
        // failure having been reported.
        let (s, a) = step(s, Input::RenewTick { now: t + T.ttl }, &T);
        assert_eq!(s, State::Lost { epoch: 5 });
        assert_eq!(
            a,
            vec![
                Action::Deactivate,
                Action::Register {
                    epoch: 5,
                    delay: Duration::ZERO
                }
            ]
        );
    }

    #[test]
    fn renewal_success_moves_the_deadline() {
        let t0 = now();
        let t1 = t0 + Duration::from_secs(8);
        let (s, _) = step(working(1, t0), Input::Renewed { epoch: 1, now: t1 }, &T);
        assert_eq!(s, working(1, t1));
        let (s, _) = step(
            s,
            Input::RenewFailed {
                epoch: 1,
                lease_lost: false,
                now: t1 + Duration::from_secs(5),
            },
            &T,
        );
        assert!(s.is_working());
    }

    #[test]
    fn stop_from_working_leaves_drains_then_unregisters() {
        let t = now();
        let (s, a) = step(working(2, t), Input::Stop, &T);
        assert_eq!(s, State::Leaving { epoch: Some(2) });
        assert_eq!(
            a,
            vec![
                Action::WriteStatus {
                    epoch: 2,
                    status: NodeStatus::Leaving
                },
                Action::Deactivate,
                Action::Drain
            ]
        );
        let (s, a) = step(s, Input::RenewTick { now: t }, &T);
        assert_eq!(a, vec![Action::Renew { epoch: 2 }]);
        let (s, a) = step(s, Input::Drained, &T);
        assert_eq!(s, State::Stopped);
        assert_eq!(a, vec![Action::Unregister { epoch: 2 }]);
        // stop() again is a no-op.
        let (s, a) = step(s, Input::Stop, &T);
        assert_eq!(s, State::Stopped);
        assert!(a.is_empty());
    }

    #[test]
    fn stop_while_starting_or_lost_or_idle() {
        let (s, a) = step(State::Starting { epoch: 1 }, Input::Stop, &T);
        assert_eq!(s, State::Leaving { epoch: None });
        assert_eq!(a, vec![Action::Deactivate, Action::Drain]);
        let (s, a) = step(s, Input::Drained, &T);
        assert_eq!(s, State::Stopped);
        assert!(a.is_empty());
        let (s, _) = step(State::Lost { epoch: 3 }, Input::Stop, &T);
        assert_eq!(s, State::Leaving { epoch: None });
        let (s, a) = step(State::Idle, Input::Stop, &T);
        assert_eq!(s, State::Stopped);
        assert!(a.is_empty());
    }

    #[test]
    fn nonsense_pairs_are_ignored_not_panics() {
        let t = now();
        let states = [
            State::Idle,
            State::Starting { epoch: 1 },
            working(1, t),
            State::Lost { epoch: 2 },
            State::Leaving { epoch: Some(1) },
            State::Leaving { epoch: None },
            State::Stopped,
        ];
        let inputs = [
            Input::Start,
            Input::Registered { epoch: 9, now: t },
            Input::RegisterFailed { epoch: 9 },
            Input::RenewTick { now: t },
            Input::Renewed { epoch: 9, now: t },
            Input::RenewFailed {
                epoch: 9,
                lease_lost: true,
                now: t,
            },
            Input::Stop,
            Input::Drained,
        ];
        for s in states {
            for i in inputs {
                let _ = step(s, i, &T);
            }
        }
        // Start on a started node does nothing.
        let (s, a) = step(working(1, t), Input::Start, &T);
        assert_eq!(s, working(1, t));
        assert!(a.is_empty());
    }
}

/// A node's state as the API reports it ([`crate::Dcron::state`]): the lifecycle state, plus
/// `Failed` when the node's driver failed and the node left the cluster.
///
/// It compares with the state's name, so `node.state() == "working"` reads naturally.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NodeState {
    /// Built, not started.
    #[default]
    Idle,
    /// Registering.
    Starting,
    /// Registered and taking tasks.
    Working,
    /// The lease was lost; registering again.
    Lost,
    /// Stopping: peers take the tasks over, handlers drain.
    Leaving,
    /// Stopped.
    Stopped,
    /// The driver failed (a panic or a fatal error); the node unregistered so its tasks
    /// moved. The reason says what happened.
    Failed(String),
}

impl NodeState {
    /// The state's name: `idle`, `starting`, `working`, `lost`, `leaving`, `stopped`, `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Idle => "idle",
            NodeState::Starting => "starting",
            NodeState::Working => "working",
            NodeState::Lost => "lost",
            NodeState::Leaving => "leaving",
            NodeState::Stopped => "stopped",
            NodeState::Failed(_) => "failed",
        }
    }

    /// Whether the node takes tasks.
    pub fn is_working(&self) -> bool {
        *self == NodeState::Working
    }

    /// The API state of a lifecycle state.
    pub fn of(state: &State) -> NodeState {
        match state {
            State::Idle => NodeState::Idle,
            State::Starting { .. } => NodeState::Starting,
            State::Working { .. } => NodeState::Working,
            State::Lost { .. } => NodeState::Lost,
            State::Leaving { .. } => NodeState::Leaving,
            State::Stopped => NodeState::Stopped,
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeState::Failed(reason) => write!(f, "failed: {reason}"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl PartialEq<&str> for NodeState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for NodeState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}
