//! release: one transaction deleting the lock key only while it carries
//! the lease id.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use lock_core::{Fencing, LeaseId, ReleaseOutcome, StoreError};

use crate::error::store_error;
use crate::layout::value_bounds;
use crate::store::EtcdStore;

/// One transaction deleting the lock key only if its value carries
/// `lease_id` (two value comparisons bracket every value of that lease id,
/// whatever the owner). Fencing needs nothing kept: the next grant's create
/// revision is larger anyway, and the fence key stays.
pub(super) async fn release(
    store: &EtcdStore,
    key: &str,
    lease_id: LeaseId,
    _fencing: Fencing,
) -> Result<ReleaseOutcome, StoreError> {
    let inner = &store.inner;
    let lock_key = inner.layout.lock_key(key);
    let (low, high) = value_bounds(lease_id);
    let txn = Txn::new()
        .when([
            Compare::value(lock_key.clone(), CompareOp::Greater, low),
            Compare::value(lock_key.clone(), CompareOp::Less, high),
        ])
        .and_then([TxnOp::delete(lock_key, None)]);
    let reply = inner
        .conn
        .txn(&txn)
        .await
        .map_err(|error| store_error(error, "release", Some(key)))?;
    inner.registry.forget(key, lease_id);
    Ok(if reply.succeeded() {
        ReleaseOutcome::Released
    } else {
        ReleaseOutcome::NotHeld
    })
}
