//! Built-in benchmarks run by `outpost bench …`. Each reports its figures next to a baseline
//! measured in the same run (raw `write`+`fsync`, native code, …), as ratios and medians.
//!
//! - [`forward`]: `outpost bench forward`, draining a backlog to Kafka against librdkafka
//!   producing the same records directly (confluent-kafka).
//! - [`kafka`]: `outpost bench kafka`, the Kafka listener under confluent-kafka's producer and
//!   consumer, against the same producer on tansu.
//! - [`log`]: `outpost bench log`, the log's append throughput against plain
//!   `write`+`fdatasync` at the same batch cadence.
//! - [`mqtt`]: `outpost bench mqtt`, QoS 1 ingest through the embedded broker (messages/s and
//!   publish-to-durable latency) and the payment → fraud-score → verdict round trip.
//! - [`plugins`]: `outpost bench plugins`, the bundled fraud-score plugin in wasm against the
//!   same logic built natively, and the per-record overhead of a do-nothing plugin.

/// Why a benchmark did not run: bad arguments (the CLI exits 2) or a failure while running
/// (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An argument is out of range or malformed; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The benchmark failed while running.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

pub mod forward;
pub mod kafka;
pub mod log;
pub mod mqtt;
pub mod plugins;
