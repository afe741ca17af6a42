//! Cloud → edge mirroring: configured cloud topics (prices, promotions, card blocklists,
//! plugin rollouts) are consumed with one consumer group per edge (`outpost-<edge_id>` by
//! default) and appended to local topics, where plugins read them as ordinary inputs.
//!
//! At-least-once: offsets are committed to the cloud group only after the local append
//! returned (acknowledged under the local topic's fsync policy), so after an outage or a crash
//! consumption resumes from the last committed offset and may append a few records twice,
//! never lose one. Records keep their key, value, timestamp and headers, plus
//! `outpost-mirror-topic`, `outpost-mirror-partition` and `outpost-mirror-offset` naming
//! where they came from. Messages arriving together are appended in one batch per local
//! topic. The connection settings are `[forward.kafka]`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::forward::KafkaConfig;
use crate::kernel::Context;
use crate::log::{LogError, NewRecord};
use crate::metrics;

/// Errors of the mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The Kafka client refused its configuration or the subscription.
    #[error("the Kafka consumer could not be set up: {0}")]
    Client(#[source] KafkaError),
    /// A local topic could not be opened or appended to.
    #[error("appending to local topic {topic:?}: {source}")]
    Log {
        topic: String,
        #[source]
        source: LogError,
    },
}

/// One mirrored topic (`[[mirror.topics]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorTopic {
    /// The cloud topic to consume.
    pub cloud: String,
    /// The local topic its records are appended to (e.g. `ref.blocklist`).
    pub local: String,
}

/// The `[mirror]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Consumer group template; `{edge_id}` and `{store_id}` are replaced.
    #[serde(default = "default_group")]
    pub group: String,
    /// Most messages appended in one local batch.
    #[serde(default = "default_batch")]
    pub batch_records: usize,
    /// The topics to mirror; none by default.
    #[serde(default)]
    pub topics: Vec<MirrorTopic>,
}

fn default_group() -> String {
    "outpost-{edge_id}".to_string()
}
fn default_batch() -> usize {
    500
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            group: default_group(),
            batch_records: default_batch(),
            topics: Vec::new(),
        }
    }
}

impl MirrorConfig {
    /// Checks the values; the error is (dotted key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.group.is_empty() {
            return Err(("mirror.group".into(), "must not be empty".into()));
        }
        if !(1..=100_000).contains(&self.batch_records) {
            return Err((
                "mirror.batch_records".into(),
                "must be between 1 and 100000".into(),
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.cloud.is_empty() {
                return Err((
                    format!("mirror.topics[{i}].cloud"),
                    "must not be empty".into(),
                ));
            }
            if let Err(e) = crate::log::validate_topic_name(&t.local) {
                return Err((format!("mirror.topics[{i}].local"), e.to_string()));
            }
        }
        Ok(())
    }
}

/// Runs the mirror until the box stops; `kafka` is the cloud cluster's connection (the
/// forwarder's `[forward.kafka]`).
pub async fn run(
    ctx: Context,
    kafka: KafkaConfig,
    config: MirrorConfig,
) -> Result<(), MirrorError> {
    let (edge_id, store_id) = (ctx.identity.edge_id(), ctx.identity.store_id());
    let (log, shutdown) = (ctx.log.clone(), ctx.shutdown.clone());
    let group = config
        .group
        .replace("{edge_id}", edge_id)
        .replace("{store_id}", store_id);
    let mut cc = ClientConfig::new();
    cc.set("group.id", &group)
        .set("client.id", format!("outpost-{edge_id}-mirror"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    for (k, v) in kafka.client_properties() {
        cc.set(k, v);
    }
    let consumer: StreamConsumer = cc.create().map_err(MirrorError::Client)?;
    let routes: BTreeMap<String, String> = config
        .topics
        .iter()
        .map(|t| (t.cloud.clone(), t.local.clone()))
        .collect();
    let cloud: Vec<&str> = routes.keys().map(String::as_str).collect();
    consumer.subscribe(&cloud).map_err(MirrorError::Client)?;
    tracing::info!(group = %group, topics = ?cloud, "Mirroring cloud topics into local topics.");
    let mirrored = |local: &str| {
        metrics::global().counter(
            "outpost_mirror_records_total",
            "Records mirrored from the cloud into the local topic.",
            &[("topic", local)],
        )
    };
    let mut failures = 0u32;
    loop {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.requested() => return Ok(()),
        };
        let first = match first {
            Ok(m) => m.detach(),
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = Duration::from_millis(200u64 << failures.min(8));
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "Mirroring could not receive from the cloud; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = shutdown.requested() => return Ok(()),
                }
            }
        };
        failures = 0;
        let mut batch = vec![first];
        while batch.len() < config.batch_records {
            match tokio::time::timeout(Duration::from_millis(5), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }
        // Group by local topic, keeping arrival order, and note the last offset per partition.
        let mut by_local: BTreeMap<String, Vec<NewRecord>> = BTreeMap::new();
        let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &batch {
            positions.insert((m.topic().to_string(), m.partition()), m.offset());
            let Some(local) = routes.get(m.topic()) else {
                continue;
            };
            let mut headers = Vec::new();
            if let Some(h) = m.headers() {
                for i in 0..h.count() {
                    if let Some(header) = h.try_get(i) {
                        headers
                            .push((header.key.to_string(), header.value.unwrap_or(&[]).to_vec()));
                    }
                }
            }
            headers.push(("outpost-mirror-topic".into(), m.topic().as_bytes().to_vec()));
            headers.push((
                "outpost-mirror-partition".into(),
                m.partition().to_string().into_bytes(),
            ));
            headers.push((
                "outpost-mirror-offset".into(),
                m.offset().to_string().into_bytes(),
            ));
            by_local.entry(local.clone()).or_default().push(NewRecord {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or(&[]).to_vec(),
                headers,
                timestamp_ms: m
                    .timestamp()
                    .to_millis()
                    .and_then(|t| u64::try_from(t).ok()),
            });
        }
        for (local, records) in by_local {
            let n = records.len() as u64;
            let topic = log
                .topic_or_create(&local)
                .map_err(|source| MirrorError::Log {
                    topic: local.clone(),
                    source,
                })?;
            topic
                .append_async(records)
                .await
                .map_err(|source| MirrorError::Log {
                    topic: local.clone(),
                    source,
                })?;
            mirrored(&local).add(n);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in positions {
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1))
            {
                tracing::warn!(error = %e, "Could not note a mirror offset; it is committed later.");
            }
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "Committing mirror offsets failed; records may be mirrored again after a restart.");
        }
    }
}
