//! Per (device, metric) state and its rules: the open aggregation window and the two alert
//! state machines (above `max`, below `min`), kept as one fixed 80-byte little-endian value.
//!
//! ```text
//! 0   u8   version (2)
//! 1   u8   flags: 1 high raised · 2 low raised · 4 high pending · 8 low pending
//! 2   u16  reserved (0)
//! 4   u64  high pending since, ms
//! 12  u64  low pending since, ms
//! 20  u64  window start, ms
//! 28  u32  window count
//! 32  f64  window min
//! 40  f64  window max
//! 48  f64  window sum
//! 56  u64  fingerprint of the rule the alert state was reached under (0: no rule)
//! 64  f64  threshold the high alert was raised at
//! 72  f64  threshold the low alert was raised at
//! ```
//!
//! Version 1 (sensor-watch before rule fingerprints) is the first 56 bytes with version 1; it
//! still decodes, with the rule unknown (see [`Track::observe`]).
//!
//! **Rule changes.** Before a reading is judged, the current rule's fingerprint
//! ([`Resolved::fingerprint`]) is compared with the stored one. If they differ, every raised
//! alert is cleared (a `cleared` transition with reason `rule_changed` and the threshold it was
//! raised at), pending timers are dropped, and the reading is then judged under the new rule
//! from scratch. For version-1 state the old rule is unknown: a raised alert is kept when the
//! reading still breaks the new rule's bound on that side, and cleared with `rule_changed`
//! otherwise (reporting the new bound, or the reading's value if the new rule has none there).
//!
//! An alert goes `normal → pending` when the value first passes the threshold, `pending →
//! raised` once it has stayed past it for the minimum duration (judged when a reading arrives),
//! back to `normal` from `pending` as soon as a reading is inside, and `raised → normal`
//! (a "cleared" event) only when a reading is back inside by at least the hysteresis
//! (`value <= max - hysteresis`, `value >= min + hysteresis`).

use crate::config::Resolved;

const VERSION: u8 = 2;
const LEN: usize = 80;
const V1: u8 = 1;
const V1_LEN: usize = 56;
const HIGH_RAISED: u8 = 1;
const LOW_RAISED: u8 = 2;
const HIGH_PENDING: u8 = 4;
const LOW_PENDING: u8 = 8;

/// A finished aggregation window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub start_ms: u64,
    pub count: u32,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// An alert transition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub raised: bool,
    pub threshold: f64,
    /// Why, when it is not the reading crossing the threshold: `rule_changed`.
    pub reason: Option<&'static str>,
}

/// The reason of a clear caused by a changed rule.
pub const RULE_CHANGED: &str = "rule_changed";

/// What one reading caused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The window this reading closed, if it belongs to a later one.
    pub closed: Option<Window>,
    /// Whether the reading was too late for the open window (not aggregated).
    pub late: bool,
    /// Alert transitions, at most one per bound.
    pub transitions: Vec<Transition>,
}

/// The state of one (device, metric).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Track {
    flags: u8,
    high_since_ms: u64,
    low_since_ms: u64,
    window_start_ms: u64,
    count: u32,
    min: f64,
    max: f64,
    sum: f64,
    rule: u64,
    high_threshold: f64,
    low_threshold: f64,
    /// Decoded from version 1: the rule of the alert state is unknown.
    legacy: bool,
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

impl Track {
    /// Decodes a stored track (version 2, or version 1 with its rule unknown); `None` if the
    /// bytes are neither.
    pub fn decode(b: &[u8]) -> Option<Track> {
        let legacy = match (b.first(), b.len()) {
            (Some(&VERSION), LEN) => false,
            (Some(&V1), V1_LEN) => true,
            _ => return None,
        };
        let (rule, high_threshold, low_threshold) = if legacy {
            (0, 0.0, 0.0)
        } else {
            (
                u64_at(b, 56),
                f64::from_bits(u64_at(b, 64)),
                f64::from_bits(u64_at(b, 72)),
            )
        };
        let track = Track {
            flags: b[1],
            high_since_ms: u64_at(b, 4),
            low_since_ms: u64_at(b, 12),
            window_start_ms: u64_at(b, 20),
            count: u32::from_le_bytes([b[28], b[29], b[30], b[31]]),
            min: f64::from_bits(u64_at(b, 32)),
            max: f64::from_bits(u64_at(b, 40)),
            sum: f64::from_bits(u64_at(b, 48)),
            rule,
            high_threshold,
            low_threshold,
            legacy,
        };
        let values = [
            track.min,
            track.max,
            track.sum,
            track.high_threshold,
            track.low_threshold,
        ];
        if values.iter().all(|v| v.is_finite()) {
            Some(track)
        } else {
            None
        }
    }

    /// Encodes the track.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = VERSION;
        b[1] = self.flags;
        b[4..12].copy_from_slice(&self.high_since_ms.to_le_bytes());
        b[12..20].copy_from_slice(&self.low_since_ms.to_le_bytes());
        b[20..28].copy_from_slice(&self.window_start_ms.to_le_bytes());
        b[28..32].copy_from_slice(&self.count.to_le_bytes());
        b[32..40].copy_from_slice(&self.min.to_le_bytes());
        b[40..48].copy_from_slice(&self.max.to_le_bytes());
        b[48..56].copy_from_slice(&self.sum.to_le_bytes());
        b[56..64].copy_from_slice(&self.rule.to_le_bytes());
        b[64..72].copy_from_slice(&self.high_threshold.to_le_bytes());
        b[72..80].copy_from_slice(&self.low_threshold.to_le_bytes());
        b
    }

    /// Takes one reading: aggregates it (closing the open window if the reading belongs to a
    /// later one) and steps both alert machines under `rule`.
    pub fn observe(
        &mut self,
        ts_ms: u64,
        value: f64,
        window_ms: u64,
        rule: Option<&Resolved>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let start = ts_ms - ts_ms % window_ms;
        if self.count > 0 && start > self.window_start_ms {
            outcome.closed = Some(Window {
                start_ms: self.window_start_ms,
                count: self.count,
                min: self.min,
                max: self.max,
                mean: self.sum / f64::from(self.count),
            });
            self.count = 0;
        }
        if self.count == 0 {
            self.window_start_ms = start;
            self.count = 1;
            self.min = value;
            self.max = value;
            self.sum = value;
        } else if start == self.window_start_ms {
            self.count = self.count.saturating_add(1);
            self.min = self.min.min(value);
            self.max = self.max.max(value);
            self.sum += value;
        } else {
            outcome.late = true;
        }

        self.follow_rule(value, rule, &mut outcome.transitions);
        if let Some(rule) = rule {
            if let Some(max) = rule.max {
                let beyond = value > max;
                let back = value <= max - rule.hysteresis;
                if let Some(t) = self.step(
                    HIGH_RAISED,
                    HIGH_PENDING,
                    beyond,
                    back,
                    ts_ms,
                    rule.min_duration_ms,
                ) {
                    if t {
                        self.high_threshold = max;
                    }
                    outcome.transitions.push(Transition {
                        raised: t,
                        threshold: max,
                        reason: None,
                    });
                }
            }
            if let Some(min) = rule.min {
                let beyond = value < min;
                let back = value >= min + rule.hysteresis;
                if let Some(t) = self.step(
                    LOW_RAISED,
                    LOW_PENDING,
                    beyond,
                    back,
                    ts_ms,
                    rule.min_duration_ms,
                ) {
                    if t {
                        self.low_threshold = min;
                    }
                    outcome.transitions.push(Transition {
                        raised: t,
                        threshold: min,
                        reason: None,
                    });
                }
            }
        }
        outcome
    }

    /// Whether an alert is raised (above or below).
    pub fn raised(&self) -> bool {
        self.flags & (HIGH_RAISED | LOW_RAISED) != 0
    }

    /// Brings the alert state under `rule` before a reading is judged (module doc, "Rule
    /// changes"), pushing the `rule_changed` clears.
    fn follow_rule(&mut self, value: f64, rule: Option<&Resolved>, out: &mut Vec<Transition>) {
        let fingerprint = rule.map_or(0, Resolved::fingerprint);
        let sides = [
            (HIGH_RAISED, HIGH_PENDING, rule.and_then(|r| r.max), true),
            (LOW_RAISED, LOW_PENDING, rule.and_then(|r| r.min), false),
        ];
        if self.legacy {
            self.legacy = false;
            for (raised, _, bound, high) in sides {
                if self.flags & raised == 0 {
                    continue;
                }
                let still_beyond =
                    bound.map_or(false, |b| if high { value > b } else { value < b });
                match bound {
                    Some(b) if still_beyond => self.set_threshold(high, b),
                    _ => {
                        self.flags &= !raised;
                        out.push(Transition {
                            raised: false,
                            threshold: bound.unwrap_or(value),
                            reason: Some(RULE_CHANGED),
                        });
                    }
                }
            }
        } else if fingerprint != self.rule {
            for (raised, pending, _, high) in sides {
                if self.flags & raised != 0 {
                    out.push(Transition {
                        raised: false,
                        threshold: if high {
                            self.high_threshold
                        } else {
                            self.low_threshold
                        },
                        reason: Some(RULE_CHANGED),
                    });
                }
                self.flags &= !(raised | pending);
            }
        }
        self.rule = fingerprint;
        if rule.is_none() {
            self.flags = 0;
        }
    }

    fn set_threshold(&mut self, high: bool, threshold: f64) {
        if high {
            self.high_threshold = threshold;
        } else {
            self.low_threshold = threshold;
        }
    }

    /// One alert machine step; returns `Some(true)` when raised, `Some(false)` when cleared.
    fn step(
        &mut self,
        raised: u8,
        pending: u8,
        beyond: bool,
        back: bool,
        ts_ms: u64,
        min_duration_ms: u64,
    ) -> Option<bool> {
        if self.flags & raised != 0 {
            if back {
                self.flags &= !raised;
                return Some(false);
            }
            return None;
        }
        if !beyond {
            self.flags &= !pending;
            return None;
        }
        let since = if raised == HIGH_RAISED {
            &mut self.high_since_ms
        } else {
            &mut self.low_since_ms
        };
        if self.flags & pending == 0 {
            self.flags |= pending;
            *since = ts_ms;
        }
        if ts_ms.saturating_sub(*since) >= min_duration_ms {
            self.flags = (self.flags & !pending) | raised;
            return Some(true);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const T0: u64 = 1_700_000_040_000; // a minute boundary

    fn rule(min: Option<f64>, max: Option<f64>, duration: u64) -> Resolved {
        Resolved {
            min,
            max,
            hysteresis: 0.5,
            min_duration_ms: duration,
        }
    }

    #[test]
    fn track_round_trips_through_its_byte_layout() {
        let mut t = Track::default();
        t.observe(T0, 3.5, MIN, Some(&rule(None, Some(3.0), 0)));
        t.observe(T0 + 10, 4.5, MIN, None);
        let back = Track::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        assert!(Track::decode(&t.encode()[..55]).is_none());
        assert!(Track::decode(&[0u8; 56]).is_none());
    }

    #[test]
    fn reading_of_a_later_minute_closes_the_window() {
        let mut t = Track::default();
        for (i, v) in [2.0, 6.0, 4.0].iter().enumerate() {
            assert_eq!(t.observe(T0 + i as u64 * 1000, *v, MIN, None).closed, None);
        }
        let out = t.observe(T0 + MIN + 5, 1.0, MIN, None);
        let w = out.closed.unwrap();
        assert_eq!(
            (w.start_ms, w.count, w.min, w.max, w.mean),
            (T0, 3, 2.0, 6.0, 4.0)
        );
    }

    #[test]
    fn late_reading_is_not_aggregated() {
        let mut t = Track::default();
        t.observe(T0 + MIN, 1.0, MIN, None);
        assert!(t.observe(T0 + 5, 100.0, MIN, None).late);
        let w = t.observe(T0 + 2 * MIN, 1.0, MIN, None).closed.unwrap();
        assert_eq!((w.count, w.max), (1, 1.0));
    }

    #[test]
    fn alert_needs_the_minimum_duration_and_clears_with_hysteresis() {
        let r = rule(None, Some(5.0), 2 * MIN);
        let mut t = Track::default();
        let raised = |o: Outcome| o.transitions.first().map(|t| t.raised);
        assert_eq!(raised(t.observe(T0, 6.0, MIN, Some(&r))), None);
        assert_eq!(raised(t.observe(T0 + MIN, 6.0, MIN, Some(&r))), None);
        assert_eq!(
            raised(t.observe(T0 + 2 * MIN, 6.0, MIN, Some(&r))),
            Some(true)
        );
        assert_eq!(raised(t.observe(T0 + 3 * MIN, 4.8, MIN, Some(&r))), None); // inside hysteresis
        assert_eq!(
            raised(t.observe(T0 + 4 * MIN, 4.4, MIN, Some(&r))),
            Some(false)
        );
    }

    #[test]
    fn dipping_back_before_the_duration_resets_the_timer() {
        let r = rule(None, Some(5.0), 2 * MIN);
        let mut t = Track::default();
        t.observe(T0, 6.0, MIN, Some(&r));
        t.observe(T0 + MIN, 4.0, MIN, Some(&r));
        assert!(t
            .observe(T0 + 2 * MIN, 6.0, MIN, Some(&r))
            .transitions
            .is_empty());
        assert!(t
            .observe(T0 + 3 * MIN, 6.0, MIN, Some(&r))
            .transitions
            .is_empty());
        assert!(t.observe(T0 + 4 * MIN, 6.0, MIN, Some(&r)).transitions[0].raised);
    }

    #[test]
    fn low_bound_raises_below_min_and_reports_its_threshold() {
        let r = rule(Some(-1.0), Some(5.0), 0);
        let mut t = Track::default();
        let out = t.observe(T0, -3.0, MIN, Some(&r));
        assert_eq!(
            out.transitions,
            vec![Transition {
                raised: true,
                threshold: -1.0,
                reason: None,
            }]
        );
        assert!(t
            .observe(T0 + 1, -0.8, MIN, Some(&r))
            .transitions
            .is_empty());
        let out = t.observe(T0 + 2, 0.0, MIN, Some(&r));
        assert_eq!(
            out.transitions,
            vec![Transition {
                raised: false,
                threshold: -1.0,
                reason: None,
            }]
        );
    }

    #[test]
    fn a_changed_rule_clears_what_the_old_one_raised_then_judges_afresh() {
        let old = rule(None, Some(5.0), 0);
        let new = rule(None, Some(8.0), 0);
        let mut t = Track::default();
        assert!(t.observe(T0, 6.0, MIN, Some(&old)).transitions[0].raised);
        let out = t.observe(T0 + 1, 9.0, MIN, Some(&new));
        assert_eq!(
            out.transitions,
            vec![
                Transition {
                    raised: false,
                    threshold: 5.0,
                    reason: Some(RULE_CHANGED)
                },
                Transition {
                    raised: true,
                    threshold: 8.0,
                    reason: None
                },
            ]
        );
        // The same rule again changes nothing; removing the rule clears at the stored threshold.
        assert!(t
            .observe(T0 + 2, 9.0, MIN, Some(&new))
            .transitions
            .is_empty());
        let out = t.observe(T0 + 3, 9.0, MIN, None);
        assert_eq!(out.transitions[0].threshold, 8.0);
        assert_eq!(out.transitions[0].reason, Some(RULE_CHANGED));
        assert!(!t.raised());
    }

    #[test]
    fn a_changed_rule_restarts_a_pending_timer() {
        let mut t = Track::default();
        t.observe(T0, 6.0, MIN, Some(&rule(None, Some(5.0), 2 * MIN)));
        let longer = rule(None, Some(5.0), 3 * MIN);
        assert!(t
            .observe(T0 + 2 * MIN, 6.0, MIN, Some(&longer))
            .transitions
            .is_empty());
        assert!(t
            .observe(T0 + 4 * MIN, 6.0, MIN, Some(&longer))
            .transitions
            .is_empty());
        assert!(t.observe(T0 + 5 * MIN, 6.0, MIN, Some(&longer)).transitions[0].raised);
    }

    /// A version-1 track that raised an alert on `value` under `old`, as the previous release
    /// wrote it.
    fn v1_raised(value: f64, old: Resolved) -> Vec<u8> {
        let mut t = Track::default();
        t.observe(T0, value, MIN, Some(&old));
        assert!(t.raised());
        let mut b = t.encode()[..V1_LEN].to_vec();
        b[0] = V1;
        b
    }

    #[test]
    fn version_1_state_decodes_and_its_alerts_follow_the_new_rule() {
        let bytes = v1_raised(6.0, rule(None, Some(5.0), 0));
        let mut t = Track::decode(&bytes).unwrap();
        assert!(t.raised());
        // Still above the new rule's max: kept, and clears later at the new threshold.
        assert!(t
            .observe(T0 + 1, 9.0, MIN, Some(&rule(None, Some(8.0), 0)))
            .transitions
            .is_empty());
        let out = t.observe(T0 + 2, 7.0, MIN, Some(&rule(None, Some(8.0), 0)));
        assert_eq!(
            (out.transitions[0].raised, out.transitions[0].threshold),
            (false, 8.0)
        );
        assert_eq!(out.transitions[0].reason, None);
        // A freezer at -18 raised "too cold" under the fridge rule; under the freezer rule it
        // is inside: cleared as a rule change, reporting the new bound.
        let bytes = v1_raised(-18.0, rule(Some(0.0), Some(5.0), 0));
        let mut t = Track::decode(&bytes).unwrap();
        let freezer = rule(Some(-25.0), Some(-15.0), MIN);
        let out = t.observe(T0 + 1, -18.5, MIN, Some(&freezer));
        assert_eq!(
            out.transitions,
            vec![Transition {
                raised: false,
                threshold: -25.0,
                reason: Some(RULE_CHANGED)
            }]
        );
        // Its window carries over.
        let w = t
            .observe(T0 + MIN, -18.0, MIN, Some(&freezer))
            .closed
            .unwrap();
        assert_eq!((w.count, w.min, w.max), (2, -18.5, -18.0));
    }
}
