//! `fraud-score`: scores every card payment on `pos.payments` for fraud risk and emits the
//! score to `fraud.scores` (and to `fraud.alerts` when it reaches the threshold), keyed by
//! `card_id`. Blocklist updates arrive on `ref.blocklist`.
//!
//! # What it looks for
//! - **Stolen card**: a run of sales far above the card's own amount profile (robust median and
//!   spread of its last payments, blended with the store's population while the card is young).
//!   One big sale is an `amount_outlier` (32–45 points, no alert); the second within two hours
//!   is `stolen_card` (80).
//! - **Card testing**: a burst of small payments, mostly card-not-present (`card_testing`).
//! - **Velocity across terminals**: one card at several terminals or stores within minutes
//!   (`terminal_velocity`), and many sales within ten minutes (`velocity_count`).
//! - **Refund abuse**: refunds no earlier sale on the card covers — including refunds to a card
//!   that never bought (`refund_without_sale`) — and a high refund-to-sale ratio
//!   (`refund_abuse`).
//! - **Blocklist** (`blocklisted`, 100).
//!
//! # What a score means
//! Points add up (see [`score`] for the table) and are capped at 100. **70, the default
//! threshold, means one pattern is established** (the second out-of-profile sale in two hours,
//! the third terminal in ten minutes, the fourth small card-not-present payment in fifteen, the
//! second refund without a sale, a blocklisted card) **or two partial signals coincide** (a big
//! out-of-profile sale at a second store within minutes). A single suspicious fact — one big
//! purchase, two terminals, three small payments, one refund without a sale — stays at 30–45.
//! On the labelled days of `examples/evaluate` (see the README), payments scoring 70 or more
//! are fraudulent in well over 95 % of cases.
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
//! emits; one sale in four updates the population, one record in eight runs a sweep step.
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
    fn store_card(&mut self, ctx: &mut dyn Context, card_id: &str, ts_ms: u64) -> Result<(), Error> {
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
        let unmatched_refund = refund && !self.card.add_refund(amount, self.config.refund_tolerance);
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

    fn harness(config: &str) -> Harness<FraudScore> {
        Harness::<FraudScore>::start(config)
            .unwrap()
            .allow_outputs(&[SCORES_TOPIC, ALERTS_TOPIC])
    }

    fn pay(
        h: &mut Harness<FraudScore>,
        card: &str,
        ts_ms: u64,
        amount: f64,
        channel: &str,
        kind: &str,
    ) -> Value {
        let id = format!("p-{}", h.emitted_count());
        let value = json!({
            "payment_id": id, "ts_ms": ts_ms, "store_id": "s1", "terminal_id": "t1",
            "card_id": card, "amount": amount, "currency": "EUR", "channel": channel, "kind": kind,
        });
        h.send_json("pos.payments", card, &value).unwrap();
        let last: &Emitted = h.emitted_to(SCORES_TOPIC).last().copied().unwrap();
        assert_eq!(last.key_str(), Some(card));
        last.json().unwrap()
    }

    fn sale(h: &mut Harness<FraudScore>, card: &str, ts_ms: u64, amount: f64) -> Value {
        pay(h, card, ts_ms, amount, "card_present", "sale")
    }

    fn reasons(v: &Value) -> Vec<String> {
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }

    fn block(h: &mut Harness<FraudScore>, card: &str, action: &str) {
        let value = json!({"card_id": card, "action": action, "reason": "stolen"});
        h.send_json("ref.blocklist", card, &value).unwrap();
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
    fn big_spend_within_the_hour_triggers_amount_velocity() {
        let mut h = harness(r#"{"outlier_min_history": 1000}"#);
        for i in 0..3 {
            sale(&mut h, "card-a", T0 + i * 15 * MIN, 1100.0);
        }
        let v = sale(&mut h, "card-a", T0 + 50 * MIN, 1100.0);
        assert_eq!(reasons(&v), ["velocity_amount"]);
    }

    #[test]
    fn amount_far_above_the_cards_usual_is_an_outlier() {
        let mut h = harness("{}");
        for i in 0..8 {
            sale(&mut h, "card-o", T0 + i * 60 * MIN, 20.0 + (i % 3) as f64);
        }
        let v = sale(&mut h, "card-o", T0 + 9 * 60 * MIN, 480.0);
        assert_eq!(reasons(&v), ["amount_outlier"]);
        assert_eq!(v["score"], 40);
        let normal = sale(&mut h, "card-o", T0 + 10 * 60 * MIN, 22.0);
        assert_eq!(normal["score"], 0);
    }

    #[test]
    fn new_card_is_never_an_outlier() {
        let mut h = harness("{}");
        let v = sale(&mut h, "card-n", T0, 5000.0);
        // Big enough for amount velocity, but a card with no history has no usual amount.
        assert_eq!(reasons(&v), ["velocity_amount"]);
        assert_eq!(sale(&mut h, "card-m", T0, 200.0)["score"], 0);
    }

    #[test]
    fn card_not_present_burst_is_flagged() {
        let mut h = harness("{}");
        let mut last = Value::Null;
        for i in 0..4 {
            last = pay(
                &mut h,
                "card-c",
                T0 + i * MIN,
                15.0,
                "card_not_present",
                "sale",
            );
        }
        assert_eq!(reasons(&last), ["cnp_burst"]);
        // A card-present payment in the same burst is not a card-not-present burst.
        let present = pay(&mut h, "card-c", T0 + 5 * MIN, 15.0, "contactless", "sale");
        assert!(
            !reasons(&present).contains(&"cnp_burst".to_owned()),
            "{present}"
        );
    }

    #[test]
    fn repeated_refunds_are_refund_abuse() {
        let mut h = harness("{}");
        sale(&mut h, "card-r", T0, 50.0);
        let first = pay(&mut h, "card-r", T0 + MIN, 50.0, "card_present", "refund");
        assert_eq!(first["score"], 0);
        let second = pay(
            &mut h,
            "card-r",
            T0 + 2 * MIN,
            50.0,
            "card_present",
            "refund",
        );
        // Two refunds for one sale: ratio 2 is four times the 0.5 limit.
        assert_eq!(reasons(&second), ["refund_abuse"]);
        assert_eq!(second["score"], 45);
    }

    #[test]
    fn combined_signals_cross_the_alert_threshold() {
        let mut h = harness("{}");
        for i in 0..6 {
            sale(&mut h, "card-x", T0 + i * 60 * MIN, 20.0);
        }
        let base = T0 + 7 * 60 * MIN;
        for i in 0..3 {
            pay(
                &mut h,
                "card-x",
                base + i * MIN,
                20.0,
                "card_not_present",
                "sale",
            );
        }
        assert!(h.emitted_to(ALERTS_TOPIC).is_empty());
        let v = pay(
            &mut h,
            "card-x",
            base + 3 * MIN,
            2000.0,
            "card_not_present",
            "sale",
        );
        // 40 (outlier) + 30 (2060 spent in ten minutes) + 23.3 (fourth card-not-present).
        assert_eq!(v["score"], 93);
        assert_eq!(
            reasons(&v),
            ["amount_outlier", "velocity_amount", "cnp_burst"]
        );
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
        assert_eq!(h.state_len(), 2);
    }

    #[test]
    fn card_state_stays_small() {
        let mut h = harness("{}");
        for i in 0..50 {
            sale(&mut h, "card-s", T0 + i * MIN, 20.0);
        }
        assert_eq!(h.state(b"c/card-s").unwrap().len(), 166);
    }

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
    fn blocklist_entry_may_name_the_card_only_in_the_key() {
        let mut h = harness("{}");
        h.send("ref.blocklist", "card-k", r#"{"action":"add"}"#)
            .unwrap();
        assert_eq!(h.state(b"bl/card-k"), Some(&b""[..]));
        assert!(h.send("ref.blocklist", "", r#"{"action":"add"}"#).is_err());
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
