//! Conformance suite, simulator and chaos tools for dcron registries (not implemented yet).
//!
//! This crate will hold the case functions that define a correct `dcron_core::Registry`, the
//! factory trait and `conformance_tests!` macro that run them against any backend, the execution
//! ledger with its duplicate and miss checkers, and the deterministic cluster simulator.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
