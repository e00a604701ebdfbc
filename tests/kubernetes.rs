//! deploy/kubernetes/: the manifests validate against the Kubernetes API
//! schemas (with `kubernetes-validate` from PyPI, when it is installed; CI
//! installs it), and the configuration the ConfigMap gives every pod is one
//! `minos config check` accepts for each pod's id and name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use minos::testkit::process::write_private;

/// Kubernetes versions the manifests must validate against: the oldest
/// they need (StatefulSet `ordinals` and the pod-index label are on by
/// default from 1.28) and the newest kubernetes-validate 1.37 knows.
const VERSIONS: [&str; 2] = ["1.28.0", "1.37.0"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every manifest, the example Secret included.
fn manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [dir(), dir().join("secret")] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn manifests_validate_when_kubernetes_validate_is_installed() {
    let installed = Command::new("kubernetes-validate")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("kubernetes-validate not installed (pip install kubernetes-validate): skipped");
        return;
    }
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    for version in VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "against {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `minos.toml` block of the ConfigMap.
fn configmap_toml() -> String {
    let text = std::fs::read_to_string(dir().join("configmap.yaml")).unwrap();
    let mut lines = text.lines().skip_while(|l| l.trim() != "minos.toml: |");
    assert!(lines.next().is_some(), "no minos.toml in configmap.yaml");
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    body.join("\n") + "\n"
}

#[test]
fn every_pod_gets_a_configuration_that_checks() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("minos.toml");
    std::fs::write(&file, configmap_toml()).unwrap();
    let secret = temp.path().join("cluster.secret");
    let tokens = temp.path().join("tokens");
    write_private(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    write_private(
        &tokens,
        "admin admin-token-0123456789abcdef\nclient client-token-0123456789abcdef\n",
    )
    .unwrap();
    for id in 1..=3 {
        // As the StatefulSet sets them for pod minos-{id}.
        let out = Command::new(env!("CARGO_BIN_EXE_minos"))
            .args(["config", "check"])
            .arg(&file)
            .env("MINOS_ID", id.to_string())
            .env("MINOS_ADVERTISE", format!("minos-{id}.minos:7190"))
            .env("MINOS_CLUSTER_SECRET_FILE", &secret)
            .env("MINOS_TOKEN_FILE", &tokens)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pod minos-{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("id = {id}")), "{stdout}");
    }
    // A pod whose name is not in the peers list is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_minos"))
        .args(["config", "check"])
        .arg(&file)
        .env("MINOS_ID", "2")
        .env("MINOS_ADVERTISE", "minos-9.minos:7190")
        .env("MINOS_CLUSTER_SECRET_FILE", &secret)
        .env("MINOS_TOKEN_FILE", &tokens)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("but advertise is minos-9.minos:7190"),
        "{stderr}"
    );
}

/// The example Secret's placeholders are refused by minos, so a cluster
/// never starts with them.
#[test]
fn the_example_secret_cannot_be_used_as_is() {
    let text = std::fs::read_to_string(dir().join("secret/credentials.example.yaml")).unwrap();
    let value = |key: &str| -> String {
        let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
        lines.next();
        lines
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", l.trim()))
            .collect()
    };
    let secret = value("cluster.secret");
    let tokens = value("tokens");
    assert!(!secret.is_empty() && !tokens.is_empty());
    assert!(minos::auth::ClusterSecret::parse(&secret).is_err());
    assert!(minos::auth::Tokens::parse(&tokens).is_err());
}

/// The StatefulSet's `preStop` command, run as the pod runs it (the CLI
/// with the container's `MINOS_ADDR` pointing at its own node and the admin
/// token in `MINOS_CLUSTER_DIR`), drains that node: its sessions move away.
#[tokio::test]
async fn the_pre_stop_hook_drains_its_own_node() {
    let manifest = std::fs::read_to_string(dir().join("statefulset.yaml")).unwrap();
    let hook = r#"command: ["/minos", "node", "drain"]"#;
    assert!(manifest.contains(hook), "statefulset.yaml has no {hook}");
    let cluster = minos::testkit::process::ProcessCluster::start(
        minos::testkit::process::ProcessOptions::new(env!("CARGO_BIN_EXE_minos")),
    )
    .await
    .expect("cluster starts");
    let client = cluster.client(1);
    for n in 0..12 {
        client
            .create_session(&minos::client::NewSession {
                id: format!("hook-{n}"),
                kind: None,
                state: None,
            })
            .await
            .expect("create");
    }
    let secrets = tempfile::tempdir().unwrap();
    write_private(
        &secrets.path().join("admin.token"),
        &format!("{}\n", cluster.credentials().admin_token),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_minos"))
        .args(["node", "drain"])
        .env_remove("MINOS_TOKEN")
        .env_remove("MINOS_TOKEN_FILE")
        .env("MINOS_ADDR", cluster.addr(2))
        .env("MINOS_CLUSTER_DIR", secrets.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The drain returns once the moves are committed; the node asked sees
    // them as soon as it has applied them.
    let last = std::sync::Mutex::new(String::new());
    let drained =
        minos::testkit::await_until("node 2 drained", std::time::Duration::from_secs(30), || {
            let client = cluster.client(2);
            let last = &last;
            async move {
                let view = client.cluster().await.expect("cluster view");
                let node = view.nodes.iter().find(|n| n.id == 2).expect("node 2");
                let drained =
                    node.status == minos::model::NodeStatus::Draining && node.sessions == 0;
                *last.lock().unwrap() = format!("{view:?}");
                drained.then_some(())
            }
        })
        .await;
    assert!(
        drained.is_ok(),
        "node 2 not drained: {}",
        last.lock().unwrap()
    );
}
