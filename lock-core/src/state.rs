//! The state of one held lock, shared by its guard and the locker's
//! background task. All transitions happen under one mutex, so a renewal
//! reply racing an expiry or an unlock resolves one way only, and expiry
//! stays monotone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::Stamp;
use crate::{FencingToken, LeaseId, LockerOptions};

/// Where a lock stands. Watch it with
/// [`LockGuard::status`](crate::LockGuard::status).
///
/// `Held` and `Expiring` alternate while the lock lives; `Lost` and
/// `Released` are final. `Lost` always comes after `Expiring`: a lock lost
/// without the usual warning time (the store reported the lease gone, or
/// the process was paused past the deadline) turns `Expiring` and fires its
/// warning just before it turns `Lost`, so code that checkpoints on the
/// warning never misses it. A watch receiver that looks late may see only
/// the last of the two; [`Warnings`](crate::Warnings) never misses one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockStatus {
    /// Held, and the last renewal (or the acquisition) is recent.
    Held,
    /// Still held, but renewals have been failing for `warn_after`: the lock
    /// expires at its deadline unless a renewal gets through. Finish or
    /// checkpoint the work.
    Expiring,
    /// The lock expired: its local deadline passed, or the store reported
    /// the lease gone. Stop acting on the protected resource.
    Lost,
    /// Released by [`unlock`](crate::LockGuard::unlock), by dropping the
    /// guard, or by closing the locker.
    Released,
}

impl LockStatus {
    /// `Held` or `Expiring`.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Held | Self::Expiring)
    }

    /// `Lost` or `Released`: the status will not change again.
    pub fn is_final(self) -> bool {
        !self.is_live()
    }
}

/// What a renewal reply did to a lock.
pub(crate) enum Renewal {
    /// Deadlines moved (or stayed, for a stale reply); the next timer event
    /// is at this instant.
    Applied { next_event: Instant },
    /// The lock had already expired or been released locally: the store's
    /// lease must be released, expiry is monotone.
    TooLate,
}

/// What a timer event did to a lock.
pub(crate) enum TimerEvent {
    /// Nothing due yet, or a warning fired: the next event is then.
    Next(Instant),
    /// The lock is (now) expired and its store lease should be released.
    Expired,
    /// The lock was released; nothing more to do.
    Released,
}

struct Timing {
    status: LockStatus,
    deadline: Stamp,
    warn_at: Instant,
    last_sent: Instant,
}

impl Timing {
    fn next_event(&self) -> Instant {
        if self.status == LockStatus::Held && self.warn_at < self.deadline.mono {
            self.warn_at
        } else {
            self.deadline.mono
        }
    }
}

/// What identifies one grant.
pub(crate) struct LockIdentity {
    pub(crate) serial: u64,
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) lease_id: LeaseId,
    pub(crate) token: Option<FencingToken>,
}

pub(crate) struct LockState {
    pub(crate) serial: u64,
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) lease_id: LeaseId,
    pub(crate) token: Option<FencingToken>,
    timing: Mutex<Timing>,
    status: watch::Sender<LockStatus>,
    warn_seq: AtomicU64,
}

impl LockState {
    /// A lock granted for `ttl` by a request sent at `sent`.
    pub(crate) fn new(
        identity: LockIdentity,
        sent: Stamp,
        ttl: Duration,
        options: &LockerOptions,
    ) -> Self {
        let LockIdentity {
            serial,
            id,
            key,
            lease_id,
            token,
        } = identity;
        let timing = Timing {
            status: LockStatus::Held,
            deadline: sent.plus(options.usable(ttl)),
            warn_at: sent.mono + options.warn_after(),
            last_sent: sent.mono,
        };
        Self {
            serial,
            id,
            key,
            lease_id,
            token,
            timing: Mutex::new(timing),
            status: watch::Sender::new(LockStatus::Held),
            warn_seq: AtomicU64::new(0),
        }
    }

    fn timing(&self) -> MutexGuard<'_, Timing> {
        // A panic elsewhere cannot leave Timing half-updated: every update
        // is a few plain assignments.
        self.timing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_status(&self, timing: &mut Timing, status: LockStatus) {
        timing.status = status;
        self.status.send_replace(status);
    }

    fn warn(&self, timing: &mut Timing) {
        self.warn_seq.fetch_add(1, Ordering::AcqRel);
        self.set_status(timing, LockStatus::Expiring);
    }

    /// Turns the lock `Lost`, warning first if it had not warned yet.
    fn lose(&self, timing: &mut Timing) {
        if timing.status == LockStatus::Held {
            self.warn(timing);
        }
        self.set_status(timing, LockStatus::Lost);
    }

    pub(crate) fn status(&self) -> LockStatus {
        self.timing().status
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LockStatus> {
        self.status.subscribe()
    }

    pub(crate) fn warn_seq(&self) -> u64 {
        self.warn_seq.load(Ordering::Acquire)
    }

    /// The local deadline, while the lock is live.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let timing = self.timing();
        timing.status.is_live().then_some(timing.deadline.mono)
    }

    pub(crate) fn next_event(&self) -> Instant {
        self.timing().next_event()
    }

    /// Whether the lock is expired at `now`; turns it `Lost` when its
    /// deadline has passed on either clock.
    pub(crate) fn check_expired(&self, now: Stamp) -> bool {
        let mut timing = self.timing();
        if timing.status.is_final() {
            return true;
        }
        if timing.deadline.passed_at(now) {
            self.lose(&mut timing);
            return true;
        }
        false
    }

    /// Applies a successful renewal of a request sent at `sent`.
    pub(crate) fn renewed(
        &self,
        sent: Stamp,
        ttl: Duration,
        options: &LockerOptions,
        now: Stamp,
    ) -> Renewal {
        let mut timing = self.timing();
        if timing.status.is_final() {
            return Renewal::TooLate;
        }
        if timing.deadline.passed_at(now) {
            self.lose(&mut timing);
            return Renewal::TooLate;
        }
        // Never move deadlines from a renewal sent before the last applied
        // one: its ttl started earlier.
        if sent.mono >= timing.last_sent {
            timing.deadline = timing.deadline.max(sent.plus(options.usable(ttl)));
            timing.warn_at = timing.warn_at.max(sent.mono + options.warn_after());
            timing.last_sent = sent.mono;
            if timing.status == LockStatus::Expiring && now.mono < timing.warn_at {
                self.set_status(&mut timing, LockStatus::Held);
            }
        }
        Renewal::Applied {
            next_event: timing.next_event(),
        }
    }

    /// Handles the lock's timer firing at `now`.
    pub(crate) fn on_timer(&self, now: Stamp) -> TimerEvent {
        let mut timing = self.timing();
        match timing.status {
            LockStatus::Released => return TimerEvent::Released,
            LockStatus::Lost => return TimerEvent::Expired,
            LockStatus::Held | LockStatus::Expiring => {}
        }
        if timing.deadline.passed_at(now) {
            self.lose(&mut timing);
            return TimerEvent::Expired;
        }
        if timing.status == LockStatus::Held && now.mono >= timing.warn_at {
            self.warn(&mut timing);
        }
        TimerEvent::Next(timing.next_event())
    }

    /// The store reported the lease gone. Returns whether this changed the
    /// status.
    pub(crate) fn mark_lost(&self) -> bool {
        let mut timing = self.timing();
        if timing.status.is_final() {
            return false;
        }
        self.lose(&mut timing);
        true
    }

    /// Released by its holder. Returns whether the lock was live, i.e.
    /// whether its store lease still needs releasing.
    pub(crate) fn mark_released(&self) -> bool {
        let mut timing = self.timing();
        if timing.status.is_final() {
            return false;
        }
        self.set_status(&mut timing, LockStatus::Released);
        true
    }
}

/// A shared, cheaply cloned handle on a lock's state.
pub(crate) type SharedState = Arc<LockState>;
