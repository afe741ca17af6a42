//! Idempotent producers: producer ids, and sequence numbers checked per producer and topic so
//! that a client's retry never writes a record twice, also across a restart of the box.
//!
//! - **Ids.** `InitProducerId` hands out ids from a counter in the state store (namespace
//!   `kafka`, key `next-producer-id`), committed and synced before the answer, so an id is never
//!   given twice. A producer that initialises again with its id (KIP-360) gets its epoch bumped.
//! - **Where the sequence lives.** Every record of an idempotent batch is stored with the header
//!   `kafka-producer: <id>.<epoch>.<sequence>`. The log is the truth: what this module keeps in
//!   memory (the last sequence and the offsets of the recent ones) is rebuilt from the headers of
//!   the topic's last [`RECOVERY_WINDOW`] records the first time a producer writes to a topic
//!   after a start. So a batch that was stored before a crash but whose answer was lost is
//!   recognised when the client sends it again.
//! - **The checks** (Kafka's): the next batch must start right after the last sequence; a batch
//!   wholly at or below it is a duplicate and is answered with the offset it was stored at,
//!   nothing appended; a gap or a partial overlap is `OUT_OF_ORDER_SEQUENCE_NUMBER`; an epoch
//!   below the known one is `INVALID_PRODUCER_EPOCH`, a higher one starts at sequence 0. A
//!   producer the box knows nothing of (new, or silent for longer than the recovery window) may
//!   start at any sequence.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::handlers::code;
use crate::kernel::lock;
use crate::log::{LogError, NewRecord, Topic};
use crate::state::{Commit, StateOp, StateStore};

/// The header that carries a record's producer id, epoch and sequence.
pub(super) const HEADER: &str = "kafka-producer";
/// How many of a topic's last records are read to rebuild a producer's sequence.
pub(super) const RECOVERY_WINDOW: u64 = 100_000;
/// Offsets of a producer's most recent sequences kept to answer duplicates.
const RECENT: usize = 1000;

const NAMESPACE: &str = "kafka";
const COUNTER_KEY: &[u8] = b"next-producer-id";
const FIRST_ID: i64 = 1000;

/// One producer's progress on one topic.
#[derive(Debug, Default, Clone)]
struct Progress {
    epoch: i16,
    last_seq: i32,
    /// sequence → offset of the recent records.
    offsets: BTreeMap<i32, u64>,
}

impl Progress {
    fn note(&mut self, epoch: i16, seq: i32, offset: u64) {
        if epoch > self.epoch {
            self.offsets.clear();
        }
        self.epoch = epoch;
        self.last_seq = seq;
        self.offsets.insert(seq, offset);
        while self.offsets.len() > RECENT {
            self.offsets.pop_first();
        }
    }
}

/// A batch of an idempotent producer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
}

/// What to do with a batch.
pub(super) enum Verdict {
    /// Append it.
    Append,
    /// Already stored at this offset: answer it, append nothing.
    Duplicate(u64),
}

/// Every idempotent producer the box has seen since it started.
#[derive(Debug, Default)]
pub(super) struct Producers {
    progress: Mutex<HashMap<(i64, String), Progress>>,
    ids: Mutex<()>,
}

impl Producers {
    /// A new producer id (blocking: commits and syncs the state store).
    pub(super) fn allocate(&self, state: &StateStore) -> Result<i64, String> {
        let _one_at_a_time = lock(&self.ids);
        let next = match state
            .get(NAMESPACE, COUNTER_KEY)
            .map_err(|e| e.to_string())?
        {
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(i64::from_be_bytes)
                .map_err(|_| "the stored producer-id counter is damaged".to_string())?,
            None => FIRST_ID,
        };
        let commit = Commit {
            consumer: "kafka-producers".into(),
            offsets: Vec::new(),
            namespace: NAMESPACE.into(),
            ops: vec![StateOp::Put {
                key: COUNTER_KEY.to_vec(),
                value: (next + 1).to_be_bytes().to_vec(),
            }],
        };
        state.commit(&commit).map_err(|e| e.to_string())?;
        state.sync().map_err(|e| e.to_string())?;
        Ok(next)
    }

    /// Checks `batch` of `count` records against what is known of its producer on `topic`
    /// (rebuilding that from the log the first time; blocking).
    pub(super) fn check(
        &self,
        topic: &Topic,
        batch: Batch,
        count: usize,
    ) -> Result<Verdict, (i16, String)> {
        let key = (batch.producer_id, topic.name().to_string());
        let known = lock(&self.progress).get(&key).cloned();
        let progress = match known {
            Some(p) => Some(p),
            None => recover(topic, batch.producer_id)
                .map_err(|e| (code::UNKNOWN_SERVER_ERROR, e.to_string()))?,
        };
        let Some(progress) = progress else {
            return Ok(Verdict::Append);
        };
        lock(&self.progress).insert(key, progress.clone());
        let last_seq = batch.first_seq.saturating_add(count as i32 - 1);
        if batch.epoch < progress.epoch {
            return Err((
                code::INVALID_PRODUCER_EPOCH,
                format!(
                    "producer {} epoch {} is older than epoch {}",
                    batch.producer_id, batch.epoch, progress.epoch
                ),
            ));
        }
        if batch.epoch > progress.epoch {
            return if batch.first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err((
                    code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    format!(
                        "a new epoch must start at sequence 0, not {}",
                        batch.first_seq
                    ),
                ))
            };
        }
        if batch.first_seq == progress.last_seq.wrapping_add(1) {
            return Ok(Verdict::Append);
        }
        if last_seq <= progress.last_seq {
            if let Some(offset) = progress.offsets.get(&batch.first_seq) {
                return Ok(Verdict::Duplicate(*offset));
            }
        }
        Err((
            code::OUT_OF_ORDER_SEQUENCE_NUMBER,
            format!(
                "producer {} sent sequence {}..={} after {}",
                batch.producer_id, batch.first_seq, last_seq, progress.last_seq
            ),
        ))
    }

    /// Marks `records` with the batch's producer header (before the append).
    pub(super) fn stamp(batch: Batch, records: &mut [NewRecord]) {
        for (i, r) in records.iter_mut().enumerate() {
            let seq = batch.first_seq.wrapping_add(i as i32);
            r.headers.push((
                HEADER.to_string(),
                format!("{}.{}.{}", batch.producer_id, batch.epoch, seq).into_bytes(),
            ));
        }
    }

    /// Records that the batch was stored from `base` on.
    pub(super) fn appended(&self, topic: &str, batch: Batch, count: usize, base: u64) {
        let mut all = lock(&self.progress);
        let progress = all
            .entry((batch.producer_id, topic.to_string()))
            .or_default();
        for i in 0..count {
            progress.note(
                batch.epoch,
                batch.first_seq.wrapping_add(i as i32),
                base + i as u64,
            );
        }
    }
}

/// Parses a `kafka-producer` header value.
fn parse(value: &[u8]) -> Option<(i64, i16, i32)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('.');
    let id = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((id, epoch, seq))
}

/// The progress of `producer_id` on `topic` from the headers of its last records.
fn recover(topic: &Topic, producer_id: i64) -> Result<Option<Progress>, LogError> {
    let from = topic
        .next_offset()
        .saturating_sub(RECOVERY_WINDOW)
        .max(topic.start_offset());
    let mut found: Option<Progress> = None;
    super::records::scan(topic, from, |r| {
        let ours = r
            .headers
            .iter()
            .find(|(n, _)| n == HEADER)
            .and_then(|(_, value)| parse(value))
            .filter(|(id, ..)| *id == producer_id);
        if let Some((_, epoch, seq)) = ours {
            found
                .get_or_insert_with(Progress::default)
                .note(epoch, seq, r.offset);
        }
        true
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_headers_round_trip() {
        let mut records = vec![
            NewRecord {
                key: None,
                value: b"a".to_vec(),
                headers: vec![],
                timestamp_ms: None,
            };
            2
        ];
        let batch = Batch {
            producer_id: 1001,
            epoch: 2,
            first_seq: 7,
        };
        Producers::stamp(batch, &mut records);
        assert_eq!(parse(&records[1].headers[0].1), Some((1001, 2, 8)));
    }
}
