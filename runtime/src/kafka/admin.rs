//! The admin APIs tools use (`kafka-topics`, `kafka-consumer-groups`, `kcat -L`, client
//! bootstraps): CreateTopics, DeleteTopics, DescribeConfigs, DescribeCluster, ListGroups,
//! DescribeGroups.
//!
//! - CreateTopics creates a log topic (one partition, replication factor 1: anything else is
//!   `INVALID_PARTITIONS` / `INVALID_REPLICATION_FACTOR`; an existing topic is
//!   `TOPIC_ALREADY_EXISTS`; with `log.auto_create_topics = false` only topics the config names
//!   can be created, others are `POLICY_VIOLATION`). Topic configs in the request are not
//!   applied (the box's `[log]` section decides them) and are ignored.
//! - DeleteTopics answers `TOPIC_DELETION_DISABLED`: the log deletes by retention only.
//! - DescribeConfigs shows, for a topic, the settings the log runs it with in Kafka's names
//!   (`retention.ms`, `retention.bytes`, `segment.bytes`, `segment.ms`, `max.message.bytes`,
//!   `cleanup.policy`, `min.insync.replicas`), read-only.
//! - ListGroups and DescribeGroups list the groups the box coordinates and the groups with
//!   committed offsets in the state store.

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, ListGroupsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::handlers::{code, str_bytes, CLUSTER_ID, NODE};
use super::Shared;
use crate::log::LogError;

/// Kafka's resource type of a topic in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's resource type of a broker.
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config source "default config".
const SOURCE_DEFAULT: i8 = 5;
/// Kafka's config source "static broker config" (what the box config sets).
const SOURCE_STATIC: i8 = 4;

pub(super) async fn create_topics(
    shared: &Shared,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut body = CreateTopicsResponse::default();
    for t in request.topics {
        let name = t.name.0.to_string();
        let mut out = CreatableTopicResult::default();
        out.name = t.name.clone();
        let refused = if t.num_partitions > 1 {
            Some((
                code::INVALID_PARTITIONS,
                format!("topic {name:?}: this box keeps one partition per topic"),
            ))
        } else if t.replication_factor > 1 {
            Some((
                code::INVALID_REPLICATION_FACTOR,
                format!("topic {name:?}: this box is one broker, replication factor 1"),
            ))
        } else if shared.ctx.log.topic(&name).is_ok() {
            Some((
                code::TOPIC_ALREADY_EXISTS,
                format!("topic {name:?} already exists"),
            ))
        } else if let Err(e) = crate::log::validate_topic_name(&name) {
            Some((code::INVALID_TOPIC_EXCEPTION, e.to_string()))
        } else if request.validate_only {
            None
        } else {
            let log = shared.ctx.log.clone();
            let n = name.clone();
            match tokio::task::spawn_blocking(move || log.topic_or_create(&n)).await {
                Ok(Ok(_)) => None,
                Ok(Err(LogError::CreationRefused(_))) => Some((
                    code::POLICY_VIOLATION,
                    format!("topic {name:?}: `log.auto_create_topics` is off and the config does not name it"),
                )),
                Ok(Err(e)) => Some((code::UNKNOWN_SERVER_ERROR, e.to_string())),
                Err(e) => Some((code::UNKNOWN_SERVER_ERROR, e.to_string())),
            }
        };
        match refused {
            Some((error, message)) => {
                out.error_code = error;
                if version >= 1 {
                    out.error_message = Some(str_bytes(message));
                }
            }
            None => {
                if version >= 5 {
                    out.num_partitions = 1;
                    out.replication_factor = 1;
                }
                tracing::info!(topic = %name, "A Kafka client created a topic.");
            }
        }
        body.topics.push(out);
    }
    body
}

pub(super) fn delete_topics(request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let names: Vec<Option<TopicName>> = if version >= 6 {
        request.topics.into_iter().map(|t| t.name).collect()
    } else {
        request.topic_names.into_iter().map(Some).collect()
    };
    let mut body = DeleteTopicsResponse::default();
    for name in names {
        let mut out = DeletableTopicResult::default();
        out.name = name;
        out.error_code = code::TOPIC_DELETION_DISABLED;
        if version >= 5 {
            out.error_message = Some(str_bytes(
                "this box deletes records by retention only, never whole topics",
            ));
        }
        body.responses.push(out);
    }
    body
}

fn config(name: &str, value: String, source: i8, version: i16) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.name = str_bytes(name);
    c.value = Some(str_bytes(value));
    c.read_only = true;
    if version >= 1 {
        c.config_source = source;
    }
    c
}

pub(super) fn describe_configs(
    shared: &Shared,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut body = DescribeConfigsResponse::default();
    for r in request.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = r.resource_type;
        out.resource_name = r.resource_name.clone();
        let wanted = |name: &str| {
            r.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
        };
        let configs: Vec<(&str, String, i8)> = match r.resource_type {
            RESOURCE_TOPIC => match shared.ctx.log.topic(r.resource_name.as_str()) {
                Ok(topic) => {
                    let c = topic.config();
                    vec![
                        ("cleanup.policy", "delete".into(), SOURCE_DEFAULT),
                        ("retention.ms", c.retention_ms.to_string(), SOURCE_STATIC),
                        (
                            "retention.bytes",
                            c.retention_bytes.to_string(),
                            SOURCE_STATIC,
                        ),
                        ("segment.bytes", c.segment_bytes.to_string(), SOURCE_STATIC),
                        ("segment.ms", c.segment_ms.to_string(), SOURCE_STATIC),
                        (
                            "max.message.bytes",
                            shared.ctx.log.max_record_bytes().to_string(),
                            SOURCE_STATIC,
                        ),
                        ("min.insync.replicas", "1".into(), SOURCE_DEFAULT),
                        (
                            "message.timestamp.type",
                            "CreateTime".into(),
                            SOURCE_DEFAULT,
                        ),
                    ]
                }
                Err(_) => {
                    out.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    Vec::new()
                }
            },
            RESOURCE_BROKER => vec![
                ("broker.id", "0".into(), SOURCE_DEFAULT),
                (
                    "message.max.bytes",
                    shared.ctx.log.max_record_bytes().to_string(),
                    SOURCE_STATIC,
                ),
                ("num.partitions", "1".into(), SOURCE_DEFAULT),
                ("default.replication.factor", "1".into(), SOURCE_DEFAULT),
            ],
            _ => {
                out.error_code = code::INVALID_REQUEST;
                Vec::new()
            }
        };
        out.configs = configs
            .into_iter()
            .filter(|(name, _, _)| wanted(name))
            .map(|(name, value, source)| config(name, value, source, version))
            .collect();
        body.results.push(out);
    }
    body
}

pub(super) fn describe_cluster(shared: &Shared) -> DescribeClusterResponse {
    let mut body = DescribeClusterResponse::default();
    body.cluster_id = str_bytes(CLUSTER_ID);
    body.controller_id = NODE;
    let mut broker = DescribeClusterBroker::default();
    broker.broker_id = NODE;
    broker.host = str_bytes(shared.advertised.0.clone());
    broker.port = shared.advertised.1;
    body.brokers = vec![broker];
    body
}

/// Every group: those the box coordinates and those with offsets in the state store.
fn group_names(shared: &Shared) -> Vec<String> {
    let committed = shared.ctx.state.all_offsets().unwrap_or_default();
    super::handlers::group_names(&shared.groups.describe(), &committed)
}

pub(super) fn list_groups(shared: &Shared, version: i16) -> ListGroupsResponse {
    let mut body = ListGroupsResponse::default();
    for name in group_names(shared) {
        let view = shared.groups.describe_group(&name);
        let mut g = ListedGroup::default();
        g.group_id = GroupId(str_bytes(name));
        g.protocol_type = str_bytes(
            view.as_ref()
                .map_or("consumer".to_string(), |v| v.protocol_type.clone()),
        );
        if version >= 4 {
            g.group_state = str_bytes(view.as_ref().map_or("Empty", |v| v.state));
        }
        if version >= 5 {
            g.group_type = str_bytes("classic");
        }
        body.groups.push(g);
    }
    body
}

pub(super) fn describe_groups(
    shared: &Shared,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let known = group_names(shared);
    let mut body = DescribeGroupsResponse::default();
    for id in request.groups {
        let name = id.0.to_string();
        let mut g = DescribedGroup::default();
        g.group_id = id;
        match shared.groups.describe_group(&name) {
            Some(view) => {
                g.group_state = str_bytes(view.state);
                g.protocol_type = str_bytes(view.protocol_type);
                g.protocol_data = str_bytes(view.protocol);
                g.members = view
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut out = DescribedGroupMember::default();
                        out.member_id = str_bytes(m.member_id);
                        if version >= 4 {
                            out.group_instance_id = m.group_instance_id.map(str_bytes);
                        }
                        out.client_id = str_bytes(m.client_id);
                        out.client_host = StrBytes::from_static_str("/127.0.0.1");
                        out.member_metadata = m.metadata;
                        out.member_assignment = m.assignment;
                        out
                    })
                    .collect();
            }
            None if known.contains(&name) => {
                g.group_state = str_bytes("Empty");
                g.protocol_type = str_bytes("consumer");
            }
            None => g.group_state = str_bytes("Dead"),
        }
        body.groups.push(g);
    }
    body
}
