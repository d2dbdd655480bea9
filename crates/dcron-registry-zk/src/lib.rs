//! ZooKeeper registry for dcron (not implemented yet).
//!
//! This crate will hold `ZkRegistry`, an implementation of `dcron_core::Registry` on
//! `zookeeper-async`: ephemeral znodes for membership, `multi` transactions for create-only writes,
//! create-if-absent znodes for claims, and watches re-armed after every trigger.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
