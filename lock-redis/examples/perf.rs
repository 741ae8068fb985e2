//! Performance figures for `RedisStore` on a throwaway redis-server.
//!
//! ```text
//! cargo run --release --example perf
//! ```
//!
//! 1. Uncontended acquire + release throughput, 1 and 16 tasks, through a
//!    `LeaseLocker` (`try_lock` + `unlock`), side by side with raw
//!    `SET NX PX` + `DEL` through the same client crate and with the
//!    `rslock` crate's `lock` + `unlock`.
//! 2. Renewing 10,000 held locks: renew calls per heartbeat and the wall
//!    time of one round.
//! 3. Handoff: from `unlock()` to a waiting `lock()` holding the lock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use conformance_tests::harness::RedisServer;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, LeaseId, LeaseInfo, LeaseLocker,
    LeaseStore, Locker, LockerOptions, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
};
use lock_redis::RedisStore;
use tokio::time::Instant;

const SLICE: Duration = Duration::from_millis(300);
const SLICES: usize = 15;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let server = RedisServer::start().await?;
    let url = server.url().to_owned();
    println!("redis-server at {url} (no persistence)\n");

    throughput(&url).await?;
    renewals(&url).await?;
    handoff(&url).await?;
    Ok(())
}

/// Runs `tasks` loops of `op` for `SLICE`; returns operations per second.
async fn run<F, Fut>(tasks: usize, op: F) -> Result<f64, BoxError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let stop = start + SLICE;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut count = 0_u64;
            while Instant::now() < stop {
                op(task).await?;
                count += 1;
            }
            Ok::<u64, BoxError>(count)
        }));
    }
    let mut total = 0;
    for handle in handles {
        total += handle.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn throughput(url: &str) -> Result<(), BoxError> {
    let options = LockerOptions::builder()
        .owner("perf")
        .lease(Duration::from_secs(30))
        .build()?;
    let locker = Arc::new(LeaseLocker::new(RedisStore::connect(url).await?, options)?);
    let store = Arc::new(RedisStore::connect(url).await?);
    let raw = redis::Client::open(url)?.get_connection_manager().await?;
    let rslock = Arc::new(rslock::LockManager::new(vec![url.to_owned()]));

    println!(
        "uncontended acquire + release, ops/s (one op = one acquire and one release);\n\
         median of {SLICES} interleaved {SLICE:?} slices per column, ratios are medians of per-slice ratios"
    );
    println!(
        "{:>6} {:>10} {:>11} {:>12} {:>10} {:>12} {:>12} {:>14}",
        "tasks",
        "locker",
        "store only",
        "raw SET+DEL",
        "rslock",
        "locker/raw",
        "store/raw",
        "locker/rslock"
    );
    for tasks in [1, 16] {
        let mut columns: [Vec<f64>; 4] = Default::default();
        for _ in 0..SLICES {
            let l = locker.clone();
            columns[0].push(
                run(tasks, move |task| {
                    let l = l.clone();
                    async move {
                        let guard = l.try_lock(&format!("perf/dlock/{task}")).await?;
                        guard.unlock().await?;
                        Ok(())
                    }
                })
                .await?,
            );
            let st = store.clone();
            columns[1].push(
                run(tasks, move |task| {
                    let st = st.clone();
                    async move {
                        let key = format!("perf/store/{task}");
                        let lease = LeaseId::random();
                        let request =
                            AcquireRequest::new(&key, "perf", lease, Duration::from_secs(30));
                        match st.acquire(request).await? {
                            AcquireOutcome::Acquired(_) => {}
                            AcquireOutcome::Held(holder) => panic!("store key held: {holder:?}"),
                        }
                        st.release(&key, lease, Fencing::Enabled).await?;
                        Ok(())
                    }
                })
                .await?,
            );
            let r = raw.clone();
            columns[2].push(
                run(tasks, move |task| {
                    let mut r = r.clone();
                    async move {
                        let key = format!("perf/raw/{task}");
                        let set: Option<String> = redis::cmd("SET")
                            .arg(&key)
                            .arg("owner")
                            .arg("NX")
                            .arg("PX")
                            .arg(30_000)
                            .query_async(&mut r)
                            .await?;
                        assert!(set.is_some(), "raw key taken");
                        let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut r).await?;
                        Ok(())
                    }
                })
                .await?,
            );
            let m = rslock.clone();
            columns[3].push(
                run(tasks, move |task| {
                    let m = m.clone();
                    async move {
                        let key = format!("perf/rslock/{task}");
                        let lock = m
                            .lock(key.as_bytes(), Duration::from_secs(30))
                            .await
                            .map_err(|e| format!("rslock: {e:?}"))?;
                        m.unlock(&lock).await;
                        Ok(())
                    }
                })
                .await?,
            );
        }
        let ratio = |a: usize, b: usize| {
            median(
                columns[a]
                    .iter()
                    .zip(&columns[b])
                    .map(|(x, y)| x / y)
                    .collect(),
            )
        };
        println!(
            "{tasks:>6} {:>10.0} {:>11.0} {:>12.0} {:>10.0} {:>12.2} {:>12.2} {:>14.2}",
            median(columns[0].clone()),
            median(columns[1].clone()),
            median(columns[2].clone()),
            median(columns[3].clone()),
            ratio(0, 2),
            ratio(1, 2),
            ratio(0, 3),
        );
    }
    locker.close().await?;
    println!();
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A store that records every renewal call.
struct Counting {
    inner: RedisStore,
    calls: Mutex<Vec<(Instant, Instant, usize)>>,
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
        let start = Instant::now();
        let result = self.inner.renew(leases, ttl).await;
        let end = Instant::now();
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((start, end, leases.len()));
        result
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

async fn renewals(url: &str) -> Result<(), BoxError> {
    const LOCKS: usize = 10_000;
    let heartbeat = Duration::from_secs(4);
    let store = Arc::new(Counting {
        inner: RedisStore::connect(url).await?,
        calls: Mutex::new(Vec::new()),
    });
    let options = LockerOptions::builder()
        .owner("perf-renew")
        .lease(Duration::from_secs(12))
        .heartbeat(heartbeat)
        .build()?;
    let locker = Arc::new(LeaseLocker::from_arc(store.clone(), options)?);
    let max_batch = locker.capabilities().max_batch;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..16 {
        let locker = locker.clone();
        tasks.push(tokio::spawn(async move {
            let mut guards = Vec::new();
            for i in (task..LOCKS).step_by(16) {
                guards.push(locker.try_lock(&format!("perf/renew/{i}")).await?);
            }
            Ok::<_, lock_core::LockError>(guards)
        }));
    }
    let mut guards = Vec::with_capacity(LOCKS);
    for task in tasks {
        guards.extend(task.await??);
    }
    let acquired_in = start.elapsed();
    let give_up = Instant::now() + Duration::from_secs(5);
    while locker.held_count() < LOCKS && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(locker.held_count(), LOCKS);
    // Two heartbeats.
    let give_up = Instant::now() + heartbeat * 3;
    loop {
        let renewed: usize = store
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|c| c.2)
            .sum();
        if renewed >= 2 * LOCKS || Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = store
        .calls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    println!(
        "renewing {LOCKS} held locks (acquired in {acquired_in:.2?} by 16 tasks; store batch limit {max_batch})"
    );
    let mut rounds: Vec<Vec<(Instant, Instant, usize)>> = Vec::new();
    for call in calls {
        match rounds.last_mut() {
            Some(round) if call.0 - round[0].0 < heartbeat / 2 => round.push(call),
            _ => rounds.push(vec![call]),
        }
    }
    for (n, round) in rounds.iter().enumerate() {
        let first = round.iter().map(|c| c.0).min().unwrap_or_else(Instant::now);
        let last = round.iter().map(|c| c.1).max().unwrap_or(first);
        let entries: usize = round.iter().map(|c| c.2).sum();
        let slowest = round.iter().map(|c| c.1 - c.0).max().unwrap_or_default();
        println!(
            "  heartbeat {}: {} renew calls for {entries} leases (expected ceil({LOCKS}/{max_batch}) = {}), round wall time {:.2?}, slowest call {slowest:.2?}",
            n + 1,
            round.len(),
            LOCKS.div_ceil(max_batch),
            last - first
        );
    }
    let close = Instant::now();
    drop(guards);
    locker.close().await?;
    println!(
        "  close() releasing {LOCKS} locks: {:.2?}\n",
        close.elapsed()
    );
    Ok(())
}

async fn handoff(url: &str) -> Result<(), BoxError> {
    const SAMPLES: usize = 200;
    let options = |owner: &str| {
        LockerOptions::builder()
            .owner(owner)
            .lease(Duration::from_secs(10))
            .build()
    };
    let holder = LeaseLocker::new(RedisStore::connect(url).await?, options("holder")?)?;
    let waiter = Arc::new(LeaseLocker::new(
        RedisStore::connect(url).await?,
        options("waiter")?,
    )?);
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let id = format!("perf/handoff/{}", i % 8);
        let guard = holder.try_lock(&id).await?;
        let wait = tokio::spawn({
            let (waiter, id) = (waiter.clone(), id.clone());
            async move {
                let guard = waiter.lock(&id, Duration::from_secs(5)).await;
                (guard, Instant::now())
            }
        });
        // Let the waiter settle into waiting (a varying phase of its
        // backoff); this is a benchmark, not a test.
        tokio::time::sleep(Duration::from_millis(5 + (i % 4) as u64 * 7)).await;
        let released = Instant::now();
        guard.unlock().await?;
        let (won, at) = wait.await?;
        won?.unlock().await?;
        samples.push(at - released);
    }
    samples.sort();
    println!(
        "handoff unlock() -> waiting lock() holds it, {SAMPLES} samples: median {:.2?}, p90 {:.2?}, max {:.2?}",
        samples[SAMPLES / 2],
        samples[SAMPLES * 9 / 10],
        samples[SAMPLES - 1]
    );
    holder.close().await?;
    waiter.close().await?;
    Ok(())
}
