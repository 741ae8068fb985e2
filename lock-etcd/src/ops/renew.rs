//! renew: one keep-alive and one key listing per etcd lease of the batch,
//! whatever the number of locks on it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lock_core::{RenewEntry, RenewOutcome, StoreError};
use tokio::time::Instant;

use crate::lease::{EtcdLease, KeepAlive};
use crate::store::EtcdStore;

/// What a renewal learnt about one etcd lease.
enum LeaseCheck {
    Alive {
        ttl: Duration,
        keys: HashSet<Vec<u8>>,
    },
    Gone,
}

/// One keep-alive and one time-to-live (listing the lease's keys) per etcd
/// lease the batch is on, all concurrently: for a locker, one etcd lease
/// and so one round trip whatever the number of locks. An entry is renewed
/// when its etcd lease lives and still carries its key with this store's
/// grant of its lease id; it is `Lost` otherwise, or when no renewal
/// covered it for its whole ttl. The applied ttl is the etcd lease's
/// (`ttl` is only used when granting).
///
/// Keys the listing shows on the lease that no grant claims go to the
/// sweeper.
pub(super) async fn renew(
    store: &EtcdStore,
    leases: &[RenewEntry<'_>],
    _ttl: Duration,
) -> Result<Vec<RenewOutcome>, StoreError> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let inner = &store.inner;
    let started = Instant::now();
    let mut groups: Vec<Arc<EtcdLease>> = Vec::new();
    let slots: Vec<Option<usize>> = {
        let state = inner.registry.lock();
        leases
            .iter()
            .map(|entry| {
                let lease = state.live_grant(entry.key, entry.lease_id, started)?;
                let slot = groups
                    .iter()
                    .position(|group| Arc::ptr_eq(group, lease))
                    .unwrap_or_else(|| {
                        groups.push(lease.clone());
                        groups.len() - 1
                    });
                Some(slot)
            })
            .collect()
    };
    let conn = &inner.conn;
    let checks = join_all(groups.iter().map(|lease| async move {
        let (kept, keys) = tokio::join!(lease.keep_alive(conn, started), lease.attached_keys(conn));
        match (kept?, keys?) {
            (KeepAlive::Alive { ttl, .. }, Some(keys)) => Ok(LeaseCheck::Alive {
                ttl,
                keys: keys.into_iter().collect(),
            }),
            _ => Ok::<_, StoreError>(LeaseCheck::Gone),
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    for (lease, check) in groups.iter().zip(&checks) {
        if matches!(check, LeaseCheck::Gone) {
            inner.registry.lease_gone(lease);
        }
    }
    let mut outcomes = Vec::with_capacity(leases.len());
    let mut lost = Vec::new();
    {
        let mut state = inner.registry.lock();
        for (entry, slot) in leases.iter().zip(&slots) {
            let renewed = slot.and_then(|slot| match &checks[slot] {
                LeaseCheck::Alive { ttl, keys }
                    if keys.contains(&inner.layout.lock_key(entry.key)) =>
                {
                    Some(*ttl)
                }
                _ => None,
            });
            match renewed {
                Some(ttl) => {
                    state.renewed(entry.key, entry.lease_id, started);
                    outcomes.push(RenewOutcome::Renewed { ttl });
                }
                None => {
                    lost.push((entry.key, entry.lease_id));
                    outcomes.push(RenewOutcome::Lost);
                }
            }
        }
    }
    for (key, lease_id) in lost {
        inner.registry.forget(key, lease_id);
    }
    for (lease, check) in groups.iter().zip(checks) {
        if let LeaseCheck::Alive { keys, .. } = check {
            store.clean_up_orphans(lease, keys, started);
        }
    }
    store.sweep(started);
    Ok(outcomes)
}
