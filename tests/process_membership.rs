//! Runtime membership with real processes: a fourth node joins a running
//! three-node cluster with `--join`, becomes a voter, is placed sessions, and
//! is removed again with `DELETE /v1/nodes/4`, its sessions moving to the
//! others with their state.

use std::process::{Command, Stdio};
use std::time::Duration;

use minos::client::NewSession;
use minos::model::{NodeStatus, SessionId};
use minos::testkit::await_until;
use minos::testkit::process::{free_ports, ProcessCluster, ProcessOptions};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_node_joins_takes_sessions_and_is_removed() -> Result<(), String> {
    let cluster = ProcessCluster::start(ProcessOptions::new(env!("CARGO_BIN_EXE_minos"))).await?;
    let port = free_ports(1).map_err(|e| e.to_string())?[0];
    let addr = format!("127.0.0.1:{port}");
    let data = cluster.dir().join("node4");
    let log = std::fs::File::create(cluster.dir().join("node4.log")).map_err(|e| e.to_string())?;

    eprintln!("--- node 4 joins through node 1");
    let mut child = Command::new(env!("CARGO_BIN_EXE_minos"))
        .args(["serve", "--id", "4", "--listen", &addr, "--data-dir"])
        .arg(&data)
        .args(["--join", &cluster.addr(1)])
        .arg("--cluster-secret-file")
        .arg(cluster.dir().join("cluster.secret"))
        .arg("--token-file")
        .arg(cluster.dir().join("tokens"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = async {
        let client = cluster.client(1);
        await_until("node 4 to be an Up member", DEADLINE, || async {
            let view = client.cluster().await.ok()?;
            view.nodes
                .iter()
                .any(|n| n.id == 4 && n.status == NodeStatus::Up)
                .then_some(())
        })
        .await?;
        let node4 = minos::Client::new(addr.clone()).with_token(&cluster.credentials().admin_token);
        await_until("node 4 to be healthy", DEADLINE, || async {
            node4.health().await.ok()
        })
        .await?;

        eprintln!("--- sessions placed on node 4 run there");
        let on_4: Vec<String> = (0..)
            .map(|n| format!("joined-{n}"))
            .filter(|id| {
                let sid = SessionId::new(id.as_str()).expect("valid id");
                minos::placement::place(&sid, &[1, 2, 3, 4]) == Some(4)
            })
            .take(3)
            .collect();
        for id in &on_4 {
            client
                .create_session(&NewSession {
                    id: id.clone(),
                    kind: None,
                    state: None,
                })
                .await
                .map_err(|e| e.to_string())?;
            let reply = client
                .call(id, &json!({"op":"append","field":"log","value":id}), None)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(reply.owner, 4, "{id} runs on the node placement chose");
        }

        eprintln!("--- remove node 4: its sessions move with their state");
        client.remove_node(4).await.map_err(|e| e.to_string())?;
        await_until("node 4 to leave the table", DEADLINE, || async {
            let view = client.cluster().await.ok()?;
            (!view.nodes.iter().any(|n| n.id == 4)).then_some(())
        })
        .await?;
        for id in &on_4 {
            let reply = client
                .call(id, &json!({"op":"get"}), Some(DEADLINE))
                .await
                .map_err(|e| e.to_string())?;
            assert_ne!(reply.owner, 4);
            assert_eq!(reply.reply["log"], json!([id]), "{id} kept its state");
        }
        Ok::<(), String>(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result.map_err(|e| {
        let log = std::fs::read_to_string(cluster.dir().join("node4.log")).unwrap_or_default();
        format!(
            "{e}\nnode 4 log tail:\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        )
    })
}
