//! The fault schedule: a list of episodes (quiet gap, one fault, how long it
//! is held) generated from a seed. The same seed and options give the same
//! list; targets named by role (`leader`, `follower #k`) are resolved against
//! the live cluster when the episode starts, and the driver prints the
//! resolution.
//!
//! Three faults wait for the workload instead of a quiet moment: they strike
//! a few milliseconds after a client sent a write, so writes are in flight
//! when the leader dies or freezes, or when a session's owner dies. Every
//! third episode is one of them (when the backend can inject them).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;
use crate::model::NodeId;

/// A node named by role or by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The current Raft leader.
    Leader,
    /// The k-th node (modulo their number) that is not the leader.
    Follower(u8),
    /// A fixed node.
    Node(NodeId),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(f, "leader"),
            Target::Follower(k) => write!(f, "follower#{k}"),
            Target::Node(n) => write!(f, "node {n}"),
        }
    }
}

/// What kinds of fault a backend can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// SIGKILL (or `docker kill -s KILL`) and restart.
    pub kill: bool,
    /// SIGSTOP/SIGCONT (or `docker pause`/`unpause`).
    pub pause: bool,
    /// Cut one node off from every peer (clients still reach it).
    pub isolate: bool,
    /// Cut the link between two nodes only (a partial partition).
    pub cut: bool,
}

impl Capabilities {
    /// Everything.
    pub const ALL: Capabilities = Capabilities {
        kill: true,
        pause: true,
        isolate: true,
        cut: true,
    };

    /// The faults both `self` and `other` allow.
    pub fn and(self, other: Capabilities) -> Capabilities {
        Capabilities {
            kill: self.kill && other.kill,
            pause: self.pause && other.pause,
            isolate: self.isolate && other.isolate,
            cut: self.cut && other.cut,
        }
    }

    /// Parses `kill,pause,isolate,cut` (or `all`).
    pub fn parse(text: &str) -> Result<Capabilities, String> {
        let mut caps = Capabilities {
            kill: false,
            pause: false,
            isolate: false,
            cut: false,
        };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => caps = Capabilities::ALL,
                "kill" => caps.kill = true,
                "pause" => caps.pause = true,
                "isolate" | "partition" => caps.isolate = true,
                "cut" | "partial" => caps.cut = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (kill, pause, isolate, cut, all)"
                    ))
                }
            }
        }
        Ok(caps)
    }

    /// The faults that are off, by name (for the "not injected" report).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.kill {
            missing.push("kill/restart");
        }
        if !self.pause {
            missing.push("pause (SIGSTOP)");
        }
        if !self.isolate {
            missing.push("full partition (isolate)");
        }
        if !self.cut {
            missing.push("partial partition (cut one link)");
        }
        missing
    }
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// SIGKILL, restarted when the hold ends.
    Kill(Target),
    /// SIGKILL two nodes (no quorum), both restarted when the hold ends.
    KillTwo(Target, Target),
    /// Freeze the process (longer than a lease), then resume it.
    Pause(Target),
    /// Cut the node off from every peer; clients still reach it.
    Isolate(Target),
    /// Cut the link between a follower and the leader only: the follower
    /// still reaches the third node, and clients reach everyone.
    CutFromLeader(Target),
    /// Cut the link between two nodes.
    Cut(Target, Target),
    /// SIGKILL the leader `delay_ms` after a client sent a write (writes
    /// are in flight), restarted when the hold ends.
    KillLeaderMidWrite {
        /// Time between the write leaving the client and the kill.
        delay_ms: u16,
    },
    /// Freeze the leader `delay_ms` after a client sent a write, longer
    /// than a lease, then resume it.
    PauseLeaderMidWrite {
        /// Time between the write leaving the client and the freeze.
        delay_ms: u16,
    },
    /// SIGKILL the owner of a session `delay_ms` after a client sent a
    /// write to that session (a register session when that workload runs),
    /// restarted when the hold ends.
    KillOwnerAfterWrite {
        /// Time between the write leaving the client and the kill.
        delay_ms: u16,
    },
}

impl Fault {
    /// Short name of the kind, for counts in reports.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::KillTwo(..) => "kill-two",
            Fault::Pause(_) => "pause",
            Fault::Isolate(_) => "isolate",
            Fault::CutFromLeader(_) => "cut-from-leader",
            Fault::Cut(..) => "cut",
            Fault::KillLeaderMidWrite { .. } => "kill-leader-mid-write",
            Fault::PauseLeaderMidWrite { .. } => "pause-leader-mid-write",
            Fault::KillOwnerAfterWrite { .. } => "kill-owner-after-write",
        }
    }

    /// True for the faults that wait for a write to be sent.
    pub fn waits_for_a_write(&self) -> bool {
        matches!(
            self,
            Fault::KillLeaderMidWrite { .. }
                | Fault::PauseLeaderMidWrite { .. }
                | Fault::KillOwnerAfterWrite { .. }
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(t) => write!(f, "kill -9 {t}"),
            Fault::KillTwo(a, b) => write!(f, "kill -9 {a} and {b} (no quorum)"),
            Fault::Pause(t) => write!(f, "pause {t}"),
            Fault::Isolate(t) => write!(f, "isolate {t} from all peers"),
            Fault::CutFromLeader(t) => write!(f, "cut {t} from the leader only"),
            Fault::Cut(a, b) => write!(f, "cut the link {a} <-> {b}"),
            Fault::KillLeaderMidWrite { delay_ms } => {
                write!(f, "kill -9 leader {delay_ms} ms after a write is sent")
            }
            Fault::PauseLeaderMidWrite { delay_ms } => {
                write!(f, "pause leader {delay_ms} ms after a write is sent")
            }
            Fault::KillOwnerAfterWrite { delay_ms } => write!(
                f,
                "kill -9 a session's owner {delay_ms} ms after a write to it is sent"
            ),
        }
    }
}

/// Quiet gap, then a fault held for `hold`, then heal (restart, resume,
/// reconnect) and wait until the cluster is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    /// Quiet time before the fault.
    pub gap: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long it is held.
    pub hold: Duration,
}

/// Longest delay between a write leaving its client and a mid-write fault.
/// A `set` takes about 25 ms at the median on a loaded 2-core machine with
/// debug nodes (a few ms with release nodes), so delays up to this hit
/// every step of it (forward to the owner, proposal, replication, commit,
/// reply), and other clients' writes are in flight as well.
pub const MAX_WRITE_DELAY_MS: u64 = 40;

/// Knobs of the generator.
#[derive(Clone, Copy, Debug)]
pub struct ScheduleOptions {
    /// Faults allowed.
    pub capabilities: Capabilities,
    /// Number of nodes.
    pub nodes: u64,
    /// Lease duration of the cluster (pauses are longer than this).
    pub lease: Duration,
    /// Total planned time (gaps plus holds).
    pub duration: Duration,
}

/// Generates the schedule for `seed`: deterministic in `seed` and `options`.
pub fn generate(seed: u64, options: &ScheduleOptions) -> Vec<Episode> {
    let mut rng = SplitMix64::fork(seed, 0x5CED);
    let nodes = options.nodes.max(1);
    let lease_ms = options.lease.as_millis() as u64;
    let (kinds, mid_write) = weights(options.capabilities, nodes);
    let mut episodes = Vec::new();
    if kinds.is_empty() {
        return episodes;
    }
    let mut planned = Duration::ZERO;
    // Bounded: at most one episode per 100 ms of planned time.
    let max_episodes = (options.duration.as_millis() / 100).max(1) as usize;
    while planned < options.duration && episodes.len() < max_episodes {
        // Every third episode strikes mid-write, so each run has some.
        let pool = if episodes.len() % 3 == 1 && !mid_write.is_empty() {
            &mid_write
        } else {
            &kinds
        };
        let kind = pick(&mut rng, pool);
        let (fault, hold_ms) = draw(kind, &mut rng, nodes, lease_ms);
        let gap = Duration::from_millis(rng.between(200, 2000));
        let hold = Duration::from_millis(hold_ms);
        planned += gap + hold;
        episodes.push(Episode { gap, fault, hold });
    }
    episodes
}

/// Fault kinds to draw from, each with its weight: `(weight, kind)`.
type Pool = Vec<(u64, u8)>;

/// The pools the capabilities allow: every kind, and the faults that strike
/// while a write is in flight (kinds 6, 7, 8).
fn weights(caps: Capabilities, nodes: u64) -> (Pool, Pool) {
    let mut kinds: Pool = Vec::new();
    let mut mid_write: Pool = Vec::new();
    if caps.kill {
        kinds.push((30, 0));
        if nodes >= 3 {
            kinds.push((6, 1));
        }
        mid_write.push((20, 6));
        mid_write.push((15, 8));
    }
    if caps.pause {
        kinds.push((20, 2));
        mid_write.push((15, 7));
    }
    if caps.isolate {
        kinds.push((18, 3));
    }
    if caps.cut && nodes >= 3 {
        kinds.push((13, 4));
        kinds.push((13, 5));
    }
    kinds.extend_from_slice(&mid_write);
    (kinds, mid_write)
}

/// A kind drawn from `pool` by weight.
fn pick(rng: &mut SplitMix64, pool: &[(u64, u8)]) -> u8 {
    let total: u64 = pool.iter().map(|(w, _)| w).sum();
    let mut pick = rng.below(total);
    let mut kind = pool[0].1;
    for (weight, k) in pool {
        if pick < *weight {
            kind = *k;
            break;
        }
        pick -= weight;
    }
    kind
}

/// The fault of `kind` with its targets drawn, and how long it is held (ms).
fn draw(kind: u8, rng: &mut SplitMix64, nodes: u64, lease_ms: u64) -> (Fault, u64) {
    let target = |rng: &mut SplitMix64| match rng.below(3) {
        0 => Target::Leader,
        1 => Target::Follower(rng.below(nodes.max(2) - 1) as u8),
        _ => Target::Node(1 + rng.below(nodes)),
    };
    match kind {
        0 => (Fault::Kill(target(rng)), rng.between(100, 3000)),
        1 => (
            Fault::KillTwo(Target::Leader, Target::Follower(rng.below(2) as u8)),
            rng.between(200, 2500),
        ),
        2 => (
            Fault::Pause(target(rng)),
            rng.between(lease_ms + lease_ms / 5, lease_ms * 6),
        ),
        3 => (Fault::Isolate(target(rng)), rng.between(300, 4000)),
        4 => (
            Fault::CutFromLeader(Target::Follower(rng.below(2) as u8)),
            rng.between(300, 4000),
        ),
        6 => (
            Fault::KillLeaderMidWrite {
                delay_ms: rng.between(0, MAX_WRITE_DELAY_MS) as u16,
            },
            rng.between(100, 3000),
        ),
        7 => (
            Fault::PauseLeaderMidWrite {
                delay_ms: rng.between(0, MAX_WRITE_DELAY_MS) as u16,
            },
            rng.between(lease_ms + lease_ms / 5, lease_ms * 6),
        ),
        8 => (
            Fault::KillOwnerAfterWrite {
                delay_ms: rng.between(0, MAX_WRITE_DELAY_MS) as u16,
            },
            rng.between(100, 3000),
        ),
        _ => {
            let a = 1 + rng.below(nodes);
            let b = 1 + (a + rng.below(nodes - 1)) % nodes;
            (
                Fault::Cut(Target::Node(a), Target::Node(b)),
                rng.between(300, 4000),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(capabilities: Capabilities) -> ScheduleOptions {
        ScheduleOptions {
            capabilities,
            nodes: 3,
            lease: Duration::from_millis(500),
            duration: Duration::from_secs(120),
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        let a = generate(42, &options(Capabilities::ALL));
        let b = generate(42, &options(Capabilities::ALL));
        let c = generate(43, &options(Capabilities::ALL));
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn only_allowed_faults_and_pauses_outlast_the_lease() {
        let caps = Capabilities::parse("kill,pause").unwrap();
        let episodes = generate(9, &options(caps));
        assert!(episodes.len() > 10);
        for e in &episodes {
            match e.fault {
                Fault::Kill(_)
                | Fault::KillTwo(..)
                | Fault::KillLeaderMidWrite { .. }
                | Fault::KillOwnerAfterWrite { .. } => {}
                Fault::Pause(_) | Fault::PauseLeaderMidWrite { .. } => {
                    assert!(e.hold > Duration::from_millis(500))
                }
                other => panic!("fault {other} is not allowed"),
            }
        }
        let kinds: std::collections::HashSet<std::mem::Discriminant<Fault>> = episodes
            .iter()
            .map(|e| std::mem::discriminant(&e.fault))
            .collect();
        assert!(kinds.len() >= 2, "both kinds drawn: {episodes:?}");
    }

    #[test]
    fn every_third_episode_strikes_mid_write_and_all_three_kinds_are_drawn() {
        for seed in 0..20 {
            let episodes = generate(seed, &options(Capabilities::ALL));
            for (index, e) in episodes.iter().enumerate() {
                if index % 3 == 1 {
                    assert!(e.fault.waits_for_a_write(), "#{index}: {}", e.fault);
                }
                if let Fault::KillLeaderMidWrite { delay_ms }
                | Fault::PauseLeaderMidWrite { delay_ms }
                | Fault::KillOwnerAfterWrite { delay_ms } = e.fault
                {
                    assert!(u64::from(delay_ms) <= MAX_WRITE_DELAY_MS);
                }
            }
            let names: std::collections::BTreeSet<&str> =
                episodes.iter().map(|e| e.fault.kind_name()).collect();
            for kind in [
                "kill-leader-mid-write",
                "pause-leader-mid-write",
                "kill-owner-after-write",
            ] {
                assert!(names.contains(kind), "seed {seed}: no {kind} in {names:?}");
            }
        }
        // Without pause (the in-process backend) the leader is never frozen.
        let caps = Capabilities::parse("kill,isolate,cut").unwrap();
        let episodes = generate(4, &options(caps));
        assert!(episodes
            .iter()
            .all(|e| !matches!(e.fault, Fault::PauseLeaderMidWrite { .. })));
        assert!(episodes.iter().any(|e| e.fault.waits_for_a_write()));
    }

    #[test]
    fn cuts_name_two_different_nodes() {
        for seed in 0..50 {
            for e in generate(seed, &options(Capabilities::ALL)) {
                if let Fault::Cut(Target::Node(a), Target::Node(b)) = e.fault {
                    assert_ne!(a, b);
                    assert!((1..=3).contains(&a) && (1..=3).contains(&b));
                }
            }
        }
    }

    #[test]
    fn no_capabilities_no_episodes() {
        let none = Capabilities::parse("").unwrap();
        assert!(generate(1, &options(none)).is_empty());
        assert!(Capabilities::parse("bogus").is_err());
    }
}
