//! Built-in benchmarks run by `outpost bench …`. Each reports its figures next to a baseline
//! measured in the same run (raw `write`+`fsync`, native code, …), as ratios and medians.
//!
//! - [`log`]: `outpost bench log`, the log's append throughput against plain
//!   `write`+`fdatasync` at the same batch cadence.

pub mod log;
