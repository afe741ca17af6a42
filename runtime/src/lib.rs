//! Outpost: a single-binary, WebAssembly-extensible edge appliance.
//!
//! The library holds every stage of the data path, one folder per stage (see
//! `ARCHITECTURE.md` in the shared docs): `log/` (durable topics), `state/` (sled-backed
//! offsets, plugin state, cursors, metadata), `api/` (HTTP), `cli/` (the client commands),
//! `config` (the one TOML file) and `metrics` (the one registry). `main.rs` only parses the
//! command line and calls in here; the library never prints to stdout except through the
//! client commands' explicit output writers.

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod forward;
pub mod ingest;
pub mod kernel;
pub mod log;
pub mod metrics;
pub mod mirror;
pub mod mqtt_client;
pub mod plugins;
pub mod simulate;
pub mod sink;
pub mod state;
