//! `POST /topics/{topic}`: the Confluent REST Proxy v2 produce request.
//!
//! Body: `{"records":[{"key":…,"value":…,"partition":0,"headers":{"name":"value"}}]}`.
//! The `Content-Type` picks how keys, values and header values are read:
//! - `application/vnd.kafka.json.v2+json` or `application/json` (JSON embedded): a value is
//!   stored as its compact JSON serialization, numbers with their exact value (every double,
//!   i64 and u64 comes back bit-for-bit; an integer beyond 64 bits is stored as the nearest
//!   double: send such numbers as strings, or use the binary format); a string key is stored as the string's bytes,
//!   any other key as its JSON serialization; header values are strings stored as UTF-8.
//! - `application/vnd.kafka.binary.v2+json`: keys, values and header values are base64
//!   strings (standard alphabet, padded); a `null` value is stored as zero bytes.
//!
//! `key`, `partition` and `headers` are optional; `partition` may only be 0 (or null);
//! `headers` is an Outpost extension (Confluent's v2 API has none). The whole batch is checked
//! before anything is appended, and the 200 goes out only after the append is acknowledged
//! under the topic's fsync policy, so an acknowledged record on an `always` topic is durable.
//! On a topic of `CONTRACTS.md`'s "Store events" table every value must also meet the topic's
//! contract (`contracts.rs`, unless `ingest.check_contracts = false`): one that does not makes
//! the whole request a 422 (error code 42202) naming the record's index and the problem, and
//! nothing of it is stored.
//! Answer: `{"key_schema_id":null,"value_schema_id":null,"offsets":[{"partition":0,"offset":N,
//! "error_code":null,"error":null}]}` as `application/vnd.kafka.v2+json`.

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use base64::Engine as _;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;

use super::{ApiError, ApiState};
use crate::contracts::Contract;
use crate::log::{validate_topic_name, NewRecord};

/// The content type of produce answers.
pub const KAFKA_V2_JSON: &str = "application/vnd.kafka.v2+json";

/// How keys, values and header values are embedded in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedFormat {
    /// JSON values (`application/vnd.kafka.json.v2+json`, `application/json`).
    Json,
    /// Base64 bytes (`application/vnd.kafka.binary.v2+json`).
    Binary,
}

/// Reads the embedded format from a `Content-Type` value (parameters such as `charset` are
/// ignored).
pub fn embedded_format(content_type: Option<&str>) -> Result<EmbeddedFormat, ApiError> {
    let raw = content_type.unwrap_or("");
    let media = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/vnd.kafka.json.v2+json" | "application/json" => Ok(EmbeddedFormat::Json),
        "application/vnd.kafka.binary.v2+json" => Ok(EmbeddedFormat::Binary),
        _ if raw.is_empty() => Err(ApiError::UnsupportedMediaType("(none)".into())),
        _ => Err(ApiError::UnsupportedMediaType(raw.to_string())),
    }
}

/// The declared `Content-Length`, if any and well-formed.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Collects the body, refusing more than `limit` bytes.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = content_length(headers);
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::InvalidRequest(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

/// Turns a produce request body into records, checking each value against `contract` (the
/// store-event contract of the topic, if it has one and the check is on); nothing is appended
/// here.
///
/// Memory stays near the body's size: the body is split into one borrowed slice per record
/// (`RawValue`), and only one record at a time becomes a `serde_json::Value`. Parsing a whole
/// 8 MiB body into one `Value` tree took about forty times its size.
pub fn parse_produce(
    body: &[u8],
    format: EmbeddedFormat,
    contract: Option<&Contract>,
) -> Result<Vec<NewRecord>, ApiError> {
    let invalid = |m: String| ApiError::InvalidRequest(m);
    let object: BTreeMap<String, &RawValue> = match serde_json::from_slice(body) {
        Ok(object) => object,
        Err(e) => {
            // Well-formed JSON of another shape, or not JSON at all (checked without building
            // a tree).
            return Err(match serde_json::from_slice::<IgnoredAny>(body) {
                Ok(_) => invalid("the body must be a JSON object with a `records` array".into()),
                Err(_) => ApiError::MalformedJson(e.to_string()),
            });
        }
    };
    for (field, value) in &object {
        match field.as_str() {
            "records" => {}
            "key_schema" | "value_schema" | "key_schema_id" | "value_schema_id" => {
                if value.get() != "null" {
                    return Err(invalid(format!(
                        "`{field}` is not supported: Outpost has no schema registry; use the \
                         JSON or binary embedded format"
                    )));
                }
            }
            other => {
                return Err(invalid(format!(
                    "unknown field `{other}` in the body; expected `records`"
                )))
            }
        }
    }
    let records: Vec<&RawValue> = match object.get("records") {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| invalid("`records` must be an array".into()))?,
        None => return Err(invalid("the body has no `records` array".into())),
    };
    if records.is_empty() {
        return Err(invalid(
            "`records` is empty; send at least one record".into(),
        ));
    }
    records
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            let record: Value = serde_json::from_str(raw.get())
                .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
            parse_record(index, &record, format, contract)
        })
        .collect()
}

fn parse_record(
    index: usize,
    record: &Value,
    format: EmbeddedFormat,
    contract: Option<&Contract>,
) -> Result<NewRecord, ApiError> {
    let invalid = |m: String| ApiError::InvalidRequest(format!("records[{index}]: {m}"));
    let fields = record
        .as_object()
        .ok_or_else(|| invalid("a record must be a JSON object".into()))?;
    for field in fields.keys() {
        if !matches!(field.as_str(), "key" | "value" | "partition" | "headers") {
            return Err(invalid(format!(
                "unknown field `{field}`; a record has `key`, `value`, `partition` and `headers`"
            )));
        }
    }
    match fields.get("partition") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => match n.as_i64() {
            Some(0) => {}
            Some(partition) => return Err(ApiError::UnknownPartition { index, partition }),
            None => return Err(invalid("`partition` must be the integer 0".into())),
        },
        Some(_) => return Err(invalid("`partition` must be the integer 0".into())),
    }
    let key = match (fields.get("key"), format) {
        (None | Some(Value::Null), _) => None,
        (Some(Value::String(s)), EmbeddedFormat::Json) => Some(s.as_bytes().to_vec()),
        (Some(other), EmbeddedFormat::Json) => Some(other.to_string().into_bytes()),
        (Some(Value::String(s)), EmbeddedFormat::Binary) => {
            Some(decode_base64(s).map_err(|e| invalid(format!("`key` is not valid base64: {e}")))?)
        }
        (Some(_), EmbeddedFormat::Binary) => {
            return Err(invalid(
                "`key` must be a base64 string or null in the binary format".into(),
            ))
        }
    };
    let value = match (fields.get("value"), format) {
        (None, _) => return Err(invalid("the record has no `value`".into())),
        (Some(v), EmbeddedFormat::Json) => v.to_string().into_bytes(),
        (Some(Value::Null), EmbeddedFormat::Binary) => Vec::new(),
        (Some(Value::String(s)), EmbeddedFormat::Binary) => {
            decode_base64(s).map_err(|e| invalid(format!("`value` is not valid base64: {e}")))?
        }
        (Some(_), EmbeddedFormat::Binary) => {
            return Err(invalid(
                "`value` must be a base64 string or null in the binary format".into(),
            ))
        }
    };
    let mut headers = Vec::new();
    match fields.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, v) in map {
                if name.is_empty() {
                    return Err(invalid("header names must not be empty".into()));
                }
                let bytes = match (v, format) {
                    (Value::String(s), EmbeddedFormat::Json) => s.as_bytes().to_vec(),
                    (Value::String(s), EmbeddedFormat::Binary) => {
                        decode_base64(s).map_err(|e| {
                            invalid(format!("header {name:?} is not valid base64: {e}"))
                        })?
                    }
                    _ => return Err(invalid(format!("header {name:?} must have a string value"))),
                };
                headers.push((name.clone(), bytes));
            }
        }
        Some(_) => {
            return Err(invalid(
                "`headers` must be an object of name to string value".into(),
            ))
        }
    }
    // Last, so that a malformed record is told what is malformed first.
    if let Some(contract) = contract {
        let checked = match (format, fields.get("value")) {
            // The parsed value is at hand: checked as it is, not parsed again.
            (EmbeddedFormat::Json, Some(v)) => contract.check_json(v),
            _ => contract.check(&value),
        };
        checked.map_err(|error| ApiError::ContractViolation { index, error })?;
    }
    Ok(NewRecord {
        key,
        value,
        headers,
        timestamp_ms: None,
    })
}

fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(s)
}

/// The answer to a produce of `count` records from offset `first`.
fn answer_body(first: u64, count: usize) -> String {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(64 + count * 64);
    body.push_str(r#"{"key_schema_id":null,"value_schema_id":null,"offsets":["#);
    for i in 0..count as u64 {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"partition":0,"offset":{},"error_code":null,"error":null}}"#,
            first + i
        );
    }
    body.push_str("]}");
    body
}

/// The handler.
pub(super) async fn produce(
    State(api): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::InvalidTopic(e.body_text()))?;
    validate_topic_name(&name).map_err(|e| ApiError::InvalidTopic(e.to_string()))?;
    let format = embedded_format(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    // The request's memory (four times its body) is reserved in the box-wide budget before the
    // body is read (a body without Content-Length counts as the largest allowed), and held
    // until the records are appended; beyond the budget the answer is 503 + Retry-After.
    let max_body = api.http.max_body_bytes;
    let declared = content_length(&headers);
    if declared.is_some_and(|len| len > max_body as u64) {
        return Err(ApiError::BodyTooLarge { limit: max_body });
    }
    let reserve = declared.map_or(max_body, |len| usize::try_from(len).unwrap_or(max_body));
    let _reserved = api
        .body_budget
        .try_reserve(reserve.saturating_mul(super::budget::MEMORY_PER_BODY_BYTE))?;
    let bytes = read_body(&headers, body, max_body).await?;
    // Parsing is CPU work proportional to the body: off the async workers, so /health and
    // everything else keep answering while large bodies are parsed.
    let limit = api.ctx.log.max_record_bytes();
    let contract = api.contracts.for_topic(&name);
    let records = tokio::task::spawn_blocking(move || -> Result<Vec<NewRecord>, ApiError> {
        let records = parse_produce(&bytes, format, contract)?;
        drop(bytes);
        if let Some((index, size)) = records
            .iter()
            .map(NewRecord::payload_size)
            .enumerate()
            .find(|(_, size)| *size > limit)
        {
            return Err(ApiError::RecordTooLarge { index, size, limit });
        }
        Ok(records)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("parsing the request did not finish: {e}")))??;
    let count = records.len();
    let log = api.ctx.log.clone();
    let topic_name = name.clone();
    let topic = tokio::task::spawn_blocking(move || log.topic_or_create(&topic_name))
        .await
        .map_err(|e| ApiError::Internal(format!("topic lookup did not finish: {e}")))??;
    let ack = topic.append_async(records).await?;
    tracing::debug!(topic = %name, records = count, first_offset = ack.first_offset, "Records produced over HTTP.");
    // One offset entry per record: written straight into the body off the async workers
    // (a `Value` per entry cost as much as the parse for a body of small records).
    let first = ack.first_offset;
    let body = tokio::task::spawn_blocking(move || answer_body(first, count))
        .await
        .map_err(|e| ApiError::Internal(format!("writing the answer did not finish: {e}")))?;
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(KAFKA_V2_JSON),
    );
    Ok(response)
}
