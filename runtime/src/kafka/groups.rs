//! The group coordinator of the classic consumer-group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup), in memory: the box is the coordinator of every group.
//!
//! A group moves Empty → PreparingRebalance → CompletingRebalance → Stable, as in Kafka:
//! - **Join.** A member without an id gets one and `MEMBER_ID_REQUIRED` (KIP-394) and joins
//!   again with it. A join starts a rebalance (or joins the one under way); the rebalance ends
//!   when every known member has joined again, or at its deadline (the largest rebalance
//!   timeout of the members; 3 s for a group that was empty, so members starting together meet
//!   in one generation). Members that did not join again by then are out. The new generation's
//!   leader (the first member) gets every member's metadata and computes the assignment.
//! - **Sync.** The leader's SyncGroup carries the assignments; every member's SyncGroup is
//!   answered with its own once they are there. Then the group is Stable.
//! - **Heartbeat.** Keeps a member in; during a rebalance it answers `REBALANCE_IN_PROGRESS`, so
//!   the member joins again. A member silent for longer than its session timeout is removed
//!   and the others rebalance.
//! - **Leave.** Removes the member; the others rebalance.
//!
//! Offsets are not kept here: OffsetCommit/OffsetFetch store them in the state store, so they
//! survive a restart of the box; the membership does not (clients join again, as they do when
//! a Kafka coordinator moves).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::handlers::code;
use crate::kernel::lock;

/// How long a group that was empty waits for more members before its first generation
/// (Kafka's `group.initial.rebalance.delay.ms`).
const INITIAL_DELAY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Empty,
    Preparing,
    Completing,
    Stable,
}

#[derive(Debug)]
struct Member {
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    /// Joined (again) during the rebalance under way.
    rejoined: bool,
    group_instance_id: Option<String>,
    client_id: String,
}

#[derive(Debug)]
struct Group {
    phase: Phase,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, not joined yet.
    pending: HashMap<String, Instant>,
    deadline: Instant,
    assignments: HashMap<String, Bytes>,
    /// Bumped on every change that waiters care about.
    tx: watch::Sender<u64>,
}

impl Group {
    fn new() -> Group {
        Group {
            phase: Phase::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            deadline: Instant::now(),
            assignments: HashMap::new(),
            tx: watch::channel(0).0,
        }
    }

    fn wake(&self) {
        self.tx.send_modify(|v| *v += 1);
    }

    /// Starts a rebalance unless one is under way.
    fn prepare(&mut self, now: Instant) {
        if self.phase == Phase::Preparing {
            return;
        }
        let was_empty = self.phase == Phase::Empty;
        self.phase = Phase::Preparing;
        self.assignments.clear();
        for m in self.members.values_mut() {
            m.rejoined = false;
        }
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(INITIAL_DELAY);
        self.deadline = now + if was_empty { INITIAL_DELAY } else { longest };
        self.wake();
    }

    /// Removes members whose session ran out; true when any was removed.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.members.len();
        self.members
            .retain(|_, m| now.saturating_duration_since(m.last_seen) <= m.session_timeout);
        self.pending
            .retain(|_, at| now.saturating_duration_since(*at) <= Duration::from_secs(300));
        let removed = self.members.len() != before;
        if removed {
            if self.members.is_empty() {
                self.phase = Phase::Empty;
                self.wake();
            } else {
                self.prepare(now);
            }
        }
        removed
    }

    /// Ends the rebalance: drops members that did not join again, opens the next generation.
    fn complete(&mut self) {
        self.members.retain(|_, m| m.rejoined);
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
            self.wake();
            return;
        }
        self.generation += 1;
        // The first protocol of the leader that every member supports.
        let leader = self.members.keys().next().cloned();
        self.protocol = leader.as_ref().and_then(|l| {
            self.members[l]
                .protocols
                .iter()
                .map(|(name, _)| name)
                .find(|name| {
                    self.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
                })
                .cloned()
        });
        self.leader = leader;
        self.phase = Phase::Completing;
        self.wake();
    }

    /// Completes a rebalance whose members all joined again or whose deadline passed.
    fn settle(&mut self, now: Instant) {
        if self.phase == Phase::Preparing
            && (now >= self.deadline
                || (self.deadline_is_not_initial() && self.members.values().all(|m| m.rejoined)))
        {
            self.complete();
        }
    }

    /// A group's first generation waits the whole initial delay for more members; later
    /// rebalances end as soon as every member joined again.
    fn deadline_is_not_initial(&self) -> bool {
        self.generation > 0
    }
}

/// What a JoinGroup is answered with.
#[derive(Debug, Default)]
pub(super) struct Joined {
    pub(super) error_code: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member's (id, instance id, metadata of the chosen protocol): for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// A JoinGroup request, as the coordinator needs it.
#[derive(Debug)]
pub(super) struct Join {
    pub group: String,
    pub member_id: String,
    pub client_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// Whether the client understands MEMBER_ID_REQUIRED (JoinGroup v4 and later).
    pub id_required: bool,
}

/// Every group of the box.
#[derive(Debug, Default)]
pub(super) struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Coordinator {
    fn new_member_id(&self, client_id: &str) -> String {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{client_id}-{nanos:x}-{n}")
    }

    /// Handles a JoinGroup; waits for the rebalance to complete.
    pub(super) async fn join(&self, join: Join) -> Joined {
        let now = Instant::now();
        let (mut rx, member_id) = {
            let mut groups = lock(&self.groups);
            let group = groups.entry(join.group.clone()).or_insert_with(Group::new);
            group.expire(now);
            if !group.members.is_empty()
                && group.protocol_type.as_deref() != Some(join.protocol_type.as_str())
            {
                return Joined {
                    error_code: code::INCONSISTENT_GROUP_PROTOCOL,
                    ..Joined::default()
                };
            }
            let mut member_id = join.member_id.clone();
            if member_id.is_empty() {
                member_id = self.new_member_id(&join.client_id);
                if join.id_required {
                    group.pending.insert(member_id.clone(), now);
                    return Joined {
                        error_code: code::MEMBER_ID_REQUIRED,
                        member_id,
                        generation: -1,
                        ..Joined::default()
                    };
                }
            } else if !group.members.contains_key(&member_id)
                && group.pending.remove(&member_id).is_none()
            {
                return Joined {
                    error_code: code::UNKNOWN_MEMBER_ID,
                    member_id,
                    generation: -1,
                    ..Joined::default()
                };
            }
            group.protocol_type = Some(join.protocol_type.clone());
            let changed = group
                .members
                .get(&member_id)
                .is_none_or(|m| m.protocols != join.protocols);
            if changed || group.phase != Phase::Preparing {
                group.prepare(now);
            }
            group.members.insert(
                member_id.clone(),
                Member {
                    protocols: join.protocols,
                    session_timeout: join.session_timeout,
                    rebalance_timeout: join.rebalance_timeout,
                    last_seen: now,
                    rejoined: true,
                    group_instance_id: join.group_instance_id,
                    client_id: join.client_id.clone(),
                },
            );
            group.settle(now);
            (group.tx.subscribe(), member_id)
        };
        loop {
            let deadline = match self.joined(&join.group, &member_id) {
                Ok(joined) => return joined,
                Err(Some(deadline)) => deadline,
                Err(None) => break,
            };
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
        Joined {
            error_code: code::UNKNOWN_MEMBER_ID,
            member_id,
            generation: -1,
            ..Joined::default()
        }
    }

    /// The answer to a member waiting in JoinGroup once the rebalance completed; else the
    /// deadline to wait until (`None`: the member is gone).
    fn joined(&self, group_id: &str, member_id: &str) -> Result<Joined, Option<Instant>> {
        let mut groups = lock(&self.groups);
        let group = groups.get_mut(group_id).ok_or(None)?;
        let now = Instant::now();
        group.settle(now);
        group.members.get_mut(member_id).ok_or(None)?.last_seen = now;
        if group.phase != Phase::Completing && group.phase != Phase::Stable {
            return Err(Some(group.deadline));
        }
        let leader = group.leader.clone().unwrap_or_default();
        let protocol = group.protocol.clone();
        let members = if leader == member_id {
            group
                .members
                .iter()
                .map(|(id, m)| {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(n, _)| Some(n) == protocol.as_ref())
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default();
                    (id.clone(), m.group_instance_id.clone(), metadata)
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Joined {
            error_code: code::NONE,
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol,
            leader,
            member_id: member_id.to_string(),
            members,
        })
    }

    /// Handles a SyncGroup: (error code, this member's assignment, protocol type and name).
    pub(super) async fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> (i16, Bytes, Option<String>, Option<String>) {
        let mut rx = {
            let mut groups = lock(&self.groups);
            let Some(group) = groups.get_mut(group_id) else {
                return (code::UNKNOWN_MEMBER_ID, Bytes::new(), None, None);
            };
            let now = Instant::now();
            group.expire(now);
            let Some(member) = group.members.get_mut(member_id) else {
                return (code::UNKNOWN_MEMBER_ID, Bytes::new(), None, None);
            };
            member.last_seen = now;
            if generation != group.generation {
                return (code::ILLEGAL_GENERATION, Bytes::new(), None, None);
            }
            if group.phase == Phase::Preparing {
                return (code::REBALANCE_IN_PROGRESS, Bytes::new(), None, None);
            }
            if group.leader.as_deref() == Some(member_id) && group.phase == Phase::Completing {
                group.assignments = assignments.into_iter().collect();
                group.phase = Phase::Stable;
                group.wake();
            }
            group.tx.subscribe()
        };
        let until = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(answer) = self.synced(group_id, member_id, generation) {
                return answer;
            }
            if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                return (code::REBALANCE_IN_PROGRESS, Bytes::new(), None, None);
            }
        }
    }

    /// The answer to a member waiting in SyncGroup, once there is one.
    fn synced(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Option<(i16, Bytes, Option<String>, Option<String>)> {
        let groups = lock(&self.groups);
        let Some(group) = groups.get(group_id) else {
            return Some((code::UNKNOWN_MEMBER_ID, Bytes::new(), None, None));
        };
        if group.generation != generation || group.phase == Phase::Preparing {
            return Some((code::REBALANCE_IN_PROGRESS, Bytes::new(), None, None));
        }
        if group.phase != Phase::Stable {
            return None;
        }
        let assignment = group
            .assignments
            .get(member_id)
            .cloned()
            .unwrap_or_default();
        Some((
            code::NONE,
            assignment,
            group.protocol_type.clone(),
            group.protocol.clone(),
        ))
    }

    /// Handles a Heartbeat; its error code.
    pub(super) fn heartbeat(&self, group_id: &str, member_id: &str, generation: i32) -> i16 {
        let mut groups = lock(&self.groups);
        let Some(group) = groups.get_mut(group_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let now = Instant::now();
        group.expire(now);
        group.settle(now);
        let Some(member) = group.members.get_mut(member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        member.last_seen = now;
        if group.phase == Phase::Preparing {
            code::REBALANCE_IN_PROGRESS
        } else if generation != group.generation {
            code::ILLEGAL_GENERATION
        } else {
            code::NONE
        }
    }

    /// Handles a LeaveGroup for each of `members`; their error codes.
    pub(super) fn leave(&self, group_id: &str, members: &[String]) -> Vec<i16> {
        let mut groups = lock(&self.groups);
        let Some(group) = groups.get_mut(group_id) else {
            return vec![code::UNKNOWN_MEMBER_ID; members.len()];
        };
        let now = Instant::now();
        let codes = members
            .iter()
            .map(|id| match group.members.remove(id) {
                Some(_) => code::NONE,
                None => code::UNKNOWN_MEMBER_ID,
            })
            .collect();
        if group.members.is_empty() {
            group.phase = Phase::Empty;
            group.leader = None;
            group.wake();
        } else {
            group.prepare(now);
        }
        codes
    }

    /// One group as DescribeGroups shows it, if the box coordinates it.
    pub(super) fn describe_group(&self, group_id: &str) -> Option<GroupView> {
        let groups = lock(&self.groups);
        let g = groups.get(group_id)?;
        Some(GroupView {
            state: phase_name(g.phase),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: g.protocol.clone().unwrap_or_default(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    metadata: g
                        .protocol
                        .as_ref()
                        .and_then(|p| m.protocols.iter().find(|(n, _)| n == p))
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default(),
                    assignment: g.assignments.get(id).cloned().unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// (group, state, members) of every group, for status and DescribeGroups.
    pub(super) fn describe(&self) -> Vec<(String, &'static str, usize, i32)> {
        let groups = lock(&self.groups);
        let mut out: Vec<_> = groups
            .iter()
            .map(|(name, g)| {
                (
                    name.clone(),
                    phase_name(g.phase),
                    g.members.len(),
                    g.generation,
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// Kafka's name of a group state.
fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Empty => "Empty",
        Phase::Preparing => "PreparingRebalance",
        Phase::Completing => "CompletingRebalance",
        Phase::Stable => "Stable",
    }
}

/// A group as DescribeGroups shows it.
#[derive(Debug)]
pub(super) struct GroupView {
    pub(super) state: &'static str,
    pub(super) protocol_type: String,
    pub(super) protocol: String,
    pub(super) members: Vec<MemberView>,
}

/// A member as DescribeGroups shows it.
#[derive(Debug)]
pub(super) struct MemberView {
    pub(super) member_id: String,
    pub(super) group_instance_id: Option<String>,
    pub(super) client_id: String,
    pub(super) metadata: Bytes,
    pub(super) assignment: Bytes,
}
