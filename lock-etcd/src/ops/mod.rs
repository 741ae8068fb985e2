//! The [`LeaseStore`] operations, one module each: the transactions they
//! send, and what they make of the replies.
//!
//! Operations read and update the [registry](crate::registry) (which
//! entries the store made, which acquisitions are under way) and hand what
//! nobody wants any more to the [sweeper](crate::sweep); they keep no
//! state of their own.

mod acquire;
mod inspect;
mod release;
mod renew;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, GetOptions, GetResponse, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, LeaseStore,
    ReleaseOutcome, RenewEntry, RenewOutcome, StoreError, WaitOutcome,
};

use crate::error::{is_lease_not_found, store_error};
use crate::layout::Layout;
use crate::lease::EtcdLease;
use crate::queue::Queue;
use crate::store::EtcdStore;

/// Nested transactions (one per entry) in one transaction: etcd refuses
/// more than 128 operations per level, by default.
const OPS_PER_TXN: usize = 100;

#[async_trait]
impl LeaseStore for EtcdStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        acquire::acquire(self, request).await
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        renew::renew(self, leases, ttl).await
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        release::release(self, key, lease_id, fencing).await
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        inspect::inspect(self, key).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.clone()
    }

    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        wait::wait_for_grant(self, key, lease_id, max).await
    }
}

/// A read of `key`'s whole range (entries and old lock key), by create
/// revision.
fn read_queue(layout: &Layout, key: &str) -> TxnOp {
    let (start, end) = layout.range(key);
    TxnOp::get(
        start,
        Some(
            GetOptions::new()
                .with_range(end)
                .with_sort(SortTarget::Create, SortOrder::Ascend),
        ),
    )
}

/// The range reply of operation `index` of `reply`.
fn range_reply(reply: &TxnResponse, index: usize) -> Option<GetResponse> {
    match reply.op_responses().into_iter().nth(index)? {
        TxnOpResponse::Get(get) => Some(get),
        _ => None,
    }
}

/// The queue read by operation `index` of `reply`, at the reply's revision.
fn queue_of(
    store: &EtcdStore,
    key: &str,
    reply: &TxnResponse,
    index: usize,
) -> Result<Queue, StoreError> {
    let get = range_reply(reply, index).ok_or_else(|| {
        StoreError::unavailable("etcd answered a transaction without its range read").with_key(key)
    })?;
    Queue::parse(&store.inner.layout, key, get.kvs(), revision_of(reply))
}

fn revision_of(reply: &TxnResponse) -> i64 {
    reply.header().map_or(0, |header| header.revision())
}

/// An entry to move to a holder's etcd lease, keeping its create revision.
struct Move<'a> {
    key: &'a str,
    lease_id: LeaseId,
    value: Vec<u8>,
    create_revision: i64,
}

/// Puts each entry again, with its value, on `lease`, if it still has its
/// create revision (a put on an existing key keeps it, so the entry keeps
/// its place and token): one nested transaction per entry, in one
/// transaction per [`OPS_PER_TXN`] entries. Whether each moved.
async fn move_entries(
    store: &EtcdStore,
    moves: &[Move<'_>],
    lease: &Arc<EtcdLease>,
) -> Result<Vec<bool>, StoreError> {
    let layout = &store.inner.layout;
    let mut moved = Vec::with_capacity(moves.len());
    for chunk in moves.chunks(OPS_PER_TXN) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|entry| {
                let etcd_key = layout.entry_key(entry.key, entry.lease_id);
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::create_revision(
                            etcd_key.clone(),
                            CompareOp::Equal,
                            entry.create_revision,
                        )])
                        .and_then([TxnOp::put(
                            etcd_key,
                            entry.value.clone(),
                            Some(PutOptions::new().with_lease(lease.id)),
                        )]),
                )
            })
            .collect();
        let key = chunk.first().map(|entry| entry.key);
        let reply = match store.inner.conn.txn(&Txn::new().and_then(ops)).await {
            Ok(reply) => reply,
            Err(error) if is_lease_not_found(&error) => {
                store.inner.registry.lease_gone(lease);
                return Err(store_error(error, "move to the holder's lease", key));
            }
            Err(error) => return Err(store_error(error, "move to the holder's lease", key)),
        };
        let outcomes = reply.op_responses();
        moved.extend((0..chunk.len()).map(
            |index| matches!(outcomes.get(index), Some(TxnOpResponse::Txn(txn)) if txn.succeeded()),
        ));
    }
    Ok(moved)
}
