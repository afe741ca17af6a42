//! The `[[mqtt.sinks]]` config: which log topic a sink publishes, to which MQTT topic template,
//! on which broker. Checked here on its own; a sink on the embedded broker (no `host`) is
//! checked against the broker's routes by the `[mqtt]` section (`config.rs`), which knows both.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::mqtt_client::{
    check_credentials, check_host, check_name, check_qos, check_tls, range, Problem, TlsConfig,
};

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
    #[serde(default = "crate::mqtt_client::default_qos")]
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
    #[serde(default = "crate::mqtt_client::default_port")]
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
    #[serde(default = "crate::mqtt_client::default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_start_at() -> StartAt {
    StartAt::End
}

fn default_sink_inflight() -> u16 {
    100
}

pub(crate) fn sink(name: &str, topic: &str, mqtt_topic: &str) -> SinkConfig {
    SinkConfig {
        name: name.to_string(),
        topic: topic.to_string(),
        mqtt_topic: mqtt_topic.to_string(),
        qos: crate::mqtt_client::default_qos(),
        retain: false,
        start_at: default_start_at(),
        host: None,
        port: crate::mqtt_client::default_port(),
        client_id: None,
        username: None,
        password: None,
        tls: None,
        max_inflight: default_sink_inflight(),
        retry_max_ms: crate::mqtt_client::default_retry_max_ms(),
    }
}

/// The sinks of the embedded-defaults config: verdicts to the POS, offers to signage.
pub fn default_sinks() -> Vec<SinkConfig> {
    vec![
        sink("verdicts", "fraud.scores", "pos/{terminal_id}/verdict"),
        sink("offers", "recommendations", "signage/{device_id}/offers"),
    ]
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

/// A concrete MQTT topic `template` produces (fields replaced by `x`), to test it against
/// topic filters.
pub fn sample_topic(template: &str) -> String {
    parse_sink_template(template)
        .unwrap_or_default()
        .iter()
        .map(|p| match p {
            TemplatePart::Text(t) => t.as_str(),
            TemplatePart::Field(_) => "x",
        })
        .collect()
}

/// Checks every `[[mqtt.sinks]]` entry on its own; the problem names the key.
pub fn validate(sinks: &[SinkConfig]) -> Result<(), Problem> {
    let mut names = BTreeSet::new();
    for (i, s) in sinks.iter().enumerate() {
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
                if s.tls.is_some() {
                    return Err((format!("{prefix}.tls"), "applies only to an external broker (`host`); the embedded broker is reached over loopback".into()));
                }
            }
        }
    }
    Ok(())
}
