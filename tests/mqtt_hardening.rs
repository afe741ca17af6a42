//! The device-facing MQTT listener under misuse, spoken to byte by byte over raw sockets so
//! every packet the box sends back is seen: a publish the box cannot store is refused (MQTT 5
//! DISCONNECT with a reason code, MQTT 3.1.1 a closed connection) and never acknowledged; the
//! embedded broker's own loopback ports let no local process in; a payload above
//! `max_payload_bytes` is refused to the byte; a device beyond the connection budget gets a
//! refusing CONNACK.

use std::io::Write;
use std::time::Duration;

use crate::common::peers::Outpost;
use crate::common::python::free_port;
use crate::common::raw_mqtt::{connect_packet, is_puback_for, RawDevice};
use crate::common::wait::wait_until;

fn start(dir: &std::path::Path, toml: &str) -> Outpost {
    let config = dir.join("outpost.toml");
    std::fs::write(&config, toml).unwrap();
    Outpost::start(&dir.join("data"), Some(&config), free_port(), free_port())
}

fn topic_names(box_: &Outpost) -> Vec<String> {
    box_.get("/topics")["topics"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn refused_count(box_: &Outpost) -> u64 {
    box_.status("sources", "mqtt:listener").unwrap()["details"]["refused"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_publish_whose_topic_cannot_become_a_log_topic_is_refused_and_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), "");
    let long_topic = format!("sensors/{}", "a".repeat(200));
    for level in [5u8, 4] {
        let mut device = RawDevice::connect(box_.mqtt_port, level, &format!("long-{level}"));
        device.publish_qos1("sensors/fridge-1", 1, br#"{"device":"fridge-1","t":3.5}"#);
        let ack = device.read_packet().unwrap();
        assert!(is_puback_for(&ack, 1), "MQTT {level}: {ack:02x?}");

        device.publish_qos1(&long_topic, 2, br#"{"device":"x"}"#);
        let after = device.read_until_closed();
        assert!(
            !after.iter().any(|p| is_puback_for(p, 2)),
            "MQTT {level}: the unstorable publish was acknowledged: {after:02x?}"
        );
        if level == 5 {
            let last = after.last().expect("MQTT 5: a DISCONNECT before the close");
            assert_eq!(last.0, 0xE0, "MQTT 5: {after:02x?}");
            assert_eq!(
                last.1[0], 0x90,
                "reason code Topic Name invalid: {last:02x?}"
            );
        } else {
            assert!(after.is_empty(), "MQTT 3.1.1: just a close: {after:02x?}");
        }
    }
    let refused = wait_until(
        Duration::from_secs(10),
        || refused_count(&box_),
        |n| *n >= 2,
    )
    .unwrap_or_else(|n| n);
    assert_eq!(refused, 2);
    assert!(
        !topic_names(&box_).iter().any(|t| t.contains("aaaa")),
        "{:?}",
        topic_names(&box_)
    );
}

#[test]
fn the_embedded_brokers_loopback_ports_let_no_local_process_in() {
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), "");
    let listener = box_.status("sources", "mqtt:listener").unwrap();
    for (key, level) in [("broker_v4", 4u8), ("broker_v5", 5)] {
        let addr: std::net::SocketAddr =
            listener["details"][key].as_str().unwrap().parse().unwrap();
        let mut stranger = RawDevice::open(addr.port(), level);
        stranger
            .stream
            .write_all(&connect_packet(level, "stranger"))
            .unwrap();
        let answer = stranger.read_packet();
        assert!(
            answer
                .as_ref()
                .is_none_or(|(t, b)| *t != 0x20 || b.get(1) != Some(&0)),
            "MQTT {level}: the broker behind the listener accepted a local client: {answer:02x?}"
        );
        // The stranger can publish nothing the broker would acknowledge.
        stranger.publish_qos1("pos/payments", 9, br#"{"card_id":"c"}"#);
        let rest = stranger.read_until_closed();
        assert!(!rest.iter().any(|p| is_puback_for(p, 9)), "{rest:02x?}");
    }
    // Devices on the listener are still let in (it logs in for them).
    RawDevice::connect(box_.mqtt_port, 4, "till-1");
    RawDevice::connect(box_.mqtt_port, 5, "till-2");
}

#[test]
fn a_payload_one_byte_above_max_payload_bytes_is_refused_and_one_at_the_limit_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), "[mqtt.broker]\nmax_payload_bytes = 1000\n");
    let at_limit = format!("{{\"device\":\"d\",\"pad\":\"{}\"}}", "x".repeat(1000 - 23));
    assert_eq!(at_limit.len(), 1000);
    let mut device = RawDevice::connect(box_.mqtt_port, 5, "big-5");
    device.publish_qos1("sensors/d", 1, at_limit.as_bytes());
    let ack = device.read_packet().unwrap();
    assert!(is_puback_for(&ack, 1), "{ack:02x?}");
    let over = format!("{at_limit} ");
    device.publish_qos1("sensors/d", 2, over.as_bytes());
    let after = device.read_until_closed();
    assert!(!after.iter().any(|p| is_puback_for(p, 2)), "{after:02x?}");
    assert_eq!(
        after.last().map(|p| (p.0, p.1[0])),
        Some((0xE0, 0x95)),
        "{after:02x?}"
    );

    let mut v4 = RawDevice::connect(box_.mqtt_port, 4, "big-4");
    v4.publish_qos1("sensors/d", 3, over.as_bytes());
    let after = v4.read_until_closed();
    assert!(
        after.is_empty(),
        "MQTT 3.1.1: closed without a PUBACK: {after:02x?}"
    );
    let stored = box_.records("sensors.d");
    assert_eq!(stored.len(), 1, "only the publish at the limit is stored");
}

#[test]
fn a_device_beyond_the_connection_budget_gets_a_refusing_connack() {
    let dir = tempfile::tempdir().unwrap();
    // Outpost's own sinks reach the broker through the listener too: none here, so the three
    // connections are the devices'.
    let box_ = start(
        dir.path(),
        "[mqtt]\nsinks = []\n[mqtt.broker]\nmax_connections = 3\n",
    );
    let mut held: Vec<RawDevice> = (0..3)
        .map(|i| RawDevice::connect(box_.mqtt_port, 4, &format!("held-{i}")))
        .collect();
    for level in [4u8, 5] {
        let mut extra = RawDevice::open(box_.mqtt_port, level);
        let (kind, body) = extra.send_connect(&format!("extra-{level}"));
        assert_eq!(kind, 0x20, "MQTT {level}: a CONNACK");
        let expected = if level == 5 { 0x97 } else { 0x03 };
        assert_eq!(body[1], expected, "MQTT {level}: refused with {body:02x?}");
        assert!(extra.read_until_closed().is_empty());
    }
    let listener = box_.status("sources", "mqtt:listener").unwrap();
    assert_eq!(listener["details"]["refused_connections"], 2, "{listener}");
    // One leaves: the next device gets in.
    drop(held.pop());
    let mut again = None;
    let _ = wait_until(
        Duration::from_secs(10),
        || {
            let mut d = RawDevice::open(box_.mqtt_port, 4);
            let (_, body) = d.send_connect("next");
            let ok = body[1] == 0;
            if ok {
                again = Some(d);
            }
            ok
        },
        |ok| *ok,
    );
    assert!(
        again.is_some(),
        "a device was let in once a connection closed"
    );
}
