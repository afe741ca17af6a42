//! The `[forward]` section: the cloud Kafka connection (`[forward.kafka]`, shared with the
//! mirror), the uplink budget, back-off, and the rules that say which local topics go where
//! and with which priority class (`[[forward.rules]]`).
//!
//! Forwarding is off unless brokers are known: `forward.kafka.brokers` in the file or the
//! `OUTPOST_KAFKA_BROKERS` environment variable (which wins). When it is on, topics no rule
//! matches still get the default classes of the outside contract (`default_rules = true`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Priority class of a forwarded topic: critical drains first, bulk last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Sent the moment a link exists; never evicted.
    Critical,
    /// Sent after critical data is caught up.
    Normal,
    /// Sent only when critical and normal are caught up, and only inside its schedule.
    Bulk,
}

impl Class {
    /// All classes, highest priority first.
    pub const ALL: [Class; 3] = [Class::Critical, Class::Normal, Class::Bulk];

    /// The lower-case name used in config, metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::Normal => "normal",
            Class::Bulk => "bulk",
        }
    }
}

/// When bulk topics may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Whenever critical and normal are caught up.
    Always,
    /// Only while an operator enabled it (`POST /forward/bulk?enable=true`): harbour mode.
    Manual,
    /// Only between these hours of the day (UTC), `from` inclusive, `to` exclusive; may wrap
    /// midnight (`22-06`).
    Hours { from: u8, to: u8 },
}

impl Schedule {
    /// Parses `always`, `manual` or `H-H` (hours 0-24).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        match text {
            "always" => return Ok(Schedule::Always),
            "manual" => return Ok(Schedule::Manual),
            _ => {}
        }
        let bad = || {
            format!(
                "{text:?} is not a schedule; use \"always\", \"manual\" or an hour window such as \"22-06\""
            )
        };
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let from: u8 = a.trim().parse().map_err(|_| bad())?;
        let to: u8 = b.trim().parse().map_err(|_| bad())?;
        if from > 24 || to > 24 || from == to {
            return Err(bad());
        }
        Ok(Schedule::Hours {
            from: from % 24,
            to: to % 24,
        })
    }

    /// Whether sending is allowed at `now_ms` (UTC) with the manual switch at `manual_on`.
    pub fn allows(self, now_ms: u64, manual_on: bool) -> bool {
        match self {
            Schedule::Always => true,
            Schedule::Manual => manual_on,
            Schedule::Hours { from, to } => {
                let hour = ((now_ms / 3_600_000) % 24) as u8;
                if from < to {
                    hour >= from && hour < to
                } else {
                    hour >= from || hour < to
                }
            }
        }
    }
}

/// One forwarding rule (`[[forward.rules]]`). The first rule whose `topic` matches wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Local topic: an exact name or a prefix ending in `*` (`"sensors.*"`).
    pub topic: String,
    /// Cloud topic template with `{edge_id}`, `{store_id}`, `{topic}`; default `"{topic}"`.
    #[serde(default = "default_destination")]
    pub destination: String,
    /// Kafka key: unset = the record's key; a JSON pointer (`"/card_id"`) = that field of the
    /// JSON value (strings as they are, anything else as JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `critical`, `normal` or `bulk`.
    #[serde(default = "default_class")]
    pub class: Class,
    /// Bulk only: `always`, `manual` or an hour window (UTC) like `"22-06"`.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// `false` = never forward matching topics (to exclude some from a wider pattern).
    #[serde(default = "default_true")]
    pub forward: bool,
}

fn default_destination() -> String {
    "{topic}".to_string()
}
fn default_class() -> Class {
    Class::Normal
}
fn default_schedule() -> String {
    "always".to_string()
}
fn default_true() -> bool {
    true
}

/// The cloud Kafka connection (`[forward.kafka]`); the mirror uses it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port,host:port`; empty = no cloud (forwarding and mirroring
    /// off). `OUTPOST_KAFKA_BROKERS` overrides it.
    #[serde(default)]
    pub brokers: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default = "default_security_protocol")]
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a `sasl_*` protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// SASL password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM file of the CA that signed the brokers' certificates; unset = the system's CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `zstd`, `lz4` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// How long the producer waits to fill a batch, in ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Largest batch the producer sends to one partition, in bytes.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,
    /// How long a record may wait for the broker's acknowledgement before the attempt counts
    /// as failed (the forwarder then backs off and sends again from its cursor), in ms.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// Further librdkafka properties, passed through as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_security_protocol() -> String {
    "plaintext".to_string()
}
fn default_compression() -> String {
    "zstd".to_string()
}
fn default_linger_ms() -> u64 {
    20
}
fn default_batch_bytes() -> u64 {
    1024 * 1024
}
fn default_delivery_timeout_ms() -> u64 {
    30_000
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            security_protocol: default_security_protocol(),
            sasl_mechanism: None,
            username: None,
            password: None,
            ca_file: None,
            compression: default_compression(),
            linger_ms: default_linger_ms(),
            batch_bytes: default_batch_bytes(),
            delivery_timeout_ms: default_delivery_timeout_ms(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The librdkafka properties of the connection (brokers, TLS, SASL, pass-through).
    pub fn client_properties(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("bootstrap.servers".to_string(), self.brokers.clone()),
            (
                "security.protocol".to_string(),
                self.security_protocol.clone(),
            ),
        ];
        if let Some(m) = &self.sasl_mechanism {
            out.push(("sasl.mechanism".into(), m.clone()));
        }
        if let Some(u) = &self.username {
            out.push(("sasl.username".into(), u.clone()));
        }
        if let Some(p) = &self.password {
            out.push(("sasl.password".into(), p.clone()));
        }
        if let Some(ca) = &self.ca_file {
            out.push(("ssl.ca.location".into(), ca.display().to_string()));
        }
        for (k, v) in &self.properties {
            out.push((k.clone(), v.clone()));
        }
        out
    }

    /// Checks the values; the error is (dotted key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("forward.kafka.{k}");
        if !matches!(
            self.security_protocol.as_str(),
            "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
        ) {
            return Err((
                key("security_protocol"),
                format!(
                    "{:?} is not one of \"plaintext\", \"ssl\", \"sasl_plaintext\", \"sasl_ssl\"",
                    self.security_protocol
                ),
            ));
        }
        if let Some(m) = &self.sasl_mechanism {
            if !matches!(m.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
                return Err((
                    key("sasl_mechanism"),
                    format!("{m:?} is not one of \"PLAIN\", \"SCRAM-SHA-256\", \"SCRAM-SHA-512\""),
                ));
            }
        }
        if self.security_protocol.starts_with("sasl_")
            && (self.sasl_mechanism.is_none() || self.username.is_none() || self.password.is_none())
        {
            return Err((
                key("sasl_mechanism"),
                "a sasl_* security_protocol needs sasl_mechanism, username and password".into(),
            ));
        }
        if !matches!(self.compression.as_str(), "zstd" | "lz4" | "none") {
            return Err((
                key("compression"),
                format!(
                    "{:?} is not one of \"zstd\", \"lz4\", \"none\"",
                    self.compression
                ),
            ));
        }
        if self.linger_ms > 10_000 {
            return Err((key("linger_ms"), "must be at most 10000".into()));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.batch_bytes) {
            return Err((
                key("batch_bytes"),
                "must be between 1024 and 67108864".into(),
            ));
        }
        if !(1000..=3_600_000).contains(&self.delivery_timeout_ms) {
            return Err((
                key("delivery_timeout_ms"),
                "must be between 1000 and 3600000".into(),
            ));
        }
        Ok(())
    }
}

/// The `[forward]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Name of the cloud cluster; the cursors are stored as consumer `forward:<cluster>`.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Whole-uplink budget in bytes/s (keys, values and headers); 0 = unlimited.
    #[serde(default)]
    pub budget_bytes_per_sec: u64,
    /// Budget of the critical class in bytes/s; 0 = only the uplink budget applies.
    #[serde(default)]
    pub critical_bytes_per_sec: u64,
    /// Budget of the normal class in bytes/s; 0 = only the uplink budget applies.
    #[serde(default)]
    pub normal_bytes_per_sec: u64,
    /// Budget of the bulk class in bytes/s; 0 = only the uplink budget applies.
    #[serde(default)]
    pub bulk_bytes_per_sec: u64,
    /// Most records read from one topic for one send round.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// About how many bytes are read from one topic for one send round.
    #[serde(default = "default_batch_bytes_fwd")]
    pub batch_bytes: usize,
    /// How many such batches may await the broker's acknowledgement at once: the forwarder
    /// keeps reading and handing over while earlier batches are in flight (per topic in
    /// order, the cursor moving over the acknowledged prefix).
    #[serde(default = "default_in_flight_batches")]
    pub in_flight_batches: usize,
    /// First pause after a failed send, in ms; doubles per failure.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest pause between attempts while offline, in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Apply the default classes of the outside contract to topics no rule matches.
    #[serde(default = "default_true")]
    pub default_rules: bool,
    /// The cloud connection.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Rules per local topic, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_cluster() -> String {
    "cloud".to_string()
}
fn default_batch_records() -> usize {
    5000
}
fn default_batch_bytes_fwd() -> usize {
    4 * 1024 * 1024
}
fn default_in_flight_batches() -> usize {
    8
}
fn default_backoff_initial_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    60_000
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            cluster: default_cluster(),
            budget_bytes_per_sec: 0,
            critical_bytes_per_sec: 0,
            normal_bytes_per_sec: 0,
            bulk_bytes_per_sec: 0,
            batch_records: default_batch_records(),
            batch_bytes: default_batch_bytes_fwd(),
            in_flight_batches: default_in_flight_batches(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            default_rules: true,
            kafka: KafkaConfig::default(),
            rules: Vec::new(),
        }
    }
}

/// The default classes of the outside contract (`CONTRACTS.md`).
pub const DEFAULT_CLASSES: &[(&str, Class)] = &[
    ("pos.payments", Class::Critical),
    ("fraud.alerts", Class::Critical),
    ("outpost.gaps", Class::Critical),
    ("fraud.scores", Class::Normal),
    ("sensor.alerts", Class::Normal),
    ("sensor.1m", Class::Normal),
    ("pos.baskets", Class::Bulk),
    ("loyalty.scans", Class::Bulk),
    ("cart.events", Class::Bulk),
    ("inventory.updates", Class::Bulk),
];

impl ForwardConfig {
    /// Whether a cloud is configured (forwarding and mirroring run).
    pub fn enabled(&self) -> bool {
        !self.kafka.brokers.trim().is_empty()
    }

    /// Checks the values; the error is (dotted key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.cluster.is_empty()
            || !self
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err((
                "forward.cluster".into(),
                format!(
                    "{:?} must be letters, digits, '.', '_' or '-'",
                    self.cluster
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.batch_records) {
            return Err((
                "forward.batch_records".into(),
                "must be between 1 and 1000000".into(),
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.batch_bytes) {
            return Err((
                "forward.batch_bytes".into(),
                "must be between 1024 and 268435456".into(),
            ));
        }
        if !(1..=1024).contains(&self.in_flight_batches) {
            return Err((
                "forward.in_flight_batches".into(),
                "must be between 1 and 1024".into(),
            ));
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > self.backoff_max_ms {
            return Err((
                "forward.backoff_initial_ms".into(),
                "must be at least 1 and at most forward.backoff_max_ms".into(),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("forward.rules[{i}].{k}");
            let name = rule.topic.trim_end_matches('*');
            if rule.topic.is_empty() || name.contains('*') {
                return Err((
                    key("topic"),
                    format!(
                        "{:?} must be a topic name or a prefix ending in '*'",
                        rule.topic
                    ),
                ));
            }
            Schedule::parse(&rule.schedule).map_err(|p| (key("schedule"), p))?;
            if let Some(k) = &rule.key {
                if !k.starts_with('/') {
                    return Err((
                        key("key"),
                        format!("{k:?} must be a JSON pointer starting with '/'; remove it to use the record key"),
                    ));
                }
            }
            if rule.destination.is_empty() {
                return Err((key("destination"), "must not be empty".into()));
            }
        }
        self.kafka.validate()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Overrides};

    #[test]
    fn forwarding_is_off_by_default_and_the_brokers_variable_turns_it_on() {
        let off = Config::load(None, &Overrides::default()).unwrap();
        assert!(!off.forward.enabled());
        let env = |k: &str| (k == "OUTPOST_KAFKA_BROKERS").then(|| "k1:9092,k2:9092".to_string());
        let on = Config::load(None, &Overrides::from_env(env)).unwrap();
        assert!(on.forward.enabled());
        assert_eq!(on.forward.kafka.brokers, "k1:9092,k2:9092");
        assert!(on.forward.default_rules);
    }

    #[test]
    fn rules_and_connection_settings_are_checked_with_the_key_named() {
        let text = r#"
            [forward.kafka]
            brokers = "b:9092"
            security_protocol = "sasl_ssl"
            sasl_mechanism = "SCRAM-SHA-512"
            username = "u"
            password = "p"
            [[forward.rules]]
            topic = "sensors.*"
            class = "bulk"
            schedule = "22-06"
            key = "/device"
        "#;
        let config = Config::from_toml_str(text, "t").unwrap();
        config.validate().unwrap();
        let props = config.forward.kafka.client_properties();
        assert!(props.contains(&("sasl.mechanism".into(), "SCRAM-SHA-512".into())));
        assert!(props.contains(&("security.protocol".into(), "sasl_ssl".into())));

        let bad = text.replace("22-06", "later");
        let err = Config::from_toml_str(&bad, "t")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("forward.rules[0].schedule"),
            "{err}"
        );
        let bad = text.replace("\"/device\"", "\"device\"");
        let err = Config::from_toml_str(&bad, "t")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("forward.rules[0].key"), "{err}");
        let bad = text.replace("username = \"u\"", "");
        let err = Config::from_toml_str(&bad, "t")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("forward.kafka.sasl_mechanism"),
            "{err}"
        );
    }
}
