//! The HTTP API end to end through a real TCP socket: `App::start` on a free port, produce
//! with a hand-written HTTP/1.1 request, read back, restart on the same data dir.

use std::net::SocketAddr;
use std::time::Duration;

use outpost::app::App;
use outpost::config::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::events::payment;

/// Sends one raw request with `Connection: close` and returns the status code and body.
async fn raw_http(addr: SocketAddr, request: String) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers within 30 s")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    assert!(
        head.to_ascii_lowercase().contains("content-length:"),
        "answers carry a Content-Length: {head}"
    );
    (status, body.to_string())
}

fn config_in(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.edge.data_dir = dir.join("data");
    config.http.listen = "127.0.0.1:0".into();
    config.kafka.listen = "127.0.0.1:0".into();
    // Not the default 1883: other tests of this binary start boxes in the same process.
    config.mqtt.broker.listen = format!("127.0.0.1:{}", crate::common::python::free_port());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_over_a_socket_read_back_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(config_in(dir.path())).await.unwrap();
    let addr = app.local_addr();
    assert_ne!(addr.port(), 0);

    let (first, second) = (payment("p-1", "card-9"), payment("p-2", "card-2"));
    let body =
        json!({"records": [{"key": "card-9", "value": first}, {"value": second}]}).to_string();
    let request = format!(
        "POST /topics/pos.payments HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/vnd.kafka.json.v2+json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = raw_http(addr, request).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["offsets"][0]["offset"], 0);
    assert_eq!(answer["offsets"][1]["offset"], 1);

    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, page) = raw_http(addr, get("/topics/pos.payments/records?offset=0")).await;
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["next_offset"], 2);
    assert_eq!(page["records"][0]["key"], "card-9");
    assert_eq!(page["records"][0]["value"], first);
    assert_eq!(page["records"][1]["value"], second);

    let (_, health) = raw_http(addr, get("/health")).await;
    let edge_id = serde_json::from_str::<Value>(&health).unwrap()["edge_id"].clone();
    assert!(
        edge_id.as_str().is_some_and(|id| !id.is_empty()),
        "{health}"
    );

    app.shutdown().await.unwrap();

    // Same data dir: the records and the edge id are still there.
    let app = App::start(config_in(dir.path())).await.unwrap();
    let addr = app.local_addr();
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, page) = raw_http(addr, get("/topics/pos.payments/records")).await;
    assert_eq!(status, 200, "{page}");
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["records"][1]["value"], second);
    let (_, health) = raw_http(addr, get("/health")).await;
    assert_eq!(
        serde_json::from_str::<Value>(&health).unwrap()["edge_id"],
        edge_id
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_fails_start_before_touching_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config_in(dir.path());
    config.http.listen = taken.local_addr().unwrap().to_string();
    let err = App::start(config).await.unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    assert!(!dir.path().join("data").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_plugin_upload_gets_its_413_answer_not_a_broken_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(config_in(dir.path())).await.unwrap();
    let addr = app.local_addr();
    let size = 50 * 1024 * 1024;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /plugins HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..50 {
        stream
            .write_all(&chunk)
            .await
            .expect("the whole upload is read, not cut off with a broken pipe");
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers within 30 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("plugins.max_bundle_bytes"), "{answer}");
    app.shutdown().await.unwrap();
}
