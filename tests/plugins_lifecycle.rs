//! Plugin lifecycle without restart, through the HTTP router (`oneshot`, no socket) with the
//! real wasm host and runner: install, upgrade (state and offsets kept, or reset), failed
//! upgrades, remove, signatures, logs, and the bundled plugins on first run.
//!
//! The plugin is `tests/fixtures/wat/lifecycle_counter.wat` (hand-written against the ABI): it adds a
//! step to a counter in state and emits the new count to `count.out` for every input record.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use outpost::api::{self, ApiState};
use outpost::config::Config;
use outpost::log::{Log, NewRecord};
use outpost::plugins::bundle::{Bundle, SecretKey};
use outpost::plugins::registry::{
    self, BundledPlugin, PluginEngine as _, PluginRegistry, Registry, WasmEngine,
};
use outpost::state::StateStore;

use crate::common::wait::wait_until_async;

const COUNTER_WAT: &str = include_str!("fixtures/wat/lifecycle_counter.wat");
const INIT_FAILS_WAT: &str = include_str!("fixtures/wat/init-fails.wat");
const STEP_LINE: &str = "(global $step i32 (i32.const 1))";

fn manifest(version: &str) -> String {
    format!(
        "name = \"counter\"\nversion = \"{version}\"\ninputs = [\"count.in\"]\noutputs = [\"count.out\"]\nstate = true\n"
    )
}

/// The counter with another step, as a "new version" of the code.
fn counter_with_step(step: u32) -> String {
    assert!(COUNTER_WAT.contains(STEP_LINE));
    COUNTER_WAT.replace(STEP_LINE, &format!("(global $step i32 (i32.const {step}))"))
}

struct Outpost {
    _dir: tempfile::TempDir,
    log: Log,
    state: StateStore,
    registry: PluginRegistry,
    app: Router,
    key: SecretKey,
}

fn config(dir: &Path, key: &SecretKey) -> Config {
    let mut config = Config::default();
    config.edge.data_dir = dir.to_path_buf();
    config.kafka.listen = "127.0.0.1:0".into();
    config.plugins.trusted_keys = vec![key.public().to_text()];
    config
}

async fn open(
    dir: tempfile::TempDir,
    key: SecretKey,
    change: impl FnOnce(&mut Config),
    bundled: &[BundledPlugin],
) -> Outpost {
    let mut config = config(dir.path(), &key);
    change(&mut config);
    config.validate().unwrap();
    let log = Log::open(&dir.path().join("log"), config.log.clone()).unwrap();
    let state = StateStore::open(&dir.path().join("state")).unwrap();
    let plugins_dir = dir.path().join("plugins");
    let engine = WasmEngine::new(
        &config.plugins,
        config.log.max_record_bytes,
        Some(plugins_dir.join("cache")),
        log.clone(),
        state.clone(),
    )
    .unwrap();
    let registry = Registry::open(&plugins_dir, config.plugins.clone(), engine, bundled).unwrap();
    registry.start_all().await.unwrap();
    let app = api::plugins::with_registry(
        api::router(ApiState::new(
            outpost::kernel::Context::new(
                dir.path(),
                log.clone(),
                state.clone(),
                outpost::kernel::Identity::new("edge-test", "s1"),
                outpost::kernel::Shutdown::never(),
            ),
            config.http.clone(),
        )),
        registry.clone(),
    );
    Outpost {
        _dir: dir,
        log,
        state,
        registry,
        app,
        key,
    }
}

async fn new_box() -> Outpost {
    open(
        tempfile::tempdir().unwrap(),
        SecretKey::generate().unwrap(),
        |_| {},
        &[],
    )
    .await
}

impl Outpost {
    fn bundle(&self, version: &str, wat: &str) -> Vec<u8> {
        let mut b = Bundle::new(&manifest(version), wat.as_bytes().to_vec(), 1 << 20).unwrap();
        b.sign(&self.key);
        b.encode()
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body: Bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, value)
    }

    async fn call(&self, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    async fn install(&self, bundle: Vec<u8>) -> Value {
        let (status, body) = self.call("POST", "/plugins", bundle).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    fn produce(&self, n: usize) {
        let topic = self.log.topic_or_create("count.in").unwrap();
        let records = (0..n)
            .map(|i| NewRecord {
                value: format!("record {i}").into_bytes(),
                ..NewRecord::default()
            })
            .collect();
        topic.append(records).unwrap();
    }

    /// The counts emitted so far.
    fn counts(&self) -> Vec<u32> {
        let Ok(topic) = self.log.topic("count.out") else {
            return Vec::new();
        };
        let fetch = topic.read(0, 10_000, 1 << 20).unwrap();
        fetch
            .records
            .iter()
            .map(|r| u32::from_le_bytes(r.value.as_slice().try_into().unwrap()))
            .collect()
    }

    /// Waits until `count.out` holds `n` records and returns their counts.
    async fn wait_for_counts(&self, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let counts = self.counts();
            if counts.len() >= n || Instant::now() > deadline {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes everything (as a process exit would) and hands back the data directory.
    fn shut_down(self) -> tempfile::TempDir {
        let Outpost {
            _dir: dir,
            log,
            state,
            registry,
            app,
            key,
        } = self;
        drop((registry, app, key));
        log.close().unwrap();
        state.sync().unwrap();
        drop((log, state));
        dir
    }

    fn stored_count(&self) -> Option<u32> {
        self.state
            .get("counter", b"n")
            .unwrap()
            .map(|v| u32::from_le_bytes(v.as_slice().try_into().unwrap()))
    }
}

fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: u64, needle: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["error_code"], json!(want_code), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{message:?} does not mention {needle:?}"
    );
}

#[tokio::test]
async fn an_installed_plugin_processes_records_and_an_upgrade_keeps_its_state_and_offsets() {
    let b = new_box().await;
    let info = b.install(b.bundle("1.0.0", COUNTER_WAT)).await;
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["signer"], b.key.public().key_id().to_string());
    b.produce(3);
    assert_eq!(b.wait_for_counts(3).await, [1, 2, 3]);

    let (status, info) = b
        .call(
            "PUT",
            "/plugins/counter",
            b.bundle("2.0.0", &counter_with_step(10)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(
        (info["version"].as_str(), info["state"].as_str()),
        (Some("2.0.0"), Some("running"))
    );
    // The new runner resumes where the old one committed: nothing is read twice.
    assert_eq!(
        info["runner"]["offsets"],
        json!([["count.in", 3]]),
        "{info}"
    );
    b.produce(1);
    // 3 (kept state) + 10 (new code).
    assert_eq!(b.wait_for_counts(4).await, [1, 2, 3, 13]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.counts().len(), 4, "no input was processed twice");

    // The runner counts a batch after it appended its outputs and committed: wait for it.
    let (status, list) = wait_until_async(
        Duration::from_secs(20),
        || b.call("GET", "/plugins", Vec::new()),
        |(_, list)| list["plugins"][0]["runner"]["processed"] != 0,
    )
    .await
    .unwrap_or_else(|last| last);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["plugins"][0]["name"], "counter");
    assert_eq!(list["plugins"][0]["runner"]["processed"], 1, "{list}");
    b.registry.stop_all().await;
}

#[tokio::test]
async fn an_upgrade_with_reset_starts_from_empty_state_and_the_first_offset() {
    let b = new_box().await;
    b.install(b.bundle("1.0.0", COUNTER_WAT)).await;
    b.produce(2);
    assert_eq!(b.wait_for_counts(2).await, [1, 2]);
    let (status, info) = b
        .call(
            "PUT",
            "/plugins/counter?reset=true",
            b.bundle("2.0.0", &counter_with_step(10)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    // Both inputs are read again from offset 0 into an empty counter.
    assert_eq!(b.wait_for_counts(4).await, [1, 2, 10, 20]);
    // The state is committed after the outputs are appended: wait for the commit.
    let stored = wait_until_async(
        Duration::from_secs(20),
        || async { b.stored_count() },
        |n| *n == Some(20),
    )
    .await
    .unwrap_or_else(|n| n);
    assert_eq!(stored, Some(20));
    b.registry.stop_all().await;
}

#[tokio::test]
async fn a_failed_upgrade_leaves_the_old_version_running() {
    let b = new_box().await;
    b.install(b.bundle("1.0.0", COUNTER_WAT)).await;
    b.produce(1);
    assert_eq!(b.wait_for_counts(1).await, [1]);

    // Its init fails.
    let (status, body) = b
        .call(
            "PUT",
            "/plugins/counter?reset=true",
            b.bundle("2.0.0", INIT_FAILS_WAT),
        )
        .await;
    assert_error(
        status,
        &body,
        422,
        42210,
        "init refused: this version is broken",
    );
    // Not valid WebAssembly (a signed bundle of a broken module).
    let mut broken = b"\0asm\x01\0\0\0".to_vec();
    broken.extend_from_slice(&[0xff; 32]);
    let mut bundle = Bundle::new(&manifest("2.0.1"), broken, 1 << 20).unwrap();
    bundle.sign(&b.key);
    let (status, body) = b.call("PUT", "/plugins/counter", bundle.encode()).await;
    assert_error(status, &body, 422, 42210, "counter");
    // Missing the ABI's exports.
    let (status, body) = b
        .call(
            "PUT",
            "/plugins/counter",
            b.bundle("2.0.2", "(module (memory (export \"memory\") 1))"),
        )
        .await;
    assert_error(status, &body, 422, 42210, "outpost_");

    let (status, info) = b.call("GET", "/plugins/counter", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (info["version"].as_str(), info["state"].as_str()),
        (Some("1.0.0"), Some("running")),
        "{info}"
    );
    // Version 1 still counts, on its kept state (the reset was not applied).
    b.produce(1);
    assert_eq!(b.wait_for_counts(2).await, [1, 2]);
    b.registry.stop_all().await;
}

#[tokio::test]
async fn remove_stops_the_plugin_and_keeps_or_drops_its_state() {
    let b = new_box().await;
    b.install(b.bundle("1.0.0", COUNTER_WAT)).await;
    b.produce(1);
    assert_eq!(b.wait_for_counts(1).await, [1]);

    let (status, body) = b.call("DELETE", "/plugins/counter", Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"removed": "counter", "state_dropped": false}));
    let (status, body) = b.call("GET", "/plugins/counter", Vec::new()).await;
    assert_error(status, &body, 404, 40410, "counter");
    // Stopped: a new record is not processed.
    b.produce(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.counts(), [1]);
    assert_eq!(b.stored_count(), Some(1), "the state was kept");

    // Installed again, it resumes at its kept offset with its kept state.
    b.install(b.bundle("1.0.0", COUNTER_WAT)).await;
    assert_eq!(b.wait_for_counts(2).await, [1, 2]);

    let (status, body) = b
        .call("DELETE", "/plugins/counter?drop_state=true", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(b.stored_count(), None);
    assert!(b.state.offsets("plugin:counter").unwrap().is_empty());
    let (_, list) = b.call("GET", "/plugins", Vec::new()).await;
    assert_eq!(list, json!({"plugins": []}));
}

#[tokio::test]
async fn unsigned_and_wrongly_signed_bundles_are_refused() {
    let b = new_box().await;
    let unsigned =
        Bundle::new(&manifest("1.0.0"), COUNTER_WAT.as_bytes().to_vec(), 1 << 20).unwrap();
    let (status, body) = b.call("POST", "/plugins", unsigned.encode()).await;
    assert_error(status, &body, 403, 40310, "unsigned");

    let stranger = SecretKey::generate().unwrap();
    let mut foreign = unsigned.clone();
    foreign.sign(&stranger);
    let (status, body) = b.call("POST", "/plugins", foreign.encode()).await;
    assert_error(
        status,
        &body,
        403,
        40310,
        &stranger.public().key_id().to_string(),
    );

    // A trusted key id with a signature that does not verify (its last byte flipped).
    let mut forged = b.bundle("1.0.0", COUNTER_WAT);
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let (status, body) = b.call("POST", "/plugins", forged).await;
    assert_error(status, &body, 403, 40310, "not valid");

    // A damaged file is not a signature problem but a bad request.
    let mut damaged = b.bundle("1.0.0", COUNTER_WAT);
    damaged[40] ^= 0x01;
    let (status, body) = b.call("POST", "/plugins", damaged).await;
    assert_error(status, &body, 400, 40010, "damaged");

    let (_, list) = b.call("GET", "/plugins", Vec::new()).await;
    assert_eq!(list, json!({"plugins": []}));

    // The development flag accepts unsigned bundles, never forged ones.
    let dev = open(
        tempfile::tempdir().unwrap(),
        SecretKey::generate().unwrap(),
        |c| c.plugins.allow_unsigned = true,
        &[],
    )
    .await;
    let info = dev.install(unsigned.encode()).await;
    assert_eq!(info["signer"], "unsigned");
    let (status, _) = dev.call("PUT", "/plugins/counter", foreign.encode()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    dev.registry.stop_all().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_naming_the_problem() {
    let b = new_box().await;
    let bundle = b.bundle("1.0.0", COUNTER_WAT);
    b.install(bundle.clone()).await;
    let (status, body) = b.call("POST", "/plugins", bundle.clone()).await;
    assert_error(status, &body, 409, 40910, "upgrade");
    let (status, body) = b.call("PUT", "/plugins/other", bundle.clone()).await;
    assert_error(status, &body, 404, 40410, "other");
    let (status, body) = b.call("PUT", "/plugins/Bad_Name", bundle.clone()).await;
    assert_error(status, &body, 400, 40010, "Bad_Name");
    let (status, body) = b
        .call("POST", "/plugins", b"PK\x03\x04 a zip file".to_vec())
        .await;
    assert_error(status, &body, 400, 40010, "not an Outpost plugin bundle");
    let (status, body) = b.call("POST", "/plugins", Vec::new()).await;
    assert_error(status, &body, 400, 40010, "empty");
    let (status, body) = b
        .call("GET", "/plugins/counter/logs?lines=0", Vec::new())
        .await;
    assert_error(status, &body, 400, 40010, "lines");
    let (status, body) = b
        .call("PUT", "/plugins/counter?reset=maybe", bundle.clone())
        .await;
    assert_error(status, &body, 400, 40010, "reset");
    let request = Request::builder()
        .method("POST")
        .uri("/plugins")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = b.send(request).await;
    assert_error(status, &body, 415, 41510, "application/octet-stream");
    b.registry.stop_all().await;
}

#[tokio::test]
async fn bundles_over_the_configured_limit_are_refused_with_413() {
    let b = open(
        tempfile::tempdir().unwrap(),
        SecretKey::generate().unwrap(),
        |c| {
            c.plugins.max_module_bytes = 1024;
            c.plugins.max_bundle_bytes = 2048;
        },
        &[],
    )
    .await;
    let big = format!("{COUNTER_WAT}\n;; {}", "x".repeat(4096));
    let (status, body) = b.call("POST", "/plugins", b.bundle("1.0.0", &big)).await;
    assert_error(status, &body, 413, 41310, "plugins.max_bundle_bytes");
}

#[tokio::test]
async fn plugin_endpoints_need_the_bearer_token_and_are_503_when_plugins_are_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.http.auth_token = Some("s3cret".into());
    config.plugins.enabled = false;
    let log = Log::open(&dir.path().join("log"), config.log.clone()).unwrap();
    let state = StateStore::open(&dir.path().join("state")).unwrap();
    let app = api::plugins::with_plugins(
        api::router(ApiState::new(
            outpost::kernel::Context::new(
                dir.path(),
                log,
                state,
                outpost::kernel::Identity::new("edge-test", "s1"),
                outpost::kernel::Shutdown::never(),
            ),
            config.http.clone(),
        )),
        None,
    );
    let get = |token: Option<&str>| {
        let mut r = Request::builder().uri("/plugins");
        if let Some(t) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        r.body(Body::empty()).unwrap()
    };
    let response = app.clone().oneshot(get(None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = app.clone().oneshot(get(Some("s3cret"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("plugins.enabled"));
}

#[tokio::test]
async fn logs_show_what_the_plugin_wrote() {
    let b = new_box().await;
    b.install(b.bundle("1.0.0", COUNTER_WAT)).await;
    let (status, body) = b
        .call("GET", "/plugins/counter/logs?lines=50", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lines = body["lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["message"] == "counter ready"),
        "{body}"
    );
    b.registry.stop_all().await;
}

const BUNDLED_MANIFEST: &str =
    "name = \"counter\"\nversion = \"1.0.0\"\ninputs = [\"count.in\"]\noutputs = [\"count.out\"]\nstate = true\n";
const BUNDLED: &[BundledPlugin] = &[BundledPlugin {
    name: "counter",
    manifest: BUNDLED_MANIFEST,
    wasm: include_bytes!("fixtures/wat/lifecycle_counter.wat"),
}];

#[tokio::test]
async fn bundled_plugins_are_installed_on_first_run_only_and_not_after_removal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // Bundled plugins need no trusted key; each run gets a fresh one.
    let reopen_key = || SecretKey::generate().unwrap();

    let b = open(dir, reopen_key(), |_| {}, BUNDLED).await;
    let (_, info) = b.call("GET", "/plugins/counter", Vec::new()).await;
    assert_eq!(
        (
            info["source"].as_str(),
            info["signer"].as_str(),
            info["state"].as_str()
        ),
        (Some("bundled"), Some("bundled"), Some("running")),
        "{info}"
    );
    b.produce(1);
    assert_eq!(b.wait_for_counts(1).await, [1]);
    b.registry.stop_all().await;
    let dir = b.shut_down();

    // Second run: the same plugin, not installed again, its state kept.
    let b = open(dir, reopen_key(), |_| {}, BUNDLED).await;
    let (_, info) = b.call("GET", "/plugins/counter", Vec::new()).await;
    assert_eq!(info["state"], "running", "{info}");
    b.produce(1);
    assert_eq!(b.wait_for_counts(2).await, [1, 2]);
    let (status, _) = b.call("DELETE", "/plugins/counter", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let dir = b.shut_down();

    // Third run: the operator removed it, so it stays removed.
    let b = open(dir, reopen_key(), |_| {}, BUNDLED).await;
    let (_, list) = b.call("GET", "/plugins", Vec::new()).await;
    assert_eq!(list, json!({"plugins": []}));
    assert!(!path.join("plugins/installed/counter").exists());
}

#[tokio::test]
async fn the_embedded_bundled_plugins_are_valid_and_initialise() {
    let embedded = registry::embedded();
    let names: Vec<&str> = embedded.iter().map(|p| p.name).collect();
    assert_eq!(names, registry::BUNDLED_NAMES);
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default();
    let log = Log::open(&dir.path().join("log"), config.log.clone()).unwrap();
    let state = StateStore::open(&dir.path().join("state")).unwrap();
    let engine = WasmEngine::new(
        &config.plugins,
        config.log.max_record_bytes,
        None,
        log,
        state,
    )
    .unwrap();
    for plugin in embedded {
        let bundle = Bundle::new(
            plugin.manifest,
            plugin.wasm.to_vec(),
            config.plugins.max_module_bytes,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", plugin.name));
        assert_eq!(bundle.manifest().name, plugin.name);
        let module = engine
            .compile(bundle.manifest(), bundle.wasm())
            .unwrap_or_else(|e| panic!("{}: {e}", plugin.name));
        engine
            .check_init(bundle.manifest(), &module)
            .unwrap_or_else(|e| panic!("{}: {e}", plugin.name));
    }
}

/// Runs one `outpost …` command line in this process and returns its output or error.
fn outpost_cli(args: &[&str]) -> Result<String, String> {
    use clap::Parser as _;
    let cli =
        outpost::cli::Cli::try_parse_from(std::iter::once("outpost").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    outpost::cli::execute(cli, Box::new(std::io::empty()), &mut out).map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn the_cli_signs_installs_upgrades_lists_and_removes_over_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
    // Offline: a key pair, and a plugin directory signed into a bundle.
    let keygen = outpost_cli(&["plugin", "keygen", "--out", &path("keys")]).unwrap();
    let trusted = keygen
        .lines()
        .find_map(|l| l.strip_prefix("trusted_keys = [\"")?.strip_suffix("\"]"))
        .unwrap_or_else(|| panic!("{keygen}"))
        .to_string();
    std::fs::create_dir_all(path("src/counter")).unwrap();
    std::fs::write(path("src/counter/plugin.toml"), manifest("1.0.0")).unwrap();
    std::fs::write(path("src/counter/plugin.wasm"), COUNTER_WAT).unwrap();
    let key = path("keys/outpost-plugin.key");
    let signed = outpost_cli(&["plugin", "sign", "--key", &key, &path("src/counter")]).unwrap();
    assert!(signed.contains("counter 1.0.0"), "{signed}");
    assert!(
        dir.path().join("src/counter.opb").is_file(),
        "the bundle goes beside the directory"
    );
    std::fs::write(path("v2.toml"), manifest("2.0.0")).unwrap();
    std::fs::write(path("v2.wasm"), counter_with_step(10)).unwrap();
    let v2 = path("v2.opb");
    outpost_cli(&[
        "plugin",
        "sign",
        "--key",
        &key,
        "--manifest",
        &path("v2.toml"),
        "--wasm",
        &path("v2.wasm"),
        "--out",
        &v2,
    ])
    .unwrap();
    outpost_cli(&[
        "plugin",
        "sign",
        "--unsigned",
        &path("src/counter"),
        "--out",
        &path("unsigned.opb"),
    ])
    .unwrap();

    // A box that trusts the key.
    let mut config = Config::default();
    config.edge.data_dir = dir.path().join("data");
    config.http.listen = "127.0.0.1:0".into();
    config.plugins.bundled = false;
    config.plugins.trusted_keys = vec![trusted];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(outpost::app::App::start(config)).unwrap();
    let server = format!("http://{}", app.local_addr());
    let s = ["--server", server.as_str()];
    let cmd = |args: &[&str]| outpost_cli(&[args, &s[..]].concat());

    let err = cmd(&["plugin", "install", &path("unsigned.opb")]).unwrap_err();
    assert!(err.contains("403") && err.contains("unsigned"), "{err}");
    let installed = cmd(&["plugin", "install", &path("src/counter.opb")]).unwrap();
    assert!(
        installed.contains("installed counter 1.0.0 (running"),
        "{installed}"
    );
    app.log()
        .topic_or_create("count.in")
        .unwrap()
        .append(vec![NewRecord::default()])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cmd(&["plugin", "list"])
        .unwrap()
        .lines()
        .nth(1)
        .is_none_or(|row| row.split_whitespace().nth(5) != Some("1"))
    {
        assert!(Instant::now() < deadline, "the record was not processed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let upgraded = cmd(&["plugin", "upgrade", &v2]).unwrap();
    assert!(
        upgraded.contains("upgraded counter 2.0.0 (running") && upgraded.contains("state kept"),
        "{upgraded}"
    );
    let list = cmd(&["plugin", "list"]).unwrap();
    assert!(list.starts_with("NAME"), "{list}");
    let row: Vec<&str> = list.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..4],
        ["counter", "2.0.0", "running", "operator"],
        "{list}"
    );
    let logs = cmd(&["plugin", "logs", "counter", "--lines", "10"]).unwrap();
    assert!(logs.contains("counter ready"), "{logs}");
    let status = cmd(&["status"]).unwrap();
    assert!(status.contains("plugins:  1 (1 running)"), "{status}");
    let removed = cmd(&["plugin", "remove", "counter", "--drop-state"]).unwrap();
    assert_eq!(removed, "removed counter (state dropped)\n");
    assert_eq!(
        cmd(&["plugin", "list"]).unwrap(),
        format!("no plugins installed on {server}\n")
    );
    let err = cmd(&["plugin", "remove", "counter"]).unwrap_err();
    assert!(err.contains("404"), "{err}");

    rt.block_on(app.shutdown()).unwrap();
}
