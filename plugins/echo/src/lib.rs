//! `echo`: emits every input record (key, value and headers) unchanged to one output topic,
//! named by the config's `output` (default `echo.out`). The host's tests use it to check
//! delivery, ordering and output headers end to end.

use outpost_sdk::{export_plugin, Config, Context, Error, Plugin, Record};
use serde::Deserialize;

/// Configuration: the topic to copy records to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EchoConfig {
    /// Output topic; must be one of the manifest's `outputs`.
    output: String,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            output: "echo.out".to_owned(),
        }
    }
}

/// The echo plugin.
#[derive(Debug, Default)]
pub struct Echo {
    output: String,
}

impl Plugin for Echo {
    fn init(&mut self, _ctx: &mut dyn Context, config: &Config) -> Result<(), Error> {
        let config: EchoConfig = config.parse()?;
        if config.output.is_empty() {
            return Err(Error::new("config `output` must name a topic"));
        }
        self.output = config.output;
        Ok(())
    }

    fn on_record(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        if record.headers.is_empty() {
            return ctx.emit(&self.output, record.key, record.value);
        }
        let headers: Vec<(&str, &[u8])> =
            record.headers.iter().map(|h| (h.name, h.value)).collect();
        ctx.emit_with_headers(&self.output, record.key, record.value, &headers)
    }
}

export_plugin!(Echo);

#[cfg(test)]
mod tests {
    use outpost_sdk::testing::Harness;

    use super::*;

    #[test]
    fn echo_copies_key_value_and_headers_to_the_output() {
        let mut h = Harness::<Echo>::start("{}")
            .unwrap()
            .allow_outputs(&["echo.out"]);
        let record = Record::new("echo.in", b"hello")
            .with_key(b"k1")
            .with_header("trace", b"t-1");
        h.feed(&record).unwrap();
        h.feed(&Record::new("echo.in", b"no key")).unwrap();
        let out = h.emitted();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].topic, "echo.out");
        assert_eq!(out[0].key_str(), Some("k1"));
        assert_eq!(out[0].value, b"hello");
        assert_eq!(out[0].header("trace"), Some(&b"t-1"[..]));
        assert_eq!(out[1].key, None);
    }

    #[test]
    fn echo_writes_to_the_configured_topic() {
        let mut h = Harness::<Echo>::start(r#"{"output":"copies"}"#).unwrap();
        h.send("in", "k", "v").unwrap();
        assert_eq!(h.emitted()[0].topic, "copies");
    }

    #[test]
    fn echo_refuses_unknown_config_keys() {
        let err = Harness::<Echo>::start(r#"{"outptu":"x"}"#).unwrap_err();
        assert!(err.message().contains("outptu"), "{err}");
    }
}
