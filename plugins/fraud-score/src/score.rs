//! Turning one payment and its card's history into a 0–100 score with reasons. Pure functions,
//! no I/O.
//!
//! Every signal has a strength from 0 to 1, multiplied by its weight (`[config.weights]`); the
//! sum, rounded and capped at 100, is the score. The weights are set so that the threshold of
//! 70 means **one pattern is established, or two partial signals coincide**:
//!
//! | signal (reason) | strength | points by default |
//! |---|---|---|
//! | `blocklisted` | the card is on the blocklist | 100 |
//! | `stolen_card` | this sale is out of profile and so was another within `stolen_window_ms` (two more for a card with under `profile_min_history` sales): 1 at a store the card was not seen at or for a longer run, else 0.75; or a spree (below): 1 | 60 / 80 |
//! | `amount_outlier` | this sale alone is out of profile: 0.7 at `outlier_z`, 1 three spreads further | 32–45 |
//! | `card_testing` | small payments in `testing_window_ms`, this one included: with half of them card-not-present, 1 at `testing_min_count` and 0.5 at one fewer; else 0.5 at one more and 1 at three more | 40 / 80 |
//! | `terminal_velocity` | `max_terminals` distinct terminals in `terminal_window_ms` at two stores or more: 1; two stores with fewer terminals: 0.5; that many terminals of one store: 0.25 | 20 / 40 / 80 |
//! | `velocity_count` | sales in `short_window_ms`: 0.5 at `max_count_short`, 1 at twice it | 18–35 |
//! | `refund_without_sale` | a refund no earlier sale on the card covers: 0.5 for the first, 1 from the second | 40 / 80 |
//! | `refund_abuse` | refunds per sale once the card has `refund_min_count` refunds: 0.5 at `refund_max_ratio`, 1 at twice it | 40–80 |
//!
//! "Out of profile": `ln(amount)` at least `outlier_z` spreads above the card's median (`run_z`
//! once another out-of-profile sale lies within `stolen_window_ms`: a run continues), and the
//! amount at least `outlier_min_amount`. Out-of-profile sales stay out of the profile. A
//! *spree* is `stolen_card` too: `spree_min_count` sales (this one included) at least `spree_z`
//! spreads above the median within `stolen_window_ms`. The card's median and spread are the median and
//! 1.4826 × median absolute deviation of its remembered sales (robust: a first big fraudulent
//! sale does not move them), the spread floored at `min_log_spread`, blended with the store's
//! population (or the fallback prior) while the card has few sales (`prior_weight`).
//! So a regular customer's single big purchase scores 32–45, not an alert; the second
//! out-of-profile sale within two hours is one.

use crate::card::{self, CardState};
use crate::config::FraudConfig;
use crate::population::LogProfile;

/// Reason codes, as they appear in the `reasons` list.
pub const BLOCKLISTED: &str = "blocklisted";
pub const STOLEN_CARD: &str = "stolen_card";
pub const AMOUNT_OUTLIER: &str = "amount_outlier";
pub const CARD_TESTING: &str = "card_testing";
pub const TERMINAL_VELOCITY: &str = "terminal_velocity";
pub const VELOCITY_COUNT: &str = "velocity_count";
pub const REFUND_WITHOUT_SALE: &str = "refund_without_sale";
pub const REFUND_ABUSE: &str = "refund_abuse";

const SIGNALS: usize = 8;

/// What is known about the payment being scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaymentFacts {
    pub ts_s: u32,
    pub amount: f64,
    pub refund: bool,
    pub cnp: bool,
    /// Hashes of the terminal and the store (`card::hash16`).
    pub terminal: u16,
    pub store: u16,
    pub blocklisted: bool,
    /// For a refund: whether no earlier sale on the card covered it.
    pub unmatched_refund: bool,
}

/// A score, the reasons behind it (no allocation) and how the payment is remembered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub score: u32,
    reasons: [&'static str; SIGNALS],
    count: usize,
    /// Flags for the card's event ring (`card::OUT_OF_PROFILE`, `card::SMALL`).
    pub flags: u8,
}

impl Verdict {
    /// The reason codes, strongest signal first.
    pub fn reasons(&self) -> &[&'static str] {
        &self.reasons[..self.count]
    }
}

/// Strength of a measurement against its limit: 0 below, 0.5 at the limit, 1 at twice it.
pub fn over(value: f64, limit: f64) -> f64 {
    if limit <= 0.0 || value < limit {
        0.0
    } else {
        (0.5 + 0.5 * (value - limit) / limit).min(1.0)
    }
}

/// Median of a sorted, non-empty slice.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Sorts a short slice of finite numbers (insertion sort: at most 16 of them, no allocation).
fn sort(xs: &mut [f64]) {
    for i in 1..xs.len() {
        let mut j = i;
        while j > 0 && xs[j - 1] > xs[j] {
            xs.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Whether a remembered payment belongs in the card's amount profile: a sale that was not
/// out of profile itself (so a run of fraudulent sales never becomes the card's normal).
fn in_profile(e: &card::Event) -> bool {
    !e.is(card::REFUND) && !e.is(card::OUT_OF_PROFILE)
}

/// Remembered sales of the card that make its amount profile (before this payment).
pub fn remembered_sales(card: &CardState) -> u32 {
    card.events().iter().filter(|e| in_profile(e)).count() as u32
}

/// The card's amount profile: its own remembered sales blended with `prior` (see the module
/// doc). `prior` is only looked at while the card has fewer than `profile_full_history` sales.
pub fn profile(config: &FraudConfig, card: &CardState, prior: &LogProfile) -> LogProfile {
    let mut xs = [0.0f64; card::RING];
    let mut n = 0;
    for e in card.events().iter().filter(|e| in_profile(e)) {
        xs[n] = card::code_ln(e.amount);
        n += 1;
    }
    if n == 0 {
        return *prior;
    }
    let xs = &mut xs[..n];
    sort(xs);
    let own_median = median(xs);
    for x in xs.iter_mut() {
        *x = (*x - own_median).abs();
    }
    sort(xs);
    let own_spread = (1.4826 * median(xs)).max(config.min_log_spread);
    if n as u32 >= config.profile_full_history {
        return LogProfile {
            median: own_median,
            spread: own_spread,
        };
    }
    let w = n as f64 / (n as f64 + config.prior_weight);
    LogProfile {
        median: w * own_median + (1.0 - w) * prior.median,
        spread: (w * own_spread * own_spread + (1.0 - w) * prior.spread * prior.spread).sqrt(),
    }
}

/// Scores a payment. `card` is the card's state with this payment's refund accounting done
/// (`CardState::add_refund`) but not yet remembered in the ring; `profile` is the card's amount
/// profile before this payment.
pub fn score(
    config: &FraudConfig,
    card: &CardState,
    profile: &LogProfile,
    payment: &PaymentFacts,
) -> Verdict {
    let w = &config.weights;
    let now = payment.ts_s;
    let secs = |ms: u64| (ms / 1000).min(u64::from(u32::MAX)) as u32;
    let sale = !payment.refund;
    let small = payment.amount <= config.small_amount;

    // Amount profile: out of profile, and a run of such sales.
    // Once a run has started, the next big sale continues it from `run_z` on.
    let z = (payment.amount.max(1e-3).ln() - profile.median) / profile.spread.max(1e-6);
    let earlier = card
        .recent(now, secs(config.stolen_window_ms))
        .filter(|e| e.is(card::OUT_OF_PROFILE))
        .count() as u32;
    let needed_z = if earlier > 0 {
        config.run_z
    } else {
        config.outlier_z
    };
    let out_of_profile = sale && payment.amount >= config.outlier_min_amount && z >= needed_z;
    // A spree: several sales well above the card's median within the window is a stolen card
    // even when none of them alone is out of profile.
    let large_ln = profile.median + config.spree_z * profile.spread;
    let large = |ln: f64, amount: f64| ln >= large_ln && amount >= config.outlier_min_amount;
    let spree = if sale && large(payment.amount.max(1e-3).ln(), payment.amount) {
        1 + card
            .recent(now, secs(config.stolen_window_ms))
            .filter(|e| {
                let ln = card::code_ln(e.amount);
                !e.is(card::REFUND) && large(ln, ln.exp())
            })
            .count() as u32
    } else {
        0
    };
    let spree_established = spree >= config.spree_min_count;
    let (mut stolen, mut outlier) = (0.0, 0.0);
    if spree_established {
        stolen = 1.0;
    } else if out_of_profile {
        let run = 1 + earlier;
        let needed = if remembered_sales(card) >= config.profile_min_history {
            2
        } else {
            3
        };
        if run >= needed {
            // A run at a store the card has not been seen at, or a longer run, is the full
            // pattern; two big sales where the customer usually shops fall just short.
            let familiar = card
                .events()
                .iter()
                .any(|e| !e.is(card::OUT_OF_PROFILE) && e.store == payment.store);
            stolen = if run > needed || !familiar { 1.0 } else { 0.75 };
        } else {
            outlier = 0.7 + 0.1 * (z - config.outlier_z).clamp(0.0, 3.0);
        }
    }

    // Velocity: sales in the short window, distinct terminals and stores.
    let velocity = if sale {
        let sales = 1 + card
            .recent(now, secs(config.short_window_ms))
            .filter(|e| !e.is(card::REFUND))
            .count();
        over(sales as f64, config.max_count_short)
    } else {
        0.0
    };
    let terminals = terminal_velocity(config, card, payment);

    // Card testing: small payments in the testing window, this one included.
    let testing = if small {
        let (mut count, mut cnp) = (1u32, u32::from(payment.cnp));
        for e in card.recent(now, secs(config.testing_window_ms)) {
            if e.is(card::SMALL) {
                count += 1;
                cnp += u32::from(e.is(card::CNP));
            }
        }
        // Testers mostly try card numbers online; a run of small payments at the tills is
        // more often coffee and a parking ticket, so it needs more.
        let min = config.testing_min_count;
        let (half, full) = if 2 * cnp >= count {
            (min - 1, min)
        } else {
            (min + 1, min + 3)
        };
        if count >= full {
            1.0
        } else if count >= half {
            0.5
        } else {
            0.0
        }
    } else {
        0.0
    };

    // Refunds.
    let without_sale = if payment.refund && payment.unmatched_refund {
        if card.unmatched_refunds >= 2 {
            1.0
        } else {
            0.5
        }
    } else {
        0.0
    };
    let refunds = f64::from(card.refunds);
    let refund_ratio = if payment.refund && refunds + 1.0 >= config.refund_min_count {
        let ratio = over(
            refunds / f64::from(card.sales.max(1)),
            config.refund_max_ratio,
        );
        // One refund short of the minimum counts half.
        if refunds >= config.refund_min_count {
            ratio
        } else {
            ratio / 2.0
        }
    } else {
        0.0
    };

    let blocklisted = if payment.blocklisted { 1.0 } else { 0.0 };
    let mut signals: [(&'static str, f64); SIGNALS] = [
        (BLOCKLISTED, w.blocklisted * blocklisted),
        (STOLEN_CARD, w.stolen_card * stolen),
        (AMOUNT_OUTLIER, w.amount_outlier * outlier),
        (CARD_TESTING, w.card_testing * testing),
        (TERMINAL_VELOCITY, w.terminal_velocity * terminals),
        (VELOCITY_COUNT, w.velocity_count * velocity),
        (REFUND_WITHOUT_SALE, w.refund_without_sale * without_sale),
        (REFUND_ABUSE, w.refund_abuse * refund_ratio),
    ];
    // Strongest first; a stable sort keeps the listed order among equals.
    signals.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let mut verdict = Verdict {
        score: 0,
        reasons: [""; SIGNALS],
        count: 0,
        flags: 0,
    };
    let mut total = 0.0;
    for (reason, points) in signals {
        if points > 0.0 {
            total += points;
            verdict.reasons[verdict.count] = reason;
            verdict.count += 1;
        }
    }
    verdict.score = total.round().min(100.0) as u32;
    if out_of_profile {
        verdict.flags |= card::OUT_OF_PROFILE;
    }
    if small {
        verdict.flags |= card::SMALL;
    }
    verdict
}

/// Distinct terminals (and stores of card-present payments) within the terminal window, this
/// payment included.
fn terminal_velocity(config: &FraudConfig, card: &CardState, payment: &PaymentFacts) -> f64 {
    let window = (config.terminal_window_ms / 1000).min(u64::from(u32::MAX)) as u32;
    let mut terminals = [payment.terminal; card::RING + 1];
    let mut stores = [payment.store; card::RING + 1];
    let (mut nt, mut ns) = (1usize, usize::from(!payment.cnp));
    if payment.cnp {
        stores[0] = 0;
    }
    for e in card.recent(payment.ts_s, window) {
        if !terminals[..nt].contains(&e.terminal) {
            terminals[nt] = e.terminal;
            nt += 1;
        }
        if !e.is(card::CNP) && !stores[..ns].contains(&e.store) {
            stores[ns] = e.store;
            ns += 1;
        }
    }
    let limit = config.max_terminals as usize;
    // A card cannot be at two stores within minutes; several tills of one store are a
    // customer going from the deli counter to the checkout.
    match (nt >= limit, ns >= 2) {
        (true, true) => 1.0,
        (false, true) => 0.5,
        (true, false) => 0.25,
        (false, false) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::{amount_code, hash16, Event};

    const PRIOR: LogProfile = LogProfile {
        median: 3.2,
        spread: 1.0,
    };

    fn facts(ts_s: u32, amount: f64) -> PaymentFacts {
        PaymentFacts {
            ts_s,
            amount,
            refund: false,
            cnp: false,
            terminal: hash16("t1"),
            store: hash16("s1"),
            blocklisted: false,
            unmatched_refund: false,
        }
    }

    fn card_with_sales(amounts: &[f64]) -> CardState {
        let mut c = CardState::default();
        for (i, a) in amounts.iter().enumerate() {
            c.push(Event {
                ts_s: 1000 + i as u32 * 3600,
                terminal: hash16("t1"),
                store: hash16("s1"),
                amount: amount_code(*a),
                flags: 0,
            });
            c.add_sale(*a);
        }
        c
    }

    #[test]
    fn strength_is_half_at_the_limit_and_full_at_twice_it() {
        assert_eq!(over(4.0, 5.0), 0.0);
        assert_eq!(over(5.0, 5.0), 0.5);
        assert_eq!(over(10.0, 5.0), 1.0);
        assert_eq!(over(50.0, 5.0), 1.0);
    }

    #[test]
    fn the_profile_is_the_cards_median_and_ignores_one_big_sale() {
        let config = FraudConfig::default();
        let mut amounts = vec![20.0; 15];
        amounts.push(2000.0);
        let card = card_with_sales(&amounts);
        let p = profile(&config, &card, &PRIOR);
        assert!((p.median - 20f64.ln()).abs() < 1e-3, "{p:?}");
        assert_eq!(p.spread, config.min_log_spread);
    }

    #[test]
    fn a_new_card_is_judged_by_the_prior_and_a_young_one_by_a_blend() {
        let config = FraudConfig::default();
        assert_eq!(profile(&config, &CardState::default(), &PRIOR), PRIOR);
        let young = profile(&config, &card_with_sales(&[100.0, 100.0, 100.0]), &PRIOR);
        let halfway = (100f64.ln() + PRIOR.median) / 2.0;
        assert!((young.median - halfway).abs() < 1e-3, "{young:?}");
    }

    #[test]
    fn quiet_payment_scores_zero_with_no_reasons() {
        let config = FraudConfig::default();
        let card = card_with_sales(&[20.0, 25.0]);
        let p = profile(&config, &card, &PRIOR);
        let v = score(&config, &card, &p, &facts(100_000, 22.0));
        assert_eq!(v.score, 0);
        assert!(v.reasons().is_empty());
    }

    #[test]
    fn reasons_come_strongest_first_and_the_score_is_capped() {
        let config = FraudConfig::default();
        let card = card_with_sales(&[20.0; 8]);
        let p = profile(&config, &card, &PRIOR);
        let mut f = facts(100_000, 900.0);
        f.blocklisted = true;
        let v = score(&config, &card, &p, &f);
        assert_eq!(v.score, 100);
        assert_eq!(v.reasons(), [BLOCKLISTED, AMOUNT_OUTLIER]);
        assert_eq!(v.flags, card::OUT_OF_PROFILE);
    }
}
