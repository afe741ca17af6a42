//! Store-and-forward to the cloud Kafka cluster: per-topic cursors, priority classes, the
//! uplink budget and the data debt.
//!
//! # How it runs
//! One task ([`Forwarder::run`]) repeats *rounds*. A round looks at every local topic that has a
//! [`rules::Route`], compares its cursor with its end, and picks what to send:
//! - every `critical` topic that is behind;
//! - `normal` topics only when each critical topic is live (its backlog fits in one round), so
//!   a critical backlog drains first but live critical traffic cannot starve the rest;
//! - `bulk` topics only when critical and normal are live too, and only inside their schedule
//!   (`always`, `manual` = while `POST /forward/bulk?enable=true`, or an hour window).
//!
//! For each picked topic it reads up to `forward.batch_records` / `batch_bytes` from its cursor,
//! takes the bytes from the uplink and class token buckets (sleeping off a deficit), and hands
//! the records to librdkafka's idempotent producer (acks=all, max 5 in flight: order per
//! partition is kept even across retries).
//!
//! Sending is pipelined: each handed-over chunk (a *flight*) goes into a queue of at most
//! `forward.in_flight_batches` to a second task of the producer's *session*, which awaits the
//! delivery reports in hand-over order and moves a topic's cursor (one `StateStore::commit` as
//! consumer `forward:<cluster>`) to just past the longest prefix the broker acknowledged. The
//! sender meanwhile goes on from where it handed over (not from the cursor), so reading,
//! budgeting and the broker's round trips overlap; it waits only while the queue is full. A
//! failed delivery ends the session: the uplink is marked offline, the producer is dropped
//! (purging what it still held), and the next session sends again from the committed cursors
//! (duplicates only then, each recognisable by the `outpost-topic` and `outpost-offset`
//! headers) after an exponential back-off. With nothing to send the task waits on [`crate::log::Topic::wait_for`] of
//! the eligible topics (or an operator's switch, or 1 s for schedules and new topics): no
//! busy loop.
//!
//! # Data debt
//! Per topic: records not yet acknowledged (`end - cursor`), their bytes (estimated from the
//! topic's average record size on disk) and the age of the oldest. Exposed as gauges
//! `outpost_forward_debt_records{topic,class}`, `outpost_forward_debt_bytes{topic,class}`,
//! `outpost_forward_debt_oldest_seconds{topic,class}` and in `GET /forward` ([`api`]).
//!
//! # Retention
//! The forwarder is a [`RetentionGuard`]: a segment of a forwarded topic is kept until its
//! records are forwarded (`protected_from` = the cursor) — unless the disk budget forces
//! eviction by priority ([`evict`]: unrouted topics, then bulk, then normal, never critical).
//! Each eviction leaves a gap marker in `outpost.gaps`, itself forwarded as critical, and a
//! cursor below the topic's new start skips ahead to it with a warning naming the range.

// No unwrap/expect on data from devices, the network or the disk: errors are values here.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod budget;
pub mod config;
pub mod evict;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::kernel::{now_ms, Backoff, Context, Shutdown};
use crate::log::{Fetch, Log, LogError, ReadGapPolicy, Record, RetentionGuard, Topic};
use crate::metrics::{self, Counter, Gauge};
use crate::state::{Commit, StateError, StateStore};
use budget::TokenBucket;
pub use config::{Class, ForwardConfig, KafkaConfig, Schedule};
use rules::{Route, Rules};

/// Errors of the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The Kafka client refused its configuration (a bad pass-through property, say).
    #[error("the Kafka producer could not be created: {0}")]
    Client(#[source] KafkaError),
    /// Reading a topic failed.
    #[error("reading topic {topic:?}: {source}")]
    Log {
        topic: String,
        #[source]
        source: LogError,
    },
    /// Moving a cursor failed.
    #[error("storing the forwarding cursor of {topic:?}: {source}")]
    State {
        topic: String,
        #[source]
        source: StateError,
    },
    /// The broker did not acknowledge a record.
    #[error("delivery to {destination:?} failed: {message}")]
    Delivery {
        destination: String,
        message: String,
    },
    /// A blocking step was cancelled.
    #[error("a blocking forwarder task failed: {0}")]
    Task(String),
}

/// Header names every forwarded record carries.
pub const HEADER_EDGE: &str = "outpost-edge";
/// The store id header.
pub const HEADER_STORE: &str = "outpost-store";
/// The local topic header.
pub const HEADER_TOPIC: &str = "outpost-topic";
/// The local offset header (decimal text).
pub const HEADER_OFFSET: &str = "outpost-offset";

/// The forwarder. Cheap to clone; the API and the log's retention hold clones.
#[derive(Debug, Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: Log,
    state: StateStore,
    config: ForwardConfig,
    rules: Rules,
    consumer: String,
    edge_id: String,
    store_id: String,
    /// Committed cursors of the topics seen so far.
    cursors: Mutex<BTreeMap<String, u64>>,
    /// Topics whose forwarding stopped at a range the log cannot read
    /// (`log.on_read_gap = "stop"`), with why; they stay stopped until a restart.
    halted: Mutex<BTreeMap<String, String>>,
    /// The operator's switch for `manual` bulk topics.
    bulk_enabled: AtomicBool,
    online: AtomicBool,
    last_error: Mutex<Option<String>>,
    wake: Notify,
    buckets: Mutex<Buckets>,
    metrics: Metrics,
}

#[derive(Debug)]
struct Buckets {
    uplink: TokenBucket,
    classes: [TokenBucket; 3],
}

#[derive(Debug)]
struct Metrics {
    online: Gauge,
    failures: Counter,
}

fn class_index(class: Class) -> usize {
    match class {
        Class::Critical => 0,
        Class::Normal => 1,
        Class::Bulk => 2,
    }
}

/// One topic's forwarding numbers, as `GET /forward` shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicDebt {
    pub topic: String,
    pub class: Class,
    pub destination: String,
    /// Next offset to forward.
    pub cursor: u64,
    /// Offset the next local record will get.
    pub end: u64,
    pub debt_records: u64,
    /// Estimated from the topic's average stored record size.
    pub debt_bytes: u64,
    /// Age of the oldest record not yet forwarded, in seconds (0 without debt).
    pub oldest_age_s: f64,
}

/// What `GET /forward` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardStatus {
    pub cluster: String,
    pub brokers: String,
    pub online: bool,
    pub last_error: Option<String>,
    pub bulk_enabled: bool,
    /// Topics whose forwarding stopped at a range the log cannot read
    /// (`log.on_read_gap = "stop"`), with the gap; until a restart.
    pub stopped_at_gaps: BTreeMap<String, String>,
    pub topics: Vec<TopicDebt>,
    /// Sum per class: (records, bytes).
    pub classes: BTreeMap<Class, ClassDebt>,
}

/// Debt of one class.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassDebt {
    pub debt_records: u64,
    pub debt_bytes: u64,
    pub oldest_age_s: f64,
}

/// A topic to send from in one round.
struct Work {
    topic: Topic,
    route: Route,
    cursor: u64,
    end: u64,
}

/// Records handed to the producer for one topic, awaiting their delivery reports.
struct InFlight {
    topic: String,
    destination: String,
    class: Class,
    cursor: u64,
    pending: Vec<(u64, u64, DeliveryFuture)>,
    /// Set when the producer refused a record: nothing from it on was handed over.
    refused: Option<String>,
    /// When the first record was handed over.
    handed_at: Instant,
    /// A flight without records that moves the cursor past a range the log cannot read
    /// (`log.on_read_gap = "skip"`), once every earlier flight of the topic is acknowledged.
    skip_to: Option<u64>,
}

/// One producer (one idempotence session) with its acknowledging task.
struct Session {
    producer: FutureProducer,
    /// Flights in hand-over order; the bound is `forward.in_flight_batches`.
    flights: mpsc::Sender<InFlight>,
    acker: tokio::task::JoinHandle<()>,
    shared: Arc<SessionShared>,
    /// Per topic: the offset after the last record handed to this producer.
    sent: BTreeMap<String, u64>,
    /// Records handed to this producer so far.
    handed: u64,
    /// Flights handed to the acknowledging task so far.
    handed_flights: u64,
    /// The next chunk of the topic last sent from, read while that chunk is handed over.
    read_ahead: Option<ReadAhead>,
}

/// A chunk being read on the blocking pool ahead of its turn.
struct ReadAhead {
    topic: String,
    from: u64,
    read: tokio::task::JoinHandle<Result<Fetch, LogError>>,
}

impl Session {
    fn take_error(&self) -> Option<ForwardError> {
        crate::log::lock(&self.shared.error).take()
    }
}

/// Counts a flight's records as settled when dropped (however its handling ends).
struct Settled<'a>(&'a SessionShared, u64);

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        self.0.settled_records.fetch_add(self.1, Ordering::SeqCst);
        self.0.settled_flights.fetch_add(1, Ordering::SeqCst);
        self.0.progress.notify_one();
    }
}

/// What the acknowledging task tells the sender.
#[derive(Default)]
struct SessionShared {
    /// The first failure; set once, the session then ends.
    error: Mutex<Option<ForwardError>>,
    failed: AtomicBool,
    /// Flights acknowledged in full.
    acked_flights: AtomicU64,
    /// Records whose delivery report arrived (acknowledged or not).
    settled_records: AtomicU64,
    /// Flights whose records all settled.
    settled_flights: AtomicU64,
    /// Acknowledged records per second, smoothed; 0 until the first flight is acknowledged.
    rate: Mutex<f64>,
    /// Signalled after each settled flight.
    progress: Notify,
}

impl SessionShared {
    fn fail(&self, e: ForwardError) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            *crate::log::lock(&self.error) = Some(e);
        }
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Forwarder {
    /// A forwarder for this box; call [`Forwarder::run`] to start it.
    pub fn new(ctx: &Context, config: ForwardConfig) -> Forwarder {
        let (log, state) = (ctx.log.clone(), ctx.state.clone());
        let (edge_id, store_id) = (ctx.identity.edge_id(), ctx.identity.store_id());
        let reg = metrics::global();
        let bucket = |rate: u64| TokenBucket::new(rate);
        let buckets = Buckets {
            uplink: bucket(config.budget_bytes_per_sec),
            classes: [
                bucket(config.critical_bytes_per_sec),
                bucket(config.normal_bytes_per_sec),
                bucket(config.bulk_bytes_per_sec),
            ],
        };
        Forwarder {
            inner: Arc::new(Inner {
                rules: Rules::new(config.clone(), edge_id, store_id),
                consumer: format!("forward:{}", config.cluster),
                log,
                state,
                config,
                edge_id: edge_id.to_string(),
                store_id: store_id.to_string(),
                cursors: Mutex::new(BTreeMap::new()),
                halted: Mutex::new(BTreeMap::new()),
                bulk_enabled: AtomicBool::new(false),
                online: AtomicBool::new(false),
                last_error: Mutex::new(None),
                wake: Notify::new(),
                buckets: Mutex::new(buckets),
                metrics: Metrics {
                    online: reg.gauge(
                        "outpost_forward_online",
                        "1 while the last send to the cloud cluster succeeded, else 0.",
                        &[],
                    ),
                    failures: reg.counter(
                        "outpost_forward_failures_total",
                        "Send rounds that failed (broker unreachable or records refused).",
                        &[],
                    ),
                },
            }),
        }
    }

    /// The state-store consumer name of the cursors (`forward:<cluster>`).
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// Turns sending of `manual` bulk topics on or off (harbour mode).
    pub fn set_bulk_enabled(&self, enabled: bool) {
        self.inner.bulk_enabled.store(enabled, Ordering::SeqCst);
        tracing::info!(enabled, "Bulk forwarding switched by the operator.");
        self.inner.wake.notify_one();
    }

    /// Whether the last send round succeeded.
    pub fn online(&self) -> bool {
        self.inner.online.load(Ordering::SeqCst)
    }

    fn producer(&self) -> Result<FutureProducer, ForwardError> {
        let k = &self.inner.config.kafka;
        let mut cc = ClientConfig::new();
        cc.set("client.id", format!("outpost-{}", self.inner.edge_id))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("compression.type", k.compression.as_str())
            .set("linger.ms", k.linger_ms.to_string())
            .set("batch.size", k.batch_bytes.to_string())
            .set("message.timeout.ms", k.delivery_timeout_ms.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576");
        for (key, value) in k.client_properties() {
            cc.set(key, value);
        }
        cc.create().map_err(ForwardError::Client)
    }

    /// The committed cursor of `topic` (loaded from the state store on first use; records
    /// already removed from the log are skipped with a warning).
    fn cursor(&self, topic: &Topic) -> Result<u64, ForwardError> {
        let name = topic.name();
        if let Some(c) = crate::log::lock(&self.inner.cursors).get_mut(name) {
            // Eviction under the disk budget (or retention) may have removed records below
            // the cached cursor: skip ahead to the log start; `outpost.gaps` records the range.
            let start = topic.start_offset();
            if *c < start {
                tracing::warn!(
                    topic = name,
                    from_offset = *c,
                    to_offset = start - 1,
                    "Records were removed from the log before they were forwarded; forwarding continues after the gap."
                );
                *c = start;
            }
            return Ok(*c);
        }
        let resume = self
            .inner
            .state
            .resume(&self.inner.consumer, name, topic.start_offset())
            .map_err(|source| ForwardError::State {
                topic: name.to_string(),
                source,
            })?;
        if let Some(from) = resume.skipped_from {
            tracing::warn!(
                topic = name,
                from_offset = from,
                to_offset = resume.offset,
                "Records were removed from the log before they were forwarded."
            );
        }
        crate::log::lock(&self.inner.cursors).insert(name.to_string(), resume.offset);
        Ok(resume.offset)
    }

    fn commit_cursor(&self, topic: &str, next: u64) -> Result<(), ForwardError> {
        self.inner
            .state
            .commit(&Commit {
                consumer: self.inner.consumer.clone(),
                offsets: vec![(topic.to_string(), next)],
                ..Commit::default()
            })
            .map_err(|source| ForwardError::State {
                topic: topic.to_string(),
                source,
            })?;
        crate::log::lock(&self.inner.cursors).insert(topic.to_string(), next);
        Ok(())
    }

    /// Every forwarded topic with its route, cursor and end.
    fn survey(&self) -> Result<Vec<Work>, ForwardError> {
        let mut out = Vec::new();
        for topic in self.inner.log.topics() {
            let Some(route) = self.inner.rules.route(topic.name()) else {
                continue;
            };
            let cursor = self.cursor(&topic)?;
            let end = topic.next_offset();
            out.push(Work {
                topic,
                route,
                cursor,
                end,
            });
        }
        Ok(out)
    }

    /// Picks the topics of this round (see the module doc) and the topics worth waiting on.
    fn pick(&self, all: Vec<Work>, now_ms: u64) -> (Vec<Work>, Vec<Topic>) {
        let batch = self.inner.config.batch_records as u64;
        let manual = self.inner.bulk_enabled.load(Ordering::SeqCst);
        let live = |class: Class| {
            all.iter()
                .filter(|w| w.route.class == class)
                .all(|w| w.end.saturating_sub(w.cursor) <= batch)
        };
        let normal_ok = live(Class::Critical);
        let bulk_ok = normal_ok && live(Class::Normal);
        let mut send = Vec::new();
        let mut watch = Vec::new();
        for w in all {
            let eligible = match w.route.class {
                Class::Critical => true,
                Class::Normal => true,
                Class::Bulk => w.route.schedule.allows(now_ms, manual),
            };
            if !eligible {
                continue;
            }
            let allowed_now = match w.route.class {
                Class::Critical => true,
                Class::Normal => normal_ok,
                Class::Bulk => bulk_ok,
            };
            if w.end > w.cursor && allowed_now {
                send.push(w);
            } else {
                watch.push(w.topic.clone());
            }
        }
        send.sort_by_key(|w| w.route.class);
        (send, watch)
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ForwardError> {
        let cfg = &self.inner.config;
        tracing::info!(
            brokers = %cfg.kafka.brokers,
            cluster = %cfg.cluster,
            consumer = %self.inner.consumer,
            in_flight_batches = cfg.in_flight_batches,
            "Forwarding to the cloud cluster is on."
        );
        let mut session: Option<Session> = None;
        let mut backoff = Backoff::from_millis(cfg.backoff_initial_ms, cfg.backoff_max_ms);
        let mut last_metrics: Option<Instant> = None;
        loop {
            if shutdown.is_requested() {
                if let Some(s) = session.take() {
                    self.end_session(s, true).await;
                }
                return Ok(());
            }
            if let Some(e) = session.as_ref().and_then(Session::take_error) {
                if let Some(s) = session.take() {
                    if s.shared.acked_flights.load(Ordering::SeqCst) > 0 {
                        backoff.reset();
                    }
                    // Records handed over after the failure are purged; the next session
                    // sends again from the committed cursors.
                    self.end_session(s, false).await;
                }
                let wait = backoff.next_delay();
                self.note_failure(&e, wait);
                self.pause(wait, &shutdown).await;
                continue;
            }
            let s = match &mut session {
                Some(s) => s,
                None => session.insert(self.start_session()?),
            };
            if s.shared.acked_flights.load(Ordering::SeqCst) > 0 {
                backoff.reset();
            }
            let this = self.clone();
            let mut all = tokio::task::spawn_blocking(move || this.survey())
                .await
                .map_err(|e| ForwardError::Task(e.to_string()))??;
            if last_metrics.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_metrics = Some(Instant::now());
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.status()).await;
            }
            // Topics stopped at a range the log cannot read are not sent from again.
            {
                let halted = crate::log::lock(&self.inner.halted);
                all.retain(|w| !halted.contains_key(w.topic.name()));
            }
            // Records handed over but not yet acknowledged are not picked again.
            for w in &mut all {
                if let Some(&sent) = s.sent.get(w.topic.name()) {
                    w.cursor = w.cursor.max(sent);
                }
            }
            let (send, waits) = self.pick(all, now_ms());
            if send.is_empty() {
                self.idle(waits, &shutdown).await;
                continue;
            }
            if let Err(e) = self.send_round(s, send, &shutdown).await {
                let wait = backoff.next_delay();
                self.note_failure(&e, wait);
                self.pause(wait, &shutdown).await;
            }
        }
    }

    /// Logs a failed attempt and records it in the status.
    fn note_failure(&self, e: &ForwardError, backoff: Duration) {
        match e {
            ForwardError::Log { .. } | ForwardError::State { .. } | ForwardError::Task(_) => {
                tracing::error!(error = %e, "Forwarding failed on local storage; trying again after a pause.");
            }
            _ => {
                self.inner.metrics.failures.inc();
                self.inner.metrics.online.set(0.0);
                let was_online = self.inner.online.swap(false, Ordering::SeqCst);
                tracing::warn!(
                    error = %e,
                    was_online,
                    backoff_ms = backoff.as_millis() as u64,
                    "Forwarding is offline; records are sent again from the cursor after a pause."
                );
            }
        }
        *crate::log::lock(&self.inner.last_error) = Some(e.to_string());
    }

    /// A fresh producer (a fresh idempotence session) and its acknowledging task.
    fn start_session(&self) -> Result<Session, ForwardError> {
        let producer = self.producer()?;
        let (tx, rx) = mpsc::channel(self.inner.config.in_flight_batches);
        let shared = Arc::new(SessionShared::default());
        let acker = tokio::spawn(self.clone().acknowledge(rx, shared.clone()));
        Ok(Session {
            producer,
            flights: tx,
            acker,
            shared,
            sent: BTreeMap::new(),
            handed: 0,
            handed_flights: 0,
            read_ahead: None,
        })
    }

    /// Ends a session. `graceful`: the reports of what was handed over are awaited up to 5 s
    /// first; otherwise the producer is dropped at once, which purges what it still holds
    /// (those records fail and their cursors stay).
    async fn end_session(&self, s: Session, graceful: bool) {
        let Session {
            producer,
            flights,
            mut acker,
            ..
        } = s;
        drop(flights);
        if graceful
            && tokio::time::timeout(Duration::from_secs(5), &mut acker)
                .await
                .is_ok()
        {
            let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
            return;
        }
        // Dropping the producer purges its queue and flushes for up to 0.5 s: blocking.
        let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
        let _ = acker.await;
    }

    /// Awaits the delivery reports of every flight in hand-over order and moves each topic's
    /// cursor over its acknowledged prefix. After a topic's first failure nothing more of it is
    /// committed in this session (its later records may have landed: they are the duplicates
    /// the next session's resend makes, recognisable by their headers).
    async fn acknowledge(self, mut flights: mpsc::Receiver<InFlight>, shared: Arc<SessionShared>) {
        let mut failed_topics: BTreeSet<String> = BTreeSet::new();
        let mut last_settled: Option<Instant> = None;
        while let Some(flight) = flights.recv().await {
            let count = flight.pending.len() as u64;
            let _settled = Settled(&shared, count);
            if failed_topics.contains(&flight.topic) {
                continue;
            }
            if let Some(to) = flight.skip_to.filter(|_| flight.pending.is_empty()) {
                let this = self.clone();
                let topic = flight.topic.clone();
                let committed = tokio::task::spawn_blocking(move || this.commit_cursor(&topic, to))
                    .await
                    .map_err(|e| ForwardError::Task(e.to_string()))
                    .and_then(|r| r);
                if let Err(e) = committed {
                    failed_topics.insert(flight.topic.clone());
                    shared.fail(e);
                    self.inner.wake.notify_one();
                }
                continue;
            }
            let mut next = flight.cursor;
            let mut records = 0u64;
            let mut bytes = 0u64;
            let mut failed = flight.refused.clone();
            let handed_at = flight.handed_at;
            for (offset, size, fut) in flight.pending {
                match fut.await {
                    Ok(Ok(_)) => {
                        next = offset + 1;
                        records += 1;
                        bytes += size;
                    }
                    Ok(Err((e, _))) => {
                        failed.get_or_insert_with(|| e.to_string());
                        break;
                    }
                    Err(_) => {
                        failed.get_or_insert_with(|| "the delivery report was lost".into());
                        break;
                    }
                }
            }
            if next > flight.cursor {
                let this = self.clone();
                let topic = flight.topic.clone();
                let committed =
                    tokio::task::spawn_blocking(move || this.commit_cursor(&topic, next))
                        .await
                        .map_err(|e| ForwardError::Task(e.to_string()))
                        .and_then(|r| r);
                if let Err(e) = committed {
                    failed_topics.insert(flight.topic.clone());
                    shared.fail(e);
                    self.inner.wake.notify_one();
                    continue;
                }
                let reg = metrics::global();
                let labels = [
                    ("topic", flight.topic.as_str()),
                    ("class", flight.class.as_str()),
                ];
                reg.counter(
                    "outpost_forward_records_total",
                    "Records the cloud cluster acknowledged.",
                    &labels,
                )
                .add(records);
                reg.counter(
                    "outpost_forward_bytes_total",
                    "Bytes (key, value, headers) the cloud cluster acknowledged.",
                    &labels,
                )
                .add(bytes);
            }
            match failed {
                Some(message) => {
                    failed_topics.insert(flight.topic.clone());
                    shared.fail(ForwardError::Delivery {
                        destination: flight.destination.clone(),
                        message,
                    });
                    self.inner.wake.notify_one();
                }
                None => {
                    // The broker's pace: this flight's records over the time since it was
                    // handed over or the previous flight settled, whichever is later.
                    let now = Instant::now();
                    let since = last_settled.map_or(handed_at, |t| t.max(handed_at));
                    let secs = now.duration_since(since).as_secs_f64().max(1e-3);
                    let sample = records as f64 / secs;
                    {
                        let mut rate = crate::log::lock(&shared.rate);
                        *rate = if *rate == 0.0 {
                            sample
                        } else {
                            0.7 * *rate + 0.3 * sample
                        };
                    }
                    last_settled = Some(now);
                    shared.acked_flights.fetch_add(1, Ordering::SeqCst);
                    if !self.inner.online.swap(true, Ordering::SeqCst) {
                        tracing::info!(
                            "The cloud cluster acknowledges records; forwarding is online."
                        );
                    }
                    self.inner.metrics.online.set(1.0);
                    *crate::log::lock(&self.inner.last_error) = None;
                }
            }
        }
    }

    async fn pause(&self, d: Duration, shutdown: &Shutdown) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = shutdown.requested() => {}
        }
    }

    /// Waits for new records on any of `topics`, the operator's switch, shutdown, or 1 s.
    async fn idle(&self, topics: Vec<Topic>, shutdown: &Shutdown) {
        let limit = Duration::from_secs(1);
        let mut set = tokio::task::JoinSet::new();
        for t in topics {
            let from = t.next_offset();
            set.spawn(async move { t.wait_for(from, limit).await });
        }
        tokio::select! {
            _ = set.join_next(), if !set.is_empty() => {}
            _ = tokio::time::sleep(limit) => {}
            _ = self.inner.wake.notified() => {}
            _ = shutdown.requested() => {}
        }
        set.abort_all();
    }

    /// Reads, budgets and hands over one chunk per picked topic, queueing each for the
    /// acknowledging task; waits only when `in_flight_batches` chunks are unacknowledged.
    async fn send_round(
        &self,
        session: &mut Session,
        send: Vec<Work>,
        shutdown: &Shutdown,
    ) -> Result<(), ForwardError> {
        let cfg = &self.inner.config;
        for w in send {
            if session.shared.failed() {
                // The session ends at the top of the loop.
                return Ok(());
            }
            let class = w.route.class;
            let max_bytes = {
                let b = crate::log::lock(&self.inner.buckets);
                [
                    b.uplink.chunk_bytes(),
                    b.classes[class_index(class)].chunk_bytes(),
                ]
                .into_iter()
                .flatten()
                .fold(cfg.batch_bytes, usize::min)
            };
            let max_records = cfg.batch_records.min((w.end - w.cursor) as usize);
            if !self
                .window_open(session, max_records as u64, shutdown)
                .await
            {
                return Ok(());
            }
            let from = w.cursor;
            let read = match session.read_ahead.take() {
                Some(ahead) if ahead.topic == w.topic.name() && ahead.from == from => ahead.read,
                other => {
                    if let Some(stale) = other {
                        stale.read.abort();
                    }
                    let topic = w.topic.clone();
                    tokio::task::spawn_blocking(move || topic.read(from, max_records, max_bytes))
                }
            };
            let fetch = match read.await.map_err(|e| ForwardError::Task(e.to_string()))? {
                Ok(fetch) => fetch,
                Err(LogError::Gap {
                    from_offset,
                    next_offset,
                    ..
                }) if self.inner.log.on_read_gap() == ReadGapPolicy::Skip => {
                    tracing::warn!(topic = w.topic.name(), from_offset, next_offset, "Records the log cannot read are skipped by the forwarder (`log.on_read_gap = \"skip\"`); outpost.gaps records the range.");
                    let flight = InFlight {
                        topic: w.topic.name().to_string(),
                        destination: w.route.destination.clone(),
                        class,
                        cursor: from,
                        pending: Vec::new(),
                        refused: None,
                        handed_at: Instant::now(),
                        skip_to: Some(next_offset),
                    };
                    session.handed_flights += 1;
                    session.sent.insert(w.topic.name().to_string(), next_offset);
                    let queued = tokio::select! {
                        r = session.flights.send(flight) => r.is_ok(),
                        _ = shutdown.requested() => return Ok(()),
                    };
                    if !queued {
                        session
                            .shared
                            .fail(ForwardError::Task("the acknowledging task ended".into()));
                        return Ok(());
                    }
                    continue;
                }
                Err(source @ LogError::Gap { .. }) => {
                    let message = format!(
                        "forwarding of {} stopped (`log.on_read_gap = \"stop\"`): {source}",
                        w.topic.name()
                    );
                    tracing::error!(topic = w.topic.name(), error = %source, "Forwarding of a topic stops at a range the log cannot read.");
                    crate::log::lock(&self.inner.halted)
                        .insert(w.topic.name().to_string(), message.clone());
                    *crate::log::lock(&self.inner.last_error) = Some(message);
                    continue;
                }
                Err(source) => {
                    return Err(ForwardError::Log {
                        topic: w.topic.name().to_string(),
                        source,
                    })
                }
            };
            let mut cursor = w.cursor;
            if fetch.start_offset > cursor {
                // Retention removed records before they were forwarded.
                tracing::warn!(
                    topic = w.topic.name(),
                    from_offset = cursor,
                    to_offset = fetch.start_offset,
                    "Records were removed from the log before they were forwarded."
                );
                cursor = fetch.start_offset;
            }
            let Some(last) = fetch.records.last() else {
                continue;
            };
            let sent_to = last.offset + 1;
            if sent_to < w.end {
                // Read the topic's next chunk while this one is budgeted and handed over.
                let topic = w.topic.clone();
                let more = cfg.batch_records.min((w.end - sent_to) as usize);
                session.read_ahead = Some(ReadAhead {
                    topic: w.topic.name().to_string(),
                    from: sent_to,
                    read: tokio::task::spawn_blocking(move || topic.read(sent_to, more, max_bytes)),
                });
            }
            // The budget counts what goes on the uplink: the record plus the four headers.
            let extra = (HEADER_EDGE.len()
                + HEADER_STORE.len()
                + HEADER_TOPIC.len()
                + HEADER_OFFSET.len()
                + self.inner.edge_id.len()
                + self.inner.store_id.len()
                + w.topic.name().len()) as u64;
            let bytes: u64 = fetch
                .records
                .iter()
                .map(|r| record_bytes(r) + extra + decimal_len(r.offset))
                .sum();
            let wait = {
                let now = Instant::now();
                let mut b = crate::log::lock(&self.inner.buckets);
                let a = b.uplink.take(bytes, now);
                let c = b.classes[class_index(class)].take(bytes, now);
                a.max(c)
            };
            if !wait.is_zero() {
                let stopping = tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    _ = shutdown.requested() => true,
                };
                if stopping {
                    return Ok(());
                }
            }
            let flight = self.hand_over(
                &session.producer,
                &w.route,
                w.topic.name(),
                cursor,
                &fetch.records,
            );
            let refused = flight.refused.is_some();
            session.handed += flight.pending.len() as u64;
            session.handed_flights += 1;
            if !refused {
                session.sent.insert(w.topic.name().to_string(), sent_to);
            }
            let queued = tokio::select! {
                r = session.flights.send(flight) => r.is_ok(),
                _ = shutdown.requested() => return Ok(()),
            };
            if !queued {
                session
                    .shared
                    .fail(ForwardError::Task("the acknowledging task ended".into()));
                return Ok(());
            }
            if refused {
                // The acknowledging task reports the refusal once the flight's earlier
                // records are settled.
                return Ok(());
            }
        }
        Ok(())
    }

    /// Waits until `records` more may be handed over: at most `in_flight_batches` batches await
    /// their reports, and their records stay within what the broker acknowledges in a quarter
    /// of `delivery_timeout_ms` at its recent pace (at least one batch), so that a slow broker
    /// is never given more than it can take before records time out in librdkafka's queue.
    /// False when the session failed or shutdown was requested meanwhile.
    async fn window_open(&self, session: &Session, records: u64, shutdown: &Shutdown) -> bool {
        let cfg = &self.inner.config;
        let horizon_s = cfg.kafka.delivery_timeout_ms as f64 / 4000.0;
        loop {
            if session.shared.failed() || shutdown.is_requested() {
                return false;
            }
            let settled = session.shared.settled_records.load(Ordering::SeqCst);
            let waiting = session.handed.saturating_sub(settled);
            let flights = session
                .handed_flights
                .saturating_sub(session.shared.settled_flights.load(Ordering::SeqCst));
            let rate = *crate::log::lock(&session.shared.rate);
            let window = (rate * horizon_s).max(cfg.batch_records as f64);
            if flights == 0
                || (flights < cfg.in_flight_batches as u64 && (waiting + records) as f64 <= window)
            {
                return true;
            }
            tokio::select! {
                _ = session.shared.progress.notified() => {}
                // A report can settle between the check and the wait.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.requested() => return false,
            }
        }
    }

    /// Hands one topic's records to the producer, in offset order.
    fn hand_over(
        &self,
        producer: &FutureProducer,
        route: &Route,
        topic: &str,
        cursor: u64,
        records: &[Record],
    ) -> InFlight {
        let mut flight = InFlight {
            topic: topic.to_string(),
            destination: route.destination.clone(),
            class: route.class,
            cursor,
            pending: Vec::with_capacity(records.len()),
            refused: None,
            handed_at: Instant::now(),
            skip_to: None,
        };
        let mut offset_buf = [0u8; 20];
        for r in records {
            let offset_text = decimal(r.offset, &mut offset_buf);
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 4);
            for (name, value) in &r.headers {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: Some(value.as_slice()),
                });
            }
            for (name, value) in [
                (HEADER_EDGE, self.inner.edge_id.as_bytes()),
                (HEADER_STORE, self.inner.store_id.as_bytes()),
                (HEADER_TOPIC, topic.as_bytes()),
                (HEADER_OFFSET, offset_text),
            ] {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            // The record's own key is borrowed; only a JSON pointer makes a new one.
            let pointed = route
                .key_pointer
                .as_deref()
                .map(|p| rules::kafka_key(Some(p), r.key.as_deref(), &r.value));
            let key = match &pointed {
                Some(k) => k.as_deref(),
                None => r.key.as_deref(),
            };
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&route.destination)
                .payload(r.value.as_slice())
                .headers(headers)
                .timestamp(r.timestamp_ms as i64);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            match producer.send_result(rec) {
                Ok(fut) => flight.pending.push((r.offset, record_bytes(r), fut)),
                Err((e, _)) => {
                    flight.refused = Some(e.to_string());
                    break;
                }
            }
        }
        flight
    }

    /// The data debt of every forwarded topic; refreshes the debt gauges. Blocking (reads the
    /// oldest unforwarded record of each topic).
    pub fn status(&self) -> Result<ForwardStatus, ForwardError> {
        let now = now_ms();
        let reg = metrics::global();
        let mut topics = Vec::new();
        let mut classes: BTreeMap<Class, ClassDebt> = BTreeMap::new();
        for w in self.survey()? {
            let stats = w.topic.stats();
            let debt_records = w.end.saturating_sub(w.cursor);
            let stored = stats.next_offset.saturating_sub(stats.first_offset);
            let debt_bytes = if stored == 0 {
                0
            } else {
                (stats.bytes as f64 * debt_records as f64 / stored as f64) as u64
            };
            let oldest_age_s = if debt_records == 0 {
                0.0
            } else {
                match w.topic.read(w.cursor, 1, 1) {
                    Ok(f) => f
                        .records
                        .first()
                        .map_or(0.0, |r| now.saturating_sub(r.timestamp_ms) as f64 / 1000.0),
                    Err(_) => 0.0,
                }
            };
            let labels = [("topic", w.topic.name()), ("class", w.route.class.as_str())];
            reg.gauge(
                "outpost_forward_debt_records",
                "Records of the topic not yet acknowledged by the cloud cluster.",
                &labels,
            )
            .set(debt_records as f64);
            reg.gauge(
                "outpost_forward_debt_bytes",
                "Estimated bytes of the topic not yet acknowledged by the cloud cluster.",
                &labels,
            )
            .set(debt_bytes as f64);
            reg.gauge(
                "outpost_forward_debt_oldest_seconds",
                "Age of the oldest record not yet acknowledged by the cloud cluster.",
                &labels,
            )
            .set(oldest_age_s);
            let c = classes.entry(w.route.class).or_default();
            c.debt_records += debt_records;
            c.debt_bytes += debt_bytes;
            c.oldest_age_s = c.oldest_age_s.max(oldest_age_s);
            topics.push(TopicDebt {
                topic: w.topic.name().to_string(),
                class: w.route.class,
                destination: w.route.destination.clone(),
                cursor: w.cursor,
                end: w.end,
                debt_records,
                debt_bytes,
                oldest_age_s,
            });
        }
        Ok(ForwardStatus {
            cluster: self.inner.config.cluster.clone(),
            brokers: self.inner.config.kafka.brokers.clone(),
            online: self.online(),
            last_error: crate::log::lock(&self.inner.last_error).clone(),
            bulk_enabled: self.inner.bulk_enabled.load(Ordering::SeqCst),
            stopped_at_gaps: crate::log::lock(&self.inner.halted).clone(),
            topics,
            classes,
        })
    }
}

/// `n` as decimal text in `buf`, without allocating.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn decimal_len(n: u64) -> u64 {
    n.checked_ilog10().map_or(1, |d| u64::from(d) + 1)
}

/// Bytes a record costs on the uplink budget: its payload size, as the log counts it.
fn record_bytes(r: &Record) -> u64 {
    r.payload_size() as u64
}

/// A segment of a forwarded topic stays until its records are forwarded.
impl RetentionGuard for Forwarder {
    fn protected_from(&self, topic: &str) -> Option<u64> {
        self.inner.rules.route(topic)?;
        if let Some(c) = crate::log::lock(&self.inner.cursors).get(topic) {
            return Some(*c);
        }
        // Not loaded yet: the stored cursor, or everything when there is none (or it cannot
        // be read: keeping data is the safe side).
        match self.inner.state.offset(&self.inner.consumer, topic) {
            Ok(Some(c)) => Some(c),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_written_as_decimal_text_without_allocating() {
        let mut buf = [0u8; 20];
        for n in [0u64, 7, 10, 99, 4_294_967_296, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
            assert_eq!(decimal_len(n), n.to_string().len() as u64);
        }
    }
}
