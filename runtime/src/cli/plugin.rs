//! `outpost plugin …`: manage the plugins of a running box (`install`, `upgrade`, `remove`,
//! `list`, `logs`, over the HTTP API at `--server`), make signed bundles offline (`keygen`,
//! `sign`) and write out the plugins bundled in this binary (`export`).
//!
//! A typical release of a plugin:
//! ```text
//! outpost plugin keygen --out ~/.outpost-keys          # once; put the printed public key
//!                                                      # into the box's [plugins] trusted_keys
//! outpost plugin sign --key ~/.outpost-keys/outpost-plugin.key dist/fraud-score --out fraud-score.opb
//! outpost plugin install fraud-score.opb --server http://box:8080
//! outpost plugin upgrade fraud-score.opb               # later versions; --reset drops state
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;

use super::{CliError, Client, ClientArgs, ClientError};
use crate::plugins::bundle::{self, Bundle, BundleError, SecretKey};

/// Timeout of list/logs/remove requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of install/upgrade (the box compiles the module before it answers).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// `outpost plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Install a bundle (.opb) on a running box and start it.
    Install {
        /// The bundle file.
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace an installed plugin with the bundle's version (named by its manifest); state
    /// and offsets are kept unless --reset. A failed upgrade leaves the old version running.
    Upgrade {
        /// The bundle file.
        file: PathBuf,
        /// Start the new version with empty state, from the beginning of its input topics.
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop and delete a plugin (a removed bundled plugin is not installed again).
    Remove {
        /// The plugin's name.
        name: String,
        /// Also delete its state and input offsets.
        #[arg(long)]
        drop_state: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the installed plugins with their status.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a plugin's recent log lines (its stdout/stderr, log calls and host messages).
    Logs {
        /// The plugin's name.
        name: String,
        /// How many lines, newest last.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        lines: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a signing key pair (offline): DIR/outpost-plugin.key (0600) and .pub.
    Keygen {
        /// Directory for the two files (created if missing; existing keys are not overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Make a bundle (.opb) of a manifest and a module, signed with a secret key (offline).
    Sign(SignArgs),
    /// Write a plugin bundled in this binary (fraud-score, recommend, sensor-watch) to
    /// DIR/<name>/plugin.toml and plugin.wasm (offline), for partners to study, re-sign or
    /// rebuild; its source is in the SDK's repository under plugins/<name>/.
    Export {
        /// The bundled plugin's name.
        name: String,
        /// Directory to write `<name>/` into (created if missing; existing files are replaced).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
}

/// Arguments of `outpost plugin sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// A directory holding plugin.toml and plugin.wasm (or give --manifest and --wasm).
    #[arg(value_name = "DIR", required_unless_present_all = ["manifest", "wasm"], conflicts_with_all = ["manifest", "wasm"])]
    pub dir: Option<PathBuf>,
    /// The manifest (plugin.toml).
    #[arg(long, value_name = "FILE", requires = "wasm")]
    pub manifest: Option<PathBuf>,
    /// The wasm module.
    #[arg(long, value_name = "FILE", requires = "manifest")]
    pub wasm: Option<PathBuf>,
    /// The secret key file from `outpost plugin keygen`.
    #[arg(long, value_name = "FILE", required_unless_present = "unsigned")]
    pub key: Option<PathBuf>,
    /// Write an unsigned bundle (only boxes with `plugins.allow_unsigned = true` accept it).
    #[arg(long, conflicts_with = "key")]
    pub unsigned: bool,
    /// Where to write the bundle (default: `<name>.opb` beside DIR, or in the working
    /// directory with --manifest/--wasm).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn bundle_error(e: BundleError) -> CliError {
    match e {
        BundleError::Io { context, source } => CliError::Io(std::io::Error::new(
            source.kind(),
            format!("{context}: {source}"),
        )),
        other => CliError::Usage(other.to_string()),
    }
}

/// Runs one `outpost plugin` command.
pub fn execute(command: PluginCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        PluginCommand::Keygen { out: dir } => keygen(&dir, out),
        PluginCommand::Sign(args) => sign(&args, out),
        PluginCommand::Export { name, out: dir } => export(&name, &dir, out),
        PluginCommand::Install { file, client } => {
            let bytes = read_bundle(&file)?;
            let mut client = connect(client)?;
            runtime()?.block_on(install(&mut client, bytes, out))
        }
        PluginCommand::Upgrade {
            file,
            reset,
            client,
        } => {
            let bytes = read_bundle(&file)?;
            let mut client = connect(client)?;
            runtime()?.block_on(upgrade(&mut client, bytes, reset, out))
        }
        PluginCommand::Remove {
            name,
            drop_state,
            client,
        } => {
            let mut client = connect(client)?;
            runtime()?.block_on(remove(&mut client, name, drop_state, out))
        }
        PluginCommand::List { client } => {
            let mut client = connect(client)?;
            runtime()?.block_on(list(&mut client, out))
        }
        PluginCommand::Logs {
            name,
            lines,
            client,
        } => {
            let mut client = connect(client)?;
            runtime()?.block_on(logs(&mut client, name, lines, out))
        }
    }
}

fn connect(args: ClientArgs) -> Result<Client, CliError> {
    Ok(Client::new(&args.server, args.token)?)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn keygen(dir: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    let key = bundle::keygen(dir).map_err(bundle_error)?;
    writeln!(
        out,
        "secret key: {} (keep it private)",
        key.secret_path.display()
    )?;
    writeln!(out, "public key: {}", key.public_path.display())?;
    writeln!(out, "key id:     {}", key.public.key_id())?;
    writeln!(out, "Trust it on a box with, in [plugins]:")?;
    writeln!(out, "trusted_keys = [\"{}\"]", key.public.to_text())?;
    Ok(())
}

fn sign(args: &SignArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let (manifest, wasm) = match (&args.dir, &args.manifest, &args.wasm) {
        (Some(dir), _, _) => (dir.join("plugin.toml"), dir.join("plugin.wasm")),
        (None, Some(m), Some(w)) => (m.clone(), w.clone()),
        _ => {
            return Err(CliError::Usage(
                "give a directory with plugin.toml and plugin.wasm, or --manifest and --wasm"
                    .into(),
            ))
        }
    };
    // The box enforces its own module limit; here only the format's.
    let mut bundle =
        Bundle::from_files(&manifest, &wasm, u32::MAX as usize).map_err(bundle_error)?;
    let signer = match (&args.key, args.unsigned) {
        (Some(key), _) => {
            let key = SecretKey::read(key).map_err(bundle_error)?;
            bundle.sign(&key);
            key.public().key_id().to_string()
        }
        (None, true) => "nobody (unsigned)".to_string(),
        (None, false) => return Err(CliError::Usage("give --key FILE, or --unsigned".into())),
    };
    // Default: `<name>.opb` next to the source directory (`dist/echo` → `dist/echo.opb`), or in
    // the working directory for --manifest/--wasm.
    let file_name = format!("{}.opb", bundle.manifest().name);
    let path = match (&args.out, &args.dir) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) => match dir.canonicalize().ok().as_deref().and_then(Path::parent) {
            Some(parent) => parent.join(file_name),
            None => PathBuf::from(file_name),
        },
        (None, None) => PathBuf::from(file_name),
    };
    bundle::write_atomic(&path, &bundle.encode()).map_err(|e| {
        CliError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write {}: {e}", path.display()),
        ))
    })?;
    writeln!(
        out,
        "wrote {} ({} {}, {} bytes of wasm, sha256 {}, signed by {signer})",
        path.display(),
        bundle.manifest().name,
        bundle.manifest().version,
        bundle.wasm().len(),
        bundle.digest_hex(),
    )?;
    Ok(())
}

/// `outpost plugin export`: a bundled plugin's manifest and module, as `sign` reads them.
fn export(name: &str, dir: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    let embedded = crate::plugins::registry::bundled::embedded();
    let plugin = embedded.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = embedded.iter().map(|p| p.name).collect();
        CliError::Usage(format!(
            "{name:?} is not bundled in this binary; the bundled plugins are {}",
            names.join(", ")
        ))
    })?;
    let folder = dir.join(name);
    let io = |what: &Path, e: std::io::Error| {
        CliError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write {}: {e}", what.display()),
        ))
    };
    std::fs::create_dir_all(&folder).map_err(|e| io(&folder, e))?;
    for (file, bytes) in [
        ("plugin.toml", plugin.manifest.as_bytes()),
        ("plugin.wasm", plugin.wasm),
    ] {
        let path = folder.join(file);
        bundle::write_atomic(&path, bytes).map_err(|e| io(&path, e))?;
    }
    writeln!(
        out,
        "wrote {}/plugin.toml and plugin.wasm ({} bytes of wasm); settings go in the box config \
         as [plugins.{name}.config], or sign a rebuilt copy with `outpost plugin sign`",
        folder.display(),
        plugin.wasm.len()
    )?;
    Ok(())
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| {
        CliError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot read the bundle {}: {e}", path.display()),
        ))
    })
}

fn text(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn describe(v: &Value) -> String {
    let mut line = format!(
        "{} {} ({}, signed by {}, sha256 {})",
        text(v, "name"),
        text(v, "version"),
        text(v, "state"),
        text(v, "signer"),
        text(v, "sha256").get(..16).unwrap_or_default()
    );
    let error = text(v, "error");
    if !error.is_empty() {
        line.push_str(&format!(": {error}"));
    }
    line
}

async fn install(client: &mut Client, bytes: Vec<u8>, out: &mut dyn Write) -> Result<(), CliError> {
    let answer = client
        .json(
            Method::POST,
            "/plugins",
            Some("application/octet-stream"),
            bytes,
            INSTALL_TIMEOUT,
        )
        .await?;
    writeln!(out, "installed {}", describe(&answer))?;
    Ok(())
}

async fn upgrade(
    client: &mut Client,
    bytes: Vec<u8>,
    reset: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let name = Bundle::decode(&bytes, u32::MAX as usize)
        .map_err(bundle_error)?
        .manifest()
        .name
        .clone();
    let path = format!("/plugins/{name}{}", if reset { "?reset=true" } else { "" });
    let answer = client
        .json(
            Method::PUT,
            &path,
            Some("application/octet-stream"),
            bytes,
            INSTALL_TIMEOUT,
        )
        .await?;
    let kept = if reset { "state reset" } else { "state kept" };
    writeln!(out, "upgraded {} ({kept})", describe(&answer))?;
    Ok(())
}

async fn remove(
    client: &mut Client,
    name: String,
    drop_state: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    check_name(&name)?;
    let path = format!(
        "/plugins/{name}{}",
        if drop_state { "?drop_state=true" } else { "" }
    );
    client
        .json(Method::DELETE, &path, None, Vec::new(), REQUEST_TIMEOUT)
        .await?;
    let state = if drop_state {
        "state dropped"
    } else {
        "state kept"
    };
    writeln!(out, "removed {name} ({state})")?;
    Ok(())
}

fn check_name(name: &str) -> Result<(), CliError> {
    match crate::plugins::manifest::name_problem(name) {
        Some(problem) => Err(CliError::Usage(format!(
            "{name:?} is not a plugin name: it {problem}"
        ))),
        None => Ok(()),
    }
}

fn number(v: &Value, field: &str) -> String {
    v.get("runner")
        .and_then(|r| r.get(field))
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// Total lag of a runner status: `lag` as `[[topic, n], …]` or `{topic: n}`.
fn lag(v: &Value) -> String {
    let Some(lag) = v.get("runner").and_then(|r| r.get("lag")) else {
        return "-".into();
    };
    let values: Vec<u64> = match lag {
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.get(1).or_else(|| i.get("lag")).and_then(Value::as_u64))
            .collect(),
        Value::Object(map) => map.values().filter_map(Value::as_u64).collect(),
        _ => Vec::new(),
    };
    values.iter().sum::<u64>().to_string()
}

async fn list(client: &mut Client, out: &mut dyn Write) -> Result<(), CliError> {
    let answer = client.get_json("/plugins", REQUEST_TIMEOUT).await?;
    let plugins = answer
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| client.bad_answer("no `plugins` array"))?;
    if plugins.is_empty() {
        writeln!(out, "no plugins installed on {}", client.server())?;
        return Ok(());
    }
    let mut rows = vec![[
        "NAME",
        "VERSION",
        "STATE",
        "SOURCE",
        "SIGNER",
        "PROCESSED",
        "FAILED",
        "DLQ",
        "LAG",
    ]
    .map(String::from)
    .to_vec()];
    let mut errors = Vec::new();
    for p in plugins {
        rows.push(vec![
            text(p, "name"),
            text(p, "version"),
            text(p, "state"),
            text(p, "source"),
            text(p, "signer"),
            number(p, "processed"),
            number(p, "failed"),
            number(p, "dead_lettered"),
            lag(p),
        ]);
        let error = text(p, "error");
        if !error.is_empty() {
            errors.push(format!("{}: {error}", text(p, "name")));
        }
    }
    write_table(out, &rows)?;
    for e in errors {
        writeln!(out, "{e}")?;
    }
    Ok(())
}

fn write_table(out: &mut dyn Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

async fn logs(
    client: &mut Client,
    name: String,
    lines: u32,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    check_name(&name)?;
    let answer = client
        .get_json(
            &format!("/plugins/{name}/logs?lines={lines}"),
            REQUEST_TIMEOUT,
        )
        .await?;
    let lines = answer
        .get("lines")
        .and_then(Value::as_array)
        .ok_or_else(|| client.bad_answer("no `lines` array"))?;
    for line in lines {
        writeln!(
            out,
            "{} {:<5} {:<6} {}",
            text(line, "ts_ms"),
            text(line, "level"),
            text(line, "source"),
            text(line, "message")
        )?;
    }
    Ok(())
}

/// The plugin part of `outpost status`: one summary line and a line per plugin that is not
/// running. A box with plugins disabled says so.
pub async fn status(client: &mut Client, out: &mut dyn Write) -> Result<(), CliError> {
    let answer = match client.get_json("/plugins", REQUEST_TIMEOUT).await {
        Ok(answer) => answer,
        Err(ClientError::Server { status: 503, .. }) => {
            writeln!(out, "plugins:  disabled")?;
            return Ok(());
        }
        Err(ClientError::Server {
            status, message, ..
        }) => {
            writeln!(out, "plugins:  unavailable ({status}: {message})")?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let plugins = answer
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| client.bad_answer("no `plugins` array"))?;
    let running = plugins
        .iter()
        .filter(|p| text(p, "state") == "running")
        .count();
    writeln!(out, "plugins:  {} ({running} running)", plugins.len())?;
    for p in plugins.iter().filter(|p| text(p, "state") != "running") {
        writeln!(out, "  {}", describe(p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("outpost").chain(args.iter().copied()))
    }

    #[test]
    fn sign_takes_a_directory_or_both_files_and_a_key_or_unsigned() {
        let Command::Plugin(PluginCommand::Sign(args)) =
            parse(&["plugin", "sign", "--key", "k", "dist/echo"])
                .unwrap()
                .command
        else {
            panic!("not sign")
        };
        assert_eq!(args.dir, Some(PathBuf::from("dist/echo")));
        assert!(parse(&[
            "plugin",
            "sign",
            "--unsigned",
            "--manifest",
            "m",
            "--wasm",
            "w"
        ])
        .is_ok());
        for bad in [
            &["plugin", "sign", "dist/echo"][..],
            &["plugin", "sign", "--key", "k"],
            &["plugin", "sign", "--key", "k", "--manifest", "m"],
            &["plugin", "sign", "--key", "k", "--unsigned", "dist/echo"],
            &[
                "plugin",
                "sign",
                "--key",
                "k",
                "dist/echo",
                "--wasm",
                "w",
                "--manifest",
                "m",
            ],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn client_subcommands_parse_their_flags() {
        let Command::Plugin(PluginCommand::Upgrade { reset, file, .. }) =
            parse(&["plugin", "upgrade", "x.opb", "--reset"])
                .unwrap()
                .command
        else {
            panic!("not upgrade")
        };
        assert!(reset);
        assert_eq!(file, PathBuf::from("x.opb"));
        let Command::Plugin(PluginCommand::Remove { drop_state, .. }) =
            parse(&["plugin", "remove", "echo", "--drop-state"])
                .unwrap()
                .command
        else {
            panic!("not remove")
        };
        assert!(drop_state);
        assert!(parse(&["plugin", "logs", "echo", "--lines", "0"]).is_err());
    }

    #[test]
    fn bad_names_and_unreadable_bundles_fail_before_any_request() {
        let out = &mut Vec::new();
        let err = execute(
            PluginCommand::Remove {
                name: "Not_A_Name".into(),
                drop_state: false,
                client: ClientArgs {
                    server: "http://127.0.0.1:1".into(),
                    token: None,
                },
            },
            out,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        let err = execute(
            PluginCommand::Install {
                file: PathBuf::from("/nonexistent/x.opb"),
                client: ClientArgs {
                    server: "http://127.0.0.1:1".into(),
                    token: None,
                },
            },
            out,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.opb"), "{err}");
    }
}
