//! Runnable dcron programs; see `examples/README.md` for the list.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
