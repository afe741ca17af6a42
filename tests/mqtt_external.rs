//! MQTT sources against mosquitto (Debian) as an external broker, with paho-mqtt devices
//! (tests/peers/mqtt_client.py) publishing to it: mapping rules (topic, key, header), zero
//! loss across `kill -9` of Outpost (the broker redelivers what was not acknowledged), a full
//! log holding messages back instead of dropping them, the broker restarting under a
//! connected source, TLS with a private CA and client certificates, and username/password.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::wait::wait_until;
use crate::common::{events, peers, python};

use peers::{eventually, Certs, Mosquitto, Outpost, Rng};
use python::{free_port, PythonPeer};
use serde_json::Value;

/// The python with paho-mqtt, mosquitto and openssl; `None` (the test skips) when a peer is
/// missing and the harness does not require them.
fn test_peers() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let py = python::python("mqtt_external")?;
    let (mosquitto, openssl) = peers::broker_tools("mqtt_external")?;
    Some((py, mosquitto, openssl))
}

/// Writes a config with one source (`store`) for the broker on `port`, no embedded broker, no
/// sinks and no plugins.
fn config(dir: &Path, host: &str, port: u16, extra_source_keys: &str) -> PathBuf {
    config_with(dir, host, port, extra_source_keys, "")
}

/// [`config`] with more TOML tables in front.
fn config_with(dir: &Path, host: &str, port: u16, extra_source_keys: &str, head: &str) -> PathBuf {
    let path = dir.join("outpost.toml");
    std::fs::write(
        &path,
        format!(
            r#"
{head}

[plugins]
enabled = false

[mqtt]
sinks = []

[[mqtt.sources]]
name = "store"
host = "{host}"
port = {port}
client_id = "outpost-test"
retry_initial_ms = 100
retry_max_ms = 500
{extra_source_keys}
filters = [
  {{ filter = "pos/payments", qos = 1, key = {{ json_pointer = "/card_id" }} }},
  {{ filter = "site/+/fridge/#", qos = 1, topic = "sensors.{{1}}", key = {{ segment = 3 }} }},
  {{ filter = "loyalty/#", qos = 0 }},
  {{ filter = "orders/#", qos = 2, key = {{ json_pointer = "/order_id" }} }},
]

[mqtt.broker]
enabled = false
"#
        ),
    )
    .unwrap();
    path
}

fn publish(py: &PathBuf, port: u16, args: &[&str]) -> PythonPeer {
    let port = port.to_string();
    let mut all = vec!["publish", "--port", &port];
    all.extend_from_slice(args);
    PythonPeer::start(py, "mqtt_client.py", &all, "CONNECTED")
}

fn done(peer: &PythonPeer, timeout: Duration) -> bool {
    peer.wait_for_line(
        |l| l.starts_with("DONE") || l.starts_with("TIMEOUT"),
        timeout,
    )
    .is_some_and(|l| l.starts_with("DONE"))
}

/// `outpost run` with config file `cfg`, its data under `dir`, on fresh ports.
fn start_box(dir: &Path, cfg: &Path) -> Outpost {
    Outpost::start(&dir.join("data"), Some(cfg), free_port(), free_port())
}

fn wait_connected(box_: &Outpost) {
    assert!(
        eventually(Duration::from_secs(30), || {
            box_.status("sources", "mqtt:store")
                .is_some_and(|s| s["link"]["state"] == "connected")
        }),
        "the source did not connect: {:?}",
        box_.status("sources", "mqtt:store")
    );
}

/// A device publishes one payment keyed `card` to `pos/payments` (`device_args` set up its
/// connection: TLS files, a login) and `box_` stores exactly that one.
fn one_payment_is_stored(
    py: &PathBuf,
    port: u16,
    box_: &Outpost,
    device_args: &[&str],
    card: &str,
) {
    let payload = events::payment(&format!("p-{card}"), card).to_string();
    let mut args = device_args.to_vec();
    args.extend(["--topic", "pos/payments", "--payload", &payload]);
    let p = publish(py, port, &args);
    assert!(done(&p, Duration::from_secs(30)));
    let records = box_.wait_records("pos.payments", Duration::from_secs(20), |r| !r.is_empty());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["key"], card);
}

/// A box whose source has `source_keys` is refused by the broker: its status shows `retrying`
/// with an error that says `why`.
fn a_box_is_refused(host: &str, port: u16, source_keys: &str, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), host, port, source_keys);
    let refused = start_box(dir.path(), &cfg);
    assert!(
        eventually(Duration::from_secs(20), || {
            refused.status("sources", "mqtt:store").is_some_and(|s| {
                s["link"]["state"] == "retrying"
                    && s["link"]["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains(why))
            })
        }),
        "{:?}",
        refused.status("sources", "mqtt:store")
    );
}

#[test]
fn messages_of_every_qos_map_to_log_topics_with_keys_and_the_mqtt_topic_header() {
    let Some((py, mosquitto, _)) = test_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&mosquitto, dir.path(), free_port(), None);
    let cfg = config(dir.path(), "127.0.0.1", broker.port, "");
    let box_ = start_box(dir.path(), &cfg);
    wait_connected(&box_);

    let p = publish(
        &py,
        broker.port,
        &[
            "--topic",
            "pos/payments",
            "--payload",
            &events::payment("p-{i}", "card-{i}").to_string(),
            "--count",
            "3",
        ],
    );
    assert!(done(&p, Duration::from_secs(30)));
    let f = publish(
        &py,
        broker.port,
        &["--topic", "site/Store-7/fridge/door", "--payload", "21.5"],
    );
    assert!(done(&f, Duration::from_secs(30)));
    let l = publish(
        &py,
        broker.port,
        &[
            "--qos",
            "0",
            "--topic",
            "loyalty/scans",
            "--payload",
            r#"{"ts_ms":1700000000000,"store_id":"store-0001","device_id":"kiosk-1","loyalty_id":"L-1"}"#,
        ],
    );
    assert!(done(&l, Duration::from_secs(30)));
    let o = publish(
        &py,
        broker.port,
        &[
            "--qos",
            "2",
            "--topic",
            "orders/new",
            "--payload",
            r#"{"order_id":"o-{i}"}"#,
            "--count",
            "3",
        ],
    );
    assert!(done(&o, Duration::from_secs(30)));

    let payments = box_.wait_records("pos.payments", Duration::from_secs(20), |r| r.len() >= 3);
    let keys: Vec<&str> = payments
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["card-0", "card-1", "card-2"]);
    assert!(payments
        .iter()
        .all(|r| r["headers"]["mqtt-topic"] == "pos/payments"));

    let fridge = box_.wait_records("sensors.store-7", Duration::from_secs(20), |r| {
        !r.is_empty()
    });
    assert_eq!(fridge.len(), 1, "{fridge:?}");
    assert_eq!(fridge[0]["key"], "door");
    assert_eq!(fridge[0]["value"], 21.5);
    assert_eq!(
        fridge[0]["headers"]["mqtt-topic"],
        "site/Store-7/fridge/door"
    );

    let loyalty = box_.wait_records("loyalty.scans", Duration::from_secs(20), |r| !r.is_empty());
    assert_eq!(loyalty.len(), 1);
    assert!(loyalty[0]["key"].is_null());

    // QoS 2 end to end (device → mosquitto → Outpost): each message stored exactly once.
    let orders = box_.wait_records("orders.new", Duration::from_secs(20), |r| r.len() >= 3);
    let keys: Vec<&str> = orders.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["o-0", "o-1", "o-2"], "{orders:?}");

    // Counted after the append that made the last record readable: wait for the count.
    let source = wait_until(
        Duration::from_secs(20),
        || box_.status("sources", "mqtt:store").unwrap(),
        |s| s["records_stored"].as_u64() >= Some(8),
    )
    .unwrap_or_else(|s| s);
    assert_eq!(source["records_stored"], 8, "{source}");
    assert_eq!(source["kind"], "mqtt");
}

#[test]
fn qos1_messages_are_redelivered_after_kill_nine_of_outpost_and_none_is_lost() {
    let Some((py, mosquitto, _)) = test_peers() else {
        return;
    };
    let mut rng = Rng::from_env_or_clock("qos1_messages_are_redelivered_after_kill_nine");
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&mosquitto, dir.path(), free_port(), None);
    let cfg = config(dir.path(), "127.0.0.1", broker.port, "");
    let mut box_ = start_box(dir.path(), &cfg);
    wait_connected(&box_);

    let total = 3000u64;
    let device = publish(
        &py,
        broker.port,
        &[
            "--topic",
            "pos/payments",
            "--payload",
            &events::payment("p-{i}", "c-{i}").to_string(),
            "--count",
            &total.to_string(),
            "--rate",
            "800",
            "--timeout",
            "60",
        ],
    );
    let started = Instant::now();
    let mut kills = 0;
    while kills < 4 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(rng.range(200, 1000)));
        box_.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.range(0, 500)));
        box_.restart();
    }
    assert!(
        done(&device, Duration::from_secs(90)),
        "mosquitto did not take every message"
    );
    let expected: BTreeSet<u64> = (0..total).collect();
    let records = box_.wait_records("pos.payments", Duration::from_secs(60), |r| {
        r.len() as u64 >= total && ids(r) == expected
    });
    let stored = ids(&records);
    let missing: Vec<&u64> = expected.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {total} messages missing after {kills} kills of Outpost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "{total} messages, {kills} kills: {} records stored ({} redelivered duplicates)",
        records.len(),
        records.len() as u64 - total
    );
}

fn ids(records: &[Value]) -> BTreeSet<u64> {
    records
        .iter()
        .map(|r| {
            r["value"]["payment_id"].as_str().unwrap()[2..]
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_broker_restart_shows_retrying_then_connected_and_delivery_resumes() {
    let Some((py, mosquitto, _)) = test_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&mosquitto, dir.path(), free_port(), None);
    let cfg = config(dir.path(), "127.0.0.1", broker.port, "");
    let box_ = start_box(dir.path(), &cfg);
    wait_connected(&box_);
    let before = publish(
        &py,
        broker.port,
        &[
            "--topic",
            "pos/payments",
            "--payload",
            &events::payment("p-before", "before").to_string(),
        ],
    );
    assert!(done(&before, Duration::from_secs(20)));
    box_.wait_records("pos.payments", Duration::from_secs(20), |r| r.len() == 1);

    broker.kill();
    let mut seen_retrying = None;
    assert!(eventually(Duration::from_secs(30), || {
        let s = box_.status("sources", "mqtt:store").unwrap();
        let retrying = s["link"]["state"] == "retrying";
        if retrying {
            seen_retrying = Some(s);
        }
        retrying
    }));
    let s = seen_retrying.unwrap();
    assert!(s["link"]["attempts"].as_u64().unwrap() >= 1, "{s}");
    assert!(!s["link"]["last_error"].as_str().unwrap().is_empty(), "{s}");
    // `outpost status` shows it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args([
            "status",
            "--server",
            &format!("http://127.0.0.1:{}", box_.http_port),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mqtt:store (mqtt) retrying"), "{text}");

    std::thread::sleep(Duration::from_millis(500));
    broker.restart();
    wait_connected(&box_);
    // The gap is closed a moment after the source shows connected again.
    let s = wait_until(
        Duration::from_secs(20),
        || box_.status("sources", "mqtt:store").unwrap(),
        |s| s["gaps"].as_u64() >= Some(1) && s["last_gap"].is_string(),
    )
    .unwrap_or_else(|s| s);
    assert!(
        s["gaps"].as_u64().unwrap() >= 1,
        "the outage is not shown as a gap: {s}"
    );
    assert!(
        s["last_gap"].as_str().unwrap().contains("disconnected"),
        "{s}"
    );

    let after = publish(
        &py,
        broker.port,
        &[
            "--topic",
            "pos/payments",
            "--payload",
            &events::payment("p-after", "after").to_string(),
        ],
    );
    assert!(done(&after, Duration::from_secs(20)));
    let records = box_.wait_records("pos.payments", Duration::from_secs(20), |r| r.len() == 2);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["key"], "after");
}

#[test]
fn a_tls_source_with_a_client_certificate_receives_from_a_tls_broker() {
    let Some((py, mosquitto, openssl)) = test_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&openssl, dir.path());
    let broker = Mosquitto::start(&mosquitto, dir.path(), free_port(), Some(&certs));
    let tls = format!(
        "tls = {{ ca_file = {:?}, cert_file = {:?}, key_file = {:?} }}",
        certs.ca, certs.client_cert, certs.client_key
    );
    let cfg = config(dir.path(), "localhost", broker.port, &tls);
    let box_ = start_box(dir.path(), &cfg);
    wait_connected(&box_);

    let (ca, cert, key) = (
        certs.ca.to_str().unwrap(),
        certs.client_cert.to_str().unwrap(),
        certs.client_key.to_str().unwrap(),
    );
    let device = [
        "--host",
        "localhost",
        "--ca",
        ca,
        "--cert",
        cert,
        "--key",
        key,
    ];
    one_payment_is_stored(&py, broker.port, &box_, &device, "over-tls");

    // Without the client certificate the broker refuses Outpost: the status says why.
    let no_cert = format!("tls = {{ ca_file = {:?} }}", certs.ca);
    a_box_is_refused("localhost", broker.port, &no_cert, "CertificateRequired");
}

#[test]
fn a_source_with_username_and_password_receives_and_a_wrong_password_is_shown_as_retrying() {
    let Some((py, mosquitto, _)) = test_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker =
        Mosquitto::start_with_user(&mosquitto, dir.path(), free_port(), ("outpost", "s3cret"));
    let login = "username = \"outpost\"\npassword = \"s3cret\"";
    let cfg = config(dir.path(), "127.0.0.1", broker.port, login);
    let box_ = start_box(dir.path(), &cfg);
    wait_connected(&box_);
    let device = ["--username", "outpost", "--password", "s3cret"];
    one_payment_is_stored(&py, broker.port, &box_, &device, "with-login");

    let wrong = "username = \"outpost\"\npassword = \"guess\"";
    a_box_is_refused("127.0.0.1", broker.port, wrong, "NotAuthorized");
}

#[test]
fn a_full_log_holds_broker_messages_until_it_has_room_and_drops_none() {
    let Some((py, mosquitto, _)) = test_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&mosquitto, dir.path(), free_port(), None);
    // 256 KiB for everything, filled with `fraud.alerts` (critical: never evicted by priority),
    // whose segments expire 6 s after they were written.
    let head = r#"
[log]
max_bytes = 262_144
retention_check_ms = 250
[log.topics."fraud.alerts"]
segment_bytes = 4096
retention_ms = 6000
"#;
    let cfg = config_with(dir.path(), "127.0.0.1", broker.port, "", head);
    let box_ = start_box(dir.path(), &cfg);
    wait_connected(&box_);
    let filled_at = Instant::now();
    for (records, pad) in [(50, 1000), (1, 1000), (1, 0)] {
        let value = events::padded_alert(pad);
        let records: Vec<Value> = (0..records)
            .map(|_| serde_json::json!({ "value": value }))
            .collect();
        let body = serde_json::json!({ "records": records }).to_string();
        let full = (0..500).any(|_| {
            peers::http_post(
                box_.http_port,
                "/topics/fraud.alerts",
                "application/vnd.kafka.json.v2+json",
                &body,
            ) == 507
        });
        assert!(
            full,
            "the log never refused an append of alerts padded with {pad} bytes"
        );
    }

    let p = publish(
        &py,
        broker.port,
        &[
            "--topic",
            "pos/payments",
            "--payload",
            &events::payment("p-held", "held").to_string(),
        ],
    );
    assert!(done(&p, Duration::from_secs(20)));
    assert!(eventually(Duration::from_secs(3), || {
        box_.status("sources", "mqtt:store").unwrap()["link"]["state"] == "backpressured"
    }));
    assert!(
        filled_at.elapsed() < Duration::from_secs(5),
        "too slow for this test's timing"
    );
    assert!(box_.records("pos.payments").is_empty());

    // Retention makes room; the held message is stored (it was neither acknowledged nor dropped).
    let records = box_.wait_records("pos.payments", Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["key"], "held");
    assert!(eventually(Duration::from_secs(5), || {
        box_.status("sources", "mqtt:store").unwrap()["link"]["state"] == "connected"
    }));
}
