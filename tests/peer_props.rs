//! Property: no forged or garbage peer message changes a node. Against an
//! in-process three-node cluster (real HTTP on loopback, real sled),
//! proptest draws requests an attacker could send: garbage bodies to every
//! internal route with or without the cluster secret; votes and
//! AppendEntries that would depose the leader or overwrite a log, sent
//! without the secret; and, with the secret, ones from nodes outside the
//! membership or with terms that would overflow. After each, every node's
//! term, vote, last log index and table must be what they were.

use std::time::Duration;

use minos::model::NodeId;
use minos::testkit::Cluster;
use minos::wire::TypeConfig;
use minos::Timing;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, Vote};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const ROUTES: &[&str] = &[
    "/internal/raft/append",
    "/internal/raft/vote",
    "/internal/raft/snapshot",
    "/internal/propose",
    "/internal/read_index",
    "/internal/lease",
    "/internal/call/s1",
    "/internal/release",
    "/internal/join",
    "/internal/whoami",
    "/internal/leader/drain",
    "/internal/leader/rebalance",
    "/internal/leader/remove",
];

/// One hostile request.
#[derive(Clone, Debug)]
enum Forged {
    /// Random bytes to a route, with the secret or without.
    Garbage {
        route: usize,
        body: Vec<u8>,
        with_secret: bool,
    },
    /// A vote request that would win: a member at a higher term, but
    /// without the secret.
    VoteWithoutSecret { from: NodeId, ahead: u64 },
    /// An AppendEntries from a "leader" at a higher term, without the secret.
    AppendWithoutSecret { from: NodeId, ahead: u64 },
    /// With the secret, from a node outside the membership.
    VoteFromStranger { from: NodeId, ahead: u64 },
    /// With the secret, from a stranger claiming to lead.
    AppendFromStranger { from: NodeId, ahead: u64 },
    /// With the secret, from a member, with a term that could overflow.
    HugeTerm { from: NodeId, term: u64, vote: bool },
}

fn forged() -> impl Strategy<Value = Forged> {
    let member = 1u64..=3;
    let stranger = prop_oneof![Just(0u64), 4u64..1_000, Just(u64::MAX)];
    let ahead = prop_oneof![1u64..10, Just(1_000_000)];
    prop_oneof![
        (
            0..ROUTES.len(),
            prop::collection::vec(any::<u8>(), 0..200),
            any::<bool>()
        )
            .prop_map(|(route, body, with_secret)| Forged::Garbage {
                route,
                body,
                with_secret
            }),
        (member.clone(), ahead.clone())
            .prop_map(|(from, ahead)| Forged::VoteWithoutSecret { from, ahead }),
        (member.clone(), ahead.clone())
            .prop_map(|(from, ahead)| Forged::AppendWithoutSecret { from, ahead }),
        (stranger.clone(), ahead.clone())
            .prop_map(|(from, ahead)| Forged::VoteFromStranger { from, ahead }),
        (stranger, ahead).prop_map(|(from, ahead)| Forged::AppendFromStranger { from, ahead }),
        (member, (u64::MAX / 2 + 1)..=u64::MAX, any::<bool>())
            .prop_map(|(from, term, vote)| Forged::HugeTerm { from, term, vote }),
    ]
}

/// An AppendEntries that, if accepted, would make `from` leader at `term`
/// and put one entry at index 1..: it carries a log id far ahead.
fn append(from: NodeId, term: u64) -> Vec<u8> {
    let request = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, from),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: Some(LogId::new(CommittedLeaderId::new(term, from), 1_000_000)),
    };
    bincode::serialize(&request).expect("bincode")
}

fn vote(from: NodeId, term: u64) -> Vec<u8> {
    let last = LogId::new(CommittedLeaderId::new(term, from), 1_000_000);
    bincode::serialize(&VoteRequest::<NodeId>::new(
        Vote::new(term, from),
        Some(last),
    ))
    .expect("bincode")
}

/// (route, body, send the secret?) of a forged request, given the term now.
fn request(forged: &Forged, term: u64) -> (&'static str, Vec<u8>, bool) {
    let ahead = |n: u64| term.saturating_add(n);
    match forged {
        Forged::Garbage {
            route,
            body,
            with_secret,
        } => (ROUTES[*route], body.clone(), *with_secret),
        Forged::VoteWithoutSecret { from, ahead: n } => {
            ("/internal/raft/vote", vote(*from, ahead(*n)), false)
        }
        Forged::AppendWithoutSecret { from, ahead: n } => {
            ("/internal/raft/append", append(*from, ahead(*n)), false)
        }
        Forged::VoteFromStranger { from, ahead: n } => {
            ("/internal/raft/vote", vote(*from, ahead(*n)), true)
        }
        Forged::AppendFromStranger { from, ahead: n } => {
            ("/internal/raft/append", append(*from, ahead(*n)), true)
        }
        Forged::HugeTerm {
            from,
            term,
            vote: true,
        } => ("/internal/raft/vote", vote(*from, *term), true),
        Forged::HugeTerm {
            from,
            term,
            vote: false,
        } => ("/internal/raft/append", append(*from, *term), true),
    }
}

/// Term, vote, last log index and session count of every node.
type Footprint = Vec<(u64, String, Option<u64>, usize)>;

fn footprint(cluster: &Cluster) -> Footprint {
    cluster
        .ids()
        .into_iter()
        .filter_map(|id| cluster.node(id))
        .map(|node| {
            let metrics = node.metrics();
            let m = metrics.borrow();
            let sessions = node.read_state(|s| s.sessions.len());
            (
                m.current_term,
                m.vote.to_string(),
                m.last_log_index,
                sessions,
            )
        })
        .collect()
}

#[test]
fn no_forged_or_garbage_peer_message_changes_term_vote_log_or_table() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Long election timeouts: no election may happen by itself while the
    // cases run, so any change in the footprint is the forged message's.
    let mut timing = Timing::with_node_timeout(Duration::from_secs(30));
    timing.election_timeout_min = Duration::from_secs(8);
    timing.election_timeout_max = Duration::from_secs(12);
    let cluster = runtime.block_on(async {
        let cluster = Cluster::builder(3)
            .timing(timing)
            .start()
            .await
            .expect("cluster");
        let leader = cluster
            .await_leader(Duration::from_secs(30))
            .await
            .expect("leader");
        cluster
            .client(leader)
            .create_session(&minos::client::NewSession {
                id: "s1".into(),
                kind: None,
                state: None,
            })
            .await
            .expect("create");
        // Every node has applied the leader's log, so the footprint below
        // is settled: on a busy machine a follower may not have applied the
        // create yet, and that would look like a change made by a case.
        let last = cluster
            .node(leader)
            .and_then(|n| n.metrics().borrow().last_log_index)
            .expect("the leader's last log index");
        for id in cluster.ids() {
            cluster
                .await_healthy(id, Duration::from_secs(30))
                .await
                .expect("healthy");
            cluster
                .await_applied(id, last, Duration::from_secs(30))
                .await
                .expect("applied");
        }
        cluster
    });
    let secret = cluster.credentials().secret.clone();
    let addrs: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.addr(id))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http");
    let before = footprint(&cluster);
    let term = before[0].0;
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&(forged(), 0..addrs.len()), |(forged, target)| {
        let (route, body, with_secret) = request(&forged, term);
        let mut post = http
            .post(format!("http://{}{route}", addrs[target]))
            .header("content-type", "application/octet-stream")
            .body(body);
        if with_secret {
            post = post.header("x-minos-cluster-secret", &secret);
        }
        let status = runtime
            .block_on(async move { post.send().await })
            .map_err(|e| TestCaseError::fail(format!("{route}: {e}")))?
            .status()
            .as_u16();
        // Garbage with the secret on a JSON route may be well-formed (e.g.
        // `{}` for a rebalance); the footprint check below still holds.
        let refusal = (400..500).contains(&status);
        if !matches!(
            forged,
            Forged::Garbage {
                with_secret: true,
                ..
            }
        ) {
            prop_assert!(refusal, "{forged:?} to {route}: {status}");
        }
        if !with_secret {
            prop_assert_eq!(status, 401, "{:?} without the secret", forged);
        }
        let after = footprint(&cluster);
        prop_assert_eq!(&after, &before, "{:?} to {} changed a node", forged, route);
        Ok(())
    });
    runtime.block_on(cluster.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
}
