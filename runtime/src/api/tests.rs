//! Every endpoint and every bad-input case, through the router without a socket.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::{router, ApiState};
use crate::kernel::{Context, Identity, Shutdown};
use crate::log::{Log, LogError, NewRecord};
use crate::state::StateStore;

const JSON_V2: &str = "application/vnd.kafka.json.v2+json";
const BINARY_V2: &str = "application/vnd.kafka.binary.v2+json";

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    log: Log,
}

/// The sections of the box config the API reads.
#[derive(Default)]
struct Config {
    log: crate::log::LogConfig,
    http: crate::config::HttpConfig,
}

/// A context over a fresh log and state store in `dir` (identity `edge-test`/`store-0001`).
fn context(dir: &std::path::Path, log: crate::log::LogConfig, shutdown: Shutdown) -> Context {
    let log = Log::open(&dir.join("log"), log).unwrap();
    let state = StateStore::open(&dir.join("state")).unwrap();
    Context::new(
        dir,
        log,
        state,
        Identity::new("edge-test", "store-0001"),
        shutdown,
    )
}

fn fixture_with(config: Config) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), config.log, Shutdown::never());
    let log = ctx.log.clone();
    let app = router(ApiState::new(ctx, config.http));
    Fixture {
        _dir: dir,
        app,
        log,
    }
}

fn fixture() -> Fixture {
    fixture_with(Config::default())
}

impl Fixture {
    async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    async fn send_json(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, _, body) = self.send(request).await;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, value)
    }

    async fn produce(&self, topic: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        self.send_json(post(&format!("/topics/{topic}"), content_type, body))
            .await
    }

    async fn fetch(&self, query: &str) -> (StatusCode, Value) {
        self.send_json(get(query)).await
    }

    /// Asserts a JSON error with this status and code whose message mentions `needle`.
    async fn expect_error(&self, request: Request<Body>, status: u16, code: u64, needle: &str) {
        let (got, body) = self.send_json(request).await;
        assert_eq!(got.as_u16(), status, "{body}");
        assert_eq!(body["error_code"], json!(code), "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "message {message:?} lacks {needle:?}"
        );
    }

    fn topic_next_offset(&self, topic: &str) -> Option<u64> {
        match self.log.topic(topic) {
            Ok(t) => Some(t.next_offset()),
            Err(LogError::UnknownTopic(_)) => None,
            Err(e) => panic!("{e}"),
        }
    }
}

fn post(uri: &str, content_type: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn health_reports_ok_edge_id_and_uptime() {
    let f = fixture();
    let (status, body) = f.fetch("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["edge_id"], "edge-test");
    assert_eq!(body["store_id"], "store-0001");
    assert!(body["uptime_s"].is_u64(), "{body}");
}

#[tokio::test]
async fn produced_json_records_are_acknowledged_with_dense_offsets_and_read_back() {
    let f = fixture();
    let body = r#"{"records":[
        {"key":"card-1","value":{"amount":12.5,"currency":"EUR"}},
        {"key":{"id":7},"value":"plain string","partition":0},
        {"value":[1,2,3]}
    ]}"#;
    let (status, headers, raw) = f.send(post("/topics/store.events", JSON_V2, body)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/vnd.kafka.v2+json"
    );
    let answer: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        answer,
        json!({"key_schema_id":null,"value_schema_id":null,"offsets":[
            {"partition":0,"offset":0,"error_code":null,"error":null},
            {"partition":0,"offset":1,"error_code":null,"error":null},
            {"partition":0,"offset":2,"error_code":null,"error":null}]})
    );
    // The value is stored as compact JSON, a string key as the raw string.
    let stored = f
        .log
        .topic("store.events")
        .unwrap()
        .read(0, 10, 1 << 20)
        .unwrap();
    assert_eq!(stored.records[0].key.as_deref(), Some(&b"card-1"[..]));
    assert_eq!(
        stored.records[0].value,
        br#"{"amount":12.5,"currency":"EUR"}"#.to_vec()
    );
    assert_eq!(stored.records[1].key.as_deref(), Some(&br#"{"id":7}"#[..]));
    assert_eq!(stored.records[2].key, None);

    let (status, page) = f.fetch("/topics/store.events/records").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["next_offset"], 3);
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["offset"], 0);
    assert_eq!(records[0]["key"], "card-1");
    assert_eq!(records[0]["value"], json!({"amount":12.5,"currency":"EUR"}));
    assert_eq!(records[0]["headers"], json!({}));
    assert!(records[0]["ts_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(records[1]["value"], "plain string");
    assert_eq!(records[1]["key"], r#"{"id":7}"#);
    assert_eq!(records[2]["key"], Value::Null);
    assert_eq!(records[2]["value"], json!([1, 2, 3]));
    assert!(records[0].get("value_encoding").is_none());
}

#[tokio::test]
async fn plain_application_json_with_charset_is_the_json_format() {
    let f = fixture();
    let (status, answer) = f
        .produce(
            "t",
            "Application/JSON; charset=utf-8",
            r#"{"records":[{"value":1}]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, page) = f.fetch("/topics/t/records").await;
    assert_eq!(page["records"][0]["value"], 1);
}

#[tokio::test]
async fn binary_format_round_trips_bytes_and_marks_what_is_not_json_or_utf8() {
    let f = fixture();
    let body = json!({"records":[
        {"key": b64(&[0xff, 0x00]), "value": b64(b"not json"), "headers": {"h": b64(&[0xfe])}},
        {"key": b64(b"k"), "value": b64(br#"{"a":1}"#)},
        {"value": null}
    ]})
    .to_string();
    let (status, answer) = f.produce("raw", BINARY_V2, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let stored = f.log.topic("raw").unwrap().read(0, 10, 1 << 20).unwrap();
    assert_eq!(stored.records[0].key.as_deref(), Some(&[0xff, 0x00][..]));
    assert_eq!(stored.records[0].value, b"not json".to_vec());
    assert_eq!(
        stored.records[0].headers,
        vec![("h".to_string(), vec![0xfe])]
    );
    assert_eq!(stored.records[2].value, Vec::<u8>::new());

    let (_, page) = f.fetch("/topics/raw/records").await;
    let r = &page["records"];
    assert_eq!(r[0]["key"], b64(&[0xff, 0x00]));
    assert_eq!(r[0]["key_encoding"], "base64");
    assert_eq!(r[0]["value"], b64(b"not json"));
    assert_eq!(r[0]["value_encoding"], "base64");
    assert_eq!(r[0]["headers"], json!({"h": b64(&[0xfe])}));
    assert_eq!(r[0]["headers_encoding"], "base64");
    assert_eq!(r[1]["key"], "k");
    assert!(r[1].get("key_encoding").is_none());
    assert_eq!(r[1]["value"], json!({"a":1}));
    assert_eq!(r[2]["value"], "");
    assert_eq!(r[2]["value_encoding"], "base64");
}

#[tokio::test]
async fn headers_extension_round_trips_and_repeated_names_become_arrays() {
    let f = fixture();
    let (status, answer) = f
        .produce(
            "h",
            JSON_V2,
            r#"{"records":[{"value":{},"headers":{"source":"till-3","trace":"abc"}}]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    f.log
        .topic("h")
        .unwrap()
        .append(vec![NewRecord {
            value: b"{}".to_vec(),
            headers: vec![("x".into(), b"1".to_vec()), ("x".into(), b"2".to_vec())],
            ..NewRecord::default()
        }])
        .unwrap();
    let (_, page) = f.fetch("/topics/h/records").await;
    assert_eq!(
        page["records"][0]["headers"],
        json!({"source":"till-3","trace":"abc"})
    );
    assert_eq!(page["records"][1]["headers"], json!({"x":["1","2"]}));
}

#[tokio::test]
async fn topics_lists_every_topic_with_its_numbers() {
    let f = fixture();
    f.produce(
        "b.topic",
        JSON_V2,
        r#"{"records":[{"value":1},{"value":2}]}"#,
    )
    .await;
    f.produce("a.topic", JSON_V2, r#"{"records":[{"value":1}]}"#)
        .await;
    let (status, body) = f.fetch("/topics").await;
    assert_eq!(status, StatusCode::OK);
    let topics = body["topics"].as_array().unwrap();
    assert_eq!(topics.len(), 2);
    assert_eq!(topics[0]["name"], "a.topic");
    assert_eq!(topics[1]["name"], "b.topic");
    assert_eq!(topics[1]["first_offset"], 0);
    assert_eq!(topics[1]["next_offset"], 2);
    assert!(topics[1]["bytes"].as_u64().unwrap() > 0);
    assert!(topics[1]["segments"].as_u64().unwrap() >= 1);
    assert!(topics[1]["records_per_sec"].is_number(), "{body}");
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_topic_gauges() {
    let f = fixture();
    f.produce("metered", JSON_V2, r#"{"records":[{"value":1}]}"#)
        .await;
    let (status, headers, body) = f.send(get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; version=0.0.4");
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("# TYPE outpost_log_topic_next_offset gauge"),
        "{text}"
    );
    assert!(
        text.contains("outpost_log_topic_next_offset{topic=\"metered\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("outpost_http_responses_total{code=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("outpost_uptime_seconds"), "{text}");
}

#[tokio::test]
async fn fetch_starts_at_the_given_offset_and_caps_the_limit() {
    let mut config = Config::default();
    config.http.max_fetch_records = 2;
    let f = fixture_with(config);
    let records: Vec<Value> = (0..5).map(|i| json!({"value": i})).collect();
    f.produce("t", JSON_V2, &json!({ "records": records }).to_string())
        .await;

    let (_, page) = f.fetch("/topics/t/records?limit=100").await;
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_offset"], 2);
    let (_, page) = f.fetch("/topics/t/records?offset=3&limit=1").await;
    assert_eq!(page["records"][0]["offset"], 3);
    assert_eq!(page["records"][0]["value"], 3);
    assert_eq!(page["next_offset"], 4);
    let (status, page) = f.fetch("/topics/t/records?offset=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"], json!([]));
    assert_eq!(page["next_offset"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_wait_ms_returns_a_record_appended_during_the_wait() {
    let f = fixture();
    f.produce("w", JSON_V2, r#"{"records":[{"value":0}]}"#)
        .await;
    let topic = f.log.topic("w").unwrap();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        topic
            .append_async(vec![NewRecord {
                value: b"1".to_vec(),
                ..NewRecord::default()
            }])
            .await
            .unwrap();
    });
    let started = Instant::now();
    let (status, page) = f.fetch("/topics/w/records?offset=1&wait_ms=10000").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(page["records"][0]["offset"], 1);
    assert_eq!(page["records"][0]["value"], 1);
    writer.await.unwrap();
}

#[tokio::test]
async fn fetch_wait_ends_empty_at_the_deadline_and_is_capped_by_max_wait_ms() {
    let mut config = Config::default();
    config.http.max_wait_ms = 300;
    let f = fixture_with(config);
    f.produce("w", JSON_V2, r#"{"records":[{"value":0}]}"#)
        .await;
    let started = Instant::now();
    let (status, page) = f.fetch("/topics/w/records?offset=1&wait_ms=600000").await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"], json!([]));
    assert_eq!(page["next_offset"], 1);
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

#[tokio::test]
async fn a_shutdown_ends_a_long_poll_early() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, shutdown) = Shutdown::new();
    let ctx = context(dir.path(), Default::default(), shutdown);
    ctx.log.topic_or_create("w").unwrap();
    let api = ApiState::new(ctx, Default::default());
    let app = router(api);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.request();
    });
    let started = Instant::now();
    let response = app
        .oneshot(get("/topics/w/records?wait_ms=20000"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

// ---- bad input: each is a 4xx/5xx JSON error that says what was wrong, nothing stored ----

#[tokio::test]
async fn malformed_json_is_a_400_and_stores_nothing() {
    let f = fixture();
    f.expect_error(
        post("/topics/t", JSON_V2, r#"{"records":[{"value":1}"#),
        400,
        40001,
        "not valid JSON",
    )
    .await;
    assert_eq!(f.topic_next_offset("t"), None);
}

#[tokio::test]
async fn produce_bodies_that_are_not_produce_requests_are_422s_naming_the_problem() {
    let f = fixture();
    let cases = [
        (r#"[1,2]"#, "JSON object"),
        (r#"{}"#, "no `records`"),
        (r#"{"records":{}}"#, "must be an array"),
        (r#"{"records":[]}"#, "empty"),
        (
            r#"{"records":[{"key":"k"}]}"#,
            "records[0]: the record has no `value`",
        ),
        (
            r#"{"records":[{"value":1},{"value":2,"topic":"x"}]}"#,
            "records[1]: unknown field `topic`",
        ),
        (
            r#"{"records":[{"value":1,"partition":"0"}]}"#,
            "`partition` must be the integer 0",
        ),
        (
            r#"{"records":[{"value":1,"headers":{"a":1}}]}"#,
            "header \"a\" must have a string value",
        ),
        (
            r#"{"records":[{"value":1,"headers":[]}]}"#,
            "`headers` must be an object",
        ),
        (
            r#"{"records":[{"value":1}],"value_schema":"{}"}"#,
            "no schema registry",
        ),
        (
            r#"{"records":[{"value":1}],"extra":1}"#,
            "unknown field `extra`",
        ),
    ];
    for (body, needle) in cases {
        f.expect_error(post("/topics/t", JSON_V2, body), 422, 42201, needle)
            .await;
    }
    f.produce("t", JSON_V2, r#"{"records":[{"value":1}]}"#)
        .await;
    // A batch whose last record is bad leaves an existing topic untouched.
    f.expect_error(
        post(
            "/topics/t",
            JSON_V2,
            r#"{"records":[{"value":2},{"value":3},{"nope":1}]}"#,
        ),
        422,
        42201,
        "records[2]",
    )
    .await;
    assert_eq!(f.topic_next_offset("t"), Some(1));
}

#[tokio::test]
async fn bad_base64_in_the_binary_format_is_a_422() {
    let f = fixture();
    f.expect_error(
        post("/topics/t", BINARY_V2, r#"{"records":[{"value":"%%%"}]}"#),
        422,
        42201,
        "`value` is not valid base64",
    )
    .await;
    f.expect_error(
        post(
            "/topics/t",
            BINARY_V2,
            r#"{"records":[{"value":"AA==","key":"!"}]}"#,
        ),
        422,
        42201,
        "`key` is not valid base64",
    )
    .await;
    f.expect_error(
        post("/topics/t", BINARY_V2, r#"{"records":[{"value":{"a":1}}]}"#),
        422,
        42201,
        "base64 string",
    )
    .await;
    assert_eq!(f.topic_next_offset("t"), None);
}

/// A `pos.payments` value that meets its contract.
fn payment() -> Value {
    json!({
        "payment_id": "p-1", "ts_ms": 1_700_000_000_000u64, "store_id": "store-0001",
        "terminal_id": "t-1", "card_id": "card-1", "amount": 12.5, "currency": "EUR",
        "channel": "contactless", "kind": "sale",
    })
}

#[tokio::test]
async fn a_record_that_breaks_its_topics_contract_is_a_422_naming_it_and_nothing_is_stored() {
    let f = fixture();
    let mut broken = payment();
    broken.as_object_mut().unwrap().remove("card_id");
    let cases = [
        (
            JSON_V2,
            json!({"records": [{"value": payment()}, {"value": broken}]}),
            r#"records[1]: pos.payments: field "card_id" is missing"#,
        ),
        (
            BINARY_V2,
            json!({"records": [{"value": b64(broken.to_string().as_bytes())}]}),
            r#"records[0]: pos.payments: field "card_id" is missing"#,
        ),
        (
            BINARY_V2,
            json!({"records": [{"value": b64(b"card=1;amount=12")}]}),
            "records[0]: pos.payments: value is not JSON",
        ),
        // The JSON format stores a string value as a JSON string: not an object.
        (
            JSON_V2,
            json!({"records": [{"value": payment().to_string()}]}),
            "records[0]: pos.payments: value must be a JSON object, got \"{",
        ),
        (
            JSON_V2,
            json!({"records": [{"value": null}]}),
            "records[0]: pos.payments: value must be a JSON object, got null",
        ),
    ];
    for (format, body, needle) in cases {
        let request = post("/topics/pos.payments", format, &body.to_string());
        f.expect_error(request, 422, 42202, needle).await;
    }
    assert_eq!(f.topic_next_offset("pos.payments"), None);

    // A request of the same records that is malformed otherwise is told that first.
    let body = json!({"records": [{"value": payment()}, {"value": broken, "nope": 1}]});
    let request = post("/topics/pos.payments", JSON_V2, &body.to_string());
    f.expect_error(request, 422, 42201, "unknown field `nope`")
        .await;

    // Valid payments are stored in both formats; other topics take anything.
    let body = json!({"records": [{"value": payment()}]}).to_string();
    let (status, answer) = f.produce("pos.payments", JSON_V2, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let body = json!({"records": [{"value": b64(payment().to_string().as_bytes())}]});
    let (status, answer) = f
        .produce("pos.payments", BINARY_V2, &body.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(f.topic_next_offset("pos.payments"), Some(2));
    let body = json!({"records": [{"value": broken}]}).to_string();
    let (status, answer) = f.produce("pos.payments.raw", JSON_V2, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn with_the_contract_check_off_produce_stores_what_breaks_a_contract() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), Default::default(), Shutdown::never());
    let log = ctx.log.clone();
    let api = ApiState::new(ctx, Default::default())
        .with_contracts(crate::contracts::Contracts::UNCHECKED);
    let app = router(api);
    let request = post(
        "/topics/pos.payments",
        JSON_V2,
        r#"{"records":[{"value":{"amount":"12"}}]}"#,
    );
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(log.topic("pos.payments").unwrap().next_offset(), 1);
}

#[tokio::test]
async fn a_partition_other_than_zero_is_a_404() {
    let f = fixture();
    f.expect_error(
        post(
            "/topics/t",
            JSON_V2,
            r#"{"records":[{"value":1},{"value":1,"partition":3}]}"#,
        ),
        404,
        40402,
        "partition 3 not found in record 1",
    )
    .await;
    assert_eq!(f.topic_next_offset("t"), None);
}

#[tokio::test]
async fn bad_topic_names_are_400s_on_produce_and_fetch() {
    let f = fixture();
    f.expect_error(
        post("/topics/Bad.Topic", JSON_V2, r#"{"records":[{"value":1}]}"#),
        400,
        40002,
        "Bad.Topic",
    )
    .await;
    f.expect_error(
        post("/topics/a%20b", JSON_V2, r#"{"records":[{"value":1}]}"#),
        400,
        40002,
        "a b",
    )
    .await;
    let long = "x".repeat(129);
    f.expect_error(
        post(
            &format!("/topics/{long}"),
            JSON_V2,
            r#"{"records":[{"value":1}]}"#,
        ),
        400,
        40002,
        "",
    )
    .await;
    f.expect_error(get("/topics/UPPER/records"), 400, 40002, "UPPER")
        .await;
    assert!(f.log.topics().is_empty());
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_a_413_with_or_without_content_length() {
    let mut config = Config::default();
    config.http.max_body_bytes = 1024;
    let f = fixture_with(config);
    let big = json!({"records":[{"value":"x".repeat(2000)}]}).to_string();
    let declared = Request::post("/topics/t")
        .header(header::CONTENT_TYPE, JSON_V2)
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    f.expect_error(declared, 413, 41301, "http.max_body_bytes")
        .await;
    // Streamed in chunks with no Content-Length: the limit applies while reading.
    let streamed = Request::post("/topics/t")
        .header(header::CONTENT_TYPE, JSON_V2)
        .body(Body::new(Chunked(
            big.into_bytes()
                .chunks(100)
                .map(Bytes::copy_from_slice)
                .collect(),
        )))
        .unwrap();
    f.expect_error(streamed, 413, 41301, "1024 bytes").await;
    assert_eq!(f.topic_next_offset("t"), None);
}

/// A body of prepared chunks with no size hint, like a chunked upload.
struct Chunked(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

#[tokio::test]
async fn a_record_over_max_record_bytes_is_a_413_and_the_batch_is_not_stored() {
    let mut config = Config::default();
    config.log.max_record_bytes = 100;
    let f = fixture_with(config);
    let body =
        json!({"records":[{"value":"small"},{"key":"k","value":"y".repeat(200)}]}).to_string();
    f.expect_error(post("/topics/t", JSON_V2, &body), 413, 41302, "record 1 is")
        .await;
    assert_eq!(f.topic_next_offset("t"), None);
}

#[tokio::test]
async fn an_unsupported_or_missing_content_type_is_a_415() {
    let f = fixture();
    f.expect_error(
        post("/topics/t", "text/plain", r#"{"records":[{"value":1}]}"#),
        415,
        41501,
        "text/plain",
    )
    .await;
    f.expect_error(
        post(
            "/topics/t",
            "application/vnd.kafka.avro.v2+json",
            r#"{"records":[{"value":1}]}"#,
        ),
        415,
        41501,
        "avro",
    )
    .await;
    let no_type = Request::post("/topics/t")
        .body(Body::from(r#"{"records":[{"value":1}]}"#))
        .unwrap();
    f.expect_error(no_type, 415, 41501, "application/vnd.kafka.json.v2+json")
        .await;
    assert_eq!(f.topic_next_offset("t"), None);
}

#[tokio::test]
async fn reading_an_unknown_topic_is_a_404() {
    let f = fixture();
    f.expect_error(get("/topics/nope/records"), 404, 40401, "nope")
        .await;
    assert!(f.log.topics().is_empty());
}

#[tokio::test]
async fn writing_an_unknown_topic_with_auto_create_off_is_a_404() {
    let mut config = Config::default();
    config.log.auto_create_topics = false;
    let f = fixture_with(config);
    f.expect_error(
        post("/topics/t", JSON_V2, r#"{"records":[{"value":1}]}"#),
        404,
        40401,
        "auto_create_topics",
    )
    .await;
    assert!(f.log.topics().is_empty());
}

#[tokio::test]
async fn bad_query_parameters_are_400s() {
    let f = fixture();
    f.produce("t", JSON_V2, r#"{"records":[{"value":1}]}"#)
        .await;
    f.expect_error(get("/topics/t/records?offset=abc"), 400, 40003, "offset")
        .await;
    f.expect_error(get("/topics/t/records?offset=-1"), 400, 40003, "offset")
        .await;
    f.expect_error(
        get("/topics/t/records?limit=0"),
        400,
        40003,
        "`limit` must be at least 1",
    )
    .await;
    f.expect_error(get("/topics/t/records?wait_ms=soon"), 400, 40003, "wait_ms")
        .await;
    f.expect_error(get("/topics/t/records?from=1"), 400, 40003, "from")
        .await;
    f.expect_error(
        get("/topics/t/records?offset=2"),
        400,
        40004,
        "past the end",
    )
    .await;
}

#[tokio::test]
async fn a_full_disk_is_a_507_that_says_so_and_stores_nothing() {
    let mut config = Config::default();
    config.log.min_free_bytes = u64::MAX / 2;
    let f = fixture_with(config);
    f.expect_error(
        post("/topics/t", JSON_V2, r#"{"records":[{"value":1}]}"#),
        507,
        50701,
        "storage full",
    )
    .await;
    assert!(matches!(f.topic_next_offset("t"), None | Some(0)));
}

#[tokio::test]
async fn unknown_endpoints_and_methods_are_json_errors() {
    let f = fixture();
    f.expect_error(get("/nope"), 404, 40403, "GET /nope").await;
    f.expect_error(post("/health", JSON_V2, "{}"), 405, 40501, "POST")
        .await;
}

// ---- bearer-token authentication ----

fn with_token(token: &str) -> Fixture {
    let mut config = Config::default();
    config.http.auth_token = Some(token.into());
    fixture_with(config)
}

#[tokio::test]
async fn with_a_token_configured_every_endpoint_but_health_needs_it() {
    let f = with_token("s3cret-token");
    let (status, _) = f.fetch("/health").await;
    assert_eq!(status, StatusCode::OK);
    for request in [
        get("/metrics"),
        get("/topics"),
        get("/topics/t/records"),
        post("/topics/t", JSON_V2, r#"{"records":[{"value":1}]}"#),
    ] {
        let (status, headers, body) = f.send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error_code"], 40101);
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"));
    }
    assert_eq!(f.topic_next_offset("t"), None);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_right_one_accepted() {
    let f = with_token("s3cret-token");
    let mut wrong = post("/topics/t", JSON_V2, r#"{"records":[{"value":1}]}"#);
    wrong.headers_mut().insert(
        header::AUTHORIZATION,
        "Bearer s3cret-tokeN".parse().unwrap(),
    );
    f.expect_error(wrong, 401, 40101, "wrong").await;
    assert_eq!(f.topic_next_offset("t"), None);

    let mut right = post("/topics/t", JSON_V2, r#"{"records":[{"value":1}]}"#);
    right.headers_mut().insert(
        header::AUTHORIZATION,
        "bearer s3cret-token".parse().unwrap(),
    );
    let (status, _) = f.send_json(right).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.topic_next_offset("t"), Some(1));
}

#[tokio::test]
async fn a_fetch_that_starts_at_a_lost_range_is_a_410_naming_the_next_readable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log_config = crate::log::LogConfig {
        min_free_bytes: 0,
        default_topic: crate::log::TopicConfig {
            fsync: crate::log::FsyncPolicy::Named(crate::log::NamedFsync::Never),
            segment_bytes: 4096,
            ..crate::log::TopicConfig::default()
        },
        ..crate::log::LogConfig::default()
    };
    {
        let log = Log::open(&dir.path().join("log"), log_config.clone()).unwrap();
        let t = log.topic_or_create("lossy").unwrap();
        for i in 0..60u64 {
            t.append(vec![NewRecord {
                value: format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes(),
                ..NewRecord::default()
            }])
            .unwrap();
        }
        log.close().unwrap();
    }
    let topic_dir = dir.path().join("log").join("lossy");
    let mut bases: Vec<u64> = std::fs::read_dir(&topic_dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").map(|b| b.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    assert!(bases.len() >= 4, "{bases:?}");
    // The second segment's file is gone (deleted by hand, a failing disk…).
    std::fs::remove_file(topic_dir.join(format!("{:020}.log", bases[1]))).unwrap();
    let ctx = context(dir.path(), log_config, Shutdown::never());
    let f = Fixture {
        log: ctx.log.clone(),
        app: router(ApiState::new(ctx, crate::config::HttpConfig::default())),
        _dir: dir,
    };

    // From the start: the records before the hole, and `next_offset` stops at it.
    let (status, page) = f.fetch("/topics/lossy/records?offset=0&limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    let offsets: Vec<u64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (0..bases[1]).collect::<Vec<_>>());
    assert_eq!(page["next_offset"], bases[1]);

    // At the hole: 410 with the range and the next readable offset, never a jump.
    let (status, body) = f
        .fetch(&format!("/topics/lossy/records?offset={}", bases[1] + 1))
        .await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(body["error_code"], 41001);
    assert_eq!(body["from_offset"], bases[1]);
    assert_eq!(body["next_offset"], bases[2]);
    assert_eq!(body["reason"], "lost");
    assert_eq!(body["topic"], "lossy");

    // From there on everything reads again.
    let (status, page) = f
        .fetch(&format!(
            "/topics/lossy/records?offset={}&limit=1",
            bases[2]
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"][0]["offset"], bases[2]);

    // The log recorded the range once in outpost.gaps.
    let gaps = f.log.topic(crate::log::GAPS_TOPIC).unwrap();
    let marker: crate::log::GapMarker =
        serde_json::from_slice(&gaps.read(0, 10, 1 << 20).unwrap().records[0].value).unwrap();
    assert_eq!(
        (marker.topic.as_str(), marker.from_offset, marker.to_offset),
        ("lossy", bases[1], bases[2] - 1)
    );
    assert_eq!(marker.reason, crate::log::REASON_LOST);
}
