//! Kafka record batches ⇄ log records.
//!
//! In: every batch of a produce request (record batch v2, any codec the `kafka-protocol` crate
//! decodes: none, gzip, snappy, lz4, zstd; the batch CRC is checked) becomes log records: key,
//! value (a null value is stored as empty bytes), headers (a null header value as empty bytes),
//! and the client's timestamp (CreateTime; none when the client sent -1).
//! Out: stored records become one uncompressed v2 batch carrying the log's offsets and
//! timestamps (CreateTime), whatever offset the fetch starts at.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};

use super::handlers::code;
use super::producers::Batch;
use crate::log::{Fetch, LogError, NewRecord, Record, Topic};

/// The records of one partition of a produce request, batch by batch: each with its
/// idempotent producer's id, epoch and first sequence when it has one.
pub(super) struct Incoming {
    pub batches: Vec<(Option<Batch>, Vec<NewRecord>)>,
}

/// Decodes every batch in `bytes`; checks each record against `max_record_bytes`.
pub(super) fn decode_batches(
    mut bytes: Bytes,
    max_record_bytes: usize,
) -> Result<Incoming, (i16, String)> {
    let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| {
        (
            code::CORRUPT_MESSAGE,
            format!("a record batch does not decode: {e}"),
        )
    })?;
    let mut batches = Vec::new();
    for set in sets {
        let mut records = Vec::new();
        let producer = set.records.first().and_then(|r| {
            (r.producer_id >= 0 && r.sequence >= 0).then_some(Batch {
                producer_id: r.producer_id,
                epoch: r.producer_epoch,
                first_seq: r.sequence,
            })
        });
        if set.version != 2 {
            return Err((
                code::CORRUPT_MESSAGE,
                format!("record batch version {} (only v2 is accepted)", set.version),
            ));
        }
        for r in set.records {
            if r.transactional || r.control {
                return Err((
                    code::INVALID_RECORD,
                    "transactional batches are not supported by this box".into(),
                ));
            }
            let record = NewRecord {
                key: r.key.map(|k| k.to_vec()),
                value: r.value.map(|v| v.to_vec()).unwrap_or_default(),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(name, value)| {
                        (
                            name.to_string(),
                            value.map(|v| v.to_vec()).unwrap_or_default(),
                        )
                    })
                    .collect(),
                timestamp_ms: u64::try_from(r.timestamp).ok(),
            };
            let size = record.payload_size();
            if size > max_record_bytes {
                return Err((
                    code::MESSAGE_TOO_LARGE,
                    format!(
                        "a record of {size} bytes is larger than the box's `log.max_record_bytes` ({max_record_bytes})"
                    ),
                ));
            }
            records.push(record);
        }
        batches.push((producer, records));
    }
    Ok(Incoming { batches })
}

/// Reads `topic` from `offset` as a Kafka reader does: a range the log lost or found damaged
/// is stepped over (Kafka offsets may jump, as in compacted topics; the next batch's base
/// offset shows the jump). Blocking.
pub(super) fn read_over_gaps(
    topic: &Topic,
    mut offset: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Fetch, LogError> {
    loop {
        match topic.read(offset, max_records, max_bytes) {
            Err(LogError::Gap { next_offset, .. }) if next_offset > offset => offset = next_offset,
            other => return other,
        }
    }
}

/// Calls `visit` on every stored record of `topic` from `offset` to the current end, in
/// order, over gaps, until it returns `false`. Blocking.
pub(super) fn scan(
    topic: &Topic,
    mut offset: u64,
    mut visit: impl FnMut(&Record) -> bool,
) -> Result<(), LogError> {
    let end = topic.next_offset();
    while offset < end {
        let fetched = read_over_gaps(topic, offset, 10_000, 16 << 20)?;
        if fetched.records.is_empty() {
            break;
        }
        if !fetched.records.iter().all(&mut visit) {
            break;
        }
        offset = fetched.next_offset;
    }
    Ok(())
}

/// Encodes stored records as one uncompressed record batch v2 with their log offsets.
pub(super) fn encode_records(records: &[Record]) -> Result<Bytes, String> {
    if records.is_empty() {
        return Ok(Bytes::new());
    }
    let kafka: Vec<KafkaRecord> = records
        .iter()
        .map(|r| KafkaRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: r.offset as i64,
            sequence: -1,
            timestamp: r.timestamp_ms as i64,
            key: r.key.as_ref().map(|k| Bytes::copy_from_slice(k)),
            value: Some(Bytes::copy_from_slice(&r.value)),
            headers: r
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        kafka_protocol::protocol::StrBytes::from_string(n.clone()),
                        Some(Bytes::copy_from_slice(v)),
                    )
                })
                .collect(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        kafka.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(offset: u64, value: &[u8]) -> Record {
        Record {
            offset,
            timestamp_ms: 1_700_000_000_000 + offset,
            key: Some(format!("k{offset}").into_bytes()),
            value: value.to_vec(),
            headers: vec![("h".into(), b"v".to_vec())],
        }
    }

    #[test]
    fn stored_records_go_out_with_their_log_offsets_and_come_back_as_the_same_records() {
        let records = vec![stored(41, b"{\"a\":1}"), stored(42, b""), stored(43, b"x")];
        let bytes = encode_records(&records).unwrap();
        let mut again = bytes.clone();
        let sets = RecordBatchDecoder::decode_all(&mut again).unwrap();
        let offsets: Vec<i64> = sets
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.offset))
            .collect();
        assert_eq!(offsets, [41, 42, 43]);
        let incoming = decode_batches(bytes, 1 << 20).unwrap();
        assert!(incoming
            .batches
            .iter()
            .all(|(producer, _)| producer.is_none()));
        let back: Vec<&NewRecord> = incoming.batches.iter().flat_map(|(_, r)| r).collect();
        for (back, orig) in back.iter().zip(&records) {
            assert_eq!(back.key, orig.key);
            assert_eq!(back.value, orig.value);
            assert_eq!(back.headers, orig.headers);
            assert_eq!(back.timestamp_ms, Some(orig.timestamp_ms));
        }
    }

    #[test]
    fn a_record_over_the_size_limit_or_a_broken_batch_is_refused_with_its_code() {
        let bytes = encode_records(&[stored(0, &[7u8; 100])]).unwrap();
        let (code, message) = decode_batches(bytes.clone(), 50).err().unwrap();
        assert_eq!(code, code::MESSAGE_TOO_LARGE, "{message}");
        let mut broken = bytes.to_vec();
        let last = broken.len() - 1;
        broken[last] ^= 0xff;
        let (code, message) = decode_batches(Bytes::from(broken), 1 << 20).err().unwrap();
        assert_eq!(code, code::CORRUPT_MESSAGE, "{message}");
    }
}
