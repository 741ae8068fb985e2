//! A store wrapper that injects faults and counts calls, for the locker's
//! tests. Faults are switched at run time by the test.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, LeaseLocker,
    LeaseStore, LockerOptions, LockerOptionsBuilder, MemoryStore, ReleaseOutcome, RenewEntry,
    RenewOutcome, StoreError, WaitOutcome,
};

#[derive(Debug, Default)]
pub struct FaultyStore {
    pub inner: MemoryStore,
    /// Renewals fail with an "unavailable" error, without reaching the store.
    pub fail_renew: AtomicBool,
    /// Releases fail with an "unavailable" error, without reaching the store.
    pub fail_release: AtomicBool,
    /// Renewals reach the store at once; their reply comes this much later.
    pub renew_reply_delay: Mutex<Duration>,
    /// Acquisitions reach the store at once; their reply comes this much later.
    pub acquire_reply_delay: Mutex<Duration>,
    /// Waits hear nothing: every notification is lost.
    pub lose_notifications: AtomicBool,
    pub acquire_calls: AtomicUsize,
    pub renew_calls: AtomicUsize,
    pub renewed_entries: AtomicUsize,
    pub release_calls: AtomicUsize,
}

impl FaultyStore {
    pub fn new(inner: MemoryStore) -> Arc<Self> {
        Arc::new(Self {
            inner,
            ..Self::default()
        })
    }

    pub fn set_renew_reply_delay(&self, delay: Duration) {
        *self.renew_reply_delay.lock().unwrap() = delay;
    }

    pub fn set_acquire_reply_delay(&self, delay: Duration) {
        *self.acquire_reply_delay.lock().unwrap() = delay;
    }

    pub fn renew_calls(&self) -> usize {
        self.renew_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LeaseStore for FaultyStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        self.acquire_calls.fetch_add(1, Ordering::SeqCst);
        let outcome = self.inner.acquire(request).await;
        let delay = *self.acquire_reply_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        outcome
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        self.renew_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_renew.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected renewal failure"));
        }
        self.renewed_entries
            .fetch_add(leases.len(), Ordering::SeqCst);
        let outcome = self.inner.renew(leases, ttl).await;
        let delay = *self.renew_reply_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        outcome
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        self.release_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_release.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected release failure"));
        }
        self.inner.release(key, lease_id, fencing).await
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        self.inner.inspect(key).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        if self.lose_notifications.load(Ordering::SeqCst) {
            tokio::time::sleep(max).await;
            return WaitOutcome::TimedOut;
        }
        self.inner.wait_for_grant(key, lease_id, max).await
    }
}

/// Options with a 3 s lease, 1 s heartbeat, 2 s warning and 500 ms store
/// timeout: short enough for readable paused-time arithmetic. The boot
/// clock (which detects suspend) follows tokio's paused clock: the real one
/// would expire locks of a test that runs slowly on a busy machine.
pub fn short_options(owner: &str) -> LockerOptions {
    paused_boot_clock(LockerOptions::builder())
        .owner(owner)
        .lease(Duration::from_secs(3))
        .heartbeat(Duration::from_secs(1))
        .warn_after(Duration::from_secs(2))
        .store_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// Makes the builder's boot clock follow tokio's clock (paused in tests).
pub fn paused_boot_clock(builder: LockerOptionsBuilder) -> LockerOptionsBuilder {
    let base = tokio::time::Instant::now();
    builder.boot_clock(Arc::new(move || {
        Some(tokio::time::Instant::now().saturating_duration_since(base))
    }))
}

pub fn locker<S: LeaseStore>(store: S, owner: &str) -> LeaseLocker<S> {
    LeaseLocker::new(store, short_options(owner)).unwrap()
}

/// The owner of the live lease on `key`, if any.
pub async fn holder_of(store: &impl LeaseStore, key: &str) -> Option<String> {
    store
        .inspect(key)
        .await
        .unwrap()
        .and_then(|info| info.holder)
        .map(|holder| holder.owner)
}
