//! The embedded MQTT broker: rumqttd, run on loopback ports that only Outpost's device-facing
//! listener (and Outpost's own sinks) connect to.
//!
//! rumqttd serves MQTT 3.1.1 and MQTT 5 on separate servers, so it gets two loopback ports
//! (`internal_port` and the next one, or two free ports); the listener sends each device to the
//! one its CONNECT asks for. rumqttd runs on its own threads (a router thread and one
//! single-threaded runtime per server) and cannot be stopped: it ends with the process.
//!
//! # Only Outpost gets in
//! The broker's ports are ordinary loopback TCP ports, so any local process could connect to
//! them and have a publish acknowledged that the log never saw. The broker therefore accepts
//! one login only: a user name and a random 128-bit password made at every start
//! (`Login::generate`) that never leaves the process. The listener puts it into every
//! device's CONNECT (`packet::with_login`), Outpost's own sinks present it, and every other
//! client is refused at CONNECT.
//!
//! Two settings matter beyond sizes. rumqttd disconnects a client that publishes to a topic no
//! filter matches (unless filters are created dynamically, one in-memory log per topic name), so
//! the broker starts with one filter `#` that every ordinary topic matches: publishes without
//! subscribers are accepted, and memory stays bounded by that filter's segments. And rumqttd
//! refuses a keep-alive of 0, like many brokers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::config::BrokerConfig;
use super::MqttError;
pub use crate::mqtt_client::Login;

/// Size of one in-memory segment of the broker's per-filter logs, at least.
const SEGMENT_BYTES: usize = 4 * 1024 * 1024;
/// Segments kept per filter (older ones are dropped; subscribers that lag that far miss them).
const SEGMENTS: usize = 4;
/// How long the broker may take to answer its first CONNECT.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// Loopback address of the MQTT 3.1.1 server.
    pub v4: SocketAddr,
    /// Loopback address of the MQTT 5 server.
    pub v5: SocketAddr,
    /// The only login the broker accepts.
    pub login: Login,
    stopped: oneshot::Receiver<String>,
}

impl EmbeddedBroker {
    /// Resolves (with a description) if the broker's servers ever stop; they should not.
    pub async fn stopped(self) -> String {
        self.stopped
            .await
            .unwrap_or_else(|_| "the broker thread ended without a word".to_string())
    }
}

/// Two distinct free loopback ports.
fn free_ports() -> Result<(u16, u16), MqttError> {
    let a = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn server(
    name: &str,
    addr: SocketAddr,
    cfg: &BrokerConfig,
    max_packet: usize,
    login: &Login,
) -> rumqttd::ServerSettings {
    rumqttd::ServerSettings {
        name: name.to_string(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: cfg.connect_timeout_ms.min(u64::from(u16::MAX)) as u16,
            max_payload_size: max_packet,
            max_inflight_count: cfg.max_inflight,
            auth: Some(HashMap::from([(
                login.user.clone(),
                login.password.clone(),
            )])),
            external_auth: None,
            dynamic_filters: false,
        },
    }
}

fn rumqttd_config(
    cfg: &BrokerConfig,
    v4: SocketAddr,
    v5: SocketAddr,
    max_packet: usize,
    login: &Login,
) -> rumqttd::Config {
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            // Devices, plus Outpost's own sink clients and readiness probes.
            max_connections: cfg.max_connections + 64,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES.max(2 * max_packet),
            max_segment_count: SEGMENTS,
            custom_segment: None,
            initialized_filters: Some(vec!["#".to_string()]),
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([(
            "v4".to_string(),
            server("outpost-mqtt-v4", v4, cfg, max_packet, login),
        )])),
        v5: Some(HashMap::from([(
            "v5".to_string(),
            server("outpost-mqtt-v5", v5, cfg, max_packet, login),
        )])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// A CONNECT (clean session, keep-alive 10 s, `login` when given) for the readiness probe.
fn probe_connect(level: u8, login: Option<&Login>) -> Vec<u8> {
    let client_id = b"outpost-probe";
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 10];
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id);
    if let Some(login) = login {
        body[7] |= 0xC0;
        for field in [login.user.as_bytes(), login.password.as_bytes()] {
            body.extend_from_slice(&(field.len() as u16).to_be_bytes());
            body.extend_from_slice(field);
        }
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Connects to `addr` and completes an MQTT handshake: proves rumqttd (and not some other
/// program) serves the port.
async fn probe(addr: SocketAddr, level: u8, login: Option<&Login>) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&probe_connect(level, login))
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 4];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| format!("no CONNACK: {e}"))?;
    if head[0] != 0x20 || head[3] != 0 {
        return Err(format!("unexpected answer {head:02x?} to a CONNECT"));
    }
    // Close without a DISCONNECT (rumqttd logs an error for every DISCONNECT it processes
    // after the link is gone); the probe set no will and a clean session, so nothing is left.
    // Closing our side first and reading to the end keeps the broker from seeing a reset.
    let _ = stream.shutdown().await;
    let mut rest = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut rest)).await;
    Ok(())
}

/// Starts rumqttd and waits until both its servers answer a CONNECT. `max_packet` is the
/// largest packet the listener forwards.
pub async fn start(cfg: &BrokerConfig, max_packet: usize) -> Result<EmbeddedBroker, MqttError> {
    let attempts = if cfg.internal_port == 0 { 3 } else { 1 };
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        let (p4, p5) = if cfg.internal_port == 0 {
            free_ports()?
        } else {
            (cfg.internal_port, cfg.internal_port + 1)
        };
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, p4));
        let v5 = SocketAddr::from((Ipv4Addr::LOCALHOST, p5));
        let login = Login::generate("outpost-listener")?;
        let config = rumqttd_config(cfg, v4, v5, max_packet, &login);
        let (tx, mut stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name("outpost-mqtt-broker".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                let message = match broker.start() {
                    Ok(()) => "the embedded broker's servers stopped".to_string(),
                    Err(e) => format!("the embedded broker failed: {e}"),
                };
                let _ = tx.send(message);
            })?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = loop {
            if let Ok(message) = stopped.try_recv() {
                break Err(message);
            }
            match (
                probe(v4, 4, Some(&login)).await,
                probe(v5, 5, Some(&login)).await,
            ) {
                (Ok(()), Ok(())) => break Ok(()),
                (Err(e), _) | (_, Err(e)) => {
                    if Instant::now() > deadline {
                        break Err(format!("it did not answer on {v4} and {v5}: {e}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match ready {
            Ok(()) => {
                tracing::info!(v4 = %v4, v5 = %v5, "The embedded MQTT broker is ready on loopback.");
                return Ok(EmbeddedBroker {
                    v4,
                    v5,
                    login,
                    stopped,
                });
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "The embedded MQTT broker did not start.");
                last_error = e;
            }
        }
    }
    Err(MqttError::Broker(format!(
        "{last_error} (`mqtt.broker.internal_port` = {})",
        cfg.internal_port
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_broker_refuses_every_client_without_outposts_private_login() {
        let broker = start(&BrokerConfig::default(), 1 << 20).await.unwrap();
        let stranger = Login {
            user: broker.login.user.clone(),
            password: "0".repeat(32),
        };
        for (addr, level) in [(broker.v4, 4), (broker.v5, 5)] {
            assert_eq!(probe(addr, level, Some(&broker.login)).await, Ok(()));
            assert!(
                probe(addr, level, None).await.is_err(),
                "MQTT {level}: a client without a login was let in"
            );
            assert!(
                probe(addr, level, Some(&stranger)).await.is_err(),
                "MQTT {level}: a wrong password was let in"
            );
        }
        assert_ne!(
            Login::generate("outpost-listener").unwrap(),
            broker.login,
            "a new login per start"
        );
    }
}
