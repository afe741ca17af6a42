//! `outpost bench plugins`: the bundled fraud-score plugin's throughput in wasm, next to the same
//! plugin logic built natively and run in the same benchmark, and the per-record overhead of a
//! plugin that does nothing.
//!
//! # The workload
//! A deterministic generator (`--seed`) makes `--records` input records for `--cards` cards:
//! about 1 % of the cards are put on the blocklist first (`ref.blocklist`, action `add`), then
//! payments (`pos.payments`, the JSON of `shared/CONTRACTS.md`) spread over the stores' day with
//! per-card typical amounts, 60 % contactless, 30 % card present, 10 % card not present, 3 %
//! refunds, and about 4 % of the payments in fraud patterns: velocity bursts (eight sales a
//! minute apart), card-not-present bursts, amounts far above the card's usual, refund abuse. A
//! few blocklist changes happen during the day. Both sides get exactly the same records in the
//! same order.
//!
//! # What is measured (each repeat in turn, so the machine's load hits every case alike)
//! - **native**: fraud-score's Rust code compiled natively (`plugins/fraud-score/examples/
//!   bench_native.rs`, release profile of the plugins workspace: the same `opt-level`, LTO and
//!   `panic = "abort"` as its wasm build) runs through the SDK's test harness
//!   (`outpost_sdk::testing::Harness`: in-memory context, per-call transactions of state writes
//!   and emits, as the host has). The benchmark writes the workload to a file as the exact bytes
//!   `outpost_on_record` receives, builds the example with cargo in `--plugins-dir` (or runs
//!   `--native-bin`) and runs it as a subprocess; it times only its loop over the records. The
//!   guest workspace has its own toolchain (rustc 1.63 for wasm), so the runtime does not link
//!   the plugin's crate.
//! - **wasm, calls only**: the embedded (bundled) fraud-score module in the real [`Host`]: one
//!   instance on one thread, each record encoded and passed through `outpost_alloc` +
//!   `outpost_on_record`, emits collected and dropped, state writes kept in the instance's
//!   in-memory overlay and marked committed every `batch_records` records (the runner's batch
//!   size), as the runner does but without the sled commit. Every run starts from a fresh
//!   instance with empty state.
//! - **wasm, full runner**: the same module under the real [`RunnerHandle`] on a fresh log and
//!   state store under `--dir`: the workload is appended to the input topics first (not timed),
//!   then the clock runs from starting the runner until it has committed the offset past the last
//!   input: log reads, calls, output appends (`fraud.scores`, `fraud.alerts`, with provenance
//!   headers) and one sled commit of state and offsets per batch. Topics use `--fsync` (default
//!   `interval_ms=100`: background fsyncs, acks do not wait), so fsync latency does not dominate.
//! - **do-nothing**: ns per `Instance::call` of a payment record into a WAT module whose
//!   `outpost_on_record` returns 0 at once (pure host overhead: encode, alloc call, copy, call),
//!   and into the SDK's `noop` guest (adds the SDK's decode) when `plugins/dist/noop/` is built.
//!
//! Each repeat runs native, wasm calls only, wasm calls only, native (so a drift in the
//! machine's load hits both sides alike), then the full runner and the do-nothing cases.
//!
//! Every case is timed on two clocks. **records/s per core** divides by CPU time: the working
//! thread's (`CLOCK_THREAD_CPUTIME_ID`; the native side measures its own the same way), and for
//! the full runner the whole process's (runner thread, the log's and sled's threads), so time the
//! thread spends descheduled on a busy machine does not count but every helper thread's work
//! does. The wall-clock rate is shown next to it. The table shows the median over `--repeats`
//! and the spread; `wasm/native` is the median of per-repeat ratios of CPU-time rates (calls
//! only ÷ native, each pair measured back to back). Targets are judged on the per-core figures.
//! The emitted counts of the wasm and native runs must match: the same logic on the same input.
//! The runner's may differ a little: it reads its two input topics in its own interleaving, so a
//! blocklist update can land before or after a nearby payment of the same card.
//!
//! # Running it
//! From the source tree (the native side is built there with cargo; `plugins/build.sh` first
//! if the SDK `noop` guest should be measured too):
//!
//! ```text
//! cargo build --release -p outpost
//! target/release/outpost bench plugins              # table; --json for JSON
//! target/release/outpost bench plugins --repeats 9 --records 400000 --fsync never
//! ```
//!
//! The bundled module measured is the one embedded in the binary (`runtime/bundled/`), so
//! rebuild the guests and refresh `runtime/bundled/` (see its README) before measuring a change
//! to a plugin's code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::log::{FsyncPolicy, Log, LogConfig, NamedFsync, NewRecord, Record, TopicConfig};
use crate::plugins::host::{Host, HostConfig, Instance, PluginError};
use crate::plugins::manifest::Manifest;
use crate::plugins::registry;
use crate::plugins::runner::{RunState, RunnerConfig, RunnerHandle};
use crate::state::StateStore;

/// The bundled plugin measured.
const FRAUD_SCORE: &str = "fraud-score";
/// Input topics of fraud-score.
const PAYMENTS: &str = "pos.payments";
const BLOCKLIST: &str = "ref.blocklist";
/// First payment time of the workload: 2023-11-14T22:13:20Z.
const T0_MS: u64 = 1_700_000_000_000;
/// Mean gap between two payments of the workload, in ms (a busy chain of 20 stores).
const MEAN_GAP_MS: u64 = 400;
/// The runner case gives up when nothing moves for this long.
const RUNNER_STALL: Duration = Duration::from_secs(60);

/// A module that does nothing: `outpost_on_record` returns 0 at once. Inputs land at 64 KiB.
const NOOP_WAT: &str = r#"(module
  (memory (export "memory") 2)
  (func (export "outpost_abi_version") (result i32) (i32.const 1))
  (func (export "outpost_alloc") (param $n i32) (result i32)
    (if (i32.gt_u (local.get $n) (i32.const 65536)) (then (return (i32.const 0))))
    (i32.const 65536))
  (func (export "outpost_on_record") (param i32 i32) (result i32) (i32.const 0)))"#;

const NOOP_MANIFEST: &str =
    "name = \"noop\"\nversion = \"1\"\ninputs = [\"bench.input\"]\noutputs = []\n";

/// Errors of the plugin benchmark.
#[derive(Debug, thiserror::Error)]
pub enum PluginBenchError {
    /// A command-line value makes no sense.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The plugin host refused a module or failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A bundled plugin is missing or its manifest is invalid.
    #[error("bundled plugin {0}: {1}")]
    Bundled(String, String),
    /// A file operation failed, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Building or running the native side failed.
    #[error("native benchmark: {0}")]
    Native(String),
    /// The runner did not finish the workload.
    #[error("the plugin runner did not finish: {0}")]
    Runner(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PluginBenchError {
    let context = context.into();
    move |source| PluginBenchError::Io { context, source }
}

/// Arguments of `outpost bench plugins`.
#[derive(Debug, Clone, clap::Args)]
pub struct PluginBenchArgs {
    /// Input records of the workload (payments plus blocklist updates).
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Distinct cards in the workload.
    #[arg(long, default_value_t = 5_000)]
    pub cards: usize,
    /// Runs of every case; the report shows the median.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Calls per repeat of the do-nothing cases.
    #[arg(long, default_value_t = 500_000)]
    pub noop_records: usize,
    /// Input records per runner batch in the full-runner case (default: the runner's default,
    /// what `outpost run` uses).
    #[arg(long)]
    pub batch_records: Option<usize>,
    /// Records per append when the inputs are filled for the full-runner case (ingestion
    /// appends small batches; the log stores each append as one batch).
    #[arg(long, default_value_t = 100)]
    pub append_records: usize,
    /// Fsync policy of the topics in the full-runner case: `never`, `always` or
    /// `interval_ms=N`.
    #[arg(long, default_value = "interval_ms=100")]
    pub fsync: String,
    /// Directory in which the benchmark creates, and afterwards removes, its working directory
    /// (log, state store, workload file).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The plugins workspace (`plugins/` of the source tree): the native side is built there
    /// with cargo, and `dist/noop/` is looked for there. Default: the source tree this binary
    /// was built from, if it is still there.
    #[arg(long, value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Measure this fraud-score module (e.g. `plugins/dist/fraud-score/plugin.wasm` after a
    /// change) instead of the one embedded in the binary; the embedded manifest applies.
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
    /// A prebuilt `bench_native` binary to run instead of building it with cargo.
    #[arg(long, value_name = "FILE")]
    pub native_bin: Option<PathBuf>,
    /// Skip the native side (no wasm/native ratio).
    #[arg(long)]
    pub no_native: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl PluginBenchArgs {
    fn validate(&self) -> Result<FsyncPolicy, PluginBenchError> {
        let bad = |m: &str| Err(PluginBenchError::InvalidArgument(m.to_string()));
        if self.records < 100 {
            return bad("--records must be at least 100");
        }
        if self.cards == 0 || self.cards > 10_000_000 {
            return bad("--cards must be between 1 and 10000000");
        }
        if self.repeats == 0 {
            return bad("--repeats must be at least 1");
        }
        if self.batch_records == Some(0) || self.append_records == 0 {
            return bad("--batch-records and --append-records must be at least 1");
        }
        if self.noop_records == 0 {
            return bad("--noop-records must be at least 1");
        }
        parse_fsync(&self.fsync)
    }
}

/// `never`, `always` or `interval_ms=N`.
fn parse_fsync(text: &str) -> Result<FsyncPolicy, PluginBenchError> {
    match text {
        "never" => Ok(FsyncPolicy::Named(NamedFsync::Never)),
        "always" => Ok(FsyncPolicy::Named(NamedFsync::Always)),
        _ => match text
            .strip_prefix("interval_ms=")
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(interval_ms) if interval_ms > 0 => Ok(FsyncPolicy::Interval { interval_ms }),
            _ => Err(PluginBenchError::InvalidArgument(format!(
                "--fsync must be `never`, `always` or `interval_ms=N` (N ≥ 1), not {text:?}"
            ))),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The workload

/// splitmix64: small, fast and the same everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n (n ≥ 1).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// One input record of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkRecord {
    /// `pos.payments` or `ref.blocklist`.
    pub topic: &'static str,
    /// The card id.
    pub key: Vec<u8>,
    /// The JSON value.
    pub value: Vec<u8>,
    /// Event time, epoch ms (also the record's timestamp).
    pub ts_ms: u64,
}

#[derive(Debug, Clone)]
struct Card {
    id: String,
    typical_amount: f64,
    store: u64,
    loyalty: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    CardPresent,
    Contactless,
    CardNotPresent,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::CardPresent => "card_present",
            Channel::Contactless => "contactless",
            Channel::CardNotPresent => "card_not_present",
        }
    }
}

/// A payment before it is numbered and written as JSON.
#[derive(Debug, Clone, Copy)]
struct Pay {
    ts_ms: u64,
    card: usize,
    amount: f64,
    channel: Channel,
    refund: bool,
}

/// A blocklist change before it is written as JSON.
#[derive(Debug, Clone, Copy)]
struct Block {
    ts_ms: u64,
    card: usize,
    add: bool,
}

fn payment_json(id: u64, p: &Pay, card: &Card) -> Vec<u8> {
    let store = card.store;
    let terminal = (id % 8) + 1;
    let loyalty = match card.loyalty {
        Some(l) => format!(",\"loyalty_id\":\"L{l:07}\""),
        None => String::new(),
    };
    format!(
        "{{\"payment_id\":\"pay-{id:09}\",\"ts_ms\":{},\"store_id\":\"store-{store:03}\",\"terminal_id\":\"store-{store:03}-t{terminal}\",\"card_id\":\"{}\"{loyalty},\"amount\":{:.2},\"currency\":\"EUR\",\"channel\":\"{}\",\"kind\":\"{}\"}}",
        p.ts_ms,
        card.id,
        p.amount,
        p.channel.as_str(),
        if p.refund { "refund" } else { "sale" }
    )
    .into_bytes()
}

fn blocklist_json(card: &Card, add: bool) -> Vec<u8> {
    let reason = if add { "reported_stolen" } else { "cleared" };
    format!(
        "{{\"card_id\":\"{}\",\"action\":\"{}\",\"reason\":\"{reason}\"}}",
        card.id,
        if add { "add" } else { "remove" }
    )
    .into_bytes()
}

/// The deterministic synthetic workload: `records` records over `cards` cards.
pub fn generate(records: usize, cards: usize, seed: u64) -> Vec<WorkRecord> {
    let mut rng = Rng(seed ^ 0x6f75_7470_6f73_7421);
    let cards: Vec<Card> = (0..cards)
        .map(|_| {
            // Typical amounts from a few euros to a few hundred, most of them small.
            let u = rng.unit();
            Card {
                id: format!("tok_{:016x}", rng.next_u64()),
                typical_amount: 4.0 + 180.0 * u * u * u,
                store: rng.below(20),
                loyalty: (rng.unit() < 0.5).then(|| rng.below(10_000_000)),
            }
        })
        .collect();
    let blocked: Vec<usize> = (0..cards.len()).filter(|_| rng.unit() < 0.01).collect();
    let mut blocks: Vec<Block> = blocked
        .iter()
        .map(|&card| Block {
            ts_ms: T0_MS - 60_000,
            card,
            add: true,
        })
        .collect();
    let payments_wanted = records.saturating_sub(blocks.len()).max(1);
    let span_ms = payments_wanted as u64 * MEAN_GAP_MS;
    let n = cards.len() as u64;
    let amount = |rng: &mut Rng, card: &Card| {
        let a = card.typical_amount * (0.6 + 0.8 * rng.unit());
        (a * 100.0).round() / 100.0
    };
    let mut pays: Vec<Pay> = Vec::with_capacity(payments_wanted + 16);
    while pays.len() + blocks.len() < records {
        let card = rng.below(n) as usize;
        let ts_ms = T0_MS + rng.below(span_ms);
        let pattern = rng.unit();
        let c = &cards[card];
        if pattern < 0.004 {
            // Velocity burst: eight sales a minute apart.
            for i in 0..8 {
                let a = amount(&mut rng, c);
                pays.push(Pay {
                    ts_ms: ts_ms + i * 60_000,
                    card,
                    amount: a,
                    channel: Channel::Contactless,
                    refund: false,
                });
            }
        } else if pattern < 0.007 {
            // Card-not-present burst: five online sales within five minutes.
            for i in 0..5 {
                let a = amount(&mut rng, c);
                pays.push(Pay {
                    ts_ms: ts_ms + i * 55_000,
                    card,
                    amount: a,
                    channel: Channel::CardNotPresent,
                    refund: false,
                });
            }
        } else if pattern < 0.009 {
            // An amount far above the card's usual.
            pays.push(Pay {
                ts_ms,
                card,
                amount: (c.typical_amount * 25.0 * 100.0).round() / 100.0,
                channel: Channel::CardPresent,
                refund: false,
            });
        } else if pattern < 0.010 {
            // Refund abuse: one sale, then three refunds within half an hour.
            for i in 0..4 {
                let a = amount(&mut rng, c);
                pays.push(Pay {
                    ts_ms: ts_ms + i * 600_000,
                    card,
                    amount: a,
                    channel: Channel::CardPresent,
                    refund: i > 0,
                });
            }
        } else if pattern < 0.0101 {
            // A blocklist change during the day.
            let add = !blocked.contains(&card);
            blocks.push(Block { ts_ms, card, add });
        } else {
            let r = rng.unit();
            let channel = if r < 0.6 {
                Channel::Contactless
            } else if r < 0.9 {
                Channel::CardPresent
            } else {
                Channel::CardNotPresent
            };
            let a = amount(&mut rng, c);
            pays.push(Pay {
                ts_ms,
                card,
                amount: a,
                channel,
                refund: rng.unit() < 0.03,
            });
        }
    }
    // Patterns may overshoot by a few payments.
    pays.truncate(records - blocks.len());
    // Event-time order; blocklist updates at the same millisecond first.
    let mut events: Vec<(u64, u8, usize)> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.ts_ms, 0, i))
        .chain(pays.iter().enumerate().map(|(i, p)| (p.ts_ms, 1, i)))
        .collect();
    events.sort();
    let mut next_payment = 0u64;
    events
        .into_iter()
        .map(|(ts_ms, kind, i)| {
            if kind == 0 {
                let b = &blocks[i];
                let card = &cards[b.card];
                WorkRecord {
                    topic: BLOCKLIST,
                    key: card.id.clone().into_bytes(),
                    value: blocklist_json(card, b.add),
                    ts_ms,
                }
            } else {
                let p = &pays[i];
                let card = &cards[p.card];
                next_payment += 1;
                WorkRecord {
                    topic: PAYMENTS,
                    key: card.id.clone().into_bytes(),
                    value: payment_json(next_payment, p, card),
                    ts_ms,
                }
            }
        })
        .collect()
}

/// The workload as log records (offsets counted per topic).
fn as_log_records(work: &[WorkRecord]) -> Vec<(&'static str, Record)> {
    let (mut payments, mut blocklist) = (0u64, 0u64);
    work.iter()
        .map(|w| {
            let counter = if w.topic == PAYMENTS {
                &mut payments
            } else {
                &mut blocklist
            };
            let offset = *counter;
            *counter += 1;
            (
                w.topic,
                Record {
                    offset,
                    timestamp_ms: w.ts_ms,
                    key: Some(w.key.clone()),
                    value: w.value.clone(),
                    headers: Vec::new(),
                },
            )
        })
        .collect()
}

/// The workload file of the native side: per record a `u32` LE length and the ABI v1 encoding.
fn workload_file(records: &[(&'static str, Record)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoded = Vec::new();
    for (topic, record) in records {
        crate::plugins::host::abi::encode_record(&mut encoded, topic, record);
        out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        out.extend_from_slice(&encoded);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The report

/// One case's rates: medians over the repeats and the spread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    /// Median records per second.
    pub records_per_sec: f64,
    /// Median ns per record.
    pub ns_per_record: f64,
    /// Slowest repeat, records per second.
    pub min_records_per_sec: f64,
    /// Fastest repeat, records per second.
    pub max_records_per_sec: f64,
}

/// One case measured on both clocks: CPU time of the thread(s) doing the work (records/s per
/// core, robust on a busy machine) and wall-clock time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// Records per CPU-second: the per-core throughput.
    pub cpu: Rate,
    /// Records per wall-clock second.
    pub wall: Rate,
}

/// One timed repeat: records handled, wall-clock time, CPU time.
#[derive(Debug, Clone, Copy)]
struct Sample {
    records: u64,
    wall: Duration,
    cpu: Duration,
}

impl Measured {
    fn from_samples(samples: &[Sample]) -> Measured {
        let on = |clock: fn(&Sample) -> Duration| {
            let v: Vec<(u64, Duration)> = samples.iter().map(|s| (s.records, clock(s))).collect();
            Rate::from_samples(&v)
        };
        Measured {
            cpu: on(|s| s.cpu),
            wall: on(|s| s.wall),
        }
    }
}

/// Two samples as one (records and times added).
fn add(a: Option<Sample>, b: Sample) -> Sample {
    match a {
        None => b,
        Some(a) => Sample {
            records: a.records + b.records,
            wall: a.wall + b.wall,
            cpu: a.cpu + b.cpu,
        },
    }
}

impl Sample {
    fn cpu_rate(&self) -> f64 {
        self.records as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
    fn wall_rate(&self) -> f64 {
        self.records as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// CPU time consumed so far by the calling thread (`thread`) or the whole process.
fn cpu_time(thread: bool) -> Duration {
    let clock = if thread {
        libc::CLOCK_THREAD_CPUTIME_ID
    } else {
        libc::CLOCK_PROCESS_CPUTIME_ID
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and `clock` a clock id the kernel knows.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Rate {
    fn from_samples(samples: &[(u64, Duration)]) -> Rate {
        let rates: Vec<f64> = samples
            .iter()
            .map(|(n, d)| *n as f64 / d.as_secs_f64().max(1e-9))
            .collect();
        let ns: Vec<f64> = samples
            .iter()
            .map(|(n, d)| d.as_nanos() as f64 / (*n).max(1) as f64)
            .collect();
        Rate {
            records_per_sec: median(&rates),
            ns_per_record: median(&ns),
            min_records_per_sec: rates.iter().copied().fold(f64::INFINITY, f64::min),
            max_records_per_sec: rates.iter().copied().fold(0.0, f64::max),
        }
    }
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The workload's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadSummary {
    pub records: usize,
    pub payments: usize,
    pub blocklist_updates: usize,
    pub cards: usize,
    pub seed: u64,
    /// Mean bytes of a record value (JSON).
    pub mean_value_bytes: f64,
}

/// One target of the issue and whether this run met it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// The whole report of `outpost bench plugins`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginBenchReport {
    pub workload: WorkloadSummary,
    pub repeats: usize,
    /// `/proc/loadavg`'s 1-minute figure when the benchmark started (context for the noise).
    pub load_average: Option<f64>,
    /// fraud-score in wasm: host + guest calls, in-memory state.
    pub fraud_wasm_calls: Measured,
    /// fraud-score in wasm under the full runner (log → call → append → commit).
    pub fraud_wasm_runner: Measured,
    /// Fsync policy of the runner case's topics.
    pub runner_fsync: String,
    /// Input records per runner batch (one append per output topic and one commit each).
    pub runner_batch_records: usize,
    /// Share of the runner's time spent inside guest calls (median).
    pub runner_call_share: f64,
    /// fraud-score compiled natively, through the SDK harness; `None` when skipped.
    pub fraud_native: Option<Measured>,
    /// Median of per-repeat (wasm calls-only ÷ native) rates, on CPU time.
    pub wasm_native_ratio: Option<f64>,
    /// The same ratio on wall-clock time.
    pub wasm_native_ratio_wall: Option<f64>,
    pub wasm_native_ratio_min: Option<f64>,
    pub wasm_native_ratio_max: Option<f64>,
    /// Records emitted per repeat by the wasm calls-only run and by the native run.
    pub emitted_wasm: u64,
    pub emitted_native: Option<u64>,
    /// Records emitted to `fraud.scores` + `fraud.alerts` by the runner.
    pub emitted_runner: u64,
    /// The do-nothing WAT module, per call.
    pub noop_wat: Measured,
    /// The SDK's `noop` guest, per call; `None` when `plugins/dist/noop` is not built.
    pub noop_sdk: Option<Measured>,
    pub targets: Vec<Target>,
    pub method: String,
    /// Skipped cases and anything else worth knowing about this run.
    pub notes: Vec<String>,
}

const METHOD: &str = "Same deterministic workload on every side. native: fraud-score compiled \
natively (plugins workspace release profile) through outpost_sdk::testing::Harness, fed the \
exact ABI-encoded bytes, run as a subprocess that times its own loop. wasm calls only: the \
embedded module in the real Host, one instance, one thread, state in the in-memory overlay \
(marked committed every runner batch). full runner: the real RunnerHandle on a fresh log and \
sled store, timed from start until the last input offset is committed. records/s per core = \
records / CPU time (working thread; whole process for the runner). Each repeat runs native, \
wasm, wasm, native; figures are medians; ratio = median of per-repeat (wasm calls / native) \
CPU-time rates.";

// ---------------------------------------------------------------------------------------------
// Running it

/// Removes the working directory when the benchmark ends, however it ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), %error, "The benchmark's working directory could not be removed.");
        }
    }
}

/// Runs the benchmark and writes the report (a table, or JSON with `--json`) to `out`.
pub fn run(args: &PluginBenchArgs, out: &mut dyn Write) -> Result<(), super::BenchError> {
    args.validate()
        .map_err(|e| super::BenchError::InvalidArgument(e.to_string()))?;
    report(args, out).map_err(super::BenchError::Failed)
}

fn report(args: &PluginBenchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let report = measure(args)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&report, out)?;
    }
    Ok(())
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn bundled(name: &str) -> Result<(Manifest, &'static [u8]), PluginBenchError> {
    let plugin = registry::embedded()
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| PluginBenchError::Bundled(name.into(), "not embedded".into()))?;
    let manifest = Manifest::parse(plugin.manifest)
        .map_err(|e| PluginBenchError::Bundled(name.into(), e.to_string()))?;
    Ok((manifest, plugin.wasm))
}

fn default_plugins_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    dir.join("fraud-score").is_dir().then_some(dir)
}

/// Runs every case and returns the report.
pub fn measure(args: &PluginBenchArgs) -> Result<PluginBenchReport, PluginBenchError> {
    let fsync = args.validate()?;
    let load_average = load_average();
    let mut notes = Vec::new();
    let work = WorkDir(
        args.dir
            .join(format!("outpost-bench-plugins-{}", std::process::id())),
    );
    std::fs::create_dir_all(&work.0).map_err(io_err(format!("creating {}", work.0.display())))?;

    let workload = generate(args.records, args.cards, args.seed);
    let records = as_log_records(&workload);
    let payments = workload.iter().filter(|w| w.topic == PAYMENTS).count();
    let summary = WorkloadSummary {
        records: workload.len(),
        payments,
        blocklist_updates: workload.len() - payments,
        cards: args.cards,
        seed: args.seed,
        mean_value_bytes: workload.iter().map(|w| w.value.len()).sum::<usize>() as f64
            / workload.len().max(1) as f64,
    };

    // Speed, not quotas, is measured: a workload of many cards may hold more state than a box
    // gives a plugin by default (the native side lifts its quota likewise).
    let host = Host::new(HostConfig {
        default_state_bytes: u64::MAX,
        max_state_bytes: u64::MAX,
        default_state_keys: u64::MAX,
        max_state_keys: u64::MAX,
        ..HostConfig::default()
    })?;
    let (manifest, embedded) = bundled(FRAUD_SCORE)?;
    let module = match &args.wasm {
        Some(path) => {
            let wasm =
                std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
            notes.push(format!(
                "fraud-score module: {} (not the embedded one)",
                path.display()
            ));
            host.compile_named(&manifest.name, &wasm)?
        }
        None => host.compile_named(&manifest.name, embedded)?,
    };

    // The native side: build (or take) the binary and write its inputs.
    let plugins_dir = args.plugins_dir.clone().or_else(default_plugins_dir);
    let native = if args.no_native {
        notes.push("native side skipped (--no-native): no wasm/native ratio".into());
        None
    } else {
        let bin = match (&args.native_bin, &plugins_dir) {
            (Some(bin), _) => bin.clone(),
            (None, Some(dir)) => build_native(dir)?,
            (None, None) => {
                return Err(PluginBenchError::Native(
                    "the plugins workspace was not found: pass --plugins-dir, --native-bin or --no-native".into(),
                ))
            }
        };
        let workload_path = work.0.join("workload.bin");
        let config_path = work.0.join("config.json");
        std::fs::write(&workload_path, workload_file(&records))
            .map_err(io_err("writing the native workload"))?;
        std::fs::write(&config_path, manifest.config_json())
            .map_err(io_err("writing the native config"))?;
        Some((bin, workload_path, config_path))
    };

    let noop_wat = host.compile_named("noop", NOOP_WAT.as_bytes())?;
    let noop_manifest = Manifest::parse(NOOP_MANIFEST)
        .map_err(|e| PluginBenchError::Bundled("noop".into(), e.to_string()))?;
    let noop_sdk = match plugins_dir.as_ref().map(|d| d.join("dist/noop")) {
        Some(dir) if dir.join("plugin.wasm").is_file() => {
            let wasm = std::fs::read(dir.join("plugin.wasm"))
                .map_err(io_err("reading dist/noop/plugin.wasm"))?;
            let text = std::fs::read_to_string(dir.join("plugin.toml"))
                .map_err(io_err("reading dist/noop/plugin.toml"))?;
            let m = Manifest::parse(&text)
                .map_err(|e| PluginBenchError::Bundled("noop".into(), e.to_string()))?;
            let module = host.compile_named(&m.name, &wasm)?;
            Some((m, module))
        }
        _ => {
            notes.push(
                "SDK noop guest not measured: plugins/dist/noop is not built (run plugins/build.sh)"
                    .into(),
            );
            None
        }
    };
    let noop_input: Vec<Record> = records
        .iter()
        .filter(|(t, _)| *t == PAYMENTS)
        .take(1024)
        .map(|(_, r)| r.clone())
        .collect();

    // The benchmark measures how fast the runner can go: no output quota.
    let mut runner_cfg = RunnerConfig {
        default_output_records_per_sec: u64::MAX,
        max_output_records_per_sec: u64::MAX,
        default_output_bytes_per_sec: u64::MAX,
        max_output_bytes_per_sec: u64::MAX,
        ..RunnerConfig::default()
    };
    if let Some(n) = args.batch_records {
        runner_cfg.batch_records = n;
    }
    let mut native_samples = Vec::new();
    let mut calls_samples = Vec::new();
    let mut runner_samples = Vec::new();
    let mut call_shares = Vec::new();
    let mut ratios = Vec::new();
    let mut wall_ratios = Vec::new();
    let mut noop_wat_samples = Vec::new();
    let mut noop_sdk_samples = Vec::new();
    let (mut emitted_wasm, mut emitted_native, mut emitted_runner) = (0u64, None, 0u64);
    for repeat in 0..args.repeats {
        // Native, wasm, wasm, native: a drift in the machine's load during the repeat hits both
        // sides alike, and the ratio compares the sums.
        let mut native_pair: Option<Sample> = None;
        let mut wasm_pair: Option<Sample> = None;
        for step in 0..4 {
            if step == 0 || step == 3 {
                if let Some((bin, workload_path, config_path)) = &native {
                    let run = run_native(bin, workload_path, config_path)?;
                    emitted_native = Some(run.emitted);
                    if run.failed > 0 {
                        notes.push(format!(
                            "native: {} records failed in repeat {repeat}",
                            run.failed
                        ));
                    }
                    native_pair = Some(add(native_pair, run.sample()));
                }
            } else {
                let calls = run_calls(
                    &host,
                    &manifest,
                    &module,
                    &records,
                    runner_cfg.batch_records,
                )?;
                emitted_wasm = calls.emitted;
                if calls.failed > 0 {
                    notes.push(format!(
                        "wasm: {} records failed in repeat {repeat}",
                        calls.failed
                    ));
                }
                wasm_pair = Some(add(wasm_pair, calls.sample()));
            }
        }
        if let Some(wasm) = wasm_pair {
            calls_samples.push(wasm);
            if let Some(native) = native_pair {
                native_samples.push(native);
                ratios.push(wasm.cpu_rate() / native.cpu_rate());
                wall_ratios.push(wasm.wall_rate() / native.wall_rate());
            }
        }

        let dir = work.0.join(format!("runner-{repeat}"));
        let case = RunnerCase {
            fsync,
            append_records: args.append_records,
            cfg: runner_cfg.clone(),
        };
        let runner = run_runner(&host, &manifest, &module, &workload, &dir, case)?;
        std::fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
        emitted_runner = runner.emitted;
        runner_samples.push(Sample {
            records: runner.records,
            wall: runner.elapsed,
            cpu: runner.cpu,
        });
        call_shares.push(runner.call_share);

        noop_wat_samples.push(run_noop(
            &host,
            &noop_manifest,
            &noop_wat,
            &noop_input,
            args.noop_records,
        )?);
        if let Some((m, module)) = &noop_sdk {
            noop_sdk_samples.push(run_noop(&host, m, module, &noop_input, args.noop_records)?);
        }
        tracing::info!(repeat, "A plugin benchmark repeat finished.");
    }

    if let Some(native) = emitted_native {
        if native != emitted_wasm {
            notes.push(format!(
                "MISMATCH: the wasm run emitted {emitted_wasm} records, the native run {native}"
            ));
        }
    }
    let fraud_wasm_calls = Measured::from_samples(&calls_samples);
    let fraud_wasm_runner = Measured::from_samples(&runner_samples);
    let fraud_native =
        (!native_samples.is_empty()).then(|| Measured::from_samples(&native_samples));
    let noop_wat = Measured::from_samples(&noop_wat_samples);
    let noop_sdk =
        (!noop_sdk_samples.is_empty()).then(|| Measured::from_samples(&noop_sdk_samples));
    let ratio = (!ratios.is_empty()).then(|| median(&ratios));

    let mut targets = vec![
        Target {
            what: "fraud-score, wasm, full runner, one core".into(),
            target: "≥ 200000 records/s".into(),
            measured: format!("{:.0} records/s", fraud_wasm_runner.cpu.records_per_sec),
            met: fraud_wasm_runner.cpu.records_per_sec >= 200_000.0,
        },
        Target {
            what: "fraud-score, wasm, calls only, one core".into(),
            target: "≥ 200000 records/s".into(),
            measured: format!("{:.0} records/s", fraud_wasm_calls.cpu.records_per_sec),
            met: fraud_wasm_calls.cpu.records_per_sec >= 200_000.0,
        },
    ];
    if let Some(ratio) = ratio {
        targets.push(Target {
            what: "wasm/native (calls only ÷ native)".into(),
            target: "≥ 0.5".into(),
            measured: format!("{ratio:.2}"),
            met: ratio >= 0.5,
        });
    }
    targets.push(Target {
        what: "do-nothing plugin (WAT), per record".into(),
        target: "≤ 300 ns".into(),
        measured: format!("{:.0} ns", noop_wat.cpu.ns_per_record),
        met: noop_wat.cpu.ns_per_record <= 300.0,
    });
    if let Some(sdk) = &noop_sdk {
        targets.push(Target {
            what: "do-nothing plugin (SDK noop guest), per record".into(),
            target: "≤ 300 ns".into(),
            measured: format!("{:.0} ns", sdk.cpu.ns_per_record),
            met: sdk.cpu.ns_per_record <= 300.0,
        });
    }

    Ok(PluginBenchReport {
        workload: summary,
        repeats: args.repeats,
        load_average,
        fraud_wasm_calls,
        fraud_wasm_runner,
        runner_fsync: args.fsync.clone(),
        runner_batch_records: runner_cfg.batch_records,
        runner_call_share: median(&call_shares),
        fraud_native,
        wasm_native_ratio: ratio,
        wasm_native_ratio_wall: (!wall_ratios.is_empty()).then(|| median(&wall_ratios)),
        wasm_native_ratio_min: (!ratios.is_empty())
            .then(|| ratios.iter().copied().fold(f64::INFINITY, f64::min)),
        wasm_native_ratio_max: (!ratios.is_empty())
            .then(|| ratios.iter().copied().fold(0.0, f64::max)),
        emitted_wasm,
        emitted_native,
        emitted_runner,
        noop_wat,
        noop_sdk,
        targets,
        method: METHOD.to_string(),
        notes,
    })
}

/// What one timed run did.
#[derive(Debug, Clone, Copy)]
struct Run {
    records: u64,
    elapsed: Duration,
    /// CPU time of the thread that did the work.
    cpu: Duration,
    emitted: u64,
    failed: u64,
}

impl Run {
    fn sample(&self) -> Sample {
        Sample {
            records: self.records,
            wall: self.elapsed,
            cpu: self.cpu,
        }
    }
}

/// fraud-score through the host, calls only: one fresh instance, the whole workload.
fn run_calls(
    host: &Host,
    manifest: &Manifest,
    module: &crate::plugins::host::CompiledModule,
    records: &[(&'static str, Record)],
    batch_records: usize,
) -> Result<Run, PluginBenchError> {
    let mut instance = host.instantiate(manifest, module)?;
    let (mut emitted, mut failed) = (0u64, 0u64);
    let started = Instant::now();
    let cpu_started = cpu_time(true);
    for (i, (topic, record)) in records.iter().enumerate() {
        match instance.call(topic, record) {
            Ok(()) => emitted += instance.drain_emits().count() as u64,
            Err(failure) => {
                failed += 1;
                if failure.kind.needs_restart() {
                    instance.restart()?;
                }
            }
        }
        if (i + 1) % batch_records == 0 {
            commit_in_memory(&mut instance);
        }
    }
    commit_in_memory(&mut instance);
    Ok(Run {
        records: records.len() as u64,
        elapsed: started.elapsed(),
        cpu: cpu_time(true).saturating_sub(cpu_started),
        emitted,
        failed,
    })
}

/// The runner's end of batch without sled: the overlay's ops become the committed cache.
fn commit_in_memory(instance: &mut Instance) {
    let ops = instance.take_state_ops();
    instance.committed(ops);
}

/// `n` calls of a do-nothing plugin with payment records.
fn run_noop(
    host: &Host,
    manifest: &Manifest,
    module: &crate::plugins::host::CompiledModule,
    input: &[Record],
    n: usize,
) -> Result<Sample, PluginBenchError> {
    let mut instance = host.instantiate(manifest, module)?;
    let fail = |e: crate::plugins::host::CallFailure| {
        PluginBenchError::Runner(format!("the do-nothing plugin failed: {e}"))
    };
    // Warm up caches and the instance's buffers.
    for record in input.iter().take(1000) {
        instance.call("bench.input", record).map_err(fail)?;
    }
    let started = Instant::now();
    let cpu_started = cpu_time(true);
    for record in input.iter().cycle().take(n) {
        instance.call("bench.input", record).map_err(fail)?;
    }
    Ok(Sample {
        records: n as u64,
        cpu: cpu_time(true).saturating_sub(cpu_started),
        wall: started.elapsed(),
    })
}

/// What the runner case measured.
#[derive(Debug, Clone, Copy)]
struct RunnerRun {
    records: u64,
    elapsed: Duration,
    /// CPU time of the whole process (runner thread, log and sled threads) during the run.
    cpu: Duration,
    emitted: u64,
    /// Time in guest calls ÷ elapsed.
    call_share: f64,
}

/// How the full-runner case is set up.
#[derive(Debug, Clone)]
struct RunnerCase {
    /// Fsync policy of every topic.
    fsync: FsyncPolicy,
    /// Input records per append when the inputs are filled.
    append_records: usize,
    cfg: RunnerConfig,
}

/// fraud-score under the real runner on a fresh log and state store in `dir`.
fn run_runner(
    host: &Host,
    manifest: &Manifest,
    module: &crate::plugins::host::CompiledModule,
    workload: &[WorkRecord],
    dir: &Path,
    case: RunnerCase,
) -> Result<RunnerRun, PluginBenchError> {
    let RunnerCase {
        fsync,
        append_records,
        cfg,
    } = case;
    let config = LogConfig {
        min_free_bytes: 0,
        default_topic: TopicConfig {
            fsync,
            ..TopicConfig::default()
        },
        ..LogConfig::default()
    };
    let log = Log::open(&dir.join("log"), config)?;
    let state = StateStore::open(&dir.join("state"))?;
    // Fill the inputs first (not timed), `append_records` per append.
    let mut expected = Vec::new();
    for topic_name in [PAYMENTS, BLOCKLIST] {
        let topic = log.topic_or_create(topic_name)?;
        let mine: Vec<&WorkRecord> = workload.iter().filter(|w| w.topic == topic_name).collect();
        for chunk in mine.chunks(append_records) {
            topic.append(
                chunk
                    .iter()
                    .map(|w| NewRecord {
                        key: Some(w.key.clone()),
                        value: w.value.clone(),
                        headers: Vec::new(),
                        timestamp_ms: Some(w.ts_ms),
                    })
                    .collect(),
            )?;
        }
        expected.push((topic_name.to_string(), topic.next_offset()));
    }
    let total: u64 = expected.iter().map(|(_, n)| n).sum();

    let started = Instant::now();
    let cpu_started = cpu_time(false);
    let runner = RunnerHandle::start(
        host,
        manifest.clone(),
        module.clone(),
        log.clone(),
        state,
        cfg,
    )?;
    let mut last_progress = (0u64, Instant::now());
    let status = loop {
        let status = runner.status();
        let done: u64 = status.offsets.iter().map(|(_, n)| n).sum();
        let finished = expected
            .iter()
            .all(|(t, n)| status.offsets.iter().any(|(s, m)| s == t && m >= n));
        if finished {
            break status;
        }
        if status.state != RunState::Running {
            return Err(PluginBenchError::Runner(format!(
                "it is {} after {done} of {total} records: {}",
                status.state.as_str(),
                status.last_error.unwrap_or_default()
            )));
        }
        if done > last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > RUNNER_STALL {
            runner.stop_blocking();
            return Err(PluginBenchError::Runner(format!(
                "no progress for {} s after {done} of {total} records",
                RUNNER_STALL.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let elapsed = started.elapsed();
    let cpu = cpu_time(false).saturating_sub(cpu_started);
    runner.stop_blocking();
    let emitted: u64 = manifest
        .outputs
        .iter()
        .filter_map(|o| log.topic(o).ok())
        .map(|t| t.next_offset())
        .sum();
    if status.failed > 0 {
        return Err(PluginBenchError::Runner(format!(
            "{} records failed: {}",
            status.failed,
            status.last_error.unwrap_or_default()
        )));
    }
    log.close()?;
    let call_secs = status.ns_per_record * status.processed as f64 / 1e9;
    Ok(RunnerRun {
        records: total,
        elapsed,
        cpu,
        emitted,
        call_share: call_secs / elapsed.as_secs_f64().max(1e-9),
    })
}

// ---------------------------------------------------------------------------------------------
// The native side

/// `cargo` to build the native side with: `$CARGO` (set when run through cargo), else `cargo`
/// on the PATH, else rustup's default place.
fn cargo() -> PathBuf {
    if let Some(cargo) = std::env::var_os("CARGO") {
        return PathBuf::from(cargo);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("cargo").is_file()))
        .unwrap_or(false);
    if !on_path {
        if let Some(home) = std::env::var_os("HOME") {
            let rustup = Path::new(&home).join(".cargo/bin/cargo");
            if rustup.is_file() {
                return rustup;
            }
        }
    }
    PathBuf::from("cargo")
}

/// Builds `bench_native` in the plugins workspace (crates from Debian's vendored registry when
/// it exists, as `plugins/test.sh` does) and returns the executable's path.
fn build_native(plugins: &Path) -> Result<PathBuf, PluginBenchError> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(plugins).args([
        "build",
        "--release",
        "-p",
        "fraud-score",
        "--example",
        "bench_native",
        "--message-format=json-render-diagnostics",
    ]);
    let registry = std::env::var_os("DEBIAN_CARGO_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/cargo/registry"));
    if registry.is_dir() && std::env::var_os("OUTPOST_USE_CRATES_IO").is_none() {
        cmd.args([
            "--offline".to_string(),
            "--config".to_string(),
            "source.crates-io.replace-with=\"debian\"".to_string(),
            "--config".to_string(),
            format!("source.debian.directory=\"{}\"", registry.display()),
        ]);
    }
    tracing::info!(dir = %plugins.display(), "Building the native side of the plugin benchmark.");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PluginBenchError::Native(format!("cannot run cargo: {e}")))?;
    if !output.status.success() {
        return Err(PluginBenchError::Native(format!(
            "cargo build of bench_native in {} failed ({}): {}",
            plugins.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "bench_native")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| PluginBenchError::Native("cargo built no bench_native executable".into()))
}

/// One repeat of the native side.
fn run_native(bin: &Path, workload: &Path, config: &Path) -> Result<Run, PluginBenchError> {
    let output = Command::new(bin)
        .arg(workload)
        .arg(config)
        .arg("1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PluginBenchError::Native(format!("cannot run {}: {e}", bin.display())))?;
    if !output.status.success() {
        return Err(PluginBenchError::Native(format!(
            "{} failed ({}): {}",
            bin.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line: serde_json::Value = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| PluginBenchError::Native(format!("no result line in {text:?}")))?;
    let field = |name: &str| {
        line[name]
            .as_u64()
            .ok_or_else(|| PluginBenchError::Native(format!("no {name} in {line}")))
    };
    Ok(Run {
        records: field("records")?,
        elapsed: Duration::from_nanos(field("nanos")?),
        cpu: Duration::from_nanos(field("cpu_nanos")?),
        emitted: field("emitted")?,
        failed: field("failed")?,
    })
}

// ---------------------------------------------------------------------------------------------
// The table

fn write_table(r: &PluginBenchReport, out: &mut dyn Write) -> std::io::Result<()> {
    let w = &r.workload;
    writeln!(
        out,
        "outpost bench plugins: {} records ({} payments, {} blocklist updates, {} cards, seed {}, {:.0} B/value), {} repeats, medians",
        w.records, w.payments, w.blocklist_updates, w.cards, w.seed, w.mean_value_bytes, r.repeats
    )?;
    if let Some(load) = r.load_average {
        writeln!(out, "load average (1 min) at start: {load:.2}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<62} {:>13} {:>11} {:>22} {:>12}",
        "case", "records/s/core", "ns/rec CPU", "slowest..fastest /s", "records/s wall"
    )?;
    let mut row = |name: &str, m: &Measured| {
        writeln!(
            out,
            "{:<62} {:>13.0} {:>11.0} {:>22} {:>12.0}",
            name,
            m.cpu.records_per_sec,
            m.cpu.ns_per_record,
            format!(
                "{:.0}..{:.0}",
                m.cpu.min_records_per_sec, m.cpu.max_records_per_sec
            ),
            m.wall.records_per_sec,
        )
    };
    if let Some(native) = &r.fraud_native {
        row("fraud-score native (SDK harness)", native)?;
    }
    row(
        "fraud-score wasm, calls only (host + guest)",
        &r.fraud_wasm_calls,
    )?;
    row(
        &format!(
            "fraud-score wasm, full runner (fsync {}, batch {})",
            r.runner_fsync, r.runner_batch_records
        ),
        &r.fraud_wasm_runner,
    )?;
    row("do-nothing WAT module, per call", &r.noop_wat)?;
    if let Some(sdk) = &r.noop_sdk {
        row("do-nothing SDK guest (plugins/noop), per call", sdk)?;
    }
    writeln!(out)?;
    if let (Some(ratio), Some(lo), Some(hi)) = (
        r.wasm_native_ratio,
        r.wasm_native_ratio_min,
        r.wasm_native_ratio_max,
    ) {
        writeln!(
            out,
            "wasm/native (calls only ÷ native, CPU time): {ratio:.2} (repeats {lo:.2}..{hi:.2}); on wall-clock time: {:.2}",
            r.wasm_native_ratio_wall.unwrap_or(f64::NAN)
        )?;
    }
    writeln!(
        out,
        "runner: {:.0} % of its wall-clock time inside guest calls; its CPU time is the whole process's (runner, log and sled threads)",
        r.runner_call_share * 100.0
    )?;
    let native = r
        .emitted_native
        .map_or("not run".to_string(), |n| n.to_string());
    writeln!(
        out,
        "emitted per run: wasm {}, native {native}, runner {}",
        r.emitted_wasm, r.emitted_runner
    )?;
    writeln!(out)?;
    writeln!(out, "targets:")?;
    for t in &r.targets {
        writeln!(
            out,
            "  {:<4} {:<50} {:>22}  (target {})",
            if t.met { "ok" } else { "MISS" },
            t.what,
            t.measured,
            t.target
        )?;
    }
    for note in &r.notes {
        writeln!(out, "note: {note}")?;
    }
    writeln!(out)?;
    writeln!(out, "method: {}", r.method)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_deterministic_and_has_the_asked_size() {
        let a = generate(5_000, 300, 7);
        let b = generate(5_000, 300, 7);
        assert_eq!(a.len(), 5_000);
        assert_eq!(a, b);
        assert_ne!(a, generate(5_000, 300, 8));
        assert!(
            a.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms),
            "event-time order"
        );
    }

    #[test]
    fn workload_payments_follow_the_contract_and_contain_fraud_patterns() {
        let work = generate(20_000, 1_000, 42);
        let payments: Vec<serde_json::Value> = work
            .iter()
            .filter(|w| w.topic == PAYMENTS)
            .map(|w| serde_json::from_slice(&w.value).unwrap())
            .collect();
        for p in &payments {
            for field in [
                "payment_id",
                "ts_ms",
                "store_id",
                "terminal_id",
                "card_id",
                "amount",
                "currency",
                "channel",
                "kind",
            ] {
                assert!(p.get(field).is_some(), "{field} missing in {p}");
            }
        }
        let blocklist = work.iter().filter(|w| w.topic == BLOCKLIST).count();
        assert!(blocklist >= 5, "{blocklist} blocklist updates");
        let cnp = payments
            .iter()
            .filter(|p| p["channel"] == "card_not_present")
            .count();
        let refunds = payments.iter().filter(|p| p["kind"] == "refund").count();
        assert!(cnp > payments.len() / 20 && refunds > payments.len() / 50);
        let ids: std::collections::BTreeSet<&str> = payments
            .iter()
            .map(|p| p["payment_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), payments.len(), "payment ids are unique");
    }

    #[test]
    fn native_workload_file_frames_each_abi_record() {
        let work = generate(200, 10, 1);
        let records = as_log_records(&work);
        let file = workload_file(&records);
        let mut rest = &file[..];
        let mut count = 0;
        while !rest.is_empty() {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let encoded = &rest[4..4 + len];
            let topic_len = u32::from_le_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]);
            let topic = std::str::from_utf8(&encoded[4..4 + topic_len as usize]).unwrap();
            assert_eq!(topic, records[count].0);
            rest = &rest[4 + len..];
            count += 1;
        }
        assert_eq!(count, 200);
    }

    #[test]
    fn fsync_argument_parses_the_three_policies_and_names_the_flag_otherwise() {
        assert_eq!(
            parse_fsync("never").unwrap(),
            FsyncPolicy::Named(NamedFsync::Never)
        );
        assert_eq!(
            parse_fsync("interval_ms=250").unwrap(),
            FsyncPolicy::Interval { interval_ms: 250 }
        );
        let err = parse_fsync("sometimes").unwrap_err().to_string();
        assert!(err.contains("--fsync"), "{err}");
        assert!(parse_fsync("interval_ms=0").is_err());
    }

    #[test]
    fn rates_are_medians_with_their_spread() {
        let r = Rate::from_samples(&[
            (100, Duration::from_millis(1)),
            (100, Duration::from_millis(2)),
            (100, Duration::from_millis(4)),
        ]);
        assert_eq!(r.records_per_sec, 50_000.0);
        assert_eq!(r.ns_per_record, 20_000.0);
        assert_eq!(r.min_records_per_sec, 25_000.0);
        assert_eq!(r.max_records_per_sec, 100_000.0);
    }

    #[test]
    fn measured_rates_keep_cpu_and_wall_clock_apart() {
        let sample = |cpu_ms, wall_ms| Sample {
            records: 1000,
            cpu: Duration::from_millis(cpu_ms),
            wall: Duration::from_millis(wall_ms),
        };
        let m = Measured::from_samples(&[sample(1, 4), sample(1, 2), sample(2, 8)]);
        assert_eq!(m.cpu.records_per_sec, 1_000_000.0);
        assert_eq!(m.wall.records_per_sec, 250_000.0);
    }

    #[test]
    fn thread_cpu_time_counts_work_and_not_sleep() {
        let (cpu0, wall0) = (cpu_time(true), Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        let mut x = 0u64;
        while wall0.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let cpu = cpu_time(true) - cpu0;
        assert!(cpu > Duration::from_millis(1), "{cpu:?}");
        assert!(cpu < wall0.elapsed(), "{cpu:?} should miss the sleep");
        assert!(
            cpu_time(false) >= cpu,
            "the process counts at least this thread"
        );
    }
}
