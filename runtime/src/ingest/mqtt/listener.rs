//! The device-facing MQTT listener: a transparent proxy in front of the embedded broker whose
//! acknowledgements follow the log.
//!
//! # Why a proxy
//! A broker acknowledges a device's QoS 1 PUBLISH (PUBACK; PUBREC for QoS 2) as soon as it has
//! the message in memory. A subscriber that stores it later can crash in between, and the
//! device, holding its PUBACK, never sends the payment again. So devices do not talk to the
//! broker directly: they connect here. For each connection the listener reads the CONNECT,
//! opens a connection to the broker's loopback server of the same protocol version (3.1.1 or
//! 5), forwards the CONNECT, and from then on
//!
//! - broker → device: bytes are copied unchanged (CONNACK, PUBACKs, deliveries to
//!   subscribers, …);
//! - device → broker: bytes are split into MQTT packets and forwarded unchanged and in order,
//!   except that a PUBLISH whose topic matches a route (`mqtt.broker.routes`) is first appended
//!   to its log topic, and forwarded only once that append returned (after the fsync on
//!   `always` topics).
//!
//! The broker can only acknowledge what it received, and it receives a routed PUBLISH only
//! after the record is durable, so a device's PUBACK always follows the durable append: kill
//! Outpost at any moment and every acknowledged message is in the log. QoS 0 messages on routed
//! topics are stored too (best effort: the device expects no acknowledgement). Subscribers get
//! every message from the broker as usual; the broker itself stores nothing.
//!
//! # Batching
//! The listener reads whatever the socket has (up to 256 KiB), appends every routed PUBLISH in
//! it with one append per log topic, then forwards the whole chunk with one write. While an
//! append waits for its fsync, further packets queue in the socket and make the next, larger,
//! batch; appends of many connections share fsyncs through the log's group commit.
//!
//! # Failures
//! When the log refuses appends for lack of space the connection holds: nothing is forwarded
//! (so nothing is acknowledged), the status shows `backpressured`, and the append is retried
//! with backoff. A routed publish the box cannot store is *refused*, never acknowledged:
//! its topic maps to no valid log topic (e.g. a level of 200 characters), its payload is above
//! `mqtt.broker.max_payload_bytes`, its payload breaks the store-event contract of its log
//! topic (`crate::contracts`: a `pos.payments` value without `card_id`, unless
//! `ingest.check_contracts = false`), or the log refuses it for good (record too large, topic
//! creation refused). Everything before it on the connection is stored and forwarded, the
//! refused publish is not forwarded (so the broker never acknowledges it), and the connection
//! ends: an MQTT 5 device first gets a DISCONNECT whose reason code says why (0x90 "Topic Name
//! invalid", 0x95 "Packet too large", 0x99 "Payload format invalid" for a broken contract,
//! 0x80 otherwise) with a reason string (the contract's error names the field); an MQTT 3.1.1
//! device, which has no way to be told, sees the connection close without a PUBACK — what the
//! 3.1.1 spec allows a server that cannot process a packet. Refusals are counted
//! (`outpost_source_refused_total{source="mqtt:listener"}`) and logged with the client id.
//! Any other log error, a malformed packet or a packet above the size limit closes the
//! device's connection (the device publishes again after reconnecting). A redelivered PUBLISH
//! (DUP) is stored again: delivery is at least once.
//!
//! # Connection budget
//! Each device costs three file descriptors while the embedded broker sits behind the
//! listener (the device's socket, the listener's socket to the broker, the broker's side), so
//! the listener accepts at most `mqtt.broker.max_connections`, lowered at start to what the
//! process's open-file limit allows ([`connection_budget`]). A device beyond the budget gets a
//! CONNACK refusal (MQTT 5 "Quota exceeded", 3.1.1 "Server unavailable") and the connection is
//! closed; it is counted (`outpost_source_refused_connections_total`). When even `accept`
//! fails (out of descriptors), the accept loop pauses instead of spinning; repeated log lines
//! are rate-limited process-wide (see `kernel::log_limit`).
//!
//! # Last wills
//! A device's last will (from its CONNECT) is published by the broker when the connection ends
//! without a DISCONNECT (or, in MQTT 5, with reason 0x04 "Disconnect with Will Message"):
//! the device's socket closed or failed, or the broker dropped it (keep-alive expired). When
//! the will's topic matches a route, the listener stores it like a publish at that moment,
//! with the header `mqtt-will: true`, so "till 7 went offline" is in the log next to its
//! payments. Not when Outpost itself is shutting down (the devices did not go away), and not
//! when it breaks its log topic's contract (counted as an error and logged instead).
//!
//! An MQTT 5 will is due after its Will Delay Interval, or when the session ends if that is
//! sooner (the Session Expiry Interval; 0, the default, ends the session with the connection):
//! a device that reconnects within that time and resumes its session (Clean Start 0) cancels
//! its will, one that starts a clean session makes it due at once — what the broker does with
//! its own copy. The listener waits the same way before it stores the will (at most one
//! waiting will per client id; wills still waiting when Outpost stops are not stored).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::broker::Login;
use super::packet::{self, Aliases, Connect, PacketError};
use super::route::{Mapped, Routes, HEADER_WILL};
use super::source::{KEY_MISSING, KEY_MISSING_HELP};
use super::MqttError;
use crate::contracts::Contracts;
use crate::kernel::{Backoff, Readiness, Shutdown};
use crate::kernel::{Link, StatusBoard};
use crate::log::{Log, LogError, NewRecord};

/// What the box's readiness waits for while the listener's port is not bound.
pub const READY_CONDITION: &str = "mqtt listener";

/// The listener's name on the status board.
pub const STATUS_NAME: &str = "mqtt:listener";
/// Bytes read from a device socket at once, at most.
const READ_CHUNK: usize = 256 * 1024;
/// File descriptors one device connection costs (see the module doc).
pub const FDS_PER_CONNECTION: u64 = 3;
/// Devices refused at once with a CONNACK, at most; beyond, a refused socket is just closed.
const MAX_REFUSING: u64 = 64;
/// How long a device beyond the budget gets to send its CONNECT before it is closed.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);
const REFUSED: &str = "refused";
const REFUSED_HELP: &str =
    "Device publishes the listener refused (not stored, not acknowledged; the connection ended).";
const REFUSED_CONNECTIONS: &str = "refused_connections";
const REFUSED_CONNECTIONS_HELP: &str =
    "Device connections refused because the listener was at its connection budget.";

/// How many device connections fit under an open-file limit of `nofile`: a quarter of the
/// descriptors (at least 256) stays for the log, the state store, the API and plugins, and each
/// device costs [`FDS_PER_CONNECTION`]. At least one.
pub fn connection_budget(nofile: u64) -> usize {
    let reserve = (nofile / 4).max(256);
    (nofile.saturating_sub(reserve) / FDS_PER_CONNECTION).max(1) as usize
}

/// The sizes and limits of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest packet accepted from a device, in bytes.
    pub max_packet: usize,
    /// Largest PUBLISH payload accepted, in bytes (`mqtt.broker.max_payload_bytes`).
    pub max_payload: usize,
    /// Device connections open at once, at most.
    pub max_connections: usize,
    /// How long a device has to send its CONNECT.
    pub connect_timeout: Duration,
}

/// What every connection of the listener shares.
#[derive(Debug)]
pub struct Listener {
    routes: Routes,
    /// Whether routed payloads are checked against their log topic's contract.
    contracts: Contracts,
    log: Log,
    board: StatusBoard,
    v4: SocketAddr,
    v5: SocketAddr,
    login: Login,
    max_packet: usize,
    max_payload: usize,
    max_connections: usize,
    connect_timeout: Duration,
    open: AtomicU64,
    refusing: Arc<AtomicU64>,
    /// MQTT 5 wills waiting for their delay, by client id.
    waiting_wills: std::sync::Mutex<HashMap<String, WaitingWill>>,
    next_will: AtomicU64,
}

/// A will waiting for its delay: `decide` tells it to be stored now (`true`) or dropped.
#[derive(Debug)]
struct WaitingWill {
    id: u64,
    decide: tokio::sync::oneshot::Sender<bool>,
}

/// Why a device connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Packet(#[from] PacketError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the device sent no CONNECT within {0} ms")]
    ConnectTimeout(u128),
    #[error("the embedded broker at {addr} cannot be reached: {source}")]
    Broker {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storing a message failed: {0}")]
    Log(#[from] LogError),
    #[error("the listener is shutting down")]
    Shutdown,
    #[error("a publish to {topic:?} was refused: {why}")]
    Refused {
        topic: String,
        /// The MQTT 5 reason code sent in the DISCONNECT.
        reason: u8,
        why: String,
    },
}

impl ConnError {
    /// The refusal of a publish whose storing failed for good, if `e` is such a failure.
    fn refusal(topic: &str, e: &LogError) -> Option<ConnError> {
        let reason = match e {
            LogError::RecordTooLarge { .. } => packet::REASON_PACKET_TOO_LARGE,
            LogError::InvalidTopicName { .. }
            | LogError::CreationRefused(_)
            | LogError::UnknownTopic(_) => packet::REASON_TOPIC_NAME_INVALID,
            _ => return None,
        };
        Some(ConnError::Refused {
            topic: topic.to_string(),
            reason,
            why: e.to_string(),
        })
    }
}

impl Listener {
    /// The shared part of a listener that proxies to the broker at `v4`/`v5`, logging in
    /// there with `login`; routed payloads are checked against `contracts`.
    pub fn new(
        routes: Routes,
        contracts: Contracts,
        log: Log,
        board: StatusBoard,
        (v4, v5, login): (SocketAddr, SocketAddr, Login),
        limits: Limits,
    ) -> Listener {
        Listener {
            routes,
            contracts,
            log,
            board,
            v4,
            v5,
            login,
            max_packet: limits.max_packet,
            max_payload: limits.max_payload,
            max_connections: limits.max_connections,
            connect_timeout: limits.connect_timeout,
            open: AtomicU64::new(0),
            refusing: Arc::new(AtomicU64::new(0)),
            waiting_wills: std::sync::Mutex::new(HashMap::new()),
            next_will: AtomicU64::new(0),
        }
    }

    /// Shows the open connections (and counts one more accepted when `accepted`).
    fn publish_counts(&self, accepted: bool) {
        let open = self.open.load(Ordering::Relaxed);
        self.board.update(STATUS_NAME, |s| {
            s.set_gauge(
                "connections",
                "Device connections open on the MQTT listener.",
                open as f64,
            );
            s.count(
                "connections_total",
                "Device connections the MQTT listener accepted.",
                u64::from(accepted),
            );
        });
    }

    /// Binds `listen` (unless `bound` already is) and accepts device connections until
    /// shutdown; then closes them all. A port in use is not fatal: the rest of the box keeps
    /// working, the status shows `retrying` with the error, and binding is retried with backoff;
    /// until it binds, the box is not ready (the caller names [`READY_CONDITION`] in `ready`
    /// when it could not bind at once; `run` clears it once bound).
    pub async fn run(
        self: Arc<Self>,
        listen: String,
        bound: Option<TcpListener>,
        shutdown: Shutdown,
        ready: Readiness,
    ) -> Result<(), MqttError> {
        self.board.register(STATUS_NAME, "mqtt-listener", |s| {
            s.set_info("listen", listen.clone());
            s.set_info("broker_v4", self.v4.to_string());
            s.set_info("broker_v5", self.v5.to_string());
            s.counter(KEY_MISSING, KEY_MISSING_HELP);
            s.counter(REFUSED, REFUSED_HELP);
            s.counter(REFUSED_CONNECTIONS, REFUSED_CONNECTIONS_HELP);
            s.set_gauge(
                "max_connections",
                "Device connections the MQTT listener accepts at once (its budget).",
                self.max_connections as f64,
            );
        });
        self.publish_counts(false);
        let listener = match bound {
            Some(listener) => listener,
            None => {
                let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
                let mut attempts = 0u64;
                loop {
                    match TcpListener::bind(&listen).await {
                        Ok(listener) => break listener,
                        Err(e) => {
                            attempts += 1;
                            let last_error =
                                format!("cannot listen on {listen} (`mqtt.broker.listen`): {e}");
                            if attempts == 1 || attempts % 20 == 0 {
                                tracing::error!(mqtt_listen = %listen, error = %e, attempts, "The MQTT listener cannot bind its port; devices cannot connect until it can.");
                            }
                            self.board.update(STATUS_NAME, |s| {
                                s.set_link(Link::Retrying {
                                    last_error,
                                    attempts,
                                })
                            });
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.requested() => {
                            self.board.update(STATUS_NAME, |s| s.set_link(Link::Stopped));
                            return Ok(());
                        }
                    }
                }
            }
        };
        let local = listener.local_addr()?;
        ready.done(READY_CONDITION);
        self.board.update(STATUS_NAME, |s| {
            s.set_link(Link::Connected);
            s.set_info("listen", local.to_string());
        });
        tracing::info!(mqtt_listen = %local, routes = self.routes.iter().count(), "The MQTT listener accepts devices.");

        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if connections.len() >= self.max_connections {
                            self.refuse_connection(stream, peer);
                            continue;
                        }
                        self.open.fetch_add(1, Ordering::Relaxed);
                        self.publish_counts(true);
                        let me = Arc::clone(&self);
                        let shutdown = shutdown.clone();
                        connections.spawn(async move {
                            let outcome = me.serve(stream, shutdown).await;
                            me.open.fetch_sub(1, Ordering::Relaxed);
                            me.publish_counts(false);
                            match outcome {
                                Ok(()) | Err(ConnError::Shutdown) => {
                                    tracing::debug!(peer = %peer, "A device connection closed.")
                                }
                                Err(e) => {
                                    tracing::info!(peer = %peer, error = %e, "A device connection ended.")
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning (the
                        // line is rate-limited with every other repeated line).
                        tracing::warn!(error = %e, "Accepting a device connection failed; pausing the accept loop for 100 ms.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = shutdown.requested() => break,
            }
        }
        connections.shutdown().await;
        self.board
            .update(STATUS_NAME, |s| s.set_link(Link::Stopped));
        tracing::info!("The MQTT listener stopped.");
        Ok(())
    }

    async fn serve(
        self: &Arc<Self>,
        device: TcpStream,
        shutdown: Shutdown,
    ) -> Result<(), ConnError> {
        device.set_nodelay(true)?;
        let (mut dev_r, dev_w) = device.into_split();
        let mut buf = Vec::with_capacity(8 * 1024);
        let frame = tokio::time::timeout(self.connect_timeout, async {
            loop {
                if let Some(frame) = packet::frame(&buf, self.max_packet)? {
                    return Ok::<_, ConnError>(Some(frame));
                }
                buf.reserve(4096);
                if dev_r.read_buf(&mut buf).await? == 0 {
                    return Ok(None);
                }
            }
        })
        .await
        .map_err(|_| ConnError::ConnectTimeout(self.connect_timeout.as_millis()))??;
        let Some(frame) = frame else {
            return Ok(());
        };
        let connect = packet::parse_connect(&buf, &frame)?;
        // A will of this client still waiting: a resumed session cancels it, a clean one ends
        // the old session and makes it due.
        let waiting = crate::log::lock(&self.waiting_wills).remove(&connect.client_id);
        if let Some(w) = waiting {
            let _ = w.decide.send(connect.clean_start);
        }
        let connect_packet =
            packet::with_login(&buf, &frame, &self.login.user, &self.login.password)?;
        let addr = if connect.level == 5 { self.v5 } else { self.v4 };
        let upstream = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnError::Broker { addr, source })?;
        upstream.set_nodelay(true)?;
        let (up_r, mut up_w) = upstream.into_split();
        up_w.write_all(&connect_packet).await?;
        buf.drain(..frame.total_len);

        let mut will_discarded = false;
        let (last_tx, last_rx) = tokio::sync::oneshot::channel();
        let down = copy_down(up_r, dev_w, last_rx, self.max_packet);
        tokio::pin!(down);
        let ended = tokio::select! {
            r = &mut down => r,
            r = self.pump_up(dev_r, up_w, buf, &connect, shutdown.clone(), &mut will_discarded) => {
                if let Err(ConnError::Refused { topic, reason, why }) = &r {
                    self.board.update(STATUS_NAME, |s| s.count(REFUSED, REFUSED_HELP, 1));
                    tracing::warn!(client_id = %connect.client_id, topic = %topic, reason = %format!("{reason:#04x}"), why = %why, "A device publish was refused and not acknowledged; the connection is closed.");
                    let last = (connect.level == 5).then(|| packet::disconnect(*reason, why));
                    if last_tx.send(last).is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), &mut down).await;
                    }
                }
                r
            }
        };
        if let Some(will) = connect.will.clone() {
            if !will_discarded && !shutdown.is_requested() {
                match connect.will_delay_s() {
                    0 => {
                        self.store_will(&will, &connect.client_id, &shutdown)
                            .await?
                    }
                    delay => {
                        self.store_will_later(will, connect.client_id.clone(), delay, shutdown)
                    }
                }
            }
        }
        ended
    }

    /// Stores `will` after `delay_s` seconds unless the client reconnects first (see the
    /// module doc).
    fn store_will_later(
        self: &Arc<Self>,
        will: packet::Will,
        client_id: String,
        delay_s: u32,
        shutdown: Shutdown,
    ) {
        let (decide, decided) = tokio::sync::oneshot::channel();
        let id = self.next_will.fetch_add(1, Ordering::Relaxed);
        let replaced = crate::log::lock(&self.waiting_wills)
            .insert(client_id.clone(), WaitingWill { id, decide });
        if let Some(older) = replaced {
            // Two connections of one client ended: the older will is due now.
            let _ = older.decide.send(true);
        }
        tracing::debug!(client_id = %client_id, delay_s, "A device's last will waits for its delay.");
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let store = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(delay_s))) => true,
                decision = decided => decision.unwrap_or(true),
                _ = shutdown.requested() => false,
            };
            {
                let mut waiting = crate::log::lock(&me.waiting_wills);
                if waiting.get(&client_id).is_some_and(|w| w.id == id) {
                    waiting.remove(&client_id);
                }
            }
            if !store {
                tracing::debug!(client_id = %client_id, "A device reconnected within its will delay; its last will is dropped.");
                return;
            }
            if let Err(e) = me.store_will(&will, &client_id, &shutdown).await {
                tracing::warn!(client_id = %client_id, error = %e, "A device's delayed last will could not be stored.");
            }
        });
    }

    /// Stores a device's last will when its topic is routed (see the module doc).
    async fn store_will(
        &self,
        will: &packet::Will,
        client_id: &str,
        shutdown: &Shutdown,
    ) -> Result<(), ConnError> {
        let Some(route) = self.routes.find(&will.topic) else {
            return Ok(());
        };
        let mapped = route.map(&will.topic, &will.payload, Some(client_id));
        let broken = mapped.as_ref().ok().and_then(|m| {
            let contract = self.contracts.for_topic(&m.topic)?;
            contract.check(&m.record.value).err()
        });
        if let Some(e) = broken {
            self.board.update(STATUS_NAME, |s| s.error(1));
            tracing::warn!(topic = %will.topic, client_id = %client_id, error = %e, "A device's last will breaks its log topic's contract and was not stored.");
            return Ok(());
        }
        match mapped {
            Ok(mut mapped) => {
                mapped
                    .record
                    .headers
                    .push((HEADER_WILL.to_string(), b"true".to_vec()));
                tracing::info!(topic = %will.topic, client_id = %client_id, log_topic = %mapped.topic, "A device's last will was stored.");
                self.store(vec![mapped], shutdown).await
            }
            Err(e) => {
                self.board.update(STATUS_NAME, |s| s.error(1));
                tracing::warn!(topic = %will.topic, client_id = %client_id, error = %e, "A device's last will could not be stored.");
                Ok(())
            }
        }
    }

    /// Device → broker: frames packets, stores routed publishes, forwards in order.
    async fn pump_up(
        &self,
        mut dev_r: OwnedReadHalf,
        mut up_w: OwnedWriteHalf,
        mut buf: Vec<u8>,
        connect: &Connect,
        shutdown: Shutdown,
        will_discarded: &mut bool,
    ) -> Result<(), ConnError> {
        let mut aliases = Aliases::default();
        loop {
            let mut end = 0;
            let mut batch: Vec<Mapped> = Vec::new();
            let mut refused = None;
            while let Some(frame) = packet::frame(&buf[end..], self.max_packet)? {
                if frame.kind() == packet::PUBLISH {
                    let publish =
                        packet::parse_publish(&buf[end..], &frame, connect.level, &mut aliases)?;
                    if publish.payload.len() > self.max_payload {
                        refused = Some(ConnError::Refused {
                            topic: publish.topic.to_string(),
                            reason: packet::REASON_PACKET_TOO_LARGE,
                            why: format!(
                                "a payload of {} bytes is above the limit of {} bytes (`mqtt.broker.max_payload_bytes`)",
                                publish.payload.len(),
                                self.max_payload
                            ),
                        });
                        break;
                    }
                    if let Some(route) = self.routes.find(&publish.topic) {
                        match route.map(&publish.topic, publish.payload, Some(&connect.client_id)) {
                            Ok(mapped) => {
                                let contract = self.contracts.for_topic(&mapped.topic);
                                if let Some(Err(e)) =
                                    contract.map(|c| c.check(&mapped.record.value))
                                {
                                    refused = Some(ConnError::Refused {
                                        topic: publish.topic.to_string(),
                                        reason: packet::REASON_PAYLOAD_FORMAT_INVALID,
                                        why: e.to_string(),
                                    });
                                    break;
                                }
                                batch.push(mapped);
                            }
                            Err(e) => {
                                refused = Some(ConnError::Refused {
                                    topic: publish.topic.to_string(),
                                    reason: packet::REASON_TOPIC_NAME_INVALID,
                                    why: e.to_string(),
                                });
                                break;
                            }
                        }
                    }
                } else if frame.kind() == packet::DISCONNECT {
                    *will_discarded =
                        !packet::disconnect_keeps_will(&buf[end..], &frame, connect.level);
                }
                end += frame.total_len;
            }
            if !batch.is_empty() {
                self.store(batch, &shutdown).await?;
            }
            if end > 0 {
                up_w.write_all(&buf[..end]).await?;
                buf.drain(..end);
            }
            if let Some(refusal) = refused {
                // Let the broker answer what was forwarded before the refused publish.
                up_w.flush().await?;
                return Err(refusal);
            }
            buf.reserve(READ_CHUNK.min(self.max_packet).max(4096));
            if dev_r.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Appends a batch, one append per log topic (concurrently), retrying while the log is
    /// full. Returns once everything is stored (durably on `always` topics).
    async fn store(&self, batch: Vec<Mapped>, shutdown: &Shutdown) -> Result<(), ConnError> {
        let count = batch.len() as u64;
        let key_missing = batch.iter().filter(|m| m.key_missing).count() as u64;
        let mut groups: Vec<(String, Vec<NewRecord>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for m in batch {
            match index.get(&m.topic) {
                Some(&i) => groups[i].1.push(m.record),
                None => {
                    index.insert(m.topic.clone(), groups.len());
                    groups.push((m.topic, vec![m.record]));
                }
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut backpressured = false;
        while !groups.is_empty() {
            let results = crate::ingest::append_groups(&self.log, groups)
                .await
                .ok_or_else(|| {
                    ConnError::Io(std::io::Error::other(
                        "an append task failed: the runtime is shutting down",
                    ))
                })?;
            let mut retry = Vec::new();
            let mut failure = None;
            for (topic, records, result) in results {
                match result {
                    Ok(_) => {}
                    Err(LogError::StorageFull(reason)) => {
                        if !backpressured {
                            tracing::warn!(topic = %topic, reason = %reason, "The log is full; device acknowledgements are held until it has room.");
                        }
                        let r = reason.clone();
                        self.board.update(STATUS_NAME, |s| {
                            s.set_link(Link::Backpressured { reason: r });
                        });
                        retry.push((topic, records));
                    }
                    Err(e) => {
                        failure.get_or_insert((topic, e));
                    }
                }
            }
            if let Some((topic, e)) = failure {
                if let Some(refusal) = ConnError::refusal(&topic, &e) {
                    return Err(refusal);
                }
                self.board.update(STATUS_NAME, |s| s.error(1));
                return Err(ConnError::Log(e));
            }
            groups = retry;
            if !groups.is_empty() {
                backpressured = true;
                if shutdown.is_requested() {
                    return Err(ConnError::Shutdown);
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        let now = crate::kernel::now_ms();
        self.board.update(STATUS_NAME, |s| {
            s.stored(count, now);
            if matches!(s.link(), Link::Backpressured { .. }) {
                s.set_link(Link::Connected);
            }
            s.count(KEY_MISSING, KEY_MISSING_HELP, key_missing);
        });
        Ok(())
    }
}

/// Broker → device: packets unchanged, whole packets only, so that the listener can end the
/// connection with a last packet of its own (`last`: an MQTT 5 DISCONNECT, or `None` to just
/// close) without cutting one of the broker's packets in half.
///
/// The broker does not set `TCP_NODELAY` on its sockets, so after sending one small packet
/// (a PUBACK) it holds the next until this side's TCP acknowledges the first — and Linux
/// delays that acknowledgement up to 40 ms when it has nothing to send back. Re-arming
/// `TCP_QUICKACK` after every read makes this side acknowledge at once, so acknowledgements
/// and deliveries flow without those stalls.
async fn copy_down(
    mut up_r: OwnedReadHalf,
    mut dev_w: OwnedWriteHalf,
    mut last: tokio::sync::oneshot::Receiver<Option<Vec<u8>>>,
    max_packet: usize,
) -> Result<(), ConnError> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut waiting_for_last = true;
    loop {
        let mut whole = 0;
        while let Some(frame) = packet::frame(&buf[whole..], max_packet)? {
            whole += frame.total_len;
        }
        if whole > 0 {
            dev_w.write_all(&buf[..whole]).await?;
            buf.drain(..whole);
        }
        buf.reserve(64 * 1024);
        // The last packet first: when the listener refuses a publish it also stops writing
        // to the broker, whose close must not win the race against the DISCONNECT.
        tokio::select! {
            biased;
            packet = &mut last, if waiting_for_last => match packet {
                Ok(packet) => {
                    if let Some(packet) = packet {
                        dev_w.write_all(&packet).await?;
                    }
                    dev_w.shutdown().await?;
                    return Ok(());
                }
                // The connection goes on: nothing will be sent.
                Err(_) => waiting_for_last = false,
            },
            n = up_r.read_buf(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
                quick_ack(up_r.as_ref());
            }
        }
    }
}

impl Listener {
    /// Turns away a device beyond the connection budget: reads its CONNECT (briefly) and
    /// answers with a refusing CONNACK of its protocol version.
    fn refuse_connection(&self, stream: TcpStream, peer: SocketAddr) {
        self.board.update(STATUS_NAME, |s| {
            s.count(REFUSED_CONNECTIONS, REFUSED_CONNECTIONS_HELP, 1)
        });
        tracing::warn!(peer = %peer, limit = self.max_connections, "A device connection was refused: the listener is at its connection budget (`mqtt.broker.max_connections`, lowered to fit the open-file limit).");
        if self.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let refusing = Arc::clone(&self.refusing);
        let max_packet = self.max_packet;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSE_TIMEOUT, async move {
                let mut stream = stream;
                let mut buf = Vec::with_capacity(512);
                loop {
                    if let Ok(Some(frame)) = packet::frame(&buf, max_packet) {
                        let level = packet::parse_connect(&buf, &frame).map_or(4, |c| c.level);
                        let _ = stream.write_all(&packet::connack_refused(level)).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                    buf.reserve(512);
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Asks Linux to acknowledge received data at once (until it next decides otherwise).
fn quick_ack(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt(2) on a socket this stream owns, with a pointer to a live c_int and
    // its exact size; a failure (not a TCP socket, an old kernel) only loses the hint.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
