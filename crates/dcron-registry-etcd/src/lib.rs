//! etcd registry for dcron (not implemented yet).
//!
//! This crate will hold `EtcdRegistry`, an implementation of `dcron_core::Registry` on
//! `etcd-client`: node keys attached to a kept-alive lease, transactions over `create_revision`
//! for create-only writes and claims, and watches resumed from the revision of their snapshot.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
