//! Repeated log lines, rate-limited: a writer for the log subscriber that lets each call site
//! (one `tracing::warn!(…)` in the code) write at most [`LINES_PER_WINDOW`] lines per
//! [`WINDOW`] and counts the rest, so that a loop failing thousands of times a second (an
//! accept loop out of file descriptors, a device reconnecting in a tight loop) cannot fill the
//! disk of a box whose disk is its whole point. Every [`WINDOW`] a background thread writes one
//! line naming the call sites whose lines were suppressed and how many.
//!
//! It wraps any [`MakeWriter`]: `fmt().with_writer(RepeatLimit::new(std::io::stderr))`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::Metadata;
use tracing_subscriber::fmt::writer::EitherWriter;
use tracing_subscriber::fmt::MakeWriter;

/// Lines one call site may write per window.
pub const LINES_PER_WINDOW: u32 = 10;
/// The window, and the interval of the summary of suppressed lines.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Call sites named in one summary line, at most.
const SITES_PER_SUMMARY: usize = 10;

#[derive(Debug)]
struct Site {
    window_start: Instant,
    written: u32,
    suppressed: u64,
    name: String,
}

#[derive(Debug)]
struct Shared {
    per_window: u32,
    window: Duration,
    sites: Mutex<HashMap<Identifier, Site>>,
    summaries: Once,
}

/// A [`MakeWriter`] that drops a call site's lines beyond its budget (see the module doc).
#[derive(Debug, Clone)]
pub struct RepeatLimit<W> {
    inner: W,
    shared: Arc<Shared>,
}

impl<W> RepeatLimit<W> {
    /// Limits `inner` to [`LINES_PER_WINDOW`] lines per call site per [`WINDOW`].
    pub fn new(inner: W) -> RepeatLimit<W> {
        RepeatLimit::with_budget(inner, LINES_PER_WINDOW, WINDOW)
    }

    /// Limits `inner` to `per_window` lines per call site per `window`.
    pub fn with_budget(inner: W, per_window: u32, window: Duration) -> RepeatLimit<W> {
        RepeatLimit {
            inner,
            shared: Arc::new(Shared {
                per_window,
                window,
                sites: Mutex::new(HashMap::new()),
                summaries: Once::new(),
            }),
        }
    }

    /// Whether a line of `meta`'s call site may be written now (counts it either way).
    fn allow(&self, meta: &Metadata<'_>) -> bool {
        let now = Instant::now();
        let mut sites = crate::kernel::lock(&self.shared.sites);
        let site = sites.entry(meta.callsite()).or_insert_with(|| Site {
            window_start: now,
            written: 0,
            suppressed: 0,
            name: format!(
                "{}:{}",
                meta.file().unwrap_or(meta.target()),
                meta.line().unwrap_or(0)
            ),
        });
        if now.duration_since(site.window_start) >= self.shared.window {
            site.window_start = now;
            site.written = 0;
        }
        if site.written < self.shared.per_window {
            site.written += 1;
            return true;
        }
        site.suppressed += 1;
        drop(sites);
        let shared = Arc::clone(&self.shared);
        self.shared.summaries.call_once(move || {
            let _ = std::thread::Builder::new()
                .name("outpost-log-limit".into())
                .spawn(move || loop {
                    std::thread::sleep(shared.window);
                    summarize(&shared);
                });
        });
        false
    }

    /// Writes the summary of suppressed lines now (the background thread does it every
    /// window); for tests.
    pub fn summarize_now(&self) {
        summarize(&self.shared);
    }
}

/// Logs which call sites had lines suppressed since the last summary, and resets the counts.
fn summarize(shared: &Shared) {
    let mut suppressed: Vec<(String, u64)> = {
        let mut sites = crate::kernel::lock(&shared.sites);
        sites.retain(|_, s| s.suppressed > 0 || s.window_start.elapsed() < shared.window);
        sites
            .values_mut()
            .filter(|s| s.suppressed > 0)
            .map(|s| (s.name.clone(), std::mem::take(&mut s.suppressed)))
            .collect()
    };
    if suppressed.is_empty() {
        return;
    }
    suppressed.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let total: u64 = suppressed.iter().map(|(_, n)| n).sum();
    let sites = suppressed
        .iter()
        .take(SITES_PER_SUMMARY)
        .map(|(name, n)| format!("{name} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::warn!(
        suppressed = total,
        sites = %sites,
        "Repeated log lines were suppressed: each place in the code writes at most {} lines per {} s.",
        shared.per_window,
        shared.window.as_secs()
    );
}

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for RepeatLimit<W> {
    type Writer = EitherWriter<W::Writer, std::io::Sink>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::A(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        if self.allow(meta) {
            EitherWriter::A(self.inner.make_writer_for(meta))
        } else {
            EitherWriter::B(std::io::sink())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects written bytes.
    #[derive(Debug, Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[test]
    fn a_line_repeated_thousands_of_times_is_written_a_few_times_and_then_summarised() {
        let capture = Capture::default();
        let limit = RepeatLimit::with_budget(capture.clone(), 5, Duration::from_secs(3600));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(limit.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10_000 {
                tracing::warn!(i, "Accepting a connection failed.");
            }
            for i in 0..3 {
                tracing::info!(i, "Another line, written every time.");
            }
            limit.summarize_now();
            limit.summarize_now(); // nothing new: no second summary
        });
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count("Accepting a connection failed."), 5, "{text}");
        assert_eq!(count("Another line"), 3);
        assert_eq!(count("suppressed=9995"), 1, "{text}");
        assert_eq!(count("Repeated log lines were suppressed"), 1);
        assert!(
            text.contains("log_limit.rs:"),
            "the summary names the call site: {text}"
        );
    }
}
