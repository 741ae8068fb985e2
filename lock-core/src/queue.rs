//! Waiting in line: `lock()` adds an entry to its key's queue in the store
//! and waits for the store to hand it the key.
//!
//! The entry is renewed with the held locks by the background task; the
//! waiting call listens for the store's notification that the entry holds,
//! and renews the entry itself now and then: notifications can be lost,
//! and an entry ahead that expires promotes it without any notification.
//! A call that ends without the lock (timeout, cancellation, close)
//! removes its entry.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::{Core, InDoubt, Kind, limit_mismatch};
use crate::registry::Tracked;
use crate::waiter::{Heard, Turn, WaitState};
use crate::{
    AcquireOutcome, LeaseId, LeaseStore, LockError, LockGuard, Queued, RenewEntry, RenewOutcome,
    WaitOutcome,
};

impl<S: LeaseStore> Core<S> {
    /// Takes the lock `id` (key `key`) within `max_wait`, waiting in the
    /// key's queue.
    pub(crate) async fn acquire_in_line(
        self: &Arc<Self>,
        id: &str,
        key: &str,
        kind: Kind,
        max_wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let start = Instant::now();
        let give_up = start + max_wait;
        let timeout = |holder: Option<String>| LockError::Timeout {
            id: id.to_owned(),
            waited: start.elapsed(),
            holder,
        };
        let mut retry = Backoff::new(Duration::from_millis(5), Duration::from_millis(250));
        loop {
            if self.is_closed() {
                return Err(LockError::Closed);
            }
            self.scheduler()?;
            let lease_id = LeaseId::random();
            let mut in_doubt = InDoubt::new(self, key, lease_id);
            let sent = self.clock.now();
            let request = self
                .request(key, lease_id, kind)
                .queued(self.options.waiter_ttl());
            let queued = match self.calls.acquire(request).await {
                Ok(AcquireOutcome::Queued(queued)) => queued,
                Ok(AcquireOutcome::Acquired(grant)) => {
                    let serial = self.next_serial();
                    let state =
                        self.held_state(id, key, serial, lease_id, sent, grant.ttl, grant.token)?;
                    if !self.registry.insert(Tracked::Held(state.clone())) {
                        return Err(LockError::Closed);
                    }
                    in_doubt.armed = false;
                    return Ok(self.guard(state));
                }
                Ok(AcquireOutcome::LimitMismatch { limit }) => {
                    in_doubt.armed = false;
                    return Err(limit_mismatch(id, kind, limit));
                }
                // A store that declined to queue: ask again later.
                Ok(other) => {
                    in_doubt.armed = false;
                    let holder = match other {
                        AcquireOutcome::Held(holder) => Some(holder.owner),
                        _ => None,
                    };
                    if Instant::now() >= give_up {
                        return Err(timeout(holder));
                    }
                    tokio::time::sleep(retry.next().min(give_up - Instant::now())).await;
                    continue;
                }
                Err(error) => {
                    in_doubt.armed = error.is_ambiguous();
                    if !error.is_retryable() || Instant::now() >= give_up {
                        return Err(LockError::Store(error));
                    }
                    drop(in_doubt);
                    tracing::debug!(id, %error, "queueing failed; retrying");
                    tokio::time::sleep(retry.next().min(give_up - Instant::now())).await;
                    continue;
                }
            };
            let waiter = Arc::new(WaitState::new(
                self.next_serial(),
                key.to_owned(),
                lease_id,
                self.options.waiter_ttl(),
                queued.token.clone(),
                sent,
            ));
            if !self.registry.insert(Tracked::Waiting(waiter.clone())) {
                return Err(LockError::Closed);
            }
            // From here the entry is tracked; leaving without the lock
            // removes it.
            in_doubt.armed = false;
            let mut in_line = InLine {
                core: self,
                waiter: &waiter,
                armed: true,
            };
            let holder = queued.holder.as_ref().map(|holder| holder.owner.clone());
            match self.wait_for_turn(&waiter, &queued, give_up).await {
                Some(Turn::Granted { sent, ttl, token }) => {
                    let state =
                        match self.held_state(id, key, waiter.serial, lease_id, sent, ttl, token) {
                            Ok(state) => state,
                            // Granted after its waiter lease ran out: line
                            // up again.
                            Err(error) => {
                                tracing::debug!(id, %error, "promoted too late; queueing again");
                                drop(in_line);
                                continue;
                            }
                        };
                    if let Some((later, later_ttl)) = waiter.convert(state.clone(), sent) {
                        state.renewed(later, later_ttl, &self.options, self.clock.now());
                    }
                    if !self.registry.promote(state.clone()) {
                        state.mark_released();
                        return Err(LockError::Closed);
                    }
                    in_line.armed = false;
                    return Ok(self.guard(state));
                }
                Some(Turn::Lost) => {
                    // The store has no entry left to release.
                    in_line.armed = false;
                    self.registry.remove(waiter.serial);
                    tracing::debug!(id, "the waiting entry expired; queueing again");
                }
                Some(Turn::Closed) => {
                    // Closing released the entry.
                    in_line.armed = false;
                    return Err(LockError::Closed);
                }
                None => {
                    // The wait is over: remove the entry now, so that it
                    // does not hold the key for a moment once it reaches
                    // the head.
                    in_line.armed = false;
                    self.registry.remove(waiter.serial);
                    let released = self
                        .calls
                        .release(key, lease_id, self.options.fencing())
                        .await;
                    if released.is_err() {
                        self.release_detached(key.to_owned(), lease_id);
                    }
                    return Err(timeout(holder));
                }
            }
        }
    }

    /// Waits until the entry holds (or is lost, or the locker closes);
    /// `None` when `give_up` comes first.
    async fn wait_for_turn(
        &self,
        waiter: &WaitState,
        queued: &Queued,
        give_up: Instant,
    ) -> Option<Turn> {
        // Without notifications, polls are how the entry learns it holds.
        // With them, the entry polls only when an entry ahead may have
        // expired (which promotes without a notification) or the store
        // says the queue changed; a notification lost otherwise costs at
        // most a heartbeat, when the renewal round reports the grant.
        let native = self.capabilities.native_wait;
        let cap = self.capabilities.poll_interval;
        let mut polls = Backoff::new(cap / 50, cap);
        let granularity = self.capabilities.ttl_granularity;
        let mut hint = queued.retry_after;
        let mut failures = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
        let store = self.calls.store();
        loop {
            if let Some(turn) = waiter.decided_turn() {
                return Some(turn);
            }
            let now = Instant::now();
            if now >= give_up {
                return None;
            }
            let mut wait = if native {
                give_up - now
            } else {
                polls.next().min(give_up - now)
            };
            if let Some(after) = hint.take() {
                // Look again as soon as an entry ahead may have expired.
                wait = wait.min(after + granularity);
            }
            let heard = tokio::select! {
                biased;
                () = waiter.decided.notified() => continue,
                outcome = tokio::time::timeout(
                    wait,
                    store.wait_for_grant(&waiter.key, waiter.lease_id, wait),
                ) => outcome.unwrap_or(WaitOutcome::TimedOut),
            };
            if let WaitOutcome::Granted { token } = heard
                && (token.is_some() || waiter.token.is_some())
            {
                waiter.granted_by_notification(token);
                continue;
            }
            // Ask the store where the entry stands.
            let sent = self.clock.now();
            let entry = RenewEntry::waiting(&waiter.key, waiter.lease_id, waiter.waiter_ttl);
            match self
                .calls
                .renew(std::slice::from_ref(&entry), self.options.lease())
                .await
            {
                Ok(outcomes) => match outcomes.into_iter().next() {
                    Some(RenewOutcome::Waiting { retry_after, .. }) => {
                        hint = retry_after;
                        waiter.hear(Heard::Waiting { sent });
                    }
                    Some(RenewOutcome::Granted(grant)) => {
                        waiter.hear(Heard::Granted {
                            sent,
                            ttl: grant.ttl,
                            token: grant.token,
                        });
                    }
                    Some(RenewOutcome::Renewed { ttl }) => {
                        waiter.hear(Heard::Granted {
                            sent,
                            ttl,
                            token: None,
                        });
                    }
                    Some(RenewOutcome::Lost) => {
                        waiter.hear(Heard::Lost);
                    }
                    _ => {}
                },
                // The entry lives on until its waiter ttl; the rounds and
                // the next poll try again.
                Err(error) => {
                    tracing::debug!(key = %waiter.key, %error, "polling a waiting entry failed");
                    // A store that fails fast must not be asked in a tight
                    // loop: pause before the next poll.
                    let pause = failures
                        .next()
                        .min(give_up.saturating_duration_since(Instant::now()));
                    tokio::select! {
                        () = waiter.decided.notified() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            }
            failures = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
        }
    }
}

/// Removes a `lock()` call's waiting entry when the call ends without the
/// lock (dropped, or lined up again).
struct InLine<'a, S: LeaseStore> {
    core: &'a Core<S>,
    waiter: &'a WaitState,
    armed: bool,
}

impl<S: LeaseStore> Drop for InLine<'_, S> {
    fn drop(&mut self) {
        if self.armed {
            self.core.registry.remove(self.waiter.serial);
            self.core
                .release_detached(self.waiter.key.clone(), self.waiter.lease_id);
        }
    }
}

/// Jittered exponential backoff.
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(first: Duration, cap: Duration) -> Self {
        Self { next: first, cap }
    }

    /// Somewhere in [d/2, d], then doubles d up to the cap.
    fn next(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.cap);
        let half = current / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}
