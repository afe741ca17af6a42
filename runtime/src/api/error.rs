//! The API's error type and its JSON body, shaped like the Confluent REST Proxy's:
//! `{"error_code": <HTTP status × 100 + n>, "message": "…"}`.
//!
//! | status | error_code | when |
//! |---|---|---|
//! | 400 | 40001 | the body is not JSON |
//! | 400 | 40002 | the topic name breaks the naming rule |
//! | 400 | 40003 | a query parameter is malformed or out of range |
//! | 400 | 40004 | a fetch `offset` is past the end of the topic |
//! | 401 | 40101 | bearer token missing or wrong |
//! | 404 | 40401 | unknown topic (on read, or creation refused by config) |
//! | 404 | 40402 | a `partition` other than 0 |
//! | 404 | 40403 | no such endpoint |
//! | 405 | 40501 | wrong method for the endpoint |
//! | 410 | 41001 | a fetch starts at offsets that are lost or damaged; the body also has `topic`, `from_offset`, `next_offset` (the next readable offset: fetch again from there) and `reason` (`lost` \| `damaged`) |
//! | 413 | 41301 | body larger than `http.max_body_bytes` |
//! | 413 | 41302 | a record larger than `log.max_record_bytes` |
//! | 415 | 41501 | unsupported `Content-Type` |
//! | 422 | 42201 | JSON is well formed but not a valid produce request |
//! | 422 | 42202 | a record's value breaks its topic's store-event contract (`CONTRACTS.md`, checked by `contracts.rs` unless `ingest.check_contracts = false`); the message names the record's index, the topic, the field and what is wrong (`records[3]: pos.payments: field "card_id" is missing`); no record of the request is stored |
//! | 500 | 50001 | storage error (I/O, corruption, a topic made read-only) |
//! | 500 | 50002 | an internal task failed |
//! | 503 | 50301 | the log is closed (shutting down) |
//! | 503 | 50302 | request bodies in flight fill `http.max_inflight_body_bytes` (with `Retry-After`) |
//! | 503 | 50303 | every connection is busy at `http.max_connections` (with `Retry-After`; written by `serve.rs`) |
//! | 507 | 50701 | the disk budget is exhausted |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::contracts::ContractError;
use crate::log::LogError;

/// Everything a request can fail with; each variant maps to one status and error code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The topic name breaks the naming rule.
    #[error("{0}")]
    InvalidTopic(String),
    /// A query parameter is malformed or out of range.
    #[error("bad query parameter: {0}")]
    BadQuery(String),
    /// A fetch starts past the end of the topic.
    #[error("offset {offset} is past the end of topic {topic:?} (next offset {next_offset})")]
    OffsetPastEnd {
        topic: String,
        offset: u64,
        next_offset: u64,
    },
    /// Bearer token missing or wrong.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The topic does not exist (or may not be created).
    #[error("{0}")]
    UnknownTopic(String),
    /// A partition other than 0 was named.
    #[error(
        "partition {partition} not found in record {index}: Outpost topics have one partition, 0"
    )]
    UnknownPartition { index: usize, partition: i64 },
    /// No such endpoint.
    #[error("no endpoint {0}; see GET /health, /metrics, /topics, POST /topics/{{topic}}, GET /topics/{{topic}}/records")]
    NoSuchEndpoint(String),
    /// Wrong method for the endpoint.
    #[error("method {0} is not allowed on this endpoint")]
    MethodNotAllowed(String),
    /// The body is larger than `http.max_body_bytes`.
    #[error("the body is larger than {limit} bytes (`http.max_body_bytes`)")]
    BodyTooLarge { limit: usize },
    /// A record is larger than `log.max_record_bytes`.
    #[error("record {index} is {size} bytes, the limit is {limit} bytes (`log.max_record_bytes`)")]
    RecordTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    /// Unsupported `Content-Type`.
    #[error("unsupported Content-Type {0:?}; use application/vnd.kafka.json.v2+json, application/json or application/vnd.kafka.binary.v2+json")]
    UnsupportedMediaType(String),
    /// Well-formed JSON that is not a valid produce request.
    #[error("{0}")]
    InvalidRequest(String),
    /// A record's value breaks its topic's store-event contract.
    #[error("records[{index}]: {error}")]
    ContractViolation { index: usize, error: ContractError },
    /// The server is too busy for this request now; it should be retried shortly.
    #[error("{0}")]
    Busy(String),
    /// An internal task failed (a bug, logged).
    #[error("internal error: {0}")]
    Internal(String),
    /// The log refused or failed the operation.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ApiError {
    /// The HTTP status and the Confluent-style error code.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, 40001),
            ApiError::InvalidTopic(_) => (StatusCode::BAD_REQUEST, 40002),
            ApiError::BadQuery(_) => (StatusCode::BAD_REQUEST, 40003),
            ApiError::OffsetPastEnd { .. } => (StatusCode::BAD_REQUEST, 40004),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, 40101),
            ApiError::UnknownTopic(_) => (StatusCode::NOT_FOUND, 40401),
            ApiError::UnknownPartition { .. } => (StatusCode::NOT_FOUND, 40402),
            ApiError::NoSuchEndpoint(_) => (StatusCode::NOT_FOUND, 40403),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, 40501),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 41301),
            ApiError::RecordTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 41302),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 41501),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            ApiError::ContractViolation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50002),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, 50302),
            ApiError::Log(e) => match e {
                LogError::InvalidTopicName { .. } => (StatusCode::BAD_REQUEST, 40002),
                LogError::UnknownTopic(_) | LogError::CreationRefused(_) => {
                    (StatusCode::NOT_FOUND, 40401)
                }
                LogError::RecordTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, 41302),
                LogError::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, 50701),
                LogError::Closed => (StatusCode::SERVICE_UNAVAILABLE, 50301),
                LogError::Gap { .. } => (StatusCode::GONE, 41001),
                // Corrupt data, a poisoned topic, I/O errors and anything added later.
                _ => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // A busy answer is counted (`outpost_http_body_budget_refusals_total`), not logged:
        // under load it would be one warning per request.
        if status.is_server_error() && code != 50302 {
            tracing::warn!(status = status.as_u16(), error = %self, "A request failed on the server side.");
        }
        let mut body = serde_json::json!({ "error_code": code, "message": self.to_string() });
        if let ApiError::Log(LogError::Gap {
            topic,
            from_offset,
            next_offset,
            reason,
            ..
        }) = &self
        {
            body["topic"] = serde_json::json!(topic);
            body["from_offset"] = serde_json::json!(from_offset);
            body["next_offset"] = serde_json::json!(next_offset);
            body["reason"] = serde_json::json!(reason);
        }
        let mut response = (status, axum::Json(body)).into_response();
        if code == 50302 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
