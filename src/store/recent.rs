//! The last log entries appended, kept decoded beside the log.
//!
//! openraft reads every entry back from the log store after appending it:
//! the leader once for each follower it replicates to, and every node once
//! more to apply it when it is committed. Decoding an entry of a mass
//! failover's moves from sled each time was a fifth of the leader's CPU
//! during the failover. These entries are always the log's tail: an
//! append that does not follow the last one starts them anew, a
//! truncation drops from their end, a purge from their front, and the
//! oldest go once they hold more than [`MAX_BYTES`] (encoded) or
//! [`MAX_ENTRIES`]. A read that starts before the first of them goes to
//! sled.

use std::collections::VecDeque;

use openraft::Entry;

use crate::wire::TypeConfig;

/// Encoded bytes of the entries kept, at most (their decoded form is a few
/// times larger).
pub(super) const MAX_BYTES: usize = 4 << 20;
/// Entries kept, at most.
pub(super) const MAX_ENTRIES: usize = 1024;

/// The log's last entries, each with its encoded size.
#[derive(Default)]
pub(super) struct Recent {
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// `entry` was appended to the log (`size`: its encoded bytes).
    pub(super) fn appended(&mut self, entry: Entry<TypeConfig>, size: usize) {
        let index = entry.log_id.index;
        if self.last_index().is_some_and(|last| last + 1 != index) {
            self.entries.clear();
            self.bytes = 0;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.bytes > MAX_BYTES || self.entries.len() > MAX_ENTRIES {
            let Some((_, size)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// The log's entries from `index` on were deleted.
    pub(super) fn truncated(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// The log's entries up to `index` were purged.
    pub(super) fn purged(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// The entries from `start` on while `wanted` holds for their index,
    /// when `start` is one of the entries kept; `None` otherwise (the log
    /// must be read).
    pub(super) fn get(
        &self,
        start: u64,
        wanted: impl Fn(u64) -> bool,
    ) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first || start > last {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .map(|(e, _)| e)
                .take_while(|e| wanted(e.log_id.index))
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Entries appended after truncating from this far behind the end.
        Append {
            back: u64,
            count: u64,
            size: usize,
        },
        Truncate {
            back: u64,
        },
        Purge {
            ahead: u64,
        },
        Read {
            start: u64,
            len: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u64, 1..40u64, 1..300_000usize).prop_map(|(back, count, size)| Op::Append {
                back,
                count,
                size
            }),
            (0..10u64).prop_map(|back| Op::Truncate { back }),
            (0..10u64).prop_map(|ahead| Op::Purge { ahead }),
            (0..200u64, 0..50u64).prop_map(|(start, len)| Op::Read { start, len }),
        ]
    }

    proptest! {
        /// Whatever it answers is what the log (a map here, with the same
        /// appends, truncations and purges as openraft makes) holds.
        #[test]
        fn what_it_answers_is_the_log(ops in prop::collection::vec(op(), 1..80)) {
            let mut log: BTreeMap<u64, u64> = BTreeMap::new();
            let mut recent = Recent::default();
            let mut term = 1;
            for op in ops {
                let end = log.keys().next_back().map_or(0, |l| l + 1);
                match op {
                    Op::Append { back, count, size } => {
                        let from = end.saturating_sub(back);
                        if from < end {
                            log.retain(|i, _| *i < from);
                            recent.truncated(from);
                        }
                        term += 1;
                        for index in from..from + count {
                            log.insert(index, term);
                            recent.appended(entry(term, index), size);
                        }
                    }
                    Op::Truncate { back } => {
                        let from = end.saturating_sub(back);
                        log.retain(|i, _| *i < from);
                        recent.truncated(from);
                    }
                    Op::Purge { ahead } => {
                        if let Some(first) = log.keys().next().copied() {
                            let upto = first + ahead;
                            log.retain(|i, _| *i > upto);
                            recent.purged(upto);
                        }
                    }
                    Op::Read { start, len } => {
                        if let Some(got) = recent.get(start, |i| i < start + len) {
                            let want: Vec<(u64, u64)> = log
                                .range(start..start + len)
                                .map(|(i, t)| (*i, *t))
                                .collect();
                            let got: Vec<(u64, u64)> = got
                                .iter()
                                .map(|e| (e.log_id.index, e.log_id.leader_id.term))
                                .collect();
                            prop_assert_eq!(got, want);
                        }
                    }
                }
                prop_assert!(recent.bytes <= MAX_BYTES.max(300_000));
                prop_assert!(recent.entries.len() <= MAX_ENTRIES);
                let kept: usize = recent.entries.iter().map(|(_, s)| s).sum();
                prop_assert_eq!(kept, recent.bytes);
            }
        }
    }

    #[test]
    fn a_read_from_before_the_first_kept_entry_goes_to_the_log() {
        let mut recent = Recent::default();
        for index in 5..10 {
            recent.appended(entry(1, index), 10);
        }
        assert!(recent.get(4, |_| true).is_none());
        assert!(recent.get(10, |_| true).is_none());
        let got = recent.get(6, |i| i < 8).expect("kept");
        let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![6, 7]);
        // An append that does not follow the last entry starts anew.
        recent.appended(entry(2, 20), 10);
        assert!(recent.get(9, |_| true).is_none());
        assert_eq!(recent.get(20, |_| true).map(|v| v.len()), Some(1));
    }

    #[test]
    fn the_oldest_go_past_the_byte_bound() {
        let mut recent = Recent::default();
        for index in 0..10 {
            recent.appended(entry(1, index), MAX_BYTES / 4);
        }
        assert_eq!(recent.entries.len(), 4);
        assert_eq!(recent.first_index(), Some(6));
    }
}
