//! `hostile`: a plugin that misbehaves on purpose, for the host's containment tests. The config's
//! `mode` picks the misbehaviour; `phase` picks whether it happens in `init` or on every record.
//!
//! | mode | what it does | what the host should see |
//! |---|---|---|
//! | `infinite_loop` | spins forever | deadline exceeded (epoch/fuel trap) |
//! | `memory_bomb` | allocates 1 MiB chunks until allocation fails | memory limit hit, trap |
//! | `stack_overflow` | recurses without bound, with 512-byte frames in linear memory (`stack = "shadow"`, default: the shadow stack runs off the bottom of memory) or with register-only frames (`stack = "wasm"`: the engine's call stack runs out) | trap |
//! | `panic` | `panic!` (a trap with `panic = "abort"`) | trap, message via `set_error` |
//! | `emit_undeclared` | emits to `topic` (not in the manifest) | `emit` returns DENIED; record fails |
//! | `huge_output` | emits one record of `bytes` bytes (default 4 MiB) | `emit` returns TOO_LARGE |
//! | `state_too_large` | writes a `bytes`-byte value (default 2 MiB) under a `key_bytes`-byte key | `state_put` returns TOO_LARGE |
//! | `slow` | busy-waits `ms` milliseconds, then emits to `output` | deadline exceeded if `ms` > deadline |
//! | `fail_every_n` | fails every `n`-th record, emits the others to `output` | every `n`-th record dead-lettered |
//!
//! The optional `max_iterations`, `max_mib` and `max_depth` bound the first three so native
//! tests can run them; a bounded run that reaches its bound fails the record instead.

use std::ptr;
use std::time::{Duration, Instant};

use outpost_sdk::{export_plugin, Config, Context, Error, Plugin, Record};
use serde::Deserialize;

/// The misbehaviours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    InfiniteLoop,
    MemoryBomb,
    StackOverflow,
    Panic,
    EmitUndeclared,
    HugeOutput,
    StateTooLarge,
    Slow,
    FailEveryN,
}

/// Which stack `stack_overflow` exhausts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stack {
    /// The shadow stack in linear memory (frames with address-taken locals).
    Shadow,
    /// The engine's own call stack (frames without linear-memory locals).
    Wasm,
}

/// When the misbehaviour happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Init,
    Record,
}

/// Configuration (the manifest's `[config]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostileConfig {
    /// Which misbehaviour.
    mode: Mode,
    /// In `init` or on each record (default).
    #[serde(default = "default_phase")]
    phase: Phase,
    /// `fail_every_n`: fail every n-th record.
    #[serde(default = "default_n")]
    n: u64,
    /// `slow`: how long to busy-wait, milliseconds.
    #[serde(default = "default_ms")]
    ms: u64,
    /// `huge_output` / `state_too_large`: size of the value, bytes.
    bytes: Option<usize>,
    /// `state_too_large`: size of the key, bytes.
    #[serde(default = "default_key_bytes")]
    key_bytes: usize,
    /// `emit_undeclared`: the topic to emit to.
    #[serde(default = "default_topic")]
    topic: String,
    /// Where successful records are emitted (`slow`, `fail_every_n`).
    #[serde(default = "default_output")]
    output: String,
    /// `infinite_loop`: stop after this many iterations (unbounded if absent).
    max_iterations: Option<u64>,
    /// `memory_bomb`: stop after this many MiB (unbounded if absent).
    max_mib: Option<usize>,
    /// `stack_overflow`: stop at this depth (unbounded if absent).
    max_depth: Option<u64>,
    /// `stack_overflow`: which stack to exhaust.
    #[serde(default = "default_stack")]
    stack: Stack,
}

fn default_stack() -> Stack {
    Stack::Shadow
}
fn default_phase() -> Phase {
    Phase::Record
}
fn default_n() -> u64 {
    3
}
fn default_ms() -> u64 {
    200
}
fn default_key_bytes() -> usize {
    16
}
fn default_topic() -> String {
    "undeclared.topic".to_owned()
}
fn default_output() -> String {
    "hostile.out".to_owned()
}

/// The hostile plugin.
#[derive(Debug, Default)]
pub struct Hostile {
    config: Option<HostileConfig>,
    records: u64,
    /// Memory the bomb holds on to, so the allocations are real.
    hoard: Vec<Vec<u8>>,
}

impl Plugin for Hostile {
    fn init(&mut self, ctx: &mut dyn Context, config: &Config) -> Result<(), Error> {
        let config: HostileConfig = config.parse()?;
        if config.n == 0 {
            return Err(Error::new("config `n` must be at least 1"));
        }
        let phase = config.phase;
        self.config = Some(config);
        if phase == Phase::Init {
            self.misbehave(ctx, None)?;
        }
        Ok(())
    }

    fn on_record(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        self.records += 1;
        match self.config.as_ref().map(|c| c.phase) {
            Some(Phase::Record) => self.misbehave(ctx, Some(record)),
            _ => Ok(()),
        }
    }
}

impl Hostile {
    fn misbehave(
        &mut self,
        ctx: &mut dyn Context,
        record: Option<&Record<'_>>,
    ) -> Result<(), Error> {
        let config = match &self.config {
            Some(config) => config.clone(),
            None => return Err(Error::new("not configured")),
        };
        let pass_on = |ctx: &mut dyn Context| match record {
            Some(r) => ctx.emit(&config.output, r.key, r.value),
            None => Ok(()),
        };
        match config.mode {
            Mode::InfiniteLoop => {
                spin(config.max_iterations.unwrap_or(u64::MAX));
                Err(Error::new("infinite loop reached max_iterations"))
            }
            Mode::MemoryBomb => {
                let limit = config.max_mib.unwrap_or(usize::MAX);
                while self.hoard.len() < limit {
                    let mut chunk = vec![0u8; 1 << 20];
                    for i in (0..chunk.len()).step_by(4096) {
                        chunk[i] = 1;
                    }
                    // SAFETY: reading an initialised byte of a live Vec; volatile so the
                    // allocation cannot be optimised away.
                    let touched = unsafe { ptr::read_volatile(&chunk[4096]) };
                    chunk[0] = touched;
                    self.hoard.push(chunk);
                }
                Err(Error::new(format!("memory bomb stopped at {limit} MiB")))
            }
            Mode::StackOverflow => {
                let limit = config.max_depth.unwrap_or(u64::MAX);
                let message = match config.stack {
                    Stack::Shadow => format!("recursion stopped at depth {}", descend(0, limit)),
                    Stack::Wasm => format!(
                        "recursion stopped at depth {limit} (mix {:x})",
                        descend_in_registers(0, limit)
                    ),
                };
                Err(Error::new(message))
            }
            Mode::Panic => panic!("hostile plugin panics on purpose"),
            Mode::EmitUndeclared => match record {
                Some(r) => ctx.emit(&config.topic, r.key, r.value),
                None => ctx.emit(&config.topic, None, b"from init"),
            },
            Mode::HugeOutput => {
                let value = vec![b'x'; config.bytes.unwrap_or(4 << 20)];
                ctx.emit(&config.output, None, &value)
            }
            Mode::StateTooLarge => {
                let key = vec![b'k'; config.key_bytes];
                let value = vec![b'v'; config.bytes.unwrap_or(2 << 20)];
                ctx.state_put(&key, &value)
            }
            Mode::Slow => {
                let until = Duration::from_millis(config.ms);
                let start = Instant::now();
                while start.elapsed() < until {}
                pass_on(ctx)
            }
            Mode::FailEveryN => {
                if record.is_some() && self.records % config.n == 0 {
                    return Err(Error::new(format!(
                        "record {} fails on purpose (every {})",
                        self.records, config.n
                    )));
                }
                pass_on(ctx)
            }
        }
    }
}

/// Loops `iterations` times doing volatile work the optimiser must keep.
fn spin(iterations: u64) {
    let mut counter = 0u64;
    for i in 0..iterations {
        // SAFETY: reads and writes a live local; volatile keeps the loop from being removed.
        unsafe { ptr::write_volatile(&mut counter, ptr::read_volatile(&counter) ^ i) };
    }
}

/// Recurses until `limit`, keeping a 512-byte frame alive at every level.
#[inline(never)]
fn descend(depth: u64, limit: u64) -> u64 {
    let mut frame = [0u8; 512];
    frame[(depth % 512) as usize] = depth as u8;
    // SAFETY: reads an initialised byte of a live local array; volatile keeps the frame.
    let byte = unsafe { ptr::read_volatile(&frame[(depth % 509) as usize]) };
    if depth >= limit {
        return depth;
    }
    descend(depth + 1, limit).max(u64::from(byte))
}

/// Recurses until `limit` with no linear-memory frame; the result mixes every level in a way
/// the optimiser cannot turn into a loop.
#[inline(never)]
fn descend_in_registers(depth: u64, limit: u64) -> u64 {
    if depth >= limit {
        return depth;
    }
    let below = descend_in_registers(depth + 1, limit);
    below.rotate_left((depth % 63) as u32) ^ depth.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

export_plugin!(Hostile);

#[cfg(test)]
mod tests {
    use outpost_sdk::testing::Harness;
    use outpost_sdk::ErrorKind;

    use super::*;

    fn start(config: &str) -> Harness<Hostile> {
        Harness::<Hostile>::start(config)
            .unwrap()
            .allow_outputs(&["hostile.out"])
    }

    #[test]
    fn fail_every_n_fails_exactly_every_nth_record() {
        let mut h = start(r#"{"mode":"fail_every_n","n":3}"#);
        let results: Vec<bool> = (0..7)
            .map(|i| h.send("in", "k", format!("{i}")).is_ok())
            .collect();
        assert_eq!(results, [true, true, false, true, true, false, true]);
        assert_eq!(h.emitted().len(), 5);
        assert_eq!(h.dead_letters().len(), 2);
    }

    #[test]
    fn emit_undeclared_is_denied() {
        let mut h = start(r#"{"mode":"emit_undeclared","topic":"secret.topic"}"#);
        assert_eq!(
            h.send("in", "k", "v").unwrap_err().kind(),
            ErrorKind::Denied
        );
    }

    #[test]
    fn huge_output_is_refused_as_too_large() {
        let mut h = start(r#"{"mode":"huge_output"}"#);
        assert_eq!(
            h.send("in", "k", "v").unwrap_err().kind(),
            ErrorKind::TooLarge
        );
    }

    #[test]
    fn state_too_large_is_refused_for_value_and_for_key() {
        let mut h = start(r#"{"mode":"state_too_large"}"#);
        assert_eq!(
            h.send("in", "k", "v").unwrap_err().kind(),
            ErrorKind::TooLarge
        );
        let mut h = start(r#"{"mode":"state_too_large","bytes":1,"key_bytes":5000}"#);
        assert_eq!(
            h.send("in", "k", "v").unwrap_err().kind(),
            ErrorKind::TooLarge
        );
    }

    #[test]
    fn slow_mode_takes_at_least_the_configured_time() {
        let mut h = start(r#"{"mode":"slow","ms":30}"#);
        let start = Instant::now();
        h.send("in", "k", "v").unwrap();
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(h.emitted().len(), 1);
    }

    #[test]
    #[should_panic(expected = "hostile plugin panics on purpose")]
    fn panic_mode_panics() {
        let mut h = start(r#"{"mode":"panic"}"#);
        let _ = h.send("in", "k", "v");
    }

    #[test]
    fn bounded_runaway_modes_reach_their_bounds() {
        let mut h = start(r#"{"mode":"infinite_loop","max_iterations":1000}"#);
        assert!(h
            .send("in", "k", "v")
            .unwrap_err()
            .message()
            .contains("max_iterations"));
        let mut h = start(r#"{"mode":"memory_bomb","max_mib":3}"#);
        assert!(h
            .send("in", "k", "v")
            .unwrap_err()
            .message()
            .contains("3 MiB"));
        assert_eq!(h.plugin().hoard.len(), 3);
        let mut h = start(r#"{"mode":"stack_overflow","max_depth":50}"#);
        assert!(h
            .send("in", "k", "v")
            .unwrap_err()
            .message()
            .contains("depth 50"));
    }

    #[test]
    fn init_phase_misbehaves_during_init() {
        let err =
            Harness::<Hostile>::start(r#"{"mode":"emit_undeclared","phase":"init"}"#).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Denied);
        let err = Harness::<Hostile>::start(r#"{"mode":"memory_bomb","phase":"init","max_mib":1}"#)
            .unwrap_err();
        assert!(err.message().contains("1 MiB"));
    }

    #[test]
    fn unknown_mode_fails_init_with_the_valid_modes() {
        let err = Harness::<Hostile>::start(r#"{"mode":"explode"}"#).unwrap_err();
        assert!(err.message().contains("fail_every_n"), "{err}");
        assert!(Harness::<Hostile>::start("{}").is_err());
    }
}
