//! Wiring of `outpost run`: opens the log and state, starts every component, and shuts them
//! down in order on SIGTERM/SIGINT.
//!
//! SKELETON: filled in by the foundation work.
