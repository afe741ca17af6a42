//! `noop`: a plugin that does nothing with each record. The host's benchmark runs it to measure
//! the fixed cost of one call (encode, copy in, decode, return); it emits nothing and keeps no
//! state.

use outpost_sdk::{export_plugin, Plugin};

/// The do-nothing plugin: both `Plugin` methods keep their no-op defaults.
#[derive(Debug, Default)]
pub struct Noop;

impl Plugin for Noop {}

export_plugin!(Noop);

#[cfg(test)]
mod tests {
    use outpost_sdk::testing::Harness;

    use super::*;

    #[test]
    fn noop_accepts_records_and_leaves_no_trace() {
        let mut h = Harness::<Noop>::start("{}")
            .unwrap()
            .allow_outputs(&[])
            .allow_state(false);
        for i in 0..10 {
            h.send("bench.input", "k", format!("record {i}")).unwrap();
        }
        assert_eq!(h.emitted_count(), 0);
        assert_eq!(h.state_len(), 0);
        assert!(h.dead_letters().is_empty());
    }
}
