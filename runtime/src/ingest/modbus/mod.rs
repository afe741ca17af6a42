//! Modbus ingestion: polls fridge and HVAC controllers and energy meters over Modbus TCP or
//! RTU (serial, RS-485) and appends one JSON record per poll to the device's log topic.
//!
//! Owns the `[modbus]` config section (`config.rs`), the decoding of registers into typed
//! values (`decode.rs`), the grouping of a register map into as few reads as possible
//! (`plan.rs`), the serial port (`serial.rs`) and the polling task of each device
//! (`poller.rs`: timeouts, busy retries, backoff, reconnects, gaps, status and metrics).
//!
//! # The record
//! Topic `sensors.<device>` unless the device sets `topic`; key = the device name; value:
//! ```json
//! {"ts_ms": 1718000000000, "device": "fridge-1",
//!  "values": {"temperature": 4.2, "door_open": false, "energy_wh": 120345},
//!  "quality": "good", "units": {"temperature": "°C", "energy_wh": "Wh"}}
//! ```
//! `ts_ms` is when the poll started. `quality` is `good` when every value was read,
//! `uncertain` when some requests were answered with an exception or a value could not be
//! decoded (those values are missing and `errors` lists why), `bad` when none could be read.
//! A poll that reaches no device (timeout, connection refused) stores no record: it opens a gap
//! in the device's status instead. With `on_change = true` a record is stored only when a value
//! or the quality changed, or every `heartbeat_polls` polls.
//!
//! # Status and metrics
//! Each device is one source `modbus:<device>` on the [`StatusBoard`]: connected, retrying
//! with the last error, or backpressured; records stored; gaps (the open one and the last ten
//! closed ones, from–to with the reason); request, busy-retry and connect counters. Metrics:
//! `outpost_modbus_polls_total{device,result}`, `outpost_modbus_poll_seconds{device}`,
//! `outpost_modbus_requests_total{device,result}`, `outpost_modbus_records_stored_total`,
//! `outpost_modbus_gaps_total`, `outpost_modbus_connected`, `outpost_modbus_connects_total`.
//!
//! Every device runs on its own task, so a slow or dead device never delays another.

pub mod config;
pub mod decode;
pub mod plan;
mod poller;
pub mod serial;

pub use config::{
    DeviceConfig, ModbusConfig, Order, Parity, PointConfig, RegisterKind, Transport, ValueType,
};

use crate::kernel::Context;

/// Errors of the Modbus source.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// The configuration is invalid (`key` is the dotted config key).
    #[error("invalid config key `{key}`: {problem}")]
    Config { key: String, problem: String },
    /// A device's polling task ended abnormally.
    #[error("the polling task of a Modbus device failed: {0}")]
    Task(String),
}

/// Validates `config`, registers every device on the context's source board and polls each on its own task until
/// the box stops. Returns once every task has stopped (with no devices: once shutdown
/// is requested, so that it can run as an `outpost run` component either way).
pub fn run(
    ctx: &Context,
    config: ModbusConfig,
) -> impl std::future::Future<Output = Result<(), ModbusError>> {
    let (log, board, shutdown) = (&ctx.log, &ctx.sources, ctx.shutdown.clone());
    // Registered here, before the future is first polled: the status lists every configured
    // device from the moment the caller has this future.
    let tasks = config
        .validate()
        .map_err(|(key, problem)| ModbusError::Config { key, problem })
        .map(|()| {
            config
                .devices
                .into_iter()
                .map(|device| poller::Poller::new(device, log.clone(), board.clone()))
                .collect::<Vec<_>>()
        });
    async move {
        let runs: Vec<_> = tasks?
            .into_iter()
            .map(|task| task.run(shutdown.clone()))
            .collect();
        crate::ingest::join_tasks(runs, shutdown, "modbus")
            .await
            .map_err(ModbusError::Task)
    }
}
