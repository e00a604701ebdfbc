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
