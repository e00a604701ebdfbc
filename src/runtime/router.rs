//! A call's way to its session's owner: run here when this node owns it,
//! else forwarded to the owner; while the session moves, wait (with a
//! backoff on an unchanged route) and try again until the timeout; and the
//! local end, a call handed to the mailbox of the session running here.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

use super::{Call, Runtime, MAX_RETRY_PAUSE, MOVED_GRACE, RETRY_PAUSE};
use crate::model::{CallKey, Epoch, NodeId, NodeStatus, SessionId, SessionKind};
use crate::peer::{CallError, CallReply, ForwardedCall, InternalError};
use crate::sync::Recover;

impl Runtime {
    /// The mailbox of a session running here; a parked session gets its
    /// task now (settling first unless its row is known final).
    fn mailbox_of(&self, id: &SessionId) -> Option<mpsc::Sender<Box<Call>>> {
        let mut tasks = self.tasks.lock().recover();
        let slot = tasks.get_mut(id)?;
        slot.take_parked();
        if slot.live.is_none() {
            if self.finishing.lock().recover().contains_key(id) {
                return None;
            }
            let started =
                self.start_task(id, slot.epoch, slot.settled, Some(slot.min_version), None)?;
            self.ran.lock().recover().insert(id.clone(), slot.epoch);
            slot.live = started.live;
        }
        slot.live.as_ref().map(|live| live.mailbox.clone())
    }

    /// Handles a call here if this node runs the session; never forwards.
    pub(crate) async fn call_local(
        &self,
        id: &SessionId,
        msg: serde_json::Value,
        key: Option<CallKey>,
    ) -> Result<CallReply, CallError> {
        let Some(mailbox) = self.mailbox_of(id) else {
            return Err(CallError::NotHere);
        };
        let (reply, answer) = oneshot::channel();
        if mailbox
            .send(Box::new(Call { msg, key, reply }))
            .await
            .is_err()
        {
            return Err(CallError::NotHere);
        }
        // A dropped reply means the task stopped before taking the call.
        answer.await.unwrap_or(Err(CallError::NotHere))
    }

    /// Routes a call to the session's owner, waiting while it moves, until
    /// `timeout`. With a `key`, or for a query, an attempt whose outcome is
    /// unknown is tried again (on whichever node owns the session then)
    /// until the timeout: the key makes the retry apply nothing if the
    /// first attempt took effect.
    pub async fn call(
        &self,
        id: &SessionId,
        msg: serde_json::Value,
        timeout: Duration,
        key: Option<CallKey>,
    ) -> Result<CallReply, CallError> {
        let deadline = Instant::now() + timeout;
        let mut applied = self.env.view.subscribe();
        let mut last_reason = String::from("no owner yet");
        // Why an earlier attempt may have run (keyed calls only).
        let mut maybe_ran: Option<String> = None;
        let mut query: Option<bool> = None;
        let mut backoff = RouteBackoff::default();
        loop {
            let route = self.owner_of(id);
            let query = *query.get_or_insert_with(|| {
                route.as_ref().is_some_and(|(_, _, kind)| {
                    self.registry
                        .get(kind)
                        .is_some_and(|handler| handler.is_query(&msg))
                })
            });
            let attempt = match route {
                None => return Err(CallError::NotFound(id.clone())),
                Some((owner, epoch, _)) => {
                    self.attempt(id, owner, epoch, &msg, &key, deadline, &mut applied)
                        .await
                }
            };
            match attempt {
                Err(CallError::NotHere) => {}
                Err(CallError::Unavailable(_, reason)) => last_reason = reason,
                // A query changed nothing, whatever happened to it.
                Err(CallError::OutcomeUnknown(reason)) if query => last_reason = reason,
                Err(CallError::OutcomeUnknown(reason)) if key.is_some() => {
                    debug!(session = %id, %reason, "keyed call's outcome unknown; trying again");
                    last_reason = reason.clone();
                    maybe_ran = Some(reason);
                }
                other => return other,
            }
            if Instant::now() >= deadline {
                return Err(match maybe_ran {
                    Some(reason) => CallError::OutcomeUnknown(format!(
                        "{reason}; retried with its key until the timeout"
                    )),
                    None => CallError::Unavailable(id.clone(), last_reason),
                });
            }
            // Wait until the session moves, or a pause that doubles while
            // attempts keep failing on the same route (the owner may be
            // starting the task or renewing its lease): thousands of calls
            // waiting out a mass failover must not become a storm of
            // connects to a dead owner.
            let route = self.route_of(id);
            let until = (Instant::now() + backoff.pause(route)).min(deadline);
            while let Ok(Ok(())) = tokio::time::timeout_at(until, applied.changed()).await {
                if self.route_of(id) != route {
                    break;
                }
            }
        }
    }

    /// The session's live owner (not Down) and its address, its epoch and
    /// kind, as this node's table shows them; `None` when it does not exist.
    #[allow(clippy::type_complexity)]
    fn owner_of(&self, id: &SessionId) -> Option<(Option<(NodeId, String)>, Epoch, SessionKind)> {
        self.env.view.read(|a| {
            a.state.sessions.get(id).map(|s| {
                let owner = s
                    .owner
                    .and_then(|o| a.state.nodes.get(&o))
                    .filter(|n| n.status != NodeStatus::Down)
                    .map(|n| (n.id, n.addr.clone()));
                (owner, s.epoch, s.kind.clone())
            })
        })
    }

    /// One attempt: here when this node owns the session, else at the owner.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        id: &SessionId,
        owner: Option<(NodeId, String)>,
        epoch: Epoch,
        msg: &serde_json::Value,
        key: &Option<CallKey>,
        deadline: Instant,
        applied: &mut watch::Receiver<u64>,
    ) -> Result<CallReply, CallError> {
        match owner {
            None => Err(CallError::NotHere),
            Some((owner, _)) if owner == self.env.me => {
                let local = self.call_local(id, msg.clone(), key.clone());
                match tokio::time::timeout_at(deadline, local).await {
                    Ok(answer) => answer,
                    // The task may be running it (a slow commit): say so.
                    Err(_) => Err(CallError::OutcomeUnknown(format!(
                        "session {id} did not answer within the timeout"
                    ))),
                }
            }
            Some((owner, addr)) => {
                let call = ForwardedCall {
                    msg: msg.clone(),
                    key: key.clone(),
                };
                self.forward(id, owner, &addr, epoch, &call, deadline, applied)
                    .await
            }
        }
    }

    /// The session's owner and epoch as this node's table shows them.
    fn route_of(&self, id: &SessionId) -> Route {
        self.env.view.read(|a| {
            a.state
                .sessions
                .get(id)
                .map_or((None, Epoch(0)), |s| (s.owner, s.epoch))
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        id: &SessionId,
        owner: NodeId,
        addr: &str,
        epoch: Epoch,
        call: &ForwardedCall,
        deadline: Instant,
        applied: &mut watch::Receiver<u64>,
    ) -> Result<CallReply, CallError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let request = self.transport.call(owner, addr, id, call, budget);
        tokio::pin!(request);
        let settle = |answer: Result<Result<CallReply, CallError>, InternalError>| match answer {
            Ok(result) => result,
            Err(e) if e.not_delivered() => Err(CallError::Unavailable(id.clone(), e.to_string())),
            Err(e) => Err(CallError::OutcomeUnknown(format!(
                "owner {owner} did not answer: {e}"
            ))),
        };
        loop {
            tokio::select! {
                answer = &mut request => return settle(answer),
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(CallError::OutcomeUnknown("node shutting down".into()));
                    }
                    let moved = self.env.view.read(|a| {
                        a.state.sessions.get(id).map(|s| s.epoch) != Some(epoch)
                    });
                    if moved {
                        // The attempt may still be connecting to a dead owner
                        // (then it was never delivered and can go to the new
                        // owner); give it a moment to say so.
                        return match tokio::time::timeout(MOVED_GRACE, &mut request).await {
                            Ok(answer) => settle(answer),
                            Err(_) => Err(CallError::OutcomeUnknown(format!(
                                "session moved away from node {owner} while the call was in flight"
                            ))),
                        };
                    }
                }
            }
        }
    }
}

/// A session's owner and epoch: a call retried on an unchanged route backs
/// off, one on a changed route (the session moved) goes at once.
type Route = (Option<NodeId>, Epoch);

/// Pauses between routing attempts of one call: [`RETRY_PAUSE`], doubling
/// while attempts fail on the same route, up to [`MAX_RETRY_PAUSE`].
#[derive(Default)]
struct RouteBackoff {
    route: Option<Route>,
    doublings: u32,
}

impl RouteBackoff {
    fn pause(&mut self, route: Route) -> Duration {
        if self.route == Some(route) {
            self.doublings = (self.doublings + 1).min(5);
        } else {
            self.route = Some(route);
            self.doublings = 0;
        }
        (RETRY_PAUSE * (1 << self.doublings)).min(MAX_RETRY_PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A call's pauses double while its route stays the same, stop at the
    // cap, and start over when the session moves.
    #[test]
    fn retries_back_off_on_an_unchanged_route_only() {
        let mut backoff = RouteBackoff::default();
        let at = |owner, epoch| (Some(owner), Epoch(epoch));
        let ms = |n| Duration::from_millis(n);
        let pauses: Vec<Duration> = (0..7).map(|_| backoff.pause(at(1, 5))).collect();
        assert_eq!(
            pauses,
            [ms(2), ms(4), ms(8), ms(16), ms(32), ms(50), ms(50)]
        );
        assert_eq!(backoff.pause(at(2, 6)), ms(2), "moved: no wait");
        assert_eq!(backoff.pause(at(2, 6)), ms(4));
    }
}
