//! Placement constraints, property-tested on the pure table: random nodes
//! (labels, capacity), random sessions (required labels, spread), placed as
//! the leader places them, then nodes lost, drained and rebalanced. Every
//! plan is applied through `ClusterState::apply` and must take effect
//! whole; after each, no session is on a node that does not carry its
//! labels, no node holds more than its `max-sessions`, no session is lost,
//! and losing a node moves only that node's sessions.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use minos::labels::{Labels, NodeTraits, Requirement};
use minos::model::{Applied, Command, Move, NodeId, NodeStatus, Proposal, SessionId, SessionKind};
use minos::placement::{evacuate, place, rebalance, repair, unplaced_reason, up_nodes, Planner};
use minos::state::ClusterState;
use proptest::prelude::*;

const NODES: u64 = 5;

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).expect("time")
}

fn apply(state: &mut ClusterState, commands: Vec<Command>) -> Vec<minos::model::CommandResult> {
    state.apply(&Proposal::V2 {
        at: at(),
        commands,
        history_keep: 4,
    })
}

/// A node: zone a/b/c or none, pool games/batch or none, capacity.
fn traits() -> impl Strategy<Value = NodeTraits> {
    (
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(prop::sample::select(vec!["games", "batch"])),
        prop::option::of(1u64..8),
    )
        .prop_map(|(zone, pool, max_sessions)| {
            let mut labels = Labels::new();
            if let Some(zone) = zone {
                labels.insert("zone".into(), zone.into());
            }
            if let Some(pool) = pool {
                labels.insert("pool".into(), pool.into());
            }
            NodeTraits {
                labels,
                max_sessions,
            }
        })
}

/// A session's kind and requirement.
fn need() -> impl Strategy<Value = (bool, Requirement)> {
    (
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["games", "batch"])),
        any::<bool>(),
    )
        .prop_map(|(kv, pool, spread)| {
            let mut need = Requirement::default();
            if let Some(pool) = pool {
                need.labels.insert("pool".into(), pool.into());
            }
            if spread {
                need.spread = Some("zone".into());
            }
            (kv, need)
        })
}

/// A table of `NODES` Up nodes with `traits`, and the sessions created one
/// entry at a time, each placed as the leader's write path places them.
fn table(traits: &[NodeTraits], sessions: &[(bool, Requirement)]) -> ClusterState {
    let mut state = ClusterState::default();
    let mut commands = Vec::new();
    for (n, traits) in traits.iter().enumerate() {
        let id = n as NodeId + 1;
        commands.push(Command::AddNode {
            id,
            addr: format!("127.0.0.1:{}", 7100 + id),
        });
        commands.push(Command::SetNodeTraits {
            id,
            traits: traits.clone(),
        });
    }
    apply(&mut state, commands);
    for batch in sessions.chunks(3) {
        let mut planner = Planner::new(&state, up_nodes(&state.nodes));
        let mut creates = Vec::new();
        for (n, (kv, need)) in batch.iter().enumerate() {
            let id = SessionId::new(format!("s-{}-{n}", state.sessions.len())).expect("id");
            let kind = SessionKind::new(if *kv { "kv" } else { "minotaur" }).expect("kind");
            let owner = planner.choose(&id, &kind, need, None).ok();
            planner.count(owner, &kind);
            creates.push(Command::CreateSessionPlaced {
                id,
                kind,
                state: minos::model::StateJson::from_value(&serde_json::json!({})),
                owner,
                placement: need.clone(),
            });
        }
        for result in apply(&mut state, creates) {
            prop_assert_ok(&result);
        }
    }
    state
}

fn prop_assert_ok(result: &minos::model::CommandResult) {
    assert!(result.is_ok(), "create refused: {result:?}");
}

/// Constraints hold in `state`: each owner carries its session's labels and
/// no node holds more than its capacity; each unplaced session fits nowhere.
fn check_constraints(state: &ClusterState) -> Result<(), TestCaseError> {
    for session in state.sessions.values() {
        match session.owner {
            Some(owner) => {
                let node = &state.nodes[&owner];
                prop_assert!(
                    session.placement.admits(&node.traits.labels),
                    "{} on node {owner} without {}",
                    session.id,
                    session.placement
                );
            }
            None => {
                let reason = unplaced_reason(state, session).unwrap_or_default();
                prop_assert!(
                    !reason.contains("fits"),
                    "{} unplaced although {reason}",
                    session.id
                );
            }
        }
    }
    for (node, count) in state.sessions_per_node() {
        if let Some(max) = state.nodes.get(&node).and_then(|n| n.traits.max_sessions) {
            prop_assert!(count as u64 <= max, "node {node} holds {count} > {max}");
        }
    }
    Ok(())
}

/// Applies `moves` as one Relocate: every move must take effect (the plan
/// agrees with what `apply` allows), and no session may be lost.
fn carry_out(state: &mut ClusterState, moves: Vec<Move>) -> Result<(), TestCaseError> {
    let before: BTreeSet<SessionId> = state.sessions.keys().cloned().collect();
    let planned = moves.len();
    let results = apply(
        state,
        vec![Command::Relocate {
            moves,
            reason: minos::model::MoveReason::Rebalance,
            detected: None,
        }],
    );
    match &results[..] {
        [Ok(Applied::Moved(moved))] => prop_assert_eq!(moved.len(), planned, "moves refused"),
        other => prop_assert!(false, "relocate failed: {other:?}"),
    }
    let after: BTreeSet<SessionId> = state.sessions.keys().cloned().collect();
    prop_assert_eq!(before, after, "a session was lost");
    check_constraints(state)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn placement_keeps_constraints_through_loss_drain_and_rebalance(
        traits in prop::collection::vec(traits(), NODES as usize),
        sessions in prop::collection::vec(need(), 0..40),
        lost in 1..=NODES,
        drained in 1..=NODES,
    ) {
        let mut state = table(&traits, &sessions);
        check_constraints(&state)?;

        // Node loss: only the lost node's sessions move (and unplaced ones
        // may be placed); everything else stays where it was.
        let owners: BTreeMap<SessionId, Option<NodeId>> =
            state.sessions.values().map(|s| (s.id.clone(), s.owner)).collect();
        apply(&mut state, vec![Command::NodeDown { id: lost }]);
        let moves = repair(&state);
        for step in &moves {
            prop_assert!(
                matches!(owners[&step.id], Some(owner) if owner == lost) || owners[&step.id].is_none(),
                "{} moved although its node {:?} survived", step.id, owners[&step.id]
            );
            prop_assert_ne!(step.to, Some(lost));
        }
        carry_out(&mut state, moves)?;
        prop_assert!(state.sessions_owned_by(lost).next().is_none(), "sessions left on the lost node");
        prop_assert!(repair(&state).is_empty(), "repair is not idempotent");

        // The node comes back; unplaced sessions that fit it are placed.
        apply(&mut state, vec![Command::NodeUp { id: lost }]);
        let moves = repair(&state);
        carry_out(&mut state, moves)?;

        // Drain: its sessions go to nodes that fit them, or unplaced.
        apply(&mut state, vec![Command::Drain { id: drained }]);
        let moves = evacuate(&state, drained);
        prop_assert!(moves.iter().all(|m| m.to != Some(drained)));
        carry_out(&mut state, moves)?;
        prop_assert!(state.sessions_owned_by(drained).next().is_none());

        // Undrain and rebalance: constraints and capacity still hold.
        apply(&mut state, vec![Command::NodeUp { id: drained }]);
        let moves = repair(&state);
        carry_out(&mut state, moves)?;
        let moves = rebalance(&state);
        for step in &moves {
            prop_assert_ne!(step.to, state.sessions[&step.id].owner, "rebalance to the same owner");
        }
        carry_out(&mut state, moves)?;
    }

    /// Spread over a label with room everywhere: the zones' counts of one
    /// kind differ by at most one, whatever the nodes per zone.
    #[test]
    fn spread_evens_a_kind_over_the_label_values(
        zones in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), NODES as usize),
        count in 0usize..60,
    ) {
        let traits: Vec<NodeTraits> = zones
            .iter()
            .map(|zone| NodeTraits {
                labels: [("zone".to_string(), zone.to_string())].into(),
                max_sessions: None,
            })
            .collect();
        let spread = Requirement { labels: Labels::new(), spread: Some("zone".into()) };
        let sessions = vec![(true, spread); count];
        let state = table(&traits, &sessions);
        let mut per_zone: BTreeMap<&str, usize> =
            zones.iter().map(|zone| (*zone, 0)).collect();
        for session in state.sessions.values() {
            let owner = session.owner.expect("placed: every node fits");
            *per_zone.entry(zones[owner as usize - 1]).or_default() += 1;
        }
        let most = per_zone.values().max().copied().unwrap_or(0);
        let least = per_zone.values().min().copied().unwrap_or(0);
        prop_assert!(most - least <= 1, "{per_zone:?}");
        check_constraints(&state)?;
    }

    /// A session with no requirement goes where rendezvous hashing over
    /// the Up nodes puts it, whatever the nodes' labels and the moves
    /// planned before, unless some Up node has a capacity; with one,
    /// it never goes to a full node.
    #[test]
    fn an_unconstrained_session_goes_where_rendezvous_puts_it(
        traits in prop::collection::vec(traits(), NODES as usize),
        down in prop::collection::vec(any::<bool>(), NODES as usize),
        sessions in prop::collection::vec(need(), 0..20),
        ids in prop::collection::vec("[a-z0-9-]{1,40}", 1..20),
    ) {
        let mut state = table(&traits, &sessions);
        let downs = (1..=NODES).filter(|id| down[*id as usize - 1]).map(|id| Command::NodeDown { id });
        apply(&mut state, downs.collect());
        let up = up_nodes(&state.nodes);
        let up_ids: Vec<NodeId> = up.iter().map(|node| node.id).collect();
        let limited = up.iter().any(|node| node.traits.max_sessions.is_some());
        let kind = SessionKind::new("kv").expect("kind");
        let mut planner = Planner::new(&state, up);
        for id in &ids {
            let id = SessionId::new(id.clone()).expect("id");
            let chosen = planner.choose(&id, &kind, &Requirement::default(), None).ok();
            if limited {
                if let Some(node) = chosen {
                    let max = state.nodes[&node].traits.max_sessions;
                    prop_assert!(max.is_none_or(|max| planner.load(node) < max), "{id} to full node {node}");
                }
            } else {
                prop_assert_eq!(chosen, place(&id, &up_ids), "{}", id);
            }
            planner.count(chosen, &kind);
        }
    }
}

/// A constrained session that fits nowhere is unplaced with a reason that
/// names what is missing, and repair places it once a node fits.
#[test]
fn an_unfit_session_says_why_and_is_placed_when_a_node_fits() {
    let plain = NodeTraits::default();
    let need = Requirement {
        labels: [("pool".to_string(), "games".to_string())].into(),
        spread: None,
    };
    let mut state = table(&[plain.clone(), plain], &[(true, need.clone())]);
    let session = state.sessions.values().next().expect("session").clone();
    assert_eq!(session.owner, None);
    assert_eq!(
        unplaced_reason(&state, &session).as_deref(),
        Some("no Up node has pool=games")
    );
    assert!(repair(&state).is_empty(), "nothing fits: no move planned");
    let games = NodeTraits {
        labels: need.labels.clone(),
        max_sessions: Some(1),
    };
    apply(
        &mut state,
        vec![Command::SetNodeTraits {
            id: 2,
            traits: games,
        }],
    );
    let moves = repair(&state);
    assert_eq!(moves.len(), 1);
    assert_eq!(moves[0].to, Some(2));
    apply(
        &mut state,
        vec![Command::Relocate {
            moves,
            reason: minos::model::MoveReason::Placed,
            detected: None,
        }],
    );
    // Full now: a second such session is unplaced, and says so.
    let mut planner = Planner::new(&state, up_nodes(&state.nodes));
    let kind = SessionKind::new("kv").expect("kind");
    let second = SessionId::new("second").expect("id");
    let err = planner.choose(&second, &kind, &need, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "every Up node with pool=games is at its max-sessions"
    );
    planner.count(None, &kind);
    assert_eq!(
        state.nodes[&2].status,
        NodeStatus::Up,
        "the node stays Up when full"
    );
}
