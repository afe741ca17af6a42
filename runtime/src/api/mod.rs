//! The HTTP API (axum): health, metrics, topics, produce and fetch.
//!
//! SKELETON: filled in by the foundation work.
