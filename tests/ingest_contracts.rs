//! The store-event contracts at the door, against `outpost run`: a value that breaks its
//! topic's contract (`CONTRACTS.md`, `outpost::contracts`) never reaches the log. Over HTTP the
//! request gets 422 naming the record and the field and nothing of it is stored; an MQTT 5
//! device gets DISCONNECT 0x99 "Payload format invalid" and no PUBACK, an MQTT 3.1.1 device a
//! closed connection; a message from an external broker is acknowledged without being stored.
//! Valid values go on being stored, and the bundled fraud-score plugin, which today fails and
//! is quarantined on such garbage, keeps scoring payments after garbage was refused.
//! `[ingest] check_contracts = false` stores whatever arrives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::events::payment;
use crate::common::peers::{self, http_produce, Mosquitto, Outpost};
use crate::common::python::{self, free_port, PythonPeer};
use crate::common::raw_mqtt::{is_puback_for, RawDevice};
use crate::common::wait::wait_until;

/// MQTT 5 DISCONNECT reason "Payload format invalid".
const PAYLOAD_FORMAT_INVALID: u8 = 0x99;

/// Starts `outpost run` with `toml` as its config file, on fresh ports, data under `dir`.
fn start(dir: &Path, toml: &str) -> Outpost {
    let config = dir.join("outpost.toml");
    std::fs::write(&config, toml).unwrap();
    Outpost::start(&dir.join("data"), Some(&config), free_port(), free_port())
}

/// A box without plugins: only what ingest stores is in the log.
const NO_PLUGINS: &str = "[plugins]\nenabled = false\n";

/// A payment without `card_id`.
fn payment_without_card(id: &str) -> Value {
    let mut value = payment(id, "unused");
    value.as_object_mut().unwrap().remove("card_id");
    value
}

/// The produce body of `values`, keyed by their `card_id` when they have one.
fn produce_body(values: &[Value]) -> String {
    let records: Vec<Value> = values
        .iter()
        .map(|v| json!({"key": v["card_id"], "value": v}))
        .collect();
    json!({ "records": records }).to_string()
}

fn listener_refused(box_: &Outpost) -> u64 {
    box_.status("sources", "mqtt:listener").unwrap()["details"]["refused"]
        .as_u64()
        .unwrap_or(0)
}

/// The reason string of an MQTT 5 DISCONNECT body (reason code, properties).
fn reason_string(disconnect: &[u8]) -> String {
    // Reason code, property length (one byte: these reason strings are shorter than 128
    // bytes), then the Reason String property: 0x1F and a two-byte length.
    let props = disconnect.get(2..).unwrap_or_default();
    match props {
        [0x1F, hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            String::from_utf8_lossy(&rest[..len.min(rest.len())]).into_owned()
        }
        _ => String::new(),
    }
}

#[test]
fn a_payment_without_card_id_over_http_is_a_422_naming_card_id_and_nothing_of_the_request_is_stored(
) {
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let good = payment("p-good", "card-1");

    // The valid record before the broken one is not stored either: all or nothing.
    let body = produce_body(&[good.clone(), payment_without_card("p-bad")]);
    let answer = http_produce(box_.http_port, "pos.payments", &body);
    let Some((422, error)) = answer else {
        panic!("expected a 422, got {answer:?}");
    };
    assert_eq!(error["error_code"], 42202, "{error}");
    assert_eq!(
        error["message"],
        r#"records[1]: pos.payments: field "card_id" is missing"#
    );
    assert!(box_.records("pos.payments").is_empty());

    let mut wrong_amount = payment("p-text", "card-2");
    wrong_amount["amount"] = json!("12");
    let answer = http_produce(
        box_.http_port,
        "pos.payments",
        &produce_body(&[wrong_amount]),
    );
    let Some((422, error)) = answer else {
        panic!("expected a 422, got {answer:?}");
    };
    assert_eq!(
        error["message"],
        r#"records[0]: pos.payments: field "amount" must be a number, got "12""#
    );
    assert!(box_.records("pos.payments").is_empty());

    // The valid payment alone is stored as it was sent.
    let answer = http_produce(
        box_.http_port,
        "pos.payments",
        &produce_body(std::slice::from_ref(&good)),
    );
    assert!(matches!(answer, Some((200, _))), "{answer:?}");
    let stored = box_.records("pos.payments");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["value"], good);
    assert_eq!(stored[0]["key"], "card-1");
}

#[test]
fn a_broken_payment_over_mqtt_is_refused_with_payload_format_invalid_and_a_valid_one_on_a_new_connection_is_stored(
) {
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let broken = payment_without_card("p-bad").to_string();

    let mut device = RawDevice::connect(box_.mqtt_port, 5, "till-contract-5");
    device.publish_qos1("pos/payments", 1, broken.as_bytes());
    let after = device.read_until_closed();
    assert!(
        !after.iter().any(|p| is_puback_for(p, 1)),
        "the broken payment was acknowledged: {after:02x?}"
    );
    let last = after.last().expect("MQTT 5: a DISCONNECT before the close");
    assert_eq!(last.0, 0xE0, "a DISCONNECT: {after:02x?}");
    assert_eq!(last.1[0], PAYLOAD_FORMAT_INVALID, "{last:02x?}");
    let reason = reason_string(&last.1);
    assert!(
        reason.contains(r#"pos.payments: field "card_id" is missing"#),
        "the reason string names the field: {reason:?}"
    );

    // MQTT 3.1.1 has no way to say why: the connection closes without a PUBACK.
    let mut v4 = RawDevice::connect(box_.mqtt_port, 4, "till-contract-4");
    v4.publish_qos1("pos/payments", 2, broken.as_bytes());
    let after = v4.read_until_closed();
    assert!(after.is_empty(), "MQTT 3.1.1: just a close: {after:02x?}");

    let refused = wait_until(
        Duration::from_secs(10),
        || listener_refused(&box_),
        |n| *n >= 2,
    )
    .unwrap_or_else(|n| n);
    assert_eq!(refused, 2);
    assert!(box_.records("pos.payments").is_empty());

    let good = payment("p-good", "card-1");
    let mut again = RawDevice::connect(box_.mqtt_port, 5, "till-contract-5");
    again.publish_qos1("pos/payments", 3, good.to_string().as_bytes());
    let ack = again.read_packet().expect("an answer to the valid payment");
    assert!(is_puback_for(&ack, 3), "{ack:02x?}");
    // Stored before it was acknowledged.
    let stored = box_.records("pos.payments");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["value"], good);
    assert_eq!(stored[0]["key"], "card-1");
}

#[test]
fn fraud_score_keeps_scoring_valid_payments_after_garbage_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded defaults: bundled plugins, the verdict sink.
    let box_ = Outpost::start(&dir.path().join("data"), None, free_port(), free_port());

    // Five broken payments over HTTP (what used to quarantine fraud-score), one over MQTT.
    for i in 0..5 {
        let mut broken = payment_without_card(&format!("p-bad-{i}"));
        match i % 3 {
            0 => {}
            1 => broken["amount"] = json!("12.50"),
            _ => broken["channel"] = json!("swipe"),
        }
        let answer = http_produce(box_.http_port, "pos.payments", &produce_body(&[broken]));
        assert!(matches!(answer, Some((422, _))), "{answer:?}");
    }
    let mut device = RawDevice::connect(box_.mqtt_port, 5, "till-garbage");
    device.publish_qos1("pos/payments", 1, b"card=4111;amount=12");
    let after = device.read_until_closed();
    assert_eq!(
        after.last().map(|p| (p.0, p.1[0])),
        Some((0xE0, PAYLOAD_FORMAT_INVALID)),
        "{after:02x?}"
    );

    let valid: Vec<Value> = (0..3)
        .map(|i| payment(&format!("p-ok-{i}"), &format!("card-ok-{i}")))
        .collect();
    let answer = http_produce(box_.http_port, "pos.payments", &produce_body(&valid[..2]));
    assert!(matches!(answer, Some((200, _))), "{answer:?}");
    let mut device = RawDevice::connect(box_.mqtt_port, 4, "till-valid");
    device.publish_qos1("pos/payments", 2, valid[2].to_string().as_bytes());
    let ack = device.read_packet().expect("a PUBACK");
    assert!(is_puback_for(&ack, 2), "{ack:02x?}");

    let scores = box_.wait_records("fraud.scores", Duration::from_secs(60), |r| r.len() >= 3);
    let scored: Vec<&str> = scores
        .iter()
        .filter_map(|r| r["value"]["payment_id"].as_str())
        .collect();
    assert_eq!(scored, ["p-ok-0", "p-ok-1", "p-ok-2"], "{scores:?}");
    assert_eq!(box_.records("pos.payments").len(), 3);
    let fraud = box_.get("/plugins/fraud-score");
    assert_eq!(fraud["state"], "running", "{fraud}");
    assert!(
        box_.records("fraud-score.dlq").is_empty(),
        "{:?}",
        box_.records("fraud-score.dlq")
    );
}

#[test]
fn with_check_contracts_off_a_broken_payment_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(
        dir.path(),
        &format!("{NO_PLUGINS}[ingest]\ncheck_contracts = false\n"),
    );
    let broken = payment_without_card("p-bad");
    let answer = http_produce(
        box_.http_port,
        "pos.payments",
        &produce_body(std::slice::from_ref(&broken)),
    );
    assert!(matches!(answer, Some((200, _))), "{answer:?}");
    let mut device = RawDevice::connect(box_.mqtt_port, 5, "till-unchecked");
    device.publish_qos1("pos/payments", 1, broken.to_string().as_bytes());
    let ack = device.read_packet().expect("a PUBACK");
    assert!(is_puback_for(&ack, 1), "{ack:02x?}");
    let stored = box_.records("pos.payments");
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.iter().all(|r| r["value"] == broken), "{stored:?}");
}

/// mosquitto and the Python MQTT client; `None` (the test skips) when a peer is missing and
/// the harness does not require them.
fn broker_peers() -> Option<(PathBuf, PathBuf)> {
    let py = python::python("ingest_contracts")?;
    let (mosquitto, _) = peers::broker_tools("ingest_contracts")?;
    Some((py, mosquitto))
}

#[test]
fn a_broken_payment_from_an_external_broker_is_acknowledged_counted_and_not_stored() {
    let Some((py, mosquitto)) = broker_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&mosquitto, dir.path(), free_port(), None);
    let box_ = start(
        dir.path(),
        &format!(
            r#"{NO_PLUGINS}
[mqtt]
sinks = []

[[mqtt.sources]]
name = "store"
host = "127.0.0.1"
port = {}
client_id = "outpost-contracts"
retry_initial_ms = 100
retry_max_ms = 500
filters = [{{ filter = "pos/payments", qos = 1, key = {{ json_pointer = "/card_id" }} }}]

[mqtt.broker]
enabled = false
"#,
            broker.port
        ),
    );
    wait_until(
        Duration::from_secs(30),
        || box_.status("sources", "mqtt:store"),
        |s| {
            s.as_ref()
                .is_some_and(|s| s["link"]["state"] == "connected")
        },
    )
    .unwrap_or_else(|s| panic!("the source did not connect: {s:?}"));

    // In order: a broken payment, then a valid one. Both are acknowledged by the broker's
    // subscriber (the device gets its PUBACKs from mosquitto either way).
    for value in [payment_without_card("p-bad"), payment("p-good", "card-1")] {
        let port = broker.port.to_string();
        let payload = value.to_string();
        let device = PythonPeer::start(
            &py,
            "mqtt_client.py",
            &[
                "publish",
                "--port",
                &port,
                "--topic",
                "pos/payments",
                "--payload",
                &payload,
            ],
            "CONNECTED",
        );
        assert!(
            device
                .wait_for_line(|l| l.starts_with("DONE"), Duration::from_secs(30))
                .is_some(),
            "{:?}",
            device.lines()
        );
    }
    let stored = box_.wait_records("pos.payments", Duration::from_secs(20), |r| !r.is_empty());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["value"]["payment_id"], "p-good");
    let source = wait_until(
        Duration::from_secs(10),
        || box_.status("sources", "mqtt:store").unwrap(),
        |s| s["details"]["contract_violations"] == 1,
    )
    .unwrap_or_else(|s| s);
    assert_eq!(source["details"]["contract_violations"], 1, "{source}");
    assert_eq!(source["records_stored"], 1, "{source}");
}
