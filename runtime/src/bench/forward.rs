//! `outpost bench forward`: draining a backlog to a Kafka-compatible broker with the
//! [`Forwarder`], next to librdkafka producing the same records directly (Python's
//! confluent-kafka), measured in the same run against the same broker.
//!
//! # What is measured
//! A local log in the working directory is filled once with `--records` records of
//! `--record-bytes` bytes (no key; the value is `{"i":<i>,"pad":"…"}` padded to the size). Each
//! repeat then, against a fresh broker:
//! - **outpost**: a [`Forwarder`] (cluster `bench<r>`, so it starts from offset 0) drains the
//!   topic to a fresh cloud topic; the clock runs from starting the forwarder (which creates
//!   its producer, connects and fetches metadata) until its committed cursor reached the end
//!   (every record acknowledged with acks=all and its cursor stored);
//! - **confluent-kafka**: `kafka_bench.py produce` (the script is compiled into the binary and
//!   written to the working directory) produces the same values with the same four headers to
//!   another fresh topic, with the forwarder's producer settings (idempotent, acks=all, 5 in
//!   flight, the same compression, `linger.ms` and `batch.size`); its clock runs from creating
//!   the producer (so it too connects and fetches metadata on the clock) to the end of `flush`
//!   (every delivery report in). The values are made before the clock starts.
//!
//! The two take turns going first. Afterwards both topics are read back (`kafka_bench.py
//! count`): each must hold every record (by its `outpost-offset` header), or the repeat fails.
//! (Not ListOffsets: tansu's memory engine answers it with the last batch's base offset.) The
//! report gives records/s and value MB/s of both, and the ratio outpost ÷ confluent-kafka
//! (target ≥ 0.8), as medians over `--repeats`; and the CPU time each side's process spent on
//! its clock (all its threads: the forwarder's tasks, log reads, librdkafka's threads; Python
//! and its librdkafka), per record. On two cores shared with the broker the rates swing from
//! repeat to repeat with scheduling; the CPU per record is the steadier comparison.
//!
//! # The broker
//! By default a `tansu` broker (`--tansu`, or `OUTPOST_TANSU`) is started per repeat on a free
//! loopback port with `--tansu-storage` (default `memory://tansu/`; a file path is relative to
//! the repeat's own directory); `--brokers` uses a running cluster instead. What tansu 0.6 can
//! take decides what this measures (the tests' tansu is built with both engines):
//! - `sqlite://tansu.db` stores every record as a row and every header as another, at about
//!   4-5k records/s here, and slows as the file grows: both sides measure the broker (ratio
//!   about 1), and at 1M records a produce request can outlast librdkafka's request timeout.
//!   The benchmark adds the header index tansu's schema lacks (`kafka_bench.py index`), as the
//!   tests do.
//! - `memory://tansu/` (tansu's `dynostore` feature) keeps the producers' batches as they come
//!   and takes several 100k records/s: the engine to compare the two producers with. Its
//!   ListOffsets answer is the last batch's base offset, not the end, hence the read-back check
//!   above.
//!
//! The working directory `outpost-bench-forward-<pid>` is created under `--dir` and removed
//! afterwards.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::forward::config::RuleConfig;
use crate::forward::{Class, ForwardConfig, Forwarder};
use crate::log::{Log, LogConfig, NewRecord};
use crate::state::StateStore;

/// The confluent-kafka side, compiled in so the benchmark runs from the binary alone.
pub(super) const SCRIPT: &str = include_str!("../../../tests/peers/kafka_bench.py");
/// The local topic drained.
const LOCAL_TOPIC: &str = "bench.forward";
const EDGE: &str = "bench-edge";
const STORE: &str = "bench-store";

/// Arguments of `outpost bench forward`.
#[derive(Debug, Args)]
pub struct ForwardBenchArgs {
    /// Records in the backlog (and produced by confluent-kafka).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 200)]
    pub record_bytes: usize,
    /// Runs of both sides; the report shows medians.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// The tansu binary started as the broker.
    #[arg(long, env = "OUTPOST_TANSU")]
    pub tansu: Option<PathBuf>,
    /// tansu's `--storage-engine`, relative to the repeat's directory.
    #[arg(long, default_value = "memory://tansu/")]
    pub tansu_storage: String,
    /// Use this running cluster (`host:port`) instead of starting tansu.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Python with confluent-kafka.
    #[arg(long, env = "OUTPOST_PYTHON")]
    pub python: Option<PathBuf>,
    /// `zstd`, `lz4` or `none`, for both sides.
    #[arg(long, default_value = "zstd")]
    pub compression: String,
    /// `linger.ms` of both producers.
    #[arg(long, default_value_t = 20)]
    pub linger_ms: u64,
    /// `batch.size` of both producers, in bytes.
    #[arg(long, default_value_t = 1_048_576)]
    pub batch_bytes: u64,
    /// The forwarder's `forward.in_flight_batches` (1 = the unpipelined forwarder: each batch
    /// acknowledged before the next is read).
    #[arg(long, default_value_t = 8)]
    pub in_flight_batches: usize,
    /// Directory in which the working directory is created (and removed).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One repeat's figures.
#[derive(Debug, Clone, Serialize)]
struct Repeat {
    outpost_records_per_sec: f64,
    python_records_per_sec: f64,
    ratio: f64,
    /// CPU seconds of the bench process (only the forwarder works in it then) during the drain.
    outpost_cpu_s: f64,
    /// CPU seconds of the Python producer process on its clock.
    python_cpu_s: f64,
    /// Records read back from the outpost topic (duplicates included).
    outpost_read_back: i64,
    /// Records read back from the confluent-kafka topic.
    python_read_back: i64,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    records: u64,
    record_bytes: usize,
    compression: String,
    linger_ms: u64,
    batch_bytes: u64,
    in_flight_batches: usize,
    broker: String,
    repeats: Vec<Repeat>,
    median_outpost_records_per_sec: f64,
    median_python_records_per_sec: f64,
    median_outpost_mb_per_sec: f64,
    median_python_mb_per_sec: f64,
    median_ratio: f64,
    median_outpost_cpu_us_per_record: f64,
    median_python_cpu_us_per_record: f64,
}

/// One side's run: wall-clock and CPU seconds on its clock.
#[derive(Debug, Clone, Copy)]
struct Side {
    seconds: f64,
    cpu_seconds: f64,
}

/// CPU seconds (user + system) this process used so far, all threads.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage(2) fills the zeroed struct it is given; RUSAGE_SELF always exists.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The value of record `i` (the same bytes as `bench_value` in `kafka_bench.py`).
fn bench_value(i: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
    let tail = b"\"}";
    let fill = size.saturating_sub(v.len() + tail.len());
    let pattern = b"outpost-forward-bench-";
    v.extend(pattern.iter().cycle().take(fill));
    v.extend_from_slice(tail);
    v
}

pub(super) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// A tansu broker for one repeat; killed on drop.
pub(super) struct Broker {
    child: Option<Child>,
    pub(super) brokers: String,
}

impl Broker {
    pub(super) fn start(bin: &Path, dir: &Path, storage: &str) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log"))?;
        let child = Command::new(bin)
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", storage])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut broker = Broker {
            child: Some(child),
            brokers: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(c) = broker.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    let log = std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default();
                    bail!("tansu exited with {status}: {log}");
                }
            }
            if Instant::now() > deadline {
                bail!("tansu did not listen on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `kafka_bench.py` and parses the JSON it prints.
pub(super) fn python_json(
    python: &Path,
    script: &Path,
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "kafka_bench.py {} failed ({}): {} {}",
            args.first().copied().unwrap_or(""),
            out.status,
            stdout.trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("kafka_bench.py printed no result")?;
    Ok(serde_json::from_str(line)?)
}

/// Drains the backlog with a fresh forwarder; returns the time until every record was
/// acknowledged and its cursor stored.
fn drain(log: &Log, state_dir: &Path, config: ForwardConfig, records: u64) -> anyhow::Result<Side> {
    let state = StateStore::open(state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ctx = crate::kernel::Context::new(
        state_dir,
        log.clone(),
        state.clone(),
        crate::kernel::Identity::new(EDGE, STORE),
        crate::kernel::Shutdown::never(),
    );
    let forwarder = Forwarder::new(&ctx, config);
    let consumer = forwarder.consumer().to_string();
    let (stop, rx) = crate::kernel::Shutdown::new();
    let started = Instant::now();
    let cpu_before = process_cpu_s();
    let task = runtime.spawn(forwarder.clone().run(rx));
    // A generous limit: 1000 records/s at the least, plus a minute.
    let deadline = started + Duration::from_secs(records / 1000 + 60);
    let outcome = loop {
        let cursor = state.offset(&consumer, LOCAL_TOPIC)?.unwrap_or(0);
        if cursor >= records {
            break Ok(Side {
                seconds: started.elapsed().as_secs_f64(),
                cpu_seconds: process_cpu_s() - cpu_before,
            });
        }
        if Instant::now() > deadline || task.is_finished() {
            break Err(anyhow::anyhow!(
                "the forwarder reached only offset {cursor} of {records}; last error: {:?}",
                forwarder.status().ok().and_then(|s| s.last_error)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.request();
    let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// Runs the benchmark.
pub fn run(
    args: &ForwardBenchArgs,
    output: &mut dyn std::io::Write,
) -> Result<(), super::BenchError> {
    let invalid = |m: &str| Err(super::BenchError::InvalidArgument(m.into()));
    if args.records == 0 || args.repeats == 0 {
        return invalid("--records and --repeats must be at least 1");
    }
    if args.record_bytes < 32 {
        return invalid("--record-bytes must be at least 32");
    }
    if !matches!(args.compression.as_str(), "zstd" | "lz4" | "none") {
        return invalid("--compression must be zstd, lz4 or none");
    }
    measure(args, output).map_err(super::BenchError::Failed)
}

fn measure(args: &ForwardBenchArgs, output: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let python = args
        .python
        .clone()
        .context("--python (or OUTPOST_PYTHON) must name a Python with confluent-kafka")?;
    let tansu = match (&args.brokers, &args.tansu) {
        (Some(_), _) => None,
        (None, Some(t)) => Some(t.clone()),
        (None, None) => bail!("give --brokers, or --tansu (or OUTPOST_TANSU) to start a broker"),
    };

    let work = args
        .dir
        .join(format!("outpost-bench-forward-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = run_in(args, &python, tansu.as_deref(), &work);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;

    if args.json {
        writeln!(output, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    writeln!(
        output,
        "forward bench: {} records of {} bytes, compression {}, linger {} ms, batch {} bytes, {} batches in flight, broker {}",
        report.records,
        report.record_bytes,
        report.compression,
        report.linger_ms,
        report.batch_bytes,
        report.in_flight_batches,
        report.broker
    )?;
    writeln!(
        output,
        "{:>6}  {:>14}  {:>14}  {:>7}  {:>11}  {:>11}  {:>10}  {:>10}",
        "repeat",
        "outpost rec/s",
        "python rec/s",
        "ratio",
        "outpost cpu",
        "python cpu",
        "outpost rd",
        "python rd"
    )?;
    for (i, r) in report.repeats.iter().enumerate() {
        writeln!(
            output,
            "{:>6}  {:>14.0}  {:>14.0}  {:>7.2}  {:>10.2}s  {:>10.2}s  {:>10}  {:>10}",
            i + 1,
            r.outpost_records_per_sec,
            r.python_records_per_sec,
            r.ratio,
            r.outpost_cpu_s,
            r.python_cpu_s,
            r.outpost_read_back,
            r.python_read_back
        )?;
    }
    writeln!(
        output,
        "median: outpost {:.0} records/s ({:.2} MB/s), confluent-kafka {:.0} records/s ({:.2} MB/s), ratio {:.2} (target >= 0.8)",
        report.median_outpost_records_per_sec,
        report.median_outpost_mb_per_sec,
        report.median_python_records_per_sec,
        report.median_python_mb_per_sec,
        report.median_ratio
    )?;
    writeln!(
        output,
        "CPU per record (median): outpost {:.2} us, confluent-kafka {:.2} us",
        report.median_outpost_cpu_us_per_record, report.median_python_cpu_us_per_record
    )?;
    Ok(())
}

fn run_in(
    args: &ForwardBenchArgs,
    python: &Path,
    tansu: Option<&Path>,
    work: &Path,
) -> anyhow::Result<Report> {
    let script = work.join("kafka_bench.py");
    std::fs::write(&script, SCRIPT)?;

    // The backlog, written once.
    let log = Log::open(&work.join("log"), LogConfig::default())?;
    {
        let topic = log.topic_or_create(LOCAL_TOPIC)?;
        let mut i = 0;
        while i < args.records {
            let n = 5000.min(args.records - i);
            let batch = (i..i + n)
                .map(|j| NewRecord {
                    value: bench_value(j, args.record_bytes),
                    ..NewRecord::default()
                })
                .collect();
            topic.append(batch)?;
            i += n;
        }
    }

    let mut repeats = Vec::with_capacity(args.repeats);
    let pid = std::process::id();
    for r in 0..args.repeats {
        let _broker;
        let brokers = match (&args.brokers, tansu) {
            (Some(b), _) => b.clone(),
            (None, Some(bin)) => {
                let dir = work.join(format!("tansu-{r}"));
                let b = Broker::start(bin, &dir, &args.tansu_storage)?;
                if let Some(db) = args.tansu_storage.strip_prefix("sqlite://") {
                    // tansu 0.6 lacks this index; without it fetches scan every stored header
                    // per record (see `kafka_bench.py index`). Produce, which is measured,
                    // does not need it, but checking what arrived does.
                    let db = dir.join(db);
                    python_json(python, &script, &["index", "--db", &db.to_string_lossy()])?;
                }
                let addr = b.brokers.clone();
                _broker = b;
                addr
            }
            (None, None) => bail!("no broker"),
        };
        let fwd_topic = format!("bench-outpost-{pid}-{r}");
        let py_topic = format!("bench-python-{pid}-{r}");
        python_json(
            python,
            &script,
            &[
                "create",
                "--brokers",
                &brokers,
                "--topics",
                &format!("{fwd_topic},{py_topic}"),
            ],
        )?;

        let mut config = ForwardConfig {
            cluster: format!("bench{r}"),
            default_rules: false,
            rules: vec![RuleConfig {
                topic: LOCAL_TOPIC.to_string(),
                destination: fwd_topic.clone(),
                key: None,
                class: Class::Critical,
                schedule: "always".to_string(),
                forward: true,
            }],
            ..ForwardConfig::default()
        };
        config.kafka.brokers = brokers.clone();
        config.kafka.compression = args.compression.clone();
        config.kafka.linger_ms = args.linger_ms;
        config.kafka.batch_bytes = args.batch_bytes;
        config.kafka.delivery_timeout_ms = 120_000;
        config.in_flight_batches = args.in_flight_batches;
        config
            .validate()
            .map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;

        let records = args.records.to_string();
        let record_bytes = args.record_bytes.to_string();
        let linger = args.linger_ms.to_string();
        let batch = args.batch_bytes.to_string();
        let produce = || -> anyhow::Result<Side> {
            let v = python_json(
                python,
                &script,
                &[
                    "produce",
                    "--brokers",
                    &brokers,
                    "--topic",
                    &py_topic,
                    "--records",
                    &records,
                    "--record-bytes",
                    &record_bytes,
                    "--edge",
                    EDGE,
                    "--store",
                    STORE,
                    "--local-topic",
                    LOCAL_TOPIC,
                    "--compression",
                    &args.compression,
                    "--linger-ms",
                    &linger,
                    "--batch-bytes",
                    &batch,
                ],
            )?;
            let number = |k: &str| {
                v[k].as_f64()
                    .with_context(|| format!("kafka_bench.py produce printed no {k}"))
            };
            Ok(Side {
                seconds: number("seconds")?,
                cpu_seconds: number("cpu_seconds")?,
            })
        };
        let state_dir = work.join(format!("state-{r}"));
        let (outpost_run, python_run) = if r % 2 == 0 {
            let o = drain(&log, &state_dir, config, args.records)?;
            (o, produce()?)
        } else {
            let p = produce()?;
            (drain(&log, &state_dir, config, args.records)?, p)
        };

        // What arrived, read back: every local offset once on both topics.
        let counts = python_json(
            python,
            &script,
            &[
                "count",
                "--brokers",
                &brokers,
                "--topics",
                &format!("{fwd_topic},{py_topic}"),
                "--expect",
                &records,
            ],
        )?;
        let got = |t: &str, k: &str| counts[t][k].as_i64().unwrap_or(-1);
        let want = i64::try_from(args.records)?;
        for (side, t) in [("outpost", &fwd_topic), ("confluent-kafka", &py_topic)] {
            if got(t, "distinct") != want {
                bail!(
                    "repeat {r}: the {side} topic {t} holds {} distinct records of {want} ({} in all)",
                    got(t, "distinct"),
                    got(t, "records")
                );
            }
        }
        let (fwd_high, py_high) = (got(&fwd_topic, "records"), got(&py_topic, "records"));
        let n = args.records as f64;
        let (outpost_s, python_s) = (outpost_run.seconds, python_run.seconds);
        tracing::info!(
            repeat = r + 1,
            outpost_records_per_sec = (n / outpost_s).round(),
            python_records_per_sec = (n / python_s).round(),
            outpost_cpu_s = outpost_run.cpu_seconds,
            python_cpu_s = python_run.cpu_seconds,
            outpost_read_back = fwd_high,
            python_read_back = py_high,
            "A repeat of the forward benchmark finished."
        );
        repeats.push(Repeat {
            outpost_records_per_sec: n / outpost_s,
            python_records_per_sec: n / python_s,
            ratio: python_s / outpost_s,
            outpost_cpu_s: outpost_run.cpu_seconds,
            python_cpu_s: python_run.cpu_seconds,
            outpost_read_back: fwd_high,
            python_read_back: py_high,
        });
    }
    log.close()?;

    let mb = |rate: f64| rate * args.record_bytes as f64 / 1e6;
    let n = args.records as f64;
    let o = median(repeats.iter().map(|r| r.outpost_records_per_sec).collect());
    let p = median(repeats.iter().map(|r| r.python_records_per_sec).collect());
    Ok(Report {
        records: args.records,
        record_bytes: args.record_bytes,
        compression: args.compression.clone(),
        linger_ms: args.linger_ms,
        batch_bytes: args.batch_bytes,
        in_flight_batches: args.in_flight_batches,
        broker: match &args.brokers {
            Some(b) => b.clone(),
            None => format!("tansu {}", args.tansu_storage),
        },
        median_outpost_records_per_sec: o,
        median_python_records_per_sec: p,
        median_outpost_mb_per_sec: mb(o),
        median_python_mb_per_sec: mb(p),
        median_ratio: median(repeats.iter().map(|r| r.ratio).collect()),
        median_outpost_cpu_us_per_record: median(
            repeats.iter().map(|r| r.outpost_cpu_s * 1e6 / n).collect(),
        ),
        median_python_cpu_us_per_record: median(
            repeats.iter().map(|r| r.python_cpu_s * 1e6 / n).collect(),
        ),
        repeats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_values_have_the_requested_size_and_differ_by_index() {
        let a = bench_value(7, 200);
        let b = bench_value(123_456, 200);
        assert_eq!(a.len(), 200);
        assert_eq!(b.len(), 200);
        assert!(a.starts_with(br#"{"i":7,"pad":"outpost"#));
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
