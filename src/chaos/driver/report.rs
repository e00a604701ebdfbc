//! What a chaos run produced: the episodes as they ran, the checker's
//! verdict, and the summary `minos chaos` prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chaos::checker::CheckReport;
use crate::chaos::history::Op;
use crate::chaos::schedule::{Capabilities, Fault};

/// One episode as it ran.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpisodeRecord {
    /// Index in the schedule.
    pub index: usize,
    /// The planned fault.
    pub fault: Fault,
    /// The fault with its targets resolved.
    pub resolved: String,
    /// When it was injected (ms since the run started).
    pub at_ms: u64,
    /// How long it was held (ms).
    pub held_ms: u64,
    /// How long the cluster took to be healthy again after the undo (ms).
    pub recovered_ms: Option<u64>,
    /// What went wrong injecting or undoing it.
    pub error: Option<String>,
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChaosReport {
    /// Seed.
    pub seed: u64,
    /// Backend name.
    pub backend: String,
    /// Faults injected on this run.
    pub faults: Capabilities,
    /// Faults asked for but not injectable by this backend.
    pub not_injected: Vec<String>,
    /// Episodes in the schedule.
    pub planned_episodes: usize,
    /// Episodes that ran.
    pub episodes: Vec<EpisodeRecord>,
    /// Fault actions taken (kill, restart, pause, resume, cut, heal).
    pub fault_actions: usize,
    /// Workload time (s).
    pub workload_s: f64,
    /// Problems that are not rule violations but fail the run (the cluster
    /// did not recover, a fault could not be injected).
    pub problems: Vec<String>,
    /// The checker's verdict.
    pub check: CheckReport,
    /// Every operation, by start time (not in the JSON report: it is large;
    /// `--history` writes it as JSON lines).
    #[serde(skip)]
    pub history: Vec<Op>,
}

impl ChaosReport {
    /// True when the checker found nothing and the cluster always recovered.
    pub fn passed(&self) -> bool {
        self.check.ok() && self.problems.is_empty()
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        self.summarize_episodes(&mut out);
        self.summarize_operations(&mut out);
        self.summarize_verdict(&mut out);
        out
    }

    /// The run, its episodes and the faults it could not inject.
    fn summarize_episodes(&self, out: &mut String) {
        let recovered: Vec<u64> = self
            .episodes
            .iter()
            .filter_map(|e| e.recovered_ms)
            .collect();
        let worst = recovered.iter().max().copied().unwrap_or(0);
        out.push_str(&format!(
            "chaos: seed {} backend {}: {} episodes run ({} planned), {} fault actions, {:.1} s of workload\n",
            self.seed,
            self.backend,
            self.episodes.len(),
            self.planned_episodes,
            self.fault_actions,
            self.workload_s
        ));
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &self.episodes {
            *kinds.entry(e.fault.kind_name()).or_default() += 1;
        }
        out.push_str(&format!(
            "chaos: faults by kind {kinds:?}; slowest recovery {worst} ms\n"
        ));
        if !self.not_injected.is_empty() {
            out.push_str(&format!(
                "chaos: NOT injected on this backend: {}\n",
                self.not_injected.join(", ")
            ));
        }
    }

    /// The counts of both workloads.
    fn summarize_operations(&self, out: &mut String) {
        let s = &self.check.stats;
        out.push_str(&format!(
            "chaos: {} operations: appends {} ok / {} failed / {} unknown ({} of the unknown applied); reads {} ok / {} not; {} final entries; {} epochs seen\n",
            s.ops,
            s.appends_ok,
            s.appends_failed,
            s.appends_unknown,
            s.unknown_applied,
            s.reads_ok,
            s.reads_not_ok,
            s.final_entries,
            s.epochs_seen
        ));
        let r = &s.register;
        out.push_str(&format!(
            "chaos: register: {} operations on {} sessions: sets {} ok / {} failed / {} unknown ({} of the unknown seen by a read); gets {} ok, table reads {} ok, {} reads not answered\n",
            r.ops,
            r.sessions,
            r.sets_ok,
            r.sets_failed,
            r.sets_unknown,
            r.unknown_sets_seen,
            r.gets_ok,
            r.table_reads_ok,
            r.reads_not_ok
        ));
    }

    /// The register checker's verdict, the problems and the violations.
    fn summarize_verdict(&self, out: &mut String) {
        let r = &self.check.stats.register;
        let verdict = if r.sessions_not_linearizable == 0 && r.sessions_undecided == 0 {
            "every session linearizable".to_string()
        } else {
            format!(
                "{} sessions NOT linearizable, {} undecided",
                r.sessions_not_linearizable, r.sessions_undecided
            )
        };
        out.push_str(&format!(
            "chaos: register checker (todc-utils WGL): {} operations checked over {} sessions in {} ms: {verdict}\n",
            r.ops_checked,
            r.sessions_linearizable + r.sessions_not_linearizable,
            r.check_ms
        ));
        for problem in &self.problems {
            out.push_str(&format!("chaos: PROBLEM: {problem}\n"));
        }
        if self.check.ok() {
            out.push_str("chaos: checker: 0 violations\n");
        } else {
            out.push_str(&format!(
                "chaos: checker: {} violations {:?}\n",
                self.check.total(),
                self.check.counts
            ));
            for v in &self.check.violations {
                out.push_str(&format!("  {v}"));
            }
        }
    }
}
