//! The plugin's configuration as `init` receives it: the manifest's `[config]` table, converted
//! by the host to JSON bytes (`{}` when the manifest has none).

/// The configuration passed to [`Plugin::init`](crate::Plugin::init). With the `json` feature,
/// `Config::parse` turns it into a serde type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    bytes: Vec<u8>,
}

impl Config {
    /// A configuration from its JSON bytes. Empty bytes mean an empty object.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Config {
            bytes: bytes.into(),
        }
    }

    /// The raw JSON bytes exactly as the host passed them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The JSON text; empty bytes read as `{}`.
    pub fn as_str(&self) -> Result<&str, crate::Error> {
        if self.bytes.is_empty() {
            return Ok("{}");
        }
        Ok(std::str::from_utf8(&self.bytes)?)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new(&b"{}"[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_reads_as_an_empty_object() {
        assert_eq!(Config::new(Vec::new()).as_str().unwrap(), "{}");
        assert_eq!(Config::default().as_str().unwrap(), "{}");
    }

    #[test]
    fn config_that_is_not_utf8_is_an_error() {
        assert!(Config::new(vec![0xff]).as_str().is_err());
    }
}
