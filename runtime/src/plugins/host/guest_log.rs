//! What a plugin says: its stdout/stderr lines (through WASI `fd_write`), its `outpost.log`
//! messages, and the host's notes about it (failed records, restarts). Every line goes to the
//! host's `tracing` log tagged with the plugin name and into a ring buffer of recent lines that
//! `outpost plugin logs` shows.
//!
//! A plugin cannot flood either: at most [`LINES_PER_SECOND`] lines per second are kept; the
//! rest are counted and, when the next second starts, replaced by one line saying how many were
//! suppressed. Lines are cut at [`MAX_LINE_BYTES`].
//!
//! Nor can a plugin forge a line or take over an operator's terminal: control characters
//! (newline, CR, ESC, BEL, …) and Unicode bidirectional overrides in anything a plugin says are
//! escaped ([`escape_control`]) before the text is logged, kept or shown.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Lines kept per plugin per second; the rest are suppressed and counted.
pub const LINES_PER_SECOND: u32 = 50;
/// Lines kept in a plugin's ring buffer of recent output.
pub const RING_LINES: usize = 1000;
/// Longest line kept, in bytes; a longer one is cut (stdout/stderr: split).
pub const MAX_LINE_BYTES: usize = 4096;

/// How important a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level for an ABI `log` call's level number: 0 error, 1 warn, 2 info, 3 debug,
    /// 4 trace; out-of-range values are clamped.
    pub fn from_abi(level: i32) -> LogLevel {
        match level {
            i32::MIN..=0 => LogLevel::Error,
            1 => LogLevel::Warn,
            2 => LogLevel::Info,
            3 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The guest's WASI fd 1.
    Stdout,
    /// The guest's WASI fd 2.
    Stderr,
    /// The guest's `outpost.log` calls.
    Plugin,
    /// The host, about the plugin (failed records, restarts, suppressed lines).
    Host,
}

/// One line of a plugin's recent output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Wall-clock time the host received it, ms since the epoch.
    pub ts_ms: u64,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
}

/// One plugin's log: rate limit, ring buffer and the forwarding to `tracing`. Shared by every
/// instance of the plugin (it survives re-instantiation) and the runner's handle.
#[derive(Debug)]
pub struct GuestLog {
    plugin: Arc<str>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<LogLine>,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

/// Whether `c` must not reach a log or a terminal raw: C0/C1 controls, DEL, line and paragraph
/// separators and the bidirectional embeddings, overrides and isolates.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character (see [`is_unsafe`]) escaped as Rust does (`\n`, `\r`,
/// `\t`, `\u{1b}`); other text unchanged.
pub(crate) fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

impl GuestLog {
    /// An empty log for `plugin`.
    pub fn new(plugin: Arc<str>) -> GuestLog {
        GuestLog {
            plugin,
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                window_start: Instant::now(),
                in_window: 0,
                suppressed: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::kernel::lock(&self.inner)
    }

    /// Records one line (rate-limited): into the ring buffer and the host log.
    pub fn push(&self, level: LogLevel, source: LogSource, message: String) {
        let mut message = match escape_control(&message) {
            std::borrow::Cow::Borrowed(_) => message,
            std::borrow::Cow::Owned(escaped) => escaped,
        };
        truncate_utf8(&mut message, MAX_LINE_BYTES);
        let now = Instant::now();
        let mut inner = self.lock();
        if now.duration_since(inner.window_start) >= Duration::from_secs(1) {
            inner.window_start = now;
            inner.in_window = 0;
            if inner.suppressed > 0 {
                let note = format!(
                    "suppressed {} lines: the plugin wrote more than {LINES_PER_SECOND} lines per second",
                    inner.suppressed
                );
                inner.suppressed = 0;
                self.keep(&mut inner, LogLevel::Warn, LogSource::Host, note);
            }
        }
        if inner.in_window >= LINES_PER_SECOND {
            inner.suppressed += 1;
            return;
        }
        inner.in_window += 1;
        self.keep(&mut inner, level, source, message);
    }

    fn keep(&self, inner: &mut Inner, level: LogLevel, source: LogSource, message: String) {
        let plugin = &*self.plugin;
        let source_name = match source {
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Plugin => "log",
            LogSource::Host => "host",
        };
        match level {
            LogLevel::Error => tracing::error!(plugin, source = source_name, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, source = source_name, "{message}"),
            LogLevel::Info => tracing::info!(plugin, source = source_name, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, source = source_name, "{message}"),
            LogLevel::Trace => tracing::trace!(plugin, source = source_name, "{message}"),
        }
        if inner.ring.len() >= RING_LINES {
            inner.ring.pop_front();
        }
        inner.ring.push_back(LogLine {
            ts_ms: crate::kernel::now_ms(),
            level,
            source,
            message,
        });
    }

    /// The most recent `max_lines` lines, oldest first.
    pub fn recent(&self, max_lines: usize) -> Vec<LogLine> {
        let inner = self.lock();
        let skip = inner.ring.len().saturating_sub(max_lines);
        inner.ring.iter().skip(skip).cloned().collect()
    }
}

/// Collects a WASI output stream's bytes into lines.
#[derive(Debug)]
pub(crate) struct LineBuffer {
    source: LogSource,
    buf: Vec<u8>,
}

impl LineBuffer {
    pub(crate) fn new(source: LogSource) -> LineBuffer {
        LineBuffer {
            source,
            buf: Vec::new(),
        }
    }

    /// Adds bytes; every complete line (and every [`MAX_LINE_BYTES`] without a newline) goes
    /// to `log`.
    pub(crate) fn write(&mut self, bytes: &[u8], log: &GuestLog) {
        for &b in bytes {
            if b == b'\n' {
                self.flush(log);
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE_BYTES {
                    self.flush(log);
                }
            }
        }
    }

    /// Sends a pending partial line, if any.
    pub(crate) fn flush(&mut self, log: &GuestLog) {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        if self.buf.is_empty() {
            return;
        }
        let level = match self.source {
            LogSource::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        log.push(level, self.source, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_log_levels_map_and_clamp() {
        assert_eq!(LogLevel::from_abi(-7), LogLevel::Error);
        assert_eq!(LogLevel::from_abi(0), LogLevel::Error);
        assert_eq!(LogLevel::from_abi(2), LogLevel::Info);
        assert_eq!(LogLevel::from_abi(4), LogLevel::Trace);
        assert_eq!(LogLevel::from_abi(99), LogLevel::Trace);
    }

    #[test]
    fn lines_over_the_rate_limit_are_suppressed_and_counted() {
        let log = GuestLog::new("flood".into());
        for i in 0..(LINES_PER_SECOND + 30) {
            log.push(LogLevel::Info, LogSource::Stdout, format!("line {i}"));
        }
        let lines = log.recent(1000);
        assert_eq!(lines.len(), LINES_PER_SECOND as usize);
        // A new window reports what was dropped.
        log.lock().window_start = Instant::now() - Duration::from_secs(2);
        log.push(LogLevel::Info, LogSource::Stdout, "after".into());
        let lines = log.recent(2);
        assert_eq!(lines[0].source, LogSource::Host);
        assert!(
            lines[0].message.contains("suppressed 30 lines"),
            "{lines:?}"
        );
        assert_eq!(lines[1].message, "after");
    }

    #[test]
    fn ring_buffer_keeps_only_the_newest_lines() {
        let log = GuestLog::new("ring".into());
        for i in 0..(RING_LINES + 5) {
            // Stay inside the rate limit by resetting the window.
            log.lock().in_window = 0;
            log.push(LogLevel::Info, LogSource::Plugin, format!("{i}"));
        }
        let lines = log.recent(usize::MAX);
        assert_eq!(lines.len(), RING_LINES);
        assert_eq!(lines[0].message, "5");
        assert_eq!(log.recent(1)[0].message, format!("{}", RING_LINES + 4));
    }

    #[test]
    fn line_buffer_splits_on_newlines_and_flushes_long_lines() {
        let log = GuestLog::new("lines".into());
        let mut out = LineBuffer::new(LogSource::Stdout);
        out.write(b"hello\r\nwor", &log);
        out.write(b"ld\npartial", &log);
        let lines: Vec<_> = log.recent(10).into_iter().map(|l| l.message).collect();
        assert_eq!(lines, ["hello", "world"]);
        out.flush(&log);
        assert_eq!(log.recent(1)[0].message, "partial");
        out.write(&vec![b'x'; MAX_LINE_BYTES + 10], &log);
        assert_eq!(log.recent(1)[0].message.len(), MAX_LINE_BYTES);
    }
}
