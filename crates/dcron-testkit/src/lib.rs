#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod claims;
pub mod clock;
pub mod cluster;
pub mod corrupt;
pub mod faults;
pub mod harness;
pub mod hostile;
pub mod ledger;
pub mod lives;
pub mod membership;
pub mod memory;
pub mod namespace;
pub mod policies;
pub mod records;
pub mod runner;
/// The deterministic cluster simulator (virtual time, injected faults, invariant checks).
pub mod sim;
pub mod slots;
pub mod tasks;
pub mod tombstones;
pub mod wait;
pub mod watch;

pub use async_trait::async_trait;
pub use clock::ManualClock;
pub use harness::{
    claim_as, claim_fires, instant, node_listed, now_millis, servers_required, task_meta,
    CaseContext, CaseError, CaseResult, Hooks, RawKind, RegistryFactory, REQUIRE_ENV,
};
pub use ledger::{check, check_allowed, expected_fires, Duplicate, Execution, Ledger, Report};
pub use memory::MemoryFactory;
#[doc(hidden)]
pub use runner::__private;
pub use runner::{
    cases, run_all, run_case, Case, CaseFn, Requirement, Summary, CASE_TIMEOUT,
    MAX_PROBED_VALUE_BYTES,
};
pub use wait::{holds_until, wait_until, WaitError};

/// Generates the `main` of a `harness = false` test target that runs every conformance case
/// against a [`RegistryFactory`] expression: the recommended entry point.
///
/// Before running anything, it opens one client on a probe namespace and decides every skip up
/// front: a server that cannot be reached makes every case *ignored* with the reason (a failure
/// when `DCRON_TEST_REQUIRE=1`), and a case whose [`Requirement`] the registry's
/// [`Capabilities`](dcron_core::Capabilities) or the factory's declared
/// [`Hooks`](RegistryFactory::hooks) do not meet is reported `ignored (reason)`, never `ok`.
/// The others run, one trial per case named `module::case` (so `cargo test --test x claims::`
/// filters, `--exact` and `--list` work as with libtest), each on a fresh two-worker tokio
/// runtime with a factory built from the expression, in a fresh namespace cleaned up
/// afterwards. A case that discovers a skip only while running (a hook the factory did not
/// declare answers `Unsupported`) is reported `ignored (skipped at run time: reason)`, or fails
/// when `DCRON_TEST_REQUIRE=1`. The process exits like libtest: non-zero when a case failed.
///
/// The test target needs `harness = false`:
///
/// ```toml
/// [[test]]
/// name = "conformance"
/// harness = false
/// ```
///
/// ```no_run
/// use std::sync::Arc;
/// use dcron_testkit::{async_trait, Hooks, RegistryFactory};
///
/// struct MyFactory;
///
/// #[async_trait]
/// impl RegistryFactory for MyFactory {
///     fn name(&self) -> &'static str {
///         "mine"
///     }
///     async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn dcron_core::Registry>> {
///         # let _ = namespace;
///         # Err(dcron_core::Error::unavailable("demo"))
///         // connect a client to `namespace` here
///     }
///     fn hooks(&self) -> Option<Hooks> {
///         Some(Hooks::none())
///     }
/// }
///
/// dcron_testkit::conformance_main!(MyFactory);
/// ```
#[macro_export]
macro_rules! conformance_main {
    ($factory:expr) => {
        fn main() -> ::std::process::ExitCode {
            $crate::__private::conformance_main(|| $factory)
        }
    };
}

/// Generates one `#[test]` per conformance case for a [`RegistryFactory`] expression.
///
/// Prefer [`conformance_main!`]: libtest cannot report a test as ignored once it runs, so here
/// a skipped case prints its reason and shows `ok`.
///
/// The tests are grouped in modules named after the case modules (`claims::…`,
/// `membership::…`); each builds the factory from the expression on a fresh two-worker tokio
/// runtime, runs its case in a fresh namespace, cleans the namespace up, and panics with the
/// message when the case fails. A skipped case prints its reason and passes (it fails instead
/// when the server is unreachable and `DCRON_TEST_REQUIRE=1`).
///
/// Kept for existing test targets; new ones use [`conformance_main!`].
///
/// The expression is evaluated inside each generated module, which glob-imports its parent:
/// anything in scope where the macro is invoked can be used.
///
/// ```no_run
/// # mod demo {
/// use std::sync::Arc;
/// use dcron_testkit::{async_trait, RegistryFactory};
///
/// struct MyFactory;
///
/// #[async_trait]
/// impl RegistryFactory for MyFactory {
///     fn name(&self) -> &'static str {
///         "mine"
///     }
///     async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn dcron_core::Registry>> {
///         # let _ = namespace;
///         # Err(dcron_core::Error::unavailable("demo"))
///         // connect a client to `namespace` here
///     }
/// }
///
/// dcron_testkit::conformance_tests!(MyFactory);
/// # }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__dcron_case_list!([$crate::__dcron_case_tests][$factory]);
    };
}

/// Expands a conformance case list into test modules (support for `conformance_tests!`).
#[doc(hidden)]
#[macro_export]
macro_rules! __dcron_case_tests {
    (
        [$factory:expr]
        $( $module:ident { $( $case:ident : $req:ident, $contract:literal; )* } )*
    ) => {
        $(
            #[allow(unused_imports)]
            mod $module {
                use super::*;
                $(
                    #[doc = $contract]
                    #[test]
                    fn $case() {
                        $crate::__private::run_test(
                            stringify!($module),
                            stringify!($case),
                            || $factory,
                        );
                    }
                )*
            }
        )*
    };
}

/// Expands a conformance case list into the `Vec<Case>` of [`cases`].
#[doc(hidden)]
#[macro_export]
macro_rules! __dcron_case_table {
    (
        []
        $( $module:ident { $( $case:ident : $req:ident, $contract:literal; )* } )*
    ) => {
        vec![
            $($(
                $crate::Case {
                    module: stringify!($module),
                    name: stringify!($case),
                    contract: $contract,
                    requires: $crate::Requirement::$req,
                    run: |cx| ::std::boxed::Box::pin($crate::$module::$case(cx)),
                },
            )*)*
        ]
    };
}

/// The one list of conformance cases: module, function, requirement and one-line contract.
/// Feeds both [`cases`] and [`conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __dcron_case_list {
    ([$($callback:tt)*] [$($args:tt)*]) => {
        $($callback)*! {
            [$($args)*]
            membership {
                fresh_namespace_lists_no_nodes: None,
                    "A fresh namespace lists no nodes.";
                register_then_list: None,
                    "A registered node is listed at once, by any client, with exactly the record registered.";
                node_record_round_trips: None,
                    "Every node field (name, ip, hostname, weight 0, status, times) round-trips.";
                two_nodes_listed: None,
                    "Two nodes registered by two clients are both listed by a third; unregistering one leaves the other.";
                zero_ttl_refused: None,
                    "Registering with a zero TTL is `InvalidArgument` and lists nothing.";
                expires_without_keep_alive: None,
                    "A node that is not kept alive disappears by itself within TTL + slack.";
                keep_alive_extends_life: None,
                    "Keep-alives keep a node listed past twice its TTL; it expires once they stop.";
                keep_alive_after_expiry_is_lease_lost: None,
                    "`keep_alive` on an expired lease is `LeaseLost` and does not bring the node back.";
                update_node_keeps_the_lease: None,
                    "`update_node` changes the record but keeps the lease: the node still expires without keep-alives.";
                update_node_after_expiry_is_lease_lost: None,
                    "`update_node` after expiry is `LeaseLost` and does not recreate the record.";
                unregister_removes_and_is_idempotent: None,
                    "`unregister` removes the node at once and releases the lease; twice, or after expiry, is `Ok`.";
                reregister_after_expiry: None,
                    "Re-registering after expiry gets a new lease id and is listed; the old lease stays `LeaseLost`.";
                keep_alive_and_update_race_keeps_the_lease: None,
                    "Keep-alives and status updates racing for twice the TTL keep the node listed; it still expires once both stop.";
                list_many_nodes: None,
                    "250 nodes registered concurrently by 5 clients are all listed, each once.";
                reregister_replaces_the_old_lease: None,
                    "Registering a live node id again replaces its record (listed once) and the old lease is `LeaseLost`.";
                granted_ttl_at_least_requested: None,
                    "The granted TTL of a lease (`Lease::ttl`) is never smaller than the requested TTL.";
                ttl_is_kept_within_tolerance: None,
                    "Without keep-alives a node is still listed at 0.8 of its granted TTL and gone within TTL + `expiry_tolerance(TTL)` (6 s or `min_ttl`: half or double TTL fails).";
                expired_nodes_are_never_listed: None,
                    "Once short-lived nodes expire, `list_nodes` lists exactly the live node, once, and the expired leases are `LeaseLost`.";
                stale_lease_leaves_the_newer_registration: None,
                    "After a re-registration, the old lease's `keep_alive` and `update_node` are `LeaseLost` and change nothing; `unregister` with it is `Ok` and leaves the newer registration.";
            }
            tasks {
                get_absent_is_none: None,
                    "`get_task` of an absent name is `None`; a fresh namespace lists no tasks.";
                record_fields_round_trip: None,
                    "Every record field (payload, time zone, misfire policy and window, one-shot flags, created_at) round-trips exactly.";
                create_only_refuses_existing: None,
                    "Create-only on an existing name is `AlreadyExists` and leaves the record unchanged.";
                create_only_refuses_tombstoned: None,
                    "Create-only on a tombstoned name is `Tombstoned` (without a record) or `AlreadyExists` (with one).";
                concurrent_create_only_one_wins: None,
                    "16 clients create the same name at once: exactly one succeeds, the others get `AlreadyExists`.";
                update_requires_a_live_record: None,
                    "`Update` is `NotFound` without a record, `Tombstoned` when tombstoned, and replaces a live record.";
                force_overwrites_and_clears_tombstone: None,
                    "`Force` creates or replaces the record and clears the tombstone.";
                tombstoned_record_still_readable: None,
                    "A tombstoned task's record is still returned by `get_task` and `list_tasks`.";
                list_two_thousand_tasks: None,
                    "2,000 tasks written concurrently are all listed, each exactly once.";
                names_with_every_character_class: None,
                    "Names with spaces, `:`, `*`, `?`, `#`, `@`, `%`, `.`, `..`, unicode and 200 bytes round-trip, stay distinct and are addressed exactly.";
                one_mib_payload_round_trips_or_is_refused: None,
                    "A 1 MiB payload round-trips, or is refused with `InvalidArgument` (per `max_value_bytes`) and nothing is written.";
                max_value_bytes_is_exact: SmallValues,
                    "A record of exactly `max_value_bytes` is stored; one byte more is `InvalidArgument` and changes nothing.";
            }
            tombstones {
                mark_deleted_without_a_record: None,
                    "`mark_deleted` works without a record: the tombstone is read and listed with its time; no record appears.";
                mark_deleted_is_idempotent: None,
                    "`mark_deleted` twice keeps the first time and the record.";
                reuse_clears_the_tombstone: None,
                    "`clear_tombstone` makes the record live again; without a tombstone it is `NotFound`.";
                cleanup_removes_record_tombstone_and_life: None,
                    "`cleanup_task` removes record, tombstone and life of the name and nothing of its neighbours; its claims stay until their retention ends.";
                cleanup_is_idempotent: None,
                    "`cleanup_task` twice, or of a name that never existed, is `Ok`.";
                concurrent_mark_deleted_keeps_one_time: None,
                    "Eight clients mark one name deleted at once with different times: one of them wins and stays.";
                list_tombstones_lists_all: None,
                    "150 tombstones are all listed, each once, with their times.";
                cleanup_all_empties_the_namespace: None,
                    "`cleanup_all` removes every record and tombstone of the namespace and keeps node registrations and claims.";
            }
            claims {
                sixteen_claimers_one_winner_per_fire: None,
                    "16 clients race on each of 100 fires: exactly one `Won` per fire, 100 wins in total.";
                concurrent_overlapping_batches: None,
                    "8 clients claim the same 50-fire batch at once, in different orders: one winner per fire.";
                batch_mixed_outcomes_in_order: None,
                    "A batch answers one outcome per fire, in order: claimed fires `Lost`, new ones `Won`.";
                empty_batch_answers_nothing: None,
                    "An empty batch answers an empty list.";
                claims_outlive_the_handler: None,
                    "A claim stays after its handler would have finished: listed, and every claim by another node is `Lost`.";
                instants_are_independent: None,
                    "Different instants of one task (even 1 ms apart) are independent fires.";
                tasks_are_independent: None,
                    "Claims, tombstones and cleanup of one task never affect another task (even one whose name extends it).";
                tombstoned_task_answers_tombstoned: None,
                    "A tombstoned task's fires answer `Tombstoned` and write nothing; the rest of the batch is unaffected.";
                reuse_makes_fires_claimable: None,
                    "After `clear_tombstone`, new fires of the name can be won, and fires claimed before the tombstone stay `Lost`.";
                fencing_tokens_nonzero_and_distinct: None,
                    "Fencing tokens are non-zero, distinct within a task, and match what `list_claims` shows.";
                list_claims_lists_a_thousand: None,
                    "1,000 claims of one task are all listed by `list_claims`, each once.";
                list_claims_names_the_winners: None,
                    "`list_claims` lists exactly the task's claims with the winning node ids.";
                retention_expiry_allows_a_new_claim: None,
                    "A claim disappears after its retention (plus slack) and the fire can be won again; longer ones stay.";
                cleanup_keeps_claims: None,
                    "`cleanup_task` keeps the claims until their retention ends: the fires claimed before are `Lost` in the next life; new ones are won.";
                force_and_update_keep_claims: None,
                    "`Update` and `Force` puts keep the name's claims: a fire held before a `Force` is still `Lost` to others in the new life.";
                mark_deleted_races_claimers: None,
                    "Claims racing with `mark_deleted`: every claim sent after `mark_deleted` returned is `Tombstoned`.";
                large_batch_of_500_fires: None,
                    "One batch of 500 fires over 25 tasks is decided completely: all `Won`, then all `Lost` from another client.";
                zero_retention_is_refused: None,
                    "A zero retention is `InvalidArgument`, alone or beside a valid request, and nothing of the batch is written.";
                retention_is_kept_within_tolerance: None,
                    "A claim is still listed and held at 0.9 of its retention and gone (unlisted, won by another, with a greater token) within retention + `expiry_tolerance` (half or double fails).";
                per_request_retentions_in_one_batch: None,
                    "Each request of a batch keeps its own retention: the short one expires within its bound while the long ones beside it stay.";
                expired_claims_are_never_listed: None,
                    "`list_claims` never lists an expired claim and lists each claim once, also a fire won again after its claim expired.";
                fencing_tokens_increase_across_cleanup_and_force: None,
                    "Tokens of one name increase strictly in claim order across `Update`, `Force` and `cleanup_task`; listed token, epoch and generation match.";
                names_never_collide: None,
                    "Claims of distinct names never collide (`a:b`, `a%3Ab`, `a.b`, `a..b`, `a b`, unicode, 200 bytes, prefixes): one claim each, tombstone and cleanup address one name.";
                one_bad_request_fails_alone: None,
                    "A request the registry cannot decide (an invalid name) fails alone: the call succeeds and the other fires of the batch are won.";
                claimant_is_idempotent: ExactlyOnce,
                    "The same claimant (node and epoch) claiming again gets `WonEarlier` with the same token; another epoch or node gets `Lost` naming the holder.";
                lost_reply_retry_of_a_mixed_batch: ExactlyOnce,
                    "Retrying a batch whose reply was lost answers `WonEarlier` with the same tokens, `Lost` for a fire won meanwhile, `Won` for a new one.";
                fire_twice_in_one_batch_is_decided_once: ExactlyOnce,
                    "A fire twice in one batch is decided once: `Won`, then `WonEarlier` with the same token; one claim retained.";
                lost_names_the_holder: ExactlyOnce,
                    "`Lost` names the node holding the fire, whoever asks.";
                superseded_for_a_stale_generation_or_no_life: ExactlyOnce,
                    "A claim without a life is `Superseded { current: None }`, of another generation `Superseded` with the current one; nothing is written.";
                tombstone_precedes_won_earlier: ExactlyOnce,
                    "Once a name is tombstoned, even the claimant holding a fire gets `Tombstoned`, not `WonEarlier`.";
                claims_survive_new_lives: ExactlyOnce,
                    "A claim ends only with its retention: after `cleanup_task`, `Force`, `restart_life` and `cleanup_all` its holder gets `WonEarlier` (same token) and others `Lost` naming it.";
                tokens_and_generations_increase_across_lives: ExactlyOnce,
                    "Tokens and generations of one name increase strictly across `restart_life`, `Force`, `cleanup_task` and `cleanup_all`; listings match.";
                late_claims_are_refused: Clock,
                    "A registry with a clock answers `Late` past the deadline and writes nothing, decides the rest of the batch, and answers a held fire (`WonEarlier`/`Lost`) after its deadline.";
            }
            lives {
                ensure_lives_creates_once: ExactlyOnce,
                    "`ensure_lives` starts a life once and answers it again, first live-since kept, from any client, in batch order.";
                racing_clients_get_the_same_life: ExactlyOnce,
                    "Eight clients racing to start one name's life all get the same life.";
                tombstoned_name_gets_a_life: ExactlyOnce,
                    "A tombstoned name gets a life; its claims stay `Tombstoned`.";
                create_and_force_start_a_new_life: ExactlyOnce,
                    "Create-only and `Force` puts start a new life at `created_at` with a greater generation (none without `created_at`); requests of the earlier life are `Superseded`.";
                update_and_tombstones_keep_the_life: ExactlyOnce,
                    "`Update`, `mark_deleted` and `clear_tombstone` keep the life; `clear_tombstone` keeps the claims.";
                cleanup_removes_the_life: ExactlyOnce,
                    "After `cleanup_task`, `ensure_lives` starts a new life with a greater generation.";
                restart_life_starts_a_new_life: ExactlyOnce,
                    "`restart_life` starts a new life (greater generation, its instant), clears the tombstone, keeps record and claims.";
                cleanup_all_removes_lives: ExactlyOnce,
                    "`cleanup_all` removes every life: later lives have greater generations and their own live-since.";
                lives_are_per_namespace: ExactlyOnce,
                    "A life in one namespace is invisible in another; restarting or cleaning one namespace leaves the other's.";
            }
            records {
                record_capability_is_honest: None,
                    "Records work, or every record call answers `Unsupported` as `capabilities.records` declares.";
                records_round_trip: Records,
                    "`put_records` writes a batch whole; each record reads back exactly from another client; a second put replaces one.";
                kinds_are_separate: Records,
                    "Pause, trigger and status are separate key spaces: one key in two kinds is two records.";
                record_keys_every_character_class: Records,
                    "Record keys with spaces, `:`, `@`, `%`, `.`, unicode and 256 bytes round-trip and stay distinct; bad keys are `InvalidArgument` and their batch writes nothing.";
                concurrent_delete_one_winner: Records,
                    "16 clients delete the same record at once: exactly one answers `true` (trigger-now runs once); a missing record answers `false`.";
                record_value_size_is_exact: Records,
                    "A record of exactly `max_value_bytes` is stored; one byte more is `InvalidArgument` and writes nothing.";
                list_five_hundred_records: Records,
                    "500 records written in one batch are all listed, each once.";
                cleanup_all_removes_records: Records,
                    "`cleanup_all` removes every record of the namespace and none of another namespace.";
            }
            watch {
                watch_capability_is_honest: None,
                    "Watches work, or both `watch_*` calls are `Unsupported` as `capabilities.watch` declares.";
                node_put_and_delete_delivered: Watch,
                    "Node register, status update and unregister are delivered (or a `Resync`) within `MAX_WATCH_DELAY` (3 s).";
                node_expiry_delivered: Watch,
                    "A node whose lease expires is delivered as `Delete` within TTL + `expiry_tolerance` + `MAX_WATCH_DELAY`.";
                task_put_delivered: Watch,
                    "Task create and update are delivered as `Put` with the new record within `MAX_WATCH_DELAY` (3 s).";
                tombstone_events_delivered: Watch,
                    "`mark_deleted` is delivered as `Tombstoned` and `clear_tombstone` as `TombstoneCleared` within `MAX_WATCH_DELAY` (3 s).";
                task_removed_delivered: Watch,
                    "`cleanup_task` of a record is delivered as `Removed` within `MAX_WATCH_DELAY` (3 s).";
                node_watch_converges: Watch,
                    "A node watcher that reads only after 100 registrations, updates and unregistrations converges to `list_nodes`.";
                dropped_watchers_do_not_block: Watch,
                    "20 watch streams opened and dropped never block writers; a new watcher still receives events.";
                cleanup_all_delivered: Watch,
                    "`cleanup_all` is delivered (per-name events or a `Resync`): the watcher's model ends empty.";
                task_events_never_go_back: Watch,
                    "Task events of one name arrive in the order of its changes: 20 quick versions of two tasks never go back (no stale duplicate).";
                node_events_never_go_back: Watch,
                    "Node events of one node arrive in the order of its changes: 20 quick record updates never go back (no stale duplicate).";
                late_reader_converges: Watch,
                    "A watcher that reads only after 500 writes, and one reading all along, converge to the listings (re-list on `Resync`); writers are never blocked.";
            }
            namespace {
                tasks_are_isolated: None,
                    "Task records of one namespace are invisible in another, even under the same name.";
                tombstones_are_isolated: None,
                    "Tombstones of one namespace are invisible in another and block nothing there.";
                claims_are_isolated: None,
                    "The same fire is won once in each namespace; claims and cleanup stay in their namespace.";
                nodes_are_isolated: None,
                    "Nodes registered in one namespace are not listed in another.";
                cleanup_all_stays_in_its_namespace: None,
                    "`cleanup_all` in one namespace leaves another's records, tombstones, claims and nodes intact.";
                prefix_namespaces_are_isolated: None,
                    "Namespaces whose names extend one another (`ns`, `ns-b`, `ns-x`, `ns/tasks`, `ns:tasks`, `ns.tasks`) see only their own records, tombstones, lives, claims and nodes; `cleanup_all` stays in one.";
                watches_are_isolated: Watch,
                    "A watcher sees no task or node event of another namespace, from both sides, including namespaces whose names extend its own.";
            }
            corrupt {
                list_reports_corrupt_and_keeps_good: RawWrites,
                    "`list_tasks` reports undecodable values in `corrupt` (keyed by name) and still returns every good record.";
                get_corrupt_is_corrupt_error: RawWrites,
                    "`get_task` of an undecodable value is `Error::Corrupt`; other names are unaffected.";
                corrupt_record_blocks_nothing_else: RawWrites,
                    "A corrupt record blocks nothing: create-only never overwrites it; claims, tombstone and cleanup of its name work.";
                force_put_repairs_corrupt: RawWrites,
                    "A `Force` put over a corrupt value repairs it.";
            }
            hostile {
                node_records: RawNode,
                    "Arbitrary bytes stored as a node record (oversized, not UTF-8, JSON of the wrong shape, huge numbers): every read path answers a value, a corrupt entry or `Error::Corrupt`, never panics; an oversized value is refused unread; a neighbour's records read back unchanged.";
                task_records: RawTask,
                    "Arbitrary bytes stored as a task record: every read path answers a value, a corrupt entry or `Error::Corrupt`; an oversized value is refused unread; a neighbour's records read back unchanged.";
                tombstones: RawTombstone,
                    "Arbitrary bytes stored as a tombstone: every read path answers a value, a corrupt entry or `Error::Corrupt`; an oversized value is refused unread; a neighbour's records read back unchanged.";
                claims: RawClaim,
                    "Arbitrary bytes stored as a claim: listings and new claims of the fire answer typed outcomes or `Error::Corrupt`, never panic; a neighbour's records read back unchanged.";
                lives: RawLife,
                    "Arbitrary bytes stored as a native life: `ensure_lives`, claims and listings answer typed outcomes or `Error::Corrupt`, never panic; a neighbour's records read back unchanged.";
                slots: RawSlot,
                    "Arbitrary bytes stored as a running slot: taking and releasing it answer typed outcomes or `Error::Corrupt`, never panic; a neighbour's slot and records read back unchanged.";
                pause_records: RawPause,
                    "Arbitrary bytes stored as a pause record: `get_record` and `list_records` answer bytes or `Error::Corrupt` (an oversized value is refused unread) and the core's decoder answers a typed error; a neighbour's records read back unchanged.";
                trigger_records: RawTrigger,
                    "Arbitrary bytes stored as a trigger-now record: reads answer bytes or `Error::Corrupt` (an oversized value is refused unread), decoding is typed; a neighbour's records read back unchanged.";
                status_records: RawStatus,
                    "Arbitrary bytes stored as a status record: reads answer bytes or `Error::Corrupt` (an oversized value is refused unread), decoding is typed; a neighbour's records read back unchanged.";
                life_records: RawLifeRecord,
                    "Arbitrary bytes stored as a life record: reads answer bytes or `Error::Corrupt` (an oversized value is refused unread), `ensure_lives` answers a life or a typed error; a neighbour's records read back unchanged.";
                a_node_keeps_firing_beside_hostile_values: RawTask,
                    "A running node keeps firing a static and a dynamic neighbour, each fire once, beside hostile values of every kind the factory writes.";
            }
            slots {
                slot_capability_is_honest: None,
                    "Running slots work, or both slot calls answer `Unsupported`, as `capabilities.slots` declares.";
                one_holder_per_task: Slots,
                    "A free slot is taken; the holder retrying its fire gets `Taken`; every other fire (another node's or the holder's own) gets `Held` naming holder and fire; tasks are independent.";
                release_frees_only_its_own: Slots,
                    "`release_slot` frees the slot only for its holder and fire; others' releases and a second release change nothing.";
                racing_nodes_one_winner_per_task: Slots,
                    "16 nodes race, all at once, for 20 slots: free, just released, and held by ended leases; exactly one `Taken` per task each time, every loser sees the winner.";
                slot_ends_with_the_lease: Slots,
                    "A slot ends with its holder's lease (unregister, re-registration, expiry within TTL + tolerance) and not before 0.8 of the TTL; a new lease inherits nothing.";
                keep_alive_keeps_the_slot: Slots,
                    "Keep-alives keep a slot held past twice the TTL.";
                ended_lease_cannot_take_a_slot: Slots,
                    "`acquire_slot` with an ended lease is `LeaseLost` and writes nothing.";
                cleanup_all_frees_slots_of_its_namespace: Slots,
                    "`cleanup_all` frees the namespace's slots and leaves another namespace's.";
            }
            faults {
                restart_keeps_records: Restart,
                    "After a server restart the registry answers again (retryable errors meanwhile) and records, tombstones and claims survive.";
                restart_node_comes_back: Restart,
                    "After a server restart a lease is alive or `LeaseLost`, and re-registering brings the node back.";
                expired_lease_then_reregister: ExpireLease,
                    "An expired session makes keep-alive and update `LeaseLost` and drops the node; re-registering brings it back.";
            }
            cluster {
                every_fire_once_through_join_and_leave: None,
                    "Dcron nodes joining and leaving gracefully: every fire runs exactly once, none is lost, every task has one owner.";
                crashed_node_is_taken_over_and_the_gap_caught_up: None,
                    "A crashed node's tasks move within TTL + slack + 2 s and the fires of the gap are caught up: each once, none missed.";
                dynamic_task_added_is_run_by_its_owner: None,
                    "A dynamic task added on one node gets one owner and runs once per occurrence.";
                marked_deleted_task_stops_everywhere: None,
                    "After `mark_task_deleted` on any node the task fires on no node.";
                one_shot_runs_once_cluster_wide: None,
                    "A one-shot task runs exactly once in the cluster, then is tombstoned.";
            }
            policies {
                pause_trigger_resume_cluster_wide: Records,
                    "Pause from an operator client stops a task on 3 nodes within a poll; trigger-now runs one extra fire exactly once; resume brings the schedule back.";
                status_is_stored_and_survives_a_handover: Records,
                    "The owner stores the task status; after the owner leaves, the stored run count continues and equals the executions.";
                retries_stay_with_the_claim: Records,
                    "A failed attempt is retried on the claiming node with the same token; retries claim nothing.";
                overlap_skip_holds_across_nodes: Records,
                    "With `OverlapPolicy::Skip`, a new owner starts no fire while the leaving owner's long run is in flight.";
                backfill_runs_only_unclaimed_fires: Records,
                    "`backfill` over a range runs exactly the occurrences of the task's life never claimed (those of a pause), none twice; a second backfill runs nothing.";
                schedule_once_runs_once_and_leaves_no_trace: None,
                    "`schedule_once` runs the handler once after the delay, on one node, and leaves no record or tombstone; its one claim stays until its retention ends.";
                timeouts_cut_slow_handlers: None,
                    "A handler running past its timeout is cut on whichever node runs it: `Error::Timeout` reaches the error handler, the fire ran once, later fires still run.";
            }
        }
    };
}

/// The README's case table, generated from [`cases`].
#[doc(hidden)]
pub fn case_table_markdown() -> String {
    let mut out = String::from("| case | contract | needs |\n|---|---|---|\n");
    for case in cases() {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            case.path(),
            case.contract.replace('|', "\\|"),
            case.requires.label()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const BEGIN: &str = "<!-- cases:begin -->\n";
    const END: &str = "<!-- cases:end -->";

    #[test]
    fn readme_table_lists_every_case() {
        let readme = include_str!("../README.md");
        let table = case_table_markdown();
        let (Some(begin), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
            panic!("README.md lacks the case table markers");
        };
        let current = &readme[begin + BEGIN.len()..end];
        if current != table {
            if std::env::var("DCRON_BLESS").is_ok_and(|v| v == "1") {
                let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
                let updated = format!(
                    "{}{}{}",
                    &readme[..begin + BEGIN.len()],
                    table,
                    &readme[end..]
                );
                if let Err(e) = std::fs::write(path, updated) {
                    panic!("cannot write {path}: {e}");
                }
            } else {
                panic!("README.md case table is stale; run DCRON_BLESS=1 cargo test -p dcron-testkit readme. Expected:\n{table}");
            }
        }
    }

    #[test]
    fn catalogue_is_well_formed() {
        let all = cases();
        assert!(all.len() >= 40, "only {} cases", all.len());
        let paths: BTreeSet<String> = all.iter().map(Case::path).collect();
        assert_eq!(paths.len(), all.len(), "case paths must be unique");
        for case in &all {
            assert!(
                case.contract.ends_with('.') && !case.contract.contains('\n'),
                "{}: the contract is one sentence ending with a period",
                case.path()
            );
        }
        let modules: BTreeSet<&str> = all.iter().map(|c| c.module).collect();
        for m in [
            "membership",
            "tasks",
            "tombstones",
            "claims",
            "watch",
            "namespace",
            "corrupt",
            "hostile",
            "faults",
        ] {
            assert!(modules.contains(m), "no case in {m}");
        }
    }
}
