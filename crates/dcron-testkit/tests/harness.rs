//! The harness itself: skips, failures, panics and hooks are reported as they should be.

use std::sync::Arc;

use dcron_core::{Error, Registry};
use dcron_testkit::{
    async_trait, cases, run_all, run_case, servers_required, Case, CaseContext, CaseError,
    CaseResult, Hooks, MemoryFactory, RegistryFactory, Requirement,
};

/// A factory whose server is never reachable.
struct Unreachable;

#[async_trait]
impl RegistryFactory for Unreachable {
    fn name(&self) -> &'static str {
        "unreachable"
    }
    async fn open(&self, _namespace: &str) -> dcron_core::Result<Arc<dyn Registry>> {
        Err(Error::unavailable("connection refused (test)"))
    }
}

fn case(path: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.path() == path)
        .unwrap_or_else(|| panic!("no case {path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_skips_or_fails_when_required() {
    let outcome = run_case(Arc::new(Unreachable), &case("tasks::get_absent_is_none")).await;
    if servers_required() {
        assert!(matches!(outcome, Err(CaseError::Failed(_))), "{outcome:?}");
    } else {
        assert!(matches!(outcome, Err(CaseError::Skipped(_))), "{outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_reports_every_case() {
    let summary = run_all(Unreachable).await;
    let total = summary.passed.len() + summary.failed.len() + summary.skipped.len();
    assert_eq!(total, cases().len());
    assert!(summary.passed.is_empty());
    assert_eq!(summary.is_success(), !servers_required());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_hook_is_a_skip() {
    let outcome = run_case(
        Arc::new(MemoryFactory::new()),
        &case("faults::restart_keeps_records"),
    )
    .await;
    match outcome {
        Err(CaseError::Skipped(reason)) => assert!(reason.contains("restart_server"), "{reason}"),
        other => panic!("expected a skip, got {other:?}"),
    }
    assert_eq!(
        case("faults::restart_keeps_records").requires,
        Requirement::Restart
    );
}

fn panicking(_cx: &CaseContext) -> futures::future::BoxFuture<'_, CaseResult> {
    Box::pin(async { panic!("boom in a case") })
}

fn failing(cx: &CaseContext) -> futures::future::BoxFuture<'_, CaseResult> {
    Box::pin(async move {
        let reg = cx.open().await?;
        reg.put_task(
            &dcron_testkit::task_meta("left-behind", "@hourly"),
            dcron_core::PutMode::CreateOnly,
        )
        .await?;
        dcron_testkit::ensure!(1 + 1 == 3, "arithmetic in {}", cx.namespace());
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_case_fails_with_its_message() {
    let custom = Case {
        module: "custom",
        name: "panics",
        contract: "Panics.",
        requires: Requirement::None,
        run: panicking,
    };
    match run_case(Arc::new(MemoryFactory::new()), &custom).await {
        Err(CaseError::Failed(msg)) => assert!(msg.contains("boom in a case"), "{msg}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_case_is_cleaned_up() {
    let store = dcron_core::memory::MemoryRegistry::new();
    let custom = Case {
        module: "custom",
        name: "fails",
        contract: "Fails.",
        requires: Requirement::None,
        run: failing,
    };
    let outcome = run_case(Arc::new(MemoryFactory::on_store(&store)), &custom).await;
    let Err(CaseError::Failed(msg)) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(msg.contains("arithmetic in dcron-test-custom"), "{msg}");
    // The namespace named in the message was emptied after the failure.
    let namespace = msg
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    let leftover = store.with_namespace(&namespace).list_tasks().await;
    assert!(
        matches!(leftover, Ok(ref l) if l.items.is_empty()),
        "{leftover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_unique_per_case_run() {
    let factory: Arc<dyn RegistryFactory> = Arc::new(MemoryFactory::new());
    let a = CaseContext::new(factory.clone(), "same::case");
    let b = CaseContext::new(factory, "same::case");
    assert_ne!(a.namespace(), b.namespace());
    assert!(a.other_namespace().starts_with(a.namespace()));
    assert_ne!(a.other_namespace(), a.namespace());
}

#[test]
fn requirements_follow_capabilities_and_declared_hooks() {
    let caps = dcron_core::Capabilities::default();
    assert_eq!(Requirement::None.unmet(&caps, Some(Hooks::none())), None);
    assert!(Requirement::ExactlyOnce.unmet(&caps, None).is_some());
    assert!(Requirement::Clock.unmet(&caps, None).is_some());
    assert_eq!(Requirement::Watch.unmet(&caps, None), None);
    let full = dcron_core::Capabilities::default()
        .with_exactly_once()
        .with_clock()
        .with_records();
    for req in [
        Requirement::ExactlyOnce,
        Requirement::Clock,
        Requirement::Records,
        Requirement::SmallValues,
    ] {
        assert_eq!(req.unmet(&full, None), None, "{req:?}");
    }
    let huge = dcron_core::Capabilities::with_max_value_bytes(512 * 1024 * 1024);
    assert!(Requirement::SmallValues.unmet(&huge, None).is_some());
    // Undeclared hooks are assumed present (found out at run time); declared ones decide.
    assert_eq!(Requirement::Restart.unmet(&caps, None), None);
    let reason = Requirement::Restart.unmet(&caps, Some(Hooks::none().with_expire_lease()));
    assert!(reason.is_some_and(|r| r.contains("restart_server")));
    assert_eq!(
        Requirement::ExpireLease.unmet(&caps, Some(Hooks::none().with_expire_lease())),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmet_requirement_skips_before_the_case_runs() {
    // The memory factory has no clock: the clock case is skipped without running.
    let outcome = run_case(
        Arc::new(MemoryFactory::new()),
        &case("claims::late_claims_are_refused"),
    )
    .await;
    match outcome {
        Err(CaseError::Skipped(reason)) => assert!(reason.contains("clock"), "{reason}"),
        other => panic!("expected a skip, got {other:?}"),
    }
}
