//! The sweeper: deletes lock keys of this store that nobody wants any more
//! but that a shared etcd lease would keep alive.
//!
//! Every lock of one ttl sits on the same etcd lease, so the keep-alives
//! sent for some locks keep all of them alive. Three kinds of keys would
//! outlive their ttl that way, and are deleted here, in the background:
//!
//! - **in doubt**: the value of an acquisition whose reply was lost or
//!   abandoned (recorded by [`Pending`](crate::registry::Pending));
//!   deleted at the next [sweep](EtcdStore::sweep);
//! - **stale**: a grant no renewal covered for its whole ttl; found by
//!   sweeps and by renewals of its etcd lease;
//! - **unknown**: a key on the store's etcd lease that no grant of the
//!   store claims; found by renewals, which list the lease's keys
//!   ([`EtcdStore::clean_up_orphans`]).
//!
//! The rules it keeps:
//!
//! - A deletion compares the exact value (lease id and owner), in one
//!   transaction: a key granted again meanwhile is never deleted.
//! - A key the [registry](crate::registry) says is claimed (a live grant
//!   or an acquisition under way of that lease id) is never deleted, even
//!   if found in a key list read earlier.
//! - Sweeps run at most once a second ([`SWEEP_INTERVAL`], on acquisitions
//!   and renewals), and one clean-up pass at a time, deleting at most
//!   [`CLEANUP_BATCH`] keys; keys in doubt that a pass could not delete go
//!   back to the registry for the next one.
//! - Nothing here fails a caller: clean-ups run in a spawned task, bounded
//!   by the request timeout, and their errors are logged.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use lock_core::StoreError;
use tokio::time::Instant;

use crate::error::store_error;
use crate::layout::decode_value;
use crate::lease::EtcdLease;
use crate::registry::Claim;
use crate::store::EtcdStore;

/// How many orphaned keys one clean-up pass deletes at most.
const CLEANUP_BATCH: usize = 256;
/// How often acquisitions and renewals look for stale grants and keys in
/// doubt, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A key on a store lease that may have to be deleted.
struct Orphan {
    key: String,
    /// Its value, when the store knows it.
    value: Option<Vec<u8>>,
    /// The lease it is on, when known (needed when the value is not).
    lease: Option<Arc<EtcdLease>>,
    /// From an acquisition of unknown outcome: remembered again when the
    /// clean-up fails.
    in_doubt: bool,
}

impl EtcdStore {
    /// Keys on `lease` (listed in `keys`) that no grant of this store
    /// covers any more: acquisitions whose reply was lost or abandoned, and
    /// locks no renewal covered for their whole ttl. Deleted in the
    /// background; without this, keep-alives for other locks would keep
    /// them alive forever.
    pub(crate) fn clean_up_orphans(
        &self,
        lease: &Arc<EtcdLease>,
        keys: HashSet<Vec<u8>>,
        now: Instant,
    ) {
        let layout = &self.inner.layout;
        let orphans: Vec<Orphan> = {
            let state = self.inner.registry.lock();
            keys.iter()
                .filter_map(|etcd_key| {
                    let key = layout.lock_key_of(etcd_key)?;
                    let value = match state.claim_on_lease(key, lease, now) {
                        Claim::Claimed => return None,
                        Claim::Stale(value) => Some(value),
                        Claim::Unknown => None,
                    };
                    Some(Orphan {
                        key: key.to_owned(),
                        value,
                        lease: Some(lease.clone()),
                        in_doubt: false,
                    })
                })
                .take(CLEANUP_BATCH)
                .collect()
        };
        self.spawn_cleanup(orphans);
    }

    /// At most once a second: deletes, in the background, the locks of this
    /// store whose ttl ran out without a renewal while their etcd lease was
    /// kept alive for others, and the keys acquisitions of unknown outcome
    /// may have put.
    pub(crate) fn sweep(&self, now: Instant) {
        let orphans: Vec<Orphan> =
            {
                let mut state = self.inner.registry.lock();
                if !state.sweep_due(now) {
                    return;
                }
                if self.inner.cleaning.load(Ordering::Acquire) {
                    return;
                }
                state.sweep_next_at(now + SWEEP_INTERVAL);
                let mut orphans: Vec<Orphan> = state
                    .stale_grants(now, CLEANUP_BATCH)
                    .into_iter()
                    .map(|(key, value, lease)| Orphan {
                        key,
                        value: Some(value),
                        lease: Some(lease),
                        in_doubt: false,
                    })
                    .collect();
                orphans.extend(state.take_in_doubt(CLEANUP_BATCH).into_iter().map(
                    |(key, value)| Orphan {
                        key,
                        value: Some(value),
                        lease: None,
                        in_doubt: true,
                    },
                ));
                orphans
            };
        self.spawn_cleanup(orphans);
    }

    /// Deletes `orphans` in a background task, one pass at a time.
    fn spawn_cleanup(&self, orphans: Vec<Orphan>) {
        if orphans.is_empty() {
            return;
        }
        let requeue = |orphans: Vec<Orphan>| {
            let mut state = self.inner.registry.lock();
            for orphan in orphans {
                if let (true, Some(value)) = (orphan.in_doubt, orphan.value) {
                    state.requeue_in_doubt(orphan.key, value);
                }
            }
        };
        if self.inner.cleaning.swap(true, Ordering::AcqRel) {
            return requeue(orphans);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.cleaning.store(false, Ordering::Release);
            return requeue(orphans);
        };
        let store = self.clone();
        runtime.spawn(async move {
            let _done = CleaningDone(&store.inner.cleaning);
            let mut orphans = orphans.into_iter();
            while let Some(orphan) = orphans.next() {
                let work = store.delete_orphan(&orphan);
                let failed = match tokio::time::timeout(store.inner.conn.timeout, work).await {
                    Ok(Ok(true)) => {
                        tracing::warn!(
                            key = %orphan.key,
                            "deleted a lock key that no holder renews (an acquisition whose reply was lost, or a lock whose renewals stopped)"
                        );
                        false
                    }
                    Ok(Ok(false)) => false,
                    Ok(Err(error)) => {
                        tracing::debug!(key = %orphan.key, %error, "orphan clean-up failed; retrying later");
                        true
                    }
                    Err(_) => true,
                };
                if failed {
                    let mut state = store.inner.registry.lock();
                    for orphan in std::iter::once(orphan).chain(orphans.by_ref()) {
                        if let (true, Some(value)) = (orphan.in_doubt, orphan.value) {
                            state.requeue_in_doubt(orphan.key, value);
                        }
                    }
                    break;
                }
            }
        });
    }

    /// Deletes `orphan` if it is still on its lease and no live grant or
    /// acquisition of this store claims it; whether it did.
    async fn delete_orphan(&self, orphan: &Orphan) -> Result<bool, StoreError> {
        let key = orphan.key.as_str();
        let value = match &orphan.value {
            Some(value) => value.clone(),
            None => {
                let reply = self
                    .inner
                    .conn
                    .get(&self.inner.layout.lock_key(key))
                    .await
                    .map_err(|error| store_error(error, "get", Some(key)))?;
                match (reply.kvs().first(), &orphan.lease) {
                    (Some(found), Some(lease)) if found.lease() == lease.id => {
                        found.value().to_vec()
                    }
                    _ => return Ok(false),
                }
            }
        };
        let Ok(decoded) = decode_value(&value) else {
            return Ok(false);
        };
        if self
            .inner
            .registry
            .lock()
            .claims(key, decoded.lease_id, Instant::now())
        {
            return Ok(false);
        }
        self.delete_if_value(key, value).await
    }

    /// Deletes lock `key` if it holds exactly `value`, and forgets the grant
    /// it carried; whether it was deleted.
    pub(crate) async fn delete_if_value(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let lock_key = self.inner.layout.lock_key(key);
        let decoded = decode_value(&value).ok();
        let txn = Txn::new()
            .when([Compare::value(lock_key.clone(), CompareOp::Equal, value)])
            .and_then([TxnOp::delete(lock_key, None)]);
        let reply = self
            .inner
            .conn
            .txn(&txn)
            .await
            .map_err(|error| store_error(error, "clean-up", Some(key)))?;
        if let Some(decoded) = decoded {
            self.inner.registry.forget(key, decoded.lease_id);
        }
        Ok(reply.succeeded())
    }
}

/// Clears the "a pass is running" flag when the pass ends, however it ends.
struct CleaningDone<'a>(&'a AtomicBool);

impl Drop for CleaningDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
