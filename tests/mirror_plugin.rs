//! Cloud → edge mirroring end to end: a card blocklist produced to the cloud cluster (a real
//! tansu broker, written to by confluent-kafka) is mirrored by `outpost run` into
//! `ref.blocklist`, and the bundled fraud-score plugin uses it: a payment with that card is
//! scored as blocklisted, a payment with another card is not.

use std::time::Duration;

use crate::common::{kafka, peers, python};

use crate::common::events::payment;
use peers::{eventually, Outpost};
use python::free_port;
use serde_json::{json, Value};

/// The committed offset of `plugin` on `topic`, from `GET /plugins`.
fn plugin_offset(box_: &Outpost, plugin: &str, topic: &str) -> Option<u64> {
    let listing = box_.get("/plugins");
    let entry = listing["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == plugin)?
        .clone();
    fn find_offsets(v: &Value) -> Option<&Value> {
        match v {
            Value::Object(map) => map
                .get("offsets")
                .or_else(|| map.values().find_map(find_offsets)),
            _ => None,
        }
    }
    find_offsets(&entry)?
        .as_array()?
        .iter()
        .find(|pair| pair[0] == topic)
        .and_then(|pair| pair[1].as_u64())
}

#[test]
fn a_blocklist_mirrored_from_the_cloud_is_used_by_the_fraud_plugin() {
    let _broker = kafka::one_broker_at_a_time();
    let Some(python) = python::python("mirror_plugin") else {
        return;
    };
    let Some(tansu) = kafka::tansu_binary("mirror_plugin") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = kafka::Tansu::start(&tansu, &python, &dir.path().join("tansu"), free_port());
    broker.create_topic("blocklist", 1);
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[forward]
# Nothing is forwarded in this test; the cloud connection serves the mirror.
default_rules = false
[forward.kafka]
brokers = "{}"
[[mirror.topics]]
cloud = "blocklist"
local = "ref.blocklist"
"#,
            broker.brokers()
        ),
    )
    .unwrap();
    let box_ = Outpost::start(
        &dir.path().join("data"),
        Some(&config),
        free_port(),
        free_port(),
    );

    kafka::produce_values(
        &python,
        &broker.brokers(),
        "blocklist",
        7,
        1,
        Some(r#"{"card_id": "card-{i}", "action": "add", "reason": "reported stolen"}"#),
    );
    let mirrored = box_.wait_records("ref.blocklist", Duration::from_secs(60), |r| !r.is_empty());
    assert_eq!(mirrored.len(), 1, "{mirrored:?}");
    assert_eq!(mirrored[0]["value"]["card_id"], "card-7");
    assert!(
        eventually(Duration::from_secs(30), || plugin_offset(
            &box_,
            "fraud-score",
            "ref.blocklist"
        ) == Some(1)),
        "fraud-score did not consume ref.blocklist: {}",
        box_.get("/plugins")
    );

    let body = json!({"records": [
        {"key": "card-7", "value": payment("p-blocked", "card-7")},
        {"key": "card-8", "value": payment("p-clean", "card-8")},
    ]})
    .to_string();
    assert_eq!(
        peers::http_post(
            box_.http_port,
            "/topics/pos.payments",
            "application/vnd.kafka.json.v2+json",
            &body
        ),
        200
    );
    let scores = box_.wait_records("fraud.scores", Duration::from_secs(30), |r| r.len() >= 2);
    let reasons = |id: &str| -> Vec<String> {
        let score = scores
            .iter()
            .find(|r| r["value"]["payment_id"] == id)
            .unwrap_or_else(|| panic!("no score for {id}: {scores:?}"));
        score["value"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        reasons("p-blocked").contains(&"blocklisted".to_string()),
        "{scores:?}"
    );
    assert!(
        !reasons("p-clean").contains(&"blocklisted".to_string()),
        "{scores:?}"
    );
    let alerts = box_.wait_records("fraud.alerts", Duration::from_secs(30), |r| {
        r.iter().any(|a| a["value"]["payment_id"] == "p-blocked")
    });
    assert!(
        alerts
            .iter()
            .any(|a| a["value"]["payment_id"] == "p-blocked"),
        "{alerts:?}"
    );
}
