//! The box's Kafka listener with real, independent clients against `outpost run`: Debian's
//! kcat (librdkafka 2.0.x) and confluent-kafka (librdkafka 2.x) produce with every codec and
//! consume what the log holds, at the log's offsets; a consumer group's committed offset
//! survives a restart of the box; ListOffsets by timestamp finds the right record; Kafka
//! records are ordinary log records (fraud-score scores payments produced over Kafka, and its
//! verdicts are read back with a Kafka consumer); and bad frames close only their own
//! connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::events::payment;
use crate::common::peers::{http_produce, Outpost};
use crate::common::python::{self, free_port};
use crate::common::wait::wait_until;

/// Debian's kcat, or `None` (printed) when it is missing and peers are not required.
fn kcat(test: &str) -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/kcat");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("OUTPOST_REQUIRE_PEERS").is_none(),
        "{test}: kcat is missing; tests/run.sh installs Debian's kcat"
    );
    eprintln!("SKIPPED {test}: kcat is not installed");
    None
}

fn start(dir: &Path, toml: &str) -> Outpost {
    let config = dir.join("outpost.toml");
    std::fs::write(&config, toml).unwrap();
    Outpost::start(&dir.join("data"), Some(&config), free_port(), free_port())
}

/// Runs kcat with `args` (and `input` on stdin); its stdout. Panics when it fails.
fn run_kcat(kcat: &Path, args: &[&str], input: &str) -> String {
    let mut child = Command::new(kcat)
        .args(args)
        // Debian's librdkafka, not a build of the test's own dependencies.
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON lines a peer printed, once it succeeded and printed `done`; panics otherwise.
fn records_printed(out: &std::process::Output, done: &str) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(done),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `tests/peers/kafka_client.py` with `args`; its stdout lines. Panics when it fails.
fn kafka_client(python: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new(python)
        .arg(python::peer_script("kafka_client.py"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.lines().any(|l| l.starts_with("DONE ")),
        "kafka_client.py {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

const NO_PLUGINS: &str = "[plugins]\nenabled = false\n";

#[test]
fn kcat_lists_produces_with_every_codec_and_consumes_exactly_what_the_log_holds() {
    let Some(kcat) = kcat("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let brokers = box_.kafka_brokers();
    let b = brokers.as_str();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let input =
            format!("{codec}-1:{{\"codec\": \"{codec}\", \"n\": 1}}\n{codec}-2:plain text\n");
        run_kcat(
            &kcat,
            &["-b", b, "-P", "-t", "store.kafka", "-K:", "-z", codec],
            &input,
        );
    }
    let listing = run_kcat(&kcat, &["-b", b, "-L", "-t", "store.kafka"], "");
    assert!(
        listing.contains("topic \"store.kafka\" with 1 partitions"),
        "{listing}"
    );

    let consumed = run_kcat(
        &kcat,
        &[
            "-b",
            b,
            "-C",
            "-t",
            "store.kafka",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o|%k|%s\n",
        ],
        "",
    );
    let expected: Vec<String> = ["none", "gzip", "snappy", "lz4", "zstd"]
        .iter()
        .flat_map(|c| {
            [
                format!("{c}-1|{{\"codec\": \"{c}\", \"n\": 1}}"),
                format!("{c}-2|plain text"),
            ]
        })
        .enumerate()
        .map(|(i, kv)| format!("{i}|{kv}"))
        .collect();
    assert_eq!(consumed.lines().collect::<Vec<_>>(), expected);
    // The same records, in the same order, are what the log holds.
    let stored = box_.records("store.kafka");
    let keys: Vec<&str> = stored.iter().map(|r| r["key"].as_str().unwrap()).collect();
    let expected_keys: Vec<&str> = expected
        .iter()
        .map(|l| l.split('|').nth(1).unwrap())
        .collect();
    assert_eq!(keys, expected_keys);
    // From the middle of what one produce stored, and from the end backwards.
    let tail = run_kcat(
        &kcat,
        &[
            "-b",
            b,
            "-C",
            "-t",
            "store.kafka",
            "-o",
            "7",
            "-e",
            "-f",
            "%o %k\n",
        ],
        "",
    );
    assert_eq!(tail, "7 lz4-2\n8 zstd-1\n9 zstd-2\n");
    let last = run_kcat(
        &kcat,
        &[
            "-b",
            b,
            "-C",
            "-t",
            "store.kafka",
            "-o",
            "-1",
            "-e",
            "-f",
            "%o\n",
        ],
        "",
    );
    assert_eq!(last, "9\n");
}

#[test]
fn a_groups_committed_offset_survives_a_restart_of_the_box() {
    let Some(py) = python::python("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut box_ = start(dir.path(), NO_PLUGINS);
    let brokers = box_.kafka_brokers();
    let acked = kafka_client(
        &py,
        &[
            "produce",
            "--brokers",
            &brokers,
            "--topic",
            "till.events",
            "--count",
            "20",
            "--compression",
            "lz4",
            "--acks",
            "all",
        ],
    );
    let offsets: Vec<&str> = acked
        .iter()
        .filter(|l| l.starts_with("ACK "))
        .map(String::as_str)
        .collect();
    assert_eq!(offsets.len(), 20);
    assert_eq!(offsets[0], "ACK 0 0");
    assert_eq!(offsets[19], "ACK 19 19");

    let consume = |max: &str, idle: &str| {
        kafka_client(
            &py,
            &[
                "consume",
                "--brokers",
                &brokers,
                "--topic",
                "till.events",
                "--group",
                "tills",
                "--max",
                max,
                "--idle",
                idle,
            ],
        )
    };
    let first = consume("8", "10");
    assert_eq!(first.last().unwrap(), "DONE 8");
    // The listener's status shows the group and its lag: 12 records after its commit.
    let status = box_
        .status("sources", "kafka")
        .expect("the listener's status");
    assert!(
        status["details"]["groups"]
            .to_string()
            .contains("tills: Empty, 0 members, lag 12 (till.events 12)"),
        "{status}"
    );

    box_.restart();
    let rest = consume("100", "3");
    let records: Vec<Value> = rest
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 12, "{rest:?}");
    assert_eq!(records[0]["offset"], 8);
    assert_eq!(records[0]["key"], "k8");
    assert_eq!(records[0]["value"], "{\"i\": 8}");
    assert_eq!(records[0]["headers"]["n"], "8");
    assert_eq!(records[11]["offset"], 19);
}

/// Starts `kafka_client.py group` as member `name`; its output comes with `wait_with_output`.
fn group_member(
    python: &Path,
    brokers: &str,
    topics: &str,
    name: &str,
    max: u32,
    idle_s: u32,
) -> std::process::Child {
    Command::new(python)
        .arg(python::peer_script("kafka_client.py"))
        .args([
            "group",
            "--brokers",
            brokers,
            "--topics",
            topics,
            "--group",
            "stores",
        ])
        .args([
            "--name",
            name,
            "--max",
            &max.to_string(),
            "--idle",
            &idle_s.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The (topic, offset) of every record a member printed; panics unless it finished.
fn member_records(child: std::process::Child) -> Vec<(String, u64)> {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.lines().any(|l| l.starts_with("DONE ")),
        "a group member failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("topic").is_some())
        .map(|v| {
            (
                v["topic"].as_str().unwrap().to_string(),
                v["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_consumer_group_of_three_shares_the_topics_and_takes_over_when_one_leaves() {
    let Some(py) = python::python("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let brokers = box_.kafka_brokers();
    let topics = ["shelf.a", "shelf.b", "shelf.c"];
    let produce = |start: &str| {
        for t in topics {
            kafka_client(
                &py,
                &[
                    "produce",
                    "--brokers",
                    &brokers,
                    "--topic",
                    t,
                    "--count",
                    "10",
                    "--start",
                    start,
                ],
            );
        }
    };
    produce("0");
    let joined = topics.join(",");
    // The first member leaves after ten records; the other two stay until the topics are
    // quiet for 15 s, so they see the second batch produced after it left.
    let first = group_member(&py, &brokers, &joined, "m1", 10, 60);
    let others = [
        group_member(&py, &brokers, &joined, "m2", 1000, 15),
        group_member(&py, &brokers, &joined, "m3", 1000, 15),
    ];
    let mut all = member_records(first);
    assert_eq!(all.len(), 10, "the first member read ten records: {all:?}");
    produce("10");
    for member in others {
        all.extend(member_records(member));
    }
    let mut seen = std::collections::BTreeSet::new();
    for record in &all {
        assert!(seen.insert(record.clone()), "{record:?} was read twice");
    }
    let expected: std::collections::BTreeSet<(String, u64)> = topics
        .iter()
        .flat_map(|t| (0..20).map(move |o| (t.to_string(), o)))
        .collect();
    assert_eq!(seen, expected);
    let status = box_
        .status("sources", "kafka")
        .expect("the listener's status");
    assert!(
        status.to_string().contains("stores: "),
        "the group is in the status: {status}"
    );
}

#[test]
fn list_offsets_by_timestamp_finds_the_first_record_at_or_after_it() {
    let Some(kcat) = kcat("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let b = box_.kafka_brokers();
    // Three produces some milliseconds apart: the timestamps of offsets 0, 1, 2 increase.
    for i in 0..3 {
        run_kcat(&kcat, &["-b", &b, "-P", "-t", "times"], &format!("r{i}\n"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let stored = box_.records("times");
    let ts: Vec<u64> = stored
        .iter()
        .map(|r| r["ts_ms"].as_u64().unwrap())
        .collect();
    assert!(ts[0] < ts[1] && ts[1] < ts[2], "{ts:?}");
    for (at, expect) in [
        (ts[1], "1 r1\n2 r2\n"),
        (ts[1] + 1, "2 r2\n"),
        (ts[0] - 1000, "0 r0\n1 r1\n2 r2\n"),
    ] {
        let out = run_kcat(
            &kcat,
            &[
                "-b",
                &b,
                "-C",
                "-t",
                "times",
                "-o",
                &format!("s@{at}"),
                "-e",
                "-f",
                "%o %s\n",
            ],
            "",
        );
        assert_eq!(out, expect, "from timestamp {at}");
    }
}

#[test]
fn payments_produced_over_kafka_are_scored_and_the_verdicts_consumed_over_kafka() {
    let Some(kcat) = kcat("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), "");
    let b = box_.kafka_brokers();
    let blocklist = json!({"card_id": "card-stolen", "action": "add", "reason": "reported stolen"});
    let body = json!({"records": [{"key": "card-stolen", "value": blocklist}]}).to_string();
    assert!(matches!(
        http_produce(box_.http_port, "ref.blocklist", &body),
        Some((200, _))
    ));
    let payments: String = (0..5)
        .map(|i| {
            format!(
                "card-stolen|{}\n",
                payment(&format!("p-kafka-{i}"), "card-stolen")
            )
        })
        .collect();
    run_kcat(
        &kcat,
        &["-b", &b, "-P", "-t", "pos.payments", "-K|"],
        &payments,
    );

    let scored = wait_until(
        Duration::from_secs(60),
        || {
            run_kcat(
                &kcat,
                &[
                    "-b",
                    &b,
                    "-C",
                    "-t",
                    "fraud.scores",
                    "-o",
                    "beginning",
                    "-e",
                    "-f",
                    "%k %s\n",
                ],
                "",
            )
        },
        |out| out.lines().count() >= 5,
    )
    .expect("fraud-score scored the five payments");
    let last: Value =
        serde_json::from_str(scored.lines().last().unwrap().split_once(' ').unwrap().1).unwrap();
    assert_eq!(last["payment_id"], "p-kafka-4", "{scored}");
    assert!(
        last["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "blocklisted"),
        "{scored}"
    );
    assert!(
        scored.lines().all(|l| l.starts_with("card-stolen ")),
        "{scored}"
    );
}

#[test]
fn a_bad_frame_closes_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", box_.kafka_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    // An ApiVersions v3 request (flexible header: client id, no tags; body: software name and
    // version as compact strings, no tags).
    let api_versions = |version: i16| {
        let mut body = Vec::new();
        body.extend_from_slice(&18i16.to_be_bytes());
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&4i16.to_be_bytes());
        body.extend_from_slice(b"test");
        if version >= 3 {
            body.push(0);
            body.extend_from_slice(&[5, b't', b'e', b's', b't', 2, b'1', 0]);
        }
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    };
    let answer = |s: &mut TcpStream| -> Option<Vec<u8>> {
        let mut size = [0u8; 4];
        s.read_exact(&mut size).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        s.read_exact(&mut body).ok()?;
        Some(body)
    };
    let closed = |s: &mut TcpStream| {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            // A read timeout is an open connection; a reset is a closed one.
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };

    let mut good = connect();
    for bad in [
        // A frame of 2 GiB.
        vec![0x7f, 0xff, 0xff, 0xff],
        // An unknown API key (9999).
        [
            &10i32.to_be_bytes()[..],
            &9999i16.to_be_bytes(),
            &0i16.to_be_bytes(),
            &1i32.to_be_bytes(),
            &[0xff, 0xff],
        ]
        .concat(),
        // A Metadata request whose header does not decode (a client id longer than the frame).
        [
            &10i32.to_be_bytes()[..],
            &3i16.to_be_bytes(),
            &1i16.to_be_bytes(),
            &1i32.to_be_bytes(),
            &[0x7f, 0xff],
        ]
        .concat(),
    ] {
        let mut s = connect();
        s.write_all(&bad).unwrap();
        assert!(
            closed(&mut s),
            "the box answered {bad:02x?} instead of closing"
        );
        // The other connection is unaffected.
        good.write_all(&api_versions(3)).unwrap();
        let body = answer(&mut good).expect("an ApiVersions answer");
        assert_eq!(&body[..4], &7i32.to_be_bytes(), "correlation id");
    }
    // An ApiVersions version the box does not know: version 0, UNSUPPORTED_VERSION (35), and
    // the ranges to negotiate down with.
    let mut s = connect();
    s.write_all(&api_versions(9)).unwrap();
    let body = answer(&mut s).expect("an answer to ApiVersions v9");
    assert_eq!(&body[4..6], &35i16.to_be_bytes(), "{body:02x?}");
    assert!(body.len() > 12, "the ranges are listed: {body:02x?}");

    let log = wait_until(
        Duration::from_secs(10),
        || box_.stderr_text(),
        |log| log.matches("Closed a Kafka client connection").count() >= 3,
    )
    .expect("three closed connections are logged");
    assert!(
        log.contains("larger than `kafka.max_request_bytes`"),
        "{log}"
    );
    assert!(log.contains("unknown API key 9999"), "{log}");
}

#[test]
fn an_idempotent_producer_writes_every_record_once_across_a_kill_9_of_the_box() {
    let Some(py) = python::python("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut box_ = start(dir.path(), NO_PLUGINS);
    const COUNT: usize = 5000;
    // confluent-kafka with enable.idempotence and acks=all (tests/peers/kafka_produce.py).
    let producer = Command::new(&py)
        .arg(python::peer_script("kafka_produce.py"))
        .args(["--brokers", &box_.kafka_brokers(), "--topic", "idem"])
        .args(["--count", &COUNT.to_string(), "--rate", "2000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let next = |box_: &Outpost| {
        box_.get("/topics")["topics"]
            .as_array()
            .and_then(|all| all.iter().find(|t| t["name"] == "idem").cloned())
            .and_then(|t| t["next_offset"].as_u64())
            .unwrap_or(0)
    };
    let midway = wait_until(Duration::from_secs(60), || next(&box_), |n| *n >= 200);
    assert!(midway.is_ok(), "the producer got going: {midway:?}");
    box_.kill9();
    let at_kill = midway.unwrap();
    assert!(
        at_kill < COUNT as u64,
        "the box was killed mid-stream ({at_kill} stored)"
    );
    box_.restart();
    let out = producer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("DONE {COUNT}")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = box_.records("idem");
    let mut keys: Vec<&str> = records.iter().map(|r| r["key"].as_str().unwrap()).collect();
    let total = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), total, "a record was written twice");
    assert_eq!(total, COUNT, "every acknowledged record is there once");
    assert!(
        records[0]["headers"]["kafka-producer"]
            .as_str()
            .is_some_and(|h| h.ends_with(".0.0")),
        "{}",
        records[0]
    );
}

/// A connection that speaks the Kafka protocol request by request (the codec's client half).
struct RawKafka {
    stream: TcpStream,
    correlation: i32,
}

impl RawKafka {
    fn connect(port: u16) -> RawKafka {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawKafka {
            stream,
            correlation: 0,
        }
    }

    /// Sends `request` at `version` and decodes the answer.
    fn call<Req>(&mut self, request: &Req, version: i16) -> Req::Response
    where
        Req: kafka_protocol::protocol::Request + kafka_protocol::protocol::Encodable,
        Req::Response: kafka_protocol::protocol::Decodable,
    {
        use kafka_protocol::messages::{ApiKey, RequestHeader};
        use kafka_protocol::protocol::{Decodable, Encodable};
        self.correlation += 1;
        let api = ApiKey::try_from(Req::KEY).unwrap();
        let mut header = RequestHeader::default();
        header.request_api_key = Req::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(kafka_protocol::protocol::StrBytes::from_static_str("raw"));
        let mut body = bytes::BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        self.stream
            .write_all(&(body.len() as i32).to_be_bytes())
            .unwrap();
        self.stream.write_all(&body).unwrap();
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).unwrap();
        let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut answer).unwrap();
        let mut answer = bytes::Bytes::from(answer);
        let header = kafka_protocol::messages::ResponseHeader::decode(
            &mut answer,
            api.response_header_version(version),
        )
        .unwrap();
        assert_eq!(header.correlation_id, self.correlation);
        Req::Response::decode(&mut answer, version).unwrap()
    }
}

/// A Produce request (v9) of one idempotent batch of `count` records to partition 0.
fn idempotent_produce(
    topic: &str,
    producer_id: i64,
    first_seq: i32,
    count: i32,
) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: first_seq + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(bytes::Bytes::from(format!("seq-{}", first_seq + i))),
            headers: Default::default(),
        })
        .collect();
    let mut batch = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    let mut partition = PartitionProduceData::default();
    partition.index = 0;
    partition.records = Some(batch.freeze());
    let mut data = TopicProduceData::default();
    data.name = kafka_protocol::messages::TopicName(
        kafka_protocol::protocol::StrBytes::from_string(topic.to_string()),
    );
    data.partition_data = vec![partition];
    let mut request = kafka_protocol::messages::ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = 30_000;
    request.topic_data = vec![data];
    request
}

#[test]
fn a_retried_idempotent_batch_is_answered_with_its_first_offset_and_stored_once_even_after_a_restart(
) {
    use kafka_protocol::messages::InitProducerIdRequest;
    let dir = tempfile::tempdir().unwrap();
    let mut box_ = start(dir.path(), NO_PLUGINS);
    let mut k = RawKafka::connect(box_.kafka_port);
    let mut init = InitProducerIdRequest::default();
    init.transactional_id = None;
    init.transaction_timeout_ms = 60_000;
    init.producer_id = kafka_protocol::messages::ProducerId(-1);
    init.producer_epoch = -1;
    let id = k.call(&init, 4);
    assert_eq!(id.error_code, 0);
    let pid = id.producer_id.0;
    assert!(pid >= 0);
    let produce = |k: &mut RawKafka, first: i32, count: i32| {
        let answer = k.call(&idempotent_produce("retries", pid, first, count), 9);
        let p = &answer.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    assert_eq!(produce(&mut k, 0, 3), (0, 0));
    assert_eq!(produce(&mut k, 3, 2), (0, 3));
    // The client did not get the last answer and sends the batch again: the same offset.
    assert_eq!(produce(&mut k, 3, 2), (0, 3));

    // A kill -9 loses the box's memory of the producer; the log still knows.
    box_.restart();
    let mut k = RawKafka::connect(box_.kafka_port);
    assert_eq!(produce(&mut k, 3, 2), (0, 3), "a retry after the restart");
    assert_eq!(produce(&mut k, 5, 1), (0, 5));
    // A gap in the sequence is refused: OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    assert_eq!(produce(&mut k, 9, 1).0, 45);
    let values: Vec<String> = box_
        .records("retries")
        .iter()
        .map(|r| {
            r["value"]
                .as_str()
                .map_or_else(|| r["value"].to_string(), str::to_string)
        })
        .collect();
    assert_eq!(values.len(), 6, "{values:?}");
    // A second producer gets another id, also after the restart.
    let other = k.call(&init, 4);
    assert_ne!(other.producer_id.0, pid);
}

#[test]
fn kafka_python_a_second_implementation_of_the_protocol_produces_and_consumes_in_a_group() {
    let Some(py) = python::python("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let out = Command::new(&py)
        .arg(python::peer_script("kafka_python_client.py"))
        .args(["--brokers", &box_.kafka_brokers(), "--topic", "pure.python"])
        .args(["--count", "25", "--group", "kp"])
        .output()
        .unwrap();
    let read = records_printed(&out, "DONE 25");
    for (i, r) in read.iter().enumerate() {
        assert_eq!(r["offset"], i as u64);
        assert_eq!(r["value"], format!("v{i}"));
    }
    assert_eq!(box_.records("pure.python").len(), 25);
}

#[test]
fn the_admin_client_creates_topics_reads_their_configs_and_lists_groups() {
    let Some(py) = python::python("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let brokers = box_.kafka_brokers();
    // A group with a committed offset, for the listing.
    kafka_client(
        &py,
        &[
            "produce",
            "--brokers",
            &brokers,
            "--topic",
            "audit.src",
            "--count",
            "2",
        ],
    );
    kafka_client(
        &py,
        &[
            "consume",
            "--brokers",
            &brokers,
            "--topic",
            "audit.src",
            "--group",
            "auditors",
            "--max",
            "2",
        ],
    );
    let lines = kafka_client(
        &py,
        &["admin", "--brokers", &brokers, "--topic", "made.by.admin"],
    );
    let report: Value =
        serde_json::from_str(lines.iter().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(report["created"], json!(["made.by.admin"]), "{report}");
    assert_eq!(
        report["refused"],
        json!([
            ["made.by.admin.wide", "INVALID_PARTITIONS"],
            ["made.by.admin", "TOPIC_ALREADY_EXISTS"]
        ]),
        "{report}"
    );
    assert_eq!(report["configs"]["cleanup.policy"], "delete", "{report}");
    assert!(report["configs"]["retention.ms"].is_string(), "{report}");
    assert_eq!(report["groups"], json!(["auditors"]), "{report}");
    assert!(
        report["described"]["auditors"]
            .as_str()
            .is_some_and(|s| s.contains("EMPTY")),
        "{report}"
    );
    assert_eq!(report["deleted"], "TOPIC_DELETION_DISABLED", "{report}");
    assert!(box_.get("/topics")["topics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "made.by.admin"));
}

#[test]
fn the_kafka_benchmark_runs_short_and_reports_every_figure() {
    let Some(py) = python::python("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.args([
        "bench",
        "kafka",
        "--records",
        "3000",
        "--repeats",
        "1",
        "--json",
    ])
    .arg("--python")
    .arg(&py)
    .arg("--dir")
    .arg(dir.path())
    .env_remove("OUTPOST_TANSU");
    if let Some(tansu) = crate::common::kafka::tansu_binary("kafka bench") {
        cmd.arg("--tansu").arg(tansu);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "outpost bench kafka failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    eprintln!("bench report: {report}");
    for figure in [
        "median_outpost_records_per_sec",
        "median_server_cpu_us_per_record",
        "median_records_per_fsync",
        "median_fetch_records_per_sec",
    ] {
        assert!(report[figure].as_f64().unwrap() > 0.0, "{figure}: {report}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// kafkajs's `node_modules` (tests/run.sh installs it), or `None` (printed) when missing and
/// peers are not required.
fn kafkajs(test: &str) -> Option<PathBuf> {
    match std::env::var_os("OUTPOST_NODE_MODULES").filter(|v| !v.is_empty()) {
        Some(dir) if Path::new(&dir).join("kafkajs").exists() => Some(PathBuf::from(dir)),
        _ => {
            assert!(
                std::env::var_os("OUTPOST_REQUIRE_PEERS").is_none(),
                "{test}: OUTPOST_NODE_MODULES does not hold kafkajs; tests/run.sh installs it"
            );
            eprintln!("SKIPPED {test}: kafkajs is not installed (OUTPOST_NODE_MODULES)");
            None
        }
    }
}

#[test]
fn kafkajs_a_third_implementation_of_the_protocol_produces_and_consumes_in_a_group() {
    let Some(modules) = kafkajs("kafka_listener") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path(), NO_PLUGINS);
    let out = Command::new("node")
        .arg(python::peer_script("kafkajs_client.js"))
        .args([&box_.kafka_brokers(), "from.node", "30", "signage"])
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    let read = records_printed(&out, "DONE 30");
    let mut offsets: Vec<u64> = read.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..30).collect::<Vec<u64>>());
    for r in &read {
        let i = r["offset"].as_u64().unwrap();
        assert_eq!(r["value"], format!("v{i}"));
        assert_eq!(r["n"], i.to_string());
    }
}
