//! One server's task: find the endpoint, open a session, subscribe, store every data change,
//! and keep the session healthy; see the module documentation of `opcua` for the behaviour.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use opcua::client::{
    Client, ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore,
    Session, SessionActivity, SessionConnectMode, SessionPollResult, SubscriptionActivity,
};
use opcua::crypto::SecurityPolicy as UaPolicy;
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeNotification, DataChangeTrigger, DeadbandType,
    EndpointDescription, ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NodeId, NotificationMessage, QualifiedName, ReadValueId,
    StatusChangeNotification, StatusCode, TimestampsToReturn, Variant,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

use super::config::{parse_node_id, SecurityMode, SecurityPolicy, ServerConfig};
use super::record::data_change_record;
use crate::ingest::append_groups;
use crate::ingest::gaps::{Gaps, OpenGap};
use crate::ingest::link_metrics::LinkMetrics;
use crate::kernel::{lock, now_ms, Backoff, Shutdown};
use crate::kernel::{Link, StatusBoard, StatusEntry};
use crate::log::{Log, LogError, NewRecord};
use crate::metrics::{self, Counter};

/// Failed keep-alive reads in a row after which the session is rebuilt.
const MAX_FAILED_KEEP_ALIVES: u64 = 3;
/// How long closing a session on shutdown or rebuild may take before it is abandoned.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the subscription callback hands to the server task.
#[derive(Debug)]
pub(super) enum Notice {
    /// The data changes of one publish response, already mapped to records.
    Data { records: Vec<NewRecord> },
    /// The server changed the subscription's state (e.g. ended it: `BadTimeout`).
    SubscriptionStatus(StatusCode),
}

/// What the task knows of one monitored item.
#[derive(Debug, Clone)]
pub(super) struct ItemInfo {
    /// The node id as configured (normalised text form).
    pub node_id: String,
    /// The `name` field: configured, or the display name read from the server.
    pub name: String,
}

/// Maps publish responses to records; runs inside async-opcua's event loop, so it only maps
/// and hands over: it never blocks.
pub(super) struct Notifier {
    pub server: String,
    pub items: Arc<Mutex<HashMap<NodeId, ItemInfo>>>,
    pub tx: mpsc::UnboundedSender<Notice>,
}

impl Notifier {
    /// The records of one data-change notification, received at `ts_ms`.
    pub(super) fn records(
        &self,
        change: &DataChangeNotification,
        node_of: impl Fn(u32) -> Option<NodeId>,
        ts_ms: u64,
    ) -> Vec<NewRecord> {
        let items = lock(&self.items);
        let mut out = Vec::new();
        for notice in change.monitored_items.iter().flatten() {
            let Some(node) = node_of(notice.client_handle) else {
                tracing::warn!(
                    server = %self.server,
                    client_handle = notice.client_handle,
                    "A data change arrived for an unknown monitored item; it is skipped."
                );
                continue;
            };
            let (node_id, name) = match items.get(&node) {
                Some(info) => (info.node_id.clone(), info.name.clone()),
                None => (node.to_string(), node.to_string()),
            };
            let record = data_change_record(&self.server, &node_id, &name, &notice.value, ts_ms);
            let Ok(value) = serde_json::to_vec(&record) else {
                continue;
            };
            out.push(NewRecord {
                key: Some(self.server.as_bytes().to_vec()),
                value,
                headers: Vec::new(),
                timestamp_ms: Some(ts_ms),
            });
        }
        out
    }
}

impl OnSubscriptionNotificationCore for Notifier {
    fn on_subscription_notification(
        &mut self,
        notification: NotificationMessage,
        monitored_items: MonitoredItemMap<'_>,
    ) {
        let ts_ms = now_ms();
        let mut records = Vec::new();
        for object in notification.notification_data.iter().flatten() {
            if let Some(change) = object.inner_as::<DataChangeNotification>() {
                let node_of = |handle: u32| {
                    monitored_items
                        .get(handle)
                        .map(|item| item.item_to_monitor().node_id.clone())
                };
                records.extend(self.records(change, node_of, ts_ms));
            } else if let Some(status) = object.inner_as::<StatusChangeNotification>() {
                let _ = self.tx.send(Notice::SubscriptionStatus(status.status));
            }
        }
        if !records.is_empty() {
            // The receiver is gone only when the task is stopping.
            let _ = self.tx.send(Notice::Data { records });
        }
    }
}

#[derive(Debug)]
struct ServerMetrics {
    /// Connected, connects, records stored, gaps: shared with Modbus.
    link: LinkMetrics,
    refused: Counter,
    publishes: Counter,
    sessions_created: Counter,
    keep_alives_failed: Counter,
}

impl ServerMetrics {
    fn new(server: &str) -> ServerMetrics {
        let r = metrics::global();
        ServerMetrics {
            link: LinkMetrics::new("opcua", "server", server, "OPC-UA server"),
            refused: r.counter(
                "outpost_opcua_records_refused_total",
                "Records of OPC-UA data changes the log refused (disk budget); each is part of a gap.",
                &[("server", server)],
            ),
            publishes: r.counter(
                "outpost_opcua_publish_responses_total",
                "OPC-UA publish responses carrying data changes (one log append each).",
                &[("server", server)],
            ),
            sessions_created: r.counter(
                "outpost_opcua_sessions_created_total",
                "OPC-UA sessions created (a reconnect that reactivates the old session creates none).",
                &[("server", server)],
            ),
            keep_alives_failed: r.counter(
                "outpost_opcua_keep_alives_failed_total",
                "Keep-alive reads of an OPC-UA session that failed.",
                &[("server", server)],
            ),
        }
    }
}

/// How one session ended.
enum Ended {
    /// Shutdown was requested; the session is closed.
    Shutdown,
    /// The session could not be set up or died for good; rebuild after backoff.
    Failed(String),
}

/// Subscribes to one server until shutdown.
pub(super) struct ServerTask {
    server: ServerConfig,
    log: Log,
    board: StatusBoard,
    status_name: String,
    topic_name: String,
    metrics: ServerMetrics,
    items: Arc<Mutex<HashMap<NodeId, ItemInfo>>>,
    names_read: bool,
    link_gap: Option<OpenGap>,
    refused_gap: Option<OpenGap>,
    /// Closed gaps; `missed` counts the records the log refused during a gap.
    gaps: Gaps,
    consecutive_failures: u32,
    connected: bool,
    /// The current session object has its subscription (set up by `subscribe`).
    subscribed: bool,
    /// The current session object is connected (per async-opcua's events).
    session_connected: bool,
    /// The server's status counters (`details.<name>` and `outpost_source_<name>_total`).
    counts: StatusCounts,
}

/// The counters an OPC-UA server shows in its status, each a metric handle.
#[derive(Debug)]
struct StatusCounts {
    connects: Counter,
    sessions_created: Counter,
    publish_responses: Counter,
}

impl StatusCounts {
    fn register(s: &mut StatusEntry) -> StatusCounts {
        StatusCounts {
            connects: s.counter("connects", "OPC-UA session (re)connections that succeeded."),
            sessions_created: s.counter(
                "sessions_created",
                "OPC-UA sessions created (a reactivated session creates none).",
            ),
            publish_responses: s.counter(
                "publish_responses",
                "OPC-UA publish responses with data changes (one log append each).",
            ),
        }
    }
}

const CONNECTED_HELP: &str =
    "1 while Outpost holds an active session with its subscription on the server.";

impl ServerTask {
    /// A task for a validated server; registers the server's status on the board.
    pub(super) fn new(server: ServerConfig, log: Log, board: StatusBoard) -> ServerTask {
        let status_name = format!("opcua:{}", server.name);
        let counts = board.register(&status_name, "opcua", |s| {
            s.set_info("endpoint_url", server.endpoint_url.clone());
            s.set_info(
                "security",
                format!(
                    "{}/{}",
                    server.security_policy.uri_name(),
                    server.security_mode.label()
                ),
            );
            s.set_info("topic", server.topic_name());
            s.set_info("items", server.items.len());
            s.set_flag("connected", CONNECTED_HELP, false);
            s.set_info("open_gap", Value::Null);
            s.set_info("recent_gaps", Value::Array(Vec::new()));
            StatusCounts::register(s)
        });
        let mut items = HashMap::new();
        for item in &server.items {
            if let Ok(node) = parse_node_id(&item.node_id) {
                let text = node.to_string();
                let name = item.name.clone().unwrap_or_else(|| text.clone());
                items.insert(
                    node,
                    ItemInfo {
                        node_id: text,
                        name,
                    },
                );
            }
        }
        ServerTask {
            metrics: ServerMetrics::new(&server.name),
            topic_name: server.topic_name(),
            server,
            log,
            board,
            status_name,
            items: Arc::new(Mutex::new(items)),
            names_read: false,
            link_gap: None,
            refused_gap: None,
            gaps: Gaps::new("records_refused", "records refused"),
            consecutive_failures: 0,
            connected: false,
            subscribed: false,
            session_connected: false,
            counts,
        }
    }

    /// Runs until `shutdown` turns true (or its sender is gone).
    pub(super) async fn run(mut self, shutdown: Shutdown) {
        tracing::info!(
            server = %self.server.name,
            endpoint_url = %self.server.endpoint_url,
            security_policy = self.server.security_policy.uri_name(),
            security_mode = self.server.security_mode.label(),
            topic = %self.topic_name,
            items = self.server.items.len(),
            "Subscribing to an OPC-UA server."
        );
        loop {
            if shutdown.is_requested() {
                break;
            }
            let ended = match self.build_client() {
                Ok(client) => self.session(&client, &shutdown).await,
                Err(e) => Ended::Failed(e),
            };
            match ended {
                Ended::Shutdown => break,
                Ended::Failed(reason) => {
                    self.link_failed(reason, true);
                    let wait = self.backoff();
                    tokio::select! {
                        _ = sleep(wait) => {}
                        _ = shutdown.requested() => break,
                    }
                }
            }
        }
        self.metrics.link.connected.set(0.0);
        self.board
            .update(&self.status_name, |s| s.set_link(Link::Stopped));
        tracing::info!(server = %self.server.name, "Stopped subscribing to an OPC-UA server.");
    }

    /// The wait after a failed session setup: exponential, capped.
    fn backoff(&self) -> Duration {
        Backoff::from_millis(
            self.server.reconnect_backoff_initial_ms,
            self.server.reconnect_backoff_max_ms,
        )
        .after_failures(self.consecutive_failures)
    }

    fn build_client(&self) -> Result<Client, String> {
        let s = &self.server;
        let secure = s.security_policy != SecurityPolicy::None;
        let pki_dir = match &s.pki_dir {
            Some(dir) => std::path::PathBuf::from(dir),
            // Security `none` needs no certificate; async-opcua still wants a folder.
            None => std::env::temp_dir().join("outpost-opcua-pki-none"),
        };
        let mut builder = ClientBuilder::new()
            .application_name("Outpost")
            .application_uri("urn:outpost:opcua-client")
            .product_uri("urn:outpost")
            .pki_dir(pki_dir)
            .create_sample_keypair(secure)
            .trust_server_certs(s.trust_server_certificate)
            .session_retry_limit(-1)
            .session_retry_initial(Duration::from_millis(s.reconnect_backoff_initial_ms))
            .session_retry_max(Duration::from_millis(s.reconnect_backoff_max_ms))
            .session_timeout(u32::try_from(s.session_timeout_ms).unwrap_or(u32::MAX))
            .request_timeout(Duration::from_millis(s.request_timeout_ms))
            .keep_alive_interval(Duration::from_millis(s.keep_alive_interval_ms))
            .max_failed_keep_alive_count(MAX_FAILED_KEEP_ALIVES)
            .recreate_subscriptions(true)
            .session_name(format!("outpost:{}", s.name));
        if let (Some(cert), Some(key)) = (&s.certificate_path, &s.private_key_path) {
            builder = builder.certificate_path(cert).private_key_path(key);
        }
        builder
            .client()
            .map_err(|errors| format!("the OPC-UA client config is invalid: {}", errors.join("; ")))
    }

    fn identity(&self) -> IdentityToken {
        match (&self.server.username, &self.server.password) {
            (Some(user), Some(password)) => {
                IdentityToken::new_user_name(user.clone(), password.clone())
            }
            _ => IdentityToken::Anonymous,
        }
    }

    /// Finds the configured endpoint among those the server offers.
    async fn endpoint(&self, client: &Client) -> Result<EndpointDescription, String> {
        let s = &self.server;
        let limit = Duration::from_millis(s.request_timeout_ms);
        let endpoints = match timeout(
            limit,
            client.get_server_endpoints_from_url(s.endpoint_url.as_str()),
        )
        .await
        {
            Err(_) => {
                return Err(format!(
                    "no answer to GetEndpoints within {} ms (`request_timeout_ms`): the server \
                     refuses connections or does not answer at {}",
                    s.request_timeout_ms, s.endpoint_url
                ))
            }
            Ok(Err(e)) => return Err(format!("cannot get the server's endpoints: {e}")),
            Ok(Ok(endpoints)) => endpoints,
        };
        let policy = match s.security_policy {
            SecurityPolicy::None => UaPolicy::None,
            SecurityPolicy::Basic256sha256 => UaPolicy::Basic256Sha256,
        };
        let mode = match s.security_mode {
            SecurityMode::None => MessageSecurityMode::None,
            SecurityMode::Sign => MessageSecurityMode::Sign,
            SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        };
        Client::find_matching_endpoint(&endpoints, &s.endpoint_url, policy, mode).ok_or_else(|| {
            let offered: Vec<String> = endpoints
                .iter()
                .map(|e| {
                    let uri = e.security_policy_uri.as_ref();
                    let name = uri.rsplit('#').next().unwrap_or(uri);
                    format!("{name}/{}", e.security_mode)
                })
                .collect();
            format!(
                "the server offers no endpoint with security {}/{} at {} (it offers: {})",
                s.security_policy.uri_name(),
                s.security_mode.label(),
                s.endpoint_url,
                offered.join(", ")
            )
        })
    }

    /// One session: from endpoint discovery until shutdown or an unrecoverable failure. While
    /// it lives, async-opcua's event loop reconnects by itself (reactivating the old session
    /// when the server still has it, else creating a new one and recreating the subscription).
    async fn session(&mut self, client: &Client, shutdown: &Shutdown) -> Ended {
        let endpoint = tokio::select! {
            e = self.endpoint(client) => e,
            _ = shutdown.requested() => return Ended::Shutdown,
        };
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint,
            Err(reason) => return Ended::Failed(reason),
        };
        let built = client
            .session_builder()
            .connect_to_endpoint_directly(endpoint)
            .map(|b| b.user_identity_token(self.identity()))
            .and_then(|b| b.build(client.certificate_store().clone()));
        let (session, event_loop) = match built {
            Ok(pair) => pair,
            Err(e) => return Ended::Failed(format!("cannot build the session: {e}")),
        };
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut stream = Box::pin(event_loop.enter());
            while let Some(event) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                let end = event.is_err();
                if events_tx.send(event).is_err() || end {
                    break;
                }
            }
        });
        let (notices_tx, mut notices) = mpsc::unbounded_channel();
        self.subscribed = false;
        self.session_connected = false;

        // Setting up: wait for the session, read display names, create the subscription.
        let setup = subscribe(
            Setup {
                server: self.server.clone(),
                items: self.items.clone(),
                names_read: self.names_read,
                board: self.board.clone(),
                status_name: self.status_name.clone(),
            },
            session.clone(),
            notices_tx,
        );
        tokio::pin!(setup);
        let setup_result = loop {
            tokio::select! {
                r = &mut setup => break r,
                event = events.recv() => match event {
                    Some(Ok(event)) => {
                        self.on_event(event);
                    }
                    Some(Err(code)) => break Err(format!("the session ended: {code}")),
                    None => break Err("the session's event loop ended".to_string()),
                },
                _ = shutdown.requested() => {
                    close(&session, driver, self.session_connected).await;
                    return Ended::Shutdown;
                }
            }
        };
        match setup_result {
            Ok(names_read) => self.names_read |= names_read,
            Err(reason) => {
                close(&session, driver, self.session_connected).await;
                return Ended::Failed(reason);
            }
        }
        self.session_up();

        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Some(Notice::Data { records }) => self.store(records).await,
                    Some(Notice::SubscriptionStatus(code)) if code.is_good() => {
                        tracing::info!(
                            server = %self.server.name,
                            status = %code,
                            "The OPC-UA server reported a subscription state change."
                        );
                    }
                    Some(Notice::SubscriptionStatus(code)) => {
                        tracing::warn!(
                            server = %self.server.name,
                            status = %code,
                            "The OPC-UA server ended the subscription; rebuilding the session."
                        );
                        close(&session, driver, self.session_connected).await;
                        return Ended::Failed(format!("the server ended the subscription: {code}"));
                    }
                    None => {
                        close(&session, driver, self.session_connected).await;
                        return Ended::Failed("the subscription was dropped".to_string());
                    }
                },
                event = events.recv() => match event {
                    Some(Ok(event)) => {
                        if self.on_event(event) {
                            // async-opcua 0.19 transfers or recreates the subscription while
                            // reconnecting, but its fresh publish loop starts idle, waiting for
                            // a "new subscription" trigger sent before it existed: without this
                            // no Publish request would go out again after a reconnect.
                            session.trigger_publish_now();
                        }
                    }
                    Some(Err(code)) => {
                        close(&session, driver, self.session_connected).await;
                        return Ended::Failed(format!("the session ended: {code}"));
                    }
                    None => {
                        close(&session, driver, self.session_connected).await;
                        return Ended::Failed("the session's event loop ended".to_string());
                    }
                },
                _ = shutdown.requested() => {
                    // Store what already arrived before closing.
                    while let Ok(Notice::Data { records }) = notices.try_recv() {
                        self.store(records).await;
                    }
                    close(&session, driver, self.session_connected).await;
                    return Ended::Shutdown;
                }
            }
        }
    }

    /// The session and its subscription are up (first time in this session object).
    fn session_up(&mut self) {
        self.subscribed = true;
        self.consecutive_failures = 0;
        self.link_restored();
        tracing::info!(
            server = %self.server.name,
            items = self.server.items.len(),
            "Subscribed to the OPC-UA server."
        );
    }

    /// An event of async-opcua's session event loop. Returns true when the session came back
    /// with its subscription (transferred or recreated by async-opcua): publishing must then
    /// be restarted.
    fn on_event(&mut self, event: SessionPollResult) -> bool {
        match event {
            SessionPollResult::Reconnected(mode) => {
                self.session_connected = true;
                self.counts.connects.inc();
                self.metrics.link.connects_ok.inc();
                let (created, id) = match &mode {
                    SessionConnectMode::NewSession(id) => (true, id.to_string()),
                    SessionConnectMode::ReactivatedSession(id) => (false, id.to_string()),
                };
                if created {
                    self.counts.sessions_created.inc();
                    self.metrics.sessions_created.inc();
                }
                tracing::info!(
                    server = %self.server.name,
                    session_id = %id,
                    new_session = created,
                    "Connected to the OPC-UA server."
                );
                self.board
                    .update(&self.status_name, |s| s.set_info("session_id", id));
                // On the first connection the subscription is created after this event; on
                // later ones async-opcua has already transferred or recreated it.
                if self.subscribed {
                    self.link_restored();
                    return true;
                }
            }
            SessionPollResult::ConnectionLost(code) => {
                self.session_connected = false;
                self.link_failed(format!("connection lost: {code}"), false);
            }
            SessionPollResult::ReconnectFailed(code) => {
                self.metrics.link.connects_failed.inc();
                self.link_failed(format!("cannot connect: {code}"), true);
            }
            SessionPollResult::SessionActivity(SessionActivity::KeepAliveFailed(code)) => {
                self.metrics.keep_alives_failed.inc();
                tracing::debug!(server = %self.server.name, status = %code, "An OPC-UA keep-alive read failed.");
            }
            SessionPollResult::Subscription(SubscriptionActivity::FatalFailure(code)) => {
                tracing::warn!(server = %self.server.name, status = %code, "Publishing failed for good; the session is being rebuilt.");
            }
            _ => {}
        }
        false
    }

    /// The link is down (or still not up): open or extend the outage gap.
    fn link_failed(&mut self, reason: String, attempt_failed: bool) {
        if attempt_failed {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        }
        let was_connected = self.connected;
        self.connected = false;
        self.metrics.link.connected.set(0.0);
        match self.link_gap.as_mut() {
            Some(gap) => gap.reason.clone_from(&reason),
            None => {
                tracing::warn!(
                    server = %self.server.name,
                    endpoint_url = %self.server.endpoint_url,
                    reason = %reason,
                    "The OPC-UA server is unreachable; reconnecting with backoff."
                );
                self.link_gap = Some(OpenGap {
                    from_ms: now_ms(),
                    reason: reason.clone(),
                    missed: 0,
                });
            }
        }
        let open = self.open_gap_json();
        let attempts = u64::from(self.consecutive_failures);
        self.board.update(&self.status_name, |s| {
            s.set_link(Link::Retrying {
                last_error: reason,
                attempts,
            });
            if attempt_failed || was_connected {
                s.error(1);
            }
            s.set_flag("connected", CONNECTED_HELP, false);
            s.set_info("open_gap", open);
        });
    }

    /// The session and its subscription work again: close the outage gap.
    fn link_restored(&mut self) {
        self.connected = true;
        self.consecutive_failures = 0;
        self.metrics.link.connected.set(1.0);
        let closed = self
            .link_gap
            .take()
            .map(|gap| self.close_gap(gap, now_ms()));
        let open = self.open_gap_json();
        let gaps = self.gaps.recent();
        let backpressured = self.refused_gap.as_ref().map(|g| g.reason.clone());
        self.board.update(&self.status_name, |s| {
            s.set_link(match backpressured {
                Some(reason) => Link::Backpressured { reason },
                None => Link::Connected,
            });
            if let Some(text) = closed {
                s.gap(text);
            }
            s.set_flag("connected", CONNECTED_HELP, true);
            s.set_info("open_gap", open);
            s.set_info("recent_gaps", gaps);
        });
    }

    fn open_gap_json(&self) -> Value {
        match self.link_gap.as_ref().or(self.refused_gap.as_ref()) {
            Some(g) => self.gaps.open_json(g),
            None => Value::Null,
        }
    }

    /// Appends the records of one publish response with one append.
    async fn store(&mut self, records: Vec<NewRecord>) {
        let count = records.len() as u64;
        let ts_ms = records
            .last()
            .and_then(|r| r.timestamp_ms)
            .unwrap_or_else(now_ms);
        let results = append_groups(&self.log, vec![(self.topic_name.clone(), records)]).await;
        let outcome = match results {
            None => Err("the runtime is shutting down".to_string()),
            Some(mut groups) => match groups.pop() {
                Some((_, _, Ok(_))) => Ok(()),
                Some((_, _, Err(e))) => Err(describe_refusal(&e)),
                None => Err("no append result".to_string()),
            },
        };
        self.counts.publish_responses.inc();
        self.metrics.publishes.inc();
        match outcome {
            Ok(()) => {
                self.metrics.link.records.add(count);
                let closed = self
                    .refused_gap
                    .take()
                    .map(|gap| self.close_gap(gap, ts_ms));
                let connected = self.connected;
                let open = self.open_gap_json();
                let gaps = self.gaps.recent();
                self.board.update(&self.status_name, |s| {
                    s.stored(count, ts_ms);
                    if let Some(text) = closed {
                        s.gap(text);
                        s.set_info("open_gap", open);
                        s.set_info("recent_gaps", gaps);
                        if connected {
                            s.set_link(Link::Connected);
                        }
                    }
                });
            }
            Err(reason) => {
                self.metrics.refused.add(count);
                match self.refused_gap.as_mut() {
                    Some(gap) => {
                        gap.missed += count;
                        gap.reason.clone_from(&reason);
                    }
                    None => {
                        tracing::warn!(
                            server = %self.server.name,
                            topic = %self.topic_name,
                            reason = %reason,
                            "The log refuses OPC-UA records; the interval is recorded as a gap."
                        );
                        self.refused_gap = Some(OpenGap {
                            from_ms: ts_ms,
                            reason: reason.clone(),
                            missed: count,
                        });
                    }
                }
                let open = self.open_gap_json();
                self.board.update(&self.status_name, |s| {
                    s.set_link(Link::Backpressured { reason });
                    s.error(1);
                    s.set_info("open_gap", open);
                });
            }
        }
    }

    /// Closes a gap at `to_ms`; returns its human-readable text.
    fn close_gap(&mut self, gap: OpenGap, to_ms: u64) -> String {
        tracing::info!(
            server = %self.server.name,
            from_ms = gap.from_ms,
            to_ms,
            records_refused = gap.missed,
            reason = %gap.reason,
            "An OPC-UA gap is closed."
        );
        self.metrics.link.gaps.inc();
        self.gaps.close(gap, to_ms)
    }
}

/// What setting up a subscription needs, owned (it runs beside the task's event handling).
struct Setup {
    server: ServerConfig,
    items: Arc<Mutex<HashMap<NodeId, ItemInfo>>>,
    names_read: bool,
    board: StatusBoard,
    status_name: String,
}

/// Waits for the session, reads the display names (once per run) and creates the
/// subscription with every monitored item. Returns whether the names were read.
async fn subscribe(
    setup: Setup,
    session: Arc<Session>,
    tx: mpsc::UnboundedSender<Notice>,
) -> Result<bool, String> {
    if !session.wait_for_connection().await {
        return Err("the session did not connect".to_string());
    }
    let s = &setup.server;
    let nodes: Vec<(NodeId, &super::config::ItemConfig)> = s
        .items
        .iter()
        .filter_map(|item| parse_node_id(&item.node_id).ok().map(|n| (n, item)))
        .collect();
    // Display names are read once per run, before the subscription, so that even the first
    // (initial value) notifications carry them.
    let mut names_read = false;
    if !setup.names_read {
        let wanted: Vec<&NodeId> = nodes
            .iter()
            .filter(|(_, item)| item.name.is_none())
            .map(|(node, _)| node)
            .collect();
        if !wanted.is_empty() {
            let reads: Vec<ReadValueId> = wanted
                .iter()
                .map(|node| ReadValueId {
                    node_id: (*node).clone(),
                    attribute_id: AttributeId::DisplayName as u32,
                    index_range: Default::default(),
                    data_encoding: QualifiedName::null(),
                })
                .collect();
            let values = session
                .read(&reads, TimestampsToReturn::Neither, 0.0)
                .await
                .map_err(|e| format!("cannot read the display names: {e}"))?;
            let mut items = lock(&setup.items);
            for (node, value) in wanted.into_iter().zip(values) {
                if let Some(Variant::LocalizedText(text)) = value.value {
                    if let Some(name) = text.text.value().clone().filter(|t| !t.is_empty()) {
                        if let Some(info) = items.get_mut(node) {
                            info.name = name;
                        }
                    }
                }
            }
        }
        names_read = true;
    }
    let interval = s.publishing_interval_ms.max(1);
    // The server's keep-alive message comes at least every ~10 s, and it keeps the
    // subscription at least 60 s (and three keep-alives) without a publish request.
    let keep_alive_count = u32::try_from((10_000 / interval).max(1)).unwrap_or(u32::MAX);
    let lifetime_count =
        u32::try_from((60_000 / interval).max(3 * u64::from(keep_alive_count))).unwrap_or(u32::MAX);
    let notifier = Notifier {
        server: s.name.clone(),
        items: setup.items,
        tx,
    };
    let subscription = session
        .create_subscription(
            Duration::from_millis(interval),
            lifetime_count,
            keep_alive_count,
            0,
            0,
            true,
            notifier,
        )
        .await
        .map_err(|e| format!("cannot create the subscription: {e}"))?;
    let requests: Vec<MonitoredItemCreateRequest> = nodes
        .iter()
        .map(|(node, item)| {
            let filter = match item.deadband_absolute {
                Some(deadband) => ExtensionObject::from_message(DataChangeFilter {
                    trigger: DataChangeTrigger::StatusValue,
                    deadband_type: DeadbandType::Absolute as u32,
                    deadband_value: deadband,
                }),
                None => ExtensionObject::null(),
            };
            MonitoredItemCreateRequest {
                item_to_monitor: ReadValueId {
                    node_id: node.clone(),
                    attribute_id: AttributeId::Value as u32,
                    index_range: Default::default(),
                    data_encoding: QualifiedName::null(),
                },
                monitoring_mode: MonitoringMode::Reporting,
                requested_parameters: MonitoringParameters {
                    client_handle: 0,
                    // -1: sample at the publishing interval.
                    sampling_interval: item.sampling_interval_ms.map_or(-1.0, |ms| ms as f64),
                    filter,
                    queue_size: item.queue_size,
                    discard_oldest: true,
                },
            }
        })
        .collect();
    let created = session
        .create_monitored_items(subscription, TimestampsToReturn::Both, requests)
        .await
        .map_err(|e| format!("cannot create the monitored items: {e}"))?;
    let mut refused = Vec::new();
    for item in &created {
        if !item.result.status_code.is_good() {
            refused.push(format!(
                "{}: {}",
                item.item_to_monitor.node_id, item.result.status_code
            ));
        }
    }
    if !refused.is_empty() {
        tracing::warn!(
            server = %s.name,
            refused = ?refused,
            "The OPC-UA server refused some monitored items; the others are subscribed."
        );
    }
    let refused_count = refused.len() as u64;
    setup.board.update(&setup.status_name, |st| {
        st.set_info("refused_items", refused.clone());
        st.error(refused_count);
    });
    Ok(names_read)
}

fn describe_refusal(e: &LogError) -> String {
    match e {
        LogError::StorageFull(_) => format!("the log refused the records (disk budget): {e}"),
        _ => format!("the log refused the records: {e}"),
    }
}

/// Closes the session on the server (deleting its subscription) so that sessions never pile
/// up, then stops the event loop. A server that does not answer is abandoned after
/// [`CLOSE_TIMEOUT`]; it drops the session itself after `session_timeout_ms`.
async fn close(session: &Arc<Session>, driver: tokio::task::JoinHandle<()>, connected: bool) {
    session.disable_reconnects();
    // Without a connection there is nothing to close on the server (and async-opcua would
    // wait for a state change that never comes).
    if connected && timeout(CLOSE_TIMEOUT, session.disconnect()).await.is_err() {
        tracing::debug!("Closing an OPC-UA session timed out; it is abandoned.");
    }
    driver.abort();
    let _ = driver.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{DataValue, MonitoredItemNotification};

    #[test]
    fn the_data_changes_of_one_publish_become_keyed_records() {
        let node_a = NodeId::new(2, "Temp");
        let node_b = NodeId::new(2, 5u32);
        let mut items = HashMap::new();
        items.insert(
            node_a.clone(),
            ItemInfo {
                node_id: "ns=2;s=Temp".into(),
                name: "Temperature".into(),
            },
        );
        let (tx, _rx) = mpsc::unbounded_channel();
        let notifier = Notifier {
            server: "plc-1".into(),
            items: Arc::new(Mutex::new(items)),
            tx,
        };
        let change = DataChangeNotification {
            monitored_items: Some(vec![
                MonitoredItemNotification {
                    client_handle: 1,
                    value: DataValue::new_now(Variant::Double(3.5)),
                },
                MonitoredItemNotification {
                    client_handle: 2,
                    value: DataValue::new_now(Variant::Boolean(true)),
                },
                MonitoredItemNotification {
                    client_handle: 99,
                    value: DataValue::new_now(Variant::Int32(1)),
                },
            ]),
            diagnostic_infos: None,
        };
        let node_of = |h: u32| match h {
            1 => Some(node_a.clone()),
            2 => Some(node_b.clone()),
            _ => None,
        };
        let records = notifier.records(&change, node_of, 7);
        assert_eq!(records.len(), 2, "the unknown handle is skipped");
        let values: Vec<Value> = records
            .iter()
            .map(|r| serde_json::from_slice(&r.value).unwrap())
            .collect();
        assert_eq!(records[0].key.as_deref(), Some(&b"plc-1"[..]));
        assert_eq!(records[0].timestamp_ms, Some(7));
        assert_eq!(values[0]["node_id"], "ns=2;s=Temp");
        assert_eq!(values[0]["name"], "Temperature");
        assert_eq!(values[0]["value"], 3.5);
        assert_eq!(values[1]["node_id"], "ns=2;i=5");
        assert_eq!(values[1]["value"], true);
        assert_eq!(values[1]["status"], "good");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut server = ServerConfig::new("b", "opc.tcp://127.0.0.1:4840");
        server.reconnect_backoff_initial_ms = 100;
        server.reconnect_backoff_max_ms = 700;
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Default::default()).unwrap();
        let mut task = ServerTask::new(server, log, StatusBoard::sources());
        let mut waits = Vec::new();
        for failures in 1..=5 {
            task.consecutive_failures = failures;
            waits.push(task.backoff().as_millis() as u64);
        }
        assert_eq!(waits, vec![100, 200, 400, 700, 700]);
    }

    #[tokio::test]
    async fn records_the_log_refuses_are_a_backpressure_gap_not_a_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::log::LogConfig {
            max_bytes: 16_384,
            min_free_bytes: 0,
            ..Default::default()
        };
        let log = Log::open(dir.path(), config).unwrap();
        let board = StatusBoard::sources();
        let server = ServerConfig::new("plc-1", "opc.tcp://127.0.0.1:4840");
        let mut task = ServerTask::new(server, log, board.clone());
        task.connected = true;
        let record = |i: u64| NewRecord {
            key: Some(b"plc-1".to_vec()),
            value: format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(900)).into_bytes(),
            headers: Vec::new(),
            timestamp_ms: Some(1_000 + i),
        };
        let mut sent = 0u64;
        for batch in 0..40u64 {
            task.store(vec![record(2 * batch), record(2 * batch + 1)])
                .await;
            sent += 2;
            if task.refused_gap.is_some() {
                break;
            }
        }
        let refused_gap = task.refused_gap.clone().expect("the budget must be hit");
        let status = board.snapshot().remove(0);
        assert!(
            matches!(&status.link, Link::Backpressured { reason } if reason.contains("disk budget")),
            "{:?}",
            status.link
        );
        assert_eq!(
            status.records_stored + refused_gap.missed,
            sent,
            "every record is either stored or counted in the gap"
        );
        assert_eq!(
            status.details["open_gap"]["records_refused"],
            serde_json::json!(refused_gap.missed)
        );
        assert!(status.errors >= 1);
    }
}
