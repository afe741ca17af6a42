//! The input record a plugin receives: a plain, borrowed view of one log record (topic, offset,
//! timestamp, optional key, value, headers) plus small helpers to read it.

use crate::error::{Error, ErrorKind};

/// One input record. It borrows the bytes the host passed in, so reading it allocates nothing
/// (apart from the header list when there are headers).
///
/// Build one for tests with [`Record::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record<'a> {
    /// The log topic the record was read from, e.g. `pos.payments`.
    pub topic: &'a str,
    /// The record's offset in its topic (dense, starting at 0).
    pub offset: u64,
    /// When the log appended the record, epoch milliseconds.
    pub timestamp_ms: u64,
    /// The record key; `None` when it has none (different from an empty key).
    pub key: Option<&'a [u8]>,
    /// The record value.
    pub value: &'a [u8],
    /// The record headers, in order; names may repeat.
    pub headers: Vec<Header<'a>>,
}

/// One record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header name (UTF-8).
    pub name: &'a str,
    /// Header value (any bytes).
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    /// A record on `topic` with `value`, no key, no headers, offset 0 and timestamp 0.
    pub fn new(topic: &'a str, value: &'a [u8]) -> Self {
        Record {
            topic,
            offset: 0,
            timestamp_ms: 0,
            key: None,
            value,
            headers: Vec::new(),
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the offset.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Sets the timestamp (epoch milliseconds).
    pub fn with_timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, name: &'a str, value: &'a [u8]) -> Self {
        self.headers.push(Header { name, value });
        self
    }

    /// The key as UTF-8 text; `Ok(None)` when there is no key.
    pub fn key_str(&self) -> Result<Option<&'a str>, Error> {
        match self.key {
            None => Ok(None),
            Some(key) => std::str::from_utf8(key).map(Some).map_err(|e| {
                Error::with_kind(ErrorKind::InvalidInput, format!("key is not UTF-8: {e}"))
            }),
        }
    }

    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&'a str, Error> {
        std::str::from_utf8(self.value).map_err(|e| {
            Error::with_kind(ErrorKind::InvalidInput, format!("value is not UTF-8: {e}"))
        })
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_header_with_a_name_wins() {
        let r = Record::new("t", b"v")
            .with_header("a", b"1")
            .with_header("a", b"2");
        assert_eq!(r.header("a"), Some(&b"1"[..]));
        assert_eq!(r.header("b"), None);
    }

    #[test]
    fn text_accessors_reject_invalid_utf8() {
        let r = Record::new("t", &[0xff]).with_key(&[0xfe]);
        assert_eq!(r.value_str().unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(r.key_str().unwrap_err().kind(), ErrorKind::InvalidInput);
        let r = Record::new("t", b"ok");
        assert_eq!(r.key_str().unwrap(), None);
        assert_eq!(r.value_str().unwrap(), "ok");
    }
}
