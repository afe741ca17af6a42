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
//! Seam for eviction by priority (the forwarding work): when the global disk budget is hit,
//! an eviction policy will pick topics by priority and ask [`plan_eviction`] how many of a
//! topic's oldest segments it may drop to free a number of bytes; that function applies the
//! same guard rule, and deletion goes through the same path as retention.

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

/// How many of the oldest `sealed` segments an eviction may delete to free at least
/// `bytes_needed` bytes, honouring `protected_from` (the same rule as [`plan`]). Returns fewer
/// when the guard stops it. Not used until eviction by priority exists.
#[allow(dead_code)]
pub(crate) fn plan_eviction(
    sealed: &[SegmentInfo],
    bytes_needed: u64,
    protected_from: Option<u64>,
) -> usize {
    let mut freed = 0u64;
    let mut n = 0;
    for seg in sealed {
        if freed >= bytes_needed || protected_from.is_some_and(|p| seg.end > p) {
            break;
        }
        freed += seg.bytes;
        n += 1;
    }
    n
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
        assert_eq!(plan_eviction(&segs(), 150, Some(25)), 2);
        assert_eq!(plan_eviction(&segs(), 150, Some(5)), 0);
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
}
