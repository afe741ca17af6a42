use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::store::{read_meta, BUNDLE_FILE, MANIFEST_FILE, META_FILE};
use super::*;
use crate::plugins::bundle::SecretKey;
/// Records what the registry asked of it; a module fails to compile, init or start when
/// its bytes contain `compile-error`, `init-error` or `start-error`.
#[derive(Default)]
struct FakeEngine {
    events: Arc<Mutex<Vec<String>>>,
}

struct FakeRunner {
    name: String,
    version: String,
    stopped: AtomicBool,
    events: Arc<Mutex<Vec<String>>>,
}

impl FakeEngine {
    fn event(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

impl PluginEngine for FakeEngine {
    type Module = Arc<Vec<u8>>;
    type Runner = FakeRunner;

    fn compile(&self, m: &Manifest, wasm: &[u8]) -> Result<Self::Module, EngineError> {
        self.event(format!("compile {} {}", m.name, m.version));
        if contains(wasm, "compile-error") {
            return Err("the module is not valid WebAssembly".into());
        }
        Ok(Arc::new(wasm.to_vec()))
    }

    fn check_init(&self, m: &Manifest, module: &Self::Module) -> Result<(), EngineError> {
        self.event(format!("init {} {}", m.name, m.version));
        if contains(module, "init-error") {
            return Err("outpost_init returned 1".into());
        }
        Ok(())
    }

    fn start(&self, m: &Manifest, module: Self::Module) -> Result<FakeRunner, EngineError> {
        self.event(format!("start {} {}", m.name, m.version));
        if contains(&module, "start-error") {
            return Err("the runner did not start".into());
        }
        Ok(FakeRunner {
            name: m.name.clone(),
            version: m.version.clone(),
            stopped: AtomicBool::new(false),
            events: self.events.clone(),
        })
    }

    fn reset_state(&self, name: &str) -> Result<(), EngineError> {
        self.event(format!("reset {name}"));
        Ok(())
    }
}

impl PluginRunner for FakeRunner {
    fn status(&self) -> RunnerReport {
        RunnerReport {
            state: if self.stopped.load(Ordering::SeqCst) {
                RunState::Stopped
            } else {
                RunState::Running
            },
            last_error: None,
            detail: serde_json::json!({"processed": 0}),
        }
    }

    fn logs(&self, max_lines: usize) -> Vec<Value> {
        (0..max_lines.min(2))
            .map(|i| serde_json::json!({"message": format!("{} line {i}", self.name)}))
            .collect()
    }

    async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.events
            .lock()
            .unwrap()
            .push(format!("stop {} {}", self.name, self.version));
    }
}

/// A manifest reading `<name>.in` and writing `<name>.out`: plugins of different names share
/// no topic.
fn manifest(name: &str, version: &str) -> String {
    wired(
        name,
        version,
        &[&format!("{name}.in")],
        &[&format!("{name}.out")],
    )
}

/// A manifest with the given inputs and outputs.
fn wired(name: &str, version: &str, inputs: &[&str], outputs: &[&str]) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "name = \"{name}\"\nversion = \"{version}\"\ninputs = [{}]\noutputs = [{}]\n",
        list(inputs),
        list(outputs)
    )
}

fn wasm(tag: &str) -> Vec<u8> {
    let mut w = b"\0asm\x01\0\0\0".to_vec();
    w.extend_from_slice(tag.as_bytes());
    w
}

fn bundle(name: &str, version: &str, tag: &str, key: Option<&SecretKey>) -> Vec<u8> {
    sign_manifest(&manifest(name, version), tag, key)
}

fn sign_manifest(manifest: &str, tag: &str, key: Option<&SecretKey>) -> Vec<u8> {
    let mut b = Bundle::new(manifest, wasm(tag), 1 << 20).unwrap();
    if let Some(key) = key {
        b.sign(key);
    }
    b.encode()
}

const BUNDLED_MANIFEST: &str =
    "name = \"sensor\"\nversion = \"1.0.0\"\ninputs = [\"sensors.*\"]\noutputs = [\"sensor.1m\"]\n";
const BUNDLED_MANIFEST_V2: &str =
    "name = \"sensor\"\nversion = \"2.0.0\"\ninputs = [\"sensors.*\"]\noutputs = [\"sensor.1m\"]\n";
const BUNDLED: &[BundledPlugin] = &[BundledPlugin {
    name: "sensor",
    manifest: BUNDLED_MANIFEST,
    wasm: b"\0asm\x01\0\0\0bundled",
}];
const BUNDLED_V2: &[BundledPlugin] = &[BundledPlugin {
    name: "sensor",
    manifest: BUNDLED_MANIFEST_V2,
    wasm: b"\0asm\x01\0\0\0bundled v2",
}];

struct Box_ {
    dir: tempfile::TempDir,
    key: SecretKey,
}

impl Box_ {
    fn new() -> Box_ {
        Box_ {
            dir: tempfile::tempdir().unwrap(),
            key: SecretKey::generate().unwrap(),
        }
    }

    fn config(&self) -> PluginsConfig {
        PluginsConfig {
            trusted_keys: vec![self.key.public().to_text()],
            ..PluginsConfig::default()
        }
    }

    fn open_with(
        &self,
        config: PluginsConfig,
        bundled: &[BundledPlugin],
    ) -> (Registry<FakeEngine>, Arc<Mutex<Vec<String>>>) {
        let engine = FakeEngine::default();
        let events = engine.events.clone();
        let registry =
            Registry::open(&self.dir.path().join("plugins"), config, engine, bundled).unwrap();
        (registry, events)
    }

    fn open(&self) -> (Registry<FakeEngine>, Arc<Mutex<Vec<String>>>) {
        self.open_with(self.config(), &[])
    }

    fn signed(&self, name: &str, version: &str, tag: &str) -> Vec<u8> {
        bundle(name, version, tag, Some(&self.key))
    }

    fn installed(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("plugins/installed"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn take(events: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *events.lock().unwrap())
}

#[tokio::test]
async fn install_verifies_compiles_initialises_writes_and_starts() {
    let b = Box_::new();
    let (reg, events) = b.open();
    reg.start_all().await.unwrap();
    let info = reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
    assert_eq!(info.state, PluginState::Running);
    assert_eq!(info.signer, b.key.public().key_id().to_string());
    assert_eq!(info.source, Source::Operator);
    assert_eq!(
        take(&events),
        ["compile echo 1.0.0", "init echo 1.0.0", "start echo 1.0.0"]
    );
    assert_eq!(b.installed(), ["echo"]);
    let dir = b.dir.path().join("plugins/installed/echo");
    for file in [BUNDLE_FILE, MANIFEST_FILE, META_FILE] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let meta = read_meta(&dir).unwrap();
    assert_eq!(meta.sha256, info.sha256);
    assert_eq!(reg.logs("echo", 5).unwrap().len(), 2);
}

#[tokio::test]
async fn installing_a_name_twice_is_refused_with_a_pointer_to_upgrade() {
    let b = Box_::new();
    let (reg, _) = b.open();
    reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
    let err = reg
        .install(&b.signed("echo", "1.1.0", "ok"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyInstalled(_)), "{err}");
    assert!(err.to_string().contains("upgrade"), "{err}");
    assert_eq!(reg.info("echo").unwrap().version, "1.0.0");
}

#[tokio::test]
async fn an_install_past_the_boxs_plugin_memory_budget_is_refused_before_anything_is_written() {
    let b = Box_::new();
    // Three plugins of 64 MiB fit in 200 MiB; a fourth does not.
    let config = PluginsConfig {
        max_total_memory_mib: 200,
        ..b.config()
    };
    let (reg, events) = b.open_with(config.clone(), &[]);
    for name in ["a", "b", "c"] {
        reg.install(&b.signed(name, "1.0.0", "ok")).await.unwrap();
    }
    take(&events);
    let err = reg
        .install(&b.signed("d", "1.0.0", "ok"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::OverBudget { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("192 MiB") && text.contains("max_total_memory_mib"),
        "{text}"
    );
    assert!(take(&events).is_empty(), "nothing compiled or started");
    assert_eq!(b.installed(), ["a", "b", "c"]);
    // An upgrade replaces its own share: it fits.
    reg.upgrade("c", &b.signed("c", "1.1.0", "ok"), false)
        .await
        .unwrap();
    // At start-up with a smaller budget, plugins start in name order while they fit.
    drop(reg);
    let smaller = PluginsConfig {
        max_total_memory_mib: 130,
        ..config
    };
    let (reg, _) = b.open_with(smaller, &[]);
    reg.start_all().await.unwrap();
    let states: Vec<PluginState> = ["a", "b", "c"]
        .iter()
        .map(|n| reg.info(n).unwrap().state)
        .collect();
    assert_eq!(
        states,
        [
            PluginState::Running,
            PluginState::Running,
            PluginState::Failed
        ]
    );
    let c = reg.info("c").unwrap();
    assert!(
        c.error.as_deref().unwrap_or("").contains("plugin budget"),
        "{c:?}"
    );
}

#[tokio::test]
async fn an_install_that_closes_a_cycle_through_wildcards_is_refused_with_the_cycle_named() {
    let b = Box_::new();
    let (reg, events) = b.open();
    let ping = wired("a", "1", &["ping.*"], &["pong.a"]);
    reg.install(&sign_manifest(&ping, "ok", Some(&b.key)))
        .await
        .unwrap();
    take(&events);
    let pong = wired("b", "1", &["pong.*"], &["ping.b"]);
    let err = reg
        .install(&sign_manifest(&pong, "ok", Some(&b.key)))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Cycle { .. }), "{err}");
    assert!(
        err.to_string().contains("b → ping.b → a → pong.a → b"),
        "{err}"
    );
    assert!(take(&events).is_empty(), "nothing compiled or started");
    assert_eq!(b.installed(), ["a"]);
    // An upgrade of `a` that stops reading `ping.*` breaks the would-be cycle: `b` then fits.
    let quiet = wired("a", "2", &["other.*"], &["pong.a"]);
    reg.upgrade("a", &sign_manifest(&quiet, "ok", Some(&b.key)), false)
        .await
        .unwrap();
    reg.install(&sign_manifest(&pong, "ok", Some(&b.key)))
        .await
        .unwrap();
    // And now `a` cannot be upgraded back into the cycle.
    let err = reg
        .upgrade("a", &sign_manifest(&ping, "ok", Some(&b.key)), false)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Cycle { .. }), "{err}");
    assert_eq!(
        reg.info("a").unwrap().version,
        "2",
        "the old version runs on"
    );
}

#[tokio::test]
async fn a_plugin_cannot_write_another_plugins_output_or_a_source_topic_without_a_grant() {
    let b = Box_::new();
    let (reg, _) = b.open();
    reg.set_source_topics(vec!["pos.payments".into(), "sensors.*".into()]);
    reg.install(&sign_manifest(
        &wired("fraud-score", "1", &["pos.payments"], &["fraud.scores"]),
        "ok",
        Some(&b.key),
    ))
    .await
    .unwrap();
    for (outputs, writer) in [
        (["fraud.scores"], "plugin \"fraud-score\""),
        (["pos.payments"], "a source"),
        (["sensors.fridge"], "a source"),
    ] {
        let forger = wired("forger", "1", &["x"], &outputs);
        let err = reg
            .install(&sign_manifest(&forger, "ok", Some(&b.key)))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::OutputTaken { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(writer) && text.contains("plugins.output_grants.forger"),
            "{text}"
        );
    }
    assert_eq!(b.installed(), ["fraud-score"]);
    // The box config can grant it.
    drop(reg);
    let mut config = b.config();
    config
        .output_grants
        .insert("forger".into(), vec!["fraud.scores".into()]);
    let (reg, _) = b.open_with(config, &[]);
    reg.start_all().await.unwrap();
    reg.install(&sign_manifest(
        &wired("forger", "1", &["x"], &["fraud.scores"]),
        "ok",
        Some(&b.key),
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn a_plugin_past_max_plugins_is_refused() {
    let b = Box_::new();
    let config = PluginsConfig {
        max_plugins: 2,
        ..b.config()
    };
    let (reg, _) = b.open_with(config, &[]);
    reg.install(&b.signed("a", "1.0.0", "ok")).await.unwrap();
    reg.install(&b.signed("b", "1.0.0", "ok")).await.unwrap();
    let err = reg
        .install(&b.signed("c", "1.0.0", "ok"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("`plugins.max_plugins` is 2"),
        "{err}"
    );
}

#[tokio::test]
async fn an_install_that_fails_to_init_writes_nothing_and_starts_nothing() {
    let b = Box_::new();
    let (reg, events) = b.open();
    let err = reg
        .install(&b.signed("echo", "1.0.0", "init-error"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Init { .. }), "{err}");
    assert!(!take(&events).iter().any(|e| e.starts_with("start")));
    assert!(b.installed().is_empty());
    assert!(reg.list().is_empty());
}

#[tokio::test]
async fn unsigned_and_foreign_bundles_are_refused_before_compiling() {
    let b = Box_::new();
    let (reg, events) = b.open();
    let err = reg
        .install(&bundle("echo", "1.0.0", "ok", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Bundle(BundleError::Unsigned)),
        "{err}"
    );
    let stranger = SecretKey::generate().unwrap();
    let err = reg
        .install(&bundle("echo", "1.0.0", "ok", Some(&stranger)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Bundle(BundleError::UnknownKey { .. })),
        "{err}"
    );
    assert!(take(&events).is_empty());

    // The development flag lets unsigned bundles in, and says so in the listing.
    let dev = Box_::new();
    let config = PluginsConfig {
        allow_unsigned: true,
        ..PluginsConfig::default()
    };
    let (reg, _) = dev.open_with(config, &[]);
    let info = reg
        .install(&bundle("echo", "1.0.0", "ok", None))
        .await
        .unwrap();
    assert_eq!(info.signer, "unsigned");
}

#[tokio::test]
async fn upgrade_starts_the_new_version_only_after_it_initialised_and_keeps_state() {
    let b = Box_::new();
    let (reg, events) = b.open();
    let first = reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
    take(&events);
    let info = reg
        .upgrade("echo", &b.signed("echo", "2.0.0", "ok"), false)
        .await
        .unwrap();
    assert_eq!(
        take(&events),
        [
            "compile echo 2.0.0",
            "init echo 2.0.0",
            "stop echo 1.0.0",
            "start echo 2.0.0"
        ]
    );
    assert_eq!(info.version, "2.0.0");
    assert_eq!(info.installed_at_ms, first.installed_at_ms);
    assert_ne!(info.sha256, first.sha256);
    assert_eq!(b.installed(), ["echo"]);
    assert_eq!(
        read_meta(&b.dir.path().join("plugins/installed/echo"))
            .unwrap()
            .version,
        "2.0.0"
    );
}

#[tokio::test]
async fn upgrade_with_reset_clears_state_between_stopping_the_old_and_starting_the_new() {
    let b = Box_::new();
    let (reg, events) = b.open();
    reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
    take(&events);
    reg.upgrade("echo", &b.signed("echo", "2.0.0", "ok"), true)
        .await
        .unwrap();
    assert_eq!(
        take(&events),
        [
            "compile echo 2.0.0",
            "init echo 2.0.0",
            "stop echo 1.0.0",
            "reset echo",
            "start echo 2.0.0"
        ]
    );
}

#[tokio::test]
async fn a_failed_upgrade_leaves_the_old_version_running() {
    let b = Box_::new();
    let (reg, events) = b.open();
    reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
    take(&events);
    for (tag, reset) in [("init-error", false), ("compile-error", true)] {
        let err = reg
            .upgrade("echo", &b.signed("echo", "2.0.0", tag), reset)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::Init { .. } | RegistryError::Compile { .. }
            ),
            "{err}"
        );
        let events = take(&events);
        assert!(
            !events
                .iter()
                .any(|e| e.starts_with("stop") || e.starts_with("reset")),
            "{events:?}"
        );
        let info = reg.info("echo").unwrap();
        assert_eq!(
            (info.version.as_str(), info.state),
            ("1.0.0", PluginState::Running)
        );
    }
    // A runner that fails to start after the switch: the old version is started again.
    let err = reg
        .upgrade("echo", &b.signed("echo", "2.0.0", "start-error"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Start { .. }), "{err}");
    assert_eq!(
        take(&events),
        [
            "compile echo 2.0.0",
            "init echo 2.0.0",
            "stop echo 1.0.0",
            "start echo 2.0.0",
            "start echo 1.0.0"
        ]
    );
    let info = reg.info("echo").unwrap();
    assert_eq!(
        (info.version.as_str(), info.state),
        ("1.0.0", PluginState::Running)
    );
    assert_eq!(
        b.installed(),
        ["echo"],
        "no staging directory is left behind"
    );
    assert_eq!(
        read_meta(&b.dir.path().join("plugins/installed/echo"))
            .unwrap()
            .version,
        "1.0.0"
    );
    // A bundle of another plugin is not an upgrade.
    let err = reg
        .upgrade("echo", &b.signed("other", "1.0.0", "ok"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NameMismatch { .. }), "{err}");
    let err = reg
        .upgrade("missing", &b.signed("missing", "1.0.0", "ok"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotInstalled(_)), "{err}");
}

#[tokio::test]
async fn remove_stops_deletes_and_drops_state_only_when_asked() {
    let b = Box_::new();
    let (reg, events) = b.open();
    reg.install(&b.signed("a", "1", "ok")).await.unwrap();
    reg.install(&b.signed("b", "1", "ok")).await.unwrap();
    take(&events);
    reg.remove("a", false).await.unwrap();
    assert_eq!(take(&events), ["stop a 1"]);
    reg.remove("b", true).await.unwrap();
    assert_eq!(take(&events), ["stop b 1", "reset b"]);
    assert!(b.installed().is_empty());
    assert!(reg.list().is_empty());
    assert!(matches!(
        reg.remove("a", false).await,
        Err(RegistryError::NotInstalled(_))
    ));
    // A removed operator plugin can be installed again.
    reg.install(&b.signed("a", "1", "ok")).await.unwrap();
}

#[tokio::test]
async fn installed_plugins_start_again_after_a_restart() {
    let b = Box_::new();
    {
        let (reg, _) = b.open();
        reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
        reg.stop_all().await;
        assert_eq!(reg.info("echo").unwrap().state, PluginState::Stopped);
    }
    let (reg, events) = b.open();
    assert_eq!(reg.info("echo").unwrap().state, PluginState::Starting);
    reg.start_all().await.unwrap();
    assert_eq!(take(&events), ["compile echo 1.0.0", "start echo 1.0.0"]);
    let info = reg.info("echo").unwrap();
    assert_eq!(
        (info.version.as_str(), info.state),
        ("1.0.0", PluginState::Running)
    );
}

#[tokio::test]
async fn a_plugin_whose_key_is_no_longer_trusted_does_not_start_after_a_restart() {
    let b = Box_::new();
    {
        let (reg, _) = b.open();
        reg.install(&b.signed("echo", "1.0.0", "ok")).await.unwrap();
        reg.install(&b.signed("keep", "1.0.0", "ok")).await.unwrap();
        reg.stop_all().await;
    }
    let mut config = b.config();
    config.trusted_keys.clear();
    let (reg, events) = b.open_with(config, &[]);
    reg.start_all().await.unwrap();
    assert!(take(&events).is_empty());
    let info = reg.info("echo").unwrap();
    assert_eq!(info.state, PluginState::Failed);
    assert!(info.error.unwrap().contains("trusted_keys"));
}

#[tokio::test]
async fn bundled_plugins_are_installed_on_first_run_only_and_not_after_removal() {
    let b = Box_::new();
    {
        let (reg, events) = b.open_with(b.config(), BUNDLED);
        reg.start_all().await.unwrap();
        assert_eq!(
            take(&events),
            ["compile sensor 1.0.0", "start sensor 1.0.0"]
        );
        let info = reg.info("sensor").unwrap();
        assert_eq!(
            (info.source, info.signer.as_str()),
            (Source::Bundled, "bundled")
        );
        reg.stop_all().await;
    }
    {
        // Second run: already installed, started as is (trusted although unsigned).
        let (reg, events) = b.open_with(b.config(), BUNDLED);
        reg.start_all().await.unwrap();
        assert_eq!(
            take(&events),
            ["compile sensor 1.0.0", "start sensor 1.0.0"]
        );
        reg.remove("sensor", false).await.unwrap();
    }
    {
        // After removal it stays removed.
        let (reg, events) = b.open_with(b.config(), BUNDLED);
        reg.start_all().await.unwrap();
        assert!(take(&events).is_empty());
        assert!(reg.list().is_empty());
        assert!(b.installed().is_empty());
        // Installing it explicitly brings it back, and the removal is forgotten.
        let mut bundle = Bundle::new(BUNDLED_MANIFEST, BUNDLED[0].wasm.to_vec(), 1 << 20).unwrap();
        bundle.sign(&b.key);
        reg.install(&bundle.encode()).await.unwrap();
        reg.remove("sensor", false).await.unwrap();
    }
    // With `bundled = false` nothing is installed on a fresh box.
    let fresh = Box_::new();
    let config = PluginsConfig {
        bundled: false,
        ..fresh.config()
    };
    let (reg, _) = fresh.open_with(config, BUNDLED);
    reg.start_all().await.unwrap();
    assert!(reg.list().is_empty());
}

#[tokio::test]
async fn a_bundled_plugin_follows_the_binary_to_a_new_version_and_an_operator_upgrade_sticks() {
    let b = Box_::new();
    {
        let (reg, _) = b.open_with(b.config(), BUNDLED);
        reg.start_all().await.unwrap();
        reg.stop_all().await;
    }
    {
        let (reg, events) = b.open_with(b.config(), BUNDLED_V2);
        reg.start_all().await.unwrap();
        assert_eq!(
            take(&events),
            ["compile sensor 2.0.0", "start sensor 2.0.0"]
        );
        assert_eq!(reg.info("sensor").unwrap().version, "2.0.0");
        // The operator installs their own version 3 over it.
        let mut v3 = Bundle::new(
            &BUNDLED_MANIFEST.replace("1.0.0", "3.0.0"),
            wasm("operator"),
            1 << 20,
        )
        .unwrap();
        v3.sign(&b.key);
        reg.upgrade("sensor", &v3.encode(), false).await.unwrap();
        reg.stop_all().await;
    }
    let (reg, _) = b.open_with(b.config(), BUNDLED_V2);
    reg.start_all().await.unwrap();
    let info = reg.info("sensor").unwrap();
    assert_eq!(
        (info.version.as_str(), info.source),
        ("3.0.0", Source::Operator)
    );
}

#[test]
fn plugin_states_serialize_as_the_lower_case_words_the_api_always_showed() {
    for (state, word) in [
        (PluginState::Starting, "starting"),
        (PluginState::Running, "running"),
        (PluginState::Quarantined, "quarantined"),
        (PluginState::Stopped, "stopped"),
        (PluginState::Failed, "failed"),
    ] {
        assert_eq!(serde_json::to_value(state).unwrap(), word);
        assert_eq!(state.to_string(), word);
    }
    for state in [
        RunState::Running,
        RunState::Quarantined,
        RunState::Stopped,
        RunState::Failed,
    ] {
        assert_eq!(PluginState::from(state).as_str(), state.as_str());
    }
}
