//! Demo traffic end to end, against the real binary: `outpost run --simulate` fills the store
//! topics and the simulated fridge's topic, the bundled fraud-score plugin scores every payment
//! and alerts on the planted fraud (and on nothing else), verdicts reach a terminal subscribed
//! over MQTT; and `outpost simulate` against a running box prints a summary of what came back.

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{peers, python};

use outpost::simulate::generate::{Generator, Kind, Pattern};
use outpost::simulate::SimulateConfig;
use peers::{eventually, Outpost};
use python::free_port;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

/// A terminal-side MQTT subscriber (rumqttc), collecting (topic, payload) pairs.
struct Subscriber {
    received: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    client: Client,
}

impl Subscriber {
    fn start(port: u16, filter: &str) -> Subscriber {
        let mut options = MqttOptions::new(format!("test-terminal-{port}"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(10));
        let (client, mut connection) = Client::new(options, 64);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&received), Arc::clone(&stop));
        std::thread::spawn(move || {
            for event in connection.iter() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        r.lock().unwrap().push((p.topic.clone(), value));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        Subscriber {
            received,
            stop,
            client,
        }
    }

    fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect();
    }
}

const CONFIG: &str = "[simulate]\nenabled = true\npayments_per_s = 25.0\nfraud_fraction = 0.15\n\
                      seed = 7\nsummary_interval_s = 5\n";

/// The planted episodes of the box's first `horizon` payments, for the run tagged `run_tag`:
/// card id → (pattern, payments of the episode among the first `payments`, all of the
/// episode's payments).
fn planted_cards(
    run_tag: &str,
    payments: usize,
    horizon: usize,
) -> HashMap<String, (Pattern, usize, usize)> {
    let config: SimulateConfig = toml::from_str(CONFIG.trim_start_matches("[simulate]\n")).unwrap();
    let mut generator = Generator::new(config.generator_config("store-0001", run_tag.into()));
    let mut cards: HashMap<String, (Pattern, usize, usize)> = HashMap::new();
    let mut slot = 0;
    while slot < horizon {
        for message in generator.next_slot(0) {
            if let Kind::Payment {
                card_id,
                planted: Some(p),
                ..
            } = message.kind
            {
                let entry = cards.entry(card_id).or_insert((p.pattern, 0, 0));
                entry.2 += 1;
                if slot < payments {
                    entry.1 += 1;
                }
            }
        }
        slot += 1;
    }
    cards
}

#[test]
fn run_simulate_fills_store_topics_and_the_fraud_plugin_flags_only_planted_fraud() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let box_ = Outpost::start(
        &dir.path().join("data"),
        Some(&config),
        free_port(),
        free_port(),
    );
    let terminal = Subscriber::start(box_.mqtt_port, "pos/+/verdict");

    // About 12 s of traffic at 25 payments/s: every pattern is planted at least once.
    let payments = box_.wait_records("pos.payments", Duration::from_secs(90), |r| r.len() >= 300);
    assert!(payments.len() >= 300, "{} payments", payments.len());
    for topic in [
        "pos.baskets",
        "loyalty.scans",
        "cart.events",
        "recommendations",
    ] {
        let records = box_.wait_records(topic, Duration::from_secs(30), |r| r.len() >= 20);
        assert!(records.len() >= 20, "{topic}: {} records", records.len());
    }
    let fridge = box_.wait_records("sensors.fridge", Duration::from_secs(30), |r| r.len() >= 3);
    assert!(fridge.len() >= 3, "{} fridge records", fridge.len());
    let t = fridge[0]["value"]["values"]["temperature"]
        .as_f64()
        .unwrap();
    assert!((2.0..9.0).contains(&t), "{}", fridge[0]);
    assert_eq!(fridge[0]["value"]["quality"], "good", "{}", fridge[0]);

    // Every payment gets its score.
    let seen = payments.len();
    let scores = box_.wait_records("fraud.scores", Duration::from_secs(60), |r| r.len() >= seen);
    assert!(
        scores.len() >= seen,
        "{} scores for {seen} payments",
        scores.len()
    );
    let payment_ids: BTreeSet<&str> = payments
        .iter()
        .filter_map(|r| r["value"]["payment_id"].as_str())
        .collect();
    let scored_ids: BTreeSet<&str> = scores
        .iter()
        .filter_map(|r| r["value"]["payment_id"].as_str())
        .collect();
    assert!(payment_ids.is_subset(&scored_ids));

    // The planted cards, known from the seed (the payloads say nothing about them).
    // Generated well past the payments seen: alerts fetched now may be for later ones.
    // The run tag is in the payment ids: `pay-{tag}-{slot}`.
    let first_id = payments[0]["value"]["payment_id"].as_str().unwrap();
    let run_tag = first_id.split('-').nth(1).unwrap();
    let planted = planted_cards(run_tag, seen, seen + 2000);
    // The plugin appends an alert after the score of the same payment: wait until every
    // completed episode has its alert rather than read fraud.alerts at once.
    let alerts = box_.wait_records("fraud.alerts", Duration::from_secs(30), |alerts| {
        planted
            .iter()
            .filter(|(_, (_, sent, total))| sent == total)
            .all(|(card, _)| {
                alerts
                    .iter()
                    .any(|a| a["value"]["card_id"].as_str() == Some(card.as_str()))
            })
    });
    let mut best: HashMap<&str, u64> = HashMap::new();
    for a in &alerts {
        let card = a["value"]["card_id"].as_str().unwrap();
        let score = a["value"]["score"].as_u64().unwrap();
        assert!(score >= 70, "{a}");
        assert!(
            planted.contains_key(card),
            "an ordinary card raised an alert: {a}"
        );
        let slot = best.entry(card).or_default();
        *slot = (*slot).max(score);
    }
    let mut complete = HashMap::<Pattern, usize>::new();
    for (card, (pattern, sent, total)) in &planted {
        if sent == total {
            *complete.entry(*pattern).or_default() += 1;
            assert!(
                best.contains_key(card.as_str()),
                "planted {pattern:?} on {card} was not flagged"
            );
        }
    }
    for pattern in Pattern::ALL {
        assert!(
            complete.get(&pattern).is_some_and(|n| *n >= 1),
            "{complete:?}"
        );
    }

    // Verdicts reach the terminal that took the payment.
    assert!(
        eventually(Duration::from_secs(30), || terminal.received().len() >= 50),
        "{} verdicts over MQTT",
        terminal.received().len()
    );
    for (topic, value) in terminal.received() {
        let terminal_id = value["terminal_id"].as_str().unwrap();
        assert_eq!(topic, format!("pos/{terminal_id}/verdict"));
        assert!(value["score"].as_u64().is_some(), "{value}");
    }

    // The box logs what the traffic sent and got back.
    assert!(
        eventually(Duration::from_secs(20), || box_
            .stderr_text()
            .contains("Demo traffic is flowing.")),
        "no demo traffic summary in the log"
    );
}

#[test]
fn the_simulate_flag_on_the_default_config_starts_traffic_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.args([
        "run",
        "--simulate",
        "--log-level",
        "info,rumqttd=warn",
        "--data-dir",
    ])
    .arg(dir.path().join("data"))
    .args(["--listen", &format!("127.0.0.1:{http}")])
    .env("OUTPOST_MQTT_LISTEN", format!("127.0.0.1:{mqtt}"))
    .env("OUTPOST_KAFKA_LISTEN", "127.0.0.1:0");
    for var in [
        "OUTPOST_DATA_DIR",
        "OUTPOST_LISTEN",
        "OUTPOST_KAFKA_BROKERS",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    let stderr_path = dir.path().join("stderr.log");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let count = |topic: &str| -> usize {
        match peers::http_get(
            http,
            &format!("/topics/{topic}/records?offset=0&limit=1000"),
        ) {
            Some((200, page)) => page["records"].as_array().map_or(0, Vec::len),
            _ => 0,
        }
    };
    let flowing = eventually(Duration::from_secs(90), || {
        count("pos.payments") >= 10 && count("sensors.fridge") >= 2 && count("fraud.scores") >= 10
    });
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut status = None;
    eventually(Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(flowing, "no demo traffic within 90 s:\n{log}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("Demo traffic stopped."), "{log}");
    assert!(
        log.contains("The simulated fridge joins the Modbus devices."),
        "{log}"
    );
}

fn line_number(text: &str, prefix: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"));
    line[prefix.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?}: {line}"))
}

#[test]
fn simulate_command_against_a_running_box_prints_verdicts_and_flagged_fraud() {
    let dir = tempfile::tempdir().unwrap();
    let box_ = Outpost::start(&dir.path().join("data"), None, free_port(), free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args([
            "simulate",
            "--mqtt",
            &format!("127.0.0.1:{}", box_.mqtt_port),
            "--duration-s",
            "8",
            "--payments-per-s",
            "30",
            "--fraud-fraction",
            "0.2",
            "--seed",
            "3",
        ])
        .env_remove("OUTPOST_MQTT")
        .env_remove("OUTPOST_STORE_ID")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    let payments = line_number(&text, "sent:");
    assert!(payments >= 150, "{text}");
    let verdicts = line_number(&text, "verdicts received:");
    assert!(verdicts > 0, "{text}");
    assert!(
        text.contains(&format!("({payments} matched")),
        "every payment's verdict is matched: {text}"
    );
    let flagged = line_number(&text, "planted fraud flagged (score >= 70):");
    assert!(flagged >= 2, "{text}");
    assert_eq!(line_number(&text, "false alarms:"), 0, "{text}");
    assert!(
        text.contains("verdict latency (publish -> verdict): p50 "),
        "{text}"
    );
    assert!(text.contains("repeat with --seed 3"), "{text}");
    // What the command sent is in the box's log.
    assert_eq!(box_.records("pos.payments").len() as u64, payments);
}

#[test]
fn simulate_command_without_a_box_fails_with_a_clear_message() {
    let port = free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args([
            "simulate",
            "--mqtt",
            &format!("127.0.0.1:{port}"),
            "--duration-s",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach the MQTT listener at 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
}
