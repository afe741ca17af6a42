//! The box's identity survives a damaged or deleted state store: `App::start` refuses to run on
//! a damaged store (naming the file and `--rebuild-state`), and with `rebuild_state` it starts
//! with the same edge id and the consumer offsets of the positions checkpoint. One test drives
//! the real binary to check the flag and the exit code.

use std::path::Path;
use std::process::Command;

use outpost::app::App;
use outpost::config::Config;
use outpost::state::{open_box, BoxOptions, Commit};

fn config_in(dir: &Path) -> Config {
    let mut config = Config::default();
    config.edge.data_dir = dir.join("data");
    config.http.listen = "127.0.0.1:0".into();
    // Not the default 1883: other tests of this binary start boxes in the same process.
    config.mqtt.broker.listen = format!("127.0.0.1:{}", crate::common::python::free_port());
    // The bundled plugins are not what these tests are about.
    config.plugins.bundled = false;
    config
}

/// Starts a box once (generating its edge id, writing a record to the log), stops it, and
/// commits a consumer offset the way a running box does (a sync writes the checkpoint).
/// Returns the edge id.
async fn a_box_with_a_past(config: &Config) -> String {
    let app = App::start(config.clone()).await.unwrap();
    let edge_id = app.edge_id().to_string();
    app.log()
        .topic_or_create("pos.payments")
        .unwrap()
        .append(vec![outpost::log::NewRecord {
            value: b"{}".to_vec(),
            ..Default::default()
        }])
        .unwrap();
    app.shutdown().await.unwrap();
    let options = BoxOptions {
        store_id: config.edge.store_id.clone(),
        ..BoxOptions::default()
    };
    let opened = open_box(&config.edge.data_dir, &options).unwrap();
    assert_eq!(opened.identity.edge_id, edge_id);
    opened
        .store
        .commit(&Commit {
            consumer: "forward:cloud".into(),
            offsets: vec![("pos.payments".into(), 1)],
            ..Commit::default()
        })
        .unwrap();
    opened.store.sync().unwrap();
    edge_id
}

/// Overwrites the middle of sled's `db` file and its head with garbage, as a bad sector or a
/// torn copy would.
fn damage(db: &Path) {
    let len = std::fs::metadata(db).unwrap().len() as usize;
    let mut raw = std::fs::read(db).unwrap();
    for b in raw.iter_mut().take(len.min(4096)) {
        *b ^= 0x5a;
    }
    std::fs::write(db, raw).unwrap();
}

/// The offset `forward:cloud` resumes from on `pos.payments` in the box's store.
fn stored_offset(config: &Config) -> Option<u64> {
    let options = BoxOptions {
        store_id: config.edge.store_id.clone(),
        ..BoxOptions::default()
    };
    let opened = open_box(&config.edge.data_dir, &options).unwrap();
    opened
        .store
        .offset("forward:cloud", "pos.payments")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_store_refuses_to_start_then_rebuilds_with_the_same_edge_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    let edge_id = a_box_with_a_past(&config).await;
    let db = config.edge.data_dir.join("state").join("db");
    damage(&db);

    let refused = App::start(config.clone()).await.unwrap_err().to_string();
    assert!(refused.contains(&db.display().to_string()), "{refused}");
    assert!(refused.contains("--rebuild-state"), "{refused}");

    config.edge.rebuild_state = true;
    let app = App::start(config.clone()).await.unwrap();
    assert_eq!(app.edge_id(), edge_id);
    app.shutdown().await.unwrap();
    // The damaged store was kept aside, and the forwarder's cursor came back.
    let aside = std::fs::read_dir(&config.edge.data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.damaged-")
        });
    assert!(aside, "the damaged store is moved aside, not deleted");
    assert_eq!(stored_offset(&config), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_state_store_with_a_log_refuses_then_rebuilds_with_the_same_edge_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    let edge_id = a_box_with_a_past(&config).await;
    std::fs::remove_dir_all(config.edge.data_dir.join("state")).unwrap();

    let refused = App::start(config.clone()).await.unwrap_err().to_string();
    assert!(refused.contains("--rebuild-state"), "{refused}");
    assert!(refused.contains("gone"), "{refused}");

    config.edge.rebuild_state = true;
    let app = App::start(config.clone()).await.unwrap();
    assert_eq!(app.edge_id(), edge_id);
    app.shutdown().await.unwrap();
    assert_eq!(stored_offset(&config), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_whose_store_and_identity_file_are_both_gone_never_gets_a_new_edge_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    a_box_with_a_past(&config).await;
    std::fs::remove_dir_all(config.edge.data_dir.join("state")).unwrap();
    std::fs::remove_file(config.edge.data_dir.join("identity")).unwrap();

    config.edge.rebuild_state = true;
    let refused = App::start(config.clone()).await.unwrap_err().to_string();
    assert!(
        refused.contains("no copy of this box's edge id survived"),
        "{refused}"
    );
    assert!(refused.contains("OUTPOST_EDGE_ID"), "{refused}");

    config.edge.edge_id = Some("edge-restored".into());
    let app = App::start(config).await.unwrap();
    assert_eq!(app.edge_id(), "edge-restored");
    app.shutdown().await.unwrap();
}

#[test]
fn outpost_run_on_a_damaged_store_exits_1_naming_the_file_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(a_box_with_a_past(&config));
    }
    let db = config.edge.data_dir.join("state").join("db");
    damage(&db);
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["run", "--data-dir"])
        .arg(&config.edge.data_dir)
        .env("OUTPOST_LISTEN", "127.0.0.1:0")
        .env(
            "OUTPOST_MQTT_LISTEN",
            format!("127.0.0.1:{}", crate::common::python::free_port()),
        )
        // Not the default 9092, which another box on the machine may hold.
        .env("OUTPOST_KAFKA_LISTEN", "127.0.0.1:0")
        .env_remove("OUTPOST_EDGE_ID")
        .env_remove("OUTPOST_DATA_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(stderr.contains("--rebuild-state"), "{stderr}");
}
