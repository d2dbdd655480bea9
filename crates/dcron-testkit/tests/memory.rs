//! The conformance suite on `MemoryRegistry`, the reference registry (a `harness = false`
//! target: skipped cases are reported as ignored, with the reason).

use dcron_testkit::MemoryFactory;

dcron_testkit::conformance_main!(MemoryFactory::new());
