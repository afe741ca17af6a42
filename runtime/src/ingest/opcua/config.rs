//! The `[opcua]` section: the OPC-UA servers to subscribe to, how to reach and authenticate
//! with them, and their monitored items.
//!
//! Every key is documented in `runtime/config/outpost.example.toml`. [`OpcuaConfig::validate`]
//! turns a nonsense value into an error naming the dotted key (`opcua.servers[0].items[2].node_id`)
//! and the fix.

use std::collections::HashSet;
use std::str::FromStr;

use opcua::types::NodeId;
use serde::{Deserialize, Serialize};

/// The `[opcua]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaConfig {
    /// The servers to subscribe to (`[[opcua.servers]]`); none by default.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
}

/// The security policy of the endpoint to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityPolicy {
    /// No signing, no encryption (security mode must be `none`).
    None,
    /// `http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256`.
    Basic256sha256,
}

impl SecurityPolicy {
    /// The name async-opcua and the OPC-UA specification use.
    pub fn uri_name(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256sha256 => "Basic256Sha256",
        }
    }
}

/// The message security mode of the endpoint to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    /// Messages are neither signed nor encrypted.
    None,
    /// Messages are signed.
    Sign,
    /// Messages are signed and encrypted.
    SignAndEncrypt,
}

impl SecurityMode {
    /// The name used in status and logs.
    pub fn label(self) -> &'static str {
        match self {
            SecurityMode::None => "none",
            SecurityMode::Sign => "sign",
            SecurityMode::SignAndEncrypt => "sign_and_encrypt",
        }
    }
}

/// One `[[opcua.servers]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Server name: the record key, the `server` field and part of the default topic.
    /// 1-64 of `[a-z0-9._-]`, unique among the servers.
    pub name: String,
    /// The endpoint, `opc.tcp://host:port[/path]`.
    pub endpoint_url: String,
    /// `"none"` or `"basic256sha256"`.
    #[serde(default = "default_security_policy")]
    pub security_policy: SecurityPolicy,
    /// `"none"`, `"sign"` or `"sign_and_encrypt"`; `none` exactly when the policy is `none`.
    #[serde(default = "default_security_mode")]
    pub security_mode: SecurityMode,
    /// User name for user/password authentication; unset: anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password that goes with `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The client's PKI directory (`own/`, `private/`, `trusted/`, `rejected/`). Required with a
    /// security policy other than `none`. Without `certificate_path`/`private_key_path`, a
    /// self-signed client certificate is created there on first use (`own/cert.der`,
    /// `private/private.pem`) and kept for later runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki_dir: Option<String>,
    /// The client certificate (DER); set together with `private_key_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_path: Option<String>,
    /// The client private key (PEM); set together with `certificate_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_path: Option<String>,
    /// Trust the server's certificate without it being in `<pki_dir>/trusted/`. Convenient on a
    /// closed store network; leave off to pin the server certificate by copying it there.
    #[serde(default)]
    pub trust_server_certificate: bool,
    /// Log topic of the records; unset: `opcua.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// How often the server sends the data changes of the subscription, in ms.
    #[serde(default = "default_publishing_interval_ms")]
    pub publishing_interval_ms: u64,
    /// How long the server keeps the session when Outpost is gone, in ms.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How long to wait for the answer to one request, in ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Interval of the keep-alive reads that detect a silently dropped network, in ms; the
    /// session is rebuilt after three failed in a row.
    #[serde(default = "default_keep_alive_interval_ms")]
    pub keep_alive_interval_ms: u64,
    /// Wait after the first failed (re)connection before the next attempt, in ms; doubles with
    /// every further failure...
    #[serde(default = "default_reconnect_backoff_initial_ms")]
    pub reconnect_backoff_initial_ms: u64,
    /// ...up to this, in ms.
    #[serde(default = "default_reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
    /// The monitored items (`[[opcua.servers.items]]`).
    #[serde(default)]
    pub items: Vec<ItemConfig>,
}

/// One `[[opcua.servers.items]]` entry: a variable whose value changes become records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemConfig {
    /// The node, in the OPC-UA string form: `ns=2;s=Temperature`, `ns=2;i=5`, `i=2258`,
    /// `ns=1;g=<guid>`, `ns=1;b=<base64>`. Unique within a server.
    pub node_id: String,
    /// The `name` field of the records; unset: the node's display name, read from the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How often the server samples the value, in ms; unset: the publishing interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_interval_ms: Option<u64>,
    /// How many changes the server queues between two publishes (1 = only the latest).
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Report a numeric change only when it exceeds this absolute amount; unset: every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband_absolute: Option<f64>,
}

fn default_security_policy() -> SecurityPolicy {
    SecurityPolicy::None
}
fn default_security_mode() -> SecurityMode {
    SecurityMode::None
}
fn default_publishing_interval_ms() -> u64 {
    1000
}
fn default_session_timeout_ms() -> u64 {
    60_000
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_keep_alive_interval_ms() -> u64 {
    5_000
}
fn default_reconnect_backoff_initial_ms() -> u64 {
    500
}
fn default_reconnect_backoff_max_ms() -> u64 {
    30_000
}
fn default_queue_size() -> u32 {
    10
}

impl ServerConfig {
    /// A server with every optional key at its default (anonymous, security `none`).
    pub fn new(name: &str, endpoint_url: &str) -> ServerConfig {
        ServerConfig {
            name: name.to_string(),
            endpoint_url: endpoint_url.to_string(),
            security_policy: default_security_policy(),
            security_mode: default_security_mode(),
            username: None,
            password: None,
            pki_dir: None,
            certificate_path: None,
            private_key_path: None,
            trust_server_certificate: false,
            topic: None,
            publishing_interval_ms: default_publishing_interval_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            keep_alive_interval_ms: default_keep_alive_interval_ms(),
            reconnect_backoff_initial_ms: default_reconnect_backoff_initial_ms(),
            reconnect_backoff_max_ms: default_reconnect_backoff_max_ms(),
            items: Vec::new(),
        }
    }

    /// The log topic of the server's records.
    pub fn topic_name(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("opcua.{}", self.name))
    }
}

impl ItemConfig {
    /// An item with every optional key at its default.
    pub fn new(node_id: &str) -> ItemConfig {
        ItemConfig {
            node_id: node_id.to_string(),
            name: None,
            sampling_interval_ms: None,
            queue_size: default_queue_size(),
            deadband_absolute: None,
        }
    }
}

/// Parses an OPC-UA node id in its string form.
pub fn parse_node_id(text: &str) -> Result<NodeId, String> {
    NodeId::from_str(text.trim()).map_err(|_| {
        format!(
            "`{text}` is not a node id; write it as `ns=<index>;s=<name>` (string), \
             `ns=<index>;i=<number>` (numeric), `ns=<index>;g=<guid>` or `ns=<index>;b=<base64>` \
             (`ns=0;` may be left out)"
        )
    })
}

/// Checks `opc.tcp://host:port[/path]`.
fn check_endpoint_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("opc.tcp://") else {
        return Err(format!(
            "`{url}` is not an OPC-UA binary endpoint; write `opc.tcp://<host>:<port>[/path]`, \
             e.g. `opc.tcp://192.168.1.20:4840`"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!(
            "`{url}` names no host; write `opc.tcp://<host>:<port>[/path]`"
        ));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!(
                    "`{url}` has port `{port}`; the port must be a number from 1 to 65535 \
                     (OPC-UA's usual one is 4840)"
                ))
            }
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid server name; use 1 to 64 of a-z, 0-9, `.`, `_` and `-`"
        ))
    }
}

impl OpcuaConfig {
    /// Checks every server entry; the error names the dotted key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut names = HashSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            let key = |field: &str| format!("opcua.servers[{i}].{field}");
            check_name(&server.name).map_err(|p| (key("name"), p))?;
            if !names.insert(server.name.as_str()) {
                return Err((
                    key("name"),
                    format!(
                        "the server name `{}` is used twice; give every server its own name",
                        server.name
                    ),
                ));
            }
            check_endpoint_url(&server.endpoint_url).map_err(|p| (key("endpoint_url"), p))?;
            match (server.security_policy, server.security_mode) {
                (SecurityPolicy::None, SecurityMode::None) => {}
                (SecurityPolicy::None, mode) => {
                    return Err((
                        key("security_mode"),
                        format!(
                            "security mode `{}` needs a security policy; set \
                             `security_policy = \"basic256sha256\"` or `security_mode = \"none\"`",
                            mode.label()
                        ),
                    ))
                }
                (_, SecurityMode::None) => {
                    return Err((
                        key("security_mode"),
                        "security policy `basic256sha256` needs security mode `sign` or \
                         `sign_and_encrypt`; or set `security_policy = \"none\"`"
                            .to_string(),
                    ))
                }
                _ => {}
            }
            if server.security_policy != SecurityPolicy::None && server.pki_dir.is_none() {
                return Err((
                    key("pki_dir"),
                    "a secure endpoint needs the client's PKI directory, e.g. \
                     `pki_dir = \"/var/lib/outpost/opcua-pki\"`; a client certificate is created \
                     there on first use"
                        .to_string(),
                ));
            }
            if server.certificate_path.is_some() != server.private_key_path.is_some() {
                return Err((
                    key("certificate_path"),
                    "set `certificate_path` and `private_key_path` together, or neither (a \
                     self-signed certificate is then created in `pki_dir`)"
                        .to_string(),
                ));
            }
            match (&server.username, &server.password) {
                (Some(user), Some(_)) if user.is_empty() => {
                    return Err((
                        key("username"),
                        "the user name is empty; remove `username` and `password` for anonymous \
                         access"
                            .to_string(),
                    ))
                }
                (Some(_), None) => {
                    return Err((
                        key("password"),
                        "`username` is set without `password`; set both, or neither for \
                         anonymous access"
                            .to_string(),
                    ))
                }
                (None, Some(_)) => {
                    return Err((
                        key("username"),
                        "`password` is set without `username`; set both, or neither for \
                         anonymous access"
                            .to_string(),
                    ))
                }
                _ => {}
            }
            let topic = server.topic_name();
            crate::log::validate_topic_name(&topic).map_err(|e| (key("topic"), e.to_string()))?;
            let ranges = [
                (
                    "publishing_interval_ms",
                    server.publishing_interval_ms,
                    10,
                    3_600_000,
                ),
                (
                    "session_timeout_ms",
                    server.session_timeout_ms,
                    1_000,
                    3_600_000,
                ),
                (
                    "request_timeout_ms",
                    server.request_timeout_ms,
                    100,
                    600_000,
                ),
                (
                    "keep_alive_interval_ms",
                    server.keep_alive_interval_ms,
                    100,
                    600_000,
                ),
                (
                    "reconnect_backoff_initial_ms",
                    server.reconnect_backoff_initial_ms,
                    10,
                    600_000,
                ),
                (
                    "reconnect_backoff_max_ms",
                    server.reconnect_backoff_max_ms,
                    10,
                    3_600_000,
                ),
            ];
            for (field, value, lo, hi) in ranges {
                if !(lo..=hi).contains(&value) {
                    return Err((
                        key(field),
                        format!("{value} is out of range; use a value from {lo} to {hi}"),
                    ));
                }
            }
            if server.reconnect_backoff_max_ms < server.reconnect_backoff_initial_ms {
                return Err((
                    key("reconnect_backoff_max_ms"),
                    format!(
                        "{} is below `reconnect_backoff_initial_ms` ({}); the cap must be at \
                         least the first wait",
                        server.reconnect_backoff_max_ms, server.reconnect_backoff_initial_ms
                    ),
                ));
            }
            if server.items.is_empty() {
                return Err((
                    key("items"),
                    "the server has no monitored items; add at least one \
                     `[[opcua.servers.items]]` with a `node_id`"
                        .to_string(),
                ));
            }
            let mut nodes = HashSet::new();
            for (j, item) in server.items.iter().enumerate() {
                let key = |field: &str| format!("opcua.servers[{i}].items[{j}].{field}");
                let node = parse_node_id(&item.node_id).map_err(|p| (key("node_id"), p))?;
                if !nodes.insert(node.clone()) {
                    return Err((
                        key("node_id"),
                        format!(
                            "the node `{node}` is monitored twice on server `{}`; remove one entry",
                            server.name
                        ),
                    ));
                }
                if item.name.as_ref().is_some_and(|n| n.trim().is_empty()) {
                    return Err((
                        key("name"),
                        "the name is empty; remove `name` to use the node's display name"
                            .to_string(),
                    ));
                }
                if let Some(ms) = item.sampling_interval_ms {
                    if ms > 3_600_000 {
                        return Err((
                            key("sampling_interval_ms"),
                            format!("{ms} is out of range; use 0 (fastest) to 3600000"),
                        ));
                    }
                }
                if !(1..=10_000).contains(&item.queue_size) {
                    return Err((
                        key("queue_size"),
                        format!("{} is out of range; use 1 to 10000", item.queue_size),
                    ));
                }
                if let Some(d) = item.deadband_absolute {
                    if !d.is_finite() || d < 0.0 {
                        return Err((
                            key("deadband_absolute"),
                            format!("{d} is not a usable deadband; use a number ≥ 0"),
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

    fn valid() -> OpcuaConfig {
        let mut server = ServerConfig::new("plc-1", "opc.tcp://127.0.0.1:4840");
        server.items.push(ItemConfig::new("ns=2;s=Temperature"));
        server.items.push(ItemConfig::new("ns=2;i=5"));
        OpcuaConfig {
            servers: vec![server],
        }
    }

    fn error_of(config: &OpcuaConfig) -> (String, String) {
        config.validate().expect_err("the config should be refused")
    }

    #[test]
    fn a_plain_server_with_two_items_is_valid() {
        valid().validate().unwrap();
        assert_eq!(valid().servers[0].topic_name(), "opcua.plc-1");
    }

    #[test]
    fn a_parsed_section_takes_the_documented_defaults() {
        let text = r#"
            [[servers]]
            name = "plc-1"
            endpoint_url = "opc.tcp://10.0.0.5:4840"
            [[servers.items]]
            node_id = "ns=2;s=Temp"
        "#;
        let config: OpcuaConfig = toml::from_str(text).unwrap();
        let mut expected = ServerConfig::new("plc-1", "opc.tcp://10.0.0.5:4840");
        expected.items.push(ItemConfig::new("ns=2;s=Temp"));
        assert_eq!(config.servers, vec![expected]);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = r#"
            [[servers]]
            name = "plc-1"
            endpoint_url = "opc.tcp://10.0.0.5:4840"
            publish_ms = 5
        "#;
        assert!(toml::from_str::<OpcuaConfig>(text).is_err());
    }

    #[test]
    fn a_bad_node_id_names_the_item_key_and_the_syntax() {
        let mut config = valid();
        config.servers[0].items[1].node_id = "ns=2;x=5".into();
        let (key, problem) = error_of(&config);
        assert_eq!(key, "opcua.servers[0].items[1].node_id");
        assert!(problem.contains("ns=<index>;s=<name>"), "{problem}");
    }

    #[test]
    fn a_node_monitored_twice_is_refused_even_when_spelled_differently() {
        let mut config = valid();
        config.servers[0].items[1].node_id = " ns=2;s=Temperature".into();
        let (key, problem) = error_of(&config);
        assert_eq!(key, "opcua.servers[0].items[1].node_id");
        assert!(problem.contains("twice"), "{problem}");
    }

    #[test]
    fn bad_endpoint_urls_name_the_key() {
        for url in [
            "http://127.0.0.1:4840",
            "opc.tcp://:4840",
            "opc.tcp://host:0",
            "opc.tcp://host:port",
            "opc.tcp://host:70000/x",
        ] {
            let mut config = valid();
            config.servers[0].endpoint_url = url.into();
            let (key, problem) = error_of(&config);
            assert_eq!(key, "opcua.servers[0].endpoint_url", "{url}");
            assert!(problem.contains("opc.tcp://"), "{url}: {problem}");
        }
        let mut config = valid();
        config.servers[0].endpoint_url = "opc.tcp://plc.local/UA/Server".into();
        config.validate().unwrap();
    }

    #[test]
    fn a_mode_without_a_policy_and_a_policy_without_a_mode_are_refused() {
        let mut config = valid();
        config.servers[0].security_mode = SecurityMode::Sign;
        let (key, problem) = error_of(&config);
        assert_eq!(key, "opcua.servers[0].security_mode");
        assert!(problem.contains("basic256sha256"), "{problem}");

        let mut config = valid();
        config.servers[0].security_policy = SecurityPolicy::Basic256sha256;
        config.servers[0].pki_dir = Some("/tmp/pki".into());
        let (key, _) = error_of(&config);
        assert_eq!(key, "opcua.servers[0].security_mode");

        config.servers[0].security_mode = SecurityMode::SignAndEncrypt;
        config.validate().unwrap();
        config.servers[0].pki_dir = None;
        assert_eq!(error_of(&config).0, "opcua.servers[0].pki_dir");
    }

    #[test]
    fn duplicate_server_names_are_refused() {
        let mut config = valid();
        let mut second = config.servers[0].clone();
        second.endpoint_url = "opc.tcp://127.0.0.1:4841".into();
        config.servers.push(second);
        let (key, problem) = error_of(&config);
        assert_eq!(key, "opcua.servers[1].name");
        assert!(problem.contains("twice"), "{problem}");
    }

    #[test]
    fn credentials_and_certificates_come_in_pairs() {
        let mut config = valid();
        config.servers[0].username = Some("operator".into());
        assert_eq!(error_of(&config).0, "opcua.servers[0].password");
        config.servers[0].password = Some("secret".into());
        config.validate().unwrap();

        config.servers[0].certificate_path = Some("own/cert.der".into());
        assert_eq!(error_of(&config).0, "opcua.servers[0].certificate_path");
    }

    #[test]
    fn a_server_without_items_and_odd_numbers_are_refused() {
        let mut config = valid();
        config.servers[0].items.clear();
        assert_eq!(error_of(&config).0, "opcua.servers[0].items");

        let mut config = valid();
        config.servers[0].reconnect_backoff_max_ms = 100;
        assert_eq!(
            error_of(&config).0,
            "opcua.servers[0].reconnect_backoff_max_ms"
        );

        let mut config = valid();
        config.servers[0].items[0].queue_size = 0;
        assert_eq!(error_of(&config).0, "opcua.servers[0].items[0].queue_size");

        let mut config = valid();
        config.servers[0].items[0].deadband_absolute = Some(-1.0);
        assert_eq!(
            error_of(&config).0,
            "opcua.servers[0].items[0].deadband_absolute"
        );
    }
}
