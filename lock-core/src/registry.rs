//! The locks a locker renews, and the waiting entries of its `lock()`
//! calls, shared by the tasks that take and release them and the
//! background task that renews them.
//!
//! Taking or releasing a lock only touches this map under a short mutex: it
//! does not wake the background task, which reads the map once per renewal
//! round. Waking another task on every lock and unlock cost more than the
//! rest of the locker's work together on two busy cores. The task is woken
//! only when the first lock arrives while it sleeps without a round
//! scheduled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::state::SharedState;
use crate::waiter::WaitState;

/// One entry the background task renews.
#[derive(Clone)]
pub(crate) enum Tracked {
    /// A held lock.
    Held(SharedState),
    /// A `lock()` call's entry waiting in its key's queue.
    Waiting(Arc<WaitState>),
}

impl Tracked {
    pub(crate) fn serial(&self) -> u64 {
        match self {
            Self::Held(state) => state.serial,
            Self::Waiting(waiter) => waiter.serial,
        }
    }
}

pub(crate) struct Registry {
    inner: Mutex<Locks>,
    /// Signalled when a lock arrives while the background task is idle.
    pub(crate) wake: Notify,
}

struct Locks {
    by_serial: HashMap<u64, Tracked>,
    /// The background task has no renewal round scheduled and waits for
    /// [`Registry::wake`].
    idle: bool,
    /// The locker is closing: no lock gets in any more.
    closed: bool,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Locks {
                by_serial: HashMap::new(),
                idle: true,
                closed: false,
            }),
            wake: Notify::new(),
        }
    }

    fn locks(&self) -> MutexGuard<'_, Locks> {
        // Every update under this lock is a single map or flag operation.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tracks a newly granted lock or waiting entry; `false` when the
    /// locker is closing.
    pub(crate) fn insert(&self, tracked: Tracked) -> bool {
        let mut locks = self.locks();
        if locks.closed {
            return false;
        }
        locks.by_serial.insert(tracked.serial(), tracked);
        if locks.idle {
            locks.idle = false;
            drop(locks);
            self.wake.notify_one();
        }
        true
    }

    /// Turns a waiting entry that was granted into its held lock; `false`
    /// when the entry is no longer tracked (the locker is closing).
    pub(crate) fn promote(&self, state: SharedState) -> bool {
        let mut locks = self.locks();
        match locks.by_serial.get_mut(&state.serial) {
            Some(tracked) => {
                *tracked = Tracked::Held(state);
                true
            }
            None => false,
        }
    }

    /// Stops tracking a lock or waiting entry.
    pub(crate) fn remove(&self, serial: u64) -> Option<Tracked> {
        self.locks().by_serial.remove(&serial)
    }

    /// How many held locks are tracked.
    pub(crate) fn held(&self) -> usize {
        let locks = self.locks();
        self.held_in(&locks)
    }

    /// How many waiting entries are tracked.
    pub(crate) fn waiting(&self) -> usize {
        let locks = self.locks();
        locks.by_serial.len() - self.held_in(&locks)
    }

    fn held_in(&self, locks: &Locks) -> usize {
        locks
            .by_serial
            .values()
            .filter(|tracked| matches!(tracked, Tracked::Held(_)))
            .count()
    }

    /// Every tracked lock, for a renewal round. When there is none, the
    /// background task goes idle (`None`) until the next
    /// [`insert`](Self::insert) wakes it.
    pub(crate) fn snapshot(&self) -> Option<Vec<Tracked>> {
        let mut locks = self.locks();
        if locks.by_serial.is_empty() {
            locks.idle = true;
            return None;
        }
        Some(locks.by_serial.values().cloned().collect())
    }

    /// Closes the registry to new locks and hands over every tracked one.
    pub(crate) fn close(&self) -> Vec<Tracked> {
        let mut locks = self.locks();
        locks.closed = true;
        locks
            .by_serial
            .drain()
            .map(|(_, tracked)| tracked)
            .collect()
    }
}
