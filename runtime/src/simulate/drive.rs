//! Sending generated traffic to a box over MQTT at a steady rate, and listening for what the
//! box answers: verdicts on `pos/+/verdict` (matched to payments by `payment_id` for latency
//! and for whether planted fraud was flagged) and offers on `signage/+/offers`.
//!
//! One MQTT connection does both (QoS 1 publishes like a device, QoS 1 subscriptions); after a
//! reconnect the subscriptions are made again. [`Tracker`] holds the counters and turns them
//! into a [`Summary`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;

use super::generate::{Generator, GeneratorConfig, Kind, Pattern, Planted};
use super::SimulateError;
use crate::kernel::{lock, now_ms, Shutdown};
use crate::mqtt_client::AbortOnDrop;

/// Score at or above which a verdict counts as flagged: the bundled fraud-score plugin's
/// default `alert_threshold`.
pub const FLAG_SCORE: f64 = 70.0;
/// A payment without a verdict after this long is counted as unanswered and forgotten.
const VERDICT_WAIT: Duration = Duration::from_secs(30);
/// Latency samples kept for the percentiles (a uniform sample beyond this).
const MAX_SAMPLES: usize = 200_000;

/// How to drive the traffic.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// MQTT host.
    pub host: String,
    /// MQTT port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// Payments per second (the other events follow from it).
    pub payments_per_s: f64,
    /// The generator's settings.
    pub generator: GeneratorConfig,
    /// Stop after this long; `None` runs until `shutdown`.
    pub duration: Option<Duration>,
    /// After the traffic stops, wait up to this long for outstanding verdicts.
    pub drain: Duration,
    /// Call `report` this often with the summary so far (latencies of that window only).
    pub report_every: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    sent: Instant,
    planted: Option<Planted>,
}

#[derive(Debug, Clone, Default)]
struct EpisodeState {
    pattern: Option<Pattern>,
    flagged: bool,
    finished: bool,
}

/// What was sent and what came back.
#[derive(Debug, Default)]
pub struct Tracker {
    started: Option<Instant>,
    pending: HashMap<String, Pending>,
    episodes: Vec<EpisodeState>,
    payments: u64,
    baskets: u64,
    scans: u64,
    cart_events: u64,
    verdicts: u64,
    unmatched_verdicts: u64,
    offers: u64,
    ordinary_scored: u64,
    false_alarms: u64,
    planted_scored: u64,
    planted_payments: u64,
    expired: u64,
    latencies_us: Vec<u64>,
    latency_seen: u64,
    sampler: u64,
    window_us: Vec<u64>,
}

impl Tracker {
    fn sent(&mut self, kind: &Kind, at: Instant) {
        self.started.get_or_insert(at);
        match kind {
            Kind::Payment {
                payment_id,
                planted,
                ..
            } => {
                self.payments += 1;
                if let Some(p) = planted {
                    self.planted_payments += 1;
                    let i = p.episode as usize;
                    if self.episodes.len() <= i {
                        self.episodes.resize(i + 1, EpisodeState::default());
                    }
                    self.episodes[i].pattern = Some(p.pattern);
                    self.episodes[i].finished |= p.last;
                }
                self.pending.insert(
                    payment_id.clone(),
                    Pending {
                        sent: at,
                        planted: *planted,
                    },
                );
            }
            Kind::Basket => self.baskets += 1,
            Kind::LoyaltyScan => self.scans += 1,
            Kind::CartEvent => self.cart_events += 1,
        }
    }

    fn verdict(&mut self, payload: &[u8], at: Instant) {
        self.verdicts += 1;
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
            self.unmatched_verdicts += 1;
            return;
        };
        let id = value["payment_id"].as_str().unwrap_or_default();
        let Some(pending) = self.pending.remove(id) else {
            self.unmatched_verdicts += 1;
            return;
        };
        let flagged = value["score"].as_f64().unwrap_or(0.0) >= FLAG_SCORE;
        match pending.planted {
            Some(p) => {
                self.planted_scored += 1;
                if flagged {
                    if let Some(e) = self.episodes.get_mut(p.episode as usize) {
                        e.flagged = true;
                    }
                }
            }
            None => {
                self.ordinary_scored += 1;
                if flagged {
                    self.false_alarms += 1;
                }
            }
        }
        let us = at.saturating_duration_since(pending.sent).as_micros() as u64;
        if self.window_us.len() < MAX_SAMPLES {
            self.window_us.push(us);
        }
        self.latency_seen += 1;
        if self.latencies_us.len() < MAX_SAMPLES {
            self.latencies_us.push(us);
        } else {
            // Reservoir sampling keeps a uniform sample of every latency seen.
            self.sampler = self.sampler.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let j = (self.sampler.rotate_left(17) ^ self.latency_seen) % self.latency_seen;
            if (j as usize) < MAX_SAMPLES {
                self.latencies_us[j as usize] = us;
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let before = self.pending.len();
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.sent) < VERDICT_WAIT);
        self.expired += (before - self.pending.len()) as u64;
    }

    /// The summary so far, latencies of the whole run.
    pub fn summary(&self) -> Summary {
        self.summary_with(&self.latencies_us)
    }

    /// The summary so far, latencies since the last call of this (a report window).
    fn window_summary(&mut self) -> Summary {
        let summary = self.summary_with(&self.window_us);
        self.window_us.clear();
        summary
    }

    fn summary_with(&self, latencies_us: &[u64]) -> Summary {
        let mut sorted = latencies_us.to_vec();
        sorted.sort_unstable();
        let pick = |q: f64| -> Option<Duration> {
            if sorted.is_empty() {
                return None;
            }
            let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            Some(Duration::from_micros(sorted[i]))
        };
        // An episode counts once all of it was sent, or once it was flagged.
        let counted = |e: &&EpisodeState| e.finished || e.flagged;
        let mut patterns = Vec::new();
        for pattern in Pattern::ALL {
            let of: Vec<&EpisodeState> = self
                .episodes
                .iter()
                .filter(|e| e.pattern == Some(pattern))
                .filter(counted)
                .collect();
            patterns.push(PatternCount {
                pattern,
                episodes: of.len() as u64,
                flagged: of.iter().filter(|e| e.flagged).count() as u64,
            });
        }
        Summary {
            elapsed: self.started.map(|s| s.elapsed()).unwrap_or_default(),
            payments: self.payments,
            baskets: self.baskets,
            scans: self.scans,
            cart_events: self.cart_events,
            verdicts: self.verdicts,
            matched_verdicts: self.verdicts - self.unmatched_verdicts,
            offers: self.offers,
            planted_payments: self.planted_payments,
            planted_scored: self.planted_scored,
            patterns,
            unfinished_episodes: self
                .episodes
                .iter()
                .filter(|e| e.pattern.is_some() && !counted(e))
                .count() as u64,
            ordinary_scored: self.ordinary_scored,
            false_alarms: self.false_alarms,
            unanswered: self.expired + self.pending.len() as u64,
            latency_p50: pick(0.50),
            latency_p99: pick(0.99),
        }
    }
}

/// Planted episodes of one pattern and how many were flagged.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternCount {
    /// The pattern.
    pub pattern: Pattern,
    /// Episodes sent in full (or flagged before that).
    pub episodes: u64,
    /// Episodes with at least one payment scored at or above [`FLAG_SCORE`].
    pub flagged: u64,
}

/// What a run sent and got back.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Time since the first message.
    pub elapsed: Duration,
    /// Payments sent.
    pub payments: u64,
    /// Baskets sent.
    pub baskets: u64,
    /// Loyalty scans sent.
    pub scans: u64,
    /// Cart events sent.
    pub cart_events: u64,
    /// Verdicts received on `pos/+/verdict` (including ones for other traffic).
    pub verdicts: u64,
    /// Verdicts matched to a payment of this run.
    pub matched_verdicts: u64,
    /// Offers received on `signage/+/offers`.
    pub offers: u64,
    /// Planted fraud payments sent.
    pub planted_payments: u64,
    /// Planted payments that got a verdict.
    pub planted_scored: u64,
    /// Episodes per pattern (those sent in full, or flagged already).
    pub patterns: Vec<PatternCount>,
    /// Episodes not sent in full yet (or cut short by the stop), and not flagged so far.
    pub unfinished_episodes: u64,
    /// Ordinary payments that got a verdict.
    pub ordinary_scored: u64,
    /// Ordinary payments scored at or above [`FLAG_SCORE`].
    pub false_alarms: u64,
    /// Payments still without a verdict (or given up on).
    pub unanswered: u64,
    /// Median publish → verdict latency (of the run, or of the window in a report).
    pub latency_p50: Option<Duration>,
    /// 99th percentile publish → verdict latency.
    pub latency_p99: Option<Duration>,
}

impl Summary {
    /// Planted episodes started.
    pub fn episodes(&self) -> u64 {
        self.patterns.iter().map(|p| p.episodes).sum()
    }

    /// Planted episodes flagged.
    pub fn flagged(&self) -> u64 {
        self.patterns.iter().map(|p| p.flagged).sum()
    }

    /// Records sent per second.
    pub fn records_per_s(&self) -> f64 {
        let sent = self.payments + self.baskets + self.scans + self.cart_events;
        sent as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "-".into(),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sent: {} payments, {} baskets, {} loyalty scans, {} cart events in {:.1} s ({:.1} records/s)",
            self.payments,
            self.baskets,
            self.scans,
            self.cart_events,
            self.elapsed.as_secs_f64(),
            self.records_per_s()
        )?;
        writeln!(
            f,
            "verdicts received: {} ({} matched to these payments, {} unanswered); offers received: {}",
            self.verdicts, self.matched_verdicts, self.unanswered, self.offers
        )?;
        let per: Vec<String> = self
            .patterns
            .iter()
            .map(|p| format!("{} {}/{}", p.pattern.name(), p.flagged, p.episodes))
            .collect();
        writeln!(
            f,
            "planted fraud flagged (score >= {FLAG_SCORE}): {}/{} episodes ({}; {} planted payments; {} episodes unfinished)",
            self.flagged(),
            self.episodes(),
            per.join(", "),
            self.planted_payments,
            self.unfinished_episodes
        )?;
        writeln!(
            f,
            "false alarms: {} of {} ordinary payments scored >= {FLAG_SCORE}",
            self.false_alarms, self.ordinary_scored
        )?;
        write!(
            f,
            "verdict latency (publish -> verdict): p50 {}, p99 {}",
            ms(self.latency_p50),
            ms(self.latency_p99)
        )
    }
}

/// Runs the traffic until the duration ends or `shutdown` turns true; `report` gets the summary
/// every `report_every`. Returns the final summary.
pub async fn drive(
    options: DriveOptions,
    shutdown: Shutdown,
    mut report: impl FnMut(&Summary),
) -> Result<Summary, SimulateError> {
    let mut mqtt = MqttOptions::new(
        options.client_id.clone(),
        options.host.clone(),
        options.port,
    );
    mqtt.set_keep_alive(Duration::from_secs(30));
    mqtt.set_inflight(200);
    mqtt.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = crate::mqtt_client::connect(mqtt, 1024);
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let (subscribed_tx, mut subscribed) = watch::channel(false);
    let closing = Arc::new(AtomicBool::new(false));

    // The event loop: connects (again), subscribes after every CONNACK, records answers.
    let events = {
        let tracker = Arc::clone(&tracker);
        let client = client.clone();
        let address = format!("{}:{}", options.host, options.port);
        let closing = Arc::clone(&closing);
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        warned = false;
                        for filter in ["pos/+/verdict", "signage/+/offers"] {
                            if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                                tracing::warn!(filter, error = %e, "Demo traffic could not subscribe.");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        if p.topic.starts_with("pos/") && p.topic.ends_with("/verdict") {
                            lock(&tracker).verdict(&p.payload, at);
                        } else if p.topic.starts_with("signage/") {
                            lock(&tracker).offers += 1;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) if closing.load(Ordering::Relaxed) => return,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(mqtt = %address, error = %e, "Demo traffic lost its MQTT connection; retrying.");
                            warned = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    };
    let mut events = AbortOnDrop(events);

    // Wait for the subscriptions, so the first verdicts are not missed.
    let connect_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            changed = subscribed.changed() => {
                if changed.is_err() || *subscribed.borrow() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(connect_deadline.into()) => {
                return Err(SimulateError::Connect {
                    address: format!("{}:{}", options.host, options.port),
                    message: "no MQTT connection and subscription within 10 s".into(),
                });
            }
            _ = shutdown.requested() => return Ok(lock(&tracker).summary()),
        }
    }

    let mut generator = Generator::new(options.generator.clone());
    let every = Duration::from_secs_f64(1.0 / options.payments_per_s.max(1e-3));
    let started = Instant::now();
    let end = options.duration.map(|d| started + d);
    let mut next_report = options.report_every.map(|d| started + d);
    let mut next_expiry = started + Duration::from_secs(5);
    let mut stop = false;
    while !stop {
        let due = started + every.mul_f64(generator.slots() as f64);
        if end.is_some_and(|end| due >= end) {
            break;
        }
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = shutdown.requested() => { stop = true; continue; }
            }
        }
        for message in generator.next_slot(now_ms()) {
            let at = Instant::now();
            lock(&tracker).sent(&message.kind, at);
            if let Err(e) = client
                .publish(message.topic, QoS::AtLeastOnce, false, message.payload)
                .await
            {
                return Err(SimulateError::Publish(e.to_string()));
            }
        }
        let now = Instant::now();
        if now >= next_expiry {
            lock(&tracker).expire(now);
            next_expiry = now + Duration::from_secs(5);
        }
        if let (Some(at), Some(every)) = (next_report, options.report_every) {
            if now >= at {
                let summary = lock(&tracker).window_summary();
                report(&summary);
                next_report = Some(now + every);
            }
        }
        if shutdown.is_requested() {
            stop = true;
        }
    }

    // Let the last verdicts come back.
    let drain_end = Instant::now() + options.drain;
    while Instant::now() < drain_end && !lock(&tracker).pending.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summary = lock(&tracker).summary();
    closing.store(true, Ordering::Relaxed);
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut events.0).await;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(id: &str, planted: Option<Planted>) -> Kind {
        Kind::Payment {
            payment_id: id.into(),
            card_id: "c".into(),
            planted,
        }
    }

    #[test]
    fn verdicts_are_matched_to_payments_and_planted_episodes() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let planted = Planted {
            episode: 0,
            pattern: Pattern::CardTesting,
            last: false,
        };
        let last = Planted {
            last: true,
            ..planted
        };
        let unfinished = Planted {
            episode: 1,
            ..planted
        };
        t.sent(&payment("a", None), t0);
        t.sent(&payment("b", Some(planted)), t0);
        t.sent(&payment("c", Some(last)), t0);
        t.sent(&payment("e", Some(unfinished)), t0);
        t.sent(&payment("d", None), t0);
        t.verdict(
            br#"{"payment_id":"a","score":0}"#,
            t0 + Duration::from_millis(2),
        );
        t.verdict(
            br#"{"payment_id":"b","score":35}"#,
            t0 + Duration::from_millis(3),
        );
        t.verdict(
            br#"{"payment_id":"c","score":70}"#,
            t0 + Duration::from_millis(4),
        );
        t.verdict(br#"{"payment_id":"zz","score":99}"#, t0);
        t.verdict(b"not json", t0);
        let s = t.summary();
        assert_eq!((s.payments, s.verdicts, s.matched_verdicts), (5, 5, 3));
        assert_eq!(
            (s.episodes(), s.flagged(), s.unfinished_episodes),
            (1, 1, 1)
        );
        assert_eq!((s.ordinary_scored, s.false_alarms, s.unanswered), (1, 0, 2));
        assert_eq!(s.latency_p50, Some(Duration::from_millis(3)));
        assert_eq!(s.latency_p99, Some(Duration::from_millis(4)));
        let text = s.to_string();
        assert!(
            text.contains("planted fraud flagged (score >= 70): 1/1 episodes"),
            "{text}"
        );
        // A report window covers the latencies since the last report; the run keeps them all.
        assert_eq!(
            t.window_summary().latency_p99,
            Some(Duration::from_millis(4))
        );
        assert_eq!(t.window_summary().latency_p50, None);
        assert_eq!(t.summary().latency_p50, Some(Duration::from_millis(3)));
    }

    #[test]
    fn an_ordinary_payment_scored_high_is_a_false_alarm() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.sent(&payment("a", None), t0);
        t.verdict(br#"{"payment_id":"a","score":88}"#, t0);
        assert_eq!(t.summary().false_alarms, 1);
    }
}
