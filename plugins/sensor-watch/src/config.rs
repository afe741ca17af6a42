//! The sensor-watch configuration (the manifest's `[config]` table): the aggregation window,
//! default hysteresis and duration, and min/max rules per metric, overridable per device.
//!
//! ```toml
//! [config]
//! hysteresis = 0.5            # default for every rule
//! min_duration_ms = 60000     # default for every rule
//!
//! [config.metrics.temperature]   # every device's `temperature`
//! min = -1.0
//! max = 5.0
//!
//! [config.devices."freezer-2".temperature]   # this device's own rule instead
//! max = -15.0
//! hysteresis = 1.0
//! ```

use std::collections::BTreeMap;

use outpost_sdk::Error;
use serde::Deserialize;

/// Everything that tunes sensor-watch. Every field has a default; unknown keys are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Aggregation window for `sensor.1m`, milliseconds (event time, aligned to the epoch).
    pub window_ms: u64,
    /// Default hysteresis: how far back past the threshold a value must go to clear an alert.
    pub hysteresis: f64,
    /// Default time a value must stay past the threshold before the alert is raised.
    pub min_duration_ms: u64,
    /// Ignore records whose `quality` is `bad` (they neither aggregate nor alert).
    pub skip_bad_quality: bool,
    /// Rules per metric name, for every device.
    pub metrics: BTreeMap<String, Rule>,
    /// Rules per device, then metric name; they replace the metric's general rule.
    pub devices: BTreeMap<String, BTreeMap<String, Rule>>,
}

/// Thresholds for one metric. A value above `max` or below `min` (strictly) for at least the
/// minimum duration raises an alert; it clears once the value is back inside by at least the
/// hysteresis (a door sensor: `max = 0.5`, default hysteresis 0.5, clears at 0).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Lower bound, if any.
    pub min: Option<f64>,
    /// Upper bound, if any.
    pub max: Option<f64>,
    /// Overrides the default hysteresis.
    pub hysteresis: Option<f64>,
    /// Overrides the default minimum duration.
    pub min_duration_ms: Option<u64>,
}

/// A rule with its defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub hysteresis: f64,
    pub min_duration_ms: u64,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            window_ms: 60_000,
            hysteresis: 0.5,
            min_duration_ms: 60_000,
            skip_bad_quality: true,
            metrics: BTreeMap::new(),
            devices: BTreeMap::new(),
        }
    }
}

impl SensorConfig {
    /// The rule for `metric` on `device`, if any: the device's own, else the metric's.
    pub fn rule(&self, device: &str, metric: &str) -> Option<Resolved> {
        let rule = self
            .devices
            .get(device)
            .and_then(|rules| rules.get(metric))
            .or_else(|| self.metrics.get(metric))?;
        Some(Resolved {
            min: rule.min,
            max: rule.max,
            hysteresis: rule.hysteresis.unwrap_or(self.hysteresis),
            min_duration_ms: rule.min_duration_ms.unwrap_or(self.min_duration_ms),
        })
    }

    /// Turns nonsense into an error naming the key and the fix.
    pub fn validate(&self) -> Result<(), Error> {
        if self.window_ms < 1000 {
            return Err(Error::new("config `window_ms` must be at least 1000"));
        }
        if !(self.hysteresis.is_finite() && self.hysteresis >= 0.0) {
            return Err(Error::new(
                "config `hysteresis` must be a number of at least 0",
            ));
        }
        let general = self
            .metrics
            .iter()
            .map(|(m, r)| (format!("metrics.{m}"), r));
        let per_device = self.devices.iter().flat_map(|(d, rules)| {
            rules
                .iter()
                .map(move |(m, r)| (format!("devices.{d}.{m}"), r))
        });
        for (path, rule) in general.chain(per_device) {
            let finite = |v: Option<f64>| v.map_or(true, f64::is_finite);
            if !finite(rule.min) || !finite(rule.max) {
                return Err(Error::new(format!(
                    "config `{path}`: min and max must be finite numbers"
                )));
            }
            if rule.min.is_none() && rule.max.is_none() {
                return Err(Error::new(format!(
                    "config `{path}`: set `min`, `max` or both"
                )));
            }
            if let (Some(min), Some(max)) = (rule.min, rule.max) {
                if min >= max {
                    return Err(Error::new(format!(
                        "config `{path}`: `min` must be below `max`"
                    )));
                }
            }
            if let Some(h) = rule.hysteresis {
                if !(h.is_finite() && h >= 0.0) {
                    return Err(Error::new(format!(
                        "config `{path}.hysteresis` must be a number of at least 0"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> SensorConfig {
        outpost_sdk::Config::new(json.as_bytes()).parse().unwrap()
    }

    #[test]
    fn device_rule_replaces_the_metric_rule_and_defaults_fill_gaps() {
        let c = parse(
            r#"{"hysteresis": 0.3, "metrics": {"temperature": {"max": 5.0}},
                "devices": {"freezer-2": {"temperature": {"max": -15.0, "min_duration_ms": 0}}}}"#,
        );
        c.validate().unwrap();
        let general = c.rule("fridge-1", "temperature").unwrap();
        assert_eq!(
            (general.max, general.hysteresis, general.min_duration_ms),
            (Some(5.0), 0.3, 60_000)
        );
        let own = c.rule("freezer-2", "temperature").unwrap();
        assert_eq!((own.max, own.min_duration_ms), (Some(-15.0), 0));
        assert!(c.rule("fridge-1", "humidity").is_none());
    }

    #[test]
    fn inverted_bounds_name_the_rule() {
        let c = parse(r#"{"devices": {"d1": {"t": {"min": 5.0, "max": 1.0}}}}"#);
        assert!(c.validate().unwrap_err().message().contains("devices.d1.t"));
    }

    #[test]
    fn rule_without_bounds_is_refused() {
        let c = parse(r#"{"metrics": {"t": {"hysteresis": 1.0}}}"#);
        assert!(c.validate().unwrap_err().message().contains("metrics.t"));
    }
}
