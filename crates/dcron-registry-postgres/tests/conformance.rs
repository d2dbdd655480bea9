//! The dcron conformance suite against the shared PostgreSQL server (`DCRON_TEST_POSTGRES_URL`;
//! `scripts/services/postgres.sh` starts one). Unreachable → every case is skipped with the
//! reason printed, or fails under `DCRON_TEST_REQUIRE=1`. The server-restart cases need a server
//! the harness owns: they run in `tests/owned_server.rs`.

mod common;

use common::SharedServer;

dcron_testkit::conformance_main!(SharedServer::new());
