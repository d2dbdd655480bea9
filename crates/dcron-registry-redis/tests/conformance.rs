//! The dcron conformance suite against the shared Redis server (`DCRON_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`; `scripts/test` starts one), one trial per case (a `harness = false`
//! target: a skipped case shows as ignored with its reason). Unreachable → every case is
//! ignored, or fails under `DCRON_TEST_REQUIRE=1`. The server-restart cases need a server the
//! harness owns: they run in `tests/owned_server.rs`.

mod common;

use common::SharedServer;

dcron_testkit::conformance_main!(SharedServer::new());
