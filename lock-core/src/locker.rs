//! The users' trait and the generic locker every store shares.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::core::{Core, Kind};
use crate::scheduler::Command;
use crate::{Capabilities, LeaseInfo, LeaseStore, LockError, LockGuard, LockKind, LockerOptions};

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

    /// One attempt to take the lock `id` as `kind`: a mutex, a permit of a
    /// semaphore, or a side of a reader-writer lock. Holds at once or fails
    /// with [`LockError::Taken`]: it never queues, and an id with waiters is
    /// not free. [`try_lock`](Locker::try_lock) is this with
    /// [`LockKind::Exclusive`]; [`Semaphore`](crate::Semaphore) and
    /// [`RwLock`](crate::RwLock) are handles over it.
    ///
    /// # Errors
    ///
    /// As [`try_lock`](Locker::try_lock), and
    /// [`LockError::LimitMismatch`] when the id's shared holders and
    /// waiters use another number of permits, [`LockError::InvalidConfig`]
    /// for a semaphore of 0 permits.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`try_lock`](Locker::try_lock).
    async fn try_acquire(&self, id: &str, kind: LockKind) -> Result<LockGuard, LockError>;

    /// Takes the lock `id` as `kind`, waiting in the id's first-come,
    /// first-served queue up to `max_wait`. [`lock`](Locker::lock) is this
    /// with [`LockKind::Exclusive`].
    ///
    /// # Errors
    ///
    /// As [`lock`](Locker::lock) and [`try_acquire`](Locker::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`lock`](Locker::lock).
    async fn acquire(
        &self,
        id: &str,
        kind: LockKind,
        max_wait: Duration,
    ) -> Result<LockGuard, LockError>;

    /// What the store knows about the lock `id`: its holders with their
    /// remaining time, how many wait, its last fencing token. `None` when
    /// the store has never seen it.
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

impl<S: LeaseStore> LeaseLocker<S> {
    /// A locker over `store`. Needs no runtime; the background task starts
    /// with the first acquisition.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] when the options do not fit the store:
    /// a lease or chosen waiter ttl below its minimum ttl, fencing on a
    /// store without tokens, a prefix that leaves no room for ids. (A
    /// default waiter ttl below the minimum is raised to it.)
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
        let options = options.fitted_to(&capabilities);
        options.check_against(&capabilities)?;
        Ok(Self {
            core: Arc::new(Core::new(store, options, capabilities)),
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
        self.core.registry.held()
    }

    /// How many `lock()` calls of this locker wait in their key's queue
    /// (their entries are renewed with the held locks).
    pub fn waiting_count(&self) -> usize {
        self.core.registry.waiting()
    }

    /// Whether [`close`](Locker::close) was called.
    pub fn is_closed(&self) -> bool {
        self.core.closed.load(Ordering::Acquire)
    }
}

#[async_trait]
impl<S: LeaseStore> Locker for LeaseLocker<S> {
    async fn try_lock(&self, id: &str) -> Result<LockGuard, LockError> {
        self.try_acquire(id, LockKind::Exclusive).await
    }

    async fn lock(&self, id: &str, max_wait: Duration) -> Result<LockGuard, LockError> {
        self.acquire(id, LockKind::Exclusive, max_wait).await
    }

    async fn try_acquire(&self, id: &str, kind: LockKind) -> Result<LockGuard, LockError> {
        let key = self.core.options.key_for(id, &self.core.capabilities)?;
        let kind = Kind::of(kind)?;
        self.core.try_acquire(id, &key, kind).await
    }

    async fn acquire(
        &self,
        id: &str,
        kind: LockKind,
        max_wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let key = self.core.options.key_for(id, &self.core.capabilities)?;
        let kind = Kind::of(kind)?;
        if max_wait.is_zero() {
            return self.core.try_acquire(id, &key, kind).await;
        }
        self.core.acquire_in_line(id, &key, kind, max_wait).await
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
