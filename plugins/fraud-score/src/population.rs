//! The store's population of sale amounts: the cold-start prior for a card with little history
//! of its own. One state value under [`KEY`], a histogram of `ln(amount)` in quarter steps,
//! updated by a deterministic sample of sales (`population_sample_every`), so the host replays
//! it identically after a restart.
//!
//! Layout, version 1 (200 bytes, little-endian):
//!
//! ```text
//! 0   u8   version (1)
//! 1   u8   buckets (48)
//! 2   u16  reserved (0)
//! 4   u32  total count
//! 8   48 × u32  counts: bucket i holds ln(amount) in [-2 + i/4, -2 + (i+1)/4), the first and
//!               last also everything below and above (0.14 to 22,000)
//! ```
//!
//! When the total reaches 2^20 every count is halved, so the prior follows the store's recent
//! million sales or so. An unreadable value starts an empty histogram.

/// The state key of the population histogram.
pub const KEY: &[u8] = b"p/amounts";
const VERSION: u8 = 1;
const BUCKETS: usize = 48;
const LOW: f64 = -2.0;
const STEP: f64 = 0.25;
const HALVE_AT: u32 = 1 << 20;
/// Bytes of the state value.
pub const STATE_LEN: usize = 8 + 4 * BUCKETS;

/// Median and spread of `ln(amount)`: what a card's amounts are expected to look like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogProfile {
    pub median: f64,
    /// A standard deviation's worth of `ln(amount)` (robust: half the 16th–84th percentile
    /// distance, or 1.4826 × the median absolute deviation).
    pub spread: f64,
}

/// The histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Population {
    total: u32,
    counts: [u32; BUCKETS],
}

impl Default for Population {
    fn default() -> Self {
        Population {
            total: 0,
            counts: [0; BUCKETS],
        }
    }
}

impl Population {
    /// Loads `bytes`; an unreadable value gives an empty histogram.
    pub fn load(&mut self, bytes: &[u8]) {
        *self = Population::default();
        if bytes.len() != STATE_LEN || bytes[0] != VERSION || usize::from(bytes[1]) != BUCKETS {
            return;
        }
        for (slot, c) in self.counts.iter_mut().zip(bytes[8..].chunks_exact(4)) {
            *slot = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        self.total = self.counts.iter().fold(0u32, |a, c| a.saturating_add(*c));
    }

    /// Writes the state value into `out`.
    pub fn store(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&[VERSION, BUCKETS as u8, 0, 0]);
        out.extend_from_slice(&self.total.to_le_bytes());
        for c in &self.counts {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }

    /// Samples counted.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Counts one sale of `ln_amount`.
    pub fn add(&mut self, ln_amount: f64) {
        let i = ((ln_amount - LOW) / STEP)
            .floor()
            .clamp(0.0, (BUCKETS - 1) as f64) as usize;
        self.counts[i] += 1;
        self.total += 1;
        if self.total >= HALVE_AT {
            self.counts.iter_mut().for_each(|c| *c /= 2);
            self.total = self.counts.iter().sum();
        }
    }

    /// The `q` quantile of `ln(amount)`, interpolated within its bucket.
    fn quantile(&self, q: f64) -> f64 {
        let want = q * f64::from(self.total);
        let mut below = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            let c = f64::from(c);
            if c > 0.0 && below + c >= want {
                let within = ((want - below) / c).clamp(0.0, 1.0);
                return LOW + STEP * (i as f64 + within);
            }
            below += c;
        }
        LOW + STEP * BUCKETS as f64
    }

    /// The population's profile, or `None` with fewer than `min_samples` sales counted.
    pub fn profile(&self, min_samples: u32) -> Option<LogProfile> {
        if self.total == 0 || self.total < min_samples {
            return None;
        }
        Some(LogProfile {
            median: self.quantile(0.5),
            spread: (self.quantile(0.8413) - self.quantile(0.1587)) / 2.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_of_a_log_normal_population_is_its_median_and_sigma() {
        let mut p = Population::default();
        // A deterministic log-normal sample: median 25, sigma 0.8 (inverse-normal grid).
        for i in 1..2000 {
            let u = f64::from(i) / 2000.0;
            // Acklam-free approximation of the normal quantile, good to ~1e-3 here.
            let t = (-2.0 * (if u < 0.5 { u } else { 1.0 - u }).ln()).sqrt();
            let z = t
                - (2.515_517 + 0.802_853 * t + 0.010_328 * t * t)
                    / (1.0 + 1.432_788 * t + 0.189_269 * t * t + 0.001_308 * t * t * t);
            let z = if u < 0.5 { -z } else { z };
            p.add(25f64.ln() + 0.8 * z);
        }
        let profile = p.profile(100).unwrap();
        assert!((profile.median - 25f64.ln()).abs() < 0.05, "{profile:?}");
        assert!((profile.spread - 0.8).abs() < 0.05, "{profile:?}");
        assert_eq!(Population::default().profile(1), None);
        assert_eq!(p.profile(5000), None, "too few samples");
    }

    #[test]
    fn the_histogram_round_trips_and_garbage_starts_empty() {
        let mut p = Population::default();
        p.add(3.0);
        p.add(-10.0);
        p.add(40.0);
        let mut bytes = Vec::new();
        p.store(&mut bytes);
        assert_eq!(bytes.len(), STATE_LEN);
        let mut back = Population::default();
        back.load(&bytes);
        assert_eq!(back, p);
        back.load(b"junk");
        assert_eq!(back, Population::default());
    }

    #[test]
    fn counts_are_halved_so_the_prior_follows_recent_sales() {
        let mut p = Population::default();
        for _ in 0..HALVE_AT {
            p.add(1.0);
        }
        assert_eq!(p.total(), HALVE_AT / 2);
    }
}
