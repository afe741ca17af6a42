//! The client commands (`topics`, `produce`, `tail`, `status`) that talk to a running box
//! over HTTP.
//!
//! SKELETON: filled in by the foundation work.
