//! The plugins embedded in the binary (`runtime/bundled/<name>/`), which the registry installs
//! on first run.

/// A plugin embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct BundledPlugin {
    /// Its name (must equal the manifest's).
    pub name: &'static str,
    /// Its `plugin.toml`.
    pub manifest: &'static str,
    /// Its wasm module.
    pub wasm: &'static [u8],
}

/// The plugins embedded in this binary (`runtime/bundled/<name>/`, see its README).
pub fn embedded() -> &'static [BundledPlugin] {
    EMBEDDED
}

/// Names of the plugins that ship with Outpost; `runtime/bundled/<name>/` holds each.
pub const BUNDLED_NAMES: [&str; 3] = ["fraud-score", "recommend", "sensor-watch"];

macro_rules! bundled {
    ($name:literal) => {
        BundledPlugin {
            name: $name,
            manifest: include_str!(concat!("../../../bundled/", $name, "/plugin.toml")),
            wasm: include_bytes!(concat!("../../../bundled/", $name, "/plugin.wasm")),
        }
    };
}

const EMBEDDED: &[BundledPlugin] = &[
    bundled!("fraud-score"),
    bundled!("recommend"),
    bundled!("sensor-watch"),
];
