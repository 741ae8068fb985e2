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
/// implementation. Implementing the trait needs nothing beyond this crate:
/// it re-exports [`async_trait`](crate::async_trait).
///
/// # The rules the suite checks
///
/// **Acquire**
/// - A key with no live lease (never seen, released, or expired by the
///   store's clock) is granted; a live lease answers
///   [`Held`](crate::AcquireOutcome::Held) with its owner. Many clients
///   racing for one free key: exactly one is granted.
/// - A grant lasts its whole applied ttl: nobody else is granted the key
///   before it runs out, unless it is released. The applied ttl is at least
///   the requested one (a store may round up, never down).
/// - [`Holder::remaining`](crate::Holder::remaining) is the holder's time
///   left by the store's clock, or a lower bound of it (etcd truncates to
///   whole seconds), or `None` when unknown; never more than the ttl.
/// - [`Grant::previous_owner`](crate::Grant::previous_owner) names the owner
///   of a lease that *expired* and was taken over (when the store still
///   knows it); it is `None` after a release: a released key was not taken
///   over.
///
/// **Renew**
/// - Renews only a lease that carries the entry's lease id and is still
///   live by the store's clock: a lease that expired is
///   [`Lost`](crate::RenewOutcome::Lost) even when nobody took the key, and
///   the renewal does not bring it back. Released, superseded and unknown
///   leases are `Lost`. A renewal never creates a lease.
/// - One outcome per entry, in order, for mixed batches; a batch of up to
///   [`Capabilities::max_batch`](crate::Capabilities::max_batch) entries
///   costs a constant number of round trips; an empty batch answers
///   nothing.
///
/// **Release**
/// - Releases only the lease with the given id, and only while it is live;
///   never by key alone. A release by a lease that expired (whether or not
///   someone took the key since), by a foreign lease id, or a second
///   release, answers [`NotHeld`](crate::ReleaseOutcome::NotHeld) and
///   changes nothing. After a release another client is granted the key at
///   once.
///
/// **Fencing tokens** (when the request asks for them)
/// - Every grant of a key carries a token strictly greater than every
///   earlier grant's token of that key: across release, expiry, takeover,
///   and the store's restart; keys interleaved do not disturb each other.
/// - [`inspect`](LeaseStore::inspect) keeps reporting the last token
///   minted after the key is released.
/// - With [`Fencing::Disabled`] a grant carries no token, and a release may
///   delete the key's fencing state altogether. Switching fencing off and
///   back on for one key can therefore restart its tokens below earlier
///   ones (SQL stores and `MemoryStore` do; Redis floors tokens at its
///   clock and etcd uses revisions, so theirs keep increasing): do not mix
///   fenced and unfenced use of one key.
///
/// **Keys and waiting**
/// - Keys are matched exactly, byte for byte, whatever they hold (quotes,
///   SQL and glob wildcards, braces, newlines, emoji), up to
///   [`Capabilities::max_key_len`](crate::Capabilities::max_key_len) bytes.
/// - [`wait_for_change`](LeaseStore::wait_for_change) returns by its
///   maximum; with [`Capabilities::native_wait`](crate::Capabilities::native_wait)
///   a release wakes it long before.
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
