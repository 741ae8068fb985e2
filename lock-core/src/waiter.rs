//! A `lock()` call's entry in its key's queue: what the waiting call and
//! the background task know about it, and how they agree on its fate.
//!
//! The entry is renewed with the held locks, in the background task's
//! rounds; the waiting call meanwhile listens for the store's notification
//! and renews the entry itself now and then, since notifications can be
//! lost. Whoever learns first that the entry holds decides; the call turns
//! it into a held lock under this state's mutex, so a renewal answered
//! after that is applied to the lock, never lost.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::FencingToken;
use crate::clock::Stamp;
use crate::state::SharedState;

/// How a wait ended, as decided by a renewal or a notification.
#[derive(Debug, Clone)]
pub(crate) enum Turn {
    /// The entry holds. Its lease is known to last `ttl` from `sent` (a
    /// grant by notification keeps the waiter's expiry: the send time of
    /// its last renewal and its waiter ttl).
    Granted {
        sent: Stamp,
        ttl: Duration,
        token: Option<FencingToken>,
    },
    /// The store no longer has the entry (it expired between renewals).
    Lost,
    /// The locker closed.
    Closed,
}

enum Phase {
    Waiting,
    Decided(Turn),
    /// The call turned the grant into this held lock.
    Converted(SharedState),
}

struct Inner {
    /// When the last successful acquire or renewal of the entry was sent.
    last_sent: Stamp,
    phase: Phase,
}

pub(crate) struct WaitState {
    pub(crate) serial: u64,
    pub(crate) key: String,
    pub(crate) lease_id: crate::LeaseId,
    pub(crate) waiter_ttl: Duration,
    /// The token the store announced when it queued the entry.
    pub(crate) token: Option<FencingToken>,
    inner: Mutex<Inner>,
    /// Signalled when the phase is decided by someone else than the call.
    pub(crate) decided: Notify,
}

/// What a renewal of a waiting entry found, as the background task and
/// the call's own polls report it.
pub(crate) enum Heard {
    /// Still waiting, extended by its waiter ttl at `sent`.
    Waiting {
        sent: Stamp,
    },
    /// Holds, extended to `ttl` at `sent`.
    Granted {
        sent: Stamp,
        ttl: Duration,
        token: Option<FencingToken>,
    },
    Lost,
}

impl WaitState {
    pub(crate) fn new(
        serial: u64,
        key: String,
        lease_id: crate::LeaseId,
        waiter_ttl: Duration,
        token: Option<FencingToken>,
        sent: Stamp,
    ) -> Self {
        Self {
            serial,
            key,
            lease_id,
            waiter_ttl,
            token,
            inner: Mutex::new(Inner {
                last_sent: sent,
                phase: Phase::Waiting,
            }),
            decided: Notify::new(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Updates under the lock are plain assignments.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies what a renewal heard. Returns the held lock when the call
    /// already converted the entry: the renewal then applies to it.
    pub(crate) fn hear(&self, heard: Heard) -> Option<SharedState> {
        let mut inner = self.inner();
        match &mut inner.phase {
            Phase::Converted(state) => return Some(state.clone()),
            // Granted already, not yet converted: keep the later extension.
            Phase::Decided(Turn::Granted {
                sent: decided,
                ttl: decided_ttl,
                ..
            }) => {
                match heard {
                    Heard::Waiting { sent } if sent.mono > decided.mono => {
                        *decided = sent;
                        *decided_ttl = self.waiter_ttl;
                    }
                    Heard::Granted { sent, ttl, .. } if sent.mono > decided.mono => {
                        *decided = sent;
                        *decided_ttl = ttl;
                    }
                    _ => {}
                }
                return None;
            }
            Phase::Decided(_) => return None,
            Phase::Waiting => {}
        }
        let turn = match heard {
            Heard::Waiting { sent } => {
                if sent.mono > inner.last_sent.mono {
                    inner.last_sent = sent;
                }
                return None;
            }
            Heard::Granted { sent, ttl, token } => Turn::Granted {
                sent,
                ttl,
                token: token.or_else(|| self.token.clone()),
            },
            Heard::Lost => Turn::Lost,
        };
        inner.phase = Phase::Decided(turn);
        drop(inner);
        self.decided.notify_one();
        None
    }

    /// The store's notification said the entry holds: it keeps the expiry
    /// of its last renewal.
    pub(crate) fn granted_by_notification(&self, token: Option<FencingToken>) {
        let mut inner = self.inner();
        if matches!(inner.phase, Phase::Waiting) {
            inner.phase = Phase::Decided(Turn::Granted {
                sent: inner.last_sent,
                ttl: self.waiter_ttl,
                token: token.or_else(|| self.token.clone()),
            });
        }
    }

    /// The locker closed.
    pub(crate) fn close(&self) {
        let mut inner = self.inner();
        if matches!(inner.phase, Phase::Waiting) {
            inner.phase = Phase::Decided(Turn::Closed);
            drop(inner);
            self.decided.notify_one();
        }
    }

    /// The decision, once there is one.
    pub(crate) fn decided_turn(&self) -> Option<Turn> {
        match &self.inner().phase {
            Phase::Decided(turn) => Some(turn.clone()),
            Phase::Waiting | Phase::Converted(_) => None,
        }
    }

    /// Records that the call turned the grant it read (sent at `used`) into
    /// `state`; renewals heard from now on apply to it. Returns a later
    /// extension heard in between, for the caller to apply to `state`.
    pub(crate) fn convert(&self, state: SharedState, used: Stamp) -> Option<(Stamp, Duration)> {
        let mut inner = self.inner();
        let later = match &inner.phase {
            Phase::Decided(Turn::Granted { sent, ttl, .. }) if sent.mono > used.mono => {
                Some((*sent, *ttl))
            }
            _ => None,
        };
        inner.phase = Phase::Converted(state);
        later
    }
}
