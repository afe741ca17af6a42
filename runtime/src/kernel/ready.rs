//! Readiness: what a box still waits for before it is ready, as opposed to alive (`/health`).
//!
//! A box starts with one condition pending, `start-up`, which `app.rs` clears once every
//! component is started. A component whose start-up finishes later names its own condition
//! with [`Readiness::wait_for`] before the box's start-up ends and clears it with
//! [`Readiness::done`] (the plugins once each enabled plugin is running or has failed
//! visibly; the MQTT listener once its port is bound). `GET /ready`, `outpost status` and the
//! service manager's notification read it; `outpost_ready` in `/metrics` is 1 when ready.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::kernel::lock;
use crate::metrics::{Gauge, Registry};

/// The condition every box starts with; `app.rs` clears it when start-up is over.
pub const START_UP: &str = "start-up";

const READY: &str = "outpost_ready";
const READY_HELP: &str =
    "1 once the box is ready (log open, listeners bound, every enabled plugin running or failed visibly), else 0.";

/// The start-up conditions still pending. Cheap to clone; clones share the set.
#[derive(Debug, Clone)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<&'static str>>>,
    gauge: Gauge,
}

impl Readiness {
    /// A readiness with [`START_UP`] pending, reported in `registry`.
    pub fn new(registry: &'static Registry) -> Readiness {
        let gauge = registry.gauge(READY, READY_HELP, &[]);
        gauge.set(0.0);
        Readiness {
            pending: Arc::new(Mutex::new(BTreeSet::from([START_UP]))),
            gauge,
        }
    }

    /// Adds `condition` to what the box waits for.
    pub fn wait_for(&self, condition: &'static str) {
        lock(&self.pending).insert(condition);
        self.gauge.set(0.0);
    }

    /// `condition` is met; the box is ready when nothing else is pending.
    pub fn done(&self, condition: &'static str) {
        let mut pending = lock(&self.pending);
        pending.remove(condition);
        self.gauge.set(if pending.is_empty() { 1.0 } else { 0.0 });
    }

    /// What the box still waits for, in name order; empty when ready.
    pub fn pending(&self) -> Vec<&'static str> {
        lock(&self.pending).iter().copied().collect()
    }

    /// Whether nothing is pending.
    pub fn is_ready(&self) -> bool {
        lock(&self.pending).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> &'static Registry {
        Box::leak(Box::default())
    }

    #[test]
    fn a_box_is_ready_only_when_start_up_and_every_condition_named_during_it_are_done() {
        let ready = Readiness::new(registry());
        assert_eq!(ready.pending(), vec![START_UP]);
        ready.wait_for("plugins");
        ready.done(START_UP);
        assert!(!ready.is_ready());
        assert_eq!(ready.pending(), vec!["plugins"]);
        ready.clone().done("plugins");
        assert!(ready.is_ready());
        assert_eq!(ready.gauge.get(), 1.0);
    }
}
