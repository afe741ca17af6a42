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

use serde::{Deserialize, Serialize};

use super::route::{KeySource, Route};
use crate::log::LogConfig;
use crate::mqtt_client::{check_credentials, check_host, check_name, check_qos, check_tls, range};
pub use crate::mqtt_client::{Problem, TlsConfig, SYSTEM_CA_FILE};

/// Bytes a stored record may need besides the MQTT payload: the `mqtt-topic` header (a topic is
/// at most 65535 bytes) and the `mqtt-client-id` header (at most 65535 bytes), with framing.
pub const RECORD_OVERHEAD_BYTES: usize = 2 * 65_535 + 64;

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
    /// Most device connections at once (Outpost's own sinks on the embedded broker count too).
    /// Lowered at start to what the open-file limit allows: each device costs three file
    /// descriptors and a quarter of the limit (at least 256) stays for everything else. A
    /// device beyond it gets a refusing CONNACK.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest MQTT payload a device may publish, in bytes: a publish one byte above it is
    /// refused (MQTT 5: DISCONNECT 0x95; MQTT 3.1.1: the connection closes) and not stored.
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
    #[serde(default = "crate::mqtt_client::default_qos")]
    pub qos: u8,
    /// Log topic template, as in `[[mqtt.broker.routes]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Record key, as in `[[mqtt.broker.routes]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeySource>,
}

/// `[[mqtt.sources]]`: an external broker Outpost subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name; the source shows as `mqtt:<name>` in status.
    pub name: String,
    /// Broker host name or IP (with TLS, the name its certificate carries).
    pub host: String,
    /// Broker port.
    #[serde(default = "crate::mqtt_client::default_port")]
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
    #[serde(default = "crate::mqtt_client::default_retry_max_ms")]
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
fn default_keep_alive_ms() -> u64 {
    30_000
}
fn default_retry_initial_ms() -> u64 {
    500
}
fn default_batch_max_records() -> usize {
    1000
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

impl BrokerConfig {
    /// The index of the first route that takes MQTT topic `topic`, if one does.
    pub fn route_taking(&self, topic: &str) -> Option<usize> {
        self.routes.iter().position(|r| {
            super::route::TopicFilter::parse(&r.filter).is_ok_and(|f| f.matches(topic))
        })
    }
}

/// Checks `[mqtt.broker]` and `[[mqtt.sources]]`; `log` is the `[log]` section (record size
/// limit). The problem names the key.
pub fn validate(
    broker: &BrokerConfig,
    sources: &[SourceConfig],
    log: &LogConfig,
) -> Result<(), Problem> {
    let b = broker;
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
    for (i, s) in sources.iter().enumerate() {
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
                return Err((
                    format!("{prefix}.client_id"),
                    "must be 1 to 65535 bytes; a persistent session needs a fixed, non-empty id"
                        .into(),
                ));
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

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    // The `[mqtt]` section as a whole (it lives in config.rs) and the sinks' templates.
    use crate::config::MqttConfig;
    use crate::sink::mqtt::config::{parse_sink_template, TemplatePart};

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
