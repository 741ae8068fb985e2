//! PostgresStore performance, measured side by side in one run against a
//! fresh database on the machine's PostgreSQL (or one the harness starts):
//!
//! 1. uncontended acquire+release through `LeaseLocker`, against the same
//!    two round trips as raw statements through the same pool, 1 and 16
//!    tasks;
//! 2. renewing 10,000 held locks: statements per heartbeat and wall time;
//! 3. handoff from `unlock` to a waiting `lock()` acquiring.
//!
//! `cargo run --release -p lock-postgres --example perf`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conformance_tests::harness::PostgresServer;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, LeaseLocker,
    LeaseStore, Locker, LockerOptions, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
};
use lock_postgres::PostgresStore;

const ROUNDS: usize = 5;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = PostgresServer::start().await?;
    let store = PostgresStore::builder()
        .max_connections(16)
        .connect(server.url())
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS raw_locks (key text PRIMARY KEY, owner text, expires_at timestamptz)")
        .execute(store.pool())
        .await?;
    let locker = LeaseLocker::new(store.clone(), LockerOptions::default())?;

    for tasks in [1usize, 16] {
        let ops = if tasks == 1 { 1000 } else { 4000 };
        let (mut ours, mut calls, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let locker = locker.clone();
            ours.push(
                ops_per_sec(ops, tasks, move |i| {
                    let locker = locker.clone();
                    async move {
                        let guard = locker.try_lock(&format!("perf-{round}-{i}")).await.unwrap();
                        guard.unlock().await.unwrap();
                    }
                })
                .await,
            );
            let direct = store.clone();
            calls.push(
                ops_per_sec(ops, tasks, move |i| {
                    let store = direct.clone();
                    async move {
                        let key = format!("calls-{round}-{i}");
                        let lease = LeaseId::random();
                        let request =
                            AcquireRequest::new(&key, "o", lease, Duration::from_secs(60));
                        store.acquire(request).await.unwrap();
                        store.release(&key, lease, Fencing::Enabled).await.unwrap();
                    }
                })
                .await,
            );
            let pool = store.pool().clone();
            raw.push(ops_per_sec(ops, tasks, move |i| {
                let pool = pool.clone();
                async move {
                    let key = format!("raw-{round}-{i}");
                    sqlx::query("INSERT INTO raw_locks VALUES ($1, 'o', clock_timestamp() + interval '60 seconds') ON CONFLICT (key) DO NOTHING")
                        .bind(&key).execute(&pool).await.unwrap();
                    sqlx::query("DELETE FROM raw_locks WHERE key = $1 AND owner = 'o'")
                        .bind(&key).execute(&pool).await.unwrap();
                }
            }).await);
        }
        let (ours, calls, raw) = (median(&mut ours), median(&mut calls), median(&mut raw));
        println!(
            "acquire+release, {tasks:>2} task(s): dlock {ours:>8.0}/s, store calls {calls:>8.0}/s, raw statements {raw:>8.0}/s, ratio {:.2}",
            ours / raw
        );
    }

    // Renewal of 10,000 held locks.
    let counting = Arc::new(Counting {
        inner: store.clone(),
        renew_calls: AtomicUsize::new(0),
    });
    let options = LockerOptions::builder()
        .lease(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(2))
        .build()?;
    let holder = LeaseLocker::from_arc(counting.clone(), options)?;
    let mut guards = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        guards.push(holder.try_lock(&format!("held-{i}")).await?);
    }
    let before = counting.renew_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let per_heartbeat = f64::from(u32::try_from(
        counting.renew_calls.load(Ordering::SeqCst) - before,
    )?) / 2.0;
    let entries: Vec<(String, LeaseId)> = guards
        .iter()
        .map(|g| (g.key().to_owned(), g.lease_id()))
        .collect();
    let batch_limit = store.capabilities().max_batch;
    let start = Instant::now();
    for chunk in entries.chunks(batch_limit) {
        let batch: Vec<RenewEntry<'_>> = chunk
            .iter()
            .map(|(key, lease_id)| RenewEntry {
                key,
                lease_id: *lease_id,
            })
            .collect();
        store.renew(&batch, Duration::from_secs(30)).await?;
    }
    println!(
        "renewing 10,000 locks: {per_heartbeat} statement(s) per heartbeat (batch limit {batch_limit}, ceil = {}), one round {:.1?}",
        10_000usize.div_ceil(batch_limit),
        start.elapsed()
    );
    drop(guards);
    holder.close().await?;

    // Handoff latency.
    let a = LeaseLocker::new(store.clone(), LockerOptions::builder().owner("a").build()?)?;
    let b = LeaseLocker::new(store.clone(), LockerOptions::builder().owner("b").build()?)?;
    let mut handoffs = Vec::new();
    for i in 0..60 {
        let id = format!("handoff-{i}");
        let held = a.try_lock(&id).await?;
        let waiter = tokio::spawn({
            let (b, id) = (b.clone(), id.clone());
            async move {
                let guard = b.lock(&id, Duration::from_secs(10)).await.unwrap();
                let at = Instant::now();
                guard.unlock().await.unwrap();
                at
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let released = Instant::now();
        held.unlock().await?;
        let acquired = waiter.await?;
        handoffs.push(acquired.duration_since(released));
    }
    handoffs.sort();
    println!(
        "handoff unlock -> waiting lock(): p50 {:.2?}, p99 {:.2?}",
        handoffs[handoffs.len() / 2],
        handoffs[handoffs.len() * 99 / 100]
    );
    Ok(())
}

async fn ops_per_sec<F, Fut>(ops: usize, tasks: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let per_task = ops / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    op(t * per_task + i).await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    f64::from(u32::try_from(per_task * tasks).unwrap_or(u32::MAX)) / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Counts renew calls.
struct Counting {
    inner: PostgresStore,
    renew_calls: AtomicUsize,
}

#[async_trait]
impl LeaseStore for Counting {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        self.inner.acquire(request).await
    }
    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        self.renew_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(leases, ttl).await
    }
    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        self.inner.release(key, lease_id, fencing).await
    }
    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        self.inner.inspect(key).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn wait_for_change(&self, key: &str, max: Duration) {
        self.inner.wait_for_change(key, max).await;
    }
}
