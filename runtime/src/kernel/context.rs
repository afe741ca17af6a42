//! The context of a running box: what `app.rs` builds once and hands to every component, next
//! to that component's own config section (Vector hands each source a `SourceContext` the same
//! way).
//!
//! A component takes `&Context` (or a clone: it is cheap) and finds everything shared there:
//! the open log and state store, the box's identity, the shutdown signal, the readiness, the
//! status boards of sources and sinks. It never needs `config::Config`, the HTTP API or
//! another component to run.
//!
//! The kernel's primitives (shutdown, backoff, clock, lock, status) depend on nothing but the
//! metrics registry, so `log/` and `state/` may use them; the context bundles the storage with
//! them, and only components use it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::kernel::{Readiness, Shutdown, StatusBoard};
use crate::log::Log;
use crate::state::StateStore;

/// Who this box is: its edge id (resolved once, kept in more than one durable place by the
/// state store) and the store it serves.
#[derive(Debug, Clone)]
pub struct Identity {
    edge_id: Arc<str>,
    store_id: Arc<str>,
}

impl Identity {
    /// An identity from the resolved edge id and the configured store id.
    pub fn new(edge_id: &str, store_id: &str) -> Identity {
        Identity {
            edge_id: edge_id.into(),
            store_id: store_id.into(),
        }
    }

    /// The box's edge id (`edge.edge_id`, or the one generated on first start).
    pub fn edge_id(&self) -> &str {
        &self.edge_id
    }

    /// The store this box serves (`edge.store_id`).
    pub fn store_id(&self) -> &str {
        &self.store_id
    }
}

/// Everything the components of one running box share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    /// The durable log.
    pub log: Log,
    /// Offsets, plugin state, cursors, identity.
    pub state: StateStore,
    /// Edge and store id.
    pub identity: Identity,
    /// Fires when the box stops.
    pub shutdown: Shutdown,
    /// What the box still waits for before it is ready (`GET /ready`).
    pub ready: Readiness,
    /// Status of every source (MQTT listener and sources, Modbus devices, OPC-UA servers).
    pub sources: StatusBoard,
    /// Status of every sink (MQTT sinks).
    pub sinks: StatusBoard,
    /// The box's data directory (`edge.data_dir`): the log and state live under it, and a
    /// component that keeps files of its own makes its folder here.
    data_dir: PathBuf,
}

impl Context {
    /// A context over open storage; `shutdown` is the box's signal.
    pub fn new(
        data_dir: &Path,
        log: Log,
        state: StateStore,
        identity: Identity,
        shutdown: Shutdown,
    ) -> Context {
        Context {
            log,
            state,
            identity,
            shutdown,
            ready: Readiness::new(crate::metrics::global()),
            sources: StatusBoard::sources(),
            sinks: StatusBoard::sinks(),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The folder a component keeps its own files in: `<data_dir>/<name>`.
    pub fn component_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

/// A context over a fresh log (with `log_config`) and state store in `dir`, identity
/// `e1`/`s1`, and a shutdown that never fires: for unit tests of components.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn open_for_test(dir: &Path, log_config: crate::log::LogConfig) -> Context {
    let log = Log::open(&dir.join("log"), log_config).unwrap();
    let state = StateStore::open(&dir.join("state")).unwrap();
    Context::new(
        dir,
        log,
        state,
        Identity::new("e1", "s1"),
        Shutdown::never(),
    )
}
