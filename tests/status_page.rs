//! The status page (`GET /`) in a real headless Chromium against real
//! `minos serve` processes: a node is killed, and the DOM the page's script
//! renders shows it `down`, and its sessions' moves (from `/v1/events`)
//! with reason `node_down`, and each node's labels and capacity. A screenshot goes to `target/status-page.png` (and to
//! `docs/status-page.png` with `MINOS_WRITE_SCREENSHOT=1`). The metrics of
//! the same failover are checked too: moves by reason on the leader, a
//! failover duration on the new owners.
//!
//! Chromium is Debian's `chromium` (`apt-get install chromium`; `.ci/run`
//! installs it), or the binary `MINOS_CHROMIUM` names. Without it the test
//! fails under CI and says so elsewhere.

#[path = "common/process.rs"]
mod process_common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use minos::api::NodeViewStatus;
use minos::client::NewSession;
use minos::model::NodeId;
use minos::testkit::await_until;
use minos::testkit::process::{ProcessCluster, ProcessOptions};
use tokio::time::Instant;

use process_common::{admin_http, BIN};

const DEADLINE: Duration = Duration::from_secs(90);
/// Longest run of one Chromium process.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

fn chromium() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("MINOS_CHROMIUM") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// The target directory (`CARGO_TARGET_TMPDIR` is `target/tmp`).
fn target_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(PathBuf::from).unwrap_or(tmp)
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or
/// `--screenshot=PATH`), letting the page's scripts run for a virtual
/// time budget; returns stdout.
async fn browse(
    bin: &PathBuf,
    profile: &std::path::Path,
    url: &str,
    mode: &str,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(bin);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--window-size=1280,860",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let output = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("chromium did not finish within {BROWSER_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "chromium exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The opening tags of the rendered rows, as `(attribute, value)` lists.
fn rows(dom: &str) -> Vec<String> {
    dom.split("<tr")
        .skip(1)
        .filter_map(|rest| rest.split_once('>').map(|(attrs, _)| attrs.to_string()))
        .collect()
}

/// Attribute `attr` of node `node`'s row.
fn node_row_attr(dom: &str, node: NodeId, attr: &str) -> Option<String> {
    let wanted = format!("data-node=\"{node}\"");
    rows(dom)
        .into_iter()
        .find(|attrs| attrs.contains(&wanted))
        .and_then(|attrs| {
            let (_, rest) = attrs.split_once(&format!("{attr}=\""))?;
            rest.split_once('"').map(|(value, _)| value.to_string())
        })
}

fn node_row_status(dom: &str, node: NodeId) -> Option<String> {
    node_row_attr(dom, node, "data-status")
}

/// Sum of one metric's samples whose line starts with `prefix`, on every node in `ids`.
async fn metric_sum(
    http: &reqwest::Client,
    cluster: &ProcessCluster,
    ids: &[NodeId],
    prefix: &str,
) -> Result<f64, String> {
    let mut sum = 0.0;
    for id in ids {
        let text = http
            .get(format!("http://{}/metrics", cluster.addr(*id)))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        sum += text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_killed_node_down_and_its_moves() -> Result<(), String> {
    let Some(browser) = chromium() else {
        if std::env::var_os("CI").is_some() {
            return Err(
                "chromium is not installed (apt-get install chromium); .ci/run installs it".into(),
            );
        }
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium, or set MINOS_CHROMIUM)"
        );
        return Ok(());
    };
    // Every node carries a label, node 1 a capacity too: the page shows both.
    let mut options = ProcessOptions::new(BIN);
    for id in 1..=3 {
        let mut args = vec!["--label".to_string(), format!("zone=z{id}")];
        if id == 1 {
            args.extend(["--max-sessions".to_string(), "500".to_string()]);
        }
        options.node_args.insert(id, args);
    }
    let mut cluster = ProcessCluster::start(options).await?;
    let deadline = Instant::now() + DEADLINE;
    let leader = cluster.await_leader(deadline).await?;
    for id in cluster.ids() {
        cluster.await_healthy(id, deadline).await?;
    }
    // The page is read through a node that stays up and leads or not; the
    // victim is neither it nor the leader (so the leader's counters stay
    // readable), and owns at least one session.
    let page_node: NodeId = if leader == 1 { 2 } else { 1 };
    let victim: NodeId = cluster
        .ids()
        .into_iter()
        .find(|id| *id != page_node && *id != leader)
        .ok_or("no third node")?;
    let client = cluster.client(page_node);
    let mut owned = Vec::new();
    for n in 0..40 {
        let view = client
            .create_session(&NewSession {
                id: format!("page-{n}"),
                kind: None,
                state: Some(serde_json::json!({"n": n})),
            })
            .await
            .map_err(|e| e.to_string())?;
        if view.owner == Some(victim) {
            owned.push(view.id);
        }
        if owned.len() >= 2 {
            break;
        }
    }
    assert!(!owned.is_empty(), "no session landed on node {victim}");

    cluster.kill(victim).await?;
    // Wait, through the API, until the table shows the victim down and its
    // sessions placed elsewhere.
    let last = std::sync::Mutex::new(String::new());
    let within = deadline.saturating_duration_since(Instant::now());
    await_until("the victim shown down", within, || {
        let (client, last) = (&client, &last);
        async move {
            let view = client.cluster().await.ok()?;
            *last.lock().unwrap() = format!("{view:?}");
            view.nodes
                .iter()
                .any(|n| n.id == victim && n.status == NodeViewStatus::Down && n.sessions == 0)
                .then_some(())
        }
    })
    .await
    .map_err(|_| format!("node {victim} never shown down: {}", last.lock().unwrap()))?;

    let http = admin_http(&cluster);
    let events = http
        .get(format!(
            "http://{}/v1/events?limit=50",
            cluster.addr(page_node)
        ))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .status()
        .as_u16();

    let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}/#token={}",
        cluster.addr(page_node),
        cluster.credentials().client_token
    );
    // Rendered by the page's own script after its fetches: retried while the
    // script has not finished (a slow machine), within the deadline.
    let dom = loop {
        let dom = browse(&browser, profile.path(), &url, "--dump-dom").await?;
        let rendered = dom.contains("data-loaded=\"all\"");
        // The page's own node is up too (on a busy machine it may briefly
        // show `unknown` while its lease renews: look again).
        // Each node's labels are in the table once it announced them.
        let labelled = cluster.ids().into_iter().all(|id| {
            node_row_attr(&dom, id, "data-labels").as_deref() == Some(&format!("zone=z{id}"))
        });
        if rendered
            && labelled
            && node_row_status(&dom, victim).as_deref() == Some("down")
            && node_row_status(&dom, page_node).as_deref() == Some("up")
        {
            break dom;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the page never showed node {victim} down and node {page_node} up:\n{dom}"
            ));
        }
    };
    assert!(
        dom.contains(">unlimited</td>"),
        "no node without a capacity shown unlimited"
    );
    assert!(dom.contains(">500</td>"), "node 1's capacity not shown");
    assert!(
        dom.contains("data-session-status=\"placed\""),
        "no sessions by status"
    );
    let moves: Vec<String> = rows(&dom)
        .into_iter()
        .filter(|attrs| attrs.contains("data-reason=\"node_down\""))
        .collect();
    assert_eq!(events, 200, "GET /v1/events");
    for id in &owned {
        let wanted = format!("data-session=\"{id}\"");
        assert!(
            moves.iter().any(|attrs| attrs.contains(&wanted)),
            "no node_down move of {id} on the page: {moves:?}"
        );
    }

    let shot = target_dir().join("status-page.png");
    browse(
        &browser,
        profile.path(),
        &url,
        &format!("--screenshot={}", shot.display()),
    )
    .await?;
    let png = std::fs::read(&shot).map_err(|e| format!("{}: {e}", shot.display()))?;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if std::env::var_os("MINOS_WRITE_SCREENSHOT").is_some() {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png");
        std::fs::write(docs, &png).map_err(|e| e.to_string())?;
    }

    // The same failover in the metrics: the leader counted the moves as
    // node_down, and the new owners measured their failover.
    let alive: Vec<NodeId> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != victim)
        .collect();
    let counted = metric_sum(
        &http,
        &cluster,
        &alive,
        "minos_session_moves_total{reason=\"node_down\"}",
    )
    .await?;
    assert!(
        counted >= owned.len() as f64,
        "minos_session_moves_total{{reason=\"node_down\"}} is {counted}, {} sessions moved",
        owned.len()
    );
    let failovers = metric_sum(
        &http,
        &cluster,
        &alive,
        "minos_failover_duration_seconds_count",
    )
    .await?;
    assert!(failovers >= 1.0, "no failover measured");
    Ok(())
}
