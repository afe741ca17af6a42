//! Retry timing: the one exponential backoff every reconnecting part of Outpost uses (MQTT
//! clients and listener, Modbus pollers, OPC-UA sessions, the forwarder, the mirror, plugin
//! runners).

use std::time::Duration;

/// Exponential backoff: `initial`, doubling after each failure, capped at `max`; back to
/// `initial` after a success ([`Backoff::reset`]).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` (a `max` below `initial` is raised to it).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// [`Backoff::new`] from milliseconds, as configs give them.
    pub fn from_millis(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(max_ms),
        )
    }

    /// The wait before the next attempt (the one after doubles, up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// The wait after the `failures`-th failure in a row (1 gives `initial`), for callers that
    /// count failures themselves; the same doubling and cap as [`Backoff::next_delay`].
    pub fn after_failures(&self, failures: u32) -> Duration {
        let mut wait = self.initial;
        for _ in 1..failures.min(64) {
            wait = wait.saturating_mul(2).min(self.max);
        }
        wait
    }

    /// Back to the first wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn counted_failures_give_the_same_waits_as_successive_delays() {
        let mut b = Backoff::from_millis(100, 700);
        for failures in 1..=40 {
            assert_eq!(
                b.after_failures(failures),
                b.next_delay(),
                "failure {failures}"
            );
        }
        assert_eq!(b.after_failures(0).as_millis(), 100);
    }

    #[test]
    fn a_cap_below_the_first_wait_is_raised_to_it() {
        let mut b = Backoff::from_millis(500, 10);
        assert_eq!(b.next_delay().as_millis(), 500);
        assert_eq!(b.next_delay().as_millis(), 500);
    }
}
