//! Two lockers contend for one lock on a shared in-memory store.
//!
//! Alice takes the lock and writes with her fencing token. Then her link to
//! the store breaks: renewals fail, she gets a warning, then her lock
//! expires locally before the store's lease runs out. Bob, who was waiting,
//! takes over with a larger token, and the fenced resource refuses Alice's
//! late write.
//!
//! Run with `cargo run -p lock-core --example quickstart`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, LeaseId, LeaseInfo,
    LeaseLocker, LeaseStore, LockError, Locker, LockerOptions, MemoryStore, ReleaseOutcome,
    RenewEntry, RenewOutcome, StoreError, WaitOutcome, async_trait,
};
use tokio::time::Instant;

/// A store whose connection can be cut: then renewals and releases fail.
struct CuttableStore {
    inner: MemoryStore,
    cut: AtomicBool,
}

impl CuttableStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("connection cut (demo)"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl LeaseStore for CuttableStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        self.check()?;
        self.inner.acquire(request).await
    }
    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        self.check()?;
        self.inner.renew(leases, ttl).await
    }
    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        self.check()?;
        self.inner.release(key, lease_id, fencing).await
    }
    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        self.inner.inspect(key).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        self.inner.wait_for_grant(key, lease_id, max).await
    }
}

/// The protected resource: accepts a write only with a token larger than
/// every token it accepted before.
#[derive(Default)]
struct FencedReport {
    last_token: Mutex<Option<FencingToken>>,
    lines: Mutex<Vec<String>>,
}

impl FencedReport {
    fn write(&self, token: &FencingToken, line: &str) -> bool {
        let mut last = self.last_token.lock().unwrap();
        if last.as_ref().is_some_and(|last| token < last) {
            return false;
        }
        *last = Some(token.clone());
        self.lines.lock().unwrap().push(line.to_owned());
        true
    }
}

fn options(owner: &str) -> Result<LockerOptions, LockError> {
    LockerOptions::builder()
        .owner(owner)
        .lease(Duration::from_secs(2))
        .heartbeat(Duration::from_millis(500))
        .warn_after(Duration::from_millis(1200))
        .build()
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let started = Instant::now();
    let at = move || format!("[{:>5.2}s]", started.elapsed().as_secs_f64());
    let shared = MemoryStore::new();
    let alice_store = Arc::new(CuttableStore {
        inner: shared.clone(),
        cut: AtomicBool::new(false),
    });
    let alice = LeaseLocker::from_arc(alice_store.clone(), options("alice")?)?;
    let bob = LeaseLocker::new(shared, options("bob")?)?;
    let report = Arc::new(FencedReport::default());

    let guard = alice.try_lock("nightly-report").await?;
    let alice_token = guard.fencing_token().cloned().expect("fencing is on");
    println!(
        "{} alice holds the lock with fencing token {alice_token}",
        at()
    );
    assert!(report.write(&alice_token, "alice: part 1"));

    match bob.try_lock("nightly-report").await {
        Err(LockError::Taken {
            holder,
            retry_after,
            ..
        }) => println!(
            "{} bob: taken by {} for another {:?}",
            at(),
            holder.unwrap_or_default(),
            retry_after.unwrap_or_default()
        ),
        other => println!("{} bob: unexpected {other:?}", at()),
    }
    let bob_waits = tokio::spawn({
        let bob = bob.clone();
        async move { bob.lock("nightly-report", Duration::from_secs(10)).await }
    });

    println!("{} alice's connection to the store breaks", at());
    alice_store.cut.store(true, Ordering::SeqCst);
    let mut warnings = guard.warnings().expect("warnings are on");
    if let Some(id) = warnings.recv().await {
        println!("{} alice: warning, lock {id:?} is about to expire", at());
    }
    let status = guard.lost().await;
    println!("{} alice: lock {status:?} (expired locally)", at());

    let bob_guard = bob_waits.await.expect("waiter task")?;
    let bob_token = bob_guard.fencing_token().cloned().expect("fencing is on");
    println!("{} bob took over with fencing token {bob_token}", at());
    assert!(report.write(&bob_token, "bob: part 1"));

    // A paused Alice waking up late still tries to write:
    let accepted = report.write(&alice_token, "alice: part 2 (late)");
    println!(
        "{} alice's late write with token {alice_token}: {}",
        at(),
        if accepted {
            "ACCEPTED (bug!)"
        } else {
            "refused by the fenced resource"
        }
    );
    bob_guard.unlock().await?;
    bob.close().await?;
    println!("report: {:?}", report.lines.lock().unwrap());
    Ok(())
}
