//! The leader's and the node's decisions, as pure functions over plain
//! inputs with the time passed in: whether to grant a lease, which nodes
//! the failure detector declares Down, what the table's membership must
//! become, which commands follow a verdict, and which sessions this node
//! must run. The async loops in `lease`, `scheduler` and `runtime` only
//! gather the inputs and carry out the answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use std::sync::Arc;

use crate::model::{
    Command, Detection, HandoffMove, Move, MoveReason, NodeId, NodeStatus, Session, SessionId,
};
use crate::state::ClusterState;

/// What the leader knows when a node asks for a lease.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GrantInputs {
    /// This node is the Raft leader.
    pub is_leader: bool,
    /// A quorum acknowledged this leader within the quorum window.
    pub fresh_quorum: bool,
    /// The liveness record belongs to this term (the leader took office).
    pub in_office: bool,
    /// The asking node is in the Raft membership.
    pub member: bool,
    /// Its status in the table, if it is there.
    pub status: Option<NodeStatus>,
    /// It asks for the first time since its process started.
    pub fresh: bool,
    /// A graceful stop of another process of this node drained it (the
    /// asking process restarted since, and the stop may have landed after
    /// its first request).
    pub restarted_since_stop: bool,
}

/// The leader's answer to a lease request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Refused, and why.
    Refuse(&'static str),
    /// Granted; `wants_up` when the node is to be made Up again (it was
    /// Down, or it restarted while Draining).
    Grant { wants_up: bool },
}

/// Decides a lease request. A lease is granted only by a leader in office
/// that heard a quorum within the quorum window (a deposed leader cannot
/// keep leases alive), and only to a member.
pub(crate) fn decide_grant(inputs: &GrantInputs) -> Grant {
    if !inputs.is_leader {
        return Grant::Refuse("not the leader");
    }
    if !inputs.fresh_quorum {
        return Grant::Refuse("leader has not heard from a quorum recently");
    }
    if !inputs.in_office {
        return Grant::Refuse("leader is still taking office");
    }
    if !inputs.member {
        return Grant::Refuse("not a member of the cluster");
    }
    let wants_up = match inputs.status {
        Some(NodeStatus::Down) => true,
        Some(NodeStatus::Draining) => inputs.fresh || inputs.restarted_since_stop,
        _ => false,
    };
    Grant::Grant { wants_up }
}

/// True when a quorum acknowledged the leader at `acked_at` and that is
/// within `window` of `now` (the rule of lease grants and of readiness).
pub(crate) fn quorum_is_fresh(acked_at: Option<Instant>, now: Instant, window: Duration) -> bool {
    acked_at.is_some_and(|at| now.saturating_duration_since(at) <= window)
}

/// The failure detector's verdict: the candidates whose process is gone
/// (`dead`), or that were last heard more than `node_timeout` before `now`.
/// A candidate never heard is taken as heard now (a new leader waits a full
/// timeout before declaring anyone Down); the caller records that.
pub(crate) fn down_verdicts(
    now: Instant,
    node_timeout: Duration,
    last_heard: &HashMap<NodeId, Instant>,
    dead: &BTreeSet<NodeId>,
    candidates: &[NodeId],
) -> Vec<NodeId> {
    candidates
        .iter()
        .copied()
        .filter(|node| {
            let heard = last_heard.get(node).copied().unwrap_or(now);
            dead.contains(node) || now.saturating_duration_since(heard) > node_timeout
        })
        .collect()
}

/// Commands that make the table's nodes follow the Raft membership
/// (`members`: id and address of every voter and learner): missing or
/// moved members are added, removed ones removed.
pub(crate) fn membership_changes(
    state: &ClusterState,
    members: &BTreeMap<NodeId, String>,
) -> Vec<Command> {
    let added = members
        .iter()
        .filter(|(id, addr)| state.nodes.get(id).map(|n| &n.addr) != Some(*addr))
        .map(|(id, addr)| Command::AddNode {
            id: *id,
            addr: addr.clone(),
        });
    let removed = state
        .nodes
        .keys()
        .filter(|id| !members.contains_key(id))
        .map(|id| Command::RemoveNode { id: *id });
    added.chain(removed).collect()
}

/// Commands that carry out failure verdicts: `NodeDown` for each node in
/// `down`, `NodeUp` for each node in `up` that is not Up, then one
/// `Reassign` of every session that needs a new owner with the nodes as
/// they will be. Also says whether any node's status changes.
pub(crate) fn verdict_commands(
    state: &ClusterState,
    down: &[(NodeId, Detection)],
    up: &[NodeId],
) -> (Vec<Command>, bool) {
    let mut commands = Vec::new();
    let mut nodes = state.nodes.clone();
    for (id, _) in down {
        commands.push(Command::NodeDown { id: *id });
        if let Some(node) = nodes.get_mut(id) {
            node.status = NodeStatus::Down;
        }
    }
    for id in up {
        if let Some(node) = nodes.get_mut(id).filter(|n| n.status != NodeStatus::Up) {
            commands.push(Command::NodeUp { id: *id });
            node.status = NodeStatus::Up;
        }
    }
    let nodes_changed = !commands.is_empty();
    // One Relocate per reason: the sessions of each node found Down now
    // (with how), of nodes Down before or gone, and the unplaced ones.
    let mut by_reason: BTreeMap<(u8, Option<NodeId>), Relocation> = BTreeMap::new();
    for (owner, steps) in crate::placement::repair_with(state, &nodes) {
        let why = match owner {
            None => (0, None, MoveReason::Placed, None),
            Some(node) => match down.iter().find(|(id, _)| *id == node) {
                Some((_, how)) => (1, Some(node), MoveReason::NodeDown, Some(*how)),
                None if nodes.contains_key(&node) => (2, Some(node), MoveReason::NodeDown, None),
                None => (3, Some(node), MoveReason::NodeRemoved, None),
            },
        };
        by_reason
            .entry((why.0, why.1))
            .or_insert_with(|| (why.2, why.3, Vec::new()))
            .2
            .extend(steps);
    }
    for (reason, detected, moves) in by_reason.into_values() {
        commands.extend(relocations(moves, reason, detected));
    }
    (commands, nodes_changed)
}

/// Moves that share a reason (and how a dead owner was found).
type Relocation = (MoveReason, Option<Detection>, Vec<Move>);

/// Moves per `Relocate` command: a log entry must replicate within one
/// heartbeat (openraft's AppendEntries timeout), so a mass move is written
/// as many bounded commands, not one huge one.
pub(crate) const MOVES_PER_COMMAND: usize = 2000;

/// `moves` as `Relocate` commands of at most [`MOVES_PER_COMMAND`] each.
pub(crate) fn relocations(
    moves: Vec<Move>,
    reason: MoveReason,
    detected: Option<Detection>,
) -> Vec<Command> {
    moves
        .chunks(MOVES_PER_COMMAND)
        .map(|chunk| Command::Relocate {
            moves: chunk.to_vec(),
            reason,
            detected,
        })
        .collect()
}

/// `moves` of released sessions as `Handoff` commands of at most
/// [`MOVES_PER_COMMAND`] each, every move also conditional on the version
/// `state` shows now (read after the release: the owner's acknowledged
/// writes are in it). A session `state` no longer holds is left out.
pub(crate) fn handoffs(state: &ClusterState, moves: Vec<Move>, reason: MoveReason) -> Vec<Command> {
    let moves: Vec<HandoffMove> = moves
        .into_iter()
        .filter_map(|step| {
            let from_version = state.sessions.get(&step.id)?.version;
            Some(HandoffMove { step, from_version })
        })
        .collect();
    moves
        .chunks(MOVES_PER_COMMAND)
        .map(|chunk| Command::Handoff {
            moves: chunk.to_vec(),
            reason,
        })
        .collect()
}

/// The moves of a handoff that did not take effect and may be tried again:
/// their session is still at the epoch planned (its version changed, so
/// the move was skipped). A session gone, or moved by anything, is done.
pub(crate) fn unmoved(state: &ClusterState, moves: Vec<Move>) -> Vec<Move> {
    moves
        .into_iter()
        .filter(|m| {
            state
                .sessions
                .get(&m.id)
                .is_some_and(|s| s.epoch == m.from_epoch)
        })
        .collect()
}

/// The sessions node `me` must run now, each with its row (whose epoch
/// it runs under; the task starts from the row, with no second look-up):
/// those it owns, unless it may run nothing (`runnable` false: no valid
/// lease, or stopping), it is Down in the table, or the session is held
/// back for a handoff. Costs the sessions `me` owns, not the table.
pub(crate) fn wanted_sessions(
    state: &ClusterState,
    me: NodeId,
    runnable: bool,
    is_held: impl Fn(&SessionId) -> bool,
) -> foldhash::HashMap<SessionId, Arc<Session>> {
    if !may_run(state, me, runnable) {
        return foldhash::HashMap::default();
    }
    state
        .rows_of(Some(me))
        .filter(|s| !is_held(&s.id))
        .map(|s| (s.id.clone(), s.clone()))
        .collect()
}

/// [`wanted_sessions`] for the sessions `ids` only (those that changed):
/// for each, the row to run it from, or `None` when it must not run here.
/// Agrees with [`wanted_sessions`] on every id (property-tested).
pub(crate) fn wanted_among<'a>(
    state: &ClusterState,
    me: NodeId,
    runnable: bool,
    is_held: impl Fn(&SessionId) -> bool,
    ids: impl IntoIterator<Item = &'a SessionId>,
) -> foldhash::HashMap<SessionId, Option<Arc<Session>>> {
    let allowed = may_run(state, me, runnable);
    ids.into_iter()
        .map(|id| {
            let row = state
                .sessions
                .get(id)
                .filter(|s| allowed && s.owner == Some(me) && !is_held(id))
                .cloned();
            (id.clone(), row)
        })
        .collect()
}

fn may_run(state: &ClusterState, me: NodeId, runnable: bool) -> bool {
    runnable && state.nodes.get(&me).map(|n| n.status) != Some(NodeStatus::Down)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Proposal, SessionKind, StateJson};
    use chrono::Utc;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = Option<NodeStatus>> {
        prop_oneof![
            Just(None),
            Just(Some(NodeStatus::Up)),
            Just(Some(NodeStatus::Down)),
            Just(Some(NodeStatus::Draining)),
        ]
    }

    /// A table with nodes 1..=n (some Down) and sessions spread over them.
    fn table(n: u64, down: &[NodeId], sessions: usize) -> ClusterState {
        let mut state = ClusterState::default();
        let mut commands: Vec<Command> = (1..=n)
            .map(|id| Command::AddNode {
                id,
                addr: format!("127.0.0.1:{}", 7100 + id),
            })
            .collect();
        for i in 0..sessions {
            commands.push(Command::CreateSession {
                id: SessionId::new(format!("s{i}")).expect("id"),
                kind: SessionKind::new("kv").expect("kind"),
                state: StateJson::from_value(&serde_json::json!({})),
                owner: Some(1 + (i as u64) % n),
            });
        }
        commands.extend(down.iter().map(|id| Command::NodeDown { id: *id }));
        state.apply(&Proposal::V1 {
            at: Utc::now(),
            commands,
        });
        state
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn a_lease_is_granted_only_by_a_leader_in_office_with_a_fresh_quorum_to_a_member(
            is_leader in any::<bool>(), fresh_quorum in any::<bool>(), in_office in any::<bool>(),
            member in any::<bool>(), status in status(), fresh in any::<bool>(),
            restarted_since_stop in any::<bool>(),
        ) {
            let inputs = GrantInputs {
                is_leader, fresh_quorum, in_office, member, status, fresh, restarted_since_stop,
            };
            match decide_grant(&inputs) {
                Grant::Grant { wants_up } => {
                    prop_assert!(is_leader && fresh_quorum && in_office && member);
                    let expected = status == Some(NodeStatus::Down)
                        || (status == Some(NodeStatus::Draining) && (fresh || restarted_since_stop));
                    prop_assert_eq!(wants_up, expected);
                }
                Grant::Refuse(_) => prop_assert!(!(is_leader && fresh_quorum && in_office && member)),
            }
        }

        #[test]
        fn membership_changes_make_the_table_follow_the_membership(
            table_nodes in prop::collection::btree_set(1u64..10, 0..6),
            members in prop::collection::btree_map(1u64..10, 0u16..3, 1..6),
        ) {
            let mut state = table(0, &[], 0);
            let adds: Vec<Command> = table_nodes.iter().map(|id| Command::AddNode {
                id: *id, addr: format!("127.0.0.1:{}", 7100 + id),
            }).collect();
            state.apply(&Proposal::V1 { at: Utc::now(), commands: adds });
            let members: BTreeMap<NodeId, String> = members.into_iter()
                .map(|(id, port)| (id, format!("127.0.0.1:{}", 7100 + id + u64::from(port) * 100)))
                .collect();
            let commands = membership_changes(&state, &members);
            state.apply(&Proposal::V1 { at: Utc::now(), commands });
            let after: BTreeMap<NodeId, String> =
                state.nodes.values().map(|n| (n.id, n.addr.clone())).collect();
            prop_assert_eq!(&after, &members);
            prop_assert!(membership_changes(&state, &members).is_empty(), "a second pass changes nothing");
        }

        #[test]
        fn verdicts_move_exactly_the_sessions_of_down_nodes_to_up_nodes(
            n in 2u64..6, sessions in 0usize..40, down_mask in any::<u8>(),
        ) {
            let down: Vec<NodeId> = (1..=n).filter(|id| down_mask & (1 << id) != 0).collect();
            let mut state = table(n, &[], sessions);
            let before = state.clone();
            let verdicts: Vec<(NodeId, Detection)> =
                down.iter().map(|id| (*id, Detection::ProcessGone)).collect();
            let (commands, changed) = verdict_commands(&state, &verdicts, &[]);
            // Every move is recorded as caused by its owner's death.
            for command in &commands {
                if let Command::Relocate { reason, detected, .. } = command {
                    prop_assert_eq!(*reason, MoveReason::NodeDown);
                    prop_assert_eq!(*detected, Some(Detection::ProcessGone));
                }
            }
            prop_assert_eq!(changed, !down.is_empty());
            state.apply(&Proposal::V1 { at: Utc::now(), commands });
            let survivors: Vec<NodeId> = (1..=n).filter(|id| !down.contains(id)).collect();
            for (id, session) in &state.sessions {
                let old = before.sessions[id].owner;
                match old {
                    Some(owner) if !down.contains(&owner) => prop_assert_eq!(session.owner, old),
                    _ if survivors.is_empty() => prop_assert_eq!(session.owner, None),
                    _ => prop_assert!(session.owner.is_some_and(|o| survivors.contains(&o))),
                }
            }
        }

        #[test]
        fn a_node_runs_exactly_its_owned_unheld_sessions_while_runnable(
            n in 1u64..4, sessions in 0usize..30, runnable in any::<bool>(),
            me_down in any::<bool>(), held_every in 1usize..5,
        ) {
            let me = 1;
            let state = table(n, if me_down { &[1] } else { &[] }, sessions);
            let held: BTreeSet<SessionId> = state.sessions.keys().step_by(held_every).cloned().collect();
            let wanted = wanted_sessions(&state, me, runnable, |id| held.contains(id));
            for (id, session) in &state.sessions {
                let expected = runnable && !me_down && session.owner == Some(me) && !held.contains(id);
                prop_assert_eq!(wanted.get(id).map(|s| s.epoch) == Some(session.epoch), expected);
            }
            prop_assert!(wanted.len() <= state.sessions.len());
            // The incremental form agrees on every id, unknown ones included.
            let mut ids: Vec<SessionId> = state.sessions.keys().cloned().collect();
            ids.push(SessionId::new("gone").expect("id"));
            let among = wanted_among(&state, me, runnable, |id| held.contains(id), &ids);
            for id in &ids {
                let epoch = |row: Option<&Arc<Session>>| row.map(|s| (s.epoch, s.owner));
                prop_assert_eq!(epoch(among[id].as_ref()), epoch(wanted.get(id)), "{}", id);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_is_down_only_after_the_node_timeout_in_paused_time() {
        let timeout = Duration::from_millis(800);
        let start = Instant::now();
        let heard: HashMap<NodeId, Instant> = [(2, start), (3, start)].into();
        let dead = BTreeSet::new();
        tokio::time::advance(Duration::from_millis(799)).await;
        assert!(down_verdicts(Instant::now(), timeout, &heard, &dead, &[2, 3]).is_empty());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(
            down_verdicts(Instant::now(), timeout, &heard, &dead, &[2, 3]),
            vec![2, 3]
        );
        // Never heard: taken as heard now; a dead process is Down at once.
        let dead: BTreeSet<NodeId> = [3].into();
        assert_eq!(
            down_verdicts(Instant::now(), timeout, &HashMap::new(), &dead, &[2, 3]),
            vec![3]
        );
    }

    /// A handoff skipped because the owner's settle landed after the
    /// version was read stays to be tried again; a move that took effect,
    /// and a session deleted meanwhile, do not.
    #[test]
    fn only_moves_skipped_for_their_version_are_tried_again() {
        let mut state = table(3, &[], 3);
        let id = |n: usize| SessionId::new(format!("s{n}")).expect("id");
        let moves: Vec<Move> = (0..3)
            .map(|n| Move {
                id: id(n),
                from_epoch: state.sessions[&id(n)].epoch,
                to: Some(3),
            })
            .collect();
        let handoff = handoffs(&state, moves.clone(), MoveReason::Drain);
        let s0 = &state.sessions[&id(0)];
        let (epoch, version) = (s0.epoch, s0.version);
        state.apply(&Proposal::V1 {
            at: Utc::now(),
            commands: vec![
                Command::Settle {
                    id: id(0),
                    epoch,
                    version,
                },
                Command::DeleteSession { id: id(2) },
            ],
        });
        state.apply(&Proposal::V1 {
            at: Utc::now(),
            commands: handoff,
        });
        assert_eq!(state.sessions[&id(1)].owner, Some(3), "s1 moved");
        assert_eq!(state.sessions[&id(0)].owner, Some(1), "s0 skipped");
        let again = unmoved(&state, moves);
        assert_eq!(
            again.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
            vec![id(0)]
        );
        let retry = handoffs(&state, again, MoveReason::Drain);
        state.apply(&Proposal::V1 {
            at: Utc::now(),
            commands: retry,
        });
        assert_eq!(
            state.sessions[&id(0)].owner,
            Some(3),
            "s0 moved on the retry"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quorum_ack_is_fresh_for_exactly_the_window() {
        let window = Duration::from_millis(160);
        let acked = Instant::now();
        tokio::time::advance(window).await;
        assert!(quorum_is_fresh(Some(acked), Instant::now(), window));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!quorum_is_fresh(Some(acked), Instant::now(), window));
        assert!(!quorum_is_fresh(None, Instant::now(), window));
    }
}
