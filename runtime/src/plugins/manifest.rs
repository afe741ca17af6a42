//! The plugin manifest (`plugin.toml` next to the `.wasm`): name, version, input and output
//! topics, whether the plugin keeps state, its config table (passed to `outpost_init` as JSON)
//! and the limits it asks for (capped by the box's `[plugins]` config).
//!
//! # The file
//! ```toml
//! name = "fraud-score"          # [a-z0-9-], 1 to 64 characters
//! version = "0.1.0"             # 1 to 64 of [A-Za-z0-9.+_-]
//! description = "Scores card payments."   # optional, at most 512 characters
//! inputs = ["pos.payments", "sensors.*"]  # at least one topic name or `prefix*` pattern
//! outputs = ["fraud.scores"]    # exact topic names; the only topics it may emit to
//! state = true                  # whether it may use key-value state (default false)
//!
//! [config]                      # any table; handed to `outpost_init` as JSON
//! alert_threshold = 70
//!
//! [limits]                      # optional; the box config caps each
//! memory_mib = 32
//! deadline_ms = 100
//! output_records_per_input = 16     # emits of one call (ABI maximum 1024)
//! output_bytes_per_input = 65536    # bytes emitted by one call (ABI maximum 8 MiB)
//! output_records_per_sec = 5000     # emitted records per second, over the last second
//! output_bytes_per_sec = 1048576    # emitted bytes per second
//! state_mib = 64                # state quota: key + value bytes, in MiB
//! state_keys = 1000000          # state quota: keys
//! ```
//!
//! Outputs are the plugin's to write, and only some topics can be: names starting with
//! `outpost.` belong to the box (`outpost.gaps`, `outpost.audit`, …) and names ending in `.dlq`
//! are dead-letter topics, which only the host writes; a manifest naming one as an output is
//! refused. An output that is also an (exact) input would feed the plugin its own records
//! forever and is refused too. Which outputs another plugin or a source already writes is the
//! registry's check (it sees every plugin), not the manifest's.
//!
//! An input ending in `*` is a prefix pattern, as in `[log.topics]`: `sensors.*` matches every
//! topic whose name starts with `sensors.` (see [`Manifest::input_matches`]). [`Manifest::parse`]
//! refuses anything else with an error that names the key (`inputs[1]`, `limits.memory_mib`).

use serde::{Deserialize, Serialize};

use crate::log::validate_topic_name;

/// Longest plugin name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest version string.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 512;

/// Errors of reading a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not TOML, or keys/types that do not match the schema (the message shows the line).
    #[error("plugin.toml: {0}")]
    Parse(String),
    /// A value breaks a rule; `key` is the dotted key, e.g. `inputs[0]`.
    #[error("plugin.toml: invalid `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// A parsed `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name: `[a-z0-9-]`, 1..=64 chars; also its state namespace and the prefix of its
    /// dead-letter topic `<name>.dlq`.
    pub name: String,
    /// Version string (semver-like, informational).
    pub version: String,
    /// One line saying what the plugin does (informational).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Input topics, consumed in order, each from the plugin's committed offset. An entry
    /// ending in `*` is a prefix pattern (`sensors.*`).
    pub inputs: Vec<String>,
    /// The only topics the plugin may emit to.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Whether the plugin may use key-value state.
    #[serde(default)]
    pub state: bool,
    /// Free-form table handed to the plugin's `outpost_init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Limits the plugin asks for; the box config caps them.
    #[serde(default)]
    pub limits: ManifestLimits,
}

/// Limits a plugin asks for. `None` means the box default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Linear memory cap in MiB.
    pub memory_mib: Option<u64>,
    /// CPU deadline per call in milliseconds.
    pub deadline_ms: Option<u64>,
    /// State quota in MiB: the most key plus value bytes, summed over the plugin's keys, its
    /// state may hold; a `state_put` past it gets `QUOTA` (`sdk/ABI.md`, section 10).
    pub state_mib: Option<u64>,
    /// State quota in keys: the most keys the plugin's state may hold.
    pub state_keys: Option<u64>,
    /// Most records one call (one input record) may emit; more are refused (`TOO_LARGE`).
    pub output_records_per_input: Option<u64>,
    /// Most bytes (key + value + header block) one call may emit; more are refused.
    pub output_bytes_per_input: Option<u64>,
    /// Most records the plugin may emit within one second; past it the plugin is quarantined.
    pub output_records_per_sec: Option<u64>,
    /// Most bytes the plugin may emit within one second; past it the plugin is quarantined.
    pub output_bytes_per_sec: Option<u64>,
}

/// Whether `topic` is reserved for the box: the `outpost.*` namespace and every dead-letter
/// topic (`*.dlq`). No plugin may declare one as an output.
pub fn reserved_topic(topic: &str) -> Option<&'static str> {
    if topic.starts_with("outpost.") {
        Some("topics named `outpost.*` belong to the box")
    } else if topic.ends_with(".dlq") {
        Some("topics named `*.dlq` are dead-letter topics, which only the host writes")
    } else {
        None
    }
}

impl Manifest {
    /// Parses and validates a `plugin.toml`.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| ManifestError::Parse(e.to_string().trim_end().into()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every rule of the module doc; the error names the key.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if let Some(problem) = name_problem(&self.name) {
            return Err(invalid("name", format!("{:?} {problem}", self.name)));
        }
        let version_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-');
        if self.version.is_empty()
            || self.version.len() > MAX_VERSION_LEN
            || !self.version.chars().all(version_ok)
        {
            return Err(invalid(
                "version",
                format!(
                    "{:?} must be 1 to {MAX_VERSION_LEN} of letters, digits, '.', '+', '_' or '-' \
                     (e.g. \"1.2.0\")",
                    self.version
                ),
            ));
        }
        if self.description.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(invalid(
                "description",
                format!("is longer than {MAX_DESCRIPTION_LEN} characters"),
            ));
        }
        if self.inputs.is_empty() {
            return Err(invalid(
                "inputs",
                "is empty; a plugin needs at least one input topic, e.g. inputs = [\"pos.payments\"]",
            ));
        }
        for (i, input) in self.inputs.iter().enumerate() {
            let key = format!("inputs[{i}]");
            let name = input.strip_suffix('*').unwrap_or(input);
            validate_topic_name(name).map_err(|e| {
                invalid(
                    &key,
                    format!("{input:?} is not a topic name or `prefix*` pattern: {e}"),
                )
            })?;
            if self.inputs[..i].contains(input) {
                return Err(invalid(key, format!("{input:?} is listed twice")));
            }
        }
        let dlq = self.dead_letter_topic();
        for (i, output) in self.outputs.iter().enumerate() {
            let key = format!("outputs[{i}]");
            validate_topic_name(output)
                .map_err(|e| invalid(&key, format!("{output:?} is not a topic name: {e}")))?;
            if self.outputs[..i].contains(output) {
                return Err(invalid(key, format!("{output:?} is listed twice")));
            }
            if *output == dlq {
                return Err(invalid(
                    key,
                    format!(
                        "{output:?} is the plugin's dead-letter topic, which only the host writes"
                    ),
                ));
            }
            if let Some(why) = reserved_topic(output) {
                return Err(invalid(
                    key,
                    format!("{output:?} cannot be a plugin's output: {why}"),
                ));
            }
            if self.inputs.contains(output) {
                return Err(invalid(
                    key,
                    format!(
                        "{output:?} is also an input: the plugin would read its own records \
                         forever; write to another topic"
                    ),
                ));
            }
            // An output matched by one of the plugin's own `prefix*` inputs is fine: the
            // runner never feeds a plugin its own outputs through a pattern.
        }
        if self.inputs.contains(&dlq) {
            return Err(invalid(
                "inputs",
                format!("{dlq:?} is the plugin's own dead-letter topic; it cannot consume it"),
            ));
        }
        for (key, value) in [
            ("limits.memory_mib", self.limits.memory_mib),
            ("limits.deadline_ms", self.limits.deadline_ms),
            (
                "limits.output_records_per_input",
                self.limits.output_records_per_input,
            ),
            (
                "limits.output_bytes_per_input",
                self.limits.output_bytes_per_input,
            ),
            (
                "limits.output_records_per_sec",
                self.limits.output_records_per_sec,
            ),
            (
                "limits.output_bytes_per_sec",
                self.limits.output_bytes_per_sec,
            ),
            ("limits.state_mib", self.limits.state_mib),
            ("limits.state_keys", self.limits.state_keys),
        ] {
            if value == Some(0) {
                return Err(invalid(
                    key,
                    "must be greater than 0; leave it out for the box default",
                ));
            }
        }
        check_json_compatible("config", &toml::Value::Table(self.config.clone()))?;
        Ok(())
    }

    /// The plugin's dead-letter topic, `<name>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.name)
    }

    /// Whether `topic` is one of the inputs, exactly or through a `prefix*` pattern.
    pub fn input_matches(&self, topic: &str) -> bool {
        self.inputs
            .iter()
            .any(|input| match input.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => input == topic,
            })
    }

    /// Whether the plugin may emit to `topic`.
    pub fn may_emit_to(&self, topic: &str) -> bool {
        self.outputs.iter().any(|o| o == topic)
    }

    /// This manifest with the box's settings for the plugin (`[plugins.<name>.config]`) laid
    /// over its `[config]`: tables merge key by key, any other value replaces the manifest's.
    pub fn with_settings(&self, settings: &toml::Table) -> Manifest {
        fn merge(base: &mut toml::Table, over: &toml::Table) {
            for (key, value) in over {
                match (base.get_mut(key), value) {
                    (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
                    _ => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        let mut effective = self.clone();
        merge(&mut effective.config, settings);
        effective
    }

    /// The `[config]` table as JSON bytes for `outpost_init` (`{}` when there is none).
    /// TOML datetimes become their RFC 3339 strings.
    pub fn config_json(&self) -> Vec<u8> {
        toml_to_json(&toml::Value::Table(self.config.clone()))
            .to_string()
            .into_bytes()
    }
}

/// Why `name` is not a valid plugin name, if it is not.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        Some("must be 1 to 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may only contain a-z, 0-9 and '-'")
    } else if name.starts_with('-') {
        Some("must not start with '-'")
    } else {
        None
    }
}

/// JSON has no NaN or infinity; refuse them with the key instead of sending `null`.
fn check_json_compatible(key: &str, value: &toml::Value) -> Result<(), ManifestError> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Err(invalid(
            key,
            format!("{f} cannot be passed to the plugin as JSON; use a finite number"),
        )),
        toml::Value::Table(table) => {
            for (k, v) in table {
                check_json_compatible(&format!("{key}.{k}"), v)?;
            }
            Ok(())
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_json_compatible(&format!("{key}[{i}]"), v)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => J::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "fraud-score"
version = "0.1.0"
description = "Scores payments."
inputs = ["pos.payments", "sensors.*"]
outputs = ["fraud.scores", "fraud.alerts"]
state = true

[config]
alert_threshold = 70
when = 1979-05-27T07:32:00Z
[config.weights]
blocklisted = 100.0

[limits]
memory_mib = 32
deadline_ms = 100
state_mib = 16
state_keys = 5000
"#;

    fn with(replace: &str, by: &str) -> String {
        assert!(GOOD.contains(replace), "fixture lacks {replace}");
        GOOD.replacen(replace, by, 1)
    }

    fn error_key(text: &str) -> String {
        match Manifest::parse(text).unwrap_err() {
            ManifestError::Invalid { key, .. } => key,
            other => panic!("expected an invalid key, got {other}"),
        }
    }

    #[test]
    fn a_complete_manifest_parses_with_every_field() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.name, "fraud-score");
        assert_eq!(m.inputs, ["pos.payments", "sensors.*"]);
        assert_eq!(m.outputs.len(), 2);
        assert!(m.state);
        assert_eq!(m.limits.memory_mib, Some(32));
        assert_eq!(m.limits.deadline_ms, Some(100));
        assert_eq!(m.limits.state_mib, Some(16));
        assert_eq!(m.limits.state_keys, Some(5000));
        assert_eq!(m.dead_letter_topic(), "fraud-score.dlq");
    }

    #[test]
    fn a_minimal_manifest_takes_the_defaults() {
        let m = Manifest::parse("name = \"a\"\nversion = \"1\"\ninputs = [\"t\"]\n").unwrap();
        assert!(m.outputs.is_empty());
        assert!(!m.state);
        assert_eq!(m.limits, ManifestLimits::default());
        assert_eq!(m.config_json(), b"{}");
    }

    #[test]
    fn the_config_table_becomes_json_for_init() {
        let m = Manifest::parse(GOOD).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&m.config_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "alert_threshold": 70,
                "when": "1979-05-27T07:32:00Z",
                "weights": {"blocklisted": 100.0}
            })
        );
    }

    #[test]
    fn box_settings_override_the_manifest_config_key_by_key_and_merge_tables() {
        let m = Manifest::parse(GOOD).unwrap();
        let settings: toml::Table =
            toml::from_str("alert_threshold = 85\nnew_key = [1, 2]\n[weights]\nvelocity = 30.0\n")
                .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&m.with_settings(&settings).config_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "alert_threshold": 85,
                "when": "1979-05-27T07:32:00Z",
                "weights": {"blocklisted": 100.0, "velocity": 30.0},
                "new_key": [1, 2]
            })
        );
        assert_eq!(
            m.config["alert_threshold"].as_integer(),
            Some(70),
            "the signed manifest is untouched"
        );
    }

    #[test]
    fn input_patterns_match_by_prefix_and_plain_inputs_exactly() {
        let m = Manifest::parse(GOOD).unwrap();
        assert!(m.input_matches("pos.payments"));
        assert!(!m.input_matches("pos.payments2"));
        assert!(m.input_matches("sensors.fridge"));
        assert!(!m.input_matches("sensor.1m"));
        assert!(m.may_emit_to("fraud.alerts"));
        assert!(!m.may_emit_to("pos.payments"));
    }

    #[test]
    fn box_topics_dead_letter_topics_and_own_inputs_cannot_be_outputs() {
        for (output, says) in [
            ("outpost.gaps", "belong to the box"),
            ("outpost.audit", "belong to the box"),
            ("other-plugin.dlq", "dead-letter topics"),
            ("pos.payments", "also an input"),
        ] {
            let text = with(
                "[\"fraud.scores\", \"fraud.alerts\"]",
                &format!("[\"fraud.scores\", \"{output}\"]"),
            );
            let err = Manifest::parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("`outputs[1]`") && err.contains(says),
                "{output}: {err}"
            );
        }
        // A `prefix*` input may match an output: the runner never feeds a plugin its own
        // outputs through a pattern.
        let m = Manifest::parse(&with(
            "[\"fraud.scores\", \"fraud.alerts\"]",
            "[\"sensors.derived\"]",
        ))
        .unwrap();
        assert!(m.input_matches("sensors.derived"));
    }

    #[test]
    fn output_quotas_are_read_from_the_limits_table() {
        let m = Manifest::parse(&with(
            "deadline_ms = 100",
            "deadline_ms = 100\noutput_records_per_input = 4\noutput_bytes_per_input = 4096\n\
             output_records_per_sec = 100\noutput_bytes_per_sec = 65536",
        ))
        .unwrap();
        assert_eq!(m.limits.output_records_per_input, Some(4));
        assert_eq!(m.limits.output_bytes_per_input, Some(4096));
        assert_eq!(m.limits.output_records_per_sec, Some(100));
        assert_eq!(m.limits.output_bytes_per_sec, Some(65536));
        assert_eq!(
            error_key(&with(
                "deadline_ms = 100",
                "deadline_ms = 100\noutput_records_per_sec = 0"
            )),
            "limits.output_records_per_sec"
        );
    }

    #[test]
    fn validation_errors_name_the_key() {
        assert_eq!(error_key(&with("\"fraud-score\"", "\"Fraud\"")), "name");
        assert_eq!(error_key(&with("\"fraud-score\"", "\"\"")), "name");
        assert_eq!(
            error_key(&with("\"fraud-score\"", &format!("\"{}\"", "a".repeat(65)))),
            "name"
        );
        assert_eq!(error_key(&with("\"fraud-score\"", "\"-x\"")), "name");
        assert_eq!(error_key(&with("\"0.1.0\"", "\"1 2\"")), "version");
        assert_eq!(
            error_key(&with("[\"pos.payments\", \"sensors.*\"]", "[]")),
            "inputs"
        );
        assert_eq!(
            error_key(&with(
                "[\"pos.payments\", \"sensors.*\"]",
                "[\"ok\", \"Bad\"]"
            )),
            "inputs[1]"
        );
        assert_eq!(
            error_key(&with("[\"pos.payments\", \"sensors.*\"]", "[\"a\", \"a\"]")),
            "inputs[1]"
        );
        assert_eq!(
            error_key(&with("[\"pos.payments\", \"sensors.*\"]", "[\"*\"]")),
            "inputs[0]"
        );
        assert_eq!(
            error_key(&with(
                "[\"fraud.scores\", \"fraud.alerts\"]",
                "[\"fraud.scores\", \"x y\"]"
            )),
            "outputs[1]"
        );
        assert_eq!(
            error_key(&with(
                "[\"fraud.scores\", \"fraud.alerts\"]",
                "[\"fraud-score.dlq\"]"
            )),
            "outputs[0]"
        );
        assert_eq!(
            error_key(&with("memory_mib = 32", "memory_mib = 0")),
            "limits.memory_mib"
        );
        assert_eq!(
            error_key(&with("deadline_ms = 100", "deadline_ms = 0")),
            "limits.deadline_ms"
        );
        assert_eq!(
            error_key(&with("state_mib = 16", "state_mib = 0")),
            "limits.state_mib"
        );
        assert_eq!(
            error_key(&with("state_keys = 5000", "state_keys = 0")),
            "limits.state_keys"
        );
        assert_eq!(
            error_key(&with("blocklisted = 100.0", "blocklisted = nan")),
            "config.weights.blocklisted"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_parse_errors_with_the_line() {
        let err = Manifest::parse(&with("state = true", "state = true\nstates = 1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("states"), "{err}");
        assert!(err.contains("line 8"), "{err}");
        let err = Manifest::parse(&with("memory_mib = 32", "memory_mib = \"big\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory_mib"), "{err}");
    }
}
