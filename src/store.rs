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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use self::paced::PacedFile;
use crate::model::{Command, CommandResult, NodeId, Proposal};
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
    /// The first index not purged: entries below it may still be in `log`
    /// while a purge deletes them in the background, and are never read.
    kept_from: Arc<std::sync::atomic::AtomicU64>,
    /// The log's last entries, decoded (`recent.rs`); changed under its
    /// lock together with `log`, so a reader sees both or neither.
    recent: Arc<Mutex<recent::Recent>>,
}

impl LogStore {
    /// Opens the log trees of `db`.
    pub fn new(db: sled::Db) -> Result<Self, sled::Error> {
        let meta = db.open_tree("meta")?;
        let last_purged: Option<LogId<NodeId>> = meta
            .get(KEY_LAST_PURGED)?
            .and_then(|bytes| bincode::deserialize(&bytes).ok());
        Ok(Self {
            log: db.open_tree("log")?,
            meta,
            db,
            kept_from: Arc::new(last_purged.map_or(0, |id| id.index + 1).into()),
            recent: Arc::default(),
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
        }
        .max(self.kept_from.load(std::sync::atomic::Ordering::Acquire));
        if let Some(entries) = self
            .recent
            .lock()
            .recover()
            .get(start, |i| range.contains(&i))
        {
            return Ok(entries);
        }
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
        let mut appended = Vec::new();
        for entry in entries {
            let bytes = encode(&entry)?;
            let size = bytes.len();
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
            appended.push((entry, size));
        }
        {
            let mut recent = self.recent.lock().recover();
            self.log.apply_batch(batch).map_err(write_err)?;
            for (entry, size) in appended {
                recent.appended(entry, size);
            }
        }
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
        {
            let mut recent = self.recent.lock().recover();
            self.log.apply_batch(batch).map_err(write_err)?;
            recent.truncated(log_id.index);
        }
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first, so a crash in between leaves no hole.
        self.meta
            .insert(KEY_LAST_PURGED, encode(&log_id)?)
            .map_err(write_err)?;
        self.flush().await?;
        self.kept_from
            .fetch_max(log_id.index + 1, std::sync::atomic::Ordering::AcqRel);
        self.recent.lock().recover().purged(log_id.index);
        // The entries go on a blocking thread, in chunks: openraft's core
        // waits for `purge`, and deleting the tens of thousands of entries
        // between two snapshots of a large table in one batch held it (and a
        // worker) past the AppendEntries timeout, so followers campaigned.
        // What a crash leaves behind is below `kept_from`, never read, and
        // deleted by the next purge (which starts from the first key).
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || delete_through(&log, log_id.index));
        Ok(())
    }
}

/// Log entries deleted per batch by a purge.
const PURGE_CHUNK: usize = 1024;

/// Deletes the log entries at and below `upto`, [`PURGE_CHUNK`] at a time.
fn delete_through(log: &sled::Tree, upto: u64) {
    loop {
        let keys: Result<Vec<sled::IVec>, _> = log
            .range(..=upto.to_be_bytes())
            .keys()
            .take(PURGE_CHUNK)
            .collect();
        let keys = match keys {
            Ok(keys) if keys.is_empty() => return,
            Ok(keys) => keys,
            Err(e) => return tracing::warn!(error = %e, "purging the log: left for the next purge"),
        };
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key);
        }
        if let Err(e) = log.apply_batch(batch) {
            return tracing::warn!(error = %e, "purging the log: left for the next purge");
        }
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
    /// Changed sessions, for watchers (filled only while someone watches).
    updates: broadcast::Sender<Update>,
}

/// What a watcher of sessions hears after entries are applied.
#[derive(Clone, Debug)]
pub enum Update {
    /// These sessions changed; each as it is now (`None`: deleted).
    Sessions(Arc<Vec<(crate::model::SessionId, Option<Arc<crate::model::Session>>)>>),
    /// The whole table was replaced (a snapshot was installed): look again.
    Reset,
}

/// Updates a watcher may fall behind by before it is told it lagged.
const UPDATES_BUFFERED: usize = 1024;

/// Changed sessions remembered for the runtime before it is told to look at
/// the whole table instead (bounds the memory of a reader that fell behind).
/// A mass failover of a third of a million sessions stays below it: the
/// runtime then looks at the moved sessions, in chunks, not at the table.
const MAX_TRACKED_CHANGES: usize = 4 * 1024 * 1024;

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

    /// Hears what changed from now on (see [`Update`]). A receiver that
    /// falls more than a thousand applies behind gets `Lagged` and must
    /// look again; it never holds up the writers.
    pub fn watch_updates(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
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
        let _ = self.updates.send(Update::Reset);
        self.applied_tx.send_replace(index);
    }
}

/// openraft's state machine: applies entries to [`ClusterState`] and keeps
/// its snapshot in a file of its own (`snapshot.bin` in the data
/// directory), written off the async workers: a snapshot of a large table
/// never shares sled's flush with the log appends, which must answer
/// within a heartbeat.
#[derive(Clone)]
pub struct StateMachineStore {
    view: StateView,
    /// The snapshot file.
    file: Arc<PathBuf>,
}

/// Name of the snapshot file in a node's data directory.
const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The snapshot file: the length of the metadata (8 bytes, big-endian), the
/// metadata (bincode), then the data, which `data` writes (straight into
/// the file: the encoding of a large table is never held whole in memory;
/// it was, twice over while its buffer grew, and a node of a million
/// sessions went from 560 MiB to 1.1 GiB during each snapshot). Written to
/// a temporary file, synced as it grows ([`paced`]) and at the end, and
/// renamed, so a crash leaves the old one.
fn write_snapshot_file(
    path: &Path,
    meta: &[u8],
    data: impl FnOnce(&mut std::io::BufWriter<PacedFile>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let file = PacedFile::new(std::fs::File::create(&tmp)?);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(meta.len() as u64).to_be_bytes())?;
    out.write_all(meta)?;
    data(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?.into_inner();
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the snapshot file: its metadata and data (`None`: there is none).
fn read_snapshot_file(path: &Path) -> StorageResult<Option<StoredSnapshot>> {
    use std::io::Read;
    let Some((meta, mut input)) = open_snapshot(path)? else {
        return Ok(None);
    };
    let mut data = Vec::new();
    input.read_to_end(&mut data).map_err(read_err)?;
    Ok(Some(StoredSnapshot { meta, data }))
}

/// The snapshot file opened at its data, with its metadata read (`None`:
/// there is none). A length of metadata beyond the file is refused before
/// anything is allocated for it.
fn open_snapshot(
    path: &Path,
) -> StorageResult<
    Option<(
        SnapshotMeta<NodeId, openraft::BasicNode>,
        impl std::io::Read,
    )>,
> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let size = file.metadata().map_err(read_err)?.len();
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    let mut len = [0u8; 8];
    input.read_exact(&mut len).map_err(read_err)?;
    let meta_len = u64::from_be_bytes(len);
    if meta_len > size.saturating_sub(8) {
        return Err(read_err(std::io::Error::other(
            "snapshot file is truncated",
        )));
    }
    let mut meta = vec![0u8; meta_len as usize];
    input.read_exact(&mut meta).map_err(read_err)?;
    Ok(Some((decode(&meta)?, input)))
}

/// The table of the snapshot file, decoded as the file is read (its data
/// is never held whole in memory: a restart of a large table did, twice).
fn read_snapshot_table(path: &Path) -> StorageResult<Option<Applied>> {
    match open_snapshot(path)? {
        Some((_, input)) => decode_applied(input).map(Some),
        None => Ok(None),
    }
}

/// Moves in an entry after whose apply the state machine yields to the
/// runtime's other tasks (heartbeats, renewals, reads).
const YIELD_AFTER_MOVES: usize = 256;

/// Sessions an entry moves (the bulk of a large entry's apply time).
fn entry_weight(payload: &EntryPayload<TypeConfig>) -> usize {
    let EntryPayload::Normal(proposal) = payload else {
        return 0;
    };
    let commands = match proposal {
        Proposal::V1 { commands, .. } | Proposal::V2 { commands, .. } => commands,
    };
    commands
        .iter()
        .map(|command| match command {
            Command::Reassign { moves } | Command::Relocate { moves, .. } => moves.len(),
            Command::Handoff { moves, .. } => moves.len(),
            _ => 1,
        })
        .sum()
}

/// Runs a snapshot's encoding or decoding and its file I/O on a thread of
/// its own at a lower CPU priority (nice 10): on a busy machine a snapshot
/// of a large table must not starve the workers that answer AppendEntries
/// within a heartbeat (seen: 450 terms while a million sessions loaded).
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("minos-snapshot".into())
        .spawn(move || {
            // SAFETY: setpriority and gettid have no memory effects; on
            // Linux a thread id names this thread only.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            let _ = done.send(work());
        })
        .map_err(write_err)?;
    result
        .await
        .map_err(|e| write_err(std::io::Error::other(e.to_string())))?
}

/// Runs blocking work (encoding, file I/O) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| write_err(std::io::Error::other(e.to_string())))?
}

mod legacy;
mod paced;
mod recent;

/// The tag in front of a snapshot's data since placement constraints (the
/// format version 3 of [`Applied`]). Data without it is the version 2
/// format (bincode of [`Applied`] as it was): its first 8 bytes are the
/// number of nodes, never this text.
const SNAPSHOT_TAG: &[u8; 16] = b"minos-snapshot-3";

/// A snapshot's data, into `out`: the tag, then the bincode of the
/// [`Applied`] (or of its copy, which encodes the same).
fn write_applied<T: Serialize>(out: &mut impl std::io::Write, applied: &T) -> std::io::Result<()> {
    out.write_all(SNAPSHOT_TAG)?;
    bincode::serialize_into(out, applied).map_err(std::io::Error::other)
}

/// Reads a snapshot's data from `input` in its format: this version's
/// (tagged), or the untagged version 2 one, converted.
fn decode_applied(mut input: impl std::io::Read) -> StorageResult<Applied> {
    use std::io::Read;
    let mut tag = Vec::with_capacity(SNAPSHOT_TAG.len());
    (&mut input)
        .take(SNAPSHOT_TAG.len() as u64)
        .read_to_end(&mut tag)
        .map_err(read_err)?;
    if tag == SNAPSHOT_TAG.as_slice() {
        return bincode::deserialize_from(input).map_err(read_err);
    }
    let v2: legacy::AppliedV2 =
        bincode::deserialize_from(std::io::Cursor::new(tag).chain(input)).map_err(read_err)?;
    Ok(v2.into())
}

/// What a snapshot holds, copied from [`Applied`] in O(number of nodes)
/// (the sessions map is persistent); serializes exactly as [`Applied`].
#[derive(Serialize)]
struct AppliedCopy {
    state: crate::state::TableCopy,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
}

impl StateMachineStore {
    /// Opens the state machine of `db` (data directory `dir`), starting
    /// from its last snapshot. A snapshot kept in sled by an earlier
    /// version is read once and moved to the file.
    pub fn new(db: sled::Db, dir: &Path) -> StorageResult<Self> {
        let file = dir.join(SNAPSHOT_FILE);
        let legacy = db.open_tree("snapshot").map_err(read_err)?;
        if let Some(bytes) = legacy.get(KEY_SNAPSHOT).map_err(read_err)? {
            // Written by a version that kept no placement history.
            let old: StoredSnapshot = decode(&bytes)?;
            let current = open_snapshot(&file)?.map(|(meta, _)| meta);
            let newer = current.is_some_and(|meta| meta.last_log_id >= old.meta.last_log_id);
            if !newer {
                let applied: Applied = decode::<legacy::AppliedV1>(&old.data)?.into();
                write_snapshot_file(&file, &encode(&old.meta)?, |out| {
                    write_applied(out, &applied)
                })
                .map_err(write_err)?;
            }
            legacy.remove(KEY_SNAPSHOT).map_err(write_err)?;
        }
        let applied = read_snapshot_table(&file)?.unwrap_or_default();
        let index = applied.last_applied.map(|id| id.index).unwrap_or(0);
        let (applied_tx, _) = watch::channel(index);
        Ok(Self {
            view: StateView {
                data: Arc::new(RwLock::new(applied)),
                applied_tx: Arc::new(applied_tx),
                changes: Arc::new(Mutex::new(Changes::default())),
                updates: broadcast::channel(UPDATES_BUFFERED).0,
            },
            file: Arc::new(file),
        })
    }

    /// The shared read view.
    pub fn view(&self) -> StateView {
        self.view.clone()
    }

    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Arc<Vec<u8>>,
    ) -> StorageResult<()> {
        let meta = encode(meta)?;
        let file = self.file.clone();
        in_background(move || {
            write_snapshot_file(&file, &meta, |out| std::io::Write::write_all(out, &data))
                .map_err(write_err)
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    /// The data goes straight into the snapshot file; the snapshot handed
    /// back carries its metadata and no data: openraft 0.9 keeps only the
    /// metadata of a snapshot it had built (`sm/worker.rs`, `build_snapshot`)
    /// and sends a follower the file, through `get_current_snapshot`.
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // The copy under the lock is O(nodes); encoding and writing happen
        // after it is released, on a thread of their own, while entries apply.
        let copy = self.view.read(|applied| AppliedCopy {
            state: applied.state.copy(),
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
        });
        // Its data is not known before it is written: a snapshot is named by
        // its last entry (two at one index hold the same table).
        let snapshot_id = match copy.last_applied {
            Some(id) => format!("{}-{}", id.leader_id.term, id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: copy.last_applied,
            last_membership: copy.membership.clone(),
            snapshot_id,
        };
        let encoded = encode(&meta)?;
        let file = self.file.clone();
        let started = std::time::Instant::now();
        let bytes = in_background(move || {
            write_snapshot_file(&file, &encoded, |out| write_applied(out, &copy))
                .map_err(write_err)?;
            Ok(std::fs::metadata(&*file).map_or(0, |m| m.len()))
        })
        .await?;
        tracing::info!(
            id = %meta.snapshot_id,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
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
        let watched = self.view.updates.receiver_count() > 0;
        let mut last_index = self.view.applied_index();
        // One entry per hold of the lock, and a yield after each large one:
        // a batch of mass moves (tens of thousands) applied under one hold
        // kept the runtime's workers from answering heartbeats (readers of
        // the view block their thread), so a busy survivor of a mass
        // failover campaigned and deposed the leader. Readers between two
        // entries see a prefix of the log, as after a shorter batch.
        for entry in entries {
            let weight = entry_weight(&entry.payload);
            {
                let mut applied = self.view.data.write().recover();
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Vec::new()),
                    EntryPayload::Normal(proposal) => {
                        let index = entry.log_id.index;
                        responses.push(applied.state.apply_entry(&proposal, index, &mut changes))
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        responses.push(Vec::new());
                    }
                }
            }
            last_index = entry.log_id.index;
            if weight >= YIELD_AFTER_MOVES {
                tokio::task::yield_now().await;
            }
        }
        let mut update = None;
        if watched && !changes.sessions.is_empty() {
            let rows = self.view.read(|applied| {
                changes
                    .sessions
                    .keys()
                    .map(|id| (id.clone(), applied.state.sessions.get(id).cloned()))
                    .collect()
            });
            update = Some(Update::Sessions(Arc::new(rows)));
        }
        if let Some(update) = update {
            let _ = self.view.updates.send(update);
        }
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
        let data = Arc::new(snapshot.into_inner());
        let decoded = data.clone();
        let applied: Applied = in_background(move || decode_applied(decoded.as_slice())).await?;
        self.save_snapshot(meta, data).await?;
        self.view.replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let file = self.file.clone();
        Ok(blocking(move || read_snapshot_file(&file))
            .await?
            .map(|stored| Snapshot {
                meta: stored.meta,
                snapshot: Box::new(Cursor::new(stored.data)),
            }))
    }
}

/// Opens both halves of a node's storage on one database (in data
/// directory `dir`).
pub fn open_stores(db: &sled::Db, dir: &Path) -> StorageResult<(LogStore, StateMachineStore)> {
    let log = LogStore::new(db.clone()).map_err(read_err)?;
    let sm = StateMachineStore::new(db.clone(), dir)?;
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
            let (log, sm) = open_stores(&db, dir.path())?;
            Ok((dir, log, sm))
        }
    }

    /// A purge answers at once and deletes in the background: from the
    /// moment it returns no entry at or below its point is read (also by a
    /// store opened again), and the entries are gone from sled soon after.
    #[tokio::test]
    async fn a_purge_hides_its_entries_at_once_and_deletes_them_in_the_background() {
        use openraft::entry::RaftEntry;
        let dir = tempfile::tempdir().expect("dir");
        let db = open_db(dir.path()).expect("db");
        let (mut log, _sm) = open_stores(&db, dir.path()).expect("stores");
        let id = |index| LogId::new(openraft::CommittedLeaderId::new(1, 1), index);
        for index in 1..=5000u64 {
            let entry = Entry::<TypeConfig>::new_blank(id(index));
            let bytes = encode(&entry).expect("encode");
            log.log.insert(index.to_be_bytes(), bytes).expect("insert");
        }
        log.purge(id(4000)).await.expect("purge");
        let read = log.try_get_log_entries(0..=5000).await.expect("read");
        assert_eq!(read.first().map(|e| e.log_id.index), Some(4001));
        assert_eq!(read.len(), 1000);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(id(4000)));
        assert_eq!(state.last_log_id, Some(id(5000)));
        let mut reopened = LogStore::new(db.clone()).expect("reopen");
        let again = reopened.try_get_log_entries(..).await.expect("read");
        assert_eq!(again.first().map(|e| e.log_id.index), Some(4001));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while log.log.len() > 1000 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} entries left",
                log.log.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            log.log.first().expect("first").map(|(k, _)| k.to_vec()),
            Some(4001u64.to_be_bytes().to_vec())
        );
    }

    /// A snapshot is encoded from a copy taken in O(nodes); it must be the
    /// very bytes of the state it copies, or a restart would read garbage.
    #[test]
    fn a_snapshot_copy_encodes_as_the_state_it_copies() {
        use crate::model::{Command, Proposal, SessionId, SessionKind, StateJson};
        let mut applied = Applied::default();
        let mut commands = vec![Command::AddNode {
            id: 1,
            addr: "127.0.0.1:7101".into(),
        }];
        for n in 0..50 {
            commands.push(Command::CreateSession {
                id: SessionId::new(format!("s{n}")).expect("id"),
                kind: SessionKind::new("kv").expect("kind"),
                state: StateJson::from_value(&serde_json::json!({ "n": n })),
                owner: (n % 3 != 0).then_some(1),
            });
        }
        applied.state.apply(&Proposal::V1 {
            at: chrono::Utc::now(),
            commands,
        });
        let copy = AppliedCopy {
            state: applied.state.copy(),
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
        };
        let bytes = encode(&copy).expect("encode");
        assert_eq!(bytes, encode(&applied).expect("encode"));
        let back: Applied = decode(&bytes).expect("decode");
        assert_eq!(back.state, applied.state);
    }

    /// A data directory of the earlier version (snapshot as a sled value,
    /// sessions without history) opens: the snapshot is read in its old
    /// format, moved to the snapshot file, and removed from sled.
    #[test]
    fn a_snapshot_kept_in_sled_by_an_earlier_version_is_moved_to_the_file() {
        #[derive(Serialize)]
        struct OldSession {
            id: String,
            kind: String,
            owner: Option<NodeId>,
            epoch: u64,
            version: u64,
            state: String,
            created_at: chrono::DateTime<chrono::Utc>,
            updated_at: chrono::DateTime<chrono::Utc>,
            calls: Vec<crate::model::RecordedCall>,
        }
        #[derive(Serialize)]
        struct OldTable {
            nodes: std::collections::BTreeMap<NodeId, crate::model::NodeInfo>,
            sessions: std::collections::BTreeMap<String, OldSession>,
            last_epoch: u64,
        }
        #[derive(Serialize)]
        struct OldApplied {
            state: OldTable,
            last_applied: Option<LogId<NodeId>>,
            membership: StoredMembership<NodeId, openraft::BasicNode>,
        }
        let now = chrono::Utc::now();
        let old = OldApplied {
            state: OldTable {
                nodes: Default::default(),
                sessions: [(
                    "old-1".to_string(),
                    OldSession {
                        id: "old-1".into(),
                        kind: "kv".into(),
                        owner: None,
                        epoch: 7,
                        version: 3,
                        state: "{\"n\":3}".into(),
                        created_at: now,
                        updated_at: now,
                        calls: Vec::new(),
                    },
                )]
                .into(),
                last_epoch: 7,
            },
            last_applied: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 42)),
            membership: StoredMembership::default(),
        };
        let meta = SnapshotMeta {
            last_log_id: old.last_applied,
            last_membership: StoredMembership::default(),
            snapshot_id: "old".into(),
        };
        let dir = tempfile::tempdir().expect("dir");
        let db = open_db(dir.path()).expect("db");
        let stored = StoredSnapshot {
            meta,
            data: encode(&old).expect("encode"),
        };
        db.open_tree("snapshot")
            .expect("tree")
            .insert(KEY_SNAPSHOT, encode(&stored).expect("encode"))
            .expect("insert");
        let sm = StateMachineStore::new(db.clone(), dir.path()).expect("open");
        let session = sm.view().read(|a| {
            assert_eq!(a.last_applied.map(|l| l.index), Some(42));
            a.state.sessions.values().next().cloned()
        });
        let session = session.expect("the old session is there");
        assert_eq!((session.epoch.0, session.version), (7, 3));
        assert_eq!(session.state.as_str(), "{\"n\":3}");
        assert!(session.history.is_empty());
        assert!(dir.path().join(SNAPSHOT_FILE).exists());
        assert!(db
            .open_tree("snapshot")
            .expect("tree")
            .get(KEY_SNAPSHOT)
            .expect("get")
            .is_none());
        // Opened again, it reads the file.
        drop(sm);
        let again = StateMachineStore::new(db, dir.path()).expect("open again");
        assert_eq!(again.view().read(|a| a.state.sessions.len()), 1);
    }

    /// A snapshot file of the version before placement constraints (data
    /// without the format tag; nodes without traits, sessions without a
    /// placement) opens with everything in it, and the next snapshot is
    /// written in the tagged format and reads back the same.
    #[tokio::test]
    async fn a_snapshot_file_of_the_version_before_constraints_opens() {
        use crate::model::{Placement, RecordedCall};
        #[derive(Serialize)]
        struct NodeV2 {
            id: NodeId,
            addr: String,
            status: crate::model::NodeStatus,
            since: chrono::DateTime<chrono::Utc>,
        }
        #[derive(Serialize)]
        struct SessionV2 {
            id: String,
            kind: String,
            owner: Option<NodeId>,
            epoch: u64,
            version: u64,
            state: String,
            created_at: chrono::DateTime<chrono::Utc>,
            updated_at: chrono::DateTime<chrono::Utc>,
            calls: Vec<RecordedCall>,
            history: Vec<Placement>,
        }
        #[derive(Serialize)]
        struct TableV2 {
            nodes: std::collections::BTreeMap<NodeId, NodeV2>,
            sessions: std::collections::BTreeMap<String, SessionV2>,
            last_epoch: u64,
            events: Vec<crate::state::Event>,
            last_event: u64,
            events_dropped_through: u64,
        }
        #[derive(Serialize)]
        struct AppliedV2 {
            state: TableV2,
            last_applied: Option<LogId<NodeId>>,
            membership: StoredMembership<NodeId, openraft::BasicNode>,
        }
        let now = chrono::Utc::now();
        let placement = Placement {
            seq: 4,
            index: 40,
            at: now,
            epoch: crate::model::Epoch(9),
            from: Some(2),
            to: Some(1),
            reason: crate::model::MoveReason::NodeDown,
            detected: None,
        };
        let session = SessionV2 {
            id: "game-1".into(),
            kind: "kv".into(),
            owner: Some(1),
            epoch: 9,
            version: 5,
            state: "{\"n\":5}".into(),
            created_at: now,
            updated_at: now,
            calls: Vec::new(),
            history: vec![placement.clone()],
        };
        let event = crate::state::Event {
            session: crate::model::SessionId::new("game-1").expect("id"),
            placement,
        };
        let node = NodeV2 {
            id: 1,
            addr: "127.0.0.1:7101".into(),
            status: crate::model::NodeStatus::Up,
            since: now,
        };
        let old = AppliedV2 {
            state: TableV2 {
                nodes: [(1, node)].into(),
                sessions: [("game-1".to_string(), session)].into(),
                last_epoch: 9,
                events: vec![event],
                last_event: 4,
                events_dropped_through: 0,
            },
            last_applied: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 40)),
            membership: StoredMembership::default(),
        };
        let meta = SnapshotMeta::<NodeId, openraft::BasicNode> {
            last_log_id: old.last_applied,
            last_membership: StoredMembership::default(),
            snapshot_id: "v2".into(),
        };
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join(SNAPSHOT_FILE);
        let data = encode(&old).expect("encode");
        write_snapshot_file(&file, &encode(&meta).expect("meta"), |out| {
            std::io::Write::write_all(out, &data)
        })
        .expect("write");
        let db = open_db(dir.path()).expect("db");
        let mut sm = StateMachineStore::new(db.clone(), dir.path()).expect("open");
        let (state, index) = sm.view().read(|a| (a.state.clone(), a.last_applied));
        assert_eq!(index.map(|l| l.index), Some(40));
        let session = &state.sessions[&crate::model::SessionId::new("game-1").expect("id")];
        assert_eq!(
            (session.epoch.0, session.version, session.owner),
            (9, 5, Some(1))
        );
        assert_eq!(session.history.len(), 1);
        assert!(session.placement.is_empty());
        assert_eq!(state.nodes[&1].traits, crate::model::NodeTraits::default());
        assert_eq!((state.events.len(), state.last_event), (1, 4));
        assert_eq!(state.count_of(Some(1)), 1);
        // The next snapshot is tagged, and reads back as the same table.
        sm.build_snapshot().await.expect("snapshot");
        let written = read_snapshot_file(&file).expect("read").expect("there");
        assert!(written.data.starts_with(SNAPSHOT_TAG));
        drop(sm);
        let again = StateMachineStore::new(db, dir.path()).expect("open again");
        assert_eq!(again.view().read(|a| a.state.clone()), state);
    }

    /// A snapshot file cut short, or claiming more metadata than it holds,
    /// fails to open with an error (no panic, no allocation of the claimed
    /// length); a whole one opens to the table it was written from.
    #[tokio::test]
    async fn a_damaged_snapshot_file_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let db = open_db(dir.path()).expect("db");
        let mut sm = StateMachineStore::new(db.clone(), dir.path()).expect("open");
        let mut state = ClusterState::default();
        state
            .apply_command(
                &Command::AddNode {
                    id: 1,
                    addr: "127.0.0.1:7001".into(),
                },
                chrono::Utc::now(),
            )
            .expect("add");
        sm.view.replace(Applied {
            state,
            ..Applied::default()
        });
        sm.build_snapshot().await.expect("snapshot");
        let file = dir.path().join(SNAPSHOT_FILE);
        let whole = std::fs::read(&file).expect("read");
        let opened = read_snapshot_table(&file).expect("whole").expect("there");
        assert_eq!(opened.state.nodes.len(), 1);
        let mut huge = whole.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        for (what, bytes) in [("cut", &whole[..whole.len() - 3]), ("huge", &huge[..])] {
            std::fs::write(&file, bytes).expect("write");
            assert!(read_snapshot_table(&file).is_err(), "{what} opened");
            assert!(
                StateMachineStore::new(db.clone(), dir.path()).is_err(),
                "{what}"
            );
        }
    }

    /// The log format only gains variants: every command an earlier
    /// version wrote keeps its bincode variant index, so its entries decode.
    #[test]
    fn earlier_commands_keep_their_variant_index() {
        use crate::model::{Command, MoveReason, SessionId};
        let id = || SessionId::new("s").expect("id");
        let commands = [
            (
                0u32,
                Command::AddNode {
                    id: 1,
                    addr: "a".into(),
                },
            ),
            (1, Command::RemoveNode { id: 1 }),
            (2, Command::NodeDown { id: 1 }),
            (3, Command::NodeUp { id: 1 }),
            (4, Command::Drain { id: 1 }),
            (7, Command::Reassign { moves: Vec::new() }),
            (8, Command::DeleteSession { id: id() }),
            (
                11,
                Command::Relocate {
                    moves: Vec::new(),
                    reason: MoveReason::Drain,
                    detected: None,
                },
            ),
            (
                14,
                Command::Handoff {
                    moves: Vec::new(),
                    reason: MoveReason::Rebalance,
                },
            ),
        ];
        for (index, command) in commands {
            let bytes = encode(&command).expect("encode");
            assert_eq!(bytes[..4], index.to_le_bytes(), "{command:?}");
            assert_eq!(decode::<Command>(&bytes).expect("decode"), command);
        }
    }

    /// The sled store passes openraft's storage conformance suite.
    #[test]
    fn passes_openraft_storage_suite() -> StorageResult<()> {
        openraft::testing::Suite::test_all(Builder)?;
        Ok(())
    }
}
