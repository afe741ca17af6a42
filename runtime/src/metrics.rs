//! The one metrics registry: every counter and gauge a user would graph lives here and is
//! rendered as Prometheus text by `GET /metrics`.
//!
//! Components register a series once (`counter`/`gauge` with a name, help text and labels) and
//! keep the returned handle; updating a handle is one atomic operation, so hot paths pay
//! nothing else. Registering the same name and labels twice returns the same handle. Names
//! follow Prometheus conventions (`outpost_log_appended_records_total`).

use crate::kernel::lock;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A monotonically increasing counter.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n` to the counter.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as `f64` bits).
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the gauge.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone)]
enum Handle {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: &'static str,
    series: BTreeMap<String, Handle>,
}

/// A set of metric families. Most code uses [`global`]; tests may build their own.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<String, Family>>,
}

fn label_key(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let escaped = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{escaped}\"");
    }
    out
}

impl Registry {
    fn series(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Handle,
    ) -> Handle {
        let mut families = lock(&self.families);
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
        });
        family
            .series
            .entry(label_key(labels))
            .or_insert_with(make)
            .clone()
    }

    /// Registers (or finds) a counter series.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.series(name, help, "counter", labels, || {
            Handle::Counter(Counter::default())
        }) {
            Handle::Counter(c) => c,
            // A name registered as a gauge and asked for as a counter: hand out a detached
            // counter rather than panic; the rendering keeps the first kind.
            Handle::Gauge(_) => Counter::default(),
        }
    }

    /// Registers (or finds) a gauge series.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.series(name, help, "gauge", labels, || {
            Handle::Gauge(Gauge::default())
        }) {
            Handle::Gauge(g) => g,
            Handle::Counter(_) => Gauge::default(),
        }
    }

    /// Renders every family in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let families = lock(&self.families);
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, handle) in &family.series {
                let value = match handle {
                    Handle::Counter(c) => c.get().to_string(),
                    Handle::Gauge(g) => format_f64(g.get()),
                };
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

fn format_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        v.to_string()
    }
}

/// The process-wide registry rendered by `GET /metrics`.
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_text_with_labels() {
        let r = Registry::default();
        let c = r.counter("outpost_x_total", "Things.", &[("topic", "a\"b")]);
        c.add(3);
        r.counter("outpost_x_total", "Things.", &[("topic", "a\"b")])
            .inc();
        let text = r.render();
        assert!(text.contains("# TYPE outpost_x_total counter"));
        assert!(
            text.contains("outpost_x_total{topic=\"a\\\"b\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn gauges_hold_the_last_value_set() {
        let r = Registry::default();
        r.gauge("outpost_g", "G.", &[]).set(2.5);
        assert!(r.render().contains("outpost_g 2.5"));
    }
}
