//! The `[plugins]` config section: what a box lets plugins do (memory, CPU deadline, state
//! and output quotas, failures before quarantine and the back-off after it, bundle and module
//! sizes, topics a plugin may write although others do) and which signatures it trusts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plugins::bundle::{BundleError, TrustPolicy};

/// The `[plugins]` section. Besides the keys below, `[plugins.<name>.config]` holds one
/// plugin's settings (see [`PluginsConfig::settings`]); any other key is refused by
/// [`PluginsConfig::validate`], naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginsConfig {
    /// Run plugins at all. When false no plugin starts and the `/plugins` endpoints answer 503.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Install the plugins embedded in the binary on first run (a removed one stays removed).
    #[serde(default = "default_true")]
    pub bundled: bool,
    /// Development only: accept unsigned bundles. Bundles with a bad or unknown signature are
    /// refused regardless.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Public keys (`ed25519:<base64>`, as `outpost plugin keygen` writes them) whose
    /// signatures this box accepts.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Linear memory of a plugin whose manifest does not ask for an amount, in MiB.
    #[serde(default = "default_memory_mib")]
    pub default_memory_mib: u64,
    /// Most linear memory any plugin gets, in MiB; larger manifest requests are capped.
    #[serde(default = "default_memory_mib")]
    pub max_memory_mib: u64,
    /// CPU deadline of one call into a plugin whose manifest does not ask for one, in ms.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// Longest CPU deadline of one call (`outpost_init` or one record), in ms; larger manifest
    /// requests are capped. A call past it is stopped and counts as a failure.
    #[serde(default = "default_deadline_ms")]
    pub max_deadline_ms: u64,
    /// State quota of a plugin whose manifest has no `limits.state_mib`, in MiB: the most key
    /// plus value bytes (summed over its keys) its state may hold. A `state_put` past it gets
    /// the status `QUOTA` and writes nothing (`sdk/ABI.md`, section 10).
    #[serde(default = "default_state_mib")]
    pub default_state_mib: u64,
    /// Largest state quota any plugin gets, in MiB; larger manifest requests are capped.
    #[serde(default = "default_max_state_mib")]
    pub max_state_mib: u64,
    /// State quota of a plugin whose manifest has no `limits.state_keys`, in keys.
    #[serde(default = "default_state_keys")]
    pub default_state_keys: u64,
    /// Largest state quota any plugin gets, in keys; larger manifest requests are capped.
    #[serde(default = "default_max_state_keys")]
    pub max_state_keys: u64,
    /// Failures of the plugin's own in a row (trap, deadline, out of memory, stack overflow,
    /// `proc_exit`, host-call abuse) after which it is quarantined. A record the plugin rejects
    /// (non-zero return) is dead-lettered and does not count.
    #[serde(default = "default_max_consecutive_failures")]
    pub max_consecutive_failures: u32,
    /// How long a quarantined plugin sits out before it comes back by itself, in ms. The wait
    /// doubles on each quarantine that follows without a clean batch in between.
    #[serde(default = "default_quarantine_backoff_ms")]
    pub quarantine_backoff_ms: u64,
    /// Longest wait of a quarantined plugin, in ms.
    #[serde(default = "default_max_quarantine_backoff_ms")]
    pub max_quarantine_backoff_ms: u64,
    /// Most records one call (one input record) may emit: the default and the cap of a
    /// manifest's `limits.output_records_per_input`; at most 1024 (the ABI's limit). An emit
    /// past it returns `TOO_LARGE`.
    #[serde(default = "default_max_output_records_per_input")]
    pub max_output_records_per_input: usize,
    /// Most bytes one call may emit (key + value + header block): default and cap of
    /// `limits.output_bytes_per_input`; at most 8 MiB (the ABI's limit).
    #[serde(default = "default_max_output_bytes_per_input")]
    pub max_output_bytes_per_input: usize,
    /// Records a plugin may emit within one second when its manifest does not say
    /// (`limits.output_records_per_sec`); past it the plugin is quarantined.
    #[serde(default = "default_output_records_per_sec")]
    pub default_output_records_per_sec: u64,
    /// Most records per second any manifest may ask for.
    #[serde(default = "default_max_output_records_per_sec")]
    pub max_output_records_per_sec: u64,
    /// Bytes a plugin may emit within one second when its manifest does not say
    /// (`limits.output_bytes_per_sec`); past it the plugin is quarantined.
    #[serde(default = "default_output_bytes_per_sec")]
    pub default_output_bytes_per_sec: u64,
    /// Most bytes per second any manifest may ask for.
    #[serde(default = "default_max_output_bytes_per_sec")]
    pub max_output_bytes_per_sec: u64,
    /// Topics a plugin may declare as outputs although a source feeds them or another plugin
    /// writes them: plugin name → topic names (e.g. `my-scorer = ["fraud.scores"]`). Without
    /// a grant such an install is refused. `outpost.*` and `*.dlq` can never be granted.
    #[serde(default)]
    pub output_grants: BTreeMap<String, Vec<String>>,
    /// Largest bundle accepted by `POST /plugins` and `PUT /plugins/{name}`, in bytes.
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: usize,
    /// Largest wasm module, in bytes.
    #[serde(default = "default_max_module_bytes")]
    pub max_module_bytes: usize,
    /// Linear memory all plugins together may get, in MiB: the sum of what each plugin gets
    /// (its manifest's `memory_mib` or `default_memory_mib`, capped by `max_memory_mib`). An
    /// install or upgrade that would go above it is refused (HTTP 409); at start-up, installed
    /// plugins start in name order while they fit and the rest show the error.
    #[serde(default = "default_max_total_memory_mib")]
    pub max_total_memory_mib: u64,
    /// Plugins installed at once, at most (each runs one instance).
    #[serde(default = "default_max_plugins")]
    pub max_plugins: usize,
    /// Plugin settings: `[plugins.<name>.config]`, a table laid over the `[config]` of the
    /// plugin's manifest before `outpost_init` (tables merge key by key, any other value
    /// replaces the manifest's). The bundle's signature covers code and declared capabilities,
    /// not tuning, so changing a setting needs no new bundle. SIGHUP re-reads them and
    /// re-initialises each plugin whose settings changed (a plugin that refuses its new
    /// settings keeps running on the old ones and the error names the plugin and the key).
    /// Kept here as read; [`PluginsConfig::validate`] checks the shape,
    /// [`PluginsConfig::settings`] gives the tables.
    #[serde(flatten)]
    pub per_plugin: BTreeMap<String, toml::Value>,
}

fn default_true() -> bool {
    true
}
fn default_memory_mib() -> u64 {
    64
}
fn default_deadline_ms() -> u64 {
    100
}
fn default_state_mib() -> u64 {
    outpost_sdk::abi::limits::DEFAULT_STATE_QUOTA_BYTES >> 20
}
fn default_max_state_mib() -> u64 {
    1024
}
fn default_state_keys() -> u64 {
    outpost_sdk::abi::limits::DEFAULT_STATE_QUOTA_KEYS
}
fn default_max_state_keys() -> u64 {
    10_000_000
}
fn default_max_consecutive_failures() -> u32 {
    5
}
fn default_quarantine_backoff_ms() -> u64 {
    60_000
}
fn default_max_quarantine_backoff_ms() -> u64 {
    3_600_000
}
fn default_max_output_records_per_input() -> usize {
    outpost_sdk::abi::limits::MAX_EMITS_PER_CALL
}
fn default_max_output_bytes_per_input() -> usize {
    outpost_sdk::abi::limits::MAX_EMIT_BYTES_PER_CALL
}
fn default_output_records_per_sec() -> u64 {
    crate::plugins::runner::DEFAULT_OUTPUT_RECORDS_PER_SEC
}
fn default_max_output_records_per_sec() -> u64 {
    1_000_000
}
fn default_output_bytes_per_sec() -> u64 {
    crate::plugins::runner::DEFAULT_OUTPUT_BYTES_PER_SEC
}
fn default_max_output_bytes_per_sec() -> u64 {
    256 * 1024 * 1024
}
fn default_max_bundle_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_max_module_bytes() -> usize {
    12 * 1024 * 1024
}
fn default_max_total_memory_mib() -> u64 {
    512
}
fn default_max_plugins() -> usize {
    32
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            enabled: true,
            bundled: true,
            allow_unsigned: false,
            trusted_keys: Vec::new(),
            default_memory_mib: default_memory_mib(),
            max_memory_mib: default_memory_mib(),
            default_deadline_ms: default_deadline_ms(),
            max_deadline_ms: default_deadline_ms(),
            default_state_mib: default_state_mib(),
            max_state_mib: default_max_state_mib(),
            default_state_keys: default_state_keys(),
            max_state_keys: default_max_state_keys(),
            max_consecutive_failures: default_max_consecutive_failures(),
            quarantine_backoff_ms: default_quarantine_backoff_ms(),
            max_quarantine_backoff_ms: default_max_quarantine_backoff_ms(),
            max_output_records_per_input: default_max_output_records_per_input(),
            max_output_bytes_per_input: default_max_output_bytes_per_input(),
            default_output_records_per_sec: default_output_records_per_sec(),
            max_output_records_per_sec: default_max_output_records_per_sec(),
            default_output_bytes_per_sec: default_output_bytes_per_sec(),
            max_output_bytes_per_sec: default_max_output_bytes_per_sec(),
            output_grants: BTreeMap::new(),
            max_bundle_bytes: default_max_bundle_bytes(),
            max_module_bytes: default_max_module_bytes(),
            max_total_memory_mib: default_max_total_memory_mib(),
            max_plugins: default_max_plugins(),
            per_plugin: BTreeMap::new(),
        }
    }
}

impl PluginsConfig {
    /// Each plugin's settings (`[plugins.<name>.config]`), by plugin name; call after
    /// [`PluginsConfig::validate`] (a malformed entry is left out).
    pub fn settings(&self) -> BTreeMap<String, toml::Table> {
        self.per_plugin
            .iter()
            .filter_map(|(name, v)| match v.get("config") {
                Some(toml::Value::Table(t)) => Some((name.clone(), t.clone())),
                _ => None,
            })
            .collect()
    }

    /// Checks that every key of `[plugins]` that is not a setting of the section is a
    /// plugin's `[plugins.<name>.config]` table.
    fn validate_per_plugin(&self) -> Result<(), (String, String)> {
        for (name, value) in &self.per_plugin {
            let key = format!("plugins.{name}");
            if let Some(problem) = crate::plugins::manifest::name_problem(name) {
                return Err((
                    key,
                    format!(
                        "is not a key of [plugins], nor a plugin name (a plugin name {problem})"
                    ),
                ));
            }
            let shape = || {
                (
                    key.clone(),
                    format!(
                        "is not a key of [plugins]; a plugin's settings go in a table \
                         `[plugins.{name}.config]`"
                    ),
                )
            };
            let table = value.as_table().ok_or_else(shape)?;
            for (k, v) in table {
                if k != "config" {
                    return Err((
                        format!("{key}.{k}"),
                        format!("is unknown; a plugin's settings go in `[plugins.{name}.config]`"),
                    ));
                }
                if !v.is_table() {
                    return Err((
                        format!("{key}.config"),
                        "must be a table of the plugin's settings".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the section; the error is `(dotted key, problem and fix)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.validate_per_plugin()?;
        let range = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err((
                    format!("plugins.{key}"),
                    format!("{value} is out of range; set it between {min} and {max}"),
                ))
            } else {
                Ok(())
            }
        };
        range("max_memory_mib", self.max_memory_mib, 1, 4096)?;
        range(
            "default_memory_mib",
            self.default_memory_mib,
            1,
            self.max_memory_mib,
        )?;
        range("max_deadline_ms", self.max_deadline_ms, 1, 60_000)?;
        range(
            "default_deadline_ms",
            self.default_deadline_ms,
            1,
            self.max_deadline_ms,
        )?;
        range("max_state_mib", self.max_state_mib, 1, 1 << 20)?;
        range(
            "default_state_mib",
            self.default_state_mib,
            1,
            self.max_state_mib,
        )?;
        range("max_state_keys", self.max_state_keys, 1, 1 << 32)?;
        range(
            "default_state_keys",
            self.default_state_keys,
            1,
            self.max_state_keys,
        )?;
        range(
            "max_consecutive_failures",
            u64::from(self.max_consecutive_failures),
            1,
            1_000_000,
        )?;
        range(
            "max_module_bytes",
            self.max_module_bytes as u64,
            1024,
            1 << 30,
        )?;
        range(
            "max_bundle_bytes",
            self.max_bundle_bytes as u64,
            self.max_module_bytes as u64,
            (1 << 30) + (2 << 20),
        )
        .map_err(|(key, problem)| {
            (
                key,
                format!(
                    "{problem} (a bundle holds the module, so at least `plugins.max_module_bytes`)"
                ),
            )
        })?;
        range(
            "max_total_memory_mib",
            self.max_total_memory_mib,
            self.default_memory_mib,
            1 << 20,
        )
        .map_err(|(key, problem)| {
            (
                key,
                format!("{problem} (at least `plugins.default_memory_mib`, or no plugin fits)"),
            )
        })?;
        range("max_plugins", self.max_plugins as u64, 1, 10_000)?;
        range(
            "quarantine_backoff_ms",
            self.quarantine_backoff_ms,
            1,
            86_400_000,
        )?;
        range(
            "max_quarantine_backoff_ms",
            self.max_quarantine_backoff_ms,
            self.quarantine_backoff_ms,
            7 * 86_400_000,
        )?;
        range(
            "max_output_records_per_input",
            self.max_output_records_per_input as u64,
            1,
            default_max_output_records_per_input() as u64,
        )?;
        range(
            "max_output_bytes_per_input",
            self.max_output_bytes_per_input as u64,
            1,
            default_max_output_bytes_per_input() as u64,
        )?;
        range(
            "max_output_records_per_sec",
            self.max_output_records_per_sec,
            1,
            u64::from(u32::MAX),
        )?;
        range(
            "default_output_records_per_sec",
            self.default_output_records_per_sec,
            1,
            self.max_output_records_per_sec,
        )?;
        range(
            "max_output_bytes_per_sec",
            self.max_output_bytes_per_sec,
            1,
            1 << 40,
        )?;
        range(
            "default_output_bytes_per_sec",
            self.default_output_bytes_per_sec,
            1,
            self.max_output_bytes_per_sec,
        )?;
        for (plugin, topics) in &self.output_grants {
            if let Some(problem) = crate::plugins::manifest::name_problem(plugin) {
                return Err((
                    format!("plugins.output_grants.{plugin}"),
                    format!("{plugin:?} is not a plugin name: it {problem}"),
                ));
            }
            for (i, topic) in topics.iter().enumerate() {
                if let Some(why) = crate::plugins::manifest::reserved_topic(topic) {
                    return Err((
                        format!("plugins.output_grants.{plugin}[{i}]"),
                        format!("{topic:?} cannot be granted: {why}"),
                    ));
                }
            }
        }
        self.trust_policy().map_err(|e| match e {
            BundleError::BadKey { origin, problem } => (origin, problem),
            other => ("plugins.trusted_keys".to_string(), other.to_string()),
        })?;
        Ok(())
    }

    /// The linear memory (MiB) a plugin with `manifest` gets on this box.
    pub fn memory_of(&self, manifest: &crate::plugins::manifest::Manifest) -> u64 {
        manifest
            .limits
            .memory_mib
            .unwrap_or(self.default_memory_mib)
            .min(self.max_memory_mib)
    }

    /// Whether the box config lets plugin `name` write `topic` although others do.
    pub fn grants_output(&self, name: &str, topic: &str) -> bool {
        self.output_grants
            .get(name)
            .is_some_and(|topics| topics.iter().any(|t| t == topic))
    }

    /// The trust policy of `trusted_keys` and `allow_unsigned`.
    pub fn trust_policy(&self) -> Result<TrustPolicy, BundleError> {
        TrustPolicy::from_config(&self.trusted_keys, self.allow_unsigned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_key() {
        PluginsConfig::default().validate().unwrap();
        type Case = (fn(&mut PluginsConfig), &'static str);
        let cases: [Case; 11] = [
            (
                |c| c.max_quarantine_backoff_ms = 10,
                "plugins.max_quarantine_backoff_ms",
            ),
            (
                |c| c.max_output_records_per_input = 2000,
                "plugins.max_output_records_per_input",
            ),
            (
                |c| c.default_output_records_per_sec = 2_000_000,
                "plugins.default_output_records_per_sec",
            ),
            (
                |c| {
                    c.output_grants
                        .insert("mine".into(), vec!["outpost.gaps".into()]);
                },
                "plugins.output_grants.mine[0]",
            ),
            (
                |c| c.max_total_memory_mib = 10,
                "plugins.max_total_memory_mib",
            ),
            (|c| c.max_plugins = 0, "plugins.max_plugins"),
            (|c| c.max_memory_mib = 0, "plugins.max_memory_mib"),
            (|c| c.default_memory_mib = 65, "plugins.default_memory_mib"),
            (
                |c| c.default_deadline_ms = 101,
                "plugins.default_deadline_ms",
            ),
            (|c| c.max_bundle_bytes = 1000, "plugins.max_bundle_bytes"),
            (
                |c| c.trusted_keys = vec!["ed25519:nope".into()],
                "plugins.trusted_keys[0]",
            ),
        ];
        for (change, key) in cases {
            let mut c = PluginsConfig::default();
            change(&mut c);
            let (got, problem) = c.validate().unwrap_err();
            assert_eq!(got, key, "{problem}");
        }
    }

    #[test]
    fn state_quota_settings_are_validated_naming_the_key() {
        // Apart from the test above, so that its cases and these change separately.
        type Case = (fn(&mut PluginsConfig), &'static str);
        let cases: [Case; 4] = [
            (|c| c.max_state_mib = 0, "plugins.max_state_mib"),
            (|c| c.default_state_mib = 1025, "plugins.default_state_mib"),
            (|c| c.max_state_keys = 0, "plugins.max_state_keys"),
            (
                |c| c.default_state_keys = 10_000_001,
                "plugins.default_state_keys",
            ),
        ];
        for (change, key) in cases {
            let mut c = PluginsConfig::default();
            change(&mut c);
            let (got, problem) = c.validate().unwrap_err();
            assert_eq!(got, key, "{problem}");
        }
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    fn parse(text: &str) -> PluginsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_plugins_settings_table_is_read_and_handed_out_by_plugin_name() {
        let c = parse(
            "max_plugins = 4\n[fraud-score.config]\nalert_threshold = 80\n\
             [sensor-watch.config.devices.freezer-1.temperature]\nmax = -15.0\n",
        );
        c.validate().unwrap();
        assert_eq!(c.max_plugins, 4);
        let settings = c.settings();
        assert_eq!(
            settings["fraud-score"]["alert_threshold"].as_integer(),
            Some(80)
        );
        assert!(settings["sensor-watch"]["devices"]["freezer-1"].is_table());
    }

    #[test]
    fn anything_else_under_plugins_is_refused_naming_the_key() {
        for (text, key) in [
            ("enabeld = true\n", "plugins.enabeld"),
            (
                "[fraud-score]\nthreshold = 5\n",
                "plugins.fraud-score.threshold",
            ),
            ("[fraud-score]\nconfig = 5\n", "plugins.fraud-score.config"),
            ("[Fraud_Score.config]\na = 1\n", "plugins.Fraud_Score"),
        ] {
            let (got, problem) = parse(text).validate().unwrap_err();
            assert_eq!(got, key, "{text}: {problem}");
        }
    }
}
