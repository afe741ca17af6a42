//! Plugin settings in the box config, against `outpost run`: `[plugins.<name>.config]` tunes a
//! bundled plugin without a new bundle, SIGHUP applies a change to the running plugin, a
//! setting the plugin refuses names the plugin and the key (at start the plugin fails
//! visibly; on reload it keeps its old settings), and `outpost plugin export` writes a bundled
//! plugin out for partners.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::events::payment;
use crate::common::peers::{http_produce, Outpost};
use crate::common::python::free_port;
use crate::common::wait::wait_until;

fn write_config(dir: &Path, fraud_settings: &str) -> std::path::PathBuf {
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!("[plugins.fraud-score.config]\n{fraud_settings}\n"),
    )
    .unwrap();
    config
}

fn produce(box_: &Outpost, topic: &str, value: Value) {
    let body = json!({ "records": [{ "key": value["card_id"], "value": value }] }).to_string();
    let answer = http_produce(box_.http_port, topic, &body);
    assert!(matches!(answer, Some((200, _))), "{answer:?}");
}

fn sighup(box_: &Outpost) {
    let pid = box_.pid().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on the child this test spawned; no memory involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Pays with the blocklisted card until a payment is alerted (the blocklist and the payments
/// are different topics, so the first payments may be scored before the blocklist is read);
/// the `threshold` of that alert.
fn threshold_of_next_alert(box_: &Outpost, tag: &str) -> u64 {
    let mut n = 0;
    let alert = wait_until(
        Duration::from_secs(60),
        || {
            n += 1;
            let id = format!("p-{tag}-{n}");
            produce(box_, "pos.payments", payment(&id, "card-stolen"));
            let alerts = box_.wait_records("fraud.alerts", Duration::from_secs(5), |records| {
                records
                    .iter()
                    .any(|r| r["value"]["payment_id"] == id.as_str())
            });
            alerts
                .into_iter()
                .find(|r| r["value"]["payment_id"] == id.as_str())
        },
        Option::is_some,
    )
    .expect("a payment with the blocklisted card is alerted")
    .unwrap();
    alert["value"]["threshold"].as_u64().unwrap()
}

fn fraud_score(box_: &Outpost) -> Value {
    box_.get("/plugins/fraud-score")
}

#[test]
fn an_operator_changes_the_fraud_threshold_in_the_box_config_and_sighup_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "alert_threshold = 80");
    let box_ = Outpost::start(
        &dir.path().join("data"),
        Some(&config),
        free_port(),
        free_port(),
    );
    assert_eq!(fraud_score(&box_)["config"]["alert_threshold"], 80);
    produce(
        &box_,
        "ref.blocklist",
        json!({"card_id": "card-stolen", "action": "add", "reason": "reported stolen"}),
    );
    assert_eq!(threshold_of_next_alert(&box_, "a"), 80);

    write_config(dir.path(), "alert_threshold = 90");
    sighup(&box_);
    let reloaded = wait_until(
        Duration::from_secs(30),
        || fraud_score(&box_),
        |p| p["config"]["alert_threshold"] == 90 && p["state"] == "running",
    );
    assert!(reloaded.is_ok(), "{reloaded:?}");
    assert_eq!(threshold_of_next_alert(&box_, "b"), 90);

    // A typo: the plugin refuses it, keeps running on 90, and the log names plugin and key.
    write_config(dir.path(), "alert_treshold = 50");
    sighup(&box_);
    let refused = wait_until(
        Duration::from_secs(30),
        || box_.stderr_text(),
        |text| text.contains("refused its new settings"),
    )
    .expect("the refusal is logged");
    let line = refused
        .lines()
        .find(|l| l.contains("refused its new settings"))
        .unwrap();
    assert!(
        line.contains("fraud-score") && line.contains("alert_treshold"),
        "{line}"
    );
    let p = fraud_score(&box_);
    assert_eq!(p["state"], "running", "{p}");
    assert_eq!(p["config"]["alert_threshold"], 90, "{p}");
    assert_eq!(threshold_of_next_alert(&box_, "c"), 90);
}

#[test]
fn a_setting_the_plugin_does_not_know_fails_it_visibly_at_start_naming_plugin_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "alert_treshold = 50");
    let box_ = Outpost::start(
        &dir.path().join("data"),
        Some(&config),
        free_port(),
        free_port(),
    );
    let p = fraud_score(&box_);
    assert_eq!(p["state"], "failed", "{p}");
    let error = p["error"].as_str().unwrap();
    assert!(
        error.contains("fraud-score") && error.contains("alert_treshold"),
        "{error}"
    );
    // The other bundled plugins run.
    assert_eq!(box_.get("/plugins/recommend")["state"], "running");
}

#[test]
fn a_bundled_plugin_is_exported_as_the_folder_sign_takes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let out = dir.path().to_str().unwrap();
    let (code, text) = run(&["plugin", "export", "fraud-score", "--out", out]);
    assert_eq!(code, Some(0), "{text}");
    let folder = dir.path().join("fraud-score");
    let wasm = std::fs::read(folder.join("plugin.wasm")).unwrap();
    let bundled = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bundled/fraud-score/plugin.wasm"
    );
    assert_eq!(wasm, std::fs::read(bundled).unwrap());
    let manifest = std::fs::read_to_string(folder.join("plugin.toml")).unwrap();
    assert!(manifest.contains("alert_threshold"), "{manifest}");

    let (code, text) = run(&["plugin", "sign", "--unsigned", folder.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(dir.path().join("fraud-score.opb").exists(), "{text}");

    let (code, text) = run(&["plugin", "export", "no-such-plugin", "--out", out]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("fraud-score, recommend, sensor-watch"),
        "{text}"
    );
}
