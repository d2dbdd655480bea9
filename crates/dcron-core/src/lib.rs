//! dcron core (being written).
#![deny(missing_docs)]
#![forbid(unsafe_code)]
