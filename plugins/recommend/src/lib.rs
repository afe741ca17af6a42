//! `recommend`: in-store recommendations. Learns which items are bought together from
//! `pos.baskets` (decayed co-occurrence counts, top-k neighbours per item), tracks stock from
//! `inventory.updates` and open carts from `cart.events`, and answers every `loyalty.scans`
//! and `cart.events` record with `recommendations`: the top-N in-stock items not already in
//! the basket or cart.
//!
//! Scoring: for a seed item `a` (in the basket or cart) and a neighbour `c`, `P(c | a)` is the
//! decayed share of `a`'s baskets that also held `c`; several seeds combine as a noisy-or,
//! `1 - Π(1 - P(c | a))`, so the score is in 0–1 and grows with every supporting item. With no
//! seeds (an empty scan or cart) the seeds are the member's recent purchases; items still
//! missing are filled from the store's most popular items, scored by their share of baskets.
//!
//! State keys: `n/<sku>` neighbours, `pop` popular items (weighted lists), `s/<sku>` stock
//! (f64 on hand), `c/<session_id>` cart and `l/<loyalty_id>` recent purchases (SKU lists).

pub mod config;
pub mod lists;

use std::borrow::Cow;
use std::collections::BTreeMap;

use outpost_sdk::{export_plugin, Config, Context, Error, Level, Plugin, Record};
use serde::{Deserialize, Serialize};

use crate::config::RecommendConfig;
use crate::lists::{SkuList, WeightedList, MAX_SKU_LEN};

/// Output topic.
pub const RECOMMENDATIONS_TOPIC: &str = "recommendations";

/// State key of the store's popular items.
const POPULAR_KEY: &[u8] = b"pop";

#[derive(Debug, Deserialize)]
struct BasketItem<'a> {
    #[serde(borrow)]
    sku: Cow<'a, str>,
}

/// A `pos.baskets` value (fields read here).
#[derive(Debug, Deserialize)]
struct Basket<'a> {
    ts_ms: Option<u64>,
    #[serde(borrow, default)]
    loyalty_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    items: Vec<BasketItem<'a>>,
}

/// An `inventory.updates` value.
#[derive(Debug, Deserialize)]
struct InventoryUpdate<'a> {
    #[serde(borrow)]
    sku: Cow<'a, str>,
    on_hand: f64,
}

/// A `loyalty.scans` value.
#[derive(Debug, Deserialize)]
struct Scan<'a> {
    ts_ms: Option<u64>,
    #[serde(borrow)]
    store_id: Cow<'a, str>,
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    #[serde(borrow)]
    loyalty_id: Cow<'a, str>,
    #[serde(borrow, default)]
    basket: Option<Vec<Cow<'a, str>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CartAction {
    Add,
    Remove,
}

/// A `cart.events` value.
#[derive(Debug, Deserialize)]
struct CartEvent<'a> {
    ts_ms: Option<u64>,
    #[serde(borrow)]
    store_id: Cow<'a, str>,
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    #[serde(borrow)]
    session_id: Cow<'a, str>,
    #[serde(borrow, default)]
    loyalty_id: Option<Cow<'a, str>>,
    action: CartAction,
    #[serde(borrow)]
    sku: Cow<'a, str>,
}

/// One recommended item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub sku: String,
    pub score: f64,
}

/// A `recommendations` value.
#[derive(Debug, Serialize)]
struct RecommendationsOut<'a> {
    ts_ms: u64,
    store_id: &'a str,
    device_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    loyalty_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    items: &'a [Scored],
}

/// The recommend plugin.
#[derive(Debug, Default)]
pub struct Recommend {
    config: RecommendConfig,
    key: Vec<u8>,
    buf: Vec<u8>,
}

impl Plugin for Recommend {
    fn init(&mut self, _ctx: &mut dyn Context, config: &Config) -> Result<(), Error> {
        let config: RecommendConfig = config.parse()?;
        config.validate()?;
        self.config = config;
        Ok(())
    }

    fn on_record(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let c = &self.config;
        if record.topic == c.baskets_topic {
            self.basket(ctx, record)
        } else if record.topic == c.inventory_topic {
            self.inventory(ctx, record)
        } else if record.topic == c.scans_topic {
            self.scan(ctx, record)
        } else if record.topic == c.cart_topic {
            self.cart(ctx, record)
        } else {
            Err(Error::new(format!(
                "unexpected input topic {}: recommend reads {}, {}, {} and {}",
                record.topic, c.baskets_topic, c.inventory_topic, c.scans_topic, c.cart_topic
            )))
        }
    }
}

/// Whether a SKU fits the state encodings.
fn usable_sku(sku: &str) -> bool {
    !sku.is_empty() && sku.len() <= MAX_SKU_LEN
}

impl Recommend {
    fn set_key(&mut self, prefix: &[u8], id: &str) {
        self.key.clear();
        self.key.extend_from_slice(prefix);
        self.key.extend_from_slice(id.as_bytes());
    }

    fn load_weighted(&mut self, ctx: &mut dyn Context) -> Result<WeightedList, Error> {
        if !ctx.state_get_into(&self.key, &mut self.buf)? {
            return Ok(WeightedList::default());
        }
        match WeightedList::decode(&self.buf) {
            Some(list) => Ok(list),
            None => {
                let key = String::from_utf8_lossy(&self.key).into_owned();
                ctx.log(
                    Level::Warn,
                    &format!("state {key} was unreadable; starting it afresh"),
                );
                Ok(WeightedList::default())
            }
        }
    }

    fn store_weighted(&mut self, ctx: &mut dyn Context, list: &WeightedList) -> Result<(), Error> {
        list.encode(&mut self.buf);
        ctx.state_put(&self.key, &self.buf)
    }

    fn load_skus(&mut self, ctx: &mut dyn Context) -> Result<SkuList, Error> {
        if !ctx.state_get_into(&self.key, &mut self.buf)? {
            return Ok(SkuList::default());
        }
        Ok(SkuList::decode(&self.buf).unwrap_or_default())
    }

    fn store_skus(&mut self, ctx: &mut dyn Context, list: &SkuList) -> Result<(), Error> {
        list.encode(&mut self.buf);
        ctx.state_put(&self.key, &self.buf)
    }

    /// Learns co-occurrence, popularity and the member's recent items from one basket.
    fn basket(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let basket: Basket<'_> = record.json()?;
        let ts_ms = basket.ts_ms.unwrap_or(record.timestamp_ms);
        let mut skus: Vec<&str> = Vec::with_capacity(basket.items.len());
        for item in &basket.items {
            let sku: &str = &item.sku;
            if !usable_sku(sku) {
                ctx.log(
                    Level::Warn,
                    "skipping a basket item whose sku is empty or over 255 bytes",
                );
            } else if !skus.contains(&sku) && skus.len() < self.config.max_basket_items {
                skus.push(sku);
            }
        }
        if skus.is_empty() {
            return Ok(());
        }
        let (half_life, neighbours) = (self.config.half_life_ms, self.config.neighbours);
        for &a in &skus {
            self.set_key(b"n/", a);
            let mut list = self.load_weighted(ctx)?;
            list.decay_to(ts_ms, half_life);
            list.total += 1.0;
            for &b in &skus {
                if b != a {
                    list.add(b, 1.0, neighbours);
                }
            }
            self.store_weighted(ctx, &list)?;
        }

        self.key.clear();
        self.key.extend_from_slice(POPULAR_KEY);
        let mut popular = self.load_weighted(ctx)?;
        popular.decay_to(ts_ms, half_life);
        popular.total += 1.0;
        for &sku in &skus {
            popular.add(sku, 1.0, self.config.popular_items);
        }
        self.store_weighted(ctx, &popular)?;

        if let Some(member) = basket.loyalty_id.as_deref().filter(|id| !id.is_empty()) {
            self.set_key(b"l/", member);
            let mut recent = self.load_skus(ctx)?;
            recent.touched_ms = ts_ms;
            recent.skus.retain(|s| !skus.contains(&s.as_str()));
            let mut merged: Vec<String> = skus.iter().map(|s| (*s).to_owned()).collect();
            merged.append(&mut recent.skus);
            merged.truncate(self.config.history_items);
            recent.skus = merged;
            self.store_skus(ctx, &recent)?;
        }
        Ok(())
    }

    fn inventory(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let update: InventoryUpdate<'_> = record.json()?;
        if !usable_sku(&update.sku) {
            return Err(Error::new(
                "inventory update sku is empty or over 255 bytes",
            ));
        }
        if !update.on_hand.is_finite() {
            return Err(Error::new(
                "inventory update on_hand is not a finite number",
            ));
        }
        self.set_key(b"s/", &update.sku);
        ctx.state_put(&self.key, &update.on_hand.to_le_bytes())
    }

    fn scan(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let scan: Scan<'_> = record.json()?;
        let ts_ms = scan.ts_ms.unwrap_or(record.timestamp_ms);
        let basket: Vec<&str> = scan
            .basket
            .as_ref()
            .map(|b| {
                b.iter()
                    .map(|s| s.as_ref())
                    .filter(|s| usable_sku(s))
                    .collect()
            })
            .unwrap_or_default();
        let items = self.recommend_for(ctx, &basket, Some(scan.loyalty_id.as_ref()))?;
        let out = RecommendationsOut {
            ts_ms,
            store_id: &scan.store_id,
            device_id: &scan.device_id,
            loyalty_id: Some(scan.loyalty_id.as_ref()),
            session_id: None,
            items: &items,
        };
        ctx.emit_json(
            RECOMMENDATIONS_TOPIC,
            Some(scan.loyalty_id.as_bytes()),
            &out,
        )
    }

    fn cart(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let event: CartEvent<'_> = record.json()?;
        if event.session_id.is_empty() {
            return Err(Error::new("cart event has an empty session_id"));
        }
        if !usable_sku(&event.sku) {
            return Err(Error::new("cart event sku is empty or over 255 bytes"));
        }
        let ts_ms = event.ts_ms.unwrap_or(record.timestamp_ms);
        self.set_key(b"c/", &event.session_id);
        let mut cart = self.load_skus(ctx)?;
        if !cart.skus.is_empty() && ts_ms > cart.touched_ms.saturating_add(self.config.cart_idle_ms)
        {
            cart.skus.clear();
        }
        cart.touched_ms = cart.touched_ms.max(ts_ms);
        match event.action {
            CartAction::Add => {
                if !cart.contains(&event.sku) && cart.skus.len() < self.config.max_cart_items {
                    cart.skus.push(event.sku.clone().into_owned());
                }
            }
            CartAction::Remove => cart.skus.retain(|s| *s != event.sku),
        }
        if cart.skus.is_empty() {
            ctx.state_delete(&self.key)?;
        } else {
            self.store_skus(ctx, &cart)?;
        }
        let seeds: Vec<&str> = cart.skus.iter().map(String::as_str).collect();
        let member = event.loyalty_id.as_deref().filter(|id| !id.is_empty());
        let items = self.recommend_for(ctx, &seeds, member)?;
        let out = RecommendationsOut {
            ts_ms,
            store_id: &event.store_id,
            device_id: &event.device_id,
            loyalty_id: member,
            session_id: Some(event.session_id.as_ref()),
            items: &items,
        };
        ctx.emit_json(
            RECOMMENDATIONS_TOPIC,
            Some(event.session_id.as_bytes()),
            &out,
        )
    }

    /// Whether `sku` may be recommended on stock grounds.
    fn in_stock(&mut self, ctx: &mut dyn Context, sku: &str) -> Result<bool, Error> {
        self.set_key(b"s/", sku);
        if !ctx.state_get_into(&self.key, &mut self.buf)? {
            return Ok(self.config.unknown_stock_is_available);
        }
        let mut bytes = [0u8; 8];
        if self.buf.len() != 8 {
            return Ok(self.config.unknown_stock_is_available);
        }
        bytes.copy_from_slice(&self.buf);
        Ok(f64::from_le_bytes(bytes) > 0.0)
    }

    /// The top-N in-stock items for a basket or cart (`present`), excluding what is in it.
    fn recommend_for(
        &mut self,
        ctx: &mut dyn Context,
        present: &[&str],
        member: Option<&str>,
    ) -> Result<Vec<Scored>, Error> {
        let mut seeds: Vec<String> = present.iter().map(|s| (*s).to_owned()).collect();
        let mut exclude = seeds.clone();
        if seeds.is_empty() {
            if let Some(member) = member {
                self.set_key(b"l/", member);
                seeds = self.load_skus(ctx)?.skus;
                exclude.extend(seeds.iter().cloned());
            }
        }

        // Noisy-or over the seeds: keep Π(1 - P(c | a)) per candidate.
        let mut miss: BTreeMap<String, f64> = BTreeMap::new();
        for seed in &seeds {
            self.set_key(b"n/", seed);
            let list = self.load_weighted(ctx)?;
            if list.total <= 0.0 {
                continue;
            }
            for (sku, weight) in &list.entries {
                let p = (f64::from(*weight) / f64::from(list.total)).clamp(0.0, 1.0);
                let slot = miss.entry(sku.clone()).or_insert(1.0);
                *slot *= 1.0 - p;
            }
        }
        let mut candidates: Vec<Scored> = miss
            .into_iter()
            .map(|(sku, m)| Scored {
                sku,
                score: 1.0 - m,
            })
            .filter(|c| c.score > 0.0)
            .collect();
        sort_scored(&mut candidates);

        let top_n = self.config.top_n;
        let mut picked: Vec<Scored> = Vec::with_capacity(top_n);
        for candidate in candidates {
            if picked.len() == top_n {
                break;
            }
            if exclude.contains(&candidate.sku) || !self.in_stock(ctx, &candidate.sku)? {
                continue;
            }
            picked.push(candidate);
        }

        if picked.len() < top_n {
            self.key.clear();
            self.key.extend_from_slice(POPULAR_KEY);
            let popular = self.load_weighted(ctx)?;
            let mut fill: Vec<Scored> = popular
                .entries
                .iter()
                .filter(|_| popular.total > 0.0)
                .map(|(sku, w)| Scored {
                    sku: sku.clone(),
                    score: (f64::from(*w) / f64::from(popular.total)).clamp(0.0, 1.0),
                })
                .collect();
            sort_scored(&mut fill);
            for candidate in fill {
                if picked.len() == top_n {
                    break;
                }
                if exclude.contains(&candidate.sku)
                    || picked.iter().any(|p| p.sku == candidate.sku)
                    || !self.in_stock(ctx, &candidate.sku)?
                {
                    continue;
                }
                picked.push(candidate);
            }
        }
        for p in &mut picked {
            p.score = (p.score * 10_000.0).round() / 10_000.0;
        }
        // Popular fill-ins can outscore weak co-purchases; the list goes out best first.
        sort_scored(&mut picked);
        Ok(picked)
    }
}

/// Best first; ties by SKU so the output is deterministic.
fn sort_scored(items: &mut [Scored]) {
    items.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.sku.cmp(&b.sku))
    });
}

export_plugin!(Recommend);

#[cfg(test)]
mod tests {
    use outpost_sdk::testing::Harness;
    use serde_json::{json, Value};

    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const DAY: u64 = 86_400_000;

    fn harness(config: &str) -> Harness<Recommend> {
        Harness::<Recommend>::start(config)
            .unwrap()
            .allow_outputs(&[RECOMMENDATIONS_TOPIC])
    }

    fn basket(h: &mut Harness<Recommend>, ts_ms: u64, loyalty: Option<&str>, skus: &[&str]) {
        let items: Vec<Value> = skus
            .iter()
            .map(|s| json!({"sku": s, "qty": 1, "price": 1.5}))
            .collect();
        let mut value = json!({
            "basket_id": "b", "ts_ms": ts_ms, "store_id": "s1", "terminal_id": "t1",
            "items": items, "total": 1.5 * skus.len() as f64,
        });
        if let Some(id) = loyalty {
            value["loyalty_id"] = json!(id);
        }
        h.send_json("pos.baskets", "b", &value).unwrap();
    }

    fn stock(h: &mut Harness<Recommend>, sku: &str, on_hand: f64) {
        let value = json!({"ts_ms": T0, "store_id": "s1", "sku": sku, "on_hand": on_hand});
        h.send_json("inventory.updates", sku, &value).unwrap();
    }

    fn scan(h: &mut Harness<Recommend>, member: &str, basket: Option<&[&str]>) -> Value {
        let mut value = json!({"ts_ms": T0 + DAY, "store_id": "s1", "device_id": "sign-1", "loyalty_id": member});
        if let Some(b) = basket {
            value["basket"] = json!(b);
        }
        h.send_json("loyalty.scans", member, &value).unwrap();
        let out = h.emitted().last().unwrap();
        assert_eq!(out.topic, RECOMMENDATIONS_TOPIC);
        assert_eq!(out.key_str(), Some(member));
        out.json().unwrap()
    }

    fn cart(
        h: &mut Harness<Recommend>,
        session: &str,
        action: &str,
        sku: &str,
        ts_ms: u64,
    ) -> Value {
        let value = json!({
            "ts_ms": ts_ms, "store_id": "s1", "device_id": "cart-7", "session_id": session,
            "action": action, "sku": sku,
        });
        h.send_json("cart.events", session, &value).unwrap();
        let out = h.emitted().last().unwrap();
        assert_eq!(out.key_str(), Some(session));
        out.json().unwrap()
    }

    fn skus(v: &Value) -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["sku"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Pasta goes with sauce (often) and parmesan (sometimes); milk goes with bread.
    fn trained() -> Harness<Recommend> {
        let mut h = harness("{}");
        for i in 0..6 {
            basket(&mut h, T0 + i, None, &["pasta", "sauce"]);
        }
        for i in 0..3 {
            basket(&mut h, T0 + 10 + i, None, &["pasta", "parmesan"]);
        }
        for i in 0..4 {
            basket(&mut h, T0 + 20 + i, None, &["milk", "bread"]);
        }
        h
    }

    #[test]
    fn scan_recommends_co_purchased_items_best_first_with_contract_fields() {
        let mut h = trained();
        let v = scan(&mut h, "L1", Some(&["pasta"]));
        assert_eq!(v["ts_ms"], T0 + DAY);
        assert_eq!(v["store_id"], "s1");
        assert_eq!(v["device_id"], "sign-1");
        assert_eq!(v["loyalty_id"], "L1");
        assert!(v.get("session_id").is_none());
        let items = skus(&v);
        assert_eq!(&items[..2], ["sauce", "parmesan"]);
        // P(sauce | pasta) = 6/9; the other items come from popularity and score lower.
        assert!(
            (v["items"][0]["score"].as_f64().unwrap() - 0.6667).abs() < 1e-3,
            "{v}"
        );
        assert!(!items.contains(&"pasta".to_owned()));
        assert_eq!(h.emitted().len(), 1, "baskets and stock emit nothing");
    }

    #[test]
    fn out_of_stock_items_are_not_recommended() {
        let mut h = trained();
        stock(&mut h, "sauce", 0.0);
        stock(&mut h, "parmesan", 12.0);
        let items = skus(&scan(&mut h, "L1", Some(&["pasta"])));
        assert_eq!(items[0], "parmesan");
        assert!(!items.contains(&"sauce".to_owned()));
        stock(&mut h, "sauce", 3.0);
        assert_eq!(skus(&scan(&mut h, "L1", Some(&["pasta"])))[0], "sauce");
    }

    #[test]
    fn items_already_in_the_basket_are_excluded() {
        let mut h = trained();
        let items = skus(&scan(&mut h, "L1", Some(&["pasta", "sauce"])));
        assert_eq!(items[0], "parmesan");
        assert!(!items.contains(&"sauce".to_owned()) && !items.contains(&"pasta".to_owned()));
    }

    #[test]
    fn several_seeds_reinforce_a_shared_neighbour() {
        let mut h = harness(r#"{"top_n": 3}"#);
        for i in 0..4 {
            basket(&mut h, T0 + i, None, &["a", "x"]);
            basket(&mut h, T0 + 10 + i, None, &["b", "x"]);
            basket(&mut h, T0 + 20 + i, None, &["a", "y"]);
        }
        let v = scan(&mut h, "L1", Some(&["a", "b"]));
        assert_eq!(skus(&v)[0], "x");
        // 1 - (1 - 4/8)(1 - 4/4) = 1
        assert_eq!(v["items"][0]["score"], 1.0);
    }

    #[test]
    fn scan_without_basket_uses_the_members_recent_purchases() {
        let mut h = trained();
        basket(&mut h, T0 + 100, Some("L7"), &["milk"]);
        let items = skus(&scan(&mut h, "L7", None));
        assert_eq!(items[0], "bread");
        assert!(!items.contains(&"milk".to_owned()));
    }

    #[test]
    fn unknown_member_with_empty_basket_gets_popular_items() {
        let mut h = trained();
        let v = scan(&mut h, "nobody", Some(&[]));
        // pasta is in 9 of 13 baskets.
        assert_eq!(skus(&v)[0], "pasta");
        assert_eq!(v["items"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn nothing_learned_yet_answers_with_an_empty_list() {
        let mut h = harness("{}");
        let v = scan(&mut h, "L1", Some(&["pasta"]));
        assert_eq!(v["items"], json!([]));
    }

    #[test]
    fn cart_events_keep_the_cart_and_recommend_for_it() {
        let mut h = trained();
        let v = cart(&mut h, "sess-1", "add", "pasta", T0 + DAY);
        assert_eq!(v["session_id"], "sess-1");
        assert_eq!(v["device_id"], "cart-7");
        assert!(v.get("loyalty_id").is_none());
        assert_eq!(skus(&v)[0], "sauce");
        let v = cart(&mut h, "sess-1", "add", "sauce", T0 + DAY + 1000);
        assert_eq!(skus(&v)[0], "parmesan");
        let v = cart(&mut h, "sess-1", "remove", "pasta", T0 + DAY + 2000);
        // Only sauce left: pasta is its neighbour again.
        assert_eq!(skus(&v)[0], "pasta");
        cart(&mut h, "sess-1", "remove", "sauce", T0 + DAY + 3000);
        assert_eq!(h.state(b"c/sess-1"), None, "an empty cart leaves no state");
    }

    #[test]
    fn idle_cart_starts_afresh() {
        let mut h = trained();
        cart(&mut h, "sess-2", "add", "milk", T0 + DAY);
        let v = cart(&mut h, "sess-2", "add", "pasta", T0 + 2 * DAY);
        let stored = SkuList::decode(h.state(b"c/sess-2").unwrap()).unwrap();
        assert_eq!(stored.skus, ["pasta"]);
        assert_eq!(skus(&v)[0], "sauce");
    }

    #[test]
    fn old_co_purchases_fade_with_the_half_life() {
        let mut h = harness(r#"{"half_life_ms": 86400000}"#);
        for i in 0..8 {
            basket(&mut h, T0 + i, None, &["tea", "lemon"]);
        }
        for i in 0..4 {
            basket(&mut h, T0 + 5 * DAY + i, None, &["tea", "honey"]);
        }
        // Five half-lives later the eight lemon baskets weigh 8/32 = 0.25 against honey's 4.
        let items = skus(&scan(&mut h, "L1", Some(&["tea"])));
        assert_eq!(&items[..2], ["honey", "lemon"]);
    }

    #[test]
    fn neighbour_lists_stay_within_k() {
        let mut h = harness(r#"{"neighbours": 4}"#);
        let many: Vec<String> = (0..20).map(|i| format!("sku-{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        basket(&mut h, T0, None, &refs);
        let list = WeightedList::decode(h.state(b"n/sku-0").unwrap()).unwrap();
        assert_eq!(list.entries.len(), 4);
    }

    #[test]
    fn malformed_records_fail_and_change_nothing() {
        let mut h = trained();
        let before = h.state_len();
        assert!(h.send("pos.baskets", "b", r#"{"items": "nope"}"#).is_err());
        assert!(h
            .send("inventory.updates", "x", r#"{"sku": "", "on_hand": 1}"#)
            .is_err());
        assert!(h.send("cart.events", "s", r#"{"action": "add"}"#).is_err());
        assert!(h.send("weather", "s", "{}").is_err());
        assert_eq!(h.state_len(), before);
        assert_eq!(h.dead_letters().len(), 4);
    }
}
