//! The sensor-watch configuration (the manifest's `[config]` table): the aggregation window,
//! default hysteresis and duration, device classes with their built-in rules, and min/max rules
//! per class, per metric and per device. Every key is optional (a box config may override a few
//! of the manifest's keys); unknown keys are refused, naming the key.
//!
//! ```toml
//! [config]
//! hysteresis = 0.5            # for rules that set none
//! min_duration_ms = 60000     # for rules that set none
//! default_class = "fridge"    # devices nothing else classifies
//!
//! [config.classes]            # device name (glob) → class
//! "freezer-*" = "freezer"
//!
//! [config.topic_classes]      # topic name (glob) → class; replaces the built-in list
//! "sensors.freezer*" = "freezer"
//!
//! [config.class_rules.freezer.temperature]   # tunes a class (or defines a new one)
//! max = -12.0
//!
//! [config.metrics.humidity]   # every device whose class has no humidity rule
//! max = 85.0
//!
//! [config.devices."freezer-2".temperature]   # this device's own rule
//! max = -15.0
//! hysteresis = 1.0
//! ```
//!
//! **A device's class**, first that applies: (a) the record's optional `class` field, when it
//! names a known class (an unknown one is logged and skipped); (b) the most specific `classes`
//! pattern matching the device name; (c) the most specific `topic_classes` pattern matching
//! the record's topic; (d) `default_class`. "Most specific" is the pattern with the most
//! characters that are not wildcards; equal ones go by the patterns' sorted order.
//!
//! **A metric's rule**, most specific first: `devices.<device>.<metric>`,
//! `class_rules.<class>.<metric>`, the built-in rule of the class ([`BUILTIN_RULES`]),
//! `metrics.<metric>`. The most specific rule that exists gives `min` and `max` (as a pair: a
//! device rule with only `max` has no `min`); `hysteresis` and `min_duration_ms` come from the
//! most specific rule that sets them, else from the top-level defaults.

use std::collections::BTreeMap;

use outpost_sdk::Error;
use serde::Deserialize;

/// Everything that tunes sensor-watch. Every field has a default; unknown keys are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Aggregation window for `sensor.1m`, milliseconds (event time, aligned to the epoch).
    pub window_ms: u64,
    /// Default hysteresis for rules that set none: how far back past the threshold a value
    /// must go to clear an alert.
    pub hysteresis: f64,
    /// Default time a value must stay past the threshold before the alert is raised, for rules
    /// that set none, milliseconds.
    pub min_duration_ms: u64,
    /// Ignore records whose `quality` is `bad` (they neither aggregate nor alert).
    pub skip_bad_quality: bool,
    /// The class of devices that neither the record, `classes` nor `topic_classes` classify.
    /// `none` gives them no class rules (only `metrics` and `devices`).
    pub default_class: String,
    /// Device name patterns (`*` any characters, `?` one) → class.
    pub classes: BTreeMap<String, String>,
    /// Topic name patterns → class. Setting it replaces the built-in list
    /// ([`default_topic_classes`]: `sensors.fridge*` → fridge, `sensors.freezer*` → freezer,
    /// and so on for ambient, door and energy).
    pub topic_classes: BTreeMap<String, String>,
    /// Rules per class, then metric name: they replace the built-in rule of that class and
    /// metric; a class not built in is defined by naming it here.
    pub class_rules: BTreeMap<String, BTreeMap<String, Rule>>,
    /// Rules per metric name, for every device whose class has no rule for the metric.
    pub metrics: BTreeMap<String, Rule>,
    /// Rules per device, then metric name; they replace the class's and the metric's rule.
    pub devices: BTreeMap<String, BTreeMap<String, Rule>>,
}

/// Thresholds for one metric. A value above `max` or below `min` (strictly) for at least the
/// minimum duration raises an alert; it clears once the value is back inside by at least the
/// hysteresis (a door sensor: `max = 0.5`, hysteresis 0.5, clears at 0).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Lower bound, if any.
    pub min: Option<f64>,
    /// Upper bound, if any.
    pub max: Option<f64>,
    /// Overrides the default hysteresis.
    pub hysteresis: Option<f64>,
    /// Overrides the default minimum duration, milliseconds.
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

impl Resolved {
    /// A fingerprint of the rule (FNV-1a over its four values), stored with the alert state so
    /// a reading under a changed rule can clear what the old rule raised. Never 0, which the
    /// track uses for "no rule".
    pub fn fingerprint(&self) -> u64 {
        let mut bytes = Vec::with_capacity(34);
        for bound in [self.min, self.max] {
            match bound {
                Some(v) => {
                    bytes.push(1);
                    bytes.extend_from_slice(&v.to_bits().to_le_bytes());
                }
                None => bytes.push(0),
            }
        }
        bytes.extend_from_slice(&self.hysteresis.to_bits().to_le_bytes());
        bytes.extend_from_slice(&self.min_duration_ms.to_le_bytes());
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash.max(1)
    }
}

const fn rule(min: Option<f64>, max: Option<f64>, hysteresis: f64, duration_ms: u64) -> Rule {
    Rule {
        min,
        max,
        hysteresis: Some(hysteresis),
        min_duration_ms: Some(duration_ms),
    }
}

const MINUTE: u64 = 60_000;

/// The built-in rules: (class, metric, rule). Temperatures in °C, humidity in %, power in W.
pub const BUILTIN_RULES: &[(&str, &str, Rule)] = &[
    // Chilled cabinets: 0–5 °C, for a minute; the door open for five.
    (
        "fridge",
        "temperature",
        rule(Some(0.0), Some(5.0), 0.5, MINUTE),
    ),
    (
        "fridge",
        "door_open",
        rule(None, Some(0.5), 0.5, 5 * MINUTE),
    ),
    // Freezers: −25…−15 °C, for ten minutes (a defrost cycle warms the air briefly); the door
    // open for two.
    (
        "freezer",
        "temperature",
        rule(Some(-25.0), Some(-15.0), 1.0, 10 * MINUTE),
    ),
    (
        "freezer",
        "door_open",
        rule(None, Some(0.5), 0.5, 2 * MINUTE),
    ),
    // The sales floor and back rooms: 10–30 °C and 20–80 % humidity, for a quarter of an hour
    // and half an hour.
    (
        "ambient",
        "temperature",
        rule(Some(10.0), Some(30.0), 1.0, 15 * MINUTE),
    ),
    (
        "ambient",
        "humidity",
        rule(Some(20.0), Some(80.0), 5.0, 30 * MINUTE),
    ),
    // Door contacts (entrances, cold rooms): open for five minutes.
    ("door", "door_open", rule(None, Some(0.5), 0.5, 5 * MINUTE)),
    // Energy meters: more than 3.5 kW (a 16 A circuit at 230 V) for five minutes.
    (
        "energy",
        "power_w",
        rule(None, Some(3500.0), 250.0, 5 * MINUTE),
    ),
];

/// The built-in classes; `none` has no rules.
pub const BUILTIN_CLASSES: &[&str] = &["ambient", "door", "energy", "freezer", "fridge", "none"];

/// The built-in `topic_classes`: `sensors.<class>*` → class.
pub fn default_topic_classes() -> BTreeMap<String, String> {
    ["fridge", "freezer", "ambient", "door", "energy"]
        .iter()
        .map(|c| (format!("sensors.{c}*"), (*c).to_owned()))
        .collect()
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            window_ms: 60_000,
            hysteresis: 0.5,
            min_duration_ms: 60_000,
            skip_bad_quality: true,
            default_class: "fridge".to_owned(),
            classes: BTreeMap::new(),
            topic_classes: default_topic_classes(),
            class_rules: BTreeMap::new(),
            metrics: BTreeMap::new(),
            devices: BTreeMap::new(),
        }
    }
}

/// Whether `name` matches the glob `pattern` (`*` any run of characters, `?` one character).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was and which name position it is trying to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The class of the most specific pattern in `patterns` matching `name`.
fn best_match<'a>(patterns: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    let literal = |p: &str| p.chars().filter(|c| *c != '*' && *c != '?').count();
    let mut best: Option<(usize, &str)> = None;
    for (pattern, class) in patterns {
        if glob_matches(pattern, name) {
            let score = literal(pattern);
            if best.map_or(true, |(s, _)| score > s) {
                best = Some((score, class));
            }
        }
    }
    best.map(|(_, class)| class)
}

impl SensorConfig {
    /// Whether `class` is built in or defined in `class_rules`.
    pub fn knows_class(&self, class: &str) -> bool {
        BUILTIN_CLASSES.contains(&class) || self.class_rules.contains_key(class)
    }

    /// The class of a device (precedence in the module doc). `from_record` is the record's
    /// own `class` field; an unknown one is passed over (the caller logs it).
    pub fn class_of<'a>(
        &'a self,
        from_record: Option<&'a str>,
        device: &str,
        topic: &str,
    ) -> &'a str {
        if let Some(class) = from_record.filter(|c| self.knows_class(c)) {
            return class;
        }
        best_match(&self.classes, device)
            .or_else(|| best_match(&self.topic_classes, topic))
            .unwrap_or(&self.default_class)
    }

    /// The rule for `metric` on `device` of `class`, if any (precedence in the module doc).
    pub fn rule(&self, device: &str, class: &str, metric: &str) -> Option<Resolved> {
        let builtin = BUILTIN_RULES
            .iter()
            .find(|(c, m, _)| *c == class && *m == metric)
            .map(|(_, _, r)| r);
        let chain = [
            self.devices.get(device).and_then(|rules| rules.get(metric)),
            self.class_rules
                .get(class)
                .and_then(|rules| rules.get(metric)),
            builtin,
            self.metrics.get(metric),
        ];
        let mut rules = chain.iter().flatten();
        let first = rules.clone().next()?;
        Some(Resolved {
            min: first.min,
            max: first.max,
            hysteresis: rules
                .clone()
                .find_map(|r| r.hysteresis)
                .unwrap_or(self.hysteresis),
            min_duration_ms: rules
                .find_map(|r| r.min_duration_ms)
                .unwrap_or(self.min_duration_ms),
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
        let unknown = |key: String, class: &str| {
            let mut known: Vec<&str> = BUILTIN_CLASSES.to_vec();
            known.extend(self.class_rules.keys().map(String::as_str));
            known.sort_unstable();
            Error::new(format!(
                "config `{key}`: unknown class {class:?}; the classes are {} (define another \
                 under `class_rules.<class>`)",
                known.join(", ")
            ))
        };
        if !self.knows_class(&self.default_class) {
            return Err(unknown("default_class".to_owned(), &self.default_class));
        }
        for (table, patterns) in [
            ("classes", &self.classes),
            ("topic_classes", &self.topic_classes),
        ] {
            for (pattern, class) in patterns {
                let key = format!("{table}.\"{pattern}\"");
                if pattern.is_empty() {
                    return Err(Error::new(format!(
                        "config `{table}`: a pattern must not be empty"
                    )));
                }
                if !self.knows_class(class) {
                    return Err(unknown(key, class));
                }
            }
        }
        if self.class_rules.keys().any(String::is_empty) {
            return Err(Error::new(
                "config `class_rules`: a class name must not be empty",
            ));
        }
        let rule_tables = [
            ("class_rules", &self.class_rules),
            ("devices", &self.devices),
        ];
        let general = self
            .metrics
            .iter()
            .map(|(m, r)| (format!("metrics.{m}"), r));
        let nested = rule_tables.into_iter().flat_map(|(table, map)| {
            map.iter().flat_map(move |(name, rules)| {
                rules
                    .iter()
                    .map(move |(m, r)| (format!("{table}.{name}.{m}"), r))
            })
        });
        for (path, rule) in general.chain(nested) {
            check_rule(&path, rule)?;
        }
        Ok(())
    }
}

fn check_rule(path: &str, rule: &Rule) -> Result<(), Error> {
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
    Ok(())
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
            r#"{"hysteresis": 0.3, "default_class": "none", "metrics": {"temperature": {"max": 5.0}},
                "devices": {"freezer-2": {"temperature": {"max": -15.0, "min_duration_ms": 0}}}}"#,
        );
        c.validate().unwrap();
        let general = c.rule("fridge-1", "none", "temperature").unwrap();
        assert_eq!(
            (general.max, general.hysteresis, general.min_duration_ms),
            (Some(5.0), 0.3, 60_000)
        );
        let own = c.rule("freezer-2", "none", "temperature").unwrap();
        assert_eq!((own.max, own.min_duration_ms), (Some(-15.0), 0));
        assert!(c.rule("fridge-1", "none", "humidity").is_none());
    }

    #[test]
    fn class_rules_come_between_the_device_and_the_built_in_rule() {
        let c = parse(
            r#"{"class_rules": {"freezer": {"temperature": {"max": -12.0}},
                                "walk-in": {"temperature": {"min": 0.0, "max": 4.0}}},
                "metrics": {"temperature": {"max": 99.0}, "humidity": {"max": 85.0}},
                "devices": {"f-9": {"temperature": {"min": -30.0, "hysteresis": 2.0}}}}"#,
        );
        c.validate().unwrap();
        let tuned = c.rule("f-1", "freezer", "temperature").unwrap();
        // The bounds come as a pair from the class rule; hysteresis and duration from the
        // built-in freezer rule, which sets them.
        assert_eq!(
            tuned,
            Resolved {
                min: None,
                max: Some(-12.0),
                hysteresis: 1.0,
                min_duration_ms: 600_000
            }
        );
        let own = c.rule("f-9", "freezer", "temperature").unwrap();
        assert_eq!((own.min, own.max, own.hysteresis), (Some(-30.0), None, 2.0));
        assert_eq!(
            c.rule("w", "walk-in", "temperature").unwrap().max,
            Some(4.0)
        );
        assert_eq!(c.rule("w", "fridge", "humidity").unwrap().max, Some(85.0));
        assert!(c.rule("w", "fridge", "power_w").is_none());
    }

    #[test]
    fn class_precedence_is_record_then_device_name_then_topic_then_default() {
        let c = parse(
            r#"{"classes": {"cab-*": "freezer", "cab-7": "ambient"}, "default_class": "door"}"#,
        );
        c.validate().unwrap();
        assert_eq!(
            c.class_of(Some("energy"), "cab-1", "sensors.fridge"),
            "energy"
        );
        assert_eq!(
            c.class_of(Some("bogus"), "cab-1", "sensors.fridge"),
            "freezer"
        );
        assert_eq!(
            c.class_of(None, "cab-7", "sensors.x"),
            "ambient",
            "most specific"
        );
        assert_eq!(
            c.class_of(None, "d-1", "sensors.freezer-aisle-3"),
            "freezer"
        );
        assert_eq!(c.class_of(None, "d-1", "sensors.misc"), "door");
    }

    #[test]
    fn globs_match_stars_and_question_marks() {
        assert!(glob_matches("freezer-*", "freezer-12"));
        assert!(glob_matches("freezer-*", "freezer-"));
        assert!(!glob_matches("freezer-*", "fridge-1"));
        assert!(glob_matches("*-?", "aisle-3"));
        assert!(!glob_matches("*-?", "aisle-33"));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(glob_matches("exact", "exact") && !glob_matches("exact", "exact2"));
    }

    #[test]
    fn an_unknown_class_is_refused_naming_the_key() {
        for (json, key) in [
            (r#"{"default_class": "freezr"}"#, "default_class"),
            (r#"{"classes": {"f-*": "freezr"}}"#, "classes.\"f-*\""),
            (
                r#"{"topic_classes": {"sensors.x": "cold"}}"#,
                "topic_classes.\"sensors.x\"",
            ),
        ] {
            let err = parse(json).validate().unwrap_err();
            assert!(err.message().contains(key), "{err}");
            assert!(err.message().contains("unknown class"), "{err}");
        }
        parse(r#"{"classes": {"f-*": "cold"}, "class_rules": {"cold": {"t": {"max": 1.0}}}}"#)
            .validate()
            .unwrap();
    }

    #[test]
    fn inverted_bounds_name_the_rule() {
        let c = parse(r#"{"devices": {"d1": {"t": {"min": 5.0, "max": 1.0}}}}"#);
        assert!(c.validate().unwrap_err().message().contains("devices.d1.t"));
        let c = parse(r#"{"class_rules": {"fridge": {"t": {"min": 5.0, "max": 1.0}}}}"#);
        assert!(c
            .validate()
            .unwrap_err()
            .message()
            .contains("class_rules.fridge.t"));
    }

    #[test]
    fn rule_without_bounds_is_refused() {
        let c = parse(r#"{"metrics": {"t": {"hysteresis": 1.0}}}"#);
        assert!(c.validate().unwrap_err().message().contains("metrics.t"));
    }

    #[test]
    fn the_built_in_rules_are_valid_and_fingerprints_tell_rules_apart() {
        for (class, metric, rule) in BUILTIN_RULES {
            assert!(BUILTIN_CLASSES.contains(class));
            check_rule(&format!("{class}.{metric}"), rule).unwrap();
        }
        SensorConfig::default().validate().unwrap();
        let c = SensorConfig::default();
        let fridge = c.rule("x", "fridge", "temperature").unwrap();
        let freezer = c.rule("x", "freezer", "temperature").unwrap();
        assert_ne!(fridge.fingerprint(), freezer.fingerprint());
        assert_eq!(fridge.fingerprint(), fridge.fingerprint());
        let wider = Resolved {
            hysteresis: 0.6,
            ..fridge
        };
        assert_ne!(fridge.fingerprint(), wider.fingerprint());
    }

    #[test]
    fn a_partial_config_keeps_the_other_defaults_and_unknown_keys_are_named() {
        let c = parse(r#"{"window_ms": 30000}"#);
        assert_eq!(c.default_class, "fridge");
        assert_eq!(c.topic_classes, default_topic_classes());
        let err = outpost_sdk::Config::new(&br#"{"class": "fridge"}"#[..])
            .parse::<SensorConfig>()
            .unwrap_err();
        assert!(err.message().contains("class"), "{err}");
    }
}
