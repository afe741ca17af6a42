//! The kernel: what every component of a running box shares, and nothing else.
//!
//! - [`Shutdown`] — the one shutdown signal (`requested().await` / `is_requested()`; a dropped
//!   trigger counts as a request).
//! - [`Backoff`] — the one retry timing.
//! - [`clock`] — the one `now_ms` and the [`Clock`] seam for tests.
//! - [`lock`] — mutexes without poisoning.
//! - [`status`] — the boards of sources and sinks, every number a metric handle.
//! - [`limits`] — the open-file limit, raised at start and budgeted against.
//! - [`log_limit`] — repeated log lines, rate-limited per call site.
//! - [`ready`] — readiness: the start-up conditions a box still waits for (`GET /ready`).
//! - [`Context`] — what `app.rs` builds once per box and hands to every component: the log,
//!   the state store, the identity, the shutdown signal, the readiness, the status boards.
//!
//! The primitives depend on nothing else in the crate but the metrics registry, so every room,
//! `log/` and `state/` included, may use them. [`Context`] bundles the open storage with them;
//! only components (and `app.rs`, which builds it) use it.

pub mod backoff;
pub mod clock;
pub mod context;
pub mod limits;
pub mod lock;
pub mod log_limit;
pub mod ready;
pub mod shutdown;
pub mod status;

pub use backoff::Backoff;
pub use clock::{now_ms, Clock, ManualClock, SystemClock};
pub use context::{Context, Identity};
pub use lock::{lock, read_lock, write_lock};
pub use ready::Readiness;
pub use shutdown::{Shutdown, ShutdownTrigger};
pub use status::{Link, Role, Status, StatusBoard, StatusEntry};
