//! The [`LeaseStore`] operations, one module each: the transactions they
//! send, and what they make of the replies.
//!
//! Operations read and update the [registry](crate::registry) (which
//! grants the store made, which acquisitions are under way) and hand what
//! nobody wants any more to the [sweeper](crate::sweep); they keep no
//! state of their own.

mod acquire;
mod inspect;
mod release;
mod renew;
mod wait;

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{KeyValue, TxnOpResponse, TxnResponse};
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, LeaseStore,
    ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
};

use crate::layout::{LockValue, decode_value, excerpt};
use crate::store::EtcdStore;

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

    async fn wait_for_change(&self, key: &str, max: Duration) {
        wait::wait_for_change(self, key, max).await;
    }
}

/// The first key-value of the `index`-th operation's range reply.
fn first_kv(reply: &TxnResponse, index: usize) -> Option<KeyValue> {
    match reply.op_responses().into_iter().nth(index)? {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    }
}

/// A live lock key's value, or a `Corrupt` error naming it.
fn decode_live(key: &str, kv: &KeyValue) -> Result<LockValue, StoreError> {
    let value = decode_value(kv.value()).map_err(|why| {
        StoreError::corrupt(
            key,
            format!(
                "etcd key {:?} does not hold a dlock lease: {why} (value {}); delete it or use another namespace",
                String::from_utf8_lossy(kv.key()),
                excerpt(kv.value())
            ),
        )
    })?;
    if kv.lease() == 0 {
        return Err(StoreError::corrupt(
            key,
            format!(
                "etcd key {:?} holds a dlock value but no etcd lease, so it would never expire; delete it",
                String::from_utf8_lossy(kv.key())
            ),
        ));
    }
    Ok(value)
}
