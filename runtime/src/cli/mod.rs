//! The command line: `outpost run`, `outpost config example|check`, and the client commands
//! (`topics`, `produce`, `tail`, `status`) that talk to a running box over HTTP.
//!
//! `main.rs` parses [`Cli`], calls [`init_logging`] and [`execute`], prints an error to stderr
//! and exits with [`CliError::exit_code`]: 0 after a clean run or shutdown, 2 for bad arguments
//! or configuration (the message names the key), 1 for anything else. Output goes to the
//! writer `execute` is given; log messages go to stderr.

mod client;
pub mod commands;
pub mod plugin;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use client::{Client, ClientError};
use commands::{ProduceOptions, TailOptions};

use crate::app::AppError;
use crate::config::{Config, ConfigError, Overrides, EXAMPLE_TOML};

/// Outpost: a single-binary, WebAssembly-extensible edge appliance for stores.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter for messages on stderr, e.g. `info` or `outpost=debug,warn` (overrides
    /// RUST_LOG; default `info` for `run`, `warn` otherwise).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: the durable log, the HTTP API and every configured component, until
    /// SIGTERM or SIGINT.
    Run(RunArgs),
    /// Print the documented default configuration, or check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the topics of a running box.
    Topics(ClientArgs),
    /// Append stdin lines to a topic of a running box (JSON lines as JSON, other lines as
    /// strings; blank lines are skipped).
    Produce(ProduceArgs),
    /// Print records of a topic of a running box, one JSON object per line.
    Tail(TailArgs),
    /// Show the health and a topic summary of a running box.
    Status(ClientArgs),
    /// Manage the plugins of a running box; make signing keys and signed bundles.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Built-in benchmarks, each measured next to a baseline in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Send demo store traffic (payments with planted fraud, baskets, loyalty scans, cart
    /// events) to a running box over MQTT and report the answers its plugins send back.
    Simulate(crate::simulate::SimulateArgs),
}

/// `outpost bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append throughput of the log against plain write+fdatasync at the same batch cadence.
    Log(crate::bench::log::LogBenchArgs),
    /// fraud-score throughput in wasm (calls only and full runner) against the same logic
    /// built natively, and the per-record overhead of a do-nothing plugin.
    Plugins(crate::bench::plugins::PluginBenchArgs),
    /// MQTT QoS 1 ingest through the embedded broker from a separate process (msg/s, publish to
    /// durable PUBACK latency), or the payment -> fraud-score -> verdict round trip.
    Mqtt(crate::bench::mqtt::MqttBenchArgs),
    /// Drain a backlog to a Kafka broker against librdkafka producing the same records
    /// directly (confluent-kafka), at the same batching, compression and acks.
    Forward(crate::bench::forward::ForwardBenchArgs),
    /// The Kafka listener under a confluent-kafka producer (acks=all, zstd) and consumer,
    /// against the same producer on tansu; records/s, server CPU per record, records per fsync.
    Kafka(crate::bench::kafka::KafkaBenchArgs),
}

/// Arguments of `outpost run`. Precedence: these flags, then OUTPOST_* variables, then the
/// file, then the built-in defaults.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML); without it the built-in defaults apply (`outpost config
    /// example` prints them).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `edge.data_dir` and OUTPOST_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address IP:PORT (overrides `http.listen` and OUTPOST_LISTEN).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// DEVELOPMENT ONLY: accept unsigned plugin bundles (sets `plugins.allow_unsigned`).
    #[arg(long)]
    pub allow_unsigned_plugins: bool,
    /// Generate demo store traffic inside the box (sets `simulate.enabled`): POS payments with
    /// planted fraud, baskets, loyalty scans and a simulated Modbus fridge.
    #[arg(long)]
    pub simulate: bool,
    /// Start even when the state store is damaged or missing: move it aside and rebuild it
    /// with the same edge id, consumer offsets from the positions checkpoint and empty plugin
    /// state (sets `edge.rebuild_state`).
    #[arg(long)]
    pub rebuild_state: bool,
}

/// `outpost config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the documented default configuration file.
    Example,
    /// Check a configuration file: prints "FILE: ok" or the error naming the key (exit 2).
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// How the client commands reach a box.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// URL of the running box.
    #[arg(long, env = "OUTPOST_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token, when the box has `http.auth_token` set.
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Arguments of `outpost produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic to append to (created on first write unless the box forbids it).
    pub topic: String,
    /// Key of every record.
    #[arg(long)]
    pub key: Option<String>,
    /// Most records per request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_records: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Arguments of `outpost tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The topic to read.
    pub topic: String,
    /// First offset to print (default: the first stored record).
    #[arg(long, value_name = "OFFSET")]
    pub from: Option<u64>,
    /// Keep waiting for new records (long polls; stop with Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Errors of a command, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A bad configuration file or override.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `outpost run` failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// Talking to the box failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading the input failed.
    #[error("reading stdin: {0}")]
    Input(String),
    /// Part of the work was done before an error.
    #[error("{source} ({done})")]
    Partial {
        done: String,
        #[source]
        source: Box<CliError>,
    },
    /// The demo traffic generator failed.
    #[error("simulate: {0}")]
    Simulate(#[from] crate::simulate::SimulateError),
    /// A benchmark failed.
    #[error("benchmark failed: {0:#}")]
    Bench(#[from] crate::bench::BenchError),
    /// Writing the output or starting the runtime failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// 2 for bad arguments or configuration, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => 2,
            CliError::App(AppError::Config(_)) => 2,
            CliError::Client(ClientError::BadUrl { .. }) => 2,
            CliError::Partial { source, .. } => source.exit_code(),
            CliError::Bench(crate::bench::BenchError::InvalidArgument(_)) => 2,
            _ => 1,
        }
    }
}

/// Installs the stderr log subscriber: `--log-level`, else RUST_LOG, else `info` for `run` and
/// `warn` for the other commands. The embedded broker (rumqttd) is silenced by default: it logs
/// an ERROR for every ordinary client disconnect; Outpost's own MQTT listener reports what
/// devices see (`RUST_LOG=info,rumqttd=info` brings it back). So are two modules of the OPC-UA
/// client that log an ERROR on every connection to a server without security (about the
/// missing client certificate, which such a connection does not use); the OPC-UA source reports
/// connection failures itself.
pub fn init_logging(cli: &Cli) -> Result<(), CliError> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let default = if matches!(cli.command, Command::Run(_)) {
        default_log_filter("info")
    } else {
        default_log_filter("warn")
    };
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|e| CliError::Usage(format!("invalid --log-level {level:?}: {e}")))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::kernel::log_limit::RepeatLimit::new(std::io::stderr))
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| CliError::Usage(format!("cannot install the log subscriber: {e}")))
}

pub use crate::app::default_log_filter;

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outpost")
        .build()?)
}

/// Runs a parsed command; `input` is stdin for `produce`, `output` is where results go.
pub fn execute(
    cli: Cli,
    input: Box<dyn BufRead + Send>,
    output: &mut dyn Write,
) -> Result<(), CliError> {
    let result = match cli.command {
        Command::Run(args) => {
            let overrides = Overrides::from_env(|k| std::env::var(k).ok())
                .with_flags(args.data_dir, args.listen);
            let mut config = Config::load(args.config.as_deref(), &overrides)?;
            if args.allow_unsigned_plugins {
                config.plugins.allow_unsigned = true;
            }
            if args.simulate {
                config.simulate.enabled = true;
            }
            if args.rebuild_state {
                config.edge.rebuild_state = true;
            }
            let (file, flags) = (
                args.config.clone(),
                (args.allow_unsigned_plugins, args.simulate),
            );
            let reload: crate::app::Reloader = Box::new(move || {
                let mut config = Config::load(file.as_deref(), &overrides)?;
                config.plugins.allow_unsigned |= flags.0;
                config.simulate.enabled |= flags.1;
                Ok(config)
            });
            let rt = runtime()?;
            let result = rt.block_on(crate::app::run(config, Some(reload)));
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result.map_err(CliError::from)
        }
        Command::Config(ConfigCommand::Example) => {
            output.write_all(EXAMPLE_TOML.as_bytes())?;
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::from_file(&file)?;
            config
                .validate()
                .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
            writeln!(output, "{}: ok", file.display())?;
            Ok(())
        }
        Command::Topics(args) => {
            let mut client = Client::new(&args.server, args.token)?;
            runtime()?.block_on(commands::topics(&mut client, output))
        }
        Command::Status(args) => {
            let mut client = Client::new(&args.server, args.token)?;
            runtime()?.block_on(async {
                commands::status(&mut client, output).await?;
                plugin::status(&mut client, output).await
            })
        }
        Command::Plugin(command) => plugin::execute(command, output),
        Command::Produce(args) => {
            let mut client = Client::new(&args.client.server, args.client.token)?;
            let options = ProduceOptions {
                topic: args.topic,
                key: args.key,
                batch_records: args.batch_records as usize,
                batch_bytes: 1024 * 1024,
            };
            runtime()?.block_on(commands::produce(&mut client, &options, input, output))
        }
        Command::Tail(args) => {
            let mut client = Client::new(&args.client.server, args.client.token)?;
            let options = TailOptions {
                topic: args.topic,
                from: args.from,
                follow: args.follow,
                limit: args.limit,
            };
            runtime()?.block_on(commands::tail(&mut client, &options, output))
        }
        Command::Bench(BenchCommand::Log(args)) => {
            crate::bench::log::run(&args, output).map_err(CliError::Bench)
        }
        Command::Bench(BenchCommand::Plugins(args)) => {
            crate::bench::plugins::run(&args, output).map_err(CliError::Bench)
        }
        Command::Bench(BenchCommand::Mqtt(args)) => {
            crate::bench::mqtt::run(&args, output).map_err(CliError::Bench)
        }
        Command::Bench(BenchCommand::Kafka(args)) => {
            crate::bench::kafka::run(&args, output).map_err(CliError::Bench)
        }
        Command::Bench(BenchCommand::Forward(args)) => {
            crate::bench::forward::run(&args, output).map_err(CliError::Bench)
        }
        Command::Simulate(args) => {
            crate::simulate::run_command(args, output).map_err(CliError::Simulate)
        }
    };
    match result {
        // A closed stdout (`outpost tail … | head`) is a normal way to stop.
        Err(CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "outpost",
            "run",
            "--config",
            "c.toml",
            "--data-dir",
            "/d",
            "--listen",
            "0.0.0.0:1",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.config, Some(PathBuf::from("c.toml")));
        assert_eq!(args.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(args.listen.as_deref(), Some("0.0.0.0:1"));
    }

    #[test]
    fn tail_flags_parse_and_the_server_has_a_default() {
        let cli = Cli::try_parse_from([
            "outpost",
            "tail",
            "pos.payments",
            "--from",
            "5",
            "-f",
            "--limit",
            "3",
        ])
        .unwrap();
        let Command::Tail(args) = cli.command else {
            panic!("not tail")
        };
        assert_eq!(
            (args.from, args.follow, args.limit),
            (Some(5), true, Some(3))
        );
        assert!(args.client.server.starts_with("http://"));
    }

    #[test]
    fn a_bad_flag_value_is_a_usage_error() {
        let err = Cli::try_parse_from(["outpost", "tail", "t", "--from", "minus"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn config_example_prints_the_embedded_file() {
        let cli = Cli::try_parse_from(["outpost", "config", "example"]).unwrap();
        let mut out = Vec::new();
        execute(cli, Box::new(std::io::empty()), &mut out).unwrap();
        assert_eq!(out, EXAMPLE_TOML.as_bytes());
    }

    #[test]
    fn config_check_reports_ok_or_the_key_with_exit_code_2() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "[http]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        let cli =
            Cli::try_parse_from(["outpost", "config", "check", good.to_str().unwrap()]).unwrap();
        let mut out = Vec::new();
        execute(cli, Box::new(std::io::empty()), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}: ok\n", good.display())
        );

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[http]\nmax_fetch_records = 0\n").unwrap();
        let cli =
            Cli::try_parse_from(["outpost", "config", "check", bad.to_str().unwrap()]).unwrap();
        let err = execute(cli, Box::new(std::io::empty()), &mut Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let message = err.to_string();
        assert!(message.contains("bad.toml"), "{message}");
        assert!(message.contains("http.max_fetch_records"), "{message}");
    }

    #[test]
    fn a_bad_server_url_is_exit_code_2() {
        let cli = Cli::try_parse_from(["outpost", "topics", "--server", "ftp://x"]).unwrap();
        let err = execute(cli, Box::new(std::io::empty()), &mut Vec::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }
}
