//! The fraud-score configuration (the manifest's `[config]` table): topics, alert threshold,
//! window sizes, per-signal limits and weights, with defaults and validation.

use outpost_sdk::Error;
use serde::Deserialize;

/// Most buckets a card's ring may have (`long_window_ms / bucket_ms + 1`).
pub const MAX_BUCKETS: u64 = 64;

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
    /// Width of one velocity bucket, milliseconds (at least 1000).
    pub bucket_ms: u64,
    /// The short sliding window, milliseconds.
    pub short_window_ms: u64,
    /// The long sliding window, milliseconds (at least the short one).
    pub long_window_ms: u64,
    /// Sales in the short window at which velocity starts to count.
    pub max_count_short: f64,
    /// Sales in the long window at which velocity starts to count.
    pub max_count_long: f64,
    /// Sales amount in the short window at which amount velocity starts to count.
    pub max_amount_short: f64,
    /// Sales amount in the long window at which amount velocity starts to count.
    pub max_amount_long: f64,
    /// Standard deviations above the card's mean sale at which an amount is an outlier.
    pub outlier_z: f64,
    /// Sales a card needs before outliers are judged.
    pub outlier_min_history: u32,
    /// The deviation used is at least this fraction of the card's mean sale, so very regular
    /// cards are not flagged for small changes.
    pub outlier_min_relative_deviation: f64,
    /// Card-not-present payments in the short window at which a burst starts to count.
    pub cnp_burst_count: f64,
    /// Refunds in the long window at which refund abuse starts to count.
    pub refund_max_count: f64,
    /// Refunds per sale in the long window at which refund abuse starts to count...
    pub refund_max_ratio: f64,
    /// ...once the card has at least this many refunds in the window.
    pub refund_min_count: f64,
    /// Points each signal adds at full strength.
    pub weights: Weights,
}

/// Points each signal contributes at full strength (a signal's strength is 0–1; at its
/// limit it is 0.5 and it reaches 1 at twice the limit). The score is capped at 100.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// The card is on the blocklist.
    pub blocklisted: f64,
    /// Too many sales in a window.
    pub velocity_count: f64,
    /// Too much money in a window.
    pub velocity_amount: f64,
    /// The amount is far above the card's usual.
    pub amount_outlier: f64,
    /// Many card-not-present payments in the short window.
    pub cnp_burst: f64,
    /// Many refunds, or many refunds per sale.
    pub refund_abuse: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            blocklisted: 100.0,
            velocity_count: 35.0,
            velocity_amount: 30.0,
            amount_outlier: 40.0,
            cnp_burst: 35.0,
            refund_abuse: 45.0,
        }
    }
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            payments_topic: "pos.payments".to_owned(),
            blocklist_topic: "ref.blocklist".to_owned(),
            alert_threshold: 70,
            bucket_ms: 300_000,
            short_window_ms: 600_000,
            long_window_ms: 3_600_000,
            max_count_short: 5.0,
            max_count_long: 20.0,
            max_amount_short: 1000.0,
            max_amount_long: 3000.0,
            outlier_z: 3.0,
            outlier_min_history: 5,
            outlier_min_relative_deviation: 0.25,
            cnp_burst_count: 3.0,
            refund_max_count: 3.0,
            refund_max_ratio: 0.5,
            refund_min_count: 2.0,
            weights: Weights::default(),
        }
    }
}

impl FraudConfig {
    /// The number of buckets in each card's ring: enough to cover the long window plus the
    /// partly covered oldest bucket.
    pub fn buckets(&self) -> u64 {
        (self.long_window_ms + self.bucket_ms - 1) / self.bucket_ms + 1
    }

    /// Turns nonsense into an error naming the key and the fix.
    pub fn validate(&self) -> Result<(), Error> {
        if self.alert_threshold > 100 {
            return Err(Error::new("config `alert_threshold` must be 0 to 100"));
        }
        if self.bucket_ms < 1000 {
            return Err(Error::new("config `bucket_ms` must be at least 1000"));
        }
        if self.short_window_ms == 0 || self.short_window_ms > self.long_window_ms {
            return Err(Error::new(
                "config `short_window_ms` must be positive and at most `long_window_ms`",
            ));
        }
        if self.buckets() > MAX_BUCKETS {
            return Err(Error::new(format!(
                "config `long_window_ms` / `bucket_ms` gives {} buckets; at most {} fit: raise `bucket_ms`",
                self.buckets(),
                MAX_BUCKETS
            )));
        }
        let limits = [
            ("max_count_short", self.max_count_short),
            ("max_count_long", self.max_count_long),
            ("max_amount_short", self.max_amount_short),
            ("max_amount_long", self.max_amount_long),
            ("outlier_z", self.outlier_z),
            ("cnp_burst_count", self.cnp_burst_count),
            ("refund_max_count", self.refund_max_count),
            ("refund_max_ratio", self.refund_max_ratio),
        ];
        for (name, value) in limits {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::new(format!(
                    "config `{name}` must be a positive number"
                )));
            }
        }
        let w = &self.weights;
        let weights = [
            ("blocklisted", w.blocklisted),
            ("velocity_count", w.velocity_count),
            ("velocity_amount", w.velocity_amount),
            ("amount_outlier", w.amount_outlier),
            ("cnp_burst", w.cnp_burst),
            ("refund_abuse", w.refund_abuse),
        ];
        for (name, value) in weights {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::new(format!(
                    "config `weights.{name}` must be a number of at least 0"
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

    #[test]
    fn defaults_are_valid_and_use_thirteen_buckets() {
        let c = FraudConfig::default();
        c.validate().unwrap();
        assert_eq!(c.buckets(), 13);
    }

    #[test]
    fn too_many_buckets_names_the_keys() {
        let c = FraudConfig {
            bucket_ms: 1000,
            ..FraudConfig::default()
        };
        assert!(c.validate().unwrap_err().message().contains("bucket_ms"));
    }

    #[test]
    fn short_window_longer_than_long_window_is_refused() {
        let c = FraudConfig {
            short_window_ms: 7_200_000,
            ..FraudConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .message()
            .contains("short_window_ms"));
    }
}
