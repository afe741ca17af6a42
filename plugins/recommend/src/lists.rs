//! The two small state encodings recommend keeps: a decayed, weighted top-k list (an item's
//! co-occurring neighbours, or the store's popular items) and a plain SKU list (a cart, a loyalty
//! member's recent items). Both are little-endian binary; SKUs are at most 255 bytes.
//!
//! ```text
//! weighted list, version 1:
//!   u8 version (1) · u8 count · u16 reserved · u64 t_ref_ms · f32 total
//!   count × { u8 sku_len · sku bytes · f32 weight }
//! sku list, version 1:
//!   u8 version (1) · u64 touched_ms · u8 count · count × { u8 sku_len · sku bytes }
//! ```
//!
//! Weights and the total are counts decayed to `t_ref_ms` with a half-life: moving the list to
//! a later time multiplies all of them by `2^(-Δt / half_life)`. `weight / total` is then the
//! decayed share of the item's baskets that also held the neighbour. When the list is full a
//! new neighbour replaces the lightest one and inherits its weight (the space-saving
//! algorithm), so heavy neighbours are never lost to a stream of one-off pairs.

/// Longest SKU the encodings hold.
pub const MAX_SKU_LEN: usize = 255;

const VERSION: u8 = 1;

/// Entries lighter than this are dropped when a list is stored.
const PRUNE_BELOW: f32 = 0.01;

/// A decayed weighted list of SKUs with the total it is relative to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightedList {
    pub t_ref_ms: u64,
    pub total: f32,
    pub entries: Vec<(String, f32)>,
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
    /// Decodes a stored list; `None` if the bytes are not a valid version-1 list.
    pub fn decode(bytes: &[u8]) -> Option<WeightedList> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.u8()? != VERSION {
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
            entries.push((sku, weight));
        }
        if !c.done() || !total.is_finite() || entries.iter().any(|(_, w)| !w.is_finite()) {
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
            .filter(|(_, w)| *w >= PRUNE_BELOW)
            .take(255);
        let count = kept.clone().count();
        out.push(VERSION);
        out.push(count as u8);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.t_ref_ms.to_le_bytes());
        out.extend_from_slice(&self.total.to_le_bytes());
        for (sku, weight) in kept {
            put_sku(out, sku);
            out.extend_from_slice(&weight.to_le_bytes());
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
        for (_, w) in &mut self.entries {
            *w *= factor;
        }
        self.t_ref_ms = now_ms;
    }

    /// Adds `weight` to `sku`, keeping at most `capacity` entries (space-saving replacement).
    pub fn add(&mut self, sku: &str, weight: f32, capacity: usize) {
        if let Some(entry) = self.entries.iter_mut().find(|(s, _)| s == sku) {
            entry.1 += weight;
            return;
        }
        if self.entries.len() < capacity {
            self.entries.push((sku.to_owned(), weight));
            return;
        }
        let lightest = self
            .entries
            .iter_mut()
            .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
        if let Some(entry) = lightest {
            let inherited = entry.1;
            entry.0.clear();
            entry.0.push_str(sku);
            entry.1 = inherited + weight;
        }
    }

    /// The weight of `sku` (0 if absent).
    pub fn weight(&self, sku: &str) -> f32 {
        self.entries
            .iter()
            .find(|(s, _)| s == sku)
            .map_or(0.0, |(_, w)| *w)
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
                ("milk".into(), 2.0),
                ("dust".into(), 0.001),
                ("bread".into(), 1.5),
            ],
        };
        let mut bytes = Vec::new();
        list.encode(&mut bytes);
        let back = WeightedList::decode(&bytes).unwrap();
        assert_eq!(back.t_ref_ms, 42);
        assert_eq!(back.total, 3.5);
        assert_eq!(
            back.entries,
            vec![("milk".into(), 2.0), ("bread".into(), 1.5)]
        );
    }

    #[test]
    fn truncated_or_foreign_bytes_do_not_decode() {
        let list = WeightedList {
            t_ref_ms: 1,
            total: 1.0,
            entries: vec![("a".into(), 1.0)],
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
        assert_eq!(list.entries, vec![("a".into(), 5.0), ("c".into(), 2.0)]);
        list.add("a", 1.0, 2);
        assert_eq!(list.weight("a"), 6.0);
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
