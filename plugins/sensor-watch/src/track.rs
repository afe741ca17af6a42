//! Per (device, metric) state and its rules: the open aggregation window and the two alert
//! state machines (above `max`, below `min`), kept as one fixed 56-byte little-endian value.
//!
//! ```text
//! 0   u8   version (1)
//! 1   u8   flags: 1 high raised · 2 low raised · 4 high pending · 8 low pending
//! 2   u16  reserved (0)
//! 4   u64  high pending since, ms
//! 12  u64  low pending since, ms
//! 20  u64  window start, ms
//! 28  u32  window count
//! 32  f64  window min
//! 40  f64  window max
//! 48  f64  window sum
//! ```
//!
//! An alert goes `normal → pending` when the value first passes the threshold, `pending →
//! raised` once it has stayed past it for the minimum duration (judged when a reading arrives),
//! back to `normal` from `pending` as soon as a reading is inside, and `raised → normal`
//! (a "cleared" event) only when a reading is back inside by at least the hysteresis
//! (`value <= max - hysteresis`, `value >= min + hysteresis`).

use crate::config::Resolved;

const VERSION: u8 = 1;
const LEN: usize = 56;
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
}

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
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

impl Track {
    /// Decodes a stored track; `None` if the bytes are not a valid version-1 track.
    pub fn decode(b: &[u8]) -> Option<Track> {
        if b.len() != LEN || b[0] != VERSION {
            return None;
        }
        let track = Track {
            flags: b[1],
            high_since_ms: u64_at(b, 4),
            low_since_ms: u64_at(b, 12),
            window_start_ms: u64_at(b, 20),
            count: u32::from_le_bytes([b[28], b[29], b[30], b[31]]),
            min: f64::from_bits(u64_at(b, 32)),
            max: f64::from_bits(u64_at(b, 40)),
            sum: f64::from_bits(u64_at(b, 48)),
        };
        if track.min.is_finite() && track.max.is_finite() && track.sum.is_finite() {
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
                    outcome.transitions.push(Transition {
                        raised: t,
                        threshold: max,
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
                    outcome.transitions.push(Transition {
                        raised: t,
                        threshold: min,
                    });
                }
            }
        } else {
            // No rule (any more): forget alert state so a rule added later starts clean.
            self.flags = 0;
        }
        outcome
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
                threshold: -1.0
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
                threshold: -1.0
            }]
        );
    }
}
