//! Durable Raft storage on sled: the log, the vote, the committed index and
//! snapshots, plus the in-memory state machine wrapped around
//! [`ClusterState`].
//!
//! One `sled::Db` per node with separate trees; log keys are big-endian u64
//! indexes so iteration order is log order. Durability rule: every append,
//! vote and purge marker is flushed (`flush_async`) before openraft is told it
//! is done. The state machine lives in memory; it is snapshotted to sled, and a
//! restart loads the snapshot and lets openraft replay the log tail.

// openraft's StorageError is large by design; every storage method returns it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::{CommandResult, NodeId};
use crate::state::{Changes, ClusterState};
use crate::sync::Recover;
use crate::wire::TypeConfig;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn encode<T: Serialize>(value: &T) -> StorageResult<Vec<u8>> {
    bincode::serialize(value).map_err(write_err)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> StorageResult<T> {
    bincode::deserialize(bytes).map_err(read_err)
}

/// Who this data directory belongs to, written on first start and checked on
/// every later one so a node never joins a cluster its data is not from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node id the directory was created for.
    pub node_id: NodeId,
    /// The cluster the directory belongs to (see `node::cluster_name`).
    pub cluster: String,
}

/// Opens (or creates) the sled database of one node.
pub fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir.join("sled"))
        // sled defaults to a 1 GiB cache per Db; several nodes may share a host.
        .cache_capacity(64 * 1024 * 1024)
        .open()
}

const IDENTITY_FILE: &str = "identity.json";

/// Closes a data directory to other users: the directory and its
/// subdirectories 0700, every file in them 0600 (sled and the identity file
/// are created with the process umask).
pub fn restrict_permissions(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: cannot restrict permissions: {e}", path.display()))
    };
    set(dir, 0o700)?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if kind.is_dir() {
            restrict_permissions(&path)?;
        } else if kind.is_file() {
            set(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Reads the identity file of a data directory, if there is one.
pub fn read_identity(dir: &Path) -> Result<Option<Identity>, String> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("unreadable identity file {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the identity file durably (temporary file, fsync, rename, fsync
/// of the directory). Called once per data directory, at start-up.
pub fn write_identity(dir: &Path, identity: &Identity) -> Result<(), String> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(identity).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(IDENTITY_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", dir.display()))
}

/// The Raft log, vote and committed index.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    /// Opens the log trees of `db`.
    pub fn new(db: sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            log: db.open_tree("log")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    async fn flush(&self) -> StorageResult<()> {
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self.meta.get(key).map_err(read_err)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (key, value) = item.map_err(read_err)?;
            let index =
                u64::from_be_bytes(key.as_ref().try_into().map_err(|_| {
                    read_err(std::io::Error::other("log key is not a big-endian u64"))
                })?);
            if !range.contains(&index) {
                break;
            }
            entries.push(decode(&value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(KEY_LAST_PURGED)?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, value)) => Some(decode::<Entry<TypeConfig>>(&value)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.meta
            .insert(KEY_VOTE, encode(vote)?)
            .map_err(write_err)?;
        // A vote must be on disk before it is answered: a lost vote allows two
        // leaders in one term.
        self.flush().await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: the committed index is a hint that speeds up restart;
        // losing the last few updates only means replaying them later.
        self.meta
            .insert(KEY_COMMITTED, encode(&committed)?)
            .map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&entry.log_id.index.to_be_bytes(), encode(&entry)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        // Durable before acknowledged.
        let flushed = self.db.flush_async().await;
        match flushed {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(message)));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(log_id.index.to_be_bytes()..).keys() {
            batch.remove(key.map_err(read_err)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first, so a crash in between leaves no hole.
        self.meta
            .insert(KEY_LAST_PURGED, encode(&log_id)?)
            .map_err(write_err)?;
        self.flush().await?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=log_id.index.to_be_bytes()).keys() {
            batch.remove(key.map_err(read_err)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}

/// The state machine's data: the table plus what openraft needs to know.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The replicated table.
    pub state: ClusterState,
    /// Last log id applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// Last membership applied.
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// Shared view of the applied state: the runtime, API and scheduler read it;
/// only openraft's apply writes it.
#[derive(Clone)]
pub struct StateView {
    data: Arc<RwLock<Applied>>,
    applied_tx: Arc<watch::Sender<u64>>,
    /// What was applied since the runtime last looked (its one reader).
    changes: Arc<Mutex<Changes>>,
}

/// Changed sessions remembered for the runtime before it is told to look at
/// the whole table instead (bounds the memory of a reader that fell behind).
const MAX_TRACKED_CHANGES: usize = 65_536;

impl StateView {
    /// Runs `read` on the current applied state (never hold it across awaits).
    pub fn read<T>(&self, read: impl FnOnce(&Applied) -> T) -> T {
        let guard = self
            .data
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        read(&guard)
    }

    /// A watcher woken whenever entries are applied; its value is the last
    /// applied log index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Last applied log index (0 before anything was applied).
    pub fn applied_index(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    /// Takes what was applied since the last call (the runtime's, which
    /// follows the table incrementally; there is one such reader per node).
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock().recover())
    }

    fn record(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        let mut kept = self.changes.lock().recover();
        kept.merge(changes);
        if kept.sessions.len() > MAX_TRACKED_CHANGES {
            kept.sessions.clear();
            kept.all = true;
        }
    }

    fn replace(&self, applied: Applied) {
        let index = applied.last_applied.map(|id| id.index).unwrap_or(0);
        *self.data.write().recover() = applied;
        self.record(Changes {
            all: true,
            ..Changes::default()
        });
        self.applied_tx.send_replace(index);
    }
}

/// openraft's state machine: applies entries to [`ClusterState`] and keeps
/// snapshots in sled.
#[derive(Clone)]
pub struct StateMachineStore {
    view: StateView,
    db: sled::Db,
    snapshots: sled::Tree,
}

impl StateMachineStore {
    /// Opens the state machine of `db`, starting from its last snapshot.
    pub fn new(db: sled::Db) -> StorageResult<Self> {
        let snapshots = db.open_tree("snapshot").map_err(read_err)?;
        let mut applied = Applied::default();
        if let Some(bytes) = snapshots.get(KEY_SNAPSHOT).map_err(read_err)? {
            let stored: StoredSnapshot = decode(&bytes)?;
            applied = decode(&stored.data)?;
        }
        let index = applied.last_applied.map(|id| id.index).unwrap_or(0);
        let (applied_tx, _) = watch::channel(index);
        Ok(Self {
            view: StateView {
                data: Arc::new(RwLock::new(applied)),
                applied_tx: Arc::new(applied_tx),
                changes: Arc::new(Mutex::new(Changes::default())),
            },
            db,
            snapshots,
        })
    }

    /// The shared read view.
    pub fn view(&self) -> StateView {
        self.view.clone()
    }

    async fn save_snapshot(&self, stored: &StoredSnapshot) -> StorageResult<()> {
        self.snapshots
            .insert(KEY_SNAPSHOT, encode(stored)?)
            .map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, last_applied, membership) = self.view.read(|applied| {
            (
                encode(applied),
                applied.last_applied,
                applied.membership.clone(),
            )
        });
        let data = data?;
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(&stored).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        Ok(self
            .view
            .read(|applied| (applied.last_applied, applied.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Vec<CommandResult>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut changes = Changes::default();
        let last_index = {
            let mut applied = self.view.data.write().recover();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Vec::new()),
                    EntryPayload::Normal(proposal) => {
                        responses.push(applied.state.apply_tracked(&proposal, &mut changes))
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        responses.push(Vec::new());
                    }
                }
            }
            applied.last_applied.map(|id| id.index).unwrap_or(0)
        };
        // Recorded before the index moves: a reader woken by it finds them.
        self.view.record(changes);
        self.view.applied_tx.send_replace(last_index);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let applied: Applied = decode(&data)?;
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .await?;
        self.view.replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        match self.snapshots.get(KEY_SNAPSHOT).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => {
                let stored: StoredSnapshot = decode(&bytes)?;
                Ok(Some(Snapshot {
                    meta: stored.meta,
                    snapshot: Box::new(Cursor::new(stored.data)),
                }))
            }
        }
    }
}

/// Opens both halves of a node's storage on one database.
pub fn open_stores(db: &sled::Db) -> StorageResult<(LogStore, StateMachineStore)> {
    let log = LogStore::new(db.clone()).map_err(read_err)?;
    let sm = StateMachineStore::new(db.clone())?;
    Ok((log, sm))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Builder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir>
        for Builder
    {
        async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(write_err)?;
            let db = open_db(dir.path()).map_err(write_err)?;
            let (log, sm) = open_stores(&db)?;
            Ok((dir, log, sm))
        }
    }

    /// The sled store passes openraft's storage conformance suite.
    #[test]
    fn passes_openraft_storage_suite() -> StorageResult<()> {
        openraft::testing::Suite::test_all(Builder)?;
        Ok(())
    }
}
