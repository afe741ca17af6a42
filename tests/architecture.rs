//! The architecture test: every room of `runtime/src` may use only the rooms its row of
//! [`ALLOWED`] names (the same table is in `docs/architecture.md`), and library code outside
//! `cli/` never prints to stdout. It reads every `crate::…` path in non-test code of the
//! library, so a forbidden arrow fails here the moment it is written, the way ArchUnit guards a
//! Java codebase.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Room → the rooms (or `room::submodule` prefixes) its code may name. A room may always use
/// itself. `*` allows everything (the wiring and the tools).
const ALLOWED: &[(&str, &[&str])] = &[
    // The kernel's primitives use only the metrics registry; its `context` bundles the opened
    // storage (log, state) for the components.
    ("kernel", &["metrics", "log", "state"]),
    ("metrics", &["kernel::lock"]),
    // Storage: the kernel's primitives (clock, lock), never the context.
    ("log", &["kernel::clock", "kernel::lock", "metrics"]),
    ("state", &["kernel", "log", "metrics"]),
    // Components: the kernel (context, shutdown, status, backoff, clock), storage, metrics;
    // ingest checks the store-event contracts before it appends.
    (
        "ingest",
        &[
            "kernel",
            "log",
            "state",
            "metrics",
            "mqtt_client",
            "contracts",
        ],
    ),
    // The MQTT client code the source, the sink and the demo traffic share.
    ("mqtt_client", &["kernel"]),
    // The store-event schemas of CONTRACTS.md and their check, which every ingest path shares
    // (HTTP produce in `api`, the MQTT listener and sources in `ingest`): it uses no room.
    ("contracts", &[]),
    (
        "sink",
        &["kernel", "log", "state", "metrics", "mqtt_client"],
    ),
    ("plugins", &["kernel", "log", "state", "metrics"]),
    // The Kafka listener: a component on the log and the state store (group offsets); produce
    // is an ingest path, so it checks the store-event contracts.
    ("kafka", &["kernel", "log", "state", "metrics", "contracts"]),
    ("forward", &["kernel", "log", "state", "metrics"]),
    // The mirror consumes from the cloud cluster the forwarder is configured for.
    (
        "mirror",
        &["kernel", "log", "state", "metrics", "forward::KafkaConfig"],
    ),
    // Demo traffic: an MQTT client, and the Modbus device entry of the simulated fridge.
    (
        "simulate",
        &[
            "kernel",
            "log",
            "metrics",
            "mqtt_client",
            "ingest::modbus::DeviceConfig",
            "ingest::modbus::PointConfig",
            "ingest::modbus::RegisterKind",
            "ingest::modbus::ValueType",
        ],
    ),
    // The HTTP API serves the storage, the status boards and the public handles of the
    // plugin registry and the forwarder; of the config it reads only `[http]`. Its produce
    // endpoint is an ingest path: it checks the store-event contracts.
    (
        "api",
        &[
            "kernel",
            "log",
            "state",
            "metrics",
            "config::HttpConfig",
            "forward",
            "plugins",
            "contracts",
        ],
    ),
    // The config file names every section's type (`[ingest]` is `contracts::IngestConfig`).
    (
        "config",
        &[
            "kernel",
            "log",
            "metrics",
            "ingest",
            "sink",
            "plugins",
            "forward",
            "mirror",
            "simulate",
            "contracts",
            "kafka",
        ],
    ),
    // Benchmarks start boxes and drive components directly; never the CLI or the API.
    (
        "bench",
        &[
            "app",
            "kernel",
            "log",
            "state",
            "metrics",
            "ingest",
            "plugins",
            "forward",
            "simulate",
            "mqtt_client",
        ],
    ),
    // The wiring and the client commands.
    ("app", &["*"]),
    ("cli", &["*"]),
    ("lib", &["*"]),
    ("main", &["*"]),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("runtime/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The room a file belongs to: its first path component under `src/` (`log/topic.rs` → `log`,
/// `app.rs` → `app`).
fn room_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .expect("a path under src")
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

/// The file without its test code: `tests.rs` files are all test code, and everything from a
/// `#[cfg(test)]` line on is (test modules sit at the end of a file by convention).
fn library_code(relative: &Path, text: &str) -> String {
    if relative.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// One library file: its path under `src/`, its room and its non-test code.
struct Source {
    relative: PathBuf,
    room: String,
    code: String,
}

/// Every file of the library, read once.
fn sources() -> Vec<Source> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 50,
        "found only {} files in {src:?}",
        files.len()
    );
    files
        .iter()
        .map(|file| {
            let relative = file.strip_prefix(&src).expect("under src").to_path_buf();
            let text = std::fs::read_to_string(file).expect("a readable source file");
            Source {
                room: room_of(&relative),
                code: library_code(&relative, &text),
                relative,
            }
        })
        .collect()
}

/// Every `crate::a::b::c` path named in `code`, with `use` groups expanded one level:
/// `crate::kernel::{lock, Shutdown}` names `kernel::lock` and `kernel::Shutdown`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let prefix = path_prefix(rest);
        let after = &rest[prefix.len()..];
        match after
            .strip_prefix("::{")
            .or_else(|| after.strip_prefix('{'))
        {
            Some(group) => {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item = path_prefix(item.trim());
                    if item.is_empty() || item == "self" {
                        paths.insert(prefix.clone());
                    } else if prefix.is_empty() {
                        paths.insert(item);
                    } else {
                        paths.insert(format!("{prefix}::{item}"));
                    }
                }
            }
            None => {
                paths.insert(prefix);
            }
        }
    }
    paths
}

/// The leading `a::b::c` of `s` (identifiers and `::` only).
fn path_prefix(s: &str) -> String {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    s[..end].trim_end_matches(':').to_string()
}

fn allowed(room: &str, path: &str) -> bool {
    let target = path.split("::").next().unwrap_or_default();
    if target == room || target.is_empty() || target == "self" {
        return true;
    }
    let Some((_, rules)) = ALLOWED.iter().find(|(r, _)| *r == room) else {
        return false;
    };
    rules
        .iter()
        .any(|rule| *rule == "*" || path == *rule || path.starts_with(&format!("{rule}::")))
}

#[test]
fn every_room_uses_only_the_rooms_the_architecture_allows() {
    let mut forbidden = Vec::new();
    for Source {
        relative,
        room,
        code,
    } in sources()
    {
        assert!(
            ALLOWED.iter().any(|(r, _)| *r == room),
            "{} is in the room `{room}`, which the architecture table does not list: add its row \
             (and to docs/architecture.md)",
            relative.display()
        );
        for path in crate_paths(&code) {
            if !allowed(&room, &path) {
                forbidden.push(format!(
                    "{}: `{room}` uses `crate::{path}`",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        forbidden.is_empty(),
        "arrows the architecture does not allow (see docs/architecture.md):\n{}",
        forbidden.join("\n")
    );
}

#[test]
fn no_component_reads_the_whole_config_or_reaches_the_api_or_the_cli() {
    // The rule of the issue, spelled out: only app.rs and cli/ (and the config itself) name
    // `config::Config`; only app.rs, cli/ and api/ name `crate::api`.
    let mut found = Vec::new();
    for Source {
        relative,
        room,
        code,
    } in sources()
    {
        let paths = crate_paths(&code);
        let names_config = paths.iter().any(|p| p == "config::Config");
        if names_config && !["app", "cli", "config", "lib", "main"].contains(&room.as_str()) {
            found.push(format!("{}: names config::Config", relative.display()));
        }
        let names_api = paths.iter().any(|p| p == "api" || p.starts_with("api::"));
        if names_api && !["app", "cli", "api", "lib", "main"].contains(&room.as_str()) {
            found.push(format!("{}: names crate::api", relative.display()));
        }
        let names_cli = paths.iter().any(|p| p == "cli" || p.starts_with("cli::"));
        if names_cli && !["app", "cli", "lib", "main"].contains(&room.as_str()) {
            found.push(format!("{}: names crate::cli", relative.display()));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn library_code_outside_the_cli_never_prints_to_stdout() {
    let mut printing = Vec::new();
    for Source {
        relative,
        room,
        code,
    } in sources()
    {
        if room == "cli" || room == "main" {
            continue;
        }
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            if line.contains("println!(")
                || line.contains("print!(")
                || line.contains("io::stdout()")
                || line.contains("dbg!(")
            {
                printing.push(format!("{}:{}: {line}", relative.display(), n + 1));
            }
        }
    }
    assert!(
        printing.is_empty(),
        "only cli/ prints to stdout (log with tracing instead):\n{}",
        printing.join("\n")
    );
}

#[test]
fn the_architecture_table_finds_a_forbidden_arrow() {
    // The guard guards: a component naming the API, another component or the whole config
    // is refused, and the allowed arrows pass.
    assert!(!allowed("ingest", "api::ApiState"));
    assert!(!allowed("plugins", "config::Config"));
    assert!(!allowed("sink", "ingest::mqtt::listener"));
    assert!(!allowed("sink", "ingest::mqtt::config::SinkConfig"));
    assert!(!allowed("log", "kernel::Context"));
    assert!(!allowed("forward", "mirror"));
    assert!(allowed("ingest", "kernel::Context"));
    assert!(allowed("log", "kernel::clock::Clock"));
    assert!(allowed("sink", "mqtt_client::ClientSettings"));
    let paths = crate_paths("use crate::kernel::{lock, Shutdown};\nuse crate::{log::Log, state};");
    let expected = ["kernel::lock", "kernel::Shutdown", "log::Log", "state"];
    assert_eq!(
        paths,
        expected.iter().map(|p| p.to_string()).collect(),
        "{paths:?}"
    );
}
