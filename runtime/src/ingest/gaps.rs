//! Gaps in a source's data, shared by the polling and subscribing sources (Modbus, OPC-UA): an
//! interval in which a source stored nothing although it should have (the device or server
//! could not be reached, the log refused appends). A gap is *open* while it lasts — shown in
//! status as `open_gap` — and once data flows again it is *closed*: kept in the source's
//! `recent_gaps` (the last [`RECENT_GAPS`]) and described in one line of text for
//! `last_gap`, with UTC clock times.
//!
//! Every gap counts what it missed in one unit the source chooses (`missed_polls` for Modbus,
//! `records_refused` for OPC-UA), under that name in its JSON.

use std::collections::VecDeque;

use serde_json::{json, Value};

/// How many closed gaps a source's status keeps.
pub const RECENT_GAPS: usize = 10;

/// A gap still open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenGap {
    /// When it opened (epoch ms).
    pub from_ms: u64,
    /// Why, the latest reason.
    pub reason: String,
    /// How much it missed so far, in the unit of its [`Gaps`].
    pub missed: u64,
}

/// The closed gaps of one source, and how its gaps are counted.
#[derive(Debug, Clone)]
pub struct Gaps {
    /// JSON name of [`OpenGap::missed`] (`missed_polls`).
    key: &'static str,
    /// What a missed unit is called in text (`polls missed`).
    unit: &'static str,
    recent: VecDeque<Value>,
}

impl Gaps {
    /// No gaps yet; `key` names the missed count in JSON, `unit` in text.
    pub fn new(key: &'static str, unit: &'static str) -> Gaps {
        Gaps {
            key,
            unit,
            recent: VecDeque::with_capacity(RECENT_GAPS),
        }
    }

    /// The open gap as status shows it: `{from_ms, <key>, reason}`.
    pub fn open_json(&self, gap: &OpenGap) -> Value {
        json!({"from_ms": gap.from_ms, self.key: gap.missed, "reason": gap.reason})
    }

    /// Closes `gap` at `to_ms`: keeps it among the recent ones and returns its text,
    /// `"12:00:05.000Z–12:00:41.250Z (36.2 s, 12 polls missed): connection refused"`.
    pub fn close(&mut self, gap: OpenGap, to_ms: u64) -> String {
        let seconds = to_ms.saturating_sub(gap.from_ms) as f64 / 1000.0;
        let missed = if gap.missed > 0 {
            format!(", {} {}", gap.missed, self.unit)
        } else {
            String::new()
        };
        let text = format!(
            "{}–{} ({seconds:.1} s{missed}): {}",
            clock(gap.from_ms),
            clock(to_ms),
            gap.reason
        );
        if self.recent.len() == RECENT_GAPS {
            self.recent.pop_front();
        }
        self.recent.push_back(json!({
            "from_ms": gap.from_ms,
            "to_ms": to_ms,
            self.key: gap.missed,
            "reason": gap.reason,
        }));
        text
    }

    /// The closed gaps kept, oldest first.
    pub fn recent(&self) -> Value {
        Value::Array(self.recent.iter().cloned().collect())
    }
}

/// `HH:MM:SS.mmmZ` of an epoch-ms time (UTC).
pub fn clock(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_times_read_as_utc_clock_times() {
        assert_eq!(clock(0), "00:00:00.000Z");
        assert_eq!(
            clock(86_400_000 + 12 * 3_600_000 + 5 * 60_000 + 7_250),
            "12:05:07.250Z"
        );
    }

    #[test]
    fn a_closed_gap_is_described_and_only_the_last_ten_are_kept() {
        let mut gaps = Gaps::new("missed_polls", "polls missed");
        let gap = OpenGap {
            from_ms: 43_205_000,
            reason: "connection refused".into(),
            missed: 12,
        };
        assert_eq!(
            gaps.open_json(&gap),
            json!({"from_ms": 43_205_000u64, "missed_polls": 12, "reason": "connection refused"})
        );
        assert_eq!(
            gaps.close(gap, 43_241_250),
            "12:00:05.000Z–12:00:41.250Z (36.2 s, 12 polls missed): connection refused"
        );
        for i in 0..12u64 {
            let gap = OpenGap {
                from_ms: i,
                reason: "down".into(),
                missed: 0,
            };
            assert_eq!(
                gaps.close(gap, i + 1000),
                format!("{}–{} (1.0 s): down", clock(i), clock(i + 1000))
            );
        }
        let recent = gaps.recent();
        let recent = recent.as_array().unwrap();
        assert_eq!(recent.len(), RECENT_GAPS);
        assert_eq!(recent[0]["from_ms"], 2);
        assert_eq!(recent[9]["to_ms"], 1011);
    }
}
