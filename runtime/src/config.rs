//! The one TOML configuration file: typed sections per component, defaults, environment
//! overrides (`OUTPOST_*`) and validation with errors that name the key.
//!
//! SKELETON: filled in by the foundation work.

use serde::{Deserialize, Serialize};

use crate::log::LogConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The durable log (`[log]`).
    #[serde(default)]
    pub log: LogConfig,
}
