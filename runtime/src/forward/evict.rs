//! Eviction by priority under the disk budget, from the forwarding classes: builds the log's
//! [`EvictionPolicy`] out of the same [`Rules`] the forwarder routes with.
//!
//! Order, first evicted first (each time the oldest sealed segments, see `log/evict.rs`):
//! 1. topics with no forwarding route — raw `sensors.*`, plugin outputs and dead-letter
//!    topics, mirrored reference topics, `outpost.*` internals: nothing promised to forward
//!    them, so they give way before anything that was promised;
//! 2. `bulk` topics;
//! 3. `normal` topics;
//! - `critical` topics never: when only critical data is left, its appends fail with storage
//!   full and the sources back off. `outpost.gaps` (the gap markers) is never evicted, even
//!   when a config routes it otherwise or turns the default rules off.
//!
//! The classes apply with or without a cloud configured: data kept "for later" is kept in
//! the same order of importance. The rules' destinations do not matter here, so they are
//! expanded with an empty edge and store id.

use std::sync::Arc;

use super::config::Class;
use super::rules::Rules;
use crate::forward::ForwardConfig;
use crate::log::{EvictionPolicy, EvictionRank, Log, GAPS_TOPIC};

/// Rank of topics nothing forwards.
const UNROUTED: EvictionRank = EvictionRank {
    rank: 0,
    class: "unrouted",
};
const BULK: EvictionRank = EvictionRank {
    rank: 1,
    class: "bulk",
};
const NORMAL: EvictionRank = EvictionRank {
    rank: 2,
    class: "normal",
};

/// The eviction policy of the forwarding classes.
#[derive(Debug)]
pub struct ClassPolicy {
    rules: Rules,
}

impl ClassPolicy {
    /// The policy of a validated `[forward]` section.
    pub fn new(config: &ForwardConfig) -> ClassPolicy {
        ClassPolicy {
            rules: Rules::new(config.clone(), "", ""),
        }
    }
}

impl EvictionPolicy for ClassPolicy {
    fn rank(&self, topic: &str) -> Option<EvictionRank> {
        if topic == GAPS_TOPIC {
            return None;
        }
        match self.rules.route(topic).map(|r| r.class) {
            None => Some(UNROUTED),
            Some(Class::Bulk) => Some(BULK),
            Some(Class::Normal) => Some(NORMAL),
            Some(Class::Critical) => None,
        }
    }
}

/// Installs the eviction policy built from the forwarding classes on `log`.
pub fn install(log: &Log, config: &ForwardConfig) {
    log.set_eviction_policy(Arc::new(ClassPolicy::new(config)));
}

#[cfg(test)]
mod tests {
    use super::super::config::RuleConfig;
    use super::*;

    #[test]
    fn the_default_classes_rank_unrouted_then_bulk_then_normal_and_never_critical() {
        let p = ClassPolicy::new(&ForwardConfig::default());
        assert_eq!(p.rank("sensors.fridge"), Some(UNROUTED));
        assert_eq!(p.rank("plugin.dlq"), Some(UNROUTED));
        assert_eq!(p.rank("pos.baskets"), Some(BULK));
        assert_eq!(p.rank("cart.events"), Some(BULK));
        assert_eq!(p.rank("fraud.scores"), Some(NORMAL));
        assert_eq!(p.rank("sensor.1m"), Some(NORMAL));
        assert_eq!(p.rank("pos.payments"), None);
        assert_eq!(p.rank("fraud.alerts"), None);
        assert_eq!(p.rank("outpost.gaps"), None);
    }

    #[test]
    fn configured_rules_change_the_class_but_never_expose_the_gap_topic() {
        let config = ForwardConfig {
            default_rules: false,
            rules: vec![RuleConfig {
                topic: "sensors.*".into(),
                destination: "{topic}".into(),
                key: None,
                class: Class::Critical,
                schedule: "always".into(),
                forward: true,
            }],
            ..ForwardConfig::default()
        };
        let p = ClassPolicy::new(&config);
        assert_eq!(p.rank("sensors.fridge"), None);
        assert_eq!(p.rank("pos.payments"), Some(UNROUTED));
        assert_eq!(p.rank("outpost.gaps"), None);
    }
}
