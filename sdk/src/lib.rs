//! `outpost-sdk`: write Outpost edge plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`] (both methods default to doing nothing) and
//! [`Default`], exported with one [`export_plugin!`] call. Built for `wasm32-wasi` /
//! `wasm32-wasip1` it becomes a core wasm module speaking ABI v1 (see `ABI.md` in this crate);
//! built natively it is an ordinary library that [`testing::Harness`] runs under `cargo test`.
//!
//! [`Record`], [`Context`], [`Config`] and [`Error`] are plain types; host calls return
//! `Result` and never panic. The `json` feature adds `Record::json`, `Config::parse`,
//! `emit_json` and JSON state helpers on `dyn Context`.
//!
//! # Example
//!
//! A plugin that counts records per key, keeps the count in state and emits it:
//!
//! ```
//! use outpost_sdk::testing::Harness;
//! use outpost_sdk::{export_plugin, Context, Error, Plugin, Record};
//!
//! #[derive(Default)]
//! struct Counter;
//!
//! impl Plugin for Counter {
//!     fn on_record(&mut self, ctx: &mut dyn Context, record: &Record) -> Result<(), Error> {
//!         let key = record.key.ok_or("records need a key")?;
//!         let mut state_key = b"n/".to_vec();
//!         state_key.extend_from_slice(key);
//!         let count = match ctx.state_get(&state_key)? {
//!             Some(bytes) => std::str::from_utf8(&bytes)?.parse::<u64>()? + 1,
//!             None => 1,
//!         };
//!         ctx.state_put(&state_key, count.to_string().as_bytes())?;
//!         ctx.emit("counts", Some(key), count.to_string().as_bytes())
//!     }
//! }
//!
//! export_plugin!(Counter);
//!
//! // The same logic, natively, with an in-memory host:
//! let mut h = Harness::<Counter>::start("{}")?.allow_outputs(&["counts"]);
//! h.send("clicks", "alice", "x")?;
//! h.send("clicks", "bob", "x")?;
//! h.send("clicks", "alice", "x")?;
//! let counts: Vec<_> = h.emitted().iter().map(|e| e.value_str().unwrap()).collect();
//! assert_eq!(counts, ["1", "1", "2"]);
//! assert_eq!(h.state(b"n/alice"), Some(&b"2"[..]));
//! # Ok::<(), Error>(())
//! ```

#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod abi;
mod config;
mod context;
mod error;
#[cfg(target_arch = "wasm32")]
mod guest;
#[cfg(feature = "json")]
mod json;
mod plugin;
mod record;
pub mod testing;

pub use config::Config;
pub use context::{Context, Level};
pub use error::{Error, ErrorKind};
pub use plugin::Plugin;
pub use record::{Header, Record};

/// Support for `export_plugin!`; not part of the public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::guest::{alloc, init, on_record, GuestCell};
}
