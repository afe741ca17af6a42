//! The fraud-score configuration (the manifest's `[config]` table, with the box config's
//! `[plugins.fraud-score.config]` merged over it by the host): topics, the alert threshold, each
//! signal's limits and points, and the state's expiry. Every key is optional (the defaults
//! below are the manifest's); unknown keys are refused, naming the key.
//!
//! How the points add up to a score, and what the threshold of 70 means, is in `score` and
//! the plugin's README.

use outpost_sdk::Error;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Everything that tunes the scoring. Every field has a default; unknown keys are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudConfig {
    /// Topic carrying payments.
    pub payments_topic: String,
    /// Topic carrying blocklist updates.
    pub blocklist_topic: String,
    /// A payment whose score reaches this (0–100) is also emitted to `fraud.alerts`.
    pub alert_threshold: u32,

    // --- amount profile (stolen card, amount outlier) ---------------------------------------
    /// A sale is *out of profile* when `ln(amount)` lies this many spreads above the card's
    /// median...
    pub outlier_z: f64,
    /// A sale within `stolen_window_ms` of an out-of-profile one continues the run from this
    /// many spreads on.
    pub run_z: f64,
    /// Sales this many spreads above the card's median make a spree (see `score`)...
    pub spree_z: f64,
    /// ...when there are this many of them (this one included) within `stolen_window_ms`.
    pub spree_min_count: u32,
    /// ...and the amount is at least this much (small amounts are never a stolen-card spree).
    pub outlier_min_amount: f64,
    /// Floor of a card's own spread of `ln(amount)` (0.35 ≈ amounts vary by ±40 %), so a card
    /// that always pays the same is not flagged for a modest change.
    pub min_log_spread: f64,
    /// Weight of the population prior, in sales: a card with `n` remembered sales is judged
    /// against `n / (n + prior_weight)` of its own profile and the rest of the population's.
    pub prior_weight: f64,
    /// Remembered sales from which a card is judged on its own profile alone (the population
    /// histogram is then not read).
    pub profile_full_history: u32,
    /// Sales a card needs before a run of two out-of-profile sales counts as a stolen card; a
    /// card with fewer needs a run of three.
    pub profile_min_history: u32,
    /// Median sale of the population prior until the store's histogram has
    /// `population_min_samples` sales.
    pub prior_median_amount: f64,
    /// Spread of `ln(amount)` of that fallback prior.
    pub prior_log_spread: f64,
    /// Sales the population histogram needs before it replaces the fallback prior.
    pub population_min_samples: u32,
    /// One sale in this many (chosen by a hash of the payment id) is added to the population
    /// histogram (1 = every sale).
    pub population_sample_every: u32,
    /// Window in which out-of-profile sales make a run (a stolen card), milliseconds.
    pub stolen_window_ms: u64,

    // --- velocity -------------------------------------------------------------------------
    /// Window of `velocity_count`, milliseconds.
    pub short_window_ms: u64,
    /// Sales in the short window at which velocity starts to count (half the points; full at
    /// twice this).
    pub max_count_short: f64,
    /// Window in which distinct terminals are counted, milliseconds.
    pub terminal_window_ms: u64,
    /// Distinct terminals in the window at which terminal velocity counts in full when they
    /// belong to two stores or more; half when they are all of one store, or when two stores
    /// are seen with fewer terminals.
    pub max_terminals: u32,

    // --- card testing ---------------------------------------------------------------------
    /// Window of card testing, milliseconds.
    pub testing_window_ms: u64,
    /// A payment of at most this amount is *small*.
    pub small_amount: f64,
    /// Small payments in the window (this one included) at which card testing counts in full
    /// when at least half of them are card-not-present; one more is needed otherwise. One fewer
    /// counts half.
    pub testing_min_count: u32,

    // --- refunds --------------------------------------------------------------------------
    /// A refund matches the card's earlier sales if it is at most their unrefunded amount plus
    /// this fraction.
    pub refund_tolerance: f64,
    /// Refunds a card needs before its refund-to-sale ratio is judged.
    pub refund_min_count: f64,
    /// Refunds per sale at which refund abuse counts (half the points; full at twice this).
    pub refund_max_ratio: f64,

    // --- state ----------------------------------------------------------------------------
    /// A card idle for longer than this is forgotten (treated as new, then deleted by the
    /// sweep), milliseconds.
    pub card_ttl_ms: u64,
    /// Width of one bucket of the expiry index, milliseconds.
    pub index_bucket_ms: u64,
    /// One record in this many (by a hash of the record) runs a sweep step.
    pub sweep_every_records: u32,
    /// Index entries one sweep step looks at, at most.
    pub sweep_batch: u32,

    /// Points each signal gives at full strength.
    pub weights: Weights,

    /// Keys of fraud-score 0.1, accepted so an existing override does not stop the plugin,
    /// and ignored (init logs a warning naming them).
    #[serde(rename = "bucket_ms")]
    pub retired_bucket_ms: Option<IgnoredAny>,
    #[serde(rename = "long_window_ms")]
    pub retired_long_window_ms: Option<IgnoredAny>,
    #[serde(rename = "max_count_long")]
    pub retired_max_count_long: Option<IgnoredAny>,
    #[serde(rename = "max_amount_short")]
    pub retired_max_amount_short: Option<IgnoredAny>,
    #[serde(rename = "max_amount_long")]
    pub retired_max_amount_long: Option<IgnoredAny>,
    #[serde(rename = "outlier_min_history")]
    pub retired_outlier_min_history: Option<IgnoredAny>,
    #[serde(rename = "outlier_min_relative_deviation")]
    pub retired_outlier_min_relative_deviation: Option<IgnoredAny>,
    #[serde(rename = "cnp_burst_count")]
    pub retired_cnp_burst_count: Option<IgnoredAny>,
    #[serde(rename = "refund_max_count")]
    pub retired_refund_max_count: Option<IgnoredAny>,
}

/// Points each signal gives at full strength (each signal's strength is 0 to 1, see `score`).
/// The score is their sum, capped at 100.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// The card is on the blocklist.
    pub blocklisted: f64,
    /// A run of out-of-profile sales within `stolen_window_ms`.
    pub stolen_card: f64,
    /// One sale far above the card's profile (70 % of this at `outlier_z`, all of it three
    /// spreads further).
    pub amount_outlier: f64,
    /// A burst of small payments.
    pub card_testing: f64,
    /// Many distinct terminals (or stores) within minutes.
    pub terminal_velocity: f64,
    /// Many sales within the short window.
    pub velocity_count: f64,
    /// Refunds with no sale on the card to match them: half of this for the first, all of it
    /// from the second.
    pub refund_without_sale: f64,
    /// Many refunds per sale.
    pub refund_abuse: f64,
    /// Retired in fraud-score 0.2 (accepted, ignored).
    #[serde(rename = "velocity_amount")]
    pub retired_velocity_amount: Option<IgnoredAny>,
    /// Retired in fraud-score 0.2 (accepted, ignored).
    #[serde(rename = "cnp_burst")]
    pub retired_cnp_burst: Option<IgnoredAny>,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            blocklisted: 100.0,
            stolen_card: 80.0,
            amount_outlier: 45.0,
            card_testing: 80.0,
            terminal_velocity: 80.0,
            velocity_count: 35.0,
            refund_without_sale: 80.0,
            refund_abuse: 80.0,
            retired_velocity_amount: None,
            retired_cnp_burst: None,
        }
    }
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            payments_topic: "pos.payments".to_owned(),
            blocklist_topic: "ref.blocklist".to_owned(),
            alert_threshold: 70,
            outlier_z: 2.75,
            run_z: 2.5,
            spree_z: 1.5,
            spree_min_count: 4,
            outlier_min_amount: 50.0,
            min_log_spread: 0.35,
            prior_weight: 3.0,
            profile_full_history: 12,
            profile_min_history: 3,
            prior_median_amount: 25.0,
            prior_log_spread: 1.0,
            population_min_samples: 200,
            population_sample_every: 16,
            stolen_window_ms: 2_700_000,
            short_window_ms: 600_000,
            max_count_short: 5.0,
            terminal_window_ms: 600_000,
            max_terminals: 3,
            testing_window_ms: 900_000,
            small_amount: 5.0,
            testing_min_count: 4,
            refund_tolerance: 0.05,
            refund_min_count: 3.0,
            refund_max_ratio: 0.5,
            card_ttl_ms: 30 * 86_400_000,
            index_bucket_ms: 86_400_000,
            sweep_every_records: 8,
            sweep_batch: 16,
            weights: Weights::default(),
            retired_bucket_ms: None,
            retired_long_window_ms: None,
            retired_max_count_long: None,
            retired_max_amount_short: None,
            retired_max_amount_long: None,
            retired_outlier_min_history: None,
            retired_outlier_min_relative_deviation: None,
            retired_cnp_burst_count: None,
            retired_refund_max_count: None,
        }
    }
}

impl FraudConfig {
    /// The retired keys this config sets (see the `retired_*` fields).
    pub fn retired_keys(&self) -> Vec<&'static str> {
        let w = &self.weights;
        [
            ("bucket_ms", self.retired_bucket_ms.is_some()),
            ("long_window_ms", self.retired_long_window_ms.is_some()),
            ("max_count_long", self.retired_max_count_long.is_some()),
            ("max_amount_short", self.retired_max_amount_short.is_some()),
            ("max_amount_long", self.retired_max_amount_long.is_some()),
            (
                "outlier_min_history",
                self.retired_outlier_min_history.is_some(),
            ),
            (
                "outlier_min_relative_deviation",
                self.retired_outlier_min_relative_deviation.is_some(),
            ),
            ("cnp_burst_count", self.retired_cnp_burst_count.is_some()),
            ("refund_max_count", self.retired_refund_max_count.is_some()),
            (
                "weights.velocity_amount",
                w.retired_velocity_amount.is_some(),
            ),
            ("weights.cnp_burst", w.retired_cnp_burst.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect()
    }

    /// Turns nonsense into an error naming the key and the fix.
    pub fn validate(&self) -> Result<(), Error> {
        if self.alert_threshold > 100 {
            return Err(Error::new("config `alert_threshold` must be 0 to 100"));
        }
        let positive = [
            ("outlier_z", self.outlier_z),
            ("run_z", self.run_z),
            ("spree_z", self.spree_z),
            ("min_log_spread", self.min_log_spread),
            ("prior_median_amount", self.prior_median_amount),
            ("prior_log_spread", self.prior_log_spread),
            ("max_count_short", self.max_count_short),
            ("small_amount", self.small_amount),
            ("refund_min_count", self.refund_min_count),
            ("refund_max_ratio", self.refund_max_ratio),
        ];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::new(format!(
                    "config `{name}` must be a positive number"
                )));
            }
        }
        let non_negative = [
            ("outlier_min_amount", self.outlier_min_amount),
            ("prior_weight", self.prior_weight),
            ("refund_tolerance", self.refund_tolerance),
        ];
        for (name, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::new(format!(
                    "config `{name}` must be a number of at least 0"
                )));
            }
        }
        let windows = [
            ("stolen_window_ms", self.stolen_window_ms),
            ("short_window_ms", self.short_window_ms),
            ("terminal_window_ms", self.terminal_window_ms),
            ("testing_window_ms", self.testing_window_ms),
        ];
        for (name, value) in windows {
            if !(1000..=86_400_000).contains(&value) {
                return Err(Error::new(format!(
                    "config `{name}` must be 1000 (a second) to 86400000 (a day)"
                )));
            }
        }
        let counts = [
            ("max_terminals", self.max_terminals),
            ("testing_min_count", self.testing_min_count),
            ("spree_min_count", self.spree_min_count),
            ("population_sample_every", self.population_sample_every),
            ("sweep_every_records", self.sweep_every_records),
            ("sweep_batch", self.sweep_batch),
        ];
        for (name, value) in counts {
            if value < 2 && name != "population_sample_every" && name != "sweep_every_records" {
                return Err(Error::new(format!("config `{name}` must be at least 2")));
            }
            if value == 0 {
                return Err(Error::new(format!("config `{name}` must be at least 1")));
            }
        }
        if self.index_bucket_ms < 60_000 {
            return Err(Error::new(
                "config `index_bucket_ms` must be at least 60000 (a minute)",
            ));
        }
        if self.card_ttl_ms < self.stolen_window_ms.max(self.testing_window_ms) {
            return Err(Error::new(
                "config `card_ttl_ms` must be at least the longest signal window",
            ));
        }
        if self.card_ttl_ms / 1000 > u64::from(u32::MAX) {
            return Err(Error::new("config `card_ttl_ms` is too large"));
        }
        let w = &self.weights;
        let weights = [
            ("blocklisted", w.blocklisted),
            ("stolen_card", w.stolen_card),
            ("amount_outlier", w.amount_outlier),
            ("card_testing", w.card_testing),
            ("terminal_velocity", w.terminal_velocity),
            ("velocity_count", w.velocity_count),
            ("refund_without_sale", w.refund_without_sale),
            ("refund_abuse", w.refund_abuse),
        ];
        for (name, value) in weights {
            if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
                return Err(Error::new(format!(
                    "config `weights.{name}` must be a number from 0 to 100"
                )));
            }
        }
        if self.payments_topic.is_empty() || self.blocklist_topic.is_empty() {
            return Err(Error::new(
                "config `payments_topic` and `blocklist_topic` must name topics",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<FraudConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The manifest's `[config]` and `[config.weights]` as JSON (its values are plain
    /// numbers; comments and other tables are skipped).
    fn manifest_config() -> String {
        let mut top = Vec::new();
        let mut weights = Vec::new();
        let mut table = "";
        for line in include_str!("../plugin.toml").lines() {
            let line = line.trim();
            if line.starts_with('[') {
                table = line;
            } else if let Some((key, value)) = line.split_once('=') {
                let entry = format!("\"{}\": {}", key.trim(), value.trim());
                match table {
                    "[config]" => top.push(entry),
                    "[config.weights]" => weights.push(entry),
                    _ => {}
                }
            }
        }
        top.push(format!("\"weights\": {{{}}}", weights.join(", ")));
        format!("{{{}}}", top.join(", "))
    }

    #[test]
    fn the_manifest_lists_every_default() {
        let json = manifest_config();
        let from_manifest = parse(&json).unwrap();
        from_manifest.validate().unwrap();
        assert_eq!(
            format!("{from_manifest:?}"),
            format!("{:?}", FraudConfig::default())
        );
        // Every knob is in the manifest (the retired keys and the topics are not knobs).
        let fields = format!("{:?}", FraudConfig::default())
            .matches(": ")
            .count();
        let retired = 9 + 2;
        let listed = json.matches(": ").count();
        assert_eq!(listed, fields - retired - 2, "{json}");
    }

    #[test]
    fn defaults_are_valid() {
        FraudConfig::default().validate().unwrap();
        parse("{}").unwrap().validate().unwrap();
    }

    #[test]
    fn a_partial_config_keeps_the_defaults_of_every_other_key() {
        let c = parse(r#"{"alert_threshold": 60, "weights": {"stolen_card": 90}}"#).unwrap();
        assert_eq!(c.alert_threshold, 60);
        assert_eq!(c.weights.stolen_card, 90.0);
        assert_eq!(c.weights.card_testing, 80.0);
        assert_eq!(c.small_amount, 5.0);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse(r#"{"treshold": 3}"#).unwrap_err().to_string();
        assert!(err.contains("treshold"), "{err}");
        let err = parse(r#"{"weights": {"stolen": 3}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stolen"), "{err}");
    }

    #[test]
    fn keys_of_the_previous_version_are_accepted_and_named() {
        let c = parse(r#"{"bucket_ms": 300000, "weights": {"cnp_burst": 35.0}}"#).unwrap();
        c.validate().unwrap();
        assert_eq!(c.retired_keys(), ["bucket_ms", "weights.cnp_burst"]);
        assert!(FraudConfig::default().retired_keys().is_empty());
    }

    #[test]
    fn nonsense_values_name_their_key() {
        for (json, key) in [
            (r#"{"outlier_z": 0}"#, "outlier_z"),
            (r#"{"short_window_ms": 10}"#, "short_window_ms"),
            (r#"{"max_terminals": 1}"#, "max_terminals"),
            (r#"{"sweep_every_records": 0}"#, "sweep_every_records"),
            (r#"{"card_ttl_ms": 60000}"#, "card_ttl_ms"),
            (
                r#"{"weights": {"card_testing": 200}}"#,
                "weights.card_testing",
            ),
        ] {
            let err = parse(json).unwrap().validate().unwrap_err();
            assert!(err.message().contains(key), "{json}: {err}");
        }
    }
}
