//! One device's polling task: connect, read the plan, decode, append one record, sleep.
//!
//! # A poll
//! Each request of the read plan (see `plan.rs`) is sent in turn, at most `delay_between_requests_ms`
//! after the previous answer, and waits at most `request_timeout_ms`. An answer with exception
//! 0x06 "server device busy" or 0x05 "acknowledge" is retried up to `busy_retries` times after
//! `busy_retry_delay_ms`. Any other exception leaves that request's values out of the record
//! (quality `uncertain`, or `bad` when no value could be read) and the poll goes on. A timeout,
//! a broken connection or a malformed answer ends the poll: the connection is dropped (a late
//! answer must not be taken for the next one) and rebuilt at the next attempt, after
//! `delay_after_connect_ms`.
//!
//! # Failures, backoff and gaps
//! After a failed poll the next attempt waits `backoff_initial_ms`, doubling with every further
//! failure up to `backoff_max_ms`, never less than `poll_interval_ms`. From the first failed or
//! refused poll to the next stored one a *gap* is open; it is shown in the device's status while
//! open, and on recovery it is closed and kept (from, to, polls missed, reason) in `last_gap`
//! and the recent-gaps list. When the log refuses an append (`StorageFull`: the disk budget) the
//! poll's record is not kept anywhere: the device shows `backpressured` and the skipped interval
//! is a gap like any other, so nothing is lost silently.

use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_modbus::client::{rtu, tcp, Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};

use super::config::{DeviceConfig, RegisterKind, Transport};
use super::decode::decode_registers;
use super::plan::{plan_device, ReadGroup};
use super::serial::{LineSettings, SerialPort};
use crate::ingest::gaps::{Gaps, OpenGap};
use crate::ingest::link_metrics::LinkMetrics;
use crate::kernel::{now_ms, Backoff, Shutdown};
use crate::kernel::{Link, StatusBoard, StatusEntry};
use crate::log::{Log, LogError, NewRecord, Topic};
use crate::metrics::{self, Counter, Gauge};

/// What one read returned.
#[derive(Debug)]
enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why one read gave no data.
#[derive(Debug)]
enum ReadError {
    /// The device answered with an exception; the connection is fine.
    Exception(ExceptionCode),
    /// No usable answer; the connection must be rebuilt.
    Link(String),
}

/// The outcome of one poll.
#[derive(Debug)]
enum Poll {
    /// The device answered (possibly with exceptions for some requests).
    Read {
        values: Map<String, Value>,
        errors: Vec<String>,
    },
    /// No record: the device could not be reached or stopped answering.
    Failed(String),
}

#[derive(Debug)]
struct DeviceMetrics {
    polls_good: Counter,
    polls_uncertain: Counter,
    polls_bad: Counter,
    polls_failed: Counter,
    polls_refused: Counter,
    poll_seconds: Gauge,
    requests_ok: Counter,
    requests_exception: Counter,
    requests_busy: Counter,
    requests_failed: Counter,
    /// Connected, connects, records stored, gaps: shared with OPC-UA.
    link: LinkMetrics,
}

impl DeviceMetrics {
    fn new(device: &str) -> DeviceMetrics {
        let r = metrics::global();
        let polls = |result: &str| {
            r.counter(
                "outpost_modbus_polls_total",
                "Modbus polls by device and result (good, uncertain, bad: a record; failed: none; refused: the log refused the record).",
                &[("device", device), ("result", result)],
            )
        };
        let requests = |result: &str| {
            r.counter(
                "outpost_modbus_requests_total",
                "Modbus read requests by device and result (ok, exception, busy: retried, failed: timeout or link error).",
                &[("device", device), ("result", result)],
            )
        };
        DeviceMetrics {
            polls_good: polls("good"),
            polls_uncertain: polls("uncertain"),
            polls_bad: polls("bad"),
            polls_failed: polls("failed"),
            polls_refused: polls("refused"),
            poll_seconds: r.gauge(
                "outpost_modbus_poll_seconds",
                "Duration of the last Modbus poll of a device, in seconds.",
                &[("device", device)],
            ),
            requests_ok: requests("ok"),
            requests_exception: requests("exception"),
            requests_busy: requests("busy"),
            requests_failed: requests("failed"),
            link: LinkMetrics::new("modbus", "device", device, "Modbus device"),
        }
    }
}

fn exception_text(code: ExceptionCode) -> String {
    format!("exception 0x{:02X} ({code:?})", u8::from(code))
}

/// Polls one device until shutdown.
#[derive(Debug)]
pub(super) struct Poller {
    device: DeviceConfig,
    groups: Vec<ReadGroup>,
    topic_name: String,
    topic: Option<Topic>,
    log: Log,
    board: StatusBoard,
    status_name: String,
    metrics: DeviceMetrics,
    context: Option<ContextBox>,
    last_request: Option<Instant>,
    consecutive_failures: u32,
    open_gap: Option<OpenGap>,
    gaps: Gaps,
    last_stored: Option<(Map<String, Value>, &'static str)>,
    polls_since_stored: u32,
    /// The device's status counters (`details.<name>` and `outpost_source_<name>_total`).
    counts: StatusCounts,
}

/// The counters a Modbus device shows in its status, each a metric handle.
#[derive(Debug)]
struct StatusCounts {
    polls_ok: Counter,
    polls_failed: Counter,
    requests: Counter,
    busy_retries: Counter,
    connects: Counter,
}

impl StatusCounts {
    fn register(s: &mut StatusEntry) -> StatusCounts {
        StatusCounts {
            polls_ok: s.counter("polls_ok", "Modbus polls that produced a record."),
            polls_failed: s.counter(
                "polls_failed",
                "Modbus polls that produced no record (device unreachable or the log refused it).",
            ),
            requests: s.counter("requests", "Modbus read requests sent."),
            busy_retries: s.counter(
                "busy_retries",
                "Modbus requests retried after a busy or acknowledge exception.",
            ),
            connects: s.counter("connects", "Connections made to the Modbus device."),
        }
    }
}

const CONNECTED_HELP: &str = "1 while Outpost holds a working connection to the device.";

/// tokio-modbus' client context has no `Debug`.
struct ContextBox(Context);

impl std::fmt::Debug for ContextBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("modbus client context")
    }
}

impl Poller {
    /// A poller for a validated device; registers the device's status on the board.
    pub(super) fn new(device: DeviceConfig, log: Log, board: StatusBoard) -> Poller {
        let groups = plan_device(&device);
        let status_name = format!("modbus:{}", device.name);
        let counts = board.register(&status_name, "modbus", |s| {
            s.set_info("address", device.address_label());
            s.set_info("unit_id", device.unit_id);
            s.set_info("topic", device.topic_name());
            s.set_info(
                "read_plan",
                groups.iter().map(ReadGroup::label).collect::<Vec<_>>(),
            );
            s.set_flag("connected", CONNECTED_HELP, false);
            s.set_info("open_gap", Value::Null);
            s.set_info("recent_gaps", Value::Array(Vec::new()));
            StatusCounts::register(s)
        });
        Poller {
            metrics: DeviceMetrics::new(&device.name),
            topic_name: device.topic_name(),
            topic: None,
            groups,
            device,
            log,
            board,
            status_name,
            context: None,
            last_request: None,
            consecutive_failures: 0,
            open_gap: None,
            gaps: Gaps::new("missed_polls", "polls missed"),
            last_stored: None,
            polls_since_stored: 0,
            counts,
        }
    }

    /// Polls every `poll_interval_ms` until `shutdown` turns true (or its sender is gone).
    pub(super) async fn run(mut self, shutdown: Shutdown) {
        tracing::info!(
            device = %self.device.name,
            address = %self.device.address_label(),
            topic = %self.topic_name,
            requests_per_poll = self.groups.len(),
            "Polling a Modbus device."
        );
        loop {
            let started = Instant::now();
            let ts_ms = now_ms();
            let poll = tokio::select! {
                poll = self.poll() => poll,
                _ = shutdown.requested() => break,
            };
            self.metrics
                .poll_seconds
                .set(started.elapsed().as_secs_f64());
            let ok = self.finish(poll, ts_ms).await;
            let wait = if ok {
                Duration::from_millis(self.device.poll_interval_ms)
            } else {
                self.backoff()
            };
            tokio::select! {
                _ = sleep_until(started + wait) => {}
                _ = shutdown.requested() => break,
            }
        }
        if let Some(ContextBox(mut context)) = self.context.take() {
            use tokio_modbus::client::Client;
            let _ = context.disconnect().await;
        }
        self.metrics.link.connected.set(0.0);
        self.board
            .update(&self.status_name, |s| s.set_link(Link::Stopped));
        tracing::info!(device = %self.device.name, "Stopped polling a Modbus device.");
    }

    /// The wait after a failed poll: exponential, capped, never below the poll interval.
    fn backoff(&self) -> Duration {
        Backoff::from_millis(self.device.backoff_initial_ms, self.device.backoff_max_ms)
            .after_failures(self.consecutive_failures)
            .max(Duration::from_millis(self.device.poll_interval_ms))
    }

    async fn connect(&mut self) -> Result<(), String> {
        let device = &self.device;
        let limit = Duration::from_millis(device.connect_timeout_ms);
        let slave = Slave(device.unit_id);
        let context = match device.transport {
            Transport::Tcp => {
                let host = device.host.clone().unwrap_or_default();
                let stream =
                    match timeout(limit, TcpStream::connect((host.as_str(), device.port))).await {
                        Err(_) => {
                            return Err(format!(
                                "no connection within {} ms (`connect_timeout_ms`)",
                                device.connect_timeout_ms
                            ))
                        }
                        Ok(Err(e)) => return Err(format!("cannot connect: {e}")),
                        Ok(Ok(stream)) => stream,
                    };
                let _ = stream.set_nodelay(true);
                tcp::attach_slave(stream, slave)
            }
            Transport::Rtu => {
                let path = device.serial_path.clone().unwrap_or_default();
                let settings = LineSettings {
                    baud_rate: device.baud_rate,
                    parity: device.parity,
                    data_bits: device.data_bits,
                    stop_bits: device.stop_bits,
                };
                let port = SerialPort::open(&path, settings)
                    .map_err(|e| format!("cannot open serial port {path}: {e}"))?;
                rtu::attach_slave(port, slave)
            }
        };
        self.context = Some(ContextBox(context));
        self.counts.connects.inc();
        self.metrics.link.connects_ok.inc();
        if device.delay_after_connect_ms > 0 {
            sleep(Duration::from_millis(device.delay_after_connect_ms)).await;
        }
        self.last_request = None;
        Ok(())
    }

    /// Sends one read, retrying busy answers.
    async fn read(&mut self, group: &ReadGroup) -> Result<Data, ReadError> {
        let mut attempt = 0u32;
        loop {
            if let Some(last) = self.last_request {
                let gap = Duration::from_millis(self.device.delay_between_requests_ms);
                sleep_until(last + gap).await;
            }
            let Some(ContextBox(context)) = self.context.as_mut() else {
                return Err(ReadError::Link("not connected".into()));
            };
            let limit = Duration::from_millis(self.device.request_timeout_ms);
            let (start, count) = (group.start, group.count);
            self.counts.requests.inc();
            let answer = match group.kind {
                RegisterKind::Holding => {
                    timeout(limit, context.read_holding_registers(start, count))
                        .await
                        .map(|r| r.map(|r| r.map(Data::Words)))
                }
                RegisterKind::Input => timeout(limit, context.read_input_registers(start, count))
                    .await
                    .map(|r| r.map(|r| r.map(Data::Words))),
                RegisterKind::Coil => timeout(limit, context.read_coils(start, count))
                    .await
                    .map(|r| r.map(|r| r.map(Data::Bits))),
                RegisterKind::DiscreteInput => {
                    timeout(limit, context.read_discrete_inputs(start, count))
                        .await
                        .map(|r| r.map(|r| r.map(Data::Bits)))
                }
            };
            self.last_request = Some(Instant::now());
            match answer {
                Err(_) => {
                    self.metrics.requests_failed.inc();
                    return Err(ReadError::Link(format!(
                        "no answer to {} within {} ms (`request_timeout_ms`)",
                        group.label(),
                        self.device.request_timeout_ms
                    )));
                }
                Ok(Err(e)) => {
                    self.metrics.requests_failed.inc();
                    return Err(ReadError::Link(format!("{}: {e}", group.label())));
                }
                Ok(Ok(Err(code)))
                    if matches!(
                        code,
                        ExceptionCode::ServerDeviceBusy | ExceptionCode::Acknowledge
                    ) && attempt < self.device.busy_retries =>
                {
                    attempt += 1;
                    self.counts.busy_retries.inc();
                    self.metrics.requests_busy.inc();
                    tracing::debug!(
                        device = %self.device.name,
                        request = %group.label(),
                        exception = %exception_text(code),
                        attempt,
                        "The Modbus device is busy; retrying the request."
                    );
                    sleep(Duration::from_millis(self.device.busy_retry_delay_ms)).await;
                }
                Ok(Ok(Err(code))) => {
                    self.metrics.requests_exception.inc();
                    return Err(ReadError::Exception(code));
                }
                Ok(Ok(Ok(data))) => {
                    let got = match &data {
                        Data::Words(w) => w.len(),
                        Data::Bits(b) => b.len(),
                    };
                    if got < usize::from(count) {
                        self.metrics.requests_failed.inc();
                        return Err(ReadError::Link(format!(
                            "{}: the answer holds {got} values instead of {count}",
                            group.label()
                        )));
                    }
                    self.metrics.requests_ok.inc();
                    return Ok(data);
                }
            }
        }
    }

    /// One poll: every request of the plan, decoded into values.
    async fn poll(&mut self) -> Poll {
        if self.context.is_none() {
            if let Err(e) = self.connect().await {
                self.metrics.link.connects_failed.inc();
                return Poll::Failed(e);
            }
            self.metrics.link.connected.set(1.0);
        }
        let mut decoded: Vec<Option<Value>> = vec![None; self.device.points.len()];
        let mut errors = Vec::new();
        let groups = self.groups.clone();
        for group in &groups {
            match self.read(group).await {
                Ok(Data::Words(words)) => {
                    for &i in &group.points {
                        let point = &self.device.points[i];
                        let from = usize::from(point.address - group.start);
                        let slice = words.get(from..).unwrap_or(&[]);
                        match decode_registers(slice, point) {
                            Ok(value) => decoded[i] = Some(value),
                            Err(e) => errors.push(format!("{}: {e}", point.name)),
                        }
                    }
                }
                Ok(Data::Bits(bits)) => {
                    for &i in &group.points {
                        let point = &self.device.points[i];
                        let at = usize::from(point.address - group.start);
                        match bits.get(at) {
                            Some(bit) => decoded[i] = Some(Value::Bool(*bit)),
                            None => errors.push(format!("{}: missing from the answer", point.name)),
                        }
                    }
                }
                Err(ReadError::Exception(code)) => {
                    errors.push(format!("{}: {}", group.label(), exception_text(code)));
                }
                Err(ReadError::Link(e)) => {
                    // A late answer could be taken for the next request's: start afresh.
                    self.context = None;
                    self.metrics.link.connected.set(0.0);
                    return Poll::Failed(e);
                }
            }
        }
        let mut values = Map::new();
        for (point, value) in self.device.points.iter().zip(decoded) {
            if let Some(value) = value {
                values.insert(point.name.clone(), value);
            }
        }
        Poll::Read { values, errors }
    }

    /// Stores the poll's record (or not: on-change), updates status and gaps. Returns false
    /// when the poll failed or its record was refused (the caller backs off).
    async fn finish(&mut self, poll: Poll, ts_ms: u64) -> bool {
        let (values, errors) = match poll {
            Poll::Failed(reason) => {
                self.fail(ts_ms, reason, false);
                return false;
            }
            Poll::Read { values, errors } => (values, errors),
        };
        let quality = if errors.is_empty() {
            "good"
        } else if values.is_empty() {
            "bad"
        } else {
            "uncertain"
        };
        if !errors.is_empty() {
            tracing::debug!(device = %self.device.name, errors = ?errors, "Part of a Modbus poll failed.");
        }
        self.polls_since_stored = self.polls_since_stored.saturating_add(1);
        let unchanged = self
            .last_stored
            .as_ref()
            .is_some_and(|(v, q)| *v == values && *q == quality);
        let heartbeat_due = self.device.heartbeat_polls > 0
            && self.polls_since_stored >= self.device.heartbeat_polls;
        let store = !self.device.on_change || !unchanged || heartbeat_due;
        if store {
            let mut record = json!({
                "ts_ms": ts_ms,
                "device": self.device.name,
                "values": values,
                "quality": quality,
                "units": self.units(),
            });
            if !errors.is_empty() {
                record["errors"] = Value::from(errors.clone());
            }
            match self.append(record, ts_ms).await {
                Ok(()) => {
                    self.last_stored = Some((values, quality));
                    self.polls_since_stored = 0;
                }
                Err(e) => {
                    let full = matches!(e, LogError::StorageFull(_));
                    self.fail(ts_ms, format!("the log refused the record: {e}"), full);
                    return false;
                }
            }
        }
        match quality {
            "good" => self.metrics.polls_good.inc(),
            "uncertain" => self.metrics.polls_uncertain.inc(),
            _ => self.metrics.polls_bad.inc(),
        }
        self.counts.polls_ok.inc();
        self.consecutive_failures = 0;
        let closed = self.open_gap.take().map(|gap| self.close_gap(gap, ts_ms));
        let stored = store;
        let gaps = self.gaps.recent();
        let error_count = u64::from(!errors.is_empty());
        self.board.update(&self.status_name, |s| {
            s.set_link(Link::Connected);
            if stored {
                s.stored(1, ts_ms);
            }
            s.error(error_count);
            if let Some(text) = closed {
                s.gap(text);
            }
            s.set_flag("connected", CONNECTED_HELP, true);
            s.set_info("last_quality", quality);
            s.set_gauge(
                "last_poll_ms",
                "When the last poll that produced a record ran, in ms since the epoch.",
                ts_ms as f64,
            );
            s.set_info("open_gap", Value::Null);
            s.set_info("recent_gaps", gaps);
        });
        true
    }

    fn units(&self) -> Value {
        let mut units = Map::new();
        for point in &self.device.points {
            if let Some(unit) = &point.unit {
                units.insert(point.name.clone(), Value::from(unit.clone()));
            }
        }
        Value::Object(units)
    }

    async fn append(&mut self, record: Value, ts_ms: u64) -> Result<(), LogError> {
        let topic = match &self.topic {
            Some(topic) => topic.clone(),
            None => {
                let log = self.log.clone();
                let name = self.topic_name.clone();
                let topic = tokio::task::spawn_blocking(move || log.topic_or_create(&name))
                    .await
                    .map_err(|e| LogError::Io {
                        context: "opening the topic".into(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
                self.topic = Some(topic.clone());
                topic
            }
        };
        let value = serde_json::to_vec(&record).map_err(|e| LogError::Io {
            context: "encoding the record".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        topic
            .append_async(vec![NewRecord {
                key: Some(self.device.name.as_bytes().to_vec()),
                value,
                headers: Vec::new(),
                timestamp_ms: Some(ts_ms),
            }])
            .await?;
        self.metrics.link.records.inc();
        Ok(())
    }

    /// A poll that produced no stored record: open or extend the gap, update status.
    fn fail(&mut self, ts_ms: u64, reason: String, backpressure: bool) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.counts.polls_failed.inc();
        if backpressure {
            self.metrics.polls_refused.inc();
        } else {
            self.metrics.polls_failed.inc();
        }
        match self.open_gap.as_mut() {
            Some(gap) => {
                gap.missed += 1;
                gap.reason.clone_from(&reason);
            }
            None => {
                tracing::warn!(
                    device = %self.device.name,
                    address = %self.device.address_label(),
                    reason = %reason,
                    "A Modbus poll failed; retrying with backoff until the device answers."
                );
                self.open_gap = Some(OpenGap {
                    from_ms: ts_ms,
                    missed: 1,
                    reason: reason.clone(),
                });
            }
        }
        let open = self.open_gap.as_ref().map(|g| self.gaps.open_json(g));
        let attempts = u64::from(self.consecutive_failures);
        let connected = self.context.is_some();
        self.board.update(&self.status_name, |s| {
            s.set_link(if backpressure {
                Link::Backpressured {
                    reason: reason.clone(),
                }
            } else {
                Link::Retrying {
                    last_error: reason.clone(),
                    attempts,
                }
            });
            s.error(1);
            s.set_flag("connected", CONNECTED_HELP, connected);
            s.set_info("open_gap", open.clone().unwrap_or(Value::Null));
        });
    }

    /// Closes a gap at `to_ms`; returns its human-readable text.
    fn close_gap(&mut self, gap: OpenGap, to_ms: u64) -> String {
        tracing::info!(
            device = %self.device.name,
            from_ms = gap.from_ms,
            to_ms,
            missed_polls = gap.missed,
            reason = %gap.reason,
            "A Modbus device answers again; the gap is closed."
        );
        self.metrics.link.gaps.inc();
        self.gaps.close(gap, to_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_never_undercuts_the_interval() {
        let mut device = DeviceConfig::tcp("b", "127.0.0.1", 502);
        device.poll_interval_ms = 300;
        device.backoff_initial_ms = 100;
        device.backoff_max_ms = 1000;
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Default::default()).unwrap();
        let mut poller = Poller::new(device, log, StatusBoard::sources());
        let mut waits = Vec::new();
        for failures in 1..=6 {
            poller.consecutive_failures = failures;
            waits.push(poller.backoff().as_millis() as u64);
        }
        assert_eq!(waits, vec![300, 300, 400, 800, 1000, 1000]);
    }
}
