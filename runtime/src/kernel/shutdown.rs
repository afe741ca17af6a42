//! The one shutdown signal every long-running part of Outpost listens to.
//!
//! A [`ShutdownTrigger`] and its [`Shutdown`] receivers come in a pair ([`Shutdown::new`]). A
//! component keeps a `Shutdown` (cheap to clone) and either awaits [`Shutdown::requested`] in
//! its `select!` or polls [`Shutdown::is_requested`] from a blocking thread.
//!
//! **The rule for a dropped trigger:** dropping the trigger without calling
//! [`ShutdownTrigger::request`] counts as a request. Whoever owned the trigger is gone and can
//! never ask again, so a component left running would run unowned until the process dies; it
//! stops instead. [`Shutdown::never`] is the explicit opposite, for tests and tools that run a
//! component without an owner: it keeps its own trigger alive and never fires.

use std::sync::Arc;

use tokio::sync::watch;

/// Fires the shutdown of every [`Shutdown`] made with it. Dropping it fires it too.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Requests shutdown: every receiver's [`Shutdown::requested`] resolves.
    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    /// Another receiver of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
            _keep: None,
        }
    }
}

/// A component's view of the shutdown signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// Set only by [`Shutdown::never`]: the trigger kept alive so it never fires.
    _keep: Option<Arc<watch::Sender<bool>>>,
}

impl Shutdown {
    /// A trigger and its first receiver.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx, _keep: None })
    }

    /// A signal that never fires (no owner can request it, and nothing is dropped).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            rx,
            _keep: Some(Arc::new(tx)),
        }
    }

    /// Whether shutdown was requested (or the trigger dropped). Never blocks.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow() || (self._keep.is_none() && self.rx.has_changed().is_err())
    }

    /// Resolves once shutdown is requested or the trigger is dropped; at once if it already
    /// was. Cancel-safe: use it in `select!` as often as needed.
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        // `wait_for` checks the current value first and errs only when the sender is gone.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_receiver_sees_a_request_even_one_made_before_it_waits() {
        let (trigger, shutdown) = Shutdown::new();
        let other = trigger.subscribe();
        assert!(!shutdown.is_requested());
        trigger.request();
        assert!(shutdown.is_requested() && other.is_requested());
        shutdown.requested().await;
        other.clone().requested().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_a_request() {
        let (trigger, shutdown) = Shutdown::new();
        drop(trigger);
        assert!(shutdown.is_requested());
        tokio::time::timeout(Duration::from_secs(5), shutdown.requested())
            .await
            .expect("a dropped trigger resolves `requested`");
    }

    #[tokio::test]
    async fn never_does_not_fire() {
        let shutdown = Shutdown::never();
        assert!(!shutdown.is_requested());
        let waited = tokio::time::timeout(Duration::from_millis(50), shutdown.requested()).await;
        assert!(waited.is_err());
    }
}
