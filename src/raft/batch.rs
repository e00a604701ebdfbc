//! The batcher: packs the groups of commands waiting at one moment into one
//! log entry, this node's own proposals and, on the leader, the batches its
//! followers forwarded, so that under load a few large entries carry what
//! many small ones would (each entry is one append and fsync in openraft
//! 0.9's core, one AppendEntries per follower and one apply per node).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::{weight, ForwardError, Retry, WriteError, WritePath, WRITES_IN_FLIGHT};
use crate::model::{Command, CommandResult};

/// Longest batch packed into one log entry, in commands.
const MAX_BATCH: usize = 1024;
/// Rough bytes per log entry at most: an entry must replicate within one
/// heartbeat (openraft's AppendEntries timeout), whatever the load.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What one group's proposer hears: the results of its commands, in order.
pub(super) type GroupAnswer = Result<Vec<CommandResult>, ForwardError>;

/// Commands written together, in one entry, and who waits for them.
pub(super) struct Pending {
    pub commands: Vec<Command>,
    /// A follower's batch: written here only while this node leads, never
    /// forwarded again (`ForwardError::NotLeader` tells the follower).
    pub forwarded: bool,
    pub reply: oneshot::Sender<GroupAnswer>,
}

impl Pending {
    fn weight(&self) -> usize {
        self.commands.iter().map(weight).sum()
    }
}

impl WritePath {
    pub(super) async fn run(self: Arc<Self>, mut receiver: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => match receiver.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let mut bytes = first.weight();
            let mut count = first.commands.len();
            let mut batch = vec![first];
            while count < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match receiver.try_recv() {
                    Ok(next) => {
                        let more = next.weight();
                        if bytes + more > MAX_BATCH_BYTES || count + next.commands.len() > MAX_BATCH
                        {
                            // The next entry starts with it.
                            carried = Some(next);
                            break;
                        }
                        bytes += more;
                        count += next.commands.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let (groups, replies): (Vec<_>, Vec<_>) = batch
                    .into_iter()
                    .map(|p| ((p.commands, p.forwarded), p.reply))
                    .unzip();
                let answers = this.write_groups(groups).await;
                drop(permit);
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            });
        }
    }

    /// Writes one batch of groups (commands, forwarded?) in one entry:
    /// directly on the leader, forwarded otherwise (this node's own groups
    /// only). One answer per group, in order.
    async fn write_groups(self: &Arc<Self>, groups: Vec<(Vec<Command>, bool)>) -> Vec<GroupAnswer> {
        let mut answers: Vec<Option<GroupAnswer>> = (0..groups.len()).map(|_| None).collect();
        let mut left: Vec<(usize, Vec<Command>, bool)> = Vec::with_capacity(groups.len());
        for (i, (commands, forwarded)) in groups.into_iter().enumerate() {
            left.push((i, commands, forwarded));
        }
        // This node's own commands are gathered only while a test's hold is
        // armed: the check must cost the write path nothing otherwise.
        let own: Vec<Command> = if self.transport.faults.hold_armed() {
            let own = left.iter().filter(|(_, _, forwarded)| !forwarded);
            own.flat_map(|(_, commands, _)| commands.iter().cloned())
                .collect()
        } else {
            Vec::new()
        };
        if let Some(hold) = self.transport.faults.take_hold(&own) {
            // Injected fault: this node's proposers hear "unknown" now, their
            // writes go out when the test releases it.
            let held: Vec<Command> = own;
            left.retain(|(i, _, forwarded)| {
                if !forwarded {
                    answers[*i] = Some(Err(ForwardError::Write(WriteError::Timeout(0))));
                }
                *forwarded
            });
            let this = self.clone();
            tokio::spawn(async move {
                if hold.release.await.is_ok() {
                    let outcome = this.write_now(held).await;
                    let _ = hold.outcome.send(outcome.map_err(|e| e.to_string()));
                }
            });
        }
        self.write_left(left, &mut answers).await;
        answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(ForwardError::Write(WriteError::ShuttingDown))))
            .collect()
    }

    /// Writes the groups `left` (index, commands, forwarded?) until they
    /// are written or refused, filling `answers`.
    async fn write_left(
        &self,
        mut left: Vec<(usize, Vec<Command>, bool)>,
        answers: &mut [Option<GroupAnswer>],
    ) {
        let deadline = Instant::now() + self.timing.write_timeout;
        while !left.is_empty() {
            let leader = match self.await_leader(deadline).await {
                Ok(leader) => leader,
                Err(e) => return fail(left, answers, e),
            };
            if leader != self.me {
                // A follower's batch is never forwarded again.
                left.retain(|(i, _, forwarded)| {
                    if *forwarded {
                        answers[*i] = Some(Err(ForwardError::NotLeader));
                    }
                    !forwarded
                });
                if left.is_empty() {
                    return;
                }
            }
            let commands: Vec<Command> = left.iter().flat_map(|(_, c, _)| c.clone()).collect();
            let result = if leader == self.me {
                self.write_as_leader(commands, deadline).await
            } else {
                self.forward(leader, commands, deadline).await
            };
            match result {
                // Leadership moved before the entry was appended: try the new leader.
                Err(Retry::NotLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(Retry::NotLeader) => return fail(left, answers, WriteError::NoLeader),
                Err(Retry::Failed(e)) => return fail(left, answers, e),
                Ok(results) => {
                    let mut results = results.into_iter();
                    for (i, commands, _) in left {
                        answers[i] = Some(Ok(results.by_ref().take(commands.len()).collect()));
                    }
                    return;
                }
            }
        }
    }
}

/// Answers every group `left` with `error` (a follower's batch that found
/// no leader here is told so: the follower tries its leader again).
fn fail(
    left: Vec<(usize, Vec<Command>, bool)>,
    answers: &mut [Option<GroupAnswer>],
    error: WriteError,
) {
    for (i, _, forwarded) in left {
        answers[i] = Some(Err(match (&error, forwarded) {
            (WriteError::NoLeader, true) => ForwardError::NotLeader,
            _ => ForwardError::Write(error.clone()),
        }));
    }
}
