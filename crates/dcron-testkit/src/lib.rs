#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod claims;
pub mod harness;
pub mod ledger;
pub mod runner;

pub use async_trait::async_trait;
pub use harness::{
    instant, node_listed, now_millis, servers_required, wait_until, CaseContext, CaseError,
    CaseResult, RegistryFactory, REQUIRE_ENV,
};
pub use ledger::{check, expected_fires, Duplicate, Execution, Ledger, Report};
#[doc(hidden)]
pub use runner::__private;
pub use runner::{cases, run_all, run_case, Case, CaseFn, Requirement, Summary, CASE_TIMEOUT};

/// Generates one `#[test]` per conformance case for a [`RegistryFactory`] expression.
///
/// The tests are grouped in modules named after the case modules (`claims::…`,
/// `membership::…`); each builds the factory from the expression on a fresh two-worker tokio
/// runtime, runs its case in a fresh namespace, cleans the namespace up, and panics with the
/// message when the case fails. A skipped case prints its reason and passes (it fails instead
/// when the server is unreachable and `DCRON_TEST_REQUIRE=1`).
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
            claims {
                sixteen_claimers_one_winner_per_fire: None,
                    "16 clients race on each of 100 fires: exactly one `Won` per fire, 100 wins in total.";
                concurrent_overlapping_batches: None,
                    "8 clients claim the same 50-fire batch at once, in different orders: one winner per fire.";
                batch_mixed_outcomes_in_order: None,
                    "A batch answers one outcome per fire, in order: claimed fires `Lost`, new ones `Won`.";
                duplicate_fire_in_batch_first_wins: None,
                    "The same fire twice in one batch: the first is `Won`, the repeats `Lost`.";
                empty_batch_answers_nothing: None,
                    "An empty batch answers an empty list.";
                claims_outlive_the_handler: None,
                    "A claim stays after its handler would have finished: listed, and every re-claim is `Lost`.";
                instants_are_independent: None,
                    "Different instants of one task (even 1 ms apart) are independent fires.";
                tasks_are_independent: None,
                    "Claims and cleanup of one task never affect another task (even one whose name extends it).";
                tombstoned_task_answers_tombstoned: None,
                    "A tombstoned task's fires answer `Tombstoned` and write nothing; the rest of the batch is unaffected.";
                reuse_makes_fires_claimable: None,
                    "After `clear_tombstone`, the name's fires can be won again.";
                fencing_tokens_nonzero_and_distinct: None,
                    "Fencing tokens are non-zero, distinct within a task, and match what `list_claims` shows.";
                list_claims_names_the_winners: None,
                    "`list_claims` lists exactly the task's claims with the winning node ids.";
                retention_expiry_allows_a_new_claim: None,
                    "A claim disappears after its retention (plus slack) and the fire can be won again; longer ones stay.";
                cleanup_frees_claims: None,
                    "`cleanup_task` removes the claims: the same fires can be won again.";
                force_put_clears_claims_update_keeps_them: None,
                    "A `Force` put removes the name's claims; an `Update` put keeps them.";
            }
        }
    };
}
