//! The plugin host: partners' WebAssembly plugins run sandboxed (one wasmtime `Store` per
//! plugin, memory cap, CPU deadline, no filesystem/network/env), each as a durable consumer of
//! its input topics, emitting to its declared output topics and keeping key-value state in sled.
//!
//! - [`manifest`]: `plugin.toml`, what a plugin is granted.
//! - [`host`]: the shared engine, the minimal WASI preview 1, the ABI v1 host functions
//!   (`sdk/ABI.md`), limits and the compiled-module cache.
//! - [`runner`]: the durable consumer loop, dead-letter topic, quarantine.
//! - [`bundle`]: signed plugin bundles and ed25519 keys.
//! - [`registry`]: installed plugins on disk and their lifecycle (install, upgrade, remove).
//!
//! No `unwrap`/`expect`/`panic!` in library code of any of these: they handle bundles uploaded
//! over HTTP, files on disk and whatever a guest does. The rule is switched on here, once, for
//! every file below (tests may unwrap).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bundle;
pub mod host;
pub mod manifest;
pub mod registry;
pub mod runner;
