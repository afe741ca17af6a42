//! Turning one payment and its card's history into a 0–100 score with reasons. Pure functions,
//! no I/O: every signal has a strength from 0 to 1 (0.5 at its limit, 1 at twice the limit),
//! multiplied by its weight; the sum, rounded and capped at 100, is the score.

use crate::card::{CardState, WindowTotals};
use crate::config::FraudConfig;

/// Reason codes, as they appear in the `reasons` list.
pub const BLOCKLISTED: &str = "blocklisted";
pub const VELOCITY_COUNT: &str = "velocity_count";
pub const VELOCITY_AMOUNT: &str = "velocity_amount";
pub const AMOUNT_OUTLIER: &str = "amount_outlier";
pub const CNP_BURST: &str = "cnp_burst";
pub const REFUND_ABUSE: &str = "refund_abuse";

/// What is known about the payment being scored.
#[derive(Debug, Clone, Copy)]
pub struct PaymentFacts {
    pub amount: f64,
    pub refund: bool,
    pub cnp: bool,
    pub blocklisted: bool,
}

/// A score and the reasons behind it (at most six, no allocation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub score: u32,
    reasons: [&'static str; 6],
    count: usize,
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

/// Scores a payment. `card` is the card's state *before* this payment's amount joins the
/// statistics; `short` and `long` are the window totals *including* this payment.
pub fn score(
    config: &FraudConfig,
    card: &CardState,
    short: &WindowTotals,
    long: &WindowTotals,
    payment: &PaymentFacts,
) -> Verdict {
    let w = &config.weights;
    let mut signals: [(&'static str, f64); 6] = [
        (
            BLOCKLISTED,
            if payment.blocklisted {
                w.blocklisted
            } else {
                0.0
            },
        ),
        (
            VELOCITY_COUNT,
            w.velocity_count
                * over(short.sales, config.max_count_short)
                    .max(over(long.sales, config.max_count_long)),
        ),
        (
            VELOCITY_AMOUNT,
            w.velocity_amount
                * over(short.sales_amount, config.max_amount_short)
                    .max(over(long.sales_amount, config.max_amount_long)),
        ),
        (
            AMOUNT_OUTLIER,
            w.amount_outlier * outlier(config, card, payment),
        ),
        (
            CNP_BURST,
            if payment.cnp {
                w.cnp_burst * over(short.cnp, config.cnp_burst_count)
            } else {
                0.0
            },
        ),
        (
            REFUND_ABUSE,
            w.refund_abuse * refund_abuse(config, long, payment),
        ),
    ];
    // Strongest first; a stable sort keeps the listed order among equals.
    signals.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let mut verdict = Verdict {
        score: 0,
        reasons: [""; 6],
        count: 0,
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
    verdict
}

/// How far a sale's amount sits above the card's usual amounts.
fn outlier(config: &FraudConfig, card: &CardState, payment: &PaymentFacts) -> f64 {
    if payment.refund || card.stats_n < config.outlier_min_history || payment.amount <= card.mean {
        return 0.0;
    }
    let deviation = card
        .std_dev()
        .max(card.mean * config.outlier_min_relative_deviation)
        .max(1.0);
    over((payment.amount - card.mean) / deviation, config.outlier_z)
}

/// Too many refunds, or too many refunds per sale, in the long window (judged on refunds).
fn refund_abuse(config: &FraudConfig, long: &WindowTotals, payment: &PaymentFacts) -> f64 {
    if !payment.refund {
        return 0.0;
    }
    let by_count = over(long.refunds, config.refund_max_count);
    let by_ratio = if long.refunds >= config.refund_min_count {
        over(long.refunds / long.sales.max(1.0), config.refund_max_ratio)
    } else {
        0.0
    };
    by_count.max(by_ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(amount: f64) -> PaymentFacts {
        PaymentFacts {
            amount,
            refund: false,
            cnp: false,
            blocklisted: false,
        }
    }

    #[test]
    fn strength_is_half_at_the_limit_and_full_at_twice_it() {
        assert_eq!(over(4.0, 5.0), 0.0);
        assert_eq!(over(5.0, 5.0), 0.5);
        assert_eq!(over(10.0, 5.0), 1.0);
        assert_eq!(over(50.0, 5.0), 1.0);
    }

    #[test]
    fn quiet_payment_scores_zero_with_no_reasons() {
        let config = FraudConfig::default();
        let mut card = CardState::default();
        card.reset(13, config.bucket_ms);
        let one = WindowTotals {
            sales: 1.0,
            sales_amount: 20.0,
            ..WindowTotals::default()
        };
        let v = score(&config, &card, &one, &one, &facts(20.0));
        assert_eq!(v.score, 0);
        assert!(v.reasons().is_empty());
    }

    #[test]
    fn reasons_come_strongest_first_and_the_score_is_capped() {
        let config = FraudConfig::default();
        let mut card = CardState::default();
        card.reset(13, config.bucket_ms);
        let busy = WindowTotals {
            sales: 10.0,
            sales_amount: 50.0,
            cnp: 10.0,
            refunds: 0.0,
        };
        let mut p = facts(5.0);
        p.cnp = true;
        p.blocklisted = true;
        let v = score(&config, &card, &busy, &busy, &p);
        assert_eq!(v.score, 100);
        assert_eq!(v.reasons(), [BLOCKLISTED, VELOCITY_COUNT, CNP_BURST]);
    }

    #[test]
    fn regular_card_is_not_an_outlier_for_a_small_change() {
        let config = FraudConfig::default();
        let mut card = CardState::default();
        card.reset(13, config.bucket_ms);
        for _ in 0..10 {
            card.add_sale_amount(20.0);
        }
        assert_eq!(outlier(&config, &card, &facts(25.0)), 0.0);
        assert_eq!(outlier(&config, &card, &facts(500.0)), 1.0);
    }
}
