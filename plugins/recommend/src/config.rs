//! The recommend configuration (the manifest's `[config]` table): topics, decay, the association
//! measure (minimum support, shrinkage), list sizes, cart handling and the association report,
//! with defaults and validation. Every key is optional (a box config may override a few of the
//! manifest's keys); unknown keys are refused, naming the key.

use outpost_sdk::Error;
use serde::Deserialize;

/// Everything that tunes recommend. Every field has a default; unknown keys are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommendConfig {
    /// Topic carrying baskets (learned from).
    pub baskets_topic: String,
    /// Topic carrying stock levels.
    pub inventory_topic: String,
    /// Topic carrying loyalty scans (answered).
    pub scans_topic: String,
    /// Topic carrying cart events (tracked and answered).
    pub cart_topic: String,
    /// Co-occurrence counts halve over this many milliseconds (default 7 days).
    pub half_life_ms: u64,
    /// Neighbours kept per item (top-k by co-occurrence, at most 64). Popular items take some
    /// of the slots, so this is larger than the number of associations worth showing.
    pub neighbours: usize,
    /// Minimum support: a pair must have been bought together in at least this many (decayed)
    /// baskets before it counts as an association, for recommendations and the report alike.
    pub min_support_baskets: f64,
    /// Shrinkage: lift is pulled toward 1 (no association) by the weight
    /// `baskets / (baskets + shrinkage_baskets)`, `baskets` being the pair's co-occurrence, so
    /// a pair seen a few times needs a much higher raw lift than a pair seen often. 0 = plain
    /// lift.
    pub shrinkage_baskets: f64,
    /// Items per recommendation (at most 50).
    pub top_n: usize,
    /// Distinct items of one basket that are learned from (larger baskets are cut).
    pub max_basket_items: usize,
    /// Recent items remembered per loyalty member.
    pub history_items: usize,
    /// Popular items kept for the store (at most 255).
    pub popular_items: usize,
    /// Items one cart holds at most (at most 255).
    pub max_cart_items: usize,
    /// A cart untouched for longer than this starts empty on its next event.
    pub cart_idle_ms: u64,
    /// Whether an item with no `inventory.updates` record yet may be recommended.
    pub unknown_stock_is_available: bool,
    /// Associations per item in the `recommend.associations` report (at most 50).
    pub report_items: usize,
    /// An item's association list is recomputed for the report at most once per this much
    /// event time (basket `ts_ms`), so a busy item is not reported on every basket.
    pub report_min_interval_ms: u64,
    /// An item's report is repeated after this much event time even if nothing changed
    /// (when it is next bought), so the merchandiser's view stays fresh. 0 = only on change.
    pub report_max_interval_ms: u64,
    /// A change is material (the report is emitted) when the set of reported SKUs changes or a
    /// reported lift moves by more than this fraction of its last reported value.
    pub report_lift_change: f64,
    /// Reports one basket may emit (and item lists it may recompute) at most; due items left
    /// over are reported on later baskets. 0 turns the report off.
    pub max_reports_per_basket: usize,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            baskets_topic: "pos.baskets".to_owned(),
            inventory_topic: "inventory.updates".to_owned(),
            scans_topic: "loyalty.scans".to_owned(),
            cart_topic: "cart.events".to_owned(),
            half_life_ms: 7 * 86_400_000,
            neighbours: 32,
            min_support_baskets: 3.0,
            shrinkage_baskets: 5.0,
            top_n: 5,
            max_basket_items: 30,
            history_items: 10,
            popular_items: 32,
            max_cart_items: 100,
            cart_idle_ms: 2 * 3_600_000,
            unknown_stock_is_available: true,
            report_items: 10,
            report_min_interval_ms: 600_000,
            report_max_interval_ms: 86_400_000,
            report_lift_change: 0.2,
            max_reports_per_basket: 8,
        }
    }
}

impl RecommendConfig {
    /// Turns nonsense into an error naming the key and the fix.
    pub fn validate(&self) -> Result<(), Error> {
        let bounded = [
            ("neighbours", self.neighbours, 64),
            ("top_n", self.top_n, 50),
            ("max_basket_items", self.max_basket_items, 100),
            ("history_items", self.history_items, 255),
            ("popular_items", self.popular_items, 255),
            ("max_cart_items", self.max_cart_items, 255),
            ("report_items", self.report_items, 50),
        ];
        for (name, value, max) in bounded {
            if value == 0 || value > max {
                return Err(Error::new(format!("config `{name}` must be 1 to {max}")));
            }
        }
        if self.max_reports_per_basket > 100 {
            return Err(Error::new(
                "config `max_reports_per_basket` must be 0 (no report) to 100",
            ));
        }
        let non_negative = [
            ("min_support_baskets", self.min_support_baskets),
            ("shrinkage_baskets", self.shrinkage_baskets),
            ("report_lift_change", self.report_lift_change),
        ];
        for (name, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::new(format!(
                    "config `{name}` must be a number of at least 0"
                )));
            }
        }
        if self.report_max_interval_ms != 0
            && self.report_max_interval_ms < self.report_min_interval_ms
        {
            return Err(Error::new(
                "config `report_max_interval_ms` must be 0 or at least `report_min_interval_ms`",
            ));
        }
        if self.half_life_ms == 0 {
            return Err(Error::new("config `half_life_ms` must be positive"));
        }
        let topics = [
            &self.baskets_topic,
            &self.inventory_topic,
            &self.scans_topic,
            &self.cart_topic,
        ];
        if topics.iter().any(|t| t.is_empty()) {
            return Err(Error::new(
                "config `baskets_topic`, `inventory_topic`, `scans_topic` and `cart_topic` must name topics",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RecommendConfig::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_sizes_name_the_key() {
        let c = RecommendConfig {
            neighbours: 0,
            ..RecommendConfig::default()
        };
        assert!(c.validate().unwrap_err().message().contains("neighbours"));
        let c = RecommendConfig {
            top_n: 500,
            ..RecommendConfig::default()
        };
        assert!(c.validate().unwrap_err().message().contains("top_n"));
        let c = RecommendConfig {
            min_support_baskets: -1.0,
            ..RecommendConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .message()
            .contains("min_support_baskets"));
    }

    #[test]
    fn a_partial_config_keeps_the_other_defaults_and_unknown_keys_are_named() {
        let c: RecommendConfig = outpost_sdk::Config::new(&br#"{"top_n": 3}"#[..])
            .parse()
            .unwrap();
        assert_eq!((c.top_n, c.neighbours, c.report_items), (3, 32, 10));
        let err = outpost_sdk::Config::new(&br#"{"min_support": 3}"#[..])
            .parse::<RecommendConfig>()
            .unwrap_err();
        assert!(err.message().contains("min_support"), "{err}");
    }
}
