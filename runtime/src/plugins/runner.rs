//! The durable consumer that runs one plugin: it reads the plugin's input topics from its
//! committed offsets, calls the guest once per record, appends what the guest emitted to the
//! output topics, dead-letters records the guest failed on, and commits the plugin's state
//! changes together with the new input offsets.
//!
//! # The loop
//! Each plugin runs on its own OS thread (guest calls are CPU-bound and blocking). The consumer
//! is named `plugin:<name>` in the state store; its state namespace is `<name>`. An input may
//! be a `prefix*` pattern: every existing topic whose name starts with the prefix is an input,
//! except the plugin's own outputs and dead-letter topic (so a pattern cannot make it read its
//! own emits); topics created later are picked up within [`RESCAN_EVERY`] (or when the runner
//! next goes idle), starting at their committed offset, else at their start; a plugin whose
//! patterns match no topic yet sleeps and looks again every `idle_wait_ms`. A batch is up
//! to `batch_records` records, read round-robin from the inputs (an equal share from each input
//! that has records, starting at a different input every batch), so one busy input cannot
//! starve another and an idle one does not shrink the batch; order
//! within a topic is always kept. With nothing to read the thread sleeps in
//! `Topic::wait_for` (no polling) until a record arrives, the idle timeout passes, or it is
//! stopped.
//!
//! A batch also ends early, after the record in progress, once its calls have run
//! `max_batch_ms`, its pending outputs reach `max_pending_output_bytes` or its pending state
//! writes reach `max_pending_state_bytes` (so one commit stays a few MiB, however much state a
//! plugin writes per record); the records read but not processed are read again by the next
//! batch.
//!
//! For each record the guest is called. On success its emits join the batch's outputs and its
//! state writes join the batch's state overlay (later records of the batch read them). On
//! failure — a trap (e.g. a panic), a blown CPU deadline, out of memory, stack exhaustion,
//! `proc_exit`, or a non-zero return — the record's emits and state writes are discarded and the
//! record goes to the topic `<name>.dlq`: its original key, value, timestamp and headers, plus
//! `outpost-error` (`<kind>: <message>`), `outpost-plugin`, `outpost-source-topic` and
//! `outpost-source-offset`. After a trap the instance is rebuilt (fresh store, init again)
//! before the next record. Processing moves on.
//!
//! A non-zero return is the plugin *rejecting* the record (malformed input, a value it cannot
//! use): that is the input's fault, not the plugin's, so it is dead-lettered and counted as
//! `rejected` but never moves the plugin towards quarantine — five garbage payments cannot
//! switch fraud scoring off. The plugin's own failures (traps, deadlines, out of memory, stack
//! overflow, `proc_exit`, abuse of the host calls) do.
//!
//! After the batch: each output topic's records are appended with one append per topic (the
//! dead letters likewise), every output record carrying `outpost-plugin: <name>`,
//! `outpost-source-topic` and `outpost-source-offset` of the input it came from; output topics
//! whose fsync policy is `interval` are then fsynced (on `always` the append already was;
//! `never` means never); THEN the batch's state ops and the new input offsets are committed in
//! one `StateStore::commit`. So an answer topic such as `fraud.scores` can be an `interval`
//! topic — readable, and sent back to the POS by its sink, the moment it is appended — and
//! still never lose an output.
//!
//! # Delivery semantics
//! - **State is exactly-once per input record.** A record's state writes and the offset past it
//!   are committed in the same atomic sled transaction, and the store recovers to a prefix of
//!   whole commits. After a crash (or a failed append/commit) the plugin resumes at the last
//!   committed offset with exactly the state committed with it, so no input is ever applied to
//!   state twice and none is skipped.
//! - **Outputs and dead letters are at-least-once.** They are appended before the commit that
//!   moves the offset past their input; a crash between the two makes the plugin process those
//!   inputs again and emit again. Every output carries its source topic and offset (headers),
//!   so consumers can drop duplicates: (`outpost-plugin`, `outpost-source-topic`,
//!   `outpost-source-offset`, position among that input's emits) identifies an emit.
//! - **Order:** outputs of one input record keep the guest's emit order; outputs of one input
//!   topic keep input order within each output topic.
//! - A failed append or commit is handled like a crash: the batch's outputs not yet appended and
//!   its state overlay are dropped, the instance is rebuilt, and the batch is read again from
//!   the committed offsets after a back-off.
//!
//! # Host failures
//! When the *host* fails rather than the guest — a `state_get` the state store cannot serve
//! (I/O error, full disk: [`FailureKind::HostUnavailable`], whatever the guest then returned),
//! or an append, fsync or commit of the batch — the record is not the plugin's fault and never
//! goes to the dead-letter topic. The batch is dropped whole (no outputs, no dead letters, no
//! commit), the instance is rebuilt, its cached committed state and the input offsets are read
//! again from the store, and the batch is read again after a back-off (100 ms doubling up to
//! `max_backoff_ms`). Meanwhile the status carries `paused` with the reason and
//! `outpost_plugin_paused{plugin}` is 1; both clear after the next batch that commits.
//!
//! # Quarantine
//! The plugin is quarantined when
//! - `max_consecutive_failures` of its own failures come in a row (default 5; rejections
//!   neither count nor break the row), or
//! - it emits more than its output quota within one second (`output_records_per_sec`,
//!   `output_bytes_per_sec`: the manifest's `[limits]`, capped by the box; the quota is checked
//!   after each record, so the record that crosses it is the last one kept).
//!
//! The batch is flushed and committed up to and including the last handled record, the status
//! says `quarantined` with the reason, `outpost_plugin_quarantined{plugin}` is 1 and
//! `outpost_plugin_quarantines_total{plugin}` counts it. The plugin then sits out a back-off
//! (`quarantine_backoff_ms`, doubling on each quarantine that follows without a clean batch in
//! between, up to `max_quarantine_backoff_ms`; `retry_at_ms` in the status says when) and comes
//! back by itself on a fresh instance, resuming after the records it already handled. A stop
//! request ends the wait at once. When rebuilding the instance after a trap fails (its init now
//! fails) the plugin stops as `failed`, likewise after committing what it did. Other plugins and
//! ingestion are not affected: each plugin has its own thread, store and limits.
//!
//! # Metrics
//! `outpost_plugin_records_total{plugin}`, `outpost_plugin_failures_total{plugin,kind}`,
//! `outpost_plugin_dead_letters_total{plugin}`, `outpost_plugin_emitted_total{plugin}`,
//! `outpost_plugin_call_seconds_total{plugin}` (time spent in guest calls),
//! `outpost_plugin_rejected_total{plugin}`, `outpost_plugin_quarantined{plugin}`,
//! `outpost_plugin_quarantines_total{plugin}`, and the plugin's committed state against its
//! quota: `outpost_plugin_state_bytes{plugin}`, `outpost_plugin_state_keys{plugin}`,
//! `outpost_plugin_state_quota_bytes{plugin}` and `outpost_plugin_state_quota_keys{plugin}`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::host::guest_log::{GuestLog, LogLevel, LogLine, LogSource};
use super::host::{
    CallFailure, CompiledModule, FailureKind, Host, Instance, PluginError, HEADER_ERROR,
    HEADER_PLUGIN, HEADER_SOURCE_OFFSET, HEADER_SOURCE_TOPIC,
};
use super::manifest::Manifest;
use crate::kernel::{lock, Shutdown, ShutdownTrigger};
use crate::log::{FsyncPolicy, Log, LogError, NewRecord, ReadGapPolicy, Record, Topic};
use crate::metrics::{self, Counter, Gauge};
use crate::state::{Commit, StateError, StateStore};

/// How often a runner with `prefix*` inputs looks for new matching topics.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Longest `outpost-error` header of a dead letter, in bytes.
pub const MAX_ERROR_HEADER_BYTES: usize = 1024;
/// Header added to a dead letter whose value had to be dropped to fit the record size limit.
pub const HEADER_DLQ_VALUE_DROPPED: &str = "outpost-dlq-value-dropped";

/// How the runner runs a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Failed records in a row that quarantine the plugin.
    pub max_consecutive_failures: u32,
    /// Most input records per batch (one append per output and one commit per batch).
    pub batch_records: usize,
    /// About how many input bytes to read per batch.
    pub batch_bytes: usize,
    /// A batch ends early once its pending outputs reach this many bytes.
    pub max_pending_output_bytes: usize,
    /// A batch ends early (after the record in progress) once its pending state writes (key
    /// plus value bytes) reach this many bytes, so one commit writes at most this plus one
    /// call's state (8 MiB, `sdk/ABI.md` section 10).
    pub max_pending_state_bytes: usize,
    /// A batch ends early (after the record in progress) once its calls have run this long, in
    /// ms, so a slow plugin's outputs and commits are not held back by a large batch.
    pub max_batch_ms: u64,
    /// How long an idle runner sleeps before it looks again, in ms (records and stop requests
    /// wake it at once).
    pub idle_wait_ms: u64,
    /// Longest back-off after a failed read, append or commit, in ms.
    pub max_backoff_ms: u64,
    /// Records a plugin whose manifest does not say may emit within one second.
    pub default_output_records_per_sec: u64,
    /// Most records any plugin may emit within one second (caps the manifest).
    pub max_output_records_per_sec: u64,
    /// Bytes a plugin whose manifest does not say may emit within one second.
    pub default_output_bytes_per_sec: u64,
    /// Most bytes any plugin may emit within one second (caps the manifest).
    pub max_output_bytes_per_sec: u64,
    /// How long a quarantined plugin waits before it comes back by itself, in ms.
    pub quarantine_backoff_ms: u64,
    /// Longest such wait (it doubles on each quarantine without a clean batch between), in ms.
    pub max_quarantine_backoff_ms: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_consecutive_failures: 5,
            batch_records: 1024,
            batch_bytes: 4 * 1024 * 1024,
            max_pending_output_bytes: 64 * 1024 * 1024,
            max_pending_state_bytes: 16 * 1024 * 1024,
            max_batch_ms: 100,
            idle_wait_ms: 1000,
            max_backoff_ms: 5000,
            default_output_records_per_sec: DEFAULT_OUTPUT_RECORDS_PER_SEC,
            max_output_records_per_sec: DEFAULT_OUTPUT_RECORDS_PER_SEC,
            default_output_bytes_per_sec: DEFAULT_OUTPUT_BYTES_PER_SEC,
            max_output_bytes_per_sec: DEFAULT_OUTPUT_BYTES_PER_SEC,
            quarantine_backoff_ms: 60_000,
            max_quarantine_backoff_ms: 3_600_000,
        }
    }
}

/// Records a plugin may emit per second unless its manifest asks for less or the box config
/// says otherwise.
pub const DEFAULT_OUTPUT_RECORDS_PER_SEC: u64 = 100_000;
/// Bytes a plugin may emit per second unless its manifest asks for less or the box config says
/// otherwise.
pub const DEFAULT_OUTPUT_BYTES_PER_SEC: u64 = 64 * 1024 * 1024;

impl RunnerConfig {
    /// The per-second output quota (records, bytes) of a plugin with `manifest`.
    pub fn output_quota(&self, manifest: &Manifest) -> (u64, u64) {
        let limits = &manifest.limits;
        (
            limits
                .output_records_per_sec
                .unwrap_or(self.default_output_records_per_sec)
                .min(self.max_output_records_per_sec),
            limits
                .output_bytes_per_sec
                .unwrap_or(self.default_output_bytes_per_sec)
                .min(self.max_output_bytes_per_sec),
        )
    }
}

/// What went wrong on the host side of a runner: a batch that could not be read, appended or
/// committed (it is dropped and read again after a pause), an input that could not be added, or
/// an instance that could not be rebuilt. Its message becomes the status's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A topic created since start matches a `prefix*` input but could not be resumed.
    #[error("adding a new input topic failed: {0}")]
    AddInput(#[source] PluginError),
    /// Reading an input failed.
    #[error("reading input {topic} at offset {offset} failed: {source}")]
    Read {
        topic: String,
        offset: u64,
        #[source]
        source: LogError,
    },
    /// An input has a lost or damaged range and `log.on_read_gap` is `stop`.
    #[error("input {topic} cannot be read at offset {offset} and `log.on_read_gap` is \"stop\": {source}")]
    ReadGap {
        topic: String,
        offset: u64,
        #[source]
        source: LogError,
    },
    /// Appending the batch's outputs failed.
    #[error("appending to output {topic} failed: {source}")]
    Append {
        topic: String,
        #[source]
        source: LogError,
    },
    /// Fsyncing an `interval` output before the commit failed.
    #[error("syncing output {topic} failed: {source}")]
    Sync {
        topic: String,
        #[source]
        source: LogError,
    },
    /// Appending the batch's dead letters failed.
    #[error("appending to dead-letter topic {topic} failed: {source}")]
    DeadLetter {
        topic: String,
        #[source]
        source: LogError,
    },
    /// Committing the batch's state and offsets failed.
    #[error("committing state and offsets failed: {0}")]
    Commit(#[source] StateError),
    /// A host function could not serve the guest (the state store failed to read).
    #[error("the host could not serve record {topic}@{offset}: {message}")]
    HostUnavailable {
        topic: String,
        offset: u64,
        message: String,
    },
    /// The instance could not be rebuilt after a failed batch.
    #[error("rebuilding the instance failed: {0}")]
    Rebuild(#[source] PluginError),
    /// The runner's thread panicked.
    #[error("the runner thread panicked: {0}")]
    Panicked(String),
}

/// Where a runner is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Consuming its inputs.
    Running,
    /// Stopped after too many consecutive failures (see `last_error`).
    Quarantined,
    /// Stopped on request.
    Stopped,
    /// Stopped by an error of the host (see `last_error`).
    Failed,
}

impl RunState {
    /// The lower-case name (`running`, `quarantined`, `stopped`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Quarantined => "quarantined",
            RunState::Stopped => "stopped",
            RunState::Failed => "failed",
        }
    }
}

/// A snapshot of one runner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    pub state: RunState,
    /// The last failure (a record's, or the host's), with the record it happened on.
    pub last_error: Option<String>,
    /// Input records handled (successfully or not) since start.
    pub processed: u64,
    /// Input records the guest failed on since start (rejections included).
    pub failed: u64,
    /// Of those, the records the guest rejected (non-zero return): dead-lettered, never a step
    /// towards quarantine.
    pub rejected: u64,
    /// Times the plugin was quarantined since start (it comes back by itself).
    pub quarantines: u64,
    /// While quarantined: when it comes back, epoch ms.
    pub retry_at_ms: Option<u64>,
    /// Records appended to `<name>.dlq` since start.
    pub dead_lettered: u64,
    /// Records emitted to output topics since start.
    pub emitted: u64,
    /// Failed records in a row right now.
    pub consecutive_failures: u32,
    /// Set while the runner is paused because the host failed (state store or log I/O): the
    /// reason. Its input waits and is retried with back-off; nothing is dead-lettered.
    pub paused: Option<String>,
    /// Per input topic: records appended but not yet committed by this plugin.
    pub lag: Vec<(String, u64)>,
    /// Per input topic: the committed next offset.
    pub offsets: Vec<(String, u64)>,
    /// Mean time in guest calls per record, in ns.
    pub ns_per_record: f64,
    /// Memory and CPU limits in force.
    pub memory_mib: u64,
    pub deadline_ms: u64,
    /// Output quota in force: records and bytes per second.
    pub output_records_per_sec: u64,
    pub output_bytes_per_sec: u64,
    /// Committed state: key plus value bytes over the plugin's keys, and its keys (as of the
    /// last commit).
    pub state_bytes: u64,
    pub state_keys: u64,
    /// The state quota in force, in bytes and keys.
    pub state_quota_bytes: u64,
    pub state_quota_keys: u64,
}

#[derive(Debug)]
struct Counters {
    state: RunState,
    last_error: Option<String>,
    processed: u64,
    failed: u64,
    rejected: u64,
    quarantines: u64,
    retry_at_ms: Option<u64>,
    dead_lettered: u64,
    emitted: u64,
    consecutive_failures: u32,
    call_nanos: u128,
    paused: Option<String>,
}

#[derive(Debug)]
struct Metrics {
    records: Counter,
    failures: HashMap<FailureKind, Counter>,
    dead_letters: Counter,
    emitted: Counter,
    call_seconds: Gauge,
    quarantined: Gauge,
    quarantines: Counter,
    rejected: Counter,
    paused: Gauge,
    state_bytes: Gauge,
    state_keys: Gauge,
    state_quota_bytes: Gauge,
    state_quota_keys: Gauge,
}

impl Metrics {
    fn new(plugin: &str) -> Metrics {
        let r = metrics::global();
        let labels = [("plugin", plugin)];
        Metrics {
            records: r.counter(
                "outpost_plugin_records_total",
                "Input records handled by a plugin (successfully or not).",
                &labels,
            ),
            failures: FailureKind::ALL
                .iter()
                .map(|k| {
                    let c = r.counter(
                        "outpost_plugin_failures_total",
                        "Input records a plugin failed on, by kind of failure.",
                        &[("plugin", plugin), ("kind", k.as_str())],
                    );
                    (*k, c)
                })
                .collect(),
            dead_letters: r.counter(
                "outpost_plugin_dead_letters_total",
                "Records a plugin sent to its dead-letter topic.",
                &labels,
            ),
            emitted: r.counter(
                "outpost_plugin_emitted_total",
                "Records a plugin emitted to its output topics.",
                &labels,
            ),
            call_seconds: r.gauge(
                "outpost_plugin_call_seconds_total",
                "Time spent in a plugin's record calls, in seconds.",
                &labels,
            ),
            quarantined: r.gauge(
                "outpost_plugin_quarantined",
                "1 while a plugin is quarantined (too many failures in a row, or over its output \
                 quota); it comes back by itself after a back-off.",
                &labels,
            ),
            quarantines: r.counter(
                "outpost_plugin_quarantines_total",
                "Times a plugin was quarantined.",
                &labels,
            ),
            rejected: r.counter(
                "outpost_plugin_rejected_total",
                "Input records a plugin rejected (non-zero return): dead-lettered, not counted \
                 towards quarantine.",
                &labels,
            ),
            paused: r.gauge(
                "outpost_plugin_paused",
                "1 while a plugin waits for the host (state store or log) to recover; its input \
                 is retried, never dead-lettered.",
                &labels,
            ),
            state_bytes: r.gauge(
                "outpost_plugin_state_bytes",
                "Key plus value bytes of a plugin's committed state.",
                &labels,
            ),
            state_keys: r.gauge(
                "outpost_plugin_state_keys",
                "Keys of a plugin's committed state.",
                &labels,
            ),
            state_quota_bytes: r.gauge(
                "outpost_plugin_state_quota_bytes",
                "A plugin's state quota in key plus value bytes.",
                &labels,
            ),
            state_quota_keys: r.gauge(
                "outpost_plugin_state_quota_keys",
                "A plugin's state quota in keys.",
                &labels,
            ),
        }
    }

    /// Shows the plugin's committed state usage.
    fn set_state_usage(&self, usage: outpost_sdk::abi::StateUsage) {
        self.state_bytes.set(usage.bytes as f64);
        self.state_keys.set(usage.keys as f64);
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    version: String,
    memory_mib: u64,
    deadline_ms: u64,
    output_quota: (u64, u64),
    counters: Mutex<Counters>,
    /// Per input: the topic and the committed next offset.
    positions: Mutex<Vec<(Topic, u64)>>,
    /// Stops this runner alone (upgrade, remove, box shutdown): the kernel's shutdown signal,
    /// one pair per runner.
    stop: ShutdownTrigger,
    stopping: Shutdown,
    done: Mutex<bool>,
    done_cv: Condvar,
    done_tx: tokio::sync::watch::Sender<bool>,
    log: Arc<GuestLog>,
    metrics: Metrics,
}

impl Shared {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        lock(&self.counters)
    }

    fn request_stop(&self) {
        self.stop.request();
    }

    fn stopping(&self) -> bool {
        self.stopping.is_requested()
    }

    fn positions(&self) -> MutexGuard<'_, Vec<(Topic, u64)>> {
        lock(&self.positions)
    }

    /// Keeps `message` as the last error, with control characters escaped (a trap's text can
    /// carry names from the guest's module).
    fn set_error(&self, message: String) {
        let message = crate::plugins::host::guest_log::escape_control(&message).into_owned();
        self.counters().last_error = Some(message);
    }

    /// Marks the runner paused by a host failure (`Some(reason)`) or running again (`None`).
    fn set_paused(&self, reason: Option<String>) {
        self.metrics
            .paused
            .set(if reason.is_some() { 1.0 } else { 0.0 });
        self.counters().paused = reason;
    }

    fn finish(&self, state: RunState) {
        {
            let mut c = self.counters();
            if c.state == RunState::Running {
                c.state = state;
            }
        }
        *lock(&self.done) = true;
        self.done_cv.notify_all();
        self.done_tx.send_replace(true);
    }
}

/// A running plugin. Cheap to clone; all clones control the same runner.
#[derive(Debug, Clone)]
pub struct RunnerHandle {
    shared: Arc<Shared>,
}

/// One input topic of the worker.
struct Input {
    name: String,
    topic: Topic,
    /// Committed next offset.
    next: u64,
}

/// What one step of the loop did.
enum Step {
    /// Nothing to read.
    Idle,
    /// A batch was processed and committed.
    Worked,
    /// The batch was committed and the plugin stops in this state (quarantined or failed).
    Ended(RunState),
    /// A read, append or commit failed; the batch was dropped.
    HostError(RunnerError),
}

struct Worker {
    shared: Arc<Shared>,
    instance: Instance,
    state: StateStore,
    log: Log,
    consumer: String,
    /// Prefixes of the `prefix*` inputs.
    patterns: Vec<String>,
    /// Topics a pattern never matches: the plugin's outputs and dead-letter topic.
    excluded: Vec<String>,
    last_scan: Instant,
    inputs: Vec<Input>,
    outputs: Vec<Topic>,
    dlq: Topic,
    cfg: RunnerConfig,
    max_record_bytes: usize,
    round_robin: usize,
    /// Mean input record size (key + value + headers), for sizing reads.
    avg_record_bytes: f64,
    /// The state store's generation the cached offsets and state belong to.
    state_generation: u64,
    runtime: tokio::runtime::Runtime,
    /// The output quota's current one-second window: when it started, records and bytes
    /// emitted in it.
    rate_window: Instant,
    rate_records: u64,
    rate_bytes: u64,
    /// The next quarantine's back-off, in ms.
    quarantine_backoff_ms: u64,
}

/// The provenance headers of a record derived from `topic`@`offset`.
fn provenance(plugin: &str, topic: &str, offset: u64) -> [(String, Vec<u8>); 3] {
    [
        (HEADER_PLUGIN.to_string(), plugin.as_bytes().to_vec()),
        (HEADER_SOURCE_TOPIC.to_string(), topic.as_bytes().to_vec()),
        (
            HEADER_SOURCE_OFFSET.to_string(),
            offset.to_string().into_bytes(),
        ),
    ]
}

/// The dead letter of `record` (from `topic`) that failed with `failure`, fitted under `limit`
/// bytes: if too large, first the value is dropped (and the header
/// `outpost-dlq-value-dropped: <bytes>` added), then the original headers, then the key.
pub(crate) fn dead_letter(
    plugin: &str,
    topic: &str,
    record: Record,
    failure: &CallFailure,
    limit: usize,
) -> NewRecord {
    let ours = |n: &str| {
        n == HEADER_ERROR
            || n == HEADER_PLUGIN
            || n == HEADER_SOURCE_TOPIC
            || n == HEADER_SOURCE_OFFSET
    };
    let mut error = format!("{}: {}", failure.kind.as_str(), failure.message);
    super::host::guest_log::truncate_utf8(&mut error, MAX_ERROR_HEADER_BYTES);
    let mut host_headers = vec![(HEADER_ERROR.to_string(), error.into_bytes())];
    host_headers.extend(provenance(plugin, topic, record.offset));
    let mut letter = NewRecord {
        key: record.key,
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .filter(|(n, _)| !ours(n))
            .chain(host_headers.iter().cloned())
            .collect(),
        timestamp_ms: Some(record.timestamp_ms),
    };
    if letter.payload_size() > limit {
        let dropped = letter.value.len();
        letter.value = Vec::new();
        host_headers.push((
            HEADER_DLQ_VALUE_DROPPED.to_string(),
            dropped.to_string().into_bytes(),
        ));
        letter
            .headers
            .push(host_headers[host_headers.len() - 1].clone());
    }
    if letter.payload_size() > limit {
        letter.headers = host_headers;
    }
    if letter.payload_size() > limit {
        letter.key = None;
    }
    letter
}

/// Where `consumer` resumes on `topic`, noting in the plugin's log when retention removed
/// records it had not read.
fn resume_input(
    state: &StateStore,
    consumer: &str,
    topic: Topic,
    log: &GuestLog,
) -> Result<Input, PluginError> {
    let name = topic.name().to_string();
    let resume = state.resume(consumer, &name, topic.start_offset())?;
    if let Some(from) = resume.skipped_from {
        log.push(
            LogLevel::Warn,
            LogSource::Host,
            format!(
                "input {name}: records {from}..{} were removed by retention before the plugin read them",
                resume.offset
            ),
        );
    }
    Ok(Input {
        name,
        topic,
        next: resume.offset,
    })
}

/// Existing topics matching one of `patterns` (prefixes) that are not excluded and not inputs
/// already.
fn matching_topics(
    log: &Log,
    patterns: &[String],
    excluded: &[String],
    inputs: &[Input],
) -> Vec<Topic> {
    if patterns.is_empty() {
        return Vec::new();
    }
    log.topics()
        .into_iter()
        .filter(|t| {
            let name = t.name();
            patterns.iter().any(|p| name.starts_with(p.as_str()))
                && !excluded.iter().any(|e| e == name)
                && !inputs.iter().any(|i| i.name == name)
        })
        .collect()
}

impl RunnerHandle {
    /// Starts the durable consumer: instantiates the plugin (init errors are returned here, so
    /// a failed upgrade leaves the old version running), opens its topics (creating them if
    /// the log allows), resumes from the committed offsets and starts its thread.
    pub fn start(
        host: &Host,
        manifest: Manifest,
        module: CompiledModule,
        log: Log,
        state: StateStore,
        cfg: RunnerConfig,
    ) -> Result<RunnerHandle, PluginError> {
        let name = manifest.name.clone();
        let invalid = |detail: String| PluginError::InvalidManifest {
            plugin: name.clone(),
            detail,
        };
        if manifest.inputs.is_empty() {
            return Err(invalid("it has no input topics".into()));
        }
        if cfg.max_consecutive_failures == 0 || cfg.batch_records == 0 {
            return Err(PluginError::InvalidConfig(
                "max_consecutive_failures and batch_records must be at least 1".into(),
            ));
        }
        let mut instance = host.instantiate_with_state(&manifest, &module, state.clone())?;
        let state_usage = instance.state_usage()?;
        let consumer = format!("plugin:{name}");
        let dlq_name = format!("{name}.dlq");
        let patterns: Vec<String> = manifest
            .inputs
            .iter()
            .filter_map(|i| i.strip_suffix('*').map(str::to_string))
            .collect();
        let mut excluded = manifest.outputs.clone();
        excluded.push(dlq_name.clone());
        let mut inputs = Vec::with_capacity(manifest.inputs.len());
        for input in manifest.inputs.iter().filter(|i| !i.ends_with('*')) {
            let topic = log.topic_or_create(input)?;
            inputs.push(resume_input(&state, &consumer, topic, instance.log())?);
        }
        for topic in matching_topics(&log, &patterns, &excluded, &inputs) {
            inputs.push(resume_input(&state, &consumer, topic, instance.log())?);
        }
        let outputs = manifest
            .outputs
            .iter()
            .map(|o| log.topic_or_create(o))
            .collect::<Result<Vec<_>, _>>()?;
        let dlq = log.topic_or_create(&dlq_name)?;
        let metrics = Metrics::new(&name);
        metrics.quarantined.set(0.0);
        let output_quota = cfg.output_quota(&manifest);
        metrics.set_state_usage(state_usage);
        let quota = instance.state_quota();
        metrics.state_quota_bytes.set(quota.max_bytes as f64);
        metrics.state_quota_keys.set(quota.max_keys as f64);
        let (done_tx, _) = tokio::sync::watch::channel(false);
        let (stop, stopping) = Shutdown::new();
        let shared = Arc::new(Shared {
            name: name.clone(),
            version: manifest.version.clone(),
            memory_mib: instance.memory_mib(),
            deadline_ms: instance.deadline_ms(),
            output_quota,
            counters: Mutex::new(Counters {
                state: RunState::Running,
                last_error: None,
                processed: 0,
                failed: 0,
                rejected: 0,
                quarantines: 0,
                retry_at_ms: None,
                dead_lettered: 0,
                emitted: 0,
                consecutive_failures: 0,
                paused: None,
                call_nanos: 0,
            }),
            positions: Mutex::new(inputs.iter().map(|i| (i.topic.clone(), i.next)).collect()),
            stop,
            stopping,
            done: Mutex::new(false),
            done_cv: Condvar::new(),
            done_tx,
            log: Arc::clone(instance.log()),
            metrics,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|source| PluginError::Io {
                context: format!("plugin {name}: creating the runner's wait runtime"),
                source,
            })?;
        let worker = Worker {
            shared: Arc::clone(&shared),
            instance,
            state_generation: state.generation(),
            state,
            log,
            consumer,
            patterns,
            excluded,
            last_scan: Instant::now(),
            inputs,
            outputs,
            dlq,
            max_record_bytes: host.config().max_record_bytes,
            round_robin: 0,
            avg_record_bytes: 512.0,
            runtime,
            rate_window: Instant::now(),
            rate_records: 0,
            rate_bytes: 0,
            quarantine_backoff_ms: cfg.quarantine_backoff_ms.max(1),
            cfg,
        };
        std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .stack_size(8 * 1024 * 1024)
            .spawn(move || worker.run())
            .map_err(|source| PluginError::Io {
                context: format!("plugin {name}: starting the runner thread"),
                source,
            })?;
        tracing::info!(plugin = %shared.name, version = %shared.version, "Started a plugin.");
        Ok(RunnerHandle { shared })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A snapshot of the runner's status.
    pub fn status(&self) -> PluginStatus {
        let s = &self.shared;
        let c = s.counters();
        let handled = c.processed;
        let positions = s.positions().clone();
        let offsets: Vec<(String, u64)> = positions
            .iter()
            .map(|(t, p)| (t.name().to_string(), *p))
            .collect();
        let lag = positions
            .iter()
            .map(|(t, p)| (t.name().to_string(), t.next_offset().saturating_sub(*p)))
            .collect();
        PluginStatus {
            name: s.name.clone(),
            version: s.version.clone(),
            state: c.state,
            last_error: c.last_error.clone(),
            processed: handled,
            failed: c.failed,
            rejected: c.rejected,
            quarantines: c.quarantines,
            retry_at_ms: c.retry_at_ms,
            dead_lettered: c.dead_lettered,
            emitted: c.emitted,
            consecutive_failures: c.consecutive_failures,
            paused: c.paused.clone(),
            lag,
            offsets,
            ns_per_record: if handled == 0 {
                0.0
            } else {
                c.call_nanos as f64 / handled as f64
            },
            memory_mib: s.memory_mib,
            deadline_ms: s.deadline_ms,
            output_records_per_sec: s.output_quota.0,
            output_bytes_per_sec: s.output_quota.1,
            state_bytes: s.metrics.state_bytes.get() as u64,
            state_keys: s.metrics.state_keys.get() as u64,
            state_quota_bytes: s.metrics.state_quota_bytes.get() as u64,
            state_quota_keys: s.metrics.state_quota_keys.get() as u64,
        }
    }

    /// The plugin's most recent log lines (stdout/stderr, `log` calls, host notes), oldest
    /// first.
    pub fn logs(&self, max_lines: usize) -> Vec<LogLine> {
        self.shared.log.recent(max_lines)
    }

    /// Asks the runner to stop after the current batch (which is appended and committed) and
    /// waits until it has.
    pub async fn stop(&self) {
        self.shared.request_stop();
        let mut rx = self.shared.done_tx.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// [`RunnerHandle::stop`] for threads outside an async runtime.
    pub fn stop_blocking(&self) {
        self.shared.request_stop();
        let done = lock(&self.shared.done);
        let _done = self
            .shared
            .done_cv
            .wait_while(done, |d| !*d)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Whether the runner's thread has ended (stopped, quarantined or failed).
    pub fn is_finished(&self) -> bool {
        *lock(&self.shared.done)
    }
}

impl Worker {
    fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.main_loop()));
        let state = match outcome {
            Ok(state) => state,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                let error = RunnerError::Panicked(what);
                tracing::error!(plugin = %shared.name, error = %error, "A plugin runner failed.");
                shared.set_error(error.to_string());
                RunState::Failed
            }
        };
        tracing::info!(plugin = %shared.name, state = state.as_str(), "A plugin runner ended.");
        shared.finish(state);
    }

    fn main_loop(&mut self) -> RunState {
        let mut backoff_ms = 0u64;
        loop {
            if self.shared.stopping() {
                return RunState::Stopped;
            }
            if !self.patterns.is_empty() && self.last_scan.elapsed() >= RESCAN_EVERY {
                if let Err(e) = self.rescan() {
                    self.shared.set_error(e.to_string());
                }
            }
            match self.step() {
                Step::Idle => {
                    backoff_ms = 0;
                    self.wait_for_input();
                    if !self.patterns.is_empty() {
                        if let Err(e) = self.rescan() {
                            self.shared.set_error(e.to_string());
                        }
                    }
                }
                Step::Worked => {
                    backoff_ms = 0;
                    self.shared.set_paused(None);
                }
                Step::Ended(RunState::Quarantined) => {
                    if let Some(state) = self.sit_out_quarantine() {
                        return state;
                    }
                    backoff_ms = 0;
                }
                Step::Ended(state) => return state,
                Step::HostError(error) => {
                    let message = error.to_string();
                    tracing::error!(plugin = %self.shared.name, error = %message, "A plugin batch failed on the host side; it is read again after a pause.");
                    self.shared
                        .log
                        .push(LogLevel::Error, LogSource::Host, message.clone());
                    self.shared.set_error(message.clone());
                    self.shared.set_paused(Some(message));
                    if self.instance.has_pending_state() {
                        drop(self.instance.take_state_ops());
                    }
                    // The store may come back older than what was read (a reopened store
                    // recovers its last durable commit): read state and offsets again.
                    self.instance.forget_committed();
                    self.reload_positions();
                    if let Err(e) = self.instance.restart() {
                        self.shared.set_error(RunnerError::Rebuild(e).to_string());
                        return RunState::Failed;
                    }
                    backoff_ms = (backoff_ms * 2).clamp(100, self.cfg.max_backoff_ms.max(100));
                    self.pause(Duration::from_millis(backoff_ms));
                }
            }
        }
    }

    /// Waits out a quarantine's back-off, then brings the plugin back on a fresh instance.
    /// Returns the state to end in when it must not come back (a stop request).
    fn sit_out_quarantine(&mut self) -> Option<RunState> {
        loop {
            let wait = self.quarantine_backoff_ms;
            self.quarantine_backoff_ms = wait
                .saturating_mul(2)
                .min(self.cfg.max_quarantine_backoff_ms.max(wait));
            self.shared.counters().retry_at_ms = Some(crate::kernel::now_ms().saturating_add(wait));
            self.pause(Duration::from_millis(wait));
            if self.shared.stopping() {
                self.shared.counters().retry_at_ms = None;
                return Some(RunState::Stopped);
            }
            if self.instance.has_pending_state() {
                drop(self.instance.take_state_ops());
            }
            match self.instance.restart() {
                Ok(()) => break,
                Err(e) => {
                    let message = format!(
                        "still quarantined: the plugin could not be started again: {e}; next try in {} ms",
                        self.quarantine_backoff_ms
                    );
                    tracing::warn!(plugin = %self.shared.name, error = %message, "A quarantined plugin could not come back.");
                    self.shared
                        .log
                        .push(LogLevel::Warn, LogSource::Host, message.clone());
                    self.shared.set_error(message);
                }
            }
        }
        {
            let mut c = self.shared.counters();
            c.state = RunState::Running;
            c.retry_at_ms = None;
            c.consecutive_failures = 0;
        }
        self.shared.metrics.quarantined.set(0.0);
        self.rate_window = Instant::now();
        self.rate_records = 0;
        self.rate_bytes = 0;
        let note = "the quarantine's back-off is over: the plugin runs again on a fresh instance"
            .to_string();
        tracing::info!(plugin = %self.shared.name, "A quarantined plugin comes back after its back-off.");
        self.shared.log.push(LogLevel::Info, LogSource::Host, note);
        None
    }

    /// Counts a successful call's emits against the per-second output quota; the reason to
    /// quarantine when they take the plugin past it.
    fn spend_output_quota(&mut self, records: u64, bytes: u64) -> Option<String> {
        if self.rate_window.elapsed() >= Duration::from_secs(1) {
            self.rate_window = Instant::now();
            self.rate_records = 0;
            self.rate_bytes = 0;
        }
        self.rate_records += records;
        self.rate_bytes += bytes;
        let (max_records, max_bytes) = self.shared.output_quota;
        if self.rate_records > max_records {
            Some(format!(
                "quarantined: over its output quota, {} records emitted within one second, limit {max_records} (`limits.output_records_per_sec`)",
                self.rate_records
            ))
        } else if self.rate_bytes > max_bytes {
            Some(format!(
                "quarantined: over its output quota, {} bytes emitted within one second, limit {max_bytes} (`limits.output_bytes_per_sec`)",
                self.rate_bytes
            ))
        } else {
            None
        }
    }

    /// Reads every input's committed offset from the state store again (after a host failure);
    /// an input whose offset cannot be read keeps its position.
    fn reload_positions(&mut self) {
        let mut shared_positions = self.shared.positions();
        for (input, (_, shared_pos)) in self.inputs.iter_mut().zip(shared_positions.iter_mut()) {
            if let Ok(stored) = self.state.offset(&self.consumer, &input.name) {
                let next = stored.unwrap_or(0).max(input.topic.start_offset());
                input.next = next;
                *shared_pos = next;
            }
        }
    }

    /// Adds topics created since the last scan that match a `prefix*` input.
    fn rescan(&mut self) -> Result<(), RunnerError> {
        self.last_scan = Instant::now();
        for topic in matching_topics(&self.log, &self.patterns, &self.excluded, &self.inputs) {
            let input = resume_input(&self.state, &self.consumer, topic, &self.shared.log)
                .map_err(RunnerError::AddInput)?;
            tracing::info!(plugin = %self.shared.name, topic = %input.name, offset = input.next, "A plugin picked up a new input topic matching its pattern.");
            self.shared
                .positions()
                .push((input.topic.clone(), input.next));
            self.inputs.push(input);
        }
        Ok(())
    }

    /// Sleeps up to `d`, waking early on a stop request.
    fn pause(&self, d: Duration) {
        let shared = Arc::clone(&self.shared);
        self.runtime.block_on(async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = shared.stopping.requested() => {}
            }
        });
    }

    /// Sleeps until an input has a record past our position, the idle timeout, or a stop.
    fn wait_for_input(&self) {
        let timeout = Duration::from_millis(self.cfg.idle_wait_ms.max(1));
        let shared = Arc::clone(&self.shared);
        let waits: Vec<(Topic, u64)> = self
            .inputs
            .iter()
            .map(|i| (i.topic.clone(), i.next))
            .collect();
        self.runtime.block_on(async move {
            if waits.is_empty() {
                // No input topic yet (a pattern that matches nothing): sleep until the timeout
                // or a stop, then the caller rescans.
                tokio::select! {
                    _ = tokio::time::sleep(timeout) => {}
                    _ = shared.stopping.requested() => {}
                }
                return;
            }
            let mut set = tokio::task::JoinSet::new();
            for (topic, next) in waits {
                set.spawn(async move { topic.wait_for(next, timeout).await });
            }
            tokio::select! {
                _ = set.join_next() => {}
                _ = shared.stopping.requested() => {}
            }
            set.abort_all();
        });
    }

    /// Reads a batch round-robin from the inputs.
    fn read_batch(&mut self) -> Result<Vec<(usize, Record)>, RunnerError> {
        let n = self.inputs.len();
        // The batch is shared among the inputs that have records to read (none when only
        // `prefix*` inputs exist and no topic matches them yet).
        let active = self
            .inputs
            .iter()
            .filter(|i| i.topic.next_offset() > i.next)
            .count();
        if active == 0 {
            return Ok(Vec::new());
        }
        let quota = self.cfg.batch_records.div_ceil(active).max(1);
        // The log reads about `bytes` from disk at once: ask for what `quota` records of the
        // usual size need, not the whole budget.
        let budget = (self.cfg.batch_bytes / active).max(1);
        let bytes = ((quota as f64 * self.avg_record_bytes * 1.25) as usize).clamp(1, budget);
        let mut fetched: Vec<std::vec::IntoIter<Record>> = Vec::with_capacity(active);
        let mut sources: Vec<usize> = Vec::with_capacity(active);
        let skip_gaps = self.log.on_read_gap() == ReadGapPolicy::Skip;
        for k in 0..n {
            let i = (self.round_robin + k) % n;
            let input = &mut self.inputs[i];
            if input.topic.next_offset() <= input.next {
                continue;
            }
            let fetch = match input.topic.read(input.next, quota, bytes) {
                Ok(fetch) => fetch,
                Err(LogError::Gap { next_offset, .. }) if skip_gaps => {
                    self.skip_gap(i, next_offset)?;
                    continue;
                }
                Err(source @ LogError::Gap { .. }) => {
                    return Err(RunnerError::ReadGap {
                        topic: input.name.clone(),
                        offset: input.next,
                        source,
                    })
                }
                Err(source) => {
                    return Err(RunnerError::Read {
                        topic: input.name.clone(),
                        offset: input.next,
                        source,
                    })
                }
            };
            if let Some(first) = fetch.records.first() {
                if first.offset > input.next {
                    let note = format!(
                        "input {}: records {}..{} were removed by retention before the plugin read them",
                        input.name, input.next, first.offset
                    );
                    tracing::warn!(plugin = %self.shared.name, topic = %input.name, from_offset = input.next, to_offset = first.offset, "A plugin skips records that retention removed before it read them.");
                    self.shared.log.push(LogLevel::Warn, LogSource::Host, note);
                }
            }
            if !fetch.records.is_empty() {
                let total: usize = fetch.records.iter().map(Record::payload_size).sum();
                let mean = total as f64 / fetch.records.len() as f64;
                self.avg_record_bytes = 0.8 * self.avg_record_bytes + 0.2 * mean.max(16.0);
            }
            fetched.push(fetch.records.into_iter());
            sources.push(i);
        }
        self.round_robin = self.round_robin.wrapping_add(1);
        // Interleave the inputs record by record, so a batch cut short (time, output bytes,
        // quarantine) still gives every input its turn.
        let mut batch = Vec::with_capacity(fetched.iter().map(|f| f.len()).sum());
        loop {
            let before = batch.len();
            for (records, &i) in fetched.iter_mut().zip(&sources) {
                if let Some(r) = records.next() {
                    batch.push((i, r));
                }
            }
            if batch.len() == before {
                return Ok(batch);
            }
        }
    }

    /// Moves input `i` past a range the log cannot read (`log.on_read_gap = "skip"`): commits
    /// `next_offset` as its position (no record was handed to the guest, so no state goes with
    /// it) and notes the skip in the plugin's log. The log itself recorded the range in
    /// `outpost.gaps`.
    fn skip_gap(&mut self, i: usize, next_offset: u64) -> Result<(), RunnerError> {
        let input = &self.inputs[i];
        let from = input.next;
        self.state
            .commit(&Commit {
                consumer: self.consumer.clone(),
                offsets: vec![(input.name.clone(), next_offset)],
                namespace: self.shared.name.clone(),
                ops: Vec::new(),
            })
            .map_err(RunnerError::Commit)?;
        let note = format!(
            "input {}: records {from}..{next_offset} are lost or damaged in the log and were skipped (`log.on_read_gap = \"skip\"`; see outpost.gaps)",
            input.name
        );
        tracing::warn!(plugin = %self.shared.name, topic = %input.name, from_offset = from, next_offset, "A plugin skips records the log cannot read.");
        self.shared.log.push(LogLevel::Warn, LogSource::Host, note);
        self.inputs[i].next = next_offset;
        if let Some((_, pos)) = self.shared.positions().get_mut(i) {
            *pos = next_offset;
        }
        Ok(())
    }

    /// One batch: read, call, append, commit.
    fn step(&mut self) -> Step {
        let generation = self.state.generation();
        if generation != self.state_generation {
            // The store reopened after a failed write and may hold older commits than this
            // runner saw: continue from what it holds.
            self.state_generation = generation;
            self.instance.forget_committed();
            self.reload_positions();
        }
        let batch = match self.read_batch() {
            Ok(b) => b,
            Err(e @ RunnerError::ReadGap { .. }) => {
                let message = e.to_string();
                tracing::error!(plugin = %self.shared.name, error = %message, "A plugin stops at a range of its input the log cannot read.");
                self.shared
                    .log
                    .push(LogLevel::Error, LogSource::Host, message.clone());
                self.shared.set_error(message);
                return Step::Ended(RunState::Failed);
            }
            Err(e) => return Step::HostError(e),
        };
        if batch.is_empty() {
            return Step::Idle;
        }
        let plugin = self.shared.name.clone();
        let mut outputs: Vec<Vec<NewRecord>> = vec![Vec::new(); self.outputs.len()];
        let mut dead_letters: Vec<NewRecord> = Vec::new();
        let mut positions: Vec<u64> = self.inputs.iter().map(|i| i.next).collect();
        let mut pending_bytes = 0usize;
        let (mut handled, mut failed, mut emitted, mut rejected) = (0u64, 0u64, 0u64, 0u64);
        let mut failures: Vec<FailureKind> = Vec::new();
        let mut last_error: Option<String> = None;
        let mut consecutive = self.shared.counters().consecutive_failures;
        // Set when the plugin must stop after this batch: the state and why.
        let mut stop: Option<(RunState, String)> = None;
        let started = Instant::now();
        let max_batch = Duration::from_millis(self.cfg.max_batch_ms);
        for (i, record) in batch {
            let topic = &self.inputs[i].name;
            let offset = record.offset;
            handled += 1;
            match self.instance.call(topic, &record) {
                Ok(()) => {
                    consecutive = 0;
                    let (mut call_records, mut call_bytes) = (0u64, 0u64);
                    for e in self.instance.drain_emits() {
                        let mut headers = e.headers;
                        headers.reserve_exact(3);
                        headers.extend(provenance(&plugin, topic, offset));
                        let r = NewRecord {
                            key: e.key,
                            value: e.value,
                            headers,
                            timestamp_ms: None,
                        };
                        let size = r.payload_size();
                        pending_bytes += size;
                        call_records += 1;
                        call_bytes += size as u64;
                        emitted += 1;
                        if let Some(out) = outputs.get_mut(e.output) {
                            out.push(r);
                        }
                    }
                    if let Some(reason) = self.spend_output_quota(call_records, call_bytes) {
                        stop = Some((RunState::Quarantined, reason));
                    }
                }
                Err(failure) if failure.kind == FailureKind::HostUnavailable => {
                    // Not the plugin's fault: nothing of this batch is kept (no output, no dead
                    // letter, no commit), and the batch is read again after a pause.
                    return Step::HostError(RunnerError::HostUnavailable {
                        topic: topic.clone(),
                        offset,
                        message: failure.message,
                    });
                }
                Err(failure) => {
                    failed += 1;
                    // A rejection (non-zero return) is the input's fault: dead-lettered, but
                    // neither a step towards quarantine nor a break in a row of failures.
                    let rejection = failure.kind == FailureKind::Error;
                    if rejection {
                        rejected += 1;
                    } else {
                        consecutive += 1;
                    }
                    failures.push(failure.kind);
                    let message = format!(
                        "record {topic}@{offset} failed ({}): {}",
                        failure.kind.as_str(),
                        failure.message
                    );
                    tracing::warn!(plugin = %plugin, topic = %topic, offset, kind = failure.kind.as_str(), error = %failure.message, "A plugin failed on a record; it goes to the dead-letter topic.");
                    self.shared
                        .log
                        .push(LogLevel::Warn, LogSource::Host, message.clone());
                    let letter =
                        dead_letter(&plugin, topic, record, &failure, self.max_record_bytes);
                    pending_bytes += letter.payload_size();
                    dead_letters.push(letter);
                    last_error = Some(message.clone());
                    if !rejection && consecutive >= self.cfg.max_consecutive_failures {
                        stop = Some((
                            RunState::Quarantined,
                            format!("quarantined after {consecutive} consecutive failures; last: {message}"),
                        ));
                    } else if failure.kind.needs_restart() {
                        if let Err(e) = self.instance.restart() {
                            stop = Some((
                                RunState::Failed,
                                format!("rebuilding the instance after a failed record failed: {e}; the record: {message}"),
                            ));
                        }
                    }
                }
            }
            positions[i] = offset + 1;
            if stop.is_some()
                || pending_bytes >= self.cfg.max_pending_output_bytes
                || self.instance.pending_state_bytes() >= self.cfg.max_pending_state_bytes
                || started.elapsed() >= max_batch
            {
                break;
            }
        }
        let call_nanos = started.elapsed().as_nanos();

        // Outputs first (one append per topic), then state + offsets in one commit.
        let mut to_sync = Vec::new();
        for (topic, records) in self.outputs.iter().zip(outputs) {
            if !records.is_empty() {
                if let Err(source) = topic.append(records) {
                    return Step::HostError(RunnerError::Append {
                        topic: topic.name().to_string(),
                        source,
                    });
                }
                if matches!(topic.fsync_policy(), FsyncPolicy::Interval { .. }) {
                    to_sync.push(topic);
                }
            }
        }
        // An `interval` output is readable (a sink can send the verdict) before its fsync; it
        // is made durable here, before the commit moves the offsets past its inputs.
        for topic in to_sync {
            if let Err(source) = topic.sync() {
                return Step::HostError(RunnerError::Sync {
                    topic: topic.name().to_string(),
                    source,
                });
            }
        }
        let letters = dead_letters.len() as u64;
        if !dead_letters.is_empty() {
            if let Err(source) = self.dlq.append(dead_letters) {
                return Step::HostError(RunnerError::DeadLetter {
                    topic: self.dlq.name().to_string(),
                    source,
                });
            }
        }
        let commit = Commit {
            consumer: self.consumer.clone(),
            offsets: self
                .inputs
                .iter()
                .zip(&positions)
                .filter(|(input, p)| input.next != **p)
                .map(|(input, p)| (input.name.clone(), *p))
                .collect(),
            namespace: plugin.clone(),
            ops: self.instance.take_state_ops(),
        };
        if let Err(e) = self.state.commit(&commit) {
            return Step::HostError(RunnerError::Commit(e));
        }
        let wrote_state = !commit.ops.is_empty();
        self.instance.committed(commit.ops);
        if wrote_state {
            if let Ok(usage) = self.instance.state_usage() {
                self.shared.metrics.set_state_usage(usage);
            }
        }
        {
            let mut shared_positions = self.shared.positions();
            for ((input, p), (_, shared_pos)) in self
                .inputs
                .iter_mut()
                .zip(&positions)
                .zip(shared_positions.iter_mut())
            {
                input.next = *p;
                *shared_pos = *p;
            }
        }

        let m = &self.shared.metrics;
        m.records.add(handled);
        m.emitted.add(emitted);
        m.dead_letters.add(letters);
        m.rejected.add(rejected);
        if failed == rejected {
            // A clean batch (no failure of the plugin's own): the next quarantine starts from
            // the shortest back-off again.
            self.quarantine_backoff_ms = self.cfg.quarantine_backoff_ms.max(1);
        }
        for kind in &failures {
            if let Some(c) = m.failures.get(kind) {
                c.inc();
            }
        }
        let mut c = self.shared.counters();
        c.processed += handled;
        c.failed += failed;
        c.rejected += rejected;
        c.emitted += emitted;
        c.dead_lettered += letters;
        c.consecutive_failures = consecutive;
        c.call_nanos += call_nanos;
        m.call_seconds.set(c.call_nanos as f64 / 1e9);
        if let Some(e) = last_error {
            c.last_error = Some(e);
        }
        if let Some((state, reason)) = stop {
            c.state = state;
            c.last_error = Some(reason.clone());
            if state == RunState::Quarantined {
                c.quarantines += 1;
                m.quarantined.set(1.0);
                m.quarantines.inc();
            }
            drop(c);
            tracing::error!(plugin = %plugin, state = state.as_str(), error = %reason, "A plugin stopped after failed records or over its quota.");
            self.shared
                .log
                .push(LogLevel::Error, LogSource::Host, reason);
            return Step::Ended(state);
        }
        Step::Worked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> CallFailure {
        CallFailure {
            plugin: "p".into(),
            kind: FailureKind::Deadline,
            message: "too slow".into(),
        }
    }

    fn record(value: usize) -> Record {
        Record {
            offset: 42,
            timestamp_ms: 7,
            key: Some(b"k".to_vec()),
            value: vec![b'v'; value],
            headers: vec![
                ("trace".into(), b"t".to_vec()),
                (HEADER_SOURCE_TOPIC.into(), b"forged".to_vec()),
            ],
        }
    }

    fn header<'a>(r: &'a NewRecord, name: &str) -> Vec<&'a [u8]> {
        r.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    #[test]
    fn dead_letter_keeps_the_record_and_adds_error_and_source_headers() {
        let letter = dead_letter("p", "in", record(3), &failure(), 1 << 20);
        assert_eq!(letter.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(letter.value, b"vvv");
        assert_eq!(letter.timestamp_ms, Some(7));
        assert_eq!(header(&letter, "trace"), [b"t"]);
        assert_eq!(header(&letter, HEADER_ERROR), [b"deadline: too slow"]);
        assert_eq!(
            header(&letter, HEADER_SOURCE_TOPIC),
            [b"in"],
            "the forged header is replaced"
        );
        assert_eq!(header(&letter, HEADER_SOURCE_OFFSET), [b"42"]);
        assert_eq!(header(&letter, HEADER_PLUGIN), [b"p"]);
    }

    #[test]
    fn dead_letter_over_the_size_limit_drops_its_value_and_says_so() {
        let letter = dead_letter("p", "in", record(5000), &failure(), 1000);
        assert!(letter.value.is_empty());
        assert_eq!(header(&letter, HEADER_DLQ_VALUE_DROPPED), [b"5000"]);
        assert!(letter.payload_size() <= 1000);
        assert_eq!(header(&letter, HEADER_ERROR).len(), 1);
    }

    #[test]
    fn interval_outputs_are_durable_before_the_input_offsets_move() {
        use crate::log::{LogConfig, TopicConfig};
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig {
            min_free_bytes: 0,
            ..LogConfig::default()
        };
        // An hour: only the runner's own sync can make the outputs durable in this test.
        let hourly = TopicConfig {
            fsync: FsyncPolicy::Interval {
                interval_ms: 3_600_000,
            },
            ..TopicConfig::default()
        };
        config.topics.insert("echo.out".into(), hourly);
        let log = Log::open(&dir.path().join("log"), config).unwrap();
        let state = StateStore::open(&dir.path().join("state")).unwrap();
        let input = log.topic_or_create("echo.in").unwrap();
        let records: Vec<NewRecord> = (0..50)
            .map(|i| NewRecord {
                key: Some(format!("k{i}").into_bytes()),
                value: format!("v{i}").into_bytes(),
                ..NewRecord::default()
            })
            .collect();
        input.append(records).unwrap();

        let host = Host::new(super::super::host::HostConfig::default()).unwrap();
        let wat = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/wat/echo.wat"
        ))
        .unwrap();
        let module = host.compile_named("echo", &wat).unwrap();
        let manifest = Manifest::parse(
            "name = \"echo\"\nversion = \"1\"\ninputs = [\"echo.in\"]\noutputs = [\"echo.out\"]\n",
        )
        .unwrap();
        let runner = RunnerHandle::start(
            &host,
            manifest,
            module,
            log.clone(),
            state.clone(),
            RunnerConfig {
                batch_records: 7,
                ..RunnerConfig::default()
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while state.offset("plugin:echo", "echo.in").unwrap() != Some(50) {
            assert!(Instant::now() < deadline, "the runner did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
        runner.stop_blocking();
        let out = log.topic("echo.out").unwrap();
        let (written, durable) = out.ends_for_test();
        assert_eq!(written, 50);
        assert_eq!(durable, 50, "outputs were committed past without an fsync");
    }

    /// An `echo` runner (it emits to `echo.out`) over input `gappy.in` of 60 records in segments of 4 KiB whose second
    /// segment file was deleted before the log was opened: (log, state, runner, the lost
    /// range).
    fn echo_over_a_lost_segment(
        dir: &std::path::Path,
        policy: crate::log::ReadGapPolicy,
    ) -> (Log, StateStore, RunnerHandle, std::ops::Range<u64>) {
        use crate::log::{LogConfig, NamedFsync, TopicConfig};
        let config = LogConfig {
            min_free_bytes: 0,
            on_read_gap: policy,
            default_topic: TopicConfig {
                fsync: FsyncPolicy::Named(NamedFsync::Never),
                segment_bytes: 4096,
                ..TopicConfig::default()
            },
            ..LogConfig::default()
        };
        {
            let log = Log::open(&dir.join("log"), config.clone()).unwrap();
            let input = log.topic_or_create("gappy.in").unwrap();
            for i in 0..60 {
                input
                    .append(vec![NewRecord {
                        value: format!("{i:0>300}").into_bytes(),
                        ..NewRecord::default()
                    }])
                    .unwrap();
            }
            log.close().unwrap();
        }
        let topic_dir = dir.join("log").join("gappy.in");
        let mut bases: Vec<u64> = std::fs::read_dir(&topic_dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".log").map(|b| b.parse().unwrap())
            })
            .collect();
        bases.sort_unstable();
        assert!(bases.len() >= 4, "{bases:?}");
        std::fs::remove_file(topic_dir.join(format!("{:020}.log", bases[1]))).unwrap();
        let log = Log::open(&dir.join("log"), config).unwrap();
        let state = StateStore::open(&dir.join("state")).unwrap();
        let host = Host::new(super::super::host::HostConfig::default()).unwrap();
        let wat = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/wat/echo.wat"
        ))
        .unwrap();
        let module = host.compile_named("echo", &wat).unwrap();
        let manifest = Manifest::parse(
            "name = \"echo\"\nversion = \"1\"\ninputs = [\"gappy.in\"]\noutputs = [\"echo.out\"]\n",
        )
        .unwrap();
        let runner = RunnerHandle::start(
            &host,
            manifest,
            module,
            log.clone(),
            state.clone(),
            RunnerConfig::default(),
        )
        .unwrap();
        (log, state, runner, bases[1]..bases[2])
    }

    #[test]
    fn a_runner_skips_a_lost_range_by_policy_and_the_gap_lands_in_outpost_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let (log, state, runner, lost) =
            echo_over_a_lost_segment(dir.path(), crate::log::ReadGapPolicy::Skip);
        let deadline = Instant::now() + Duration::from_secs(30);
        while state.offset("plugin:echo", "gappy.in").unwrap() != Some(60) {
            assert!(
                Instant::now() < deadline,
                "the runner did not get past the gap"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        runner.stop_blocking();
        let out = log.topic("echo.out").unwrap();
        let echoed = out.read(0, 1000, 1 << 24).unwrap().records;
        assert_eq!(echoed.len() as u64, 60 - (lost.end - lost.start));
        let sources: Vec<u64> = echoed
            .iter()
            .map(|r| {
                let (_, v) = r
                    .headers
                    .iter()
                    .find(|(n, _)| n == HEADER_SOURCE_OFFSET)
                    .unwrap();
                std::str::from_utf8(v).unwrap().parse().unwrap()
            })
            .collect();
        assert!(sources.iter().all(|o| !lost.contains(o)), "{sources:?}");
        let gaps = log.topic(crate::log::GAPS_TOPIC).unwrap();
        let markers: Vec<crate::log::GapMarker> = gaps
            .read(0, 100, 1 << 20)
            .unwrap()
            .records
            .iter()
            .map(|r| serde_json::from_slice(&r.value).unwrap())
            .collect();
        assert_eq!(markers.len(), 1, "{markers:?}");
        assert_eq!(
            (markers[0].topic.as_str(), markers[0].from_offset),
            ("gappy.in", lost.start)
        );
        assert_eq!(markers[0].to_offset, lost.end - 1);
        assert_eq!(markers[0].reason, crate::log::REASON_LOST);
        assert!(runner
            .logs(100)
            .iter()
            .any(|l| l.message.contains("lost or damaged")));
    }

    #[test]
    fn a_runner_stops_at_a_lost_range_when_the_policy_says_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, state, runner, lost) =
            echo_over_a_lost_segment(dir.path(), crate::log::ReadGapPolicy::Stop);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !runner.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the runner did not stop at the gap"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = runner.status();
        assert_eq!(status.state, RunState::Failed);
        let error = status.last_error.unwrap();
        assert!(error.contains("on_read_gap"), "{error}");
        assert!(
            error.contains(&format!("{}..{}", lost.start, lost.end)),
            "{error}"
        );
        assert_eq!(
            state.offset("plugin:echo", "gappy.in").unwrap(),
            Some(lost.start),
            "everything before the gap was handled, nothing after it"
        );
    }
}
