//! Key and value encoding of the state store's sled trees (the layout is documented in the
//! parent module's `//!` doc, section "On-disk layout").
//!
//! A name (consumer or namespace) is written as a 2-byte big-endian length followed by its
//! UTF-8 bytes, so that the prefix of one name is never the prefix of another (`ab` and `abc`
//! differ in their length byte) and a prefix scan of one name finds exactly its entries.

use super::StateError;

/// The longest consumer or namespace name, in bytes (the length prefix is a `u16`).
pub const MAX_NAME_BYTES: usize = 1024;

/// Writes the length-prefixed form of `name` into `out`.
fn push_name(out: &mut Vec<u8>, name: &str) {
    // Names are checked against MAX_NAME_BYTES before they get here, so the length fits.
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// Rejects a consumer or namespace name that cannot be encoded.
pub(super) fn check_name(what: &'static str, name: &str) -> Result<(), StateError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_BYTES {
        "it is longer than 1024 bytes"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(StateError::InvalidName {
        what,
        name: name.chars().take(80).collect(),
        reason,
    })
}

/// The prefix every offset key of `consumer` starts with.
pub(super) fn consumer_prefix(consumer: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + consumer.len());
    push_name(&mut out, consumer);
    out
}

/// The key of `consumer`'s offset on `topic` in the `offsets` tree.
pub(super) fn offset_key(consumer: &str, topic: &str) -> Vec<u8> {
    let mut out = consumer_prefix(consumer);
    out.extend_from_slice(topic.as_bytes());
    out
}

/// The prefix every state key of `namespace` starts with.
pub(super) fn namespace_prefix(namespace: &str) -> Vec<u8> {
    consumer_prefix(namespace)
}

/// The key of `key` in `namespace` in the `state` tree.
pub(super) fn state_key(namespace: &str, key: &[u8]) -> Vec<u8> {
    let mut out = namespace_prefix(namespace);
    out.extend_from_slice(key);
    out
}

/// Splits a stored key into its length-prefixed name and the rest. `tree` names the tree in
/// the error.
pub(super) fn split_key<'a>(tree: &str, raw: &'a [u8]) -> Result<(&'a str, &'a [u8]), StateError> {
    let corrupt = |detail: &str| StateError::Corrupt {
        key: format!("{tree}/{}", String::from_utf8_lossy(raw)),
        detail: detail.to_string(),
    };
    let (len_bytes, rest) = raw
        .split_first_chunk::<2>()
        .ok_or_else(|| corrupt("key is shorter than its 2-byte length prefix"))?;
    let len = usize::from(u16::from_be_bytes(*len_bytes));
    if rest.len() < len {
        return Err(corrupt("key is shorter than its length prefix says"));
    }
    let (name, tail) = rest.split_at(len);
    let name = std::str::from_utf8(name).map_err(|_| corrupt("name is not UTF-8"))?;
    Ok((name, tail))
}

/// Encodes an offset value.
pub(super) fn encode_offset(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// Decodes an offset value; `key` names the entry in the error.
pub(super) fn decode_offset(key: impl FnOnce() -> String, raw: &[u8]) -> Result<u64, StateError> {
    let bytes: [u8; 8] = raw.try_into().map_err(|_| StateError::Corrupt {
        key: key(),
        detail: format!("offset value is {} bytes, expected 8", raw.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes a big-endian `u32` metadata value; `key` names the entry in the error.
pub(super) fn decode_u32(key: &str, raw: &[u8]) -> Result<u32, StateError> {
    let bytes: [u8; 4] = raw.try_into().map_err(|_| StateError::Corrupt {
        key: format!("meta/{key}"),
        detail: format!("value is {} bytes, expected 4", raw.len()),
    })?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_never_the_prefix_of_a_longer_name() {
        let short = namespace_prefix("ab");
        let long = state_key("abc", b"");
        assert!(!long.starts_with(&short));
        assert!(state_key("ab", b"c").starts_with(&short));
    }

    #[test]
    fn offset_keys_split_back_into_consumer_and_topic() {
        let key = offset_key("plugin:fraud", "pos.payments");
        let (consumer, topic) = split_key("offsets", &key).unwrap();
        assert_eq!(consumer, "plugin:fraud");
        assert_eq!(topic, b"pos.payments");
    }

    #[test]
    fn truncated_keys_and_values_are_reported_as_corrupt() {
        assert!(matches!(
            split_key("offsets", &[0, 9, b'a']),
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_offset(|| "offsets/x".into(), &[1, 2, 3]),
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_u32("format_version", &[1]),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn empty_long_and_control_names_are_rejected() {
        assert!(check_name("consumer", "").is_err());
        assert!(check_name("consumer", &"x".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(check_name("consumer", "a\nb").is_err());
        assert!(check_name("consumer", "plugin:fraud-score").is_ok());
    }
}
