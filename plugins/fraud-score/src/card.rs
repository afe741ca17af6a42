//! Per-card state under `c/<card_id>`: the card's last [`RING`] payments (a fixed ring of small
//! events, from which every window and the card's own amount profile are computed), lifetime
//! sale and refund counters for refund matching, the slot of the expiry index the card is
//! registered in, and a copy of the card's blocklist flag. (The blocklist entry itself lives
//! under `bl/<card_id>`; the copy lets a payment cost one state read instead of two.)
//!
//! Layout, version 2: always [`STATE_LEN`] = 204 bytes, little-endian.
//!
//! ```text
//! 0   u8   version (2)
//! 1   u8   flags: bit 0 = blocklisted
//! 2   u8   events stored (0 to 16)
//! 3   u8   ring slot the next event goes to
//! 4   u32  first seen, epoch seconds
//! 8   u32  last activity, epoch seconds (the newest payment or blocklist update)
//! 12  u32  expiry-index bucket the card is registered in (0 = not registered), see `index`
//! 16  u16  sales (saturating)
//! 18  u16  refunds (saturating)
//! 20  u16  unmatched refunds: refunds with no sale left on the card to match them
//! 22  u16  reserved (0)
//! 24  f32  refundable balance: sales minus the refunds matched against them
//! 28  16 × event, 11 bytes each:
//!          u32 epoch seconds, u16 terminal hash, u16 store hash, u16 amount code, u8 flags
//!          (bit 0 refund, 1 card not present, 2 out of profile, 3 small, 4 refunded)
//! ```
//!
//! The amount code is `round((ln(amount) + 8) × 2000)`, clamped to `u16`: 0.05 % resolution
//! from 0.0004 to about 5·10⁷, so medians and spreads of amounts are taken on integers.
//! Terminal and store hashes are 16-bit FNV-1a folds: two of one card's few terminals collide
//! with a probability of about 1 in 65,536 per pair, which at worst hides one terminal.
//!
//! Older layouts: version 1 (36 bytes + 10 per velocity bucket, until fraud-score 0.1) is
//! migrated on load — its blocklist flag, its sale count and mean × count as the refundable
//! balance are kept, its windows start empty. Anything else unreadable loads as a new card.

/// Current layout version.
pub const VERSION: u8 = 2;
/// Payments a card remembers.
pub const RING: usize = 16;
const HEADER_LEN: usize = 28;
const EVENT_LEN: usize = 11;
/// Bytes of every card's state value.
pub const STATE_LEN: usize = HEADER_LEN + RING * EVENT_LEN;
const FLAG_BLOCKLISTED: u8 = 1;

/// Event flag: the payment was a refund.
pub const REFUND: u8 = 1;
/// Event flag: card not present.
pub const CNP: u8 = 2;
/// Event flag: a sale far above the card's amount profile (see `score`).
pub const OUT_OF_PROFILE: u8 = 4;
/// Event flag: a small amount (at most `small_amount`), as card testers use.
pub const SMALL: u8 = 8;
/// Event flag: a sale a later refund was matched against.
pub const REFUNDED: u8 = 16;

/// Version-1 layout facts, for migration.
const V1_HEADER_LEN: usize = 36;
const V1_BUCKET_LEN: usize = 10;

/// One remembered payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event {
    pub ts_s: u32,
    pub terminal: u16,
    pub store: u16,
    pub amount: u16,
    pub flags: u8,
}

impl Event {
    pub fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// How a stored value was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// A current-layout card.
    Current,
    /// An older layout, migrated (see the module doc).
    Migrated,
    /// Not a card state this version understands: the card starts afresh.
    Unreadable,
}

/// A card's decoded state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CardState {
    /// Whether the card is on the blocklist (mirrors `bl/<card_id>`).
    pub blocklisted: bool,
    pub first_s: u32,
    pub last_s: u32,
    pub index_bucket: u32,
    pub sales: u16,
    pub refunds: u16,
    pub unmatched_refunds: u16,
    pub balance: f32,
    events: [Event; RING],
    len: u8,
    next: u8,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn f64_at(b: &[u8], i: usize) -> f64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    f64::from_bits(u64::from_le_bytes(a))
}

/// The amount code of `amount` (see the module doc).
pub fn amount_code(amount: f64) -> u16 {
    let code = ((amount.max(1e-3).ln() + 8.0) * 2000.0).round();
    code.clamp(0.0, f64::from(u16::MAX)) as u16
}

/// `ln(amount)` of an amount code.
pub fn code_ln(code: u16) -> f64 {
    f64::from(code) / 2000.0 - 8.0
}

/// A 16-bit FNV-1a fold of `s` (terminal and store ids).
pub fn hash16(s: &str) -> u16 {
    let h = s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (h ^ (h >> 16)) as u16
}

impl CardState {
    /// A card never seen (or expired): empty, not blocklisted, not in the expiry index.
    pub fn reset(&mut self) {
        *self = CardState::default();
    }

    /// Loads `bytes` (from state). Whatever it returns, `self` is a usable card.
    pub fn load(&mut self, bytes: &[u8]) -> Loaded {
        self.reset();
        match bytes.first() {
            Some(&VERSION) if bytes.len() == STATE_LEN => {}
            Some(1) => return self.migrate_v1(bytes),
            _ => return Loaded::Unreadable,
        }
        let len = bytes[2];
        let next = bytes[3];
        let balance = f32::from_bits(u32_at(bytes, 24));
        if usize::from(len) > RING || usize::from(next) >= RING || !balance.is_finite() {
            return Loaded::Unreadable;
        }
        self.blocklisted = bytes[1] & FLAG_BLOCKLISTED != 0;
        self.len = len;
        self.next = next;
        self.first_s = u32_at(bytes, 4);
        self.last_s = u32_at(bytes, 8);
        self.index_bucket = u32_at(bytes, 12);
        self.sales = u16_at(bytes, 16);
        self.refunds = u16_at(bytes, 18);
        self.unmatched_refunds = u16_at(bytes, 20);
        self.balance = balance.max(0.0);
        for (slot, e) in self
            .events
            .iter_mut()
            .zip(bytes[HEADER_LEN..].chunks_exact(EVENT_LEN))
        {
            *slot = Event {
                ts_s: u32_at(e, 0),
                terminal: u16_at(e, 4),
                store: u16_at(e, 6),
                amount: u16_at(e, 8),
                flags: e[10],
            };
        }
        Loaded::Current
    }

    /// Version 1: `u8 1, u8 buckets, u8 flags, u8 0, u32 bucket_ms, u64 head, u32 sales seen,
    /// f64 mean sale, f64 M2, buckets × 10 bytes`.
    fn migrate_v1(&mut self, bytes: &[u8]) -> Loaded {
        if bytes.len() < V1_HEADER_LEN
            || bytes.len() != V1_HEADER_LEN + usize::from(bytes[1]) * V1_BUCKET_LEN
        {
            return Loaded::Unreadable;
        }
        let (sales, mean) = (u32_at(bytes, 16), f64_at(bytes, 20));
        if !(mean.is_finite() && mean >= 0.0) {
            return Loaded::Unreadable;
        }
        self.blocklisted = bytes[2] & FLAG_BLOCKLISTED != 0;
        self.sales = sales.min(u32::from(u16::MAX)) as u16;
        self.balance = (mean * f64::from(sales)) as f32;
        Loaded::Migrated
    }

    /// Writes the state into `out` (replacing its contents): always [`STATE_LEN`] bytes.
    pub fn store(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(STATE_LEN);
        out.push(VERSION);
        out.push(if self.blocklisted {
            FLAG_BLOCKLISTED
        } else {
            0
        });
        out.push(self.len);
        out.push(self.next);
        out.extend_from_slice(&self.first_s.to_le_bytes());
        out.extend_from_slice(&self.last_s.to_le_bytes());
        out.extend_from_slice(&self.index_bucket.to_le_bytes());
        out.extend_from_slice(&self.sales.to_le_bytes());
        out.extend_from_slice(&self.refunds.to_le_bytes());
        out.extend_from_slice(&self.unmatched_refunds.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.balance.to_le_bytes());
        for e in &self.events {
            out.extend_from_slice(&e.ts_s.to_le_bytes());
            out.extend_from_slice(&e.terminal.to_le_bytes());
            out.extend_from_slice(&e.store.to_le_bytes());
            out.extend_from_slice(&e.amount.to_le_bytes());
            out.push(e.flags);
        }
    }

    /// Whether the card has seen nothing for longer than `ttl_s` before `now_s`: it is then
    /// treated as a new card (see `index` for how its state is eventually deleted).
    pub fn expired(&self, now_s: u32, ttl_s: u32) -> bool {
        self.last_s != 0 && now_s.saturating_sub(self.last_s) > ttl_s
    }

    /// Notes activity at `ts_s` (first seen, last activity).
    pub fn touch(&mut self, ts_s: u32) {
        if self.first_s == 0 || ts_s < self.first_s {
            self.first_s = ts_s;
        }
        self.last_s = self.last_s.max(ts_s);
    }

    /// Remembers a payment, replacing the oldest when the ring is full.
    pub fn push(&mut self, event: Event) {
        self.events[usize::from(self.next)] = event;
        self.next = ((usize::from(self.next) + 1) % RING) as u8;
        self.len = (usize::from(self.len) + 1).min(RING) as u8;
    }

    /// The remembered payments (in no particular order).
    pub fn events(&self) -> &[Event] {
        // The ring fills slots 0, 1, 2, … first, so the stored ones are the first `len`.
        &self.events[..usize::from(self.len)]
    }

    /// The remembered payments in `(now_s - window_s, now_s]`.
    pub fn recent(&self, now_s: u32, window_s: u32) -> impl Iterator<Item = &Event> {
        let start = now_s.saturating_sub(window_s);
        self.events()
            .iter()
            .filter(move |e| e.ts_s > start && e.ts_s <= now_s)
    }

    /// Counts a sale toward the refundable balance.
    pub fn add_sale(&mut self, amount: f64) {
        self.sales = self.sales.saturating_add(1);
        self.balance = (f64::from(self.balance) + amount) as f32;
    }

    /// Counts a refund and matches it to an earlier sale: the smallest remembered sale not
    /// refunded yet whose amount covers it (within `tolerance`, a fraction), which is then
    /// marked refunded. A card with sales older than its ring gets the benefit of the doubt:
    /// the refund matches if the card's refundable balance covers it. Returns whether it was
    /// matched; an unmatched refund is counted in `unmatched_refunds`.
    pub fn add_refund(&mut self, amount: f64, tolerance: f64) -> bool {
        self.refunds = self.refunds.saturating_add(1);
        let wanted = amount_code(amount / (1.0 + tolerance));
        let mut best: Option<usize> = None;
        for (i, e) in self.events().iter().enumerate() {
            if e.flags & (REFUND | REFUNDED) == 0
                && e.amount >= wanted
                && best.map_or(true, |b| e.amount < self.events[b].amount)
            {
                best = Some(i);
            }
        }
        let remembered = self.events().iter().filter(|e| !e.is(REFUND)).count();
        let balance = f64::from(self.balance);
        let matched = match best {
            Some(i) => {
                self.events[i].flags |= REFUNDED;
                true
            }
            None => {
                usize::from(self.sales) > remembered && amount <= balance * (1.0 + tolerance) + 0.01
            }
        };
        if matched {
            self.balance = (balance - amount).max(0.0) as f32;
        } else {
            self.unmatched_refunds = self.unmatched_refunds.saturating_add(1);
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts_s: u32, amount: f64, flags: u8) -> Event {
        Event {
            ts_s,
            terminal: hash16("t1"),
            store: hash16("s1"),
            amount: amount_code(amount),
            flags,
        }
    }

    #[test]
    fn state_round_trips_through_its_fixed_size_layout() {
        let mut c = CardState::default();
        c.touch(1000);
        c.add_sale(12.5);
        c.add_refund(30.0, 0.05);
        c.index_bucket = 7;
        c.blocklisted = true;
        for i in 0..20 {
            c.push(event(
                1000 + i,
                10.0 + f64::from(i),
                if i % 2 == 0 { CNP } else { 0 },
            ));
        }
        let mut bytes = Vec::new();
        c.store(&mut bytes);
        assert_eq!(bytes.len(), STATE_LEN);
        assert_eq!(STATE_LEN, 204);
        let mut back = CardState::default();
        assert_eq!(back.load(&bytes), Loaded::Current);
        assert_eq!(back, c);
        assert_eq!(back.unmatched_refunds, 1);
    }

    #[test]
    fn the_ring_keeps_the_newest_sixteen_payments() {
        let mut c = CardState::default();
        for i in 0..40 {
            c.push(event(i, 1.0, 0));
        }
        let mut seen: Vec<u32> = c.events().iter().map(|e| e.ts_s).collect();
        seen.sort_unstable();
        assert_eq!(seen, (24..40).collect::<Vec<_>>());
        assert_eq!(c.recent(39, 5).count(), 5);
    }

    #[test]
    fn amount_codes_keep_amounts_to_a_twentieth_of_a_percent() {
        for a in [0.01, 0.5, 1.0, 23.45, 999.99, 250_000.0] {
            let back = code_ln(amount_code(a)).exp();
            assert!((back / a - 1.0).abs() < 5e-4, "{a} -> {back}");
        }
    }

    #[test]
    fn refunds_match_earlier_sales_once_each() {
        let mut c = CardState::default();
        assert!(!c.add_refund(10.0, 0.05), "nothing was bought");
        for amount in [50.0, 20.0] {
            c.push(event(100, amount, 0));
            c.add_sale(amount);
        }
        assert!(c.add_refund(30.0, 0.05), "the 50 covers it");
        assert!(c.add_refund(20.5, 0.05), "the 20, within the tolerance");
        assert!(!c.add_refund(20.0, 0.05), "both sales are refunded already");
        assert!(!c.add_refund(80.0, 0.05), "no sale was that large");
        assert_eq!((c.refunds, c.unmatched_refunds), (5, 3));
    }

    #[test]
    fn a_card_with_forgotten_sales_matches_refunds_against_its_balance() {
        let mut c = CardState::default();
        for _ in 0..40 {
            c.push(event(100, 10.0, 0));
            c.add_sale(10.0);
        }
        assert!(
            c.add_refund(60.0, 0.05),
            "40 sales of 10, 24 of them forgotten"
        );
        assert!(!c.add_refund(600.0, 0.05));
    }

    #[test]
    fn a_version_one_state_is_migrated_keeping_its_flag_and_sales() {
        // fraud-score 0.1: 13 buckets, blocklisted, 4 sales with a mean of 25.
        let mut v1 = vec![1u8, 13, 1, 0];
        v1.extend_from_slice(&300_000u32.to_le_bytes());
        v1.extend_from_slice(&5_666_666u64.to_le_bytes());
        v1.extend_from_slice(&4u32.to_le_bytes());
        v1.extend_from_slice(&25.0f64.to_le_bytes());
        v1.extend_from_slice(&10.0f64.to_le_bytes());
        v1.resize(36 + 13 * 10, 0);
        let mut c = CardState::default();
        assert_eq!(c.load(&v1), Loaded::Migrated);
        assert!(c.blocklisted);
        assert_eq!((c.sales, c.balance), (4, 100.0));
        assert!(c.events().is_empty());
    }

    #[test]
    fn garbage_state_loads_as_a_new_card() {
        let mut c = CardState::default();
        assert_eq!(c.load(b"not a card"), Loaded::Unreadable);
        assert_eq!(c, CardState::default());
        let mut bytes = Vec::new();
        CardState::default().store(&mut bytes);
        bytes.pop();
        assert_eq!(c.load(&bytes), Loaded::Unreadable);
        assert_eq!(c.load(&[]), Loaded::Unreadable);
        assert_eq!(c.load(&[1, 13, 0]), Loaded::Unreadable);
    }

    #[test]
    fn a_card_idle_longer_than_its_ttl_is_expired() {
        let mut c = CardState::default();
        assert!(!c.expired(1_000_000, 10), "a new card is not expired");
        c.touch(1000);
        assert!(!c.expired(1010, 10));
        assert!(c.expired(1011, 10));
    }
}
