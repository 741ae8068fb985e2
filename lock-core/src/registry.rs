//! The locks a locker renews, shared by the tasks that take and release
//! them and the background task that renews them.
//!
//! Taking or releasing a lock only touches this map under a short mutex: it
//! does not wake the background task, which reads the map once per renewal
//! round. Waking another task on every lock and unlock cost more than the
//! rest of the locker's work together on two busy cores. The task is woken
//! only when the first lock arrives while it sleeps without a round
//! scheduled.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::state::SharedState;

pub(crate) struct Registry {
    inner: Mutex<Locks>,
    /// Signalled when a lock arrives while the background task is idle.
    pub(crate) wake: Notify,
}

struct Locks {
    by_serial: HashMap<u64, SharedState>,
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

    /// Tracks a newly granted lock; `false` when the locker is closing.
    pub(crate) fn insert(&self, state: SharedState) -> bool {
        let mut locks = self.locks();
        if locks.closed {
            return false;
        }
        locks.by_serial.insert(state.serial, state);
        if locks.idle {
            locks.idle = false;
            drop(locks);
            self.wake.notify_one();
        }
        true
    }

    /// Stops tracking a lock.
    pub(crate) fn remove(&self, serial: u64) -> Option<SharedState> {
        self.locks().by_serial.remove(&serial)
    }

    pub(crate) fn len(&self) -> usize {
        self.locks().by_serial.len()
    }

    /// Every tracked lock, for a renewal round. When there is none, the
    /// background task goes idle (`None`) until the next
    /// [`insert`](Self::insert) wakes it.
    pub(crate) fn snapshot(&self) -> Option<Vec<SharedState>> {
        let mut locks = self.locks();
        if locks.by_serial.is_empty() {
            locks.idle = true;
            return None;
        }
        Some(locks.by_serial.values().cloned().collect())
    }

    /// Closes the registry to new locks and hands over every tracked one.
    pub(crate) fn close(&self) -> Vec<SharedState> {
        let mut locks = self.locks();
        locks.closed = true;
        locks.by_serial.drain().map(|(_, state)| state).collect()
    }
}
