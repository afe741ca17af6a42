//! Eviction by priority under the disk budget, with the policy of the default forwarding
//! classes (critical `pos.payments`, normal `fraud.scores`, bulk `pos.baskets`, unrouted
//! `sensors.fridge`) installed as `outpost run` installs it, and no cloud reachable.
//!
//! In-process tests fill a log with a small `log.max_bytes` and 4 KiB segments and check:
//! the order (unrouted, then bulk, then normal, never critical), one durable gap marker per
//! evicted segment in `outpost.gaps` with the exact offsets and file size, gaps plus
//! remaining records covering every topic densely from offset 0, critical data intact and
//! appends to it refused with `StorageFull` once only critical data is left, the eviction
//! counters, background eviction at the high-water mark before any append fails, and a
//! consistent reopen. One end-to-end test does the same through `outpost run` over HTTP with
//! the forwarder pointed at a closed port; another fills the budget while a real broker
//! (tansu) is down, starts it again and checks with an independent client (Python
//! confluent-kafka) that the gap markers arrived and, with the records that did, account for
//! every offset of every topic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{events, kafka, peers, python};

use outpost::forward::{ForwardConfig, Forwarder};
use outpost::log::{
    GapMarker, Log, LogConfig, LogError, NewRecord, TopicConfig, GAPS_TOPIC, REASON_DISK_BUDGET,
};
use outpost::state::StateStore;
use serde_json::{json, Value};

const CRITICAL: &str = "pos.payments";
const NORMAL: &str = "fraud.scores";
const BULK: &str = "pos.baskets";
const UNROUTED: &str = "sensors.fridge";
const MAX_BYTES: u64 = 64 * 1024;
const SEGMENT_BYTES: u64 = 4096;

/// The metrics registry is process-wide: tests that read counters run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(auto_create: bool) -> LogConfig {
    let topic = TopicConfig {
        segment_bytes: SEGMENT_BYTES,
        retention_ms: 0,
        ..TopicConfig::default()
    };
    let mut topics = BTreeMap::new();
    if !auto_create {
        for t in [CRITICAL, NORMAL, BULK, UNROUTED] {
            topics.insert(t.to_string(), topic.clone());
        }
    }
    LogConfig {
        auto_create_topics: auto_create,
        max_bytes: MAX_BYTES,
        min_free_bytes: 0,
        retention_check_ms: 3_600_000,
        eviction_high_water_percent: 90,
        eviction_low_water_percent: 80,
        default_topic: topic,
        topics,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, auto_create: bool) -> Log {
    let log = Log::open(dir, config(auto_create)).unwrap();
    outpost::forward::evict::install(&log, &ForwardConfig::default());
    log
}

/// A JSON value of about 200 bytes, unique per (topic, offset).
fn value(topic: &str, offset: u64) -> Vec<u8> {
    let v = json!({"topic": topic, "n": offset, "pad": "x".repeat(160)});
    serde_json::to_vec(&v).unwrap()
}

fn append(log: &Log, topic: &str) -> Result<u64, LogError> {
    let t = log.topic_or_create(topic)?;
    let offset = t.next_offset();
    let ack = t.append(vec![NewRecord {
        key: Some(format!("k{offset}").into_bytes()),
        value: value(topic, offset),
        ..NewRecord::default()
    }])?;
    assert_eq!(ack.first_offset, offset);
    Ok(offset)
}

/// `(base offset, bytes)` of every segment file of `topic`, in offset order.
fn segment_files(dir: &Path, topic: &str) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = std::fs::read_dir(dir.join(topic))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, e.metadata().unwrap().len()))
        })
        .collect();
    out.sort_unstable();
    out
}

fn gap_markers(log: &Log) -> Vec<GapMarker> {
    let Ok(t) = log.topic(GAPS_TOPIC) else {
        return Vec::new();
    };
    let f = t.read(0, 100_000, 64 << 20).unwrap();
    assert_eq!(f.start_offset, 0, "gap markers were deleted");
    f.records
        .iter()
        .map(|r| {
            let m: GapMarker = serde_json::from_slice(&r.value).unwrap();
            assert_eq!(r.key.as_deref(), Some(m.topic.as_bytes()), "key = topic");
            m
        })
        .collect()
}

/// Checks that every record of `topic` from its start to its end is the one appended at that
/// offset.
fn check_records(log: &Log, topic: &str) {
    let t = log.topic(topic).unwrap();
    let mut next = t.start_offset();
    let end = t.next_offset();
    while next < end {
        let f = t.read(next, 10_000, 64 << 20).unwrap();
        assert!(!f.records.is_empty(), "{topic}: nothing readable at {next}");
        for r in &f.records {
            assert_eq!(r.offset, next, "{topic}: offsets not dense");
            assert_eq!(r.value, value(topic, r.offset), "{topic}@{}", r.offset);
            next += 1;
        }
    }
}

/// The markers of `topic` and its remaining records cover `0..next_offset` without holes or
/// overlaps; returns the number of markers.
fn check_dense(log: &Log, markers: &[GapMarker], topic: &str) -> usize {
    let t = log.topic(topic).unwrap();
    let mut expect = 0;
    let mut n = 0;
    for m in markers.iter().filter(|m| m.topic == topic) {
        assert_eq!(
            m.from_offset, expect,
            "{topic}: gap markers not contiguous: {m:?}"
        );
        assert!(m.to_offset >= m.from_offset);
        assert_eq!(m.reason, REASON_DISK_BUDGET);
        expect = m.to_offset + 1;
        n += 1;
    }
    assert_eq!(
        expect,
        t.start_offset(),
        "{topic}: the last gap does not end at the log start"
    );
    check_records(log, topic);
    n
}

fn counter(name: &str, topic: &str, class: &str) -> u64 {
    let text = outpost::metrics::global().render();
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains(&format!("topic=\"{topic}\""))
                && l.contains(&format!("class=\"{class}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn under_the_budget_unrouted_then_bulk_then_normal_are_evicted_and_critical_is_never() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = open(&path, false);
    let counters_before: Vec<u64> = [(UNROUTED, "unrouted"), (BULK, "bulk"), (NORMAL, "normal")]
        .iter()
        .map(|(t, c)| counter("outpost_log_evicted_segments_total", t, c))
        .collect();

    // Phase 1: every class gets data, well below the high-water mark: nothing is evicted.
    for i in 0..50 {
        for topic in [UNROUTED, BULK, NORMAL, CRITICAL] {
            if topic == UNROUTED && i >= 30 {
                continue;
            }
            append(&log, topic).unwrap();
        }
    }
    let total = log.total_bytes();
    assert!(total < MAX_BYTES * 9 / 10, "phase 1 filled {total} bytes");
    assert!(gap_markers(&log).is_empty());
    let files_before: BTreeMap<&str, Vec<(u64, u64)>> = [UNROUTED, BULK, NORMAL]
        .into_iter()
        .map(|t| (t, segment_files(&path, t)))
        .collect();
    for (t, files) in &files_before {
        assert!(files.len() >= 2, "{t} has only {} segments", files.len());
    }

    // Phase 2: only critical data arrives, until the budget refuses it.
    let started = Instant::now();
    let refused = loop {
        match append(&log, CRITICAL) {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "critical appends never hit the budget"
        );
    };
    assert!(
        matches!(refused, LogError::StorageFull(_)),
        "not storage full: {refused}"
    );
    // Wait for a background pass that may still run, then nothing more can go.
    let report = log.enforce_eviction().unwrap();
    assert_eq!(report.segments_evicted, 0, "{report:?}");
    assert!(matches!(
        append(&log, CRITICAL),
        Err(LogError::StorageFull(_))
    ));
    assert!(log.total_bytes() <= MAX_BYTES);

    let markers = gap_markers(&log);
    // Order: every unrouted marker, then bulk, then normal; never critical.
    let ranks: Vec<u8> = markers
        .iter()
        .map(|m| match m.topic.as_str() {
            UNROUTED => 0,
            BULK => 1,
            NORMAL => 2,
            other => panic!("a segment of {other} was evicted: {m:?}"),
        })
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "eviction order broken: {ranks:?}"
    );
    // Every sealed segment of the evictable topics went, each with its exact range and size;
    // only their active segments are left.
    for (topic, files) in &files_before {
        let mine: Vec<&GapMarker> = markers.iter().filter(|m| m.topic == *topic).collect();
        assert_eq!(mine.len(), files.len() - 1, "{topic}: {mine:?}");
        for (m, pair) in mine.iter().zip(files.windows(2)) {
            assert_eq!(m.from_offset, pair[0].0, "{topic}");
            assert_eq!(m.to_offset, pair[1].0 - 1, "{topic}");
            assert_eq!(
                m.bytes, pair[0].1,
                "{topic}: marker bytes != segment file size"
            );
        }
        assert_eq!(segment_files(&path, topic), vec![*files.last().unwrap()]);
        check_dense(&log, &markers, topic);
    }
    // Critical: intact from offset 0, every record readable.
    let critical = log.topic(CRITICAL).unwrap();
    assert_eq!(critical.start_offset(), 0);
    check_records(&log, CRITICAL);
    let markers_total: u64 = markers.iter().map(|m| m.bytes).sum();
    println!(
        "evicted {} segments ({markers_total} bytes); critical holds {} records; log {} of {MAX_BYTES} bytes",
        markers.len(),
        critical.next_offset(),
        log.total_bytes()
    );
    // The counters moved by exactly the number of markers per topic.
    for (i, (t, c)) in [(UNROUTED, "unrouted"), (BULK, "bulk"), (NORMAL, "normal")]
        .iter()
        .enumerate()
    {
        let n = markers.iter().filter(|m| m.topic == *t).count() as u64;
        assert_eq!(
            counter("outpost_log_evicted_segments_total", t, c) - counters_before[i],
            n,
            "{t}"
        );
    }

    // A reopen sees the same log.
    let ends: Vec<(String, u64, u64)> = log
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.start_offset(), t.next_offset()))
        .collect();
    let bytes = log.total_bytes();
    log.close().unwrap();
    drop(log);
    let log = open(&path, false);
    let ends_after: Vec<(String, u64, u64)> = log
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.start_offset(), t.next_offset()))
        .collect();
    assert_eq!(ends, ends_after);
    assert_eq!(log.total_bytes(), bytes);
    assert_eq!(gap_markers(&log), markers);
    for topic in [UNROUTED, BULK, NORMAL] {
        check_dense(&log, &markers, topic);
    }
    check_records(&log, CRITICAL);
    assert!(matches!(
        append(&log, CRITICAL),
        Err(LogError::StorageFull(_))
    ));
}

#[test]
fn crossing_the_high_water_mark_evicts_in_the_background_before_appends_fail() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = open(&path, true);
    let high = MAX_BYTES * 9 / 10;
    let low = MAX_BYTES * 8 / 10;
    // Unrouted data first (old), then bulk, until just above the high-water mark; no append
    // may fail.
    let mut i = 0;
    while log.total_bytes() <= high {
        let topic = if i < 120 { UNROUTED } else { BULK };
        append(&log, topic).unwrap();
        i += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.total_bytes() > low {
        assert!(
            Instant::now() < deadline,
            "the log stayed at {} bytes above the low-water mark {low}",
            log.total_bytes()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let markers = gap_markers(&log);
    assert!(!markers.is_empty());
    assert!(
        markers.iter().all(|m| m.topic == UNROUTED),
        "bulk evicted while unrouted data was left: {markers:?}"
    );
    let freed: u64 = markers.iter().map(|m| m.bytes).sum();
    assert!(freed >= high - low, "freed only {freed} bytes");
    check_dense(&log, &markers, UNROUTED);
    assert_eq!(log.topic(BULK).unwrap().start_offset(), 0);
    check_records(&log, BULK);
}

/// A value that names the appending thread and its sequence number.
fn thread_value(topic: &str, thread: usize, seq: u64) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"topic": topic, "thread": thread, "seq": seq, "pad": "z".repeat(150)}),
    )
    .unwrap()
}

#[test]
fn concurrent_appends_under_pressure_lose_nothing_silently() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = open(&path, true);
    let threads: Vec<(usize, &str)> = [CRITICAL, CRITICAL, NORMAL, BULK, BULK, UNROUTED]
        .into_iter()
        .enumerate()
        .collect();
    let handles: Vec<_> = threads
        .iter()
        .map(|&(id, topic)| {
            let log = log.clone();
            std::thread::spawn(move || {
                let t = log.topic_or_create(topic).unwrap();
                let mut acked = Vec::new();
                let mut refused = 0u64;
                for seq in 0..400u64 {
                    let record = NewRecord {
                        key: Some(format!("t{id}").into_bytes()),
                        value: thread_value(topic, id, seq),
                        ..NewRecord::default()
                    };
                    match t.append(vec![record]) {
                        Ok(ack) => acked.push((ack.first_offset, seq)),
                        Err(LogError::StorageFull(_)) => {
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => panic!("{topic}: {e}"),
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    let results: Vec<(Vec<(u64, u64)>, u64)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    log.enforce_eviction().unwrap();
    let markers = gap_markers(&log);
    assert!(!markers.is_empty(), "the budget was never under pressure");
    assert!(markers.iter().all(|m| m.topic != CRITICAL));
    assert!(log.total_bytes() <= MAX_BYTES);
    let mut refused_total = 0;
    for ((id, topic), (acked, refused)) in threads.iter().zip(&results) {
        refused_total += refused;
        let t = log.topic(topic).unwrap();
        // Every acknowledged record is either still readable at its offset, byte for byte,
        // or inside a gap marker of its topic.
        for &(offset, seq) in acked {
            if offset >= t.start_offset() {
                let f = t.read(offset, 1, 1 << 20).unwrap();
                assert_eq!(f.records[0].offset, offset);
                assert_eq!(f.records[0].value, thread_value(topic, *id, seq));
            } else {
                assert!(
                    markers.iter().any(|m| m.topic == *topic
                        && m.from_offset <= offset
                        && offset <= m.to_offset),
                    "{topic}@{offset} vanished without a gap marker"
                );
            }
        }
    }
    let critical = log.topic(CRITICAL).unwrap();
    assert_eq!(critical.start_offset(), 0);
    let acked_critical: usize = results[..2].iter().map(|(a, _)| a.len()).sum();
    assert_eq!(critical.next_offset() as usize, acked_critical);
    for topic in [NORMAL, BULK, UNROUTED] {
        let mut expect = 0;
        for m in markers.iter().filter(|m| m.topic == topic) {
            assert_eq!(m.from_offset, expect, "{topic}: {m:?}");
            expect = m.to_offset + 1;
        }
        assert_eq!(expect, log.topic(topic).unwrap().start_offset(), "{topic}");
    }
    println!(
        "concurrent: {} gap markers, {refused_total} appends refused, critical holds {acked_critical} records",
        markers.len()
    );
}

#[test]
fn without_a_policy_nothing_is_evicted_and_the_budget_only_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&dir.path().join("log"), config(true)).unwrap();
    let refused = loop {
        if let Err(e) = append(&log, BULK) {
            break e;
        }
    };
    assert!(matches!(refused, LogError::StorageFull(_)));
    assert_eq!(log.enforce_eviction().unwrap().segments_evicted, 0);
    assert!(log.topic(GAPS_TOPIC).is_err());
    assert_eq!(log.topic(BULK).unwrap().start_offset(), 0);
}

/// A value of `topic` (one of the three classes' topics) that meets the topic's contract,
/// numbered `n` (extra fields are allowed).
fn numbered(topic: &str, n: u64) -> Value {
    let mut value = match topic {
        CRITICAL => events::payment(&format!("p-{n}"), &format!("card-{n}")),
        NORMAL => events::score(&format!("p-{n}")),
        BULK => events::basket(&format!("b-{n}")),
        other => panic!("no value for {other}"),
    };
    value["n"] = json!(n);
    value
}

/// Posts `n` records to `topic` over HTTP in one request; returns the status code.
fn post(port: u16, topic: &str, first: u64, n: u64) -> u16 {
    let records: Vec<Value> = (first..first + n)
        .map(|i| json!({"key": format!("k{i}"), "value": numbered(topic, i)}))
        .collect();
    peers::http_post(
        port,
        &format!("/topics/{topic}"),
        "application/vnd.kafka.json.v2+json",
        &json!({ "records": records }).to_string(),
    )
}

/// `GET /metrics` as text.
fn metrics_text(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn topic_entry(port: u16, topic: &str) -> Value {
    let (code, v) = peers::http_get(port, "/topics").expect("GET /topics");
    assert_eq!(code, 200);
    let list = v
        .as_array()
        .cloned()
        .or_else(|| v["topics"].as_array().cloned())
        .unwrap_or_else(|| panic!("unexpected /topics: {v}"));
    list.into_iter()
        .find(|t| t["name"] == topic)
        .unwrap_or_else(|| panic!("{topic} not in /topics"))
}

#[test]
fn outpost_run_with_an_unreachable_cloud_evicts_bulk_first_and_refuses_critical_over_http() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port: the forwarder stays offline.
    let closed = python::free_port();
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[log]
max_bytes = {MAX_BYTES}
min_free_bytes = 0

[log.default_topic]
segment_bytes = {SEGMENT_BYTES}

[plugins]
bundled = false

[forward]
backoff_max_ms = 1000

[forward.kafka]
brokers = "127.0.0.1:{closed}"
"#
        ),
    )
    .unwrap();
    let mut outpost = peers::Outpost::start(
        &dir.path().join("data"),
        Some(&config),
        python::free_port(),
        python::free_port(),
    );
    let port = outpost.http_port;
    let mut next = BTreeMap::new();
    // Normal and bulk first, then critical until the budget refuses it.
    for _ in 0..30 {
        for topic in [NORMAL, BULK] {
            let n = next.entry(topic).or_insert(0u64);
            assert_eq!(post(port, topic, *n, 5), 200, "{}", outpost.stderr_text());
            *n += 5;
        }
    }
    let mut critical = 0u64;
    let started = Instant::now();
    let code = loop {
        let code = post(port, CRITICAL, critical, 5);
        if code != 200 {
            break code;
        }
        critical += 5;
        assert!(started.elapsed() < Duration::from_secs(120));
    };
    assert_eq!(code, 507, "{}", outpost.stderr_text());

    let (code, gaps) = peers::http_get(port, "/topics/outpost.gaps/records?offset=0&limit=10000")
        .expect("GET gaps");
    assert_eq!(code, 200);
    let markers: Vec<Value> = gaps["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert!(!markers.is_empty(), "no gap markers");
    let topics: Vec<&str> = markers
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    let first_normal = topics.iter().position(|t| *t == NORMAL);
    let last_bulk = topics.iter().rposition(|t| *t == BULK);
    let (Some(n), Some(b)) = (first_normal, last_bulk) else {
        panic!("bulk and normal should both have been evicted: {topics:?}");
    };
    assert!(b < n, "normal evicted before bulk was gone: {topics:?}");
    assert!(!topics.contains(&CRITICAL), "critical evicted: {topics:?}");
    for topic in [BULK, NORMAL] {
        let mut expect = 0;
        for m in markers.iter().filter(|m| m["topic"] == topic) {
            assert_eq!(m["from_offset"], expect, "{topic}: {m}");
            expect = m["to_offset"].as_u64().unwrap() + 1;
        }
        let entry = topic_entry(port, topic);
        assert_eq!(entry["first_offset"], expect, "{topic}: {entry}");
        assert_eq!(entry["next_offset"], next[topic], "{topic}: {entry}");
        // The forwarder skipped its cursor past the gap.
        assert_eq!(entry["forward"]["cursor"], expect, "{topic}: {entry}");
    }
    let payments = topic_entry(port, CRITICAL);
    assert_eq!(payments["first_offset"], 0);
    assert_eq!(payments["next_offset"], critical);
    assert_eq!(payments["forward"]["debt_records"], critical);
    // The gap topic is forwarded as critical too.
    assert_eq!(
        topic_entry(port, GAPS_TOPIC)["forward"]["class"],
        "critical"
    );
    let text = metrics_text(port);
    for (topic, class) in [(BULK, "bulk"), (NORMAL, "normal")] {
        let n = topics.iter().filter(|t| **t == topic).count();
        let line = format!(
            "outpost_log_evicted_segments_total{{topic=\"{topic}\",class=\"{class}\"}} {n}"
        );
        assert!(text.lines().any(|l| l == line), "{line} not in /metrics");
    }
    let (code, first) = peers::http_get(
        port,
        &format!("/topics/{CRITICAL}/records?offset=0&limit=1"),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(first["records"][0]["value"]["n"], 0);
    println!(
        "over HTTP: {} gap markers; critical holds {critical} records when refused",
        markers.len()
    );
    assert_eq!(outpost.terminate(), Some(0), "{}", outpost.stderr_text());
}

#[test]
fn gap_markers_reach_the_cloud_and_with_the_forwarded_records_account_for_every_offset() {
    let _serial = serial();
    let _broker = kafka::one_broker_at_a_time();
    let test = "eviction with a broker down";
    let Some(tansu) = kafka::tansu_binary(test) else {
        return;
    };
    let Some(python) = python::python(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = kafka::Tansu::start(
        &tansu,
        &python,
        &dir.path().join("tansu"),
        python::free_port(),
    );
    let topics = [GAPS_TOPIC, BULK, NORMAL, CRITICAL];
    for t in topics {
        broker.create_topic(t, 1);
    }
    broker.stop();

    let log = open(&dir.path().join("log"), true);
    let state = StateStore::open(&dir.path().join("state")).unwrap();
    log.add_retention_guard(Arc::new(state.clone()));
    let mut config = ForwardConfig::default();
    config.kafka.brokers = broker.brokers();
    config.kafka.delivery_timeout_ms = 2000;
    config.backoff_initial_ms = 100;
    config.backoff_max_ms = 500;
    let ctx = outpost::kernel::Context::new(
        dir.path(),
        log.clone(),
        state.clone(),
        outpost::kernel::Identity::new("edge-evict", "store-1"),
        outpost::kernel::Shutdown::never(),
    );
    let forwarder = Forwarder::new(&ctx, config);
    log.add_retention_guard(Arc::new(forwarder.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, rx) = outpost::kernel::Shutdown::new();
    let f = forwarder.clone();
    let task = runtime.spawn(async move { f.run(rx).await });

    // The broker is down: bulk and normal data, then critical data until the budget refuses.
    for _ in 0..50 {
        append(&log, BULK).unwrap();
        append(&log, NORMAL).unwrap();
    }
    let started = Instant::now();
    while append(&log, CRITICAL).is_ok() {
        assert!(started.elapsed() < Duration::from_secs(120));
    }
    log.enforce_eviction().unwrap();
    let markers = gap_markers(&log);
    assert!(markers.iter().any(|m| m.topic == BULK));
    assert!(markers.iter().all(|m| m.topic != CRITICAL));
    let ends: BTreeMap<&str, (u64, u64)> = [BULK, NORMAL, CRITICAL]
        .into_iter()
        .map(|t| {
            let topic = log.topic(t).unwrap();
            (t, (topic.start_offset(), topic.next_offset()))
        })
        .collect();
    // Let sends read before the eviction time out, then bring the broker back.
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = forwarder.status().unwrap();
        if s.online && s.topics.iter().all(|t| t.debt_records == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forwarding did not catch up: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let expected = markers.len() as u64 + ends.values().map(|(s, e)| e - s).sum::<u64>();
    let arrived = kafka::consume(&python, &broker.brokers(), &topics, expected as usize, 10);
    stop.request();
    let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(15), task).await });

    // Per topic, the local offsets that arrived (duplicates recognised by the headers).
    let mut offsets: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut cloud_gaps: BTreeMap<u64, GapMarker> = BTreeMap::new();
    for a in &arrived {
        let h = |name: &str| a.headers.get(name).cloned().flatten();
        assert_eq!(h("outpost-topic").as_deref(), Some(a.topic.as_str()));
        let local: u64 = h("outpost-offset").unwrap().parse().unwrap();
        offsets.entry(a.topic.clone()).or_default().insert(local);
        if a.topic == GAPS_TOPIC {
            let m: GapMarker = serde_json::from_str(a.value.as_deref().unwrap()).unwrap();
            assert_eq!(a.key.as_deref(), Some(m.topic.as_str()));
            cloud_gaps.insert(local, m);
        }
    }
    // Every gap marker arrived, as it is stored.
    assert_eq!(
        cloud_gaps.values().cloned().collect::<Vec<_>>(),
        markers,
        "gap markers in the cloud differ"
    );
    // What arrived plus what the markers announce covers every offset of every topic; every
    // record still stored arrived.
    let mut overlap = 0;
    for (topic, (start, end)) in &ends {
        let got = offsets.get(*topic).cloned().unwrap_or_default();
        for o in *start..*end {
            assert!(
                got.contains(&o),
                "{topic}@{o} was stored but did not arrive"
            );
        }
        for o in 0..*start {
            let in_gap = markers
                .iter()
                .any(|m| m.topic == *topic && m.from_offset <= o && o <= m.to_offset);
            assert!(in_gap || got.contains(&o), "{topic}@{o} is unaccounted for");
            if in_gap && got.contains(&o) {
                overlap += 1;
            }
        }
        assert!(got.iter().all(|o| o < end));
    }
    println!(
        "with a broker down: {} gap markers arrived; {} records arrived; {overlap} evicted records had arrived anyway",
        cloud_gaps.len(),
        arrived.len()
    );
}
