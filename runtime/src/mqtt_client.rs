//! The MQTT client code shared by the MQTT source (`ingest/mqtt/`), the MQTT sink
//! (`sink/mqtt/`) and the demo traffic (`simulate/`): connection settings, the `tls` config
//! section and its checks, QoS levels, building `rumqttc` options (rustls with the ring
//! provider; CA bundle and optional client certificate read from PEM files) and connecting with
//! `TCP_NODELAY`. Retry timing is the kernel's [`crate::kernel::Backoff`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

/// The default QoS of subscriptions and sink publishes (`qos`): 1.
pub fn default_qos() -> u8 {
    1
}

/// The default broker port (`port`): 1883.
pub fn default_port() -> u16 {
    1883
}

/// The default longest wait between reconnects (`retry_max_ms`): 30 s.
pub fn default_retry_max_ms() -> u64 {
    30_000
}

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A certificate or key file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    File {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A setting that cannot work (normally caught by config validation).
    #[error("MQTT setup: {0}")]
    Setup(String),
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

/// A config problem: the dotted key and what is wrong with it.
pub type Problem = (String, String);

/// Checks a `<prefix>.tls` section: the files exist, a certificate comes with its key.
pub fn check_tls(prefix: &str, tls: &TlsConfig) -> Result<(), Problem> {
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

/// Checks that a password comes with a user name (`<prefix>.username`).
pub fn check_credentials(
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

/// Checks that `<key>` = `value` lies in `min..=max`.
pub fn range(key: &str, value: u64, min: u64, max: u64) -> Result<(), Problem> {
    if value < min || value > max {
        return Err((
            key.to_string(),
            format!("{value} is out of range; set it between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Checks a section name `<key>`: set, a plain identifier, not used twice (`seen`).
pub fn check_name(key: &str, name: &str, seen: &mut BTreeSet<String>) -> Result<(), Problem> {
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

/// Checks a broker host `<key>`: set, without a port.
pub fn check_host(key: &str, host: &str) -> Result<(), Problem> {
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

/// Checks a QoS level (`<key>`): 0, 1 or 2.
pub fn check_qos(key: &str, qos: u8) -> Result<(), Problem> {
    if qos > 2 {
        return Err((
            key.to_string(),
            format!("{qos} is not a QoS; use 0, 1 or 2"),
        ));
    }
    Ok(())
}

/// What a connection to a broker needs, whoever makes it.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub clean_session: bool,
    pub keep_alive: Duration,
    pub tls: Option<TlsConfig>,
    /// Largest packet accepted from the broker, in bytes.
    pub max_incoming_packet: usize,
    /// Largest packet sent, in bytes.
    pub max_outgoing_packet: usize,
    /// Outgoing QoS 1/2 publishes in flight at most.
    pub inflight: u16,
    /// Acknowledge incoming publishes only through `AsyncClient::ack`.
    pub manual_acks: bool,
}

impl ClientSettings {
    /// `host:port` for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::File {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// A user name and password that must not show up in logs or `Debug` output (the embedded
/// broker's private login).
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<private>")
            .finish()
    }
}

impl Login {
    /// A login for `user` with a fresh password: 128 bits from the OS's random source, as 32
    /// hex digits.
    pub fn generate(user: &str) -> std::io::Result<Login> {
        let mut bytes = [0u8; 16];
        let mut filled = 0;
        while filled < bytes.len() {
            // SAFETY: getrandom(2) writes at most `len` bytes into the live buffer it is given.
            let n = unsafe {
                libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            filled += n as usize;
        }
        Ok(Login {
            user: user.to_string(),
            password: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// The rumqttc options for `settings` (reads TLS files).
pub fn options(settings: &ClientSettings) -> Result<MqttOptions, ClientError> {
    let mut o = MqttOptions::new(
        settings.client_id.clone(),
        settings.host.clone(),
        settings.port,
    );
    if settings.client_id.is_empty() && !settings.clean_session {
        return Err(ClientError::Setup(
            "a persistent session (clean_session = false) needs a client id".into(),
        ));
    }
    o.set_clean_session(settings.clean_session);
    let keep_alive = if settings.keep_alive < Duration::from_secs(1) {
        Duration::from_secs(1)
    } else {
        settings.keep_alive
    };
    o.set_keep_alive(keep_alive);
    o.set_max_packet_size(settings.max_incoming_packet, settings.max_outgoing_packet);
    o.set_inflight(settings.inflight.max(1));
    o.set_manual_acks(settings.manual_acks);
    if let Some(user) = &settings.username {
        o.set_credentials(user.clone(), settings.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &settings.tls {
        let ca_path = tls.ca_file.clone().unwrap_or_else(|| SYSTEM_CA_FILE.into());
        let ca = read(&ca_path, "CA file")?;
        let client_auth = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                Some((read(cert, "client certificate")?, read(key, "client key")?))
            }
            _ => None,
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

/// The QoS of a configured level (0, 1; anything higher is 2), for subscriptions and
/// publishes alike.
pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// A client and its event loop with `TCP_NODELAY` on: an acknowledgement or a small publish
/// goes out at once instead of waiting (Nagle) for the peer's delayed TCP ACK, which otherwise
/// adds up to 40 ms to a publish-to-PUBACK round trip.
pub fn connect(options: MqttOptions, request_capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, request_capacity);
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tls_files_are_named_in_the_error() {
        let s = ClientSettings {
            host: "localhost".into(),
            port: 8883,
            client_id: "x".into(),
            username: None,
            password: None,
            clean_session: false,
            keep_alive: Duration::from_secs(30),
            tls: Some(TlsConfig {
                ca_file: Some("/nonexistent/ca.pem".into()),
                cert_file: None,
                key_file: None,
            }),
            max_incoming_packet: 1 << 20,
            max_outgoing_packet: 1 << 20,
            inflight: 10,
            manual_acks: true,
        };
        let err = options(&s).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}

/// Aborts a task when dropped: the event loop of a client whose run ended, however it ended.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
