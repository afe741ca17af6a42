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
//! partition is kept even across retries). It then awaits every delivery report; a topic's
//! cursor moves (one `StateStore::commit` as consumer `forward:<cluster>`) to just past the
//! longest prefix the broker acknowledged. A failed delivery marks the uplink offline, drops
//! the producer (its records are sent again from the cursor: duplicates only then, each
//! recognisable by the `outpost-topic` and `outpost-offset` headers) and backs off
//! exponentially. With nothing to send the task waits on [`crate::log::Topic::wait_for`] of
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
//! records are forwarded (`protected_from` = the cursor).

pub mod api;
pub mod budget;
pub mod config;
pub mod rules;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::log::{Log, LogError, Record, RetentionGuard, Topic};
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
}

impl Forwarder {
    /// A forwarder for this box; call [`Forwarder::run`] to start it.
    pub fn new(
        log: Log,
        state: StateStore,
        config: ForwardConfig,
        edge_id: &str,
        store_id: &str,
    ) -> Forwarder {
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
        if let Some(c) = crate::log::lock(&self.inner.cursors).get(name) {
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
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ForwardError> {
        let cfg = &self.inner.config;
        tracing::info!(
            brokers = %cfg.kafka.brokers,
            cluster = %cfg.cluster,
            consumer = %self.inner.consumer,
            "Forwarding to the cloud cluster is on."
        );
        let mut producer: Option<FutureProducer> = None;
        let mut backoff = Duration::from_millis(cfg.backoff_initial_ms);
        let max_backoff = Duration::from_millis(cfg.backoff_max_ms);
        let mut last_metrics: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let prod = match &producer {
                Some(p) => p.clone(),
                None => {
                    let p = self.producer()?;
                    producer = Some(p.clone());
                    p
                }
            };
            let this = self.clone();
            let all = tokio::task::spawn_blocking(move || this.survey())
                .await
                .map_err(|e| ForwardError::Task(e.to_string()))??;
            if last_metrics.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_metrics = Some(Instant::now());
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.status()).await;
            }
            let (send, waits) = self.pick(all, now_ms());
            if send.is_empty() {
                self.idle(waits, &mut shutdown).await;
                continue;
            }
            match self.round(&prod, send, &mut shutdown).await {
                Ok(()) => {
                    if !self.inner.online.swap(true, Ordering::SeqCst) {
                        tracing::info!(
                            "The cloud cluster acknowledges records; forwarding is online."
                        );
                    }
                    self.inner.metrics.online.set(1.0);
                    *crate::log::lock(&self.inner.last_error) = None;
                    backoff = Duration::from_millis(cfg.backoff_initial_ms);
                }
                Err(
                    e @ (ForwardError::Log { .. }
                    | ForwardError::State { .. }
                    | ForwardError::Task(_)),
                ) => {
                    tracing::error!(error = %e, "Forwarding failed on local storage; trying again after a pause.");
                    *crate::log::lock(&self.inner.last_error) = Some(e.to_string());
                    self.pause(backoff, &mut shutdown).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
                Err(e) => {
                    self.inner.metrics.failures.inc();
                    self.inner.metrics.online.set(0.0);
                    let was_online = self.inner.online.swap(false, Ordering::SeqCst);
                    tracing::warn!(
                        error = %e,
                        was_online,
                        backoff_ms = backoff.as_millis() as u64,
                        "Forwarding is offline; records are sent again from the cursor after a pause."
                    );
                    *crate::log::lock(&self.inner.last_error) = Some(e.to_string());
                    // A fresh producer starts a fresh idempotence session.
                    producer = None;
                    drop(prod);
                    self.pause(backoff, &mut shutdown).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    async fn pause(&self, d: Duration, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = crate::api::shutdown_requested(shutdown) => {}
        }
    }

    /// Waits for new records on any of `topics`, the operator's switch, shutdown, or 1 s.
    async fn idle(&self, topics: Vec<Topic>, shutdown: &mut watch::Receiver<bool>) {
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
            _ = crate::api::shutdown_requested(shutdown) => {}
        }
        set.abort_all();
    }

    /// Reads, budgets and sends one chunk per picked topic, then awaits the reports and moves
    /// the cursors. Any failed delivery fails the round (after committing what was acked).
    async fn round(
        &self,
        producer: &FutureProducer,
        send: Vec<Work>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ForwardError> {
        let cfg = &self.inner.config;
        let mut flights = Vec::with_capacity(send.len());
        for w in send {
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
            let topic = w.topic.clone();
            let from = w.cursor;
            let fetch =
                tokio::task::spawn_blocking(move || topic.read(from, max_records, max_bytes))
                    .await
                    .map_err(|e| ForwardError::Task(e.to_string()))?
                    .map_err(|source| ForwardError::Log {
                        topic: w.topic.name().to_string(),
                        source,
                    })?;
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
            if fetch.records.is_empty() {
                continue;
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
                    _ = crate::api::shutdown_requested(shutdown) => true,
                };
                if stopping {
                    // What was handed over already is still awaited and committed below.
                    break;
                }
            }
            flights.push(self.hand_over(
                producer,
                &w.route,
                w.topic.name(),
                cursor,
                &fetch.records,
            ));
        }

        let mut first_error = None;
        // After shutdown was requested, reports are awaited a little longer, then given up.
        let give_up = {
            let mut rx = shutdown.clone();
            async move {
                crate::api::shutdown_requested(&mut rx).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        };
        tokio::pin!(give_up);
        for flight in flights {
            let mut next = flight.cursor;
            let mut records = 0u64;
            let mut bytes = 0u64;
            let mut failed = flight.refused.clone();
            for (offset, size, fut) in flight.pending {
                let outcome = tokio::select! {
                    r = fut => r,
                    _ = &mut give_up => { failed.get_or_insert_with(|| "shutdown".into()); break; }
                };
                match outcome {
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
                tokio::task::spawn_blocking(move || this.commit_cursor(&topic, next))
                    .await
                    .map_err(|e| ForwardError::Task(e.to_string()))??;
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
            if let Some(message) = failed {
                first_error.get_or_insert(ForwardError::Delivery {
                    destination: flight.destination.clone(),
                    message,
                });
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
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
        };
        for r in records {
            let offset_text = r.offset.to_string();
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
                (HEADER_OFFSET, offset_text.as_bytes()),
            ] {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            let key = rules::kafka_key(route.key_pointer.as_deref(), r.key.as_deref(), &r.value);
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&route.destination)
                .payload(r.value.as_slice())
                .headers(headers)
                .timestamp(r.timestamp_ms as i64);
            if let Some(k) = key.as_deref() {
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
            topics,
            classes,
        })
    }
}

fn decimal_len(n: u64) -> u64 {
    n.checked_ilog10().map_or(1, |d| u64::from(d) + 1)
}

/// Bytes a record costs on the uplink budget: key, value, header names and values.
fn record_bytes(r: &Record) -> u64 {
    let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    (r.key.as_ref().map_or(0, Vec::len) + r.value.len() + headers) as u64
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
