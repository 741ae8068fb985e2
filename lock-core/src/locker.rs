//! The users' trait and the generic locker every store shares.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::calls::Calls;
use crate::clock::Clock;
use crate::guard::Link;
use crate::observe;
use crate::registry::Registry;
use crate::scheduler::{self, Command, SchedulerHandle};
use crate::state::{LockIdentity, LockState, SharedState};
use crate::{
    AcquireOutcome, AcquireRequest, Capabilities, LeaseId, LeaseInfo, LeaseStore, LockError,
    LockGuard, LockerOptions, ReleaseOutcome, StoreError,
};

/// Takes locks: the users' interface, object-safe so `Arc<dyn Locker>` can
/// hold a locker whose store was picked at run time.
///
/// [`LeaseLocker`] implements it for every [`LeaseStore`].
#[async_trait]
pub trait Locker: Send + Sync {
    /// One attempt to take the lock `id`.
    ///
    /// # Errors
    ///
    /// - [`LockError::Taken`] when a live lease exists, also when this same
    ///   locker holds it (locks are not reentrant);
    /// - [`LockError::InvalidId`] for an empty id, one with NUL, or a key
    ///   longer than 1024 bytes (or the store's limit);
    /// - [`LockError::Closed`] after [`close`](Locker::close);
    /// - [`LockError::Store`] when the store failed or timed out. A timed-out
    ///   attempt may have been granted: that lease is released in the
    ///   background, never renewed.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future never leaves a lease held and
    /// renewed; a lease granted after the caller gave up is released in
    /// the background.
    async fn try_lock(&self, id: &str) -> Result<LockGuard, LockError>;

    /// Takes the lock `id`, waiting up to `max_wait` for it. Woken by the
    /// store's change notifications where it has them, and re-polling with
    /// jittered backoff (never later than the holder's lease end) since
    /// notifications can be lost. `max_wait` of zero makes one attempt,
    /// exactly as [`try_lock`](Locker::try_lock).
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] when the lock was not had within `max_wait`;
    /// the last store error instead when the last attempt failed on the
    /// store; otherwise as [`try_lock`](Locker::try_lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`try_lock`](Locker::try_lock).
    async fn lock(&self, id: &str, max_wait: Duration) -> Result<LockGuard, LockError>;

    /// What the store knows about the lock `id`: holder, remaining time,
    /// last fencing token. `None` when the store has never seen it.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidId`], or [`LockError::Store`] when the store
    /// failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    async fn inspect(&self, id: &str) -> Result<Option<LeaseInfo>, LockError>;

    /// Stops new acquisitions, releases every held lock concurrently (each
    /// bounded by the store timeout) and stops the background task. Later
    /// acquisitions fail with [`LockError::Closed`]; closing again returns
    /// `Ok(())` once the first close has finished.
    ///
    /// # Errors
    ///
    /// [`LockError::Store`] with the first release that failed; the locker
    /// is closed anyway and those leases end with their ttl.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the releases go on in the background.
    async fn close(&self) -> Result<(), LockError>;

    /// The owner name stored with this locker's leases.
    fn owner(&self) -> &str;

    /// The locker's options.
    fn options(&self) -> &LockerOptions;
}

/// The generic locker: implements [`Locker`] for any [`LeaseStore`], the
/// way one pool serves every connection manager.
///
/// One background task per locker (spawned on the Tokio runtime of the first
/// acquisition) renews every held lease in batches of the store's batch
/// limit each `heartbeat`, fires warnings and expiries from one timer queue,
/// and releases dropped guards. Cloning gives another handle on the same
/// locker.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_core::{LeaseLocker, Locker, LockError, LockerOptions, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), LockError> {
/// let store = MemoryStore::new();
/// let a = LeaseLocker::new(store.clone(), LockerOptions::builder().owner("a").build()?)?;
/// let b = LeaseLocker::new(store, LockerOptions::builder().owner("b").build()?)?;
///
/// let guard = a.try_lock("invoice-run").await?;
/// match b.try_lock("invoice-run").await {
///     Err(LockError::Taken { holder, .. }) => assert_eq!(holder.as_deref(), Some("a")),
///     other => panic!("expected Taken, got {other:?}"),
/// }
/// guard.unlock().await?;
/// let guard = b.lock("invoice-run", Duration::from_secs(1)).await?;
/// assert!(!guard.is_expired());
/// # Ok(())
/// # }
/// ```
pub struct LeaseLocker<S: LeaseStore> {
    core: Arc<Core<S>>,
}

impl<S: LeaseStore> Clone for LeaseLocker<S> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<S: LeaseStore> fmt::Debug for LeaseLocker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseLocker")
            .field("options", &self.core.options)
            .field("closed", &self.core.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Core<S: LeaseStore> {
    /// Every store call goes through here.
    calls: Calls<S>,
    options: Arc<LockerOptions>,
    capabilities: Capabilities,
    clock: Clock,
    closed: AtomicBool,
    serials: AtomicU64,
    registry: Arc<Registry>,
    scheduler: OnceLock<SchedulerHandle>,
}

impl<S: LeaseStore> LeaseLocker<S> {
    /// A locker over `store`. Needs no runtime; the background task starts
    /// with the first acquisition.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] when the options do not fit the store:
    /// a lease below its minimum ttl, fencing on a store without tokens, a
    /// prefix that leaves no room for ids.
    pub fn new(store: S, options: LockerOptions) -> Result<Self, LockError> {
        Self::from_arc(Arc::new(store), options)
    }

    /// A locker over a shared store.
    ///
    /// # Errors
    ///
    /// As [`LeaseLocker::new`].
    pub fn from_arc(store: Arc<S>, options: LockerOptions) -> Result<Self, LockError> {
        let capabilities = store.capabilities();
        options.check_against(&capabilities)?;
        let clock = Clock::new(options.boot_clock.clone());
        Ok(Self {
            core: Arc::new(Core {
                calls: Calls::new(store, options.store_timeout()),
                options: Arc::new(options),
                capabilities,
                clock,
                closed: AtomicBool::new(false),
                serials: AtomicU64::new(0),
                registry: Arc::new(Registry::new()),
                scheduler: OnceLock::new(),
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.core.calls.store()
    }

    /// The store's capabilities, as read when the locker was made.
    pub fn capabilities(&self) -> &Capabilities {
        &self.core.capabilities
    }

    /// How many locks the background task is renewing: those granted and
    /// not yet released, lost or expired.
    pub fn held_count(&self) -> usize {
        self.core.registry.len()
    }

    /// Whether [`close`](Locker::close) was called.
    pub fn is_closed(&self) -> bool {
        self.core.closed.load(Ordering::Acquire)
    }
}

impl<S: LeaseStore> Core<S> {
    fn scheduler(&self) -> Result<&SchedulerHandle, LockError> {
        if let Some(handle) = self.scheduler.get() {
            return Ok(handle);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            LockError::InvalidConfig("locks must be taken inside a Tokio runtime".into())
        })?;
        Ok(self.scheduler.get_or_init(|| {
            scheduler::spawn(
                &runtime,
                self.calls.clone(),
                self.options.clone(),
                self.clock.clone(),
                self.capabilities.max_batch,
                self.registry.clone(),
            )
        }))
    }

    /// Releases a lease by id without waiting: through the background task,
    /// or a spawned task once that has stopped.
    fn release_detached(&self, key: String, lease_id: LeaseId) {
        let command = Command::ReleaseLease { key, lease_id };
        let command = match self.scheduler.get() {
            Some(handle) => match handle.commands.send(command) {
                Ok(()) => return,
                Err(rejected) => rejected.0,
            },
            None => command,
        };
        let Command::ReleaseLease { key, lease_id } = command else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %key, "no runtime to release a lease on; it ends with its ttl");
            return;
        };
        let calls = self.calls.clone();
        let fencing = self.options.fencing();
        runtime.spawn(async move {
            if let Err(error) = calls.release(&key, lease_id, fencing).await {
                tracing::warn!(key = %key, %error, "background release failed; the lease ends with its ttl");
            }
        });
    }

    /// One acquisition attempt for an already validated key.
    async fn acquire(self: &Arc<Self>, id: &str, key: String) -> Result<LockGuard, LockError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LockError::Closed);
        }
        // Starts the background task on this runtime before the first grant.
        self.scheduler()?;
        let lease_id = LeaseId::random();
        let options = &self.options;
        let request = AcquireRequest::new(&key, options.owner(), lease_id, options.lease())
            .with_fencing(options.fencing());
        // Until the grant is registered, a lost or abandoned reply means
        // "maybe held": release by lease id.
        let mut in_doubt = AcquireInDoubt {
            core: self,
            key: &key,
            lease_id,
            armed: true,
        };
        let sent = self.clock.now();
        let outcome = match self.calls.acquire(request).await {
            Ok(outcome) => outcome,
            Err(error) => {
                in_doubt.armed = error.is_ambiguous();
                return Err(LockError::Store(error));
            }
        };
        let grant = match outcome {
            AcquireOutcome::Held(holder) => {
                in_doubt.armed = false;
                return Err(LockError::Taken {
                    id: id.to_owned(),
                    holder: Some(holder.owner),
                    retry_after: holder.remaining,
                });
            }
            AcquireOutcome::Acquired(grant) => grant,
        };
        if options.fencing().is_enabled() && grant.token.is_none() {
            return Err(LockError::Store(
                StoreError::new(
                    crate::StoreErrorKind::Invalid,
                    "the store granted a lease without the fencing token it was asked for",
                )
                .with_key(&key),
            ));
        }
        if let Some(previous) = &grant.previous_owner {
            observe::count("dlock_takeover_total", "", "");
            tracing::info!(id, previous_owner = %previous, "took over an expired lease");
        }
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let identity = LockIdentity {
            serial,
            id: id.to_owned(),
            key: key.clone(),
            lease_id,
            token: grant.token,
        };
        let state: SharedState = Arc::new(LockState::new(identity, sent, grant.ttl, options));
        if state.check_expired(self.clock.now()) {
            return Err(LockError::Store(
                StoreError::timeout("the grant arrived after its lease had run out").with_key(&key),
            ));
        }
        if self.closed.load(Ordering::Acquire) || !self.registry.insert(state.clone()) {
            return Err(LockError::Closed);
        }
        in_doubt.armed = false;
        tracing::debug!(id, %lease_id, token = ?state.token, "lock acquired");
        Ok(LockGuard::new(state, self.clone() as Arc<dyn Link>))
    }
}

/// Releases an acquisition whose outcome is unknown, when dropped armed.
struct AcquireInDoubt<'a, S: LeaseStore> {
    core: &'a Core<S>,
    key: &'a str,
    lease_id: LeaseId,
    armed: bool,
}

impl<S: LeaseStore> Drop for AcquireInDoubt<'_, S> {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!(key = %self.key, "acquire abandoned; releasing in the background");
            self.core
                .release_detached(self.key.to_owned(), self.lease_id);
        }
    }
}

impl<S: LeaseStore> Link for Core<S> {
    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn owner(&self) -> &str {
        self.options.owner()
    }

    fn warnings_enabled(&self) -> bool {
        self.options.warnings_enabled()
    }

    fn forget(&self, state: &SharedState) {
        self.registry.remove(state.serial);
    }

    fn release_in_background(&self, state: &SharedState) {
        self.registry.remove(state.serial);
        self.release_detached(state.key.clone(), state.lease_id);
    }

    fn release_now<'a>(
        &'a self,
        state: &'a LockState,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, StoreError>> {
        Box::pin(
            self.calls
                .release(&state.key, state.lease_id, self.options.fencing()),
        )
    }
}

#[async_trait]
impl<S: LeaseStore> Locker for LeaseLocker<S> {
    async fn try_lock(&self, id: &str) -> Result<LockGuard, LockError> {
        let key = self.core.options.key_for(id, &self.core.capabilities)?;
        self.core.acquire(id, key).await
    }

    async fn lock(&self, id: &str, max_wait: Duration) -> Result<LockGuard, LockError> {
        let key = self.core.options.key_for(id, &self.core.capabilities)?;
        if max_wait.is_zero() {
            return self.core.acquire(id, key).await;
        }
        let start = Instant::now();
        let give_up = start + max_wait;
        let mut backoff = Backoff::new(self.core.capabilities.native_wait);
        loop {
            let (holder, wait) = match self.core.acquire(id, key.clone()).await {
                Ok(guard) => return Ok(guard),
                Err(LockError::Taken {
                    holder,
                    retry_after,
                    ..
                }) => {
                    let mut wait = backoff.next();
                    if let Some(left) = retry_after {
                        // Try again as soon as the store may have expired it.
                        wait = wait.min(left + self.core.capabilities.ttl_granularity);
                    }
                    (holder, wait)
                }
                Err(LockError::Store(error)) if error.is_retryable() => {
                    if Instant::now() >= give_up {
                        return Err(LockError::Store(error));
                    }
                    tracing::debug!(id, %error, "acquire failed; retrying");
                    (None, backoff.next())
                }
                Err(other) => return Err(other),
            };
            let now = Instant::now();
            if now >= give_up {
                return Err(LockError::Timeout {
                    id: id.to_owned(),
                    waited: now - start,
                    holder,
                });
            }
            let wait = wait.min(give_up - now);
            // A store that overstays `max` must not stretch our deadline.
            let _ = tokio::time::timeout(wait, self.core.calls.store().wait_for_change(&key, wait))
                .await;
        }
    }

    async fn inspect(&self, id: &str) -> Result<Option<LeaseInfo>, LockError> {
        let key = self.core.options.key_for(id, &self.core.capabilities)?;
        self.core
            .calls
            .inspect(&key)
            .await
            .map_err(LockError::Store)
    }

    async fn close(&self) -> Result<(), LockError> {
        self.core.closed.store(true, Ordering::Release);
        let Some(handle) = self.core.scheduler.get() else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        let result = if handle.commands.send(Command::Close(reply)).is_ok() {
            answer.await.unwrap_or(Ok(()))
        } else {
            Ok(())
        };
        let mut finished = handle.finished.clone();
        let _ = finished.wait_for(|finished| *finished).await;
        result.map_err(LockError::Store)
    }

    fn owner(&self) -> &str {
        self.core.options.owner()
    }

    fn options(&self) -> &LockerOptions {
        &self.core.options
    }
}

/// Jittered exponential backoff for re-polls while waiting.
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(native_wait: bool) -> Self {
        Self {
            next: Duration::from_millis(5),
            // With notifications, polls only cover lost ones.
            cap: if native_wait {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(250)
            },
        }
    }

    /// Somewhere in [d/2, d], then doubles d up to the cap.
    fn next(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.cap);
        let half = current / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}
