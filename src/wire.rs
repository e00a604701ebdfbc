//! The openraft type configuration of minos, in a leaf module: storage, the
//! network and the write path all name it, and peers (and tests forging
//! peer messages) encode Raft RPCs with it (`bincode` of openraft's
//! request types).

use std::io::Cursor;

use openraft::BasicNode;

use crate::model::{CommandResult, NodeId, Proposal};

openraft::declare_raft_types!(
    /// minos's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Decodes a peer's bincode body (the encoding `bincode::serialize` writes),
/// reading at most the body's own length: a length prefix that claims more
/// is an error, not an allocation.
pub fn decode_bin<T: for<'de> serde::Deserialize<'de>>(body: &[u8]) -> bincode::Result<T> {
    use bincode::Options;
    bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(body.len() as u64)
        .deserialize(body)
}
