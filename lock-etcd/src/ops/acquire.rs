//! acquire: one transaction granting a free lock key on the store's etcd
//! lease, alongside a keep-alive of that lease.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnResponse};
use lock_core::{AcquireOutcome, AcquireRequest, FencingToken, Grant, Holder, StoreError};
use tokio::time::Instant;

use super::{decode_live, first_kv};
use crate::error::{is_lease_not_found, store_error};
use crate::layout::encode_value;
use crate::lease::KeepAlive;
use crate::registry::{Held, Pending};
use crate::store::EtcdStore;

/// Who holds a key an acquisition found taken.
enum Seen {
    /// Someone else (or a live grant of this store).
    Holder(Holder),
    /// A key this store put that no live grant of it claims (its ttl ran
    /// out, or the acquisition's outcome was lost); its value.
    Ours(Vec<u8>),
}

/// One transaction: if the lock key does not exist, put it on the store's
/// etcd lease for this ttl (and touch the fence key), else read the holder.
/// A keep-alive of that etcd lease, sent after this call began, runs
/// concurrently (shared with other callers), so the applied ttl is counted
/// from no earlier than the request.
///
/// A key this store put that nothing claims any more is deleted (by exact
/// value) and the transaction tried again; so is one whose etcd lease
/// turned out gone. Three tries at most.
pub(super) async fn acquire(
    store: &EtcdStore,
    request: AcquireRequest<'_>,
) -> Result<AcquireOutcome, StoreError> {
    let inner = &store.inner;
    let started = Instant::now();
    let key = request.key;
    let ttl_secs = store.ttl_secs(request.ttl);
    let lock_key = inner.layout.lock_key(key);
    let value = encode_value(request.lease_id, request.owner);
    let fencing = request.fencing.is_enabled();
    let mut pending = Pending::new(&inner.registry, key, request.lease_id, &value);
    for _ in 0..3 {
        let lease = inner
            .registry
            .lease_for(
                &inner.conn,
                inner.config.lease_slack,
                ttl_secs,
                started,
                lock_key.len(),
            )
            .await?;
        let mut grant_ops = vec![TxnOp::put(
            lock_key.clone(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease.id)),
        )];
        if fencing {
            grant_ops.push(TxnOp::put(inner.layout.fence_key(key), Vec::new(), None));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                lock_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(grant_ops)
            .or_else([TxnOp::get(lock_key.clone(), None)]);
        let (reply, kept) =
            tokio::join!(inner.conn.txn(&txn), lease.keep_alive(&inner.conn, started));
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) if is_lease_not_found(&error) => {
                inner.registry.lease_gone(&lease);
                continue;
            }
            Err(error) => return Err(store_error(error, "acquire", Some(key))),
        };
        let revision = reply.header().map_or(0, |header| header.revision());
        store.sweep(started);
        if !reply.succeeded() {
            match holder_of(store, key, &reply, revision)? {
                Seen::Holder(holder) => {
                    pending.settle();
                    return Ok(AcquireOutcome::Held(holder));
                }
                Seen::Ours(value) => {
                    store.delete_if_value(key, value).await?;
                    continue;
                }
            }
        }
        let ttl = match kept {
            Ok(KeepAlive::Alive { ttl, .. }) => ttl,
            Ok(KeepAlive::Gone) => {
                // The lease ended after the put: the key went with it.
                inner.registry.lease_gone(&lease);
                continue;
            }
            // Granted, but for how long is unknown: report the failure;
            // the locker releases the maybe-granted lease by id.
            Err(error) => return Err(error.with_key(key)),
        };
        let token = u64::try_from(revision).map_err(|_| {
            StoreError::unavailable("etcd answered a grant without its revision").with_key(key)
        })?;
        inner.registry.lock().record_grant(
            key,
            Held {
                lease_id: request.lease_id,
                lease: lease.clone(),
                value: value.clone(),
                key_bytes: lock_key.len(),
                refreshed: started,
            },
        );
        pending.settle();
        let mut grant = Grant::new(ttl);
        if fencing {
            grant = grant.with_token(FencingToken::from(token));
        }
        return Ok(AcquireOutcome::Acquired(grant));
    }
    Err(StoreError::unavailable("etcd leases kept ending during the acquisition").with_key(key))
}

/// Reads the holder from a refused acquisition, and notes the revision at
/// which the key was seen held (where a watch for its release starts).
fn holder_of(
    store: &EtcdStore,
    key: &str,
    reply: &TxnResponse,
    revision: i64,
) -> Result<Seen, StoreError> {
    let kv = first_kv(reply, 0).ok_or_else(|| {
        StoreError::unavailable("etcd refused the acquisition without naming the holder")
            .with_key(key)
    })?;
    let value = decode_live(key, &kv)?;
    let mut state = store.inner.registry.lock();
    if let Some(ours) =
        state.own_unclaimed(key, value.lease_id, kv.lease(), kv.value(), Instant::now())
    {
        return Ok(Seen::Ours(ours));
    }
    state.saw_held(key, revision);
    // etcd does not say how long the holder's lease runs without another
    // round trip; waiters are woken by a watch instead.
    Ok(Seen::Holder(Holder::new(value.owner)))
}
