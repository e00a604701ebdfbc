//! The health of this node's external apps, and what follows from it: a
//! node whose app stops answering reports not ready and drains itself (its
//! sessions move, each through the usual handoff, to nodes whose apps
//! answer); when the app answers again it undrains, and the automatic
//! rebalance moves its share back. A drain an operator asked for is left
//! alone: only a drain this watch made is undone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::model::NodeStatus;
use crate::peer::DrainRequest;
use crate::service::Service;

/// Pause between health checks while every app answers.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Pause before a failed check is repeated (two failures in a row make an
/// app not ready, so a dead app is noticed within this after its first
/// refused request).
const RECHECK: Duration = Duration::from_millis(100);

/// Checks every app, drains this node while one stays unreachable and
/// undrains it once all answer again. Runs until shutdown.
pub(super) async fn watch(service: Arc<Service>, mut shutdown: watch::Receiver<bool>) {
    if service.apps.is_empty() {
        return;
    }
    let mut failures = 0u32;
    let mut drained_by_us = false;
    loop {
        let mut all_ready = true;
        for app in &service.apps {
            all_ready &= app.check().await;
        }
        failures = if all_ready { 0 } else { failures + 1 };
        let status = service
            .view
            .read(|a| a.state.nodes.get(&service.me).map(|n| n.status));
        if failures >= 2 && status == Some(NodeStatus::Up) {
            drained_by_us |= drain(&service).await;
        } else if all_ready && drained_by_us {
            drained_by_us = !undrain(&service, status).await;
        }
        // A failure is checked again soon, once; then at the usual pace.
        let pause = if failures == 1 { RECHECK } else { CHECK_EVERY };
        let nudged = futures::future::select_all(
            service
                .apps
                .iter()
                .map(|app| Box::pin(app.nudge.notified())),
        );
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = nudged, if all_ready => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Drains this node; true once the drain was committed.
async fn drain(service: &Service) -> bool {
    let why: Vec<String> = service
        .apps
        .iter()
        .filter_map(|app| app.error().map(|e| format!("{}: {e}", app.kind)))
        .collect();
    warn!(node = service.me, apps = ?why, "an external app does not answer: draining this node");
    let request = DrainRequest {
        node: service.me,
        released: false,
        instance: 0,
    };
    match service.drain(request).await {
        Ok(report) => {
            info!(
                node = service.me,
                moved = report.moved,
                "drained while an app does not answer"
            );
            true
        }
        Err(e) => {
            warn!(node = service.me, error = %e, "could not drain; trying again");
            false
        }
    }
}

/// Undrains this node after its apps answer again; true once it is Up.
async fn undrain(service: &Service, status: Option<NodeStatus>) -> bool {
    if status != Some(NodeStatus::Draining) {
        // Up already, or Down (it becomes Up when heard again).
        return status == Some(NodeStatus::Up);
    }
    match service.undrain(service.me).await {
        Ok(()) => {
            info!(
                node = service.me,
                "every external app answers again: undrained"
            );
            true
        }
        Err(e) => {
            warn!(node = service.me, error = %e, "could not undrain; trying again");
            false
        }
    }
}
