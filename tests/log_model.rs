//! Model-based property test of the log store: random sequences of appends (random sizes,
//! keys, headers, batch sizes), reads (random offsets and limits), reopens and retention by
//! bytes, checked against a `Vec<Record>`. What retention removes must be a prefix of the
//! model; everything else must read back identical.

use std::path::Path;

use outpost::log::{
    FsyncPolicy, Log, LogConfig, NamedFsync, NewRecord, Record, Topic, TopicConfig,
};
use proptest::prelude::*;

const TOPIC: &str = "model";
const RETENTION_BYTES: u64 = 12_000;

#[derive(Debug, Clone)]
struct GenRecord {
    key: Option<Vec<u8>>,
    value_len: usize,
    fill: u8,
    headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<GenRecord>),
    Read {
        offset_permille: u16,
        max_records: usize,
        max_bytes: usize,
    },
    Reopen,
    Retain,
}

fn gen_record() -> impl Strategy<Value = GenRecord> {
    let key = prop::option::of(prop::collection::vec(any::<u8>(), 0..12));
    let value_len = prop_oneof![8 => 0usize..400, 1 => 400usize..3000, 1 => 4000usize..9000];
    let header = (
        prop::sample::select(vec!["a", "trace-id", "z", "outpost-edge"]),
        prop::collection::vec(any::<u8>(), 0..6),
    )
        .prop_map(|(n, v)| (n.to_string(), v));
    let headers = prop::collection::vec(header, 0..3);
    (key, value_len, any::<u8>(), headers).prop_map(|(key, value_len, fill, headers)| GenRecord {
        key,
        value_len,
        fill,
        headers,
    })
}

fn gen_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(gen_record(), 1..6).prop_map(Op::Append),
        4 => (0u16..1100, 1usize..40, 0usize..6000)
            .prop_map(|(offset_permille, max_records, max_bytes)| Op::Read { offset_permille, max_records, max_bytes }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Retain),
    ]
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        min_free_bytes: 0,
        retention_check_ms: 3_600_000,
        default_topic: TopicConfig {
            fsync,
            segment_bytes: 4096,
            segment_ms: 3_600_000,
            retention_ms: 0,
            retention_bytes: RETENTION_BYTES,
        },
        ..LogConfig::default()
    }
}

fn size(r: &Record) -> usize {
    r.key.as_ref().map_or(0, Vec::len)
        + r.value.len()
        + r.headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

struct Harness {
    dir: tempfile::TempDir,
    fsync: FsyncPolicy,
    log: Option<Log>,
    topic: Option<Topic>,
    model: Vec<Record>,
    start: u64,
    next_ts: u64,
}

impl Harness {
    fn open(&mut self) {
        let log = Log::open(self.dir.path(), config(self.fsync)).unwrap();
        self.topic = Some(log.topic_or_create(TOPIC).unwrap());
        self.log = Some(log);
    }

    fn topic(&self) -> &Topic {
        self.topic.as_ref().unwrap()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(records) => {
                let first = self.model.len() as u64;
                let mut new = Vec::new();
                for (i, g) in records.iter().enumerate() {
                    self.next_ts += 1 + (i as u64 % 3) * 1000;
                    let value: Vec<u8> = (0..g.value_len)
                        .map(|j| g.fill.wrapping_add(j as u8))
                        .collect();
                    self.model.push(Record {
                        offset: first + i as u64,
                        timestamp_ms: self.next_ts,
                        key: g.key.clone(),
                        value: value.clone(),
                        headers: g.headers.clone(),
                    });
                    new.push(NewRecord {
                        key: g.key.clone(),
                        value,
                        headers: g.headers.clone(),
                        timestamp_ms: Some(self.next_ts),
                    });
                }
                let ack = self.topic().append(new).unwrap();
                prop_assert_eq!(ack.first_offset, first);
                prop_assert_eq!(ack.last_offset, self.model.len() as u64 - 1);
                prop_assert_eq!(self.topic().next_offset(), self.model.len() as u64);
            }
            Op::Read {
                offset_permille,
                max_records,
                max_bytes,
            } => {
                let len = self.model.len() as u64;
                let offset = len * u64::from(*offset_permille) / 1000;
                let f = self.topic().read(offset, *max_records, *max_bytes).unwrap();
                prop_assert_eq!(f.start_offset, self.start);
                let from = offset.max(self.start);
                let mut expected: Vec<&Record> = Vec::new();
                let mut bytes = 0;
                for r in self.model.iter().skip(from as usize).take(*max_records) {
                    if !expected.is_empty() && bytes + size(r) > *max_bytes {
                        break;
                    }
                    bytes += size(r);
                    expected.push(r);
                }
                let got: Vec<&Record> = f.records.iter().collect();
                prop_assert_eq!(
                    &got,
                    &expected,
                    "read({}, {}, {})",
                    offset,
                    max_records,
                    max_bytes
                );
                let next = expected.last().map_or(from.min(len), |r| r.offset + 1);
                prop_assert_eq!(f.next_offset, next);
            }
            Op::Reopen => {
                self.topic = None;
                self.log = None;
                self.open();
                prop_assert_eq!(self.topic().next_offset(), self.model.len() as u64);
                prop_assert_eq!(self.topic().start_offset(), self.start);
            }
            Op::Retain => {
                let before = self.topic().stats();
                let report = self.log.as_ref().unwrap().enforce_retention().unwrap();
                let after = self.topic().stats();
                let start = self.topic().start_offset();
                prop_assert!(start >= self.start && start <= self.model.len() as u64);
                prop_assert_eq!(after.bytes, before.bytes - report.bytes_deleted);
                prop_assert_eq!(after.segments, before.segments - report.segments_deleted);
                prop_assert!(
                    after.bytes <= RETENTION_BYTES || after.segments == 1,
                    "{:?}",
                    after
                );
                prop_assert_eq!(report.segments_deleted == 0, start == self.start);
                self.start = start;
            }
        }
        Ok(())
    }

    fn check_everything(&self) -> Result<(), TestCaseError> {
        let mut next = 0;
        let mut got = Vec::new();
        loop {
            let f = self.topic().read(next, 17, 2000).unwrap();
            if f.records.is_empty() {
                prop_assert_eq!(f.next_offset, self.model.len() as u64);
                break;
            }
            next = f.next_offset;
            got.extend(f.records);
        }
        prop_assert_eq!(&got[..], &self.model[self.start as usize..]);
        Ok(())
    }
}

fn run(fsync: FsyncPolicy, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness {
        dir: tempfile::tempdir().unwrap(),
        fsync,
        log: None,
        topic: None,
        model: Vec::new(),
        start: 0,
        next_ts: 1_700_000_000_000,
    };
    h.open();
    for op in ops {
        h.apply(op)?;
    }
    h.check_everything()?;
    h.apply(&Op::Reopen)?;
    h.check_everything()?;
    assert!(Path::new(h.dir.path()).join(TOPIC).is_dir());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_a_vec_with_a_deleted_prefix(
        never in any::<bool>(),
        ops in prop::collection::vec(gen_op(), 1..60),
    ) {
        let fsync = if never {
            FsyncPolicy::Named(NamedFsync::Never)
        } else {
            FsyncPolicy::Interval { interval_ms: 5 }
        };
        run(fsync, &ops)?;
    }
}

#[test]
fn the_model_test_runs_an_always_topic_through_a_fixed_script() {
    let rec = |value_len, fill| GenRecord {
        key: Some(vec![fill]),
        value_len,
        fill,
        headers: vec![("h".into(), vec![fill])],
    };
    let mut ops = Vec::new();
    for i in 0..30u8 {
        ops.push(Op::Append(vec![
            rec(300 + usize::from(i) * 10, i),
            rec(5, i),
        ]));
        if i % 7 == 0 {
            ops.push(Op::Retain);
            ops.push(Op::Reopen);
        }
        ops.push(Op::Read {
            offset_permille: u16::from(i) * 33,
            max_records: 5,
            max_bytes: 700,
        });
    }
    run(FsyncPolicy::Named(NamedFsync::Always), &ops).unwrap();
}
