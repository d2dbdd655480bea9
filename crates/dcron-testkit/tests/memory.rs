//! The conformance suite on `MemoryRegistry`, the reference registry.

use dcron_testkit::MemoryFactory;

dcron_testkit::conformance_tests!(MemoryFactory::new());
