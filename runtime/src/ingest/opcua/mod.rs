//! OPC-UA ingestion: subscribes to monitored items on OPC-UA servers (building automation,
//! bigger controllers) with the `async-opcua` client and appends one JSON record per data
//! change to the server's log topic.
//!
//! Owns the `[opcua]` config section (`config.rs`), the mapping of a data change to a record
//! (`record.rs`) and the task of each server (`server.rs`: endpoint discovery, security,
//! session, subscription, healing, gaps, status and metrics).
//!
//! # The record
//! Topic `opcua.<server>` unless the server sets `topic`; key = the server name; value:
//! ```json
//! {"ts_ms": 1718000000000, "server": "plc-1", "node_id": "ns=2;s=Temperature",
//!  "name": "Temperature", "value": 21.5, "status": "good",
//!  "source_ts_ms": 1717999999950, "server_ts_ms": 1717999999990}
//! ```
//! `ts_ms` is when Outpost received the publish response; `name` is the item's configured
//! `name`, else the node's display name read once from the server; `value` is a JSON number,
//! boolean or string (arrays as arrays, times as RFC 3339 text, ids and names as their text
//! form, NaN/±inf as text); `status` is `good` or the status code's name
//! (`BadSensorFailure`, `UncertainLastUsableValue`…); the timestamps are null when the server
//! did not send them. All data changes of one publish response are stored with one append,
//! durable per the topic's policy.
//!
//! # Security
//! `security_policy = "none"` or `"basic256sha256"` with `security_mode = "sign"` or
//! `"sign_and_encrypt"`; anonymous or `username`/`password`. A secure endpoint needs
//! `pki_dir`: without `certificate_path`/`private_key_path` a self-signed client certificate
//! is created there on first use (`own/cert.der`, `private/private.pem`) and reused after.
//! The server's certificate must be in `<pki_dir>/trusted/` unless `trust_server_certificate`.
//!
//! # Healing
//! The session is driven by async-opcua's event loop, which Outpost configures to retry
//! forever with the `reconnect_backoff_*` waits: when the connection drops (TCP closed, or
//! three keep-alive reads in a row failed) it reconnects, first trying to *reactivate the old
//! session* (network blip: the server still holds it, nothing is created) and otherwise
//! creating a new one and transferring or recreating the subscription with all its monitored
//! items (server restart: the old session died with the server). So sessions never pile up on
//! the server. (async-opcua 0.19's fresh publish loop after a reconnect waits for a trigger
//! that was sent before it existed, so Outpost triggers publishing itself on every reconnect;
//! without it no data would flow again.) If setting up the session fails, or the server ends
//! the subscription, Outpost closes the session (deleting its subscription) and starts over
//! from endpoint discovery after backoff. On shutdown the session is closed and its
//! subscription deleted. Monitored items the server refuses (unknown node…) are listed in the
//! status (`refused_items`); the others work.
//!
//! # Status, gaps and metrics
//! Each server is one source `opcua:<server>` on the [`StatusBoard`]: connected, retrying with
//! the last error, or backpressured; records stored; gaps (the open one and the last ten
//! closed ones, from–to with the reason). An outage is a gap from the lost connection (or the
//! first failed attempt) to the moment the session and subscription are back. When the log
//! refuses an append (`StorageFull`: the disk budget) the records of that publish response are
//! not kept: the source shows `backpressured` and the interval is a gap counting the refused
//! records, so nothing is lost silently. Metrics: `outpost_opcua_records_stored_total{server}`,
//! `outpost_opcua_records_refused_total`, `outpost_opcua_publish_responses_total`,
//! `outpost_opcua_gaps_total`, `outpost_opcua_connected`, `outpost_opcua_connects_total{server,result}`,
//! `outpost_opcua_sessions_created_total`, `outpost_opcua_keep_alives_failed_total`.
//!
//! Every server runs on its own task, so a slow or dead server never delays another.

pub mod config;
pub mod record;
mod server;

pub use config::{ItemConfig, OpcuaConfig, SecurityMode, SecurityPolicy, ServerConfig};

use crate::kernel::Context;

/// Errors of the OPC-UA source.
#[derive(Debug, thiserror::Error)]
pub enum OpcuaError {
    /// The configuration is invalid (`key` is the dotted config key).
    #[error("invalid config key `{key}`: {problem}")]
    Config { key: String, problem: String },
    /// A server's task ended abnormally.
    #[error("the task of an OPC-UA server failed: {0}")]
    Task(String),
}

/// Validates `config`, registers every server on the context's source board and runs each on its own task until
/// the box stops. Returns once every task has stopped (with no servers: once shutdown
/// is requested).
pub fn run(
    ctx: &Context,
    config: OpcuaConfig,
) -> impl std::future::Future<Output = Result<(), OpcuaError>> {
    let (log, board, shutdown) = (&ctx.log, &ctx.sources, ctx.shutdown.clone());
    // Registered here, before the future is first polled: the status lists every configured
    // server from the moment the caller has this future.
    let tasks = config
        .validate()
        .map_err(|(key, problem)| OpcuaError::Config { key, problem })
        .map(|()| {
            config
                .servers
                .into_iter()
                .map(|server| server::ServerTask::new(server, log.clone(), board.clone()))
                .collect::<Vec<_>>()
        });
    async move {
        let runs: Vec<_> = tasks?
            .into_iter()
            .map(|task| task.run(shutdown.clone()))
            .collect();
        crate::ingest::join_tasks(runs, shutdown, "opcua")
            .await
            .map_err(OpcuaError::Task)
    }
}
