//! The backend authors' trait.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, ReleaseOutcome,
    RenewEntry, RenewOutcome, StoreError,
};

/// A place that keeps leases: the small trait a backend implements.
///
/// Every method is **one atomic conditional operation** on the backend, one
/// round trip where the backend allows it. No method sleeps or retries:
/// the generic [`LeaseLocker`](crate::LeaseLocker) owns time, retries and
/// renewal scheduling. Expiry is decided by the store's clock alone.
///
/// A store that passes the `conformance-tests` suite works with every part
/// of the locker. [`MemoryStore`](crate::MemoryStore) is the reference
/// implementation.
///
/// # Cancel safety
///
/// The locker drops a store future when its `store_timeout` passes or its
/// caller is cancelled. A store must stay consistent when that happens: the
/// operation either took effect in the store or did not; the locker treats
/// a lost acquire reply as "maybe granted" and releases that lease by id.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Grants `request.key` if and only if no live lease exists on it
    /// (absent, released, or expired by the store's clock).
    ///
    /// On a grant, the store records `expiry = store_now + ttl` and, when
    /// `request.fencing` is enabled, mints a fencing token greater than every
    /// token earlier granted for the key, in the same atomic step. The grant
    /// reports the ttl actually applied and the owner of an expired lease it
    /// took over. A live lease gives [`AcquireOutcome::Held`] with the holder
    /// and, when known, its remaining time.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails. Losing the race is not an error.
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError>;

    /// Extends every lease of `leases` whose lease id matches and which is
    /// still live by the store's clock, to `ttl` from now. Answers one
    /// outcome per entry, in order. Never creates a lease. A batch costs a
    /// constant number of round trips, not one per lease; the locker never
    /// passes more than [`Capabilities::max_batch`] entries.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails; then no outcome is known.
    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError>;

    /// Releases the lease on `key` if its lease id is `lease_id` and it is
    /// live. Never deletes by key alone. With fencing enabled the key's
    /// fencing state survives (rows or counters are kept); with it disabled
    /// the store may delete the key entirely. Wakes
    /// [`wait_for_change`](LeaseStore::wait_for_change) waiters.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails.
    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError>;

    /// What the store knows about `key`: `None` when it has never seen it
    /// (or deleted it with fencing disabled).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails or the stored value cannot be
    /// understood.
    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError>;

    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// Resolves when `key` may have been released, or after `max` at the
    /// latest. Waiters re-poll after it resolves in any case, since
    /// notifications can be lost; a spurious wake-up is harmless.
    ///
    /// The default sleeps `max`. Stores with change notifications (LISTEN /
    /// NOTIFY, pub/sub, watches) override it and set
    /// [`Capabilities::native_wait`].
    async fn wait_for_change(&self, key: &str, max: Duration) {
        let _ = key;
        tokio::time::sleep(max).await;
    }
}

#[async_trait]
impl<S: LeaseStore + ?Sized> LeaseStore for Arc<S> {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        (**self).acquire(request).await
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        (**self).renew(leases, ttl).await
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        (**self).release(key, lease_id, fencing).await
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        (**self).inspect(key).await
    }

    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }

    async fn wait_for_change(&self, key: &str, max: Duration) {
        (**self).wait_for_change(key, max).await;
    }
}
