//! MQTT ingestion: subscriptions to external brokers ([`source`], on `rumqttc`), the embedded
//! broker ([`broker`], rumqttd on loopback) and the device-facing listener in front of it
//! ([`listener`]), with the mapping rules they share ([`route`]) and their config ([`config`]).
//! This file starts them ([`start`]). The client code shared with the MQTT sink is
//! [`crate::mqtt_client`].
//!
//! How a source acknowledges only what is stored: see [`source`].
//!
//! Both ways in check a routed message against its log topic's store-event contract
//! ([`crate::contracts`]) before storing it: the listener refuses a device's publish that
//! breaks it (MQTT 5 reason 0x99), a source acknowledges such a message without storing it.
//!
//! # Devices on the embedded broker
//! Devices that publish to the box itself are stored by the [`listener`] before the broker sees
//! their messages; sources never subscribe to the embedded broker, so nothing is stored twice.

pub mod broker;
pub mod config;
pub mod listener;
pub mod packet;
pub mod route;
pub mod source;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use self::config::{BrokerConfig, SourceConfig};
use self::route::{Route, Routes};
use crate::contracts::Contracts;
use crate::kernel::Context;
use crate::log::LogError;
use crate::mqtt_client::ClientError;

/// Errors of MQTT ingestion.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The client could not be set up (TLS files, settings).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The embedded broker did not start or stopped.
    #[error("embedded MQTT broker: {0}")]
    Broker(String),
    /// A setting that cannot work (normally caught by config validation).
    #[error("MQTT setup: {0}")]
    Setup(String),
    /// The log failed.
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// A socket or thread operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A long-running MQTT task, with the name it reports under.
pub type Task = (
    &'static str,
    Pin<Box<dyn Future<Output = Result<(), MqttError>> + Send>>,
);

/// What [`start`] set up.
#[derive(Debug)]
pub struct Started {
    /// Where Outpost's own sinks reach the embedded broker: the device listener (over
    /// loopback when it listens on every interface), or the broker's own loopback port when
    /// the listener could not bind. Going through the listener spares the sinks the broker's
    /// Nagle stalls (see `listener::copy_down`).
    pub embedded: Option<SocketAddr>,
    /// The address devices connect to.
    pub listen: Option<SocketAddr>,
    /// The embedded broker's private login, for Outpost's own clients (see `broker`).
    pub login: Option<broker::Login>,
}

/// Starts the embedded broker and binds the device listener (when enabled), and returns the
/// tasks to run: the listener, a watch on the broker, one task per source. `contracts` says
/// whether routed messages are checked against their log topic's store-event contract.
pub async fn start(
    ctx: &Context,
    broker: &BrokerConfig,
    sources: &[SourceConfig],
    contracts: Contracts,
) -> Result<(Started, Vec<Task>), MqttError> {
    let (log, board, shutdown) = (&ctx.log, &ctx.sources, &ctx.shutdown);
    let mut tasks: Vec<Task> = Vec::new();
    let mut started = Started {
        embedded: None,
        listen: None,
        login: None,
    };
    let b = broker;
    if b.enabled {
        let routes = build_routes(
            b.routes
                .iter()
                .map(|r| (r.filter.as_str(), r.topic.as_deref(), r.key.as_ref())),
        )?;
        // A packet carries the payload plus topic, packet id and properties.
        let max_packet = b.max_payload_bytes + 65_535 + 1024;
        // A port in use is reported and retried by the listener task (see `Listener::run`).
        let listener = match tokio::net::TcpListener::bind(&b.listen).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::error!(mqtt_listen = %b.listen, error = %e, "The MQTT listener cannot bind its port; retrying in the background.");
                ctx.ready.wait_for(listener::READY_CONDITION);
                None
            }
        };
        let embedded = broker::start(b, max_packet).await?;
        started.listen = match &listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        started.embedded = Some(match started.listen {
            Some(mut addr) => {
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr {
                        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                addr
            }
            None => embedded.v4,
        });
        started.login = Some(embedded.login.clone());
        let nofile = crate::kernel::limits::open_files();
        let budget = listener::connection_budget(nofile);
        let max_connections = b.max_connections.min(budget);
        if max_connections < b.max_connections {
            tracing::warn!(
                configured = b.max_connections,
                budget = max_connections,
                open_files_limit = nofile,
                "`mqtt.broker.max_connections` is above what the open-file limit allows ({} descriptors per device); the listener accepts at most {max_connections} devices.",
                listener::FDS_PER_CONNECTION
            );
        }
        let shared = Arc::new(listener::Listener::new(
            routes,
            contracts,
            log.clone(),
            board.clone(),
            (embedded.v4, embedded.v5, embedded.login.clone()),
            listener::Limits {
                max_packet,
                max_payload: b.max_payload_bytes,
                max_connections,
                connect_timeout: Duration::from_millis(b.connect_timeout_ms),
            },
        ));
        tasks.push((
            "mqtt-listener",
            Box::pin(shared.run(
                b.listen.clone(),
                listener,
                shutdown.clone(),
                ctx.ready.clone(),
            )),
        ));
        let watch_shutdown = shutdown.clone();
        tasks.push((
            "mqtt-broker",
            Box::pin(async move {
                tokio::select! {
                    message = embedded.stopped() => Err(MqttError::Broker(message)),
                    _ = watch_shutdown.requested() => Ok(()),
                }
            }),
        ));
    }
    for source in sources {
        let task = source::run_source(ctx.clone(), source.clone(), contracts);
        tasks.push(("mqtt-source", Box::pin(task)));
    }
    Ok((started, tasks))
}

pub(crate) fn build_routes<'a>(
    rules: impl Iterator<Item = (&'a str, Option<&'a str>, Option<&'a route::KeySource>)>,
) -> Result<Routes, MqttError> {
    let mut routes = Vec::new();
    for (filter, topic, key) in rules {
        let r = Route::new(filter, topic, key)
            .map_err(|(field, p)| MqttError::Setup(format!("route {filter:?}: {field}: {p}")))?;
        routes.push(r);
    }
    Ok(Routes::new(routes))
}
