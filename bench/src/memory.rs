//! Scenario 5 (core overhead on MemoryStore) and the client memory each
//! held lock costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, LeaseId, LeaseInfo,
    LeaseLocker, LeaseStore, Locker, LockerOptions, MemoryStore, ReleaseOutcome, RenewEntry,
    RenewOutcome, StoreError,
};

use crate::measure::{count, median};
use crate::report::Row;

/// Acquire+unlock pairs per second on MemoryStore, one task.
pub(crate) async fn core_overhead(pairs: usize, reps: usize) -> Row {
    let locker = LeaseLocker::new(MemoryStore::new(), LockerOptions::default()).expect("locker");
    let ids: Vec<String> = (0..1024).map(|i| format!("job-{i}")).collect();
    for id in &ids {
        locker
            .try_lock(id)
            .await
            .expect("warm")
            .unlock()
            .await
            .expect("warm");
    }
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        for i in 0..pairs {
            let guard = locker.try_lock(&ids[i % ids.len()]).await.expect("acquire");
            guard.unlock().await.expect("unlock");
        }
        rates.push(count(pairs) / start.elapsed().as_secs_f64());
    }
    Row {
        backend: "memory",
        scenario: "5. Core overhead (no I/O)",
        metric: "acquire+unlock pairs/s, 1 task".into(),
        higher_is_better: true,
        ours: median(&mut rates),
        raw: None,
        peer: None,
        note: "target: at least 200,000 pairs/s".into(),
    }
}

/// A store that grants and renews everything and keeps nothing: what a
/// held lock costs on the client alone.
#[derive(Default)]
struct NullStore {
    tokens: AtomicU64,
}

#[async_trait]
impl LeaseStore for NullStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(AcquireOutcome::Acquired(
            Grant::new(request.ttl).with_token(FencingToken::from(token)),
        ))
    }
    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        Ok(vec![RenewOutcome::Renewed { ttl }; leases.len()])
    }
    async fn release(
        &self,
        _key: &str,
        _lease_id: LeaseId,
        _fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        Ok(ReleaseOutcome::Released)
    }
    async fn inspect(&self, _key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        Ok(None)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }
}

/// The resident memory of this process, in bytes.
fn resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u32 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(f64::from(kib) * 1024.0)
}

/// Client memory per held lock: resident memory grown by holding `n`
/// locks (keys of 16 bytes) on a store that keeps nothing, divided by `n`.
pub(crate) async fn memory_per_lock(n: usize) -> Row {
    let locker = LeaseLocker::new(NullStore::default(), LockerOptions::default()).expect("locker");
    let keys: Vec<String> = (0..n).map(|i| format!("k-{i:014}")).collect();
    let before = resident_bytes();
    let mut guards = Vec::with_capacity(n);
    for key in &keys {
        guards.push(locker.try_lock(key).await.expect("acquire"));
    }
    // Let the background task register them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = resident_bytes();
    let per_lock = match (before, after) {
        (Some(before), Some(after)) => (after - before) / count(n),
        _ => f64::NAN,
    };
    drop(guards);
    let _ = locker.close().await;
    Row {
        backend: "any",
        scenario: "2. Renewal cost with 10,000 held locks",
        metric: format!("client memory per held lock, bytes ({n} locks)"),
        higher_is_better: false,
        ours: per_lock,
        raw: None,
        peer: None,
        note: "resident memory grown / locks, store keeps nothing; target at most 1024".into(),
    }
}
