//! A store wrapper that injects faults and counts calls, switchable at run
//! time: for tests of how lockers behave when their store misbehaves, and
//! for benchmarks that count round trips.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use lock_core::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, LeaseStore,
    ReleaseOutcome, RenewEntry, RenewOutcome, StoreError, WaitOutcome,
};

/// Wraps a store. Every switch starts off; flip them from any task.
#[derive(Debug, Default)]
pub struct FaultyStore<S> {
    inner: S,
    /// Acquire, renew and release fail with an "unavailable" error without
    /// reaching the store, as for a client cut off from its server.
    /// `inspect` still works, so tests can look behind the cut.
    pub cut: AtomicBool,
    /// Only renewals fail.
    pub fail_renewals: AtomicBool,
    /// `wait_for_grant` never hears anything (every notification is lost),
    /// while `capabilities()` still claims native waits.
    pub deaf: AtomicBool,
    /// Acquire calls made (including refused ones).
    pub acquire_calls: AtomicUsize,
    /// Renew calls made.
    pub renew_calls: AtomicUsize,
    /// Leases carried by renew calls that reached the store.
    pub renewed_entries: AtomicUsize,
    /// Release calls made.
    pub release_calls: AtomicUsize,
    /// The number of entries of every renew call that reached the store,
    /// in order.
    renew_sizes: Mutex<Vec<usize>>,
}

impl<S> FaultyStore<S> {
    /// Wraps `inner` with every fault off.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            cut: AtomicBool::new(false),
            fail_renewals: AtomicBool::new(false),
            deaf: AtomicBool::new(false),
            acquire_calls: AtomicUsize::new(0),
            renew_calls: AtomicUsize::new(0),
            renewed_entries: AtomicUsize::new(0),
            release_calls: AtomicUsize::new(0),
            renew_sizes: Mutex::new(Vec::new()),
        }
    }

    /// The number of entries of every renew call that reached the store.
    pub fn renew_sizes(&self) -> Vec<usize> {
        self.renew_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Turns the cut on or off.
    pub fn set_cut(&self, on: bool) {
        self.cut.store(on, Ordering::SeqCst);
    }

    /// Renew calls so far.
    pub fn renew_calls(&self) -> usize {
        self.renew_calls.load(Ordering::SeqCst)
    }

    fn check(&self, switch: &AtomicBool) -> Result<(), StoreError> {
        if self.cut.load(Ordering::SeqCst) || switch.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("fault injected by the test"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for FaultyStore<S> {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        self.acquire_calls.fetch_add(1, Ordering::SeqCst);
        self.check(&self.cut)?;
        self.inner.acquire(request).await
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        self.renew_calls.fetch_add(1, Ordering::SeqCst);
        self.check(&self.fail_renewals)?;
        self.renewed_entries
            .fetch_add(leases.len(), Ordering::SeqCst);
        self.renew_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(leases.len());
        self.inner.renew(leases, ttl).await
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        self.release_calls.fetch_add(1, Ordering::SeqCst);
        self.check(&self.cut)?;
        self.inner.release(key, lease_id, fencing).await
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        self.inner.inspect(key).await
    }

    fn capabilities(&self) -> Capabilities {
        let capabilities = self.inner.capabilities();
        if self.deaf.load(Ordering::SeqCst) {
            capabilities.with_native_wait(true)
        } else {
            capabilities
        }
    }

    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        if self.deaf.load(Ordering::SeqCst) {
            tokio::time::sleep(max).await;
            WaitOutcome::TimedOut
        } else {
            self.inner.wait_for_grant(key, lease_id, max).await
        }
    }
}
