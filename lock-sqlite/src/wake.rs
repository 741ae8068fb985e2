//! Waking the waits of this process on a key when this process releases an
//! entry of it: they renew their entry at once instead of at their next
//! poll. Waits in other processes poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// The waits of this process, by key.
#[derive(Default)]
pub(crate) struct Wakers {
    keys: Mutex<HashMap<String, Waiters>>,
}

struct Waiters {
    notify: Arc<Notify>,
    count: usize,
}

/// One wait's registration; unregisters on drop.
pub(crate) struct Interest<'a> {
    wakers: &'a Wakers,
    key: String,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Interest<'_> {
    fn drop(&mut self) {
        let mut keys = self.wakers.keys();
        if let Some(waiters) = keys.get_mut(&self.key) {
            waiters.count -= 1;
            if waiters.count == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

impl Wakers {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, Waiters>> {
        // Every update under this lock is complete before it can panic.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a wait on `key`.
    pub(crate) fn interest(&self, key: &str) -> Interest<'_> {
        let mut keys = self.keys();
        let waiters = keys.entry(key.to_owned()).or_insert_with(|| Waiters {
            notify: Arc::new(Notify::new()),
            count: 0,
        });
        waiters.count += 1;
        Interest {
            wakers: self,
            key: key.to_owned(),
            notify: waiters.notify.clone(),
        }
    }

    /// An entry of `key` was released: its waits look again.
    pub(crate) fn wake(&self, key: &str) {
        if let Some(waiters) = self.keys().get(key) {
            waiters.notify.notify_waiters();
        }
    }
}
