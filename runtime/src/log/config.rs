//! Checks of the `[log]` settings and topic names, and which [`TopicConfig`] applies to a
//! topic (exact name, then the longest matching `prefix*` pattern, then `default_topic`).

use super::{FsyncPolicy, LogConfig, TopicConfig};

/// Longest topic name.
pub(crate) const MAX_TOPIC_NAME: usize = 128;
/// Smallest and largest `segment_bytes` (index positions are 32-bit).
pub(crate) const MIN_SEGMENT_BYTES: u64 = 4096;
pub(crate) const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Largest `max_record_bytes`.
pub(crate) const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

/// Why `name` is not a valid topic name, if it is not.
pub(crate) fn topic_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a topic name must not be empty")
    } else if name.len() > MAX_TOPIC_NAME {
        Some("a topic name is at most 128 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("a topic name may only contain a-z, 0-9, '.', '_' and '-'")
    } else if name == "." || name == ".." {
        Some("a topic name may not be \".\" or \"..\"")
    } else {
        None
    }
}

fn check_topic(key: &str, t: &TopicConfig) -> Result<(), String> {
    if t.segment_bytes < MIN_SEGMENT_BYTES {
        return Err(format!(
            "{key}.segment_bytes must be at least {MIN_SEGMENT_BYTES}, not {}",
            t.segment_bytes
        ));
    }
    if t.segment_bytes > MAX_SEGMENT_BYTES {
        return Err(format!(
            "{key}.segment_bytes must be at most {MAX_SEGMENT_BYTES} (1 GiB), not {}",
            t.segment_bytes
        ));
    }
    if t.segment_ms == 0 {
        return Err(format!("{key}.segment_ms must be at least 1"));
    }
    if let FsyncPolicy::Interval { interval_ms: 0 } = t.fsync {
        return Err(format!(
            "{key}.fsync.interval_ms must be at least 1 (use fsync = \"always\" to sync every append)"
        ));
    }
    Ok(())
}

impl LogConfig {
    /// Checks the settings; the error names the offending key (`log.topics."x".segment_bytes`).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_record_bytes == 0 || self.max_record_bytes > MAX_RECORD_BYTES {
            return Err(format!(
                "log.max_record_bytes must be between 1 and {MAX_RECORD_BYTES}, not {}",
                self.max_record_bytes
            ));
        }
        if self.retention_check_ms < 100 {
            return Err(format!(
                "log.retention_check_ms must be at least 100, not {}",
                self.retention_check_ms
            ));
        }
        if !(1..=100).contains(&self.eviction_high_water_percent) {
            return Err(format!(
                "log.eviction_high_water_percent must be between 1 and 100, not {}",
                self.eviction_high_water_percent
            ));
        }
        if self.eviction_low_water_percent == 0
            || self.eviction_low_water_percent > self.eviction_high_water_percent
        {
            return Err(format!(
                "log.eviction_low_water_percent must be between 1 and log.eviction_high_water_percent ({}), not {}",
                self.eviction_high_water_percent, self.eviction_low_water_percent
            ));
        }
        check_topic("log.default_topic", &self.default_topic)?;
        check_topic(
            "log.answer_fsync",
            &TopicConfig {
                fsync: self.answer_fsync,
                ..TopicConfig::default()
            },
        )?;
        for (i, name) in self.answer_topics.iter().enumerate() {
            if let Some(problem) = topic_name_problem(name) {
                return Err(format!(
                    "log.answer_topics[{i}] ({name:?}) is not a valid topic name: {problem}"
                ));
            }
        }
        for (pattern, t) in &self.topics {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            if let Some(problem) = topic_name_problem(name) {
                return Err(format!(
                    "log.topics.{pattern:?} is not a valid topic name or `prefix*` pattern: {problem}"
                ));
            }
            check_topic(&format!("log.topics.{pattern:?}"), t)?;
        }
        Ok(())
    }

    /// The settings that apply to `topic`: its entry in `topics` (exact name, then longest
    /// matching prefix pattern), else `default_topic` — with `answer_fsync` for an answer topic.
    pub fn topic_config(&self, topic: &str) -> TopicConfig {
        if let Some(t) = self.configured(topic) {
            return t.clone();
        }
        let mut t = self.default_topic.clone();
        if self.answer_topics.iter().any(|a| a == topic) {
            t.fsync = self.answer_fsync;
        }
        t
    }

    /// The entry of `topics` that applies to `topic`, if any.
    pub(crate) fn configured(&self, topic: &str) -> Option<&TopicConfig> {
        if let Some(exact) = self.topics.get(topic) {
            return Some(exact);
        }
        self.topics
            .iter()
            .filter_map(|(pattern, t)| {
                let prefix = pattern.strip_suffix('*')?;
                topic.starts_with(prefix).then_some((prefix.len(), t))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::NamedFsync;

    fn topic(segment_bytes: u64) -> TopicConfig {
        TopicConfig {
            segment_bytes,
            ..TopicConfig::default()
        }
    }

    #[test]
    fn topic_config_prefers_exact_then_longest_prefix_then_default() {
        let mut c = LogConfig::default();
        c.topics.insert("sensors.*".into(), topic(10_000));
        c.topics.insert("sensors.fridge*".into(), topic(20_000));
        c.topics.insert("sensors.fridge".into(), topic(30_000));
        assert_eq!(c.topic_config("sensors.fridge").segment_bytes, 30_000);
        assert_eq!(c.topic_config("sensors.fridge2").segment_bytes, 20_000);
        assert_eq!(c.topic_config("sensors.door").segment_bytes, 10_000);
        assert_eq!(c.topic_config("pos.payments"), TopicConfig::default());
        c.validate().unwrap();
    }

    #[test]
    fn validation_errors_name_the_key() {
        let mut c = LogConfig::default();
        c.topics.insert("x".into(), topic(100));
        assert_eq!(
            c.validate().unwrap_err(),
            "log.topics.\"x\".segment_bytes must be at least 4096, not 100"
        );
        let mut c = LogConfig::default();
        c.topics.insert("Bad*".into(), topic(10_000));
        assert!(c
            .validate()
            .unwrap_err()
            .starts_with("log.topics.\"Bad*\" is not a valid topic name"));
        let mut c = LogConfig::default();
        c.topics.insert("*".into(), topic(10_000));
        assert!(c.validate().is_err(), "a bare `*` is not a pattern");
        let mut c = LogConfig::default();
        c.default_topic.fsync = FsyncPolicy::Interval { interval_ms: 0 };
        assert!(c
            .validate()
            .unwrap_err()
            .starts_with("log.default_topic.fsync.interval_ms"));
        let mut c = LogConfig::default();
        c.default_topic.segment_bytes = MAX_SEGMENT_BYTES + 1;
        assert!(c
            .validate()
            .unwrap_err()
            .starts_with("log.default_topic.segment_bytes must be at most"));
        let c = LogConfig {
            max_record_bytes: 0,
            ..LogConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .starts_with("log.max_record_bytes"));
        let c = LogConfig {
            retention_check_ms: 5,
            ..LogConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .starts_with("log.retention_check_ms"));
    }

    #[test]
    fn the_fsync_policy_parses_from_toml_in_all_three_forms() {
        #[derive(serde::Deserialize)]
        struct W {
            t: TopicConfig,
        }
        let w: W = toml::from_str("[t]\nfsync = \"always\"").unwrap();
        assert_eq!(w.t.fsync, FsyncPolicy::Named(NamedFsync::Always));
        let w: W = toml::from_str("[t]\nfsync = \"never\"").unwrap();
        assert_eq!(w.t.fsync, FsyncPolicy::Named(NamedFsync::Never));
        let w: W = toml::from_str("[t]\nfsync = { interval_ms = 100 }").unwrap();
        assert_eq!(w.t.fsync, FsyncPolicy::Interval { interval_ms: 100 });
        assert!(toml::from_str::<W>("[t]\nfsync = \"sometimes\"").is_err());
    }

    #[test]
    fn topic_names_follow_the_rule() {
        for ok in ["a", "pos.payments", "x_y-z.0", &"a".repeat(128)] {
            assert_eq!(topic_name_problem(ok), None, "{ok}");
        }
        for bad in ["", "A", "a/b", "a b", "é", ".", "..", &"a".repeat(129)] {
            assert!(topic_name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
