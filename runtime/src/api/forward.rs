//! The forwarder's HTTP endpoints, merged into the API's protected routes:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /forward` | [`crate::forward::ForwardStatus`] as JSON, or `{"enabled":false}` without a cloud |
//! | `POST /forward/bulk?enable=true\|false` | switches `manual` bulk topics (harbour mode) |
//!
//! The running [`Forwarder`] is reached through an `Extension` added by [`with_forwarder`].

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use crate::forward::Forwarder;

/// The forwarder routes (they answer "disabled" until [`with_forwarder`] adds one).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/forward", get(status))
        .route("/forward/bulk", post(bulk))
}

/// Makes the running forwarder reachable; `None` when forwarding is off.
pub fn with_forwarder(router: Router, forwarder: Option<Forwarder>) -> Router {
    match forwarder {
        Some(f) => router.layer(Extension(f)),
        None => router,
    }
}

/// The forwarder's status as JSON with `"enabled": true` (`GET /forward`, and the `forward`
/// part of `GET /topics`); computing it reads one record per forwarded topic, so it runs on a
/// blocking thread. Also refreshes the `outpost_forward_debt_*` gauges. `Err` says why it could
/// not be computed.
pub async fn status_json(forwarder: Forwarder) -> Result<serde_json::Value, String> {
    match tokio::task::spawn_blocking(move || forwarder.status()).await {
        Ok(Ok(status)) => {
            let mut value = serde_json::to_value(status).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                map.insert("enabled".into(), json!(true));
            }
            Ok(value)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn status(forwarder: Option<Extension<Forwarder>>) -> Response {
    let Some(Extension(f)) = forwarder else {
        return Json(json!({ "enabled": false })).into_response();
    };
    match status_json(f).await {
        Ok(value) => Json(value).into_response(),
        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

#[derive(Debug, Deserialize)]
struct BulkQuery {
    enable: Option<bool>,
}

async fn bulk(
    forwarder: Option<Extension<Forwarder>>,
    query: Result<Query<BulkQuery>, QueryRejection>,
) -> Response {
    let Some(Extension(f)) = forwarder else {
        return error(
            StatusCode::CONFLICT,
            "forwarding is off: set OUTPOST_KAFKA_BROKERS or forward.kafka.brokers".into(),
        );
    };
    let Some(enable) = query.ok().and_then(|Query(q)| q.enable) else {
        return error(
            StatusCode::BAD_REQUEST,
            "give ?enable=true or ?enable=false".into(),
        );
    };
    f.set_bulk_enabled(enable);
    Json(json!({ "bulk_enabled": enable })).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(json!({ "error_code": status.as_u16() * 100, "message": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::log::NewRecord;

    async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn status_shows_the_debt_per_topic_and_class_and_bulk_can_be_switched() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::kernel::context::open_for_test(dir.path(), Default::default());
        let mut config = crate::forward::ForwardConfig::default();
        config.kafka.brokers = "127.0.0.1:1".into();
        let log = ctx.log.clone();
        let payments = log.topic_or_create("pos.payments").unwrap();
        let records = (0..5)
            .map(|i| NewRecord {
                value: format!("{{\"i\":{i}}}").into_bytes(),
                ..NewRecord::default()
            })
            .collect();
        payments.append(records).unwrap();
        log.topic_or_create("sensors.fridge").unwrap();
        let forwarder = Forwarder::new(&ctx, config);
        let api = ApiState::new(ctx, Default::default());
        let plain = crate::api::router(api);
        let app = with_forwarder(plain.clone(), Some(forwarder.clone()));

        let (code, body) = call(&app, "GET", "/forward").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["enabled"], true);
        assert_eq!(body["online"], false);
        let topics = body["topics"].as_array().unwrap();
        assert_eq!(topics.len(), 1, "raw sensors are not forwarded: {body}");
        assert_eq!(topics[0]["topic"], "pos.payments");
        assert_eq!(topics[0]["class"], "critical");
        assert_eq!(topics[0]["debt_records"], 5);
        assert_eq!(body["classes"]["critical"]["debt_records"], 5);
        let metrics = crate::metrics::global().render();
        assert!(
            metrics.contains(
                "outpost_forward_debt_records{topic=\"pos.payments\",class=\"critical\"} 5"
            ),
            "{metrics}"
        );

        let (code, _) = call(&app, "POST", "/forward/bulk").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, body) = call(&app, "POST", "/forward/bulk?enable=true").await;
        assert_eq!(
            (code, body["bulk_enabled"].clone()),
            (StatusCode::OK, json!(true))
        );
        let (_, body) = call(&app, "GET", "/forward").await;
        assert_eq!(body["bulk_enabled"], true);

        let (code, body) = call(&plain, "GET", "/forward").await;
        assert_eq!((code, body), (StatusCode::OK, json!({"enabled": false})));
        let (code, _) = call(&plain, "POST", "/forward/bulk?enable=true").await;
        assert_eq!(code, StatusCode::CONFLICT);
    }
}
