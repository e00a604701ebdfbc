//! External handler kinds between real processes: three `minos serve`
//! nodes, each with its own app written in Python's standard library
//! (tests/external/counter_app.py, the protocol of
//! docs/external-handlers.md). Create, calls, a refusal, a read, timers
//! (also across a failover), SIGKILL of a node and of an app, and the
//! fencing of a late answer from a deposed owner. Every wait is a
//! condition with a deadline.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use minos::api::NodeViewStatus;
use minos::client::{Client, ClientError, NewSession};
use minos::model::NodeId;
use minos::testkit::await_until;
use minos::testkit::process::{free_ports, ProcessCluster, ProcessOptions, Signal};
use serde_json::{json, Value};

const NODES: [NodeId; 3] = [1, 2, 3];
/// Per-call timeout: a call waits while its session moves.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound of any condition wait.
const WAIT: Duration = Duration::from_secs(30);

/// One test at a time: each runs three nodes and three apps on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One node's app: a Python process on a fixed port (below the ephemeral
/// range, so it can be started again on it).
struct App {
    port: u16,
    child: Option<Child>,
}

impl App {
    async fn start(port: u16) -> Result<App, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/external/counter_app.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("python3 {script}: {e}"))?;
        let app = App {
            port,
            child: Some(child),
        };
        await_until(&format!("app on port {port} answers"), WAIT, || async {
            app.stats().await.ok()
        })
        .await?;
        Ok(app)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn stats(&self) -> Result<Value, String> {
        let answer = reqwest::get(self.url("/control/stats"))
            .await
            .map_err(|e| e.to_string())?;
        answer.json().await.map_err(|e| e.to_string())
    }

    /// How many requests of `op` this app was sent.
    async fn ops(&self, op: &str) -> u64 {
        self.stats()
            .await
            .ok()
            .and_then(|s| s["ops"][op].as_u64())
            .unwrap_or(0)
    }

    async fn control(&self, what: &str) -> Result<(), String> {
        let answer = reqwest::Client::new()
            .post(self.url(&format!("/control/{what}")))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        answer
            .error_for_status()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three apps, then three nodes each declaring its own app for `counter`.
async fn start() -> Result<(ProcessCluster, BTreeMap<NodeId, App>), String> {
    let ports = free_ports(3).map_err(|e| e.to_string())?;
    let mut apps = BTreeMap::new();
    let mut options = ProcessOptions::new(env!("CARGO_BIN_EXE_minos"));
    for (id, port) in NODES.into_iter().zip(ports) {
        apps.insert(id, App::start(port).await?);
        let flag = format!("--external-kind=counter=http://127.0.0.1:{port}/minos");
        options.node_args.insert(id, vec![flag]);
    }
    Ok((ProcessCluster::start(options).await?, apps))
}

async fn call(client: &Client, id: &str, msg: Value) -> Result<minos::runtime::CallReply, String> {
    client
        .call(id, &msg, Some(CALL_TIMEOUT))
        .await
        .map_err(|e| format!("call {msg} to {id} through {}: {e}", client.addr()))
}

async fn state(client: &Client, id: &str) -> Result<(Option<NodeId>, u64, Value), String> {
    let view = client.get_session(id).await.map_err(|e| e.to_string())?;
    Ok((view.owner, view.epoch, view.state))
}

/// Creates a `counter` session through `client`.
async fn create_counter(client: &Client, id: &str, state: Option<Value>) -> Result<(), String> {
    let new = NewSession {
        id: id.into(),
        kind: Some("counter".into()),
        state,
    };
    client
        .create_session(&new)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A client of the first node in `nodes` that is not `avoid`.
fn other(cluster: &ProcessCluster, avoid: &[NodeId]) -> Client {
    let id = NODES
        .into_iter()
        .find(|n| !avoid.contains(n))
        .expect("a third node");
    cluster.client(id)
}

/// Adds the tail of every node's log to a failure.
fn with_logs(cluster: &ProcessCluster, result: Result<(), String>) -> Result<(), String> {
    result.map_err(|e| {
        let logs: Vec<String> = NODES
            .iter()
            .map(|id| format!("--- node {id} ---\n{}", cluster.log_tail(*id, 30)))
            .collect();
        format!("{e}\n{}", logs.join("\n"))
    })
}

async fn node_status(client: &Client, node: NodeId) -> Option<NodeViewStatus> {
    let view = client.cluster().await.ok()?;
    view.nodes.iter().find(|n| n.id == node).map(|n| n.status)
}

/// Writes the log refused on `node`'s watch as leader for a stale epoch.
async fn stale_epoch_refusals(cluster: &ProcessCluster, node: NodeId) -> u64 {
    let request = reqwest::Client::new()
        .get(format!("http://{}/metrics", cluster.addr(node)))
        .bearer_auth(&cluster.credentials().admin_token);
    let Ok(answer) = request.send().await else {
        return 0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("minos_commands_rejected_total{reason=\"stale_epoch\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `/v1/health` of a node: its status code and body.
async fn health(cluster: &ProcessCluster, node: NodeId) -> Option<(u16, Value)> {
    let answer = reqwest::get(format!("http://{}/v1/health", cluster.addr(node)))
        .await
        .ok()?;
    let status = answer.status().as_u16();
    Some((status, answer.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_sessions_create_call_refuse_read_and_time() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let (cluster, apps) = start().await?;
    let result = create_call_refuse_read_and_time(&cluster, &apps).await;
    with_logs(&cluster, result)
}

async fn create_call_refuse_read_and_time(
    cluster: &ProcessCluster,
    apps: &BTreeMap<NodeId, App>,
) -> Result<(), String> {
    let client = cluster.client(1);
    let new = NewSession {
        id: "c1".into(),
        kind: Some("counter".into()),
        state: Some(json!({"n": 5})),
    };
    let created = client
        .create_session(&new)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        created.state,
        json!({"state": {"n": 5, "log": [], "ticks": 0}, "deadline": null}),
        "the committed state is the app's state and its timer"
    );
    for want in [7, 9, 11] {
        let reply = call(&client, "c1", json!({"add": 2})).await?;
        assert_eq!(reply.reply, json!({"n": want}));
    }
    let (owner, _, before) = state(&client, "c1").await?;
    let owner = owner.ok_or("c1 has no owner")?;
    assert!(
        apps[&owner].ops("call").await >= 3,
        "the owner's app served the calls"
    );
    match client
        .call("c1", &json!({"refuse": "not now"}), Some(CALL_TIMEOUT))
        .await
    {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code.as_str()), (422, "rejected"), "{message}");
            assert!(
                message.contains("not now"),
                "the app's reason reaches the caller: {message}"
            );
        }
        other => return Err(format!("a refusal answered {other:?}")),
    }
    let read = call(&client, "c1", json!({"get": true})).await?;
    assert_eq!(read.reply, json!({"n": 11}));
    let view = client.get_session("c1").await.map_err(|e| e.to_string())?;
    assert_eq!(view.state, before, "a refusal and a read commit nothing");

    // A timer fires on the owner and its answer is committed.
    call(&client, "c1", json!({"tick_in_ms": 300})).await?;
    let armed = state(&client, "c1").await?.2;
    assert!(
        armed["deadline"].is_string(),
        "the timer is committed: {armed}"
    );
    await_until("the timer fired", WAIT, || async {
        let (_, _, s) = state(&client, "c1").await.ok()?;
        (s["state"]["ticks"] == 1 && s["deadline"].is_null()).then_some(())
    })
    .await?;
    assert_eq!(
        apps[&owner].ops("deadline").await,
        1,
        "the owner's app got the deadline"
    );

    // Creating on an app that refuses is refused, and nothing is created.
    let bad = NewSession {
        id: "c2".into(),
        kind: Some("counter".into()),
        state: Some(json!({"n": "many"})),
    };
    let refused = client.create_session(&bad).await;
    assert!(
        refused.is_err(),
        "a create the app cannot serve: {refused:?}"
    );
    assert!(
        client.get_session("c2").await.is_err(),
        "nothing was created"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_sessions_survive_the_loss_of_a_node_and_of_an_app() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let (mut cluster, mut apps) = start().await?;
    let result = node_then_app_loss(&mut cluster, &mut apps).await;
    with_logs(&cluster, result)
}

async fn node_then_app_loss(
    cluster: &mut ProcessCluster,
    apps: &mut BTreeMap<NodeId, App>,
) -> Result<(), String> {
    let client = cluster.client(1);
    create_counter(&client, "s1", None).await?;
    call(&client, "s1", json!({"add": 1})).await?;
    let (owner, epoch, _) = state(&client, "s1").await?;
    let first = owner.ok_or("s1 has no owner")?;

    // SIGKILL of the owner node, with a timer armed: the call and the
    // timer are served by a survivor's app, from the committed state.
    call(&client, "s1", json!({"tick_in_ms": 1500})).await?;
    cluster.kill(first).await?;
    let survivor = other(cluster, &[first]);
    let reply = call(&survivor, "s1", json!({"add": 10})).await?;
    assert_eq!(reply.reply, json!({"n": 11}), "the committed state moved");
    assert!(reply.owner != first && reply.epoch.0 > epoch, "{reply:?}");
    let second = reply.owner;
    await_until("the timer fired on the new owner", WAIT, || async {
        let (_, _, s) = state(&survivor, "s1").await.ok()?;
        (s["state"]["ticks"] == 1).then_some(())
    })
    .await?;
    assert_eq!(
        apps[&second].ops("deadline").await,
        1,
        "the new owner's app fired it"
    );
    assert_eq!(
        apps[&first].ops("deadline").await,
        0,
        "the dead node fired nothing"
    );
    cluster.restart(first).await?;

    // SIGKILL of the new owner's app: its node reports not ready, drains
    // itself, and the session is served by the third node's app.
    apps.get_mut(&second).ok_or("no app")?.kill();
    await_until(
        "the node without its app reports not ready",
        WAIT,
        || async {
            let (status, body) = health(cluster, second).await?;
            (status == 503 && body["apps"][0]["ready"] == false).then_some(())
        },
    )
    .await?;
    let third = other(cluster, &[second]);
    let reply = call(&third, "s1", json!({"add": 100})).await?;
    assert_eq!(reply.reply, json!({"n": 111}));
    assert!(
        reply.owner != second,
        "served by a node whose app answers: {reply:?}"
    );
    await_until("the node drained itself", WAIT, || async {
        (node_status(&third, second).await? == NodeViewStatus::Draining).then_some(())
    })
    .await?;

    // Its app back: the node is ready and Up again.
    let port = apps[&second].port;
    apps.insert(second, App::start(port).await?);
    await_until("the node undrained once its app answers", WAIT, || async {
        let up = node_status(&third, second).await? == NodeViewStatus::Up;
        let (status, _) = health(cluster, second).await?;
        (up && status == 200).then_some(())
    })
    .await?;
    let (_, _, s) = state(&third, "s1").await?;
    let log: Vec<i64> = s["state"]["log"]
        .as_array()
        .ok_or("no log")?
        .iter()
        .filter_map(|e| e["add"].as_i64())
        .collect();
    assert_eq!(log, vec![1, 10, 100], "each call applied once, in order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_from_a_deposed_owner_is_never_committed() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let (cluster, apps) = start().await?;
    let result = late_answer(&cluster, &apps).await;
    with_logs(&cluster, result)
}

async fn late_answer(cluster: &ProcessCluster, apps: &BTreeMap<NodeId, App>) -> Result<(), String> {
    let client = cluster.client(1);
    create_counter(&client, "f1", None).await?;
    let (owner, old_epoch, _) = state(&client, "f1").await?;
    let deposed = owner.ok_or("f1 has no owner")?;

    // The owner's app holds a slow call; meanwhile its node is frozen,
    // declared Down, and the session moves on.
    apps[&deposed].control("hold").await?;
    let slow = {
        let to_owner = cluster.client(deposed);
        tokio::spawn(async move {
            to_owner
                .call(
                    "f1",
                    &json!({"slow": true, "add": 100}),
                    Some(Duration::from_secs(60)),
                )
                .await
        })
    };
    await_until("the owner's app holds the slow call", WAIT, || async {
        let stats = apps[&deposed].stats().await.ok()?;
        (stats["waiting"] == 1).then_some(())
    })
    .await?;
    cluster.signal(deposed, Signal::Stop)?;
    let survivor = other(cluster, &[deposed]);
    let reply = call(&survivor, "f1", json!({"add": 1})).await?;
    assert!(
        reply.owner != deposed && reply.epoch.0 > old_epoch,
        "{reply:?}"
    );
    let new_epoch = reply.epoch.0;

    // The deposed owner's app answers late, under the old epoch.
    apps[&deposed].control("release").await?;
    cluster.signal(deposed, Signal::Cont)?;
    let late = slow.await.map_err(|e| e.to_string())?;
    let (_, _, s) = state(&survivor, "f1").await?;
    let log = s["state"]["log"].as_array().ok_or("no log")?.clone();
    assert!(
        log.iter()
            .all(|entry| entry["epoch"].as_u64() >= Some(new_epoch)),
        "an entry computed under the deposed owner's epoch {old_epoch} was committed: {log:?}"
    );
    let hundreds = log.iter().filter(|e| e["add"] == 100).count();
    match late {
        // The call itself was retried on the new owner: applied once there.
        Ok(reply) => {
            assert!(reply.epoch.0 > old_epoch, "{reply:?}");
            assert_eq!(hundreds, 1, "{log:?}");
        }
        Err(e) => assert_eq!(hundreds, 0, "failed ({e}) yet applied: {log:?}"),
    }
    // The late answer was offered to the log and refused there.
    let mut refused = 0;
    for node in NODES {
        refused += stale_epoch_refusals(cluster, node).await;
    }
    if refused == 0 {
        return Err("no write under a stale epoch was refused by the log".into());
    }
    Ok(())
}
