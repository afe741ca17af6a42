//! Serving the router over TCP with limits, so that no client can take the API down by holding
//! sockets: hyper's HTTP/1 connection with a header-read timeout, an idle timeout, and a cap
//! on open connections.
//!
//! - **Header read timeout** (`http.header_read_timeout_ms`): hyper's own timer (driven by
//!   [`TokioTimer`]) starts when it waits for a request head, also on an idle keep-alive
//!   connection, and closes the connection when the head is not complete in time: slowloris
//!   and silent sockets go away.
//! - **Idle timeout** (`http.idle_timeout_ms`): every connection's socket records when it last
//!   moved a byte; a connection quiet for longer is closed, also with a request in flight (a
//!   stalled body upload, a client that does not read its answer). It exceeds
//!   `http.max_wait_ms`, so a long poll is never cut.
//! - **Connection cap** (`http.max_connections`): at the cap a new connection *evicts* the
//!   connection quiet the longest, first among those without a request in flight, else among
//!   those quiet for longer than the header-read timeout (stalled). Only when every connection is busy and moving is
//!   the new one answered `503` with `Retry-After` and closed. So a flood of idle or slow
//!   sockets cannot lock out `/health`: the flood evicts itself.
//!
//! Connection outcomes are counted in `outpost_http_connections_total{listen,result}`
//! (`accepted`, `evicted`, `refused`, `header_timeout`, `idle_timeout`), open connections in
//! the gauge `outpost_http_connections_open{listen}`, requests being answered in
//! `outpost_http_requests_in_flight{listen}`; the warnings about them are rate-limited to one per
//! [`WARN_EVERY`] with the number of suppressed ones.
//!
//! Shutdown stops accepting, lets each connection finish its in-flight request
//! (`graceful_shutdown`: idle keep-alive connections close at once) and returns when every
//! connection is gone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::config::HttpConfig;
use crate::kernel::{lock, Shutdown};
use crate::metrics::{Counter, Gauge};

/// At most one warning per kind about connections in this interval.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The answer to a connection refused at the cap.
fn refused_answer() -> Vec<u8> {
    let body = r#"{"error_code":50303,"message":"too many busy connections (`http.max_connections`); retry shortly"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The limits of the server, from `[http]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
}

/// One open connection, as the server and its socket see it.
#[derive(Debug)]
struct Slot {
    /// When it last moved a byte, in ms since the server started.
    last_activity_ms: AtomicU64,
    /// Requests in flight.
    active: AtomicUsize,
    /// Notified when the server evicts it.
    evict: Notify,
}

#[derive(Debug)]
struct Metrics {
    open: Gauge,
    requests: Gauge,
    accepted: Counter,
    evicted: Counter,
    refused: Counter,
    header_timeouts: Counter,
    idle_timeouts: Counter,
}

impl Metrics {
    /// The series of the server listening on `listen`.
    fn new(listen: &str) -> Metrics {
        let r = crate::metrics::global();
        let outcome = |result: &str| {
            r.counter(
                "outpost_http_connections_total",
                "HTTP connections by outcome: accepted, evicted at the cap, refused at the cap, \
                 closed by the header-read or the idle timeout.",
                &[("listen", listen), ("result", result)],
            )
        };
        Metrics {
            open: r.gauge(
                "outpost_http_connections_open",
                "Open HTTP connections.",
                &[("listen", listen)],
            ),
            requests: r.gauge(
                "outpost_http_requests_in_flight",
                "HTTP requests being answered.",
                &[("listen", listen)],
            ),
            accepted: outcome("accepted"),
            evicted: outcome("evicted"),
            refused: outcome("refused"),
            header_timeouts: outcome("header_timeout"),
            idle_timeouts: outcome("idle_timeout"),
        }
    }
}

/// A warning that is logged at most once per [`WARN_EVERY`], with how many were held back.
#[derive(Debug)]
struct RateLimited {
    what: &'static str,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    fn new(what: &'static str) -> RateLimited {
        RateLimited {
            what,
            state: Mutex::new((None, 0)),
        }
    }

    fn warn(&self, detail: &dyn std::fmt::Display) {
        let mut state = lock(&self.state);
        let due = state.0.is_none_or(|last| last.elapsed() >= WARN_EVERY);
        if !due {
            state.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut state.1);
        state.0 = Some(Instant::now());
        drop(state);
        tracing::warn!(
            what = self.what,
            detail = %detail,
            suppressed_since_last = suppressed,
            "HTTP connections are being limited."
        );
    }
}

/// What the accept loop and every connection share.
#[derive(Debug)]
struct Shared {
    limits: Limits,
    started: Instant,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    /// Requests being answered, on every connection.
    in_flight: AtomicUsize,
    metrics: Metrics,
    warn_evicted: RateLimited,
    warn_refused: RateLimited,
    warn_accept: RateLimited,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits a new connection: a slot, possibly by evicting another; `None` when every
    /// connection is busy.
    fn admit(&self) -> Option<(u64, Arc<Slot>)> {
        let now = self.now_ms();
        let mut slots = lock(&self.slots);
        if slots.len() >= self.limits.max_connections {
            let quiet_for =
                |s: &Slot| now.saturating_sub(s.last_activity_ms.load(Ordering::Relaxed));
            let stalled =
                u64::try_from(self.limits.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
            let victim = slots
                .iter()
                .filter(|(_, s)| s.active.load(Ordering::Relaxed) == 0)
                .max_by_key(|(_, s)| quiet_for(s))
                .or_else(|| {
                    slots
                        .iter()
                        .filter(|(_, s)| quiet_for(s) >= stalled)
                        .max_by_key(|(_, s)| quiet_for(s))
                })
                .map(|(id, _)| *id);
            let victim = victim.and_then(|id| slots.remove(&id));
            match victim {
                Some(slot) => {
                    slot.evict.notify_one();
                    self.metrics.evicted.inc();
                    self.warn_evicted.warn(&format_args!(
                        "at the cap of {} connections, the one quiet longest was closed for a new one",
                        self.limits.max_connections
                    ));
                }
                None => {
                    self.metrics.refused.inc();
                    self.warn_refused.warn(&format_args!(
                        "all {} connections are busy; a new one was answered 503",
                        self.limits.max_connections
                    ));
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            last_activity_ms: AtomicU64::new(now),
            active: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        slots.insert(id, slot.clone());
        self.metrics.accepted.inc();
        self.metrics.open.set(slots.len() as f64);
        Some((id, slot))
    }

    fn release(&self, id: u64) {
        let mut slots = lock(&self.slots);
        slots.remove(&id);
        self.metrics.open.set(slots.len() as f64);
    }
}

/// The socket of one connection, recording when it last moved a byte.
struct Tracked {
    stream: TcpStream,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
}

impl Tracked {
    fn touch(&self) {
        self.slot
            .last_activity_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Counts a request in flight on its connection (and in the server) for as long as it lives.
struct InFlight(Arc<Slot>, Arc<Shared>);

impl InFlight {
    fn new(slot: &Arc<Slot>, shared: &Arc<Shared>) -> InFlight {
        slot.active.fetch_add(1, Ordering::Relaxed);
        let n = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.metrics.requests.set(n as f64);
        InFlight(slot.clone(), shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        let n = self
            .1
            .in_flight
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        self.1.metrics.requests.set(n as f64);
    }
}

/// Serves `router` on `listener` under the limits of `http` until `shutdown` fires, then
/// finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    http: &HttpConfig,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?.to_string();
    let shared = Arc::new(Shared {
        limits: Limits {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_connections: http.max_connections.max(1),
        },
        started: Instant::now(),
        slots: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        metrics: Metrics::new(&listen),
        warn_evicted: RateLimited::new("evicted"),
        warn_refused: RateLimited::new("refused"),
        warn_accept: RateLimited::new("accept failed"),
    });
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.requested() => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks as they end, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors (or a connection reset before accept): back off a
                // moment instead of spinning.
                shared.warn_accept.warn(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match shared.admit() {
            Some((id, slot)) => {
                let connection = serve_connection(
                    stream,
                    id,
                    slot,
                    router.clone(),
                    shared.clone(),
                    shutdown.clone(),
                );
                connections.spawn(connection);
            }
            None => {
                // Best effort: the answer fits in the socket buffer; the socket closes on drop.
                let _ = stream.try_write(&refused_answer());
            }
        }
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Why a connection ended, when the server ended it.
enum Closed {
    Evicted,
    IdleTimeout,
}

async fn serve_connection(
    stream: TcpStream,
    id: u64,
    slot: Arc<Slot>,
    router: Router,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) {
    {
        let limits = shared.limits;
        let io = TokioIo::new(Tracked {
            stream,
            slot: slot.clone(),
            shared: shared.clone(),
        });
        let (service_slot, service_shared) = (slot.clone(), shared.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::new(&service_slot, &service_shared);
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await;
                drop(in_flight);
                response
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let check_every =
            (limits.idle_timeout / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
        let mut check = tokio::time::interval(check_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut draining = false;
        let closed = loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        if e.is_timeout() {
                            shared.metrics.header_timeouts.inc();
                        } else {
                            tracing::debug!(error = %e, "An HTTP connection ended with an error.");
                        }
                    }
                    break None;
                }
                _ = slot.evict.notified() => break Some(Closed::Evicted),
                _ = shutdown.requested(), if !draining => {
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = check.tick() => {
                    let quiet = shared
                        .now_ms()
                        .saturating_sub(slot.last_activity_ms.load(Ordering::Relaxed));
                    if quiet >= idle_ms {
                        break Some(Closed::IdleTimeout);
                    }
                }
            }
        };
        match closed {
            Some(Closed::IdleTimeout) => shared.metrics.idle_timeouts.inc(),
            Some(Closed::Evicted) | None => {}
        }
        // Dropping the connection closes the socket.
        shared.release(id);
    }
}
