//! The locker's one background task: renews every held lease in batches,
//! fires warnings and expiries from one timer queue, and releases leases in
//! the background (dropped guards, abandoned acquisitions, expired locks).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::clock::{Clock, Stamp};
use crate::observe;
use crate::state::{Renewal, SharedState, TimerEvent};
use crate::{LeaseId, LeaseStore, LockerOptions, RenewEntry, RenewOutcome, StoreError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Messages to the background task.
pub(crate) enum Command {
    /// Track a newly granted lock.
    Register(SharedState),
    /// Stop tracking a lock released in the foreground.
    Forget(SharedState),
    /// Stop tracking a lock and release its lease.
    ReleaseLock(SharedState),
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

struct Tracked {
    state: SharedState,
    timer: delay_queue::Key,
}

/// One renewal call: the leases it carried and the store's answer.
type BatchResult = (Vec<SharedState>, Result<Vec<RenewOutcome>, StoreError>);

struct RoundResult {
    sent: Stamp,
    batches: Vec<BatchResult>,
}

struct Scheduler<S: LeaseStore> {
    store: Arc<S>,
    options: Arc<LockerOptions>,
    clock: Clock,
    max_batch: usize,
    tracked: HashMap<u64, Tracked>,
    tracked_count: Arc<AtomicUsize>,
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
    store: Arc<S>,
    options: Arc<LockerOptions>,
    clock: Clock,
    max_batch: usize,
    tracked_count: Arc<AtomicUsize>,
) -> SchedulerHandle {
    let (commands, receiver) = mpsc::unbounded_channel();
    let (finished_tx, finished) = watch::channel(false);
    let scheduler = Scheduler {
        store,
        options,
        clock,
        max_batch: max_batch.max(1),
        tracked: HashMap::new(),
        tracked_count,
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
        let mut commands_open = true;

        loop {
            if !round_scheduled && round.is_none() && !self.tracked.is_empty() {
                next_round.as_mut().reset(Instant::now() + heartbeat);
                round_scheduled = true;
            }
            if !commands_open && self.releases.is_empty() && round.is_none() {
                break;
            }
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
                    let retry = self.finish_round(result);
                    if !self.tracked.is_empty() {
                        next_round.as_mut().reset(retry);
                        round_scheduled = true;
                    }
                }
                () = &mut next_round, if round_scheduled => {
                    round_scheduled = false;
                    next_round.as_mut().reset(far_future());
                    round = self.start_round();
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
            Command::Register(state) => {
                if self.closing {
                    if state.mark_released() {
                        self.release_later(state.key.clone(), state.lease_id);
                    }
                    return;
                }
                let timer = self.timers.insert_at(state.serial, state.next_event());
                self.tracked.insert(state.serial, Tracked { state, timer });
                self.tracked_count
                    .store(self.tracked.len(), Ordering::Relaxed);
            }
            Command::Forget(state) => {
                self.untrack(state.serial);
            }
            Command::ReleaseLock(state) => {
                self.untrack(state.serial);
                self.release_later(state.key.clone(), state.lease_id);
            }
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
        let tracked: Vec<Tracked> = self.tracked.drain().map(|(_, t)| t).collect();
        self.timers.clear();
        self.tracked_count.store(0, Ordering::Relaxed);
        for Tracked { state, .. } in tracked {
            if state.mark_released() {
                self.release_later(state.key.clone(), state.lease_id);
            }
        }
    }

    fn untrack(&mut self, serial: u64) -> Option<SharedState> {
        let tracked = self.tracked.remove(&serial)?;
        self.timers.try_remove(&tracked.timer);
        self.tracked_count
            .store(self.tracked.len(), Ordering::Relaxed);
        Some(tracked.state)
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
        let store = self.store.clone();
        let timeout = self.options.store_timeout();
        let fencing = self.options.fencing();
        self.releases.push(Box::pin(async move {
            let start = Instant::now();
            let release = store.release(&key, lease_id, fencing);
            let result = tokio::time::timeout(timeout, release).await;
            observe::store_latency("release", start.elapsed());
            if let Ok(result) = &result {
                observe::count_release(result);
            } else {
                observe::count("dlock_release_total", "outcome", "error");
            }
            match result {
                Ok(Ok(outcome)) => {
                    tracing::debug!(key = %key, ?outcome, "background release");
                    None
                }
                Ok(Err(error)) => {
                    tracing::warn!(key = %key, %error, "background release failed; the lease ends with its ttl");
                    Some(error)
                }
                Err(_) => {
                    tracing::warn!(key = %key, "background release timed out; the lease ends with its ttl");
                    Some(StoreError::timeout("release timed out").with_key(&key))
                }
            }
        }));
    }

    fn on_timer(&mut self, serial: u64) {
        let now = self.clock.now();
        let Some(tracked) = self.tracked.get_mut(&serial) else {
            return;
        };
        let warnings_before = tracked.state.warn_seq();
        match tracked.state.on_timer(now) {
            TimerEvent::Next(at) => {
                if tracked.state.warn_seq() > warnings_before {
                    observe::count("dlock_warnings_total", "", "");
                    tracing::warn!(id = %tracked.state.id, "lock expiring: renewals are failing");
                }
                tracked.timer = self.timers.insert_at(serial, at);
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

    fn start_round(&mut self) -> Option<BoxFuture<RoundResult>> {
        let sent = self.clock.now();
        let mut live = Vec::with_capacity(self.tracked.len());
        let mut expired = Vec::new();
        for (serial, tracked) in &self.tracked {
            if tracked.state.check_expired(sent) {
                expired.push(*serial);
            } else {
                live.push(tracked.state.clone());
            }
        }
        for serial in expired {
            self.expire(serial);
        }
        if live.is_empty() {
            return None;
        }
        let batches: Vec<Vec<SharedState>> = live
            .chunks(self.max_batch)
            .map(<[SharedState]>::to_vec)
            .collect();
        let store = self.store.clone();
        let ttl = self.options.lease();
        let timeout = self.options.store_timeout();
        tracing::trace!(locks = live.len(), batches = batches.len(), "renewing");
        Some(Box::pin(async move {
            let calls = batches.into_iter().map(|batch| {
                let store = store.clone();
                async move {
                    let entries: Vec<RenewEntry<'_>> = batch
                        .iter()
                        .map(|state| RenewEntry {
                            key: &state.key,
                            lease_id: state.lease_id,
                        })
                        .collect();
                    let result =
                        match tokio::time::timeout(timeout, store.renew(&entries, ttl)).await {
                            Ok(result) => result,
                            Err(_) => Err(StoreError::timeout("renewal timed out")),
                        };
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
            for (state, outcome) in batch.into_iter().zip(outcomes) {
                match outcome {
                    RenewOutcome::Renewed { ttl } => {
                        match state.renewed(round.sent, ttl, &self.options, now) {
                            Renewal::Applied { next_event } => {
                                if let Some(tracked) = self.tracked.get(&state.serial) {
                                    self.timers.reset_at(&tracked.timer, next_event);
                                }
                            }
                            Renewal::TooLate => {
                                // Expiry is monotone: give the lease back.
                                self.untrack(state.serial);
                                self.release_later(state.key.clone(), state.lease_id);
                            }
                        }
                    }
                    RenewOutcome::Lost => {
                        if state.mark_lost() {
                            observe::count("dlock_lost_total", "reason", "store");
                            tracing::warn!(id = %state.id, "lock lost: the store no longer has its lease");
                        }
                        self.untrack(state.serial);
                    }
                }
            }
        }
        if failed {
            now.mono + retry_delay(self.options.heartbeat())
        } else {
            round.sent.mono + self.options.heartbeat()
        }
    }
}

/// How many background releases run at once.
const RELEASES_IN_FLIGHT: usize = 64;

/// How soon a failed renewal round is retried: well before the next tick.
fn retry_delay(heartbeat: Duration) -> Duration {
    (heartbeat / 4).min(Duration::from_secs(1))
}
