//! Same-process wake-ups for stores without notifications.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::WaitOutcome;

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
    keys: Mutex<HashMap<String, Waits>>,
}

impl std::fmt::Debug for LocalWakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWakers")
            .field("keys", &self.keys().len())
            .finish()
    }
}

struct Waits {
    notify: Arc<Notify>,
    count: usize,
}

/// One wait's registration; unregisters on drop.
struct Interest<'a> {
    wakers: &'a LocalWakers,
    key: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Interest<'_> {
    fn drop(&mut self) {
        let mut keys = self.wakers.keys();
        if let Some(waits) = keys.get_mut(self.key) {
            waits.count -= 1;
            if waits.count == 0 {
                keys.remove(self.key);
            }
        }
    }
}

impl LocalWakers {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, Waits>> {
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
        let interest = {
            let mut keys = self.keys();
            let waits = keys.entry(key.to_owned()).or_insert_with(|| Waits {
                notify: Arc::new(Notify::new()),
                count: 0,
            });
            waits.count += 1;
            Interest {
                wakers: self,
                key,
                notify: waits.notify.clone(),
            }
        };
        match tokio::time::timeout(max, interest.notify.notified()).await {
            Ok(()) => WaitOutcome::Changed,
            Err(_) => WaitOutcome::TimedOut,
        }
    }

    /// An entry of `key` was released by this process: every wait on it
    /// ends with [`WaitOutcome::Changed`].
    pub fn wake(&self, key: &str) {
        if let Some(waits) = self.keys().get(key) {
            waits.notify.notify_waiters();
        }
    }

    /// How many waits on `key` are registered.
    pub fn waits(&self, key: &str) -> usize {
        self.keys().get(key).map_or(0, |waits| waits.count)
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
