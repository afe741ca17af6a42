//! Eviction by priority under the disk budget: which topics' oldest segments are deleted
//! before their consumers (above all the forwarder) have read them, and the gap marker that
//! records each such loss in [`GAPS_TOPIC`].
//!
//! # When
//! Only with an [`EvictionPolicy`] set on the log ([`super::Log::set_eviction_policy`]; the
//! forwarder's classes install one at start-up). Eviction runs
//! - on the retention thread, woken as soon as an append leaves the log above the high-water
//!   mark (`log.eviction_high_water_percent` of `log.max_bytes`, or free space below
//!   `log.min_free_bytes * 100 / high`) and on every retention round; it frees down to the
//!   low-water mark (`log.eviction_low_water_percent`);
//! - synchronously, once, in an append the budget refused ([`super::LogError::StorageFull`]),
//!   which is then retried. If eviction freed nothing the append fails as before.
//!
//! # What
//! The policy ranks each topic (lower goes first) or says `None`: never evicted. The gap topic
//! itself is never evicted, whatever the policy says. [`super::retention::plan_eviction`]
//! picks whole sealed segments, the lowest rank first and within a rank the oldest, per topic
//! always a prefix: the active segment is never touched and every topic stays contiguous.
//! A guard's `protected_from` is ignored (that is the point of eviction), but its
//! `before_delete` is still called so consumers make their offsets durable; a refusal keeps
//! that segment. When nothing evictable is left the appends go on failing with `StorageFull`
//! and sources back off; that is logged once per episode.
//!
//! # Gap markers
//! Before a segment's files go, one record is appended to [`GAPS_TOPIC`] and fsynced: key =
//! the topic, value = JSON [`GapMarker`] `{topic, from_offset, to_offset, bytes, reason,
//! ts_ms}` where `from_offset..=to_offset` (both inclusive) are the offsets lost and `bytes`
//! the segment file's size. If the marker cannot be made durable the segment is not evicted.
//! A crash between the marker's fsync and the deletion leaves a marker for a range that is
//! still stored; the next pass evicts it again and writes a second, identical-range marker
//! (markers are at-least-once, the loss they announce at most what they say).
//! Markers bypass the budget (a few hundred bytes each), so the pressure that causes them can
//! never refuse them, and the gap topic is created even when `auto_create_topics` is off.
//! Reads write markers of the same shape for ranges they find lost (`lost`) or damaged
//! (`damaged`), once per range and run (see the `log` module's doc); `bytes` is then what the
//! range spans in its segment file, as far as known.
//! Counters: `outpost_log_evicted_segments_total{topic,class}` and
//! `outpost_log_evicted_bytes_total{topic,class}`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::retention::{self, EvictionCandidate};
use super::topic::TopicInner;
use super::{io_error, lock, read_lock, LogError, LogInner, NewRecord, Shared};
use crate::metrics;

/// The topic gap markers go to (never evicted).
pub const GAPS_TOPIC: &str = "outpost.gaps";
/// The `reason` of a gap marker written because of the disk budget.
pub const REASON_DISK_BUDGET: &str = "disk_budget";
/// The `reason` of a gap marker for a range a read found missing: a sealed segment that ends
/// early or a segment file that is gone.
pub const REASON_LOST: &str = "lost";
/// The `reason` of a gap marker for a range a read found damaged: batches failing their
/// checksum or format checks.
pub const REASON_DAMAGED: &str = "damaged";
/// After a pass that could free nothing, appends do not wake eviction again for this long.
const FUTILE_PAUSE: Duration = Duration::from_secs(1);

/// How eviction treats one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionRank {
    /// Lower ranks are evicted first.
    pub rank: u8,
    /// The class name for metrics and logs (`bulk`, `normal`, …).
    pub class: &'static str,
}

/// Decides which topics may lose their oldest segments under disk pressure, and in which
/// order.
pub trait EvictionPolicy: Send + Sync + std::fmt::Debug {
    /// The rank of `topic`, or `None` when it must never be evicted.
    fn rank(&self, topic: &str) -> Option<EvictionRank>;
}

/// One gap marker: records `from_offset..=to_offset` of `topic` were evicted unread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapMarker {
    pub topic: String,
    /// First offset lost.
    pub from_offset: u64,
    /// Last offset lost (inclusive).
    pub to_offset: u64,
    /// Bytes of the evicted segment file.
    pub bytes: u64,
    /// Why (`disk_budget`, `lost`, `damaged`).
    pub reason: String,
    /// When, ms since the epoch.
    pub ts_ms: u64,
}

/// What one eviction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictionReport {
    /// Bytes the budget asked to free (0 = no pressure, nothing was tried).
    pub bytes_needed: u64,
    pub segments_evicted: usize,
    pub bytes_evicted: u64,
    /// The markers written, in order.
    pub gaps: Vec<GapMarker>,
}

/// Appends `marker` to the gap topic outside the budget and makes it durable.
pub(super) fn write_gap(gaps: &TopicInner, marker: &GapMarker) -> Result<(), LogError> {
    let value = serde_json::to_vec(marker).map_err(|e| {
        io_error(
            "encoding a gap marker".to_string(),
            std::io::Error::other(e),
        )
    })?;
    gaps.append_with(
        vec![NewRecord {
            key: Some(marker.topic.as_bytes().to_vec()),
            value,
            headers: Vec::new(),
            timestamp_ms: Some(marker.ts_ms),
        }],
        false,
    )?;
    gaps.sync_all()
}

impl LogInner {
    /// One eviction pass: frees what the budget asks for (`extra` more bytes must fit;
    /// `force` after a refused append), lowest rank and oldest first.
    pub(crate) fn evict(&self, extra: u64, force: bool) -> Result<EvictionReport, LogError> {
        let shared = &self.shared;
        let Some(policy) = read_lock(&shared.eviction).clone() else {
            return Ok(EvictionReport::default());
        };
        let _one_at_a_time = lock(&shared.evicting);
        if shared.is_closed() {
            return Err(LogError::Closed);
        }
        shared.budget.refresh_free_now();
        let need = shared.budget.eviction_need(extra, force);
        if need == 0 {
            return Ok(EvictionReport::default());
        }
        let mut ranked = Vec::new();
        let mut candidates = Vec::new();
        for t in self.topic_list() {
            if t.name == GAPS_TOPIC {
                continue;
            }
            let Some(rank) = policy.rank(&t.name) else {
                continue;
            };
            let sealed = t.sealed_infos();
            if sealed.is_empty() {
                continue;
            }
            candidates.push(EvictionCandidate {
                rank: rank.rank,
                sealed,
            });
            ranked.push((t, rank));
        }
        let plan = retention::plan_eviction(&candidates, need);
        let mut report = EvictionReport {
            bytes_needed: need,
            ..EvictionReport::default()
        };
        if !plan.is_empty() {
            let gaps = self.open_topic(GAPS_TOPIC)?;
            for (i, seg) in plan {
                let (topic, rank) = &ranked[i];
                let mut marker = None;
                let mut mark = |from: u64, to: u64, bytes: u64| {
                    let m = GapMarker {
                        topic: topic.name.clone(),
                        from_offset: from,
                        to_offset: to,
                        bytes,
                        reason: REASON_DISK_BUDGET.to_string(),
                        ts_ms: shared.clock.now_ms(),
                    };
                    write_gap(&gaps, &m)?;
                    marker = Some(m);
                    Ok(())
                };
                match topic.evict_oldest(seg.base, &mut mark) {
                    Ok(Some((from, end, bytes))) => {
                        let labels = [("topic", topic.name.as_str()), ("class", rank.class)];
                        let reg = metrics::global();
                        reg.counter(
                            "outpost_log_evicted_segments_total",
                            "Segments deleted by eviction under the disk budget before they were consumed.",
                            &labels,
                        )
                        .inc();
                        reg.counter(
                            "outpost_log_evicted_bytes_total",
                            "Bytes of segments deleted by eviction under the disk budget.",
                            &labels,
                        )
                        .add(bytes);
                        tracing::warn!(topic = %topic.name, class = rank.class, from_offset = from, to_offset = end.saturating_sub(1), bytes, "Evicted a segment under the disk budget; a gap marker records the loss.");
                        report.segments_evicted += 1;
                        report.bytes_evicted += bytes;
                        report.gaps.extend(marker);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(topic = %topic.name, error = %e, "Eviction stopped: a gap marker could not be made durable, so the segment stays.");
                        if report.segments_evicted == 0 {
                            return Err(e);
                        }
                        break;
                    }
                }
            }
        }
        if report.bytes_evicted < need {
            *lock(&shared.futile_since) = Some(Instant::now());
            if !shared.futile_warned.swap(true, Ordering::AcqRel) {
                tracing::warn!(needed_bytes = need, evicted_bytes = report.bytes_evicted, log_bytes = shared.budget.total(), "The disk budget is under pressure and only data that must not be evicted is left; appends to it fail with storage full until space is freed.");
            }
        } else {
            *lock(&shared.futile_since) = None;
            shared.futile_warned.store(false, Ordering::Release);
        }
        Ok(report)
    }
}

impl Shared {
    /// Evicts once so that `extra` bytes fit, after an append was refused; returns the bytes
    /// freed (0 = retrying is pointless).
    pub(crate) fn evict_for_append(&self, extra: u64) -> u64 {
        if !self.has_policy.load(Ordering::Acquire) {
            return 0;
        }
        let Some(inner) = self.log.get().and_then(Weak::upgrade) else {
            return 0;
        };
        match inner.evict(extra, true) {
            Ok(r) => r.bytes_evicted,
            Err(e) => {
                tracing::warn!(error = %e, "Eviction for a refused append failed.");
                0
            }
        }
    }

    /// Wakes the retention thread to evict when the log is above the high-water mark.
    pub(crate) fn kick_eviction_if_pressed(&self) {
        if !self.has_policy.load(Ordering::Acquire) || self.budget.eviction_need(0, false) == 0 {
            return;
        }
        if lock(&self.futile_since).is_some_and(|t| t.elapsed() < FUTILE_PAUSE) {
            return;
        }
        if !self.kick_pending.swap(true, Ordering::AcqRel) {
            self.stop.kick();
        }
    }
}

/// The policy of a log, for [`super::Log::set_eviction_policy`].
pub(crate) type Policy = Option<Arc<dyn EvictionPolicy>>;
