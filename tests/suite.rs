//! Outpost's integration tests, one test crate: every `tests/<area>.rs` is a module here (the
//! crate root's modules sit beside it, so the files keep their paths), and `common/` holds the
//! helpers they share. One binary links wasmtime, librdkafka and jemalloc once instead of once
//! per file. A test's name carries its module: `cargo test -p outpost --test suite log_crash::`
//! runs one area.
//!
//! Everything here shares one process: a test never relies on process isolation. Metrics in
//! `outpost::metrics::global()` are asserted by series labels unique to the test (or by a
//! difference), tests do not set environment variables or change the current directory, and
//! a test that runs a test of this binary as a child names it with `common::test_name`.

mod common;

mod api_hardening;
mod api_socket;
mod architecture;
mod cli;
mod exact_numbers;
mod forward_kafka;
mod ingest_contracts;
mod kafka_listener;
mod log_corruption;
mod log_crash;
mod log_disk_full;
mod log_eviction;
mod log_model;
mod log_power_cut;
mod mirror_plugin;
mod modbus_pymodbus;
mod modbus_simulated;
mod mqtt_embedded;
mod mqtt_external;
mod mqtt_hardening;
mod opcua_asyncua;
mod plugins_e2e;
mod plugins_host_failure;
mod plugins_hostile;
mod plugins_lifecycle;
mod plugins_settings;
mod readiness;
mod simulate;
mod state_durability;
mod state_identity;
