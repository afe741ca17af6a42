//! Waiting for what a test asserts instead of sleeping and hoping.
//!
//! A counter, a status field or a file is written a moment after the event a test observes
//! (a verdict reaches the subscriber before the sink has counted its PUBACK; a record is on
//! disk before the plugin's offset is committed). Reading it right after the event fails once
//! under load. These helpers poll the observed value until the condition holds or a deadline
//! passes, and hand back the last value seen, so the failure message shows what was there.
//! Deadlines are generous (the suite runs on loaded two-core machines): a passing test returns
//! as soon as the condition holds, so only a failing one waits the whole deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often the helpers look again.
const POLL: Duration = Duration::from_millis(20);

/// Calls `observe` until `done` holds for what it returns or `timeout` has passed. `Ok` with
/// the value that satisfied `done`, `Err` with the last value observed. Blocks the thread:
/// use [`wait_until_async`] inside a tokio runtime.
pub fn wait_until<T>(
    timeout: Duration,
    mut observe: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> Result<T, T> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = observe();
        if done(&value) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(value);
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] for async tests: sleeps with tokio between looks, so the tasks under test
/// (on the same runtime) keep running.
pub async fn wait_until_async<T, F: Future<Output = T>>(
    timeout: Duration,
    mut observe: impl FnMut() -> F,
    mut done: impl FnMut(&T) -> bool,
) -> Result<T, T> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = observe().await;
        if done(&value) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(value);
        }
        tokio::time::sleep(POLL).await;
    }
}
