// Applies random logs of cluster commands (nodes 1..=4, sessions s0..s7, moves partly planned by `minos::placement` and partly stale or random) to `ClusterState` and checks after every command that owners are members, epochs only grow and grow with every change of owner, every new epoch (of a created session or a moved one) is above every epoch the table ever held, deleted sessions included, `last_epoch` covers every epoch and never decreases, re-adding a member keeps its status, sessions vanish only by DeleteSession, rejections change nothing, replay is deterministic, and repair leaves no session on a Down or missing node.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::collection::vec;
use proptest::prelude::*;

use minos::model::{
    Applied, CallKey, CallRetention, Command, CommandResult, Epoch, HandoffMove, Move, MoveReason,
    NodeId, NodeStatus, Proposal, RecordedCall, Rejection, SessionId, SessionKind, StateJson,
};
use minos::placement::{evacuate, place, rebalance, repair};
use minos::state::{Changes, ClusterState};

/// Node ids the generated commands use; node 5 is only ever a move target, and
/// never a member.
const MEMBER_IDS: std::ops::RangeInclusive<NodeId> = 1..=4;
const NEVER_MEMBER: NodeId = 5;
/// Session ids are `s0` to `s7`.
const SESSION_COUNT: u8 = 8;

fn session_id(n: u8) -> SessionId {
    SessionId::new(format!("s{n}")).expect("s0..s7 are valid ids")
}

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 6, 12, 12, 0, 0).unwrap()
}

/// How a generated CreateSession picks its first owner.
#[derive(Clone, Debug)]
enum OwnerChoice {
    /// A given node, member or not, whatever its status.
    Node(NodeId),
    /// What the leader would choose: `place` over the eligible nodes.
    Placed,
    /// No owner.
    Unowned,
}

/// The epoch a generated UpdateState carries, relative to the session's.
#[derive(Clone, Debug)]
enum EpochChoice {
    Current,
    Behind,
    Ahead,
    /// `n` below the table's `last_epoch`: often an epoch another session, or
    /// an earlier incarnation of this one, holds or held.
    Recent(u64),
}

/// Where a generated Reassign's planned moves come from.
#[derive(Clone, Debug)]
enum Plan {
    Repair,
    Evacuate(NodeId),
    Rebalance,
    /// The repair and rebalance moves planned before the `n`-th latest
    /// proposal: stale by the time they are applied.
    Replay(usize),
    Nothing,
}

/// A move made up by the test: any session, any epoch, any target.
#[derive(Clone, Debug)]
struct RandomMove {
    session: u8,
    /// `None`: the session's current epoch; `Some(n)`: `n` below the table's
    /// `last_epoch`.
    from_epoch: Option<u64>,
    to: Option<NodeId>,
}

/// One generated command, made concrete against the state it is proposed on.
#[derive(Clone, Debug)]
enum Op {
    AddNode {
        id: NodeId,
        port: u16,
    },
    RemoveNode(NodeId),
    NodeDown(NodeId),
    NodeUp(NodeId),
    Drain(NodeId),
    Create {
        session: u8,
        owner: OwnerChoice,
        value: u8,
    },
    Update {
        session: u8,
        epoch: EpochChoice,
        value: u8,
    },
    /// A keyed write: `key` from a small set, so retries of one key recur.
    Keyed {
        session: u8,
        epoch: EpochChoice,
        key: u8,
        stale: bool,
    },
    /// `stale`: built on the version before the current one.
    Settle {
        session: u8,
        epoch: EpochChoice,
        stale: bool,
    },
    /// `handoff`: written as a `Handoff` (each move also names a version:
    /// the current one, or with `Some(true)` the one before it).
    Reassign {
        plan: Plan,
        random: Vec<RandomMove>,
        handoff: Option<bool>,
    },
    Delete(u8),
}

fn member() -> impl Strategy<Value = NodeId> {
    MEMBER_IDS
}

fn session() -> impl Strategy<Value = u8> {
    0..SESSION_COUNT
}

fn op() -> impl Strategy<Value = Op> {
    let owner = prop_oneof![
        2 => member().prop_map(OwnerChoice::Node),
        3 => Just(OwnerChoice::Placed),
        1 => Just(OwnerChoice::Unowned),
    ];
    let epoch = prop_oneof![
        4 => Just(EpochChoice::Current),
        1 => Just(EpochChoice::Behind),
        1 => Just(EpochChoice::Ahead),
        1 => (0u64..6).prop_map(EpochChoice::Recent),
    ];
    let plan = prop_oneof![
        3 => Just(Plan::Repair),
        2 => member().prop_map(Plan::Evacuate),
        2 => Just(Plan::Rebalance),
        2 => (0usize..8).prop_map(Plan::Replay),
        1 => Just(Plan::Nothing),
    ];
    let random_move = (
        session(),
        prop::option::of(0u64..6),
        prop::option::of(prop_oneof![member(), Just(NEVER_MEMBER)]),
    )
        .prop_map(|(session, from_epoch, to)| RandomMove {
            session,
            from_epoch,
            to,
        });
    prop_oneof![
        4 => (member(), 0u16..2).prop_map(|(id, port)| Op::AddNode { id, port }),
        1 => member().prop_map(Op::RemoveNode),
        2 => member().prop_map(Op::NodeDown),
        2 => member().prop_map(Op::NodeUp),
        1 => member().prop_map(Op::Drain),
        4 => (session(), owner, any::<u8>())
            .prop_map(|(session, owner, value)| Op::Create { session, owner, value }),
        4 => (session(), epoch.clone(), any::<u8>())
            .prop_map(|(session, epoch, value)| Op::Update { session, epoch, value }),
        2 => (session(), epoch.clone(), any::<bool>())
            .prop_map(|(session, epoch, stale)| Op::Settle { session, epoch, stale }),
        3 => (session(), epoch, 0u8..4, any::<bool>())
            .prop_map(|(session, epoch, key, stale)| Op::Keyed { session, epoch, key, stale }),
        3 => (plan, vec(random_move, 0..3), prop::option::of(any::<bool>()))
            .prop_map(|(plan, random, handoff)| Op::Reassign { plan, random, handoff }),
        1 => session().prop_map(Op::Delete),
    ]
}

/// A log: proposals of one to three commands each.
fn log() -> impl Strategy<Value = Vec<Vec<Op>>> {
    vec(vec(op(), 1..=3), 1..60)
}

/// Turns a generated op into a command the way a proposer would, looking at
/// `state` (the state before the proposal) and at plans made earlier.
fn to_command(op: &Op, state: &ClusterState, earlier_plans: &[Vec<Move>]) -> Command {
    let current_epoch = |n: u8| {
        state
            .sessions
            .get(&session_id(n))
            .map_or(Epoch(1), |session| session.epoch)
    };
    let epoch_of = |session: u8, choice: &EpochChoice| {
        let current = current_epoch(session);
        match choice {
            EpochChoice::Current => current,
            EpochChoice::Behind => Epoch(current.0.saturating_sub(1)),
            EpochChoice::Ahead => current.next(),
            EpochChoice::Recent(back) => Epoch(state.last_epoch.0.saturating_sub(*back)),
        }
    };
    let version_of = |session: u8| {
        state
            .sessions
            .get(&session_id(session))
            .map_or(0, |s| s.version)
    };
    // The current version, or (a late writer) the one before it.
    let built_on = |session: u8, stale: bool| {
        let version = version_of(session);
        if stale {
            version.saturating_sub(1)
        } else {
            version
        }
    };
    match op {
        Op::AddNode { id, port } => Command::AddNode {
            id: *id,
            addr: format!(
                "127.0.0.1:{}",
                7000 + u16::try_from(*id).unwrap() * 10 + port
            ),
        },
        Op::RemoveNode(id) => Command::RemoveNode { id: *id },
        Op::NodeDown(id) => Command::NodeDown { id: *id },
        Op::NodeUp(id) => Command::NodeUp { id: *id },
        Op::Drain(id) => Command::Drain { id: *id },
        Op::Create {
            session,
            owner,
            value,
        } => {
            let id = session_id(*session);
            let owner = match owner {
                OwnerChoice::Node(node) => Some(*node),
                OwnerChoice::Placed => place(&id, &state.eligible_nodes()),
                OwnerChoice::Unowned => None,
            };
            Command::CreateSession {
                id,
                kind: SessionKind::new("kv").unwrap(),
                state: StateJson(format!("{{\"created\":{value}}}").into()),
                owner,
            }
        }
        Op::Update {
            session,
            epoch,
            value,
        } => {
            let epoch = epoch_of(*session, epoch);
            // Mostly the current version; one in four builds on the one before
            // (a late write from an earlier task), which must be refused.
            let version = version_of(*session);
            let version = if value % 4 == 0 {
                version.saturating_sub(1)
            } else {
                version
            };
            Command::UpdateState {
                id: session_id(*session),
                epoch,
                version,
                state: StateJson(format!("{{\"updated\":{value}}}").into()),
            }
        }
        Op::Keyed {
            session,
            epoch,
            key,
            stale,
        } => Command::UpdateStateKeyed {
            id: session_id(*session),
            epoch: epoch_of(*session, epoch),
            version: built_on(*session, *stale),
            state: StateJson(format!("{{\"keyed\":{key}}}").into()),
            call: RecordedCall {
                key: CallKey::new(format!("k{key}")).unwrap(),
                reply: format!("{{\"key\":{key}}}"),
                at: start_time(),
            },
            retention: CallRetention {
                keep_last: 3,
                ..CallRetention::default()
            },
        },
        Op::Settle {
            session,
            epoch,
            stale,
        } => Command::Settle {
            id: session_id(*session),
            epoch: epoch_of(*session, epoch),
            version: built_on(*session, *stale),
        },
        Op::Reassign {
            plan,
            random,
            handoff,
        } => {
            let mut moves = match plan {
                Plan::Repair => repair(state),
                Plan::Evacuate(node) => evacuate(state, *node),
                Plan::Rebalance => rebalance(state),
                Plan::Replay(back) => earlier_plans
                    .iter()
                    .rev()
                    .nth(back % earlier_plans.len().max(1))
                    .cloned()
                    .unwrap_or_default(),
                Plan::Nothing => Vec::new(),
            };
            moves.extend(random.iter().map(|step| Move {
                id: session_id(step.session),
                from_epoch: match step.from_epoch {
                    None => current_epoch(step.session),
                    Some(back) => Epoch(state.last_epoch.0.saturating_sub(back)),
                },
                to: step.to,
            }));
            match handoff {
                None => Command::Reassign { moves },
                Some(stale) => Command::Handoff {
                    moves: moves
                        .into_iter()
                        .map(|m| {
                            let version = state.sessions.get(&m.id).map_or(0, |s| s.version);
                            HandoffMove {
                                from_version: if *stale {
                                    version.saturating_sub(1)
                                } else {
                                    version
                                },
                                step: m,
                            }
                        })
                        .collect(),
                    reason: MoveReason::Rebalance,
                },
            }
        }
        Op::Delete(session) => Command::DeleteSession {
            id: session_id(*session),
        },
    }
}

/// Invariants of one table on its own.
fn check_table(state: &ClusterState) -> Result<(), TestCaseError> {
    for (id, node) in &state.nodes {
        prop_assert_eq!(*id, node.id, "node keyed under another id");
    }
    // (7) Placement history: a session's last recorded change is its
    // current owner and epoch, the first one kept is... any, all are in
    // sequence order, at most the bound, and the table's events are in
    // sequence order and end at its counter.
    for (id, session) in &state.sessions {
        let last = session.history.last();
        prop_assert!(last.is_some(), "{id} has no history");
        let last = last.unwrap();
        prop_assert_eq!(
            (last.to, last.epoch),
            (session.owner, session.epoch),
            "{}: history ends elsewhere",
            id
        );
        prop_assert!(session.history.len() <= minos::model::HISTORY_KEEP as usize);
        prop_assert!(
            session.history.windows(2).all(|w| w[0].seq < w[1].seq),
            "{}: history out of order",
            id
        );
        prop_assert!(session.history.iter().all(|p| p.seq <= state.last_event));
    }
    prop_assert!(state
        .events
        .iter()
        .zip(state.events.iter().skip(1))
        .all(|(a, b)| a.placement.seq < b.placement.seq));
    prop_assert!(state.events.len() <= minos::state::EVENTS_KEPT);
    for (id, session) in &state.sessions {
        prop_assert_eq!(id, &session.id, "session keyed under another id");
        prop_assert!(
            session.epoch >= Epoch(1),
            "{id} has epoch {}",
            session.epoch
        );
        // The table-wide counter covers every epoch handed out.
        prop_assert!(
            session.epoch <= state.last_epoch,
            "{id} has epoch {}, above last_epoch {}",
            session.epoch,
            state.last_epoch
        );
        // (1) An owner is a member (Down and Draining members included).
        if let Some(owner) = session.owner {
            prop_assert!(
                state.nodes.contains_key(&owner),
                "{id} is owned by {owner}, which is not a member: {state:?}"
            );
        }
    }
    // Every epoch is handed out once: no two sessions share one.
    let mut epochs = BTreeSet::new();
    for session in state.sessions.values() {
        prop_assert!(
            epochs.insert(session.epoch),
            "epoch {} held by two sessions: {state:?}",
            session.epoch
        );
    }
    Ok(())
}

/// Invariants of one command: `before` and `after` are the states around it,
/// applied at `at`; `max_seen` is the highest epoch any session (deleted ones
/// included) held in any table before this command.
fn check_command(
    before: &ClusterState,
    after: &ClusterState,
    command: &Command,
    result: &CommandResult,
    at: DateTime<Utc>,
    max_seen: Epoch,
) -> Result<(), TestCaseError> {
    check_table(after)?;

    // The epoch counter never goes back, and never lags what was handed out.
    prop_assert!(
        after.last_epoch >= before.last_epoch,
        "{:?}: last_epoch went {} -> {}",
        command,
        before.last_epoch,
        after.last_epoch
    );
    prop_assert!(
        before.last_epoch >= max_seen,
        "last_epoch {} below an epoch seen earlier ({})",
        before.last_epoch,
        max_seen
    );

    // (4) A rejected command changes nothing.
    if result.is_err() {
        prop_assert_eq!(
            before,
            after,
            "{:?} was rejected but changed the table",
            command
        );
        return Ok(());
    }

    // (3) A session disappears only through a successful DeleteSession, and
    // appears only through a successful CreateSession.
    let ids_before: BTreeSet<&SessionId> = before.sessions.keys().collect();
    let ids_after: BTreeSet<&SessionId> = after.sessions.keys().collect();
    let removed: Vec<_> = ids_before.difference(&ids_after).collect();
    let added: Vec<_> = ids_after.difference(&ids_before).collect();
    match command {
        Command::DeleteSession { id } => {
            prop_assert_eq!(removed, vec![&id], "DeleteSession removed other sessions");
        }
        _ => prop_assert!(removed.is_empty(), "{:?} removed {:?}", command, removed),
    }
    match command {
        Command::CreateSession {
            id, state, owner, ..
        } => {
            prop_assert_eq!(added, vec![&id]);
            let created = &after.sessions[id];
            // A new session (a re-created one too) gets an epoch above every
            // epoch the table ever held, so no write of an earlier life can
            // match it.
            prop_assert!(
                created.epoch > max_seen,
                "{}: created at epoch {}, not above {} seen before",
                id,
                created.epoch,
                max_seen
            );
            prop_assert_eq!(created.epoch, before.last_epoch.next());
            prop_assert_eq!(after.last_epoch, created.epoch);
            prop_assert_eq!(&created.state, state);
            // The requested owner is kept when it is a member, dropped otherwise.
            let expected_owner = owner.filter(|node| before.nodes.contains_key(node));
            prop_assert_eq!(created.owner, expected_owner);
        }
        _ => prop_assert!(added.is_empty(), "{:?} added {:?}", command, added),
    }

    // AddNode of a member only updates its address: status (a drain, a Down)
    // and `since` stay. A new member starts Up.
    match command {
        Command::AddNode { id, addr } => {
            let node = &after.nodes[id];
            prop_assert_eq!(&node.addr, addr);
            match before.nodes.get(id) {
                Some(old) => {
                    prop_assert_eq!(node.status, old.status, "AddNode changed {}'s status", id);
                    prop_assert_eq!(node.since, old.since, "AddNode changed {}'s since", id);
                }
                None => {
                    prop_assert_eq!(node.status, NodeStatus::Up);
                    prop_assert_eq!(node.since, at);
                }
            }
            for (other, node) in &after.nodes {
                if other != id {
                    prop_assert_eq!(Some(node), before.nodes.get(other));
                }
            }
        }
        Command::RemoveNode { .. }
        | Command::NodeDown { .. }
        | Command::NodeUp { .. }
        | Command::Drain { .. } => {}
        _ => prop_assert_eq!(
            &before.nodes,
            &after.nodes,
            "{:?} changed the members",
            command
        ),
    }

    // (2) Epochs never decrease and grow on every change of owner; every new
    // epoch comes from the table-wide counter, above all epochs seen before.
    let moved: BTreeMap<&SessionId, Vec<(Option<NodeId>, Epoch)>> = match result {
        Ok(Applied::Moved(moved)) => {
            let mut by_session: BTreeMap<&SessionId, Vec<_>> = BTreeMap::new();
            for (id, owner, epoch) in moved {
                by_session.entry(id).or_default().push((*owner, *epoch));
            }
            by_session
        }
        _ => BTreeMap::new(),
    };
    for (id, old) in &before.sessions {
        let Some(new) = after.sessions.get(id) else {
            continue;
        };
        prop_assert!(
            new.epoch >= old.epoch,
            "{id}: epoch went {} -> {}",
            old.epoch,
            new.epoch
        );
        if new.owner != old.owner {
            prop_assert!(
                new.epoch > old.epoch,
                "{id}: owner {:?} -> {:?} without a new epoch ({})",
                old.owner,
                new.owner,
                new.epoch
            );
        }
        if new.epoch != old.epoch {
            prop_assert!(
                new.epoch > max_seen && new.epoch > before.last_epoch,
                "{}: new epoch {} not above {} seen before (last_epoch {})",
                id,
                new.epoch,
                max_seen,
                before.last_epoch
            );
        }
        match command {
            Command::Reassign { .. } | Command::Handoff { .. } => {
                let steps = moved.get(id).map_or(&[][..], Vec::as_slice);
                match steps.last() {
                    Some(last) => {
                        prop_assert_eq!(*last, (new.owner, new.epoch), "{}: last move", id)
                    }
                    None => {
                        prop_assert_eq!(new.epoch, old.epoch, "{}: epoch changed unmoved", id);
                        prop_assert_eq!(new.owner, old.owner, "{}: owner changed unmoved", id);
                    }
                }
            }
            Command::RemoveNode { id: node } => {
                let lost_owner = old.owner == Some(*node);
                if lost_owner {
                    prop_assert!(
                        new.epoch > old.epoch,
                        "{}: un-owned without a new epoch",
                        id
                    );
                } else {
                    prop_assert_eq!(new.epoch, old.epoch, "{}: RemoveNode changed the epoch", id);
                }
                prop_assert_eq!(new.owner, if lost_owner { None } else { old.owner });
            }
            _ => {
                prop_assert_eq!(
                    new.epoch,
                    old.epoch,
                    "{}: {:?} changed the epoch",
                    id,
                    command
                );
                prop_assert_eq!(
                    new.owner,
                    old.owner,
                    "{}: {:?} changed the owner",
                    id,
                    command
                );
            }
        }
        // Only the owner's committed writes change a session's state.
        if !matches!(command, Command::UpdateState { id: updated, .. }
            | Command::UpdateStateKeyed { id: updated, .. } if updated == id)
        {
            prop_assert_eq!(
                &new.state,
                &old.state,
                "{}: {:?} changed the state",
                id,
                command
            );
        }
    }
    // Each effective move and each un-owning takes the next epoch of the
    // counter, in order; nothing else but CreateSession advances it.
    match (command, result) {
        (Command::Reassign { .. } | Command::Handoff { .. }, Ok(Applied::Moved(steps))) => {
            let expected: Vec<Epoch> = (1..=steps.len() as u64)
                .map(|n| Epoch(before.last_epoch.0 + n))
                .collect();
            let got: Vec<Epoch> = steps.iter().map(|(_, _, epoch)| *epoch).collect();
            prop_assert_eq!(got, expected, "move epochs");
            prop_assert_eq!(after.last_epoch.0, before.last_epoch.0 + steps.len() as u64);
        }
        (Command::RemoveNode { id: node }, _) => {
            let lost = before
                .sessions
                .values()
                .filter(|s| s.owner == Some(*node))
                .count() as u64;
            prop_assert_eq!(after.last_epoch.0, before.last_epoch.0 + lost);
        }
        (Command::CreateSession { .. }, _) => {}
        _ => prop_assert_eq!(
            after.last_epoch,
            before.last_epoch,
            "{:?} advanced last_epoch",
            command
        ),
    }

    if let Command::Handoff { moves, .. } = command {
        // A handoff moves a session only at the version it names: one
        // written (or settled) after the release stays where it is.
        for id in moved.keys() {
            let named: Vec<u64> = moves
                .iter()
                .filter(|m| &m.step.id == *id)
                .map(|m| m.from_version)
                .collect();
            prop_assert!(
                named.contains(&before.sessions[*id].version),
                "{}: moved at version {} by a handoff naming {:?}",
                id,
                before.sessions[*id].version,
                named
            );
        }
    }
    if let Command::UpdateStateKeyed { id, call, .. } = command {
        // A keyed write applies only if the session did not remember its
        // key, and is remembered after; a duplicate changes nothing.
        let remembered = before
            .sessions
            .get(id)
            .is_some_and(|s| s.recorded_call(&call.key).is_some());
        match result {
            Ok(_) => {
                prop_assert!(!remembered, "{id}: key {} applied twice", call.key);
                prop_assert!(after.sessions[id].recorded_call(&call.key).is_some());
                prop_assert!(after.sessions[id].calls.len() <= 3);
            }
            Err(Rejection::DuplicateCall { .. }) => prop_assert!(remembered),
            Err(_) => {}
        }
    }
    if let Command::UpdateState {
        id, epoch, version, ..
    }
    | Command::UpdateStateKeyed {
        id, epoch, version, ..
    }
    | Command::Settle { id, epoch, version } = command
    {
        // An accepted write or settle carried the current epoch and version
        // of an owned session, and raised the version by one.
        let old = &before.sessions[id];
        prop_assert_eq!(*epoch, old.epoch);
        prop_assert_eq!(*version, old.version);
        prop_assert_eq!(after.sessions[id].version, old.version + 1);
        prop_assert!(old.owner.is_some(), "{id}: write accepted while unowned");
    }
    Ok(())
}

/// Moves the planners make for `state` must be fresh and must change owners;
/// applied at once, they must all take effect and reach their goal.
fn check_planners(state: &ClusterState, at: DateTime<Utc>) -> Result<(), TestCaseError> {
    let eligible = state.eligible_nodes();
    let mut plans = vec![("repair", repair(state)), ("rebalance", rebalance(state))];
    plans.extend(MEMBER_IDS.map(|node| ("evacuate", evacuate(state, node))));
    for (name, moves) in &plans {
        for step in moves {
            let session = &state.sessions[&step.id];
            prop_assert_eq!(
                step.from_epoch,
                session.epoch,
                "{} planned a stale move",
                name
            );
            prop_assert_ne!(
                step.to,
                session.owner,
                "{} planned a move to the same owner",
                name
            );
            if let Some(to) = step.to {
                prop_assert!(
                    eligible.contains(&to),
                    "{name} moves {} to ineligible {to}",
                    step.id
                );
            }
        }
    }

    // (6) After repair no session is on a Down or missing node; when a node is
    // eligible, no session is left unplaced either.
    let mut repaired = state.clone();
    let moves = repair(state);
    let results = repaired.apply(&Proposal::V1 {
        at,
        commands: vec![Command::Reassign {
            moves: moves.clone(),
        }],
    });
    match &results[..] {
        [Ok(Applied::Moved(moved))] => prop_assert_eq!(moved.len(), moves.len()),
        other => prop_assert!(false, "repair was not applied whole: {other:?}"),
    }
    check_table(&repaired)?;
    for session in repaired.sessions.values() {
        match session.owner {
            None => prop_assert!(
                eligible.is_empty(),
                "{} unplaced after repair although {eligible:?} are eligible",
                session.id
            ),
            Some(owner) => {
                let status = repaired.nodes[&owner].status;
                prop_assert_ne!(
                    status,
                    NodeStatus::Down,
                    "{} still on Down {}",
                    session.id,
                    owner
                );
            }
        }
    }
    prop_assert!(repair(&repaired).is_empty(), "repair is not idempotent");

    // A fresh rebalance puts every session on its rendezvous choice.
    if !eligible.is_empty() {
        let mut balanced = state.clone();
        balanced.apply(&Proposal::V1 {
            at,
            commands: vec![Command::Reassign {
                moves: rebalance(state),
            }],
        });
        for session in balanced.sessions.values() {
            prop_assert_eq!(session.owner, place(&session.id, &eligible));
        }
    }
    Ok(())
}

/// (6) What `apply_tracked` reports covers every change: each session
/// created, deleted or changed is named with its owner after the entry, and
/// a change to any node is flagged.
/// (Readers that follow the table incrementally depend on it.)
fn check_changes(
    before: &ClusterState,
    after: &ClusterState,
    changes: &Changes,
) -> Result<(), TestCaseError> {
    let ids: BTreeSet<&SessionId> = before
        .sessions
        .keys()
        .chain(after.sessions.keys())
        .collect();
    for id in ids {
        if before.sessions.get(id) != after.sessions.get(id) {
            prop_assert!(changes.sessions.contains_key(id), "{id} changed unreported");
        }
    }
    // The owner reported with each change is the owner after the entry
    // (the runtime skips, without a look-up, what is not its own).
    for (id, owner) in &changes.sessions {
        let now = after.sessions.get(id).and_then(|s| s.owner);
        prop_assert_eq!(*owner, now, "{} reported under the wrong owner", id);
    }
    if before.nodes != after.nodes {
        prop_assert!(changes.nodes, "a node changed unreported");
    }
    for owner in after.owners() {
        // The index itself (pages of an owner's sessions read only it)...
        let indexed: Vec<&SessionId> = after
            .sessions_of_after(owner, None)
            .map(|s| &s.id)
            .collect();
        let scanned: Vec<&SessionId> = after
            .sessions
            .values()
            .filter(|s| s.owner == owner)
            .map(|s| &s.id)
            .collect();
        prop_assert_eq!(&indexed, &scanned, "owner index of {:?} is off", owner);
        // ...and the rows of an owner, read through the index or, for an
        // owner of a large share, by walking the table.
        let listed: Vec<&SessionId> = after.sessions_of(owner).map(|s| &s.id).collect();
        prop_assert_eq!(listed, scanned, "rows of {:?} are off", owner);
    }
    let counted: usize = after.owners().map(|owner| after.count_of(owner)).sum();
    prop_assert_eq!(counted, after.sessions.len(), "owner index misses sessions");
    // The per-node kind counts (spread) and the unplaced groups agree with a
    // scan of the rows too.
    for session in after.sessions.values() {
        if let Some(node) = session.owner {
            let scanned = after
                .sessions
                .values()
                .filter(|s| s.owner == Some(node) && s.kind == session.kind)
                .count();
            prop_assert_eq!(after.count_of_kind(node, &session.kind), scanned);
        }
    }
    let grouped: usize = after.unplaced_groups().map(|(_, ids)| ids.len()).sum();
    prop_assert_eq!(grouped, after.count_of(None), "unplaced groups off");
    for (need, ids) in after.unplaced_groups() {
        for id in ids {
            let row = after.sessions.get(id);
            prop_assert!(row.is_some_and(|s| s.owner.is_none() && *s.placement == *need));
        }
    }
    Ok(())
}

fn replay(log: &[Proposal]) -> (ClusterState, Vec<Vec<CommandResult>>) {
    let mut state = ClusterState::default();
    let results = log.iter().map(|proposal| state.apply(proposal)).collect();
    (state, results)
}

fn run_log(ops: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let mut state = ClusterState::default();
    let mut log: Vec<Proposal> = Vec::new();
    let mut all_results: Vec<Vec<CommandResult>> = Vec::new();
    let mut earlier_plans: Vec<Vec<Move>> = Vec::new();
    // The highest epoch any session ever held, deleted sessions included.
    let mut max_seen = Epoch(0);

    for (index, batch) in ops.iter().enumerate() {
        let at = start_time() + Duration::seconds(index as i64);
        let commands: Vec<Command> = batch
            .iter()
            .map(|op| to_command(op, &state, &earlier_plans))
            .collect();
        let mut plan = repair(&state);
        plan.extend(rebalance(&state));
        earlier_plans.push(plan);

        // Command by command, checking each step.
        let mut stepped = state.clone();
        let mut stepped_results = Vec::with_capacity(commands.len());
        for command in &commands {
            let before = stepped.clone();
            let mut changes = Changes::default();
            let mut results = stepped.apply_tracked(
                &Proposal::V1 {
                    at,
                    commands: vec![command.clone()],
                },
                &mut changes,
            );
            prop_assert_eq!(results.len(), 1);
            let result = results.remove(0);
            check_command(&before, &stepped, command, &result, at, max_seen)?;
            check_changes(&before, &stepped, &changes)?;
            if let Some(top) = stepped.sessions.values().map(|s| s.epoch).max() {
                max_seen = max_seen.max(top);
            }
            stepped_results.push(result);
        }

        // The whole batch as one entry must give the same state and outcomes.
        let proposal = Proposal::V1 { at, commands };
        let results = state.apply(&proposal);
        prop_assert_eq!(
            &results,
            &stepped_results,
            "batched and stepped outcomes differ"
        );
        prop_assert_eq!(&state, &stepped, "batched and stepped states differ");

        check_planners(&state, at)?;
        log.push(proposal);
        all_results.push(results);
    }

    // (5) Replaying the log from scratch, twice, gives the same table, outcomes
    // and snapshot bytes; the snapshot reads back to the same table.
    let (first, first_results) = replay(&log);
    let (second, second_results) = replay(&log);
    prop_assert_eq!(&first, &state);
    prop_assert_eq!(&second, &state);
    prop_assert_eq!(&first_results, &all_results);
    prop_assert_eq!(&second_results, &all_results);
    let snapshot = serde_json::to_vec(&first).unwrap();
    prop_assert_eq!(&snapshot, &serde_json::to_vec(&second).unwrap());
    let restored: ClusterState = serde_json::from_slice(&snapshot).unwrap();
    prop_assert_eq!(&restored, &state);
    // As the state machine's snapshot does (bincode): the same table, each
    // row keyed by its own id.
    let restored: ClusterState =
        bincode::deserialize(&bincode::serialize(&first).unwrap()).unwrap();
    prop_assert_eq!(&restored, &state);
    for (key, row) in restored.sessions.iter() {
        prop_assert_eq!(key, &row.id);
    }
    let log_text = serde_json::to_string(&log).unwrap();
    let log_back: Vec<Proposal> = serde_json::from_str(&log_text).unwrap();
    prop_assert_eq!(&log_back, &log, "the log does not survive serialization");
    Ok(())
}

proptest! {
    #[test]
    fn random_logs_keep_the_table_invariants(ops in log()) {
        run_log(&ops)?;
    }
}

#[test]
fn a_move_to_the_current_owner_still_bumps_the_epoch() {
    // Pins down a corner the properties allow: a no-op move (which the
    // planners never make) fences the owner's writes without moving anything.
    let at = start_time();
    let mut state = ClusterState::default();
    let id = session_id(0);
    state.apply(&Proposal::V1 {
        at,
        commands: vec![
            Command::AddNode {
                id: 1,
                addr: "127.0.0.1:7010".into(),
            },
            Command::CreateSession {
                id: id.clone(),
                kind: SessionKind::new("kv").unwrap(),
                state: StateJson("{}".into()),
                owner: Some(1),
            },
            Command::Reassign {
                moves: vec![Move {
                    id: id.clone(),
                    from_epoch: Epoch(1),
                    to: Some(1),
                }],
            },
        ],
    });
    let session = &state.sessions[&id];
    assert_eq!((session.owner, session.epoch), (Some(1), Epoch(2)));
}

#[test]
fn a_write_from_a_deleted_incarnation_is_fenced_from_the_new_one() {
    // A session is deleted and created again under the same id; an UpdateState
    // the old owner proposed before the delete, committed after the re-create,
    // must be rejected: the new incarnation gets a fresh epoch from the
    // table-wide counter, never the old one's.
    let at = start_time();
    let mut state = ClusterState::default();
    let id = session_id(0);
    let create = Command::CreateSession {
        id: id.clone(),
        kind: SessionKind::new("kv").unwrap(),
        state: StateJson("{\"incarnation\":1}".into()),
        owner: Some(1),
    };
    let mut recreate = create.clone();
    if let Command::CreateSession { state, .. } = &mut recreate {
        *state = StateJson("{\"incarnation\":2}".into());
    }
    let results = state.apply(&Proposal::V1 {
        at,
        commands: vec![
            Command::AddNode {
                id: 1,
                addr: "127.0.0.1:7010".into(),
            },
            create,
            Command::DeleteSession { id: id.clone() },
            recreate,
            // In flight from the first incarnation's task.
            Command::UpdateState {
                id: id.clone(),
                epoch: Epoch(1),
                version: 0,
                state: StateJson("{\"incarnation\":1,\"late\":true}".into()),
            },
        ],
    });
    assert!(
        results[4].is_err(),
        "a write for the deleted incarnation overwrote the new one: {:?}",
        state.sessions[&id].state
    );
    let session = &state.sessions[&id];
    assert!(
        session.epoch > Epoch(1),
        "re-created at epoch {}",
        session.epoch
    );
    assert_eq!(session.state, StateJson("{\"incarnation\":2}".into()));
}

/// A table with node 1 and session `s0` on it, created with `state`; the
/// session id and the time used.
fn one_session_on_node_1(state: &str) -> (ClusterState, SessionId, DateTime<Utc>) {
    let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let id = session_id(0);
    let mut table = ClusterState::default();
    for command in [
        Command::AddNode {
            id: 1,
            addr: "127.0.0.1:7001".into(),
        },
        Command::CreateSession {
            id: id.clone(),
            kind: SessionKind::new("kv").unwrap(),
            state: StateJson(state.into()),
            owner: Some(1),
        },
    ] {
        table.apply_command(&command, at).unwrap();
    }
    (table, id, at)
}

/// A snapshot whose sessions map keys a row under another id is refused,
/// not read into a table whose index and look-ups would disagree.
#[test]
fn a_snapshot_keying_a_row_under_another_id_is_refused() {
    let (table, id, _) = one_session_on_node_1("{}");
    let mut value = serde_json::to_value(&table).unwrap();
    let sessions = value["sessions"].as_object_mut().unwrap();
    let row = sessions.remove(id.as_str()).unwrap();
    sessions.insert("someone-else".into(), row);
    let error = serde_json::from_value::<ClusterState>(value).unwrap_err();
    assert!(
        error.to_string().contains("holds the row of"),
        "unexpected error: {error}"
    );
    let readable = serde_json::to_value(&table).unwrap();
    assert_eq!(
        serde_json::from_value::<ClusterState>(readable).unwrap(),
        table
    );
}

/// A write built on an older version is refused even under the current
/// epoch: a late write from an earlier task of the same owner (its commit
/// outcome was unknown, the task was replaced) cannot overwrite what the
/// task after it committed.
#[test]
fn a_late_write_under_the_same_epoch_is_refused() {
    let (mut state, id, at) = one_session_on_node_1("{}");
    let epoch = state.sessions[&id].epoch;
    let write = |version: u64, text: &str| Command::UpdateState {
        id: id.clone(),
        epoch,
        version,
        state: StateJson(text.into()),
    };
    // The successor commits on version 0 ...
    state
        .apply_command(&write(0, "{\"by\":\"successor\"}"), at)
        .unwrap();
    // ... then the predecessor's write, also built on version 0, lands.
    let late = state.apply_command(&write(0, "{\"by\":\"predecessor\"}"), at);
    assert_eq!(
        late,
        Err(minos::model::Rejection::StaleVersion {
            id: id.clone(),
            given: 0,
            current: 1
        })
    );
    assert_eq!(
        state.sessions[&id].state,
        StateJson("{\"by\":\"successor\"}".into())
    );
    assert_eq!(state.sessions[&id].version, 1);
}

#[test]
fn a_settle_fences_a_write_whose_outcome_was_unknown() {
    // An owner's write built on version 0 is in flight when its task gives
    // up on it; the task settles on version 0 before answering anything.
    // Whichever lands first decides: the other is refused, and the state
    // the settle returns is the one the table keeps.
    let (start, id, at) = one_session_on_node_1("{\"n\":0}");
    let epoch = start.sessions[&id].epoch;
    let write = Command::UpdateState {
        id: id.clone(),
        epoch,
        version: 0,
        state: StateJson("{\"n\":1}".into()),
    };
    let settle = |version| Command::Settle {
        id: id.clone(),
        epoch,
        version,
    };

    // The settle lands first: the late write is refused, the state stays.
    let mut state = start.clone();
    let settled = state.apply_command(&settle(0), at).unwrap();
    let Applied::Session(settled) = settled else {
        panic!("settle returned {settled:?}")
    };
    assert_eq!(settled.state, StateJson("{\"n\":0}".into()));
    assert_eq!(settled.version, 1);
    assert!(matches!(
        state.apply_command(&write, at),
        Err(minos::model::Rejection::StaleVersion { current: 1, .. })
    ));
    assert_eq!(state.sessions[&id].state, StateJson("{\"n\":0}".into()));

    // The write lands first: the settle on version 0 is refused, the next
    // one (on the version the refusal names) returns the written state.
    let mut state = start;
    state.apply_command(&write, at).unwrap();
    assert!(matches!(
        state.apply_command(&settle(0), at),
        Err(minos::model::Rejection::StaleVersion { current: 1, .. })
    ));
    let Applied::Session(settled) = state.apply_command(&settle(1), at).unwrap() else {
        panic!("settle on the current version refused")
    };
    assert_eq!(settled.state, StateJson("{\"n\":1}".into()));
    assert_eq!(settled.version, 2);
}

/// A drain or rebalance stops a session on its owner, then commits a
/// `Handoff` at the epoch and version it saw. If that commit comes late,
/// after the owner's hold ran out and it settled the session to serve it
/// again, the handoff must not move it: until the old owner applied the
/// move it would answer reads under an epoch the table no longer gives it.
#[test]
fn a_handoff_landing_after_its_owner_settled_again_is_skipped() {
    let (mut state, id, at) = one_session_on_node_1("{\"n\":0}");
    state
        .apply_command(
            &Command::AddNode {
                id: 2,
                addr: "127.0.0.1:7002".into(),
            },
            at,
        )
        .unwrap();
    let (epoch, version) = (state.sessions[&id].epoch, state.sessions[&id].version);
    let handoff = Command::Handoff {
        moves: vec![HandoffMove {
            step: Move {
                id: id.clone(),
                from_epoch: epoch,
                to: Some(2),
            },
            from_version: version,
        }],
        reason: MoveReason::Rebalance,
    };
    let mut settled_again = state.clone();
    settled_again
        .apply_command(
            &Command::Settle {
                id: id.clone(),
                epoch,
                version,
            },
            at,
        )
        .unwrap();
    // An epoch-only move would still take it from the serving owner ...
    let mut epoch_only = settled_again.clone();
    let relocate = Command::Relocate {
        moves: vec![Move {
            id: id.clone(),
            from_epoch: epoch,
            to: Some(2),
        }],
        reason: MoveReason::Rebalance,
        detected: None,
    };
    epoch_only.apply_command(&relocate, at).unwrap();
    assert_eq!(epoch_only.sessions[&id].owner, Some(2));
    // ... the handoff does not.
    assert_eq!(
        settled_again.apply_command(&handoff, at),
        Ok(Applied::Moved(Vec::new()))
    );
    assert_eq!(settled_again.sessions[&id].owner, Some(1));
    assert_eq!(settled_again.sessions[&id].epoch, epoch);
    // In time, it moves the session.
    let Ok(Applied::Moved(moved)) = state.apply_command(&handoff, at) else {
        panic!("the handoff was refused")
    };
    assert_eq!(moved.len(), 1);
    assert_eq!(state.sessions[&id].owner, Some(2));
}

/// One attempt of a keyed call in [`retries_of_keyed_calls_apply_each_key_at_most_once`].
#[derive(Clone, Debug)]
enum Attempt {
    /// An owner's write of call `key`, built on the current version or on
    /// one `behind` it, under the current epoch or an earlier one (a retry
    /// that reached a deposed owner, or a late write of an old task).
    Write {
        key: u8,
        behind: u64,
        old_epoch: bool,
    },
    /// The session moves to another node (a new owner takes the retries).
    Move,
    /// An owner settles the session.
    Settle,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any interleaving of attempts of a few keyed calls (retries on any
    /// owner, late writes, moves, settles) applies each key at most once,
    /// and a key that took effect answers every later attempt as a
    /// duplicate while the session remembers it (the window here holds
    /// every key).
    #[test]
    fn retries_of_keyed_calls_apply_each_key_at_most_once(
        attempts in vec(prop_oneof![
            6 => (0u8..5, 0u64..3, any::<bool>())
                .prop_map(|(key, behind, old_epoch)| Attempt::Write { key, behind, old_epoch }),
            1 => Just(Attempt::Move),
            1 => Just(Attempt::Settle),
        ], 1..80)
    ) {
        let at = start_time();
        let id = session_id(0);
        let mut state = ClusterState::default();
        for command in [
            Command::AddNode { id: 1, addr: "127.0.0.1:7001".into() },
            Command::AddNode { id: 2, addr: "127.0.0.1:7002".into() },
            Command::CreateSession {
                id: id.clone(),
                kind: SessionKind::new("kv").unwrap(),
                state: StateJson("{}".into()),
                owner: Some(1),
            },
        ] {
            state.apply_command(&command, at).unwrap();
        }
        let retention = CallRetention { keep_last: 8, ..CallRetention::default() };
        let mut applied: BTreeMap<u8, usize> = BTreeMap::new();
        let mut old_epoch = state.sessions[&id].epoch;
        for attempt in &attempts {
            let session = state.sessions[&id].clone();
            let command = match attempt {
                Attempt::Write { key, behind, old_epoch: old } => Command::UpdateStateKeyed {
                    id: id.clone(),
                    epoch: if *old { old_epoch } else { session.epoch },
                    version: session.version.saturating_sub(*behind),
                    state: StateJson(format!("{{\"last\":{key},\"v\":{}}}", session.version).into()),
                    call: RecordedCall {
                        key: CallKey::new(format!("k{key}")).unwrap(),
                        reply: format!("{{\"key\":{key}}}"),
                        at,
                    },
                    retention,
                },
                Attempt::Move => {
                    old_epoch = session.epoch;
                    Command::Reassign {
                        moves: vec![Move {
                            id: id.clone(),
                            from_epoch: session.epoch,
                            to: Some(if session.owner == Some(1) { 2 } else { 1 }),
                        }],
                    }
                }
                Attempt::Settle => Command::Settle {
                    id: id.clone(),
                    epoch: session.epoch,
                    version: session.version,
                },
            };
            let result = state.apply_command(&command, at);
            if let (Attempt::Write { key, .. }, Ok(_)) = (attempt, &result) {
                *applied.entry(*key).or_default() += 1;
            }
            if let Attempt::Write { key, behind: 0, old_epoch: false } = attempt {
                // A fresh attempt on the current owner applies unless the
                // key took effect already.
                let took_effect = applied.get(key).copied().unwrap_or(0) > 0;
                match &result {
                    Ok(_) => prop_assert!(applied[key] == 1),
                    Err(Rejection::DuplicateCall { .. }) => prop_assert!(took_effect),
                    Err(other) => prop_assert!(false, "fresh attempt refused: {other:?}"),
                }
            }
        }
        for (key, count) in &applied {
            prop_assert!(*count <= 1, "key k{key} applied {count} times");
        }
    }
}

#[test]
fn recorded_calls_are_bounded_by_count_age_and_bytes() {
    let at = start_time();
    let mut session = minos::model::Session {
        id: session_id(0),
        kind: SessionKind::new("kv").unwrap(),
        owner: Some(1),
        epoch: Epoch(1),
        version: 0,
        state: StateJson("{}".into()),
        created_at: at,
        updated_at: at,
        calls: Vec::new(),
        history: Vec::new(),
        placement: Default::default(),
    };
    let call = |n: i64, reply: &str| RecordedCall {
        key: CallKey::new(format!("k{n}")).unwrap(),
        reply: reply.into(),
        at: at + Duration::seconds(n),
    };
    let retention = CallRetention {
        keep_last: 3,
        keep_for_secs: 100,
        keep_bytes: 10,
    };
    for n in 0..5 {
        session.record_call(call(n, "1"), retention, at + Duration::seconds(n));
    }
    let keys: Vec<&str> = session.calls.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k2", "k3", "k4"], "the newest three are kept");
    // 200 s later only the new call is young enough.
    session.record_call(call(200, "1"), retention, at + Duration::seconds(200));
    let keys: Vec<&str> = session.calls.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k200"]);
    // Bytes: a reply over the budget is kept alone (the newest always stays).
    session.record_call(call(201, "123456"), retention, at + Duration::seconds(201));
    session.record_call(
        call(202, "123456789012"),
        retention,
        at + Duration::seconds(202),
    );
    let keys: Vec<&str> = session.calls.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k202"]);
}

#[test]
fn rows_of_a_small_and_a_large_owner_are_the_same_walked_or_looked_up() {
    // Node 1 owns 90 of 100 sessions (its rows are read by walking the
    // table), node 2 the other 10 (looked up by id), in shuffled creation order.
    let at = start_time();
    let mut table = ClusterState::default();
    for id in [1, 2] {
        let addr = format!("127.0.0.1:{}", 7000 + id);
        table
            .apply_command(&Command::AddNode { id, addr }, at)
            .unwrap();
    }
    for n in (0..100u32).map(|n| (n * 37) % 100) {
        let create = Command::CreateSession {
            id: SessionId::new(format!("r{n}")).unwrap(),
            kind: SessionKind::new("kv").unwrap(),
            state: StateJson("{}".into()),
            owner: Some(if n % 10 == 3 { 2 } else { 1 }),
        };
        table.apply_command(&create, at).unwrap();
    }
    for (owner, count) in [(Some(1), 90), (Some(2), 10), (None, 0), (Some(3), 0)] {
        let listed: Vec<&SessionId> = table.sessions_of(owner).map(|s| &s.id).collect();
        let mut expected: Vec<&SessionId> = table
            .sessions
            .values()
            .filter(|s| s.owner == owner)
            .map(|s| &s.id)
            .collect();
        expected.sort();
        assert_eq!(listed.len(), count, "rows of {owner:?}");
        assert_eq!(listed, expected, "rows of {owner:?}");
    }
}

#[test]
fn a_long_id_read_back_from_a_snapshot_is_one_copy_shared_by_key_and_row() {
    // Ids of up to 23 bytes are kept inline; a longer one (a UUID, say) is
    // one shared allocation, also after a snapshot is read back.
    let at = start_time();
    let id = SessionId::new("3f2504e0-4f89-41d3-9a0c-0305e82c3301").unwrap();
    let mut table = ClusterState::default();
    let add = Command::AddNode {
        id: 1,
        addr: "127.0.0.1:7001".into(),
    };
    let create = Command::CreateSession {
        id: id.clone(),
        kind: SessionKind::new("kv").unwrap(),
        state: StateJson("{}".into()),
        owner: Some(1),
    };
    for command in [add, create] {
        table.apply_command(&command, at).unwrap();
    }
    let restored: ClusterState =
        bincode::deserialize(&bincode::serialize(&table).unwrap()).unwrap();
    let (key, row) = restored.sessions.iter().next().unwrap();
    assert_eq!(key, &id);
    assert_eq!(
        key.as_str().as_ptr(),
        row.id.as_str().as_ptr(),
        "{key} not shared"
    );
}
