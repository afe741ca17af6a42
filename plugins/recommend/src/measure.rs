//! The association measure: lift with a minimum support, shrunk toward 1 by the pair's support.
//!
//! For a seed item `a` and a candidate `c`, with decayed basket counts `n` (all baskets), `n_a`,
//! `n_c` (baskets holding the item) and `n_ac` (baskets holding both):
//!
//! ```text
//! confidence = n_ac / n_a                 P(c | a)
//! support    = n_ac / n                   P(a and c)
//! raw lift   = confidence / (n_c / n)     P(c | a) / P(c): 1 = bought together by chance
//! lift       = 1 + (raw lift - 1) · n_ac / (n_ac + shrinkage)
//! ```
//!
//! A pair is an association only when `n_ac >= min_support` and its (shrunk) lift is above 1.
//! Why lift: co-occurrence share (`confidence`, what recommend ranked by before) is high for
//! any item that is in many baskets, whatever the seed; lift divides that popularity out. Why
//! shrink it: lift alone favours rare items (an item bought twice, both times with the seed,
//! has a huge lift), so lift is trusted in proportion to the evidence, the credibility weight
//! `n_ac / (n_ac + shrinkage)`, and pairs under the minimum support are not considered at all.
//! PMI is `log(lift)`, so it ranks the same; lift is the figure merchandisers know.

/// Decayed basket counts for one (seed, candidate) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts {
    /// Baskets holding both items.
    pub together: f64,
    /// Baskets holding the seed.
    pub seed: f64,
    /// Baskets holding the candidate.
    pub candidate: f64,
    /// All baskets.
    pub baskets: f64,
}

/// How strongly a candidate goes with a seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    /// Lift shrunk toward 1 by support: what recommend ranks by.
    pub lift: f64,
    /// `P(c | a) / P(c)`.
    pub raw_lift: f64,
    /// `P(c | a)`.
    pub confidence: f64,
    /// `P(a and c)`, a share of all baskets.
    pub support: f64,
    /// Decayed baskets holding both.
    pub together: f64,
}

/// Decayed counts drift a little below whole numbers (a basket a minute old weighs 0.9999);
/// a pair seen `min_support` times passes within this relative tolerance.
const SUPPORT_TOLERANCE: f64 = 1e-3;

/// The measure of a pair, or `None` when it is under the minimum support or a count is empty.
pub fn measure(c: Counts, min_support: f64, shrinkage: f64) -> Option<Measure> {
    if c.baskets <= 0.0 || c.seed <= 0.0 || c.candidate <= 0.0 {
        return None;
    }
    // Decay and the neighbour lists' overestimate can leave counts slightly inconsistent.
    let together = c.together.min(c.seed).min(c.candidate);
    if together <= 0.0 || together < min_support * (1.0 - SUPPORT_TOLERANCE) {
        return None;
    }
    let confidence = together / c.seed;
    let base_rate = (c.candidate / c.baskets).min(1.0);
    let raw_lift = confidence / base_rate;
    let credibility = together / (together + shrinkage);
    Some(Measure {
        lift: 1.0 + (raw_lift - 1.0) * credibility,
        raw_lift,
        confidence,
        support: (together / c.baskets).min(1.0),
        together,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(together: f64, seed: f64, candidate: f64, baskets: f64) -> Counts {
        Counts {
            together,
            seed,
            candidate,
            baskets,
        }
    }

    #[test]
    fn an_item_in_half_of_all_baskets_has_no_lift_over_its_share() {
        // Pasta in 100 of 1000 baskets, milk in 500 of them and in 50 pasta baskets.
        let m = measure(counts(50.0, 100.0, 500.0, 1000.0), 3.0, 5.0).unwrap();
        assert!((m.raw_lift - 1.0).abs() < 1e-9 && (m.lift - 1.0).abs() < 1e-9);
        assert!((m.confidence - 0.5).abs() < 1e-9);
        // Sauce in 80 baskets, 60 of them with pasta: less confidence, far more lift.
        let sauce = measure(counts(60.0, 100.0, 80.0, 1000.0), 3.0, 5.0).unwrap();
        assert!(sauce.confidence > 0.5 && sauce.lift > 6.0, "{sauce:?}");
    }

    #[test]
    fn shrinkage_keeps_a_rare_perfect_pair_below_a_well_supported_one() {
        // Truffle oil: 3 baskets, all with pasta (raw lift 10); sauce: 60 of 80 (raw lift 7.5).
        let truffle = measure(counts(3.0, 100.0, 3.0, 1000.0), 3.0, 5.0).unwrap();
        let sauce = measure(counts(60.0, 100.0, 80.0, 1000.0), 3.0, 5.0).unwrap();
        assert!(truffle.raw_lift > sauce.raw_lift);
        assert!(truffle.lift < sauce.lift, "{truffle:?} {sauce:?}");
        // Without shrinkage lift is plain lift.
        let plain = measure(counts(3.0, 100.0, 3.0, 1000.0), 3.0, 0.0).unwrap();
        assert!((plain.lift - plain.raw_lift).abs() < 1e-9);
    }

    #[test]
    fn pairs_under_the_minimum_support_are_no_association() {
        assert!(measure(counts(2.0, 10.0, 2.0, 100.0), 3.0, 5.0).is_none());
        assert!(measure(counts(2.9995, 10.0, 3.0, 100.0), 3.0, 5.0).is_some());
        assert!(measure(counts(1.0, 10.0, 0.0, 100.0), 0.0, 5.0).is_none());
    }
}
