//! `outpost bench kafka`: the Kafka listener under a real Kafka producer and consumer
//! (Python's confluent-kafka, librdkafka), next to the same producer against tansu in the same
//! run.
//!
//! # What is measured
//! Each repeat starts `outpost run` (this binary, plugins off, every topic `always`: each
//! acknowledgement follows the fsync that covers it) on free loopback ports, then:
//! - **produce to the box**: `kafka_bench.py produce` sends `--records` records of
//!   `--record-bytes` bytes with acks=all, idempotence, `linger.ms` 5, 1 MiB batches and zstd
//!   to a fresh topic; its clock runs from creating the producer to the last delivery report.
//!   The box's CPU time over that clock (all its threads, `/proc/<pid>/stat`) per record is
//!   reported beside the rate, and the log's fsyncs (`/metrics`) give records per fsync.
//! - **fetch from the box**: `kafka_bench.py count` reads the topic back from the beginning
//!   with a consumer; the records it counted over the wall time of the read.
//! - **produce to tansu** (with `--tansu`, or `OUTPOST_TANSU`): the same producer, the same
//!   records, to a tansu broker with its memory engine (`memory://`; it stores nothing on disk,
//!   so it is the faster baseline, not a durable one).
//!
//! The report gives the medians over `--repeats` and the ratio box ÷ tansu. The working
//! directory `outpost-bench-kafka-<pid>` is created under `--dir` and removed afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use super::forward::{median, python_json, Broker, SCRIPT};

/// Arguments of `outpost bench kafka`.
#[derive(Debug, Args)]
pub struct KafkaBenchArgs {
    /// Records produced per repeat.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 200)]
    pub record_bytes: usize,
    /// Runs; the report shows medians.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// The tansu binary for the baseline (memory engine); without it only the box is measured.
    #[arg(long, env = "OUTPOST_TANSU")]
    pub tansu: Option<PathBuf>,
    /// A Python with confluent-kafka.
    #[arg(long, env = "OUTPOST_PYTHON")]
    pub python: Option<PathBuf>,
    /// Where the working directory goes.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One repeat's figures.
#[derive(Debug, Serialize)]
struct Repeat {
    outpost_records_per_sec: f64,
    outpost_server_cpu_us_per_record: f64,
    records_per_fsync: f64,
    fetch_records_per_sec: f64,
    tansu_records_per_sec: Option<f64>,
}

/// The report.
#[derive(Debug, Serialize)]
struct Report {
    records: u64,
    record_bytes: usize,
    repeats: Vec<Repeat>,
    median_outpost_records_per_sec: f64,
    median_server_cpu_us_per_record: f64,
    median_records_per_fsync: f64,
    median_fetch_records_per_sec: f64,
    median_tansu_records_per_sec: Option<f64>,
    median_ratio_to_tansu: Option<f64>,
}

/// Runs the benchmark.
pub fn run(
    args: &KafkaBenchArgs,
    output: &mut dyn std::io::Write,
) -> Result<(), super::BenchError> {
    if args.records == 0 || args.repeats == 0 {
        return Err(super::BenchError::InvalidArgument(
            "--records and --repeats must be at least 1".into(),
        ));
    }
    if args.record_bytes < 32 {
        return Err(super::BenchError::InvalidArgument(
            "--record-bytes must be at least 32".into(),
        ));
    }
    measure(args, output).map_err(super::BenchError::Failed)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `outpost run` for one repeat; killed on drop.
struct Boxed {
    child: Child,
    http: String,
    kafka: String,
}

impl Drop for Boxed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_box(dir: &Path) -> anyhow::Result<Boxed> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        "[plugins]\nenabled = false\n\n[log.default_topic]\nfsync = \"always\"\n",
    )?;
    let (http, mqtt, kafka) = (free_port()?, free_port()?, free_port()?);
    let child = Command::new(std::env::current_exe()?)
        .args(["run", "--log-level", "warn", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .env("OUTPOST_MQTT_LISTEN", format!("127.0.0.1:{mqtt}"))
        .env("OUTPOST_KAFKA_LISTEN", format!("127.0.0.1:{kafka}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `outpost run`")?;
    let boxed = Boxed {
        child,
        http: format!("127.0.0.1:{http}"),
        kafka: format!("127.0.0.1:{kafka}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&boxed.http, "/ready").is_err() {
        if Instant::now() > deadline {
            bail!("`outpost run` was not ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(boxed)
}

fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP answer")?;
    if !head.contains(" 200 ") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

/// CPU seconds (user + system) process `pid` used so far.
fn child_cpu_s(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf(3) with a valid name has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// The box's log fsyncs so far (`outpost_log_fsyncs_total` summed over topics).
fn fsyncs(http: &str) -> f64 {
    http_get(http, "/metrics")
        .map(|text| {
            text.lines()
                .filter(|l| l.starts_with("outpost_log_fsyncs_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
}

fn produce(
    python: &Path,
    script: &Path,
    brokers: &str,
    topic: &str,
    args: &KafkaBenchArgs,
) -> anyhow::Result<f64> {
    let (records, bytes) = (args.records.to_string(), args.record_bytes.to_string());
    let v = python_json(
        python,
        script,
        &[
            "produce",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--records",
            &records,
            "--record-bytes",
            &bytes,
            "--edge",
            "bench",
            "--store",
            "bench",
            "--local-topic",
            topic,
            "--compression",
            "zstd",
            "--linger-ms",
            "5",
            "--batch-bytes",
            "1048576",
        ],
    )?;
    if v["failed"].as_u64().unwrap_or(0) > 0 {
        bail!("{} records failed to produce: {v}", v["failed"]);
    }
    let seconds = v["seconds"]
        .as_f64()
        .context("no seconds in the produce report")?;
    Ok(args.records as f64 / seconds)
}

fn measure(args: &KafkaBenchArgs, output: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let python = args
        .python
        .clone()
        .context("--python (or OUTPOST_PYTHON) must name a Python with confluent-kafka")?;
    let work = args
        .dir
        .join(format!("outpost-bench-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = run_in(args, &python, &work);
    let _ = std::fs::remove_dir_all(&work);
    let repeats = result?;
    let pick = |f: fn(&Repeat) -> f64| median(repeats.iter().map(f).collect());
    let tansu: Vec<f64> = repeats
        .iter()
        .filter_map(|r| r.tansu_records_per_sec)
        .collect();
    let ratios: Vec<f64> = repeats
        .iter()
        .filter_map(|r| {
            r.tansu_records_per_sec
                .map(|t| r.outpost_records_per_sec / t)
        })
        .collect();
    let report = Report {
        records: args.records,
        record_bytes: args.record_bytes,
        median_outpost_records_per_sec: pick(|r| r.outpost_records_per_sec),
        median_server_cpu_us_per_record: pick(|r| r.outpost_server_cpu_us_per_record),
        median_records_per_fsync: pick(|r| r.records_per_fsync),
        median_fetch_records_per_sec: pick(|r| r.fetch_records_per_sec),
        median_tansu_records_per_sec: (!tansu.is_empty()).then(|| median(tansu)),
        median_ratio_to_tansu: (!ratios.is_empty()).then(|| median(ratios)),
        repeats,
    };
    if args.json {
        writeln!(output, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    writeln!(
        output,
        "kafka bench: {} records of {} bytes, acks=all, zstd, linger 5 ms, 1 MiB batches, topic fsync always",
        report.records, report.record_bytes
    )?;
    writeln!(
        output,
        "{:>6}  {:>14}  {:>12}  {:>10}  {:>14}  {:>14}",
        "repeat", "produce rec/s", "cpu us/rec", "rec/fsync", "fetch rec/s", "tansu rec/s"
    )?;
    for (i, r) in report.repeats.iter().enumerate() {
        writeln!(
            output,
            "{:>6}  {:>14.0}  {:>12.2}  {:>10.0}  {:>14.0}  {:>14}",
            i + 1,
            r.outpost_records_per_sec,
            r.outpost_server_cpu_us_per_record,
            r.records_per_fsync,
            r.fetch_records_per_sec,
            r.tansu_records_per_sec
                .map_or("-".to_string(), |t| format!("{t:.0}"))
        )?;
    }
    writeln!(
        output,
        "median: produce {:.0} records/s at {:.2} us of server CPU per record ({:.0} records per fsync); fetch {:.0} records/s; tansu {}; ratio {}",
        report.median_outpost_records_per_sec,
        report.median_server_cpu_us_per_record,
        report.median_records_per_fsync,
        report.median_fetch_records_per_sec,
        report
            .median_tansu_records_per_sec
            .map_or("not measured (--tansu)".into(), |t| format!("{t:.0} records/s")),
        report
            .median_ratio_to_tansu
            .map_or("-".into(), |r| format!("{r:.2}"))
    )?;
    Ok(())
}

fn run_in(args: &KafkaBenchArgs, python: &Path, work: &Path) -> anyhow::Result<Vec<Repeat>> {
    let script = work.join("kafka_bench.py");
    std::fs::write(&script, SCRIPT)?;
    let mut repeats = Vec::new();
    for r in 0..args.repeats {
        let boxed = start_box(&work.join(format!("box-{r}")))?;
        let topic = format!("bench.kafka.{r}");
        let (cpu_before, fsyncs_before) = (child_cpu_s(boxed.child.id())?, fsyncs(&boxed.http));
        let produced = produce(python, &script, &boxed.kafka, &topic, args)?;
        let server_cpu = child_cpu_s(boxed.child.id())? - cpu_before;
        let fsynced = (fsyncs(&boxed.http) - fsyncs_before).max(1.0);
        let records = args.records.to_string();
        let started = Instant::now();
        let counted = python_json(
            python,
            &script,
            &[
                "count",
                "--brokers",
                &boxed.kafka,
                "--topics",
                &topic,
                "--expect",
                &records,
            ],
        )?;
        let fetch_s = started.elapsed().as_secs_f64();
        let got = counted[&topic]["records"].as_u64().unwrap_or(0);
        if got != args.records {
            bail!("read back {got} of {} records from the box", args.records);
        }
        drop(boxed);
        let tansu = match &args.tansu {
            Some(bin) => {
                let broker =
                    Broker::start(bin, &work.join(format!("tansu-{r}")), "memory://tansu/")?;
                python_json(
                    python,
                    &script,
                    &["create", "--brokers", &broker.brokers, "--topics", &topic],
                )?;
                Some(produce(python, &script, &broker.brokers, &topic, args)?)
            }
            None => None,
        };
        repeats.push(Repeat {
            outpost_records_per_sec: produced,
            outpost_server_cpu_us_per_record: server_cpu * 1e6 / args.records as f64,
            records_per_fsync: args.records as f64 / fsynced,
            fetch_records_per_sec: got as f64 / fetch_s,
            tansu_records_per_sec: tansu,
        });
    }
    Ok(repeats)
}
