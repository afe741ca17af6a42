//! Power-cut tests: `outpost run` with its data directory on the power-cut file system
//! (`common::lazyfs`, a FUSE layer that forgets every write and directory entry not yet
//! fsynced), under acknowledged ingest over HTTP and MQTT QoS 1, cut again and again.
//!
//! What this models that `log_crash` cannot: kill -9 keeps the page cache, so every byte
//! written before the kill survives it; a power cut keeps only what fsync covered. Each cycle
//! starts the box, loads it (HTTP producers and MQTT devices publishing card payments to
//! `pos.payments`, an `always` topic the bundled fraud-score plugin reads), then at a random
//! moment kills the box with SIGKILL *and* cuts the power: the file system drops everything
//! not durable (half the cuts drop it whole, half keep a random torn part of it: sizes
//! between synced and current, sectors new, old or zero). Then, on the remounted file system:
//!
//! - the state store opens, and the fraud-score plugin's state matches its committed input
//!   offset exactly (every payment is a sale, so the `stats_n` sale counts of all its card
//!   states add up to the number of inputs it committed: state never ahead of or behind its
//!   offset), and that offset does not point past the log's end;
//! - the box starts; `pos.payments` has dense offsets from 0; every record is byte for byte
//!   (as JSON) a payment some producer sent, each once, and each producer's payments are in
//!   the order it sent them without holes; every acknowledged payment is there (an HTTP one
//!   at the offset its answer named); what an earlier cycle verified is unchanged.
//!
//! Forward cursors are consumer offsets in the same store (`state` module doc) and need a
//! cloud Kafka to move; they are not exercised here.
//!
//! `OUTPOST_POWER_CUT_CYCLES` sets the number of cycles (default 6; `tests/power-cut.sh
//! --cycles N` runs hundreds) and `OUTPOST_POWER_CUT_SEED` replays a run (the seed is printed).
//! A second test fails one fsync and one write with EIO/ENOSPC and checks what the log docs
//! promise. Without FUSE the tests skip, unless `OUTPOST_REQUIRE_PEERS` is set.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::lazyfs::{Cut, LazyFs};
use crate::common::peers::{http_get, http_produce, Outpost};
use crate::common::python::{free_port, PythonPeer};
use crate::common::wait::wait_until;
use outpost::state::StateStore;

/// The topic under load (an `always` topic that fraud-score reads).
const TOPIC: &str = "pos.payments";
/// Where MQTT devices publish it.
const MQTT_TOPIC: &str = "pos/payments";
/// fraud-score's consumer name and state namespace.
const PLUGIN_CONSUMER: &str = "plugin:fraud-score";
const PLUGIN_NAMESPACE: &str = "fraud-score";
/// Concurrent HTTP producers and MQTT devices per cycle.
const HTTP_PRODUCERS: u64 = 3;
const MQTT_DEVICES: u64 = 2;
/// A topic that acknowledges before its fsync (every 10 minutes): what a power cut may lose.
const INTERVAL_TOPIC: &str = "powercut.interval";
/// Card ids the HTTP producers spread their payments over (shared state between producers).
const HTTP_CARDS: u64 = 16;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// SplitMix64, for kill moments and cut kinds (replayable from the seed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// What producers send
// ---------------------------------------------------------------------------------------------

/// Who sent a payment: `h<cycle>-<producer>-<seq>` over HTTP, `m<cycle>-<device>-<seq>` over
/// MQTT (the payment id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PaymentId {
    mqtt: bool,
    cycle: u64,
    producer: u64,
    seq: u64,
}

impl PaymentId {
    fn parse(text: &str) -> Option<PaymentId> {
        let (mqtt, rest) = match text.as_bytes().first()? {
            b'h' => (false, &text[1..]),
            b'm' => (true, &text[1..]),
            _ => return None,
        };
        let mut parts = rest.split('-').map(|p| p.parse::<u64>().ok());
        let id = PaymentId {
            mqtt,
            cycle: parts.next()??,
            producer: parts.next()??,
            seq: parts.next()??,
        };
        parts.next().is_none().then_some(id)
    }

    fn text(&self) -> String {
        let kind = if self.mqtt { 'm' } else { 'h' };
        format!("{kind}{}-{}-{}", self.cycle, self.producer, self.seq)
    }
}

/// The MQTT payload template of a device (`{i}` is the message number, mqtt_client.py's rule).
fn mqtt_template(cycle: u64, device: u64, ts_ms: u64) -> String {
    format!(
        r#"{{"payment_id":"m{cycle}-{device}-{{i}}","ts_ms":{ts_ms},"store_id":"s1","terminal_id":"mqtt-{device}","card_id":"card-m{{i}}","amount":{{i}}.25,"currency":"EUR","channel":"contactless","kind":"sale"}}"#
    )
}

/// The exact payment `id` stands for.
fn payment(id: PaymentId, ts_ms: u64) -> Value {
    if id.mqtt {
        let text = mqtt_template(id.cycle, id.producer, ts_ms).replace("{i}", &id.seq.to_string());
        serde_json::from_str(&text).unwrap_or(Value::Null)
    } else {
        json!({
            "payment_id": id.text(),
            "ts_ms": ts_ms,
            "store_id": "s1",
            "terminal_id": format!("http-{}", id.producer),
            "card_id": format!("card-h{}", (id.producer * 7 + id.seq) % HTTP_CARDS),
            "amount": (id.seq % 97) as f64 + 0.5,
            "currency": "EUR",
            "channel": "card_present",
            "kind": "sale",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// The offsets a produce answer acknowledged, one per record.
fn answer_offsets(answer: &Value) -> Option<Vec<u64>> {
    answer["offsets"]
        .as_array()?
        .iter()
        .map(|o| o["offset"].as_u64())
        .collect()
}

/// One HTTP producer: posts batches of 1–3 payments until `stop`, the box goes away, or it
/// answers anything but 200; returns what was acknowledged, with offsets.
fn http_producer(
    port: u16,
    cycle: u64,
    producer: u64,
    ts_ms: u64,
    stop: &AtomicBool,
) -> Vec<(PaymentId, u64)> {
    let mut acked = Vec::new();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let count = 1 + (seq % 3);
        let ids: Vec<PaymentId> = (seq..seq + count)
            .map(|seq| PaymentId {
                mqtt: false,
                cycle,
                producer,
                seq,
            })
            .collect();
        let records: Vec<Value> = ids
            .iter()
            .map(|&id| {
                let value = payment(id, ts_ms);
                json!({"key": value["card_id"].clone(), "value": value})
            })
            .collect();
        let body = json!({ "records": records }).to_string();
        match http_produce(port, TOPIC, &body) {
            Some((200, answer)) => match answer_offsets(&answer) {
                Some(offsets) if offsets.len() == ids.len() => {
                    acked.extend(ids.into_iter().zip(offsets));
                }
                _ => panic!("a produce answer without one offset per record: {answer}"),
            },
            _ => break,
        }
        seq += count;
    }
    acked
}

/// What one cycle's load acknowledged.
#[derive(Default)]
struct Acks {
    http: Vec<(PaymentId, u64)>,
    mqtt: Vec<PaymentId>,
}

/// Runs the HTTP producers and MQTT devices against `o` for `load` and then kills the box
/// (SIGKILL) while they are still sending; returns what was acknowledged before the kill.
fn load_then_kill(
    o: &mut Outpost,
    python: &PathBuf,
    cycle: u64,
    ts_ms: u64,
    load: Duration,
) -> Acks {
    let stop = Arc::new(AtomicBool::new(false));
    let http_port = o.http_port;
    let producers: Vec<_> = (0..HTTP_PRODUCERS)
        .map(|producer| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || http_producer(http_port, cycle, producer, ts_ms, &stop))
        })
        .collect();
    let mqtt_port = o.mqtt_port.to_string();
    let mut devices: Vec<PythonPeer> = (0..MQTT_DEVICES)
        .map(|device| {
            PythonPeer::start(
                python,
                "mqtt_client.py",
                &[
                    "publish",
                    "--port",
                    &mqtt_port,
                    "--qos",
                    "1",
                    "--client-id",
                    &format!("power-cut-{cycle}-{device}"),
                    "--topic",
                    MQTT_TOPIC,
                    "--payload",
                    &mqtt_template(cycle, device, ts_ms),
                    "--count",
                    "1000000",
                    "--rate",
                    "400",
                ],
                "CONNECTED",
            )
        })
        .collect();
    std::thread::sleep(load);
    // The power cut: the box dies first, so every acknowledgement seen below was sent before.
    o.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acks = Acks::default();
    for p in producers {
        acks.http
            .extend(p.join().expect("an HTTP producer panicked"));
    }
    for (device, peer) in devices.iter_mut().enumerate() {
        peer.kill();
        acks.mqtt.extend(peer.lines().iter().filter_map(|line| {
            let seq = line.strip_prefix("ACK ")?.trim().parse().ok()?;
            Some(PaymentId {
                mqtt: true,
                cycle,
                producer: device as u64,
                seq,
            })
        }));
    }
    acks
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// What every later cycle must still find.
#[derive(Default)]
struct Ledger {
    /// Acknowledged payments: the offset an HTTP answer named, `None` for MQTT.
    acked: BTreeMap<PaymentId, Option<u64>>,
    /// The payment at each offset, as verified after the previous cycle.
    verified: Vec<PaymentId>,
}

/// The plugin's committed input offset and the sum of its cards' sale counts, read from the
/// state store on `dir` in process (the box is down).
fn plugin_state(dir: &Path) -> Result<(u64, u64), String> {
    let store = StateStore::open(dir).map_err(|e| format!("the state store does not open: {e}"))?;
    let offset = store
        .offset(PLUGIN_CONSUMER, TOPIC)
        .map_err(|e| format!("reading the plugin's offset: {e}"))?
        .unwrap_or(0);
    let mut sales = 0u64;
    let entries = store
        .state_iter(PLUGIN_NAMESPACE)
        .map_err(|e| format!("reading the plugin's state: {e}"))?;
    for entry in entries {
        let (key, value) = entry.map_err(|e| format!("reading the plugin's state: {e}"))?;
        if !key.starts_with(b"c/") {
            continue;
        }
        // fraud-score's card layout (plugins/fraud-score/src/card.rs): version byte at 0;
        // version 2 keeps the sales as u16 LE at 16, version 1 (fraud-score 0.1) as u32 LE.
        let n = match value.first() {
            Some(2) => value
                .get(16..18)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(|b| u32::from(u16::from_le_bytes(b))),
            _ => value
                .get(16..20)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes),
        }
        .ok_or_else(|| format!("card state {key:?} is {} bytes", value.len()))?;
        sales += u64::from(n);
    }
    Ok((offset, sales))
}

/// `next_offset` of `fraud.scores` and of `pos.payments` (`GET /topics`; 0 when absent).
fn next_offsets(o: &Outpost) -> (u64, u64) {
    let topics = http_get(o.http_port, "/topics")
        .map(|(_, v)| v)
        .unwrap_or(Value::Null);
    let next = |name: &str| {
        topics["topics"]
            .as_array()
            .and_then(|all| all.iter().find(|t| t["name"] == name))
            .and_then(|t| t["next_offset"].as_u64())
            .unwrap_or(0)
    };
    (next("fraud.scores"), next(TOPIC))
}

/// Checks `pos.payments` on the running box against everything acknowledged; returns the
/// payment at each offset. With `full` every record is read again and compared with what the
/// previous cycle verified; otherwise only the records after those (what the last cycle
/// appended) are read, and the earlier ones are taken as verified (long runs would re-read a
/// growing log every cycle; `tests/power-cut.sh` still reads it all every tenth cycle).
fn verify_log(
    o: &Outpost,
    ledger: &Ledger,
    ts_ms: u64,
    full: bool,
) -> Result<Vec<PaymentId>, String> {
    let from = if full { 0 } else { ledger.verified.len() };
    let records = o.records_from(TOPIC, from as u64);
    let mut at = ledger.verified[..from].to_vec();
    let mut next_seq: HashMap<(bool, u64, u64), u64> = HashMap::new();
    for id in &at {
        *next_seq
            .entry((id.mqtt, id.cycle, id.producer))
            .or_insert(0) = id.seq + 1;
    }
    for (i, record) in records.iter().enumerate() {
        let i = from + i;
        if record["offset"].as_u64() != Some(i as u64) {
            return Err(format!(
                "offset {} where {i} was expected",
                record["offset"]
            ));
        }
        let value = &record["value"];
        let id = value["payment_id"]
            .as_str()
            .and_then(PaymentId::parse)
            .ok_or_else(|| format!("offset {i}: a record nobody sent: {value}"))?;
        if *value != payment(id, ts_ms) {
            return Err(format!(
                "offset {i}: {} differs from what was sent: {value}",
                id.text()
            ));
        }
        let want = next_seq
            .entry((id.mqtt, id.cycle, id.producer))
            .or_insert(0);
        if id.seq != *want {
            return Err(format!(
                "offset {i}: {} where its producer's seq {} was expected (a hole, a repeat or \
                 a reordering)",
                id.text(),
                *want
            ));
        }
        *want += 1;
        at.push(id);
    }
    let position: HashMap<PaymentId, u64> = at
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i as u64))
        .collect();
    let mut lost = Vec::new();
    for (id, offset) in &ledger.acked {
        match (position.get(id), offset) {
            (None, _) => lost.push(format!("{} (acknowledged, offset {offset:?})", id.text())),
            (Some(found), Some(acked)) if found != acked => lost.push(format!(
                "{} acknowledged at offset {acked} but stored at {found}",
                id.text()
            )),
            _ => {}
        }
    }
    if !lost.is_empty() {
        return Err(format!(
            "{} acknowledged payments lost or moved (log has {} records): {}",
            lost.len(),
            at.len(),
            lost.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if at.len() < ledger.verified.len() || at[..ledger.verified.len()] != ledger.verified[..] {
        return Err(format!(
            "the {} records verified after the previous cycle changed (now {} records)",
            ledger.verified.len(),
            at.len()
        ));
    }
    Ok(at)
}

/// Waits until the box answers `GET /ready` with 200 (a build without that endpoint answers
/// 404: then `/health`, which `Outpost::start` already waited for, is what there is).
fn wait_ready(o: &Outpost) {
    let ready = wait_until(
        Duration::from_secs(120),
        || http_get(o.http_port, "/ready").map(|(code, _)| code),
        |code| matches!(code, Some(200 | 404)),
    );
    assert!(
        ready.is_ok(),
        "the box did not get ready: {ready:?}\n{}",
        o.stderr_text()
    );
}

/// A config with small segments, so that rolls (new files, directory fsyncs) happen often.
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("outpost.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nmin_free_bytes = 1_048_576\n\n[log.default_topic]\nsegment_bytes = 65_536\n\n\
             [log.topics.\"{INTERVAL_TOPIC}\"]\nfsync = {{ interval_ms = 600_000 }}\n"
        ),
    )
    .expect("write the config");
    path
}

/// The mount and the box, set up for `test`; `None` when FUSE is not usable (skip).
struct Rig {
    python: PathBuf,
    fs: LazyFs,
    data_dir: PathBuf,
    config: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Rig {
    fn new(test: &str) -> Option<Rig> {
        let python = LazyFs::available(test)?;
        let tmp = tempfile::tempdir().expect("a temp dir");
        let backing = tmp.path().join("disk");
        let mount = tmp.path().join("mnt");
        std::fs::create_dir_all(&backing).expect("backing dir");
        std::fs::create_dir_all(&mount).expect("mount dir");
        let fs = match LazyFs::mount(&python, &backing, &mount) {
            Ok(fs) => fs,
            Err(e) if std::env::var_os("OUTPOST_REQUIRE_PEERS").is_some_and(|v| !v.is_empty()) => {
                panic!("{test}: OUTPOST_REQUIRE_PEERS is set but FUSE does not mount: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: FUSE does not mount here: {e}");
                return None;
            }
        };
        let config = write_config(tmp.path());
        Some(Rig {
            python,
            data_dir: mount.join("data"),
            fs,
            config,
            _tmp: tmp,
        })
    }
}

#[test]
fn acknowledged_records_survive_hundreds_of_power_cuts() {
    let test = "log_power_cut::acknowledged_records_survive_hundreds_of_power_cuts";
    let Some(mut rig) = Rig::new(test) else {
        return;
    };
    let cycles = env_u64("OUTPOST_POWER_CUT_CYCLES").unwrap_or(6);
    let seed = env_u64("OUTPOST_POWER_CUT_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let ts_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    eprintln!("{test}: {cycles} cycles, OUTPOST_POWER_CUT_SEED={seed}");
    let mut rng = Rng(seed);
    let mut ledger = Ledger::default();
    let (mut http_acks, mut mqtt_acks, mut torn_cuts) = (0usize, 0usize, 0);
    let (mut lazyfs_fsyncs, mut state_cycles, mut max_plugin_offset) = (0u64, 0, 0u64);
    let (http_port, mqtt_port) = (free_port(), free_port());
    let started = Instant::now();
    let mut o = Outpost::start(&rig.data_dir, Some(&rig.config), http_port, mqtt_port);
    for cycle in 0..cycles {
        let context =
            format!("cycle {cycle} of {cycles} (replay with OUTPOST_POWER_CUT_SEED={seed})");
        wait_ready(&o);
        // One cycle in three first lets the plugin catch up with the log (so its state has
        // been flushed and the state check has something to compare); one in eight cuts the
        // power right after start-up (recovery and the plugin's catch-up); the others after
        // 0.1–2.5 s of load.
        if rng.below(3) == 0 {
            let _ = wait_until(
                Duration::from_secs(60),
                || next_offsets(&o),
                |(scores, payments)| scores >= payments,
            );
        }
        let load = match rng.below(8) {
            0 => Duration::ZERO,
            _ => Duration::from_millis(100 + rng.below(2400)),
        };
        let acks = load_then_kill(&mut o, &rig.python, cycle, ts_ms, load);
        http_acks += acks.http.len();
        mqtt_acks += acks.mqtt.len();
        for (id, offset) in acks.http {
            ledger.acked.insert(id, Some(offset));
        }
        for id in acks.mqtt {
            ledger.acked.insert(id, None);
        }
        let cut = if rng.below(2) == 0 {
            Cut::Drop
        } else {
            torn_cuts += 1;
            Cut::Torn(rng.below(u64::MAX))
        };
        let dropped = rig
            .fs
            .crash(cut)
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        lazyfs_fsyncs += rig.fs.stat("fsyncs").unwrap_or(0);
        rig.fs
            .remount()
            .unwrap_or_else(|e| panic!("{context}: remounting: {e}"));

        // The state store, as the power cut left it, before the box touches it.
        let (plugin_offset, sales) =
            plugin_state(&rig.data_dir.join("state")).unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!(
            sales, plugin_offset,
            "{context}: fraud-score's state counts {sales} sales but its committed offset on \
             {TOPIC} is {plugin_offset}: state and offset are from different commits"
        );

        o.restart();
        wait_ready(&o);
        let full = cycles <= 20 || cycle % 10 == 9 || cycle + 1 == cycles;
        let at = verify_log(&o, &ledger, ts_ms, full).unwrap_or_else(|e| panic!("{context}: {e}"));
        assert!(
            plugin_offset <= at.len() as u64,
            "{context}: fraud-score committed offset {plugin_offset} on {TOPIC}, past the \
             log's end {}",
            at.len()
        );
        state_cycles += usize::from(plugin_offset > 0);
        max_plugin_offset = max_plugin_offset.max(plugin_offset);
        eprintln!(
            "{context}: {cut:?} after {load:?}: {dropped}; {} records, plugin at {plugin_offset}",
            at.len()
        );
        ledger.verified = at;
    }
    o.terminate();
    eprintln!(
        "POWER-CUT RESULT: {cycles} cycles ({torn_cuts} torn), {http_acks} acknowledged HTTP \
         records, {mqtt_acks} acknowledged MQTT records, {} records in the log, losses: 0; \
         plugin state matched a non-zero committed offset in {state_cycles} cycles (up to \
         {max_plugin_offset}); {lazyfs_fsyncs} fsyncs seen by the file system; in {:.0} s \
         (seed {seed})",
        ledger.verified.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        http_acks + mqtt_acks > 0,
        "nothing was acknowledged in {cycles} cycles: the harness tested nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Injected I/O errors
// ---------------------------------------------------------------------------------------------

/// Produces `count` payments (one per request) to `topic`; the acknowledged offsets.
fn produce_some(
    port: u16,
    topic: &str,
    from: u64,
    count: u64,
    ts_ms: u64,
) -> Vec<(PaymentId, u64)> {
    (from..from + count)
        .map(|seq| {
            let id = PaymentId {
                mqtt: false,
                cycle: 0,
                producer: 0,
                seq,
            };
            let value = payment(id, ts_ms);
            let body = json!({"records": [{"key": value["card_id"].clone(), "value": value}]});
            match http_produce(port, topic, &body.to_string()) {
                Some((200, answer)) => {
                    let offsets = answer_offsets(&answer).unwrap_or_default();
                    (id, offsets.first().copied().unwrap_or(u64::MAX))
                }
                other => panic!("producing to {topic} failed: {other:?}"),
            }
        })
        .collect()
}

/// The payment ids of every record of `topic`.
fn stored_ids(o: &Outpost, topic: &str) -> Vec<PaymentId> {
    o.records(topic)
        .iter()
        .filter_map(|r| r["value"]["payment_id"].as_str().and_then(PaymentId::parse))
        .collect()
}

#[test]
fn a_failed_fsync_or_write_loses_nothing_acknowledged_and_the_box_keeps_answering() {
    let test = "log_power_cut::a_failed_fsync_or_write_loses_nothing_acknowledged_and_the_box_keeps_answering";
    let Some(mut rig) = Rig::new(test) else {
        return;
    };
    let ts_ms = 1_700_000_000_000;
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut o = Outpost::start(&rig.data_dir, Some(&rig.config), http_port, mqtt_port);
    wait_ready(&o);
    let body = |seq: u64| {
        let value = payment(
            PaymentId {
                mqtt: false,
                cycle: 0,
                producer: 0,
                seq,
            },
            ts_ms,
        );
        json!({"records": [{"value": value}]}).to_string()
    };

    // fsync: EIO on the next fdatasync of the topic's segment. The append it covered is not
    // acknowledged; the topic refuses writes from then on (poisoned), reads go on, and the
    // box and its other topics keep answering.
    let fsync_topic = "faults.fsync";
    let before = produce_some(http_port, fsync_topic, 0, 5, ts_ms);
    rig.fs
        .fail("fsync", &format!("data/log/{fsync_topic}/*.log"), "EIO", 1)
        .expect("arm the fsync fault");
    let failed = http_produce(http_port, fsync_topic, &body(5));
    assert!(
        matches!(failed, Some((code, _)) if code >= 500),
        "an append whose fsync failed was answered {failed:?}"
    );
    assert_eq!(rig.fs.stat("faults_hit"), Some(1), "the fault was not hit");
    let after = http_produce(http_port, fsync_topic, &body(6));
    assert!(
        matches!(after, Some((code, _)) if code >= 500),
        "the topic accepted an append after a failed fsync: {after:?}"
    );
    assert!(matches!(http_get(http_port, "/health"), Some((200, _))));
    let other = produce_some(http_port, "faults.other", 0, 3, ts_ms);
    let stored = stored_ids(&o, fsync_topic);
    for (id, offset) in &before {
        assert_eq!(
            stored.get(*offset as usize),
            Some(id),
            "acknowledged {} is not readable at {offset} after the failed fsync",
            id.text()
        );
    }

    // write: ENOSPC on the next write of another topic's segment. Whatever the log answers
    // (507 and resume, or poison), that append is not acknowledged and nothing before it is
    // lost; the box keeps answering.
    let write_topic = "faults.write";
    let before_write = produce_some(http_port, write_topic, 0, 5, ts_ms);
    rig.fs
        .fail(
            "write",
            &format!("data/log/{write_topic}/*.log"),
            "ENOSPC",
            1,
        )
        .expect("arm the write fault");
    let failed = http_produce(http_port, write_topic, &body(5));
    assert!(
        matches!(failed, Some((code, _)) if code != 200),
        "an append whose write failed with ENOSPC was answered {failed:?}"
    );
    assert!(matches!(http_get(http_port, "/health"), Some((200, _))));

    // Then the power goes: acknowledged records of all three topics survive, and after the
    // restart both faulted topics take appends again.
    o.kill9();
    rig.fs.crash(Cut::Drop).expect("crash");
    rig.fs.remount().expect("remount");
    o.restart();
    wait_ready(&o);
    for (topic, acked) in [
        (fsync_topic, &before),
        ("faults.other", &other),
        (write_topic, &before_write),
    ] {
        let stored = stored_ids(&o, topic);
        for (id, offset) in acked {
            assert_eq!(
                stored.get(*offset as usize),
                Some(id),
                "{topic}: acknowledged {} is not at {offset} after the power cut: {stored:?}",
                id.text()
            );
        }
        let sent: Vec<PaymentId> = (0..7)
            .map(|seq| PaymentId {
                mqtt: false,
                cycle: 0,
                producer: 0,
                seq,
            })
            .collect();
        assert!(
            stored.iter().all(|id| sent.contains(id)),
            "{topic}: a record nobody sent: {stored:?}"
        );
        let again = produce_some(http_port, topic, 100, 1, ts_ms);
        assert_eq!(again.len(), 1);
    }
    o.terminate();
}

/// The model has teeth: an `interval_ms` topic acknowledges an append after its write and
/// before its fsync (as its docs say), so kill -9 keeps those records and a power cut may not.
/// Here the cut comes long before the topic's first fsync: what it acknowledged is gone.
#[test]
fn a_power_cut_drops_what_an_interval_topic_acknowledged_before_its_fsync() {
    let test =
        "log_power_cut::a_power_cut_drops_what_an_interval_topic_acknowledged_before_its_fsync";
    let Some(mut rig) = Rig::new(test) else {
        return;
    };
    let ts_ms = 1_700_000_000_000;
    let mut o = Outpost::start(&rig.data_dir, Some(&rig.config), free_port(), free_port());
    wait_ready(&o);
    let acked = produce_some(o.http_port, INTERVAL_TOPIC, 0, 20, ts_ms);
    assert_eq!(stored_ids(&o, INTERVAL_TOPIC).len(), acked.len());
    o.kill9();
    rig.fs.crash(Cut::Drop).expect("crash");
    rig.fs.remount().expect("remount");
    o.restart();
    wait_ready(&o);
    let stored = stored_ids(&o, INTERVAL_TOPIC);
    assert!(
        stored.len() < acked.len(),
        "all {} records acknowledged before the first fsync survived a power cut: the file \
         system did not drop unsynced writes",
        acked.len()
    );
    o.terminate();
}

#[test]
fn payment_ids_name_their_producer_and_payloads_are_deterministic() {
    let id = PaymentId {
        mqtt: true,
        cycle: 3,
        producer: 1,
        seq: 42,
    };
    assert_eq!(PaymentId::parse(&id.text()), Some(id));
    assert_eq!(PaymentId::parse("x1-2-3"), None);
    assert_eq!(PaymentId::parse("h1-2"), None);
    let value = payment(id, 5);
    assert_eq!(value["payment_id"], "m3-1-42");
    assert_eq!(value["amount"], 42.25);
    let http = PaymentId { mqtt: false, ..id };
    assert_eq!(payment(http, 5), payment(http, 5));
    assert_eq!(payment(http, 5)["payment_id"], "h3-1-42");
}
