//! `outpost bench mqtt`: MQTT ingest through the embedded broker, measured from a separate
//! process, as a device fleet would see it.
//!
//! # What is measured
//! The benchmark starts `outpost run` as a child process (this binary, a fresh data directory
//! under `--dir`, free ports; or uses a running box given with `--target`) and connects
//! `--clients` MQTT clients (rumqttc, MQTT 3.1.1) to its device listener.
//!
//! - **ingest** (default): each client publishes its share of `--messages` QoS 1 messages of
//!   `--payload-bytes` (a payment that meets the `pos.payments` contract, padded with an extra
//!   field) to `--topic` (default `pos/payments`, an `always` topic: acknowledged
//!   only after the fsync that covers it), keeping up to `--inflight` unacknowledged. Reported:
//!   acknowledged messages per second over the whole run, and the latency from writing a
//!   PUBLISH to receiving its PUBACK (p50, p99, max) — i.e. publish-to-durable, since the
//!   listener forwards a publish to the broker only after its append returned. Afterwards the
//!   topic's record count is checked against the messages sent.
//! - **round trip** (`--round-trip-rate N`): one client publishes contract-shaped payments at
//!   N per second for `--seconds` while another subscribes to `pos/+/verdict`; the bundled
//!   fraud-score plugin scores each payment and the MQTT sink publishes the verdict. Reported:
//!   verdicts received and the latency from publishing a payment to receiving its verdict,
//!   after `--warmup-s` seconds of payments at the same rate that are not counted (the child
//!   box is used only once every bundled plugin is compiled and running).
//!   The baseline, measured in the same run on the same disk: a thread appends 4 KiB and
//!   calls `fdatasync` every 10 ms in `--dir`; its p50/p99 are printed next to the round trip,
//!   since at least one fsync (the payment's) is on the path and this VM's fsync latency
//!   swings tenfold with other load.
//!
//! The child box runs on the embedded defaults (bundled plugins only for the round trip);
//! it is stopped with SIGTERM at the end and its data directory removed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rumqttc::{Event, MqttOptions, Outgoing, Packet, QoS};

/// Arguments of `outpost bench mqtt`.
#[derive(Debug, clap::Args)]
pub struct MqttBenchArgs {
    /// Messages to publish in the ingest run (split across the clients).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// MQTT client connections publishing at once.
    #[arg(long, default_value_t = 8)]
    pub clients: u16,
    /// Unacknowledged QoS 1 publishes per client, at most.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Payload size of each message, in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// The device topic to publish to.
    #[arg(long, default_value = "pos/payments")]
    pub topic: String,
    /// Measure the round trip payment → fraud-score → verdict at this many payments/s instead.
    #[arg(long, value_name = "PER_SECOND")]
    pub round_trip_rate: Option<u32>,
    /// Payments sent at the same rate before the measured ones, in seconds; their verdicts
    /// are not counted (a fresh box's caches and files warm up meanwhile).
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    /// Length of the round-trip run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Use a running box: its MQTT listener `HOST:PORT` (and `--target-http` for the check).
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// The running box's HTTP API `HOST:PORT` (with `--target`).
    #[arg(long, value_name = "HOST:PORT")]
    pub target_http: Option<String>,
    /// Where the child box keeps its data (a fresh directory is made inside; use the data
    /// disk to measure its fsyncs).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// Errors of this benchmark that are the user's (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum MqttBenchError {
    /// A command-line value makes no sense.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// The box under test: a child process, or a running box.
struct Target {
    mqtt: (String, u16),
    http: Option<String>,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child process; no memory is involved.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_get(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from {addr}"))?;
    if !head.contains(" 200 ") {
        bail!("GET {path}: {head}");
    }
    Ok(serde_json::from_str(body)?)
}

fn start_box(args: &MqttBenchArgs, plugins: bool) -> anyhow::Result<Target> {
    if let Some(target) = &args.target {
        let (host, port) = target
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
            .ok_or_else(|| {
                MqttBenchError::InvalidArgument(format!("--target {target:?} is not HOST:PORT"))
            })?;
        return Ok(Target {
            mqtt: (host, port),
            http: args.target_http.clone(),
            child: None,
            dir: None,
        });
    }
    let dir = args
        .dir
        .join(format!("outpost-bench-mqtt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("outpost.toml");
    let plugins_section = if plugins {
        ""
    } else {
        "[plugins]\nenabled = false\n"
    };
    std::fs::write(&config, plugins_section)?;
    let (http_port, mqtt_port) = (free_port()?, free_port()?);
    let http = format!("127.0.0.1:{http_port}");
    let child = Command::new(std::env::current_exe()?)
        .args([
            "run",
            "--log-level",
            &crate::app::default_log_filter("warn"),
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--listen")
        .arg(&http)
        .env("OUTPOST_MQTT_LISTEN", format!("127.0.0.1:{mqtt_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `outpost run`")?;
    let target = Target {
        mqtt: ("127.0.0.1".into(), mqtt_port),
        http: Some(http.clone()),
        child: Some(child),
        dir: Some(dir),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listener_up = http_get(&http, "/topics").ok().is_some_and(|t| {
            t["sources"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"] == "mqtt:listener" && s["link"]["state"] == "connected")
            })
        });
        // The round trip needs fraud-score running, and every bundled plugin compiled (they
        // compile at start, which takes the CPU for a few seconds).
        let plugins_up = !plugins
            || http_get(&http, "/plugins").ok().is_some_and(|p| {
                p["plugins"].as_array().is_some_and(|list| {
                    list.iter().any(|p| p["name"] == "fraud-score")
                        && list.iter().all(|p| p["state"] == "running")
                })
            });
        if listener_up && plugins_up {
            return Ok(target);
        }
        if Instant::now() > deadline {
            bail!("the box did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A thread that appends 4 KiB and fdatasyncs every 10 ms, recording each fsync's latency.
struct FsyncProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Duration>>,
    path: PathBuf,
}

impl FsyncProbe {
    fn start(dir: &std::path::Path) -> anyhow::Result<FsyncProbe> {
        let path = dir.join(format!("outpost-bench-fsync-{}", std::process::id()));
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let block = [0x5au8; 4096];
            let mut samples = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if file.write_all(&block).is_err() {
                    break;
                }
                let started = Instant::now();
                if file.sync_data().is_err() {
                    break;
                }
                samples.push(started.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        Ok(FsyncProbe { stop, thread, path })
    }

    /// Stops the thread and returns the sorted latencies.
    fn finish(self) -> Vec<Duration> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut samples = self.thread.join().unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        samples.sort();
        samples
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn options(target: &Target, id: &str, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, target.mqtt.0.clone(), target.mqtt.1);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(inflight.max(1));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// One ingest client: publishes `count` messages, returns publish→PUBACK latencies.
async fn ingest_client(
    target_opts: MqttOptions,
    topic: String,
    count: u64,
    payload: Vec<u8>,
    inflight: u16,
) -> anyhow::Result<Vec<Duration>> {
    let (client, mut eventloop) =
        crate::mqtt_client::connect(target_opts, usize::from(inflight) * 2);
    let publisher = tokio::spawn(async move {
        for _ in 0..count {
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .await?;
        }
        Ok::<_, rumqttc::ClientError>(client)
    });
    let mut sent: HashMap<u16, Vec<Instant>> = HashMap::new();
    let mut latencies = Vec::with_capacity(count as usize);
    while (latencies.len() as u64) < count {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                sent.entry(pkid).or_default().push(Instant::now())
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(times) = sent.get_mut(&ack.pkid) {
                    if !times.is_empty() {
                        latencies.push(times.remove(0).elapsed());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => bail!("a bench client lost its connection: {e}"),
        }
    }
    let client = publisher.await??;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    Ok(latencies)
}

fn check_args(args: &MqttBenchArgs) -> Result<(), MqttBenchError> {
    if args.clients == 0 || args.messages < u64::from(args.clients) {
        return Err(MqttBenchError::InvalidArgument(
            "--clients must be at least 1 and at most --messages".into(),
        ));
    }
    if args.inflight == 0 || args.payload_bytes == 0 || args.payload_bytes > 256 * 1024 {
        return Err(MqttBenchError::InvalidArgument(
            "--inflight must be at least 1 and --payload-bytes between 1 and 262144".into(),
        ));
    }
    if args.round_trip_rate == Some(0) || args.seconds == 0 {
        return Err(MqttBenchError::InvalidArgument(
            "--round-trip-rate and --seconds must be at least 1".into(),
        ));
    }
    if args.topic.contains(['+', '#']) || args.topic.is_empty() {
        return Err(MqttBenchError::InvalidArgument(format!(
            "--topic {:?} is not a topic to publish to",
            args.topic
        )));
    }
    Ok(())
}

/// Runs the benchmark and writes its report to `out`.
pub fn run(args: &MqttBenchArgs, out: &mut dyn Write) -> Result<(), super::BenchError> {
    check_args(args).map_err(|e| super::BenchError::InvalidArgument(e.to_string()))?;
    measure(args, out).map_err(super::BenchError::Failed)
}

fn measure(args: &MqttBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.round_trip_rate {
        None => ingest(args, &rt, out),
        Some(rate) => round_trip(args, rate, &rt, out),
    }
}

fn ingest(
    args: &MqttBenchArgs,
    rt: &tokio::runtime::Runtime,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let target = start_box(args, false)?;
    let log_topic = args.topic.replace('/', ".");
    let before = match &target.http {
        Some(http) => topic_end(http, &log_topic)?,
        None => 0,
    };
    // A whole payment, so that the listener's contract check takes it (the pad is an extra
    // field, which contracts allow).
    let mut payload = br#"{"payment_id":"p","ts_ms":1700000000000,"store_id":"bench","terminal_id":"t","card_id":"bench","amount":1,"currency":"EUR","channel":"card_present","kind":"sale","pad":""#.to_vec();
    payload.resize(
        args.payload_bytes.saturating_sub(2).max(payload.len()),
        b'x',
    );
    payload.extend_from_slice(b"\"}");
    let clients = u64::from(args.clients);
    let started = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let count = args.messages / clients + u64::from(c < args.messages % clients);
            let opts = options(
                &target,
                &format!("bench-{}-{c}", std::process::id()),
                args.inflight,
            );
            tasks.push(tokio::spawn(ingest_client(
                opts,
                args.topic.clone(),
                count,
                payload.clone(),
                args.inflight,
            )));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let elapsed = started.elapsed();
    let mut sorted = latencies;
    sorted.sort();
    let stored = match &target.http {
        Some(http) => Some(topic_end(http, &log_topic)? - before),
        None => None,
    };
    writeln!(
        out,
        "mqtt ingest: {} QoS 1 messages of {} bytes to {} ({}), {} clients x {} in flight",
        sorted.len(),
        payload.len(),
        args.topic,
        log_topic,
        args.clients,
        args.inflight
    )?;
    writeln!(
        out,
        "  throughput: {:.0} msg/s ({:.2} s)",
        sorted.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "  publish -> PUBACK (durable): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&sorted, 0.50)),
        ms(percentile(&sorted, 0.99)),
        ms(percentile(&sorted, 1.0))
    )?;
    if let Some(stored) = stored {
        writeln!(out, "  records stored: {stored}")?;
        if stored < sorted.len() as u64 {
            bail!(
                "{} messages were acknowledged but only {stored} stored",
                sorted.len()
            );
        }
    }
    Ok(())
}

fn topic_end(http: &str, topic: &str) -> anyhow::Result<u64> {
    let topics = http_get(http, "/topics")?;
    Ok(topics["topics"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == topic))
        .and_then(|t| t["next_offset"].as_u64())
        .unwrap_or(0))
}

fn round_trip(
    args: &MqttBenchArgs,
    rate: u32,
    rt: &tokio::runtime::Runtime,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let target = start_box(args, true)?;
    let probe = FsyncProbe::start(&args.dir)?;
    let total = u64::from(rate) * args.seconds;
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let run_id = std::process::id();
    let (latencies, elapsed) = rt.block_on(async {
        // The terminal side: subscribe to every verdict.
        let (sub, mut sub_loop) = crate::mqtt_client::connect(
            options(&target, &format!("bench-verdicts-{run_id}"), 10),
            16,
        );
        sub.subscribe("pos/+/verdict", QoS::AtLeastOnce).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline.into(), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("the verdict subscriber failed: {e}"),
                Err(_) => bail!("no SUBACK for pos/+/verdict"),
            }
        }
        let sent = Arc::clone(&sent_at);
        let receiving = Arc::clone(&sent_at);
        let receiver = tokio::spawn(async move {
            let sent = receiving;
            let mut latencies = Vec::new();
            loop {
                match sub_loop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&p.payload).unwrap_or_default();
                        let id = v["payment_id"].as_str().unwrap_or_default();
                        let start = crate::kernel::lock(&sent).remove(id);
                        if let Some(start) = start {
                            latencies.push(start.elapsed());
                            if latencies.len() as u64 >= total {
                                return latencies;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return latencies,
                }
            }
        });

        // The till side: payments at a fixed rate.
        let (publ, mut pub_loop) = crate::mqtt_client::connect(
            options(&target, &format!("bench-till-{run_id}"), 1000),
            2048,
        );
        let pub_events = tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
        let every = Duration::from_secs_f64(1.0 / f64::from(rate));
        let warmup = u64::from(rate) * args.warmup_s;
        let warm_started = Instant::now();
        let mut started = warm_started;
        for i in 0..warmup + total {
            let due = warm_started + every.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            if i == warmup {
                started = Instant::now();
            }
            let id = if i < warmup {
                format!("warmup-{run_id}-{i}")
            } else {
                format!("bench-{run_id}-{}", i - warmup)
            };
            let payment = serde_json::json!({
                "payment_id": &id, "ts_ms": crate::kernel::now_ms(), "store_id": "bench",
                "terminal_id": format!("t-{}", i % 20), "card_id": format!("card-{}", i % 5000),
                "amount": 10.0 + (i % 100) as f64, "currency": "EUR", "channel": "card_present",
                "kind": "sale",
            });
            if i >= warmup {
                crate::kernel::lock(&sent).insert(id.clone(), Instant::now());
            }
            publ.publish("pos/payments", QoS::AtLeastOnce, false, payment.to_string())
                .await?;
        }
        let latencies = tokio::time::timeout(Duration::from_secs(30), receiver)
            .await
            .map_err(|_| anyhow!("verdicts stopped arriving"))??;
        let elapsed = started.elapsed();
        pub_events.abort();
        Ok::<_, anyhow::Error>((latencies, elapsed))
    })?;
    let fsyncs = probe.finish();
    let mut sorted = latencies;
    sorted.sort();
    writeln!(
        out,
        "mqtt round trip: {total} payments at {rate}/s over {:.1} s -> fraud-score -> verdicts over MQTT",
        elapsed.as_secs_f64()
    )?;
    writeln!(out, "  verdicts received: {}", sorted.len())?;
    writeln!(
        out,
        "  publish -> verdict: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&sorted, 0.50)),
        ms(percentile(&sorted, 0.99)),
        ms(percentile(&sorted, 1.0))
    )?;
    writeln!(
        out,
        "  baseline, raw fdatasync of 4 KiB on the same disk meanwhile ({} samples): p50 {:.2} ms, p99 {:.2} ms",
        fsyncs.len(),
        ms(percentile(&fsyncs, 0.50)),
        ms(percentile(&fsyncs, 0.99)),
    )?;
    if (sorted.len() as u64) < total {
        bail!(
            "{} of {total} verdicts did not arrive",
            total - sorted.len() as u64
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
