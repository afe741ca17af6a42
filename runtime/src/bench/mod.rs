//! Built-in benchmarks run by `outpost bench …`. Each reports its figures next to a baseline
//! measured in the same run (raw `write`+`fsync`, native code, …), as ratios and medians.
//!
//! SKELETON: filled in by the foundation work.
