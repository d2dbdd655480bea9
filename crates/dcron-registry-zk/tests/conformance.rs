//! The dcron conformance suite against the shared ZooKeeper (`DCRON_TEST_ZK_CONNECT`): one
//! trial per case (a `harness = false` target, so skipped cases show as ignored, with the
//! reason). `tests/owned.rs` runs the fault cases and a server without TTL znodes.

mod common;

dcron_testkit::conformance_main!(common::ZkFactory::shared());
