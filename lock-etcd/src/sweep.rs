//! The sweeper: deletes entries of this store that nobody wants any more
//! but that a shared etcd lease would keep alive.
//!
//! Every entry of one ttl sits on the same etcd lease, so the keep-alives
//! sent for some entries keep all of them alive. Three kinds of entries
//! would outlive their ttl that way (and, waiting or holding, stall the
//! queue behind them), and are deleted here, in the background:
//!
//! - **in doubt**: the value of an acquisition whose reply was lost or
//!   abandoned (recorded by [`Pending`](crate::registry::Pending));
//!   deleted at the next [sweep](EtcdStore::sweep);
//! - **stale**: an entry no renewal covered for its whole ttl (its holder
//!   or waiter stopped renewing); found by sweeps, by renewals of its etcd
//!   lease, and by the store's own acquisitions and renewals that read the
//!   queue it is in;
//! - **unknown**: a key on the store's etcd lease that no entry of the
//!   store claims; found by renewals, which list the lease's keys
//!   ([`EtcdStore::orphans_on_lease`]).
//!
//! The rules it keeps:
//!
//! - A deletion compares the exact value (lease id, mode, limit and owner)
//!   and, when known, the etcd lease, in one transaction: an entry moved to
//!   another etcd lease meanwhile is never deleted.
//! - An entry the [registry](crate::registry) says is claimed (tracked and
//!   live, or an acquisition under way of that lease id) is never deleted,
//!   even if found in a key list read earlier.
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

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use lock_core::{LeaseId, StoreError};
use tokio::time::Instant;

use crate::error::store_error;
use crate::lease::EtcdLease;
use crate::registry::{Claim, Doubt};
use crate::store::EtcdStore;

/// How many orphaned keys one clean-up pass deletes at most.
const CLEANUP_BATCH: usize = 256;
/// How often acquisitions and renewals look for stale entries and entries
/// in doubt, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Conditional deletions per transaction (etcd refuses more than 128
/// operations in one, by default).
pub(crate) const DELETES_PER_TXN: usize = 64;

/// An entry that may have to be deleted.
pub(crate) struct Orphan {
    pub(crate) key: String,
    pub(crate) lease_id: LeaseId,
    /// Its value, when the store knows it.
    pub(crate) value: Option<Vec<u8>>,
    /// The etcd lease it is on, when known (needed when the value is not).
    pub(crate) lease: Option<i64>,
    /// From an acquisition of unknown outcome: remembered again when the
    /// clean-up fails.
    pub(crate) in_doubt: bool,
}

impl EtcdStore {
    /// Keys on `lease` (listed in `keys`) that no entry of this store
    /// claims any more: acquisitions whose reply was lost or abandoned, and
    /// entries no renewal covered for their whole ttl. To be deleted in the
    /// background ([`EtcdStore::spawn_cleanup`]); without this, keep-alives
    /// for other entries would keep them alive forever.
    pub(crate) fn orphans_on_lease(
        &self,
        lease: &Arc<EtcdLease>,
        keys: &HashSet<Vec<u8>>,
        now: Instant,
    ) -> Vec<Orphan> {
        let layout = &self.inner.layout;
        let state = self.inner.registry.lock();
        keys.iter()
            .filter_map(|etcd_key| {
                let (key, lease_id) = layout.entry_of(etcd_key)?;
                let value = match state.claim_on_lease(key, lease_id, lease, now) {
                    Claim::Claimed => return None,
                    Claim::Stale(value) => Some(value),
                    Claim::Unknown => None,
                };
                Some(Orphan {
                    key: key.to_owned(),
                    lease_id,
                    value,
                    lease: Some(lease.id),
                    in_doubt: false,
                })
            })
            .take(CLEANUP_BATCH)
            .collect()
    }

    /// At most once a second: deletes, in the background, the entries of
    /// this store whose ttl ran out without a renewal while their etcd lease
    /// was kept alive for others, and the entries acquisitions of unknown
    /// outcome may have put.
    pub(crate) fn sweep(&self, now: Instant) {
        let orphans: Vec<Orphan> =
            {
                let mut state = self.inner.registry.lock();
                if !state.sweep_due(now) || self.inner.cleaning.load(Ordering::Acquire) {
                    return;
                }
                state.sweep_next_at(now + SWEEP_INTERVAL);
                let mut orphans: Vec<Orphan> = state
                    .stale_entries(now, CLEANUP_BATCH)
                    .into_iter()
                    .map(|(key, lease_id, value, lease)| Orphan {
                        key,
                        lease_id,
                        value: Some(value),
                        lease: Some(lease.id),
                        in_doubt: false,
                    })
                    .collect();
                orphans.extend(state.take_in_doubt(CLEANUP_BATCH).into_iter().map(|doubt| {
                    Orphan {
                        key: doubt.key,
                        lease_id: doubt.lease_id,
                        value: Some(doubt.value),
                        lease: None,
                        in_doubt: true,
                    }
                }));
                orphans
            };
        self.spawn_cleanup(orphans);
    }

    /// Deletes `orphans` in a background task, one pass at a time.
    pub(crate) fn spawn_cleanup(&self, orphans: Vec<Orphan>) {
        if orphans.is_empty() {
            return;
        }
        let requeue = |orphans: Vec<Orphan>| {
            let mut state = self.inner.registry.lock();
            for orphan in orphans {
                if let (true, Some(value)) = (orphan.in_doubt, orphan.value) {
                    state.requeue_in_doubt(Doubt {
                        key: orphan.key,
                        lease_id: orphan.lease_id,
                        value,
                    });
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
                            lease_id = %orphan.lease_id,
                            "deleted an entry that no holder or waiter renews (an acquisition whose reply was lost, or an entry whose renewals stopped)"
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
                            state.requeue_in_doubt(Doubt {
                                key: orphan.key,
                                lease_id: orphan.lease_id,
                                value,
                            });
                        }
                    }
                    break;
                }
            }
        });
    }

    /// Deletes `orphan` if it is still there (on its lease, when known) and
    /// no live entry or acquisition of this store claims it; whether it did.
    async fn delete_orphan(&self, orphan: &Orphan) -> Result<bool, StoreError> {
        let key = orphan.key.as_str();
        let value = match &orphan.value {
            Some(value) => value.clone(),
            None => {
                let etcd_key = self.inner.layout.entry_key(key, orphan.lease_id);
                let reply = self
                    .inner
                    .conn
                    .get(&etcd_key)
                    .await
                    .map_err(|error| store_error(error, "get", Some(key)))?;
                match (reply.kvs().first(), orphan.lease) {
                    (Some(found), Some(lease)) if found.lease() == lease => found.value().to_vec(),
                    _ => return Ok(false),
                }
            }
        };
        if self
            .inner
            .registry
            .lock()
            .claims(key, orphan.lease_id, Instant::now())
        {
            return Ok(false);
        }
        let deleted = self
            .delete_entries(&[(key, orphan.lease_id, value, orphan.lease)])
            .await?;
        Ok(deleted.first().copied().unwrap_or(false))
    }

    /// Deletes each entry `(key, lease id, value, etcd lease)` if its key
    /// holds exactly that value (and is on that etcd lease, when given),
    /// in one transaction per [`DELETES_PER_TXN`], and forgets the ones
    /// deleted; whether each was.
    pub(crate) async fn delete_entries(
        &self,
        entries: &[(&str, LeaseId, Vec<u8>, Option<i64>)],
    ) -> Result<Vec<bool>, StoreError> {
        let layout = &self.inner.layout;
        let mut deleted = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(DELETES_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, lease_id, value, lease)| {
                    let etcd_key = layout.entry_key(key, *lease_id);
                    let mut when = vec![Compare::value(
                        etcd_key.clone(),
                        CompareOp::Equal,
                        value.clone(),
                    )];
                    if let Some(lease) = lease {
                        when.push(Compare::lease(etcd_key.clone(), CompareOp::Equal, *lease));
                    }
                    TxnOp::txn(
                        Txn::new()
                            .when(when)
                            .and_then([TxnOp::delete(etcd_key, None)]),
                    )
                })
                .collect();
            let reply = self
                .inner
                .conn
                .txn(&Txn::new().and_then(ops))
                .await
                .map_err(|error| store_error(error, "clean-up", chunk.first().map(|e| e.0)))?;
            let outcomes = reply.op_responses();
            for (index, (key, lease_id, _, _)) in chunk.iter().enumerate() {
                let done =
                    matches!(outcomes.get(index), Some(TxnOpResponse::Txn(txn)) if txn.succeeded());
                if done {
                    self.inner.registry.forget(key, *lease_id);
                }
                deleted.push(done);
            }
        }
        Ok(deleted)
    }
}

/// Clears the "a pass is running" flag when the pass ends, however it ends.
struct CleaningDone<'a>(&'a AtomicBool);

impl Drop for CleaningDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
