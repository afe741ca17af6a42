//! Outpost's Modbus source against a real, independent Modbus server: pymodbus 3
//! (`tests/peers/modbus_server.py`), over TCP and over RTU on a pseudo terminal.
//!
//! The server holds a value of every type in every byte and word order, encoded by Python's
//! `struct`; these tests check that every one arrives exactly, that a poll reads adjacent
//! registers with one request per kind (the server logs each request), that busy answers are
//! retried, that an unmapped register makes a record `uncertain`, that `on_change` stores
//! only changes and heartbeats, and that a server killed and restarted mid-run is polled again
//! with the gap shown in status.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::python;

use outpost::ingest::modbus::{
    self, DeviceConfig, ModbusConfig, Order, Parity, PointConfig, RegisterKind, Transport,
    ValueType,
};
use outpost::kernel::{Link, Status, StatusBoard};
use outpost::log::{Log, LogConfig};
use python::{free_port, PythonPeer};
use serde_json::{json, Value};

/// (name, type, byte order, word order, address, expected value) of every holding register
/// value the server holds, as laid out by `modbus_server.py`.
fn holding_table() -> Vec<(&'static str, ValueType, Order, Order, u16, Value)> {
    use Order::{Big as B, Little as L};
    use ValueType::*;
    vec![
        ("u16_abcd", U16, B, B, 0, json!(65000)),
        ("i16_abcd", I16, B, B, 1, json!(-1234)),
        ("i16_badc", I16, L, B, 2, json!(-1234)),
        ("u32_abcd", U32, B, B, 3, json!(4_000_000_000u64)),
        ("u32_cdab", U32, B, L, 5, json!(4_000_000_000u64)),
        ("i32_badc", I32, L, B, 7, json!(-2_000_000_000i64)),
        ("i32_dcba", I32, L, L, 9, json!(-2_000_000_000i64)),
        (
            "u64_abcd",
            U64,
            B,
            B,
            11,
            json!(18_446_744_073_709_551_557u64),
        ),
        (
            "u64_dcba",
            U64,
            L,
            L,
            15,
            json!(18_446_744_073_709_551_557u64),
        ),
        ("i64_cdab", I64, B, L, 19, json!(-9_007_199_254_740_993i64)),
        ("i64_badc", I64, L, B, 23, json!(9_007_199_254_740_993i64)),
        ("f32_abcd", F32, B, B, 27, json!(21.7)),
        ("f32_cdab", F32, B, L, 29, json!(123.456)),
        ("f32_badc", F32, L, B, 31, json!(1e-7)),
        ("f32_dcba", F32, L, L, 33, json!(-273.15)),
        ("f64_abcd", F64, B, B, 35, json!(std::f64::consts::PI)),
        ("f64_cdab", F64, B, L, 39, json!(0.1)),
        ("f64_badc", F64, L, B, 43, json!(6.02214076e23)),
        ("f64_dcba", F64, L, L, 47, json!(-1.7976931348623157e308)),
    ]
}

/// Every point of the server's map.
fn all_points() -> Vec<PointConfig> {
    let mut points: Vec<PointConfig> = holding_table()
        .into_iter()
        .map(|(name, ty, byte_order, word_order, address, _)| {
            let mut p = PointConfig::new(name, RegisterKind::Holding, address, ty);
            p.byte_order = byte_order;
            p.word_order = word_order;
            p
        })
        .collect();
    let mut s = PointConfig::new("name_be", RegisterKind::Holding, 51, ValueType::String);
    s.length = Some(6);
    points.push(s);
    let mut s = PointConfig::new("name_le", RegisterKind::Holding, 57, ValueType::String);
    s.length = Some(4);
    s.byte_order = Order::Little;
    points.push(s);
    points.push(PointConfig::new(
        "flags",
        RegisterKind::Holding,
        61,
        ValueType::U16,
    ));
    for (name, bit) in [("flag_bit0", 0), ("flag_bit1", 1), ("flag_bit7", 7)] {
        let mut p = PointConfig::new(name, RegisterKind::Holding, 61, ValueType::Bool);
        p.bit = Some(bit);
        points.push(p);
    }
    let mut p = PointConfig::new("scaled", RegisterKind::Holding, 62, ValueType::I16);
    p.scale = 0.1;
    p.unit = Some("kWh".into());
    points.push(p);
    let mut p = PointConfig::new("scaled_offset", RegisterKind::Holding, 62, ValueType::I16);
    p.scale = 0.1;
    p.offset = -40.0;
    points.push(p);
    let mut p = PointConfig::new("temperature", RegisterKind::Input, 0, ValueType::F32);
    p.unit = Some("°C".into());
    points.push(p);
    points.push(PointConfig::new(
        "count",
        RegisterKind::Input,
        2,
        ValueType::U16,
    ));
    for i in 0..8 {
        let name: &'static str = Box::leak(format!("coil{i}").into_boxed_str());
        points.push(PointConfig::new(
            name,
            RegisterKind::Coil,
            i,
            ValueType::Bool,
        ));
    }
    for i in 0..4 {
        let name: &'static str = Box::leak(format!("input{i}").into_boxed_str());
        points.push(PointConfig::new(
            name,
            RegisterKind::DiscreteInput,
            i,
            ValueType::Bool,
        ));
    }
    points
}

fn expected_values() -> Value {
    let mut map = serde_json::Map::new();
    for (name, _, _, _, _, value) in holding_table() {
        map.insert(name.into(), value);
    }
    let rest = json!({
        "name_be": "FRIDGE-07", "name_le": "Zone B", "flags": 165,
        "flag_bit0": true, "flag_bit1": false, "flag_bit7": true,
        "scaled": 213.1, "scaled_offset": 173.1, "temperature": 4.25, "count": 7,
        "coil0": true, "coil1": false, "coil2": true, "coil3": true,
        "coil4": false, "coil5": false, "coil6": false, "coil7": true,
        "input0": false, "input1": true, "input2": true, "input3": false,
    });
    for (k, v) in rest.as_object().unwrap() {
        map.insert(k.clone(), v.clone());
    }
    Value::Object(map)
}

fn tcp_device(name: &str, port: u16, points: Vec<PointConfig>) -> DeviceConfig {
    let mut device = DeviceConfig::tcp(name, "127.0.0.1", port);
    device.poll_interval_ms = 200;
    device.request_timeout_ms = 1000;
    device.connect_timeout_ms = 1000;
    device.backoff_initial_ms = 100;
    device.backoff_max_ms = 400;
    device.points = points;
    device
}

/// A log in a temp dir, Modbus polling it, and the means to stop it.
struct Harness {
    _dir: tempfile::TempDir,
    log: Log,
    board: StatusBoard,
    stop: outpost::kernel::ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), modbus::ModbusError>>,
}

impl Harness {
    fn start(devices: Vec<DeviceConfig>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            dir.path(),
            LogConfig {
                min_free_bytes: 0,
                ..LogConfig::default()
            },
        )
        .unwrap();
        let (stop, rx) = outpost::kernel::Shutdown::new();
        let state = outpost::state::StateStore::open(&dir.path().join("state")).unwrap();
        let ctx = outpost::kernel::Context::new(
            dir.path(),
            log.clone(),
            state,
            outpost::kernel::Identity::new("e1", "s1"),
            rx,
        );
        let board = ctx.sources.clone();
        let task = tokio::spawn(modbus::run(&ctx, ModbusConfig { devices }));
        Harness {
            _dir: dir,
            log,
            board,
            stop,
            task,
        }
    }

    fn records(&self, topic: &str) -> Vec<(Vec<u8>, Value)> {
        let Ok(topic) = self.log.topic(topic) else {
            return Vec::new();
        };
        topic
            .read(0, 100_000, 64 << 20)
            .unwrap()
            .records
            .into_iter()
            .map(|r| {
                (
                    r.key.unwrap_or_default(),
                    serde_json::from_slice(&r.value).unwrap(),
                )
            })
            .collect()
    }

    /// Waits until `cond` holds for the records of `topic`; panics after `timeout`.
    async fn wait_records(
        &self,
        topic: &str,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[(Vec<u8>, Value)]) -> bool,
    ) -> Vec<(Vec<u8>, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records(topic);
            if cond(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; records: {records:?}; status: {:#?}",
                self.board.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_status(
        &self,
        device: &str,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .board
                .snapshot()
                .into_iter()
                .find(|s| s.name == format!("modbus:{device}"));
            if let Some(status) = status.filter(|s| cond(s)) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {:#?}",
                self.board.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> (Log, StatusBoard) {
        self.stop.request();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the Modbus source stops within 10 s")
            .unwrap()
            .unwrap();
        (self.log, self.board)
    }
}

fn python_or_skip(test: &str) -> Option<PathBuf> {
    python::python(test)
}

fn start_server(python: &PathBuf, port: u16, extra: &[&str]) -> PythonPeer {
    let port = port.to_string();
    let mut args = vec!["--port", port.as_str()];
    args.extend_from_slice(extra);
    PythonPeer::start(python, "modbus_server.py", &args, "LISTENING")
}

fn requests(peer: &PythonPeer, prefix: &str) -> Vec<String> {
    peer.lines()
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_exactly_from_a_pymodbus_server() {
    let Some(py) = python_or_skip("every_type_and_order_decodes_exactly_from_a_pymodbus_server")
    else {
        return;
    };
    // The script's own account of its layout must match the table above.
    let out = std::process::Command::new(&py)
        .arg(python::peer_script("modbus_server.py"))
        .arg("--print-expected")
        .output()
        .unwrap();
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, _, _, _, address, _) in holding_table() {
        let entry = printed["layout"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from the server's layout"));
        assert_eq!(entry["address"], json!(address), "{name}");
    }

    let port = free_port();
    let server = start_server(&py, port, &[]);
    let h = Harness::start(vec![tcp_device("exact", port, all_points())]);
    let records = h
        .wait_records(
            "sensors.exact",
            Duration::from_secs(10),
            "one record",
            |r| !r.is_empty(),
        )
        .await;
    let (key, record) = &records[0];
    assert_eq!(key, b"exact");
    assert_eq!(record["device"], "exact");
    assert_eq!(record["quality"], "good", "{record}");
    assert!(record["ts_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let expected = expected_values();
    let values = record["values"].as_object().unwrap();
    for (name, want) in expected.as_object().unwrap() {
        assert_eq!(values.get(name), Some(want), "value {name}");
    }
    assert_eq!(values.len(), expected.as_object().unwrap().len());
    // Exact in the stored bytes too: 64-bit integers are not routed through f64.
    let text = String::from_utf8(
        h.log
            .topic("sensors.exact")
            .unwrap()
            .read(0, 1, 1 << 20)
            .unwrap()
            .records[0]
            .value
            .clone(),
    )
    .unwrap();
    assert!(text.contains("\"u64_abcd\":18446744073709551557"), "{text}");
    assert!(text.contains("\"i64_cdab\":-9007199254740993"), "{text}");
    assert!(text.contains("\"f32_abcd\":21.7,"), "{text}");
    assert_eq!(
        record["units"],
        json!({"scaled": "kWh", "temperature": "°C"})
    );
    h.stop().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adjacent_registers_are_read_with_one_request_per_kind() {
    let Some(py) = python_or_skip("adjacent_registers_are_read_with_one_request_per_kind") else {
        return;
    };
    let port = free_port();
    let server = start_server(&py, port, &[]);
    let mut device = tcp_device("grouped", port, all_points());
    device.poll_interval_ms = 100_000; // exactly one poll
    let h = Harness::start(vec![device]);
    h.wait_records(
        "sensors.grouped",
        Duration::from_secs(10),
        "one record",
        |r| !r.is_empty(),
    )
    .await;
    let (_, board) = h.stop().await;
    let mut seen = requests(&server, "REQ");
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "REQ fc=1 addr=0 count=8",
            "REQ fc=2 addr=0 count=4",
            "REQ fc=3 addr=0 count=63",
            "REQ fc=4 addr=0 count=3",
        ],
        "40 points in 4 tables must take 4 requests"
    );
    let status = board.snapshot().into_iter().next().unwrap();
    assert_eq!(status.details["requests"], json!(4));
    assert_eq!(
        status.details["read_plan"],
        json!([
            "coil 0..8",
            "discrete_input 0..4",
            "holding 0..63",
            "input 0..3"
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answers_are_retried_and_exhausted_retries_make_a_bad_record() {
    let Some(py) =
        python_or_skip("busy_answers_are_retried_and_exhausted_retries_make_a_bad_record")
    else {
        return;
    };
    let port = free_port();
    // The first four reads are answered "server device busy" (0x06).
    let server = start_server(&py, port, &["--busy", "4"]);
    let points: Vec<PointConfig> = all_points()
        .into_iter()
        .filter(|p| p.kind == RegisterKind::Holding)
        .collect();
    let mut device = tcp_device("busy", port, points);
    device.busy_retries = 2;
    device.busy_retry_delay_ms = 20;
    let h = Harness::start(vec![device]);
    let records = h
        .wait_records(
            "sensors.busy",
            Duration::from_secs(10),
            "two records",
            |r| r.len() >= 2,
        )
        .await;
    // Poll 1: the request and its two retries are all busy: no value, quality bad.
    assert_eq!(records[0].1["quality"], "bad", "{}", records[0].1);
    assert_eq!(records[0].1["values"], json!({}));
    let errors = records[0].1["errors"].to_string();
    assert!(errors.contains("0x06"), "{errors}");
    // Poll 2: one busy answer, the retry succeeds.
    assert_eq!(records[1].1["quality"], "good", "{}", records[1].1);
    assert_eq!(
        records[1].1["values"]["u64_abcd"],
        json!(18_446_744_073_709_551_557u64)
    );
    let (_, board) = h.stop().await;
    assert_eq!(requests(&server, "BUSY").len(), 4);
    let status = board.snapshot().into_iter().next().unwrap();
    assert_eq!(status.details["busy_retries"], json!(3));
    assert_eq!(
        status.gaps, 0,
        "busy answers are no gap: the device answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_answers_are_retried_like_busy_ones() {
    let Some(py) = python_or_skip("acknowledge_answers_are_retried_like_busy_ones") else {
        return;
    };
    let port = free_port();
    let server = start_server(&py, port, &["--busy", "1", "--busy-code", "5"]);
    let mut device = tcp_device(
        "ack",
        port,
        vec![PointConfig::new(
            "u16",
            RegisterKind::Holding,
            0,
            ValueType::U16,
        )],
    );
    device.busy_retry_delay_ms = 10;
    let h = Harness::start(vec![device]);
    let records = h
        .wait_records("sensors.ack", Duration::from_secs(10), "one record", |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(records[0].1["quality"], "good");
    assert_eq!(records[0].1["values"], json!({"u16": 65000}));
    h.stop().await;
    assert_eq!(requests(&server, "BUSY").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmapped_register_leaves_its_value_out_and_the_record_uncertain() {
    let Some(py) =
        python_or_skip("an_unmapped_register_leaves_its_value_out_and_the_record_uncertain")
    else {
        return;
    };
    let port = free_port();
    let _server = start_server(&py, port, &[]);
    let device = tcp_device(
        "partial",
        port,
        vec![
            PointConfig::new("u16", RegisterKind::Holding, 0, ValueType::U16),
            PointConfig::new("missing", RegisterKind::Holding, 1000, ValueType::U16),
        ],
    );
    let h = Harness::start(vec![device]);
    let records = h
        .wait_records(
            "sensors.partial",
            Duration::from_secs(10),
            "one record",
            |r| !r.is_empty(),
        )
        .await;
    let record = &records[0].1;
    assert_eq!(record["quality"], "uncertain");
    assert_eq!(record["values"], json!({"u16": 65000}));
    let errors = record["errors"].to_string();
    assert!(
        errors.contains("holding 1000..1001") && errors.contains("0x02"),
        "{errors}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_change_stores_only_changes_and_heartbeats() {
    let Some(py) = python_or_skip("on_change_stores_only_changes_and_heartbeats") else {
        return;
    };
    let port = free_port();
    let _server = start_server(&py, port, &[]);
    let mut device = tcp_device(
        "quiet",
        port,
        vec![PointConfig::new(
            "u16",
            RegisterKind::Holding,
            0,
            ValueType::U16,
        )],
    );
    device.poll_interval_ms = 50;
    device.on_change = true;
    device.heartbeat_polls = 4;
    let h = Harness::start(vec![device]);
    h.wait_status("quiet", Duration::from_secs(10), "13 polls", |s| {
        s.details.get("polls_ok").and_then(Value::as_u64) >= Some(13)
    })
    .await;
    let (log, board) = h.stop().await;
    let status = board.snapshot().into_iter().next().unwrap();
    let polls = status.details["polls_ok"].as_u64().unwrap();
    let stored = log.topic("sensors.quiet").unwrap().next_offset();
    // The values never change: the first poll is stored, then every fourth (the heartbeat).
    assert_eq!(stored, 1 + (polls - 1) / 4, "{polls} polls");
    assert_eq!(status.records_stored, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_polled_again_and_the_gap_is_reported() {
    let Some(py) = python_or_skip("a_restarted_server_is_polled_again_and_the_gap_is_reported")
    else {
        return;
    };
    let port = free_port();
    let mut server = start_server(&py, port, &[]);
    let device = tcp_device(
        "restart",
        port,
        vec![PointConfig::new(
            "u16",
            RegisterKind::Holding,
            0,
            ValueType::U16,
        )],
    );
    let h = Harness::start(vec![device]);
    h.wait_records(
        "sensors.restart",
        Duration::from_secs(10),
        "two records",
        |r| r.len() >= 2,
    )
    .await;

    server.kill();
    let killed_at_ms = now_ms();
    let down = h
        .wait_status(
            "restart",
            Duration::from_secs(10),
            "the device retrying",
            |s| matches!(s.link, Link::Retrying { .. }),
        )
        .await;
    assert!(down.details["open_gap"]["reason"].is_string(), "{down:#?}");
    let before = h.records("sensors.restart").len();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Nothing is stored while the device is down, and the open gap grows.
    assert_eq!(h.records("sensors.restart").len(), before);
    // Missed polls are counted at the poll interval; on a loaded machine the second may come
    // later than 1.2 s: wait for it rather than read the count once.
    let still_down = h
        .wait_status(
            "restart",
            Duration::from_secs(10),
            "two missed polls",
            |s| s.details["open_gap"]["missed_polls"].as_u64() >= Some(2),
        )
        .await;
    assert!(
        still_down.details["open_gap"]["missed_polls"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(still_down.gaps, 0);

    let restarted_ms = now_ms();
    let server = start_server(&py, port, &[]);
    let up = h
        .wait_status("restart", Duration::from_secs(10), "the gap closed", |s| {
            s.gaps == 1 && s.link == Link::Connected
        })
        .await;
    let gap = &up.details["recent_gaps"][0];
    let (from, to) = (
        gap["from_ms"].as_u64().unwrap(),
        gap["to_ms"].as_u64().unwrap(),
    );
    assert!(
        from >= killed_at_ms.saturating_sub(300) && from <= restarted_ms,
        "{gap}"
    );
    assert!(to >= restarted_ms, "{gap}");
    assert!(gap["missed_polls"].as_u64().unwrap() >= 2, "{gap}");
    let text = up.last_gap.clone().unwrap();
    assert!(text.contains("polls missed"), "{text}");
    assert_eq!(up.details["open_gap"], Value::Null);
    assert!(up.details["connects"].as_u64().unwrap() >= 2);

    // Records resume, and none is stamped inside the gap.
    let records = h
        .wait_records(
            "sensors.restart",
            Duration::from_secs(10),
            "a new record",
            |r| r.len() > before,
        )
        .await;
    for (_, r) in &records {
        let ts = r["ts_ms"].as_u64().unwrap();
        assert!(
            ts < from || ts >= to,
            "record at {ts} inside the gap {from}..{to}"
        );
        assert_eq!(r["values"]["u16"], json!(65000));
    }
    h.stop().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_a_serial_line_decodes_the_same_values() {
    let Some(py) = python_or_skip("rtu_over_a_serial_line_decodes_the_same_values") else {
        return;
    };
    let server = PythonPeer::start(&py, "modbus_server.py", &["--rtu"], "LISTENING");
    let pty = server
        .wait_for_line(|l| l.starts_with("PTY "), Duration::from_secs(5))
        .unwrap();
    let path = pty.trim_start_matches("PTY ").to_string();
    let mut device = DeviceConfig::tcp("serial", "unused", 1);
    device.transport = Transport::Rtu;
    device.host = None;
    device.serial_path = Some(path);
    device.baud_rate = 19200;
    device.parity = Parity::None;
    device.unit_id = 7;
    device.poll_interval_ms = 200;
    device.delay_between_requests_ms = 5;
    device.points = all_points();
    let h = Harness::start(vec![device]);
    let records = h
        .wait_records(
            "sensors.serial",
            Duration::from_secs(15),
            "one record",
            |r| !r.is_empty(),
        )
        .await;
    assert_eq!(records[0].1["quality"], "good", "{}", records[0].1);
    assert_eq!(records[0].1["values"], expected_values());
    h.stop().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
