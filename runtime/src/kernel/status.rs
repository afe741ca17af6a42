//! Status of the box's sources and sinks: what `outpost status`, `GET /topics` and `GET
//! /metrics` show about each MQTT listener, MQTT source and sink, Modbus device and OPC-UA
//! server, from one set of typed handles.
//!
//! A component registers an entry once ([`StatusBoard::register`]) and from then on updates it
//! through [`StatusBoard::update`]. Every number in an entry is a metric handle registered in
//! the [`crate::metrics`] registry when the entry (or that number) is first created, so
//! `/metrics` renders the same values `outpost status` shows and nothing is converted at scrape
//! time:
//!
//! | status field | Prometheus series (`<role>` = `source` or `sink`, labels `<role>`, `kind`) |
//! |---|---|
//! | `link` | `outpost_<role>_up` (1 connected), `outpost_<role>_backpressured` (1 held back) |
//! | `records_stored` | `outpost_<role>_records_total` |
//! | `errors` | `outpost_<role>_errors_total` |
//! | `gaps` | `outpost_<role>_gaps_total` |
//! | `last_record_ms` | `outpost_<role>_last_record_timestamp_seconds` |
//! | `details.<key>` counter | `outpost_<role>_<key>_total` ([`StatusEntry::count`]) |
//! | `details.<key>` gauge | `outpost_<role>_<key>` ([`StatusEntry::set_gauge`], [`StatusEntry::set_flag`]: 1/0) |
//!
//! Text details (addresses, topic names, the open gap's description: [`StatusEntry::set_info`])
//! describe an entry rather than measure it; they stay in the status JSON, next to the numbers
//! that count them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use crate::kernel::lock;
use crate::metrics::{self, Counter, Gauge, Registry};

/// Whether a board holds sources (data in) or sinks (data out); names the metric families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `outpost_source_*{source=…}`: MQTT listener and sources, Modbus, OPC-UA.
    Source,
    /// `outpost_sink_*{sink=…}`: MQTT sinks (`records_stored` counts records delivered).
    Sink,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Sink => "sink",
        }
    }

    fn records_help(self) -> &'static str {
        match self {
            Role::Source => "Records the source stored in the log.",
            Role::Sink => "Records the sink delivered (acknowledged by the broker).",
        }
    }
}

/// The connection state of one source or sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Link {
    /// Not started yet.
    Starting,
    /// Connected and working.
    Connected,
    /// Disconnected; retrying after `last_error`.
    Retrying { last_error: String, attempts: u64 },
    /// Holding back because the log refuses appends (disk budget); nothing is dropped.
    Backpressured { reason: String },
    /// Stopped (shutdown or disabled).
    Stopped,
}

/// What one source or sink reports, as `outpost status` and `GET /topics` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// Name from the config (unique on its board), e.g. `mqtt:store-broker`.
    pub name: String,
    /// `mqtt`, `modbus`, `opcua`, `mqtt-listener`, `mqtt-sink`, …
    pub kind: String,
    pub link: Link,
    /// Records appended to the log (a sink: records delivered).
    pub records_stored: u64,
    /// Messages/polls that failed to decode, map or deliver (each logged).
    pub errors: u64,
    /// Intervals with missing data (disconnects, skipped polls).
    pub gaps: u64,
    /// Description of the last gap (`"12:00:05–12:00:41: connection refused"`).
    pub last_gap: Option<String>,
    /// Epoch ms of the last record stored (or delivered).
    pub last_record_ms: Option<u64>,
    /// Per-kind details: counters and gauges (each also a series) and descriptive text.
    pub details: BTreeMap<String, Value>,
}

impl Status {
    /// The status of an entry not registered yet: `Starting`, nothing counted.
    pub fn starting(name: &str, kind: &str) -> Status {
        Status {
            name: name.to_string(),
            kind: kind.to_string(),
            link: Link::Starting,
            records_stored: 0,
            errors: 0,
            gaps: 0,
            last_gap: None,
            last_record_ms: None,
            details: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum Detail {
    Counter(Counter),
    Gauge(Gauge),
    /// A yes/no gauge (1/0 in metrics, `true`/`false` in the status).
    Flag(Gauge),
    Info(Value),
}

/// One live entry of a board: the handles behind a [`Status`]. Components change it inside
/// [`StatusBoard::update`].
#[derive(Debug)]
pub struct StatusEntry {
    name: String,
    kind: String,
    role: Role,
    link: Link,
    last_gap: Option<String>,
    last_record_ms: Option<u64>,
    up: Gauge,
    backpressured: Gauge,
    last_record: Gauge,
    records: Counter,
    errors: Counter,
    gaps: Counter,
    details: BTreeMap<String, Detail>,
    registry: &'static Registry,
}

impl StatusEntry {
    fn new(role: Role, name: &str, kind: &str, registry: &'static Registry) -> StatusEntry {
        let labels = [(role.as_str(), name), ("kind", kind)];
        let r = role.as_str();
        let entry = StatusEntry {
            name: name.to_string(),
            kind: kind.to_string(),
            role,
            link: Link::Starting,
            last_gap: None,
            last_record_ms: None,
            up: registry.gauge(
                &format!("outpost_{r}_up"),
                "1 when connected and working, 0 when starting, retrying, held back or stopped.",
                &labels,
            ),
            backpressured: registry.gauge(
                &format!("outpost_{r}_backpressured"),
                "1 while the log refuses appends and acknowledgements are held.",
                &labels,
            ),
            last_record: registry.gauge(
                &format!("outpost_{r}_last_record_timestamp_seconds"),
                "When the last record was stored (or delivered), in seconds since the epoch; 0 before the first.",
                &labels,
            ),
            records: registry.counter(
                &format!("outpost_{r}_records_total"),
                role.records_help(),
                &labels,
            ),
            errors: registry.counter(
                &format!("outpost_{r}_errors_total"),
                "Messages that failed to decode, map or deliver (each logged).",
                &labels,
            ),
            gaps: registry.counter(
                &format!("outpost_{r}_gaps_total"),
                "Intervals with missing data (disconnects, skipped polls).",
                &labels,
            ),
            details: BTreeMap::new(),
            registry,
        };
        entry.up.set(0.0);
        entry.backpressured.set(0.0);
        entry
    }

    fn labels(&self) -> [(&str, &str); 2] {
        [(self.role.as_str(), &self.name), ("kind", &self.kind)]
    }

    /// The current link state.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Sets the link state (and the `up` / `backpressured` gauges with it).
    pub fn set_link(&mut self, link: Link) {
        self.up
            .set(f64::from(u8::from(matches!(link, Link::Connected))));
        self.backpressured.set(f64::from(u8::from(matches!(
            link,
            Link::Backpressured { .. }
        ))));
        self.link = link;
    }

    /// `n` records stored (or delivered) at `now_ms`.
    pub fn stored(&mut self, n: u64, now_ms: u64) {
        self.records.add(n);
        self.last_record_ms = Some(now_ms);
        self.last_record.set(now_ms as f64 / 1000.0);
    }

    /// `n` more errors.
    pub fn error(&mut self, n: u64) {
        self.errors.add(n);
    }

    /// A gap closed, with its description.
    pub fn gap(&mut self, description: String) {
        self.gaps.inc();
        self.last_gap = Some(description);
    }

    /// Adds `n` to the counter `details.<key>` (series `outpost_<role>_<key>_total`, or
    /// `outpost_<role>_<key>` when the key already ends in `_total`; registered with `help` the
    /// first time).
    pub fn count(&mut self, key: &str, help: &str, n: u64) {
        self.counter(key, help).add(n);
    }

    /// The counter `details.<key>`, registered with `help` the first time: a handle to keep
    /// where the count happens often.
    pub fn counter(&mut self, key: &str, help: &str) -> Counter {
        if let Some(Detail::Counter(c)) = self.details.get(key) {
            return c.clone();
        }
        let series = match key.strip_suffix("_total") {
            Some(base) => format!("outpost_{}_{base}_total", self.role.as_str()),
            None => format!("outpost_{}_{key}_total", self.role.as_str()),
        };
        let c = self.registry.counter(&series, help, &self.labels());
        self.details
            .insert(key.to_string(), Detail::Counter(c.clone()));
        c
    }

    /// Sets the gauge `details.<key>` (series `outpost_<role>_<key>`, registered with `help`
    /// the first time).
    pub fn set_gauge(&mut self, key: &str, help: &str, value: f64) {
        self.gauge_detail(key, help, false).set(value);
    }

    /// Sets the yes/no detail `details.<key>` (series `outpost_<role>_<key>`, 1 or 0).
    pub fn set_flag(&mut self, key: &str, help: &str, value: bool) {
        self.gauge_detail(key, help, true)
            .set(f64::from(u8::from(value)));
    }

    /// The gauge behind `details.<key>`, registered the first time (`flag`: shown as a bool).
    fn gauge_detail(&mut self, key: &str, help: &str, flag: bool) -> Gauge {
        match self.details.get(key) {
            Some(Detail::Gauge(g)) if !flag => return g.clone(),
            Some(Detail::Flag(g)) if flag => return g.clone(),
            _ => {}
        }
        let g = self.registry.gauge(
            &format!("outpost_{}_{key}", self.role.as_str()),
            help,
            &self.labels(),
        );
        let detail = if flag {
            Detail::Flag(g.clone())
        } else {
            Detail::Gauge(g.clone())
        };
        self.details.insert(key.to_string(), detail);
        g
    }

    /// Sets the descriptive detail `details.<key>` (an address, a topic, a list of filters, the
    /// open gap): text that describes the entry, not a number to graph.
    pub fn set_info(&mut self, key: &str, value: impl Into<Value>) {
        self.details
            .insert(key.to_string(), Detail::Info(value.into()));
    }

    /// The entry as `outpost status` shows it.
    pub fn snapshot(&self) -> Status {
        let details = self
            .details
            .iter()
            .map(|(k, d)| {
                let v = match d {
                    Detail::Counter(c) => Value::from(c.get()),
                    Detail::Gauge(g) => gauge_json(g.get()),
                    Detail::Flag(g) => Value::from(g.get() != 0.0),
                    Detail::Info(v) => v.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        Status {
            name: self.name.clone(),
            kind: self.kind.clone(),
            link: self.link.clone(),
            records_stored: self.records.get(),
            errors: self.errors.get(),
            gaps: self.gaps.get(),
            last_gap: self.last_gap.clone(),
            last_record_ms: self.last_record_ms,
            details,
        }
    }
}

/// Whole numbers as JSON integers (an offset, a connection count), the rest as floats.
fn gauge_json(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

/// The board of one role's entries (sources, or sinks). Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    role: Role,
    registry: &'static Registry,
    entries: Arc<Mutex<BTreeMap<String, StatusEntry>>>,
}

impl StatusBoard {
    /// An empty board whose series go to the process-wide registry.
    pub fn new(role: Role) -> StatusBoard {
        StatusBoard::with_registry(role, metrics::global())
    }

    /// An empty board whose series go to `registry` (tests).
    pub fn with_registry(role: Role, registry: &'static Registry) -> StatusBoard {
        StatusBoard {
            role,
            registry,
            entries: Arc::default(),
        }
    }

    /// The board of sources.
    pub fn sources() -> StatusBoard {
        StatusBoard::new(Role::Source)
    }

    /// The board of sinks.
    pub fn sinks() -> StatusBoard {
        StatusBoard::new(Role::Sink)
    }

    /// Registers an entry in the `Starting` state (or starts an existing one afresh, keeping
    /// its counters: they are the same series), applies `init` to it and returns what `init`
    /// returns (e.g. the counter handles the component keeps).
    pub fn register<R>(
        &self,
        name: &str,
        kind: &str,
        init: impl FnOnce(&mut StatusEntry) -> R,
    ) -> R {
        let mut entries = lock(&self.entries);
        let mut entry = StatusEntry::new(self.role, name, kind, self.registry);
        let kept = init(&mut entry);
        entries.insert(name.to_string(), entry);
        kept
    }

    /// Applies `f` to the named entry, if registered.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut StatusEntry)) {
        if let Some(entry) = lock(&self.entries).get_mut(name) {
            f(entry);
        }
    }

    /// Every entry, sorted by name.
    pub fn snapshot(&self) -> Vec<Status> {
        lock(&self.entries)
            .values()
            .map(StatusEntry::snapshot)
            .collect()
    }

    /// One entry by name.
    pub fn get(&self, name: &str) -> Option<Status> {
        lock(&self.entries).get(name).map(StatusEntry::snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> &'static Registry {
        Box::leak(Box::default())
    }

    #[test]
    fn the_board_updates_only_registered_entries() {
        let board = StatusBoard::with_registry(Role::Source, registry());
        board.register("mqtt:a", "mqtt", |_| {});
        board.update("mqtt:a", |s| s.stored(2, 1_000));
        board.update("mqtt:missing", |s| s.stored(1, 1_000));
        let snap = board.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].records_stored, 2);
        assert_eq!(snap[0].last_record_ms, Some(1_000));
    }

    #[test]
    fn every_number_in_a_status_is_the_same_value_in_metrics() {
        let r = registry();
        let board = StatusBoard::with_registry(Role::Sink, r);
        board.register("mqtt:verdicts", "mqtt-sink", |s| {
            s.set_info("topic", "fraud.scores");
        });
        board.update("mqtt:verdicts", |s| {
            s.set_link(Link::Connected);
            s.stored(7, 2_000);
            s.error(1);
            s.count("dropped", "Records dropped.", 3);
            s.set_gauge("lag", "Records behind.", 5.0);
        });
        let status = board.get("mqtt:verdicts").unwrap();
        assert_eq!(status.details["dropped"], 3);
        assert_eq!(status.details["lag"], 5);
        assert_eq!(status.details["topic"], "fraud.scores");
        let text = r.render();
        for line in [
            r#"outpost_sink_up{sink="mqtt:verdicts",kind="mqtt-sink"} 1"#,
            r#"outpost_sink_records_total{sink="mqtt:verdicts",kind="mqtt-sink"} 7"#,
            r#"outpost_sink_errors_total{sink="mqtt:verdicts",kind="mqtt-sink"} 1"#,
            r#"outpost_sink_dropped_total{sink="mqtt:verdicts",kind="mqtt-sink"} 3"#,
            r#"outpost_sink_lag{sink="mqtt:verdicts",kind="mqtt-sink"} 5"#,
            r#"outpost_sink_last_record_timestamp_seconds{sink="mqtt:verdicts",kind="mqtt-sink"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn backpressure_and_retrying_are_not_up() {
        let r = registry();
        let board = StatusBoard::with_registry(Role::Source, r);
        board.register("modbus:fridge", "modbus", |s| {
            s.set_link(Link::Backpressured {
                reason: "disk budget".into(),
            })
        });
        let text = r.render();
        assert!(text.contains(r#"outpost_source_up{source="modbus:fridge",kind="modbus"} 0"#));
        assert!(text
            .contains(r#"outpost_source_backpressured{source="modbus:fridge",kind="modbus"} 1"#));
    }
}
