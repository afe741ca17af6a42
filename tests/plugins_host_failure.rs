//! The state store runs out of space for real: `<data_dir>/state` is a small tmpfs that the test
//! fills while fraud-score scores payments. A host failure is not the plugin's fault: no payment
//! goes to the dead-letter topic, the plugin shows `paused` with the reason, and once space
//! returns the store reopens, every payment gets its verdict and the box stops cleanly.
//!
//! Needs root's `mount -t tmpfs`; where mounting is refused the test says so and passes (or
//! fails under `OUTPOST_REQUIRE_PEERS=1`).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outpost::app::App;
use outpost::config::Config;
use outpost::log::{Log, NewRecord};
use serde_json::{json, Value};

use crate::common::wait::wait_until_async;

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 16 * 1024];
        loop {
            if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_data()) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                return path;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn payment(i: usize) -> NewRecord {
    let value = json!({
        "payment_id": format!("p-{i}"), "ts_ms": 1_700_000_000_000u64 + i as u64 * 1000,
        "store_id": "store-7", "terminal_id": "store-7-t1", "card_id": format!("card-{}", i % 7),
        "amount": 12.5, "currency": "EUR", "channel": "card_present", "kind": "sale",
    });
    NewRecord {
        key: Some(format!("card-{}", i % 7).into_bytes()),
        value: value.to_string().into_bytes(),
        ..NewRecord::default()
    }
}

/// Every record of `topic` (none when it does not exist).
fn records(log: &Log, topic: &str) -> Vec<Value> {
    let Ok(topic) = log.topic(topic) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let fetch = topic.read(next, 10_000, 16 << 20).unwrap();
        if fetch.records.is_empty() {
            return out;
        }
        next = fetch.next_offset;
        out.extend(
            fetch
                .records
                .iter()
                .map(|r| serde_json::from_slice(&r.value).unwrap_or(Value::Null)),
        );
    }
}

fn scored(log: &Log) -> BTreeSet<String> {
    records(log, "fraud.scores")
        .iter()
        .filter_map(|v| v["payment_id"].as_str().map(str::to_string))
        .collect()
}

/// fraud-score's runner status, via `GET /plugins/fraud-score`.
async fn runner_status(addr: std::net::SocketAddr) -> Value {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /plugins/fraud-score HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["runner"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_store_pauses_fraud_score_without_dead_letters_and_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tmpfs = match Tmpfs::mount(&data.join("state"), "4m") {
        Ok(t) => t,
        Err(why) => {
            assert!(
                std::env::var("OUTPOST_REQUIRE_PEERS").as_deref() != Ok("1"),
                "mounting a tmpfs was refused: {why}"
            );
            eprintln!("SKIPPED: mounting a tmpfs for the state store was refused ({why})");
            return;
        }
    };
    let mut config = Config::default();
    config.edge.data_dir = data.clone();
    config.http.listen = "127.0.0.1:0".into();
    config.kafka.listen = "127.0.0.1:0".into();
    config.mqtt.broker.listen = format!("127.0.0.1:{}", crate::common::python::free_port());
    let app = App::start(config).await.unwrap();
    let addr = app.local_addr();
    let log = app.log().clone();
    let payments = log.topic_or_create("pos.payments").unwrap();

    let mut sent = 0;
    payments.append((0..5).map(payment).collect()).unwrap();
    sent += 5;
    let warm = wait_until_async(
        Duration::from_secs(60),
        || async { scored(&log).len() },
        |n| *n == 5,
    )
    .await;
    assert!(warm.is_ok(), "scores before the disk fills: {warm:?}");

    let filler = tmpfs.fill();
    // Payments keep coming until the plugin notices the store cannot write.
    let mut paused = None;
    for _ in 0..120 {
        payments
            .append((sent..sent + 10).map(payment).collect())
            .unwrap();
        sent += 10;
        let status = runner_status(addr).await;
        if let Some(reason) = status["paused"].as_str() {
            paused = Some(reason.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reason = paused.expect("fraud-score pauses while the state store cannot write");
    eprintln!("paused after {sent} payments: {reason}");
    assert!(
        reason.contains("state") || reason.contains("commit"),
        "{reason}"
    );
    assert!(
        records(&log, "fraud-score.dlq").is_empty(),
        "nothing is dead-lettered because the host failed"
    );

    std::fs::remove_file(&filler).unwrap();
    let caught_up = wait_until_async(
        Duration::from_secs(90),
        || async { scored(&log).len() },
        |n| *n == sent,
    )
    .await;
    assert!(
        caught_up.is_ok(),
        "{caught_up:?} of {sent} payments scored after space returned"
    );
    assert!(records(&log, "fraud-score.dlq").is_empty());
    let resumed = wait_until_async(
        Duration::from_secs(30),
        || async { runner_status(addr).await },
        |s| s["paused"].is_null(),
    )
    .await;
    assert!(resumed.is_ok(), "{resumed:?}");
    // The box stops cleanly: the state store syncs again (exit 0 for `outpost run`).
    app.shutdown().await.unwrap();
    drop(tmpfs);
}
