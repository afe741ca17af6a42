//! Outpost: a single-binary, WebAssembly-extensible edge appliance.
//!
//! The library holds every stage of the data path, one folder per stage (the rooms and the
//! arrows allowed between them: `docs/architecture.md`, guarded by `tests/architecture.rs`):
//! `kernel/` (what every component shares: the context, shutdown, status, backoff, clock),
//! `log/` (durable topics), `state/` (sled-backed offsets, plugin state, cursors, metadata),
//! the components `ingest/`, `plugins/`, `sink/`, `forward/`, `mirror/`, `simulate/`, the code
//! two of them share (`mqtt_client`; `contracts`, the store-event schemas every ingest path
//! checks), `api/` (HTTP), `cli/` (the client commands), `config`
//! (the one TOML file), `metrics` (the one registry) and `app` (wiring). `main.rs` only parses
//! the command line and calls in here; the library never prints to stdout except through the
//! client commands' explicit output writers.

// The public surface is explicit: an item is `pub` only if the crate exports it.
#![warn(unreachable_pub)]
#![cfg_attr(test, allow(unreachable_pub))]

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod contracts;
pub mod forward;
pub mod ingest;
pub mod kafka;
pub mod kernel;
pub mod log;
pub mod metrics;
pub mod mirror;
pub mod mqtt_client;
pub mod plugins;
pub mod simulate;
pub mod sink;
pub mod state;
