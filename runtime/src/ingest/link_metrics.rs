//! The per-device metrics the polling and subscribing sources (Modbus devices, OPC-UA servers)
//! share: whether the link is up, connection attempts by result, records stored and closed
//! gaps, as `outpost_<protocol>_*{<label>=<name>}`. Each protocol adds its own series next to
//! these (Modbus polls and requests, OPC-UA sessions and publishes).

use crate::metrics::{self, Counter, Gauge};

/// The link metrics of one device or server.
#[derive(Debug)]
pub(crate) struct LinkMetrics {
    /// `outpost_<protocol>_connected`: 1 while the link works.
    pub connected: Gauge,
    /// `outpost_<protocol>_connects_total{result="ok"}`.
    pub connects_ok: Counter,
    /// `outpost_<protocol>_connects_total{result="failed"}`.
    pub connects_failed: Counter,
    /// `outpost_<protocol>_records_stored_total`.
    pub records: Counter,
    /// `outpost_<protocol>_gaps_total`: closed gaps (outages, intervals the log refused).
    pub gaps: Counter,
}

impl LinkMetrics {
    /// Registers the series of `name` (a device or server) for `protocol` (`modbus`,
    /// `opcua`), labelled `label` (`device`, `server`); `what` names it in help texts.
    pub(crate) fn new(protocol: &str, label: &str, name: &str, what: &str) -> LinkMetrics {
        let r = metrics::global();
        let labels = [(label, name)];
        let connects = |result: &str| {
            r.counter(
                &format!("outpost_{protocol}_connects_total"),
                &format!("Connection attempts to a {what}, by result."),
                &[(label, name), ("result", result)],
            )
        };
        LinkMetrics {
            connected: r.gauge(
                &format!("outpost_{protocol}_connected"),
                &format!("1 while Outpost holds a working connection to the {what}."),
                &labels,
            ),
            connects_ok: connects("ok"),
            connects_failed: connects("failed"),
            records: r.counter(
                &format!("outpost_{protocol}_records_stored_total"),
                &format!("Records from a {what} appended to the log."),
                &labels,
            ),
            gaps: r.counter(
                &format!("outpost_{protocol}_gaps_total"),
                &format!("Closed gaps of a {what}: outages and intervals the log refused."),
                &labels,
            ),
        }
    }
}
