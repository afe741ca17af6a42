//! Store events that meet their topic's contract (`CONTRACTS.md`, checked at ingest by
//! `outpost::contracts`), for tests that produce to those topics over HTTP or MQTT: the box
//! refuses anything less.

use serde_json::{json, Value};

/// A `pos.payments` value of payment `id` with card `card`, a 12.50 EUR contactless sale.
/// `{i}` in `id` or `card` stays as it is (`mqtt_client.py` numbers its messages with it).
pub fn payment(id: &str, card: &str) -> Value {
    json!({
        "payment_id": id, "ts_ms": 1_700_000_000_000u64, "store_id": "store-0001",
        "terminal_id": "t-1", "card_id": card, "amount": 12.5, "currency": "EUR",
        "channel": "contactless", "kind": "sale",
    })
}

/// A `fraud.alerts` value padded with an extra field of `pad` bytes (the contracts allow extra
/// fields), for tests that fill the log with a critical topic.
pub fn padded_alert(pad: usize) -> Value {
    json!({
        "payment_id": "p-fill", "ts_ms": 1_700_000_000_000u64, "store_id": "store-0001",
        "terminal_id": "t-1", "card_id": "card-fill", "score": 90, "reasons": ["blocklisted"],
        "threshold": 70, "pad": "x".repeat(pad),
    })
}

/// A `fraud.scores` value for payment `id`: a score of 0, no reasons.
pub fn score(id: &str) -> Value {
    json!({
        "payment_id": id, "ts_ms": 1_700_000_000_000u64, "store_id": "store-0001",
        "terminal_id": "t-1", "card_id": "card-1", "score": 0, "reasons": [],
    })
}

/// A `pos.baskets` value of basket `id`: one line, two litres of milk.
pub fn basket(id: &str) -> Value {
    json!({
        "basket_id": id, "ts_ms": 1_700_000_000_000u64, "store_id": "store-0001",
        "terminal_id": "t-1", "items": [{"sku": "milk-1l", "qty": 2, "price": 1.19}],
        "total": 2.38,
    })
}
