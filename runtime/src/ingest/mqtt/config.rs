//! The `[mqtt]` configuration section: the embedded broker and its device-facing listener
//! (`[mqtt.broker]`), subscriptions to external brokers (`[[mqtt.sources]]`) and the MQTT sinks
//! that send answers back to devices (`[[mqtt.sinks]]`).
//!
//! The built-in defaults are the embedded-defaults layout of the outside contract: the broker on
//! `127.0.0.1:1883`, device topics `pos/payments`, `pos/baskets`, `loyalty/scans`,
//! `cart/events`, `inventory/updates` and `sensors/#` stored as `pos.payments` … with their
//! keys, and the sinks `fraud.scores` → `pos/{terminal_id}/verdict` and `recommendations` →
//! `signage/{device_id}/offers`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::route::{KeySource, Route};
use crate::log::LogConfig;

/// Bytes a stored record may need besides the MQTT payload: the `mqtt-topic` header (a topic is
/// at most 65535 bytes) and the `mqtt-client-id` header (at most 65535 bytes), with framing.
pub const RECORD_OVERHEAD_BYTES: usize = 2 * 65_535 + 64;

/// The whole `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Subscriptions to external MQTT brokers (`[[mqtt.sources]]`).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Log topics published back to MQTT (`[[mqtt.sinks]]`).
    #[serde(default = "default_sinks")]
    pub sinks: Vec<SinkConfig>,
    /// The embedded broker and its device-facing listener (`[mqtt.broker]`).
    #[serde(default)]
    pub broker: BrokerConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            sources: Vec::new(),
            sinks: default_sinks(),
            broker: BrokerConfig::default(),
        }
    }
}

/// `[mqtt.broker]`: the embedded broker (rumqttd on loopback) behind Outpost's listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run the embedded broker and its listener.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// IP:PORT devices connect to (MQTT 3.1.1 and 5 on one port).
    #[serde(default = "default_broker_listen")]
    pub listen: String,
    /// Loopback port of the embedded broker's MQTT 3.1.1 server; its MQTT 5 server takes the
    /// next port. 0 picks free ports at start.
    #[serde(default)]
    pub internal_port: u16,
    /// Most device connections at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest MQTT payload a device may publish, in bytes.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// QoS 1/2 messages the broker sends a subscriber before it waits for its acknowledgements.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// How long a new connection may take to send its CONNECT, in ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Device topics stored in the log before the device gets its PUBACK; the first rule that
    /// matches a topic wins, other topics are only passed to subscribers.
    #[serde(default = "default_routes")]
    pub routes: Vec<RouteConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            enabled: true,
            listen: default_broker_listen(),
            internal_port: 0,
            max_connections: default_max_connections(),
            max_payload_bytes: default_max_payload_bytes(),
            max_inflight: default_max_inflight(),
            connect_timeout_ms: default_connect_timeout_ms(),
            routes: default_routes(),
        }
    }
}

/// One mapping rule of the embedded listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// MQTT topic filter (`+` one level, trailing `#` any levels).
    pub filter: String,
    /// Log topic template; `{N}` is MQTT topic level N counted from 0. Unset: the MQTT topic
    /// with `/` turned into `.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Record key: `{ segment = N }` or `{ json_pointer = "/field" }`. Unset: no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySource>,
}

/// One subscription of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// MQTT topic filter to subscribe to.
    pub filter: String,
    /// Subscription QoS: 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Log topic template, as in `[[mqtt.broker.routes]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Record key, as in `[[mqtt.broker.routes]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySource>,
}

/// TLS to a broker: CA bundle and an optional client certificate (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificates that sign the broker's certificate. Unset: the system bundle
    /// `/etc/ssl/certs/ca-certificates.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain, for brokers that require one (with `key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// The system CA bundle used when `tls.ca_file` is unset.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `[[mqtt.sources]]`: an external broker Outpost subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name; the source shows as `mqtt:<name>` in status.
    pub name: String,
    /// Broker host name or IP (with TLS, the name its certificate carries).
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Client id (fixed, so the broker keeps the session). Unset: `outpost-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// User name, if the broker wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (with `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// False keeps a persistent session: the broker queues QoS 1/2 messages while Outpost is
    /// away and redelivers what was not acknowledged.
    #[serde(default)]
    pub clean_session: bool,
    /// Keep-alive interval, in ms (whole seconds, at least 1 s).
    #[serde(default = "default_keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// First wait before reconnecting, in ms; doubles up to `retry_max_ms`.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest wait between reconnects, in ms.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Most messages stored by one append (more throughput, same guarantees).
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// TLS settings; unset: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// What to subscribe to and where it goes.
    pub filters: Vec<FilterConfig>,
}

/// Where a new sink starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Only records appended after the sink first started (answers are live data).
    End,
    /// Everything the topic still holds.
    Beginning,
}

/// `[[mqtt.sinks]]`: publishes the records of a log topic to MQTT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name; its offset is kept as consumer `sink:mqtt:<name>`.
    pub name: String,
    /// The log topic to publish.
    pub topic: String,
    /// MQTT topic template; `{field}` is a top-level field of the record's JSON value,
    /// `{/a/b}` a JSON pointer. Records without the field are skipped (and counted).
    pub mqtt_topic: String,
    /// Publish QoS: 0, 1 or 2. With 1 or 2 the offset moves only after the broker acknowledged.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish with the retain flag.
    #[serde(default)]
    pub retain: bool,
    /// Where a sink without a stored offset starts: "end" or "beginning".
    #[serde(default = "default_start_at")]
    pub start_at: StartAt,
    /// Broker host. Unset: the embedded broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Broker port (with `host`).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Client id. Unset: `outpost-sink-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// User name, if the broker wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (with `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// TLS settings (with `host`); unset: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Publishes not yet acknowledged by the broker, at most.
    #[serde(default = "default_sink_inflight")]
    pub max_inflight: u16,
    /// Longest wait between reconnects, in ms.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_true() -> bool {
    true
}
fn default_broker_listen() -> String {
    "127.0.0.1:1883".to_string()
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_payload_bytes() -> usize {
    262_144
}
fn default_max_inflight() -> usize {
    100
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_qos() -> u8 {
    1
}
fn default_port() -> u16 {
    1883
}
fn default_keep_alive_ms() -> u64 {
    30_000
}
fn default_retry_initial_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_batch_max_records() -> usize {
    1000
}
fn default_start_at() -> StartAt {
    StartAt::End
}
fn default_sink_inflight() -> u16 {
    100
}

fn route(filter: &str, pointer: &str) -> RouteConfig {
    RouteConfig {
        filter: filter.to_string(),
        topic: None,
        key: Some(KeySource::JsonPointer(pointer.to_string())),
    }
}

fn default_routes() -> Vec<RouteConfig> {
    vec![
        route("pos/payments", "/card_id"),
        route("pos/baskets", "/basket_id"),
        route("loyalty/scans", "/loyalty_id"),
        route("cart/events", "/session_id"),
        route("inventory/updates", "/sku"),
        route("sensors/#", "/device"),
    ]
}

fn sink(name: &str, topic: &str, mqtt_topic: &str) -> SinkConfig {
    SinkConfig {
        name: name.to_string(),
        topic: topic.to_string(),
        mqtt_topic: mqtt_topic.to_string(),
        qos: default_qos(),
        retain: false,
        start_at: default_start_at(),
        host: None,
        port: default_port(),
        client_id: None,
        username: None,
        password: None,
        tls: None,
        max_inflight: default_sink_inflight(),
        retry_max_ms: default_retry_max_ms(),
    }
}

fn default_sinks() -> Vec<SinkConfig> {
    vec![
        sink("verdicts", "fraud.scores", "pos/{terminal_id}/verdict"),
        sink("offers", "recommendations", "signage/{device_id}/offers"),
    ]
}

/// A problem: the dotted key and what to do about it.
pub type Problem = (String, String);

fn range(key: &str, value: u64, min: u64, max: u64) -> Result<(), Problem> {
    if value < min || value > max {
        return Err((
            key.to_string(),
            format!("{value} is out of range; set it between {min} and {max}"),
        ));
    }
    Ok(())
}

fn check_name(key: &str, name: &str, seen: &mut BTreeSet<String>) -> Result<(), Problem> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err((
            key.to_string(),
            format!("{name:?} must be 1 to 64 characters of letters, digits, '.', '_' or '-'"),
        ));
    }
    if !seen.insert(name.to_string()) {
        return Err((
            key.to_string(),
            format!("{name:?} is used twice; names must be unique"),
        ));
    }
    Ok(())
}

fn check_qos(key: &str, qos: u8) -> Result<(), Problem> {
    if qos > 2 {
        return Err((
            key.to_string(),
            format!("{qos} is not a QoS; use 0, 1 or 2"),
        ));
    }
    Ok(())
}

fn check_host(key: &str, host: &str) -> Result<(), Problem> {
    // One colon means "host:port" was written into `host`; IPv6 literals have several.
    let looks_like_host_port = host.matches(':').count() == 1;
    if host.is_empty()
        || host.contains(|c: char| c.is_whitespace() || c == '/')
        || looks_like_host_port
    {
        return Err((
            key.to_string(),
            format!("{host:?} is not a host name or IP address; use e.g. \"broker.store.lan\" or \"10.0.0.5\" and put the port in `port`"),
        ));
    }
    Ok(())
}

/// Whether `host:port` names the embedded broker's own listener on `listen`.
fn is_own_listener(host: &str, port: u16, listen: &str) -> bool {
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        return false;
    };
    if port != listen.port() {
        return false;
    }
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]");
    loopback || listen.ip().to_string() == host.trim_matches(['[', ']'])
}

fn check_tls(prefix: &str, tls: &TlsConfig) -> Result<(), Problem> {
    let ca = tls
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_FILE));
    if !ca.is_file() {
        return Err((
            format!("{prefix}.tls.ca_file"),
            format!("{} is not a readable file; give the PEM file of the CA that signed the broker's certificate", ca.display()),
        ));
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            for (name, path) in [("cert_file", cert), ("key_file", key)] {
                if !path.is_file() {
                    return Err((
                        format!("{prefix}.tls.{name}"),
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err((
                format!("{prefix}.tls.key_file"),
                "is missing; a client certificate needs its private key".into(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                format!("{prefix}.tls.cert_file"),
                "is missing; a private key needs its client certificate".into(),
            ))
        }
    }
    Ok(())
}

fn check_credentials(
    prefix: &str,
    username: &Option<String>,
    password: &Option<String>,
) -> Result<(), Problem> {
    if password.is_some() && username.is_none() {
        return Err((
            format!("{prefix}.username"),
            "is missing; a password needs a user name".into(),
        ));
    }
    Ok(())
}

/// A parsed sink topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// A JSON pointer into the record's value (`{terminal_id}` is `/terminal_id`).
    Field(String),
}

/// Parses a sink's `mqtt_topic` template.
pub fn parse_sink_template(template: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{template:?} has a `{{` without `}}`"))?
            + open;
        let inner = &rest[open + 1..close];
        if inner.is_empty() {
            return Err(format!(
                "{template:?} has an empty `{{}}`; name a field such as `{{terminal_id}}`"
            ));
        }
        let pointer = if inner.starts_with('/') {
            inner.to_string()
        } else {
            format!("/{inner}")
        };
        parts.push(TemplatePart::Field(pointer));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{template:?} has a `}}` without `{{`"));
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_string()));
    }
    for part in &parts {
        if let TemplatePart::Text(t) = part {
            if t.contains(['+', '#', '\0']) {
                return Err(format!(
                    "{template:?}: an MQTT topic to publish to cannot contain `+`, `#` or NUL"
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err("is empty; give an MQTT topic such as \"pos/{terminal_id}/verdict\"".into());
    }
    Ok(parts)
}

impl MqttConfig {
    /// Checks the section; `log` is the `[log]` section (record size limit). `listen_origin`
    /// is not needed here: the caller maps keys to origins.
    pub fn validate(&self, log: &LogConfig) -> Result<(), Problem> {
        let b = &self.broker;
        if b.listen.parse::<SocketAddr>().is_err() {
            return Err((
                "mqtt.broker.listen".into(),
                format!(
                    "{:?} is not an IP:PORT address; use e.g. \"127.0.0.1:1883\" or \"0.0.0.0:1883\"",
                    b.listen
                ),
            ));
        }
        if b.internal_port == u16::MAX {
            return Err((
                "mqtt.broker.internal_port".into(),
                "65535 leaves no port for the MQTT 5 server (it takes the next one); use 0 or a lower port".into(),
            ));
        }
        range(
            "mqtt.broker.max_connections",
            b.max_connections as u64,
            1,
            100_000,
        )?;
        let payload_max = log.max_record_bytes.saturating_sub(RECORD_OVERHEAD_BYTES);
        if b.max_payload_bytes < 1 || b.max_payload_bytes > payload_max {
            return Err((
                "mqtt.broker.max_payload_bytes".into(),
                format!(
                    "{} does not fit a log record: set it between 1 and {payload_max} (`log.max_record_bytes` minus {RECORD_OVERHEAD_BYTES} bytes for the MQTT topic and client id headers), or raise `log.max_record_bytes`",
                    b.max_payload_bytes
                ),
            ));
        }
        range("mqtt.broker.max_inflight", b.max_inflight as u64, 1, 65_535)?;
        range(
            "mqtt.broker.connect_timeout_ms",
            b.connect_timeout_ms,
            100,
            600_000,
        )?;
        for (i, r) in b.routes.iter().enumerate() {
            Route::new(&r.filter, r.topic.as_deref(), r.key.as_ref())
                .map_err(|(field, p)| (format!("mqtt.broker.routes[{i}].{field}"), p))?;
        }

        let mut names = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let prefix = format!("mqtt.sources[{i}]");
            check_name(&format!("{prefix}.name"), &s.name, &mut names)?;
            check_host(&format!("{prefix}.host"), &s.host)?;
            if b.enabled && is_own_listener(&s.host, s.port, &b.listen) {
                return Err((
                    format!("{prefix}.host"),
                    format!(
                        "{}:{} is this box's own MQTT listener (`mqtt.broker.listen`); devices publishing there are stored by `mqtt.broker.routes`, and a source on it would store them twice",
                        s.host, s.port
                    ),
                ));
            }
            if s.port == 0 {
                return Err((
                    format!("{prefix}.port"),
                    "0 is not a port; the MQTT default is 1883 (8883 with TLS)".into(),
                ));
            }
            if let Some(id) = &s.client_id {
                if id.is_empty() || id.len() > 65_535 {
                    return Err((format!("{prefix}.client_id"), "must be 1 to 65535 bytes; a persistent session needs a fixed, non-empty id".into()));
                }
            }
            check_credentials(&prefix, &s.username, &s.password)?;
            if s.keep_alive_ms % 1000 != 0 {
                return Err((
                    format!("{prefix}.keep_alive_ms"),
                    format!(
                        "{} is not whole seconds; MQTT counts keep-alive in seconds (e.g. 30000)",
                        s.keep_alive_ms
                    ),
                ));
            }
            range(
                &format!("{prefix}.keep_alive_ms"),
                s.keep_alive_ms,
                1000,
                65_535_000,
            )?;
            range(
                &format!("{prefix}.retry_initial_ms"),
                s.retry_initial_ms,
                1,
                3_600_000,
            )?;
            range(
                &format!("{prefix}.retry_max_ms"),
                s.retry_max_ms,
                s.retry_initial_ms,
                3_600_000,
            )?;
            range(
                &format!("{prefix}.batch_max_records"),
                s.batch_max_records as u64,
                1,
                100_000,
            )?;
            if let Some(tls) = &s.tls {
                check_tls(&prefix, tls)?;
            }
            if s.filters.is_empty() {
                return Err((format!("{prefix}.filters"), "is empty; subscribe to at least one topic filter, e.g. filters = [{ filter = \"pos/#\" }]".into()));
            }
            for (j, f) in s.filters.iter().enumerate() {
                check_qos(&format!("{prefix}.filters[{j}].qos"), f.qos)?;
                Route::new(&f.filter, f.topic.as_deref(), f.key.as_ref())
                    .map_err(|(field, p)| (format!("{prefix}.filters[{j}].{field}"), p))?;
            }
        }

        let mut names = BTreeSet::new();
        for (i, s) in self.sinks.iter().enumerate() {
            let prefix = format!("mqtt.sinks[{i}]");
            check_name(&format!("{prefix}.name"), &s.name, &mut names)?;
            crate::log::validate_topic_name(&s.topic)
                .map_err(|e| (format!("{prefix}.topic"), e.to_string()))?;
            parse_sink_template(&s.mqtt_topic).map_err(|p| (format!("{prefix}.mqtt_topic"), p))?;
            check_qos(&format!("{prefix}.qos"), s.qos)?;
            range(
                &format!("{prefix}.max_inflight"),
                u64::from(s.max_inflight),
                1,
                65_535,
            )?;
            range(
                &format!("{prefix}.retry_max_ms"),
                s.retry_max_ms,
                1,
                3_600_000,
            )?;
            check_credentials(&prefix, &s.username, &s.password)?;
            match &s.host {
                Some(host) => {
                    check_host(&format!("{prefix}.host"), host)?;
                    if s.port == 0 {
                        return Err((
                            format!("{prefix}.port"),
                            "0 is not a port; the MQTT default is 1883 (8883 with TLS)".into(),
                        ));
                    }
                    if let Some(tls) = &s.tls {
                        check_tls(&prefix, tls)?;
                    }
                }
                None => {
                    if !b.enabled {
                        return Err((format!("{prefix}.host"), "is unset, which means the embedded broker, but `mqtt.broker.enabled` is false; set a host or enable the broker".into()));
                    }
                    if s.tls.is_some() {
                        return Err((format!("{prefix}.tls"), "applies only to an external broker (`host`); the embedded broker is reached over loopback".into()));
                    }
                    // The sink publishes through the device listener: a route taking its
                    // topics would store every answer again.
                    let sample: String = parse_sink_template(&s.mqtt_topic)
                        .unwrap_or_default()
                        .iter()
                        .map(|p| match p {
                            TemplatePart::Text(t) => t.as_str(),
                            TemplatePart::Field(_) => "x",
                        })
                        .collect();
                    if let Some(j) = b.routes.iter().position(|r| {
                        super::route::TopicFilter::parse(&r.filter)
                            .is_ok_and(|f| f.matches(&sample))
                    }) {
                        return Err((
                            format!("{prefix}.mqtt_topic"),
                            format!(
                                "{:?} is also taken by `mqtt.broker.routes[{j}]` ({:?}), so every answer would be stored again; narrow that route's filter",
                                s.mqtt_topic, b.routes[j].filter
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_key(c: &MqttConfig) -> String {
        c.validate(&LogConfig::default()).unwrap_err().0
    }

    fn source() -> SourceConfig {
        SourceConfig {
            name: "store".into(),
            host: "127.0.0.1".into(),
            port: 11883,
            client_id: None,
            username: None,
            password: None,
            clean_session: false,
            keep_alive_ms: 30_000,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            batch_max_records: 1000,
            tls: None,
            filters: vec![FilterConfig {
                filter: "pos/#".into(),
                qos: 1,
                topic: None,
                key: None,
            }],
        }
    }

    #[test]
    fn the_defaults_validate_and_hold_the_contract_layout() {
        let c = MqttConfig::default();
        c.validate(&LogConfig::default()).unwrap();
        assert_eq!(c.broker.listen, "127.0.0.1:1883");
        let filters: Vec<&str> = c.broker.routes.iter().map(|r| r.filter.as_str()).collect();
        assert_eq!(
            filters,
            [
                "pos/payments",
                "pos/baskets",
                "loyalty/scans",
                "cart/events",
                "inventory/updates",
                "sensors/#"
            ]
        );
        assert_eq!(c.sinks[0].topic, "fraud.scores");
        assert_eq!(c.sinks[0].mqtt_topic, "pos/{terminal_id}/verdict");
        assert_eq!(c.sinks[1].mqtt_topic, "signage/{device_id}/offers");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = MqttConfig::default();
        c.broker.listen = "1883".into();
        assert_eq!(problem_key(&c), "mqtt.broker.listen");

        let mut c = MqttConfig::default();
        c.broker.routes[2].filter = "loyalty/#/x".into();
        assert_eq!(problem_key(&c), "mqtt.broker.routes[2].filter");

        let mut c = MqttConfig::default();
        c.broker.max_payload_bytes = 2 << 20;
        assert_eq!(problem_key(&c), "mqtt.broker.max_payload_bytes");

        let mut c = MqttConfig::default();
        let mut s = source();
        s.filters[0].qos = 3;
        c.sources.push(s);
        assert_eq!(problem_key(&c), "mqtt.sources[0].filters[0].qos");

        let mut c = MqttConfig::default();
        let mut s = source();
        s.filters[0].key = Some(KeySource::Segment(5));
        s.filters[0].filter = "a/b".into();
        c.sources.push(s);
        assert_eq!(problem_key(&c), "mqtt.sources[0].filters[0].key");

        let mut c = MqttConfig::default();
        let mut s = source();
        s.keep_alive_ms = 1500;
        c.sources.push(s);
        assert_eq!(problem_key(&c), "mqtt.sources[0].keep_alive_ms");

        let mut c = MqttConfig::default();
        let mut s = source();
        s.tls = Some(TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            cert_file: None,
            key_file: None,
        });
        c.sources.push(s);
        assert_eq!(problem_key(&c), "mqtt.sources[0].tls.ca_file");

        let mut c = MqttConfig::default();
        c.sources.push(source());
        c.sources.push(source());
        assert_eq!(problem_key(&c), "mqtt.sources[1].name");

        // A source on the box's own listener would store device messages twice.
        let mut c = MqttConfig::default();
        let mut s = source();
        s.host = "localhost".into();
        s.port = 1883;
        c.sources.push(s);
        assert_eq!(problem_key(&c), "mqtt.sources[0].host");
        c.sources[0].port = 1884;
        c.validate(&LogConfig::default()).unwrap();

        let mut c = MqttConfig::default();
        c.sinks[1].mqtt_topic = "signage/#".into();
        assert_eq!(problem_key(&c), "mqtt.sinks[1].mqtt_topic");

        let mut c = MqttConfig::default();
        c.broker.enabled = false;
        assert_eq!(problem_key(&c), "mqtt.sinks[0].host");

        let mut c = MqttConfig::default();
        c.broker.routes.push(RouteConfig {
            filter: "signage/#".into(),
            topic: None,
            key: None,
        });
        let (key, problem) = c.validate(&LogConfig::default()).unwrap_err();
        assert_eq!(key, "mqtt.sinks[1].mqtt_topic");
        assert!(problem.contains("routes[6]"), "{problem}");
    }

    #[test]
    fn sink_templates_name_fields_or_pointers() {
        assert_eq!(
            parse_sink_template("pos/{terminal_id}/verdict").unwrap(),
            vec![
                TemplatePart::Text("pos/".into()),
                TemplatePart::Field("/terminal_id".into()),
                TemplatePart::Text("/verdict".into()),
            ]
        );
        assert_eq!(
            parse_sink_template("{/a/b}").unwrap(),
            vec![TemplatePart::Field("/a/b".into())]
        );
        assert!(parse_sink_template("a/{").is_err());
        assert!(parse_sink_template("a/{}").is_err());
        assert!(parse_sink_template("").is_err());
    }

    #[test]
    fn keys_parse_from_toml_inline_tables() {
        let c: MqttConfig = toml::from_str("").unwrap();
        assert_eq!(c, MqttConfig::default());
        let c: MqttConfig = toml::from_str(
            r#"
            sinks = []
            [broker]
            routes = [
              { filter = "sensors/+/temp", topic = "temps.{1}", key = { segment = 1 } },
              { filter = "pos/payments", key = { json_pointer = "/card_id" } },
            ]
            "#,
        )
        .unwrap();
        assert!(c.sinks.is_empty());
        assert_eq!(c.broker.routes[0].key, Some(KeySource::Segment(1)));
        assert_eq!(
            c.broker.routes[1].key,
            Some(KeySource::JsonPointer("/card_id".into()))
        );
        c.validate(&LogConfig::default()).unwrap();
    }
}
