//! Helpers shared by the integration tests: real peers (`peers`: mosquitto, certificates,
//! `outpost run` as a child; `python`: the Python peers in `tests/peers/`; `kafka`: tansu;
//! `lazyfs`: the power-cut FUSE file system), waiting for a condition with a deadline
//! (`wait`), store events that meet their contract (`events`) and a device speaking raw MQTT
//! (`raw_mqtt`).

pub mod events;
pub mod kafka;
pub mod lazyfs;
pub mod peers;
pub mod python;
pub mod raw_mqtt;
pub mod wait;

/// The name libtest gives the test `name` of the module whose `module_path!()` is `module`:
/// the module path without the crate's name (`log_crash::crash_child_appends_until_killed`).
/// Tests that run one of this binary's tests as a child process select it with
/// `--exact <this name>`.
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}
