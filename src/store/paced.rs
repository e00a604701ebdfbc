//! A file written in paced steps: [`PacedFile`] syncs its data to disk every
//! [`SYNC_EVERY`] bytes instead of all at once at the end.
//!
//! Why: a snapshot of a million sessions is a file of about 265 MB. Written
//! whole into the page cache and synced at the end, its writeback is one
//! burst, and on ext4 (data=ordered) the log's small fsyncs that arrive
//! meanwhile wait for it: they are the appends a follower must answer
//! within a heartbeat. Measured on this project's 2-core machine
//! (`scripts/fsync-probe.py end` and `chunk`, four runs each: a 200-byte
//! append and fsync every 5 ms while a 265 MB file is written): the slowest
//! small fsync took 46-114 ms with one sync at the end and 27-39 ms with a
//! sync every 8 MiB.

use std::fs::File;
use std::io::{self, Write};

/// Bytes written between two syncs.
pub(super) const SYNC_EVERY: u64 = 8 << 20;

/// A file that calls `sync_data` after every [`SYNC_EVERY`] bytes written
/// to it; the caller still syncs it once at the end.
pub(super) struct PacedFile {
    file: File,
    unsynced: u64,
    /// Syncs made so far (the tests read it).
    pub(super) syncs: u64,
}

impl PacedFile {
    pub(super) fn new(file: File) -> Self {
        Self {
            file,
            unsynced: 0,
            syncs: 0,
        }
    }

    /// The file, for its final sync.
    pub(super) fn into_inner(self) -> File {
        self.file
    }
}

impl Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
            self.syncs += 1;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_once_per_step_and_keeps_every_byte() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        let mut out = PacedFile::new(File::create(&path).expect("create"));
        let chunk = vec![7u8; 1 << 20];
        let steps = 3;
        for _ in 0..(SYNC_EVERY >> 20) * steps + 1 {
            out.write_all(&chunk).expect("write");
        }
        assert_eq!(out.syncs, steps);
        drop(out.into_inner());
        let len = std::fs::metadata(&path).expect("metadata").len();
        assert_eq!(len, (SYNC_EVERY * steps) + (1 << 20));
    }
}
