//! Placement: which node should own a session. Pure and deterministic.
//!
//! Rendezvous (highest-random-weight) hashing with a stable hash: every node
//! computes the same answer, losing a node moves only that node's sessions,
//! and they spread evenly over the survivors. The leader runs it and logs the
//! explicit result, so followers never recompute placement.

use std::collections::BTreeMap;

use crate::model::{Move, NodeId, NodeInfo, NodeStatus, SessionId};
use crate::state::ClusterState;

/// 64-bit FNV-1a followed by a splitmix64 finalizer: stable across Rust
/// versions and platforms (unlike `std`'s `DefaultHasher`).
fn stable_hash(session: &SessionId, node: NodeId) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in session
        .as_str()
        .as_bytes()
        .iter()
        .chain(node.to_be_bytes().iter())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The eligible node with the highest weight for `session`, or `None` when no
/// node is eligible.
pub fn place(session: &SessionId, eligible: &[NodeId]) -> Option<NodeId> {
    eligible
        .iter()
        .copied()
        .max_by_key(|node| (stable_hash(session, *node), *node))
}

/// Moves for every session whose owner is gone, Down or missing, onto the
/// eligible nodes. Sessions of Draining nodes are not included: they move
/// through the handoff, after their owner stopped them.
pub fn repair(state: &ClusterState) -> Vec<Move> {
    repair_with(state, &state.nodes)
}

/// [`repair`] with the node statuses taken from `nodes` instead of the
/// state (the scheduler plans its Down verdicts and the moves together).
pub fn repair_with(state: &ClusterState, nodes: &BTreeMap<NodeId, NodeInfo>) -> Vec<Move> {
    let eligible: Vec<NodeId> = nodes
        .values()
        .filter(|node| node.status == NodeStatus::Up)
        .map(|node| node.id)
        .collect();
    // Only the sessions of lost owners (and the unplaced ones, when a node
    // can take them) are looked at: the cost is the repair, not the table.
    let lost: Vec<Option<NodeId>> = state
        .owners()
        .filter(|owner| match owner {
            None => !eligible.is_empty(),
            Some(owner) => nodes
                .get(owner)
                .is_none_or(|node| node.status == NodeStatus::Down),
        })
        .collect();
    lost.into_iter()
        .flat_map(|owner| state.sessions_of(owner))
        .map(|session| Move {
            id: session.id.clone(),
            from_epoch: session.epoch,
            to: place(&session.id, &eligible),
        })
        .collect()
}

/// Moves that hand every session of `node` to the eligible nodes.
pub fn evacuate(state: &ClusterState, node: NodeId) -> Vec<Move> {
    let eligible: Vec<NodeId> = state
        .eligible_nodes()
        .into_iter()
        .filter(|id| *id != node)
        .collect();
    state
        .sessions_owned_by(node)
        .map(|session| Move {
            id: session.id.clone(),
            from_epoch: session.epoch,
            to: place(&session.id, &eligible),
        })
        .collect()
}

/// Moves that bring every placed session to its rendezvous choice among the
/// eligible nodes (used after a node comes back).
pub fn rebalance(state: &ClusterState) -> Vec<Move> {
    let eligible = state.eligible_nodes();
    state
        .sessions
        .values()
        .filter_map(|session| {
            let target = place(&session.id, &eligible)?;
            (session.owner != Some(target)).then(|| Move {
                id: session.id.clone(),
                from_epoch: session.epoch,
                to: Some(target),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SessionId {
        SessionId::new(text).unwrap()
    }

    #[test]
    fn placement_is_stable_and_only_moves_the_lost_nodes_sessions() {
        // Removing node 3 must keep every session that was not on node 3 where it was.
        let all = [1, 2, 3];
        let survivors = [1, 2];
        let mut moved_to = [0usize; 3];
        for n in 0..3000 {
            let session = id(&format!("s-{n}"));
            let before = place(&session, &all).unwrap();
            let after = place(&session, &survivors).unwrap();
            if before != 3 {
                assert_eq!(before, after, "{session} moved although its node survived");
            } else {
                moved_to[after as usize] += 1;
            }
        }
        // The lost node's sessions spread over both survivors (roughly half each).
        assert!(moved_to[1] > 400 && moved_to[2] > 400, "{moved_to:?}");
    }

    #[test]
    fn placement_spreads_evenly() {
        let nodes = [1, 2, 3];
        let mut counts = [0usize; 4];
        for n in 0..3000 {
            counts[place(&id(&format!("game-{n}")), &nodes).unwrap() as usize] += 1;
        }
        for node in nodes {
            assert!((850..=1150).contains(&counts[node as usize]), "{counts:?}");
        }
    }

    #[test]
    fn no_eligible_node_means_no_placement() {
        assert_eq!(place(&id("x"), &[]), None);
    }
}
