//! One trial: the victim and its sessions, the signal, the pollers and
//! keyed writes that measure it, and putting the victim back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::poll::{Poll, Target};
use super::setup::{client_error, error_text, Bench, SETTLE};
use super::Mode;
use crate::bench::report::{DoubleOwner, Sample, WriteSample};
use crate::client::Client;
use crate::model::NodeId;
use crate::testkit::process::Signal;

/// Timeout of each keyed write (the client's default call timeout).
const KEYED_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The samples and anomalies of one trial.
pub(crate) struct TrialOutcome {
    pub victim: NodeId,
    pub leader: NodeId,
    pub samples: Vec<Sample>,
    pub double_owners: Vec<DoubleOwner>,
    pub writes: Vec<WriteSample>,
}

impl TrialOutcome {
    pub(super) fn describe(&self, mode: Mode, trial: usize) -> String {
        let back: Vec<f64> = self.samples.iter().filter_map(|s| s.latency_ms).collect();
        let lost = self.samples.len() - back.len();
        let max = back.iter().copied().fold(0.0, f64::max);
        let mut line = format!(
            "{} trial {:>2}: victim node {} (leader {}), {} sessions, slowest {:.1} ms",
            mode.name(),
            trial + 1,
            self.victim,
            self.leader,
            self.samples.len(),
            max
        );
        if lost > 0 {
            line.push_str(&format!(", {lost} LOST"));
        }
        let wrong = self
            .samples
            .iter()
            .filter(|s| s.state_ok == Some(false))
            .count();
        if wrong > 0 {
            line.push_str(&format!(", {wrong} WRONG STATE"));
        }
        if !self.double_owners.is_empty() {
            line.push_str(&format!(", {} DOUBLE OWNERS", self.double_owners.len()));
        }
        line
    }
}

/// A keyed write sent after the signal, as it was answered.
struct KeyedWrite {
    id: String,
    value: String,
    latency_ms: f64,
    error: Option<String>,
}

impl Bench<'_> {
    /// Runs trial `trial` of `mode` (the steps in the module docs).
    pub(super) async fn trial(&mut self, mode: Mode, trial: usize) -> Result<TrialOutcome, String> {
        let (leader, owners) = self.prepare(mode, trial).await?;
        let victim = self.victim(mode, trial, leader, &owners)?;
        let mut targets: Vec<Target> = owners
            .iter()
            .filter(|(_, (owner, _))| *owner == victim)
            .map(|(id, (_, epoch))| Target {
                id: id.clone(),
                epoch: *epoch,
                expected: json!({ "v": self.values[id] }),
                fresh: false,
            })
            .collect();
        let fresh = if mode == Mode::Crash {
            self.fresh_on(victim, leader, mode, trial).await?
        } else {
            Vec::new()
        };
        let fresh_ids: Vec<String> = fresh.iter().map(|t| t.id.clone()).collect();
        targets.extend(fresh);

        let survivors: Vec<Client> = self
            .clients
            .iter()
            .filter(|(id, _)| **id != victim)
            .map(|(_, c)| c.clone())
            .collect();
        let write_targets: Vec<String> = targets
            .iter()
            .filter(|t| !t.fresh)
            .take(self.config.keyed_writes)
            .map(|t| t.id.clone())
            .collect();
        let signalled_at = Instant::now();
        let signalled_wall = chrono::Utc::now();
        self.cluster.signal(victim, mode.signal())?;
        let value = format!("t{}-{mode:?}", trial + 1);
        let writes = send_keyed_writes(&write_targets, &survivors, &value, signalled_at);
        let pollers = self.start_pollers(targets, &survivors, victim, signalled_at);
        let mut samples = Vec::new();
        let mut double_owners = Vec::new();
        for poller in pollers {
            let (mut sample, doubles) = poller.await.map_err(|e| format!("poller died: {e}"))?;
            sample.trial = trial + 1;
            sample.leader = leader;
            sample.signalled_at =
                signalled_wall.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            for mut double in doubles {
                double.trial = trial + 1;
                double_owners.push(double);
            }
            samples.push(sample);
        }
        let writes = count_applied(writes, &survivors[0], trial).await?;
        self.put_back(mode, victim, &fresh_ids).await?;
        Ok(TrialOutcome {
            victim,
            leader,
            samples,
            double_owners,
            writes,
        })
    }

    /// Restores the cluster and appends one value to every session; returns
    /// the leader and each session's owner and epoch.
    async fn prepare(
        &mut self,
        mode: Mode,
        trial: usize,
    ) -> Result<(NodeId, BTreeMap<String, (NodeId, u64)>), String> {
        let leader = self.restore().await?;
        let owners = self
            .append_round(&format!("{}-{}", mode.name(), trial + 1))
            .await?;
        // The append round may have run while leadership moved; ask again.
        let leader = {
            let now = self.leader().await?;
            if now != leader {
                self.restore().await?
            } else {
                now
            }
        };
        Ok((leader, owners))
    }

    /// The node that gets the signal: the leader, or in turn each
    /// non-leader that owns a session.
    fn victim(
        &self,
        mode: Mode,
        trial: usize,
        leader: NodeId,
        owners: &BTreeMap<String, (NodeId, u64)>,
    ) -> Result<NodeId, String> {
        let mut owned: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (owner, _) in owners.values() {
            *owned.entry(*owner).or_default() += 1;
        }
        Ok(match mode {
            Mode::LeaderCrash => leader,
            _ => {
                let candidates: Vec<NodeId> = self
                    .cluster
                    .ids()
                    .into_iter()
                    .filter(|id| *id != leader && owned.get(id).copied().unwrap_or(0) > 0)
                    .collect();
                if candidates.is_empty() {
                    return Err("no non-leader node owns a session".into());
                }
                candidates[trial % candidates.len()]
            }
        })
    }

    /// One poller per target, spread over the survivors.
    fn start_pollers(
        &self,
        targets: Vec<Target>,
        survivors: &[Client],
        victim: NodeId,
        signalled_at: Instant,
    ) -> Vec<JoinHandle<(Sample, Vec<DoubleOwner>)>> {
        targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let poll = Poll {
                    client: survivors[i % survivors.len()].clone(),
                    victim,
                    signalled_at,
                    cap: self.config.cap,
                    call_timeout: self.config.call_timeout,
                    interval: self.config.poll_interval,
                    ledger: self.ledger.clone(),
                };
                tokio::spawn(async move { poll.run(target).await })
            })
            .collect()
    }

    /// Puts the victim back for the next trial and deletes the fresh
    /// sessions.
    async fn put_back(
        &mut self,
        mode: Mode,
        victim: NodeId,
        fresh_ids: &[String],
    ) -> Result<(), String> {
        match mode {
            Mode::Graceful => self.cluster.await_exit(victim, SETTLE).await?,
            Mode::Crash | Mode::LeaderCrash => self.cluster.await_exit(victim, SETTLE).await?,
            Mode::Freeze => self.cluster.signal(victim, Signal::Cont)?,
        }
        if !fresh_ids.is_empty() {
            self.restore().await?;
            let leader_now = self.leader().await?;
            let client = self.clients[&leader_now].clone();
            for id in fresh_ids {
                client.delete_session(id).await.map_err(client_error)?;
            }
        }
        Ok(())
    }
}

/// Appends `value` to each of `ids` with a key, through the survivors in
/// turn, timing each from the signal.
fn send_keyed_writes(
    ids: &[String],
    survivors: &[Client],
    value: &str,
    signalled_at: Instant,
) -> Vec<JoinHandle<KeyedWrite>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let client = survivors[(i + 1) % survivors.len()].clone();
            let (id, value) = (id.clone(), value.to_string());
            tokio::spawn(async move {
                let msg = json!({"op": "append", "field": "writes", "value": value});
                let answer = client.call(&id, &msg, Some(KEYED_WRITE_TIMEOUT)).await;
                let latency_ms = signalled_at.elapsed().as_secs_f64() * 1000.0;
                let error = answer.err().map(|e| error_text(&e));
                KeyedWrite {
                    id,
                    value,
                    latency_ms,
                    error,
                }
            })
        })
        .collect()
}

/// Waits for the keyed writes and counts how often each was applied, read
/// back through `reader`.
async fn count_applied(
    writes: Vec<JoinHandle<KeyedWrite>>,
    reader: &Client,
    trial: usize,
) -> Result<Vec<WriteSample>, String> {
    let mut samples = Vec::new();
    for write in writes {
        let write = write.await.map_err(|e| format!("keyed writer died: {e}"))?;
        let applied = match reader.get_session(&write.id).await {
            Ok(session) => Some(session.state["writes"].as_array().map_or(0, |a| {
                a.iter().filter(|v| **v == json!(write.value)).count()
            })),
            Err(_) => None,
        };
        samples.push(WriteSample {
            trial: trial + 1,
            session: write.id,
            latency_ms: write.latency_ms,
            error: write.error,
            applied,
        });
    }
    Ok(samples)
}
