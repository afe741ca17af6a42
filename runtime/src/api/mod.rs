//! The HTTP API (axum): health, metrics, topics, produce and fetch.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /health` | `{"status":"ok","edge_id":…,"store_id":…,"uptime_s":…,"version":…}`; never needs a token |
//! | `GET /metrics` | the metrics registry as Prometheus text (`text/plain; version=0.0.4`) |
//! | `GET /topics` | `{"topics":[{name, first_offset, next_offset, bytes, segments, records_per_sec}]}` |
//! | `POST /topics/{topic}` | Confluent REST Proxy v2 produce, see [`produce`] |
//! | `GET /topics/{topic}/records` | fetch by offset with optional long poll, see [`records`] |
//!
//! Errors are JSON `{"error_code":…,"message":…}`, see [`error`]. When `http.auth_token` is
//! set, everything but `/health` needs `Authorization: Bearer <token>` ([`auth`]).

mod auth;
pub mod error;
pub mod plugins;
pub mod produce;
pub mod records;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;

pub use error::ApiError;

use crate::config::Config;
use crate::log::Log;
use crate::state::StateStore;

/// The content type of `GET /metrics`.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// What every handler can reach. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    log: Log,
    state: StateStore,
    config: Arc<Config>,
    started: Instant,
    edge_id: Arc<str>,
    shutdown: watch::Receiver<bool>,
}

impl ApiState {
    /// Everything the handlers need; `edge_id` is the resolved id (see `StateStore::edge_id`).
    pub fn new(log: Log, state: StateStore, config: Arc<Config>, edge_id: String) -> ApiState {
        let (_never, shutdown) = watch::channel(false);
        ApiState {
            log,
            state,
            config,
            started: Instant::now(),
            edge_id: edge_id.into(),
            shutdown,
        }
    }

    /// The log the handlers read and write.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The state store (consumer offsets for endpoints that commit them).
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The configuration the server runs on.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Long polls end early once `shutdown` turns true, so a graceful shutdown is not held up.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> ApiState {
        self.shutdown = shutdown;
        self
    }
}

/// Resolves once the shutdown flag is true; never if its sender is gone without setting it.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The API's router.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/topics", get(list_topics))
        .route("/topics/{topic}", post(produce::produce))
        .route("/topics/{topic}/records", get(records::fetch))
        .merge(plugins::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(count_responses))
        .with_state(state)
}

async fn health(State(api): State<ApiState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "edge_id": &*api.edge_id,
        "store_id": api.config.edge.store_id,
        "uptime_s": api.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn metrics(State(api): State<ApiState>) -> Response {
    // The log keeps its own counters and byte gauges; the per-topic offsets and segment
    // counts are refreshed here, at scrape time.
    let registry = crate::metrics::global();
    for topic in api.log.topics() {
        let s = topic.stats();
        let labels = [("topic", s.name.as_str())];
        registry
            .gauge(
                "outpost_log_topic_segments",
                "Segment files of the topic.",
                &labels,
            )
            .set(s.segments as f64);
        registry
            .gauge(
                "outpost_log_topic_start_offset",
                "First offset still stored.",
                &labels,
            )
            .set(s.first_offset as f64);
        registry
            .gauge(
                "outpost_log_topic_next_offset",
                "Offset the next record will get.",
                &labels,
            )
            .set(s.next_offset as f64);
    }
    registry
        .gauge(
            "outpost_uptime_seconds",
            "Seconds since the process started serving.",
            &[],
        )
        .set(api.started.elapsed().as_secs_f64());
    let mut response = registry.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    response
}

async fn list_topics(State(api): State<ApiState>) -> Json<Value> {
    let topics: Vec<_> = api.log.topics().iter().map(|t| t.stats()).collect();
    Json(json!({ "topics": topics }))
}

async fn no_such_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::NoSuchEndpoint(format!("{method} {}", uri.path()))
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// Counts responses by status code (`outpost_http_responses_total{code}`).
async fn count_responses(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    crate::metrics::global()
        .counter(
            "outpost_http_responses_total",
            "HTTP responses sent, by status code.",
            &[("code", response.status().as_str())],
        )
        .inc();
    response
}
