//! The Kafka protocol listener: existing Kafka clients and tools (librdkafka and `kcat`, the
//! Java client, kafka-python, kafkajs) produce to and consume from the box's log as if it were
//! a one-broker Kafka cluster.
//!
//! It is a component of the box's context like the MQTT listener: it depends on the log, the
//! state store, the kernel and its own `[kafka]` section. The log stays the storage: one local
//! topic is one Kafka topic with one partition (0), and Kafka offsets are the log's offsets.
//! The encodings come from the `kafka-protocol` crate (generated from Kafka 4.1's schemas);
//! this module decides what the box answers (`handlers.rs`) and how records map
//! (`records.rs`).
//!
//! # Connections
//! A client sends size-prefixed requests; the box answers each in order, one at a time per
//! connection (as a Kafka broker does: a long-polling Fetch holds the connection's later
//! requests). A frame larger than `kafka.max_request_bytes`, a header that does not decode, an
//! API the box does not serve or a version outside what `ApiVersions` advertised closes that
//! connection with a log line naming the client and the reason; the box and its other
//! connections go on. `ApiVersions` at a version the box does not know is answered as Kafka
//! does: version 0 with `UNSUPPORTED_VERSION` and the supported ranges, so the client can
//! negotiate down.
//!
//! # What is served (see `handlers.rs` for the versions)
//! ApiVersions, Metadata (auto-creating topics as `log.auto_create_topics` allows), Produce
//! (acks 0, 1 and all; record batches v2 with gzip, snappy, lz4 or zstd; `max.message.bytes`
//! is `log.max_record_bytes`; the store-event contracts apply as on HTTP and MQTT), Fetch (long
//! poll on the log's own wait), ListOffsets (earliest, latest, by timestamp), FindCoordinator,
//! OffsetCommit and OffsetFetch (group offsets in the state store), and consumer groups
//! (JoinGroup, SyncGroup, Heartbeat, LeaveGroup; `groups.rs`), idempotent producers
//! (InitProducerId; `producers.rs`), and the admin APIs tools need (`admin.rs`). Not yet:
//! transactions, SASL and TLS — clients are told by `ApiVersions`.

mod admin;
mod groups;
mod handlers;
mod producers;
mod records;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::contracts::Contracts;
use crate::kernel::{Backoff, Context, Link, Readiness, Shutdown};

/// The `[kafka]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Run the Kafka listener.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// IP:PORT Kafka clients connect to (`bootstrap.servers`). Environment:
    /// `OUTPOST_KAFKA_LISTEN`. Loopback by default, like every listener of the box.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// HOST:PORT the box names as its one broker in Metadata, where clients connect after the
    /// bootstrap; default: the address the listener bound (a wildcard address named as
    /// 127.0.0.1). Set it when clients reach the box by another name.
    #[serde(default)]
    pub advertised: Option<String>,
    /// Largest request frame accepted, in bytes (Kafka's `socket.request.max.bytes`); a larger
    /// one closes the connection.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Client connections at once, at most; more are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:9092".into()
}
fn default_max_request_bytes() -> usize {
    100 << 20
}
fn default_max_connections() -> usize {
    1000
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            enabled: true,
            listen: default_listen(),
            advertised: None,
            max_request_bytes: default_max_request_bytes(),
            max_connections: default_max_connections(),
        }
    }
}

impl KafkaConfig {
    /// Checks the section; the error is `(dotted key, problem and fix)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err((
                "kafka.listen".into(),
                format!(
                    "{:?} is not an IP:PORT address; use e.g. \"127.0.0.1:9092\"",
                    self.listen
                ),
            ));
        }
        if let Some(advertised) = &self.advertised {
            let ok = advertised
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err((
                    "kafka.advertised".into(),
                    format!("{advertised:?} is not HOST:PORT; use e.g. \"outpost.local:9092\""),
                ));
            }
        }
        if !(1024..=1 << 30).contains(&self.max_request_bytes) {
            return Err((
                "kafka.max_request_bytes".into(),
                format!(
                    "{} is out of range; set it between 1024 and {}",
                    self.max_request_bytes,
                    1u64 << 30
                ),
            ));
        }
        if !(1..=100_000).contains(&self.max_connections) {
            return Err((
                "kafka.max_connections".into(),
                format!(
                    "{} is out of range; set it between 1 and 100000",
                    self.max_connections
                ),
            ));
        }
        Ok(())
    }
}

/// The listener's name on the sources board (`outpost status`, `/topics`).
const STATUS_NAME: &str = "kafka";
/// What the box's readiness waits for while the listener's port is not bound.
pub const READY_CONDITION: &str = "kafka listener";

/// Binds the listener's port, or says why not (the component then retries in the
/// background and the box is not ready until it binds).
pub async fn bind(config: &KafkaConfig, ready: &Readiness) -> Option<TcpListener> {
    match TcpListener::bind(&config.listen).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::error!(kafka_listen = %config.listen, error = %e, "The Kafka listener cannot bind its port; retrying in the background.");
            ready.wait_for(READY_CONDITION);
            None
        }
    }
}

/// The counters of the listener, kept where the counting happens.
#[derive(Debug, Clone)]
struct Counters {
    connections: crate::metrics::Counter,
    refused_connections: crate::metrics::Counter,
    closed_on_error: crate::metrics::Counter,
    requests: crate::metrics::Counter,
    produced: crate::metrics::Counter,
    fetched: crate::metrics::Counter,
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    ctx: Context,
    config: KafkaConfig,
    contracts: Contracts,
    /// The broker's address as Metadata and FindCoordinator name it.
    advertised: (String, i32),
    counters: Counters,
    open: std::sync::atomic::AtomicUsize,
    /// Client software names and versions seen in ApiVersions (`name/version`), for status.
    clients: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The consumer groups this box coordinates.
    groups: groups::Coordinator,
    /// Idempotent producers' ids and sequences.
    producers: Arc<producers::Producers>,
}

/// Runs the listener until shutdown: binds `config.listen` unless `bound` is given (retrying
/// with backoff while the port is taken), then serves every connection on its own task.
pub async fn run(
    ctx: Context,
    config: KafkaConfig,
    bound: Option<TcpListener>,
    contracts: Contracts,
) -> Result<(), std::io::Error> {
    let shutdown = ctx.shutdown.clone();
    let counters = ctx.sources.register(STATUS_NAME, "kafka-listener", |s| {
        s.set_info("listen", config.listen.clone());
        Counters {
            connections: s.counter("connections_total", "Kafka client connections accepted."),
            refused_connections: s.counter(
                "refused_connections_total",
                "Kafka client connections closed at once because `kafka.max_connections` were open.",
            ),
            closed_on_error: s.counter(
                "closed_on_error_total",
                "Kafka client connections the box closed on a bad frame or an API it does not serve.",
            ),
            requests: s.counter("requests_total", "Kafka requests answered."),
            produced: s.counter("produced_total", "Records stored from Kafka produce requests."),
            fetched: s.counter("fetched_total", "Records sent in Kafka fetch responses."),
        }
    });
    let listener = match bound {
        Some(listener) => listener,
        None => match bind_with_retry(&ctx, &config, &shutdown).await {
            Some(listener) => listener,
            None => return Ok(()),
        },
    };
    let local = listener.local_addr()?;
    ctx.ready.done(READY_CONDITION);
    let advertised = advertised_address(&config, local);
    ctx.sources.update(STATUS_NAME, |s| {
        s.set_link(Link::Connected);
        s.set_info("listen", local.to_string());
        s.set_info("advertised", format!("{}:{}", advertised.0, advertised.1));
    });
    tracing::info!(kafka_listen = %local, advertised = %format!("{}:{}", advertised.0, advertised.1), "The Kafka listener accepts clients.");
    let shared = Arc::new(Shared {
        ctx,
        config,
        contracts,
        advertised,
        counters,
        open: Default::default(),
        clients: Default::default(),
        groups: Default::default(),
        producers: Default::default(),
    });
    let mut connections = JoinSet::new();
    // The groups' lag moves with every append: refreshed in the status every few seconds.
    let mut lag_tick = tokio::time::interval(Duration::from_secs(5));
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.requested() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = lag_tick.tick() => {
                handlers::publish_groups(&shared);
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "The Kafka listener could not accept a connection.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        use std::sync::atomic::Ordering;
        if shared.open.load(Ordering::Acquire) >= shared.config.max_connections {
            shared.counters.refused_connections.inc();
            tracing::warn!(%peer, max = shared.config.max_connections, "A Kafka client connection was closed at once: `kafka.max_connections` are open.");
            drop(stream);
            continue;
        }
        shared.open.fetch_add(1, Ordering::AcqRel);
        shared.counters.connections.inc();
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(&shared, stream, peer, shutdown).await;
            shared.open.fetch_sub(1, Ordering::AcqRel);
        });
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    shared
        .ctx
        .sources
        .update(STATUS_NAME, |s| s.set_link(Link::Stopped));
    Ok(())
}

/// Binds the port, retrying with backoff until it works; `None` at shutdown.
async fn bind_with_retry(
    ctx: &Context,
    config: &KafkaConfig,
    shutdown: &Shutdown,
) -> Option<TcpListener> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut attempts = 0u64;
    loop {
        match TcpListener::bind(&config.listen).await {
            Ok(listener) => return Some(listener),
            Err(e) => {
                attempts += 1;
                if attempts % 20 == 0 {
                    tracing::error!(kafka_listen = %config.listen, error = %e, attempts, "The Kafka listener still cannot bind its port.");
                }
                let last_error =
                    format!("cannot listen on {} (`kafka.listen`): {e}", config.listen);
                ctx.sources.update(STATUS_NAME, |s| {
                    s.set_link(Link::Retrying {
                        last_error,
                        attempts,
                    })
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.requested() => return None,
        }
    }
}

/// The broker address clients are told: `kafka.advertised`, or the bound address with a
/// wildcard IP named as loopback.
fn advertised_address(config: &KafkaConfig, local: SocketAddr) -> (String, i32) {
    if let Some((host, port)) = config
        .advertised
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
    {
        if let Ok(port) = port.parse::<u16>() {
            return (host.to_string(), i32::from(port));
        }
    }
    let ip = if local.ip().is_unspecified() {
        match local {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        }
    } else {
        local.ip()
    };
    (ip.to_string(), i32::from(local.port()))
}

/// Why a connection is closed by the box.
#[derive(Debug, thiserror::Error)]
enum Close {
    #[error("the client closed the connection")]
    Eof,
    #[error("reading or writing failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a request frame of {0} bytes is larger than `kafka.max_request_bytes` ({1})")]
    TooLarge(u64, usize),
    #[error("a request frame of {0} bytes is too short for a request header")]
    TooShort(i32),
    #[error("{0}")]
    Protocol(String),
}

/// Reads requests and answers them in order until the client leaves, the box stops, or the
/// connection is closed for an error (logged with the reason).
async fn serve_connection(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut client = String::from("?");
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.requested() => return,
            frame = read_frame(&mut reader, shared.config.max_request_bytes) => frame,
        };
        let outcome = match frame {
            Ok(frame) => handlers::answer(shared, frame, &mut client).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Some(response)) => {
                shared.counters.requests.inc();
                if let Err(e) = writer.write_all(&response).await {
                    tracing::debug!(%peer, client = %client, error = %e, "A Kafka client went away before its answer.");
                    return;
                }
            }
            Ok(None) => shared.counters.requests.inc(),
            Err(Close::Eof) => return,
            Err(Close::Io(e)) => {
                tracing::debug!(%peer, client = %client, error = %e, "A Kafka connection ended.");
                return;
            }
            Err(e) => {
                shared.counters.closed_on_error.inc();
                tracing::warn!(%peer, client = %client, reason = %e, "Closed a Kafka client connection.");
                return;
            }
        }
    }
}

/// One request frame (without its size prefix).
async fn read_frame(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    max: usize,
) -> Result<Bytes, Close> {
    let mut size = [0u8; 4];
    match reader.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Close::Eof),
        Err(e) => return Err(Close::Io(e)),
    }
    let size = i32::from_be_bytes(size);
    if size < 8 {
        return Err(Close::TooShort(size));
    }
    if size as u64 > max as u64 {
        return Err(Close::TooLarge(size as u64, max));
    }
    let mut frame = BytesMut::zeroed(size as usize);
    reader.read_exact(&mut frame).await?;
    Ok(frame.freeze())
}

/// A response frame: size, then the header (correlation id, and an empty tagged-field section
/// in header version 1), then the body.
fn frame(correlation_id: i32, header_version: i16, body: &[u8]) -> Bytes {
    let header_len = if header_version >= 1 { 5 } else { 4 };
    let mut out = BytesMut::with_capacity(4 + header_len + body.len());
    out.put_i32((header_len + body.len()) as i32);
    out.put_i32(correlation_id);
    if header_version >= 1 {
        out.put_u8(0);
    }
    out.put_slice(body);
    out.freeze()
}

/// The first bytes of a request: api key, version and correlation id (in every header
/// version), read before the rest of the header so a bad request can still be answered.
fn peek_header(frame: &Bytes) -> (i16, i16, i32) {
    let mut b = frame.clone();
    (b.get_i16(), b.get_i16(), b.get_i32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_key() {
        KafkaConfig::default().validate().unwrap();
        for (change, key) in [
            (
                (|c: &mut KafkaConfig| c.listen = "anywhere".into()) as fn(&mut KafkaConfig),
                "kafka.listen",
            ),
            (
                |c| c.advertised = Some("no-port".into()),
                "kafka.advertised",
            ),
            (|c| c.max_request_bytes = 10, "kafka.max_request_bytes"),
            (|c| c.max_connections = 0, "kafka.max_connections"),
        ] {
            let mut c = KafkaConfig::default();
            change(&mut c);
            assert_eq!(c.validate().unwrap_err().0, key);
        }
    }

    #[test]
    fn clients_are_told_the_advertised_address_or_the_bound_one() {
        let local: SocketAddr = "0.0.0.0:9092".parse().unwrap();
        let mut c = KafkaConfig::default();
        assert_eq!(advertised_address(&c, local), ("127.0.0.1".into(), 9092));
        c.advertised = Some("outpost.local:19092".into());
        assert_eq!(
            advertised_address(&c, local),
            ("outpost.local".into(), 19092)
        );
    }
}
