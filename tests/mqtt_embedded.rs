//! The embedded broker end to end, with paho-mqtt devices (tests/peers/mqtt_client.py) talking
//! to `outpost run` on its default configuration: device messages land in the log with key and
//! headers, answers come back over MQTT, every acknowledged message survives `kill -9`, and a
//! full log holds acknowledgements instead of dropping messages.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::wait::wait_until;
use crate::common::{events, peers, python};

use peers::{eventually, Outpost, Rng};
use python::{free_port, PythonPeer};
use serde_json::{json, Value};

fn payment(i: &str, terminal: &str) -> String {
    json!({
        "payment_id": format!("p-{i}"), "ts_ms": 1_790_000_000_000u64, "store_id": "store-0001",
        "terminal_id": terminal, "card_id": format!("card-{i}"), "amount": 12.5,
        "currency": "EUR", "channel": "card_present", "kind": "sale",
    })
    .to_string()
}

fn subscriber(py: &PathBuf, port: u16, filter: &str, protocol: &str, count: usize) -> PythonPeer {
    PythonPeer::start(
        py,
        "mqtt_client.py",
        &[
            "subscribe",
            "--port",
            &port.to_string(),
            "--protocol",
            protocol,
            "--filter",
            filter,
            "--count",
            &count.to_string(),
            "--timeout",
            "60",
        ],
        "READY",
    )
}

fn publisher(py: &PathBuf, port: u16, args: &[&str]) -> PythonPeer {
    let port = port.to_string();
    let mut all = vec!["publish", "--port", &port];
    all.extend_from_slice(args);
    PythonPeer::start(py, "mqtt_client.py", &all, "CONNECTED")
}

/// Starts `outpost run` with `toml` as its config file, on fresh ports, data under `dir`.
fn start_with_config(dir: &std::path::Path, toml: &str) -> Outpost {
    let config = dir.join("outpost.toml");
    std::fs::write(&config, toml).unwrap();
    Outpost::start(&dir.join("data"), Some(&config), free_port(), free_port())
}

/// Starts a box whose listener also stores device status messages (`devices/status`, keyed
/// by the device), where the last wills of these tests go.
fn start_with_status_route(dir: &std::path::Path) -> Outpost {
    start_with_config(
        dir,
        r#"[mqtt.broker]
routes = [
  { filter = "pos/payments", key = { json_pointer = "/card_id" } },
  { filter = "devices/status", key = { json_pointer = "/device" } },
]
"#,
    )
}

fn acked(peer: &PythonPeer) -> BTreeSet<u64> {
    peer.lines()
        .iter()
        .filter_map(|l| l.strip_prefix("ACK "))
        .map(|i| i.parse().unwrap())
        .collect()
}

#[test]
fn a_device_payment_is_stored_with_key_and_headers_and_its_verdict_comes_back() {
    let Some(py) = python::python("mqtt_embedded") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = Outpost::start(&dir.path().join("data"), None, free_port(), free_port());
    let verdicts = subscriber(&py, box_.mqtt_port, "pos/+/verdict", "311", 1);

    let pay = publisher(
        &py,
        box_.mqtt_port,
        &[
            "--client-id",
            "till-9",
            "--topic",
            "pos/payments",
            "--payload",
            &payment("1", "t-9"),
        ],
    );
    assert!(
        pay.wait_for_line(|l| l.starts_with("DONE 1"), Duration::from_secs(30))
            .is_some(),
        "the payment was not acknowledged: {:?}",
        pay.lines()
    );

    // Stored before it was acknowledged: already readable, with key and headers.
    let records = box_.records("pos.payments");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["key"], "card-1");
    assert_eq!(r["value"]["payment_id"], "p-1");
    assert_eq!(r["headers"]["mqtt-topic"], "pos/payments");
    assert_eq!(r["headers"]["mqtt-client-id"], "till-9");

    // The bundled fraud-score plugin scores it; the sink sends the verdict to the terminal.
    let line = verdicts
        .wait_for_line(|l| l.starts_with("MSG "), Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "no verdict arrived; fraud.scores holds {:?}",
                box_.records("fraud.scores")
            )
        });
    let (topic, body) = line["MSG ".len()..].split_once(' ').unwrap();
    assert_eq!(topic, "pos/t-9/verdict");
    let verdict: Value = serde_json::from_str(body).unwrap();
    assert_eq!(verdict["payment_id"], "p-1");
    assert!(verdict["score"].is_number(), "{verdict}");

    // The sink counts the verdict when the broker's PUBACK comes back, which can be a moment
    // after the subscriber got it: wait for the count rather than read it at once.
    let sink = wait_until(
        Duration::from_secs(20),
        || box_.status("sinks", "mqtt:verdicts").unwrap(),
        |s| s["records_stored"] != 0,
    )
    .unwrap_or_else(|s| s);
    assert_eq!(sink["records_stored"], 1, "{sink}");
    let listener = wait_until(
        Duration::from_secs(20),
        || box_.status("sources", "mqtt:listener").unwrap(),
        |l| l["records_stored"].as_u64() >= Some(1),
    )
    .unwrap_or_else(|l| l);
    assert_eq!(listener["link"]["state"], "connected", "{listener}");
    assert!(
        listener["records_stored"].as_u64().unwrap() >= 1,
        "{listener}"
    );
}

#[test]
fn a_record_in_fraud_scores_reaches_an_mqtt5_terminal_and_qos0_sensor_data_is_stored() {
    let Some(py) = python::python("mqtt_embedded") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = Outpost::start(&dir.path().join("data"), None, free_port(), free_port());
    let terminal = subscriber(&py, box_.mqtt_port, "pos/t-4/verdict", "5", 1);
    // The sink starts at the topic's end; it is connected once the box answers.
    assert!(eventually(Duration::from_secs(20), || {
        box_.status("sinks", "mqtt:verdicts")
            .is_some_and(|s| s["link"]["state"] == "connected")
    }));
    let score = json!({
        "payment_id": "p-77", "ts_ms": 1_790_000_000_000u64, "store_id": "store-0001",
        "terminal_id": "t-4", "card_id": "c", "score": 88, "reasons": ["velocity"],
    });
    let code = peers::http_post(
        box_.http_port,
        "/topics/fraud.scores",
        "application/vnd.kafka.json.v2+json",
        &json!({"records": [{"key": "c", "value": score}]}).to_string(),
    );
    assert_eq!(code, 200);
    let line = terminal
        .wait_for_line(|l| l.starts_with("MSG "), Duration::from_secs(20))
        .expect("the MQTT 5 terminal got its verdict");
    assert!(line.starts_with("MSG pos/t-4/verdict {"), "{line}");
    assert!(line.contains("\"score\":88"), "{line}");

    let sensor = publisher(
        &py,
        box_.mqtt_port,
        &[
            "--protocol",
            "5",
            "--qos",
            "0",
            "--topic",
            "sensors/Fridge 2",
            "--payload",
            r#"{"device":"fridge-2","values":{"temp":4.5},"quality":"good"}"#,
        ],
    );
    assert!(sensor
        .wait_for_line(|l| l.starts_with("DONE"), Duration::from_secs(20))
        .is_some());
    let records = box_.wait_records("sensors.fridge_2", Duration::from_secs(10), |r| {
        !r.is_empty()
    });
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["key"], "fridge-2");
    assert_eq!(records[0]["headers"]["mqtt-topic"], "sensors/Fridge 2");
}

#[test]
fn acked_device_messages_survive_kill_nine_through_the_embedded_broker() {
    let Some(py) = python::python("mqtt_embedded") else {
        return;
    };
    let mut rng = Rng::from_env_or_clock("acked_device_messages_survive_kill_nine");
    let dir = tempfile::tempdir().unwrap();
    let mut box_ = Outpost::start(&dir.path().join("data"), None, free_port(), free_port());
    let total = 3000u64;
    let publisher = publisher(
        &py,
        box_.mqtt_port,
        &[
            "--client-id",
            "till-kill",
            "--clean-session",
            "0",
            "--topic",
            "pos/payments",
            "--payload",
            &events::payment("p-{i}", "c-{i}").to_string(),
            "--count",
            &total.to_string(),
            "--rate",
            "600",
            "--timeout",
            "120",
        ],
    );
    let mut kills = 0;
    let started = Instant::now();
    while kills < 4 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(rng.range(300, 1200)));
        let before = acked(&publisher).len();
        box_.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
        box_.restart();
        eprintln!("kill {kills}: {before} messages were acknowledged before it");
    }
    assert!(
        publisher
            .wait_for_line(
                |l| l.starts_with("DONE") || l.starts_with("TIMEOUT"),
                Duration::from_secs(150)
            )
            .is_some_and(|l| l.starts_with("DONE")),
        "the device did not get every message acknowledged: {:?}",
        publisher.lines().last()
    );
    let acked = acked(&publisher);
    assert_eq!(acked.len() as u64, total);

    let stored: BTreeSet<u64> = box_
        .records("pos.payments")
        .iter()
        .map(|r| {
            r["value"]["payment_id"].as_str().unwrap()[2..]
                .parse()
                .unwrap()
        })
        .collect();
    let lost: Vec<&u64> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages are not in the log after {kills} kills, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(kills >= 3, "only {kills} kills happened");
}

#[test]
fn a_full_log_holds_device_acks_until_it_has_room_again() {
    let Some(py) = python::python("mqtt_embedded") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 256 KiB for everything, filled with `fraud.alerts` — a critical topic, which eviction by
    // priority never touches — cut into 4 KiB segments that expire 6 s after they were
    // written, so the log is full for a few seconds and then has room again.
    let box_ = start_with_config(
        dir.path(),
        r#"
[log]
max_bytes = 262_144
retention_check_ms = 250
[log.topics."fraud.alerts"]
segment_bytes = 4096
retention_ms = 6000
[plugins]
enabled = false
[mqtt]
sinks = []
"#,
    );
    let filled_at = Instant::now();
    // Big batches first, then single small records, until even the smallest alert is refused.
    for (records, pad) in [(50, 1000), (1, 1000), (1, 0)] {
        let value = events::padded_alert(pad);
        let body =
            json!({"records": (0..records).map(|_| json!({"value": value})).collect::<Vec<_>>()})
                .to_string();
        let mut full = false;
        for _ in 0..500 {
            let code = peers::http_post(
                box_.http_port,
                "/topics/fraud.alerts",
                "application/vnd.kafka.json.v2+json",
                &body,
            );
            if code == 507 {
                full = true;
                break;
            }
            assert_eq!(code, 200);
        }
        assert!(
            full,
            "the log never refused an append of {records} alerts padded with {pad} bytes"
        );
    }

    let device = publisher(
        &py,
        box_.mqtt_port,
        &[
            "--topic",
            "pos/payments",
            "--payload",
            &payment("held", "t-1"),
            "--timeout",
            "30",
        ],
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        filled_at.elapsed() < Duration::from_secs(5),
        "the machine is too slow for this test's timing"
    );
    assert!(
        acked(&device).is_empty(),
        "acknowledged while the log was full"
    );
    let listener = wait_until(
        Duration::from_secs(5),
        || box_.status("sources", "mqtt:listener").unwrap(),
        |l| l["link"]["state"] == "backpressured",
    )
    .unwrap_or_else(|l| l);
    assert_eq!(listener["link"]["state"], "backpressured", "{listener}");
    assert!(box_.records("pos.payments").is_empty());

    // Retention frees the fraud.alerts segments; the held message is stored, then acknowledged.
    assert!(
        device
            .wait_for_line(|l| l.starts_with("DONE 1"), Duration::from_secs(30))
            .is_some(),
        "not acknowledged after the log had room: {:?}",
        device.lines()
    );
    let records = box_.records("pos.payments");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"]["payment_id"], "p-held");
    assert!(eventually(Duration::from_secs(5), || {
        box_.status("sources", "mqtt:listener").unwrap()["link"]["state"] == "connected"
    }));
}

#[test]
fn a_device_that_vanishes_leaves_its_last_will_in_the_log_and_one_that_says_goodbye_does_not() {
    let Some(py) = python::python("mqtt_embedded") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start_with_status_route(dir.path());
    let watchers = subscriber(&py, box_.mqtt_port, "devices/status", "311", 1);
    let will = |id: &str| json!({"device": id, "state": "offline"}).to_string();

    // till-4 says goodbye with a DISCONNECT: its will is discarded.
    let polite_will = will("till-4");
    let polite = publisher(
        &py,
        box_.mqtt_port,
        &[
            "--client-id",
            "till-4",
            "--topic",
            "pos/payments",
            "--payload",
            &payment("4", "t-4"),
            "--will-topic",
            "devices/status",
            "--will-payload",
            &polite_will,
        ],
    );
    assert!(polite
        .wait_for_line(|l| l.starts_with("DONE 1"), Duration::from_secs(30))
        .is_some());
    // till-3 keeps publishing (one message every 0.5 s for hours) until its process is
    // killed: no DISCONNECT, so the will fires.
    let vanishing_will = will("till-3");
    let mut vanishing = publisher(
        &py,
        box_.mqtt_port,
        &[
            "--client-id",
            "till-3",
            "--topic",
            "pos/payments",
            "--payload",
            &payment("3", "t-3"),
            "--count",
            "100000",
            "--rate",
            "2",
            "--will-topic",
            "devices/status",
            "--will-payload",
            &vanishing_will,
        ],
    );
    assert!(vanishing
        .wait_for_line(|l| l.starts_with("ACK "), Duration::from_secs(30))
        .is_some());
    vanishing.kill();

    let line = watchers
        .wait_for_line(|l| l.starts_with("MSG "), Duration::from_secs(30))
        .expect("the broker did not publish till-3's will");
    assert!(line.contains("till-3"), "{line}");
    let records = box_.wait_records("devices.status", Duration::from_secs(10), |r| !r.is_empty());
    assert_eq!(
        records.len(),
        1,
        "only till-3's will is stored: {records:?}"
    );
    let r = &records[0];
    assert_eq!(r["value"]["device"], "till-3");
    assert_eq!(r["value"]["state"], "offline");
    assert_eq!(r["headers"]["mqtt-will"], "true");
    assert_eq!(r["headers"]["mqtt-client-id"], "till-3");
    assert_eq!(r["headers"]["mqtt-topic"], "devices/status");
    // A second look later still finds one: polite's goodbye never turns into a will.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(box_.records("devices.status").len(), 1);
}

#[test]
fn an_mqtt5_will_waits_for_its_delay_and_a_device_that_resumes_its_session_in_time_cancels_it() {
    let Some(py) = python::python("mqtt_embedded") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start_with_status_route(dir.path());
    // An MQTT 5 till that keeps its session for a minute and asks for its will to wait
    // `delay` seconds; it publishes until it is killed.
    let till = |id: &str, n: &str, delay: &str| {
        let will = json!({"device": id, "state": "offline"}).to_string();
        publisher(
            &py,
            box_.mqtt_port,
            &[
                "--protocol",
                "5",
                "--client-id",
                id,
                "--clean-session",
                "0",
                "--session-expiry",
                "60",
                "--topic",
                "pos/payments",
                "--payload",
                &payment(n, id),
                "--count",
                "100000",
                "--rate",
                "2",
                "--will-topic",
                "devices/status",
                "--will-payload",
                &will,
                "--will-delay",
                delay,
            ],
        )
    };
    let acked = |p: &PythonPeer| {
        p.wait_for_line(|l| l.starts_with("ACK "), Duration::from_secs(30))
            .is_some()
    };
    // till-5 (will delay 8 s) loses its connection and comes back with its session at once;
    // till-6 (will delay 2 s) is gone for good.
    let mut t5 = till("till-5", "5", "8");
    let mut t6 = till("till-6", "6", "2");
    assert!(acked(&t5) && acked(&t6));
    let killed = Instant::now();
    t5.kill();
    t6.kill();
    let t5_again = till("till-5", "5", "8");
    assert!(acked(&t5_again));
    assert!(
        killed.elapsed() < Duration::from_secs(8),
        "till-5 took too long to come back for this test to mean anything"
    );

    // Nothing before the delay.
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(killed.elapsed()));
    assert!(box_.records("devices.status").is_empty());
    let records = box_.wait_records("devices.status", Duration::from_secs(15), |r| !r.is_empty());
    assert!(killed.elapsed() >= Duration::from_secs(2));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["value"]["device"], "till-6");
    assert_eq!(records[0]["headers"]["mqtt-will"], "true");
    // till-5's will would be due 8 s after the kill: it never comes, its device is back.
    std::thread::sleep(Duration::from_secs(9).saturating_sub(killed.elapsed()));
    let records = box_.records("devices.status");
    assert_eq!(
        records.len(),
        1,
        "only till-6's will is stored: {records:?}"
    );
    drop(t5_again);
}
