//! The `Context` trait: everything a plugin may ask of its host during a call (emit records,
//! read and write its own state, log, read the clock), and the log levels.
//!
//! In wasm the context is backed by the `outpost` host imports; under `cargo test` the
//! [`testing::Harness`](crate::testing::Harness) provides an in-memory one.

use crate::error::Error;

/// Log levels, numbered as the `log` import takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something looks wrong but processing continues.
    Warn = 1,
    /// Normal, infrequent events.
    Info = 2,
    /// Detail for debugging.
    Debug = 3,
    /// Very detailed tracing.
    Trace = 4,
}

impl Level {
    /// The level's number in the ABI.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The level for an ABI number; out-of-range numbers clamp to the nearest level.
    pub fn from_i32(level: i32) -> Level {
        match level {
            i32::MIN..=0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            3 => Level::Debug,
            _ => Level::Trace,
        }
    }
}

/// What a plugin can do during `init` and `on_record`.
///
/// Writes (`emit*`, `state_put`, `state_delete`) made while handling a record take effect only
/// if the call returns `Ok`; reads see the call's own earlier writes. During `init` only reads,
/// `log` and `now_ms` are allowed; writes return an error of kind
/// [`Denied`](crate::ErrorKind::Denied).
pub trait Context {
    /// Emits a record with headers to `topic`, which must be one of the plugin's declared
    /// outputs. Header names starting with `outpost-` are reserved and dropped by the host.
    fn emit_with_headers(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), Error>;

    /// Emits a record without headers to `topic`.
    fn emit(&mut self, topic: &str, key: Option<&[u8]>, value: &[u8]) -> Result<(), Error> {
        self.emit_with_headers(topic, key, value, &[])
    }

    /// Reads the state value of `key` into `buf` (replacing its contents). Returns `Ok(false)`
    /// and leaves `buf` empty when the key does not exist. Reusing one buffer across calls
    /// avoids an allocation per read.
    fn state_get_into(&mut self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool, Error>;

    /// Reads the state value of `key`; `Ok(None)` when it does not exist.
    fn state_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let mut buf = Vec::new();
        if self.state_get_into(key, &mut buf)? {
            Ok(Some(buf))
        } else {
            Ok(None)
        }
    }

    /// Sets the state value of `key` (non-empty, at most 1 KiB) to `value` (at most 1 MiB).
    /// Fails with [`QuotaExceeded`](crate::ErrorKind::QuotaExceeded), writing nothing, when
    /// it would take the plugin's state past its quota of bytes (keys + values) or keys
    /// (`limits.state_mib`, `limits.state_keys` in the manifest).
    fn state_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error>;

    /// Deletes `key` from state; deleting a missing key is not an error. Deletes free quota
    /// and are never refused by it.
    fn state_delete(&mut self, key: &[u8]) -> Result<(), Error>;

    /// Writes `message` to the host log, tagged with the plugin's name. Logging never fails;
    /// the host may rate-limit or truncate messages.
    fn log(&mut self, level: Level, message: &str);

    /// The host's wall-clock time, epoch milliseconds. Prefer record timestamps for event-time
    /// logic: they are the same when a record is replayed.
    fn now_ms(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_through_their_numbers_and_clamp() {
        for level in [
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ] {
            assert_eq!(Level::from_i32(level.as_i32()), level);
        }
        assert_eq!(Level::from_i32(-3), Level::Error);
        assert_eq!(Level::from_i32(99), Level::Trace);
    }
}
