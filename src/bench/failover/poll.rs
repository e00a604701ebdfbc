//! After the signal: what each session looked like before it, the
//! double-owner ledger, and the loop that polls a session until its new
//! owner answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::setup::{error_text, kv_get};
use crate::bench::report::{DoubleOwner, Sample};
use crate::client::Client;
use crate::model::NodeId;

/// What one session looked like just before the signal.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) id: String,
    pub(super) epoch: u64,
    pub(super) expected: Value,
    pub(super) fresh: bool,
}

/// Every `(session, epoch) -> owner` seen in any reply of the run.
#[derive(Default)]
pub(super) struct Ledger {
    seen: Mutex<BTreeMap<(String, u64), NodeId>>,
}

impl Ledger {
    /// Records a reply; returns the other owner if this is a double owner.
    pub(super) fn observe(&self, session: &str, epoch: u64, owner: NodeId) -> Option<NodeId> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let first = *seen.entry((session.to_string(), epoch)).or_insert(owner);
        (first != owner).then_some(first)
    }
}

/// Polls one session after the signal until a new owner answers.
pub(super) struct Poll {
    pub(super) client: Client,
    pub(super) victim: NodeId,
    pub(super) signalled_at: Instant,
    pub(super) cap: Duration,
    pub(super) call_timeout: Duration,
    pub(super) interval: Duration,
    pub(super) ledger: Arc<Ledger>,
}

impl Poll {
    pub(super) async fn run(self, target: Target) -> (Sample, Vec<DoubleOwner>) {
        let deadline = self.signalled_at + self.cap;
        let mut sample = Sample {
            trial: 0,
            session: target.id.clone(),
            fresh: target.fresh,
            victim: self.victim,
            leader: 0,
            signalled_at: String::new(),
            epoch_before: target.epoch,
            latency_ms: None,
            owner_after: None,
            epoch_after: None,
            state_ok: None,
            polls: 0,
            errors: 0,
            last_error: None,
        };
        let mut doubles = Vec::new();
        let msg = kv_get();
        loop {
            let started = Instant::now();
            if started >= deadline {
                break;
            }
            let budget = self.call_timeout.min(deadline - started);
            sample.polls += 1;
            match self.client.call(&target.id, &msg, Some(budget)).await {
                Ok(reply) => {
                    let answered = Instant::now();
                    let epoch = reply.epoch.0;
                    if let Some(other) = self.ledger.observe(&target.id, epoch, reply.owner) {
                        doubles.push(DoubleOwner {
                            trial: 0,
                            session: target.id.clone(),
                            epoch,
                            owners: [other, reply.owner],
                        });
                    }
                    if reply.owner != self.victim && epoch > target.epoch {
                        sample.latency_ms =
                            Some((answered - self.signalled_at).as_secs_f64() * 1000.0);
                        sample.owner_after = Some(reply.owner);
                        sample.epoch_after = Some(epoch);
                        // Keyed writes of the trial add their own field.
                        sample.state_ok = Some(reply.reply["v"] == target.expected["v"]);
                        if sample.state_ok == Some(false) {
                            sample.last_error = Some(format!(
                                "state after failover {} differs from the acknowledged {}",
                                reply.reply, target.expected
                            ));
                        }
                        break;
                    }
                }
                Err(e) => {
                    sample.errors += 1;
                    sample.last_error = Some(error_text(&e));
                }
            }
            let next = (started + self.interval).min(deadline);
            tokio::time::sleep_until(next).await;
        }
        (sample, doubles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The double-owner ledger flags a second owner for a (session, epoch)
    // pair and only that: repeats of one owner and new epochs are fine.
    #[test]
    fn ledger_flags_two_owners_of_one_epoch() {
        let ledger = Ledger::default();
        assert_eq!(ledger.observe("s", 1, 2), None);
        assert_eq!(ledger.observe("s", 1, 2), None);
        assert_eq!(ledger.observe("s", 2, 3), None);
        assert_eq!(ledger.observe("t", 1, 3), None);
        assert_eq!(ledger.observe("s", 1, 3), Some(2));
        assert_eq!(ledger.observe("s", 2, 1), Some(3));
    }
}
