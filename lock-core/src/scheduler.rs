//! The locker's one background task: renews every held lease in batches,
//! fires warnings and expiries from one timer queue, and releases leases in
//! the background (dropped guards, abandoned acquisitions, expired locks).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::calls::Calls;
use crate::clock::{Clock, Stamp};
use crate::observe;
use crate::registry::{Registry, Tracked};
use crate::state::{Renewal, SharedState, TimerEvent};
use crate::waiter::Heard;
use crate::{LeaseId, LeaseStore, LockerOptions, RenewEntry, RenewOutcome, StoreError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Messages to the background task. Taking and releasing locks sends none:
/// those go through the [`Registry`].
pub(crate) enum Command {
    /// Release a lease that may have been granted (an acquisition whose
    /// reply was lost or abandoned).
    ReleaseLease { key: String, lease_id: LeaseId },
    /// Release everything and stop; reply when done.
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// What the locker keeps to talk to its task.
pub(crate) struct SchedulerHandle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) finished: watch::Receiver<bool>,
}

/// A lock whose warning and expiry timer is armed.
struct Armed {
    state: SharedState,
    timer: delay_queue::Key,
}

/// One renewal call: the entries it carried and the store's answer.
type BatchResult = (Vec<Tracked>, Result<Vec<RenewOutcome>, StoreError>);

struct RoundResult {
    sent: Stamp,
    batches: Vec<BatchResult>,
}

struct Scheduler<S: LeaseStore> {
    calls: Calls<S>,
    options: Arc<LockerOptions>,
    clock: Clock,
    max_batch: usize,
    registry: Arc<Registry>,
    /// The locks seen at the last round (or since), with their timers. A
    /// lock gets its timer at the first round after its grant, which comes
    /// before its first warning (`warn_after > heartbeat`).
    armed: HashMap<u64, Armed>,
    timers: DelayQueue<u64>,
    releases: FuturesUnordered<BoxFuture<Option<StoreError>>>,
    /// Releases waiting for a place among the ones in flight.
    queued_releases: VecDeque<(String, LeaseId)>,
    closing: bool,
    close_replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    close_error: Option<StoreError>,
}

/// Starts the background task on `runtime`.
pub(crate) fn spawn<S: LeaseStore>(
    runtime: &tokio::runtime::Handle,
    calls: Calls<S>,
    options: Arc<LockerOptions>,
    clock: Clock,
    max_batch: usize,
    registry: Arc<Registry>,
) -> SchedulerHandle {
    let (commands, receiver) = mpsc::unbounded_channel();
    let (finished_tx, finished) = watch::channel(false);
    let scheduler = Scheduler {
        calls,
        options,
        clock,
        max_batch: max_batch.max(1),
        registry,
        armed: HashMap::new(),
        timers: DelayQueue::new(),
        releases: FuturesUnordered::new(),
        queued_releases: VecDeque::new(),
        closing: false,
        close_replies: Vec::new(),
        close_error: None,
    };
    runtime.spawn(async move {
        scheduler.run(receiver).await;
        finished_tx.send_replace(true);
    });
    SchedulerHandle { commands, finished }
}

impl<S: LeaseStore> Scheduler<S> {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let heartbeat = self.options.heartbeat();
        let far_future = || Instant::now() + Duration::from_secs(86_400 * 365);
        let next_round = tokio::time::sleep_until(far_future());
        tokio::pin!(next_round);
        let mut round_scheduled = false;
        let mut round: Option<BoxFuture<RoundResult>> = None;
        // A new locker waits idle for its first lock (see Registry).
        let mut commands_open = true;

        loop {
            if !commands_open && self.releases.is_empty() && round.is_none() {
                break;
            }
            let idle = !round_scheduled && round.is_none() && !self.closing;
            tokio::select! {
                biased;
                command = commands.recv(), if commands_open => match command {
                    Some(command) => {
                        self.handle(command, &mut commands);
                        // Take whatever else is queued in the same wake-up.
                        while let Ok(command) = commands.try_recv() {
                            self.handle(command, &mut commands);
                        }
                    }
                    None => {
                        commands_open = false;
                        self.release_all();
                    }
                },
                () = self.registry.wake.notified(), if idle => {
                    // The first lock after an idle spell: renew it a
                    // heartbeat from now.
                    next_round.as_mut().reset(Instant::now() + heartbeat);
                    round_scheduled = true;
                }
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    self.on_timer(expired.into_inner());
                }
                result = async {
                    match round.as_mut() {
                        Some(round) => round.await,
                        None => std::future::pending().await,
                    }
                }, if round.is_some() => {
                    round = None;
                    let next = self.finish_round(result);
                    if !self.closing {
                        next_round.as_mut().reset(next);
                        round_scheduled = true;
                    }
                }
                () = &mut next_round, if round_scheduled => {
                    round_scheduled = false;
                    next_round.as_mut().reset(far_future());
                    match self.start_round() {
                        Round::Started(started) => round = Some(started),
                        // Every lock had expired: look again next tick.
                        Round::NothingLive => {
                            next_round.as_mut().reset(Instant::now() + heartbeat);
                            round_scheduled = true;
                        }
                        Round::Idle => {}
                    }
                }
                Some(error) = self.releases.next(), if !self.releases.is_empty() => {
                    if let Some(error) = error
                        && self.closing
                        && self.close_error.is_none()
                    {
                        self.close_error = Some(error);
                    }
                    self.start_queued_releases();
                }
            }
        }
        let result = match self.close_error.take() {
            Some(error) => Err(error),
            None => Ok(()),
        };
        for reply in self.close_replies.drain(..) {
            let _ = reply.send(result.clone());
        }
        tracing::debug!("locker background task finished");
    }

    fn handle(&mut self, command: Command, commands: &mut mpsc::UnboundedReceiver<Command>) {
        match command {
            Command::ReleaseLease { key, lease_id } => self.release_later(key, lease_id),
            Command::Close(reply) => {
                self.close_replies.push(reply);
                if !self.closing {
                    // Nothing new gets in; what is queued is still handled.
                    commands.close();
                    self.release_all();
                }
            }
        }
    }

    /// Releases every tracked lock (closing).
    fn release_all(&mut self) {
        self.closing = true;
        self.armed.clear();
        self.timers.clear();
        for tracked in self.registry.close() {
            match tracked {
                Tracked::Held(state) => {
                    if state.mark_released() {
                        self.release_later(state.key.clone(), state.lease_id);
                    }
                }
                Tracked::Waiting(waiter) => {
                    waiter.close();
                    self.release_later(waiter.key.clone(), waiter.lease_id);
                }
            }
        }
    }

    /// Stops tracking a lock: out of the registry, its timer disarmed.
    fn untrack(&mut self, serial: u64) -> Option<SharedState> {
        let state = match self.registry.remove(serial) {
            Some(Tracked::Held(state)) => Some(state),
            _ => None,
        };
        let armed = self.disarm(serial);
        state.or(armed)
    }

    fn disarm(&mut self, serial: u64) -> Option<SharedState> {
        let armed = self.armed.remove(&serial)?;
        self.timers.try_remove(&armed.timer);
        Some(armed.state)
    }

    /// Queues a background release; at most [`RELEASES_IN_FLIGHT`] run at
    /// once, so that thousands of them (closing a busy locker) wait for a
    /// connection without their timeouts running.
    fn release_later(&mut self, key: String, lease_id: LeaseId) {
        self.queued_releases.push_back((key, lease_id));
        self.start_queued_releases();
    }

    fn start_queued_releases(&mut self) {
        while self.releases.len() < RELEASES_IN_FLIGHT {
            let Some((key, lease_id)) = self.queued_releases.pop_front() else {
                return;
            };
            self.start_release(key, lease_id);
        }
    }

    fn start_release(&mut self, key: String, lease_id: LeaseId) {
        let calls = self.calls.clone();
        let fencing = self.options.fencing();
        self.releases.push(Box::pin(async move {
            match calls.release(&key, lease_id, fencing).await {
                Ok(outcome) => {
                    tracing::debug!(key = %key, ?outcome, "background release");
                    None
                }
                Err(error) => {
                    tracing::warn!(key = %key, %error, "background release failed; the lease ends with its ttl");
                    Some(error)
                }
            }
        }));
    }

    fn on_timer(&mut self, serial: u64) {
        let now = self.clock.now();
        let Some(armed) = self.armed.get_mut(&serial) else {
            return;
        };
        let warnings_before = armed.state.warn_seq();
        match armed.state.on_timer(now) {
            TimerEvent::Next(at) => {
                if armed.state.warn_seq() > warnings_before {
                    observe::count("dlock_warnings_total", "", "");
                    tracing::warn!(id = %armed.state.id, "lock expiring: renewals are failing");
                }
                armed.timer = self.timers.insert_at(serial, at);
            }
            TimerEvent::Expired => {
                self.expire(serial);
            }
            TimerEvent::Released => {
                self.untrack(serial);
            }
        }
    }

    /// A lock passed its local deadline: stop tracking it, and release its
    /// lease in case the store still has it.
    fn expire(&mut self, serial: u64) {
        if let Some(state) = self.untrack(serial) {
            observe::count("dlock_lost_total", "reason", "deadline");
            tracing::warn!(id = %state.id, "lock lost: its local deadline passed before a renewal succeeded");
            self.release_later(state.key.clone(), state.lease_id);
        }
    }

    fn start_round(&mut self) -> Round {
        let sent = self.clock.now();
        let Some(tracked) = self.registry.snapshot() else {
            self.armed.clear();
            self.timers.clear();
            return Round::Idle;
        };
        // Locks released since the last round lose their timers; new ones
        // get theirs.
        let current: HashSet<u64> = tracked.iter().map(Tracked::serial).collect();
        let gone: Vec<u64> = self
            .armed
            .keys()
            .filter(|serial| !current.contains(serial))
            .copied()
            .collect();
        for serial in gone {
            self.disarm(serial);
        }
        let mut live = Vec::with_capacity(tracked.len());
        for entry in tracked {
            if let Tracked::Held(state) = &entry {
                if state.check_expired(sent) {
                    self.expire(state.serial);
                    continue;
                }
                if !self.armed.contains_key(&state.serial) {
                    let timer = self.timers.insert_at(state.serial, state.next_event());
                    self.armed.insert(
                        state.serial,
                        Armed {
                            state: state.clone(),
                            timer,
                        },
                    );
                }
            }
            live.push(entry);
        }
        if live.is_empty() {
            return Round::NothingLive;
        }
        let batches: Vec<Vec<Tracked>> = live
            .chunks(self.max_batch)
            .map(<[Tracked]>::to_vec)
            .collect();
        let calls = self.calls.clone();
        let ttl = self.options.lease();
        tracing::trace!(entries = live.len(), batches = batches.len(), "renewing");
        Round::Started(Box::pin(async move {
            let calls = batches.into_iter().map(|batch| {
                let calls = calls.clone();
                async move {
                    let entries: Vec<RenewEntry<'_>> = batch
                        .iter()
                        .map(|tracked| match tracked {
                            Tracked::Held(state) => RenewEntry::held(&state.key, state.lease_id),
                            Tracked::Waiting(waiter) => {
                                RenewEntry::waiting(&waiter.key, waiter.lease_id, waiter.waiter_ttl)
                            }
                        })
                        .collect();
                    let result = calls.renew(&entries, ttl).await;
                    drop(entries);
                    (batch, result)
                }
            });
            RoundResult {
                sent,
                batches: join_all(calls).await,
            }
        }))
    }

    /// Applies one held lock's renewal outcome.
    fn apply_renewal(
        &mut self,
        state: SharedState,
        outcome: RenewOutcome,
        sent: Stamp,
        now: Stamp,
    ) {
        let ttl = match outcome {
            RenewOutcome::Renewed { ttl } | RenewOutcome::Waiting { ttl, .. } => ttl,
            RenewOutcome::Granted(grant) => grant.ttl,
            _ => {
                if state.mark_lost() {
                    observe::count("dlock_lost_total", "reason", "store");
                    tracing::warn!(id = %state.id, "lock lost: the store no longer has its lease");
                }
                self.untrack(state.serial);
                return;
            }
        };
        match state.renewed(sent, ttl, &self.options, now) {
            Renewal::Applied { next_event } => {
                if let Some(armed) = self.armed.get(&state.serial) {
                    self.timers.reset_at(&armed.timer, next_event);
                }
            }
            Renewal::TooLate => {
                // Expiry is monotone: give the lease back.
                self.untrack(state.serial);
                self.release_later(state.key.clone(), state.lease_id);
            }
        }
    }

    /// Applies a renewal round; returns when the next round is due.
    fn finish_round(&mut self, round: RoundResult) -> Instant {
        let now = self.clock.now();
        let mut failed = false;
        for (batch, result) in round.batches {
            let outcomes = match result {
                Ok(outcomes) if outcomes.len() == batch.len() => outcomes,
                Ok(outcomes) => {
                    failed = true;
                    tracing::error!(
                        expected = batch.len(),
                        got = outcomes.len(),
                        "store answered a renewal batch with the wrong number of outcomes"
                    );
                    continue;
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(%error, leases = batch.len(), "renewal failed; retrying soon");
                    continue;
                }
            };
            for (tracked, outcome) in batch.into_iter().zip(outcomes) {
                let state = match tracked {
                    Tracked::Held(state) => state,
                    Tracked::Waiting(waiter) => {
                        let heard = match &outcome {
                            RenewOutcome::Waiting { .. } => Heard::Waiting { sent: round.sent },
                            RenewOutcome::Granted(grant) => Heard::Granted {
                                sent: round.sent,
                                ttl: grant.ttl,
                                token: grant.token.clone(),
                            },
                            RenewOutcome::Renewed { ttl } => Heard::Granted {
                                sent: round.sent,
                                ttl: *ttl,
                                token: None,
                            },
                            _ => Heard::Lost,
                        };
                        // Still waiting: the call takes it from here.
                        let Some(state) = waiter.hear(heard) else {
                            continue;
                        };
                        // The call made it a held lock meanwhile.
                        state
                    }
                };
                self.apply_renewal(state, outcome, round.sent, now);
            }
        }
        if failed {
            now.mono + retry_delay(self.options.heartbeat())
        } else {
            round.sent.mono + self.options.heartbeat()
        }
    }
}

/// What starting a renewal round did.
enum Round {
    Started(BoxFuture<RoundResult>),
    /// Locks are tracked but none is live any more.
    NothingLive,
    /// No lock is tracked: the task waits for the registry to wake it.
    Idle,
}

/// How many background releases run at once.
const RELEASES_IN_FLIGHT: usize = 64;

/// How soon a failed renewal round is retried: well before the next tick.
fn retry_delay(heartbeat: Duration) -> Duration {
    (heartbeat / 4).min(Duration::from_secs(1))
}
