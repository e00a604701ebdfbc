//! The OpenAPI document against live `minos serve` processes: every
//! operation in `docs/openapi.json` (which a unit test holds equal to the
//! generated document, whose routes another holds equal to the router's)
//! answers with one of its documented statuses, with and without a token;
//! the served document is the committed one; and `/metrics` shows the
//! histograms of the calls this test made.

#[path = "common/process.rs"]
mod process_common;

use std::time::Duration;

use minos::testkit::process::{ProcessCluster, ProcessOptions};
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use process_common::{admin_http, BIN};

const DEADLINE: Duration = Duration::from_secs(60);

fn committed() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// A concrete request for a documented operation: the path with its
/// parameters filled in, and a body.
fn sample(method: &Method, path: &str) -> (String, Option<Value>) {
    let url_path = path
        .replace("/v1/sessions/{id}", "/v1/sessions/probe-1")
        .replace("/v1/nodes/{id}", "/v1/nodes/99")
        .replace("{id}", "probe-1");
    let body = match (method.as_str(), path) {
        ("POST", "/v1/sessions") => Some(serde_json::json!({"id": "probe-1", "state": {"n": 1}})),
        ("POST", "/v1/sessions/{id}/call") => Some(serde_json::json!({"op": "get"})),
        ("POST", _) => Some(serde_json::json!({})),
        _ => None,
    };
    (url_path, body)
}

/// Creates first, deletes last, so the operations in between find the session.
fn order(method: &Method, path: &str) -> u8 {
    match (method.as_str(), path) {
        ("POST", "/v1/sessions") => 0,
        ("DELETE", "/v1/sessions/{id}") => 3,
        ("DELETE", _) => 2,
        _ => 1,
    }
}

fn operations(doc: &Value) -> Vec<(Method, String, Vec<u16>, bool)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let method: Method = method.to_uppercase().parse().expect("a method");
            let statuses = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(|s| s.parse().expect("a numeric status"))
                .collect();
            let protected = op["x-minos-role"] != "none";
            ops.push((method, path.clone(), statuses, protected));
        }
    }
    ops.sort_by_key(|(m, p, _, _)| (order(m, p), p.clone()));
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_with_a_documented_status() -> Result<(), String> {
    // Debug logs as JSON, to find the call's span (the nodes take MINOS_LOG
    // from this process; this binary has no other test).
    std::env::set_var("MINOS_LOG", "minos=debug,info,openraft=warn");
    let mut options = ProcessOptions::new(BIN);
    options.serve_args = vec!["--log-format".into(), "json".into()];
    let mut cluster = ProcessCluster::start(options).await?;
    let deadline = Instant::now() + DEADLINE;
    cluster.await_leader(deadline).await?;
    for id in cluster.ids() {
        cluster.await_healthy(id, deadline).await?;
    }
    let addr = cluster.addr(2);
    let admin = admin_http(&cluster);
    let anonymous = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let doc = committed();

    // The served document is the committed one.
    let served: Value = anonymous
        .get(format!("http://{addr}/v1/openapi.json"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(served, doc, "GET /v1/openapi.json is not docs/openapi.json");

    let ops = operations(&doc);
    assert!(ops.len() >= 16, "only {} operations documented", ops.len());
    for (method, path, statuses, protected) in &ops {
        let (url_path, body) = sample(method, path);
        for (who, http) in [("anonymous", &anonymous), ("admin", &admin)] {
            let mut request = http.request(method.clone(), format!("http://{addr}{url_path}"));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| format!("{method} {url_path}: {e}"))?;
            let status = response.status().as_u16();
            // Headers only: a streaming route's body never ends.
            drop(response);
            assert!(
                statuses.contains(&status),
                "{who} {method} {url_path} answered {status}; documented: {statuses:?}"
            );
            if who == "anonymous" && *protected {
                assert_eq!(status, 401, "{method} {url_path} without a token");
            }
        }
    }

    // The admin call above to probe-1 is in the call histogram, and
    // counters end in _total, histograms in _seconds.
    let text = admin
        .get(format!("http://{}/metrics", cluster.addr(2)))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let mut calls = 0.0;
    for id in cluster.ids() {
        let text = admin
            .get(format!("http://{}/metrics", cluster.addr(id)))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        calls += text
            .lines()
            .filter(|l| {
                l.starts_with("minos_call_duration_seconds_count{kind=\"kv\",outcome=\"ok\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(calls >= 1.0, "no call in minos_call_duration_seconds");
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        match kind {
            "histogram" => assert!(name.ends_with("_seconds"), "{line}"),
            "gauge" => assert!(!name.ends_with("_total"), "{line}"),
            "counter" => {}
            other => panic!("unexpected metric type {other}: {line}"),
        }
    }
    assert!(text.contains("minos_sessions "), "no minos_sessions gauge");

    // The call ran in a span `call` with its session and epoch.
    let logs: String = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.log_tail(id, 100_000))
        .collect::<Vec<_>>()
        .join("\n");
    let spanned = logs.lines().find(|line| {
        line.contains("call handled")
            && line.contains("\"name\":\"call\"")
            && line.contains("\"session\":\"probe-1\"")
            && line.contains("\"epoch\":")
    });
    assert!(spanned.is_some(), "no `call handled` event in a call span");
    assert!(!text.contains("minos_sessions_total"));
    Ok(())
}
