//! The byte layout of a batch: encoding appended records into one CRC32C-checked batch and
//! decoding (and checking) batches read back from a segment file. The layout itself is
//! documented in the `log` module's doc; the constants here are its single source of truth.

use super::{NewRecord, Record};

/// The four bytes every batch starts with.
pub(crate) const MAGIC: [u8; 4] = *b"OPLB";
/// The batch format version written by this build: its checksum also covers the length field.
pub(crate) const VERSION: u8 = 2;
/// The first version, still read: its checksum covers bytes 12.. only.
pub(crate) const VERSION_1: u8 = 1;
/// Bytes of the fixed batch header (records follow it).
pub(crate) const HEADER_LEN: usize = 44;
/// The CRC covers everything from this byte of the batch to its end (and, from version 2,
/// the length field too: [`LENGTH_FIELD`]).
const CRC_START: usize = 12;
/// Bytes of the length field, covered by the checksum from version 2 on.
const LENGTH_FIELD: std::ops::Range<usize> = 4..8;
/// Largest batch (header included) this build writes or accepts.
pub(crate) const MAX_BATCH_BYTES: usize = 1 << 30;
/// Fewest bytes one encoded record can take (five one-byte varints).
const MIN_RECORD_BYTES: u64 = 5;

/// What is wrong with bytes that were supposed to be a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// Every byte of the header is zero: preallocated or never written space.
    Zeroed,
    /// The header's fields are impossible (bad magic, version, reserved bits, length, count).
    Header(String),
    /// The stored checksum does not match the bytes.
    Checksum { stored: u32, computed: u32 },
    /// The checksum matched but the records inside do not parse.
    Records(String),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Zeroed => write!(f, "zero-filled space where a batch header should be"),
            Malformed::Header(detail) => write!(f, "bad batch header: {detail}"),
            Malformed::Checksum { stored, computed } => write!(
                f,
                "batch checksum mismatch: stored crc32c {stored:#010x}, computed {computed:#010x}"
            ),
            Malformed::Records(detail) => write!(f, "bad record inside a batch: {detail}"),
        }
    }
}

/// The fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    /// The format version (1 or 2): says which bytes the checksum covers.
    pub version: u8,
    /// Bytes after the length field (the whole batch is `8 + length` bytes).
    pub length: u32,
    pub crc: u32,
    pub base_offset: u64,
    pub record_count: u32,
    /// Wall-clock time of the append (ms); drives roll and retention by age.
    pub append_time_ms: u64,
    /// Timestamp the records' timestamp deltas are relative to.
    pub base_timestamp_ms: u64,
}

impl BatchHeader {
    /// Bytes of the whole batch.
    pub(super) fn total_len(&self) -> u64 {
        8 + u64::from(self.length)
    }
    /// The offset after the batch's last record.
    pub(super) fn end_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.record_count))
    }
}

/// Size of a record as counted against `max_record_bytes` and fetch byte limits: key, value,
/// and every header's name and value.
pub(crate) fn payload_size(
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(String, Vec<u8>)],
) -> usize {
    key.map_or(0, <[u8]>::len)
        + value.len()
        + headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn get_varint(data: &[u8], pos: &mut usize) -> Result<u64, Malformed> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = data.get(*pos) else {
            return Err(Malformed::Records(
                "varint runs past the end of the batch".into(),
            ));
        };
        *pos += 1;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(Malformed::Records("varint overflows 64 bits".into()));
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed::Records("varint longer than 10 bytes".into()))
}

fn get_bytes<'a>(data: &'a [u8], pos: &mut usize, len: u64) -> Result<&'a [u8], Malformed> {
    let len = usize::try_from(len).map_err(|_| Malformed::Records("length overflows".into()))?;
    let end = pos
        .checked_add(len)
        .filter(|end| *end <= data.len())
        .ok_or_else(|| {
            Malformed::Records(format!(
                "a field of {len} bytes runs past the end of its record"
            ))
        })?;
    let out = &data[*pos..end];
    *pos = end;
    Ok(out)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Length of a record's body (everything after its own length varint).
fn record_body_len(r: &NewRecord, ts_delta: u64) -> usize {
    let mut n = varint_len(ts_delta);
    n += match &r.key {
        Some(k) => varint_len(k.len() as u64 + 1) + k.len(),
        None => 1,
    };
    n += varint_len(r.value.len() as u64) + r.value.len();
    n += varint_len(r.headers.len() as u64);
    for (name, value) in &r.headers {
        n += varint_len(name.len() as u64)
            + name.len()
            + varint_len(value.len() as u64)
            + value.len();
    }
    n
}

/// Encodes `records` as one batch whose base offset and checksum are filled in later by
/// [`finalize_batch`]. `now_ms` is the append time and the timestamp of records without one.
/// Returns the would-be size as the error when the batch exceeds [`MAX_BATCH_BYTES`].
pub(crate) fn encode_batch(records: &[NewRecord], now_ms: u64) -> Result<Vec<u8>, usize> {
    let base_ts = records
        .first()
        .and_then(|r| r.timestamp_ms)
        .unwrap_or(now_ms);
    let delta =
        |r: &NewRecord| zigzag(r.timestamp_ms.unwrap_or(now_ms).wrapping_sub(base_ts) as i64);
    let mut total = HEADER_LEN;
    for r in records {
        let body = record_body_len(r, delta(r));
        total = total.saturating_add(varint_len(body as u64) + body);
    }
    if total > MAX_BATCH_BYTES {
        return Err(total);
    }
    let mut buf = Vec::with_capacity(total);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&((total - 8) as u32).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes()); // crc, set by finalize_batch
    buf.push(VERSION);
    buf.push(0); // attributes
    buf.extend_from_slice(&0u16.to_le_bytes()); // reserved
    buf.extend_from_slice(&0u64.to_le_bytes()); // base offset, set by finalize_batch
    buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    buf.extend_from_slice(&now_ms.to_le_bytes());
    buf.extend_from_slice(&base_ts.to_le_bytes());
    for r in records {
        let d = delta(r);
        put_varint(&mut buf, record_body_len(r, d) as u64);
        put_varint(&mut buf, d);
        match &r.key {
            Some(k) => {
                put_varint(&mut buf, k.len() as u64 + 1);
                buf.extend_from_slice(k);
            }
            None => put_varint(&mut buf, 0),
        }
        put_varint(&mut buf, r.value.len() as u64);
        buf.extend_from_slice(&r.value);
        put_varint(&mut buf, r.headers.len() as u64);
        for (name, value) in &r.headers {
            put_varint(&mut buf, name.len() as u64);
            buf.extend_from_slice(name.as_bytes());
            put_varint(&mut buf, value.len() as u64);
            buf.extend_from_slice(value);
        }
    }
    debug_assert_eq!(buf.len(), total);
    Ok(buf)
}

/// Sets the base offset of an encoded batch and computes its checksum (by the rule of the
/// version in its header).
pub(crate) fn finalize_batch(batch: &mut [u8], base_offset: u64) {
    batch[16..24].copy_from_slice(&base_offset.to_le_bytes());
    let crc = checksum(batch[12], batch);
    batch[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// The checksum of a whole batch by the rule of `version`: version 1 covers bytes 12..end,
/// version 2 the length field (bytes 4..8) and then bytes 12..end.
fn checksum(version: u8, batch: &[u8]) -> u32 {
    if version == VERSION_1 {
        crc32c::crc32c(&batch[CRC_START..])
    } else {
        crc32c::crc32c_append(crc32c::crc32c(&batch[LENGTH_FIELD]), &batch[CRC_START..])
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses and sanity-checks a batch header from the first [`HEADER_LEN`] bytes of `bytes`.
/// The checksum is not verified here (see [`verify_batch`]).
pub(crate) fn parse_header(bytes: &[u8]) -> Result<BatchHeader, Malformed> {
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Err(Malformed::Header(format!(
            "only {} bytes, a header needs {HEADER_LEN}",
            bytes.len()
        )));
    };
    if h.iter().all(|b| *b == 0) {
        return Err(Malformed::Zeroed);
    }
    if h[0..4] != MAGIC {
        return Err(Malformed::Header(format!("bad magic {:02x?}", &h[0..4])));
    }
    if h[12] != VERSION && h[12] != VERSION_1 {
        return Err(Malformed::Header(format!(
            "unknown format version {} (this build reads versions {VERSION_1} and {VERSION})",
            h[12]
        )));
    }
    if h[13] != 0 || h[14] != 0 || h[15] != 0 {
        return Err(Malformed::Header("reserved attribute bits are set".into()));
    }
    let header = BatchHeader {
        version: h[12],
        length: le_u32(h, 4),
        crc: le_u32(h, 8),
        base_offset: le_u64(h, 16),
        record_count: le_u32(h, 24),
        append_time_ms: le_u64(h, 28),
        base_timestamp_ms: le_u64(h, 36),
    };
    let min_len = (HEADER_LEN as u64 - 8) + u64::from(header.record_count) * MIN_RECORD_BYTES;
    if header.record_count == 0 {
        return Err(Malformed::Header("a batch with zero records".into()));
    }
    if u64::from(header.length) < min_len || header.total_len() > MAX_BATCH_BYTES as u64 {
        return Err(Malformed::Header(format!(
            "impossible length {} for {} records",
            header.length, header.record_count
        )));
    }
    if header
        .base_offset
        .checked_add(u64::from(header.record_count))
        .is_none()
    {
        return Err(Malformed::Header("base offset overflows".into()));
    }
    Ok(header)
}

/// Checks a whole batch (`batch.len() == header.total_len()`): its checksum, then that its
/// records parse and fill the batch exactly.
pub(crate) fn verify_batch(header: &BatchHeader, batch: &[u8]) -> Result<(), Malformed> {
    let computed = checksum(header.version, batch);
    if computed != header.crc {
        return Err(Malformed::Checksum {
            stored: header.crc,
            computed,
        });
    }
    let mut pos = HEADER_LEN;
    for _ in 0..header.record_count {
        let len = get_varint(batch, &mut pos)?;
        let body = get_bytes(batch, &mut pos, len)?;
        parse_record_body(body, header, 0)?;
    }
    if pos != batch.len() {
        return Err(Malformed::Records(format!(
            "{} bytes left over after the last record",
            batch.len() - pos
        )));
    }
    Ok(())
}

fn parse_record_body(body: &[u8], header: &BatchHeader, offset: u64) -> Result<Record, Malformed> {
    let mut pos = 0;
    let delta = unzigzag(get_varint(body, &mut pos)?);
    let timestamp_ms = header.base_timestamp_ms.wrapping_add(delta as u64);
    let key = match get_varint(body, &mut pos)? {
        0 => None,
        n => Some(get_bytes(body, &mut pos, n - 1)?.to_vec()),
    };
    let value_len = get_varint(body, &mut pos)?;
    let value = get_bytes(body, &mut pos, value_len)?.to_vec();
    let count = get_varint(body, &mut pos)?;
    if count > body.len() as u64 {
        return Err(Malformed::Records(format!(
            "impossible header count {count}"
        )));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = get_varint(body, &mut pos)?;
        let name = get_bytes(body, &mut pos, name_len)?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| Malformed::Records("a header name is not UTF-8".into()))?;
        let value_len = get_varint(body, &mut pos)?;
        headers.push((name, get_bytes(body, &mut pos, value_len)?.to_vec()));
    }
    if pos != body.len() {
        return Err(Malformed::Records(format!(
            "{} bytes left over in a record",
            body.len() - pos
        )));
    }
    Ok(Record {
        offset,
        timestamp_ms,
        key,
        value,
        headers,
    })
}

/// Limits of one fetch, shared across the batches it decodes.
#[derive(Debug)]
pub(crate) struct Take {
    /// Records at lower offsets are skipped.
    pub from: u64,
    /// Records at this offset or above are not returned.
    pub until: u64,
    pub max_records: usize,
    pub max_bytes: usize,
    /// Payload bytes collected so far.
    pub bytes: usize,
    /// True once a limit stopped the fetch.
    pub full: bool,
}

/// Decodes the records of a verified batch into `out`, honouring `take`'s limits (at least one
/// record is taken when `out` is empty).
pub(crate) fn decode_records(
    header: &BatchHeader,
    batch: &[u8],
    take: &mut Take,
    out: &mut Vec<Record>,
) -> Result<(), Malformed> {
    let mut pos = HEADER_LEN;
    for i in 0..u64::from(header.record_count) {
        let offset = header.base_offset + i;
        let len = get_varint(batch, &mut pos)?;
        let body = get_bytes(batch, &mut pos, len)?;
        if offset < take.from {
            continue;
        }
        if offset >= take.until || out.len() >= take.max_records {
            take.full |= out.len() >= take.max_records;
            return Ok(());
        }
        let record = parse_record_body(body, header, offset)?;
        let size = record.payload_size();
        if !out.is_empty() && take.bytes.saturating_add(size) > take.max_bytes {
            take.full = true;
            return Ok(());
        }
        take.bytes = take.bytes.saturating_add(size);
        out.push(record);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        ts: Option<u64>,
    ) -> NewRecord {
        NewRecord {
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), v.to_vec()))
                .collect(),
            timestamp_ms: ts,
        }
    }

    fn decode_all(batch: &[u8]) -> Vec<Record> {
        let header = parse_header(batch).unwrap();
        assert_eq!(header.total_len(), batch.len() as u64);
        verify_batch(&header, batch).unwrap();
        let mut take = Take {
            from: 0,
            until: u64::MAX,
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            bytes: 0,
            full: false,
        };
        let mut out = Vec::new();
        decode_records(&header, batch, &mut take, &mut out).unwrap();
        out
    }

    #[test]
    fn a_batch_round_trips_keys_values_headers_and_timestamps() {
        let records = vec![
            rec(
                Some(b"k1"),
                b"hello",
                &[("a", b"1"), ("b", b"")],
                Some(1_000),
            ),
            rec(None, b"", &[], None),
            rec(Some(b""), &[7u8; 300], &[("z", &[0u8; 200])], Some(5)),
            rec(None, b"x", &[], Some(u64::MAX)),
        ];
        let mut batch = encode_batch(&records, 2_000).unwrap();
        finalize_batch(&mut batch, 41);
        let header = parse_header(&batch).unwrap();
        assert_eq!(header.base_offset, 41);
        assert_eq!(header.record_count, 4);
        assert_eq!(header.append_time_ms, 2_000);
        let out = decode_all(&batch);
        let expected_ts = [1_000, 2_000, 5, u64::MAX];
        for (i, (got, want)) in out.iter().zip(&records).enumerate() {
            assert_eq!(got.offset, 41 + i as u64);
            assert_eq!(got.timestamp_ms, expected_ts[i]);
            assert_eq!(got.key, want.key);
            assert_eq!(got.value, want.value);
            assert_eq!(got.headers, want.headers);
        }
        assert_eq!(out.len(), 4);
    }

    /// What a reader does with `bad`: parse the header, take the bytes the header claims (cut
    /// short, or followed by zeros as in a preallocated file, up to 1 MiB; a longer claim runs
    /// past the data and is reported as a torn batch) and verify them.
    fn read_as_reader_would(bad: &[u8]) -> Result<Vec<Record>, Malformed> {
        let h = parse_header(bad)?;
        let claimed = usize::try_from(h.total_len()).unwrap();
        if claimed > (1 << 20) {
            return Err(Malformed::Header("the batch runs past the data".into()));
        }
        let mut extent = bad.to_vec();
        extent.resize(claimed, 0);
        verify_batch(&h, &extent)?;
        let mut take = Take {
            from: 0,
            until: u64::MAX,
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            bytes: 0,
            full: false,
        };
        let mut out = Vec::new();
        decode_records(&h, &extent, &mut take, &mut out)?;
        Ok(out)
    }

    #[test]
    fn every_single_bit_flip_in_a_version_2_batch_is_detected_length_field_included() {
        let records = vec![rec(Some(b"key"), b"value value", &[("h", b"v")], Some(9))];
        let mut batch = encode_batch(&records, 10).unwrap();
        finalize_batch(&mut batch, 3);
        assert_eq!(batch[12], VERSION);
        assert_eq!(VERSION, 2);
        let stored = le_u32(&batch, 8);
        for byte in 0..batch.len() {
            for bit in 0..8 {
                let mut bad = batch.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    read_as_reader_would(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
                if LENGTH_FIELD.contains(&byte) {
                    // Whatever the reader then takes as the batch: the checksum over the
                    // original bytes already fails, because it covers the length field.
                    assert_ne!(checksum(VERSION, &bad), stored, "byte {byte} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn a_version_1_batch_still_decodes_and_its_covered_bytes_are_checked() {
        let records = vec![
            rec(Some(b"k"), b"old format", &[("h", b"1")], Some(5)),
            rec(None, b"second", &[], Some(6)),
        ];
        let mut batch = encode_batch(&records, 10).unwrap();
        batch[12] = VERSION_1;
        finalize_batch(&mut batch, 70);
        assert_eq!(
            le_u32(&batch, 8),
            crc32c::crc32c(&batch[CRC_START..]),
            "a version 1 checksum covers bytes 12.. only"
        );
        let out = decode_all(&batch);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].offset, out[1].offset), (70, 71));
        assert_eq!(out[0].value, b"old format");
        assert_eq!(out[1].timestamp_ms, 6);
        for byte in (0..batch.len()).filter(|b| !LENGTH_FIELD.contains(b)) {
            let mut bad = batch.clone();
            bad[byte] ^= 1 << (byte % 8);
            assert!(
                read_as_reader_would(&bad).is_err(),
                "flip in byte {byte} of a version 1 batch went unnoticed"
            );
        }
    }

    #[test]
    fn an_unknown_version_is_refused_with_a_message_naming_it() {
        let mut batch = encode_batch(&[rec(None, b"v", &[], Some(1))], 1).unwrap();
        batch[12] = 3;
        finalize_batch(&mut batch, 0);
        let err = parse_header(&batch).unwrap_err();
        assert!(
            err.to_string().contains("unknown format version 3"),
            "{err}"
        );
    }

    #[test]
    fn decode_honours_record_and_byte_limits_but_takes_at_least_one() {
        let records: Vec<_> = (0..10u8)
            .map(|i| rec(None, &[i; 100], &[], Some(1)))
            .collect();
        let mut batch = encode_batch(&records, 1).unwrap();
        finalize_batch(&mut batch, 100);
        let header = parse_header(&batch).unwrap();
        let mut out = Vec::new();
        let mut take = Take {
            from: 103,
            until: u64::MAX,
            max_records: 100,
            max_bytes: 250,
            bytes: 0,
            full: false,
        };
        decode_records(&header, &batch, &mut take, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![103, 104]
        );
        assert!(take.full);
        let mut out = Vec::new();
        let mut take = Take {
            from: 0,
            until: 108,
            max_records: 100,
            max_bytes: 1,
            bytes: 0,
            full: false,
        };
        decode_records(&header, &batch, &mut take, &mut out).unwrap();
        assert_eq!(out.len(), 1, "one record even though it exceeds max_bytes");
        let mut out = Vec::new();
        let mut take = Take {
            from: 0,
            until: 102,
            max_records: 100,
            max_bytes: usize::MAX,
            bytes: 0,
            full: false,
        };
        decode_records(&header, &batch, &mut take, &mut out).unwrap();
        assert_eq!(out.len(), 2, "records at or above `until` are not returned");
    }

    #[test]
    fn zeroed_and_truncated_headers_are_recognised() {
        assert_eq!(parse_header(&[0u8; HEADER_LEN]), Err(Malformed::Zeroed));
        assert!(matches!(
            parse_header(&[1u8; 10]),
            Err(Malformed::Header(_))
        ));
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v));
            let mut pos = 0;
            assert_eq!(get_varint(&buf, &mut pos), Ok(v));
        }
        for v in [0i64, 1, -1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut pos = 0;
        assert!(get_varint(&[0xff; 11], &mut pos).is_err());
    }
}
