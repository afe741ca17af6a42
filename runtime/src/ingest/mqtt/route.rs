//! Mapping rules from MQTT topics to log records: which MQTT topic filter lands in which log
//! topic, with which key, keeping the MQTT topic as the header `mqtt-topic`.
//!
//! A rule has a topic filter (`+` matches one level, a trailing `#` any number of levels), an
//! optional target template and an optional key source. The target defaults to the MQTT topic
//! with `/` turned into `.` (`pos/payments` → `pos.payments`); a template such as
//! `"sensors.{1}"` takes MQTT topic levels by 0-based index. Log topic names are
//! `[a-z0-9._-]`, so every level is lower-cased and any other character becomes `_`
//! (`Fridge 2` → `fridge_2`). The key comes from a topic level (`{ segment = 1 }`) or from a
//! JSON pointer into the payload (`{ json_pointer = "/card_id" }`); a payload that is not JSON
//! or lacks the field is stored without a key (and counted), never dropped.

use serde::{Deserialize, Serialize};

use crate::log::NewRecord;

/// The header that keeps the MQTT topic a record came from.
pub const HEADER_TOPIC: &str = "mqtt-topic";
/// The header with the client id of the device that published (embedded listener only).
pub const HEADER_CLIENT_ID: &str = "mqtt-client-id";
/// Header set (to `true`) on a record made from a device's last will.
pub const HEADER_WILL: &str = "mqtt-will";

/// Where a record's key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// The MQTT topic level with this 0-based index (`sensors/fridge-2/temp`, 1 → `fridge-2`).
    Segment(usize),
    /// An RFC 6901 JSON pointer into the payload (`/card_id`); strings are used as they are,
    /// numbers and booleans as their JSON text.
    JsonPointer(String),
}

/// Why a message could not be mapped to a log topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A template names a topic level the message's topic does not have.
    #[error("the target template needs topic level {index} but {topic:?} has {levels} levels")]
    MissingLevel {
        topic: String,
        index: usize,
        levels: usize,
    },
    /// The resulting name is not a valid log topic name.
    #[error("{topic:?} maps to {name:?}, which is not a valid log topic name")]
    BadName { topic: String, name: String },
}

/// A parsed MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<String>,
}

impl TopicFilter {
    /// Parses a filter; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<TopicFilter, String> {
        if text.is_empty() {
            return Err(
                "is empty; give an MQTT topic filter such as \"pos/payments\" or \"sensors/#\""
                    .into(),
            );
        }
        if text.len() > 65_535 {
            return Err("is longer than 65535 bytes".into());
        }
        let levels: Vec<String> = text.split('/').map(str::to_string).collect();
        for (i, level) in levels.iter().enumerate() {
            if level == "#" && i + 1 != levels.len() {
                return Err(format!("{text:?}: `#` may only be the last level"));
            }
            if level != "#" && level != "+" && (level.contains('#') || level.contains('+')) {
                return Err(format!(
                    "{text:?}: `+` and `#` must fill a whole level (e.g. \"sensors/+/temp\")"
                ));
            }
            if level.contains('\0') {
                return Err(format!("{text:?} contains a NUL character"));
            }
        }
        Ok(TopicFilter {
            text: text.to_string(),
            levels,
        })
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether an MQTT topic name matches. Topics starting with `$` match only filters that
    /// start with the same literal level (MQTT 3.1.1 section 4.7.2).
    pub fn matches(&self, topic: &str) -> bool {
        let mut topic_levels = topic.split('/');
        for (i, f) in self.levels.iter().enumerate() {
            match f.as_str() {
                "#" => return !(i == 0 && topic.starts_with('$')),
                "+" => {
                    match topic_levels.next() {
                        Some(t) if !(i == 0 && t.starts_with('$')) => {}
                        _ => return false,
                    };
                }
                literal => {
                    if topic_levels.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// The least number of levels a matching topic has, and whether it can have more.
    fn depth(&self) -> (usize, bool) {
        match self.levels.last().map(String::as_str) {
            Some("#") => (self.levels.len() - 1, true),
            _ => (self.levels.len(), false),
        }
    }
}

/// One part of a target template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Level(usize),
}

/// A mapping rule, checked and ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    filter: TopicFilter,
    target: Option<Vec<Part>>,
    key: Option<KeySource>,
}

/// A message mapped to its log topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The log topic.
    pub topic: String,
    /// The record (key, value = payload, headers).
    pub record: NewRecord,
    /// True when the rule has a key source that found nothing.
    pub key_missing: bool,
}

/// Lower-cases one MQTT topic level and replaces characters a log topic name cannot hold.
fn sanitize(level: &str, out: &mut String) {
    for c in level.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
            out.push(c);
        } else {
            out.push('_');
        }
    }
}

fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{template:?} has a `{{` without `}}`"))?
            + open;
        let inner = &rest[open + 1..close];
        let index: usize = inner.parse().map_err(|_| {
            format!("{template:?}: `{{{inner}}}` is not a topic level index such as `{{1}}`")
        })?;
        parts.push(Part::Level(index));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{template:?} has a `}}` without `{{`"));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

impl Route {
    /// Builds a rule; the error (a problem, without the key) says what to fix.
    /// Problems are returned with the name of the field at fault.
    pub fn new(
        filter: &str,
        target: Option<&str>,
        key: Option<&KeySource>,
    ) -> Result<Route, (&'static str, String)> {
        let filter = TopicFilter::parse(filter).map_err(|p| ("filter", p))?;
        let (depth, open) = filter.depth();
        let target = match target {
            None => None,
            Some(t) => {
                let parts = parse_template(t).map_err(|p| ("topic", p))?;
                let mut sample = String::new();
                for part in &parts {
                    match part {
                        Part::Text(s) => sample.push_str(s),
                        Part::Level(i) => {
                            if *i >= depth && !open {
                                return Err((
                                    "topic",
                                    format!(
                                        "{t:?} uses level {{{i}}} but topics matching {:?} have only {depth} levels (counted from 0)",
                                        filter.as_str()
                                    ),
                                ));
                            }
                            sample.push('x');
                        }
                    }
                }
                if let Some(reason) = crate::log::validate_topic_name(&sample).err() {
                    return Err((
                        "topic",
                        format!("{t:?} does not make a valid log topic name: {reason}"),
                    ));
                }
                Some(parts)
            }
        };
        if let Some(KeySource::Segment(i)) = key {
            if *i >= depth && !open {
                return Err((
                    "key",
                    format!(
                        "segment {i} does not exist in topics matching {:?} ({depth} levels, counted from 0)",
                        filter.as_str()
                    ),
                ));
            }
        }
        if let Some(KeySource::JsonPointer(p)) = key {
            if !p.is_empty() && !p.starts_with('/') {
                return Err((
                    "key",
                    format!("json_pointer {p:?} must start with `/`, e.g. \"/card_id\""),
                ));
            }
        }
        Ok(Route {
            filter,
            target,
            key: key.cloned(),
        })
    }

    /// The rule's topic filter.
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// Whether the rule takes this MQTT topic.
    pub fn matches(&self, topic: &str) -> bool {
        self.filter.matches(topic)
    }

    /// The log topic for an MQTT topic this rule matches.
    pub fn target(&self, topic: &str) -> Result<String, MapError> {
        let mut name = String::with_capacity(topic.len());
        match &self.target {
            None => {
                for (i, level) in topic.split('/').enumerate() {
                    if i > 0 {
                        name.push('.');
                    }
                    sanitize(level, &mut name);
                }
            }
            Some(parts) => {
                let levels: Vec<&str> = topic.split('/').collect();
                for part in parts {
                    match part {
                        Part::Text(s) => name.push_str(s),
                        Part::Level(i) => match levels.get(*i) {
                            Some(level) => sanitize(level, &mut name),
                            None => {
                                return Err(MapError::MissingLevel {
                                    topic: topic.to_string(),
                                    index: *i,
                                    levels: levels.len(),
                                })
                            }
                        },
                    }
                }
            }
        }
        if crate::log::validate_topic_name(&name).is_err() {
            return Err(MapError::BadName {
                topic: topic.to_string(),
                name,
            });
        }
        Ok(name)
    }

    /// The record key for a message, if the rule has a key source and it finds one.
    pub fn key(&self, topic: &str, payload: &[u8]) -> Option<Vec<u8>> {
        match self.key.as_ref()? {
            KeySource::Segment(i) => topic.split('/').nth(*i).map(|s| s.as_bytes().to_vec()),
            KeySource::JsonPointer(pointer) => {
                let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
                match value.pointer(pointer)? {
                    serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
                    serde_json::Value::Null
                    | serde_json::Value::Array(_)
                    | serde_json::Value::Object(_) => None,
                    other => Some(other.to_string().into_bytes()),
                }
            }
        }
    }

    /// Maps one message: log topic, key, value and the `mqtt-topic` header (plus
    /// `mqtt-client-id` when given).
    pub fn map(
        &self,
        topic: &str,
        payload: &[u8],
        client_id: Option<&str>,
    ) -> Result<Mapped, MapError> {
        let target = self.target(topic)?;
        let key = self.key(topic, payload);
        let mut headers = vec![(HEADER_TOPIC.to_string(), topic.as_bytes().to_vec())];
        if let Some(id) = client_id {
            headers.push((HEADER_CLIENT_ID.to_string(), id.as_bytes().to_vec()));
        }
        Ok(Mapped {
            topic: target,
            key_missing: self.key.is_some() && key.is_none(),
            record: NewRecord {
                key,
                value: payload.to_vec(),
                headers,
                timestamp_ms: None,
            },
        })
    }
}

/// An ordered set of rules: the first rule whose filter matches a topic wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The rules, in order.
    pub fn new(routes: Vec<Route>) -> Routes {
        Routes { routes }
    }

    /// The first rule that matches `topic`.
    pub fn find(&self, topic: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(topic))
    }

    /// Every rule, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(m: &'a Mapped, name: &str) -> Option<&'a [u8]> {
        m.record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn filters_match_like_mqtt_says() {
        let cases = [
            ("pos/payments", "pos/payments", true),
            ("pos/payments", "pos/payments/x", false),
            ("pos/+", "pos/baskets", true),
            ("pos/+", "pos", false),
            ("pos/+/verdict", "pos/t1/verdict", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/fridge/temp", true),
            ("sensors/#", "sensorsx/a", false),
            ("#", "anything/at/all", true),
            ("#", "$SYS/broker", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker", true),
        ];
        for (filter, topic, expected) in cases {
            let f = TopicFilter::parse(filter).unwrap();
            assert_eq!(f.matches(topic), expected, "{filter} vs {topic}");
        }
        for bad in ["", "a/#/b", "a/b#", "a+/b"] {
            assert!(
                TopicFilter::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn the_default_target_turns_slashes_into_dots_and_cleans_levels() {
        let r = Route::new("#", None, None).unwrap();
        assert_eq!(r.target("pos/payments").unwrap(), "pos.payments");
        assert_eq!(r.target("sensors/Fridge 2").unwrap(), "sensors.fridge_2");
        let long = "a/".repeat(80);
        assert!(matches!(r.target(&long), Err(MapError::BadName { .. })));
    }

    #[test]
    fn templates_take_levels_by_index() {
        let r = Route::new("site/+/sensors/#", Some("sensors.{1}.{3}"), None).unwrap();
        assert_eq!(
            r.target("site/Store7/sensors/fridge").unwrap(),
            "sensors.store7.fridge"
        );
        assert!(matches!(
            r.target("site/s/sensors"),
            Err(MapError::MissingLevel { index: 3, .. })
        ));
        let (field, problem) = Route::new("a/+", Some("x.{2}"), None).unwrap_err();
        assert_eq!(field, "topic");
        assert!(problem.contains("{2}"), "{problem}");
        assert_eq!(Route::new("a/+", Some("X Y"), None).unwrap_err().0, "topic");
        assert_eq!(
            Route::new("a/+", Some("x.{y}"), None).unwrap_err().0,
            "topic"
        );
    }

    #[test]
    fn keys_come_from_a_segment_or_a_json_pointer() {
        let seg = Route::new("sensors/+", None, Some(&KeySource::Segment(1))).unwrap();
        let m = seg.map("sensors/fridge-2", b"21.5", None).unwrap();
        assert_eq!(m.topic, "sensors.fridge-2");
        assert_eq!(m.record.key.as_deref(), Some(&b"fridge-2"[..]));
        assert_eq!(header(&m, HEADER_TOPIC), Some(&b"sensors/fridge-2"[..]));
        assert!(!m.key_missing);

        let ptr = Route::new(
            "pos/payments",
            None,
            Some(&KeySource::JsonPointer("/card_id".into())),
        )
        .unwrap();
        let m = ptr
            .map(
                "pos/payments",
                br#"{"card_id":"c-9","amount":3}"#,
                Some("till-1"),
            )
            .unwrap();
        assert_eq!(m.record.key.as_deref(), Some(&b"c-9"[..]));
        assert_eq!(header(&m, HEADER_CLIENT_ID), Some(&b"till-1"[..]));
        assert_eq!(m.record.value, br#"{"card_id":"c-9","amount":3}"#);

        let num = Route::new("x", None, Some(&KeySource::JsonPointer("/n".into()))).unwrap();
        assert_eq!(num.key("x", br#"{"n":42}"#).as_deref(), Some(&b"42"[..]));

        let m = ptr.map("pos/payments", b"not json", None).unwrap();
        assert_eq!(m.record.key, None);
        assert!(m.key_missing);
        let m = ptr.map("pos/payments", br#"{"amount":1}"#, None).unwrap();
        assert!(m.key_missing);

        assert_eq!(
            Route::new("a/b", None, Some(&KeySource::Segment(2)))
                .unwrap_err()
                .0,
            "key"
        );
        assert_eq!(
            Route::new("a", None, Some(&KeySource::JsonPointer("card".into())))
                .unwrap_err()
                .0,
            "key"
        );
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let routes = Routes::new(vec![
            Route::new("sensors/special", Some("special"), None).unwrap(),
            Route::new("sensors/#", None, None).unwrap(),
        ]);
        assert_eq!(
            routes
                .find("sensors/special")
                .unwrap()
                .target("sensors/special")
                .unwrap(),
            "special"
        );
        assert_eq!(
            routes
                .find("sensors/x")
                .unwrap()
                .target("sensors/x")
                .unwrap(),
            "sensors.x"
        );
        assert!(routes.find("pos/payments").is_none());
    }
}
