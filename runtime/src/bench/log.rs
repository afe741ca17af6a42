//! `outpost bench log`: the log's append throughput next to a plain `write`+`fdatasync`
//! baseline measured in the same run, on the same file system.
//!
//! # What is measured
//! For each fsync policy (`always`, `{ interval_ms = 100 }`) and each producer count P
//! (default 1, 16, 64), a fresh log is opened in the working directory and P threads each
//! append one record of `--record-bytes` bytes per call (one call = one batch: the realistic
//! case for independent producers such as MQTT clients) for `--seconds`. The figures are the
//! acknowledged records per second, the payload MB/s, and how many records one fsync covered
//! on average (from the registry counter `outpost_log_fsyncs_total` of the case's topic).
//!
//! # The baseline: the same bytes at the same batch cadence
//! One writer writes the same number of bytes the log put on disk (payload plus the log's own
//! framing, measured as segment bytes / records) to a plain file beside the log's segments, in
//! as many groups as the log made fsyncs, each group one `write` followed by `fdatasync`. That
//! is what the log does at best: group commit turns many small appends into one write and one
//! fsync, and the baseline does exactly those writes and fsyncs with nothing else. `ratio` =
//! log records/s ÷ baseline records/s for the same records; 1.0 means the log adds no cost
//! over the raw file system. The baseline is one thread; a ratio above 1 means the log's many
//! producers got more fsyncs per second out of the machine than a lone writer did at the same
//! cadence (the fsync count comes from the log's counter and matches the syscalls), not that
//! the log skipped work.
//!
//! # Interleaving
//! The fsync rate of a disk shared with other work (a VM, CI) can change several-fold within
//! seconds, so the log and its baseline take turns: the run is cut into slices of
//! `--slice-ms`; after each log slice the producers pause and the baseline writes that
//! slice's bytes in that slice's number of fsync groups. Both sides thus see the same device
//! weather. On an interval topic each log slice ends with one explicit fsync (counted, and
//! timed as the log's), so that no background fsync of the log runs during a baseline slice.
//! Each case is repeated `--repeats` times on a fresh log; the table shows the median of each
//! column, the ratio as the median of the per-repeat ratios, with their range.
//!
//! For context the report adds a naive baseline: one writer, one `write`+`fdatasync` per
//! record, for `--seconds` — what producers would get without group commit. It runs first;
//! every run starts after a `sync(2)`, so none pays for an earlier one's write-back.
//!
//! The working directory `outpost-bench-log-<pid>` is created under `--dir` (default: the
//! current directory, so run it from the data dir's file system) and removed afterwards.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::log::{
    FsyncPolicy, Log, LogConfig, LogError, NamedFsync, NewRecord, Topic, TopicConfig,
};

/// The registry counter of fsyncs the log made, per topic.
const FSYNC_COUNTER: &str = "outpost_log_fsyncs_total";

/// Errors of the log benchmark.
#[derive(Debug, thiserror::Error)]
pub enum LogBenchError {
    /// A command-line value makes no sense.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A file operation failed, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The log does not report its fsyncs, so the baseline's cadence cannot be matched.
    #[error("the log reports no `{FSYNC_COUNTER}` series for topic {0:?}")]
    NoFsyncCount(String),
    /// A producer thread panicked.
    #[error("a producer thread panicked")]
    ProducerPanicked,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogBenchError {
    let context = context.into();
    move |source| LogBenchError::Io { context, source }
}

/// Arguments of `outpost bench log`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogBenchArgs {
    /// Directory in which the benchmark creates, and afterwards removes, its working
    /// directory. Put it on the file system of the data dir: that is what is measured.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Seconds each case (and the naive baseline) runs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Producer counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub producers: Vec<usize>,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 200)]
    pub record_bytes: usize,
    /// Runs per case; the report shows the median.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Length of one turn of the log before the baseline takes its turn, in ms.
    #[arg(long, default_value_t = 500)]
    pub slice_ms: u64,
    /// The `interval_ms` of the interval-policy topic.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl LogBenchArgs {
    fn validate(&self) -> Result<(), LogBenchError> {
        let bad = |m: &str| Err(LogBenchError::InvalidArgument(m.to_string()));
        if !(self.seconds.is_finite() && self.seconds > 0.0) {
            return bad("--seconds must be a positive number");
        }
        if self.producers.is_empty() || self.producers.contains(&0) {
            return bad("--producers needs one or more counts, each at least 1");
        }
        if self.record_bytes == 0 {
            return bad("--record-bytes must be at least 1");
        }
        if self.repeats == 0 {
            return bad("--repeats must be at least 1");
        }
        if self.slice_ms < 10 {
            return bad("--slice-ms must be at least 10");
        }
        if self.interval_ms == 0 {
            return bad("--interval-ms must be at least 1");
        }
        Ok(())
    }
}

/// One row of the report: one policy and producer count, medians over the repeats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogBenchCase {
    /// `always` or `interval_ms=N`.
    pub policy: String,
    /// Concurrent producer threads.
    pub producers: usize,
    /// Acknowledged records per second.
    pub records_per_sec: f64,
    /// Acknowledged payload (record values) in MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Records covered by one fsync on average.
    pub records_per_fsync: f64,
    /// Segment bytes per record: payload plus the log's framing.
    pub disk_bytes_per_record: f64,
    /// The same bytes in the same number of `write`+`fdatasync` groups, as records per second.
    pub baseline_records_per_sec: f64,
    /// Log records/s ÷ baseline records/s (median of the per-repeat ratios).
    pub ratio: f64,
    /// The lowest per-repeat ratio: with the highest, it shows how noisy the device was.
    pub ratio_min: f64,
    /// The highest per-repeat ratio.
    pub ratio_max: f64,
}

/// The whole report of `outpost bench log`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogBenchReport {
    /// Bytes of each record's value.
    pub record_bytes: usize,
    /// Seconds each case ran.
    pub seconds: f64,
    /// Runs per case.
    pub repeats: usize,
    /// Where the files were written.
    pub dir: String,
    /// One writer, one `write`+`fdatasync` per record: records per second.
    pub naive_baseline_records_per_sec: f64,
    /// One row per policy and producer count.
    pub cases: Vec<LogBenchCase>,
    /// How the baseline is defined.
    pub method: String,
}

const METHOD: &str = "Each case: P producer threads append one record per call to a fresh \
log topic, in slices; after each slice one writer writes the same bytes the log wrote \
(payload + framing) to a plain file in as many write+fdatasync groups as the log made fsyncs \
in that slice. ratio = log records/s / baseline records/s (median of per-repeat ratios, range \
shown). Naive baseline: one write+fdatasync per record.";

/// Runs the benchmark and writes the report (a table, or JSON with `--json`) to `out`.
pub fn run(args: &LogBenchArgs, out: &mut dyn Write) -> Result<(), super::BenchError> {
    args.validate()
        .map_err(|e| super::BenchError::InvalidArgument(e.to_string()))?;
    report(args, out).map_err(super::BenchError::Failed)
}

fn report(args: &LogBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let report = measure(args)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&report, out)?;
    }
    Ok(())
}

/// Removes the working directory when the benchmark ends, however it ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), %error, "The benchmark's working directory could not be removed.");
        }
    }
}

/// Runs every case and returns the report.
pub fn measure(args: &LogBenchArgs) -> Result<LogBenchReport, LogBenchError> {
    args.validate()?;
    let work = WorkDir(
        args.dir
            .join(format!("outpost-bench-log-{}", std::process::id())),
    );
    std::fs::create_dir_all(&work.0).map_err(io_err(format!("creating {}", work.0.display())))?;
    let duration = Duration::from_secs_f64(args.seconds);
    let policies = [
        ("always".to_string(), FsyncPolicy::Named(NamedFsync::Always)),
        (
            format!("interval_ms={}", args.interval_ms),
            FsyncPolicy::Interval {
                interval_ms: args.interval_ms,
            },
        ),
    ];
    // The naive baseline runs first, on a quiet device: after the interval cases the kernel
    // may still be writing back, which would make it look slower than it is.
    settle();
    let naive = run_naive_baseline(&work.0.join("naive.dat"), args.record_bytes, duration)?;
    let mut cases = Vec::new();
    let mut run_id = 0usize;
    for (policy_name, policy) in &policies {
        for &producers in &args.producers {
            let mut runs = Vec::with_capacity(args.repeats);
            for repeat in 0..args.repeats {
                run_id += 1;
                let case_dir = work.0.join(format!("case-{run_id}"));
                let topic = format!(
                    "bench.{}.p{producers}.r{repeat}.{}.{run_id}",
                    if matches!(policy, FsyncPolicy::Interval { .. }) {
                        "interval"
                    } else {
                        "always"
                    },
                    std::process::id()
                );
                settle();
                let run = run_case(&CaseSetup {
                    dir: &case_dir,
                    baseline_path: &case_dir.join("baseline.dat"),
                    topic: &topic,
                    policy: *policy,
                    producers,
                    record_bytes: args.record_bytes,
                    duration,
                    slice: Duration::from_millis(args.slice_ms),
                })?;
                std::fs::remove_dir_all(&case_dir)
                    .map_err(io_err(format!("removing {}", case_dir.display())))?;
                tracing::info!(
                    policy = %policy_name,
                    producers,
                    repeat,
                    records = run.records,
                    fsyncs = run.fsyncs,
                    log_secs = run.log_time.as_secs_f64(),
                    baseline_secs = run.baseline_time.as_secs_f64(),
                    "A log benchmark run finished."
                );
                runs.push(run);
            }
            cases.push(summarize(policy_name, producers, args.record_bytes, &runs));
        }
    }
    Ok(LogBenchReport {
        record_bytes: args.record_bytes,
        seconds: args.seconds,
        repeats: args.repeats,
        dir: work.0.display().to_string(),
        naive_baseline_records_per_sec: naive,
        cases,
        method: METHOD.to_string(),
    })
}

/// Flushes every dirty page of the system (`sync(2)`), so that no measurement pays for the
/// write-back of an earlier one.
fn settle() {
    // SAFETY: `sync` takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::sync() };
}

/// What one case needs to run.
struct CaseSetup<'a> {
    /// The log's directory (created by the log).
    dir: &'a Path,
    /// The baseline's file.
    baseline_path: &'a Path,
    topic: &'a str,
    policy: FsyncPolicy,
    producers: usize,
    record_bytes: usize,
    /// Total time of the log's turns.
    duration: Duration,
    /// One turn of the log.
    slice: Duration,
}

/// What one run of a case measured, summed over its slices.
#[derive(Debug, Clone)]
struct CaseRun {
    /// Acknowledged records.
    records: u64,
    /// Time of the log's turns.
    log_time: Duration,
    /// Fsyncs the log made during its turns.
    fsyncs: u64,
    /// Segment bytes the log wrote.
    disk_bytes: u64,
    /// Time the baseline took for the same bytes and groups.
    baseline_time: Duration,
}

/// Shared by the producers and the conductor of one case.
struct Turns {
    /// Producers and conductor meet here to start a log turn.
    start: Barrier,
    /// … and here when it ends.
    end: Barrier,
    /// When the current turn ends, in ns since `epoch`.
    deadline_ns: AtomicU64,
    epoch: Instant,
    /// Set before the last `start`: producers leave instead of appending.
    stop: AtomicBool,
    /// Acknowledged records so far.
    acked: AtomicU64,
    /// The first append error; producers stop appending once one is set.
    error: Mutex<Option<LogError>>,
}

impl Turns {
    fn failed(&self) -> bool {
        self.error.lock().map_or(true, |e| e.is_some())
    }
}

/// One producer: appends one record per call during each turn, until stopped.
fn produce(turns: &Turns, topic: &Topic, value: &[u8]) {
    loop {
        turns.start.wait();
        if turns.stop.load(Ordering::Acquire) {
            return;
        }
        let deadline =
            turns.epoch + Duration::from_nanos(turns.deadline_ns.load(Ordering::Acquire));
        while !turns.failed() && Instant::now() < deadline {
            let record = NewRecord {
                value: value.to_vec(),
                ..NewRecord::default()
            };
            match topic.append(vec![record]) {
                Ok(_) => {
                    turns.acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if let Ok(mut slot) = turns.error.lock() {
                        slot.get_or_insert(e);
                    }
                }
            }
        }
        turns.end.wait();
    }
}

/// Runs one case: log turns and baseline turns, alternating.
fn run_case(setup: &CaseSetup<'_>) -> Result<CaseRun, LogBenchError> {
    let config = LogConfig {
        default_topic: TopicConfig {
            fsync: setup.policy,
            ..TopicConfig::default()
        },
        ..LogConfig::default()
    };
    let log = Log::open(setup.dir, config)?;
    let topic = log.topic_or_create(setup.topic)?;
    let mut baseline_file = fresh_file(setup.baseline_path)?;
    let value: Vec<u8> = (0..setup.record_bytes)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let turns = Turns {
        start: Barrier::new(setup.producers + 1),
        end: Barrier::new(setup.producers + 1),
        deadline_ns: AtomicU64::new(0),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        error: Mutex::new(None),
    };
    let interval = matches!(setup.policy, FsyncPolicy::Interval { .. });
    let mut run = CaseRun {
        records: 0,
        log_time: Duration::ZERO,
        fsyncs: 0,
        disk_bytes: 0,
        baseline_time: Duration::ZERO,
    };
    let outcome = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..setup.producers)
            .map(|_| scope.spawn(|| produce(&turns, &topic, &value)))
            .collect();
        // No early return in here: the producers wait at the barriers until `stop`.
        let mut outcome = Ok(());
        let mut remaining = setup.duration;
        while remaining > Duration::ZERO && outcome.is_ok() {
            let this = remaining.min(setup.slice);
            remaining -= this;
            let fsyncs_before = fsync_count(setup.topic).unwrap_or(0);
            let bytes_before = topic.stats().bytes;
            let acked_before = turns.acked.load(Ordering::Acquire);
            let began = Instant::now();
            let deadline = (began + this).duration_since(turns.epoch).as_nanos();
            turns.deadline_ns.store(
                u64::try_from(deadline).unwrap_or(u64::MAX),
                Ordering::Release,
            );
            turns.start.wait();
            turns.end.wait();
            if interval {
                if let Err(e) = topic.sync() {
                    outcome = Err(LogBenchError::Log(e));
                }
            }
            run.log_time += began.elapsed();
            if let Some(e) = turns.error.lock().ok().and_then(|mut e| e.take()) {
                outcome = Err(LogBenchError::Log(e));
            }
            if outcome.is_err() {
                break;
            }
            let Some(fsyncs_after) = fsync_count(setup.topic) else {
                outcome = Err(LogBenchError::NoFsyncCount(setup.topic.to_string()));
                break;
            };
            let fsyncs = fsyncs_after.saturating_sub(fsyncs_before);
            let bytes = topic.stats().bytes.saturating_sub(bytes_before);
            run.records += turns.acked.load(Ordering::Acquire) - acked_before;
            run.fsyncs += fsyncs;
            run.disk_bytes += bytes;
            match write_in_groups(&mut baseline_file, bytes, fsyncs) {
                Ok(took) => run.baseline_time += took,
                Err(e) => outcome = Err(e),
            }
        }
        turns.stop.store(true, Ordering::Release);
        turns.start.wait();
        for handle in handles {
            if handle.join().is_err() {
                outcome = Err(LogBenchError::ProducerPanicked);
            }
        }
        outcome
    });
    drop(baseline_file);
    let removed = std::fs::remove_file(setup.baseline_path).map_err(io_err(format!(
        "removing {}",
        setup.baseline_path.display()
    )));
    let closed = log.close();
    outcome?;
    removed?;
    closed?;
    Ok(run)
}

/// The current value of [`FSYNC_COUNTER`] for `topic` in the global registry, read from its
/// Prometheus rendering (the registry hands out no lookup by partial labels). `None` if the log
/// reports no such series.
fn fsync_count(topic: &str) -> Option<u64> {
    parse_counter(&crate::metrics::global().render(), FSYNC_COUNTER, topic)
}

/// Sums the series of `name` whose `topic` label is `topic` in Prometheus text.
fn parse_counter(text: &str, name: &str, topic: &str) -> Option<u64> {
    let wanted = format!("topic=\"{topic}\"");
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let matches = labels.split(',').any(|label| label == wanted);
        if let (true, Ok(v)) = (matches, value.trim().parse::<u64>()) {
            found = Some(found.unwrap_or(0) + v);
        }
    }
    found
}

/// Appends `total_bytes` to `file` in `groups` (at least 1) nearly equal groups, each one
/// `write` + `fdatasync`; returns the time taken.
fn write_in_groups(
    file: &mut File,
    total_bytes: u64,
    groups: u64,
) -> Result<Duration, LogBenchError> {
    let groups = groups.max(1);
    let base = total_bytes / groups;
    let extra = total_bytes % groups;
    let largest = usize::try_from(base + u64::from(extra > 0))
        .map_err(|_| LogBenchError::InvalidArgument("a group larger than memory".into()))?;
    let buffer: Vec<u8> = (0..largest).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    for group in 0..groups {
        let len = (base + u64::from(group < extra)) as usize;
        file.write_all(&buffer[..len])
            .map_err(io_err("writing the baseline file"))?;
        file.sync_data()
            .map_err(io_err("fdatasync of the baseline file"))?;
    }
    Ok(start.elapsed())
}

/// One writer, one `write` + `fdatasync` per record, for `duration`: records per second.
fn run_naive_baseline(
    path: &Path,
    record_bytes: usize,
    duration: Duration,
) -> Result<f64, LogBenchError> {
    let mut file = fresh_file(path)?;
    let record: Vec<u8> = (0..record_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    let start = Instant::now();
    let mut records = 0u64;
    while start.elapsed() < duration {
        file.write_all(&record)
            .map_err(io_err("writing the naive baseline file"))?;
        file.sync_data()
            .map_err(io_err("fdatasync of the naive baseline file"))?;
        records += 1;
    }
    let rate = records as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path).map_err(io_err(format!("removing {}", path.display())))?;
    Ok(rate)
}

fn fresh_file(path: &Path) -> Result<File, LogBenchError> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn summarize(
    policy: &str,
    producers: usize,
    record_bytes: usize,
    runs: &[CaseRun],
) -> LogBenchCase {
    let column = |f: &dyn Fn(&CaseRun) -> f64| median(runs.iter().map(f).collect());
    let rate = |run: &CaseRun| run.records as f64 / run.log_time.as_secs_f64();
    let baseline_rate = |run: &CaseRun| run.records as f64 / run.baseline_time.as_secs_f64();
    let ratio = |run: &CaseRun| rate(run) / baseline_rate(run);
    LogBenchCase {
        policy: policy.to_string(),
        producers,
        records_per_sec: column(&rate),
        mb_per_sec: column(&|run| rate(run) * record_bytes as f64 / 1e6),
        records_per_fsync: column(&|run| run.records as f64 / run.fsyncs.max(1) as f64),
        disk_bytes_per_record: column(&|run| run.disk_bytes as f64 / run.records.max(1) as f64),
        baseline_records_per_sec: column(&baseline_rate),
        ratio: column(&ratio),
        ratio_min: runs.iter().map(ratio).fold(f64::INFINITY, f64::min),
        ratio_max: runs.iter().map(ratio).fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Writes the report as an aligned text table with the method underneath.
pub fn write_table(report: &LogBenchReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "outpost bench log: {}-byte records, {} s per case, median of {} repeat(s), in {}",
        report.record_bytes, report.seconds, report.repeats, report.dir
    )?;
    writeln!(
        out,
        "{:<16} {:>9} {:>12} {:>8} {:>14} {:>12} {:>16} {:>7} {:>11}",
        "policy",
        "producers",
        "records/s",
        "MB/s",
        "records/fsync",
        "disk B/rec",
        "baseline rec/s",
        "ratio",
        "ratio range"
    )?;
    for case in &report.cases {
        writeln!(
            out,
            "{:<16} {:>9} {:>12.0} {:>8.2} {:>14.1} {:>12.1} {:>16.0} {:>7.2} {:>11}",
            case.policy,
            case.producers,
            case.records_per_sec,
            case.mb_per_sec,
            case.records_per_fsync,
            case.disk_bytes_per_record,
            case.baseline_records_per_sec,
            case.ratio,
            format!("{:.2}-{:.2}", case.ratio_min, case.ratio_max)
        )?;
    }
    writeln!(
        out,
        "naive baseline (1 writer, one write+fdatasync per record): {:.0} records/s",
        report.naive_baseline_records_per_sec
    )?;
    writeln!(out, "method: {}", report.method)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_args(dir: &Path) -> LogBenchArgs {
        LogBenchArgs {
            dir: dir.to_path_buf(),
            seconds: 0.2,
            producers: vec![1, 2],
            record_bytes: 200,
            repeats: 1,
            slice_ms: 100,
            interval_ms: 100,
            json: false,
        }
    }

    #[test]
    fn tiny_bench_reports_sane_numbers_for_every_case() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let report = measure(&tiny_args(tmp.path())).expect("the bench runs");
        assert_eq!(report.cases.len(), 4, "{report:?}");
        let shapes: Vec<_> = report
            .cases
            .iter()
            .map(|c| (c.policy.as_str(), c.producers))
            .collect();
        assert_eq!(
            shapes,
            [
                ("always", 1),
                ("always", 2),
                ("interval_ms=100", 1),
                ("interval_ms=100", 2)
            ]
        );
        for case in &report.cases {
            assert!(case.records_per_sec > 0.0, "{case:?}");
            assert!(case.mb_per_sec > 0.0, "{case:?}");
            assert!(case.records_per_fsync >= 1.0, "{case:?}");
            // Framing can only add bytes to the 200-byte payload.
            assert!(case.disk_bytes_per_record > 200.0, "{case:?}");
            assert!(case.baseline_records_per_sec > 0.0, "{case:?}");
            assert!(case.ratio.is_finite() && case.ratio > 0.0, "{case:?}");
            assert!(
                case.ratio_min <= case.ratio && case.ratio <= case.ratio_max,
                "{case:?}"
            );
        }
        assert!(report.naive_baseline_records_per_sec > 0.0);
        // The working directory is gone afterwards.
        let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("list").collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn interleaved_turns_account_for_every_record_and_byte() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("log");
        let baseline_path = tmp.path().join("baseline.dat");
        for (topic, policy) in [
            ("turns.always", FsyncPolicy::Named(NamedFsync::Always)),
            ("turns.interval", FsyncPolicy::Interval { interval_ms: 20 }),
        ] {
            let run = run_case(&CaseSetup {
                dir: &dir,
                baseline_path: &baseline_path,
                topic,
                policy,
                producers: 3,
                record_bytes: 100,
                duration: Duration::from_millis(150),
                slice: Duration::from_millis(40),
            })
            .expect("the case runs");
            let log = Log::open(&dir, LogConfig::default()).expect("reopen");
            let stats = log.topic(topic).expect("topic").stats();
            assert_eq!(stats.next_offset, run.records, "{run:?}");
            assert_eq!(stats.bytes, run.disk_bytes, "{run:?}");
            assert!(run.records > 0 && run.fsyncs > 0, "{run:?}");
            // Four turns (40+40+40+30 ms), each at least as long as planned.
            assert!(run.log_time >= Duration::from_millis(150), "{run:?}");
            assert!(run.baseline_time > Duration::ZERO, "{run:?}");
            assert!(!baseline_path.exists(), "the baseline file is removed");
            log.close().expect("close");
        }
    }

    #[test]
    fn table_and_json_outputs_carry_every_case() {
        let report = LogBenchReport {
            record_bytes: 200,
            seconds: 5.0,
            repeats: 3,
            dir: "/data/outpost-bench-log-1".into(),
            naive_baseline_records_per_sec: 400.0,
            cases: vec![LogBenchCase {
                policy: "always".into(),
                producers: 64,
                records_per_sec: 25_000.0,
                mb_per_sec: 5.0,
                records_per_fsync: 60.5,
                disk_bytes_per_record: 241.0,
                baseline_records_per_sec: 27_000.0,
                ratio: 0.93,
                ratio_min: 0.81,
                ratio_max: 1.2,
            }],
            method: METHOD.into(),
        };
        let mut text = Vec::new();
        write_table(&report, &mut text).expect("write");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("records/fsync"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("always"))
            .expect("a row");
        let cells: Vec<_> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "always",
                "64",
                "25000",
                "5.00",
                "60.5",
                "241.0",
                "27000",
                "0.93",
                "0.81-1.20"
            ]
        );
        assert!(text.contains("naive baseline"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["cases"][0]["ratio"], 0.93);
    }

    #[test]
    fn fsync_counter_is_read_by_topic_label() {
        let text = "# TYPE outpost_log_fsyncs_total counter\n\
            outpost_log_fsyncs_total{topic=\"a\"} 7\n\
            outpost_log_fsyncs_total{topic=\"ab\"} 100\n\
            outpost_log_fsyncs_total_other{topic=\"a\"} 1000\n";
        assert_eq!(parse_counter(text, FSYNC_COUNTER, "a"), Some(7));
        assert_eq!(parse_counter(text, FSYNC_COUNTER, "b"), None);
    }

    #[test]
    fn median_takes_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn nonsense_arguments_are_refused() {
        let mut args = tiny_args(Path::new("."));
        args.producers = vec![0];
        assert!(matches!(
            measure(&args),
            Err(LogBenchError::InvalidArgument(_))
        ));
    }

    #[test]
    fn grouped_baseline_writes_all_bytes_in_the_given_groups() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("b.dat");
        let mut file = fresh_file(&path).expect("file");
        write_in_groups(&mut file, 10_001, 3).expect("baseline");
        drop(file);
        let written = std::fs::read(&path).expect("read back");
        assert_eq!(written.len(), 10_001);
        // Three groups of 3334, 3334 and 3333 bytes, each starting the pattern afresh.
        assert_eq!(written[3334], 0);
        assert_eq!(written[6668], 0);
        assert_eq!(written[6667], (3333 % 251) as u8);
    }
}
