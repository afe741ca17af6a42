//! Ingestion: each source protocol is one module here (`mqtt`, `modbus`, `opcua`), appending
//! what devices send into log topics, acknowledging only after the append is durable.
//!
//! This file owns what sources share: the [`SourceStatus`] board that `/topics`, `/metrics` and
//! `outpost status` show (connected / retrying with the last error / counters / gaps).

pub mod gaps;
pub mod modbus;
pub mod modbus_sim;
pub mod mqtt;
pub mod opcua;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::log::{AppendAck, AppendFailed, Log, LogError, NewRecord};

/// The connection state of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Link {
    /// Not started yet.
    Starting,
    /// Connected and receiving.
    Connected,
    /// Disconnected; retrying after `last_error`.
    Retrying { last_error: String, attempts: u64 },
    /// Holding back because the log refuses appends (disk budget); nothing is dropped.
    Backpressured { reason: String },
    /// Stopped (shutdown or disabled).
    Stopped,
}

/// What one source reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceStatus {
    /// Source name from the config (unique across kinds), e.g. `mqtt:store-broker`.
    pub name: String,
    /// `mqtt`, `modbus`, `opcua`, `mqtt-listener`, …
    pub kind: String,
    pub link: Link,
    /// Records appended to the log (acknowledged as durable per topic policy).
    pub records_stored: u64,
    /// Messages/polls that failed to decode or were rejected (each logged).
    pub errors: u64,
    /// Polls or data intervals that were skipped (device down, backpressure), with the last gap.
    pub gaps: u64,
    /// Human-readable description of the last gap (`"12:00:05–12:00:41: connection refused"`).
    pub last_gap: Option<String>,
    /// Epoch ms of the last record stored.
    pub last_record_ms: Option<u64>,
    /// Free-form per-kind details (e.g. per-device state of a Modbus source).
    pub details: BTreeMap<String, serde_json::Value>,
}

impl SourceStatus {
    /// A fresh status in the `Starting` state.
    pub fn new(name: &str, kind: &str) -> SourceStatus {
        SourceStatus {
            name: name.to_string(),
            kind: kind.to_string(),
            link: Link::Starting,
            records_stored: 0,
            errors: 0,
            gaps: 0,
            last_gap: None,
            last_record_ms: None,
            details: BTreeMap::new(),
        }
    }
}

/// The shared board of source statuses. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<String, SourceStatus>>>,
}

impl StatusBoard {
    /// Registers a source (or resets it) and returns its name for later updates.
    pub fn register(&self, status: SourceStatus) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(status.name.clone(), status);
    }

    /// Applies `f` to the named source's status, if registered.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(status) = map.get_mut(name) {
            f(status);
        }
    }

    /// A snapshot of every source, sorted by name.
    pub fn snapshot(&self) -> Vec<SourceStatus> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }
}

/// Runs the per-device (or per-server) tasks of a source, each on its own task, until every
/// one has stopped; with none, waits for shutdown instead, so that the source can run as an
/// `outpost run` component either way. Returns the message of the first task that ended
/// abnormally.
pub(crate) async fn join_tasks(
    runs: impl IntoIterator<Item = impl std::future::Future<Output = ()> + Send + 'static>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    kind: &str,
) -> Result<(), String> {
    let mut tasks = tokio::task::JoinSet::new();
    for run in runs {
        tasks.spawn(run);
    }
    if tasks.is_empty() {
        let _ = shutdown.wait_for(|stop| *stop).await;
        return Ok(());
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(source = kind, error = %e, "A source task ended abnormally.");
            failure.get_or_insert(e.to_string());
        }
    }
    failure.map_or(Ok(()), Err)
}

/// One group of records bound for one log topic, with what its append returned: the records
/// handed back when it failed (empty after a success).
pub(crate) type GroupResult = (String, Vec<NewRecord>, Result<AppendAck, LogError>);

/// Appends each `(topic, records)` group with one append per topic, all concurrently on the
/// blocking pool (creating topics on first write), and hands every group back with its result so
/// the caller can hold acknowledgements and retry what failed. `None` when the blocking pool is
/// gone (the runtime is shutting down).
pub(crate) async fn append_groups(
    log: &Log,
    groups: Vec<(String, Vec<NewRecord>)>,
) -> Option<Vec<GroupResult>> {
    let mut pending = Vec::with_capacity(groups.len());
    for (topic, records) in groups {
        let log = log.clone();
        pending.push(tokio::task::spawn_blocking(move || {
            // A failed append hands the records back for a retry.
            let result = match log.topic_or_create(&topic) {
                Ok(t) => t.try_append(records),
                Err(error) => Err(AppendFailed { error, records }),
            };
            match result {
                Ok(ack) => (topic, Vec::new(), Ok(ack)),
                Err(AppendFailed { error, records }) => (topic, records, Err(error)),
            }
        }));
    }
    let mut results = Vec::with_capacity(pending.len());
    for handle in pending {
        results.push(handle.await.ok()?);
    }
    Some(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_updates_only_registered_sources() {
        let board = StatusBoard::default();
        board.register(SourceStatus::new("mqtt:a", "mqtt"));
        board.update("mqtt:a", |s| s.records_stored += 2);
        board.update("mqtt:missing", |s| s.records_stored += 1);
        let snap = board.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].records_stored, 2);
    }
}
