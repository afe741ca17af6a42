//! Numbers come back exactly as stored, against `outpost run`: random doubles (every bit
//! pattern of a finite f64), i64 and u64 values produced over HTTP in the JSON format keep
//! their value bit-for-bit, and records produced in the binary format keep their bytes, on
//! every read path: `GET /topics/{t}/records`, `outpost tail`, and an MQTT sink publishing the
//! topic to a subscriber. (The forwarder hands the stored bytes to librdkafka untouched; it has
//! no JSON step to test.)

use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::common::peers::{http_get_text, http_post, Outpost, Rng};
use crate::common::python::free_port;
use crate::common::raw_mqtt::RawDevice;

/// One record of a fetch answer, its value kept as the box's text.
#[derive(Deserialize)]
struct RawRecord {
    value: Box<RawValue>,
}

/// A fetch answer with raw values.
#[derive(Deserialize)]
struct RawPage {
    records: Vec<RawRecord>,
    next_offset: u64,
}

/// A finite double from random bits, shortest text that parses back to it (serde_json's
/// writer), plus the edge cases that break naive printing and parsing.
fn doubles(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut out = vec![
        0.1,
        -0.0,
        5e-324,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        1e21,
        1e-7,
        123_456_789.123_456_79,
        2f64.powi(53) + 2.0,
        0.1 + 0.2,
    ];
    while out.len() < n {
        let d = f64::from_bits(rng.next_u64());
        if d.is_finite() {
            out.push(d);
        }
    }
    out
}

/// The JSON value `{"f":…,"i":…,"u":…}` of one sample, in serde_json's own number text.
fn sample_text(f: f64, i: i64, u: u64) -> String {
    format!(
        "{{\"f\":{},\"i\":{i},\"u\":{u}}}",
        serde_json::to_string(&f).unwrap()
    )
}

/// The same value written by hand the way a device might: spaces, an exponent.
fn device_text(f: f64, i: i64, u: u64) -> String {
    format!("{{ \"f\" : {f:e} , \"i\":{i},  \"u\" :{u} }}")
}

/// Base64 (standard, padded) of `bytes`, for the binary produce format.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Asserts that a value read back holds exactly the numbers `(f, i, u)`.
fn assert_same_numbers(read: &str, (f, i, u): (f64, i64, u64), path: &str) {
    let v: Value = serde_json::from_str(read).unwrap();
    let back = v["f"].as_f64().unwrap();
    assert_eq!(
        back.to_bits(),
        f.to_bits(),
        "{path}: {f:e} came back as {back:e} in {read}"
    );
    assert_eq!(v["i"].as_i64(), Some(i), "{path}: {read}");
    assert_eq!(v["u"].as_u64(), Some(u), "{path}: {read}");
}

/// Produces one record per value (JSON text of the request's `value`) to `topic` in the
/// `format` (`json` or `binary`); asserts the box took them.
fn produce(box_: &Outpost, topic: &str, format: &str, values: impl Iterator<Item = String>) {
    let records: Vec<String> = values.map(|v| format!("{{\"value\":{v}}}")).collect();
    let code = http_post(
        box_.http_port,
        &format!("/topics/{topic}"),
        &format!("application/vnd.kafka.{format}.v2+json"),
        &format!("{{\"records\":[{}]}}", records.join(",")),
    );
    assert_eq!(code, 200, "producing to {topic}");
}

/// Every record of `topic`, values as the box's text.
fn read_raw(box_: &Outpost, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (code, body) = http_get_text(
            box_.http_port,
            &format!("/topics/{topic}/records?offset={offset}&limit=1000"),
        )
        .expect("the box answers");
        assert_eq!(code, 200, "{body}");
        let page: RawPage = serde_json::from_str(&body).unwrap();
        if page.records.is_empty() {
            return out;
        }
        out.extend(page.records.into_iter().map(|r| r.value.get().to_string()));
        offset = page.next_offset;
    }
}

/// The values `outpost tail` prints for `topic`, as text.
fn tail_raw(box_: &Outpost, topic: &str) -> Vec<String> {
    box_.client(&["tail", topic])
        .lines()
        .map(|line| {
            let r: RawRecord = serde_json::from_str(line).unwrap();
            r.value.get().to_string()
        })
        .collect()
}

fn start(dir: &Path) -> Outpost {
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        "[plugins]\nenabled = false\n\n[mqtt]\nsinks = [\n  { name = \"exact\", topic = \
         \"exact.binary\", mqtt_topic = \"exact/out\", qos = 1, start_at = \"beginning\" },\n]\n",
    )
    .unwrap();
    Outpost::start(&dir.join("data"), Some(&config), free_port(), free_port())
}

#[test]
fn random_doubles_and_integers_come_back_bit_for_bit_over_http_tail_and_the_mqtt_sink() {
    let mut rng = Rng::from_env_or_clock("exact_numbers");
    const N: usize = 400;
    let samples: Vec<(f64, i64, u64)> = doubles(&mut rng, N)
        .into_iter()
        .enumerate()
        .map(|(k, f)| {
            let i = match k {
                0 => i64::MIN,
                1 => i64::MAX,
                _ => rng.next_u64() as i64,
            };
            let u = if k == 0 { u64::MAX } else { rng.next_u64() };
            (f, i, u)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path());
    let mut device = RawDevice::connect(box_.mqtt_port, 4, "exact-subscriber");
    device.subscribe_qos0("exact/out");

    // JSON format, in requests of 100 records; binary format, the device's own text.
    for chunk in samples.chunks(100) {
        let json = chunk.iter().map(|&(f, i, u)| sample_text(f, i, u));
        produce(&box_, "exact.json", "json", json);
        let binary = chunk
            .iter()
            .map(|&(f, i, u)| format!("\"{}\"", b64(device_text(f, i, u).as_bytes())));
        produce(&box_, "exact.binary", "binary", binary);
    }

    let json_http = read_raw(&box_, "exact.json");
    let json_tail = tail_raw(&box_, "exact.json");
    let binary_http = read_raw(&box_, "exact.binary");
    let binary_tail = tail_raw(&box_, "exact.binary");
    for (read, path) in [
        (&json_http, "JSON format, HTTP"),
        (&json_tail, "JSON format, tail"),
    ] {
        assert_eq!(read.len(), N, "{path}");
        for (text, &sample) in read.iter().zip(&samples) {
            assert_same_numbers(text, sample, path);
        }
    }
    for (read, path) in [
        (&binary_http, "binary format, HTTP"),
        (&binary_tail, "binary format, tail"),
    ] {
        assert_eq!(read.len(), N, "{path}");
        for (text, &(f, i, u)) in read.iter().zip(&samples) {
            assert_eq!(text, &device_text(f, i, u), "{path}: the bytes changed");
        }
    }
    for (k, &(f, i, u)) in samples.iter().enumerate() {
        let payload = device
            .next_publish_payload()
            .unwrap_or_else(|| panic!("the sink published only {k} of {N} records"));
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            device_text(f, i, u),
            "MQTT sink: the bytes changed"
        );
    }
}

#[test]
fn a_value_that_is_not_exactly_one_json_text_comes_back_as_its_bytes_in_base64() {
    let dir = tempfile::tempdir().unwrap();
    let box_ = start(dir.path());
    let stored: [&[u8]; 3] = [b"{\"a\":1}\n", b" 2.50", b"not json"];
    let values = stored.iter().map(|bytes| format!("\"{}\"", b64(bytes)));
    produce(&box_, "exact.padded", "binary", values);
    let page = box_.records("exact.padded");
    assert_eq!(page.len(), 3);
    for (record, bytes) in page.iter().zip(stored) {
        assert_eq!(record["value_encoding"], "base64", "{record}");
        assert_eq!(record["value"], b64(bytes), "{record}");
    }
}
