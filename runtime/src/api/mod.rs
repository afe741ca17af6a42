//! The HTTP API (axum): health, metrics, topics, produce and fetch.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /health` | liveness: `{"status":"ok","edge_id":…,"store_id":…,"uptime_s":…,"version":…}`; never needs a token |
//! | `GET /ready` | readiness: 200 `{"ready":true,"waiting_for":[]}` once the log is open, the listeners are bound and every enabled plugin is running or has failed visibly; else 503 with what it waits for (`start-up`, `plugins`, `mqtt listener`, `stopping`); never needs a token |
//! | `GET /metrics` | the metrics registry as Prometheus text (`text/plain; version=0.0.4`) |
//! | `GET /topics` | `{"topics":[{name, first_offset, next_offset, bytes, segments, records_per_sec, forward?}], "sources":[…], "sinks":[…], "forward":{…}}` |
//! | `POST /topics/{topic}` | Confluent REST Proxy v2 produce, see [`produce`] |
//! | `GET /topics/{topic}/records` | fetch by offset with optional long poll, see [`records`] |
//!
//! With a cloud configured, each forwarded topic in `/topics` carries `forward`: its class and
//! data debt (`debt_records`, `debt_bytes`, `oldest_age_s`, `cursor`), and the top-level
//! `forward` is the forwarder's status (online, last error, debt per class, as `GET /forward`);
//! without one it is `{"enabled": false}`. `/metrics` refreshes the debt gauges at scrape time.
//!
//! Errors are JSON `{"error_code":…,"message":…}`, see [`error`]. When `http.auth_token` is
//! set, everything but `/health` and `/ready` needs `Authorization: Bearer <token>` ([`auth`]).
//!
//! **Under load** ([`serve`], `budget.rs`): the socket side closes slow-header, idle and
//! stalled connections and caps open connections (evicting the quietest, so `/health` always
//! gets in); request bodies share one in-flight byte budget (`503` + `Retry-After` beyond it)
//! and are parsed off the async workers, so `/health` answers while large bodies are handled.

mod auth;
mod budget;
pub mod error;
pub mod forward;
pub mod plugins;
pub mod produce;
pub mod records;
pub mod serve;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

pub use error::ApiError;

use crate::config::HttpConfig;
use crate::contracts::Contracts;
use crate::kernel::{Context, StatusBoard};
use crate::log::Log;
use crate::state::StateStore;

/// The content type of `GET /metrics`.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// What every handler can reach: the box's context, the `[http]` section and whether produce
/// checks the store-event contracts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    ctx: Context,
    http: Arc<HttpConfig>,
    contracts: Contracts,
    started: Instant,
    body_budget: budget::BodyBudget,
}

impl ApiState {
    /// The handlers of the box whose context is `ctx`, configured by `[http]`. Long polls end
    /// early when the context's shutdown fires, so a graceful shutdown is not held up. Produce
    /// checks the store-event contracts (see [`ApiState::with_contracts`]).
    pub fn new(ctx: Context, http: HttpConfig) -> ApiState {
        ApiState {
            ctx,
            body_budget: budget::BodyBudget::new(http.max_inflight_body_bytes),
            http: Arc::new(http),
            contracts: Contracts::CHECKED,
            started: Instant::now(),
        }
    }

    /// Whether produce checks values against their topic's store-event contract
    /// (`[ingest] check_contracts`; checked unless told otherwise).
    pub fn with_contracts(mut self, contracts: Contracts) -> ApiState {
        self.contracts = contracts;
        self
    }

    /// The sources' status board.
    pub fn sources(&self) -> &StatusBoard {
        &self.ctx.sources
    }

    /// The log the handlers read and write.
    pub fn log(&self) -> &Log {
        &self.ctx.log
    }

    /// The state store (consumer offsets for endpoints that commit them).
    pub fn state(&self) -> &StateStore {
        &self.ctx.state
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
        .merge(forward::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(protected)
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(count_responses))
        .with_state(state)
}

async fn health(State(api): State<ApiState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "edge_id": api.ctx.identity.edge_id(),
        "store_id": api.ctx.identity.store_id(),
        "uptime_s": api.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Readiness, for supervisors and load balancers: 200 once the box is ready (log open,
/// listeners bound, every enabled plugin running or failed visibly), else 503 naming what it
/// still waits for; 503 `stopping` once shutdown began.
async fn ready(State(api): State<ApiState>) -> Response {
    let ready = &api.ctx.ready;
    let (status, answer) = if api.ctx.shutdown.is_requested() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "waiting_for": ["stopping"] }),
        )
    } else if ready.is_ready() {
        (StatusCode::OK, json!({ "ready": true, "waiting_for": [] }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "waiting_for": ready.pending() }),
        )
    };
    (status, Json(answer)).into_response()
}

/// The forwarder's status as JSON, `{"enabled": false}` without a cloud (see
/// [`forward::status_json`]; it also refreshes the debt gauges).
async fn forward_status(forwarder: Option<Extension<crate::forward::Forwarder>>) -> Value {
    let Some(Extension(f)) = forwarder else {
        return json!({ "enabled": false });
    };
    forward::status_json(f)
        .await
        .unwrap_or_else(|error| json!({ "enabled": true, "error": error }))
}

async fn metrics(
    State(api): State<ApiState>,
    forwarder: Option<Extension<crate::forward::Forwarder>>,
) -> Response {
    // Refreshes the data-debt gauges of the forwarded topics.
    let _ = forward_status(forwarder).await;
    // The log keeps its own counters and byte gauges; the per-topic offsets and segment
    // counts are refreshed here, at scrape time.
    let registry = crate::metrics::global();
    for topic in api.ctx.log.topics() {
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

async fn list_topics(
    State(api): State<ApiState>,
    forwarder: Option<Extension<crate::forward::Forwarder>>,
) -> Json<Value> {
    let forward = forward_status(forwarder).await;
    // The debt of each forwarded topic, by name, to join into its entry.
    let mut debts: std::collections::HashMap<String, Value> = forward
        .get("topics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t.get("topic")?.as_str()?.to_string(), t.clone())))
        .collect();
    let topics: Vec<Value> = api
        .ctx
        .log
        .topics()
        .iter()
        .map(|t| {
            let stats = t.stats();
            let mut entry = serde_json::to_value(&stats).unwrap_or_else(|_| json!({}));
            if let (Some(map), Some(mut debt)) = (entry.as_object_mut(), debts.remove(&stats.name))
            {
                if let Some(d) = debt.as_object_mut() {
                    d.remove("topic");
                }
                map.insert("forward".into(), debt);
            }
            entry
        })
        .collect();
    Json(json!({
        "topics": topics,
        "sources": api.ctx.sources.snapshot(),
        "sinks": api.ctx.sinks.snapshot(),
        "forward": forward,
    }))
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

#[cfg(test)]
mod status_tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::{router, ApiState};
    use crate::kernel::context::open_for_test;
    use crate::kernel::Link;

    async fn get(app: &axum::Router, path: &str) -> String {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sources_and_sinks_show_in_topics_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = open_for_test(dir.path(), Default::default());
        let (sources, sinks) = (ctx.sources.clone(), ctx.sinks.clone());
        sources.register("mqtt:store", "mqtt", |s| {
            s.set_link(Link::Retrying {
                last_error: "connection refused".into(),
                attempts: 3,
            });
            s.stored(42, 1_000);
            s.error(2);
        });
        sinks.register("mqtt:verdicts", "mqtt-sink", |k| {
            k.set_link(Link::Connected);
            k.stored(7, 1_000);
        });
        let app = router(ApiState::new(ctx, Default::default()));

        let topics: serde_json::Value = serde_json::from_str(&get(&app, "/topics").await).unwrap();
        assert_eq!(topics["sources"][0]["name"], "mqtt:store");
        assert_eq!(topics["sources"][0]["link"]["state"], "retrying");
        assert_eq!(topics["sources"][0]["link"]["attempts"], 3);
        assert_eq!(topics["sinks"][0]["records_stored"], 7);

        let metrics = get(&app, "/metrics").await;
        for line in [
            r#"outpost_source_up{source="mqtt:store",kind="mqtt"} 0"#,
            r#"outpost_source_records_total{source="mqtt:store",kind="mqtt"} 42"#,
            r#"outpost_source_errors_total{source="mqtt:store",kind="mqtt"} 2"#,
            r#"outpost_sink_up{sink="mqtt:verdicts",kind="mqtt-sink"} 1"#,
            r#"outpost_sink_records_total{sink="mqtt:verdicts",kind="mqtt-sink"} 7"#,
        ] {
            assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
        }
        // Counters follow the board as it grows.
        sources.update("mqtt:store", |s| {
            s.stored(8, 2_000);
            s.set_link(Link::Connected);
        });
        let metrics = get(&app, "/metrics").await;
        assert!(
            metrics.contains(r#"outpost_source_records_total{source="mqtt:store",kind="mqtt"} 50"#)
        );
        assert!(metrics.contains(r#"outpost_source_up{source="mqtt:store",kind="mqtt"} 1"#));
    }

    #[tokio::test]
    async fn topics_and_metrics_show_the_data_debt_of_forwarded_topics() {
        use crate::log::NewRecord;
        let dir = tempfile::tempdir().unwrap();
        let ctx = open_for_test(dir.path(), Default::default());
        let log = ctx.log.clone();
        let record = |v: &str| NewRecord {
            value: v.as_bytes().to_vec(),
            ..NewRecord::default()
        };
        let payments = log.topic_or_create("pos.payments").unwrap();
        payments
            .append(vec![record("{}"), record("{}"), record("{}")])
            .unwrap();
        let baskets = log.topic_or_create("pos.baskets").unwrap();
        baskets.append(vec![record("{}"), record("{}")]).unwrap();
        log.topic_or_create("sensors.fridge")
            .unwrap()
            .append(vec![record("{}")])
            .unwrap();
        let mut config = crate::forward::ForwardConfig::default();
        config.kafka.brokers = "127.0.0.1:1".into();
        let forwarder = crate::forward::Forwarder::new(&ctx, config);
        let app = super::forward::with_forwarder(
            router(ApiState::new(ctx, Default::default())),
            Some(forwarder),
        );

        let topics: serde_json::Value = serde_json::from_str(&get(&app, "/topics").await).unwrap();
        let entry = |name: &str| {
            topics["topics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == name)
                .unwrap()
                .clone()
        };
        assert_eq!(entry("pos.payments")["forward"]["class"], "critical");
        assert_eq!(entry("pos.payments")["forward"]["debt_records"], 3);
        assert_eq!(entry("pos.baskets")["forward"]["class"], "bulk");
        assert_eq!(entry("pos.baskets")["forward"]["debt_records"], 2);
        assert!(entry("sensors.fridge").get("forward").is_none());
        assert_eq!(topics["forward"]["enabled"], true);
        assert_eq!(topics["forward"]["classes"]["critical"]["debt_records"], 3);

        let metrics = get(&app, "/metrics").await;
        let line = r#"outpost_forward_debt_records{topic="pos.baskets",class="bulk"} 2"#;
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    #[tokio::test]
    async fn topics_say_forwarding_is_off_without_a_cloud() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = open_for_test(dir.path(), Default::default());
        let app = router(ApiState::new(ctx, Default::default()));
        let topics: serde_json::Value = serde_json::from_str(&get(&app, "/topics").await).unwrap();
        assert_eq!(topics["forward"]["enabled"], false);
    }
}
