//! The fraud-score evaluator: generates labelled days of store traffic from seeds, runs every
//! record through the real plugin (the SDK's native harness: its code, state and config) and
//! prints precision, recall per pattern and the false-alert rate. The patterns, episode
//! definitions and what "detected" means are in the plugin's README.
//!
//! ```text
//! cargo run --release --example evaluate -- --seeds 101-105
//! cargo run --release --example evaluate -- --seed 1 --seed 2 --cards 500 --payments 12000
//! ```
//!
//! Flags: `--seed N` (repeatable), `--seeds A-B`, `--cards N` (2000), `--payments N` (50000),
//! `--stores N` (8), `--terminals N` (per store, 6), `--episodes B,T,S,V,R` (per pattern:
//! blocklist, card testing, stolen card, velocity across terminals, refund abuse;
//! 15,25,25,15,20), `--config JSON` (the plugin config, `{}` = the defaults), `--missed`
//! (list the best score of every missed episode), `--trace` (the card's last payments
//! before each of the first 40 false alerts).

mod day;
mod run;

use day::{generate, DayConfig, Pattern};
use run::{evaluate, Evaluation};

fn fail(message: String) -> ! {
    eprintln!("evaluate: {message}");
    std::process::exit(2);
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    let value = value.unwrap_or_else(|| fail(format!("{flag} needs a value")));
    value
        .parse()
        .unwrap_or_else(|_| fail(format!("{flag}: {value:?} is not a number")))
}

fn print(title: &str, ev: &Evaluation) {
    println!("{title}");
    println!(
        "  {:<26} {:>9} {:>8} {:>8} {:>15} {:>10}",
        "pattern", "episodes", "detected", "recall", "payment recall", "precision"
    );
    for p in Pattern::ALL {
        let s = ev.patterns.get(&p).copied().unwrap_or_default();
        println!(
            "  {:<26} {:>9} {:>8} {:>8.3} {:>8.3} ({:>4}) {:>10.3}",
            p.name(),
            s.episodes,
            s.detected,
            s.recall(),
            s.payment_recall(),
            s.payments,
            s.precision(),
        );
    }
    println!(
        "  alerts {} (on fraud {}): precision {:.4}; clean payments {}, alerted {} ({} of them the owner's during an attack on the card): false-alert rate {:.4} %",
        ev.alerts,
        ev.true_alerts,
        ev.precision(),
        ev.clean_payments,
        ev.clean_alerted,
        ev.collateral,
        100.0 * ev.false_alert_rate()
    );
    if !ev.false_reasons.is_empty() {
        let reasons: Vec<String> = ev
            .false_reasons
            .iter()
            .map(|(r, n)| format!("{r} ×{n}"))
            .collect();
        println!("  false alerts by reasons: {}", reasons.join(", "));
    }
    println!(
        "  state at the end: {} keys, {} bytes",
        ev.state_keys, ev.state_bytes
    );
}

fn main() {
    let mut seeds: Vec<u64> = Vec::new();
    let mut base = DayConfig::standard(0);
    let mut config = "{}".to_owned();
    let mut show_missed = false;
    let mut trace = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seed" => seeds.push(number(&flag, args.next())),
            "--seeds" => {
                let v = args
                    .next()
                    .unwrap_or_else(|| fail("--seeds needs A-B".into()));
                let (a, b) = v
                    .split_once('-')
                    .unwrap_or_else(|| fail(format!("--seeds {v}: give A-B")));
                let a: u64 = number(&flag, Some(a.to_owned()));
                let b: u64 = number(&flag, Some(b.to_owned()));
                seeds.extend(a..=b);
            }
            "--cards" => base.cards = number(&flag, args.next()),
            "--payments" => base.payments = number(&flag, args.next()),
            "--stores" => base.stores = number(&flag, args.next()),
            "--terminals" => base.terminals = number(&flag, args.next()),
            "--episodes" => {
                let v = args.next().unwrap_or_default();
                let n: Vec<usize> = v
                    .split(',')
                    .map(|x| number(&flag, Some(x.to_owned())))
                    .collect();
                if n.len() != 5 {
                    fail("--episodes takes five numbers: B,T,S,V,R".into());
                }
                base.episodes.copy_from_slice(&n);
            }
            "--config" => {
                config = args
                    .next()
                    .unwrap_or_else(|| fail("--config needs JSON".into()))
            }
            "--missed" => show_missed = true,
            "--trace" => trace = true,
            other => fail(format!(
                "unknown flag {other} (see the doc comment of examples/evaluate/main.rs)"
            )),
        }
    }
    if seeds.is_empty() {
        seeds.push(1);
    }
    if base.terminals < 2 || base.stores < 1 || base.cards < 10 {
        fail("need at least 10 cards, 1 store and 2 terminals".into());
    }
    let mut total = Evaluation::default();
    for &seed in &seeds {
        let cfg = DayConfig {
            seed,
            ..base.clone()
        };
        let day = generate(&cfg);
        let ev = evaluate(&day, &config).unwrap_or_else(|e| fail(e));
        print(
            &format!(
                "seed {seed}: {} cards, {} inputs, {} episodes",
                cfg.cards,
                day.inputs.len(),
                day.episodes.len()
            ),
            &ev,
        );
        if show_missed {
            for (p, best) in &ev.missed {
                println!("  missed {}: best score {best}", p.name());
            }
        }
        if trace {
            for t in &ev.missed_traces {
                println!("  {t}");
            }
            for t in &ev.traces {
                println!("  false alert, the card's last payments:\n    {t}");
            }
        }
        total.add(&ev);
    }
    if seeds.len() > 1 {
        print(&format!("all {} seeds {seeds:?}", seeds.len()), &total);
    }
}
