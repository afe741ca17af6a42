//! `sensor-watch`: watches store telemetry (fridge and freezer temperatures, door states,
//! energy) arriving on sensor topics such as `sensors.fridge`, each record a device's `values`
//! object at `ts_ms`.
//!
//! For every numeric (or boolean, read as 1/0) value it keeps per-minute min/mean/max/count,
//! emitted to `sensor.1m` when a reading of a later minute arrives for the same device and
//! metric (event time, so replays give the same windows), and checks the min/max rule of the
//! device's class (fridge, freezer, ambient, door, energy, or one the config defines),
//! overridable per class, metric and device, with hysteresis and a minimum duration, emitting
//! `sensor.alerts` with `state` `raised` or `cleared` and the device's `class`. How a device
//! gets its class and a metric its rule: [`config`]. Text values are ignored; `bad`-quality
//! records are skipped unless configured otherwise. State: one 80-byte value per (device,
//! metric) under `m/<device>\0<metric>` (see [`track`]).
//!
//! When the rule a raised alert was raised under changes (config, class or a device
//! override), the device's next reading clears it first (`state: cleared`,
//! `reason: rule_changed`) and is then judged under the new rule.
//!
//! Durations and rule changes are judged when readings arrive: a sensor that stops reporting
//! neither raises, clears nor closes its last window until it reports again.

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
    /// Optional: the device's class, for sources that know it.
    #[serde(borrow, default)]
    class: Option<Cow<'a, str>>,
}

#[derive(Debug, Serialize)]
struct AlertOut<'a> {
    ts_ms: u64,
    device: &'a str,
    metric: &'a str,
    value: f64,
    threshold: f64,
    state: &'static str,
    class: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
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
        let own_class = reading.class.as_deref().filter(|c| !c.is_empty());
        if let Some(class) = own_class.filter(|c| !self.config.knows_class(c)) {
            ctx.log(
                Level::Warn,
                &format!(
                    "device {device} says it is of class {class:?}, which is not configured; \
                     classifying it by name, topic or default"
                ),
            );
        }
        let class = self
            .config
            .class_of(own_class, &device, record.topic)
            .to_owned();
        for (metric, value) in &reading.values {
            if let Some(value) = value.0 {
                self.observe(ctx, &device, &class, metric, ts_ms, value)?;
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
        class: &str,
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
        let rule = self.config.rule(device, class, metric);
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
                class,
                reason: t.reason,
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

    /// Fridges alarm after two minutes instead of one; freezer-1 has a rule of its own.
    const FRIDGE: &str = r#"{
        "class_rules": {"fridge": {"temperature": {"min": 0.0, "max": 5.0, "min_duration_ms": 120000}}},
        "devices": {"freezer-1": {"temperature": {"max": -15.0, "hysteresis": 1.0, "min_duration_ms": 0}}}
    }"#;

    fn harness() -> Harness<SensorWatch> {
        Harness::<SensorWatch>::start(FRIDGE)
            .unwrap()
            .allow_outputs(&[ALERTS_TOPIC, AGGREGATES_TOPIC])
    }

    fn read(h: &mut Harness<SensorWatch>, device: &str, ts_ms: u64, values: Value) {
        read_on(h, "sensors.fridge", device, ts_ms, values);
    }

    fn read_on(h: &mut Harness<SensorWatch>, topic: &str, device: &str, ts_ms: u64, values: Value) {
        let value = json!({"ts_ms": ts_ms, "device": device, "values": values, "quality": "good"});
        h.send_json(topic, device, &value).unwrap();
    }

    /// Readings of `temperature` on `topic` every `step_ms` from `from_ms` to `to_ms`.
    fn hold(
        h: &mut Harness<SensorWatch>,
        topic: &str,
        device: &str,
        temperature: f64,
        (from_ms, to_ms, step_ms): (u64, u64, u64),
    ) {
        let mut ts = from_ms;
        while ts <= to_ms {
            read_on(h, topic, device, ts, json!({ "temperature": temperature }));
            ts += step_ms;
        }
    }

    fn start(config: &str) -> Harness<SensorWatch> {
        Harness::<SensorWatch>::start(config)
            .unwrap()
            .allow_outputs(&[ALERTS_TOPIC, AGGREGATES_TOPIC])
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
                   "value": 7.0, "threshold": 5.0, "state": "raised", "class": "fridge"})
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
            r#"{"class_rules": {"fridge": {"temperature": {"min": 0.0, "min_duration_ms": 0}}}}"#,
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
    fn a_freezer_at_minus_18_does_not_alarm() {
        let mut h = start("{}");
        hold(
            &mut h,
            "sensors.freezer",
            "freezer-1",
            -18.0,
            (T0, T0 + 60 * MIN, MIN),
        );
        assert!(alerts(&h).is_empty(), "{:?}", alerts(&h));
        // The same reading from a fridge is too cold.
        hold(
            &mut h,
            "sensors.fridge",
            "fridge-1",
            -18.0,
            (T0, T0 + 2 * MIN, MIN),
        );
        assert_eq!(alerts(&h)[0]["threshold"], 0.0);
    }

    #[test]
    fn a_fridge_at_9_degrees_for_the_duration_alarms() {
        let mut h = start("{}");
        hold(
            &mut h,
            "sensors.fridge",
            "fridge-1",
            9.0,
            (T0, T0 + 50 * SEC, 10 * SEC),
        );
        assert!(alerts(&h).is_empty(), "under a minute");
        read(&mut h, "fridge-1", T0 + MIN, json!({"temperature": 9.0}));
        assert_eq!(
            alerts(&h),
            vec![
                json!({"ts_ms": T0 + MIN, "device": "fridge-1", "metric": "temperature",
                        "value": 9.0, "threshold": 5.0, "state": "raised", "class": "fridge"})
            ]
        );
    }

    #[test]
    fn the_class_comes_from_the_record_first() {
        let mut h = start("{}");
        let value = |ts_ms: u64, t: f64| {
            json!({"ts_ms": ts_ms, "device": "cab-3", "class": "freezer",
                   "values": {"temperature": t}, "quality": "good"})
        };
        for i in 0..=20 {
            h.send_json("sensors.fridge", "cab-3", &value(T0 + i * MIN, -18.0))
                .unwrap();
        }
        assert!(alerts(&h).is_empty(), "a freezer, whatever the topic says");
        for i in 21..=31 {
            h.send_json("sensors.fridge", "cab-3", &value(T0 + i * MIN, -5.0))
                .unwrap();
        }
        let a = alerts(&h);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0]["threshold"].as_f64(), a[0]["class"].as_str()),
            (Some(-15.0), Some("freezer"))
        );
        // A class nobody configured is logged and passed over: the topic decides.
        let odd = json!({"ts_ms": T0, "device": "cab-4", "class": "cryo",
                         "values": {"temperature": -18.0}, "quality": "good"});
        h.send_json("sensors.freezer", "cab-4", &odd).unwrap();
        assert!(h.logs().iter().any(|(_, m)| m.contains("cryo")));
    }

    #[test]
    fn the_class_comes_from_a_naming_rule_before_the_topic() {
        let mut h = start(r#"{"classes": {"frz-*": "freezer"}}"#);
        hold(
            &mut h,
            "sensors.fridge",
            "frz-2",
            -18.0,
            (T0, T0 + 20 * MIN, MIN),
        );
        assert!(alerts(&h).is_empty());
        hold(
            &mut h,
            "sensors.fridge",
            "cab-2",
            -18.0,
            (T0, T0 + 2 * MIN, MIN),
        );
        assert_eq!(alerts(&h)[0]["class"], "fridge", "the topic's class");
    }

    #[test]
    fn the_class_comes_from_the_topic_then_the_default() {
        let mut h = start(r#"{"default_class": "ambient"}"#);
        hold(
            &mut h,
            "sensors.freezer-aisle-2",
            "d-1",
            -18.0,
            (T0, T0 + 20 * MIN, MIN),
        );
        assert!(alerts(&h).is_empty(), "sensors.freezer* is freezers");
        hold(&mut h, "sensors.misc", "d-2", 5.0, (T0, T0 + 15 * MIN, MIN));
        let a = alerts(&h);
        assert_eq!(
            (a[0]["class"].as_str(), a[0]["threshold"].as_f64()),
            (Some("ambient"), Some(10.0))
        );
    }

    #[test]
    fn hysteresis_and_duration_are_per_class() {
        let mut h = start("{}");
        // Freezer: above -15 °C for ten minutes; clears at -16 (hysteresis 1).
        hold(
            &mut h,
            "sensors.freezer",
            "f",
            -13.0,
            (T0, T0 + 9 * MIN, MIN),
        );
        assert!(alerts(&h).is_empty());
        read_on(
            &mut h,
            "sensors.freezer",
            "f",
            T0 + 10 * MIN,
            json!({"temperature": -13.0}),
        );
        assert_eq!(alerts(&h).len(), 1);
        read_on(
            &mut h,
            "sensors.freezer",
            "f",
            T0 + 11 * MIN,
            json!({"temperature": -15.5}),
        );
        assert_eq!(alerts(&h).len(), 1, "inside the 1 °C hysteresis");
        read_on(
            &mut h,
            "sensors.freezer",
            "f",
            T0 + 12 * MIN,
            json!({"temperature": -16.5}),
        );
        assert_eq!(alerts(&h)[1]["state"], "cleared");
        // Ambient: above 30 °C for fifteen minutes; clears at 29.
        hold(
            &mut h,
            "sensors.ambient",
            "a",
            31.0,
            (T0, T0 + 14 * MIN, MIN),
        );
        assert_eq!(alerts(&h).len(), 2);
        read_on(
            &mut h,
            "sensors.ambient",
            "a",
            T0 + 15 * MIN,
            json!({"temperature": 31.0}),
        );
        read_on(
            &mut h,
            "sensors.ambient",
            "a",
            T0 + 16 * MIN,
            json!({"temperature": 29.5}),
        );
        assert_eq!(alerts(&h).len(), 3);
        read_on(
            &mut h,
            "sensors.ambient",
            "a",
            T0 + 17 * MIN,
            json!({"temperature": 28.9}),
        );
        assert_eq!(alerts(&h)[3]["state"], "cleared");
        // Energy: above 3.5 kW for five minutes; clears at 3.25 kW.
        for i in 0..=5 {
            read_on(
                &mut h,
                "sensors.energy",
                "e",
                T0 + i * MIN,
                json!({"power_w": 4000}),
            );
        }
        read_on(
            &mut h,
            "sensors.energy",
            "e",
            T0 + 6 * MIN,
            json!({"power_w": 3300}),
        );
        read_on(
            &mut h,
            "sensors.energy",
            "e",
            T0 + 7 * MIN,
            json!({"power_w": 3200}),
        );
        let energy: Vec<Value> = alerts(&h)
            .into_iter()
            .filter(|a| a["device"] == "e")
            .collect();
        assert_eq!(energy.len(), 2, "{energy:?}");
        assert_eq!(
            (energy[0]["ts_ms"].as_u64(), energy[0]["threshold"].as_f64()),
            (Some(T0 + 5 * MIN), Some(3500.0))
        );
        assert_eq!(
            (energy[1]["ts_ms"].as_u64(), energy[1]["state"].as_str()),
            (Some(T0 + 7 * MIN), Some("cleared"))
        );
    }

    #[test]
    fn an_alert_raised_under_an_old_rule_is_cleared_after_the_rule_changes() {
        // The freezer reports on a generic topic: the default class (fridge) calls it too cold.
        let mut h = start("{}");
        hold(
            &mut h,
            "sensors.misc",
            "freezer-1",
            -18.0,
            (T0, T0 + MIN, MIN),
        );
        assert_eq!(alerts(&h)[0]["state"], "raised");
        // The operator adds a naming rule; the plugin is initialised again, state kept.
        h.init(r#"{"classes": {"freezer-*": "freezer"}}"#).unwrap();
        hold(
            &mut h,
            "sensors.misc",
            "freezer-1",
            -18.0,
            (T0 + 2 * MIN, T0 + 30 * MIN, MIN),
        );
        let a = alerts(&h);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(
            a[1],
            json!({"ts_ms": T0 + 2 * MIN, "device": "freezer-1", "metric": "temperature",
                   "value": -18.0, "threshold": 0.0, "state": "cleared", "class": "freezer",
                   "reason": "rule_changed"})
        );
        // A device override that moves the bound clears too, then raises under the new rule.
        h.init(
            r#"{"classes": {"freezer-*": "freezer"},
                "devices": {"freezer-1": {"temperature": {"max": -20.0, "min_duration_ms": 0}}}}"#,
        )
        .unwrap();
        read_on(
            &mut h,
            "sensors.misc",
            "freezer-1",
            T0 + 31 * MIN,
            json!({"temperature": -18.0}),
        );
        let a = alerts(&h);
        assert_eq!(
            a.len(),
            3,
            "nothing was raised, so nothing to clear; raised at once"
        );
        assert_eq!(
            (a[2]["state"].as_str(), a[2]["threshold"].as_f64()),
            (Some("raised"), Some(-20.0))
        );
        h.init(r#"{"classes": {"freezer-*": "freezer"}}"#).unwrap();
        read_on(
            &mut h,
            "sensors.misc",
            "freezer-1",
            T0 + 32 * MIN,
            json!({"temperature": -18.0}),
        );
        let a = alerts(&h);
        assert_eq!(a.len(), 4);
        assert_eq!(
            (
                a[3]["state"].as_str(),
                a[3]["threshold"].as_f64(),
                a[3]["reason"].as_str()
            ),
            (Some("cleared"), Some(-20.0), Some("rule_changed"))
        );
    }

    #[test]
    fn an_unknown_class_is_refused_naming_the_key() {
        let err = Harness::<SensorWatch>::start(r#"{"classes": {"f-*": "freezr"}}"#).unwrap_err();
        assert!(err.message().contains(r#"classes."f-*""#), "{err}");
        let err = Harness::<SensorWatch>::start(r#"{"default_clas": "freezer"}"#).unwrap_err();
        assert!(err.message().contains("default_clas"), "{err}");
    }

    #[test]
    fn unreadable_state_starts_afresh() {
        let mut h = start("{}");
        h.set_state(b"m/fridge-1\0temperature", b"\x07junk");
        read(&mut h, "fridge-1", T0, json!({"temperature": 3.0}));
        assert_eq!(h.state(b"m/fridge-1\0temperature").unwrap().len(), 80);
    }

    #[test]
    fn invalid_config_is_refused_at_init() {
        let err = Harness::<SensorWatch>::start(r#"{"metrics": {"t": {"min": 3, "max": 1}}}"#)
            .unwrap_err();
        assert!(err.message().contains("metrics.t"), "{err}");
    }
}
