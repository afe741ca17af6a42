//! Ready means ready, against `outpost run`: `/health` is liveness and answers as soon as the
//! API does; `/ready` (and `outpost status`) turn ready only once the log is open, the
//! listeners are bound and every enabled plugin is running or has failed visibly.

use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;

use crate::common::peers::{http_get, Outpost};
use crate::common::python::free_port;
use crate::common::wait::wait_until;

/// `outpost status` against the box, as text.
fn status_text(box_: &Outpost) -> String {
    box_.client(&["status"])
}

#[test]
fn ready_answers_200_only_once_every_bundled_plugin_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let box_ = Outpost::start_alive(&dir.path().join("data"), None, free_port(), free_port());
    // Alive at once; ready later. Each poll asks `/ready` first and then, only when it said
    // ready, which plugins run: a 200 before the bundled plugins run fails the test.
    let mut not_ready = Vec::new();
    let plugins = wait_until(
        Duration::from_secs(90),
        || match http_get(box_.http_port, "/ready") {
            Some((200, answer)) => {
                assert_eq!(answer["ready"], true, "{answer}");
                Some(box_.get("/plugins")["plugins"].clone())
            }
            Some((503, answer)) => {
                not_ready.push(answer);
                None
            }
            other => panic!("GET /ready: {other:?}"),
        },
        Option::is_some,
    )
    .expect("the box turns ready")
    .unwrap();
    let plugins = plugins.as_array().unwrap();
    let names: Vec<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    for bundled in ["fraud-score", "recommend", "sensor-watch"] {
        assert!(
            names.contains(&bundled),
            "{bundled} is not installed: {names:?}"
        );
    }
    for p in plugins {
        assert_eq!(p["state"], "running", "ready while a plugin is not: {p}");
    }
    for answer in &not_ready {
        let waiting: Vec<&str> = answer["waiting_for"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            waiting.iter().all(|w| ["start-up", "plugins"].contains(w)),
            "{answer}"
        );
    }
    eprintln!("/ready said 503 {} times first", not_ready.len());
    assert!(status_text(&box_).contains("ready:    yes\n"));
}

#[test]
fn a_box_whose_mqtt_port_is_taken_is_alive_but_not_ready_until_the_port_is_bound() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mqtt_port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, "[plugins]\nenabled = false\n").unwrap();
    let box_ = Outpost::start_alive(
        &dir.path().join("data"),
        Some(&config),
        free_port(),
        mqtt_port,
    );

    let answer = wait_until(
        Duration::from_secs(30),
        || http_get(box_.http_port, "/ready"),
        |a| matches!(a, Some((503, v)) if v["waiting_for"] == serde_json::json!(["mqtt listener"])),
    );
    assert!(answer.is_ok(), "{answer:?}");
    assert!(matches!(
        http_get(box_.http_port, "/health"),
        Some((200, _))
    ));
    assert!(
        status_text(&box_).contains("ready:    no (waiting for mqtt listener)\n"),
        "{}",
        status_text(&box_)
    );

    drop(taken);
    let answer = wait_until(
        Duration::from_secs(60),
        || http_get(box_.http_port, "/ready"),
        |a| matches!(a, Some((200, _))),
    );
    assert!(answer.is_ok(), "{answer:?}");
}
