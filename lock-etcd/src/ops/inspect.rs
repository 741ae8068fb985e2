//! inspect: the lock and fence keys in one transaction, then the holder's
//! remaining time from its etcd lease.

use etcd_client::{Txn, TxnOp};
use lock_core::{FencingToken, Holder, LeaseInfo, StoreError};

use super::{decode_live, first_kv};
use crate::error::{is_lease_not_found, store_error};
use crate::lease::ttl_of;
use crate::store::EtcdStore;

/// Reads the lock key and the fence key in one transaction, then the
/// holder's remaining time from its etcd lease. `last_token` is the fence
/// key's mod revision: the token of the last grant made with fencing, kept
/// after release and expiry. `None` for a key never granted (or granted
/// only without fencing and now free).
pub(super) async fn inspect(store: &EtcdStore, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
    let inner = &store.inner;
    let layout = &inner.layout;
    let txn = Txn::new().and_then([
        TxnOp::get(layout.lock_key(key), None),
        TxnOp::get(layout.fence_key(key), None),
    ]);
    let reply = inner
        .conn
        .txn(&txn)
        .await
        .map_err(|error| store_error(error, "inspect", Some(key)))?;
    let lock = first_kv(&reply, 0);
    let fence = first_kv(&reply, 1);
    let last_token = fence
        .as_ref()
        .and_then(|kv| u64::try_from(kv.mod_revision()).ok())
        .map(FencingToken::from);
    let holder = match &lock {
        None => None,
        Some(kv) => {
            let owner = decode_live(key, kv)?.owner;
            let id = kv.lease();
            let remaining = inner.conn.call(|client| {
                let mut leases = client.lease_client();
                async move { leases.time_to_live(id, None).await }
            });
            match remaining.await {
                Ok(reply) if reply.ttl() >= 0 => {
                    Some(Holder::new(owner).with_remaining(ttl_of(reply.ttl())))
                }
                // The lease ran out; etcd is deleting the key.
                Ok(_) => None,
                Err(error) if is_lease_not_found(&error) => None,
                Err(error) => return Err(store_error(error, "inspect", Some(key))),
            }
        }
    };
    if lock.is_none() && fence.is_none() {
        return Ok(None);
    }
    Ok(Some(LeaseInfo::new(holder, last_token)))
}
