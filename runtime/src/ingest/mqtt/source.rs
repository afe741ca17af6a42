//! One `[[mqtt.sources]]` entry: a subscription to an external broker on `rumqttc`, storing
//! what arrives and acknowledging it only once stored.
//!
//! # The ack path
//! The client keeps a persistent session (`clean_session = false`, a fixed client id) and
//! acknowledges manually. The event loop hands each PUBLISH to an appender task; the appender
//! takes everything queued (up to `batch_max_records`), maps it to log records, appends one
//! batch per log topic and, only once every append of the batch returned (after the fsync on
//! `always` topics), sends the PUBACKs (PUBREC for QoS 2) in the order the messages came.
//! A `kill -9` before that leaves the messages unacknowledged at the broker, which redelivers
//! them to the same session: at least once, nothing lost. While the log is full the appender
//! holds the batch and its acks and retries with backoff (status `backpressured`); the broker
//! stops sending once its in-flight window is full.
//!
//! Acks are tied to the connection a message came on: after a reconnect, acks for messages of
//! the old connection are not sent (rumqttc also drops the ones still queued); the broker
//! redelivers those messages and they are stored again. A message no rule maps, or one too
//! large for a log record, is acknowledged without being stored, counted as an error and
//! logged, so it cannot block the session forever.
//!
//! # Contracts
//! A message whose log topic has a store-event contract (`crate::contracts`; `pos.payments`,
//! `pos.baskets`, …) and whose payload breaks it (a payment without `card_id`) is never
//! stored. The publisher is on another broker and cannot be told, and refusing the
//! acknowledgement would only make the broker send the same bytes again for ever, so the
//! message is acknowledged without being stored, like the other messages the box cannot store:
//! counted as an error and in `contract_violations`
//! (`outpost_source_contract_violations_total`), and logged with the problem (the log line is
//! rate-limited, as every repeated line is). `ingest.check_contracts = false` stores it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::sync::mpsc;

use super::config::SourceConfig;
use super::route::Routes;
use super::{build_routes, MqttError};
use crate::contracts::Contracts;
use crate::kernel::{now_ms, Backoff, Context, Link, Shutdown, StatusBoard};
use crate::log::{Log, LogError, NewRecord};
use crate::mqtt_client::{self as client, ClientSettings};

/// A message handed from the event loop to the appender.
#[derive(Debug)]
struct Incoming {
    publish: rumqttc::Publish,
    /// The connection it came on (see [`Session::generation`]).
    generation: u64,
}

/// QoS 0 messages queued for the appender beyond which new QoS 0 messages are dropped (and
/// counted as a gap). QoS 1/2 are never dropped; the broker's in-flight window bounds them.
const QOS0_QUEUE_LIMIT: usize = 100_000;

/// What the event loop and the appender of one source share.
#[derive(Debug)]
struct Session {
    /// Bumped on every disconnect: acks for messages of an older connection are not sent.
    generation: AtomicU64,
    /// Messages queued for the appender.
    queued: AtomicUsize,
}

// Counters of an MQTT source, in its status `details` and as `outpost_source_<key>_total`.
const CONNECTS: &str = "connects";
const CONNECTS_HELP: &str = "Connections an MQTT source made to its broker.";
const REDELIVERED: &str = "redelivered";
const REDELIVERED_HELP: &str = "Messages the broker sent again (DUP) to an MQTT source.";
pub(crate) const KEY_MISSING: &str = "key_missing";
pub(crate) const KEY_MISSING_HELP: &str =
    "Messages stored without a key because the route's key was missing from them.";
const ACKS_SKIPPED: &str = "acks_skipped_after_reconnect";
const ACKS_SKIPPED_HELP: &str =
    "Stored messages whose acknowledgement was skipped because their connection had closed (the broker redelivers them).";
const CONTRACT_VIOLATIONS: &str = "contract_violations";
const CONTRACT_VIOLATIONS_HELP: &str =
    "Messages acknowledged without being stored because their payload breaks the store-event contract of their log topic.";

/// Runs one `[[mqtt.sources]]` entry until shutdown: connects (and reconnects with backoff),
/// subscribes, stores and acknowledges; messages that break their log topic's contract are
/// acknowledged without being stored (see the module doc).
pub async fn run_source(
    ctx: Context,
    cfg: SourceConfig,
    contracts: Contracts,
) -> Result<(), MqttError> {
    let max_record_bytes = ctx.log.max_record_bytes();
    let Context {
        log,
        sources: board,
        shutdown,
        ..
    } = ctx;
    let name = format!("mqtt:{}", cfg.name);
    let routes = build_routes(
        cfg.filters
            .iter()
            .map(|f| (f.filter.as_str(), f.topic.as_deref(), f.key.as_ref())),
    )?;
    let settings = ClientSettings {
        host: cfg.host.clone(),
        port: cfg.port,
        client_id: cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("outpost-{}", cfg.name)),
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        clean_session: cfg.clean_session,
        keep_alive: Duration::from_millis(cfg.keep_alive_ms),
        tls: cfg.tls.clone(),
        max_incoming_packet: max_record_bytes + 1024,
        max_outgoing_packet: 64 * 1024,
        inflight: 16,
        manual_acks: true,
    };
    board.register(&name, "mqtt", |s| {
        s.set_info("broker", settings.address());
        s.set_info("client_id", settings.client_id.clone());
        s.set_info(
            "filters",
            cfg.filters
                .iter()
                .map(|f| f.filter.clone())
                .collect::<Vec<_>>(),
        );
        for (key, help) in [
            (CONNECTS, CONNECTS_HELP),
            (REDELIVERED, REDELIVERED_HELP),
            (KEY_MISSING, KEY_MISSING_HELP),
            (ACKS_SKIPPED, ACKS_SKIPPED_HELP),
            (CONTRACT_VIOLATIONS, CONTRACT_VIOLATIONS_HELP),
        ] {
            s.counter(key, help);
        }
    });

    let options = client::options(&settings)?;
    let (client, mut eventloop) = client::connect(options, cfg.batch_max_records * 2 + 64);
    let session = Arc::new(Session {
        generation: AtomicU64::new(0),
        queued: AtomicUsize::new(0),
    });
    let (tx, rx) = mpsc::unbounded_channel::<Incoming>();
    let appender = tokio::spawn(append_loop(Appender {
        rx,
        client: client.clone(),
        log,
        routes,
        contracts,
        board: board.clone(),
        name: name.clone(),
        session: Arc::clone(&session),
        batch_max: cfg.batch_max_records,
        max_record_bytes,
        shutdown: shutdown.clone(),
    }));
    let filters: Vec<SubscribeFilter> = cfg
        .filters
        .iter()
        .map(|f| SubscribeFilter::new(f.filter.clone(), client::qos(f.qos)))
        .collect();
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.retry_initial_ms),
        Duration::from_millis(cfg.retry_max_ms),
    );
    let mut attempts = 0u64;
    let mut down_since: Option<u64> = None;
    tracing::info!(source = %name, broker = %settings.address(), client_id = %settings.client_id, "MQTT source starting.");
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = shutdown.requested() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                attempts = 0;
                backoff.reset();
                let gap = down_since.take().map(|since| {
                    format!(
                        "disconnected for {} ms (until {})",
                        now_ms().saturating_sub(since),
                        now_ms()
                    )
                });
                board.update(&name, |s| {
                    s.set_link(Link::Connected);
                    if let Some(gap) = gap {
                        s.gap(gap);
                    }
                });
                board.update(&name, |s| s.count(CONNECTS, CONNECTS_HELP, 1));
                tracing::info!(source = %name, session_present = ack.session_present, "MQTT source connected.");
                if !ack.session_present {
                    // A new session: subscribe. With a kept session the broker still has the
                    // subscriptions (subscribing again would resend retained messages).
                    let (c, f, board, name) =
                        (client.clone(), filters.clone(), board.clone(), name.clone());
                    tokio::spawn(async move {
                        if let Err(e) = c.subscribe_many(f).await {
                            board.update(&name, |s| s.error(1));
                            tracing::error!(source = %name, error = %e, "Subscribing failed.");
                        }
                    });
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.dup {
                    board.update(&name, |s| s.count(REDELIVERED, REDELIVERED_HELP, 1));
                }
                let queued = session.queued.load(Ordering::Relaxed);
                if publish.qos == QoS::AtMostOnce && queued >= QOS0_QUEUE_LIMIT {
                    let now = now_ms();
                    board.update(&name, |s| {
                        s.gap(format!(
                            "a QoS 0 message on {} was dropped at {now}: {queued} messages wait for the log",
                            publish.topic
                        ));
                    });
                    continue;
                }
                session.queued.fetch_add(1, Ordering::Relaxed);
                let generation = session.generation.load(Ordering::Acquire);
                if tx
                    .send(Incoming {
                        publish,
                        generation,
                    })
                    .is_err()
                {
                    // The appender ended: only on shutdown.
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    board.update(&name, |s| s.error(refused as u64));
                    tracing::error!(source = %name, refused, "The broker refused subscriptions; check the filters and the broker's access rules.");
                } else {
                    tracing::info!(source = %name, filters = filters.len(), "MQTT source subscribed.");
                }
            }
            Ok(_) => {}
            Err(e) => {
                session.generation.fetch_add(1, Ordering::AcqRel);
                attempts += 1;
                if down_since.is_none() {
                    down_since = Some(now_ms());
                }
                let message = e.to_string();
                board.update(&name, |s| {
                    s.set_link(Link::Retrying {
                        last_error: message.clone(),
                        attempts,
                    })
                });
                let delay = backoff.next_delay();
                if attempts == 1 || attempts % 10 == 0 {
                    tracing::warn!(source = %name, error = %message, attempts, retry_in_ms = delay.as_millis() as u64, "MQTT source disconnected; retrying.");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.requested() => break,
                }
            }
        }
    }
    // Shutdown: let the appender store and acknowledge what it already has, then leave the
    // session politely so the broker keeps it (and redelivers anything unacknowledged).
    drop(tx);
    let _ = client.try_disconnect();
    let flush = async {
        let mut appender = appender;
        let mut appender_done = false;
        loop {
            tokio::select! {
                r = &mut appender, if !appender_done => {
                    appender_done = true;
                    let _ = r;
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) if appender_done => break,
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
    board.update(&name, |s| s.set_link(Link::Stopped));
    tracing::info!(source = %name, "MQTT source stopped.");
    Ok(())
}

struct Appender {
    rx: mpsc::UnboundedReceiver<Incoming>,
    client: AsyncClient,
    log: Log,
    routes: Routes,
    contracts: Contracts,
    board: StatusBoard,
    name: String,
    session: Arc<Session>,
    batch_max: usize,
    max_record_bytes: usize,
    shutdown: Shutdown,
}

/// Stores batches of messages and acknowledges them once stored.
async fn append_loop(mut a: Appender) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while let Some(first) = a.rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < a.batch_max {
            match a.rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        a.session.queued.fetch_sub(batch.len(), Ordering::Relaxed);

        let mut groups: Vec<(String, Vec<NewRecord>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let (mut stored, mut key_missing, mut refused) = (0u64, 0u64, 0u64);
        let mut violations = 0u64;
        for m in &batch {
            let topic = &m.publish.topic;
            let mapped = match a.routes.find(topic) {
                Some(route) => route.map(topic, &m.publish.payload, None),
                None => {
                    refused += 1;
                    tracing::warn!(source = %a.name, topic = %topic, "A message matched no filter of the source; it is acknowledged without being stored.");
                    continue;
                }
            };
            let mapped = match mapped {
                Ok(mapped) => mapped,
                Err(e) => {
                    refused += 1;
                    tracing::warn!(source = %a.name, topic = %topic, error = %e, "A message could not be mapped to a log topic; it is acknowledged without being stored.");
                    continue;
                }
            };
            if let Some(contract) = a.contracts.for_topic(&mapped.topic) {
                if let Err(e) = contract.check(&mapped.record.value) {
                    refused += 1;
                    violations += 1;
                    tracing::warn!(source = %a.name, topic = %topic, error = %e, "A message breaks its log topic's contract; it is acknowledged without being stored.");
                    continue;
                }
            }
            let size = mapped.record.payload_size();
            if size > a.max_record_bytes {
                refused += 1;
                tracing::error!(source = %a.name, topic = %topic, bytes = size, limit = a.max_record_bytes, "A message is larger than `log.max_record_bytes`; it is acknowledged without being stored.");
                continue;
            }
            key_missing += u64::from(mapped.key_missing);
            stored += 1;
            match index.get(&mapped.topic) {
                Some(&i) => groups[i].1.push(mapped.record),
                None => {
                    index.insert(mapped.topic.clone(), groups.len());
                    groups.push((mapped.topic, vec![mapped.record]));
                }
            }
        }

        // Store, holding every ack until all groups are in the log.
        let mut attempt = 0u64;
        while !groups.is_empty() {
            let Some(results) = crate::ingest::append_groups(&a.log, groups).await else {
                // The blocking pool is gone: the runtime is shutting down.
                return;
            };
            let mut retry = Vec::new();
            let mut last_error = None;
            for (topic, records, result) in results {
                match result {
                    Ok(_) => {}
                    Err(LogError::Closed) => return,
                    Err(LogError::RecordTooLarge { size, limit }) => {
                        refused += records.len() as u64;
                        stored -= records.len() as u64;
                        tracing::error!(source = %a.name, topic = %topic, size, limit, "Messages too large for the log are acknowledged without being stored.");
                    }
                    Err(e) => {
                        let full = matches!(e, LogError::StorageFull(_));
                        last_error = Some((full, e.to_string()));
                        retry.push((topic, records));
                    }
                }
            }
            groups = retry;
            if let Some((full, message)) = last_error {
                attempt += 1;
                let delay = backoff.next_delay();
                if attempt == 1 {
                    tracing::warn!(source = %a.name, error = %message, "Storing MQTT messages failed; their acknowledgements are held and the append is retried.");
                }
                a.board.update(&a.name, |s| {
                    if full {
                        s.set_link(Link::Backpressured { reason: message });
                    } else {
                        s.error(1);
                        s.set_link(Link::Retrying {
                            last_error: format!("storing failed: {message}"),
                            attempts: attempt,
                        });
                    }
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = a.shutdown.requested() => return,
                }
            }
        }
        if attempt > 0 {
            backoff.reset();
            a.board.update(&a.name, |s| {
                if matches!(s.link(), Link::Backpressured { .. } | Link::Retrying { .. }) {
                    s.set_link(Link::Connected);
                }
            });
        }

        // Acknowledge, in arrival order, what came on the current connection.
        let current = a.session.generation.load(Ordering::Acquire);
        let mut stale = 0u64;
        for m in &batch {
            if m.generation != current {
                stale += 1;
                continue;
            }
            if a.client.ack(&m.publish).await.is_err() {
                // The event loop is gone (shutdown); the broker redelivers.
                return;
            }
        }
        let now = now_ms();
        a.board.update(&a.name, |s| {
            s.error(refused);
            if stored > 0 {
                s.stored(stored, now);
            }
            s.count(KEY_MISSING, KEY_MISSING_HELP, key_missing);
            s.count(ACKS_SKIPPED, ACKS_SKIPPED_HELP, stale);
            s.count(CONTRACT_VIOLATIONS, CONTRACT_VIOLATIONS_HELP, violations);
        });
    }
}
