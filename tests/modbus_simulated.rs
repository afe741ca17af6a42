//! Outpost's Modbus source against Outpost's own simulated fridge (a real Modbus TCP server on
//! a local port, as `outpost simulate` runs it) and against hostile peers: a device that
//! accepts connections but never answers must not delay another, and a log that refuses
//! appends (disk budget) must show as backpressure with the skipped interval as a gap.

use std::time::{Duration, Instant};

use outpost::ingest::modbus::{
    self, DeviceConfig, ModbusConfig, PointConfig, RegisterKind, ValueType,
};
use outpost::kernel::{Link, Status, StatusBoard};
use outpost::log::{Log, LogConfig};
use outpost::simulate::fridge::{
    device as simulated_fridge_device, serve as serve_simulated_fridge,
};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::common::wait::wait_until_async;

async fn start_fridge() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_simulated_fridge(listener));
    addr
}

struct Running {
    _dir: tempfile::TempDir,
    log: Log,
    board: StatusBoard,
    stop: outpost::kernel::ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), modbus::ModbusError>>,
}

fn start(devices: Vec<DeviceConfig>, max_bytes: u64) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            min_free_bytes: 0,
            max_bytes,
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
    Running {
        _dir: dir,
        log,
        board,
        stop,
        task,
    }
}

impl Running {
    fn values(&self, topic: &str) -> Vec<Value> {
        let Ok(topic) = self.log.topic(topic) else {
            return Vec::new();
        };
        topic
            .read(0, 100_000, 64 << 20)
            .unwrap()
            .records
            .iter()
            .map(|r| serde_json::from_slice(&r.value).unwrap())
            .collect()
    }

    /// The device's status; a default `Starting` one until the source registered it.
    fn status(&self, device: &str) -> Status {
        let name = format!("modbus:{device}");
        self.board
            .snapshot()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| Status::starting(&name, "modbus"))
    }

    async fn wait(&self, what: &str, timeout: Duration, cond: impl Fn(&Running) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {:#?}",
                self.board.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.request();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the Modbus source stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_fridge_is_polled_into_sensor_records() {
    let addr = start_fridge().await;
    let mut device = simulated_fridge_device("fridge-sim", addr);
    device.poll_interval_ms = 100;
    let running = start(vec![device], 0);
    running
        .wait("three records", Duration::from_secs(10), |r| {
            r.values("sensors.fridge-sim").len() >= 3
        })
        .await;
    for record in running.values("sensors.fridge-sim") {
        assert_eq!(record["device"], "fridge-sim");
        assert_eq!(record["quality"], "good", "{record}");
        let values = &record["values"];
        let t = values["temperature"].as_f64().unwrap();
        assert!((3.0..8.0).contains(&t), "{record}");
        assert!(values["door_open"].is_boolean() && values["compressor"].is_boolean());
        assert!(values["energy"].as_u64().unwrap() >= 120_000);
        assert_eq!(values["setpoint"].as_f64(), Some(4.0));
        assert_eq!(record["units"]["temperature"], "°C");
    }
    let status = running.status("fridge-sim");
    assert_eq!(status.link, Link::Connected);
    assert_eq!(status.kind, "modbus");
    // Temperature and energy are adjacent input registers (one read); with the holding
    // register, the coil and the discrete input that makes four requests per poll.
    assert_eq!(
        status.details["read_plan"],
        serde_json::json!([
            "coil 0..1",
            "discrete_input 0..1",
            "holding 0..1",
            "input 0..4"
        ])
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_answers_does_not_delay_another() {
    // Accepts connections and reads requests, but never answers.
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = mute.accept().await {
            held.push(stream);
        }
    });
    let mut slow = DeviceConfig::tcp("mute", "127.0.0.1", mute_addr.port());
    slow.request_timeout_ms = 1500;
    slow.points = vec![PointConfig::new(
        "x",
        RegisterKind::Holding,
        0,
        ValueType::U16,
    )];

    let addr = start_fridge().await;
    let mut fast = simulated_fridge_device("fridge-fast", addr);
    fast.poll_interval_ms = 100;

    let started = Instant::now();
    let running = start(vec![slow, fast], 0);
    running
        .wait("ten fridge records", Duration::from_secs(10), |r| {
            r.values("sensors.fridge-fast").len() >= 10
        })
        .await;
    // Ten polls 100 ms apart take about a second; had the mute device held the fast one up,
    // they would take at least ten request timeouts (15 s). The bound leaves room for a
    // loaded CI machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    running
        .wait("the mute device retrying", Duration::from_secs(10), |r| {
            matches!(r.status("mute").link, Link::Retrying { .. })
        })
        .await;
    let Link::Retrying { last_error, .. } = running.status("mute").link else {
        unreachable!()
    };
    assert!(
        last_error.contains("no answer") && last_error.contains("1500 ms"),
        "{last_error}"
    );
    assert!(running.values("sensors.mute").is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_shows_as_backpressure_with_the_skipped_interval_as_a_gap() {
    let addr = start_fridge().await;
    let mut device = simulated_fridge_device("fridge-full", addr);
    device.poll_interval_ms = 50;
    device.backoff_initial_ms = 50;
    device.backoff_max_ms = 100;
    // Room for a handful of records only.
    let running = start(vec![device], 2_000);
    running
        .wait("backpressure", Duration::from_secs(10), |r| {
            matches!(r.status("fridge-full").link, Link::Backpressured { .. })
        })
        .await;
    let stored = running.values("sensors.fridge-full").len();
    assert!(stored >= 1, "some records fit before the budget ran out");
    running
        .wait("three refused polls", Duration::from_secs(10), |r| {
            r.status("fridge-full").details["open_gap"]["missed_polls"]
                .as_u64()
                .unwrap_or(0)
                >= 3
        })
        .await;
    let status = running.status("fridge-full");
    let Link::Backpressured { reason } = &status.link else {
        panic!("{status:#?}")
    };
    assert!(reason.contains("storage full"), "{reason}");
    let gap = &status.details["open_gap"];
    assert!(
        gap["reason"].as_str().unwrap().contains("storage full"),
        "{gap}"
    );
    assert!(gap["from_ms"].as_u64().unwrap() > 0);
    assert_eq!(status.records_stored as usize, stored);
    // Refused polls are counted, not hidden. The counter and the gap are two updates: wait for
    // the counter too.
    let refused = wait_until_async(
        Duration::from_secs(10),
        || async {
            metric_line("outpost_modbus_polls_total{device=\"fridge-full\",result=\"refused\"}")
        },
        |line| metric_value(line) >= 3.0,
    )
    .await
    .unwrap_or_else(|line| line);
    let count = metric_value(&refused);
    assert!(count >= 3.0, "{refused}");
    running.stop().await;
}

/// The line of the series `series` (name and labels) in the process's metrics, or the whole
/// rendering when it is not there yet.
fn metric_line(series: &str) -> String {
    let metrics = outpost::metrics::global().render();
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .map(str::to_string)
        .unwrap_or(metrics)
}

/// The value at the end of a metrics line; NaN when it is not one.
fn metric_value(line: &str) -> f64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Sends `GET path` with `Connection: close`; returns the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpost_run_polls_a_device_from_its_config_file_and_shows_it_in_status() {
    let fridge = start_fridge().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[edge]
data_dir = "{data}"
[http]
listen = "127.0.0.1:0"
[mqtt.broker]
listen = "127.0.0.1:{mqtt}"
[plugins]
enabled = false

[[modbus.devices]]
name = "fridge-e2e"
transport = "tcp"
host = "127.0.0.1"
port = {port}
poll_interval_ms = 100

[[modbus.devices.points]]
name = "temperature"
kind = "input"
address = 0
type = "f32"
unit = "°C"

[[modbus.devices.points]]
name = "door_open"
kind = "coil"
address = 0
"#,
        data = dir.path().join("data").display(),
        mqtt = crate::common::python::free_port(),
        port = fridge.port()
    );
    let config = outpost::config::Config::from_toml_str(&text, "e2e.toml").unwrap();
    config.validate().unwrap();
    let app = outpost::app::App::start(config).await.unwrap();
    let addr = app.local_addr();

    let deadline = Instant::now() + Duration::from_secs(15);
    let records = loop {
        let body = http_get(addr, "/topics/sensors.fridge-e2e/records?offset=0&limit=10").await;
        let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if parsed["records"].as_array().is_some_and(|r| r.len() >= 2) {
            break parsed;
        }
        assert!(Instant::now() < deadline, "no records over HTTP: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = &records["records"][0];
    assert_eq!(first["key"], "fridge-e2e");
    assert_eq!(first["value"]["quality"], "good");
    assert!(first["value"]["values"]["temperature"].is_number());
    assert!(first["value"]["values"]["door_open"].is_boolean());

    // The status counts a record after the append that made it readable: wait for the count.
    let source = wait_until_async(
        Duration::from_secs(10),
        || async {
            let topics: Value = serde_json::from_str(&http_get(addr, "/topics").await).unwrap();
            topics["sources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "modbus:fridge-e2e")
                .unwrap_or_else(|| panic!("{topics}"))
                .clone()
        },
        |s| s["records_stored"].as_u64() >= Some(2),
    )
    .await
    .unwrap_or_else(|s| s);
    assert_eq!(source["kind"], "modbus");
    assert_eq!(source["link"]["state"], "connected", "{source}");
    assert!(source["records_stored"].as_u64().unwrap() >= 2);
    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("outpost_modbus_polls_total{device=\"fridge-e2e\",result=\"good\"}"),
        "{metrics}"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_request_delays_pace_a_poll() {
    let addr = start_fridge().await;
    let mut device = simulated_fridge_device("fridge-paced", addr);
    device.poll_interval_ms = 60_000;
    device.delay_after_connect_ms = 200;
    device.delay_between_requests_ms = 150;
    let started = Instant::now();
    let running = start(vec![device], 0);
    running
        .wait("one record", Duration::from_secs(10), |r| {
            !r.values("sensors.fridge-paced").is_empty()
        })
        .await;
    // 200 ms after connecting, then four requests with three 150 ms pauses between them.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(650), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(3000), "{elapsed:?}");
    // The poll's duration is set once the poll is done, a moment after its record is stored.
    let line = wait_until_async(
        Duration::from_secs(10),
        || async { metric_line("outpost_modbus_poll_seconds{device=\"fridge-paced\"}") },
        |line| metric_value(line) >= 0.65,
    )
    .await
    .unwrap_or_else(|line| line);
    let seconds = metric_value(&line);
    assert!(seconds >= 0.65, "{line}");
    running.stop().await;
}
