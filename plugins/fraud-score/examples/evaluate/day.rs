//! A labelled day of store traffic, generated from a seed: ordinary shoppers with the habits
//! that make fraud detection hard, and planted fraud episodes of five patterns. The episode
//! definitions are written down in the plugin's README ("The labelled day"); this file is
//! their implementation. No crates: its own PRNG (SplitMix64), JSON written by hand.

use std::fmt::Write as _;

/// Midnight UTC of the generated day (2023-11-15).
pub const DAY_START_MS: u64 = 1_700_006_400_000;
const HOUR: u64 = 3_600_000;
const MIN: u64 = 60_000;
/// Shops are open 07:00–22:00.
const OPEN_MS: u64 = 7 * HOUR;
const CLOSE_MS: u64 = 22 * HOUR;

/// Sizes of the day.
#[derive(Debug, Clone)]
pub struct DayConfig {
    pub seed: u64,
    /// Ordinary cards.
    pub cards: usize,
    /// Ordinary payments, about (refunds and second-terminal payments included).
    pub payments: usize,
    pub stores: usize,
    /// In-store terminals per store (each store also has a web terminal).
    pub terminals: usize,
    /// Episodes per pattern, in `Pattern::ALL` order.
    pub episodes: [usize; 5],
}

impl DayConfig {
    /// The analyst's day: 2,000 cards, 50,000 payments, 100 episodes.
    pub fn standard(seed: u64) -> DayConfig {
        DayConfig {
            seed,
            cards: 2000,
            payments: 50_000,
            stores: 8,
            terminals: 6,
            episodes: [15, 25, 25, 15, 20],
        }
    }
}

/// The fraud patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    Blocklist,
    CardTesting,
    StolenCard,
    TerminalVelocity,
    RefundAbuse,
}

impl Pattern {
    pub const ALL: [Pattern; 5] = [
        Pattern::Blocklist,
        Pattern::CardTesting,
        Pattern::StolenCard,
        Pattern::TerminalVelocity,
        Pattern::RefundAbuse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Blocklist => "blocklist",
            Pattern::CardTesting => "card testing",
            Pattern::StolenCard => "stolen card",
            Pattern::TerminalVelocity => "velocity across terminals",
            Pattern::RefundAbuse => "refund abuse",
        }
    }
}

/// One input record of the day.
#[derive(Debug, Clone)]
pub struct Input {
    pub ts_ms: u64,
    pub card: String,
    pub what: What,
}

#[derive(Debug, Clone)]
pub enum What {
    /// A `pos.payments` value, and the episode it belongs to (`None`: ordinary).
    Payment {
        json: String,
        episode: Option<usize>,
    },
    /// A `ref.blocklist` value.
    Blocklist { json: String },
}

/// A generated day: inputs in time order, and each episode's pattern.
#[derive(Debug, Clone)]
pub struct Day {
    pub inputs: Vec<Input>,
    pub episodes: Vec<Pattern>,
}

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_f4a0_d5c0_4e11)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + self.below(hi_inclusive - lo + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-12);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn ms_between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// An ordinary card's habits.
#[derive(Debug, Clone)]
struct Card {
    id: String,
    /// ln of the typical amount, and the spread of ln(amount).
    mu: f64,
    sigma: f64,
    home: usize,
    second: Option<usize>,
    p_cnp: f64,
    /// Pays small amounts (coffee, parking, vending) and now and then several in a row.
    small_habit: bool,
}

/// A payment before it is written out.
#[derive(Debug, Clone)]
struct Pay {
    ts_ms: u64,
    card: usize,
    amount: f64,
    store: usize,
    /// `None`: the store's web terminal (card not present).
    terminal: Option<usize>,
    contactless: bool,
    refund: bool,
}

fn money(x: f64) -> f64 {
    ((x * 100.0).round() / 100.0).max(0.01)
}

struct Gen {
    cfg: DayConfig,
    rng: Rng,
    cards: Vec<Card>,
    next_payment: u64,
    inputs: Vec<Input>,
    episodes: Vec<Pattern>,
}

impl Gen {
    fn open_time(&mut self) -> u64 {
        DAY_START_MS + self.rng.ms_between(OPEN_MS, CLOSE_MS)
    }

    fn amount(&mut self, card: usize) -> f64 {
        let c = &self.cards[card];
        let (mu, sigma) = (c.mu, c.sigma);
        money((mu + sigma * self.rng.normal()).exp())
    }

    fn store_for(&mut self, card: usize) -> usize {
        let c = &self.cards[card];
        let (home, second) = (c.home, c.second);
        let r = self.rng.unit();
        match second {
            _ if r < 0.05 => self.rng.below(self.cfg.stores),
            Some(s) if r < 0.35 => s,
            _ => home,
        }
    }

    /// An in-store payment or a web one, as the card usually pays.
    fn usual(&mut self, card: usize, ts_ms: u64, amount: f64) -> Pay {
        let store = self.store_for(card);
        let cnp = self.rng.chance(self.cards[card].p_cnp);
        Pay {
            ts_ms,
            card,
            amount,
            store,
            terminal: if cnp {
                None
            } else {
                Some(self.rng.below(self.cfg.terminals))
            },
            contactless: self.rng.chance(0.6),
            refund: false,
        }
    }

    fn emit(&mut self, card_id: &str, p: &Pay, episode: Option<usize>) {
        let id = self.next_payment;
        self.next_payment += 1;
        let store = format!("store-{:02}", p.store + 1);
        let (terminal, channel) = match p.terminal {
            None => (format!("{store}-web"), "card_not_present"),
            Some(t) => (
                format!("{store}-t{}", t + 1),
                if p.contactless {
                    "contactless"
                } else {
                    "card_present"
                },
            ),
        };
        let mut json = String::with_capacity(256);
        let _ = write!(
            json,
            r#"{{"payment_id":"pay-{id:07}","ts_ms":{},"store_id":"{store}","terminal_id":"{terminal}","card_id":"{card_id}","amount":{:.2},"currency":"EUR","channel":"{channel}","kind":"{}"}}"#,
            p.ts_ms,
            p.amount,
            if p.refund { "refund" } else { "sale" }
        );
        self.inputs.push(Input {
            ts_ms: p.ts_ms,
            card: card_id.to_owned(),
            what: What::Payment { json, episode },
        });
    }

    fn blocklist(&mut self, card_id: &str, ts_ms: u64, add: bool) {
        let json = format!(
            r#"{{"card_id":"{card_id}","action":"{}","reason":"reported"}}"#,
            if add { "add" } else { "remove" }
        );
        self.inputs.push(Input {
            ts_ms,
            card: card_id.to_owned(),
            what: What::Blocklist { json },
        });
    }
}

/// Generates the day of `cfg`.
pub fn generate(cfg: &DayConfig) -> Day {
    let mut rng = Rng::new(cfg.seed);
    let cards: Vec<Card> = (0..cfg.cards)
        .map(|i| {
            let small_habit = rng.chance(0.08);
            let (mu, sigma) = if small_habit {
                (rng.between(2.5f64.ln(), 6.0f64.ln()), rng.between(0.2, 0.4))
            } else {
                (25f64.ln() + 0.7 * rng.normal(), rng.between(0.25, 0.6))
            };
            let home = rng.below(cfg.stores);
            let second = if rng.chance(0.3) {
                Some(rng.below(cfg.stores))
            } else {
                None
            };
            let u = rng.unit();
            Card {
                id: format!("card-{:016x}", rng.next_u64() ^ i as u64),
                mu,
                sigma,
                home,
                second,
                p_cnp: 0.03 + 0.3 * u * u,
                small_habit,
            }
        })
        .collect();
    let mut g = Gen {
        cfg: cfg.clone(),
        rng,
        cards,
        next_payment: 0,
        inputs: Vec::new(),
        episodes: Vec::new(),
    };

    // --- ordinary traffic ---------------------------------------------------------------------
    // Payments per card: log-normal around the mean (some cards pay a lot), at least one, at
    // most what fits the day with the gaps below.
    let weights: Vec<f64> = (0..cfg.cards)
        .map(|_| (0.6 * g.rng.normal()).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // Extras (second terminals, small runs, refunds) make up for visits that do not fit the
    // day, so the total stays close to `payments`.
    let base = cfg.payments as f64;
    let mut pays: Vec<Pay> = Vec::new();
    for (card, weight) in weights.iter().enumerate() {
        let n = ((weight / total * base).round() as usize).clamp(1, 60);
        // One card in twenty is new today: it appears at some point, its first payment large.
        let new_today = g.rng.chance(0.05);
        let first_ms = if new_today {
            g.open_time()
        } else {
            DAY_START_MS + OPEN_MS
        };
        // A person's visits: at least 10 minutes apart, otherwise spread over the rest of the
        // day at random (exponential gaps), so busy cards pay every 15-30 minutes.
        let span = (DAY_START_MS + CLOSE_MS - first_ms) as f64;
        let min_gap = (10 * MIN) as f64;
        let mean_gap = (span / n as f64 - min_gap).max(MIN as f64);
        let mut times: Vec<u64> = Vec::with_capacity(n);
        let mut t = first_ms as f64 + g.rng.unit() * mean_gap;
        while times.len() < n && (t as u64) < DAY_START_MS + CLOSE_MS {
            times.push(t as u64);
            t += min_gap - mean_gap * g.rng.unit().max(1e-12).ln();
        }
        for (k, &ts) in times.iter().enumerate() {
            // A visit's extra payments end ten minutes before the next visit (travel time).
            let visit_end = times
                .get(k + 1)
                .map_or(u64::MAX, |next| next.saturating_sub(10 * MIN));
            let mut amount = g.amount(card);
            if (new_today && k == 0) || g.rng.chance(0.01) {
                // The occasional big purchase (a new card's first is often one).
                amount = money(amount * g.rng.between(4.0, 15.0));
            }
            let p = g.usual(card, ts, amount);
            let in_store = p.terminal.is_some();
            let store = p.store;
            pays.push(p);
            if in_store && g.rng.chance(0.03) {
                // Two terminals in one visit.
                let first = pays.last().and_then(|p| p.terminal).unwrap_or(0);
                let other = (first + 1 + g.rng.below(g.cfg.terminals - 1)) % g.cfg.terminals;
                let amount = g.amount(card);
                let ts = ts + g.rng.ms_between(MIN, 6 * MIN);
                if ts <= visit_end {
                    pays.push(Pay {
                        ts_ms: ts,
                        card,
                        amount,
                        store,
                        terminal: Some(other),
                        contactless: g.rng.chance(0.6),
                        refund: false,
                    });
                }
            }
            if g.cards[card].small_habit && g.rng.chance(0.1) {
                // Coffee, then a parking ticket: one or two more small payments.
                let mut t = ts;
                for _ in 0..g.rng.range(1, 2) {
                    t += g.rng.ms_between(2 * MIN, 12 * MIN);
                    if t > visit_end {
                        break;
                    }
                    let amount = g.amount(card);
                    let terminal = Some(g.rng.below(g.cfg.terminals));
                    pays.push(Pay {
                        ts_ms: t,
                        card,
                        amount,
                        store,
                        terminal,
                        contactless: true,
                        refund: false,
                    });
                }
            }
        }
    }
    // Legitimate refunds of earlier sales, hours later; some partial.
    let sales = pays.len();
    for i in 0..sales {
        if g.rng.chance(0.02) {
            let sale = pays[i].clone();
            let ts = sale.ts_ms + g.rng.ms_between(HOUR, 8 * HOUR);
            if ts < DAY_START_MS + CLOSE_MS {
                let amount = if g.rng.chance(0.7) {
                    sale.amount
                } else {
                    money(sale.amount * g.rng.between(0.2, 0.9))
                };
                pays.push(Pay {
                    ts_ms: ts,
                    amount,
                    refund: true,
                    ..sale
                });
            }
        }
    }
    // A refund of something bought before today (or paid otherwise): no sale to match.
    for card in 0..cfg.cards {
        if g.rng.chance(0.005) {
            let ts = g.open_time();
            let amount = g.amount(card);
            let mut p = g.usual(card, ts, amount);
            p.refund = true;
            pays.push(p);
        }
    }

    // --- fraud --------------------------------------------------------------------------------
    // Cards used by an episode; their owner's payments after `cut` are dropped (the card was
    // stolen or blocked) when `cut` is set.
    let mut taken = vec![false; cfg.cards];
    let mut cut: Vec<Option<u64>> = vec![None; cfg.cards];
    let mut planted: Vec<(String, Pay, usize)> = Vec::new();
    let mut blocks: Vec<(String, u64, bool)> = Vec::new();
    // Payment times per card, to place episodes after some history.
    let mut times_of: Vec<Vec<u64>> = vec![Vec::new(); cfg.cards];
    for p in &pays {
        if !p.refund {
            times_of[p.card].push(p.ts_ms);
        }
    }
    times_of.iter_mut().for_each(|t| t.sort_unstable());

    // A card with at least `min_history` payments and at most `max_history`, not taken yet,
    // and a moment after its `min_history`th payment with at least two hours of day left.
    let pick = |g: &mut Gen, taken: &mut Vec<bool>, min_history: usize, max_history: usize| {
        for _ in 0..10_000 {
            let c = g.rng.below(g.cfg.cards);
            let t = &times_of[c];
            if taken[c] || t.len() < min_history || t.len() > max_history {
                continue;
            }
            let k = g.rng.range(min_history, t.len());
            let start = t[k - 1] + g.rng.ms_between(10 * MIN, 3 * HOUR);
            if start + 2 * HOUR < DAY_START_MS + CLOSE_MS {
                taken[c] = true;
                return Some((c, start));
            }
        }
        None
    };
    let fresh_id = |g: &mut Gen| format!("card-{:016x}", g.rng.next_u64());
    let web = |store: usize| Pay {
        ts_ms: 0,
        card: usize::MAX,
        amount: 0.0,
        store,
        terminal: None,
        contactless: false,
        refund: false,
    };

    for (pattern, &count) in Pattern::ALL.iter().zip(cfg.episodes.iter()) {
        for _ in 0..count {
            let episode = g.episodes.len();
            g.episodes.push(*pattern);
            match pattern {
                Pattern::Blocklist => {
                    let (c, start) = match pick(&mut g, &mut taken, 1, 1000) {
                        Some(picked) => picked,
                        None => continue,
                    };
                    let id = g.cards[c].id.clone();
                    blocks.push((id.clone(), start, true));
                    cut[c] = Some(start);
                    let mut t = start;
                    for _ in 0..g.rng.range(1, 3) {
                        t += g.rng.ms_between(MIN, 90 * MIN);
                        let amount = money(g.amount(c) * g.rng.between(0.5, 3.0));
                        let mut p = g.usual(c, t, amount);
                        p.store = g.rng.below(g.cfg.stores);
                        planted.push((id.clone(), p, episode));
                    }
                }
                Pattern::CardTesting => {
                    // Half on a card number never seen here, half on a card with history.
                    let (id, start) = if g.rng.chance(0.5) {
                        (
                            fresh_id(&mut g),
                            g.open_time().min(DAY_START_MS + CLOSE_MS - HOUR),
                        )
                    } else {
                        match pick(&mut g, &mut taken, 1, 1000) {
                            Some((c, start)) => (g.cards[c].id.clone(), start),
                            None => continue,
                        }
                    };
                    let all_cnp = g.rng.chance(0.7);
                    let store = g.rng.below(g.cfg.stores);
                    let mut t = start;
                    for _ in 0..g.rng.range(4, 12) {
                        t += g.rng.ms_between(5_000, 150_000);
                        let amount = if g.rng.chance(0.2) {
                            1.0
                        } else {
                            money(g.rng.between(0.5, 4.99))
                        };
                        let mut p = web(store);
                        p.ts_ms = t;
                        p.amount = amount;
                        if !all_cnp && g.rng.chance(0.5) {
                            p.terminal = Some(g.rng.below(g.cfg.terminals));
                            p.contactless = g.rng.chance(0.5);
                        }
                        planted.push((id.clone(), p, episode));
                    }
                }
                Pattern::StolenCard => {
                    // A modest history, then a run of large payments; the owner no longer pays.
                    let (c, start) = match pick(&mut g, &mut taken, 3, 40) {
                        Some(picked) => picked,
                        None => continue,
                    };
                    let id = g.cards[c].id.clone();
                    cut[c] = Some(start);
                    let typical = g.cards[c].mu.exp();
                    let stores = [
                        g.rng.below(g.cfg.stores),
                        g.rng.below(g.cfg.stores),
                        g.rng.below(g.cfg.stores),
                    ];
                    let mut t = start;
                    for _ in 0..g.rng.range(2, 6) {
                        t += g.rng.ms_between(3 * MIN, 30 * MIN);
                        let amount = money(
                            (typical * g.rng.between(4.0, 20.0))
                                .max(60.0 + g.rng.between(0.0, 100.0)),
                        );
                        let store = stores[g.rng.below(stores.len())];
                        let mut p = web(store);
                        p.ts_ms = t;
                        p.amount = amount;
                        if !g.rng.chance(0.15) {
                            p.terminal = Some(g.rng.below(g.cfg.terminals));
                            p.contactless = g.rng.chance(0.5);
                        }
                        planted.push((id.clone(), p, episode));
                    }
                }
                Pattern::TerminalVelocity => {
                    // A cloned card at several terminals of two or three stores within minutes;
                    // the owner goes on paying as usual.
                    let (c, start) = match pick(&mut g, &mut taken, 1, 1000) {
                        Some(picked) => picked,
                        None => continue,
                    };
                    let id = g.cards[c].id.clone();
                    let n = g.rng.range(3, 5);
                    let n_stores = g.rng.range(2, 3);
                    // Distinct stores (as far as the day has them).
                    let first = g.rng.below(g.cfg.stores);
                    let stores: Vec<usize> =
                        (0..n_stores).map(|k| (first + k) % g.cfg.stores).collect();
                    let span = g.rng.ms_between(2 * MIN, 10 * MIN);
                    let mut used: Vec<(usize, usize)> = Vec::new();
                    for k in 0..n {
                        let t = start + span * k as u64 / (n as u64 - 1);
                        let store = stores[k % stores.len()];
                        let mut terminal = g.rng.below(g.cfg.terminals);
                        while used.contains(&(store, terminal)) {
                            terminal = (terminal + 1) % g.cfg.terminals;
                        }
                        used.push((store, terminal));
                        let amount = money(g.amount(c) * g.rng.between(0.5, 3.0));
                        planted.push((
                            id.clone(),
                            Pay {
                                ts_ms: t,
                                card: c,
                                amount,
                                store,
                                terminal: Some(terminal),
                                contactless: g.rng.chance(0.6),
                                refund: false,
                            },
                            episode,
                        ));
                    }
                }
                Pattern::RefundAbuse => {
                    let store = g.rng.below(g.cfg.stores);
                    let at = |g: &mut Gen, t: u64, amount: f64, refund: bool| Pay {
                        ts_ms: t,
                        card: usize::MAX,
                        amount,
                        store,
                        terminal: Some(g.rng.below(g.cfg.terminals)),
                        contactless: g.rng.chance(0.5),
                        refund,
                    };
                    let variant = g.rng.unit();
                    let id = fresh_id(&mut g);
                    let mut t = g.open_time().min(DAY_START_MS + CLOSE_MS - 6 * HOUR);
                    if variant < 0.4 {
                        // Refunds to a card that never bought (the goods were paid otherwise).
                        for _ in 0..g.rng.range(2, 4) {
                            t += g.rng.ms_between(10 * MIN, 90 * MIN);
                            let amount = money(g.rng.between(20.0, 300.0));
                            let p = at(&mut g, t, amount, true);
                            planted.push((id.clone(), p, episode));
                        }
                    } else if variant < 0.8 {
                        // One purchase, refunded again and again.
                        let sale = money(g.rng.between(40.0, 300.0));
                        let p = at(&mut g, t, sale, false);
                        planted.push((id.clone(), p, episode));
                        for _ in 0..g.rng.range(2, 3) {
                            t += g.rng.ms_between(5 * MIN, 120 * MIN);
                            let amount = money(sale * g.rng.between(0.6, 1.0));
                            let p = at(&mut g, t, amount, true);
                            planted.push((id.clone(), p, episode));
                        }
                    } else {
                        // Wardrobing: everything bought is brought back.
                        let mut bought = Vec::new();
                        for _ in 0..g.rng.range(3, 4) {
                            t += g.rng.ms_between(5 * MIN, 40 * MIN);
                            let sale = money(g.rng.between(50.0, 250.0));
                            let p = at(&mut g, t, sale, false);
                            planted.push((id.clone(), p, episode));
                            bought.push(sale);
                        }
                        for sale in bought {
                            t += g.rng.ms_between(20 * MIN, 90 * MIN);
                            let p = at(&mut g, t, sale, true);
                            planted.push((id.clone(), p, episode));
                        }
                    }
                }
            }
        }
    }

    // A few ordinary cards are blocklisted by mistake and taken off again while they are idle.
    for _ in 0..5 {
        let c = g.rng.below(cfg.cards);
        let t = &times_of[c];
        if taken[c] || t.len() < 2 {
            continue;
        }
        let k = g.rng.below(t.len() - 1);
        if t[k + 1] - t[k] > 10 * MIN {
            let id = g.cards[c].id.clone();
            blocks.push((id.clone(), t[k] + MIN, true));
            blocks.push((id, t[k + 1] - MIN, false));
        }
    }

    // --- write out ----------------------------------------------------------------------------
    pays.retain(|p| cut[p.card].map_or(true, |c| p.ts_ms < c));
    for p in &pays {
        let id = g.cards[p.card].id.clone();
        g.emit(&id, p, None);
    }
    for (id, p, episode) in &planted {
        g.emit(id, p, Some(*episode));
    }
    for (id, ts, add) in &blocks {
        g.blocklist(id, *ts, *add);
    }
    // Time order; a blocklist update before a payment of the same millisecond.
    g.inputs
        .sort_by_key(|i| (i.ts_ms, matches!(i.what, What::Payment { .. })));
    Day {
        inputs: g.inputs,
        episodes: g.episodes,
    }
}
