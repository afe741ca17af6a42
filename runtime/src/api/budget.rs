//! The box-wide budget of request body bytes in memory (`http.max_inflight_body_bytes`).
//!
//! A request that carries a body reserves [`MEMORY_PER_BODY_BYTE`] times its declared
//! `Content-Length` (or `http.max_body_bytes` when it has none) *before* the body is read, and
//! holds the reservation until its records are appended: the body itself, the records parsed
//! from it and their encoded batch together take about that much (measured: an 8 MiB body of
//! small JSON records peaks near 30 MiB). When the reservation does not fit, the request
//! is answered `503` with `Retry-After` at once, without reading the body: thirty 8 MiB bodies
//! at once cost at most the budget, not thirty bodies and their parse trees. The bytes held
//! are the gauge `outpost_http_inflight_body_bytes`; refusals count in
//! `outpost_http_body_budget_refusals_total`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::metrics::{Counter, Gauge};

/// Bytes of memory a request is charged per byte of its body.
pub(crate) const MEMORY_PER_BODY_BYTE: usize = 4;

/// The budget, shared by every request of one API. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
    held: Gauge,
    refusals: Counter,
}

/// Bytes reserved in the budget; given back on drop.
#[derive(Debug)]
pub(crate) struct Reserved {
    permit: Option<OwnedSemaphorePermit>,
    budget: BodyBudget,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // The permit is released after this body runs; count it as released already.
        let released = self.permit.as_ref().map_or(0, |p| p.num_permits());
        self.budget.publish(released);
    }
}

impl BodyBudget {
    /// A budget of `total` bytes (at most `u32::MAX`).
    pub(crate) fn new(total: usize) -> BodyBudget {
        let total = total.min(u32::MAX as usize).min(Semaphore::MAX_PERMITS);
        let r = crate::metrics::global();
        BodyBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
            held: r.gauge(
                "outpost_http_inflight_body_bytes",
                "Bytes reserved by requests whose bodies are being read, parsed or appended \
                 (four per body byte).",
                &[],
            ),
            refusals: r.counter(
                "outpost_http_body_budget_refusals_total",
                "Requests answered 503 because their body did not fit in \
                 http.max_inflight_body_bytes.",
                &[],
            ),
        }
    }

    /// Reserves `bytes`, or refuses with [`ApiError::Busy`] when they do not fit now.
    pub(crate) fn try_reserve(&self, bytes: usize) -> Result<Reserved, ApiError> {
        if bytes == 0 {
            return Ok(Reserved {
                permit: None,
                budget: self.clone(),
            });
        }
        let wanted = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        match self.permits.clone().try_acquire_many_owned(wanted) {
            Ok(permit) => {
                self.publish(0);
                Ok(Reserved {
                    permit: Some(permit),
                    budget: self.clone(),
                })
            }
            Err(_) => {
                self.refusals.inc();
                Err(ApiError::Busy(format!(
                    "request bodies in flight fill the budget of {} bytes \
                     (`http.max_inflight_body_bytes`); retry shortly",
                    self.total
                )))
            }
        }
    }

    /// Updates the gauge; `releasing` are permits about to be given back.
    fn publish(&self, releasing: usize) {
        let available = self.permits.available_permits() + releasing;
        self.held.set(self.total.saturating_sub(available) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_that_does_not_fit_is_refused_until_another_is_released() {
        let budget = BodyBudget::new(100);
        let first = budget.try_reserve(60).unwrap();
        assert!(matches!(budget.try_reserve(50), Err(ApiError::Busy(_))));
        let _second = budget.try_reserve(40).unwrap();
        drop(first);
        assert!(budget.try_reserve(50).is_ok());
    }
}
