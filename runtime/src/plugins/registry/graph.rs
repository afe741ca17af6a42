//! The plugin graph: which plugin feeds which, through which topic. The registry asks it two
//! questions before a plugin is installed, upgraded or started:
//!
//! - **Would it close a cycle?** Plugin P feeds plugin Q through topic `t` when P writes `t`
//!   (an output, or its dead-letter topic `P.dlq`, which the host writes for it) and Q reads `t`
//!   (an exact input, or a `prefix*` input — a pattern never matches Q's own outputs or
//!   dead-letter topic, as the runner never feeds them back). A cycle (`a → pong.a → b →
//!   ping.b → a`) turns one record into millions; an install that closes one is refused with
//!   the cycle spelled out.
//! - **Is each output its to write?** An output another plugin already declares, or a topic a
//!   source feeds (the store's device topics, configured Modbus/OPC-UA/mirror topics), belongs
//!   to that writer; a second writer would forge its records (`fraud.scores`, which the MQTT
//!   sink sends to payment terminals). Such an output needs a grant in the box config
//!   (`plugins.output_grants`). The reserved `outpost.*` and `*.dlq` topics are refused earlier,
//!   by the manifest itself.

use std::collections::VecDeque;

use crate::plugins::manifest::Manifest;

/// The topics a plugin writes: its outputs and its dead-letter topic.
fn writes(m: &Manifest) -> impl Iterator<Item = String> + '_ {
    m.outputs
        .iter()
        .cloned()
        .chain(std::iter::once(m.dead_letter_topic()))
}

/// Whether plugin `m` reads `topic`, as its runner would.
fn reads(m: &Manifest, topic: &str) -> bool {
    m.inputs.iter().any(|input| match input.strip_suffix('*') {
        Some(prefix) => {
            topic.starts_with(prefix)
                && !m.outputs.iter().any(|o| o == topic)
                && topic != m.dead_letter_topic()
        }
        None => input == topic,
    })
}

/// The cycle `new` would close among `others` (every other loaded plugin), as
/// `new → topic → plugin → topic → … → new`; `None` when there is none.
pub(crate) fn cycle_through(new: &Manifest, others: &[&Manifest]) -> Option<String> {
    let mut all: Vec<&Manifest> = Vec::with_capacity(others.len() + 1);
    all.push(new);
    all.extend(others.iter().copied().filter(|m| m.name != new.name));
    // Breadth-first from `new`; `came_from[i]` = (previous plugin, topic) on the shortest path.
    let mut came_from: Vec<Option<(usize, String)>> = vec![None; all.len()];
    let mut seen = vec![false; all.len()];
    let mut queue = VecDeque::from([0usize]);
    while let Some(p) = queue.pop_front() {
        for topic in writes(all[p]) {
            for (q, m) in all.iter().enumerate() {
                if !reads(m, &topic) {
                    continue;
                }
                if q == 0 {
                    // Built backwards from the edge into `new`, then put in reading order.
                    let mut path = vec![new.name.clone(), topic];
                    let mut at = p;
                    loop {
                        path.push(all[at].name.clone());
                        match &came_from[at] {
                            Some((prev, via)) => {
                                path.push(via.clone());
                                at = *prev;
                            }
                            None => break,
                        }
                    }
                    path.reverse();
                    return Some(path.join(" → "));
                }
                if !seen[q] {
                    seen[q] = true;
                    came_from[q] = Some((p, topic.clone()));
                    queue.push_back(q);
                }
            }
        }
    }
    None
}

/// Who already writes a topic `new` wants to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Writer {
    /// Another plugin declares it as an output.
    Plugin(String),
    /// A source feeds it (the entry of the source list that matched).
    Source(String),
}

/// The first output of `new` that another plugin or a source already writes, with the writer;
/// `granted(topic)` exempts outputs the box config grants.
pub(crate) fn taken_output(
    new: &Manifest,
    others: &[&Manifest],
    sources: &[String],
    granted: impl Fn(&str) -> bool,
) -> Option<(String, Writer)> {
    for topic in &new.outputs {
        if granted(topic) {
            continue;
        }
        if let Some(owner) = others
            .iter()
            .find(|m| m.name != new.name && m.outputs.iter().any(|o| o == topic))
        {
            return Some((topic.clone(), Writer::Plugin(owner.name.clone())));
        }
        if let Some(source) = sources.iter().find(|s| match s.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => *s == topic,
        }) {
            return Some((topic.clone(), Writer::Source(source.clone())));
        }
    }
    None
}

/// The plugins (by name) that read what `m` writes, for tests and messages.
#[cfg(test)]
fn readers<'a>(m: &Manifest, others: &[&'a Manifest]) -> std::collections::BTreeSet<&'a str> {
    writes(m)
        .flat_map(|t| {
            others
                .iter()
                .filter(move |o| reads(o, &t))
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn plugin(name: &str, inputs: &[&str], outputs: &[&str]) -> Manifest {
        let list = |v: &[&str]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Manifest::parse(&format!(
            "name = {name:?}\nversion = \"1\"\ninputs = [{}]\noutputs = [{}]\n",
            list(inputs),
            list(outputs)
        ))
        .unwrap()
    }

    #[test]
    fn two_plugins_feeding_each_other_through_wildcards_are_a_cycle() {
        let a = plugin("a", &["ping.*"], &["pong.a"]);
        let b = plugin("b", &["pong.*"], &["ping.b"]);
        assert_eq!(cycle_through(&a, &[]), None);
        assert_eq!(
            cycle_through(&b, &[&a]).as_deref(),
            Some("b → ping.b → a → pong.a → b")
        );
    }

    #[test]
    fn a_longer_cycle_is_named_hop_by_hop() {
        let a = plugin("a", &["x"], &["y"]);
        let b = plugin("b", &["y"], &["z"]);
        let c = plugin("c", &["z"], &["x"]);
        assert_eq!(cycle_through(&c, &[&b]), None);
        assert_eq!(
            cycle_through(&c, &[&a, &b]).as_deref(),
            Some("c → x → a → y → b → z → c")
        );
    }

    #[test]
    fn a_chain_without_a_way_back_is_no_cycle() {
        let score = plugin(
            "fraud-score",
            &["pos.payments", "ref.blocklist"],
            &["fraud.scores"],
        );
        let alerts = plugin("alerts", &["fraud.*"], &["alerts.out"]);
        let watch = plugin(
            "sensor-watch",
            &["sensors.*"],
            &["sensor.alerts", "sensors.derived"],
        );
        assert_eq!(cycle_through(&alerts, &[&score, &watch]), None);
        assert_eq!(cycle_through(&watch, &[&score, &alerts]), None);
        assert_eq!(
            readers(&score, &[&alerts, &watch]),
            BTreeSet::from(["alerts"])
        );
    }

    #[test]
    fn reading_a_dead_letter_topic_that_feeds_back_is_a_cycle() {
        let a = plugin("a", &["in"], &["out"]);
        let fixer = plugin("fixer", &["a.dlq"], &["in"]);
        assert_eq!(
            cycle_through(&fixer, &[&a]).as_deref(),
            Some("fixer → in → a → a.dlq → fixer")
        );
    }

    #[test]
    fn an_output_another_plugin_or_a_source_writes_is_taken_unless_granted() {
        let score = plugin("fraud-score", &["pos.payments"], &["fraud.scores"]);
        let forger = plugin("forger", &["x"], &["fraud.scores"]);
        let sources = vec!["pos.payments".to_string(), "sensors.*".to_string()];
        assert_eq!(
            taken_output(&forger, &[&score], &sources, |_| false),
            Some(("fraud.scores".into(), Writer::Plugin("fraud-score".into())))
        );
        assert_eq!(
            taken_output(&forger, &[&score], &sources, |t| t == "fraud.scores"),
            None
        );
        let spoof = plugin("spoof", &["x"], &["sensors.fridge"]);
        assert_eq!(
            taken_output(&spoof, &[], &sources, |_| false),
            Some(("sensors.fridge".into(), Writer::Source("sensors.*".into())))
        );
        // Upgrading a plugin keeps its own outputs.
        assert_eq!(taken_output(&score, &[&score], &sources, |_| false), None);
    }
}
