//! The store-event contracts of `CONTRACTS.md` ("Store events"): what a value of each
//! fixed-name topic must look like, and the one check every ingest path runs before such a
//! value reaches the log, so that garbage is refused at the door instead of failing the plugins
//! and the cloud consumers that read the topic later.
//!
//! This module owns the schemas ([`contract`]), the check ([`Contract::check`],
//! [`Contract::check_json`]) with its typed error ([`ContractError`]), and the `[ingest]`
//! section that turns it on or off ([`IngestConfig`], `check_contracts`, on by default), handed
//! to the ingest paths as [`Contracts`]. It uses no other room, so every ingest path can share
//! it (`docs/architecture.md`):
//! - HTTP produce (`api/produce.rs`): a request with a record that fails is answered 422, error
//!   code 42202, naming the record's index and the problem; none of its records is stored.
//! - The MQTT listener in front of the embedded broker (`ingest/mqtt/listener.rs`): the publish
//!   is refused like any publish the box cannot store — not stored, never acknowledged, an
//!   MQTT 5 device gets a DISCONNECT with reason 0x99 "Payload format invalid" and the problem
//!   as its reason string, counted in `outpost_source_refused_total{source="mqtt:listener"}`.
//! - External MQTT brokers (`ingest/mqtt/source.rs`): the message cannot be refused to the
//!   device, so it is acknowledged without being stored, counted
//!   (`outpost_source_contract_violations_total`) and logged (rate-limited).
//! - A Kafka listener, when it exists, calls it too.
//!
//! Plugins' outputs (`fraud.scores`, `recommendations`, …) are written by plugins, not by
//! ingest, and are not checked on that path; the schemas of those topics apply when something
//! produces to them from outside (a test, a replay, a partner).
//!
//! # The rules
//! - A value is JSON text (UTF-8) whose top level is an object.
//! - A required field is present, not `null`, and of its type. An optional field may be absent
//!   or `null`; otherwise it is of its type.
//! - Fields the table does not name are allowed: producers may add fields before consumers
//!   know them (forward compatibility).
//! - Types: names and ids are JSON strings; `ts_ms` and `window_start_ms` are integers of
//!   milliseconds since the epoch (not negative, no fraction); offsets, byte counts and `count`
//!   are non-negative integers; money, quantities and measurements are numbers (integer or
//!   decimal); `score` is a number from 0 to 100; the enums (`channel`, `kind`, `action`,
//!   `state`) are one of their listed strings; lists are arrays whose elements have their
//!   shape (`items` of `pos.baskets` is `[{sku, qty, price}]`, of `recommendations`
//!   `[{sku, score}]`; `reasons` and `basket` are lists of strings).
//! - `recommendations` names its shopper by `loyalty_id` or `session_id`: at least one of them.
//!
//! Only the fixed-name topics of the table are checked. Topics it does not name are not, and
//! neither are the sensor topics (`sensors.fridge`, …): their names are chosen per device, and
//! what devices publish there is theirs to define; the aggregates the box derives from them
//! (`sensor.alerts`, `sensor.1m`) are checked.
//!
//! The error names the topic and exactly what is wrong: `pos.payments: field "card_id" is
//! missing`, `pos.payments: field "amount" must be a number, got "12"`, `pos.baskets: field
//! "items[1].price" must be a number, got null`, `pos.payments: value is not JSON: …`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// The table below reads as the contract does: `req("amount", Number)`.
use self::Kind::{Count, EpochMs, Number, Objects, OneOf, Score, Text, Texts};

/// The `[ingest]` section: rules every ingest path applies (HTTP produce, the MQTT listener,
/// external MQTT sources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Check the values produced to the topics of `CONTRACTS.md`'s "Store events" table
    /// against their contract at ingest, and refuse those that break it (HTTP 422, MQTT 5
    /// DISCONNECT 0x99; from external MQTT brokers: acknowledged and not stored). False: store
    /// whatever arrives.
    #[serde(default = "default_check_contracts")]
    pub check_contracts: bool,
}

fn default_check_contracts() -> bool {
    true
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            check_contracts: default_check_contracts(),
        }
    }
}

/// Whether ingest checks values against their topic's contract: what `app.rs` hands to each
/// ingest path from `[ingest]`. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contracts {
    enabled: bool,
}

impl Contracts {
    /// Values are checked (the default).
    pub const CHECKED: Contracts = Contracts { enabled: true };
    /// Nothing is checked (`check_contracts = false`).
    pub const UNCHECKED: Contracts = Contracts { enabled: false };

    /// The switch `[ingest]` sets.
    pub fn from_config(config: &IngestConfig) -> Contracts {
        Contracts {
            enabled: config.check_contracts,
        }
    }

    /// The contract values produced to `topic` must meet, or `None` when the check is off or
    /// the topic has none.
    pub fn for_topic(self, topic: &str) -> Option<&'static Contract> {
        if self.enabled {
            contract(topic)
        } else {
            None
        }
    }
}

impl Default for Contracts {
    fn default() -> Self {
        Contracts::CHECKED
    }
}

/// What is wrong with a value, without the topic (see [`ContractError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The value is not JSON text.
    #[error("value is not JSON: {0}")]
    NotJson(String),
    /// The value is JSON, but not an object.
    #[error("value must be a JSON object, got {got}")]
    NotAnObject {
        /// The value's JSON text (shortened).
        got: String,
    },
    /// A required field is absent.
    #[error("field \"{field}\" is missing")]
    Missing {
        /// The field's path (`card_id`, `items[0].sku`).
        field: String,
    },
    /// None of the fields of which at least one is required is present.
    #[error("field {} is missing (one of them is required)", quoted_or(.fields))]
    MissingAll {
        /// The fields, any one of which would do.
        fields: &'static [&'static str],
    },
    /// A field is present with the wrong type or value.
    #[error("field \"{field}\" must be {expected}, got {got}")]
    Wrong {
        /// The field's path (`amount`, `items[1].price`).
        field: String,
        /// What it must be (`a number`, `one of "sale", "refund"`).
        expected: String,
        /// The field's JSON text (shortened).
        got: String,
    },
}

/// A value that breaks its topic's contract: `{topic}: {problem}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{topic}: {problem}")]
pub struct ContractError {
    /// The log topic whose contract the value breaks.
    pub topic: &'static str,
    /// What is wrong.
    pub problem: Problem,
}

/// `"a" or "b"` (`"a", "b" or "c"` for three).
fn quoted_or(fields: &[&str]) -> String {
    let quoted: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A string (names, ids, currency codes, reasons).
    Text,
    /// An integer of milliseconds since the epoch, not negative.
    EpochMs,
    /// A non-negative integer (offsets, byte counts, `count`).
    Count,
    /// Any number (money, quantities, measurements, thresholds).
    Number,
    /// A number from 0 to 100.
    Score,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// An array of strings.
    Texts,
    /// An array of objects with these fields.
    Objects(&'static [Field]),
}

impl Kind {
    /// What a value of this kind must be, in words (`a number`).
    fn expected(self) -> String {
        match self {
            Kind::Text => "a string".into(),
            Kind::EpochMs => "an integer of milliseconds since the epoch".into(),
            Kind::Count => "a non-negative integer".into(),
            Kind::Number => "a number".into(),
            Kind::Score => "a number from 0 to 100".into(),
            Kind::OneOf(values) => {
                let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
                format!("one of {}", quoted.join(", "))
            }
            Kind::Texts => "a list of strings".into(),
            Kind::Objects(_) => "a list of objects".into(),
        }
    }
}

/// One field of a contract.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

/// The contract of one log topic: the fields of its values.
#[derive(Debug)]
pub struct Contract {
    topic: &'static str,
    fields: &'static [Field],
    /// At least one of these must be present (empty: no such rule).
    any_of: &'static [&'static str],
}

const ADD_REMOVE: Kind = OneOf(&["add", "remove"]);

/// The score fields `fraud.scores` and `fraud.alerts` share.
macro_rules! score_fields {
    ($($extra:expr),*) => {
        &[
            req("payment_id", Text),
            req("ts_ms", EpochMs),
            req("store_id", Text),
            req("terminal_id", Text),
            req("card_id", Text),
            req("score", Score),
            req("reasons", Texts),
            $($extra),*
        ]
    };
}

/// CONTRACTS.md's "Store events" table, fixed-name topics only (see the module doc).
static CONTRACTS: &[Contract] = &[
    Contract {
        topic: "pos.payments",
        fields: &[
            req("payment_id", Text),
            req("ts_ms", EpochMs),
            req("store_id", Text),
            req("terminal_id", Text),
            req("card_id", Text),
            opt("loyalty_id", Text),
            req("amount", Number),
            req("currency", Text),
            req(
                "channel",
                OneOf(&["card_present", "contactless", "card_not_present"]),
            ),
            req("kind", OneOf(&["sale", "refund"])),
        ],
        any_of: &[],
    },
    Contract {
        topic: "pos.baskets",
        fields: &[
            req("basket_id", Text),
            req("ts_ms", EpochMs),
            req("store_id", Text),
            req("terminal_id", Text),
            opt("loyalty_id", Text),
            req(
                "items",
                Objects(&[req("sku", Text), req("qty", Number), req("price", Number)]),
            ),
            req("total", Number),
        ],
        any_of: &[],
    },
    Contract {
        topic: "loyalty.scans",
        fields: &[
            req("ts_ms", EpochMs),
            req("store_id", Text),
            req("device_id", Text),
            req("loyalty_id", Text),
            opt("basket", Texts),
        ],
        any_of: &[],
    },
    Contract {
        topic: "cart.events",
        fields: &[
            req("ts_ms", EpochMs),
            req("store_id", Text),
            req("device_id", Text),
            req("session_id", Text),
            opt("loyalty_id", Text),
            req("action", ADD_REMOVE),
            req("sku", Text),
        ],
        any_of: &[],
    },
    Contract {
        topic: "inventory.updates",
        fields: &[
            req("ts_ms", EpochMs),
            req("store_id", Text),
            req("sku", Text),
            req("on_hand", Number),
        ],
        any_of: &[],
    },
    Contract {
        topic: "ref.blocklist",
        fields: &[
            req("card_id", Text),
            req("action", ADD_REMOVE),
            // Optional at the door: a removal often has none, and fraud-score needs none.
            opt("reason", Text),
        ],
        any_of: &[],
    },
    Contract {
        topic: "fraud.scores",
        fields: score_fields!(),
        any_of: &[],
    },
    Contract {
        topic: "fraud.alerts",
        fields: score_fields!(req("threshold", Number)),
        any_of: &[],
    },
    Contract {
        topic: "recommendations",
        fields: &[
            req("ts_ms", EpochMs),
            req("store_id", Text),
            req("device_id", Text),
            opt("loyalty_id", Text),
            opt("session_id", Text),
            req("items", Objects(&[req("sku", Text), req("score", Number)])),
        ],
        any_of: &["loyalty_id", "session_id"],
    },
    Contract {
        topic: "sensor.alerts",
        fields: &[
            req("ts_ms", EpochMs),
            req("device", Text),
            req("metric", Text),
            req("value", Number),
            req("threshold", Number),
            req("state", OneOf(&["raised", "cleared"])),
        ],
        any_of: &[],
    },
    Contract {
        topic: "sensor.1m",
        fields: &[
            req("window_start_ms", EpochMs),
            req("device", Text),
            req("metric", Text),
            req("min", Number),
            req("mean", Number),
            req("max", Number),
            req("count", Count),
        ],
        any_of: &[],
    },
    Contract {
        topic: "outpost.gaps",
        fields: &[
            req("topic", Text),
            req("from_offset", Count),
            req("to_offset", Count),
            req("bytes", Count),
            req("reason", Text),
            req("ts_ms", EpochMs),
        ],
        any_of: &[],
    },
];

/// The contract of `topic`, or `None` when the table has none for it.
pub fn contract(topic: &str) -> Option<&'static Contract> {
    CONTRACTS.iter().find(|c| c.topic == topic)
}

/// The topics that have a contract, in the table's order.
pub fn topics() -> impl Iterator<Item = &'static str> {
    CONTRACTS.iter().map(|c| c.topic)
}

/// Checks `value` (the bytes a record would store) against `topic`'s contract; a topic without
/// one accepts anything.
pub fn check(topic: &str, value: &[u8]) -> Result<(), ContractError> {
    match contract(topic) {
        Some(contract) => contract.check(value),
        None => Ok(()),
    }
}

impl Contract {
    /// The log topic this contract is for.
    pub fn topic(&self) -> &'static str {
        self.topic
    }

    /// Checks the bytes a record would store: JSON text whose value meets the contract.
    pub fn check(&self, value: &[u8]) -> Result<(), ContractError> {
        let parsed: Value = serde_json::from_slice(value)
            .map_err(|e| self.error(Problem::NotJson(e.to_string())))?;
        self.check_json(&parsed)
    }

    /// Checks an already parsed value.
    pub fn check_json(&self, value: &Value) -> Result<(), ContractError> {
        let Value::Object(object) = value else {
            return Err(self.error(Problem::NotAnObject { got: shown(value) }));
        };
        check_fields(object, self.fields, "").map_err(|p| self.error(p))?;
        if !self.any_of.is_empty() && !self.any_of.iter().any(|f| present(object, f).is_some()) {
            return Err(self.error(Problem::MissingAll {
                fields: self.any_of,
            }));
        }
        Ok(())
    }

    fn error(&self, problem: Problem) -> ContractError {
        ContractError {
            topic: self.topic,
            problem,
        }
    }
}

/// The field `name` of `object` unless it is absent or `null`.
fn present<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

/// Checks `fields` of `object`, whose path is `prefix` (`""` at the top, `items[2].` inside).
fn check_fields(
    object: &Map<String, Value>,
    fields: &[Field],
    prefix: &str,
) -> Result<(), Problem> {
    for field in fields {
        let path = || format!("{prefix}{}", field.name);
        match object.get(field.name) {
            None if field.required => return Err(Problem::Missing { field: path() }),
            None => {}
            Some(Value::Null) if !field.required => {}
            Some(value) => check_kind(value, field.kind, &path())?,
        }
    }
    Ok(())
}

/// Checks one value of kind `kind` at `path`.
fn check_kind(value: &Value, kind: Kind, path: &str) -> Result<(), Problem> {
    let wrong = |value: &Value, kind: Kind, path: &str| Problem::Wrong {
        field: path.to_string(),
        expected: kind.expected(),
        got: shown(value),
    };
    let ok = match kind {
        Kind::Text => value.is_string(),
        Kind::EpochMs | Kind::Count => value.is_u64(),
        Kind::Number => value.is_number(),
        Kind::Score => value.as_f64().is_some_and(|s| (0.0..=100.0).contains(&s)),
        Kind::OneOf(allowed) => value.as_str().is_some_and(|s| allowed.contains(&s)),
        Kind::Texts | Kind::Objects(_) => {
            let Some(elements) = value.as_array() else {
                return Err(wrong(value, kind, path));
            };
            for (i, element) in elements.iter().enumerate() {
                let at = format!("{path}[{i}]");
                match (kind, element) {
                    (Kind::Objects(fields), Value::Object(object)) => {
                        check_fields(object, fields, &format!("{at}."))?
                    }
                    (Kind::Objects(_), other) => {
                        return Err(Problem::Wrong {
                            field: at,
                            expected: "an object".into(),
                            got: shown(other),
                        })
                    }
                    (_, element) => check_kind(element, Kind::Text, &at)?,
                }
            }
            true
        }
    };
    if ok {
        Ok(())
    } else {
        Err(wrong(value, kind, path))
    }
}

/// Longest JSON text of a value shown in an error, in characters.
const SHOWN_CHARS: usize = 60;

/// A value's JSON text for an error message, cut at [`SHOWN_CHARS`] characters.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A valid value of every row of the table.
    fn valid(topic: &str) -> Value {
        match topic {
            "pos.payments" => json!({
                "payment_id": "p-1", "ts_ms": 1_700_000_000_000u64, "store_id": "store-7",
                "terminal_id": "t-2", "card_id": "card-9", "loyalty_id": "L-1", "amount": 12.5,
                "currency": "EUR", "channel": "contactless", "kind": "sale",
            }),
            "pos.baskets" => json!({
                "basket_id": "b-1", "ts_ms": 1_700_000_000_000u64, "store_id": "store-7",
                "terminal_id": "t-2", "loyalty_id": "L-1",
                "items": [{"sku": "milk", "qty": 2, "price": 1.19}, {"sku": "cheese", "qty": 0.35, "price": 21.9}],
                "total": 10.05,
            }),
            "loyalty.scans" => json!({
                "ts_ms": 1_700_000_000_000u64, "store_id": "store-7", "device_id": "kiosk-1",
                "loyalty_id": "L-1", "basket": ["milk", "bread"],
            }),
            "cart.events" => json!({
                "ts_ms": 1_700_000_000_000u64, "store_id": "store-7", "device_id": "cart-3",
                "session_id": "s-1", "loyalty_id": "L-1", "action": "add", "sku": "pasta",
            }),
            "inventory.updates" => json!({
                "ts_ms": 1_700_000_000_000u64, "store_id": "store-7", "sku": "pasta", "on_hand": 42,
            }),
            "ref.blocklist" => json!({
                "card_id": "card-9", "action": "add", "reason": "reported stolen",
            }),
            "fraud.scores" => json!({
                "payment_id": "p-1", "ts_ms": 1_700_000_000_000u64, "store_id": "store-7",
                "terminal_id": "t-2", "card_id": "card-9", "score": 18, "reasons": ["velocity_count"],
            }),
            "fraud.alerts" => json!({
                "payment_id": "p-1", "ts_ms": 1_700_000_000_000u64, "store_id": "store-7",
                "terminal_id": "t-2", "card_id": "card-9", "score": 100, "reasons": ["blocklisted"],
                "threshold": 70,
            }),
            "recommendations" => json!({
                "ts_ms": 1_700_000_000_000u64, "store_id": "store-7", "device_id": "sign-1",
                "loyalty_id": "L-1", "items": [{"sku": "sauce", "score": 0.67}],
            }),
            "sensor.alerts" => json!({
                "ts_ms": 1_700_000_000_000u64, "device": "fridge-1", "metric": "temperature",
                "value": 7.0, "threshold": 5.0, "state": "raised",
            }),
            "sensor.1m" => json!({
                "window_start_ms": 1_700_000_040_000u64, "device": "fridge-1",
                "metric": "temperature", "min": 3.0, "mean": 4.0, "max": 5.0, "count": 3,
            }),
            "outpost.gaps" => json!({
                "topic": "pos.baskets", "from_offset": 0, "to_offset": 99, "bytes": 4096,
                "reason": "disk_budget", "ts_ms": 1_700_000_000_000u64,
            }),
            other => panic!("no example for {other}"),
        }
    }

    /// The problem `value` (changed by `change`) has on `topic`.
    fn problem(topic: &str, change: impl FnOnce(&mut Map<String, Value>)) -> Problem {
        let mut value = valid(topic);
        change(value.as_object_mut().unwrap());
        let error = check(topic, value.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.topic, topic);
        error.problem
    }

    fn wrong(field: &str, expected: &str, got: &str) -> Problem {
        Problem::Wrong {
            field: field.into(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    fn missing(field: &str) -> Problem {
        Problem::Missing {
            field: field.into(),
        }
    }

    #[test]
    fn the_table_has_a_contract_for_every_fixed_name_topic_and_a_valid_example_of_each_passes() {
        let expected = [
            "pos.payments",
            "pos.baskets",
            "loyalty.scans",
            "cart.events",
            "inventory.updates",
            "ref.blocklist",
            "fraud.scores",
            "fraud.alerts",
            "recommendations",
            "sensor.alerts",
            "sensor.1m",
            "outpost.gaps",
        ];
        assert_eq!(topics().collect::<Vec<_>>(), expected);
        for topic in expected {
            let value = valid(topic);
            check(topic, value.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("the example of {topic} fails: {e}"));
        }
    }

    #[test]
    fn every_required_field_of_every_contract_is_named_when_it_is_missing() {
        for c in CONTRACTS {
            for field in c.fields.iter().filter(|f| f.required) {
                let p = problem(c.topic, |v| {
                    v.remove(field.name);
                });
                assert_eq!(p, missing(field.name), "{}", c.topic);
            }
        }
    }

    #[test]
    fn a_required_field_that_is_null_has_the_wrong_type() {
        let p = problem("pos.payments", |v| {
            v.insert("card_id".into(), Value::Null);
        });
        assert_eq!(p, wrong("card_id", "a string", "null"));
    }

    #[test]
    fn the_error_reads_as_the_topic_and_what_is_wrong() {
        let mut value = valid("pos.payments");
        value.as_object_mut().unwrap().remove("card_id");
        let e = check("pos.payments", value.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), r#"pos.payments: field "card_id" is missing"#);
        value["card_id"] = json!("c");
        value["amount"] = json!("12");
        let e = check("pos.payments", value.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"pos.payments: field "amount" must be a number, got "12""#
        );
        let e = check("pos.payments", b"{\"card_id\":").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("pos.payments: value is not JSON: "),
            "{e}"
        );
    }

    #[test]
    fn a_value_that_is_not_json_or_not_an_object_is_refused() {
        assert!(matches!(
            check("pos.baskets", b"card=1").unwrap_err().problem,
            Problem::NotJson(_)
        ));
        assert!(matches!(
            check("pos.baskets", &[0xff, 0xfe]).unwrap_err().problem,
            Problem::NotJson(_)
        ));
        for (text, got) in [
            ("[1,2]", "[1,2]"),
            ("\"x\"", "\"x\""),
            ("null", "null"),
            ("12", "12"),
        ] {
            assert_eq!(
                check("ref.blocklist", text.as_bytes()).unwrap_err().problem,
                Problem::NotAnObject { got: got.into() },
                "{text}"
            );
        }
    }

    #[test]
    fn strings_must_be_strings() {
        let p = problem("pos.payments", |v| {
            v.insert("terminal_id".into(), json!(7));
        });
        assert_eq!(p, wrong("terminal_id", "a string", "7"));
        let p = problem("ref.blocklist", |v| {
            v.insert("reason".into(), json!({"why": "stolen"}));
        });
        assert_eq!(p, wrong("reason", "a string", r#"{"why":"stolen"}"#));
    }

    #[test]
    fn timestamps_must_be_non_negative_integers_of_milliseconds() {
        let expected = "an integer of milliseconds since the epoch";
        for (bad, got) in [
            (json!("1700000000000"), "\"1700000000000\""),
            (json!(1.7e12), "1700000000000.0"),
            (json!(-5), "-5"),
        ] {
            let p = problem("cart.events", |v| {
                v.insert("ts_ms".into(), bad);
            });
            assert_eq!(p, wrong("ts_ms", expected, got));
        }
        let p = problem("sensor.1m", |v| {
            v.insert("window_start_ms".into(), json!("soon"));
        });
        assert_eq!(p, wrong("window_start_ms", expected, "\"soon\""));
    }

    #[test]
    fn money_and_amounts_must_be_numbers() {
        let p = problem("pos.payments", |v| {
            v.insert("amount".into(), json!("12"));
        });
        assert_eq!(p, wrong("amount", "a number", "\"12\""));
        let p = problem("pos.baskets", |v| {
            v.insert("total".into(), json!(null));
        });
        assert_eq!(p, wrong("total", "a number", "null"));
        let p = problem("inventory.updates", |v| {
            v.insert("on_hand".into(), json!(true));
        });
        assert_eq!(p, wrong("on_hand", "a number", "true"));
        let p = problem("sensor.alerts", |v| {
            v.insert("value".into(), json!("7"));
        });
        assert_eq!(p, wrong("value", "a number", "\"7\""));
        // Integer and decimal numbers, negative ones included (a refund), are numbers.
        for amount in [json!(12), json!(-3.5), json!(0)] {
            let mut value = valid("pos.payments");
            value["amount"] = amount;
            check("pos.payments", value.to_string().as_bytes()).unwrap();
        }
    }

    #[test]
    fn enums_take_only_their_listed_values() {
        let p = problem("pos.payments", |v| {
            v.insert("channel".into(), json!("swipe"));
        });
        assert_eq!(
            p,
            wrong(
                "channel",
                r#"one of "card_present", "contactless", "card_not_present""#,
                "\"swipe\""
            )
        );
        let p = problem("pos.payments", |v| {
            v.insert("kind".into(), json!("Sale"));
        });
        assert_eq!(p, wrong("kind", r#"one of "sale", "refund""#, "\"Sale\""));
        let p = problem("cart.events", |v| {
            v.insert("action".into(), json!(1));
        });
        assert_eq!(p, wrong("action", r#"one of "add", "remove""#, "1"));
        let p = problem("ref.blocklist", |v| {
            v.insert("action".into(), json!("delete"));
        });
        assert_eq!(
            p,
            wrong("action", r#"one of "add", "remove""#, "\"delete\"")
        );
        let p = problem("sensor.alerts", |v| {
            v.insert("state".into(), json!("on"));
        });
        assert_eq!(p, wrong("state", r#"one of "raised", "cleared""#, "\"on\""));
    }

    #[test]
    fn basket_items_are_objects_with_sku_qty_and_price() {
        let p = problem("pos.baskets", |v| {
            v.insert("items".into(), json!({"sku": "milk"}));
        });
        assert_eq!(p, wrong("items", "a list of objects", r#"{"sku":"milk"}"#));
        let p = problem("pos.baskets", |v| {
            v.insert(
                "items".into(),
                json!([{"sku": "milk", "qty": 1, "price": 1}, "bread"]),
            );
        });
        assert_eq!(p, wrong("items[1]", "an object", "\"bread\""));
        let p = problem("pos.baskets", |v| {
            v.insert("items".into(), json!([{"qty": 1, "price": 1}]));
        });
        assert_eq!(p, missing("items[0].sku"));
        let p = problem("pos.baskets", |v| {
            v.insert(
                "items".into(),
                json!([{"sku": "a", "qty": 1, "price": 1}, {"sku": "b", "qty": "2", "price": 1}]),
            );
        });
        assert_eq!(p, wrong("items[1].qty", "a number", "\"2\""));
        let p = problem("pos.baskets", |v| {
            v.insert(
                "items".into(),
                json!([{"sku": "a", "qty": 1, "price": "1.50"}]),
            );
        });
        assert_eq!(p, wrong("items[0].price", "a number", "\"1.50\""));
        // An empty basket is a list; extra fields in an item are allowed.
        for items in [
            json!([]),
            json!([{"sku": "a", "qty": 1, "price": 2, "vat": 0.07}]),
        ] {
            let mut value = valid("pos.baskets");
            value["items"] = items;
            check("pos.baskets", value.to_string().as_bytes()).unwrap();
        }
    }

    #[test]
    fn recommendation_items_are_objects_with_sku_and_score() {
        let p = problem("recommendations", |v| {
            v.insert("items".into(), json!([{"sku": "a"}]));
        });
        assert_eq!(p, missing("items[0].score"));
        let p = problem("recommendations", |v| {
            v.insert("items".into(), json!([{"sku": 5, "score": 1}]));
        });
        assert_eq!(p, wrong("items[0].sku", "a string", "5"));
    }

    #[test]
    fn lists_of_strings_hold_only_strings() {
        let p = problem("fraud.scores", |v| {
            v.insert("reasons".into(), json!(["velocity_count", 3]));
        });
        assert_eq!(p, wrong("reasons[1]", "a string", "3"));
        let p = problem("fraud.scores", |v| {
            v.insert("reasons".into(), json!("blocklisted"));
        });
        assert_eq!(p, wrong("reasons", "a list of strings", "\"blocklisted\""));
        let p = problem("loyalty.scans", |v| {
            v.insert("basket".into(), json!([{"sku": "milk"}]));
        });
        assert_eq!(p, wrong("basket[0]", "a string", r#"{"sku":"milk"}"#));
    }

    #[test]
    fn scores_run_from_0_to_100() {
        for (bad, got) in [
            (json!(140), "140"),
            (json!(-1), "-1"),
            (json!("50"), "\"50\""),
        ] {
            let p = problem("fraud.alerts", |v| {
                v.insert("score".into(), bad);
            });
            assert_eq!(p, wrong("score", "a number from 0 to 100", got));
        }
        let p = problem("fraud.alerts", |v| {
            v.insert("threshold".into(), json!("70"));
        });
        assert_eq!(p, wrong("threshold", "a number", "\"70\""));
    }

    #[test]
    fn counts_and_offsets_are_non_negative_integers() {
        let p = problem("sensor.1m", |v| {
            v.insert("count".into(), json!(2.5));
        });
        assert_eq!(p, wrong("count", "a non-negative integer", "2.5"));
        let p = problem("outpost.gaps", |v| {
            v.insert("from_offset".into(), json!(-1));
        });
        assert_eq!(p, wrong("from_offset", "a non-negative integer", "-1"));
        let p = problem("outpost.gaps", |v| {
            v.insert("bytes".into(), json!("4096"));
        });
        assert_eq!(p, wrong("bytes", "a non-negative integer", "\"4096\""));
    }

    #[test]
    fn optional_fields_may_be_absent_or_null_but_otherwise_have_their_type() {
        for (topic, field) in [
            ("pos.payments", "loyalty_id"),
            ("pos.baskets", "loyalty_id"),
            ("loyalty.scans", "basket"),
            ("cart.events", "loyalty_id"),
        ] {
            let mut value = valid(topic);
            value.as_object_mut().unwrap().remove(field);
            check(topic, value.to_string().as_bytes()).unwrap();
            value[field] = Value::Null;
            check(topic, value.to_string().as_bytes()).unwrap();
        }
        let p = problem("pos.payments", |v| {
            v.insert("loyalty_id".into(), json!(1234));
        });
        assert_eq!(p, wrong("loyalty_id", "a string", "1234"));
        let p = problem("loyalty.scans", |v| {
            v.insert("basket".into(), json!("milk"));
        });
        assert_eq!(p, wrong("basket", "a list of strings", "\"milk\""));
    }

    #[test]
    fn a_recommendation_names_its_shopper_by_loyalty_id_or_session_id() {
        let p = problem("recommendations", |v| {
            v.remove("loyalty_id");
        });
        assert_eq!(
            p,
            Problem::MissingAll {
                fields: &["loyalty_id", "session_id"]
            }
        );
        assert_eq!(
            p.to_string(),
            r#"field "loyalty_id" or "session_id" is missing (one of them is required)"#
        );
        let mut by_session = valid("recommendations");
        by_session.as_object_mut().unwrap().remove("loyalty_id");
        by_session["session_id"] = json!("s-1");
        check("recommendations", by_session.to_string().as_bytes()).unwrap();
        let p = problem("recommendations", |v| {
            v.insert("session_id".into(), json!(7));
        });
        assert_eq!(p, wrong("session_id", "a string", "7"));
    }

    #[test]
    fn unknown_extra_fields_are_allowed() {
        for topic in topics() {
            let mut value = valid(topic);
            value["firmware"] = json!("2.1");
            value["extra"] = json!({"nested": [1, 2]});
            check(topic, value.to_string().as_bytes()).unwrap();
        }
    }

    #[test]
    fn topics_outside_the_table_and_sensor_topics_are_not_checked() {
        for topic in [
            "store.events",
            "sensors.fridge",
            "pos.payments.dlq",
            "fraud-score.dlq",
        ] {
            check(topic, b"not json at all").unwrap();
            assert!(contract(topic).is_none(), "{topic}");
        }
    }

    #[test]
    fn the_switch_turns_the_check_off() {
        assert_eq!(
            Contracts::from_config(&IngestConfig::default()),
            Contracts::CHECKED
        );
        assert_eq!(
            Contracts::CHECKED
                .for_topic("pos.payments")
                .map(Contract::topic),
            Some("pos.payments")
        );
        assert!(Contracts::CHECKED.for_topic("store.events").is_none());
        let off = Contracts::from_config(&IngestConfig {
            check_contracts: false,
        });
        assert!(off.for_topic("pos.payments").is_none());
    }

    #[test]
    fn the_gap_markers_the_log_writes_meet_the_contract_of_outpost_gaps() {
        let marker = crate::log::GapMarker {
            topic: "pos.baskets".into(),
            from_offset: 10,
            to_offset: 19,
            bytes: 8192,
            reason: "disk_budget".into(),
            ts_ms: 1_700_000_000_000,
        };
        check("outpost.gaps", &serde_json::to_vec(&marker).unwrap()).unwrap();
    }

    #[test]
    fn a_long_offending_value_is_shortened_in_the_message() {
        let p = problem("pos.payments", |v| {
            v.insert("card_id".into(), json!(["x".repeat(500)]));
        });
        let Problem::Wrong { got, .. } = &p else {
            panic!("{p:?}")
        };
        assert!(got.chars().count() <= SHOWN_CHARS + 1, "{got}");
        assert!(got.ends_with('…'), "{got}");
    }
}
