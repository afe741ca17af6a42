//! The mapping of one OPC-UA data change (a `DataValue` of a monitored item) to the JSON
//! record Outpost stores; see the module documentation of `opcua` for the record's layout.

use opcua::types::{DataValue, DateTime, StatusCode, Variant};
use serde_json::{json, Map, Number, Value};

/// Epoch milliseconds of an OPC-UA timestamp; `None` for the null (unset) time.
pub fn epoch_ms(time: &DateTime) -> Option<i64> {
    if time.ticks() == 0 {
        return None;
    }
    Some(time.as_chrono().timestamp_millis())
}

/// `good` for Good, otherwise the status code's name (`BadNodeIdUnknown`, `UncertainLastUsableValue`…).
pub fn status_name(status: StatusCode) -> String {
    if status == StatusCode::Good {
        "good".to_string()
    } else {
        status.to_string()
    }
}

fn float(v: f64) -> Value {
    match Number::from_f64(v) {
        Some(n) => Value::Number(n),
        // JSON has no NaN or infinities: keep them readable rather than null.
        None => Value::String(v.to_string()),
    }
}

/// A variant as JSON: numbers, booleans and strings as themselves, arrays as arrays (of the
/// same mapping), times as RFC 3339 strings, names and ids as their text form, everything
/// else as its debug text.
pub fn variant_to_json(variant: &Variant) -> Value {
    match variant {
        Variant::Empty => Value::Null,
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(v) => json!(v),
        Variant::Byte(v) => json!(v),
        Variant::Int16(v) => json!(v),
        Variant::UInt16(v) => json!(v),
        Variant::Int32(v) => json!(v),
        Variant::UInt32(v) => json!(v),
        Variant::Int64(v) => json!(v),
        Variant::UInt64(v) => json!(v),
        Variant::Float(v) => float(f64::from(*v)),
        Variant::Double(v) => float(*v),
        Variant::String(s) => s.value().clone().map_or(Value::Null, Value::String),
        Variant::DateTime(t) => Value::String(t.to_string()),
        Variant::Guid(g) => Value::String(g.to_string()),
        Variant::StatusCode(s) => Value::String(status_name(*s)),
        Variant::ByteString(b) => match &b.value {
            None => Value::Null,
            Some(bytes) => Value::String(bytes.iter().map(|x| format!("{x:02x}")).collect()),
        },
        Variant::QualifiedName(q) => Value::String(q.to_string()),
        Variant::LocalizedText(t) => t.text.value().clone().map_or(Value::Null, Value::String),
        Variant::NodeId(n) => Value::String(n.to_string()),
        Variant::ExpandedNodeId(n) => Value::String(n.to_string()),
        Variant::Variant(inner) => variant_to_json(inner),
        Variant::DataValue(dv) => dv.value.as_ref().map_or(Value::Null, variant_to_json),
        Variant::Array(array) => Value::Array(array.values.iter().map(variant_to_json).collect()),
        other => Value::String(format!("{other:?}")),
    }
}

/// The record of one data change of `node_id` (display name `name`) on `server`, received at
/// `ts_ms`.
pub fn data_change_record(
    server: &str,
    node_id: &str,
    name: &str,
    value: &DataValue,
    ts_ms: u64,
) -> Value {
    let mut record = Map::new();
    record.insert("ts_ms".into(), Value::from(ts_ms));
    record.insert("server".into(), Value::from(server));
    record.insert("node_id".into(), Value::from(node_id));
    record.insert("name".into(), Value::from(name));
    record.insert(
        "value".into(),
        value.value.as_ref().map_or(Value::Null, variant_to_json),
    );
    record.insert(
        "status".into(),
        Value::from(status_name(value.status.unwrap_or(StatusCode::Good))),
    );
    record.insert(
        "source_ts_ms".into(),
        value
            .source_timestamp
            .as_ref()
            .and_then(epoch_ms)
            .map_or(Value::Null, Value::from),
    );
    record.insert(
        "server_ts_ms".into(),
        value
            .server_timestamp
            .as_ref()
            .and_then(epoch_ms)
            .map_or(Value::Null, Value::from),
    );
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{Array, LocalizedText, NodeId, UAString, VariantScalarTypeId};

    #[test]
    fn scalars_map_to_their_json_kinds() {
        assert_eq!(variant_to_json(&Variant::Boolean(true)), json!(true));
        assert_eq!(variant_to_json(&Variant::Int16(-7)), json!(-7));
        assert_eq!(variant_to_json(&Variant::UInt64(u64::MAX)), json!(u64::MAX));
        assert_eq!(variant_to_json(&Variant::Double(21.5)), json!(21.5));
        assert_eq!(variant_to_json(&Variant::Float(0.25)), json!(0.25));
        assert_eq!(variant_to_json(&Variant::Double(f64::NAN)), json!("NaN"));
        assert_eq!(
            variant_to_json(&Variant::String(UAString::from("open"))),
            json!("open")
        );
        assert_eq!(
            variant_to_json(&Variant::String(UAString::null())),
            Value::Null
        );
        assert_eq!(variant_to_json(&Variant::Empty), Value::Null);
        assert_eq!(
            variant_to_json(&Variant::NodeId(Box::new(NodeId::new(2, "Temp")))),
            json!("ns=2;s=Temp")
        );
        assert_eq!(
            variant_to_json(&Variant::LocalizedText(Box::new(LocalizedText::new(
                "en", "Door"
            )))),
            json!("Door")
        );
    }

    #[test]
    fn arrays_map_element_by_element() {
        let array = Array::new(
            VariantScalarTypeId::Int32,
            vec![Variant::Int32(1), Variant::Int32(-2), Variant::Int32(3)],
        )
        .unwrap();
        assert_eq!(
            variant_to_json(&Variant::Array(Box::new(array))),
            json!([1, -2, 3])
        );
    }

    #[test]
    fn a_data_change_becomes_the_documented_record() {
        let source = DateTime::from(1_700_000_000_123i64 * 10_000 + 116_444_736_000_000_000);
        let value = DataValue {
            value: Some(Variant::Double(4.5)),
            status: Some(StatusCode::Good),
            source_timestamp: Some(source),
            source_picoseconds: None,
            server_timestamp: None,
            server_picoseconds: None,
        };
        let record = data_change_record("plc-1", "ns=2;s=Temp", "Temp", &value, 42);
        assert_eq!(
            record,
            json!({
                "ts_ms": 42, "server": "plc-1", "node_id": "ns=2;s=Temp", "name": "Temp",
                "value": 4.5, "status": "good",
                "source_ts_ms": 1_700_000_000_123i64, "server_ts_ms": null
            })
        );
    }

    #[test]
    fn a_bad_status_is_named_and_a_missing_value_is_null() {
        let value = DataValue {
            value: None,
            status: Some(StatusCode::BadNodeIdUnknown),
            source_timestamp: None,
            source_picoseconds: None,
            server_timestamp: None,
            server_picoseconds: None,
        };
        let record = data_change_record("plc-1", "ns=2;i=9", "n", &value, 1);
        assert_eq!(record["status"], json!("BadNodeIdUnknown"));
        assert_eq!(record["value"], Value::Null);
    }
}
