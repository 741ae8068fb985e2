//! The backend authors' trait.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, ReleaseOutcome,
    RenewEntry, RenewOutcome, StoreError, WaitOutcome,
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
/// # The model: a key is a queue of entries
///
/// Every request on a key, holding or waiting, is an **entry**: lease id,
/// owner, [mode](crate::LockMode), the ttl it asked for, its expiry by the
/// store's clock, and a **sequence number** the store assigns on arrival,
/// increasing per key (and, for fencing, across the store's restarts). A
/// key's shared entries have a **limit** (N for a semaphore of N permits,
/// `u32::MAX` for readers); shared requests must agree on it while the key
/// has live shared entries, or get [`AcquireOutcome::LimitMismatch`].
/// Exclusive entries hold alone and ignore the limit: a mutex, and the
/// writer of a reader-writer lock, are the same entry.
///
/// **Who holds is decided by position**, at every operation, skipping
/// expired entries: walk the live entries in sequence order; an entry holds
/// when every live entry before it holds and it is compatible with them (an
/// exclusive entry only when it is first; a shared entry only when every
/// entry before it is shared and fewer than `limit` are). No entry
/// overtakes an earlier live one. So entries start holding in sequence
/// order, and a store may use the sequence number itself as the fencing
/// token.
///
/// - **Handoff in one operation.** Removing an entry (release, expiry)
///   makes the next entries holders by that rule, with no further write. A
///   store with notifications tells each promoted entry in the release's
///   own step; [`wait_for_grant`](LeaseStore::wait_for_grant) hears it.
/// - **Waiting entries** are added by requests with
///   [`queue`](AcquireRequest::queue) set, expire their waiter ttl after
///   their last renewal, and are renewed in the same batches as holders
///   ([`RenewEntry::wait_ttl`]). A promoted entry keeps the expiry it had
///   as a waiter until its next renewal extends it to the batch's ttl: so a
///   waiter that died delays the queue by at most its waiter ttl, promoted
///   or not.
///
/// # The rules the suite checks
///
/// **Acquire**
/// - An entry that would hold at the end of the queue (for a mutex: the
///   key has no live entry, holding or waiting) is granted
///   ([`Acquired`](crate::AcquireOutcome::Acquired)) with expiry
///   `store_now + ttl`. Otherwise a queueing request adds a waiting entry
///   ([`Queued`](crate::AcquireOutcome::Queued)) and any other answers
///   [`Held`](crate::AcquireOutcome::Held) with the first holder, adding
///   nothing: a key with waiters is not free. Many clients racing for one
///   free key: exactly one is granted.
/// - A grant lasts its whole applied ttl: nobody else is granted the key
///   before it runs out, unless it is released. The applied ttl is at least
///   the requested one (a store may round up, never down).
/// - [`Holder::remaining`](crate::Holder::remaining) is the holder's time
///   left by the store's clock, or a lower bound of it (etcd truncates to
///   whole seconds), or `None` when unknown; never more than the ttl.
/// - [`Grant::previous_owner`](crate::Grant::previous_owner) names the owner
///   of a holding entry that *expired* and was taken over (when the store
///   still knows it); it is `None` after a release: a released key was not
///   taken over.
/// - An acquisition sent again with the same lease id (its first reply was
///   lost) must not add a second entry: answer the existing entry's state.
///
/// **Queue**
/// - Waiting entries are granted in sequence order; the holder that
///   releases and asks again goes behind the waiters; shared entries hold
///   together up to the limit, an exclusive one alone, and a waiting
///   exclusive entry blocks shared entries that came after it.
/// - A waiting entry that is not renewed expires after its waiter ttl and
///   is skipped; a holding one after its ttl.
///
/// **Renew**
/// - Renews only an entry that carries the entry's lease id and is still
///   live by the store's clock: an entry that expired is
///   [`Lost`](crate::RenewOutcome::Lost) even when nobody took the key, and
///   the renewal does not bring it back. Released, superseded and unknown
///   entries are `Lost`. A renewal never creates an entry.
/// - An entry renewed as waiting answers
///   [`Waiting`](crate::RenewOutcome::Waiting) (extended by its waiter
///   ttl) or, when it holds by now,
///   [`Granted`](crate::RenewOutcome::Granted) with its token (extended by
///   the batch's ttl). A held entry answers
///   [`Renewed`](crate::RenewOutcome::Renewed).
/// - One outcome per entry, in order, for mixed batches; a batch of up to
///   [`Capabilities::max_batch`](crate::Capabilities::max_batch) entries,
///   holding and waiting alike, costs a constant number of round trips; an
///   empty batch answers nothing.
///
/// **Release**
/// - Removes only the entry with the given id (holding or waiting), and
///   only while it is live; never by key alone. A release by an entry that
///   expired (whether or not someone took the key since), by a foreign
///   lease id, or a second release, answers
///   [`NotHeld`](crate::ReleaseOutcome::NotHeld) and changes nothing. After
///   the holder's release the next entry holds at once, or another client
///   is granted the key at once when nobody waits.
///
/// **Fencing tokens** (when the request asks for them)
/// - Every grant of a key carries a token strictly greater than every
///   earlier grant's token of that key: across release, expiry, takeover,
///   and the store's restart; keys interleaved do not disturb each other.
///   Tokens increase in grant order; several shared holders each carry
///   their own.
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
/// - [`wait_for_grant`](LeaseStore::wait_for_grant) returns by its
///   maximum; with [`Capabilities::native_wait`](crate::Capabilities::native_wait)
///   a release that promotes the entry wakes it long before.
///
/// # Cancel safety
///
/// The locker drops a store future when its `store_timeout` passes or its
/// caller is cancelled. A store must stay consistent when that happens: the
/// operation either took effect in the store or did not; the locker treats
/// a lost acquire reply as "maybe granted or queued" and releases that
/// entry by lease id.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Adds an entry for `request.lease_id` to the queue of `request.key`:
    /// holding at once when the model lets it, else waiting when
    /// [`request.queue`](AcquireRequest::queue) is set, else nothing.
    ///
    /// On a grant, the store records `expiry = store_now + ttl` and, when
    /// `request.fencing` is enabled, the token (greater than every token
    /// earlier granted for the key), in the same atomic step. A waiting
    /// entry gets `expiry = store_now + waiter_ttl`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails. Losing the race, queueing and
    /// a limit mismatch are outcomes, not errors.
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError>;

    /// Extends every entry of `leases` whose lease id matches and which is
    /// still live by the store's clock: holding entries to `ttl` from now,
    /// waiting ones to their waiter ttl from now (or to `ttl`, reporting the
    /// grant, when they hold by now). Answers one outcome per entry, in
    /// order. Never creates an entry. A batch costs a constant number of
    /// round trips, not one per entry; the locker never passes more than
    /// [`Capabilities::max_batch`] entries.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails; then no outcome is known.
    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError>;

    /// Removes the entry on `key` whose lease id is `lease_id`, holding or
    /// waiting, if it is live. Never deletes by key alone. Entries it kept
    /// waiting hold from this step on; a store with notifications tells
    /// them. With fencing enabled the key's fencing state survives; with it
    /// disabled the store may delete a key left without entries entirely.
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

    /// What the store knows about `key`: its holders, how many wait, its
    /// limit and last token; `None` when it has never seen it (or deleted
    /// it with fencing disabled).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails or the stored value cannot be
    /// understood.
    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError>;

    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// Resolves when the waiting entry `lease_id` on `key` was told it holds
    /// ([`WaitOutcome::Granted`]), when its queue may have changed
    /// ([`WaitOutcome::Changed`]), or after `max`
    /// ([`WaitOutcome::TimedOut`]). Waiters renew their entry after
    /// anything but `Granted`, and now and then in any case, since
    /// notifications can be lost: a spurious wake-up is harmless, a
    /// `Granted` must be true.
    ///
    /// The default sleeps `max`. Stores with notifications (LISTEN /
    /// NOTIFY, pub/sub, watches) override it and set
    /// [`Capabilities::native_wait`].
    ///
    /// # Cancel safety
    ///
    /// Must be cancel-safe: the locker drops it when its wait ends.
    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        let _ = (key, lease_id);
        tokio::time::sleep(max).await;
        WaitOutcome::TimedOut
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

    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        (**self).wait_for_grant(key, lease_id, max).await
    }
}
