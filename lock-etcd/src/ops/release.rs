//! release: one deletion of the entry's key, which holds the lease id.

use lock_core::{Fencing, LeaseId, ReleaseOutcome, StoreError};
use tokio::time::Instant;

use crate::error::store_error;
use crate::store::EtcdStore;

/// Deletes the entry's key (holding or waiting); its name carries the
/// lease id, so nothing but this entry is ever deleted, and no comparison
/// is needed: etcd's count of deleted keys tells whether it was live. The
/// entries it kept waiting hold from this revision on; their watches see
/// the deletion. Fencing needs nothing kept: later entries' create
/// revisions are larger anyway, and the fence key stays.
///
/// An entry of this store whose ttl ran out without a renewal, while other
/// entries kept the shared etcd lease alive, has expired by the contract:
/// it is deleted (by exact value) and the answer is `NotHeld`.
pub(super) async fn release(
    store: &EtcdStore,
    key: &str,
    lease_id: LeaseId,
    _fencing: Fencing,
) -> Result<ReleaseOutcome, StoreError> {
    let inner = &store.inner;
    let stale = inner
        .registry
        .lock()
        .get(key, lease_id)
        .filter(|tracked| tracked.stale(Instant::now()))
        .map(|tracked| (tracked.value.clone(), tracked.lease.id));
    if let Some((value, lease)) = stale {
        store
            .delete_entries(&[(key, lease_id, value, Some(lease))])
            .await?;
        inner.registry.forget(key, lease_id);
        return Ok(ReleaseOutcome::NotHeld);
    }
    let reply = inner
        .conn
        .delete(&inner.layout.entry_key(key, lease_id))
        .await
        .map_err(|error| store_error(error, "release", Some(key)))?;
    inner.registry.forget(key, lease_id);
    Ok(if reply.deleted() > 0 {
        ReleaseOutcome::Released
    } else {
        ReleaseOutcome::NotHeld
    })
}
