//! `fraud-score`: scores every card payment on `pos.payments` for fraud risk and emits the
//! score to `fraud.scores` (and to `fraud.alerts` when it reaches the threshold), keyed by
//! `card_id`. Blocklist updates arrive on `ref.blocklist`.
//!
//! # What it looks for
//! - **Stolen card**: a run of sales far above the card's own amount profile (robust median and
//!   spread of its last payments, blended with the store's population while the card is young).
//!   One big sale is an `amount_outlier` (32–45 points, no alert); the second within 45 minutes
//!   is `stolen_card` (60 where the card usually shops, 80 elsewhere or from the third on), and
//!   so is a spree of four sales well above the card's median.
//! - **Card testing**: a burst of small payments, mostly card-not-present (`card_testing`).
//! - **Velocity across terminals**: one card at several terminals of several stores within
//!   minutes (`terminal_velocity`), and many sales within ten minutes (`velocity_count`).
//! - **Refund abuse**: refunds no earlier sale on the card covers — including refunds to a card
//!   that never bought (`refund_without_sale`) — and a high refund-to-sale ratio
//!   (`refund_abuse`).
//! - **Blocklist** (`blocklisted`, 100).
//!
//! # What a score means
//! Points add up (see [`score`] for the table) and are capped at 100. **70, the default
//! threshold, means one pattern is established** (the second out-of-profile sale in 45 minutes
//! at an unfamiliar store, a spree, the fourth small card-not-present payment in fifteen
//! minutes, a third terminal at a second store within ten, the second refund no sale covers, a
//! blocklisted card) **or two partial signals coincide** (a big out-of-profile sale at a second
//! store within minutes). A single suspicious fact — one big purchase, two stores, three small
//! payments, one refund without a sale — stays at 30–45. On the held-out labelled days of
//! `examples/evaluate` (see the README), 96 % of the payments scoring 70 or more belonged to a
//! fraud episode and 0.023 % of clean payments scored 70 or more.
//!
//! # State
//! - `c/<card_id>`: the card, a fixed 204-byte value ([`card`]); with a 20-byte card id about
//!   226 bytes per card plus its expiry-index entry (about 22), so 100,000 cards take ~25 MB
//!   of the 64 MiB default quota and 100,000 keys of the 1,000,000.
//! - `bl/<card_id>`: a blocklist entry (the reason as value); its flag is copied into the card.
//! - `p/amounts`: the store's population of sale amounts, the prior for young cards
//!   ([`population`], 200 bytes).
//! - `x/…`: the expiry index of idle cards ([`index`]): a card idle for `card_ttl_ms` (30 days)
//!   is treated as new when next seen and deleted by a bounded sweep.
//!
//! Per payment the plugin makes one state read for the card (two for a card it has no state
//! for, one more while the card has few sales: the population), one write and one or two
//! emits; one sale in sixteen updates the population, one record in eight runs a sweep step.
//! Payments are read by a hand-written JSON fast path ([`payment`]; unusual JSON goes to
//! `serde_json`) and scores are written by hand ([`out`]). A payment that does not parse fails
//! its call, so the host dead-letters it.

pub mod card;
pub mod config;
pub mod index;
pub mod out;
pub mod payment;
pub mod population;
pub mod score;

use std::borrow::Cow;

use outpost_sdk::{export_plugin, Config, Context, Error, Level, Plugin, Record};
use serde::Deserialize;

use crate::card::{CardState, Event, Loaded};
use crate::config::FraudConfig;
use crate::index::Index;
use crate::out::ScoreOut;
use crate::payment::{Channel, Kind, Payment};
use crate::population::{LogProfile, Population};
use crate::score::PaymentFacts;

/// Output topic for every payment's score.
pub const SCORES_TOPIC: &str = "fraud.scores";
/// Output topic for scores at or above the threshold.
pub const ALERTS_TOPIC: &str = "fraud.alerts";

/// `action` of a blocklist update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Add,
    Remove,
}

/// A `ref.blocklist` value.
#[derive(Debug, Deserialize)]
struct BlocklistUpdate<'a> {
    #[serde(borrow, default)]
    card_id: Option<Cow<'a, str>>,
    action: Action,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

/// The fraud-score plugin.
#[derive(Debug, Default)]
pub struct FraudScore {
    config: FraudConfig,
    /// `card_ttl_ms` in seconds.
    ttl_s: u32,
    index: Index,
    /// Reused buffers: state key, state value read, state value written, decoded card,
    /// population, JSON output, and scratch space for the sweep.
    key: Vec<u8>,
    read: Vec<u8>,
    write: Vec<u8>,
    card: CardState,
    population: Population,
    out: Vec<u8>,
    sweep_card: CardState,
    sweep_buf: Vec<u8>,
}

/// FNV-1a of `bytes`: picks the records that sample the population or sweep, the same ones on
/// every replay.
fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Epoch seconds of `ts_ms`, as the card state keeps time.
fn seconds(ts_ms: u64) -> u32 {
    (ts_ms / 1000).min(u64::from(u32::MAX)) as u32
}

impl Plugin for FraudScore {
    fn init(&mut self, ctx: &mut dyn Context, config: &Config) -> Result<(), Error> {
        let config: FraudConfig = config.parse()?;
        config.validate()?;
        let retired = config.retired_keys();
        if !retired.is_empty() {
            ctx.log(
                Level::Warn,
                &format!(
                    "config keys of fraud-score 0.1 are ignored: {}",
                    retired.join(", ")
                ),
            );
        }
        self.ttl_s = seconds(config.card_ttl_ms);
        self.index = Index::new(
            config.index_bucket_ms,
            config.card_ttl_ms,
            config.sweep_batch,
        );
        self.config = config;
        Ok(())
    }

    fn on_record(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        if record.topic == self.config.payments_topic {
            self.payment(ctx, record)
        } else if record.topic == self.config.blocklist_topic {
            self.blocklist(ctx, record)
        } else {
            Err(Error::new(format!(
                "unexpected input topic {}: fraud-score reads {} and {}",
                record.topic, self.config.payments_topic, self.config.blocklist_topic
            )))
        }
    }
}

impl FraudScore {
    fn set_key(&mut self, prefix: &[u8], card_id: &str) {
        self.key.clear();
        self.key.extend_from_slice(prefix);
        self.key.extend_from_slice(card_id.as_bytes());
    }

    /// Loads the card's state into `self.card` (key left in `self.key`) as of `ts_ms`. A card
    /// without readable state, or idle for longer than the TTL, starts afresh, with its
    /// blocklist flag read from `bl/<card_id>` (an expired card keeps its expiry-index entry).
    fn load_card(&mut self, ctx: &mut dyn Context, card_id: &str, ts_ms: u64) -> Result<(), Error> {
        self.set_key(b"c/", card_id);
        let mut fresh = true;
        if ctx.state_get_into(&self.key, &mut self.read)? {
            match self.card.load(&self.read) {
                Loaded::Current if self.card.expired(seconds(ts_ms), self.ttl_s) => {
                    let registered = self.card.index_bucket;
                    self.card.reset();
                    self.card.index_bucket = registered;
                }
                Loaded::Current | Loaded::Migrated => fresh = false,
                Loaded::Unreadable => ctx.log(
                    Level::Warn,
                    &format!("card state for {card_id} was unreadable; starting it afresh"),
                ),
            }
        } else {
            self.card.reset();
        }
        if fresh {
            self.set_key(b"bl/", card_id);
            self.card.blocklisted = ctx.state_get_into(&self.key, &mut self.read)?;
            self.set_key(b"c/", card_id);
        }
        Ok(())
    }

    /// Writes `self.card` under `self.key`, registering it in the expiry index first if it
    /// is not yet.
    fn store_card(
        &mut self,
        ctx: &mut dyn Context,
        card_id: &str,
        ts_ms: u64,
    ) -> Result<(), Error> {
        if self.card.index_bucket == 0 {
            self.card.index_bucket = self.index.register(ctx, card_id.as_bytes(), ts_ms)?;
        }
        self.card.store(&mut self.write);
        ctx.state_put(&self.key, &self.write)
    }

    /// The prior for young cards: the store's population, or the configured fallback.
    fn prior(&mut self, ctx: &mut dyn Context) -> Result<LogProfile, Error> {
        let fallback = LogProfile {
            median: self.config.prior_median_amount.ln(),
            spread: self.config.prior_log_spread,
        };
        if !ctx.state_get_into(population::KEY, &mut self.read)? {
            return Ok(fallback);
        }
        self.population.load(&self.read);
        Ok(self
            .population
            .profile(self.config.population_min_samples)
            .unwrap_or(fallback))
    }

    fn payment(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let p = Payment::read(record)?;
        if p.card_id.is_empty() {
            return Err(Error::new("payment has an empty card_id"));
        }
        if !p.amount.is_finite() {
            return Err(Error::new("payment amount is not a finite number"));
        }
        let ts_ms = p.ts_ms.unwrap_or(record.timestamp_ms);
        let ts_s = seconds(ts_ms);
        let amount = p.amount.abs();
        let refund = p.kind == Kind::Refund;
        let cnp = p.channel == Channel::CardNotPresent;

        self.load_card(ctx, &p.card_id, ts_ms)?;
        let prior = if score::remembered_sales(&self.card) < self.config.profile_full_history {
            self.prior(ctx)?
        } else {
            LogProfile {
                median: 0.0,
                spread: 1.0,
            }
        };
        let profile = score::profile(&self.config, &self.card, &prior);
        let unmatched_refund =
            refund && !self.card.add_refund(amount, self.config.refund_tolerance);
        let facts = PaymentFacts {
            ts_s,
            amount,
            refund,
            cnp,
            terminal: card::hash16(&p.terminal_id),
            store: card::hash16(&p.store_id),
            blocklisted: self.card.blocklisted,
            unmatched_refund,
        };
        let verdict = score::score(&self.config, &self.card, &profile, &facts);
        if !refund {
            self.card.add_sale(amount);
        }
        let mut flags = verdict.flags;
        if refund {
            flags |= card::REFUND;
        }
        if cnp {
            flags |= card::CNP;
        }
        self.card.push(Event {
            ts_s,
            terminal: facts.terminal,
            store: facts.store,
            amount: card::amount_code(amount),
            flags,
        });
        self.card.touch(ts_s);
        self.store_card(ctx, &p.card_id, ts_ms)?;

        let hash = fnv32(p.payment_id.as_bytes());
        if !refund && hash % self.config.population_sample_every == 0 {
            if !ctx.state_get_into(population::KEY, &mut self.read)? {
                self.read.clear();
            }
            self.population.load(&self.read);
            self.population.add(amount.max(1e-3).ln());
            self.population.store(&mut self.write);
            ctx.state_put(population::KEY, &self.write)?;
        }
        if hash.rotate_left(16) % self.config.sweep_every_records == 0 {
            self.index
                .sweep(ctx, ts_ms, &mut self.sweep_card, &mut self.sweep_buf)?;
        }

        let mut out = ScoreOut {
            payment_id: &p.payment_id,
            ts_ms,
            store_id: &p.store_id,
            terminal_id: &p.terminal_id,
            card_id: &p.card_id,
            score: verdict.score,
            reasons: verdict.reasons(),
            threshold: None,
        };
        let key = Some(p.card_id.as_bytes());
        out.write(&mut self.out);
        ctx.emit(SCORES_TOPIC, key, &self.out)?;
        if verdict.score >= self.config.alert_threshold {
            out.threshold = Some(self.config.alert_threshold);
            out.write(&mut self.out);
            ctx.emit(ALERTS_TOPIC, key, &self.out)?;
        }
        Ok(())
    }

    fn blocklist(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let update: BlocklistUpdate<'_> = record.json()?;
        let card_id: Cow<'_, str> = match (update.card_id, record.key_str()?) {
            (Some(id), _) if !id.is_empty() => id,
            (_, Some(key)) if !key.is_empty() => Cow::Borrowed(key),
            _ => {
                return Err(Error::new(
                    "blocklist update names no card_id (value or key)",
                ))
            }
        };
        let blocked = update.action == Action::Add;
        self.load_card(ctx, &card_id, record.timestamp_ms)?;
        self.card.blocklisted = blocked;
        self.store_card(ctx, &card_id, record.timestamp_ms)?;
        self.set_key(b"bl/", &card_id);
        if blocked {
            let reason = update.reason.unwrap_or(Cow::Borrowed(""));
            ctx.state_put(&self.key, reason.as_bytes())
        } else {
            ctx.state_delete(&self.key)
        }
    }
}

export_plugin!(FraudScore);

#[cfg(test)]
mod tests {
    use outpost_sdk::testing::{Emitted, Harness};
    use serde_json::{json, Value};

    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;

    fn harness(config: &str) -> Harness<FraudScore> {
        Harness::<FraudScore>::start(config)
            .unwrap()
            .allow_outputs(&[SCORES_TOPIC, ALERTS_TOPIC])
    }

    /// A payment at a store's terminal; returns its score.
    #[allow(clippy::too_many_arguments)]
    fn pay_at(
        h: &mut Harness<FraudScore>,
        card: &str,
        ts_ms: u64,
        amount: f64,
        channel: &str,
        kind: &str,
        store: &str,
        terminal: &str,
    ) -> Value {
        let id = format!("p-{}", h.emitted_count());
        let value = json!({
            "payment_id": id, "ts_ms": ts_ms, "store_id": store, "terminal_id": terminal,
            "card_id": card, "amount": amount, "currency": "EUR", "channel": channel, "kind": kind,
        });
        h.send_json("pos.payments", card, &value).unwrap();
        let last: &Emitted = h.emitted_to(SCORES_TOPIC).last().copied().unwrap();
        assert_eq!(last.key_str(), Some(card));
        last.json().unwrap()
    }

    fn pay(
        h: &mut Harness<FraudScore>,
        card: &str,
        ts_ms: u64,
        amount: f64,
        channel: &str,
        kind: &str,
    ) -> Value {
        pay_at(h, card, ts_ms, amount, channel, kind, "s1", "t1")
    }

    fn sale(h: &mut Harness<FraudScore>, card: &str, ts_ms: u64, amount: f64) -> Value {
        pay(h, card, ts_ms, amount, "card_present", "sale")
    }

    fn refund(h: &mut Harness<FraudScore>, card: &str, ts_ms: u64, amount: f64) -> Value {
        pay(h, card, ts_ms, amount, "card_present", "refund")
    }

    fn reasons(v: &Value) -> Vec<String> {
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }

    fn score(v: &Value) -> u64 {
        v["score"].as_u64().unwrap()
    }

    fn alerts(h: &Harness<FraudScore>) -> usize {
        h.emitted_to(ALERTS_TOPIC).len()
    }

    fn block(h: &mut Harness<FraudScore>, card: &str, action: &str) {
        let value = json!({"card_id": card, "action": action, "reason": "stolen"});
        h.send_json("ref.blocklist", card, &value).unwrap();
    }

    /// A regular customer: a week of one shop a day around `typical`, at the home store.
    fn regular(h: &mut Harness<FraudScore>, card: &str, typical: f64) -> u64 {
        for d in 0..8 {
            let wobble = [1.0, 0.8, 1.2, 0.9, 1.1, 1.3, 0.7, 1.0][d as usize];
            let v = sale(h, card, T0 + d * DAY, typical * wobble);
            assert_eq!(score(&v), 0, "day {d}: {v}");
        }
        T0 + 8 * DAY
    }

    fn card_keys(h: &Harness<FraudScore>) -> usize {
        h.state_entries()
            .filter(|(k, _)| k.starts_with(b"c/"))
            .count()
    }

    #[test]
    fn every_payment_gets_a_score_with_the_contract_fields() {
        let mut h = harness("{}");
        let v = sale(&mut h, "card-1", T0, 23.5);
        assert_eq!(v["payment_id"], "p-0");
        assert_eq!(v["ts_ms"], T0);
        assert_eq!(v["store_id"], "s1");
        assert_eq!(v["terminal_id"], "t1");
        assert_eq!(v["card_id"], "card-1");
        assert_eq!(v["score"], 0);
        assert_eq!(v["reasons"], json!([]));
        assert!(v.get("threshold").is_none());
        assert!(h.emitted_to(ALERTS_TOPIC).is_empty());
    }

    // --- stolen card --------------------------------------------------------------------------

    #[test]
    fn a_regular_customers_occasional_big_purchase_does_not_alert() {
        let mut h = harness("{}");
        let now = regular(&mut h, "card-o", 20.0);
        let big = sale(&mut h, "card-o", now, 480.0);
        assert_eq!(reasons(&big), ["amount_outlier"]);
        assert!(score(&big) < 70, "{big}");
        let normal = sale(&mut h, "card-o", now + 3 * HOUR, 22.0);
        assert_eq!(score(&normal), 0);
        assert_eq!(alerts(&h), 0);
    }

    #[test]
    fn a_stolen_card_alerts_on_its_first_run_of_large_payments() {
        let mut h = harness("{}");
        let now = regular(&mut h, "card-s", 20.0);
        // The thief: three big purchases at other stores within half an hour.
        let first = pay_at(
            &mut h,
            "card-s",
            now,
            350.0,
            "contactless",
            "sale",
            "s7",
            "s7-t2",
        );
        assert_eq!(reasons(&first), ["amount_outlier"]);
        let second = pay_at(
            &mut h,
            "card-s",
            now + 12 * MIN,
            420.0,
            "card_present",
            "sale",
            "s8",
            "s8-t1",
        );
        assert_eq!(reasons(&second)[0], "stolen_card", "{second}");
        assert!(score(&second) >= 70, "{second}");
        // The first big sale did not become the card's normal: the run goes on alerting.
        let third = pay_at(
            &mut h,
            "card-s",
            now + 25 * MIN,
            390.0,
            "card_present",
            "sale",
            "s7",
            "s7-t4",
        );
        assert!(score(&third) >= 70, "{third}");
        assert_eq!(alerts(&h), 2);
    }

    #[test]
    fn a_new_cards_large_first_payment_does_not_alert() {
        let mut h = harness("{}");
        let v = sale(&mut h, "card-n", T0, 900.0);
        assert!(score(&v) < 70, "{v}");
        assert_eq!(score(&sale(&mut h, "card-m", T0, 200.0)), 0);
        assert_eq!(alerts(&h), 0);
    }

    // --- velocity -----------------------------------------------------------------------------

    #[test]
    fn many_sales_in_ten_minutes_trigger_velocity() {
        let mut h = harness("{}");
        let mut last = Value::Null;
        for i in 0..6 {
            last = sale(&mut h, "card-v", T0 + i * MIN, 20.0);
            if i < 4 {
                assert_eq!(last["score"], 0, "sale {i}");
            }
        }
        // Sixth sale within ten minutes: 0.5 + 0.5 * 1/5 of the 35-point weight.
        assert_eq!(reasons(&last), ["velocity_count"]);
        assert_eq!(last["score"], 21);
    }

    #[test]
    fn velocity_forgets_sales_outside_the_window() {
        let mut h = harness("{}");
        for i in 0..6 {
            sale(&mut h, "card-w", T0 + i * MIN, 20.0);
        }
        let later = sale(&mut h, "card-w", T0 + 30 * MIN, 20.0);
        assert_eq!(later["score"], 0);
    }

    #[test]
    fn a_card_paying_at_three_terminals_of_two_stores_in_five_minutes_alerts() {
        let mut h = harness("{}");
        let now = regular(&mut h, "card-c", 30.0);
        let a = pay_at(
            &mut h,
            "card-c",
            now,
            35.0,
            "contactless",
            "sale",
            "s1",
            "s1-t1",
        );
        assert_eq!(score(&a), 0);
        let b = pay_at(
            &mut h,
            "card-c",
            now + 2 * MIN,
            28.0,
            "contactless",
            "sale",
            "s4",
            "s4-t3",
        );
        assert_eq!(reasons(&b), ["terminal_velocity"]);
        assert!(score(&b) < 70, "two stores, two terminals: {b}");
        let c = pay_at(
            &mut h,
            "card-c",
            now + 5 * MIN,
            41.0,
            "card_present",
            "sale",
            "s1",
            "s1-t5",
        );
        assert_eq!(reasons(&c), ["terminal_velocity"]);
        assert!(score(&c) >= 70, "{c}");
    }

    #[test]
    fn two_terminals_in_one_visit_do_not_alert() {
        let mut h = harness("{}");
        let now = regular(&mut h, "card-2", 30.0);
        for (i, terminal) in ["s1-t1", "s1-t4", "s1-t2"].iter().enumerate() {
            let v = pay_at(
                &mut h,
                "card-2",
                now + i as u64 * 3 * MIN,
                25.0,
                "contactless",
                "sale",
                "s1",
                terminal,
            );
            assert!(score(&v) < 70, "{v}");
        }
        assert_eq!(alerts(&h), 0);
    }

    // --- card testing -------------------------------------------------------------------------

    #[test]
    fn a_burst_of_small_card_not_present_payments_alerts() {
        let mut h = harness("{}");
        let mut scores = Vec::new();
        for (i, amount) in [1.0, 2.49, 0.99, 1.0].iter().enumerate() {
            let v = pay(
                &mut h,
                "card-t",
                T0 + i as u64 * 40_000,
                *amount,
                "card_not_present",
                "sale",
            );
            scores.push(score(&v));
            if i == 3 {
                assert_eq!(reasons(&v), ["card_testing"]);
            }
        }
        assert_eq!(scores, [0, 0, 40, 80]);
        assert_eq!(alerts(&h), 1);
    }

    #[test]
    fn a_coffee_and_a_parking_ticket_are_not_card_testing() {
        let mut h = harness("{}");
        for (i, amount) in [3.2, 2.5, 4.0].iter().enumerate() {
            let v = pay(
                &mut h,
                "card-k",
                T0 + i as u64 * 4 * MIN,
                *amount,
                "contactless",
                "sale",
            );
            assert_eq!(score(&v), 0, "{v}");
        }
    }

    // --- refunds ------------------------------------------------------------------------------

    #[test]
    fn refunds_without_matching_sales_alert() {
        let mut h = harness("{}");
        // Refunds to a card that never bought anything here.
        let first = refund(&mut h, "card-r", T0, 80.0);
        assert_eq!(reasons(&first), ["refund_without_sale"]);
        assert!(
            score(&first) < 70,
            "one refund may be for a purchase made elsewhere"
        );
        let second = refund(&mut h, "card-r", T0 + 40 * MIN, 120.0);
        assert_eq!(reasons(&second)[0], "refund_without_sale");
        assert!(score(&second) >= 70, "{second}");
    }

    #[test]
    fn one_purchase_refunded_twice_alerts() {
        let mut h = harness("{}");
        sale(&mut h, "card-d", T0, 150.0);
        let matched = refund(&mut h, "card-d", T0 + HOUR, 150.0);
        assert_eq!(score(&matched), 0);
        let again = refund(&mut h, "card-d", T0 + 2 * HOUR, 140.0);
        assert!(score(&again) >= 70, "{again}");
        assert!(reasons(&again).contains(&"refund_without_sale".to_owned()));
    }

    #[test]
    fn a_legitimate_refund_of_an_earlier_sale_does_not_alert() {
        let mut h = harness("{}");
        let now = regular(&mut h, "card-l", 40.0);
        sale(&mut h, "card-l", now, 65.0);
        let v = refund(&mut h, "card-l", now + 5 * HOUR, 65.0);
        assert_eq!(score(&v), 0, "{v}");
        let partial = refund(&mut h, "card-l", now + 6 * HOUR, 20.0);
        assert_eq!(score(&partial), 0, "{partial}");
    }

    #[test]
    fn everything_bought_brought_back_is_refund_abuse() {
        let mut h = harness("{}");
        for i in 0..3 {
            sale(&mut h, "card-b", T0 + i * 20 * MIN, 120.0 + i as f64);
        }
        let mut last = Value::Null;
        for i in 0..3 {
            last = refund(
                &mut h,
                "card-b",
                T0 + 2 * HOUR + i * 30 * MIN,
                120.0 + i as f64,
            );
        }
        assert_eq!(reasons(&last), ["refund_abuse"]);
        assert!(score(&last) >= 70, "{last}");
    }

    // --- blocklist ----------------------------------------------------------------------------

    #[test]
    fn card_on_blocklist_scores_high_and_raises_an_alert() {
        let mut h = harness("{}");
        block(&mut h, "card-9", "add");
        assert_eq!(h.state(b"bl/card-9"), Some(&b"stolen"[..]));
        let v = sale(&mut h, "card-9", T0, 10.0);
        assert_eq!(v["score"], 100);
        assert_eq!(reasons(&v), ["blocklisted"]);
        let alerts = h.emitted_to(ALERTS_TOPIC);
        assert_eq!(alerts.len(), 1);
        let alert: Value = alerts[0].json().unwrap();
        assert_eq!(alert["threshold"], 70);
        assert_eq!(alert["score"], 100);
    }

    #[test]
    fn card_with_history_blocklisted_later_scores_high() {
        let mut h = harness("{}");
        assert_eq!(sale(&mut h, "card-h", T0, 10.0)["score"], 0);
        block(&mut h, "card-h", "add");
        let v = sale(&mut h, "card-h", T0 + 60 * MIN, 10.0);
        assert_eq!(reasons(&v), ["blocklisted"]);
    }

    #[test]
    fn blocklist_entry_without_card_state_is_still_honoured() {
        let mut h = harness("{}");
        h.set_state(b"bl/card-old", b"from an older version");
        assert_eq!(sale(&mut h, "card-old", T0, 10.0)["score"], 100);
        // The flag now travels in the card's own state.
        h.set_state(b"bl/card-old", b"");
        assert_eq!(sale(&mut h, "card-old", T0 + MIN, 10.0)["score"], 100);
    }

    #[test]
    fn card_removed_from_blocklist_scores_normally_again() {
        let mut h = harness("{}");
        block(&mut h, "card-9", "add");
        block(&mut h, "card-9", "remove");
        assert_eq!(h.state(b"bl/card-9"), None);
        assert_eq!(sale(&mut h, "card-9", T0, 10.0)["score"], 0);
    }

    #[test]
    fn blocklist_entry_may_name_the_card_only_in_the_key() {
        let mut h = harness("{}");
        h.send("ref.blocklist", "card-k", r#"{"action":"add"}"#)
            .unwrap();
        assert_eq!(h.state(b"bl/card-k"), Some(&b""[..]));
        assert!(h.send("ref.blocklist", "", r#"{"action":"add"}"#).is_err());
    }

    // --- combinations and the threshold --------------------------------------------------------

    #[test]
    fn a_big_sale_at_a_second_store_within_minutes_crosses_the_threshold() {
        let mut h = harness("{}");
        let now = regular(&mut h, "card-x", 20.0);
        pay_at(
            &mut h,
            "card-x",
            now,
            22.0,
            "contactless",
            "sale",
            "s1",
            "s1-t1",
        );
        assert_eq!(alerts(&h), 0);
        let v = pay_at(
            &mut h,
            "card-x",
            now + 3 * MIN,
            600.0,
            "card_present",
            "sale",
            "s9",
            "s9-t1",
        );
        assert_eq!(reasons(&v), ["amount_outlier", "terminal_velocity"]);
        assert!(score(&v) >= 70, "{v}");
        let alerts = h.emitted_to(ALERTS_TOPIC);
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            alerts[0].json::<Value>().unwrap()["payment_id"],
            v["payment_id"]
        );
    }

    #[test]
    fn threshold_is_configurable() {
        let mut h = harness(r#"{"alert_threshold": 20}"#);
        for i in 0..6 {
            sale(&mut h, "card-t", T0 + i * MIN, 20.0);
        }
        let alerts = h.emitted_to(ALERTS_TOPIC);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].json::<Value>().unwrap()["threshold"], 20);
    }

    #[test]
    fn cards_do_not_share_history() {
        let mut h = harness("{}");
        for i in 0..6 {
            sale(&mut h, "card-p", T0 + i * MIN, 20.0);
        }
        assert_eq!(sale(&mut h, "card-q", T0 + 6 * MIN, 20.0)["score"], 0);
        assert_eq!(card_keys(&h), 2);
    }

    // --- state: size, formats, expiry ---------------------------------------------------------

    #[test]
    fn card_state_is_a_fixed_204_bytes_however_busy_the_card() {
        let mut h = harness("{}");
        for i in 0..50 {
            sale(&mut h, "card-s", T0 + i * MIN, 20.0);
            assert_eq!(h.state(b"c/card-s").unwrap().len(), 204);
        }
    }

    #[test]
    fn a_card_in_the_old_state_format_is_migrated_not_failed() {
        let mut h = harness("{}");
        // fraud-score 0.1's layout: 13 buckets, blocklisted, 4 sales with a mean of 25.
        let mut v1 = vec![1u8, 13, 1, 0];
        v1.extend_from_slice(&300_000u32.to_le_bytes());
        v1.extend_from_slice(&5_666_666u64.to_le_bytes());
        v1.extend_from_slice(&4u32.to_le_bytes());
        v1.extend_from_slice(&25.0f64.to_le_bytes());
        v1.extend_from_slice(&10.0f64.to_le_bytes());
        v1.resize(36 + 13 * 10, 0);
        h.set_state(b"c/card-v1", &v1);
        let v = refund(&mut h, "card-v1", T0, 30.0);
        assert_eq!(
            reasons(&v),
            ["blocklisted"],
            "the flag survives; the sales match the refund"
        );
        assert_eq!(h.state(b"c/card-v1").unwrap().len(), 204);
        h.set_state(b"c/card-junk", b"\x07garbage");
        assert_eq!(score(&sale(&mut h, "card-junk", T0, 10.0)), 0);
        assert!(h.dead_letters().is_empty());
    }

    #[test]
    fn a_card_idle_longer_than_the_ttl_starts_afresh() {
        let mut h = harness(r#"{"card_ttl_ms": 86400000}"#);
        refund(&mut h, "card-i", T0, 50.0);
        // A day later the first unmatched refund is forgotten: this one is the first again.
        let later = refund(&mut h, "card-i", T0 + DAY + HOUR, 50.0);
        assert!(score(&later) < 70, "{later}");
        let soon = refund(&mut h, "card-i", T0 + DAY + 2 * HOUR, 50.0);
        assert!(score(&soon) >= 70, "{soon}");
    }

    #[test]
    fn idle_cards_are_deleted_by_the_sweep_and_active_ones_kept() {
        let config = r#"{"card_ttl_ms": 172800000, "sweep_every_records": 1}"#;
        let mut h = harness(config);
        for i in 0..300 {
            sale(&mut h, &format!("idle-{i}"), T0 + i * 1000, 20.0);
        }
        block(&mut h, "idle-7", "add");
        let mut t = T0;
        for day in 0..6 {
            t = T0 + day * DAY + HOUR;
            for j in 0..40 {
                sale(&mut h, "busy", t + j * MIN, 20.0);
            }
        }
        assert_eq!(card_keys(&h), 1, "only the busy card is left");
        assert!(h.state(b"c/busy").is_some());
        assert_eq!(
            h.state(b"bl/idle-7"),
            Some(&b"stolen"[..]),
            "blocklist entries stay"
        );
        // The index holds the busy card only (plus its cursor and one bucket's count).
        let index_keys = h
            .state_entries()
            .filter(|(k, _)| k.starts_with(b"x/"))
            .count();
        assert!(index_keys <= 4, "{index_keys} index keys");
        assert_eq!(score(&sale(&mut h, "idle-3", t + HOUR, 20.0)), 0);
        assert_eq!(score(&sale(&mut h, "idle-7", t + HOUR, 20.0)), 100);
    }

    #[test]
    fn a_slow_sweep_loses_no_card_while_new_ones_arrive() {
        // Two entries per step, a step per payment: the sweep crawls through chunks while new
        // cards keep registering.
        let config = r#"{"card_ttl_ms": 172800000, "sweep_every_records": 1, "sweep_batch": 2}"#;
        let mut h = harness(config);
        for i in 0..130 {
            sale(&mut h, &format!("day0-{i}"), T0 + i * 1000, 20.0);
        }
        for day in 1..8u64 {
            for j in 0..40u64 {
                let t = T0 + day * DAY + j * 10 * MIN;
                sale(&mut h, "busy", t, 20.0);
                sale(&mut h, &format!("day{day}-{j}"), t + 1, 20.0);
            }
        }
        // Left: the busy card and the cards of the last three days (TTL two days, index buckets
        // of a day, registered a bucket late at worst); everything older is gone.
        let left: Vec<String> = h
            .state_entries()
            .filter(|(k, _)| k.starts_with(b"c/"))
            .map(|(k, _)| String::from_utf8_lossy(&k[2..]).into_owned())
            .collect();
        assert!(left.contains(&"busy".to_owned()));
        for card in &left {
            let day: u64 = card
                .strip_prefix("day")
                .and_then(|d| d.split('-').next())
                .map_or(7, |d| d.parse().unwrap());
            assert!(day >= 4, "{card} should have been swept");
        }
        // Every card left is in the index exactly once, and nothing else is.
        let mut indexed: Vec<String> = Vec::new();
        for (key, value) in h.state_entries() {
            if key.starts_with(b"x/") && key.iter().filter(|&&b| b == b'/').count() == 2 {
                let mut at = 0;
                while at + 2 <= value.len() {
                    let len = usize::from(u16::from_le_bytes([value[at], value[at + 1]]));
                    indexed
                        .push(String::from_utf8_lossy(&value[at + 2..at + 2 + len]).into_owned());
                    at += 2 + len;
                }
            }
        }
        indexed.sort();
        let mut left = left;
        left.sort();
        assert_eq!(indexed, left);
    }

    #[test]
    fn state_stays_bounded_for_a_hundred_thousand_cards() {
        let mut h = harness("{}");
        h.keep_emitted(false);
        for i in 0..100_000u64 {
            let value = format!(
                r#"{{"payment_id":"p{i}","ts_ms":{},"store_id":"s1","terminal_id":"t1","card_id":"tok_{i:016x}","amount":20,"channel":"contactless","kind":"sale"}}"#,
                T0 + i * 500
            );
            h.send("pos.payments", "", value).unwrap();
        }
        let usage = h.state_usage();
        // 204-byte cards with 22-byte keys, one index entry each, the population.
        assert!(usage.bytes < 26_000_000, "{usage:?}");
        assert!(usage.keys < 102_000, "{usage:?}");
    }

    // --- input and config ---------------------------------------------------------------------

    #[test]
    fn bad_json_fails_the_record_without_touching_state() {
        let mut h = harness("{}");
        let err = h.send("pos.payments", "card-1", "{not json").unwrap_err();
        assert!(err.message().contains("pos.payments"), "{err}");
        let err = h
            .send("pos.payments", "card-1", r#"{"card_id":"c"}"#)
            .unwrap_err();
        assert!(err.message().contains("missing field"), "{err}");
        assert_eq!(h.dead_letters().len(), 2);
        assert_eq!(h.state_len(), 0);
        assert!(h.emitted().is_empty());
    }

    #[test]
    fn unknown_channel_is_rejected() {
        let mut h = harness("{}");
        let value = json!({
            "payment_id": "p", "ts_ms": T0, "store_id": "s", "terminal_id": "t",
            "card_id": "c", "amount": 1.0, "channel": "telepathy", "kind": "sale",
        });
        assert!(h.send_json("pos.payments", "c", &value).is_err());
    }

    #[test]
    fn record_from_another_topic_is_an_error() {
        let mut h = harness("{}");
        assert!(h.send("pos.baskets", "b", "{}").is_err());
    }

    #[test]
    fn invalid_config_is_refused_at_init() {
        let err = Harness::<FraudScore>::start(r#"{"alert_threshold": 300}"#).unwrap_err();
        assert!(err.message().contains("alert_threshold"), "{err}");
        let err = Harness::<FraudScore>::start(r#"{"treshold": 3}"#).unwrap_err();
        assert!(err.message().contains("treshold"), "{err}");
    }

    #[test]
    fn a_config_of_the_previous_version_still_starts_and_says_what_it_ignores() {
        let h = harness(
            r#"{"alert_threshold": 75, "cnp_burst_count": 3.0, "weights": {"velocity_amount": 30.0}}"#,
        );
        let warned = h
            .logs()
            .iter()
            .any(|(_, m)| m.contains("cnp_burst_count") && m.contains("weights.velocity_amount"));
        assert!(warned, "{:?}", h.logs());
    }

    #[test]
    fn escaped_strings_in_ids_are_accepted() {
        let mut h = harness("{}");
        let body = format!(
            r#"{{"payment_id":"p\"1","ts_ms":{T0},"store_id":"s","terminal_id":"t","card_id":"c\u00e9","amount":5,"channel":"contactless","kind":"sale"}}"#
        );
        h.send("pos.payments", "cé", body).unwrap();
        let v: Value = h.emitted()[0].json().unwrap();
        assert_eq!(v["payment_id"], "p\"1");
        assert_eq!(v["card_id"], "cé");
    }
}
