//! Same-process wake-ups for stores without notifications.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{AcquireOutcome, LeaseId, RenewEntry, RenewOutcome, WaitOutcome};

/// How long a wait announced by [`LocalWakers::expect_wait`] keeps a
/// wake-up for its lease when no [`LocalWakers::wait_for`] comes: a
/// waiter looks again at least this often (the stores' poll intervals
/// are shorter), so an older announcement belongs to a waiter that
/// stopped waiting.
const EXPECTED_FOR: Duration = Duration::from_secs(2);

/// The most announced waits kept: beyond it, the oldest go first (their
/// waiters then learn of a grant at their next poll).
const MAX_EXPECTED: usize = 4096;

/// The waits of this process on each key, woken when this process releases
/// an entry of the key, for stores that cannot notify waiters
/// ([`Capabilities::native_wait`](crate::Capabilities::native_wait) is
/// false).
///
/// A waiter in the same process then renews its entry at once and learns
/// that it holds, instead of at its next poll; waiters in other processes
/// still poll.
///
/// A store that learns from its release who holds now (the item as the
/// release left it) wakes only those waits with
/// [`wake_where`](Self::wake_where), its waiters waiting with
/// [`wait_for`](Self::wait_for): on a server that answers one request at a
/// time, every waiter of a key looking again at each release can cost
/// more than the polls it saves.
///
/// **No wake-up is lost between a look and a wait.** A waiter looks at the
/// queue (its acquisition answers `Queued`, a renewal `Waiting`) and then
/// waits; a release in between would find no wait to end, and the waiter
/// would sleep to its next poll while the lock sits unused. A store that
/// calls [`expect_wait`](Self::expect_wait) when it answers that an entry
/// waits makes the wait exist from that moment: a wake-up before the
/// waiter's [`wait_for`](Self::wait_for) is kept, and that wait ends at
/// once. An announced wait that nobody takes up is forgotten after two
/// seconds.
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
///
/// A wake-up between the look and the wait is kept when the store
/// announced the wait:
///
/// ```
/// use std::time::Duration;
/// use lock_core::{LeaseId, LocalWakers, WaitOutcome};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let wakers = LocalWakers::default();
/// let lease_id = LeaseId::random();
/// // The store answered that the entry waits...
/// wakers.expect_wait("nightly-report", lease_id);
/// // ... a release promotes it before its owner waits ...
/// wakers.wake_where("nightly-report", |promoted| promoted == lease_id);
/// // ... and the wait ends at once.
/// let heard = wakers.wait_for("nightly-report", lease_id, Duration::from_secs(60)).await;
/// assert_eq!(heard, WaitOutcome::Changed);
/// # }
/// ```
#[derive(Default)]
pub struct LocalWakers {
    state: Mutex<State>,
    serials: AtomicU64,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, Vec<Wait>>,
    /// Announced waits in the order announced: (when, key, serial).
    expected: VecDeque<(Instant, String, u64)>,
}

impl std::fmt::Debug for LocalWakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWakers")
            .field("keys", &self.state().keys.len())
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
    /// Announced by [`LocalWakers::expect_wait`] at this instant and not
    /// yet taken up by a [`LocalWakers::wait_for`].
    announced: Option<Instant>,
}

/// One wait's registration; unregisters on drop.
struct Interest<'a> {
    wakers: &'a LocalWakers,
    key: &'a str,
    serial: u64,
}

impl Drop for Interest<'_> {
    fn drop(&mut self) {
        self.wakers.state().remove(self.key, self.serial);
    }
}

impl State {
    fn remove(&mut self, key: &str, serial: u64) {
        if let Some(waits) = self.keys.get_mut(key) {
            waits.retain(|wait| wait.serial != serial);
            if waits.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Forgets announced waits nobody took up in time, and the oldest ones
    /// beyond [`MAX_EXPECTED`].
    fn forget_stale(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.expected.front() {
            let overfull = self.expected.len() > MAX_EXPECTED;
            if !overfull && now.duration_since(*at) < EXPECTED_FOR {
                break;
            }
            let Some((at, key, serial)) = self.expected.pop_front() else {
                break;
            };
            // Only if still untaken, and not announced again since.
            let stale = self.keys.get(&key).is_some_and(|waits| {
                waits
                    .iter()
                    .any(|wait| wait.serial == serial && wait.announced.is_some_and(|t| t <= at))
            });
            if stale {
                self.remove(&key, serial);
            }
        }
    }
}

impl LocalWakers {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is complete before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// ([`WaitOutcome::TimedOut`]). A wake-up that came after an
    /// [`expect_wait`](Self::expect_wait) for the lease ends it at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future unregisters the wait.
    pub async fn wait_for(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        self.wait_inner(key, Some(lease_id), max).await
    }

    /// Announces that the entry of `lease_id` on `key` waits, as a store
    /// just answered: from now on a wake-up for it is kept for its next
    /// [`wait_for`](Self::wait_for) (for at most two seconds), so a release
    /// between the answer and that wait is not missed. Counts in
    /// [`waits`](Self::waits).
    pub fn expect_wait(&self, key: &str, lease_id: LeaseId) {
        let now = Instant::now();
        let mut state = self.state();
        state.forget_stale(now);
        let waits = state.keys.entry(key.to_owned()).or_default();
        if let Some(wait) = waits
            .iter_mut()
            .find(|wait| wait.lease_id == Some(lease_id))
        {
            // Announced again (refreshed), or already waiting (nothing to do).
            if wait.announced.is_some() {
                wait.announced = Some(now);
                let serial = wait.serial;
                state.expected.push_back((now, key.to_owned(), serial));
            }
            return;
        }
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        waits.push(Wait {
            serial,
            lease_id: Some(lease_id),
            notify: Arc::new(Notify::new()),
            announced: Some(now),
        });
        state.expected.push_back((now, key.to_owned(), serial));
    }

    /// [`expect_wait`](Self::expect_wait) for an acquisition the store
    /// answered with [`AcquireOutcome::Queued`]; nothing for other answers.
    pub fn expect_if_queued(&self, key: &str, lease_id: LeaseId, outcome: &AcquireOutcome) {
        if matches!(outcome, AcquireOutcome::Queued(_)) {
            self.expect_wait(key, lease_id);
        }
    }

    /// [`expect_wait`](Self::expect_wait) for every entry of a renewal
    /// batch the store answered with [`RenewOutcome::Waiting`] (`outcomes`
    /// in the order of `leases`).
    pub fn expect_if_waiting(&self, leases: &[RenewEntry<'_>], outcomes: &[RenewOutcome]) {
        for (lease, outcome) in leases.iter().zip(outcomes) {
            if matches!(outcome, RenewOutcome::Waiting { .. }) {
                self.expect_wait(lease.key, lease.lease_id);
            }
        }
    }

    async fn wait_inner(&self, key: &str, lease_id: Option<LeaseId>, max: Duration) -> WaitOutcome {
        let (serial, notify) = {
            let mut state = self.state();
            let waits = state.keys.entry(key.to_owned()).or_default();
            let announced = lease_id.and_then(|lease_id| {
                waits
                    .iter_mut()
                    .find(|wait| wait.lease_id == Some(lease_id) && wait.announced.is_some())
            });
            match announced {
                Some(wait) => {
                    wait.announced = None;
                    (wait.serial, wait.notify.clone())
                }
                None => {
                    let serial = self.serials.fetch_add(1, Ordering::Relaxed);
                    let notify = Arc::new(Notify::new());
                    waits.push(Wait {
                        serial,
                        lease_id,
                        notify: notify.clone(),
                        announced: None,
                    });
                    (serial, notify)
                }
            }
        };
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
        self.wake_where(key, |_| true);
    }

    /// Ends the waits on `key` of the leases `pick` chooses (say, those the
    /// release just promoted), and only those; waits without a lease are
    /// woken too. `pick` runs under this registry's lock: keep it short.
    pub fn wake_where(&self, key: &str, mut pick: impl FnMut(LeaseId) -> bool) {
        if let Some(waits) = self.state().keys.get(key) {
            for wait in waits {
                if wait.lease_id.is_none_or(&mut pick) {
                    // Kept as a permit when nobody awaits it yet.
                    wait.notify.notify_one();
                }
            }
        }
    }

    /// How many waits on `key` are registered or announced.
    pub fn waits(&self, key: &str) -> usize {
        let mut state = self.state();
        state.forget_stale(Instant::now());
        state.keys.get(key).map_or(0, Vec::len)
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
        assert!(wakers.state().keys.is_empty());
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
    async fn a_wake_between_the_answer_and_the_wait_is_kept_for_the_announced_lease() {
        let wakers = LocalWakers::default();
        let (promoted, behind) = (LeaseId::random(), LeaseId::random());
        wakers.expect_wait("k", promoted);
        wakers.expect_wait("k", behind);
        assert_eq!(wakers.waits("k"), 2);
        wakers.wake_where("k", |lease_id| lease_id == promoted);
        let max = Duration::from_secs(60);
        let start = Instant::now();
        assert_eq!(
            wakers.wait_for("k", promoted, max).await,
            WaitOutcome::Changed
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The wake picked one lease: the other's wait runs to its end.
        assert_eq!(
            wakers.wait_for("k", behind, max).await,
            WaitOutcome::TimedOut
        );
        assert_eq!(wakers.waits("k"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_wait_nobody_takes_up_is_forgotten() {
        let wakers = LocalWakers::default();
        let (gone, refreshed) = (LeaseId::random(), LeaseId::random());
        wakers.expect_wait("k", gone);
        wakers.expect_wait("k", refreshed);
        tokio::time::advance(EXPECTED_FOR / 2).await;
        // Announced again: it counts from now.
        wakers.expect_wait("k", refreshed);
        assert_eq!(wakers.waits("k"), 2);
        tokio::time::advance(EXPECTED_FOR / 2).await;
        assert_eq!(wakers.waits("k"), 1);
        tokio::time::advance(EXPECTED_FOR / 2).await;
        assert_eq!(wakers.waits("k"), 0);
        assert!(wakers.state().keys.is_empty());
        // A wake-up now is kept for nobody.
        wakers.wake("k");
        assert_eq!(
            wakers.wait_for("k", gone, Duration::from_secs(1)).await,
            WaitOutcome::TimedOut
        );
    }

    #[tokio::test(start_paused = true)]
    async fn announced_waits_are_bounded() {
        let wakers = LocalWakers::default();
        for _ in 0..MAX_EXPECTED + 10 {
            wakers.expect_wait("k", LeaseId::random());
        }
        assert_eq!(wakers.waits("k"), MAX_EXPECTED);
        assert_eq!(wakers.state().expected.len(), MAX_EXPECTED);
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
