//! Same-process wake-ups for stores without notifications.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{LeaseId, WaitOutcome};

/// The waits of this process on each key, woken when this process releases
/// an entry of the key, for stores that cannot notify waiters
/// ([`Capabilities::native_wait`](crate::Capabilities::native_wait) is
/// false).
///
/// A waiter in the same process then renews its entry at once and learns
/// that it holds, instead of at its next poll; waiters in other processes
/// still poll. A wake-up that comes between a waiter's last look at the
/// queue and its next [`wait`](Self::wait) is missed, which costs that
/// waiter one poll, as without this.
///
/// A store that learns from its release who holds now (the item as the
/// release left it) wakes only those waits with
/// [`wake_where`](Self::wake_where), its waiters waiting with
/// [`wait_for`](Self::wait_for): on a server that answers one request at a
/// time, every waiter of a key looking again at each release can cost
/// more than the polls it saves.
///
/// # Examples
///
/// A store's [`release`](crate::LeaseStore::release) calls
/// [`wake`](Self::wake) after the release took effect, and its
/// [`wait_for_grant`](crate::LeaseStore::wait_for_grant) is
/// [`wait`](Self::wait):
///
/// ```
/// use std::time::Duration;
/// use lock_core::{LocalWakers, WaitOutcome};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let wakers = std::sync::Arc::new(LocalWakers::default());
/// let waiting = tokio::spawn({
///     let wakers = wakers.clone();
///     async move { wakers.wait("nightly-report", Duration::from_secs(60)).await }
/// });
/// while wakers.waits("nightly-report") == 0 {
///     tokio::task::yield_now().await;
/// }
/// wakers.wake("nightly-report");
/// assert_eq!(waiting.await.unwrap(), WaitOutcome::Changed);
/// # }
/// ```
#[derive(Default)]
pub struct LocalWakers {
    keys: Mutex<HashMap<String, Vec<Wait>>>,
    serials: AtomicU64,
}

impl std::fmt::Debug for LocalWakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWakers")
            .field("keys", &self.keys().len())
            .finish()
    }
}

/// One registered wait: its own notifier, so that a wake-up meant for one
/// lease wakes nobody else (and is kept if it comes before the wait
/// sleeps).
struct Wait {
    serial: u64,
    lease_id: Option<LeaseId>,
    notify: Arc<Notify>,
}

/// One wait's registration; unregisters on drop.
struct Interest<'a> {
    wakers: &'a LocalWakers,
    key: &'a str,
    serial: u64,
}

impl Drop for Interest<'_> {
    fn drop(&mut self) {
        let mut keys = self.wakers.keys();
        if let Some(waits) = keys.get_mut(self.key) {
            waits.retain(|wait| wait.serial != self.serial);
            if waits.is_empty() {
                keys.remove(self.key);
            }
        }
    }
}

impl LocalWakers {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, Vec<Wait>>> {
        // Every update under this lock is complete before it can panic.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until this process releases an entry of `key`
    /// ([`WaitOutcome::Changed`]), or `max` ([`WaitOutcome::TimedOut`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future unregisters the wait.
    pub async fn wait(&self, key: &str, max: Duration) -> WaitOutcome {
        self.wait_inner(key, None, max).await
    }

    /// Waits for the entry of `lease_id` on `key`: until a
    /// [`wake`](Self::wake) of the key, a [`wake_where`](Self::wake_where)
    /// that picks `lease_id` ([`WaitOutcome::Changed`]), or `max`
    /// ([`WaitOutcome::TimedOut`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future unregisters the wait.
    pub async fn wait_for(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        self.wait_inner(key, Some(lease_id), max).await
    }

    async fn wait_inner(&self, key: &str, lease_id: Option<LeaseId>, max: Duration) -> WaitOutcome {
        let notify = Arc::new(Notify::new());
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        self.keys().entry(key.to_owned()).or_default().push(Wait {
            serial,
            lease_id,
            notify: notify.clone(),
        });
        let _interest = Interest {
            wakers: self,
            key,
            serial,
        };
        match tokio::time::timeout(max, notify.notified()).await {
            Ok(()) => WaitOutcome::Changed,
            Err(_) => WaitOutcome::TimedOut,
        }
    }

    /// An entry of `key` was released by this process: every wait on it
    /// ends with [`WaitOutcome::Changed`].
    pub fn wake(&self, key: &str) {
        if let Some(waits) = self.keys().get(key) {
            for wait in waits {
                wait.notify.notify_one();
            }
        }
    }

    /// Ends the waits on `key` of the leases `pick` chooses (say, those the
    /// release just promoted), and only those; waits without a lease are
    /// woken too. `pick` runs under this registry's lock: keep it short.
    pub fn wake_where(&self, key: &str, mut pick: impl FnMut(LeaseId) -> bool) {
        if let Some(waits) = self.keys().get(key) {
            for wait in waits {
                if wait.lease_id.is_none_or(&mut pick) {
                    wait.notify.notify_one();
                }
            }
        }
    }

    /// How many waits on `key` are registered.
    pub fn waits(&self, key: &str) -> usize {
        self.keys().get(key).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_and_leaves_nothing_registered() {
        let wakers = LocalWakers::default();
        assert_eq!(
            wakers.wait("k", Duration::from_secs(1)).await,
            WaitOutcome::TimedOut
        );
        assert_eq!(wakers.waits("k"), 0);
        assert!(wakers.keys().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_ends_every_wait_on_its_key_and_no_other() {
        let wakers = Arc::new(LocalWakers::default());
        let wait = |key: &'static str| {
            let wakers = wakers.clone();
            tokio::spawn(async move { wakers.wait(key, Duration::from_secs(60)).await })
        };
        let (first, second, other) = (wait("k"), wait("k"), wait("other"));
        while wakers.waits("k") < 2 || wakers.waits("other") < 1 {
            tokio::task::yield_now().await;
        }
        wakers.wake("k");
        assert_eq!(first.await.unwrap(), WaitOutcome::Changed);
        assert_eq!(second.await.unwrap(), WaitOutcome::Changed);
        assert_eq!(wakers.waits("k"), 0);
        // The other key's wait runs to its end.
        assert_eq!(other.await.unwrap(), WaitOutcome::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_targeted_wake_ends_only_the_picked_leases_waits() {
        let wakers = Arc::new(LocalWakers::default());
        let (picked, passed_over) = (LeaseId::random(), LeaseId::random());
        let wait = |lease_id: LeaseId| {
            let wakers = wakers.clone();
            tokio::spawn(async move {
                wakers
                    .wait_for("k", lease_id, Duration::from_secs(60))
                    .await
            })
        };
        let (first, second) = (wait(picked), wait(passed_over));
        while wakers.waits("k") < 2 {
            tokio::task::yield_now().await;
        }
        wakers.wake_where("k", |lease_id| lease_id == picked);
        assert_eq!(first.await.unwrap(), WaitOutcome::Changed);
        assert_eq!(wakers.waits("k"), 1);
        // The other waits to its end.
        assert_eq!(second.await.unwrap(), WaitOutcome::TimedOut);
        assert_eq!(wakers.waits("k"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_unregisters() {
        let wakers = LocalWakers::default();
        let dropped = tokio::time::timeout(
            Duration::from_millis(5),
            wakers.wait("k", Duration::from_secs(60)),
        )
        .await;
        assert!(dropped.is_err());
        assert_eq!(wakers.waits("k"), 0);
    }
}
