//! inspect: the queue and the fence key in one transaction, then the
//! holders' remaining time from their etcd leases.

use std::collections::HashMap;

use etcd_client::{Txn, TxnOp};
use futures_util::future::join_all;
use lock_core::{FencingToken, LeaseInfo, StoreError};

use super::{queue_of, range_reply, read_queue};
use crate::error::{is_lease_not_found, store_error};
use crate::lease::ttl_of;
use crate::store::EtcdStore;

/// Reads the key's queue and its fence key in one transaction, then each
/// holder's remaining time from its etcd lease (one call per distinct
/// lease, concurrently; a holder whose lease just ran out is left out).
/// `last_token` is the fence key's mod revision: the create revision of
/// the last entry added with fencing, kept after release and expiry.
/// `None` for a key never used (or used only without fencing and now
/// without entries).
pub(super) async fn inspect(store: &EtcdStore, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
    let inner = &store.inner;
    let layout = &inner.layout;
    let txn = Txn::new().and_then([
        read_queue(layout, key),
        TxnOp::get(layout.fence_key(key), None),
    ]);
    let reply = inner
        .conn
        .txn(&txn)
        .await
        .map_err(|error| store_error(error, "inspect", Some(key)))?;
    let queue = queue_of(store, key, &reply, 0)?;
    let fence = range_reply(&reply, 1).and_then(|get| get.kvs().first().cloned());
    let last_token = fence
        .as_ref()
        .and_then(|kv| u64::try_from(kv.mod_revision()).ok())
        .map(FencingToken::from);
    if queue.entries.is_empty() && fence.is_none() {
        return Ok(None);
    }
    let holding = &queue.entries[..queue.holding()];
    let mut etcd_leases: Vec<i64> = holding.iter().map(|seen| seen.etcd_lease).collect();
    etcd_leases.sort_unstable();
    etcd_leases.dedup();
    let remaining = join_all(etcd_leases.iter().map(|&id| async move {
        let reply = inner
            .conn
            .call(|client| {
                let mut leases = client.lease_client();
                async move { leases.time_to_live(id, None).await }
            })
            .await;
        match reply {
            Ok(reply) if reply.ttl() >= 0 => Ok((id, Some(ttl_of(reply.ttl())))),
            // The lease ran out; etcd is deleting its keys.
            Ok(_) => Ok((id, None)),
            Err(error) if is_lease_not_found(&error) => Ok((id, None)),
            Err(error) => Err(store_error(error, "inspect", Some(key))),
        }
    }))
    .await
    .into_iter()
    .collect::<Result<HashMap<_, _>, StoreError>>()?;
    let holders = holding
        .iter()
        .filter_map(|seen| {
            let left = remaining.get(&seen.etcd_lease).copied().flatten()?;
            Some(seen.holder().with_remaining(left))
        })
        .collect();
    let mut info =
        LeaseInfo::new(holders, last_token).with_waiting(queue.entries.len() - holding.len());
    if let Some(limit) = queue.limit() {
        info = info.with_limit(limit);
    }
    Ok(Some(info))
}
