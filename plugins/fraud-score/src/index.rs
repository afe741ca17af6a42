//! Expiry of idle cards. The ABI has no timers and no way to list keys, so fraud-score keeps
//! its own index of cards by time bucket and sweeps it a little at a time:
//!
//! - **Lazily**: a card whose last activity is older than `card_ttl_ms` is treated as a new card
//!   the next time it is seen (`CardState::expired`). This alone decides every score, so *when*
//!   the sweep below deletes a card never changes a result (a replay after a restart that
//!   sweeps at other moments scores identically).
//! - **Index**: every card state is registered in exactly one bucket of `index_bucket_ms`
//!   (a day by default): `x/<bucket>` holds how many cards were registered there (`u32`), and
//!   `x/<bucket>/<chunk>` the card ids, 64 per chunk, each as `u16` length + bytes. The card
//!   records its bucket (+1, 0 = none) in its own state. A card is registered when its state is
//!   created, in the bucket of that moment (always after the sweep cursor's bucket).
//! - **Sweep**: `x/cursor` (`u32` bucket, `u32` next entry) walks the buckets in order. A
//!   bucket is swept once all of it is older than the TTL (`(bucket + 1) × index_bucket_ms +
//!   card_ttl_ms < now`). For each entry: a card gone or registered elsewhere is skipped; an
//!   idle card is deleted; a card active since is moved to the bucket of its last activity
//!   (always after the cursor). A finished chunk, and a finished bucket's count, are deleted.
//!   One sweep step looks at no more than `sweep_batch` entries or empty buckets, and runs on
//!   about one record in `sweep_every_records` (chosen by a hash of the record, so
//!   deterministically).
//!
//! So the index holds one entry per live card (about card id + 2 bytes) plus at most one
//! partly filled chunk per bucket, and a card idle for the TTL is deleted within about one
//! bucket plus the time the sweep needs to reach it (`sweep_batch / sweep_every_records`
//! entries per record: two by default, far above the rate new cards arrive at).
//! The blocklist entries (`bl/<card_id>`) are not swept: they last until the blocklist says
//! `remove`.

use outpost_sdk::{Context, Error};

use crate::card::{CardState, Loaded};

/// Card ids per chunk.
pub const CHUNK: u32 = 64;
const CURSOR_KEY: &[u8] = b"x/cursor";

/// What one sweep step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Index entries looked at.
    pub examined: u32,
    /// Idle cards deleted.
    pub deleted: u32,
    /// Active cards moved to a later bucket.
    pub moved: u32,
}

/// The index's settings and reused buffers.
#[derive(Debug, Default)]
pub struct Index {
    bucket_ms: u64,
    ttl_ms: u64,
    batch: u32,
    key: Vec<u8>,
    value: Vec<u8>,
    chunk: Vec<u8>,
    card_key: Vec<u8>,
}

fn u32_of(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn count_key(key: &mut Vec<u8>, bucket: u32) {
    key.clear();
    key.extend_from_slice(format!("x/{bucket}").as_bytes());
}

fn chunk_key(key: &mut Vec<u8>, bucket: u32, chunk: u32) {
    key.clear();
    key.extend_from_slice(format!("x/{bucket}/{chunk}").as_bytes());
}

/// The `n`th id of a chunk (ids are `u16` length + bytes).
fn nth_id(chunk: &[u8], n: u32) -> Option<&[u8]> {
    let mut at = 0usize;
    for i in 0..=n {
        let len = usize::from(u16::from_le_bytes([*chunk.get(at)?, *chunk.get(at + 1)?]));
        let id = chunk.get(at + 2..at + 2 + len)?;
        if i == n {
            return Some(id);
        }
        at += 2 + len;
    }
    None
}

impl Index {
    /// An index of buckets of `bucket_ms` for cards that expire after `ttl_ms`, sweeping at
    /// most `batch` entries a step.
    pub fn new(bucket_ms: u64, ttl_ms: u64, batch: u32) -> Index {
        Index {
            bucket_ms,
            ttl_ms,
            batch,
            ..Index::default()
        }
    }

    fn bucket_of(&self, ts_ms: u64) -> u32 {
        (ts_ms / self.bucket_ms.max(1)).min(u64::from(u32::MAX - 1)) as u32
    }

    fn cursor(&mut self, ctx: &mut dyn Context) -> Result<Option<(u32, u32)>, Error> {
        if !ctx.state_get_into(CURSOR_KEY, &mut self.value)? {
            return Ok(None);
        }
        Ok(u32_of(&self.value, 0).zip(u32_of(&self.value, 4)))
    }

    fn set_cursor(ctx: &mut dyn Context, bucket: u32, next: u32) -> Result<(), Error> {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&bucket.to_le_bytes());
        v[4..].copy_from_slice(&next.to_le_bytes());
        ctx.state_put(CURSOR_KEY, &v)
    }

    /// Registers `card_id` in the bucket of `ts_ms`, or the one after the sweep cursor's if
    /// that is later (never the bucket being swept, whose finished chunks are gone), and
    /// returns what the card records as its bucket (bucket + 1).
    pub fn register(
        &mut self,
        ctx: &mut dyn Context,
        card_id: &[u8],
        ts_ms: u64,
    ) -> Result<u32, Error> {
        let wanted = self.bucket_of(ts_ms);
        let cursor = match self.cursor(ctx)? {
            Some((at, _)) => at,
            None => {
                Self::set_cursor(ctx, wanted, 0)?;
                wanted
            }
        };
        let bucket = wanted.max(cursor + 1);
        self.append(ctx, bucket, card_id)?;
        Ok(bucket + 1)
    }

    fn append(&mut self, ctx: &mut dyn Context, bucket: u32, card_id: &[u8]) -> Result<(), Error> {
        count_key(&mut self.key, bucket);
        let count = if ctx.state_get_into(&self.key, &mut self.value)? {
            u32_of(&self.value, 0).unwrap_or(0)
        } else {
            0
        };
        chunk_key(&mut self.key, bucket, count / CHUNK);
        if count % CHUNK == 0 || !ctx.state_get_into(&self.key, &mut self.chunk)? {
            self.chunk.clear();
        }
        let len = card_id.len().min(usize::from(u16::MAX));
        self.chunk.extend_from_slice(&(len as u16).to_le_bytes());
        self.chunk.extend_from_slice(&card_id[..len]);
        ctx.state_put(&self.key, &self.chunk)?;
        count_key(&mut self.key, bucket);
        ctx.state_put(&self.key, &(count + 1).to_le_bytes())
    }

    /// One sweep step at `now_ms` (see the module doc). `card` and `buf` are scratch space.
    pub fn sweep(
        &mut self,
        ctx: &mut dyn Context,
        now_ms: u64,
        card: &mut CardState,
        buf: &mut Vec<u8>,
    ) -> Result<Swept, Error> {
        let mut done = Swept::default();
        let (mut bucket, mut next) = match self.cursor(ctx)? {
            Some(c) => c,
            None => return Ok(done),
        };
        let start = (bucket, next);
        let mut budget = self.batch.max(1);
        let mut count: Option<u32> = None;
        while budget > 0 {
            let bucket_end = (u64::from(bucket) + 1) * self.bucket_ms;
            if bucket_end.saturating_add(self.ttl_ms) >= now_ms {
                break;
            }
            let n = match count {
                Some(n) => n,
                None => {
                    count_key(&mut self.key, bucket);
                    let n = if ctx.state_get_into(&self.key, &mut self.value)? {
                        u32_of(&self.value, 0).unwrap_or(0)
                    } else {
                        0
                    };
                    count = Some(n);
                    n
                }
            };
            budget -= 1;
            if next >= n {
                // The bucket is done (or was empty).
                count_key(&mut self.key, bucket);
                ctx.state_delete(&self.key)?;
                bucket += 1;
                next = 0;
                count = None;
                continue;
            }
            chunk_key(&mut self.key, bucket, next / CHUNK);
            if !ctx.state_get_into(&self.key, &mut self.chunk)? {
                self.chunk.clear();
            }
            if let Some(id) = nth_id(&self.chunk, next % CHUNK) {
                let id = id.to_vec();
                self.examine(ctx, &id, bucket, now_ms, card, buf, &mut done)?;
            }
            done.examined += 1;
            next += 1;
            if next % CHUNK == 0 || next >= n {
                chunk_key(&mut self.key, bucket, (next - 1) / CHUNK);
                ctx.state_delete(&self.key)?;
            }
        }
        if (bucket, next) != start {
            Self::set_cursor(ctx, bucket, next)?;
        }
        Ok(done)
    }

    /// Deletes, moves or skips one indexed card.
    #[allow(clippy::too_many_arguments)]
    fn examine(
        &mut self,
        ctx: &mut dyn Context,
        card_id: &[u8],
        bucket: u32,
        now_ms: u64,
        card: &mut CardState,
        buf: &mut Vec<u8>,
        done: &mut Swept,
    ) -> Result<(), Error> {
        self.card_key.clear();
        self.card_key.extend_from_slice(b"c/");
        self.card_key.extend_from_slice(card_id);
        if !ctx.state_get_into(&self.card_key, buf)? {
            return Ok(());
        }
        if card.load(buf) != Loaded::Current || card.index_bucket != bucket + 1 {
            // Registered elsewhere since (or not ours to judge): this entry is stale.
            return Ok(());
        }
        let last_ms = u64::from(card.last_s) * 1000;
        if last_ms.saturating_add(self.ttl_ms) < now_ms {
            done.deleted += 1;
            return ctx.state_delete(&self.card_key);
        }
        let later = self.bucket_of(last_ms).max(bucket + 1);
        self.append(ctx, later, card_id)?;
        card.index_bucket = later + 1;
        card.store(buf);
        done.moved += 1;
        ctx.state_put(&self.card_key, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_are_read_back_in_order() {
        let mut chunk = Vec::new();
        for id in ["a", "", "card-3"] {
            chunk.extend_from_slice(&(id.len() as u16).to_le_bytes());
            chunk.extend_from_slice(id.as_bytes());
        }
        assert_eq!(nth_id(&chunk, 0), Some(&b"a"[..]));
        assert_eq!(nth_id(&chunk, 1), Some(&b""[..]));
        assert_eq!(nth_id(&chunk, 2), Some(&b"card-3"[..]));
        assert_eq!(nth_id(&chunk, 3), None);
        assert_eq!(nth_id(&chunk[..3], 1), None, "a cut-off chunk");
    }
}
