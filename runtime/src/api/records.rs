//! `GET /topics/{topic}/records?offset=N&limit=M&wait_ms=W`: reading a topic.
//!
//! Answer: `{"records":[{"offset","ts_ms","key","value","headers"}],"next_offset":N}`.
//! - `offset` defaults to the first stored offset; an offset below it (deleted by retention)
//!   starts at the first stored record; an offset past the end is a 400.
//! - `limit` defaults to, and is capped at, `http.max_fetch_records`; about
//!   `http.max_fetch_bytes` of records are returned at most (always at least one if any).
//! - `wait_ms`: when nothing is readable at `offset`, wait up to this long (capped at
//!   `http.max_wait_ms`) for a record to arrive instead of answering empty at once.
//! - A fetch never jumps over a lost or damaged range. Records before such a range are
//!   answered as usual and `next_offset` stops at the range; a fetch that starts in it is a
//!   `410 Gone` with `{"error_code": 41001, "message", "topic", "from_offset", "next_offset",
//!   "reason"}`: offsets `from_offset..next_offset` cannot be read (`reason` `lost` or
//!   `damaged`) and the next readable offset is `next_offset` (see `api/error.rs`).
//!
//! Encoding of each record, so that what was stored comes back exactly:
//! - `value`: the stored bytes themselves, unchanged, when they are exactly one JSON value
//!   (no whitespace around it): numbers keep their text, so a double comes back bit-for-bit and
//!   an integer past 2^64 keeps every digit. Anything else (not JSON, or JSON with surrounding
//!   whitespace such as a trailing newline) is a base64 string of the exact bytes, and the
//!   record carries `"value_encoding":"base64"`.
//! - `key`: `null` when absent; the stored bytes as a string when they are UTF-8 (a key
//!   produced as a JSON string comes back as that string); otherwise base64 with
//!   `"key_encoding":"base64"`.
//! - `headers`: an object of name to UTF-8 string; if any value is not UTF-8, every value is
//!   base64 and the record carries `"headers_encoding":"base64"`. A name that occurs more than
//!   once maps to an array of its values in order.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{ApiError, ApiState};
use crate::log::{validate_topic_name, Record};

/// Query parameters of a fetch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FetchParams {
    offset: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

/// One stored record as the fetch answer shows it (see the module doc). Serializing it writes
/// a JSON value's stored text through unchanged.
#[derive(Debug, Serialize)]
pub struct RecordJson<'a> {
    offset: u64,
    ts_ms: u64,
    key: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_encoding: Option<&'static str>,
    value: RecordValue<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: Option<&'static str>,
    headers: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers_encoding: Option<&'static str>,
}

/// A record's value in a fetch answer: its stored JSON text, or base64 of its bytes.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum RecordValue<'a> {
    Json(&'a RawValue),
    Base64(String),
}

/// The stored bytes as one JSON value, when they are exactly that (the raw text covers every
/// byte: no whitespace around it, nothing after it).
fn exact_json(bytes: &[u8]) -> Option<&RawValue> {
    let raw: &RawValue = serde_json::from_slice(bytes).ok()?;
    (raw.get().len() == bytes.len()).then_some(raw)
}

/// Renders one stored record as the fetch answer shows it (see the module doc).
pub fn record_to_json(record: &Record) -> RecordJson<'_> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (key, key_encoding) = match &record.key {
        None => (Value::Null, None),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => (Value::String(s.to_string()), None),
            Err(_) => (Value::String(b64(bytes)), Some("base64")),
        },
    };
    let (value, value_encoding) = match exact_json(&record.value) {
        Some(raw) => (RecordValue::Json(raw), None),
        None => (RecordValue::Base64(b64(&record.value)), Some("base64")),
    };
    let all_utf8 = record
        .headers
        .iter()
        .all(|(_, v)| std::str::from_utf8(v).is_ok());
    let mut headers = Map::new();
    for (name, bytes) in &record.headers {
        let v = if all_utf8 {
            Value::String(String::from_utf8_lossy(bytes).into_owned())
        } else {
            Value::String(b64(bytes))
        };
        match headers.get_mut(name) {
            None => {
                headers.insert(name.clone(), v);
            }
            Some(Value::Array(values)) => values.push(v),
            Some(first) => {
                let first = first.take();
                headers.insert(name.clone(), Value::Array(vec![first, v]));
            }
        }
    }
    RecordJson {
        offset: record.offset,
        ts_ms: record.timestamp_ms,
        key,
        key_encoding,
        value,
        value_encoding,
        headers,
        headers_encoding: (!all_utf8).then_some("base64"),
    }
}

/// The fetch answer.
#[derive(Debug, Serialize)]
pub(super) struct FetchAnswer<'a> {
    records: Vec<RecordJson<'a>>,
    next_offset: u64,
}

/// The handler.
pub(super) async fn fetch(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FetchParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::InvalidTopic(e.body_text()))?;
    validate_topic_name(&name).map_err(|e| ApiError::InvalidTopic(e.to_string()))?;
    let Query(params) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let http = &*api.http;
    let limit = match params.limit {
        Some(0) => return Err(ApiError::BadQuery("`limit` must be at least 1".into())),
        Some(n) => n.min(http.max_fetch_records),
        None => http.max_fetch_records,
    };
    let max_bytes = http.max_fetch_bytes;
    let topic = api.ctx.log.topic(&name)?;
    let offset = params.offset.unwrap_or_else(|| topic.start_offset());
    let next = topic.next_offset();
    if offset > next {
        return Err(ApiError::OffsetPastEnd {
            topic: name,
            offset,
            next_offset: next,
        });
    }

    let read = |offset: u64| {
        let topic = topic.clone();
        async move {
            tokio::task::spawn_blocking(move || topic.read(offset, limit, max_bytes))
                .await
                .map_err(|e| ApiError::Internal(format!("read did not finish: {e}")))?
                .map_err(ApiError::from)
        }
    };
    let mut fetched = read(offset).await?;
    let wait_ms = params.wait_ms.unwrap_or(0).min(http.max_wait_ms);
    if fetched.records.is_empty() && wait_ms > 0 {
        let shutdown = api.ctx.shutdown.clone();
        tokio::select! {
            _ = topic.wait_for(fetched.next_offset, Duration::from_millis(wait_ms)) => {}
            _ = shutdown.requested() => {}
        }
        fetched = read(fetched.next_offset).await?;
    }
    let records = fetched.records.iter().map(record_to_json).collect();
    Ok(Json(FetchAnswer {
        records,
        next_offset: fetched.next_offset,
    })
    .into_response())
}
