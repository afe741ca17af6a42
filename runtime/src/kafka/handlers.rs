//! What the box answers to each Kafka request, and at which versions ([`SUPPORTED`], what
//! `ApiVersions` advertises). The ranges start where Kafka 4.x starts (KIP-896) and end before
//! the versions that address topics by id only, so librdkafka 2.x (including Debian's kcat),
//! the Java client and the pure-Python and JavaScript clients all find a version they speak.
//!
//! | API | versions | what it does here |
//! |---|---|---|
//! | Produce | 3–12 | appends each partition's batches to the topic (partition 0) as one log append; acks 0: no answer; acks 1 and all: the answer after the log acknowledged the append under the topic's fsync policy (on an `always` topic, after the fsync) |
//! | Fetch | 4–12 | records from the log from `fetch_offset` (any offset, also inside a stored batch), re-encoded as uncompressed v2 batches with the log's offsets; waits up to `max_wait_ms` for `min_bytes`; read-uncommitted and read-committed are the same (no transactions) |
//! | ListOffsets | 1–7 | earliest (-2), latest (-1), max timestamp (-3), and the first offset whose timestamp is at or after a given one |
//! | Metadata | 0–12 | one broker (node 0, `kafka.advertised`), each topic with one partition led by it; unknown topics are created when the client allows and `log.auto_create_topics` does |
//! | OffsetCommit | 2–8 | stores a group's offset in the state store (consumer `kafka-group:<group>`) and syncs it |
//! | OffsetFetch | 1–7 | a group's stored offsets (-1 when none) |
//! | FindCoordinator | 0–4 | node 0 coordinates every group |
//! | JoinGroup, SyncGroup, Heartbeat, LeaveGroup | 2–9, 0–5, 0–4, 0–5 | the classic consumer-group protocol, coordinated in memory (`groups.rs`) |
//! | InitProducerId | 0–5 | a producer id for an idempotent producer (`producers.rs`: sequence numbers checked per producer and topic, rebuilt from the log after a restart); transactional ids are refused |
//! | CreateTopics, DeleteTopics, DescribeConfigs, DescribeCluster, ListGroups, DescribeGroups | 2–7, 1–6, 1–4, 0–1, 0–4, 0–5 | what tools need (`admin.rs`); topics are not deleted (`TOPIC_DELETION_DISABLED`) |
//! | ApiVersions | 0–3 | these ranges; records the client's software name and version |
//!
//! Errors are the protocol's codes per partition (`UNKNOWN_TOPIC_OR_PARTITION` for a partition
//! other than 0 or a topic that does not exist, `MESSAGE_TOO_LARGE`, `CORRUPT_MESSAGE`,
//! `INVALID_RECORD` for a value that breaks its topic's store-event contract or a
//! transactional batch, `KAFKA_STORAGE_ERROR` on a full disk, `OFFSET_OUT_OF_RANGE`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest,
    FetchRequest, FetchResponse, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, InitProducerIdRequest, InitProducerIdResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    ProduceRequest, ProduceResponse, ProducerId, RequestHeader, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::producers::{Producers, Verdict};
use super::records::{decode_batches, encode_records, read_over_gaps, scan, Incoming};
use super::{frame, peek_header, Close, Shared};
use crate::log::{LogError, Topic};

/// The APIs served and their version ranges (what `ApiVersions` advertises).
pub(super) const SUPPORTED: [(ApiKey, i16, i16); 19] = [
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 2, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 3),
];

/// Kafka's error codes used here.
pub(super) mod code {
    pub(crate) const NONE: i16 = 0;
    pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub(crate) const CORRUPT_MESSAGE: i16 = 2;
    pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub(crate) const MESSAGE_TOO_LARGE: i16 = 10;
    pub(crate) const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub(crate) const UNSUPPORTED_VERSION: i16 = 35;
    pub(crate) const INVALID_REQUEST: i16 = 42;
    pub(crate) const KAFKA_STORAGE_ERROR: i16 = 56;
    pub(crate) const INVALID_RECORD: i16 = 87;
    pub(crate) const ILLEGAL_GENERATION: i16 = 22;
    pub(crate) const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
    pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
    pub(crate) const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub(crate) const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub(crate) const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub(crate) const INVALID_PARTITIONS: i16 = 37;
    pub(crate) const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub(crate) const POLICY_VIOLATION: i16 = 44;
    pub(crate) const TOPIC_DELETION_DISABLED: i16 = 73;
    pub(crate) const UNKNOWN_SERVER_ERROR: i16 = -1;
}

/// The one broker's id.
pub(super) const NODE: BrokerId = BrokerId(0);
/// The cluster id Metadata names.
pub(super) const CLUSTER_ID: &str = "outpost";

fn range_of(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, min, max)| (*min, *max))
}

fn protocol(what: &str, e: impl std::fmt::Display) -> Close {
    Close::Protocol(format!("{what}: {e}"))
}

pub(super) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Encodes `body` at `version` into a response frame.
fn respond<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Option<Bytes>, Close> {
    let mut out = BytesMut::new();
    body.encode(&mut out, version)
        .map_err(|e| protocol("encoding the answer", e))?;
    Ok(Some(frame(
        correlation_id,
        api.response_header_version(version),
        &out,
    )))
}

/// Answers one request frame; `None` when the request wants no answer (produce with acks 0).
/// `client` is the connection's client id, for log lines.
pub(super) async fn answer(
    shared: &Shared,
    frame_bytes: Bytes,
    client: &mut String,
) -> Result<Option<Bytes>, Close> {
    let (key, version, correlation_id) = peek_header(&frame_bytes);
    let api =
        ApiKey::try_from(key).map_err(|_| Close::Protocol(format!("unknown API key {key}")))?;
    let Some((min, max)) = range_of(api) else {
        return Err(Close::Protocol(format!(
            "{api:?} (API key {key}) is not served by this box (see ApiVersions)"
        )));
    };
    if !(min..=max).contains(&version) {
        if api == ApiKey::ApiVersions {
            // As Kafka does: version 0, UNSUPPORTED_VERSION, and the ranges to pick from.
            let body = api_versions(code::UNSUPPORTED_VERSION);
            return respond(api, 0, correlation_id, &body);
        }
        return Err(Close::Protocol(format!(
            "{api:?} version {version} is outside the versions this box serves ({min}–{max})"
        )));
    }
    let mut buf = frame_bytes;
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|e| protocol("a request header that does not decode", e))?;
    if let Some(id) = &header.client_id {
        if client.as_str() == "?" {
            *client = id.to_string();
        }
    }
    macro_rules! decode {
        ($t:ty) => {
            <$t>::decode(&mut buf, version)
                .map_err(|e| protocol(concat!("a ", stringify!($t), " that does not decode"), e))?
        };
    }
    match api {
        ApiKey::ApiVersions => {
            let request = decode!(ApiVersionsRequest);
            let software = format!(
                "{}/{}",
                request.client_software_name.as_str(),
                request.client_software_version.as_str()
            );
            if !request.client_software_name.is_empty() {
                let mut clients = crate::kernel::lock(&shared.clients);
                if clients.len() < 64 && clients.insert(software) {
                    let list: Vec<String> = clients.iter().cloned().collect();
                    shared
                        .ctx
                        .sources
                        .update(super::STATUS_NAME, |s| s.set_info("clients", list));
                }
            }
            respond(api, version, correlation_id, &api_versions(code::NONE))
        }
        ApiKey::Metadata => {
            let request = decode!(MetadataRequest);
            let body = metadata(shared, request, version).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::Produce => {
            let request = decode!(ProduceRequest);
            let acks = request.acks;
            let body = produce(shared, request, version).await;
            if acks == 0 {
                return Ok(None);
            }
            respond(api, version, correlation_id, &body)
        }
        ApiKey::Fetch => {
            let request = decode!(FetchRequest);
            let body = fetch(shared, request, version).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::ListOffsets => {
            let request = decode!(ListOffsetsRequest);
            let body = list_offsets(shared, request, version).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::FindCoordinator => {
            let request = decode!(FindCoordinatorRequest);
            let body = find_coordinator(shared, request, version);
            respond(api, version, correlation_id, &body)
        }
        ApiKey::OffsetCommit => {
            let request = decode!(OffsetCommitRequest);
            let body = offset_commit(shared, request).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::OffsetFetch => {
            let request = decode!(OffsetFetchRequest);
            let body = offset_fetch(shared, request).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::CreateTopics => {
            let request = decode!(CreateTopicsRequest);
            let body = super::admin::create_topics(shared, request, version).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::DeleteTopics => {
            let request = decode!(DeleteTopicsRequest);
            let body = super::admin::delete_topics(request, version);
            respond(api, version, correlation_id, &body)
        }
        ApiKey::DescribeConfigs => {
            let request = decode!(DescribeConfigsRequest);
            let body = super::admin::describe_configs(shared, request, version);
            respond(api, version, correlation_id, &body)
        }
        ApiKey::DescribeCluster => {
            let _request = decode!(DescribeClusterRequest);
            let body = super::admin::describe_cluster(shared);
            respond(api, version, correlation_id, &body)
        }
        ApiKey::ListGroups => {
            let _request = decode!(ListGroupsRequest);
            let body = super::admin::list_groups(shared, version);
            respond(api, version, correlation_id, &body)
        }
        ApiKey::DescribeGroups => {
            let request = decode!(DescribeGroupsRequest);
            let body = super::admin::describe_groups(shared, request, version);
            respond(api, version, correlation_id, &body)
        }
        ApiKey::InitProducerId => {
            let request = decode!(InitProducerIdRequest);
            let body = init_producer_id(shared, request).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::JoinGroup => {
            let request = decode!(JoinGroupRequest);
            let body = join_group(shared, request, version, client).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::SyncGroup => {
            let request = decode!(SyncGroupRequest);
            let body = sync_group(shared, request, version).await;
            respond(api, version, correlation_id, &body)
        }
        ApiKey::Heartbeat => {
            let request = decode!(HeartbeatRequest);
            let mut body = HeartbeatResponse::default();
            body.error_code = shared.groups.heartbeat(
                request.group_id.0.as_str(),
                request.member_id.as_str(),
                request.generation_id,
            );
            respond(api, version, correlation_id, &body)
        }
        ApiKey::LeaveGroup => {
            let request = decode!(LeaveGroupRequest);
            let body = leave_group(shared, request, version);
            respond(api, version, correlation_id, &body)
        }
        other => Err(Close::Protocol(format!("{other:?} is not served"))),
    }
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut body = ApiVersionsResponse::default();
    body.error_code = error_code;
    body.api_keys = SUPPORTED
        .iter()
        .map(|(k, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *min;
            v.max_version = *max;
            v
        })
        .collect();
    body
}

/// Runs `f` on the blocking pool (log and state calls block).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// The topic, created when `create` and the log allows; the error code otherwise.
async fn topic(shared: &Shared, name: &str, create: bool) -> Result<Topic, i16> {
    let log = shared.ctx.log.clone();
    let name = name.to_string();
    let found = blocking(move || {
        if create {
            log.topic_or_create(&name)
        } else {
            log.topic(&name)
        }
    })
    .await
    .ok_or(code::UNKNOWN_SERVER_ERROR)?;
    found.map_err(|e| match e {
        LogError::InvalidTopicName { .. } => code::INVALID_TOPIC_EXCEPTION,
        LogError::StorageFull(_) => code::KAFKA_STORAGE_ERROR,
        _ => code::UNKNOWN_TOPIC_OR_PARTITION,
    })
}

/// A field set away from its default must exist at the version the answer is encoded in.
fn partition(index: i32, error_code: i16, version: i16) -> MetadataResponsePartition {
    let mut p = MetadataResponsePartition::default();
    p.partition_index = index;
    p.error_code = error_code;
    p.leader_id = NODE;
    if version >= 7 {
        p.leader_epoch = 0;
    }
    p.replica_nodes = vec![NODE];
    p.isr_nodes = vec![NODE];
    p
}

async fn metadata(shared: &Shared, request: MetadataRequest, version: i16) -> MetadataResponse {
    let mut body = MetadataResponse::default();
    let mut broker = MetadataResponseBroker::default();
    broker.node_id = NODE;
    broker.host = str_bytes(shared.advertised.0.clone());
    broker.port = shared.advertised.1;
    body.brokers = vec![broker];
    if version >= 2 {
        body.cluster_id = Some(str_bytes(CLUSTER_ID));
    }
    if version >= 1 {
        body.controller_id = NODE;
    }
    // Version 0 has no way to say "all topics" but an empty list; from 1 on that is null.
    let names: Vec<String> = match &request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .collect(),
        _ => {
            let mut all: Vec<String> = shared
                .ctx
                .log
                .topics()
                .iter()
                .map(|t| t.name().to_string())
                .collect();
            all.sort();
            all
        }
    };
    let create = request.allow_auto_topic_creation || version < 4;
    for name in names {
        let mut t = MetadataResponseTopic::default();
        t.name = Some(TopicName(str_bytes(name.clone())));
        match topic(shared, &name, create).await {
            Ok(_) => {
                t.error_code = code::NONE;
                t.is_internal = version >= 1 && name.starts_with("outpost.");
                t.partitions = vec![partition(0, code::NONE, version)];
            }
            Err(error) => t.error_code = error,
        }
        body.topics.push(t);
    }
    body
}

async fn produce(shared: &Shared, request: ProduceRequest, version: i16) -> ProduceResponse {
    let mut body = ProduceResponse::default();
    let transactional = request.transactional_id.is_some();
    for data in request.topic_data {
        let name = data.name.0.to_string();
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = data.name.clone();
        for p in data.partition_data {
            let mut out = PartitionProduceResponse::default();
            out.index = p.index;
            out.base_offset = -1;
            let result = if p.index != 0 {
                Err((
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic {name:?} has one partition, 0"),
                ))
            } else if transactional {
                Err((
                    code::INVALID_RECORD,
                    "transactions are not supported by this box".to_string(),
                ))
            } else {
                produce_partition(shared, &name, p.records.unwrap_or_default()).await
            };
            match result {
                Ok((base, start)) => {
                    out.error_code = code::NONE;
                    out.base_offset = base as i64;
                    if version >= 5 {
                        out.log_start_offset = start as i64;
                    }
                }
                Err((error, message)) => {
                    tracing::debug!(topic = %name, error, message = %message, "A Kafka produce was refused.");
                    out.error_code = error;
                    if version >= 8 {
                        out.error_message = Some(str_bytes(message));
                    }
                }
            }
            topic_response.partition_responses.push(out);
        }
        body.responses.push(topic_response);
    }
    body
}

/// Appends one partition's batches; (base offset, log start) or (error code, message). An
/// idempotent producer's batch is checked first (`producers.rs`): a duplicate is answered with
/// the offset it was stored at and not appended again.
async fn produce_partition(
    shared: &Shared,
    name: &str,
    bytes: Bytes,
) -> Result<(u64, u64), (i16, String)> {
    let Incoming { batches } = decode_batches(bytes, shared.ctx.log.max_record_bytes())?;
    if let Some(contract) = shared.contracts.for_topic(name) {
        for (i, r) in batches.iter().flat_map(|(_, r)| r).enumerate() {
            contract
                .check(&r.value)
                .map_err(|e| (code::INVALID_RECORD, format!("record {i}: {e}")))?;
        }
    }
    let topic = topic(shared, name, true)
        .await
        .map_err(|error| (error, format!("topic {name:?} cannot be written")))?;
    let mut base = None;
    for (producer, mut records) in batches {
        let count = records.len();
        if count == 0 {
            continue;
        }
        if let Some(batch) = producer {
            let checked = {
                let (topic, shared_producers) =
                    (topic.clone(), std::sync::Arc::clone(&shared.producers));
                blocking(move || shared_producers.check(&topic, batch, count)).await
            };
            match checked.ok_or((
                code::UNKNOWN_SERVER_ERROR,
                "the check did not finish".into(),
            ))?? {
                Verdict::Duplicate(offset) => {
                    base.get_or_insert(offset);
                    continue;
                }
                Verdict::Append => Producers::stamp(batch, &mut records),
            }
        }
        let ack = topic.append_async(records).await.map_err(|e| {
            let error = match e {
                LogError::StorageFull(_) => code::KAFKA_STORAGE_ERROR,
                LogError::RecordTooLarge { .. } => code::MESSAGE_TOO_LARGE,
                _ => code::UNKNOWN_SERVER_ERROR,
            };
            (error, e.to_string())
        })?;
        if let Some(batch) = producer {
            shared
                .producers
                .appended(name, batch, count, ack.first_offset);
        }
        shared.counters.produced.add(count as u64);
        base.get_or_insert(ack.first_offset);
    }
    Ok((
        base.unwrap_or_else(|| topic.next_offset()),
        topic.start_offset(),
    ))
}

async fn init_producer_id(
    shared: &Shared,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut body = InitProducerIdResponse::default();
    if request.transactional_id.is_some() {
        body.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        body.producer_id = ProducerId(-1);
        body.producer_epoch = -1;
        tracing::warn!("A Kafka client asked for a transactional producer; transactions are not supported by this box.");
        return body;
    }
    if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
        // KIP-360: the same producer again, with its epoch bumped.
        body.producer_id = request.producer_id;
        body.producer_epoch = request.producer_epoch.saturating_add(1);
        return body;
    }
    let (producers, state) = (
        std::sync::Arc::clone(&shared.producers),
        shared.ctx.state.clone(),
    );
    match blocking(move || producers.allocate(&state)).await {
        Some(Ok(id)) => {
            body.producer_id = ProducerId(id);
            body.producer_epoch = 0;
        }
        other => {
            tracing::warn!(outcome = ?other, "Could not hand out a Kafka producer id.");
            body.error_code = code::UNKNOWN_SERVER_ERROR;
            body.producer_id = ProducerId(-1);
            body.producer_epoch = -1;
        }
    }
    body
}

/// One partition's part of a fetch: the error code, the records' bytes, their count, the
/// topic's ends, and the topic itself when it was read (a long poll waits on it).
struct PartitionRead {
    error_code: i16,
    records: Bytes,
    count: u64,
    high_watermark: i64,
    log_start: i64,
    topic: Option<Topic>,
}

async fn read_partition(
    shared: &Shared,
    name: &str,
    partition_index: i32,
    offset: i64,
    max_bytes: usize,
) -> PartitionRead {
    let mut out = PartitionRead {
        error_code: code::NONE,
        records: Bytes::new(),
        count: 0,
        high_watermark: -1,
        log_start: -1,
        topic: None,
    };
    if partition_index != 0 {
        out.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
        return out;
    }
    let topic = match topic(shared, name, false).await {
        Ok(t) => t,
        Err(e) => {
            out.error_code = e;
            return out;
        }
    };
    let (start, next) = (topic.start_offset(), topic.next_offset());
    out.high_watermark = next as i64;
    out.log_start = start as i64;
    if offset < start as i64 || offset > next as i64 {
        out.error_code = code::OFFSET_OUT_OF_RANGE;
        return out;
    }
    let read_topic = topic.clone();
    let read =
        blocking(move || read_over_gaps(&read_topic, offset as u64, usize::MAX, max_bytes)).await;
    match read {
        Some(Ok(fetched)) => {
            out.count = fetched.records.len() as u64;
            match encode_records(&fetched.records) {
                Ok(bytes) => out.records = bytes,
                Err(e) => {
                    tracing::warn!(topic = %name, error = %e, "Could not encode records for a Kafka fetch.");
                    out.error_code = code::UNKNOWN_SERVER_ERROR;
                }
            }
        }
        Some(Err(e)) => {
            tracing::warn!(topic = %name, error = %e, "A Kafka fetch could not read the log.");
            out.error_code = code::UNKNOWN_SERVER_ERROR;
        }
        None => out.error_code = code::UNKNOWN_SERVER_ERROR,
    }
    out.topic = Some(topic);
    out
}

async fn fetch(shared: &Shared, request: FetchRequest, version: i16) -> FetchResponse {
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0).min(300_000));
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_total = usize::try_from(request.max_bytes).unwrap_or(0).max(1);
    loop {
        let mut body = FetchResponse::default();
        let mut total = 0usize;
        let mut waits: Vec<(Topic, u64)> = Vec::new();
        for t in &request.topics {
            let name = t.topic.0.to_string();
            let mut topic_out = FetchableTopicResponse::default();
            topic_out.topic = t.topic.clone();
            topic_out.topic_id = t.topic_id;
            for p in &t.partitions {
                let budget = usize::try_from(p.partition_max_bytes)
                    .unwrap_or(0)
                    .min(max_total.saturating_sub(total))
                    .max(1);
                let read = read_partition(shared, &name, p.partition, p.fetch_offset, budget).await;
                total += read.records.len();
                if let (0, code::NONE, Some(topic)) = (read.count, read.error_code, read.topic) {
                    waits.push((topic, p.fetch_offset.max(0) as u64));
                }
                shared.counters.fetched.add(read.count);
                let mut data = PartitionData::default();
                data.partition_index = p.partition;
                data.error_code = read.error_code;
                data.high_watermark = read.high_watermark;
                data.last_stable_offset = read.high_watermark;
                if version >= 5 {
                    data.log_start_offset = read.log_start;
                }
                data.aborted_transactions = Some(Vec::new());
                data.records = Some(read.records);
                topic_out.partitions.push(data);
            }
            body.responses.push(topic_out);
        }
        let now = tokio::time::Instant::now();
        if total >= min_bytes.max(1) || now >= deadline || waits.is_empty() {
            return body;
        }
        // Wait until one of the empty partitions has a record, or the deadline.
        let remaining = deadline - now;
        let mut set = tokio::task::JoinSet::new();
        for (topic, offset) in waits {
            set.spawn(async move { topic.wait_for(offset, remaining).await });
        }
        tokio::select! {
            biased;
            _ = shared.ctx.shutdown.requested() => return body,
            _ = set.join_next() => {}
        }
        set.abort_all();
    }
}

/// The first stored offset whose timestamp is at or after `ts`, with its timestamp; or the
/// offset and timestamp of the record with the largest timestamp when `ts` is -3.
fn offset_for_time(topic: &Topic, ts: i64) -> Result<Option<(u64, i64)>, LogError> {
    let mut found: Option<(u64, i64)> = None;
    scan(topic, topic.start_offset(), |r| {
        let t = r.timestamp_ms as i64;
        if ts == -3 {
            if found.is_none_or(|(_, b)| t >= b) {
                found = Some((r.offset, t));
            }
            true
        } else if t >= ts {
            found = Some((r.offset, t));
            false
        } else {
            true
        }
    })?;
    Ok(found)
}

async fn list_offsets(
    shared: &Shared,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut body = ListOffsetsResponse::default();
    for t in request.topics {
        let name = t.name.0.to_string();
        let mut topic_out = ListOffsetsTopicResponse::default();
        topic_out.name = t.name.clone();
        for p in t.partitions {
            let mut out = ListOffsetsPartitionResponse::default();
            out.partition_index = p.partition_index;
            out.timestamp = -1;
            out.offset = -1;
            if version >= 4 {
                out.leader_epoch = 0;
            }
            if p.partition_index != 0 {
                out.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                topic_out.partitions.push(out);
                continue;
            }
            match topic(shared, &name, false).await {
                Err(e) => out.error_code = e,
                Ok(topic) => match p.timestamp {
                    -2 => out.offset = topic.start_offset() as i64,
                    -1 => out.offset = topic.next_offset() as i64,
                    ts if ts >= 0 || ts == -3 => {
                        let found = blocking(move || offset_for_time(&topic, ts)).await;
                        match found {
                            Some(Ok(Some((offset, t)))) => {
                                out.offset = offset as i64;
                                out.timestamp = t;
                            }
                            Some(Ok(None)) => {}
                            _ => out.error_code = code::UNKNOWN_SERVER_ERROR,
                        }
                    }
                    _ => out.error_code = code::INVALID_REQUEST,
                },
            }
            topic_out.partitions.push(out);
        }
        body.topics.push(topic_out);
    }
    body
}

fn find_coordinator(
    shared: &Shared,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut body = FindCoordinatorResponse::default();
    let (host, port) = (str_bytes(shared.advertised.0.clone()), shared.advertised.1);
    if version >= 4 {
        body.coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let mut c = Coordinator::default();
                c.key = key;
                c.node_id = NODE;
                c.host = host.clone();
                c.port = port;
                c
            })
            .collect();
    } else {
        body.node_id = NODE;
        body.host = host;
        body.port = port;
    }
    body
}

/// The prefix of a Kafka consumer group's consumer name in the state store.
pub(super) const GROUP_PREFIX: &str = "kafka-group:";

/// The state store's consumer name of a Kafka consumer group.
fn group_consumer(group: &str) -> String {
    format!("{GROUP_PREFIX}{group}")
}

async fn offset_commit(shared: &Shared, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let consumer = group_consumer(request.group_id.0.as_str());
    let mut offsets = Vec::new();
    let mut body = OffsetCommitResponse::default();
    for t in &request.topics {
        let mut topic_out = OffsetCommitResponseTopic::default();
        topic_out.name = t.name.clone();
        for p in &t.partitions {
            let mut out = OffsetCommitResponsePartition::default();
            out.partition_index = p.partition_index;
            if p.partition_index != 0 || p.committed_offset < 0 {
                out.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
            } else {
                offsets.push((t.name.0.to_string(), p.committed_offset as u64));
            }
            topic_out.partitions.push(out);
        }
        body.topics.push(topic_out);
    }
    let state = shared.ctx.state.clone();
    let commit = crate::state::Commit {
        consumer,
        offsets,
        namespace: String::new(),
        ops: Vec::new(),
    };
    let stored = blocking(move || state.commit(&commit).and_then(|()| state.sync())).await;
    publish_groups(shared);
    if !matches!(stored, Some(Ok(()))) {
        tracing::warn!(group = %request.group_id.0.as_str(), outcome = ?stored, "A Kafka group's offsets could not be stored.");
        for t in &mut body.topics {
            for p in &mut t.partitions {
                if p.error_code == code::NONE {
                    p.error_code = code::UNKNOWN_SERVER_ERROR;
                }
            }
        }
    }
    body
}

async fn offset_fetch(shared: &Shared, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let consumer = group_consumer(request.group_id.0.as_str());
    let state = shared.ctx.state.clone();
    let stored = blocking(move || state.offsets(&consumer))
        .await
        .and_then(Result::ok)
        .unwrap_or_default();
    let mut body = OffsetFetchResponse::default();
    let wanted: Vec<(TopicName, Vec<i32>)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect(),
        None => stored
            .iter()
            .map(|(name, _)| (TopicName(str_bytes(name.clone())), vec![0]))
            .collect(),
    };
    for (name, partitions) in wanted {
        let mut topic_out = OffsetFetchResponseTopic::default();
        let offset = stored
            .iter()
            .find(|(t, _)| t.as_str() == name.0.as_str())
            .map(|(_, o)| *o);
        topic_out.name = name;
        for index in partitions {
            let mut out = OffsetFetchResponsePartition::default();
            out.partition_index = index;
            out.metadata = Some(str_bytes(""));
            out.committed_offset = match offset {
                Some(o) if index == 0 => o as i64,
                _ => -1,
            };
            topic_out.partitions.push(out);
        }
        body.topics.push(topic_out);
    }
    body
}

/// Every group: those the box coordinates (`live`, from `groups.describe()`) and those with
/// offsets in the state store (`committed`, from `all_offsets()`), by name.
pub(super) fn group_names(
    live: &[(String, &'static str, usize, i32)],
    committed: &[(String, String, u64)],
) -> Vec<String> {
    let mut names: Vec<String> = live.iter().map(|(name, ..)| name.clone()).collect();
    names.extend(
        committed
            .iter()
            .filter_map(|(consumer, ..)| consumer.strip_prefix(GROUP_PREFIX).map(str::to_string)),
    );
    names.sort();
    names.dedup();
    names
}

/// Shows every group in the listener's status (`outpost status`, `/topics`): its state,
/// members, generation and lag (records of each topic after its committed offset), and the
/// total lag as the gauge `outpost_source_group_lag_records`.
pub(super) fn publish_groups(shared: &Shared) {
    let committed = shared.ctx.state.all_offsets().unwrap_or_default();
    let live = shared.groups.describe();
    let names = group_names(&live, &committed);
    let mut total = 0u64;
    let lines: Vec<String> = names
        .iter()
        .map(|name| {
            let consumer = group_consumer(name);
            let mut lags = Vec::new();
            let mut lag = 0u64;
            for (_, topic, offset) in committed.iter().filter(|(c, ..)| *c == consumer) {
                let end = shared.ctx.log.topic(topic).map_or(0, |t| t.next_offset());
                let behind = end.saturating_sub(*offset);
                lag += behind;
                lags.push(format!("{topic} {behind}"));
            }
            total += lag;
            let membership = live.iter().find(|(n, ..)| n == name).map_or(
                "Empty, 0 members".to_string(),
                |(_, state, members, generation)| {
                    format!("{state}, {members} members, generation {generation}")
                },
            );
            format!("{name}: {membership}, lag {lag} ({})", lags.join(", "))
        })
        .collect();
    shared.ctx.sources.update(super::STATUS_NAME, |s| {
        s.set_info("groups", lines);
        s.set_gauge(
            "group_lag_records",
            "Records after the Kafka consumer groups' committed offsets, summed over groups and topics.",
            total as f64,
        );
    });
}

async fn join_group(
    shared: &Shared,
    request: JoinGroupRequest,
    version: i16,
    client: &str,
) -> JoinGroupResponse {
    let ms = |v: i32| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    let join = super::groups::Join {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        client_id: client.to_string(),
        group_instance_id: request.group_instance_id.map(|i| i.to_string()),
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        session_timeout: ms(request.session_timeout_ms),
        // Before v1 there was no rebalance timeout: the session timeout served.
        rebalance_timeout: ms(if request.rebalance_timeout_ms > 0 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        }),
        id_required: version >= 4,
    };
    let joined = shared.groups.join(join).await;
    publish_groups(shared);
    let mut body = JoinGroupResponse::default();
    body.error_code = joined.error_code;
    body.generation_id = joined.generation;
    body.member_id = str_bytes(joined.member_id);
    body.leader = str_bytes(joined.leader);
    if version >= 7 {
        body.protocol_type = joined.protocol_type.map(str_bytes);
        body.protocol_name = joined.protocol.map(str_bytes);
    } else {
        body.protocol_name = Some(str_bytes(joined.protocol.unwrap_or_default()));
    }
    body.members = joined
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m =
                kafka_protocol::messages::join_group_response::JoinGroupResponseMember::default();
            m.member_id = str_bytes(id);
            if version >= 5 {
                m.group_instance_id = instance.map(str_bytes);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    body
}

async fn sync_group(shared: &Shared, request: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let (error_code, assignment, protocol_type, protocol) = shared
        .groups
        .sync(
            request.group_id.0.as_str(),
            request.member_id.as_str(),
            request.generation_id,
            assignments,
        )
        .await;
    publish_groups(shared);
    let mut body = SyncGroupResponse::default();
    body.error_code = error_code;
    body.assignment = assignment;
    if version >= 5 {
        body.protocol_type = protocol_type.map(str_bytes);
        body.protocol_name = protocol.map(str_bytes);
    }
    body
}

fn leave_group(shared: &Shared, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group = request.group_id.0.to_string();
    let mut body = LeaveGroupResponse::default();
    if version >= 3 {
        let ids: Vec<String> = request
            .members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect();
        let codes = shared.groups.leave(&group, &ids);
        body.members = request
            .members
            .into_iter()
            .zip(codes)
            .map(|(m, error_code)| {
                let mut out =
                    kafka_protocol::messages::leave_group_response::MemberResponse::default();
                out.member_id = m.member_id;
                out.group_instance_id = m.group_instance_id;
                out.error_code = error_code;
                out
            })
            .collect();
    } else {
        let codes = shared
            .groups
            .leave(&group, &[request.member_id.to_string()]);
        body.error_code = codes.first().copied().unwrap_or(code::NONE);
    }
    publish_groups(shared);
    body
}
