//! `MemoryRegistry`: the in-process registry (being written).
