//! The user's handle on a held lock.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::state::{LockState, SharedState};
use crate::{FencingToken, LeaseId, LockError, LockStatus, ReleaseOutcome, StoreError};

/// The locker machinery a guard talks to, without its store type (so
/// [`LockGuard`] is not generic and `dyn Locker` works).
pub(crate) trait Link: Send + Sync {
    fn clock(&self) -> &Clock;
    fn owner(&self) -> &str;
    fn warnings_enabled(&self) -> bool;
    /// Stop tracking a lock that was released in the foreground.
    fn forget(&self, state: &SharedState);
    /// Release a lock's lease in the background (dropped guard, abandoned
    /// unlock).
    fn release_in_background(&self, state: &SharedState);
    /// Release a lock's lease now, bounded by the store timeout.
    fn release_now<'a>(
        &'a self,
        state: &'a LockState,
    ) -> BoxFuture<'a, Result<ReleaseOutcome, StoreError>>;
}

/// A distributed lock: the interface [`LockGuard`] implements, for code that
/// wants to accept any lock (or a test double).
///
/// The counterpart of the original library's `Lock` interface: `IsExpired`,
/// `Unlock`, `WarnChan` and `FencingToken`, plus status watching.
#[async_trait]
pub trait Lock: Send + Sync {
    /// The lock id (without the locker's prefix).
    fn id(&self) -> &str;

    /// Whether the lock is expired or must be assumed so. Never changes from
    /// `true` back to `false`.
    fn is_expired(&self) -> bool;

    /// Releases the lock if it is still held. Idempotent.
    ///
    /// # Errors
    ///
    /// [`LockError::Store`] when the store failed; the lock counts as
    /// released anyway and the lease is released again in the background.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the lock counts as released from the first poll, and a
    /// release the store has not answered when the future is dropped is
    /// finished in the background.
    async fn unlock(&self) -> Result<(), LockError>;

    /// The fencing token of this grant, when fencing is enabled.
    fn fencing_token(&self) -> Option<&FencingToken>;

    /// The local deadline while the lock is live, `None` once it is not.
    fn valid_until(&self) -> Option<Instant>;

    /// A receiver of warnings, `None` when warnings are disabled.
    fn warnings(&self) -> Option<Warnings>;

    /// A watch of the lock's status.
    fn status(&self) -> watch::Receiver<LockStatus>;
}

/// A held lock. Renewed in the background by its locker while it lives;
/// released by [`unlock`](LockGuard::unlock), or in the background when
/// dropped.
///
/// A guard keeps its locker's background task running even when every
/// handle on the locker itself is gone, so a temporary locker does not
/// release its locks behind the user's back.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_core::{LeaseLocker, Locker, LockerOptions, LockStatus, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// let locker = LeaseLocker::new(MemoryStore::new(), LockerOptions::default())?;
/// let guard = locker.try_lock("nightly-report").await?;
/// let token = guard.fencing_token().cloned();
/// tokio::select! {
///     _ = guard.lost() => { /* stop writing: someone else may hold it now */ }
///     _ = async { /* the work, writing with `token` */ } => {}
/// }
/// guard.unlock().await?;
/// assert!(guard.is_expired());
/// assert_eq!(*guard.status().borrow(), LockStatus::Released);
/// # Ok(())
/// # }
/// ```
pub struct LockGuard {
    state: SharedState,
    link: Arc<dyn Link>,
}

impl LockGuard {
    pub(crate) fn new(state: SharedState, link: Arc<dyn Link>) -> Self {
        Self { state, link }
    }

    /// The lock id (without the locker's prefix).
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The store key: the locker's prefix followed by the id.
    pub fn key(&self) -> &str {
        &self.state.key
    }

    /// The lease id of this grant.
    pub fn lease_id(&self) -> LeaseId {
        self.state.lease_id
    }

    /// The owner name the lease was taken under.
    pub fn owner(&self) -> &str {
        self.link.owner()
    }

    /// The fencing token of this grant, when fencing is enabled. Never
    /// changes. Send it with every write to the protected resource and have
    /// the resource refuse tokens smaller than the largest it accepted.
    pub fn fencing_token(&self) -> Option<&FencingToken> {
        self.state.token.as_ref()
    }

    /// Whether the lock is expired or must be assumed so: released, lost,
    /// or past its local deadline (checked against the clock on every call,
    /// so it is right even when the background task is starved). Never
    /// changes from `true` back to `false`.
    pub fn is_expired(&self) -> bool {
        self.state.check_expired(self.link.clock().now())
    }

    /// The local deadline (on tokio's clock) while the lock is live: the
    /// store cannot have expired the lease before then. `None` once the
    /// lock is expired.
    pub fn valid_until(&self) -> Option<Instant> {
        if self.is_expired() {
            return None;
        }
        self.state.deadline()
    }

    /// A watch of the lock's [`LockStatus`].
    pub fn status(&self) -> watch::Receiver<LockStatus> {
        self.state.subscribe()
    }

    /// A receiver that yields the lock id each time the lock turns
    /// [`Expiring`](LockStatus::Expiring) (`warn_after` after the
    /// acquisition or the last good renewal, or just before the lock is lost
    /// when it is lost sooner), and ends when the lock is released or lost:
    /// a lost lock has always warned first. `None` when warnings are disabled. Every call gives
    /// an independent receiver; a warning that fired before the receiver was
    /// made is still delivered once.
    pub fn warnings(&self) -> Option<Warnings> {
        self.link.warnings_enabled().then(|| Warnings {
            state: self.state.clone(),
            status: self.state.subscribe(),
            seen: 0,
        })
    }

    /// Resolves once the lock is no longer comfortably held: `Expiring`,
    /// `Lost` or `Released`; returns that status. For `tokio::select!`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only watches.
    pub async fn expiring(&self) -> LockStatus {
        self.wait_for(|status| status != LockStatus::Held).await
    }

    /// Resolves once the lock is no longer held: `Lost` or `Released`;
    /// returns that status. For `tokio::select!`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only watches.
    pub async fn lost(&self) -> LockStatus {
        self.wait_for(LockStatus::is_final).await
    }

    async fn wait_for(&self, done: impl Fn(LockStatus) -> bool) -> LockStatus {
        let mut status = self.state.subscribe();
        match status.wait_for(|s| done(*s)).await {
            Ok(s) => *s,
            // The sender lives in the state this guard holds.
            Err(_) => self.state.status(),
        }
    }

    /// Releases the lock if it is still held. Idempotent: later calls, and
    /// calls after the lock expired, return `Ok(())` at once.
    ///
    /// The lock counts as expired before the store is asked, and stays so
    /// whatever the store answers. When the store reports the lease already
    /// gone (it expired or was taken over), that is logged and `Ok(())` is
    /// returned: the lock is not held either way.
    ///
    /// # Errors
    ///
    /// [`LockError::Store`] when the store failed or timed out. The lease is
    /// then released again in the background; if that fails too, it ends
    /// when its ttl runs out.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: when the future is dropped before the store answered,
    /// the release is finished in the background.
    pub async fn unlock(&self) -> Result<(), LockError> {
        if !self.state.mark_released() {
            return Ok(());
        }
        self.link.forget(&self.state);
        let mut in_doubt = ReleaseInDoubt {
            link: &*self.link,
            state: &self.state,
            armed: true,
        };
        let result = self.link.release_now(&self.state).await;
        match result {
            Ok(ReleaseOutcome::Released) => {
                in_doubt.armed = false;
                tracing::debug!(id = %self.state.id, "lock released");
                Ok(())
            }
            Ok(ReleaseOutcome::NotHeld) => {
                in_doubt.armed = false;
                tracing::warn!(
                    id = %self.state.id,
                    "lease was already gone at release (expired or taken over)"
                );
                Ok(())
            }
            Err(error) => {
                in_doubt.armed = error.is_ambiguous() || error.is_retryable();
                tracing::warn!(id = %self.state.id, %error, "release failed");
                Err(LockError::Store(error))
            }
        }
    }
}

/// Hands a release whose outcome is unknown to the background task.
struct ReleaseInDoubt<'a> {
    link: &'a dyn Link,
    state: &'a SharedState,
    armed: bool,
}

impl Drop for ReleaseInDoubt<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.link.release_in_background(self.state);
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.state.mark_released() {
            self.link.release_in_background(&self.state);
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("id", &self.state.id)
            .field("lease_id", &self.state.lease_id)
            .field("token", &self.state.token)
            .field("status", &self.state.status())
            .finish()
    }
}

#[async_trait]
impl Lock for LockGuard {
    fn id(&self) -> &str {
        LockGuard::id(self)
    }

    fn is_expired(&self) -> bool {
        LockGuard::is_expired(self)
    }

    async fn unlock(&self) -> Result<(), LockError> {
        LockGuard::unlock(self).await
    }

    fn fencing_token(&self) -> Option<&FencingToken> {
        LockGuard::fencing_token(self)
    }

    fn valid_until(&self) -> Option<Instant> {
        LockGuard::valid_until(self)
    }

    fn warnings(&self) -> Option<Warnings> {
        LockGuard::warnings(self)
    }

    fn status(&self) -> watch::Receiver<LockStatus> {
        LockGuard::status(self)
    }
}

/// Warnings of one lock: the counterpart of the original's warn channel.
/// See [`LockGuard::warnings`].
pub struct Warnings {
    state: SharedState,
    status: watch::Receiver<LockStatus>,
    seen: u64,
}

impl Warnings {
    /// Waits for the next warning and returns the lock id; `None` once the
    /// lock is released or lost and every warning was received. Warnings
    /// that fired while nobody received are delivered once, together.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a warning is consumed only when this returns it.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            let status = *self.status.borrow_and_update();
            let fired = self.state.warn_seq();
            if fired > self.seen {
                self.seen = fired;
                return Some(self.state.id.clone());
            }
            if status.is_final() {
                return None;
            }
            if self.status.changed().await.is_err() {
                return None;
            }
        }
    }

    /// A warning that has fired and was not yet received, without waiting.
    pub fn try_recv(&mut self) -> Option<String> {
        let fired = self.state.warn_seq();
        (fired > self.seen).then(|| {
            self.seen = fired;
            self.state.id.clone()
        })
    }
}

impl fmt::Debug for Warnings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Warnings")
            .field("id", &self.state.id)
            .field("seen", &self.seen)
            .finish()
    }
}
