//! Runs a labelled day through the real plugin (its code, state and config) with the SDK's
//! native test harness, and measures precision and recall per pattern.

use std::collections::BTreeMap;

use fraud_score::{FraudScore, ALERTS_TOPIC, SCORES_TOPIC};
use outpost_sdk::testing::Harness;
use serde_json::Value;

use crate::day::{Day, Pattern, What};

/// Counts for one pattern.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PatternStats {
    pub episodes: usize,
    /// Episodes with at least one alerted payment.
    pub detected: usize,
    pub payments: usize,
    pub alerted_payments: usize,
    /// Alerts whose strongest reason is this pattern's signal, and how many of those were on
    /// fraudulent payments (of any pattern).
    pub attributed_alerts: usize,
    pub attributed_true: usize,
}

impl PatternStats {
    pub fn recall(&self) -> f64 {
        ratio(self.detected, self.episodes)
    }
    pub fn payment_recall(&self) -> f64 {
        ratio(self.alerted_payments, self.payments)
    }
    pub fn precision(&self) -> f64 {
        ratio(self.attributed_true, self.attributed_alerts)
    }
    pub fn add(&mut self, o: &PatternStats) {
        self.episodes += o.episodes;
        self.detected += o.detected;
        self.payments += o.payments;
        self.alerted_payments += o.alerted_payments;
        self.attributed_alerts += o.attributed_alerts;
        self.attributed_true += o.attributed_true;
    }
}

/// 1 when there is nothing to divide (no alerts: no false ones).
pub fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// What a day measured.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub patterns: BTreeMap<Pattern, PatternStats>,
    pub clean_payments: usize,
    pub clean_alerted: usize,
    /// Of `clean_alerted`: the owner's own payments on a card under attack (between the
    /// episode's first payment and two hours after its last).
    pub collateral: usize,
    pub alerts: usize,
    pub true_alerts: usize,
    /// False alerts by their reasons.
    pub false_reasons: BTreeMap<String, usize>,
    /// Missed episodes: pattern and the best score any of their payments got.
    pub missed: Vec<(Pattern, u32)>,
    pub state_keys: usize,
    pub state_bytes: u64,
    /// For the first false alerts: the card's recent payments (`--trace`).
    pub traces: Vec<String>,
    /// Every missed episode's payments (`--trace`).
    pub missed_traces: Vec<String>,
}

impl Evaluation {
    pub fn precision(&self) -> f64 {
        ratio(self.true_alerts, self.alerts)
    }
    pub fn false_alert_rate(&self) -> f64 {
        ratio(self.clean_alerted, self.clean_payments.max(1))
    }
    pub fn add(&mut self, o: &Evaluation) {
        for (p, s) in &o.patterns {
            self.patterns.entry(*p).or_default().add(s);
        }
        self.clean_payments += o.clean_payments;
        self.clean_alerted += o.clean_alerted;
        self.collateral += o.collateral;
        self.alerts += o.alerts;
        self.true_alerts += o.true_alerts;
        for (r, n) in &o.false_reasons {
            *self.false_reasons.entry(r.clone()).or_default() += n;
        }
        self.missed.extend_from_slice(&o.missed);
        self.state_keys = self.state_keys.max(o.state_keys);
        self.state_bytes = self.state_bytes.max(o.state_bytes);
    }
}

/// The pattern a reason code is evidence of.
pub fn pattern_of(reason: &str) -> Option<Pattern> {
    Some(match reason {
        "blocklisted" => Pattern::Blocklist,
        "card_testing" => Pattern::CardTesting,
        "stolen_card" | "amount_outlier" => Pattern::StolenCard,
        "terminal_velocity" | "velocity_count" => Pattern::TerminalVelocity,
        "refund_without_sale" | "refund_abuse" => Pattern::RefundAbuse,
        _ => return None,
    })
}

/// Feeds the day to a fresh plugin started with `config_json` and scores the outcome.
pub fn evaluate(day: &Day, config_json: &str) -> Result<Evaluation, String> {
    let mut h = Harness::<FraudScore>::start(config_json)
        .map_err(|e| format!("init failed: {e}"))?
        .allow_outputs(&[SCORES_TOPIC, ALERTS_TOPIC]);
    let mut ev = Evaluation::default();
    for p in Pattern::ALL {
        ev.patterns.insert(p, PatternStats::default());
    }
    for (i, pattern) in day.episodes.iter().enumerate() {
        let _ = i;
        ev.patterns.entry(*pattern).or_default().episodes += 1;
    }
    let mut recent: std::collections::HashMap<&str, Vec<String>> = Default::default();
    // When each attacked card is under attack.
    let mut attacked: std::collections::HashMap<&str, (u64, u64)> = Default::default();
    for input in &day.inputs {
        if let What::Payment {
            episode: Some(_), ..
        } = input.what
        {
            let span = attacked
                .entry(input.card.as_str())
                .or_insert((input.ts_ms, input.ts_ms));
            span.0 = span.0.min(input.ts_ms);
            span.1 = span.1.max(input.ts_ms + 2 * 3_600_000);
        }
    }
    let mut best = vec![0u32; day.episodes.len()];
    let mut episode_lines: Vec<Vec<String>> = vec![Vec::new(); day.episodes.len()];
    let mut seen = vec![false; day.episodes.len()];
    for input in &day.inputs {
        h.set_now_ms(input.ts_ms);
        match &input.what {
            What::Blocklist { json } => {
                h.send("ref.blocklist", &input.card, json.as_bytes())
                    .map_err(|e| format!("blocklist update failed: {e}"))?;
                h.take_emitted();
            }
            What::Payment { json, episode } => {
                h.send("pos.payments", &input.card, json.as_bytes())
                    .map_err(|e| format!("payment failed: {e}: {json}"))?;
                let out = h.take_emitted();
                let score_out = out
                    .iter()
                    .find(|e| e.topic == SCORES_TOPIC)
                    .ok_or("no score")?;
                let v: Value =
                    serde_json::from_slice(&score_out.value).map_err(|e| e.to_string())?;
                let score = v["score"].as_u64().unwrap_or(0) as u32;
                let alerted = out.iter().any(|e| e.topic == ALERTS_TOPIC);
                let history = recent.entry(input.card.as_str()).or_default();
                history.push(format!("{score:>3} {:?} {json}", v["reasons"].to_string()));
                if history.len() > 8 {
                    history.remove(0);
                }
                if alerted && episode.is_none() && ev.traces.len() < 40 {
                    ev.traces.push(history.join("\n    "));
                }
                let reasons: Vec<&str> = v["reasons"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if alerted {
                    ev.alerts += 1;
                    if episode.is_some() {
                        ev.true_alerts += 1;
                    }
                    if let Some(p) = reasons.first().and_then(|r| pattern_of(r)) {
                        let s = ev.patterns.entry(p).or_default();
                        s.attributed_alerts += 1;
                        s.attributed_true += usize::from(episode.is_some());
                    }
                }
                match episode {
                    None => {
                        ev.clean_payments += 1;
                        if alerted {
                            ev.clean_alerted += 1;
                            if let Some((from, to)) = attacked.get(input.card.as_str()) {
                                if (*from..=*to).contains(&input.ts_ms) {
                                    ev.collateral += 1;
                                }
                            }
                            *ev.false_reasons.entry(reasons.join("+")).or_default() += 1;
                        }
                    }
                    Some(e) => {
                        episode_lines[*e].push(history.last().cloned().unwrap_or_default());
                        let s = ev.patterns.entry(day.episodes[*e]).or_default();
                        s.payments += 1;
                        best[*e] = best[*e].max(score);
                        if alerted {
                            s.alerted_payments += 1;
                            if !seen[*e] {
                                seen[*e] = true;
                                s.detected += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    for (e, pattern) in day.episodes.iter().enumerate() {
        if !seen[e] {
            ev.missed.push((*pattern, best[e]));
            ev.missed_traces.push(format!(
                "missed {}:\n    {}",
                pattern.name(),
                episode_lines[e].join("\n    ")
            ));
        }
    }
    ev.state_keys = h.state_len();
    ev.state_bytes = h.state_usage().bytes;
    Ok(ev)
}
