//! The one TOML configuration file: typed sections per component, defaults, environment
//! overrides (`OUTPOST_*`) and validation with errors that name the key.
//!
//! # Where a value comes from
//! Highest precedence first:
//! 1. command-line flags of `outpost run` (`--data-dir`, `--listen`);
//! 2. environment variables (`OUTPOST_DATA_DIR`, `OUTPOST_LISTEN`, `OUTPOST_EDGE_ID`,
//!    `OUTPOST_STORE_ID`); an empty variable counts as unset;
//! 3. the file given with `--config`;
//! 4. the built-in defaults, which are exactly `runtime/config/outpost.example.toml`
//!    (printed by `outpost config example`; a test keeps the two equal).
//!
//! `OUTPOST_MQTT_LISTEN` sets `mqtt.broker.listen`; `OUTPOST_KAFKA_BROKERS` sets
//! `forward.kafka.brokers`, which turns forwarding on with the default classes.
//!
//! # Adding a section
//! Define `XxxConfig` next to its component (serde, `deny_unknown_fields`, named default
//! functions, a doc comment on every field, a `validate()`), add one `#[serde(default)]` field
//! here, call its `validate()` from [`Config::validate`], and document every key in the example
//! file; the tests fail until the example and the defaults agree.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ingest::modbus::ModbusConfig;
use crate::ingest::mqtt::config::{BrokerConfig, SourceConfig};
use crate::log::LogConfig;
use crate::plugins::registry::PluginsConfig;
use crate::sink::mqtt::config::SinkConfig;

/// The documented default configuration file, compiled in.
pub const EXAMPLE_TOML: &str = include_str!("../config/outpost.example.toml");

/// Errors of loading and checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (the message shows the line).
    #[error("config file {origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value is out of range or malformed; `key` is the dotted key, e.g. `http.listen`.
    #[error("invalid config key `{key}`{from}: {problem}", from = origin_suffix(.origin))]
    Invalid {
        key: String,
        /// Where the value came from when it was not the file (`OUTPOST_LISTEN`, `--listen`).
        origin: Option<String>,
        problem: String,
    },
    /// The `[log]` section's own validation failed (its message names the key).
    #[error("invalid config: {0}")]
    Log(String),
}

fn origin_suffix(origin: &Option<String>) -> String {
    match origin {
        Some(o) => format!(" (set by {o})"),
        None => String::new(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This box: ids and data directory (`[edge]`).
    #[serde(default)]
    pub edge: EdgeConfig,
    /// The HTTP API (`[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// Rules every ingest path applies: the store-event contracts (`[ingest]`).
    #[serde(default)]
    pub ingest: crate::contracts::IngestConfig,
    /// The durable log (`[log]`).
    #[serde(default)]
    pub log: LogConfig,
    /// Wasm plugins: limits, trusted signing keys, bundled plugins (`[plugins]`).
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Modbus devices to poll (`[modbus]`, `[[modbus.devices]]`); none by default.
    #[serde(default)]
    pub modbus: ModbusConfig,
    /// Store-and-forward to the cloud Kafka cluster (`[forward]`); off without brokers.
    #[serde(default)]
    pub forward: crate::forward::ForwardConfig,
    /// Cloud topics mirrored into local topics (`[mirror]`); none by default.
    #[serde(default)]
    pub mirror: crate::mirror::MirrorConfig,
    /// MQTT: the embedded broker and device listener, external brokers, sinks (`[mqtt]`).
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The Kafka protocol listener for local Kafka clients (`[kafka]`).
    #[serde(default)]
    pub kafka: crate::kafka::KafkaConfig,
    /// OPC-UA servers to subscribe to (`[opcua]`, `[[opcua.servers]]`); none by default.
    #[serde(default)]
    pub opcua: crate::ingest::opcua::OpcuaConfig,
    /// Demo store traffic generated inside `outpost run` (`[simulate]`); off by default.
    #[serde(default)]
    pub simulate: crate::simulate::SimulateConfig,
    /// Dotted keys set by an override, with where they came from (for error messages).
    #[serde(skip)]
    pub origins: BTreeMap<String, String>,
}

/// The whole `[mqtt]` section: the embedded broker and external sources (ingest) and the sinks
/// back to devices (sink), checked together here because a sink on the embedded broker depends
/// on the broker's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Subscriptions to external MQTT brokers (`[[mqtt.sources]]`).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Log topics published back to MQTT (`[[mqtt.sinks]]`).
    #[serde(default = "crate::sink::mqtt::config::default_sinks")]
    pub sinks: Vec<SinkConfig>,
    /// The embedded broker and its device-facing listener (`[mqtt.broker]`).
    #[serde(default)]
    pub broker: BrokerConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            sources: Vec::new(),
            sinks: crate::sink::mqtt::config::default_sinks(),
            broker: BrokerConfig::default(),
        }
    }
}

impl MqttConfig {
    /// Checks the section; `log` is the `[log]` section (record size limit). The problem names
    /// the key.
    pub fn validate(&self, log: &LogConfig) -> Result<(), (String, String)> {
        crate::ingest::mqtt::config::validate(&self.broker, &self.sources, log)?;
        crate::sink::mqtt::config::validate(&self.sinks)?;
        for (i, s) in self.sinks.iter().enumerate() {
            if s.host.is_some() {
                continue;
            }
            let prefix = format!("mqtt.sinks[{i}]");
            if !self.broker.enabled {
                return Err((format!("{prefix}.host"), "is unset, which means the embedded broker, but `mqtt.broker.enabled` is false; set a host or enable the broker".into()));
            }
            // The sink publishes through the device listener: a route taking its topics would
            // store every answer again.
            let sample = crate::sink::mqtt::config::sample_topic(&s.mqtt_topic);
            if let Some(j) = self.broker.route_taking(&sample) {
                return Err((
                    format!("{prefix}.mqtt_topic"),
                    format!(
                        "{:?} is also taken by `mqtt.broker.routes[{j}]` ({:?}), so every answer would be stored again; narrow that route's filter",
                        s.mqtt_topic, self.broker.routes[j].filter
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The `[edge]` section: who this box is and where it keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Unique id of this box. Unset: generated once on first start and kept in the state store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_id: Option<String>,
    /// The store this box serves.
    #[serde(default = "default_store_id")]
    pub store_id: String,
    /// Directory holding the log (`log/`) and the state store (`state/`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Start even when the state store is damaged or missing: move it aside and rebuild it,
    /// keeping the edge id and restoring consumer offsets from the positions checkpoint
    /// (`outpost run --rebuild-state`). False: refuse to start on a damaged store.
    #[serde(default)]
    pub rebuild_state: bool,
}

fn default_store_id() -> String {
    "store-0001".to_string()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./outpost-data")
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            edge_id: None,
            store_id: default_store_id(),
            data_dir: default_data_dir(),
            rebuild_state: false,
        }
    }
}

/// The `[http]` section: the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port to listen on (`IP:PORT`; port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// When set, every endpoint except `/health` needs `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most records one fetch returns (a larger `limit` is capped to this).
    #[serde(default = "default_max_fetch_records")]
    pub max_fetch_records: usize,
    /// About how many record bytes one fetch returns (at least one record if any).
    #[serde(default = "default_max_fetch_bytes")]
    pub max_fetch_bytes: usize,
    /// Longest long-poll a fetch may ask for with `wait_ms`, in ms.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Time a client has to send a request's whole header block, in ms, counted from when the
    /// server starts waiting for it (also on an idle keep-alive connection). A slow or silent
    /// client is disconnected after it.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A connection that moves no bytes in either direction for this long is closed, in ms
    /// (a stalled body upload, a client that does not read its answer). Must exceed
    /// `max_wait_ms`, so a long poll is not cut.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Most open HTTP connections. At the cap a new connection evicts the connection that has
    /// been quiet longest (one without a request in flight first); when every connection is
    /// busy it is answered 503 and closed. Counted in `outpost_http_connections_total`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Memory all requests with bodies together may hold while their bodies are read, parsed
    /// and appended, in bytes. Each request is charged four times its body (the body, its
    /// parsed records, their encoded batch); one that does not fit gets 503 with
    /// `Retry-After`. A body without `Content-Length` counts as `max_body_bytes`. At least
    /// four times `max_body_bytes`.
    #[serde(default = "default_max_inflight_body_bytes")]
    pub max_inflight_body_bytes: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_string()
}
fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_fetch_records() -> usize {
    1000
}
fn default_max_fetch_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_wait_ms() -> u64 {
    30_000
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    256
}
fn default_max_inflight_body_bytes() -> usize {
    64 * 1024 * 1024
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            auth_token: None,
            max_body_bytes: default_max_body_bytes(),
            max_fetch_records: default_max_fetch_records(),
            max_fetch_bytes: default_max_fetch_bytes(),
            max_wait_ms: default_max_wait_ms(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
            max_inflight_body_bytes: default_max_inflight_body_bytes(),
        }
    }
}

impl HttpConfig {
    /// The listen address; call after [`Config::validate`].
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "http.listen".into(),
            origin: None,
            problem: format!(
                "{:?} is not an IP:PORT address; use e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\"",
                self.listen
            ),
        })
    }
}

/// Values that override the file: from the environment, then from command-line flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `edge.data_dir`, with its origin.
    pub data_dir: Option<(PathBuf, String)>,
    /// `http.listen`, with its origin.
    pub listen: Option<(String, String)>,
    /// `edge.edge_id`, with its origin.
    pub edge_id: Option<(String, String)>,
    /// `edge.store_id`, with its origin.
    pub store_id: Option<(String, String)>,
    /// `OUTPOST_MQTT_LISTEN`: `mqtt.broker.listen`, the device listener's address.
    pub mqtt_listen: Option<String>,
    /// `OUTPOST_KAFKA_BROKERS`: `forward.kafka.brokers`, the cloud's bootstrap servers (turns
    /// forwarding on).
    pub kafka_brokers: Option<String>,
    /// `OUTPOST_KAFKA_LISTEN`: `kafka.listen`, the address local Kafka clients connect to.
    pub kafka_listen: Option<String>,
}

impl Overrides {
    /// Reads the `OUTPOST_*` variables through `lookup` (pass `|k| std::env::var(k).ok()`);
    /// empty values count as unset.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Overrides {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let with_origin = |name: &str| get(name).map(|v| (v, name.to_string()));
        Overrides {
            data_dir: get("OUTPOST_DATA_DIR")
                .map(|v| (PathBuf::from(v), "OUTPOST_DATA_DIR".into())),
            listen: with_origin("OUTPOST_LISTEN"),
            edge_id: with_origin("OUTPOST_EDGE_ID"),
            store_id: with_origin("OUTPOST_STORE_ID"),
            mqtt_listen: get("OUTPOST_MQTT_LISTEN"),
            kafka_brokers: get("OUTPOST_KAFKA_BROKERS"),
            kafka_listen: get("OUTPOST_KAFKA_LISTEN"),
        }
    }

    /// Lays command-line flags over these values (flags win).
    pub fn with_flags(mut self, data_dir: Option<PathBuf>, listen: Option<String>) -> Overrides {
        if let Some(dir) = data_dir {
            self.data_dir = Some((dir, "--data-dir".into()));
        }
        if let Some(listen) = listen {
            self.listen = Some((listen, "--listen".into()));
        }
        self
    }
}

impl Config {
    /// Parses a TOML document; `origin` names it in errors (a path or `<example>`).
    /// Does not validate.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads and parses a file. Does not validate.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// The whole loading sequence of `outpost run`: the file (or the defaults), then the
    /// overrides, then validation.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Applies overrides, remembering where each overridden key came from.
    pub fn apply(&mut self, overrides: &Overrides) {
        if let Some((dir, origin)) = &overrides.data_dir {
            self.edge.data_dir = dir.clone();
            self.origins.insert("edge.data_dir".into(), origin.clone());
        }
        if let Some((listen, origin)) = &overrides.listen {
            self.http.listen = listen.clone();
            self.origins.insert("http.listen".into(), origin.clone());
        }
        if let Some((id, origin)) = &overrides.edge_id {
            self.edge.edge_id = Some(id.clone());
            self.origins.insert("edge.edge_id".into(), origin.clone());
        }
        if let Some((id, origin)) = &overrides.store_id {
            self.edge.store_id = id.clone();
            self.origins.insert("edge.store_id".into(), origin.clone());
        }
        if let Some(listen) = &overrides.mqtt_listen {
            self.mqtt.broker.listen = listen.clone();
            self.origins
                .insert("mqtt.broker.listen".into(), "OUTPOST_MQTT_LISTEN".into());
        }
        if let Some(listen) = &overrides.kafka_listen {
            self.kafka.listen = listen.clone();
            self.origins
                .insert("kafka.listen".into(), "OUTPOST_KAFKA_LISTEN".into());
        }
        if let Some(brokers) = &overrides.kafka_brokers {
            self.forward.kafka.brokers = brokers.clone();
            self.origins.insert(
                "forward.kafka.brokers".into(),
                "OUTPOST_KAFKA_BROKERS".into(),
            );
        }
    }

    fn invalid(&self, key: &str, problem: String) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            origin: self.origins.get(key).cloned(),
            problem,
        }
    }

    /// Checks every section; the error names the key and how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.edge.edge_id {
            check_id(id).map_err(|p| self.invalid("edge.edge_id", p))?;
        }
        check_id(&self.edge.store_id).map_err(|p| self.invalid("edge.store_id", p))?;
        if self.edge.data_dir.as_os_str().is_empty() {
            return Err(self.invalid(
                "edge.data_dir",
                "is empty; give a directory such as \"/var/lib/outpost\"".into(),
            ));
        }

        let http = &self.http;
        if http.listen.parse::<SocketAddr>().is_err() {
            return Err(self.invalid(
                "http.listen",
                format!(
                    "{:?} is not an IP:PORT address; use e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\"",
                    http.listen
                ),
            ));
        }
        if let Some(token) = &http.auth_token {
            if token.is_empty() || !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return Err(self.invalid(
                    "http.auth_token",
                    "must be non-empty printable ASCII without spaces; remove the key to turn \
                     authentication off"
                        .into(),
                ));
            }
        }
        check_range(
            "http.max_body_bytes",
            http.max_body_bytes as u64,
            1024,
            1 << 30,
        )
        .map_err(|p| self.invalid("http.max_body_bytes", p))?;
        check_range(
            "http.max_fetch_records",
            http.max_fetch_records as u64,
            1,
            100_000,
        )
        .map_err(|p| self.invalid("http.max_fetch_records", p))?;
        check_range(
            "http.max_fetch_bytes",
            http.max_fetch_bytes as u64,
            1024,
            256 << 20,
        )
        .map_err(|p| self.invalid("http.max_fetch_bytes", p))?;
        check_range("http.max_wait_ms", http.max_wait_ms, 0, 300_000)
            .map_err(|p| self.invalid("http.max_wait_ms", p))?;
        check_range(
            "http.header_read_timeout_ms",
            http.header_read_timeout_ms,
            100,
            600_000,
        )
        .map_err(|p| self.invalid("http.header_read_timeout_ms", p))?;
        check_range("http.idle_timeout_ms", http.idle_timeout_ms, 100, 3_600_000)
            .map_err(|p| self.invalid("http.idle_timeout_ms", p))?;
        if http.idle_timeout_ms <= http.max_wait_ms {
            return Err(self.invalid(
                "http.idle_timeout_ms",
                format!(
                    "is {} but must exceed `http.max_wait_ms` ({}), or long polls are cut; \
                     raise it or lower max_wait_ms",
                    http.idle_timeout_ms, http.max_wait_ms
                ),
            ));
        }
        check_range(
            "http.max_connections",
            http.max_connections as u64,
            2,
            100_000,
        )
        .map_err(|p| self.invalid("http.max_connections", p))?;
        check_range(
            "http.max_inflight_body_bytes",
            http.max_inflight_body_bytes as u64,
            4 * http.max_body_bytes as u64,
            u64::from(u32::MAX),
        )
        .map_err(|p| self.invalid("http.max_inflight_body_bytes", p))?;

        self.log.validate().map_err(ConfigError::Log)?;
        self.plugins
            .validate()
            .map_err(|(key, problem)| self.invalid(&key, problem))?;
        self.modbus
            .validate()
            .map_err(|(key, problem)| self.invalid(&key, problem))?;
        self.forward
            .validate()
            .map_err(|(key, problem)| self.invalid(&key, problem))?;
        self.mirror
            .validate()
            .map_err(|(key, problem)| self.invalid(&key, problem))?;
        self.mqtt
            .validate(&self.log)
            .map_err(|(key, problem)| self.invalid(&key, problem))?;
        self.opcua
            .validate()
            .map_err(|(key, problem)| self.invalid(&key, problem))?;
        self.kafka
            .validate()
            .map_err(|(key, problem)| self.invalid(&key, problem))?;
        self.simulate
            .validate()
            .map_err(|(key, problem)| self.invalid(&key, problem))?;
        Ok(())
    }
}

/// Ids travel in record headers and file names: 1 to 64 of `[A-Za-z0-9._-]`.
fn check_id(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > 64 || !id.chars().all(ok_char) {
        return Err(format!(
            "{id:?} must be 1 to 64 characters of letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{value} is out of range; set `{key}` between {min} and {max}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn example_file_parses_validates_and_equals_the_defaults() {
        let parsed = Config::from_toml_str(EXAMPLE_TOML, "<example>").unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed, Config::default());
    }

    /// Every key of the defaults must be documented in the example (set or commented out).
    #[test]
    fn example_file_documents_every_key() {
        fn keys(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
            if let toml::Value::Table(table) = value {
                for (k, v) in table {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match v {
                        toml::Value::Table(t) if !t.is_empty() => keys(&path, v, out),
                        toml::Value::Table(_) => {}
                        _ => out.push((path, k.clone())),
                    }
                }
            }
        }
        let mut all = Config::default();
        all.edge.edge_id = Some("x".into());
        all.http.auth_token = Some("x".into());
        let value = toml::Value::try_from(&all).unwrap();
        let mut found = Vec::new();
        keys("", &value, &mut found);
        assert!(found.len() > 10, "{found:?}");
        let lines: Vec<&str> = EXAMPLE_TOML
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .collect();
        for (path, leaf) in found {
            // A key of its own line, or inside an inline table (`fsync = { interval_ms = 100 }`).
            let documented = |l: &&str| {
                l.starts_with(&format!("{leaf} ="))
                    || l.contains(&format!("{{ {leaf} ="))
                    || l.contains(&format!(", {leaf} ="))
            };
            assert!(
                lines.iter().any(documented),
                "key `{path}` is missing from runtime/config/outpost.example.toml"
            );
        }
    }

    #[test]
    fn answer_topics_fsync_on_an_interval_and_otherwise_follow_the_default_topic() {
        use crate::log::{FsyncPolicy, NamedFsync};
        let interval = FsyncPolicy::Interval { interval_ms: 100 };
        let c = Config::from_toml_str(
            "[log.default_topic]\nretention_ms = 3600000\n[log.topics.\"sensors.*\"]\nfsync = \"never\"\n",
            "f.toml",
        )
        .unwrap();
        let scores = c.log.topic_config("fraud.scores");
        assert_eq!((scores.fsync, scores.retention_ms), (interval, 3_600_000));
        assert_eq!(c.log.topic_config("recommendations").fsync, interval);
        let payments = c.log.topic_config("pos.payments");
        assert_eq!(payments.fsync, FsyncPolicy::Named(NamedFsync::Always));
        assert_eq!(
            c.log.topic_config("sensors.fridge").fsync,
            FsyncPolicy::Named(NamedFsync::Never)
        );
        // An entry of its own wins; an empty list turns the answer policy off.
        let c = Config::from_toml_str(
            "[log]\nanswer_topics = []\n[log.topics.\"recommendations\"]\nfsync = \"never\"\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(
            c.log.topic_config("fraud.scores").fsync,
            FsyncPolicy::Named(NamedFsync::Always)
        );
        assert_eq!(
            c.log.topic_config("recommendations").fsync,
            FsyncPolicy::Named(NamedFsync::Never)
        );
        let err = Config::from_toml_str("[log]\nanswer_topics = [\"Bad\"]\n", "f.toml")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.answer_topics[0]"), "{err}");
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        assert_eq!(Config::from_toml_str("", "x").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_rejected_with_its_line() {
        let err = Config::from_toml_str(
            "[http]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("f.toml"), "{err}");
        assert!(err.contains("listen_port"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_is_rejected_with_its_line() {
        let err = Config::from_toml_str("[edge]\n\nstore_id = 7\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_listen_address_names_the_key_and_the_fix() {
        let mut c = Config::default();
        c.http.listen = "localhost".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`http.listen`"), "{err}");
        assert!(err.contains("127.0.0.1:8080"), "{err}");
    }

    #[test]
    fn out_of_range_numbers_name_the_key() {
        let mut c = Config::default();
        c.http.max_fetch_records = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("http.max_fetch_records"), "{err}");
        let mut c = Config::default();
        c.http.max_body_bytes = 10;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http.max_body_bytes"));
    }

    #[test]
    fn bad_ids_and_tokens_are_rejected() {
        let mut c = Config::default();
        c.edge.store_id = "store 1".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("edge.store_id"));
        let mut c = Config::default();
        c.edge.edge_id = Some(String::new());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("edge.edge_id"));
        let mut c = Config::default();
        c.http.auth_token = Some("has space".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("http.auth_token"));
    }

    #[test]
    fn flags_beat_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[edge]\ndata_dir = \"/from/file\"\nstore_id = \"file-store\"\n[http]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();

        let from_file = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(from_file.edge.data_dir, PathBuf::from("/from/file"));
        assert_eq!(from_file.edge.store_id, "file-store");

        let env_only = Overrides::from_env(env(&[
            ("OUTPOST_DATA_DIR", "/from/env"),
            ("OUTPOST_LISTEN", "127.0.0.1:2"),
            ("OUTPOST_STORE_ID", "env-store"),
            ("OUTPOST_EDGE_ID", "edge-7"),
        ]));
        let c = Config::load(Some(&file), &env_only).unwrap();
        assert_eq!(c.edge.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.http.listen, "127.0.0.1:2");
        assert_eq!(c.edge.store_id, "env-store");
        assert_eq!(c.edge.edge_id.as_deref(), Some("edge-7"));

        let flags = env_only.with_flags(Some("/from/flag".into()), Some("127.0.0.1:3".into()));
        let c = Config::load(Some(&file), &flags).unwrap();
        assert_eq!(c.edge.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.http.listen, "127.0.0.1:3");
        assert_eq!(c.edge.store_id, "env-store");
    }

    #[test]
    fn empty_environment_variables_count_as_unset() {
        let o = Overrides::from_env(env(&[("OUTPOST_LISTEN", ""), ("OUTPOST_EDGE_ID", "")]));
        assert_eq!(o, Overrides::default());
    }

    #[test]
    fn the_mqtt_listen_and_kafka_brokers_variables_set_their_keys() {
        let o = Overrides::from_env(env(&[
            ("OUTPOST_MQTT_LISTEN", "0.0.0.0:1883"),
            ("OUTPOST_KAFKA_BROKERS", "k1:9092,k2:9092"),
        ]));
        let mut c = Config::default();
        c.apply(&o);
        assert_eq!(c.mqtt.broker.listen, "0.0.0.0:1883");
        assert_eq!(c.forward.kafka.brokers, "k1:9092,k2:9092");
        assert!(c.forward.enabled());
    }

    #[test]
    fn an_override_error_says_where_the_value_came_from() {
        let o = Overrides::from_env(env(&[("OUTPOST_LISTEN", "nonsense")]));
        let err = Config::load(None, &o).unwrap_err().to_string();
        assert!(err.contains("http.listen"), "{err}");
        assert!(err.contains("OUTPOST_LISTEN"), "{err}");

        let o = Overrides::from_env(env(&[("OUTPOST_MQTT_LISTEN", "1883")]));
        let err = Config::load(None, &o).unwrap_err().to_string();
        assert!(err.contains("mqtt.broker.listen"), "{err}");
        assert!(err.contains("OUTPOST_MQTT_LISTEN"), "{err}");
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_the_path() {
        let err = Config::load(
            Some(Path::new("/nonexistent/o.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/o.toml"));
    }
}
