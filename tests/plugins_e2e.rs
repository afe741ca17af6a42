//! End-to-end tests of the three bundled plugins (fraud-score, recommend, sensor-watch), each
//! through the real box pieces as `outpost run` starts them: the durable log, the sled state
//! store and the plugin registry (`registry::open_for_box` + `start_all`), which installs the
//! plugins EMBEDDED in the binary on first run and runs them under the real wasm host and runner.
//! Records are produced straight into the log's input topics; the tests wait until the plugin
//! has committed its input offsets (outputs are appended before that commit) and then read the
//! output topics. Restarts stop the registry and close everything, then open the same data
//! directory again: state and offsets must survive, and no input may be applied twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use outpost::bench::plugins::generate;
use outpost::config::Config;
use outpost::log::{FsyncPolicy, Log, NamedFsync, NewRecord, Record};
use outpost::plugins::host::{HEADER_PLUGIN, HEADER_SOURCE_OFFSET, HEADER_SOURCE_TOPIC};
use outpost::plugins::registry::{self, PluginRegistry, PluginState};
use outpost::state::StateStore;

const WAIT: Duration = Duration::from_secs(30);
/// A minute boundary: 2023-11-14T22:14:00Z.
const T0: u64 = 1_700_000_040_000;
const SEC: u64 = 1000;
const MIN: u64 = 60 * SEC;

/// A running box: log, state store and the plugin registry with the bundled plugins.
struct Outpost {
    log: Log,
    state: StateStore,
    registry: PluginRegistry,
}

impl Outpost {
    /// Opens (or reopens) the box in `dir` with the built-in defaults, as `outpost run` with no
    /// config file does, and starts its plugins.
    async fn open(dir: &Path) -> Outpost {
        let mut config = Config::default();
        config.edge.data_dir = dir.to_path_buf();
        config.kafka.listen = "127.0.0.1:0".into();
        // Durability of the log is not what is tested here; keep the tests quick.
        config.log.default_topic.fsync = FsyncPolicy::Named(NamedFsync::Never);
        config.log.min_free_bytes = 0;
        config.validate().unwrap();
        // A runner thread of a closed box may still be dropping its handles for a moment.
        let state = retry(|| StateStore::open(&dir.join("state")));
        let log = retry(|| Log::open(&dir.join("log"), config.log.clone()));
        let ctx = outpost::kernel::Context::new(
            dir,
            log.clone(),
            state.clone(),
            outpost::kernel::Identity::new("e1", "s1"),
            outpost::kernel::Shutdown::never(),
        );
        let registry = registry::open_for_box(&ctx, &config.plugins)
            .unwrap()
            .expect("plugins are enabled by default");
        registry.start_all().await.unwrap();
        let box_ = Outpost {
            log,
            state,
            registry,
        };
        for name in registry::BUNDLED_NAMES {
            let info = box_
                .registry
                .info(name)
                .unwrap_or_else(|| panic!("{name} is not installed"));
            assert_eq!(info.state, PluginState::Running, "{name}: {info:?}");
            assert_eq!(info.signer, "bundled", "{name}: {info:?}");
        }
        box_
    }

    /// Stops the plugins (each finishes and commits its batch) and closes the log.
    async fn close(self) {
        self.registry.stop_all().await;
        self.log.close().unwrap();
        drop(self.registry);
        drop(self.state);
    }

    fn produce(&self, topic: &str, key: &str, values: &[Value]) {
        let records = values
            .iter()
            .map(|v| NewRecord {
                key: Some(key.as_bytes().to_vec()),
                value: serde_json::to_vec(v).unwrap(),
                ..NewRecord::default()
            })
            .collect();
        self.log
            .topic_or_create(topic)
            .unwrap()
            .append(records)
            .unwrap();
    }

    /// Waits until `plugin` has committed every record of `topic` appended so far.
    async fn wait_consumed(&self, plugin: &str, topic: &str) {
        let end = self.log.topic(topic).unwrap().next_offset();
        let consumer = format!("plugin:{plugin}");
        let started = Instant::now();
        loop {
            let committed = self.state.offset(&consumer, topic).unwrap().unwrap_or(0);
            if committed >= end {
                return;
            }
            let info = self.registry.info(plugin).unwrap();
            assert_eq!(
                info.state,
                PluginState::Running,
                "{plugin} stopped before consuming {topic}: {info:?}"
            );
            assert!(
                started.elapsed() < WAIT,
                "{plugin} committed {committed} of {end} records of {topic}: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn records(&self, topic: &str) -> Vec<Record> {
        match self.log.topic(topic) {
            Ok(t) => t.read(0, 1_000_000, 1 << 30).unwrap().records,
            Err(_) => Vec::new(),
        }
    }

    fn values(&self, topic: &str) -> Vec<Value> {
        self.records(topic)
            .iter()
            .map(|r| serde_json::from_slice(&r.value).unwrap())
            .collect()
    }

    fn dead_letters(&self, plugin: &str) -> Vec<Record> {
        self.records(&format!("{plugin}.dlq"))
    }
}

fn retry<T, E: std::fmt::Debug>(mut f: impl FnMut() -> Result<T, E>) -> T {
    let started = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if started.elapsed() > Duration::from_secs(5) => panic!("{e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn header(r: &Record, name: &str) -> Option<String> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn payment(id: &str, card: &str, ts_ms: u64, amount: f64, channel: &str, kind: &str) -> Value {
    json!({
        "payment_id": id, "ts_ms": ts_ms, "store_id": "store-7", "terminal_id": "store-7-t2",
        "card_id": card, "amount": amount, "currency": "EUR", "channel": channel, "kind": kind,
    })
}

fn reasons(v: &Value) -> Vec<&str> {
    v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// fraud-score

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_score_scores_every_payment_and_alerts_only_at_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outpost::open(dir.path()).await;

    // The cloud puts a card on the blocklist first.
    ob.produce(
        "ref.blocklist",
        "card-stolen",
        &[json!({"card_id": "card-stolen", "action": "add", "reason": "reported stolen"})],
    );
    ob.wait_consumed("fraud-score", "ref.blocklist").await;

    let mut sent = Vec::new();
    // Ordinary shoppers, an hour apart.
    for (i, card) in ["card-anna", "card-ben", "card-cleo"].iter().enumerate() {
        for h in 0..3u64 {
            let id = format!("p-{card}-{h}");
            sent.push((
                *card,
                payment(
                    &id,
                    card,
                    T0 + h * 60 * MIN + i as u64,
                    20.0 + h as f64,
                    "contactless",
                    "sale",
                ),
            ));
        }
    }
    // A velocity burst: six sales a minute apart.
    for m in 0..6u64 {
        let id = format!("p-burst-{m}");
        sent.push((
            "card-burst",
            payment(
                &id,
                "card-burst",
                T0 + m * MIN,
                15.0,
                "card_present",
                "sale",
            ),
        ));
    }
    // The blocklisted card pays.
    sent.push((
        "card-stolen",
        payment(
            "p-stolen",
            "card-stolen",
            T0 + 5 * MIN,
            9.99,
            "card_not_present",
            "sale",
        ),
    ));
    for (card, value) in &sent {
        ob.produce("pos.payments", card, std::slice::from_ref(value));
    }
    ob.wait_consumed("fraud-score", "pos.payments").await;

    let scores = ob.records("fraud.scores");
    assert_eq!(scores.len(), sent.len(), "one score per payment");
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for (i, r) in scores.iter().enumerate() {
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        let id = v["payment_id"].as_str().unwrap().to_owned();
        assert_eq!(
            r.key.as_deref(),
            v["card_id"].as_str().map(str::as_bytes),
            "keyed by card"
        );
        assert_eq!(header(r, HEADER_PLUGIN).as_deref(), Some("fraud-score"));
        assert_eq!(
            header(r, HEADER_SOURCE_TOPIC).as_deref(),
            Some("pos.payments")
        );
        assert_eq!(
            header(r, HEADER_SOURCE_OFFSET),
            Some(i.to_string()),
            "scores follow the payments' order"
        );
        for field in ["ts_ms", "store_id", "terminal_id", "score", "reasons"] {
            assert!(v.get(field).is_some(), "{field} missing in {v}");
        }
        assert!(by_id.insert(id, v).is_none(), "a payment scored twice");
    }
    for (_, sent_value) in &sent {
        let id = sent_value["payment_id"].as_str().unwrap();
        let v = &by_id[id];
        assert_eq!(v["ts_ms"], sent_value["ts_ms"], "{id}");
        assert_eq!(v["terminal_id"], "store-7-t2");
    }
    for card in ["card-anna", "card-ben", "card-cleo"] {
        for h in 0..3 {
            let v = &by_id[&format!("p-{card}-{h}")];
            assert_eq!((v["score"].as_u64(), reasons(v).len()), (Some(0), 0), "{v}");
        }
    }
    for m in 0..4 {
        assert_eq!(by_id[&format!("p-burst-{m}")]["score"], 0);
    }
    // The fifth sale in ten minutes reaches the velocity limit (5): half of the 35-point weight.
    let fifth = &by_id["p-burst-4"];
    assert_eq!(reasons(fifth), ["velocity_count"]);
    assert_eq!(fifth["score"], 18);
    // The sixth: 0.5 + 0.5 × 1/5 of the weight.
    let sixth = &by_id["p-burst-5"];
    assert_eq!(reasons(sixth), ["velocity_count"]);
    assert_eq!(sixth["score"], 21);
    let stolen = &by_id["p-stolen"];
    assert_eq!(stolen["score"], 100);
    assert_eq!(reasons(stolen)[0], "blocklisted");

    // Alerts: exactly the scores at or above the threshold (70 by default), with it.
    let alerts = ob.values("fraud.alerts");
    let over: Vec<&Value> = by_id
        .values()
        .filter(|v| v["score"].as_u64().unwrap() >= 70)
        .collect();
    assert_eq!(alerts.len(), over.len(), "{alerts:?}");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["payment_id"], "p-stolen");
    assert_eq!(alerts[0]["threshold"], 70);
    assert_eq!(alerts[0]["score"], 100);
    assert!(ob.dead_letters("fraud-score").is_empty());

    // Taking the card off the blocklist makes its next payment ordinary again.
    ob.produce(
        "ref.blocklist",
        "card-stolen",
        &[json!({"card_id": "card-stolen", "action": "remove"})],
    );
    ob.wait_consumed("fraud-score", "ref.blocklist").await;
    ob.produce(
        "pos.payments",
        "card-stolen",
        &[payment(
            "p-after",
            "card-stolen",
            T0 + 3 * 60 * MIN,
            9.99,
            "card_present",
            "sale",
        )],
    );
    ob.wait_consumed("fraud-score", "pos.payments").await;
    let last = ob.values("fraud.scores").pop().unwrap();
    assert_eq!(
        (last["payment_id"].as_str(), last["score"].as_u64()),
        (Some("p-after"), Some(0))
    );
    assert_eq!(ob.values("fraud.alerts").len(), 1);
    ob.close().await;
}

/// Scores by payment id, checking each payment is scored exactly once.
fn scores_by_payment(values: &[Value]) -> BTreeMap<String, (u64, Vec<String>)> {
    let mut out = BTreeMap::new();
    for v in values {
        let id = v["payment_id"].as_str().unwrap().to_owned();
        let reasons = reasons(v).iter().map(|r| r.to_string()).collect();
        let previous = out.insert(id.clone(), (v["score"].as_u64().unwrap(), reasons));
        assert!(previous.is_none(), "payment {id} was scored twice");
    }
    out
}

async fn produce_workload(ob: &Outpost, work: &[outpost::bench::plugins::WorkRecord]) {
    for chunk in work.chunks(100) {
        for w in chunk {
            let v: Value = serde_json::from_slice(&w.value).unwrap();
            ob.produce(w.topic, std::str::from_utf8(&w.key).unwrap(), &[v]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_score_state_survives_a_restart_without_double_counting() {
    // Velocity windows, amount statistics and refund counts carry across the restart.
    // Blocklist updates go first, so topic interleaving cannot matter.
    // About ten payments per card in twenty minutes: velocity counts sit between their limit
    // and twice it, where every payment counted twice would change a score.
    let work = generate(3_000, 300, 11);
    let (blocklist, payments): (Vec<_>, Vec<_>) =
        work.into_iter().partition(|w| w.topic == "ref.blocklist");

    // Reference: one box, no restart.
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = Outpost::open(reference_dir.path()).await;
    produce_workload(&reference, &blocklist).await;
    reference
        .wait_consumed("fraud-score", "ref.blocklist")
        .await;
    produce_workload(&reference, &payments).await;
    reference.wait_consumed("fraud-score", "pos.payments").await;
    let expected = scores_by_payment(&reference.values("fraud.scores"));
    let expected_alerts = reference.values("fraud.alerts").len();
    reference.close().await;
    assert_eq!(expected.len(), payments.len());
    assert!(
        expected.values().any(|(score, _)| *score > 0),
        "the workload exercises the signals"
    );

    // The same input with a restart in the middle: stopped while the runner is busy with the
    // first half, reopened, then the second half.
    let dir = tempfile::tempdir().unwrap();
    let ob = Outpost::open(dir.path()).await;
    produce_workload(&ob, &blocklist).await;
    ob.wait_consumed("fraud-score", "ref.blocklist").await;
    let half = payments.len() / 2;
    produce_workload(&ob, &payments[..half]).await;
    ob.close().await;

    let ob = Outpost::open(dir.path()).await;
    let resumed_at = ob
        .state
        .offset("plugin:fraud-score", "pos.payments")
        .unwrap()
        .unwrap_or(0);
    assert!(resumed_at <= half as u64);
    produce_workload(&ob, &payments[half..]).await;
    ob.wait_consumed("fraud-score", "pos.payments").await;
    let got = scores_by_payment(&ob.values("fraud.scores"));
    assert_eq!(got.len(), payments.len(), "every payment scored once");
    for (id, want) in &expected {
        assert_eq!(
            got.get(id),
            Some(want),
            "payment {id} scored differently after the restart (resumed at {resumed_at})"
        );
    }
    assert_eq!(ob.values("fraud.alerts").len(), expected_alerts);
    assert!(ob.dead_letters("fraud-score").is_empty());
    ob.close().await;
}

// ---------------------------------------------------------------------------------------------
// recommend

fn basket(id: &str, member: Option<&str>, skus: &[&str], ts_ms: u64) -> Value {
    let items: Vec<Value> = skus
        .iter()
        .map(|s| json!({"sku": s, "qty": 1, "price": 2.5}))
        .collect();
    let mut v = json!({
        "basket_id": id, "ts_ms": ts_ms, "store_id": "store-7", "terminal_id": "store-7-t1",
        "items": items, "total": 2.5 * skus.len() as f64,
    });
    if let Some(m) = member {
        v["loyalty_id"] = json!(m);
    }
    v
}

fn skus_of(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_offers_in_stock_items_not_already_in_the_basket() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outpost::open(dir.path()).await;

    for (sku, on_hand) in [
        ("milk", 40.0),
        ("bread", 12.0),
        ("butter", 0.0),
        ("jam", 6.0),
        ("coffee", 9.0),
        ("tea", 3.0),
    ] {
        ob.produce(
            "inventory.updates",
            sku,
            &[json!({"ts_ms": T0, "store_id": "store-7", "sku": sku, "on_hand": on_hand})],
        );
    }
    let baskets = [
        basket("b1", Some("L-1"), &["milk", "bread", "butter"], T0 + MIN),
        basket("b2", None, &["milk", "bread"], T0 + 2 * MIN),
        basket("b3", None, &["milk", "butter"], T0 + 3 * MIN),
        basket("b4", None, &["milk", "bread", "jam"], T0 + 4 * MIN),
        basket("b5", None, &["coffee", "tea"], T0 + 5 * MIN),
        basket("b6", None, &["coffee", "milk"], T0 + 6 * MIN),
    ];
    for b in &baskets {
        ob.produce(
            "pos.baskets",
            b["basket_id"].as_str().unwrap(),
            std::slice::from_ref(b),
        );
    }
    ob.wait_consumed("recommend", "inventory.updates").await;
    ob.wait_consumed("recommend", "pos.baskets").await;
    assert!(
        ob.records("recommendations").is_empty(),
        "baskets only teach"
    );

    // A member scans their loyalty card with milk in the basket.
    ob.produce(
        "loyalty.scans",
        "L-2",
        &[
            json!({"ts_ms": T0 + 10 * MIN, "store_id": "store-7", "device_id": "kiosk-1",
                 "loyalty_id": "L-2", "basket": ["milk"]}),
        ],
    );
    ob.wait_consumed("recommend", "loyalty.scans").await;
    let recs = ob.records("recommendations");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].key.as_deref(), Some(&b"L-2"[..]));
    let rec: Value = serde_json::from_slice(&recs[0].value).unwrap();
    assert_eq!(
        (
            rec["store_id"].as_str(),
            rec["device_id"].as_str(),
            rec["loyalty_id"].as_str()
        ),
        (Some("store-7"), Some("kiosk-1"), Some("L-2"))
    );
    assert_eq!(rec["ts_ms"], T0 + 10 * MIN);
    let items = skus_of(&rec);
    assert!(!items.is_empty() && items.len() <= 5, "{rec}");
    // Bread goes with milk in three of its five baskets: the best match.
    assert_eq!(items[0], "bread", "{rec}");
    assert!(
        !items.contains(&"milk".to_owned()),
        "already in the basket: {rec}"
    );
    assert!(!items.contains(&"butter".to_owned()), "out of stock: {rec}");
    assert!(items.contains(&"jam".to_owned()), "{rec}");
    let scores: Vec<f64> = rec["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {rec}");
    assert!(scores.iter().all(|s| *s > 0.0 && *s <= 1.0), "{rec}");

    // Butter comes back in stock: now it is offered.
    ob.produce(
        "inventory.updates",
        "butter",
        &[json!({"ts_ms": T0 + 11 * MIN, "store_id": "store-7", "sku": "butter", "on_hand": 8})],
    );
    ob.wait_consumed("recommend", "inventory.updates").await;
    // A shopper's smart cart: adding coffee is answered for the session.
    ob.produce(
        "cart.events",
        "sess-9",
        &[
            json!({"ts_ms": T0 + 12 * MIN, "store_id": "store-7", "device_id": "cart-3",
                 "session_id": "sess-9", "action": "add", "sku": "coffee"}),
        ],
    );
    ob.produce(
        "loyalty.scans",
        "L-3",
        &[
            json!({"ts_ms": T0 + 13 * MIN, "store_id": "store-7", "device_id": "kiosk-1",
                 "loyalty_id": "L-3", "basket": ["milk", "bread"]}),
        ],
    );
    ob.wait_consumed("recommend", "cart.events").await;
    ob.wait_consumed("recommend", "loyalty.scans").await;
    let recs = ob.records("recommendations");
    assert_eq!(recs.len(), 3);
    let by_key: BTreeMap<Vec<u8>, Value> = recs
        .iter()
        .map(|r| {
            (
                r.key.clone().unwrap(),
                serde_json::from_slice(&r.value).unwrap(),
            )
        })
        .collect();
    let cart = &by_key[&b"sess-9".to_vec()];
    assert_eq!(cart["session_id"], "sess-9");
    assert_eq!(cart["device_id"], "cart-3");
    let cart_items = skus_of(cart);
    assert!(!cart_items.contains(&"coffee".to_owned()), "{cart}");
    assert!(cart_items.contains(&"tea".to_owned()), "{cart}");
    let second = skus_of(&by_key[&b"L-3".to_vec()]);
    assert!(
        second.contains(&"butter".to_owned()),
        "back in stock: {second:?}"
    );
    assert!(
        !second.contains(&"milk".to_owned()) && !second.contains(&"bread".to_owned()),
        "{second:?}"
    );
    assert!(ob.dead_letters("recommend").is_empty());
    ob.close().await;
}

// ---------------------------------------------------------------------------------------------
// sensor-watch

fn reading(device: &str, ts_ms: u64, temperature: f64) -> Value {
    json!({"ts_ms": ts_ms, "device": device, "values": {"temperature": temperature, "door_open": false},
           "quality": "good"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_watch_raises_and_clears_alerts_and_aggregates_each_minute_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The box starts before any sensor topic exists: `sensors.*` matches nothing yet.
    let ob = Outpost::open(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = ob.registry.info("sensor-watch").unwrap();
    assert_eq!(
        info.state,
        PluginState::Running,
        "with no matching topic: {info:?}"
    );

    // Minute 0: normal. Minute 1 on: too warm (limit 5 °C for at least a minute, bundled config).
    let first: Vec<Value> = [
        (0, 3.0),
        (20, 4.0),
        (40, 5.0),
        (60, 7.0),
        (80, 7.5),
        (100, 8.0),
    ]
    .iter()
    .map(|(s, t)| reading("fridge-1", T0 + s * SEC, *t))
    .collect();
    ob.produce("sensors.fridge", "fridge-1", &first);
    ob.wait_consumed("sensor-watch", "sensors.fridge").await;
    assert!(
        ob.records("sensor.alerts").is_empty(),
        "not warm for a minute yet"
    );
    let aggregates = ob.values("sensor.1m");
    let temperature: Vec<&Value> = aggregates
        .iter()
        .filter(|a| a["metric"] == "temperature")
        .collect();
    assert_eq!(temperature.len(), 1, "{aggregates:?}");
    assert_eq!(
        *temperature[0],
        json!({"window_start_ms": T0, "device": "fridge-1", "metric": "temperature",
               "min": 3.0, "mean": 4.0, "max": 5.0, "count": 3})
    );
    ob.close().await;

    // Restart in the middle of the warm spell and of minute 1's window.
    let ob = Outpost::open(dir.path()).await;
    let second: Vec<Value> = [(120, 7.0), (140, 6.0), (160, 5.5), (180, 4.0), (200, 3.5)]
        .iter()
        .map(|(s, t)| reading("fridge-1", T0 + s * SEC, *t))
        .collect();
    ob.produce("sensors.fridge", "fridge-1", &second);
    // A second sensor topic, created now, is picked up through the pattern.
    ob.produce(
        "sensors.freezer",
        "freezer-1",
        &[
            reading("freezer-1", T0, -2.0),
            reading("freezer-1", T0 + MIN, -3.0),
        ],
    );
    ob.wait_consumed("sensor-watch", "sensors.fridge").await;
    let started = Instant::now();
    while ob
        .state
        .offset("plugin:sensor-watch", "sensors.freezer")
        .unwrap()
        .unwrap_or(0)
        < 2
    {
        assert!(
            started.elapsed() < WAIT,
            "sensors.freezer was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let alerts: Vec<Record> = ob
        .records("sensor.alerts")
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(&b"fridge-1"[..]))
        .collect();
    let values: Vec<Value> = alerts
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect();
    assert_eq!(
        values,
        vec![
            json!({"ts_ms": T0 + 120 * SEC, "device": "fridge-1", "metric": "temperature",
                   "value": 7.0, "threshold": 5.0, "state": "raised", "class": "fridge"}),
            json!({"ts_ms": T0 + 180 * SEC, "device": "fridge-1", "metric": "temperature",
                   "value": 4.0, "threshold": 5.0, "state": "cleared", "class": "fridge"}),
        ],
        "5.5 is inside the 0.5 hysteresis band; 4.0 clears"
    );

    let temperature: Vec<Value> = ob
        .values("sensor.1m")
        .into_iter()
        .filter(|a| a["metric"] == "temperature" && a["device"] == "fridge-1")
        .collect();
    assert_eq!(
        temperature,
        vec![
            json!({"window_start_ms": T0, "device": "fridge-1", "metric": "temperature",
                   "min": 3.0, "mean": 4.0, "max": 5.0, "count": 3}),
            json!({"window_start_ms": T0 + MIN, "device": "fridge-1", "metric": "temperature",
                   "min": 7.0, "mean": 7.5, "max": 8.0, "count": 3}),
            json!({"window_start_ms": T0 + 2 * MIN, "device": "fridge-1", "metric": "temperature",
                   "min": 5.5, "mean": 6.166666666666667, "max": 7.0, "count": 3}),
        ],
        "each minute once, with every reading counted once across the restart"
    );
    let doors: Vec<Value> = ob
        .values("sensor.1m")
        .into_iter()
        .filter(|a| a["metric"] == "door_open")
        .collect();
    assert_eq!(
        doors.len(),
        4,
        "fridge-1 minutes 0–2 and freezer-1 minute 0"
    );
    assert!(doors.iter().all(|d| d["max"] == 0.0), "{doors:?}");
    let freezer: Vec<Value> = ob
        .values("sensor.1m")
        .into_iter()
        .filter(|a| a["device"] == "freezer-1" && a["metric"] == "temperature")
        .collect();
    assert_eq!(freezer.len(), 1);
    assert_eq!(
        (freezer[0]["min"].as_f64(), freezer[0]["count"].as_u64()),
        (Some(-2.0), Some(1))
    );
    // sensors.freezer is a freezer's topic, so its rule is the freezer class's (-25…-15 °C for
    // ten minutes), not the fridges' 0–5 °C: at -2 °C it is too warm, but for one minute, not
    // ten, so nothing is raised yet (with one rule for every device it was "too cold").
    let freezer_alerts: Vec<Value> = ob
        .values("sensor.alerts")
        .into_iter()
        .filter(|a| a["device"] == "freezer-1")
        .collect();
    assert!(freezer_alerts.is_empty(), "{freezer_alerts:?}");
    assert!(ob.dead_letters("sensor-watch").is_empty());
    ob.close().await;
}
