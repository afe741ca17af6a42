//! Ingestion: each source protocol is one module here (`mqtt`, `modbus`, `opcua`), appending
//! what devices send into log topics, acknowledging only after the append is durable.
//!
//! This file owns what sources share: running per-device tasks and appending groups of records.
//! Their status lives on the kernel's [`crate::kernel::StatusBoard`].

// No unwrap/expect on data from devices, the network or the disk: errors are values here.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod gaps;
pub(crate) mod link_metrics;
pub mod modbus;
pub mod mqtt;
pub mod opcua;

use crate::kernel::Shutdown;
use crate::log::{AppendAck, AppendFailed, Log, LogError, NewRecord};

/// Runs the per-device (or per-server) tasks of a source, each on its own task, until every
/// one has stopped; with none, waits for shutdown instead, so that the source can run as an
/// `outpost run` component either way. Returns the message of the first task that ended
/// abnormally.
pub(crate) async fn join_tasks(
    runs: impl IntoIterator<Item = impl std::future::Future<Output = ()> + Send + 'static>,
    shutdown: Shutdown,
    kind: &str,
) -> Result<(), String> {
    let mut tasks = tokio::task::JoinSet::new();
    for run in runs {
        tasks.spawn(run);
    }
    if tasks.is_empty() {
        shutdown.requested().await;
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
