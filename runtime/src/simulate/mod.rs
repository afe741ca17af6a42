//! Demo store traffic, so a box shows data flowing through the bundled plugins with no
//! hardware: POS payments (a known fraction of them planted fraud the fraud-score plugin
//! catches), baskets, loyalty scans and smart-cart events published over MQTT like store
//! devices would, and a simulated Modbus fridge polled like a real controller.
//!
//! Two ways in:
//! - `outpost run --simulate` (`[simulate] enabled = true`): [`prepare_box`] adds the fridge
//!   (`sensors.fridge`) before the box starts and [`run_in_box`] publishes to the box's own
//!   MQTT listener, logging a summary now and then.
//! - `outpost simulate` ([`run_command`]): a client that sends the same traffic to a running box
//!   and prints what came back (verdicts, planted fraud flagged, latency). No fridge.
//!
//! [`generate`] makes the traffic (pure and seeded); [`drive`] sends it and tracks the answers.

pub mod drive;
pub mod fridge;
pub mod generate;

use crate::kernel::{now_ms, Context, Shutdown};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use self::drive::{DriveOptions, Summary};
use self::generate::GeneratorConfig;

/// The `[simulate]` section: demo traffic generated inside `outpost run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    /// Generate demo traffic inside `outpost run` (`--simulate` sets it).
    #[serde(default)]
    pub enabled: bool,
    /// Payments per second; baskets (about 0.85 per payment), loyalty scans (0.35) and cart
    /// events (0.5) follow.
    #[serde(default = "default_payments_per_s")]
    pub payments_per_s: f64,
    /// Share of payments, 0 to 0.5, that belong to planted fraud episodes (card testing,
    /// account takeover, refund abuse); nothing in a payment says so.
    #[serde(default = "default_fraud_fraction")]
    pub fraud_fraction: f64,
    /// In-store POS terminals (1 to 99), besides the web shop's.
    #[serde(default = "default_terminals")]
    pub terminals: u32,
    /// Seed of every random choice: the same seed sends the same traffic.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// How often the box logs what the demo traffic sent and got back, in seconds; 0 = only
    /// at shutdown.
    #[serde(default = "default_summary_interval_s")]
    pub summary_interval_s: u64,
    /// Store id in the events. Unset: the box's `edge.store_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
}

fn default_payments_per_s() -> f64 {
    5.0
}
fn default_fraud_fraction() -> f64 {
    0.05
}
fn default_terminals() -> u32 {
    6
}
fn default_seed() -> u64 {
    1
}
fn default_summary_interval_s() -> u64 {
    30
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            enabled: false,
            payments_per_s: default_payments_per_s(),
            fraud_fraction: default_fraud_fraction(),
            terminals: default_terminals(),
            seed: default_seed(),
            summary_interval_s: default_summary_interval_s(),
            store_id: None,
        }
    }
}

/// Highest accepted payment rate.
const MAX_PAYMENTS_PER_S: f64 = 20_000.0;

fn check_rate(rate: f64) -> Result<(), String> {
    if rate.is_finite() && rate > 0.0 && rate <= MAX_PAYMENTS_PER_S {
        Ok(())
    } else {
        Err(format!(
            "{rate} is out of range; give payments per second above 0 and at most {MAX_PAYMENTS_PER_S}"
        ))
    }
}

fn check_fraction(fraction: f64) -> Result<(), String> {
    if (0.0..=0.5).contains(&fraction) {
        Ok(())
    } else {
        Err(format!(
            "{fraction} is out of range; give a share from 0 to 0.5, such as 0.05"
        ))
    }
}

impl SimulateConfig {
    /// Checks the section; the error names the dotted key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let problem = |key: &str, message: String| (format!("simulate.{key}"), message);
        check_rate(self.payments_per_s).map_err(|m| problem("payments_per_s", m))?;
        check_fraction(self.fraud_fraction).map_err(|m| problem("fraud_fraction", m))?;
        if !(1..=99).contains(&self.terminals) {
            return Err(problem(
                "terminals",
                format!("{} is out of range; give 1 to 99", self.terminals),
            ));
        }
        if let Some(id) = &self.store_id {
            if id.is_empty() || id.len() > 64 {
                return Err(problem(
                    "store_id",
                    "must be 1 to 64 characters; leave it unset to use edge.store_id".into(),
                ));
            }
        }
        Ok(())
    }

    /// The generator settings for this section, events of store `store_id`, ids tagged
    /// `run_tag`.
    pub fn generator_config(&self, store_id: &str, run_tag: String) -> GeneratorConfig {
        GeneratorConfig {
            seed: self.seed,
            store_id: store_id.to_string(),
            terminals: self.terminals,
            fraud_fraction: self.fraud_fraction,
            cards: card_pool(self.payments_per_s),
            run_tag,
        }
    }
}

/// Ordinary cards in circulation: enough that a card pays about once per ten minutes at most,
/// so ordinary shoppers never trip the velocity rules.
fn card_pool(payments_per_s: f64) -> u32 {
    (payments_per_s * 600.0).clamp(2000.0, 50_000_000.0) as u32
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    check_rate(rate).map(|()| rate)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let fraction: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    check_fraction(fraction).map(|()| fraction)
}

/// Arguments of `outpost simulate`.
#[derive(Debug, Args)]
#[command(
    after_help = "The simulated Modbus fridge is not part of this command: it comes with \
                  `outpost run --simulate`, which also generates this traffic inside the box."
)]
pub struct SimulateArgs {
    /// MQTT listener of the box (its embedded broker), HOST:PORT.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:1883",
        env = "OUTPOST_MQTT"
    )]
    pub mqtt: String,
    /// Payments per second; baskets, loyalty scans and cart events follow.
    #[arg(long, value_name = "N", default_value_t = default_payments_per_s(), value_parser = parse_rate)]
    pub payments_per_s: f64,
    /// Stop after this many seconds; 0 runs until Ctrl-C.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub duration_s: u64,
    /// Seed of the traffic (the same seed sends the same traffic); default: from the clock,
    /// printed in the summary.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Share of payments (0 to 0.5) in planted fraud episodes.
    #[arg(long, value_name = "F", default_value_t = default_fraud_fraction(), value_parser = parse_fraction)]
    pub fraud_fraction: f64,
    /// In-store POS terminals.
    #[arg(long, value_name = "N", default_value_t = default_terminals(),
          value_parser = clap::value_parser!(u32).range(1..=99))]
    pub terminals: u32,
    /// Store id in the events.
    #[arg(
        long,
        value_name = "ID",
        default_value = "store-0001",
        env = "OUTPOST_STORE_ID"
    )]
    pub store_id: String,
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// `--mqtt` is not HOST:PORT.
    #[error("--mqtt {0:?} is not HOST:PORT")]
    Address(String),
    /// The box's MQTT listener could not be reached.
    #[error("cannot reach the MQTT listener at {address}: {message}")]
    Connect {
        /// HOST:PORT.
        address: String,
        /// What went wrong.
        message: String,
    },
    /// A publish could not be handed to the MQTT client.
    #[error("publishing failed: {0}")]
    Publish(String),
    /// The simulated fridge could not get a loopback port.
    #[error("the simulated fridge cannot listen on loopback: {0}")]
    FridgeBind(#[source] std::io::Error),
    /// Starting the runtime or writing the summary failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn split_address(address: &str) -> Result<(String, u16), SimulateError> {
    let bad = || SimulateError::Address(address.to_string());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Short per-run tag for ids, so two runs against one box do not reuse payment ids.
fn run_tag() -> String {
    format!("{:x}", (now_ms() / 10) % (1 << 36))
}

/// `outpost simulate`: sends traffic until the duration ends or Ctrl-C/SIGTERM, printing a
/// progress line every ten seconds and the summary at the end to `output`.
pub fn run_command(
    args: SimulateArgs,
    output: &mut dyn std::io::Write,
) -> Result<(), SimulateError> {
    let (host, port) = split_address(&args.mqtt)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let config = SimulateConfig {
        enabled: true,
        payments_per_s: args.payments_per_s,
        fraud_fraction: args.fraud_fraction,
        terminals: args.terminals,
        seed,
        summary_interval_s: 10,
        store_id: Some(args.store_id.clone()),
    };
    let options = DriveOptions {
        host,
        port,
        client_id: format!("outpost-simulate-{}", std::process::id()),
        payments_per_s: args.payments_per_s,
        generator: config.generator_config(&args.store_id, run_tag()),
        duration: (args.duration_s > 0).then(|| Duration::from_secs(args.duration_s)),
        drain: Duration::from_secs(5),
        report_every: Some(Duration::from_secs(10)),
    };
    writeln!(
        output,
        "outpost simulate: {} payments/s to {} (seed {seed}, {}% planted fraud){}",
        args.payments_per_s,
        args.mqtt,
        args.fraud_fraction * 100.0,
        if args.duration_s > 0 {
            format!(" for {} s", args.duration_s)
        } else {
            "; Ctrl-C stops".to_string()
        }
    )?;
    output.flush()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("outpost-simulate")
        .build()?;
    let mut progress_error = None;
    let result = rt.block_on(async {
        let (stop_tx, stop_rx) = Shutdown::new();
        tokio::spawn(async move {
            wait_for_signal().await;
            stop_tx.request();
        });
        drive::drive(options, stop_rx, |s: &Summary| {
            let line = format!(
                "  {:>5.0} s: {} payments, {} verdicts, planted fraud flagged {}/{}, {} offers",
                s.elapsed.as_secs_f64(),
                s.payments,
                s.matched_verdicts,
                s.flagged(),
                s.episodes(),
                s.offers
            );
            if let Err(e) = writeln!(output, "{line}").and_then(|()| output.flush()) {
                progress_error.get_or_insert(e);
            }
        })
        .await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let summary = result?;
    if let Some(e) = progress_error {
        return Err(e.into());
    }
    writeln!(output, "{summary}")?;
    writeln!(output, "repeat with --seed {seed}")?;
    Ok(())
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Where to reach a listener bound to `addr` (an unspecified address means loopback).
fn reachable(addr: SocketAddr) -> (String, u16) {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    (ip.to_string(), addr.port())
}

fn log_summary(s: &Summary, last: bool) {
    let message = if last {
        "Demo traffic stopped."
    } else {
        "Demo traffic is flowing."
    };
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
    tracing::info!(
        payments = s.payments,
        baskets = s.baskets,
        loyalty_scans = s.scans,
        cart_events = s.cart_events,
        records_per_s = format!("{:.1}", s.records_per_s()),
        verdicts = s.matched_verdicts,
        offers = s.offers,
        planted_flagged = format!("{}/{}", s.flagged(), s.episodes()),
        planted_unfinished = s.unfinished_episodes,
        false_alarms = s.false_alarms,
        verdict_p50_ms = format!("{:.1}", ms(s.latency_p50)),
        verdict_p99_ms = format!("{:.1}", ms(s.latency_p99)),
        "{message}"
    );
}

/// Generates demo traffic against the box's own MQTT listener `mqtt` until the box stops;
/// events carry `simulate.store_id`, or the box's own store id.
pub async fn run_in_box(
    ctx: Context,
    config: SimulateConfig,
    mqtt: Option<SocketAddr>,
) -> Result<(), SimulateError> {
    let shutdown = ctx.shutdown.clone();
    let Some(addr) = mqtt else {
        tracing::warn!(
            "Demo traffic needs the embedded MQTT broker (mqtt.broker.enabled); only the simulated fridge runs."
        );
        shutdown.requested().await;
        return Ok(());
    };
    let (host, port) = reachable(addr);
    let store_id = config
        .store_id
        .clone()
        .unwrap_or_else(|| ctx.identity.store_id().to_string());
    let options = DriveOptions {
        host,
        port,
        client_id: format!("outpost-simulate-in-box-{}", std::process::id()),
        payments_per_s: config.payments_per_s,
        generator: config.generator_config(&store_id, run_tag()),
        duration: None,
        drain: Duration::ZERO,
        report_every: (config.summary_interval_s > 0)
            .then(|| Duration::from_secs(config.summary_interval_s)),
    };
    tracing::info!(
        mqtt = %addr,
        payments_per_s = config.payments_per_s,
        fraud_fraction = config.fraud_fraction,
        seed = config.seed,
        "Demo traffic starts."
    );
    match drive::drive(options, shutdown.clone(), |s| log_summary(s, false)).await {
        Ok(summary) => log_summary(&summary, true),
        Err(e) => {
            // The box keeps running without demo traffic rather than stopping over it.
            tracing::error!(error = %e, "Demo traffic could not run.");
            shutdown.requested().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        SimulateConfig::default().validate().unwrap();
        type Spoil = fn(&mut SimulateConfig);
        let cases: [(&str, Spoil); 5] = [
            ("simulate.payments_per_s", |c| c.payments_per_s = 0.0),
            ("simulate.payments_per_s", |c| c.payments_per_s = f64::NAN),
            ("simulate.fraud_fraction", |c| c.fraud_fraction = 0.9),
            ("simulate.terminals", |c| c.terminals = 0),
            ("simulate.store_id", |c| c.store_id = Some(String::new())),
        ];
        for (key, spoil) in cases {
            let mut c = SimulateConfig::default();
            spoil(&mut c);
            assert_eq!(c.validate().unwrap_err().0, key);
        }
    }

    #[test]
    fn an_empty_section_means_the_defaults() {
        let c: SimulateConfig = toml::from_str("").unwrap();
        assert_eq!(c, SimulateConfig::default());
        let c: SimulateConfig =
            toml::from_str("enabled = true\npayments_per_s = 50\nseed = 9\n").unwrap();
        assert!(c.enabled);
        assert_eq!((c.payments_per_s, c.seed), (50.0, 9));
        assert!(toml::from_str::<SimulateConfig>("rate = 3\n").is_err());
    }

    #[test]
    fn mqtt_addresses_split_into_host_and_port() {
        assert_eq!(
            split_address("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".to_string(), 1883)
        );
        assert_eq!(
            split_address("[::1]:1884").unwrap(),
            ("::1".to_string(), 1884)
        );
        assert_eq!(
            split_address("broker.local:1").unwrap(),
            ("broker.local".to_string(), 1)
        );
        for bad in ["1883", "host:", ":1883", "host:0", "host:port"] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
        assert_eq!(
            reachable("0.0.0.0:1883".parse().unwrap()),
            ("127.0.0.1".to_string(), 1883)
        );
    }

    #[test]
    fn the_card_pool_grows_with_the_rate() {
        assert_eq!(card_pool(1.0), 2000);
        assert_eq!(card_pool(100.0), 60_000);
    }
}
