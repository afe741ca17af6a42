//! The MQTT sink: publishes the records of one log topic to MQTT topics built from each
//! record's JSON value (`fraud.scores` → `pos/{terminal_id}/verdict`), so POS terminals and
//! signage get answers within milliseconds.
//!
//! # Delivery
//! The sink is a durable consumer: its offset is consumer `sink:mqtt:<name>` in the state
//! store. It waits on the topic ([`Topic::wait_for`], no polling), publishes up to
//! `max_inflight` records ahead, and moves its offset to the lowest record the broker has not
//! acknowledged yet (PUBACK for QoS 1, PUBCOMP for QoS 2; for QoS 0, once written to the
//! socket). A crash or a lost connection re-publishes from that offset: at least once.
//!
//! Each connection is a fresh client with a clean session; when it fails, everything not yet
//! acknowledged is sent again on the next one, from the committed offset. A record whose value
//! is not JSON or lacks a template field (or holds `/`, `+`, `#` in one) cannot be addressed:
//! it is skipped, counted and logged. A range of the topic the log lost or found damaged
//! ([`LogError::Gap`]) is skipped with the gap shown in the sink's status
//! (`log.on_read_gap = "skip"`), or stops the sink with it (`"stop"`). A sink without a stored
//! offset starts at the topic's end (`start_at = "end"`: answers are live data) or its
//! beginning.
//!
//! [`Topic::wait_for`]: crate::log::Topic::wait_for

pub mod config;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{Event, Outgoing, Packet};
use tokio::sync::mpsc;

use self::config::{parse_sink_template, SinkConfig, StartAt, TemplatePart};
use crate::kernel::{Backoff, Context, Shutdown};
use crate::kernel::{Link, StatusBoard};
use crate::log::{LogError, ReadGapPolicy, Topic};
use crate::mqtt_client::{self as client, AbortOnDrop, ClientError, ClientSettings, Login};
use crate::state::{Commit, StateError, StateStore};

/// How long to wait for the broker's CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Commit the offset at most this often while records flow (and always when idle).
const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// Bytes read from the log at once, about.
const READ_BYTES: usize = 1024 * 1024;

/// Errors of the MQTT sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Options or TLS files.
    #[error(transparent)]
    Setup(#[from] ClientError),
    /// Reading the log failed.
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// Reading or committing the offset failed.
    #[error("state store: {0}")]
    State(#[from] StateError),
    /// The connection to the broker failed.
    #[error("{0}")]
    Connection(String),
    /// The topic has a range the log cannot read and `log.on_read_gap` is `stop`.
    #[error("stopped (`log.on_read_gap = \"stop\"`): {0}")]
    ReadGap(#[source] LogError),
    /// The template is invalid (normally caught by config validation).
    #[error("mqtt_topic: {0}")]
    Template(String),
}

/// The MQTT topic of a record: `parts` filled from its JSON value; `Err` says why the record
/// cannot be addressed (not JSON, a field missing or not a string or number).
fn render(parts: &[TemplatePart], value: &[u8]) -> Result<String, String> {
    let mut json: Option<serde_json::Value> = None;
    let mut out = String::new();
    for part in parts {
        match part {
            TemplatePart::Text(t) => out.push_str(t),
            TemplatePart::Field(pointer) => {
                if json.is_none() {
                    json = Some(
                        serde_json::from_slice(value)
                            .map_err(|_| "the value is not JSON".to_string())?,
                    );
                }
                let field = json
                    .as_ref()
                    .and_then(|v| v.pointer(pointer))
                    .ok_or_else(|| format!("the value has no field {pointer}"))?;
                let text = match field {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return Err(format!("the field {pointer} is not a string or number")),
                };
                if text.is_empty() || text.contains(['/', '+', '#', '\0']) {
                    return Err(format!(
                        "the field {pointer} ({text:?}) is empty or holds `/`, `+`, `#` or NUL"
                    ));
                }
                out.push_str(&text);
            }
        }
    }
    if out.len() > 65_535 {
        return Err("the MQTT topic would be longer than 65535 bytes".into());
    }
    Ok(out)
}

const OFFSET_HELP: &str = "The sink's committed offset: records before it were delivered.";
const CONNECTS: &str = "connects";
const CONNECTS_HELP: &str = "Connections a sink made to its MQTT broker.";

/// One configured sink, running.
struct Sink {
    cfg: SinkConfig,
    name: String,
    consumer: String,
    parts: Vec<TemplatePart>,
    settings: ClientSettings,
    topic: Topic,
    state: StateStore,
    board: StatusBoard,
    committed: u64,
    /// `log.on_read_gap = "skip"`: go on past a range the log cannot read.
    skip_gaps: bool,
}

/// Runs one `[[mqtt.sinks]]` entry until shutdown. `embedded` is the embedded broker's
/// loopback address and its private login, used when the sink has no `host`.
pub async fn run_sink(
    ctx: Context,
    cfg: SinkConfig,
    embedded: Option<(SocketAddr, Login)>,
) -> Result<(), SinkError> {
    let Context {
        log,
        state,
        sinks: board,
        shutdown,
        ..
    } = ctx;
    let name = format!("mqtt:{}", cfg.name);
    let consumer = format!("sink:mqtt:{}", cfg.name);
    let parts = parse_sink_template(&cfg.mqtt_topic).map_err(SinkError::Template)?;
    let (host, port, username, password) = match (&cfg.host, embedded) {
        (Some(host), _) => (
            host.clone(),
            cfg.port,
            cfg.username.clone(),
            cfg.password.clone(),
        ),
        (None, Some((addr, login))) => (
            addr.ip().to_string(),
            addr.port(),
            Some(login.user),
            Some(login.password),
        ),
        (None, None) => {
            return Err(SinkError::Setup(ClientError::Setup(format!(
                "sink {:?} has no host and the embedded broker is not running",
                cfg.name
            ))))
        }
    };
    let settings = ClientSettings {
        host,
        port,
        client_id: cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("outpost-sink-{}", cfg.name)),
        username,
        password,
        clean_session: true,
        keep_alive: Duration::from_secs(30),
        tls: cfg.tls.clone(),
        max_incoming_packet: 64 * 1024,
        max_outgoing_packet: 16 * 1024 * 1024,
        inflight: cfg.max_inflight,
        manual_acks: false,
    };
    let topic = {
        let (log, t) = (log.clone(), cfg.topic.clone());
        tokio::task::spawn_blocking(move || log.topic_or_create(&t))
            .await
            .map_err(|e| SinkError::Connection(format!("opening the topic failed: {e}")))??
    };
    let stored = state.offset(&consumer, &cfg.topic)?;
    let committed = match stored {
        Some(offset) => offset,
        None => {
            let start = match cfg.start_at {
                StartAt::End => topic.next_offset(),
                StartAt::Beginning => topic.start_offset(),
            };
            state.commit(&Commit {
                consumer: consumer.clone(),
                offsets: vec![(cfg.topic.clone(), start)],
                ..Commit::default()
            })?;
            start
        }
    };
    board.register(&name, "mqtt-sink", |s| {
        s.set_info("topic", cfg.topic.clone());
        s.set_info("mqtt_topic", cfg.mqtt_topic.clone());
        s.set_info("broker", settings.address());
        s.set_gauge("offset", OFFSET_HELP, committed as f64);
        s.counter(CONNECTS, CONNECTS_HELP);
    });
    tracing::info!(sink = %name, topic = %cfg.topic, broker = %settings.address(), offset = committed, "MQTT sink starting.");

    let mut sink = Sink {
        name,
        consumer,
        parts,
        settings,
        topic,
        state,
        board,
        committed,
        skip_gaps: log.on_read_gap() == ReadGapPolicy::Skip,
        cfg,
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(sink.cfg.retry_max_ms),
    );
    let mut attempts = 0u64;
    loop {
        if shutdown.is_requested() {
            break;
        }
        let connected_at = Instant::now();
        let outcome = sink.session(&shutdown).await;
        match outcome {
            Ok(()) => break,
            Err(e @ (SinkError::Setup(_) | SinkError::Template(_))) => return Err(e),
            Err(SinkError::ReadGap(gap)) => {
                let message = format!(
                    "stopped at a range the log cannot read (`log.on_read_gap = \"stop\"`): {gap}"
                );
                tracing::error!(sink = %sink.name, error = %gap, "An MQTT sink stops at a range of its topic the log cannot read.");
                sink.board.update(&sink.name, |s| {
                    s.gap(message.clone());
                    s.set_link(Link::Stopped);
                });
                return Ok(());
            }
            // The listener closing connections at shutdown is no failure to report.
            Err(_) if shutdown.is_requested() => break,
            Err(e) => {
                if connected_at.elapsed() > Duration::from_secs(10) {
                    attempts = 0;
                    backoff.reset();
                }
                attempts += 1;
                let message = e.to_string();
                sink.board.update(&sink.name, |s| {
                    s.set_link(Link::Retrying {
                        last_error: message.clone(),
                        attempts,
                    })
                });
                let delay = backoff.next_delay();
                if attempts == 1 || attempts % 10 == 0 {
                    tracing::warn!(sink = %sink.name, error = %message, attempts, retry_in_ms = delay.as_millis() as u64, "MQTT sink disconnected; retrying.");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.requested() => break,
                }
            }
        }
    }
    sink.board.update(&sink.name, |s| s.set_link(Link::Stopped));
    tracing::info!(sink = %sink.name, offset = sink.committed, "MQTT sink stopped.");
    Ok(())
}

/// The bookkeeping of one connection's publishes.
#[derive(Debug, Default)]
struct InFlight {
    /// Offsets whose publish was handed to the client, waiting for their packet id.
    queued: VecDeque<u64>,
    /// Offsets by packet id, oldest first (a packet id can be reused once acknowledged).
    by_pkid: HashMap<u16, VecDeque<u64>>,
    /// Every offset published and not yet acknowledged.
    unacked: BTreeSet<u64>,
}

impl InFlight {
    /// The client assigned `pkid` to the oldest queued publish.
    fn assigned(&mut self, pkid: u16, qos0: bool) -> u64 {
        let Some(offset) = self.queued.pop_front() else {
            return 0;
        };
        if qos0 {
            self.unacked.remove(&offset);
            return 1;
        }
        self.by_pkid.entry(pkid).or_default().push_back(offset);
        0
    }
    /// The broker acknowledged `pkid`; returns how many records that completed.
    fn acked(&mut self, pkid: u16) -> u64 {
        let Some(queue) = self.by_pkid.get_mut(&pkid) else {
            return 0;
        };
        let Some(offset) = queue.pop_front() else {
            return 0;
        };
        if queue.is_empty() {
            self.by_pkid.remove(&pkid);
        }
        u64::from(self.unacked.remove(&offset))
    }
}

impl Sink {
    fn commit(&mut self, offset: u64) -> Result<(), SinkError> {
        if offset <= self.committed {
            return Ok(());
        }
        self.state.commit(&Commit {
            consumer: self.consumer.clone(),
            offsets: vec![(self.cfg.topic.clone(), offset)],
            ..Commit::default()
        })?;
        self.committed = offset;
        let lag = self.topic.next_offset().saturating_sub(offset);
        self.board.update(&self.name, |s| {
            s.set_gauge("offset", OFFSET_HELP, offset as f64);
            s.set_gauge(
                "lag",
                "Records of the sink's topic not yet delivered (as of its last commit).",
                lag as f64,
            );
        });
        Ok(())
    }

    /// One connection: publish from the committed offset until shutdown (`Ok`) or a
    /// connection error.
    async fn session(&mut self, shutdown: &Shutdown) -> Result<(), SinkError> {
        let options = client::options(&self.settings)?;
        let inflight_max = usize::from(self.cfg.max_inflight);
        let (client, mut eventloop) = client::connect(options, inflight_max + 16);
        let (tx, mut events) = mpsc::unbounded_channel();
        // The event loop runs on its own so that publishing never waits on it.
        let pump = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        let _stop_pump = AbortOnDrop(pump);

        let connack = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                match events.recv().await {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(SinkError::Connection(e.to_string())),
                    None => return Err(SinkError::Connection("the client stopped".into())),
                }
            }
        })
        .await
        .map_err(|_| SinkError::Connection("no CONNACK from the broker".into()))?;
        connack?;
        self.board
            .update(&self.name, |s| s.set_link(Link::Connected));
        self.board
            .update(&self.name, |s| s.count(CONNECTS, CONNECTS_HELP, 1));

        let resume =
            self.state
                .resume(&self.consumer, &self.cfg.topic, self.topic.start_offset())?;
        if let Some(from) = resume.skipped_from {
            let gap = format!(
                "records {from}..{} were removed by retention before they were published",
                resume.offset
            );
            self.board.update(&self.name, |s| {
                s.gap(gap);
            });
        }
        let mut next = resume.offset;
        let qos0 = self.cfg.qos == 0;
        let mut flight = InFlight::default();
        let mut last_commit = Instant::now();
        // Refill the window once at least half of it is free, so that reads from the log come
        // in batches rather than one record per acknowledgement.
        let refill_at = (inflight_max / 2).max(1);
        loop {
            // Publish what is readable, up to the in-flight window.
            while flight.unacked.len() < refill_at && next < self.topic.next_offset() {
                let room = inflight_max - flight.unacked.len();
                let (topic, from) = (self.topic.clone(), next);
                let read = tokio::task::spawn_blocking(move || topic.read(from, room, READ_BYTES))
                    .await
                    .map_err(|e| SinkError::Connection(format!("a log read failed: {e}")))?;
                let fetch = match read {
                    Ok(fetch) => fetch,
                    Err(LogError::Gap {
                        from_offset,
                        next_offset,
                        reason,
                        ..
                    }) if self.skip_gaps => {
                        // Everything before the range is published or in flight; the offset
                        // moves past it with the next commit.
                        let gap = format!(
                            "records {from_offset}..{next_offset} are {reason} in the log and were skipped (`log.on_read_gap = \"skip\"`; see outpost.gaps)"
                        );
                        tracing::warn!(sink = %self.name, from_offset, next_offset, reason, "An MQTT sink skips records the log cannot read.");
                        self.board.update(&self.name, |s| s.gap(gap));
                        next = next_offset.max(next);
                        continue;
                    }
                    Err(e @ LogError::Gap { .. }) => return Err(SinkError::ReadGap(e)),
                    Err(e) => return Err(SinkError::Log(e)),
                };
                if fetch.records.is_empty() {
                    next = fetch.next_offset.max(next);
                    break;
                }
                for record in fetch.records {
                    next = record.offset + 1;
                    match render(&self.parts, &record.value) {
                        Ok(mqtt_topic) => {
                            flight.unacked.insert(record.offset);
                            flight.queued.push_back(record.offset);
                            client
                                .publish(
                                    mqtt_topic,
                                    client::qos(self.cfg.qos),
                                    self.cfg.retain,
                                    record.value,
                                )
                                .await
                                .map_err(|e| SinkError::Connection(e.to_string()))?;
                        }
                        Err(why) => {
                            let skipped = record.offset;
                            self.board.update(&self.name, |s| s.error(1));
                            tracing::warn!(sink = %self.name, offset = skipped, reason = %why, "A record cannot be addressed to an MQTT topic; it is skipped.");
                        }
                    }
                }
            }
            let watermark = flight.unacked.first().copied().unwrap_or(next);
            if watermark > self.committed
                && (flight.unacked.is_empty() || last_commit.elapsed() >= COMMIT_EVERY)
            {
                self.commit(watermark)?;
                last_commit = Instant::now();
            }

            let can_publish = flight.unacked.len() < refill_at;
            let commit_due = watermark > self.committed;
            tokio::select! {
                event = events.recv() => {
                    // Handle this event and every other one already waiting.
                    let mut done = 0;
                    let mut event = event;
                    loop {
                        done += match event {
                            Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => flight.assigned(pkid, qos0),
                            // A packet id still in use: the publish waits for it, keeping the id.
                            Some(Ok(Event::Outgoing(Outgoing::AwaitAck(pkid)))) => flight.assigned(pkid, qos0),
                            Some(Ok(Event::Incoming(Packet::PubAck(ack)))) if self.cfg.qos == 1 => flight.acked(ack.pkid),
                            Some(Ok(Event::Incoming(Packet::PubComp(comp)))) if self.cfg.qos == 2 => flight.acked(comp.pkid),
                            Some(Ok(_)) => 0,
                            Some(Err(e)) => return Err(SinkError::Connection(e.to_string())),
                            None => return Err(SinkError::Connection("the client stopped".into())),
                        };
                        match events.try_recv() {
                            Ok(next_event) => event = Some(next_event),
                            Err(_) => break,
                        }
                    }
                    if done > 0 {
                        let now = crate::kernel::now_ms();
                        self.board.update(&self.name, |s| {
                            s.stored(done, now);
                        });
                    }
                }
                _ = self.topic.wait_for(next, Duration::from_secs(1)), if can_publish => {}
                _ = tokio::time::sleep(COMMIT_EVERY), if commit_due => {}
                _ = shutdown.requested() => {
                    let watermark = flight.unacked.first().copied().unwrap_or(next);
                    self.commit(watermark)?;
                    let _ = client.try_disconnect();
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_built_from_record_fields() {
        let parts = parse_sink_template("pos/{terminal_id}/verdict").unwrap();
        assert_eq!(
            render(&parts, br#"{"terminal_id":"t-4","score":91}"#).unwrap(),
            "pos/t-4/verdict"
        );
        assert_eq!(
            render(&parts, br#"{"terminal_id":17}"#).unwrap(),
            "pos/17/verdict"
        );
        assert!(render(&parts, br#"{"score":1}"#).is_err());
        assert!(render(&parts, b"not json").is_err());
        assert!(render(&parts, br#"{"terminal_id":"a/b"}"#).is_err());
        assert!(render(&parts, br##"{"terminal_id":"#"}"##).is_err());
        let nested = parse_sink_template("x/{/device/id}").unwrap();
        assert_eq!(
            render(&nested, br#"{"device":{"id":"d1"}}"#).unwrap(),
            "x/d1"
        );
    }

    #[test]
    fn in_flight_bookkeeping_follows_packet_ids_and_reuse() {
        let mut f = InFlight::default();
        for offset in [10, 11, 12] {
            f.unacked.insert(offset);
            f.queued.push_back(offset);
        }
        assert_eq!(f.assigned(1, false), 0);
        assert_eq!(f.assigned(2, false), 0);
        // 12 collides with packet id 1, still in flight.
        assert_eq!(f.assigned(1, false), 0);
        assert_eq!(f.acked(2), 1);
        assert_eq!(f.unacked.first(), Some(&10));
        assert_eq!(f.acked(1), 1);
        assert_eq!(f.unacked.first(), Some(&12));
        assert_eq!(f.acked(1), 1);
        assert!(f.unacked.is_empty());
        assert_eq!(f.acked(7), 0);

        let mut f = InFlight::default();
        f.unacked.insert(5);
        f.queued.push_back(5);
        assert_eq!(f.assigned(0, true), 1);
        assert!(f.unacked.is_empty());
    }
}
