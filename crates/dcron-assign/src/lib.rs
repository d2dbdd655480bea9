//! dcron assignment strategies (being written).
#![deny(missing_docs)]
#![forbid(unsafe_code)]
