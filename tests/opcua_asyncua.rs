//! Outpost's OPC-UA source against a real, independent OPC-UA server: asyncua (Python,
//! `tests/peers/opcua_server.py`), with `outpost run` as a child process reading a config file.
//!
//! The server changes five variables of different types at a known pattern (tick k: Counter =
//! k, Temperature = 20 + k/2, DoorOpen = k odd, Label = "step-k", ns=2;i=5001 = k % 1000). These
//! tests check that every change arrives with exact values and node ids (security None), that
//! Basic256Sha256 Sign and SignAndEncrypt with user name and password work (and a wrong
//! password shows as a retrying source, not as records), that a server absent at start, a
//! network cut and a server killed and restarted on its port all heal without restarting
//! Outpost, with the outages as gaps in status and never more than one session and one
//! subscription on the server, and that a clean shutdown closes the session.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::wait::wait_until;
use crate::common::{peers, python};

use peers::{eventually, Outpost};
use python::{free_port, PythonPeer};
use serde_json::Value;

/// The `[[opcua.servers.items]]` of the five variables; only Label gets a configured name.
const ITEMS: &str = r#"
[[opcua.servers.items]]
node_id = "ns=2;s=Counter"
[[opcua.servers.items]]
node_id = "ns=2;s=Temperature"
[[opcua.servers.items]]
node_id = "ns=2;s=DoorOpen"
[[opcua.servers.items]]
node_id = "ns=2;s=Label"
name = "label"
[[opcua.servers.items]]
node_id = "ns=2;i=5001"
"#;

fn server_section(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[opcua.servers]]\nname = \"{name}\"\nendpoint_url = \"opc.tcp://127.0.0.1:{port}/\"\n\
         publishing_interval_ms = 100\nreconnect_backoff_initial_ms = 200\n\
         reconnect_backoff_max_ms = 1000\nkeep_alive_interval_ms = 1000\n{extra}\n{ITEMS}\n"
    )
}

fn start_outpost(dir: &Path, config: &str) -> Outpost {
    let path = dir.join("outpost.toml");
    std::fs::write(&path, config).unwrap();
    Outpost::start(&dir.join("data"), Some(&path), free_port(), free_port())
}

/// The tick `k` a record stands for, checking that its value is exactly the server's value
/// at that tick; `None` for a node of no interest.
fn tick_of(record: &Value) -> Option<i64> {
    let v = &record["value"];
    let node = v["node_id"].as_str().unwrap();
    let value = &v["value"];
    let k = match node {
        "ns=2;s=Counter" => value.as_i64().unwrap(),
        "ns=2;s=Temperature" => {
            let t = value.as_f64().unwrap();
            let k = ((t - 20.0) * 2.0).round() as i64;
            assert_eq!(t, 20.0 + k as f64 * 0.5, "{record}");
            k
        }
        "ns=2;s=Label" => value
            .as_str()
            .unwrap()
            .strip_prefix("step-")
            .unwrap()
            .parse()
            .unwrap(),
        _ => return None,
    };
    Some(k)
}

/// The ticks seen for `node`, in record order.
fn ticks(records: &[Value], node: &str) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r["value"]["node_id"] == node)
        .filter_map(tick_of)
        .collect()
}

/// Asserts the ticks are consecutive (every change arrived, none twice).
fn assert_consecutive(ticks: &[i64], what: &str) {
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{what}: a change is missing or repeated: {ticks:?}"
        );
    }
}

/// The last `SESSIONS active=a created=c subscriptions=s` line of the peer.
fn sessions(peer: &PythonPeer) -> (u64, u64, u64) {
    let line = peer
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.starts_with("SESSIONS "))
        .expect("the peer reports its sessions");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("active"), field("created"), field("subscriptions"))
}

/// The body of `GET /metrics` (Prometheus text).
fn metrics_text(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn every_change_of_every_variable_arrives_with_exact_values_and_node_ids() {
    let Some(py) = python::python("every_change_of_every_variable_arrives") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let peer = PythonPeer::start(
        &py,
        "opcua_server.py",
        &["--port", &port.to_string(), "--period-ms", "150"],
        "LISTENING",
    );
    // A node the server does not have is refused by the server; the others still work.
    let config = server_section("plant", port, "")
        + "[[opcua.servers.items]]\nnode_id = \"ns=2;s=Missing\"\n";
    let mut box_ = start_outpost(dir.path(), &config);
    let records = box_.wait_records("opcua.plant", Duration::from_secs(60), |r| {
        ticks(r, "ns=2;s=Counter").len() >= 30
    });
    let counter = ticks(&records, "ns=2;s=Counter");
    assert!(
        counter.len() >= 30,
        "only {} Counter changes: {records:?}",
        counter.len()
    );
    assert_consecutive(&counter, "Counter");
    for node in ["ns=2;s=Temperature", "ns=2;s=Label"] {
        let t = ticks(&records, node);
        assert!(t.len() >= 25, "{node}: {t:?}");
        assert_consecutive(&t, node);
    }
    // Booleans and the numeric node: each record's value matches the tick of the Counter
    // change stored in the same publish response, so check them against their own sequence.
    let doors: Vec<bool> = records
        .iter()
        .filter(|r| r["value"]["node_id"] == "ns=2;s=DoorOpen")
        .map(|r| r["value"]["value"].as_bool().unwrap())
        .collect();
    assert!(doors.len() >= 25, "{doors:?}");
    for pair in doors.windows(2) {
        assert_ne!(pair[0], pair[1], "DoorOpen flips every tick: {doors:?}");
    }
    let numeric: Vec<i64> = records
        .iter()
        .filter(|r| r["value"]["node_id"] == "ns=2;i=5001")
        .map(|r| r["value"]["value"].as_i64().unwrap())
        .collect();
    assert!(numeric.len() >= 25, "{numeric:?}");
    assert_consecutive(&numeric, "ns=2;i=5001");
    let peer_last_tick: i64 = peer
        .lines()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("TICK ").map(|k| k.parse().unwrap()))
        .unwrap();
    assert!(*counter.last().unwrap() <= peer_last_tick);

    // The record's fields.
    let names: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["value"]["node_id"].as_str().unwrap().to_string(),
                r["value"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (node, name) in [
        ("ns=2;s=Counter", "Counter"),
        ("ns=2;s=Temperature", "Temperature"),
        ("ns=2;s=DoorOpen", "DoorOpen"),
        ("ns=2;s=Label", "label"),
        ("ns=2;i=5001", "Numeric"),
    ] {
        assert!(
            names.iter().all(|(n, m)| n != node || m == name),
            "{node} should be named {name}: {names:?}"
        );
    }
    for r in &records {
        assert_eq!(r["key"], "plant");
        let v = &r["value"];
        assert_eq!(v["server"], "plant");
        assert_eq!(v["status"], "good");
        let ts = v["ts_ms"].as_u64().unwrap();
        let source = v["source_ts_ms"].as_u64().unwrap();
        let server = v["server_ts_ms"].as_u64().unwrap();
        assert!(source <= ts + 1000 && server <= ts + 1000, "{r}");
    }
    // The status counts a batch after the append that made it readable: wait for the count.
    let status = wait_until(
        Duration::from_secs(20),
        || box_.status("sources", "opcua:plant").unwrap(),
        |s| s["records_stored"].as_u64() >= Some(records.len() as u64),
    )
    .unwrap_or_else(|s| s);
    assert_eq!(status["link"]["state"], "connected", "{status}");
    assert!(
        status["records_stored"].as_u64().unwrap() >= records.len() as u64,
        "{status}"
    );
    assert_eq!(status["details"]["sessions_created"], 1, "{status}");
    let refused = status["details"]["refused_items"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{status}");
    let refused = refused[0].as_str().unwrap();
    assert!(
        refused.contains("ns=2;s=Missing") && refused.contains("BadNodeIdUnknown"),
        "{refused}"
    );
    assert!(records
        .iter()
        .all(|r| r["value"]["node_id"] != "ns=2;s=Missing"));
    let (active, _, subscriptions) = sessions(&peer);
    assert_eq!(
        (active, subscriptions),
        (1, 1),
        "one session with one subscription"
    );

    // The counter is bumped after the append that made the records readable: wait for it.
    let stored_counter = |metrics: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with("outpost_opcua_records_stored_total{server=\"plant\"}"))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    let metrics = wait_until(
        Duration::from_secs(20),
        || metrics_text(box_.http_port),
        |m| stored_counter(m).is_some_and(|n| n >= records.len() as f64),
    )
    .unwrap_or_else(|m| m);
    let stored = stored_counter(&metrics)
        .unwrap_or_else(|| panic!("no OPC-UA record counter in /metrics:\n{metrics}"));
    assert!(stored >= records.len() as f64, "{stored}");
    assert!(
        metrics.contains("outpost_opcua_connected{server=\"plant\"} 1"),
        "{metrics}"
    );

    // A clean shutdown closes the session and deletes its subscription on the server.
    assert_eq!(box_.terminate(), Some(0));
    assert!(
        eventually(Duration::from_secs(5), || {
            let (active, _, subscriptions) = sessions(&peer);
            active == 0 && subscriptions == 0
        }),
        "the session is closed at shutdown: {:?}",
        sessions(&peer)
    );
}

#[test]
fn basic256sha256_with_user_and_password_works_and_a_wrong_password_is_shown() {
    let Some(py) = python::python("basic256sha256_with_user_and_password") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server_pki = dir.path().join("server-pki");
    let peer = PythonPeer::start(
        &py,
        "opcua_server.py",
        &[
            "--port",
            &port.to_string(),
            "--security",
            "basic256sha256",
            "--cert-dir",
            server_pki.to_str().unwrap(),
            "--user",
            "operator:s3cret",
            "--period-ms",
            "150",
        ],
        "LISTENING",
    );
    let client_pki = dir.path().join("client-pki");
    let secure = |mode: &str, password: &str| {
        format!(
            "security_policy = \"basic256sha256\"\nsecurity_mode = \"{mode}\"\n\
             username = \"operator\"\npassword = \"{password}\"\npki_dir = \"{}\"\n\
             trust_server_certificate = true",
            client_pki.display()
        )
    };
    let config = [
        server_section("encrypted", port, &secure("sign_and_encrypt", "s3cret")),
        server_section("signed", port, &secure("sign", "s3cret")),
        server_section("wrong-password", port, &secure("sign_and_encrypt", "guess")),
    ]
    .join("\n");
    let box_ = start_outpost(dir.path(), &config);
    for name in ["encrypted", "signed"] {
        let records = box_.wait_records(&format!("opcua.{name}"), Duration::from_secs(60), |r| {
            ticks(r, "ns=2;s=Counter").len() >= 15
        });
        let counter = ticks(&records, "ns=2;s=Counter");
        assert!(counter.len() >= 15, "{name}: {records:?}");
        assert_consecutive(&counter, name);
        assert_consecutive(&ticks(&records, "ns=2;s=Label"), name);
        let status = box_.status("sources", &format!("opcua:{name}")).unwrap();
        assert_eq!(status["link"]["state"], "connected", "{status}");
    }
    assert!(
        client_pki.join("own/cert.der").is_file()
            && client_pki.join("private/private.pem").is_file(),
        "the client certificate is created in pki_dir"
    );
    // Its first refusal may come after the other two servers delivered: wait for it.
    let refused = wait_until(
        Duration::from_secs(30),
        || box_.status("sources", "opcua:wrong-password").unwrap(),
        |s| s["link"]["state"] == "retrying" && s["link"]["last_error"].is_string(),
    )
    .unwrap_or_else(|s| s);
    assert_eq!(refused["link"]["state"], "retrying", "{refused}");
    let error = refused["link"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("BadUserAccessDenied") || error.contains("BadIdentityToken"),
        "{error}"
    );
    assert!(box_.records("opcua.wrong-password").is_empty());
    let (active, _, subscriptions) = sessions(&peer);
    assert_eq!(
        (active, subscriptions),
        (2, 2),
        "only the two good sessions are active"
    );
}

#[test]
fn records_resume_after_a_network_cut_and_a_server_restart_without_piling_up_sessions() {
    let Some(py) = python::python("records_resume_after_a_server_restart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = |start: &str, drop_at: &str| {
        vec![
            "--port".to_string(),
            port.to_string(),
            "--period-ms".into(),
            "150".into(),
            "--start".into(),
            start.into(),
            "--drop-at".into(),
            drop_at.into(),
        ]
    };
    let first_args = args("1", "20");
    let first_refs: Vec<&str> = first_args.iter().map(String::as_str).collect();
    // Outpost starts before the server: the source retries with an open gap.
    let box_ = start_outpost(dir.path(), &server_section("plant", port, ""));
    assert!(
        box_.status("sources", "opcua:plant").is_some(),
        "a configured server is in the status from the API's first answer"
    );
    assert!(
        eventually(Duration::from_secs(15), || {
            box_.status("sources", "opcua:plant").is_some_and(|status| {
                status["link"]["state"] == "retrying" && !status["details"]["open_gap"].is_null()
            })
        }),
        "{:?}",
        box_.status("sources", "opcua:plant")
    );
    let mut first = PythonPeer::start(&py, "opcua_server.py", &first_refs, "LISTENING");

    // A network cut (the server drops every connection at tick 20, stays up): records go on.
    let records = box_.wait_records("opcua.plant", Duration::from_secs(60), |r| {
        ticks(r, "ns=2;s=Counter").last().is_some_and(|k| *k >= 35)
    });
    assert!(first
        .wait_for_line(|l| l.starts_with("DROPPED"), Duration::from_secs(10))
        .is_some());
    let counter = ticks(&records, "ns=2;s=Counter");
    assert!(counter.last().is_some_and(|k| *k >= 35), "{counter:?}");
    assert!(
        counter.iter().any(|k| *k > 22),
        "records resume after the cut"
    );
    let (active, created, subscriptions) = sessions(&first);
    assert_eq!(active, 1, "one session after the cut (created {created})");
    assert_eq!(subscriptions, 1, "one subscription after the cut");
    assert!(
        created <= 2,
        "at most one new session for the cut, created {created}"
    );
    let status = box_.status("sources", "opcua:plant").unwrap();
    assert!(
        status["gaps"].as_u64().unwrap() >= 1,
        "the cut is a gap: {status}"
    );

    // The server is killed and started again on its port, counting from 1000.
    first.kill();
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || {
            box_.status("sources", "opcua:plant")
                .is_some_and(|s| s["link"]["state"] == "retrying")
        }),
        "the source shows the outage"
    );
    std::thread::sleep(Duration::from_secs(2));
    let second_args = args("1000", "0");
    let second_refs: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let second = PythonPeer::start(&py, "opcua_server.py", &second_refs, "LISTENING");
    let restarted = Instant::now();
    let healed = std::cell::Cell::new(None);
    let records = box_.wait_records("opcua.plant", Duration::from_secs(60), |r| {
        let after: Vec<i64> = ticks(r, "ns=2;s=Counter")
            .into_iter()
            .filter(|k| *k >= 1000)
            .collect();
        if healed.get().is_none() && !after.is_empty() {
            healed.set(Some(restarted.elapsed()));
        }
        after.len() >= 15
    });
    let after: Vec<i64> = ticks(&records, "ns=2;s=Counter")
        .into_iter()
        .filter(|k| *k >= 1000)
        .collect();
    assert!(
        after.len() >= 15,
        "records resume after the restart: {after:?}"
    );
    assert_consecutive(&after, "Counter after the restart");
    let healed = healed.get().unwrap();
    eprintln!(
        "MEASURED heal after restart: first record {} ms after the server listened again \
         (server down {} ms)",
        healed.as_millis(),
        (restarted - killed).as_millis()
    );
    let status = wait_until(
        Duration::from_secs(20),
        || box_.status("sources", "opcua:plant").unwrap(),
        |s| s["link"]["state"] == "connected" && s["gaps"].as_u64() >= Some(2),
    )
    .unwrap_or_else(|s| s);
    assert_eq!(status["link"]["state"], "connected", "{status}");
    assert!(status["gaps"].as_u64().unwrap() >= 2, "{status}");
    let last_gap = status["last_gap"].as_str().unwrap();
    assert!(
        last_gap.contains("connection lost") || last_gap.contains("cannot connect"),
        "{last_gap}"
    );
    let gaps = status["details"]["recent_gaps"].as_array().unwrap();
    for gap in gaps {
        eprintln!(
            "MEASURED gap of {} ms: {}",
            gap["to_ms"].as_u64().unwrap() - gap["from_ms"].as_u64().unwrap(),
            gap["reason"]
        );
    }
    let outage = gaps.last().unwrap();
    let lasted = outage["to_ms"].as_u64().unwrap() - outage["from_ms"].as_u64().unwrap();
    assert!(
        lasted >= 1500 && lasted <= killed.elapsed().as_millis() as u64 + 2000,
        "the gap spans the outage: {outage}"
    );
    // The restarted server holds exactly one session, created once.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sessions(&second),
        (1, 1, 1),
        "one session, created once, with one subscription on the restarted server"
    );
}
