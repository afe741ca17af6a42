//! The recommend configuration (the manifest's `[config]` table): topics, decay, list sizes and
//! cart handling, with defaults and validation.

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
    /// Neighbours kept per item (top-k, at most 64).
    pub neighbours: usize,
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
}

impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            baskets_topic: "pos.baskets".to_owned(),
            inventory_topic: "inventory.updates".to_owned(),
            scans_topic: "loyalty.scans".to_owned(),
            cart_topic: "cart.events".to_owned(),
            half_life_ms: 7 * 86_400_000,
            neighbours: 16,
            top_n: 5,
            max_basket_items: 30,
            history_items: 10,
            popular_items: 32,
            max_cart_items: 100,
            cart_idle_ms: 2 * 3_600_000,
            unknown_stock_is_available: true,
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
        ];
        for (name, value, max) in bounded {
            if value == 0 || value > max {
                return Err(Error::new(format!("config `{name}` must be 1 to {max}")));
            }
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
    }
}
