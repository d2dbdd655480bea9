//! Consul registry for dcron (not implemented yet).
//!
//! This crate will hold `ConsulRegistry`, an implementation of `dcron_core::Registry` over Consul's
//! HTTP API with `reqwest`: TTL sessions with `behavior=delete`, check-and-set and `/v1/txn`
//! writes, and blocking queries for watches.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
