//! Building `rumqttc` connection options from the configuration, shared by the MQTT source and
//! the MQTT sink: address, client id, session, credentials and TLS (rustls with the ring
//! provider; CA bundle and optional client certificate read from PEM files).

use std::path::Path;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS, TlsConfiguration, Transport};

use super::config::{TlsConfig, SYSTEM_CA_FILE};
use super::MqttError;

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

fn read(path: &Path, what: &str) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|source| MqttError::File {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// The rumqttc options for `settings` (reads TLS files).
pub fn options(settings: &ClientSettings) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(
        settings.client_id.clone(),
        settings.host.clone(),
        settings.port,
    );
    if settings.client_id.is_empty() && !settings.clean_session {
        return Err(MqttError::Setup(
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
