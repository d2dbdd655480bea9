//! Schedules: parsing and evaluation (being written).
