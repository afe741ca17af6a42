//! Which sealed segments of a topic may be deleted. This is the one place that decides;
//! [`super::topic::TopicInner::enforce_retention`] gathers the facts, asks the
//! [`super::RetentionGuard`]s, and deletes what [`plan`] allows.
//!
//! Rules, applied to sealed segments oldest first (the active segment is never deleted):
//! - a segment goes when it is expired by age (`retention_ms > 0` and its newest append time
//!   is more than `retention_ms` before now) or while the topic is larger than
//!   `retention_bytes` (`> 0`);
//! - a segment never goes if it holds `protected_from` or any offset above it;
//! - only a prefix is deleted: the first segment that must stay ends the plan, so the log
//!   stays contiguous.
//!
//! Eviction by priority (see `evict.rs`) is planned here too: when the disk budget is under
//! pressure, [`plan_eviction`] picks the oldest sealed segments of the lowest-ranked topics,
//! ignoring `protected_from`; deletion goes through the same path as retention.

/// What retention knows about one sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub base: u64,
    /// Offset after the segment's last record (the next segment's base).
    pub end: u64,
    pub bytes: u64,
    /// Newest append time (ms), if it could be read.
    pub newest_ms: Option<u64>,
}

/// Per-topic retention settings, as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub retention_ms: u64,
    pub retention_bytes: u64,
}

/// How many of the oldest `sealed` segments (oldest first) retention may delete now.
/// `topic_bytes` counts every segment of the topic, the active one included.
pub(crate) fn plan(
    sealed: &[SegmentInfo],
    topic_bytes: u64,
    limits: Limits,
    now_ms: u64,
    protected_from: Option<u64>,
) -> usize {
    let mut remaining = topic_bytes;
    let mut n = 0;
    for seg in sealed {
        if protected_from.is_some_and(|p| seg.end > p) {
            break;
        }
        let expired = limits.retention_ms > 0
            && seg
                .newest_ms
                .is_some_and(|t| now_ms.saturating_sub(t) > limits.retention_ms);
        let too_big = limits.retention_bytes > 0 && remaining > limits.retention_bytes;
        if !(expired || too_big) {
            break;
        }
        remaining = remaining.saturating_sub(seg.bytes);
        n += 1;
    }
    n
}

/// A topic eviction may shrink: its rank (lower goes first) and its sealed segments, oldest
/// first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EvictionCandidate {
    pub rank: u8,
    pub sealed: Vec<SegmentInfo>,
}

/// Which sealed segments eviction deletes, in order, to free at least `bytes_needed` bytes
/// (fewer when the candidates run out). Guards' `protected_from` is not consulted: pressure on
/// the disk is exactly when unforwarded data has to go. Rules:
/// - the lowest rank goes first; a higher rank is touched only when the lower ones have no
///   sealed segment left;
/// - within a rank, among the topics' oldest remaining segments, the one whose newest append
///   is oldest goes next (an unknown time counts as oldest; ties by base offset, then topic);
/// - per topic only a prefix is taken, so every topic stays contiguous.
///
/// Returns (candidate index, segment) pairs in the order to evict them.
pub(crate) fn plan_eviction(
    candidates: &[EvictionCandidate],
    bytes_needed: u64,
) -> Vec<(usize, SegmentInfo)> {
    let mut next = vec![0usize; candidates.len()];
    let mut freed = 0u64;
    let mut out = Vec::new();
    while freed < bytes_needed {
        let pick = candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.sealed.get(next[i]).map(|seg| (i, c.rank, seg)))
            .min_by_key(|(i, rank, seg)| (*rank, seg.newest_ms.unwrap_or(0), seg.base, *i));
        let Some((i, _, seg)) = pick else {
            break;
        };
        next[i] += 1;
        freed = freed.saturating_add(seg.bytes);
        out.push((i, *seg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs() -> Vec<SegmentInfo> {
        vec![
            SegmentInfo {
                base: 0,
                end: 10,
                bytes: 100,
                newest_ms: Some(1_000),
            },
            SegmentInfo {
                base: 10,
                end: 20,
                bytes: 100,
                newest_ms: Some(2_000),
            },
            SegmentInfo {
                base: 20,
                end: 30,
                bytes: 100,
                newest_ms: Some(3_000),
            },
        ]
    }

    #[test]
    fn age_deletes_only_segments_whose_newest_record_is_old_enough() {
        let limits = Limits {
            retention_ms: 1_500,
            retention_bytes: 0,
        };
        assert_eq!(plan(&segs(), 400, limits, 3_000, None), 1);
        assert_eq!(plan(&segs(), 400, limits, 3_600, None), 2);
        assert_eq!(plan(&segs(), 400, limits, 100_000, None), 3);
        let off = Limits {
            retention_ms: 0,
            retention_bytes: 0,
        };
        assert_eq!(plan(&segs(), 400, off, 100_000, None), 0);
    }

    #[test]
    fn size_deletes_oldest_segments_while_the_topic_is_too_big() {
        let limits = Limits {
            retention_ms: 0,
            retention_bytes: 250,
        };
        assert_eq!(plan(&segs(), 400, limits, 0, None), 2);
        let limits = Limits {
            retention_ms: 0,
            retention_bytes: 400,
        };
        assert_eq!(plan(&segs(), 400, limits, 0, None), 0);
    }

    #[test]
    fn a_protected_offset_stops_deletion_at_its_segment() {
        let limits = Limits {
            retention_ms: 1,
            retention_bytes: 0,
        };
        assert_eq!(plan(&segs(), 400, limits, 100_000, Some(15)), 1);
        assert_eq!(plan(&segs(), 400, limits, 100_000, Some(10)), 1);
        assert_eq!(plan(&segs(), 400, limits, 100_000, Some(9)), 0);
    }

    #[test]
    fn an_unknown_age_is_never_expired() {
        let mut s = segs();
        s[0].newest_ms = None;
        let limits = Limits {
            retention_ms: 1,
            retention_bytes: 0,
        };
        assert_eq!(plan(&s, 400, limits, 100_000, None), 0);
    }

    fn seg(base: u64, end: u64, bytes: u64, newest_ms: Option<u64>) -> SegmentInfo {
        SegmentInfo {
            base,
            end,
            bytes,
            newest_ms,
        }
    }

    #[test]
    fn eviction_takes_the_lowest_rank_first_and_oldest_within_a_rank() {
        let candidates = vec![
            // rank 2 ("normal"), oldest data of all
            EvictionCandidate {
                rank: 2,
                sealed: vec![seg(0, 10, 100, Some(1)), seg(10, 20, 100, Some(2))],
            },
            // rank 1 ("bulk"), two topics interleaved by age
            EvictionCandidate {
                rank: 1,
                sealed: vec![seg(0, 5, 100, Some(50)), seg(5, 9, 100, Some(70))],
            },
            EvictionCandidate {
                rank: 1,
                sealed: vec![seg(0, 7, 100, Some(60))],
            },
        ];
        let order: Vec<(usize, u64)> = plan_eviction(&candidates, 250)
            .into_iter()
            .map(|(i, s)| (i, s.base))
            .collect();
        assert_eq!(order, vec![(1, 0), (2, 0), (1, 5)]);
        let all: Vec<(usize, u64)> = plan_eviction(&candidates, u64::MAX)
            .into_iter()
            .map(|(i, s)| (i, s.base))
            .collect();
        assert_eq!(all, vec![(1, 0), (2, 0), (1, 5), (0, 0), (0, 10)]);
        assert!(plan_eviction(&candidates, 0).is_empty());
        assert!(plan_eviction(&[], 1_000).is_empty());
    }

    #[test]
    fn eviction_keeps_each_topic_a_prefix_even_when_a_later_segment_looks_older() {
        // A device clock or a reopen can make a later segment's time look older; the order
        // within a topic still follows the offsets.
        let candidates = vec![EvictionCandidate {
            rank: 0,
            sealed: vec![seg(0, 3, 10, Some(900)), seg(3, 6, 10, Some(100))],
        }];
        let order: Vec<u64> = plan_eviction(&candidates, 15)
            .into_iter()
            .map(|(_, s)| s.base)
            .collect();
        assert_eq!(order, vec![0, 3]);
    }
}
