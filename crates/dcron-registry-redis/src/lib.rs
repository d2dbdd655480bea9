//! Redis registry for dcron (not implemented yet).
//!
//! This crate will hold `RedisRegistry`, an implementation of `dcron_core::Registry` on
//! `deadpool-redis`: server-side key expiry for liveness, Lua scripts for every multi-key decision,
//! one round trip per batch of claims, and publish-on-write change notifications.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
