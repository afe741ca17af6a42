//! JSON helpers (feature `json`): parse a record value or the config into serde types, and emit
//! or store serde values as JSON. Serialisation reuses one buffer per thread, so emitting JSON
//! does not allocate per record once the buffer has grown.

use std::cell::RefCell;

use serde::de::{Deserialize, DeserializeOwned};
use serde::Serialize;

use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, ErrorKind};
use crate::record::Record;

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::with_kind(ErrorKind::InvalidInput, format!("invalid JSON: {e}"))
    }
}

impl<'a> Record<'a> {
    /// Parses the value as JSON. `T` may borrow from the record (`&'a str`, or
    /// `Cow<'a, str>` with `#[serde(borrow)]` to also accept escaped strings).
    pub fn json<T: Deserialize<'a>>(&self) -> Result<T, Error> {
        let value: &'a [u8] = self.value;
        serde_json::from_slice(value).map_err(|e| {
            Error::with_kind(
                ErrorKind::InvalidInput,
                format!(
                    "invalid JSON in {} at offset {}: {e}",
                    self.topic, self.offset
                ),
            )
        })
    }
}

impl Config {
    /// Parses the configuration into `T`; empty bytes parse as `{}`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.as_str()?).map_err(|e| {
            Error::with_kind(
                ErrorKind::InvalidInput,
                format!("invalid plugin config: {e}"),
            )
        })
    }
}

thread_local! {
    static JSON_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Serialises `value` into the shared buffer and passes the bytes to `f`.
fn with_json<T, R>(value: &T, f: impl FnOnce(&[u8]) -> Result<R, Error>) -> Result<R, Error>
where
    T: Serialize + ?Sized,
{
    JSON_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            serde_json::to_writer(&mut *buf, value).map_err(|e| {
                Error::with_kind(ErrorKind::Plugin, format!("cannot serialise JSON: {e}"))
            })?;
            f(&buf)
        }
        // Re-entered (a Serialize impl that emits): fall back to a fresh buffer.
        Err(_) => {
            let bytes = serde_json::to_vec(value).map_err(|e| {
                Error::with_kind(ErrorKind::Plugin, format!("cannot serialise JSON: {e}"))
            })?;
            f(&bytes)
        }
    })
}

impl<'c> dyn Context + 'c {
    /// Emits `value` serialised as JSON to `topic`.
    pub fn emit_json<T: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &T,
    ) -> Result<(), Error> {
        with_json(value, |bytes| self.emit(topic, key, bytes))
    }

    /// Emits `value` serialised as JSON to `topic`, with headers.
    pub fn emit_json_with_headers<T: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &T,
        headers: &[(&str, &[u8])],
    ) -> Result<(), Error> {
        with_json(value, |bytes| {
            self.emit_with_headers(topic, key, bytes, headers)
        })
    }

    /// Reads a state value stored as JSON.
    pub fn state_get_json<T: DeserializeOwned>(&mut self, key: &[u8]) -> Result<Option<T>, Error> {
        match self.state_get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::with_kind(
                    ErrorKind::InvalidInput,
                    format!("state value is not the expected JSON: {e}"),
                )
            }),
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn state_put_json<T: Serialize + ?Sized>(
        &mut self,
        key: &[u8],
        value: &T,
    ) -> Result<(), Error> {
        with_json(value, |bytes| self.state_put(key, bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Payment<'a> {
        #[serde(borrow)]
        card_id: Cow<'a, str>,
        amount: f64,
    }

    #[test]
    fn record_json_borrows_from_the_value() {
        let record = Record::new("pos.payments", br#"{"card_id":"c1","amount":9.5,"x":1}"#);
        let p: Payment<'_> = record.json().unwrap();
        assert!(matches!(p.card_id, Cow::Borrowed("c1")));
        assert_eq!(p.amount, 9.5);
    }

    #[test]
    fn bad_json_names_topic_and_offset() {
        let record = Record::new("pos.payments", b"{nope").with_offset(17);
        let err = record.json::<Payment<'_>>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("pos.payments at offset 17"), "{err}");
    }

    #[test]
    fn config_parses_and_empty_config_is_an_empty_object() {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Settings {
            threshold: u32,
        }
        let s: Settings = Config::new(&br#"{"threshold":70}"#[..]).parse().unwrap();
        assert_eq!(s.threshold, 70);
        let s: Settings = Config::new(Vec::new()).parse().unwrap();
        assert_eq!(s.threshold, 0);
        assert!(Config::new(&b"[1"[..]).parse::<Settings>().is_err());
    }
}
