//! `sensor-watch`: watches store telemetry (fridge and freezer temperatures, door states,
//! energy) arriving on sensor topics such as `sensors.fridge`, each record a device's `values`
//! object at `ts_ms`.
//!
//! For every numeric (or boolean, read as 1/0) value it keeps per-minute min/mean/max/count,
//! emitted to `sensor.1m` when a reading of a later minute arrives for the same device and
//! metric (event time, so replays give the same windows), and checks the configured min/max
//! rules with hysteresis and a minimum duration, emitting `sensor.alerts` with `state`
//! `raised` or `cleared`. Text values are ignored; `bad`-quality records are skipped unless
//! configured otherwise. State: one 56-byte value per (device, metric) under
//! `m/<device>\0<metric>` (see [`track`]).
//!
//! Durations are judged when readings arrive: a sensor that stops reporting neither raises
//! nor closes its last window until it reports again.

pub mod config;
pub mod track;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use outpost_sdk::{export_plugin, Config, Context, Error, Level, Plugin, Record};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::config::SensorConfig;
use crate::track::Track;

/// Output topic for threshold alerts.
pub const ALERTS_TOPIC: &str = "sensor.alerts";
/// Output topic for per-window aggregates.
pub const AGGREGATES_TOPIC: &str = "sensor.1m";

/// One entry of `values`: a number (booleans read as 1/0), or nothing usable.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading(Option<f64>);

struct ReadingVisitor;

impl<'de> Visitor<'de> for ReadingVisitor {
    type Value = Reading;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, boolean, string or null")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Reading, E> {
        Ok(Reading(Some(if v { 1.0 } else { 0.0 })))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Reading, E> {
        Ok(Reading(Some(v as f64)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Reading, E> {
        Ok(Reading(Some(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Reading, E> {
        Ok(Reading(Some(v).filter(|v| v.is_finite())))
    }
    fn visit_str<E>(self, _: &str) -> Result<Reading, E> {
        Ok(Reading(None))
    }
    fn visit_unit<E>(self) -> Result<Reading, E> {
        Ok(Reading(None))
    }
    fn visit_none<E>(self) -> Result<Reading, E> {
        Ok(Reading(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Reading, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Reading(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Reading, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Reading(None))
    }
}

impl<'de> Deserialize<'de> for Reading {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ReadingVisitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Quality {
    Good,
    Uncertain,
    Bad,
}

/// A sensor record value.
#[derive(Debug, Deserialize)]
struct SensorRecord<'a> {
    ts_ms: Option<u64>,
    #[serde(borrow, default)]
    device: Option<Cow<'a, str>>,
    values: BTreeMap<String, Reading>,
    quality: Option<Quality>,
}

#[derive(Debug, Serialize)]
struct AlertOut<'a> {
    ts_ms: u64,
    device: &'a str,
    metric: &'a str,
    value: f64,
    threshold: f64,
    state: &'static str,
}

#[derive(Debug, Serialize)]
struct AggregateOut<'a> {
    window_start_ms: u64,
    device: &'a str,
    metric: &'a str,
    min: f64,
    mean: f64,
    max: f64,
    count: u32,
}

/// The sensor-watch plugin.
#[derive(Debug, Default)]
pub struct SensorWatch {
    config: SensorConfig,
    key: Vec<u8>,
    buf: Vec<u8>,
}

impl Plugin for SensorWatch {
    fn init(&mut self, _ctx: &mut dyn Context, config: &Config) -> Result<(), Error> {
        let config: SensorConfig = config.parse()?;
        config.validate()?;
        self.config = config;
        Ok(())
    }

    fn on_record(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let reading: SensorRecord<'_> = record.json()?;
        if self.config.skip_bad_quality && reading.quality == Some(Quality::Bad) {
            return Ok(());
        }
        let device: Cow<'_, str> = match (reading.device, record.key_str()?) {
            (Some(d), _) if !d.is_empty() => d,
            (_, Some(k)) if !k.is_empty() => Cow::Borrowed(k),
            _ => return Err(Error::new("sensor record names no device (value or key)")),
        };
        if device.contains('\0') {
            return Err(Error::new("device names must not contain NUL"));
        }
        let ts_ms = reading.ts_ms.unwrap_or(record.timestamp_ms);
        for (metric, value) in &reading.values {
            if let Some(value) = value.0 {
                self.observe(ctx, &device, metric, ts_ms, value)?;
            }
        }
        Ok(())
    }
}

impl SensorWatch {
    fn observe(
        &mut self,
        ctx: &mut dyn Context,
        device: &str,
        metric: &str,
        ts_ms: u64,
        value: f64,
    ) -> Result<(), Error> {
        self.key.clear();
        self.key.extend_from_slice(b"m/");
        self.key.extend_from_slice(device.as_bytes());
        self.key.push(0);
        self.key.extend_from_slice(metric.as_bytes());

        let mut track = if ctx.state_get_into(&self.key, &mut self.buf)? {
            Track::decode(&self.buf).unwrap_or_else(|| {
                ctx.log(
                    Level::Warn,
                    &format!("state for {device}/{metric} was unreadable; starting it afresh"),
                );
                Track::default()
            })
        } else {
            Track::default()
        };
        let rule = self.config.rule(device, metric);
        let outcome = track.observe(ts_ms, value, self.config.window_ms, rule.as_ref());
        ctx.state_put(&self.key, &track.encode())?;

        let key = Some(device.as_bytes());
        if let Some(w) = outcome.closed {
            let out = AggregateOut {
                window_start_ms: w.start_ms,
                device,
                metric,
                min: w.min,
                mean: w.mean,
                max: w.max,
                count: w.count,
            };
            ctx.emit_json(AGGREGATES_TOPIC, key, &out)?;
        }
        if outcome.late {
            ctx.log(
                Level::Debug,
                &format!("late reading for {device}/{metric} at {ts_ms} not aggregated"),
            );
        }
        for t in &outcome.transitions {
            let out = AlertOut {
                ts_ms,
                device,
                metric,
                value,
                threshold: t.threshold,
                state: if t.raised { "raised" } else { "cleared" },
            };
            ctx.emit_json(ALERTS_TOPIC, key, &out)?;
        }
        Ok(())
    }
}

export_plugin!(SensorWatch);

#[cfg(test)]
mod tests {
    use outpost_sdk::testing::Harness;
    use serde_json::{json, Value};

    use super::*;

    const T0: u64 = 1_700_000_040_000; // a minute boundary
    const SEC: u64 = 1000;
    const MIN: u64 = 60 * SEC;

    const FRIDGE: &str = r#"{
        "min_duration_ms": 120000,
        "metrics": {"temperature": {"min": 0.0, "max": 5.0}, "door_open": {"max": 0.5, "min_duration_ms": 300000}},
        "devices": {"freezer-1": {"temperature": {"max": -15.0, "hysteresis": 1.0, "min_duration_ms": 0}}}
    }"#;

    fn harness() -> Harness<SensorWatch> {
        Harness::<SensorWatch>::start(FRIDGE)
            .unwrap()
            .allow_outputs(&[ALERTS_TOPIC, AGGREGATES_TOPIC])
    }

    fn read(h: &mut Harness<SensorWatch>, device: &str, ts_ms: u64, values: Value) {
        let value = json!({"ts_ms": ts_ms, "device": device, "values": values, "quality": "good"});
        h.send_json("sensors.fridge", device, &value).unwrap();
    }

    fn alerts(h: &Harness<SensorWatch>) -> Vec<Value> {
        h.emitted_to(ALERTS_TOPIC)
            .iter()
            .map(|e| e.json().unwrap())
            .collect()
    }

    fn aggregates(h: &Harness<SensorWatch>) -> Vec<Value> {
        h.emitted_to(AGGREGATES_TOPIC)
            .iter()
            .map(|e| e.json().unwrap())
            .collect()
    }

    #[test]
    fn warm_fridge_raises_after_the_duration_and_clears_with_hysteresis() {
        let mut h = harness();
        read(&mut h, "fridge-1", T0, json!({"temperature": 4.0}));
        read(&mut h, "fridge-1", T0 + MIN, json!({"temperature": 6.0}));
        read(
            &mut h,
            "fridge-1",
            T0 + 2 * MIN,
            json!({"temperature": 6.5}),
        );
        assert!(alerts(&h).is_empty(), "only one minute above");
        read(
            &mut h,
            "fridge-1",
            T0 + 3 * MIN,
            json!({"temperature": 7.0}),
        );
        let a = alerts(&h);
        assert_eq!(a.len(), 1);
        assert_eq!(
            a[0],
            json!({"ts_ms": T0 + 3 * MIN, "device": "fridge-1", "metric": "temperature",
                   "value": 7.0, "threshold": 5.0, "state": "raised"})
        );
        assert_eq!(h.emitted_to(ALERTS_TOPIC)[0].key_str(), Some("fridge-1"));
        read(
            &mut h,
            "fridge-1",
            T0 + 4 * MIN,
            json!({"temperature": 4.8}),
        );
        assert_eq!(alerts(&h).len(), 1, "4.8 is inside the 0.5 hysteresis band");
        read(
            &mut h,
            "fridge-1",
            T0 + 5 * MIN,
            json!({"temperature": 4.2}),
        );
        let a = alerts(&h);
        assert_eq!(
            (a[1]["state"].as_str(), a[1]["value"].as_f64()),
            (Some("cleared"), Some(4.2))
        );
    }

    #[test]
    fn short_excursion_raises_nothing() {
        let mut h = harness();
        read(&mut h, "fridge-1", T0, json!({"temperature": 9.0}));
        read(&mut h, "fridge-1", T0 + MIN, json!({"temperature": 3.0}));
        read(
            &mut h,
            "fridge-1",
            T0 + 3 * MIN,
            json!({"temperature": 9.0}),
        );
        assert!(alerts(&h).is_empty());
    }

    #[test]
    fn device_rule_overrides_the_metric_rule() {
        let mut h = harness();
        read(&mut h, "freezer-1", T0, json!({"temperature": -12.0}));
        let a = alerts(&h);
        assert_eq!(
            (a[0]["threshold"].as_f64(), a[0]["state"].as_str()),
            (Some(-15.0), Some("raised"))
        );
        read(&mut h, "freezer-1", T0 + SEC, json!({"temperature": -15.5}));
        assert_eq!(alerts(&h).len(), 1, "needs to be below -16 to clear");
        read(
            &mut h,
            "freezer-1",
            T0 + 2 * SEC,
            json!({"temperature": -16.5}),
        );
        assert_eq!(alerts(&h)[1]["state"], "cleared");
    }

    #[test]
    fn open_door_is_a_boolean_alert() {
        let mut h = harness();
        read(&mut h, "fridge-1", T0, json!({"door_open": true}));
        read(&mut h, "fridge-1", T0 + 4 * MIN, json!({"door_open": true}));
        assert!(alerts(&h).is_empty());
        read(&mut h, "fridge-1", T0 + 5 * MIN, json!({"door_open": true}));
        assert_eq!(alerts(&h)[0]["metric"], "door_open");
        assert_eq!(alerts(&h)[0]["value"], 1.0);
        read(
            &mut h,
            "fridge-1",
            T0 + 6 * MIN,
            json!({"door_open": false}),
        );
        assert_eq!(alerts(&h)[1]["state"], "cleared");
    }

    #[test]
    fn too_cold_raises_against_the_minimum() {
        let mut h = Harness::<SensorWatch>::start(
            r#"{"min_duration_ms": 0, "metrics": {"temperature": {"min": 0.0}}}"#,
        )
        .unwrap();
        read(&mut h, "fridge-2", T0, json!({"temperature": -2.0}));
        assert_eq!(alerts(&h)[0]["threshold"], 0.0);
    }

    #[test]
    fn minute_aggregates_are_emitted_when_a_later_minute_starts() {
        let mut h = harness();
        read(
            &mut h,
            "fridge-1",
            T0,
            json!({"temperature": 3.0, "energy_kwh": 10}),
        );
        read(
            &mut h,
            "fridge-1",
            T0 + 20 * SEC,
            json!({"temperature": 4.0, "energy_kwh": 11}),
        );
        read(
            &mut h,
            "fridge-1",
            T0 + 40 * SEC,
            json!({"temperature": 5.0}),
        );
        assert!(aggregates(&h).is_empty());
        read(
            &mut h,
            "fridge-1",
            T0 + MIN + SEC,
            json!({"temperature": 2.0, "energy_kwh": 12}),
        );
        let agg = aggregates(&h);
        assert_eq!(agg.len(), 2);
        // Metrics come out in name order.
        assert_eq!(
            agg[0],
            json!({"window_start_ms": T0, "device": "fridge-1", "metric": "energy_kwh",
                   "min": 10.0, "mean": 10.5, "max": 11.0, "count": 2})
        );
        assert_eq!(
            agg[1],
            json!({"window_start_ms": T0, "device": "fridge-1", "metric": "temperature",
                   "min": 3.0, "mean": 4.0, "max": 5.0, "count": 3})
        );
        assert_eq!(
            h.emitted_to(AGGREGATES_TOPIC)[0].key_str(),
            Some("fridge-1")
        );
    }

    #[test]
    fn devices_and_metrics_aggregate_separately() {
        let mut h = harness();
        read(&mut h, "a", T0, json!({"t": 1.0}));
        read(&mut h, "b", T0, json!({"t": 100.0}));
        read(&mut h, "a", T0 + MIN, json!({"t": 1.0}));
        let agg = aggregates(&h);
        assert_eq!(agg.len(), 1);
        assert_eq!(
            (agg[0]["device"].as_str(), agg[0]["max"].as_f64()),
            (Some("a"), Some(1.0))
        );
        assert_eq!(h.state_len(), 2);
    }

    #[test]
    fn text_values_and_bad_quality_records_are_ignored() {
        let mut h = harness();
        read(
            &mut h,
            "fridge-1",
            T0,
            json!({"status": "ok", "nested": {"x": 1}, "list": [1, 2]}),
        );
        assert_eq!(h.state_len(), 0);
        let value = json!({"ts_ms": T0, "device": "fridge-1", "values": {"temperature": 40.0}, "quality": "bad"});
        h.send_json("sensors.fridge", "fridge-1", &value).unwrap();
        assert_eq!(h.state_len(), 0);
        assert!(h.emitted().is_empty());
    }

    #[test]
    fn device_may_come_from_the_key() {
        let mut h = harness();
        h.send(
            "sensors.fridge",
            "fridge-9",
            format!(r#"{{"ts_ms": {T0}, "values": {{"t": 1}}}}"#),
        )
        .unwrap();
        assert_eq!(h.state_len(), 1);
        assert!(h.state(b"m/fridge-9\0t").is_some());
    }

    #[test]
    fn malformed_records_fail() {
        let mut h = harness();
        assert!(h.send("sensors.fridge", "d", "not json").is_err());
        assert!(h.send("sensors.fridge", "d", r#"{"ts_ms": 1}"#).is_err());
        assert!(h
            .send("sensors.fridge", "", r#"{"ts_ms": 1, "values": {}}"#)
            .is_err());
        assert!(h
            .send(
                "sensors.fridge",
                "d",
                r#"{"ts_ms": 1, "values": {}, "quality": "meh"}"#
            )
            .is_err());
        assert_eq!(h.dead_letters().len(), 4);
    }

    #[test]
    fn invalid_config_is_refused_at_init() {
        let err = Harness::<SensorWatch>::start(r#"{"metrics": {"t": {"min": 3, "max": 1}}}"#)
            .unwrap_err();
        assert!(err.message().contains("metrics.t"), "{err}");
    }
}
