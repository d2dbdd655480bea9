//! The fault cases against a ZooKeeper owned by the test (restart, expired session), and the
//! contract cases again on an owned ZooKeeper without TTL znodes (claims collected by the
//! sweeper). The suite itself on the shared server is `tests/conformance.rs`.

mod common;

use std::sync::Arc;

use common::ZkFactory;
use dcron_testkit::{cases, run_case, CaseError, RegistryFactory};
use futures::StreamExt;

/// The fault cases (`faults::*`) on a server this test starts, restarts and kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_an_owned_server() {
    let Some(factory) = ZkFactory::owned().await else {
        return;
    };
    let factory: Arc<dyn RegistryFactory> = Arc::new(factory);
    let mut ran = 0;
    for case in cases().into_iter().filter(|c| c.module == "faults") {
        match run_case(factory.clone(), &case).await {
            Ok(()) => ran += 1,
            Err(CaseError::Skipped(reason)) => {
                panic!("{} skipped on an owned server: {reason}", case.path())
            }
            Err(CaseError::Failed(msg)) => panic!("{} FAILED: {msg}", case.path()),
        }
    }
    assert!(ran >= 3, "expected the fault cases to run, ran {ran}");
}

/// The registry contract cases on a server without TTL znodes (`extendedTypesEnabled=false`):
/// claims are persistent znodes, expiry is judged against the server's clock and the sweeper
/// only collects. The cluster cases (which run `Dcron` nodes) are left to the shared server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_cases_without_ttl_znodes() {
    let Some(factory) = ZkFactory::owned_with(false).await else {
        return;
    };
    let factory: Arc<dyn RegistryFactory> = Arc::new(factory);
    let contract: Vec<_> = cases()
        .into_iter()
        .filter(|c| !matches!(c.module, "cluster" | "policies" | "faults"))
        .collect();
    let results: Vec<(String, Result<(), CaseError>)> = futures::stream::iter(contract)
        .map(|case| {
            let factory = factory.clone();
            async move { (case.path(), run_case(factory, &case).await) }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut ran = 0;
    for (path, result) in results {
        match result {
            Ok(()) => ran += 1,
            Err(CaseError::Skipped(reason)) => println!("{path} skipped: {reason}"),
            Err(CaseError::Failed(msg)) => failed.push(format!("{path}: {msg}")),
        }
    }
    assert!(
        failed.is_empty(),
        "without TTL znodes:\n{}",
        failed.join("\n")
    );
    assert!(ran >= 60, "expected the contract cases to run, ran {ran}");
}
