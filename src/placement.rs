//! Placement: which node should own a session. Pure and deterministic.
//!
//! Rendezvous (highest-random-weight) hashing with a stable hash: every node
//! computes the same answer, losing a node moves only that node's sessions,
//! and they spread evenly over the survivors. The leader runs it and logs the
//! explicit result, so followers never recompute placement.

use std::collections::BTreeMap;

use crate::labels::Requirement;
use crate::model::{Move, NodeId, NodeInfo, NodeStatus, Session, SessionId, SessionKind};
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

/// Why a session fits on no node (shown as its `unplaced` reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    /// No node is Up.
    #[error("no Up node")]
    NoUpNode,
    /// No Up node carries the labels.
    #[error("no Up node has {0}")]
    NoLabels(Requirement),
    /// Every Up node with the labels is at its `--max-sessions`.
    #[error("every Up node with {0} is at its max-sessions")]
    Full(Requirement),
}

/// The Up nodes of `nodes`, in id order.
pub fn up_nodes(nodes: &BTreeMap<NodeId, NodeInfo>) -> Vec<&NodeInfo> {
    nodes
        .values()
        .filter(|node| node.status == NodeStatus::Up)
        .collect()
}

/// One plan's view of the nodes: the table's loads plus the moves planned
/// so far, so a plan of many moves keeps every node within its capacity
/// and spreads as the table will be once it is applied. Pure: the same
/// table, nodes and order of calls give the same answers.
///
/// Rules, in order: a node fits a session when it is Up, carries the
/// requirement's labels (and its spread key), and is below its
/// `max_sessions`. Without spread, the fitting node of highest rendezvous
/// weight wins. With spread over key K, the fitting nodes are grouped by
/// their value of K; the value whose Up nodes hold the fewest sessions of
/// the session's kind wins (ties: the smaller value), and rendezvous picks
/// among its fitting nodes. Unconstrained sessions on nodes without limits
/// are thus placed exactly as before constraints existed.
pub struct Planner<'a> {
    state: &'a ClusterState,
    up: Vec<&'a NodeInfo>,
    added: BTreeMap<NodeId, i64>,
    kinds_added: BTreeMap<(NodeId, SessionKind), i64>,
}

impl<'a> Planner<'a> {
    /// A plan over `state` with `up` as the nodes that may take sessions.
    pub fn new(state: &'a ClusterState, up: Vec<&'a NodeInfo>) -> Self {
        Self {
            state,
            up,
            added: BTreeMap::new(),
            kinds_added: BTreeMap::new(),
        }
    }

    /// Sessions `node` owns once the planned moves are applied.
    pub fn load(&self, node: NodeId) -> u64 {
        let base = self.state.count_of(Some(node)) as i64;
        (base + self.added.get(&node).copied().unwrap_or(0)).max(0) as u64
    }

    fn kind_load(&self, node: NodeId, kind: &SessionKind) -> i64 {
        self.state.count_of_kind(node, kind) as i64
            + self
                .kinds_added
                .get(&(node, kind.clone()))
                .copied()
                .unwrap_or(0)
    }

    fn has_room(&self, node: &NodeInfo) -> bool {
        node.traits
            .max_sessions
            .is_none_or(|max| self.load(node.id) < max)
    }

    /// The nodes that may take one more session with `need` (`keep`: a
    /// node that may keep it although full, its current owner).
    fn fitting(
        &self,
        need: &Requirement,
        keep: Option<NodeId>,
    ) -> Result<Vec<&'a NodeInfo>, Unfit> {
        if self.up.is_empty() {
            return Err(Unfit::NoUpNode);
        }
        let labelled: Vec<&'a NodeInfo> = self
            .up
            .iter()
            .copied()
            .filter(|node| need.admits(&node.traits.labels))
            .collect();
        if labelled.is_empty() {
            return Err(Unfit::NoLabels(need.clone()));
        }
        let fitting: Vec<&'a NodeInfo> = labelled
            .into_iter()
            .filter(|node| Some(node.id) == keep || self.has_room(node))
            .collect();
        if fitting.is_empty() {
            return Err(Unfit::Full(need.clone()));
        }
        Ok(fitting)
    }

    /// True when some node could take a session with `need` now.
    pub fn fits(&self, need: &Requirement) -> bool {
        self.fitting(need, None).is_ok()
    }

    /// Where `session` (of `kind`, requiring `need`) goes: see [`Planner`].
    /// `keep` is its current owner when it may stay there although full.
    pub fn choose(
        &self,
        session: &SessionId,
        kind: &SessionKind,
        need: &Requirement,
        keep: Option<NodeId>,
    ) -> Result<NodeId, Unfit> {
        let fitting = self.fitting(need, keep)?;
        let candidates: Vec<NodeId> = match &need.spread {
            None => fitting.iter().map(|node| node.id).collect(),
            Some(key) => {
                let value = self.emptiest_value(&fitting, key, kind);
                fitting
                    .iter()
                    .filter(|node| node.traits.labels.get(key) == value)
                    .map(|node| node.id)
                    .collect()
            }
        };
        place(session, &candidates).ok_or(Unfit::NoUpNode)
    }

    /// The value of `key` among `fitting` whose Up nodes hold the fewest
    /// sessions of `kind` (ties: the smaller value).
    fn emptiest_value(
        &self,
        fitting: &[&'a NodeInfo],
        key: &str,
        kind: &SessionKind,
    ) -> Option<&'a String> {
        let mut held: BTreeMap<&'a String, i64> = BTreeMap::new();
        for node in fitting {
            if let Some(value) = node.traits.labels.get(key) {
                held.insert(value, 0);
            }
        }
        for node in &self.up {
            if let Some(count) = node.traits.labels.get(key).and_then(|v| held.get_mut(v)) {
                *count += self.kind_load(node.id, kind);
            }
        }
        held.into_iter()
            .min_by_key(|(value, count)| (*count, *value))
            .map(|(value, _)| value)
    }

    /// Records a planned move of a session of `kind` from `from` to `to`.
    pub fn take(&mut self, from: Option<NodeId>, to: Option<NodeId>, kind: &SessionKind) {
        if from == to {
            return;
        }
        if let Some(node) = from {
            *self.added.entry(node).or_default() -= 1;
            *self.kinds_added.entry((node, kind.clone())).or_default() -= 1;
        }
        if let Some(node) = to {
            *self.added.entry(node).or_default() += 1;
            *self.kinds_added.entry((node, kind.clone())).or_default() += 1;
        }
    }

    /// Records a new session of `kind` placed on `to` (not yet in the
    /// table), for the later choices of the same plan.
    pub fn count(&mut self, to: Option<NodeId>, kind: &SessionKind) {
        if let Some(node) = to {
            *self.added.entry(node).or_default() += 1;
            *self.kinds_added.entry((node, kind.clone())).or_default() += 1;
        }
    }

    /// Chooses a new owner for `session` (which must leave `session.owner`)
    /// and records the move: `None` when nothing fits.
    pub fn relocate(&mut self, session: &'a Session) -> Move {
        let to = self
            .choose(&session.id, &session.kind, &session.placement, None)
            .ok();
        self.take(session.owner, to, &session.kind);
        Move {
            id: session.id.clone(),
            from_epoch: session.epoch,
            to,
        }
    }
}

/// Why the unplaced `session` is unplaced now (`None` when it is placed).
pub fn unplaced_reason(state: &ClusterState, session: &Session) -> Option<String> {
    if session.owner.is_some() {
        return None;
    }
    let planner = Planner::new(state, up_nodes(&state.nodes));
    Some(
        match planner.choose(&session.id, &session.kind, &session.placement, None) {
            Err(unfit) => unfit.to_string(),
            Ok(node) => format!("node {node} fits; placing it"),
        },
    )
}

/// Moves for every session whose owner is gone, Down or missing, onto the
/// nodes that fit them. Sessions of Draining nodes are not included: they
/// move through the handoff, after their owner stopped them.
pub fn repair(state: &ClusterState) -> Vec<Move> {
    repair_with(state, &state.nodes)
        .into_iter()
        .flat_map(|(_, moves)| moves)
        .collect()
}

/// [`repair`] with the node statuses taken from `nodes` instead of the
/// state (the scheduler plans its Down verdicts and the moves together),
/// grouped by the owner the moves leave (`None`: the unplaced sessions),
/// so the caller needs no second look-up of each session.
/// The unplaced sessions are placed too, a group of one requirement only
/// when some node fits it: the cost is the repair and the number of
/// distinct requirements, not the table.
pub fn repair_with<'a>(
    state: &'a ClusterState,
    nodes: &'a BTreeMap<NodeId, NodeInfo>,
) -> Vec<(Option<NodeId>, Vec<Move>)> {
    let mut planner = Planner::new(state, up_nodes(nodes));
    let lost: Vec<NodeId> = state
        .owners()
        .flatten()
        .filter(|owner| {
            nodes
                .get(owner)
                .is_none_or(|node| node.status == NodeStatus::Down)
        })
        .collect();
    let mut groups: Vec<(Option<NodeId>, Vec<Move>)> = lost
        .into_iter()
        .map(|owner| {
            let sessions = state.sessions_of(Some(owner));
            (Some(owner), sessions.map(|s| planner.relocate(s)).collect())
        })
        .collect();
    let mut placed = Vec::new();
    for (need, ids) in state.unplaced_groups() {
        if !planner.fits(need) {
            continue;
        }
        for session in ids.iter().filter_map(|id| state.sessions.get(id)) {
            let step = planner.relocate(session);
            if step.to.is_none() {
                break;
            }
            placed.push(step);
        }
    }
    if !placed.is_empty() {
        groups.push((None, placed));
    }
    groups
}

/// Moves that hand every session of `node` to the nodes that fit them.
pub fn evacuate(state: &ClusterState, node: NodeId) -> Vec<Move> {
    let up = up_nodes(&state.nodes)
        .into_iter()
        .filter(|info| info.id != node)
        .collect();
    let mut planner = Planner::new(state, up);
    state
        .sessions_owned_by(node)
        .map(|session| planner.relocate(session))
        .collect()
}

/// Moves that bring every session to its placement choice among the Up
/// nodes (used after a node comes back). A session may stay on a full
/// owner; one spread over a label stays within its owner's value of that
/// label (the spread it got at placement is kept, the zone is evened); a
/// session whose owner no longer carries its labels moves to one that does.
pub fn rebalance(state: &ClusterState) -> Vec<Move> {
    let mut planner = Planner::new(state, up_nodes(&state.nodes));
    let mut moves = Vec::new();
    for session in state.sessions.values() {
        let Some(target) = rebalance_target(&planner, state, session) else {
            continue;
        };
        if session.owner != Some(target) {
            planner.take(session.owner, Some(target), &session.kind);
            moves.push(Move {
                id: session.id.clone(),
                from_epoch: session.epoch,
                to: Some(target),
            });
        }
    }
    moves
}

fn rebalance_target(planner: &Planner, state: &ClusterState, session: &Session) -> Option<NodeId> {
    let need = &session.placement;
    let owner = session
        .owner
        .and_then(|id| state.nodes.get(&id))
        .filter(|node| node.status == NodeStatus::Up && need.admits(&node.traits.labels));
    match (&need.spread, owner) {
        (Some(key), Some(owner)) => {
            // Rendezvous within the owner's value of the spread label.
            let mut within = Requirement::clone(need);
            within.spread = None;
            if let Some(value) = owner.traits.labels.get(key) {
                within.labels.insert(key.clone(), value.clone());
            }
            planner
                .choose(&session.id, &session.kind, &within, Some(owner.id))
                .ok()
        }
        _ => planner
            .choose(&session.id, &session.kind, need, owner.map(|o| o.id))
            .ok(),
    }
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
