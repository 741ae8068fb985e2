//! The in-memory reference store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, Holder, LeaseId,
    LeaseInfo, LeaseStore, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
};

/// A complete [`LeaseStore`] in process memory: the reference every other
/// store is measured against, and a fast store for tests and single-process
/// programs. Clones share the same data.
///
/// Time is tokio's clock, so tests with paused time drive its expiry.
/// Fencing tokens come from a per-key counter kept across release, expiry
/// and takeover (while fencing is enabled). Release wakes waiters at once.
///
/// # Examples
///
/// ```
/// use lock_core::{LeaseLocker, Locker, LockerOptions, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// let locker = LeaseLocker::new(MemoryStore::new(), LockerOptions::default())?;
/// let first = locker.try_lock("job").await?;
/// let first_token = first.fencing_token().cloned();
/// first.unlock().await?;
/// let second = locker.try_lock("job").await?;
/// assert!(second.fencing_token().cloned() > first_token);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: Mutex<HashMap<String, Slot>>,
    capabilities: Capabilities,
}

#[derive(Debug, Default)]
struct Slot {
    lease: Option<Lease>,
    last_token: u64,
    changed: Arc<Notify>,
}

#[derive(Debug)]
struct Lease {
    owner: String,
    lease_id: LeaseId,
    expires_at: Instant,
}

impl Slot {
    fn live_lease(&self, now: Instant) -> Option<&Lease> {
        self.lease.as_ref().filter(|lease| lease.expires_at > now)
    }
}

impl MemoryStore {
    /// An empty store with the default capabilities (native waits, batches
    /// of 1000, 1 ms minimum ttl).
    pub fn new() -> Self {
        Self::with_capabilities(Capabilities::new().with_native_wait(true))
    }

    /// An empty store reporting `capabilities` (for tests of the locker's
    /// batching and validation).
    pub fn with_capabilities(capabilities: Capabilities) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys: Mutex::new(HashMap::new()),
                capabilities,
            }),
        }
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Every update under this lock is complete before it can panic.
        self.inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of keys the store keeps (live, released with fencing
    /// state, or expired).
    pub fn len(&self) -> usize {
        self.keys().len()
    }

    /// Whether the store keeps no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys();
        let slot = keys.entry(request.key.to_owned()).or_default();
        if let Some(lease) = slot.live_lease(now) {
            return Ok(AcquireOutcome::Held(
                Holder::new(lease.owner.clone()).with_remaining(lease.expires_at - now),
            ));
        }
        // A lease still recorded here expired without being released.
        let previous = slot.lease.take().map(|lease| lease.owner);
        slot.lease = Some(Lease {
            owner: request.owner.to_owned(),
            lease_id: request.lease_id,
            expires_at: now + request.ttl,
        });
        let mut grant = Grant::new(request.ttl);
        if request.fencing.is_enabled() {
            slot.last_token += 1;
            grant = grant.with_token(FencingToken::from(slot.last_token));
        }
        if let Some(previous) = previous {
            grant = grant.with_previous_owner(previous);
        }
        Ok(AcquireOutcome::Acquired(grant))
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys();
        Ok(leases
            .iter()
            .map(|entry| {
                let lease = keys
                    .get_mut(entry.key)
                    .and_then(|slot| slot.lease.as_mut())
                    .filter(|lease| lease.lease_id == entry.lease_id && lease.expires_at > now);
                match lease {
                    Some(lease) => {
                        lease.expires_at = now + ttl;
                        RenewOutcome::Renewed { ttl }
                    }
                    None => RenewOutcome::Lost,
                }
            })
            .collect())
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys();
        let Some(slot) = keys.get_mut(key) else {
            return Ok(ReleaseOutcome::NotHeld);
        };
        let ours = slot
            .live_lease(now)
            .is_some_and(|lease| lease.lease_id == lease_id);
        if !ours {
            return Ok(ReleaseOutcome::NotHeld);
        }
        slot.lease = None;
        slot.changed.notify_waiters();
        if !fencing.is_enabled() {
            keys.remove(key);
        }
        Ok(ReleaseOutcome::Released)
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let now = Instant::now();
        let keys = self.keys();
        Ok(keys.get(key).map(|slot| {
            let holder = slot.live_lease(now).map(|lease| {
                Holder::new(lease.owner.clone()).with_remaining(lease.expires_at - now)
            });
            let token = (slot.last_token > 0).then(|| FencingToken::from(slot.last_token));
            LeaseInfo::new(holder, token)
        }))
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.clone()
    }

    async fn wait_for_change(&self, key: &str, max: Duration) {
        let (changed, remaining) = {
            let now = Instant::now();
            let keys = self.keys();
            let Some(slot) = keys.get(key) else { return };
            let Some(lease) = slot.live_lease(now) else {
                return;
            };
            (slot.changed.clone(), lease.expires_at - now)
        };
        let notified = changed.notified();
        tokio::pin!(notified);
        // Register before re-checking, so a release in between is not missed.
        notified.as_mut().enable();
        {
            let now = Instant::now();
            let keys = self.keys();
            if keys
                .get(key)
                .and_then(|slot| slot.live_lease(now))
                .is_none()
            {
                return;
            }
        }
        // The lease ends by itself at `remaining` (expiry is not notified).
        let _ = tokio::time::timeout(max.min(remaining), notified).await;
    }
}
