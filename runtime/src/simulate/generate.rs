//! The demo store's traffic as a pure, seeded function: each call to [`Generator::next_slot`]
//! is one payment slot and returns the MQTT messages of that moment (the payment, and around it
//! the basket, a loyalty scan and smart-cart events). No clock, no I/O: the same seed and the
//! same `now_ms` give the same messages, so tests can regenerate what a run sent.
//!
//! # The store
//! Terminals `{store}-t01` …, a web shop terminal `{store}-web` for card-not-present payments,
//! loyalty kiosks `{store}-kiosk-N` (each under a signage screen) and smart carts
//! `{store}-cart-NN`. Baskets are drawn from a small catalogue grouped into shopping themes
//! (breakfast, pasta night, barbecue …), so items bought together really co-occur and the
//! recommend plugin has something to learn. Cards come from a pool large enough that ordinary
//! shoppers never look like a burst.
//!
//! # Planted fraud
//! A known fraction of payments ([`GeneratorConfig::fraud_fraction`]) belongs to fraud episodes,
//! interleaved with ordinary traffic and labelled nowhere in the payload. Each pattern is built
//! to cross the bundled fraud-score plugin's default rules (alert at 70, see
//! `plugins/fraud-score/README.md`):
//! - [`Pattern::CardTesting`]: 12 card-not-present sales of 0.50–2.99 on a fresh card — card
//!   testing (small, mostly card-not-present payments within 15 minutes) scores 80 from the
//!   fourth on.
//! - [`Pattern::AccountTakeover`]: six ordinary small purchases, then a spree of doubling
//!   amounts (about 350, 700, 1400, 2100) at different terminals — far outside the card's own
//!   profile, a stolen-card run that passes 70 by the third big sale.
//! - [`Pattern::RefundAbuse`]: one sale, then six card-not-present refunds — refunds no sale
//!   covers pass 70 from the second unmatched one.
//!
//! Ordinary refunds return an item of one of the recent ordinary sales, on the card that paid
//! for it (a refund to a card that never bought is itself a fraud signal).

use std::collections::VecDeque;

use serde_json::json;

/// What the generator needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// The store id put into every event.
    pub store_id: String,
    /// In-store POS terminals.
    pub terminals: u32,
    /// Share of payments (0 to 0.5) that belong to planted fraud episodes.
    pub fraud_fraction: f64,
    /// Ordinary cards in circulation.
    pub cards: u32,
    /// Makes ids unique per run (payments, baskets, cart sessions: `pay-{run_tag}-…`) and
    /// gives each run fresh cards for its planted fraud; everything else depends on the seed
    /// only.
    pub run_tag: String,
}

/// The fraud patterns planted in the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Many tiny card-not-present sales on one fresh card.
    CardTesting,
    /// A card's usual small purchases, then a spree of big ones across terminals.
    AccountTakeover,
    /// A sale followed by a run of card-not-present refunds.
    RefundAbuse,
}

impl Pattern {
    /// Every pattern, in the order episodes cycle through them.
    pub const ALL: [Pattern; 3] = [
        Pattern::CardTesting,
        Pattern::AccountTakeover,
        Pattern::RefundAbuse,
    ];

    /// The name used in summaries and logs.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::CardTesting => "card testing",
            Pattern::AccountTakeover => "account takeover",
            Pattern::RefundAbuse => "refund abuse",
        }
    }

    fn steps(self) -> usize {
        match self {
            Pattern::CardTesting => 12,
            Pattern::AccountTakeover => 10,
            Pattern::RefundAbuse => 7,
        }
    }
}

/// Which planted episode a payment belongs to (known to the generator, never sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planted {
    /// Episode number, from 0.
    pub episode: u32,
    /// Its pattern.
    pub pattern: Pattern,
    /// This is the episode's last payment.
    pub last: bool,
}

/// What kind of event a message carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `pos/payments`, with its id and planted episode if any.
    Payment {
        /// The payment's `payment_id`.
        payment_id: String,
        /// The card it was made with.
        card_id: String,
        /// The planted episode, if any.
        planted: Option<Planted>,
    },
    /// `pos/baskets`.
    Basket,
    /// `loyalty/scans`.
    LoyaltyScan,
    /// `cart/events`.
    CartEvent,
}

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// MQTT topic (`pos/payments` …).
    pub topic: &'static str,
    /// JSON payload.
    pub payload: String,
    /// What it is.
    pub kind: Kind,
}

/// SplitMix64: a small, well-mixed, seedable generator (no random crate needed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[lo, hi)`.
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Money rounded to cents.
fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A catalogue item: SKU and shelf price.
type Item = (&'static str, f64);

/// Shopping themes: items that go into the same basket.
const THEMES: &[&[Item]] = &[
    &[
        ("milk-1l", 1.19),
        ("cornflakes-500g", 2.79),
        ("bananas-1kg", 1.69),
        ("coffee-beans-500g", 7.99),
        ("orange-juice-1l", 2.49),
        ("yoghurt-500g", 1.29),
    ],
    &[
        ("spaghetti-500g", 1.29),
        ("tomato-sauce-400g", 1.99),
        ("parmesan-150g", 3.49),
        ("basil-pot", 1.99),
        ("red-wine-75cl", 6.99),
        ("garlic-3pc", 0.89),
    ],
    &[
        ("sausages-6pc", 4.49),
        ("burger-buns-6pc", 1.79),
        ("ketchup-500ml", 2.29),
        ("charcoal-3kg", 5.99),
        ("lager-6x33cl", 5.49),
        ("corn-cobs-2pc", 2.19),
    ],
    &[
        ("diapers-size4", 11.99),
        ("baby-wipes-64", 2.49),
        ("baby-food-jar", 1.09),
        ("baby-lotion-200ml", 4.29),
    ],
    &[
        ("crisps-200g", 1.99),
        ("cola-1-5l", 1.69),
        ("chocolate-100g", 1.39),
        ("popcorn-100g", 1.49),
        ("nuts-200g", 3.29),
    ],
    &[
        ("sourdough-bread", 3.49),
        ("butter-250g", 2.39),
        ("strawberry-jam-340g", 2.69),
        ("eggs-10pc", 2.99),
        ("cheddar-200g", 2.89),
    ],
];

/// Staples that turn up in any basket.
const STAPLES: &[Item] = &[
    ("water-6x1-5l", 2.99),
    ("toilet-paper-8", 4.49),
    ("apples-1kg", 2.49),
    ("tomatoes-500g", 1.99),
    ("dish-soap-500ml", 1.59),
    ("rice-1kg", 2.19),
];

const KIOSKS: u32 = 3;
const CARTS: usize = 4;
/// Loyalty members in the store's catchment.
const MEMBERS: u64 = 3000;
/// Planted episodes running at once, at most.
const MAX_ACTIVE_EPISODES: usize = 2;

#[derive(Debug)]
struct Step {
    channel: &'static str,
    kind: &'static str,
    amount: f64,
    terminal: String,
}

#[derive(Debug)]
struct Episode {
    planted: Planted,
    card_id: String,
    steps: VecDeque<Step>,
    due_slot: u64,
}

#[derive(Debug, Default)]
struct CartSession {
    session_id: String,
    loyalty_id: Option<String>,
    planned: Vec<&'static str>,
    added: Vec<&'static str>,
}

/// The traffic generator (see the module docs).
#[derive(Debug)]
pub struct Generator {
    cfg: GeneratorConfig,
    rng: Rng,
    slot: u64,
    baskets: u64,
    sessions: u64,
    episodes_started: u32,
    planted_committed: u64,
    active: Vec<Episode>,
    carts: Vec<CartSession>,
    tag_hash: u64,
    /// Recent ordinary sales (card, amount), oldest first: a refund returns an item of one.
    recent_sales: VecDeque<(String, f64)>,
}

/// Ordinary sales remembered for refunds.
const RECENT_SALES: usize = 64;

impl Generator {
    /// A generator for `cfg` (terminals and cards are raised to at least 1).
    pub fn new(mut cfg: GeneratorConfig) -> Generator {
        cfg.terminals = cfg.terminals.max(1);
        cfg.cards = cfg.cards.max(1);
        cfg.fraud_fraction = cfg.fraud_fraction.clamp(0.0, 0.5);
        let rng = Rng::new(cfg.seed);
        // FNV-1a of the run tag.
        let tag_hash = cfg.run_tag.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Generator {
            tag_hash,
            cfg,
            rng,
            slot: 0,
            baskets: 0,
            sessions: 0,
            episodes_started: 0,
            planted_committed: 0,
            active: Vec::new(),
            carts: (0..CARTS).map(|_| CartSession::default()).collect(),
            recent_sales: VecDeque::new(),
        }
    }

    /// Payment slots generated so far.
    pub fn slots(&self) -> u64 {
        self.slot
    }

    fn terminal(&mut self) -> String {
        let n = self.rng.below(u64::from(self.cfg.terminals)) + 1;
        format!("{}-t{n:02}", self.cfg.store_id)
    }

    fn web_terminal(&self) -> String {
        format!("{}-web", self.cfg.store_id)
    }

    fn pool_card(&mut self) -> String {
        let i = self.rng.below(u64::from(self.cfg.cards));
        format!(
            "tok_{:016x}",
            mix(self.cfg.seed ^ 0x00ca_7d00 ^ i.wrapping_mul(0x1000_0001))
        )
    }

    fn member(&mut self) -> String {
        format!("L{:07}", 1_000_000 + self.rng.below(MEMBERS))
    }

    /// A basket: one or two themes, two to four items of each, sometimes a staple or two.
    fn basket_items(&mut self) -> Vec<(&'static str, u32, f64)> {
        let themes = if self.rng.chance(0.3) { 2 } else { 1 };
        let mut items: Vec<(&'static str, u32, f64)> = Vec::new();
        for _ in 0..themes {
            let theme = THEMES[self.rng.below(THEMES.len() as u64) as usize];
            let want = 2 + self.rng.below(3) as usize;
            for _ in 0..want {
                let (sku, price) = theme[self.rng.below(theme.len() as u64) as usize];
                if !items.iter().any(|(s, _, _)| *s == sku) {
                    let qty = if self.rng.chance(0.8) {
                        1
                    } else {
                        2 + self.rng.below(2) as u32
                    };
                    items.push((sku, qty, price));
                }
            }
        }
        for _ in 0..self.rng.below(3) {
            let (sku, price) = STAPLES[self.rng.below(STAPLES.len() as u64) as usize];
            if !items.iter().any(|(s, _, _)| *s == sku) {
                items.push((sku, 1, price));
            }
        }
        items
    }

    fn payment(
        &self,
        now_ms: u64,
        terminal: &str,
        card_id: &str,
        loyalty_id: Option<&str>,
        step: (&str, &str, f64),
        planted: Option<Planted>,
    ) -> Message {
        let (channel, kind, amount) = step;
        let payment_id = format!("pay-{}-{:07}", self.cfg.run_tag, self.slot);
        let mut value = json!({
            "payment_id": payment_id,
            "ts_ms": now_ms,
            "store_id": self.cfg.store_id,
            "terminal_id": terminal,
            "card_id": card_id,
        });
        if let Some(id) = loyalty_id {
            value["loyalty_id"] = json!(id);
        }
        value["amount"] = json!(cents(amount));
        value["currency"] = json!("EUR");
        value["channel"] = json!(channel);
        value["kind"] = json!(kind);
        Message {
            topic: "pos/payments",
            payload: value.to_string(),
            kind: Kind::Payment {
                payment_id,
                card_id: card_id.to_string(),
                planted,
            },
        }
    }

    fn start_episode(&mut self) {
        let pattern = Pattern::ALL[self.episodes_started as usize % Pattern::ALL.len()];
        let planted = Planted {
            episode: self.episodes_started,
            pattern,
            last: false,
        };
        self.episodes_started += 1;
        self.planted_committed += pattern.steps() as u64;
        // Fresh per run: a card reused from an earlier run would carry that run's history.
        let card_id = format!("tok_{:016x}", mix(self.rng.next_u64() ^ self.tag_hash));
        let mut steps = VecDeque::new();
        match pattern {
            Pattern::CardTesting => {
                for _ in 0..pattern.steps() {
                    let amount = self.rng.between(0.5, 3.0);
                    steps.push_back(Step {
                        channel: "card_not_present",
                        kind: "sale",
                        amount,
                        terminal: self.web_terminal(),
                    });
                }
            }
            Pattern::AccountTakeover => {
                for _ in 0..6 {
                    let amount = self.rng.between(12.0, 35.0);
                    let channel = if self.rng.chance(0.6) {
                        "contactless"
                    } else {
                        "card_present"
                    };
                    let terminal = self.terminal();
                    steps.push_back(Step {
                        channel,
                        kind: "sale",
                        amount,
                        terminal,
                    });
                }
                let base = self.rng.between(320.0, 400.0);
                for factor in [1.0, 2.0, 4.0, 6.0] {
                    let amount = base * factor * self.rng.between(0.95, 1.05);
                    let terminal = self.terminal();
                    steps.push_back(Step {
                        channel: "card_present",
                        kind: "sale",
                        amount,
                        terminal,
                    });
                }
            }
            Pattern::RefundAbuse => {
                let amount = self.rng.between(60.0, 200.0);
                let terminal = self.terminal();
                steps.push_back(Step {
                    channel: "card_present",
                    kind: "sale",
                    amount,
                    terminal,
                });
                for _ in 0..6 {
                    let amount = self.rng.between(40.0, 250.0);
                    steps.push_back(Step {
                        channel: "card_not_present",
                        kind: "refund",
                        amount,
                        terminal: self.web_terminal(),
                    });
                }
            }
        }
        self.active.push(Episode {
            planted,
            card_id,
            steps,
            due_slot: self.slot,
        });
    }

    /// The planted step due in this slot, if any.
    fn planted_payment(&mut self, now_ms: u64) -> Option<Message> {
        let due = self.active.iter().position(|e| e.due_slot <= self.slot)?;
        let gap = 1 + self.rng.below(4);
        let episode = &mut self.active[due];
        let step = episode.steps.pop_front()?;
        episode.due_slot = self.slot + gap;
        let planted = Planted {
            last: episode.steps.is_empty(),
            ..episode.planted
        };
        let card_id = episode.card_id.clone();
        if episode.steps.is_empty() {
            self.active.remove(due);
        }
        Some(self.payment(
            now_ms,
            &step.terminal,
            &card_id,
            None,
            (step.channel, step.kind, step.amount),
            Some(planted),
        ))
    }

    /// An ordinary shopper's payment and what goes with it.
    fn ordinary(&mut self, now_ms: u64, out: &mut Vec<Message>) {
        let r = self.rng.unit();
        let card = self.pool_card();
        // A refund returns an item of an earlier sale, on the card that paid for it.
        let returned = if r < 0.02 {
            self.recent_sales.pop_front()
        } else {
            None
        };
        if let Some((card, paid)) = returned {
            // A refund at the till for a returned item.
            let terminal = self.terminal();
            let amount = cents(self.rng.between(1.0, 40.0).min(paid));
            let channel = if self.rng.chance(0.5) {
                "contactless"
            } else {
                "card_present"
            };
            out.push(self.payment(
                now_ms,
                &terminal,
                &card,
                None,
                (channel, "refund", amount),
                None,
            ));
        } else if r < 0.12 {
            // A web order, picked up in the store.
            let terminal = self.web_terminal();
            let amount = self.rng.between(15.0, 160.0);
            self.remember_sale(&card, amount);
            out.push(self.payment(
                now_ms,
                &terminal,
                &card,
                None,
                ("card_not_present", "sale", amount),
                None,
            ));
        } else {
            let terminal = self.terminal();
            let items = self.basket_items();
            let loyalty = self.rng.chance(0.4).then(|| self.member());
            if let Some(member) = &loyalty {
                // The member scans their card at a kiosk on the way to the till.
                let kiosk = 1 + self.rng.below(u64::from(KIOSKS));
                let skus: Vec<&str> = items.iter().map(|(s, _, _)| *s).collect();
                let value = json!({
                    "ts_ms": now_ms,
                    "store_id": self.cfg.store_id,
                    "device_id": format!("{}-kiosk-{kiosk}", self.cfg.store_id),
                    "loyalty_id": member,
                    "basket": skus,
                });
                out.push(Message {
                    topic: "loyalty/scans",
                    payload: value.to_string(),
                    kind: Kind::LoyaltyScan,
                });
            }
            let total = cents(
                items
                    .iter()
                    .map(|(_, qty, price)| f64::from(*qty) * price)
                    .sum(),
            );
            self.baskets += 1;
            let basket_id = format!("bsk-{}-{:07}", self.cfg.run_tag, self.baskets);
            let lines: Vec<serde_json::Value> = items
                .iter()
                .map(|(sku, qty, price)| json!({"sku": sku, "qty": qty, "price": price}))
                .collect();
            let mut value = json!({
                "basket_id": basket_id,
                "ts_ms": now_ms,
                "store_id": self.cfg.store_id,
                "terminal_id": terminal,
            });
            if let Some(member) = &loyalty {
                value["loyalty_id"] = json!(member);
            }
            value["items"] = json!(lines);
            value["total"] = json!(total);
            out.push(Message {
                topic: "pos/baskets",
                payload: value.to_string(),
                kind: Kind::Basket,
            });
            let channel = if self.rng.chance(0.65) {
                "contactless"
            } else {
                "card_present"
            };
            self.remember_sale(&card, total);
            out.push(self.payment(
                now_ms,
                &terminal,
                &card,
                loyalty.as_deref(),
                (channel, "sale", total),
                None,
            ));
        }
    }

    /// Keeps an ordinary sale for a later refund (the oldest is forgotten past
    /// [`RECENT_SALES`]).
    fn remember_sale(&mut self, card: &str, amount: f64) {
        if self.recent_sales.len() == RECENT_SALES {
            self.recent_sales.pop_front();
        }
        self.recent_sales.push_back((card.to_string(), amount));
    }

    /// One smart-cart event: the next item put in (or now and then one taken out) of a cart.
    fn cart_event(&mut self, now_ms: u64) -> Message {
        let cart = self.rng.below(CARTS as u64) as usize;
        if self.carts[cart].planned.is_empty() {
            self.sessions += 1;
            let session_id = format!("ses-{}-{:06}", self.cfg.run_tag, self.sessions);
            let loyalty_id = self.rng.chance(0.5).then(|| self.member());
            let planned: Vec<&'static str> = self
                .basket_items()
                .iter()
                .rev()
                .map(|(s, _, _)| *s)
                .collect();
            self.carts[cart] = CartSession {
                session_id,
                loyalty_id,
                planned,
                added: Vec::new(),
            };
        }
        let remove = !self.carts[cart].added.is_empty() && self.rng.chance(0.1);
        let session = &mut self.carts[cart];
        let (action, sku) = if remove {
            let i = (self.rng.next_u64() % session.added.len() as u64) as usize;
            ("remove", session.added.swap_remove(i))
        } else {
            // `planned` is not empty here (a new session plans at least two items).
            let sku = session.planned.pop().unwrap_or("water-6x1-5l");
            session.added.push(sku);
            ("add", sku)
        };
        let mut value = json!({
            "ts_ms": now_ms,
            "store_id": self.cfg.store_id,
            "device_id": format!("{}-cart-{:02}", self.cfg.store_id, cart + 1),
            "session_id": session.session_id,
        });
        if let Some(member) = &session.loyalty_id {
            value["loyalty_id"] = json!(member);
        }
        value["action"] = json!(action);
        value["sku"] = json!(sku);
        if session.planned.is_empty() {
            // Checked out: the next event on this cart starts a new session.
            session.added.clear();
        }
        Message {
            topic: "cart/events",
            payload: value.to_string(),
            kind: Kind::CartEvent,
        }
    }

    /// The messages of the next payment slot at `now_ms`: exactly one payment (ordinary or
    /// planted), and for ordinary in-store sales the basket and perhaps a loyalty scan before
    /// it; about every other slot a smart-cart event too.
    pub fn next_slot(&mut self, now_ms: u64) -> Vec<Message> {
        let mut out = Vec::with_capacity(4);
        let target = self.cfg.fraud_fraction * self.slot as f64;
        if self.cfg.fraud_fraction > 0.0
            && self.active.len() < MAX_ACTIVE_EPISODES
            && self.planted_committed as f64 <= target
        {
            self.start_episode();
        }
        match self.planted_payment(now_ms) {
            Some(message) => out.push(message),
            None => self.ordinary(now_ms, &mut out),
        }
        if self.rng.chance(0.5) {
            out.push(self.cart_event(now_ms));
        }
        self.slot += 1;
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::Value;

    use super::*;

    fn config(seed: u64, fraud_fraction: f64) -> GeneratorConfig {
        GeneratorConfig {
            seed,
            store_id: "store-0001".into(),
            terminals: 6,
            fraud_fraction,
            cards: 3000,
            run_tag: "t".into(),
        }
    }

    fn run(cfg: GeneratorConfig, slots: u64) -> Vec<Message> {
        let mut g = Generator::new(cfg);
        (0..slots)
            .flat_map(|i| g.next_slot(1_700_000_000_000 + i * 200))
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_traffic_and_another_seed_does_not() {
        let a = run(config(7, 0.05), 2000);
        let b = run(config(7, 0.05), 2000);
        assert_eq!(a, b);
        let c = run(config(8, 0.05), 2000);
        assert_ne!(a, c);
    }

    fn fields(v: &Value) -> HashSet<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn every_event_carries_the_contract_fields() {
        let messages = run(config(3, 0.1), 3000);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for m in &messages {
            let v: Value = serde_json::from_str(&m.payload).unwrap();
            *seen.entry(m.topic).or_default() += 1;
            // What the box's MQTT listener checks before it stores the event.
            let log_topic = m.topic.replace('/', ".");
            crate::contracts::check(&log_topic, m.payload.as_bytes())
                .unwrap_or_else(|e| panic!("{e}: {}", m.payload));
            let f = fields(&v);
            let need: &[&str] = match m.topic {
                "pos/payments" => &[
                    "payment_id",
                    "ts_ms",
                    "store_id",
                    "terminal_id",
                    "card_id",
                    "amount",
                    "currency",
                    "channel",
                    "kind",
                ],
                "pos/baskets" => &[
                    "basket_id",
                    "ts_ms",
                    "store_id",
                    "terminal_id",
                    "items",
                    "total",
                ],
                "loyalty/scans" => &["ts_ms", "store_id", "device_id", "loyalty_id", "basket"],
                "cart/events" => &[
                    "ts_ms",
                    "store_id",
                    "device_id",
                    "session_id",
                    "action",
                    "sku",
                ],
                other => panic!("unexpected topic {other}"),
            };
            for key in need {
                assert!(f.contains(key), "{} lacks {key}: {}", m.topic, m.payload);
            }
            match m.topic {
                "pos/payments" => {
                    let amount = v["amount"].as_f64().unwrap();
                    assert!(amount > 0.0 && amount < 5000.0, "{amount}");
                    assert!(matches!(
                        v["channel"].as_str().unwrap(),
                        "card_present" | "contactless" | "card_not_present"
                    ));
                    assert!(matches!(v["kind"].as_str().unwrap(), "sale" | "refund"));
                    assert!(!m.payload.contains("planted") && !m.payload.contains("fraud"));
                }
                "pos/baskets" => {
                    let items = v["items"].as_array().unwrap();
                    assert!(!items.is_empty());
                    let sum: f64 = items
                        .iter()
                        .map(|i| i["qty"].as_f64().unwrap() * i["price"].as_f64().unwrap())
                        .sum();
                    assert!((sum - v["total"].as_f64().unwrap()).abs() < 0.01, "{v}");
                }
                "cart/events" => {
                    assert!(matches!(v["action"].as_str().unwrap(), "add" | "remove"));
                }
                _ => {}
            }
        }
        // One payment per slot; the other kinds all occur.
        assert_eq!(seen["pos/payments"], 3000);
        assert!(seen["pos/baskets"] > 2000, "{seen:?}");
        assert!(seen["loyalty/scans"] > 600, "{seen:?}");
        assert!(seen["cart/events"] > 1200, "{seen:?}");
    }

    #[test]
    fn planted_payments_are_the_configured_fraction_and_every_pattern_occurs() {
        for fraction in [0.02, 0.05, 0.2] {
            let messages = run(config(11, fraction), 20_000);
            let mut planted = 0usize;
            let mut patterns: HashMap<Pattern, HashSet<u32>> = HashMap::new();
            for m in &messages {
                if let Kind::Payment {
                    planted: Some(p), ..
                } = &m.kind
                {
                    planted += 1;
                    patterns.entry(p.pattern).or_default().insert(p.episode);
                }
            }
            let share = planted as f64 / 20_000.0;
            assert!(
                (share - fraction).abs() < fraction * 0.05 + 0.001,
                "fraction {fraction}: planted share {share}"
            );
            for p in Pattern::ALL {
                assert!(patterns.get(&p).is_some_and(|e| e.len() >= 2), "{p:?}");
            }
        }
        let none = run(config(11, 0.0), 5000);
        assert!(!none.iter().any(|m| matches!(
            m.kind,
            Kind::Payment {
                planted: Some(_),
                ..
            }
        )));
    }

    #[test]
    fn the_first_episode_starts_at_once_and_each_uses_one_fresh_card() {
        let messages = run(config(5, 0.05), 600);
        let first = messages
            .iter()
            .position(|m| {
                matches!(
                    m.kind,
                    Kind::Payment {
                        planted: Some(_),
                        ..
                    }
                )
            })
            .unwrap();
        assert!(first < 4, "first planted message at {first}");
        let mut cards: HashMap<u32, HashSet<String>> = HashMap::new();
        let mut ordinary_cards = HashSet::new();
        for m in &messages {
            if let Kind::Payment {
                card_id, planted, ..
            } = &m.kind
            {
                match planted {
                    Some(p) => {
                        cards.entry(p.episode).or_default().insert(card_id.clone());
                    }
                    None => {
                        ordinary_cards.insert(card_id.clone());
                    }
                }
            }
        }
        for (episode, set) in &cards {
            assert_eq!(set.len(), 1, "episode {episode}");
            assert!(set.is_disjoint(&ordinary_cards));
        }
    }

    #[test]
    fn another_run_tag_changes_ids_and_fraud_cards_but_not_the_shopping() {
        let a = run(config(4, 0.1), 300);
        let mut other = config(4, 0.1);
        other.run_tag = "u".into();
        let b = run(other, 300);
        assert_eq!(a.len(), b.len());
        let mut planted_differs = 0;
        for (x, y) in a.iter().zip(&b) {
            let (vx, vy): (Value, Value) = (
                serde_json::from_str(&x.payload).unwrap(),
                serde_json::from_str(&y.payload).unwrap(),
            );
            match (&x.kind, &y.kind) {
                (
                    Kind::Payment {
                        planted: Some(_), ..
                    },
                    Kind::Payment {
                        planted: Some(_), ..
                    },
                ) => {
                    assert_ne!(vx["card_id"], vy["card_id"]);
                    assert_eq!(vx["amount"], vy["amount"]);
                    planted_differs += 1;
                }
                (Kind::Payment { .. }, Kind::Payment { .. }) => {
                    assert_eq!(vx["card_id"], vy["card_id"]);
                    assert_ne!(vx["payment_id"], vy["payment_id"]);
                }
                _ => assert_eq!(vx["ts_ms"], vy["ts_ms"]),
            }
        }
        assert!(planted_differs > 10);
    }

    #[test]
    fn card_testing_is_a_burst_of_tiny_card_not_present_sales() {
        let messages = run(config(9, 0.05), 200);
        let burst: Vec<Value> = messages
            .iter()
            .filter(|m| {
                matches!(m.kind, Kind::Payment { planted: Some(p), .. } if p.pattern == Pattern::CardTesting)
            })
            .map(|m| serde_json::from_str(&m.payload).unwrap())
            .collect();
        assert_eq!(burst.len(), 12);
        for v in &burst {
            assert_eq!(v["channel"], "card_not_present");
            assert!(v["amount"].as_f64().unwrap() < 3.0);
        }
    }
}
