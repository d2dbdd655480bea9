//! The dcron conformance suite against the shared ZooKeeper (`DCRON_TEST_ZK_CONNECT`), and its
//! fault cases against a ZooKeeper owned by the test (restart, expired session).

mod common;

use std::sync::Arc;

use common::ZkFactory;
use dcron_testkit::{cases, run_case, CaseError, RegistryFactory};

dcron_testkit::conformance_tests!(ZkFactory::shared());

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
