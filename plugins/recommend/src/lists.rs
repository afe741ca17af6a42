//! The small state encodings recommend keeps: a decayed, weighted top-k list (an item's
//! co-occurring neighbours, or the store's popular items), a plain SKU list (a cart, a loyalty
//! member's recent items) and the memo of an item's last association report ([`ReportMemo`]). Both are little-endian binary; SKUs are at most 255 bytes.
//!
//! ```text
//! weighted list, version 2 (written):
//!   u8 version (2) · u8 count · u16 reserved · u64 t_ref_ms · f32 total
//!   count × { u8 sku_len · sku bytes · f32 weight · f32 error }
//! weighted list, version 1 (read; written by recommend before the lift measure):
//!   u8 version (1) · u8 count · u16 reserved · u64 t_ref_ms · f32 total
//!   count × { u8 sku_len · sku bytes · f32 weight }            (error reads as 0)
//! sku list, version 1:
//!   u8 version (1) · u64 touched_ms · u8 count · count × { u8 sku_len · sku bytes }
//! ```
//!
//! Weights, errors and the total are counts decayed to `t_ref_ms` with a half-life: moving the
//! list to a later time multiplies all of them by `2^(-Δt / half_life)`. `weight / total` is then
//! the decayed share of the item's baskets that also held the neighbour. When the list is full a
//! new neighbour replaces the lightest one and inherits its weight (the space-saving
//! algorithm), so heavy neighbours are never lost to a stream of one-off pairs; the inherited
//! part is kept as the entry's `error`, so `weight - error` is a count the pair surely reached
//! ([`Entry::lower_bound`]) and an item that just took a slot cannot pass for a strong partner.

/// Longest SKU the encodings hold.
pub const MAX_SKU_LEN: usize = 255;

/// The sku list's version, and the weighted list's old one.
const VERSION: u8 = 1;
/// The weighted list's version since entries carry their error.
const WEIGHTED_VERSION: u8 = 2;

/// Entries lighter than this are dropped when a list is stored.
const PRUNE_BELOW: f32 = 0.01;

/// A decayed weighted list of SKUs with the total it is relative to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightedList {
    pub t_ref_ms: u64,
    pub total: f32,
    pub entries: Vec<Entry>,
}

/// One SKU of a weighted list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub sku: String,
    /// Decayed count (an overestimate by at most `error`).
    pub weight: f32,
    /// The weight inherited from the entry it replaced (space-saving's overestimate).
    pub error: f32,
}

impl Entry {
    /// A new entry with no error.
    pub fn new(sku: &str, weight: f32) -> Entry {
        Entry {
            sku: sku.to_owned(),
            weight,
            error: 0.0,
        }
    }

    /// The decayed count the entry surely reached: its weight less what it inherited.
    pub fn lower_bound(&self) -> f32 {
        (self.weight - self.error).max(0.0)
    }
}

/// A list of distinct SKUs in order, with the time it was last touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkuList {
    pub touched_ms: u64,
    pub skus: Vec<String>,
}

/// A bounds-checked reader; every method returns `None` past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(a))
    }
    fn f32(&mut self) -> Option<f32> {
        let b = self.take(4)?;
        Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn sku(&mut self) -> Option<String> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }
    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

fn put_sku(out: &mut Vec<u8>, sku: &str) {
    let bytes = &sku.as_bytes()[..sku.len().min(MAX_SKU_LEN)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

impl WeightedList {
    /// Decodes a stored list (version 2, or version 1 whose entries get no error); `None` if
    /// the bytes are neither.
    pub fn decode(bytes: &[u8]) -> Option<WeightedList> {
        let mut c = Cursor { bytes, pos: 0 };
        let version = c.u8()?;
        if version != VERSION && version != WEIGHTED_VERSION {
            return None;
        }
        let count = c.u8()? as usize;
        c.take(2)?;
        let t_ref_ms = c.u64()?;
        let total = c.f32()?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let sku = c.sku()?;
            let weight = c.f32()?;
            let error = if version == WEIGHTED_VERSION {
                c.f32()?
            } else {
                0.0
            };
            entries.push(Entry { sku, weight, error });
        }
        let finite = |e: &Entry| e.weight.is_finite() && e.error.is_finite();
        if !c.done() || !total.is_finite() || !entries.iter().all(finite) {
            return None;
        }
        Some(WeightedList {
            t_ref_ms,
            total,
            entries,
        })
    }

    /// Encodes the list into `out` (replacing its contents), dropping negligible entries and
    /// keeping at most 255.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        let kept = self
            .entries
            .iter()
            .filter(|e| e.weight >= PRUNE_BELOW)
            .take(255);
        let count = kept.clone().count();
        out.push(WEIGHTED_VERSION);
        out.push(count as u8);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.t_ref_ms.to_le_bytes());
        out.extend_from_slice(&self.total.to_le_bytes());
        for e in kept {
            put_sku(out, &e.sku);
            out.extend_from_slice(&e.weight.to_le_bytes());
            out.extend_from_slice(&e.error.to_le_bytes());
        }
    }

    /// Moves the list to `now_ms`, decaying every weight and the total. Earlier times (late
    /// input) leave it as it is.
    pub fn decay_to(&mut self, now_ms: u64, half_life_ms: u64) {
        if self.entries.is_empty() && self.total == 0.0 {
            self.t_ref_ms = now_ms;
            return;
        }
        if now_ms <= self.t_ref_ms {
            return;
        }
        let factor = (-((now_ms - self.t_ref_ms) as f64) / half_life_ms as f64).exp2() as f32;
        self.total *= factor;
        for e in &mut self.entries {
            e.weight *= factor;
            e.error *= factor;
        }
        self.t_ref_ms = now_ms;
    }

    /// Adds `weight` to `sku`, keeping at most `capacity` entries (space-saving replacement).
    pub fn add(&mut self, sku: &str, weight: f32, capacity: usize) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.sku == sku) {
            entry.weight += weight;
            return;
        }
        if self.entries.len() < capacity {
            self.entries.push(Entry::new(sku, weight));
            return;
        }
        let lightest = self.entries.iter_mut().min_by(|a, b| {
            a.weight
                .partial_cmp(&b.weight)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        if let Some(entry) = lightest {
            let inherited = entry.weight;
            entry.sku.clear();
            entry.sku.push_str(sku);
            entry.weight = inherited + weight;
            entry.error = inherited;
        }
    }

    /// The entry of `sku`, if listed.
    pub fn get(&self, sku: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.sku == sku)
    }

    /// The weight of `sku` (0 if absent).
    pub fn weight(&self, sku: &str) -> f32 {
        self.get(sku).map_or(0.0, |e| e.weight)
    }
}

impl SkuList {
    /// Decodes a stored list; `None` if the bytes are not a valid version-1 list.
    pub fn decode(bytes: &[u8]) -> Option<SkuList> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.u8()? != VERSION {
            return None;
        }
        let touched_ms = c.u64()?;
        let count = c.u8()? as usize;
        let mut skus = Vec::with_capacity(count);
        for _ in 0..count {
            skus.push(c.sku()?);
        }
        if !c.done() {
            return None;
        }
        Some(SkuList { touched_ms, skus })
    }

    /// Encodes the list into `out` (replacing its contents), keeping at most 255 SKUs.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(VERSION);
        out.extend_from_slice(&self.touched_ms.to_le_bytes());
        let count = self.skus.len().min(255);
        out.push(count as u8);
        for sku in &self.skus[..count] {
            put_sku(out, sku);
        }
    }

    /// Whether `sku` is in the list.
    pub fn contains(&self, sku: &str) -> bool {
        self.skus.iter().any(|s| s == sku)
    }
}

/// What recommend last reported about one item's associations (`r/<sku>`, version 1):
///
/// ```text
/// u8 version (1) · u64 emitted_ms · u64 checked_ms · u8 count · count × { u8 sku_len · sku · f32 lift }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportMemo {
    /// Event time of the last report emitted (0: none yet).
    pub emitted_ms: u64,
    /// Event time the list was last computed (emitted or not).
    pub checked_ms: u64,
    /// The reported associations: SKU and lift.
    pub lifts: Vec<(String, f32)>,
}

impl ReportMemo {
    /// Decodes a stored memo; `None` if the bytes are not a valid version-1 memo.
    pub fn decode(bytes: &[u8]) -> Option<ReportMemo> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.u8()? != VERSION {
            return None;
        }
        let emitted_ms = c.u64()?;
        let checked_ms = c.u64()?;
        let count = c.u8()? as usize;
        let mut lifts = Vec::with_capacity(count);
        for _ in 0..count {
            let sku = c.sku()?;
            lifts.push((sku, c.f32()?));
        }
        if !c.done() {
            return None;
        }
        Some(ReportMemo {
            emitted_ms,
            checked_ms,
            lifts,
        })
    }

    /// Encodes the memo into `out` (replacing its contents), keeping at most 255 entries.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(VERSION);
        out.extend_from_slice(&self.emitted_ms.to_le_bytes());
        out.extend_from_slice(&self.checked_ms.to_le_bytes());
        let count = self.lifts.len().min(255);
        out.push(count as u8);
        for (sku, lift) in &self.lifts[..count] {
            put_sku(out, sku);
            out.extend_from_slice(&lift.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn weighted_list_round_trips_and_prunes_negligible_entries() {
        let list = WeightedList {
            t_ref_ms: 42,
            total: 3.5,
            entries: vec![
                Entry::new("milk", 2.0),
                Entry::new("dust", 0.001),
                Entry {
                    sku: "bread".into(),
                    weight: 1.5,
                    error: 0.5,
                },
            ],
        };
        let mut bytes = Vec::new();
        list.encode(&mut bytes);
        let back = WeightedList::decode(&bytes).unwrap();
        assert_eq!(back.t_ref_ms, 42);
        assert_eq!(back.total, 3.5);
        assert_eq!(
            back.entries,
            vec![list.entries[0].clone(), list.entries[2].clone()]
        );
    }

    #[test]
    fn a_version_1_list_from_the_previous_release_still_decodes() {
        // u8 1 · u8 1 · u16 0 · u64 t_ref 7 · f32 total 2 · "ab" · f32 1.5
        let mut bytes = vec![1, 1, 0, 0];
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&2.0f32.to_le_bytes());
        bytes.extend_from_slice(&[2, b'a', b'b']);
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        let list = WeightedList::decode(&bytes).unwrap();
        assert_eq!((list.t_ref_ms, list.total), (7, 2.0));
        assert_eq!(list.entries, vec![Entry::new("ab", 1.5)]);
    }

    #[test]
    fn truncated_or_foreign_bytes_do_not_decode() {
        let list = WeightedList {
            t_ref_ms: 1,
            total: 1.0,
            entries: vec![Entry::new("a", 1.0)],
        };
        let mut bytes = Vec::new();
        list.encode(&mut bytes);
        for len in 0..bytes.len() {
            assert!(
                WeightedList::decode(&bytes[..len]).is_none(),
                "length {len}"
            );
        }
        assert!(WeightedList::decode(b"\x07garbage").is_none());
        assert!(SkuList::decode(&bytes).is_none());
    }

    #[test]
    fn a_half_life_halves_weights_and_total() {
        let mut list = WeightedList::default();
        list.decay_to(10 * DAY, 7 * DAY);
        list.total = 4.0;
        list.add("a", 2.0, 8);
        list.decay_to(17 * DAY, 7 * DAY);
        assert!((list.total - 2.0).abs() < 1e-6);
        assert!((list.weight("a") - 1.0).abs() < 1e-6);
        list.decay_to(12 * DAY, 7 * DAY); // late input: no change
        assert!((list.total - 2.0).abs() < 1e-6);
    }

    #[test]
    fn full_list_replaces_its_lightest_entry_which_passes_on_its_weight() {
        let mut list = WeightedList::default();
        list.add("a", 5.0, 2);
        list.add("b", 1.0, 2);
        list.add("c", 1.0, 2);
        let c = Entry {
            sku: "c".into(),
            weight: 2.0,
            error: 1.0,
        };
        assert_eq!(list.entries, vec![Entry::new("a", 5.0), c]);
        assert_eq!(list.get("c").unwrap().lower_bound(), 1.0);
        list.add("a", 1.0, 2);
        assert_eq!(list.weight("a"), 6.0);
    }

    #[test]
    fn report_memo_round_trips() {
        let memo = ReportMemo {
            emitted_ms: 5,
            checked_ms: 9,
            lifts: vec![("sauce".into(), 3.25), ("basil".into(), 1.5)],
        };
        let mut bytes = Vec::new();
        memo.encode(&mut bytes);
        assert_eq!(ReportMemo::decode(&bytes).unwrap(), memo);
        assert!(ReportMemo::decode(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn sku_list_round_trips() {
        let list = SkuList {
            touched_ms: 99,
            skus: vec!["x".into(), "yy".into()],
        };
        let mut bytes = Vec::new();
        list.encode(&mut bytes);
        assert_eq!(SkuList::decode(&bytes).unwrap(), list);
        assert!(list.contains("yy") && !list.contains("z"));
    }
}
