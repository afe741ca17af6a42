//! Which local topics are forwarded, where to, with which key and priority class: the
//! `[[forward.rules]]` (first match wins) followed by the contract's default classes.

use serde_json::Value;

use super::config::{Class, ForwardConfig, Schedule, DEFAULT_CLASSES};

/// How one local topic is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The cloud topic.
    pub destination: String,
    /// JSON pointer for the key; `None` = the record key.
    pub key_pointer: Option<String>,
    pub class: Class,
    pub schedule: Schedule,
}

/// The rules, ready to match topic names.
#[derive(Debug, Clone)]
pub struct Rules {
    config: ForwardConfig,
    edge_id: String,
    store_id: String,
}

fn matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

impl Rules {
    /// Rules of a validated `[forward]` section for this box.
    pub fn new(config: ForwardConfig, edge_id: &str, store_id: &str) -> Rules {
        Rules {
            config,
            edge_id: edge_id.to_string(),
            store_id: store_id.to_string(),
        }
    }

    /// The route of `topic`, or `None` when it is not forwarded.
    pub fn route(&self, topic: &str) -> Option<Route> {
        if let Some(rule) = self.config.rules.iter().find(|r| matches(&r.topic, topic)) {
            if !rule.forward {
                return None;
            }
            // Validation checked the schedule; an unparsable one falls back to manual, the
            // safe side for a costly link.
            let schedule = Schedule::parse(&rule.schedule).unwrap_or(Schedule::Manual);
            return Some(Route {
                destination: self.expand(&rule.destination, topic),
                key_pointer: rule.key.clone(),
                class: rule.class,
                schedule,
            });
        }
        if !self.config.default_rules {
            return None;
        }
        DEFAULT_CLASSES
            .iter()
            .find(|(name, _)| *name == topic)
            .map(|(_, class)| Route {
                destination: topic.to_string(),
                key_pointer: None,
                class: *class,
                schedule: Schedule::Always,
            })
    }

    fn expand(&self, template: &str, topic: &str) -> String {
        template
            .replace("{edge_id}", &self.edge_id)
            .replace("{store_id}", &self.store_id)
            .replace("{topic}", topic)
    }
}

/// The Kafka key of a record under `pointer`: the field of the JSON value (strings as they
/// are, other values as JSON text); the record key when there is no pointer, and no key when
/// the value is not JSON or lacks the field.
pub fn kafka_key(
    pointer: Option<&str>,
    record_key: Option<&[u8]>,
    value: &[u8],
) -> Option<Vec<u8>> {
    let Some(pointer) = pointer else {
        return record_key.map(<[u8]>::to_vec);
    };
    let parsed: Value = serde_json::from_slice(value).ok()?;
    match parsed.pointer(pointer)? {
        Value::String(s) => Some(s.clone().into_bytes()),
        Value::Null => None,
        other => Some(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::RuleConfig;
    use super::*;

    fn rule(topic: &str, class: Class) -> RuleConfig {
        RuleConfig {
            topic: topic.into(),
            destination: "{topic}".into(),
            key: None,
            class,
            schedule: "always".into(),
            forward: true,
        }
    }

    #[test]
    fn default_classes_follow_the_contract_and_raw_sensors_stay_home() {
        let rules = Rules::new(ForwardConfig::default(), "e1", "s1");
        assert_eq!(rules.route("pos.payments").unwrap().class, Class::Critical);
        assert_eq!(rules.route("outpost.gaps").unwrap().class, Class::Critical);
        assert_eq!(rules.route("sensor.1m").unwrap().class, Class::Normal);
        assert_eq!(rules.route("cart.events").unwrap().class, Class::Bulk);
        assert_eq!(
            rules.route("pos.payments").unwrap().destination,
            "pos.payments"
        );
        assert!(rules.route("sensors.fridge").is_none());
    }

    #[test]
    fn the_first_matching_rule_wins_and_templates_expand() {
        let mut config = ForwardConfig::default();
        let mut r = rule("sensors.*", Class::Bulk);
        r.destination = "edge.{store_id}.{edge_id}.{topic}".into();
        r.schedule = "22-06".into();
        config.rules = vec![
            RuleConfig {
                forward: false,
                ..rule("sensors.secret", Class::Normal)
            },
            r,
        ];
        let rules = Rules::new(config, "box7", "store-9");
        let route = rules.route("sensors.fridge").unwrap();
        assert_eq!(route.destination, "edge.store-9.box7.sensors.fridge");
        assert_eq!(route.class, Class::Bulk);
        assert_eq!(route.schedule, Schedule::Hours { from: 22, to: 6 });
        assert!(rules.route("sensors.secret").is_none());
        assert_eq!(rules.route("pos.payments").unwrap().class, Class::Critical);
    }

    #[test]
    fn default_rules_can_be_turned_off() {
        let config = ForwardConfig {
            default_rules: false,
            ..ForwardConfig::default()
        };
        assert!(Rules::new(config, "e", "s").route("pos.payments").is_none());
    }

    #[test]
    fn keys_come_from_the_record_or_a_json_pointer() {
        let value = br#"{"card_id":"c-1","n":{"x":5}}"#;
        assert_eq!(kafka_key(None, Some(b"k"), value), Some(b"k".to_vec()));
        assert_eq!(
            kafka_key(Some("/card_id"), Some(b"k"), value),
            Some(b"c-1".to_vec())
        );
        assert_eq!(kafka_key(Some("/n/x"), None, value), Some(b"5".to_vec()));
        assert_eq!(kafka_key(Some("/missing"), None, value), None);
        assert_eq!(kafka_key(Some("/a"), None, b"not json"), None);
    }

    #[test]
    fn hour_windows_wrap_midnight() {
        let w = Schedule::parse("22-06").unwrap();
        let at = |h: u64| h * 3_600_000 + 5;
        assert!(w.allows(at(23), false));
        assert!(w.allows(at(2), false));
        assert!(!w.allows(at(6), false));
        assert!(!w.allows(at(12), false));
        let day = Schedule::parse("9-17").unwrap();
        assert!(day.allows(at(9), false) && !day.allows(at(17), false));
        assert!(!Schedule::parse("manual").unwrap().allows(0, false));
        assert!(Schedule::parse("manual").unwrap().allows(0, true));
        assert!(Schedule::parse("5-5").is_err());
        assert!(Schedule::parse("soon").is_err());
    }
}
