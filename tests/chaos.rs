//! Chaos runs under `cargo test`: a seeded fault schedule against an
//! in-process cluster, real processes, and (when Docker answers) the
//! compose cluster with network partitions, each history checked for lost
//! or duplicated acknowledged writes, reads going backwards and two owners
//! (append workload), and every register session's history checked for
//! linearizability by todc-utils' WGL checker (register workload). Every
//! run includes the faults that strike while a write is in flight (leader
//! killed or frozen, a session's owner killed).
//!
//! The runs take turns (one lock), so the whole file stays within about
//! four minutes on two cores. `MINOS_CHAOS_SEED` replaces the seeds;
//! `MINOS_CHAOS_SECONDS` the workload time of each run.

use std::path::PathBuf;
use std::time::Duration;

use minos::chaos::docker::{self, ComposeCluster, ComposeOptions, DockerBackend, DockerOptions};
use minos::chaos::inprocess::InProcessBackend;
use minos::chaos::process::ProcessBackend;
use minos::chaos::schedule::Fault;
use minos::chaos::{run_with, Capabilities, ChaosReport, RunConfig};
use minos::config::Timing;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seed(default: u64) -> u64 {
    std::env::var("MINOS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn config(seed: u64, default_seconds: u64, faults: &str) -> RunConfig {
    let seconds = std::env::var("MINOS_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seconds);
    let mut config = RunConfig::new(seed);
    config.duration = Duration::from_secs(seconds);
    config.clients = 6;
    config.sessions = 8;
    config.max_appends_per_session = 600;
    config.register_clients = 4;
    config.register_sessions = 4;
    config.faults = Capabilities::parse(faults).expect("fault list");
    config
}

/// Fails with the seed and every violation unless the run passed, and
/// checks the run did real work (faults, acknowledged writes, register
/// operations through the linearizability checker, a fault that struck
/// right after a write was sent), so an idle run cannot pass.
fn assert_passed(report: &ChaosReport, min_episodes: usize) {
    eprintln!("{}", report.summary());
    assert!(
        report.passed(),
        "chaos run failed; replay with MINOS_CHAOS_SEED={}\n{}",
        report.seed,
        report.summary()
    );
    assert!(
        report.episodes.len() >= min_episodes,
        "only {} fault episodes ran (seed {})",
        report.episodes.len(),
        report.seed
    );
    let stats = &report.check.stats;
    assert!(
        stats.appends_ok >= 100 && stats.reads_ok >= 50,
        "too little work was acknowledged: {stats:?}"
    );
    assert!(
        stats.final_entries >= stats.appends_ok,
        "final logs hold fewer entries than acknowledged appends: {stats:?}"
    );
    let register = &stats.register;
    assert!(
        register.ops_checked >= 200
            && register.sets_ok >= 50
            && register.sessions_linearizable >= 1,
        "too few register operations went through the linearizability checker: {register:?}"
    );
    assert!(
        report
            .episodes
            .iter()
            .any(|e| e.fault.waits_for_a_write() && e.resolved.contains(" sent ")),
        "no fault struck right after a write was sent (seed {}): {:?}",
        report.seed,
        report
            .episodes
            .iter()
            .map(|e| &e.resolved)
            .collect::<Vec<_>>()
    );
}

fn has(report: &ChaosReport, pred: impl Fn(&Fault) -> bool) -> bool {
    report.episodes.iter().any(|e| pred(&e.fault))
}

/// Removes containers and networks left by an earlier run of this test that
/// was killed before it could clean up (their fixed subnets would clash).
async fn remove_stale_test_clusters() {
    let list = |args: &'static [&'static str]| async move {
        docker::run_command("docker", args)
            .await
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let containers = list(&["ps", "-aq", "--filter", "name=minoschaos"]).await;
    for id in &containers {
        let _ = docker::run_command("docker", &["rm", "-f", id]).await;
    }
    let networks = list(&["network", "ls", "-q", "--filter", "name=minoschaos"]).await;
    for id in &networks {
        let _ = docker::run_command("docker", &["network", "rm", id]).await;
    }
    if !containers.is_empty() || !networks.is_empty() {
        eprintln!(
            "--- removed {} stale containers and {} stale networks of an earlier run",
            containers.len(),
            networks.len()
        );
    }
}

/// A private copy of the binary, so a concurrent rebuild in a shared target
/// directory cannot swap it while nodes restart.
fn private_binary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("minos");
    std::fs::copy(env!("CARGO_BIN_EXE_minos"), &bin).expect("copy the minos binary");
    (dir, bin)
}

// Crashes (leader included) and full and partial partitions of an
// in-process cluster, from a fixed seed, leave no checker violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_crashes_and_partitions_keep_every_promise() {
    let _turn = SERIAL.lock().await;
    let config = config(seed(4), 30, "kill,isolate,cut");
    eprintln!("--- in-process chaos, seed {}", config.seed);
    let mut backend = InProcessBackend::start(3, Timing::default())
        .await
        .expect("cluster starts");
    let report = run_with(&mut backend, &config).await;
    backend.shutdown().await;
    let report = report.expect("chaos run");
    assert_passed(&report, 5);
    // Any kind of kill: a replayed seed may schedule only the mid-write ones.
    assert!(has(&report, |f| matches!(
        f,
        Fault::Kill(_)
            | Fault::KillTwo(..)
            | Fault::KillLeaderMidWrite { .. }
            | Fault::KillOwnerAfterWrite { .. }
    )));
    assert!(has(&report, |f| matches!(
        f,
        Fault::Isolate(_) | Fault::Cut(..) | Fault::CutFromLeader(_)
    )));
    assert!(
        !has(&report, |f| matches!(f, Fault::PauseLeaderMidWrite { .. })),
        "the in-process backend cannot pause"
    );
}

// SIGKILL and SIGSTOP (longer than the lease) of real `minos serve`
// processes, leader included and while writes are in flight, leave no
// checker violation; this backend cannot partition, and the report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_killed_and_paused_keep_every_promise() {
    let _turn = SERIAL.lock().await;
    let config = config(seed(1), 40, "all");
    eprintln!("--- process chaos, seed {}", config.seed);
    let (_dir, bin) = private_binary();
    let mut backend = ProcessBackend::start(bin, Vec::new(), None)
        .await
        .expect("cluster starts");
    let report = run_with(&mut backend, &config).await.expect("chaos run");
    assert_passed(&report, 5);
    // Any kind of kill: a replayed seed may schedule only the mid-write ones.
    assert!(has(&report, |f| matches!(
        f,
        Fault::Kill(_)
            | Fault::KillTwo(..)
            | Fault::KillLeaderMidWrite { .. }
            | Fault::KillOwnerAfterWrite { .. }
    )));
    assert!(has(&report, |f| matches!(
        f,
        Fault::Pause(_) | Fault::PauseLeaderMidWrite { .. }
    )));
    assert!(
        report.not_injected.iter().any(|f| f.contains("partition")),
        "the process backend must report the partitions it did not inject"
    );
}

// Docker containers killed, paused, cut off from their peers (network
// disconnect) and partially partitioned (one link dropped with iptables in
// the container's namespace) leave no checker violation. Without Docker the
// test says loudly that partition faults were not exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_partitions_keep_every_promise() {
    let _turn = SERIAL.lock().await;
    if !docker::docker_available().await
        || docker::run_command("docker-compose", &["version"])
            .await
            .is_err()
    {
        eprintln!(
            "!!! SKIPPED: docker (or docker-compose) is not available here, so NETWORK \
             PARTITION FAULTS WERE NOT EXERCISED; only the in-process partitions ran"
        );
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (_dir, bin) = private_binary();
    let tag = format!("minos:chaos-test-{}", std::process::id());
    eprintln!("--- building image {tag} FROM scratch around the test binary");
    docker::build_image(&root.join("Dockerfile"), &bin, &tag)
        .await
        .expect("docker build");
    remove_stale_test_clusters().await;
    let ports = minos::testkit::process::free_ports(3).expect("free ports");
    let project = format!("minoschaos{}", std::process::id());
    let credentials = minos::testkit::Credentials::generate().expect("credentials");
    let secrets = tempfile::tempdir().expect("secrets dir");
    docker::write_secrets(secrets.path(), &credentials).expect("secrets");
    let mut cluster = ComposeCluster::up(ComposeOptions {
        compose_file: root.join("docker-compose.yml"),
        project: project.clone(),
        image: tag.clone(),
        raft_subnet: "10.231.17".into(),
        client_subnet: "10.231.18".into(),
        ports: [ports[0], ports[1], ports[2]],
        secrets_dir: secrets.path().to_path_buf(),
    })
    .await
    .expect("docker-compose up");
    let mut backend = DockerBackend::attach(DockerOptions {
        project,
        nodes: 3,
        token: Some(credentials.client_token.clone()),
    })
    .await
    .expect("attach to the compose cluster");
    let config = config(seed(4), 60, "all");
    eprintln!("--- docker chaos, seed {}", config.seed);
    let report = run_with(&mut backend, &config).await;
    if report.as_ref().map_or(true, |r| !r.passed()) {
        for node in 1..=3 {
            eprintln!(
                "--- log of node {node}:\n{}",
                minos::chaos::Backend::log_tail(&backend, node)
            );
        }
    }
    let down = cluster.down();
    let _ = docker::run_command("docker", &["rmi", "-f", &tag]).await;
    let report = report.expect("chaos run");
    down.expect("docker-compose down");
    assert_passed(&report, 5);
    assert!(has(&report, |f| matches!(f, Fault::Isolate(_))));
    if report.faults.cut {
        assert!(has(&report, |f| matches!(
            f,
            Fault::Cut(..) | Fault::CutFromLeader(_)
        )));
    } else {
        eprintln!("!!! partial partitions (one link cut) were NOT injected: no nsenter/iptables");
    }
}
