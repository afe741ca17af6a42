//! Per-card state: a ring of time buckets (sales, refunds, card-not-present counts and sales
//! amount) for sliding-window velocity, a running mean and variance of sale amounts (Welford)
//! and a copy of the card's blocklist flag, stored under `c/<card_id>` in a fixed
//! little-endian layout. (The blocklist entry itself lives under `bl/<card_id>`; the copy lets
//! a payment cost one state read instead of two.)
//!
//! Layout, version 1 (36 bytes + 10 per bucket; 166 bytes with the default 13 buckets):
//!
//! ```text
//! 0   u8   version (1)
//! 1   u8   number of buckets n
//! 2   u8   flags: bit 0 = blocklisted
//! 3   u8   reserved (0)
//! 4   u32  bucket width, milliseconds
//! 8   u64  head: number (ts / width) of the newest bucket
//! 16  u32  sales seen (Welford count)
//! 20  f64  mean sale amount
//! 28  f64  M2 (sum of squared deviations)
//! 36  n × { u16 sales, u16 refunds, u16 card-not-present, f32 sales amount }
//! ```
//!
//! Bucket number `b` lives in slot `b % n`. A state written with another bucket width or count
//! (the config changed) keeps its amount statistics and starts its buckets afresh.

/// Current layout version.
const VERSION: u8 = 1;
const HEADER_LEN: usize = 36;
const BUCKET_LEN: usize = 10;
const FLAG_BLOCKLISTED: u8 = 1;

/// One time bucket's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    pub sales: u16,
    pub refunds: u16,
    pub cnp: u16,
    pub sales_amount: f32,
}

/// Totals of a sliding window (fractional: the oldest bucket counts pro rata).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowTotals {
    pub sales: f64,
    pub refunds: f64,
    pub cnp: f64,
    pub sales_amount: f64,
}

/// A card's decoded state. Reused across records so decoding allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct CardState {
    bucket_ms: u64,
    head: u64,
    /// Whether the card is on the blocklist (mirrors `bl/<card_id>`).
    pub blocklisted: bool,
    pub stats_n: u32,
    pub mean: f64,
    pub m2: f64,
    buckets: Vec<Bucket>,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

fn f64_at(b: &[u8], i: usize) -> f64 {
    f64::from_bits(u64_at(b, i))
}

impl CardState {
    /// Resets to an empty card with `buckets` buckets of `bucket_ms`.
    pub fn reset(&mut self, buckets: usize, bucket_ms: u64) {
        self.bucket_ms = bucket_ms;
        self.head = 0;
        self.blocklisted = false;
        self.stats_n = 0;
        self.mean = 0.0;
        self.m2 = 0.0;
        self.buckets.clear();
        self.buckets.resize(buckets, Bucket::default());
    }

    /// Loads `bytes` (from state) into `self`, for a ring of `buckets` × `bucket_ms`.
    /// Returns `false` (and leaves an empty card) if the bytes are not a valid version-1 state.
    pub fn load(&mut self, bytes: &[u8], buckets: usize, bucket_ms: u64) -> bool {
        self.reset(buckets, bucket_ms);
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
            return false;
        }
        let stored_n = bytes[1] as usize;
        if bytes.len() != HEADER_LEN + stored_n * BUCKET_LEN {
            return false;
        }
        let (n, mean, m2) = (u32_at(bytes, 16), f64_at(bytes, 20), f64_at(bytes, 28));
        if !(mean.is_finite() && m2.is_finite() && m2 >= 0.0) {
            return false;
        }
        self.blocklisted = bytes[2] & FLAG_BLOCKLISTED != 0;
        self.stats_n = n;
        self.mean = mean;
        self.m2 = m2;
        if stored_n == buckets && u64::from(u32_at(bytes, 4)) == bucket_ms {
            self.head = u64_at(bytes, 8);
            for (slot, chunk) in self
                .buckets
                .iter_mut()
                .zip(bytes[HEADER_LEN..].chunks_exact(BUCKET_LEN))
            {
                *slot = Bucket {
                    sales: u16_at(chunk, 0),
                    refunds: u16_at(chunk, 2),
                    cnp: u16_at(chunk, 4),
                    sales_amount: f32::from_bits(u32_at(chunk, 6)),
                };
            }
        }
        true
    }

    /// Writes the state into `out` (replacing its contents).
    pub fn store(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(HEADER_LEN + self.buckets.len() * BUCKET_LEN);
        out.push(VERSION);
        out.push(self.buckets.len() as u8);
        out.push(if self.blocklisted {
            FLAG_BLOCKLISTED
        } else {
            0
        });
        out.push(0);
        out.extend_from_slice(&(self.bucket_ms as u32).to_le_bytes());
        out.extend_from_slice(&self.head.to_le_bytes());
        out.extend_from_slice(&self.stats_n.to_le_bytes());
        out.extend_from_slice(&self.mean.to_le_bytes());
        out.extend_from_slice(&self.m2.to_le_bytes());
        for b in &self.buckets {
            out.extend_from_slice(&b.sales.to_le_bytes());
            out.extend_from_slice(&b.refunds.to_le_bytes());
            out.extend_from_slice(&b.cnp.to_le_bytes());
            out.extend_from_slice(&b.sales_amount.to_le_bytes());
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Counts one payment at `ts_ms`, moving the ring forward when it is the newest. A payment
    /// older than the ring covers is not counted; returns whether it was.
    pub fn record(&mut self, ts_ms: u64, amount: f64, refund: bool, cnp: bool) -> bool {
        let number = ts_ms / self.bucket_ms;
        let n = self.len();
        if number > self.head {
            let steps = number - self.head;
            if steps >= n {
                self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
            } else {
                for b in self.head + 1..=number {
                    self.buckets[(b % n) as usize] = Bucket::default();
                }
            }
            self.head = number;
        } else if number + n <= self.head {
            return false;
        }
        let bucket = &mut self.buckets[(number % n) as usize];
        if refund {
            bucket.refunds = bucket.refunds.saturating_add(1);
        } else {
            bucket.sales = bucket.sales.saturating_add(1);
            bucket.sales_amount += amount as f32;
        }
        if cnp {
            bucket.cnp = bucket.cnp.saturating_add(1);
        }
        true
    }

    /// Totals over `(now_ms - window_ms, now_ms]`. Buckets entirely inside count fully; the
    /// bucket straddling the window start counts in proportion to its overlap; buckets that
    /// start after `now_ms` (out-of-order input) do not count.
    pub fn window(&self, now_ms: u64, window_ms: u64) -> WindowTotals {
        self.windows(now_ms, window_ms, window_ms).0
    }

    /// [`CardState::window`] for two window lengths in one pass over the ring.
    pub fn windows(&self, now_ms: u64, a_ms: u64, b_ms: u64) -> (WindowTotals, WindowTotals) {
        let n = self.len();
        let (start_a, start_b) = (now_ms.saturating_sub(a_ms), now_ms.saturating_sub(b_ms));
        let (mut a, mut b) = (WindowTotals::default(), WindowTotals::default());
        let oldest = (self.head + 1).saturating_sub(n);
        for number in oldest..=self.head {
            let b_start = number * self.bucket_ms;
            let b_end = b_start + self.bucket_ms;
            if b_start > now_ms {
                continue;
            }
            let bucket = &self.buckets[(number % n) as usize];
            for (totals, start) in [(&mut a, start_a), (&mut b, start_b)] {
                if b_end <= start {
                    continue;
                }
                let weight = if b_start >= start {
                    1.0
                } else {
                    (b_end - start) as f64 / self.bucket_ms as f64
                };
                totals.sales += weight * f64::from(bucket.sales);
                totals.refunds += weight * f64::from(bucket.refunds);
                totals.cnp += weight * f64::from(bucket.cnp);
                totals.sales_amount += weight * f64::from(bucket.sales_amount);
            }
        }
        (a, b)
    }

    /// The standard deviation of sale amounts seen so far (0 with fewer than two).
    pub fn std_dev(&self) -> f64 {
        if self.stats_n < 2 {
            0.0
        } else {
            (self.m2 / f64::from(self.stats_n - 1)).sqrt()
        }
    }

    /// Adds a sale amount to the running mean and variance (Welford's update).
    pub fn add_sale_amount(&mut self, amount: f64) {
        self.stats_n = self.stats_n.saturating_add(1);
        let delta = amount - self.mean;
        self.mean += delta / f64::from(self.stats_n);
        self.m2 += delta * (amount - self.mean);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 300_000;

    fn card() -> CardState {
        let mut c = CardState::default();
        c.reset(13, B);
        c
    }

    #[test]
    fn state_round_trips_through_its_byte_layout() {
        let mut c = card();
        c.record(10 * B + 5, 12.5, false, true);
        c.record(11 * B, 3.0, true, false);
        c.add_sale_amount(12.5);
        c.add_sale_amount(20.0);
        c.blocklisted = true;
        let mut bytes = Vec::new();
        c.store(&mut bytes);
        assert_eq!(bytes.len(), 36 + 13 * 10);
        let mut back = CardState::default();
        assert!(back.load(&bytes, 13, B));
        assert_eq!(back.head, c.head);
        assert!(back.blocklisted);
        assert_eq!(back.buckets, c.buckets);
        assert_eq!(
            (back.stats_n, back.mean, back.m2),
            (c.stats_n, c.mean, c.m2)
        );
    }

    #[test]
    fn changed_bucket_layout_keeps_amount_statistics_only() {
        let mut c = card();
        c.record(10 * B, 12.5, false, false);
        c.add_sale_amount(12.5);
        let mut bytes = Vec::new();
        c.store(&mut bytes);
        let mut back = CardState::default();
        assert!(back.load(&bytes, 7, B));
        assert_eq!(back.stats_n, 1);
        assert_eq!(back.window(10 * B, 3_600_000).sales, 0.0);
    }

    #[test]
    fn garbage_state_loads_as_an_empty_card() {
        let mut back = CardState::default();
        assert!(!back.load(b"not a card", 13, B));
        assert_eq!(back.stats_n, 0);
        let mut bytes = Vec::new();
        card().store(&mut bytes);
        bytes.pop();
        assert!(!back.load(&bytes, 13, B));
    }

    #[test]
    fn window_counts_the_straddling_bucket_pro_rata() {
        let mut c = card();
        // Two sales in bucket 10, one in bucket 12.
        c.record(10 * B + 1, 10.0, false, false);
        c.record(10 * B + 2, 10.0, false, false);
        c.record(12 * B + 100, 5.0, false, false);
        // A 10-minute window ending half-way through bucket 12 starts half-way through
        // bucket 10: half of bucket 10 counts.
        let now = 12 * B + B / 2;
        let w = c.window(now, 2 * B);
        assert!((w.sales - 2.0).abs() < 1e-9, "{w:?}");
        assert!((w.sales_amount - 15.0).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn old_buckets_are_cleared_when_the_ring_moves_on() {
        let mut c = card();
        c.record(10 * B, 10.0, false, false);
        c.record(23 * B, 10.0, false, false); // 13 buckets later: slot reused
        assert_eq!(c.window(23 * B, 13 * B).sales, 1.0);
        c.record(100 * B, 1.0, true, false); // far later: everything cleared
        let w = c.window(100 * B, 13 * B);
        assert_eq!((w.sales, w.refunds), (0.0, 1.0));
    }

    #[test]
    fn two_windows_in_one_pass_equal_each_window_alone() {
        let mut c = card();
        for (i, ts) in [10 * B + 7, 11 * B, 11 * B + 9, 14 * B + 3, 20 * B + 1]
            .iter()
            .enumerate()
        {
            c.record(*ts, 10.0 + i as f64, i % 3 == 0, i % 2 == 0);
        }
        for now in [20 * B + 2, 20 * B + B / 3, 25 * B] {
            let (short, long) = c.windows(now, 2 * B, 12 * B);
            assert_eq!(short, c.window(now, 2 * B));
            assert_eq!(long, c.window(now, 12 * B));
        }
    }

    #[test]
    fn payment_older_than_the_ring_is_not_counted() {
        let mut c = card();
        c.record(50 * B, 10.0, false, false);
        assert!(!c.record(30 * B, 10.0, false, false));
        assert!(c.record(45 * B, 10.0, false, false));
        assert_eq!(c.window(50 * B, 13 * B).sales, 2.0);
    }

    #[test]
    fn welford_matches_the_two_pass_formula() {
        let mut c = card();
        let xs = [12.0, 15.5, 9.25, 30.0, 11.0];
        xs.iter().for_each(|&x| c.add_sale_amount(x));
        let mean = xs.iter().sum::<f64>() / 5.0;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        assert!((c.mean - mean).abs() < 1e-9);
        assert!((c.std_dev() - var.sqrt()).abs() < 1e-9);
    }
}
