//! Redis: dlock's RedisStore against `SET NX PX` + `DEL` through the same
//! client crate, against the `rslock` crate (Redlock on one server), and,
//! for semaphores and reader-writer locks, against the
//! `distributed-lock-redis` crate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conformance_tests::harness::RedisServer;
use lock_redis::RedisStore;
use redis::aio::ConnectionManager;

mod cpu;
mod instructions;

use crate::Settings;
use crate::driver::{self, Baselines, PairBaselines};
use crate::measure::{Run, count, throughput};
use crate::ours;
use crate::report::Row;

const BACKEND: &str = "redis";
const TTL: Duration = Duration::from_secs(30);

pub(crate) async fn run(
    settings: &Settings,
    rows: &mut Vec<Row>,
    versions: &mut Vec<String>,
) -> Result<(), String> {
    let server = RedisServer::start().await.map_err(|e| e.to_string())?;
    let url = server.url().to_owned();
    let store = RedisStore::connect(&url).await.map_err(|e| e.to_string())?;
    let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
    let mut raw = client
        .get_connection_manager()
        .await
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    versions.push(format!("Redis {version}"));
    let baselines = Redis {
        raw: raw.clone(),
        peer: Arc::new(rslock::LockManager::new(vec![url.clone()])),
    };
    driver::pairs(BACKEND, &store, &baselines, settings, [2000, 8000], rows).await;

    // Where the time goes: server CPU per pair, from Redis's own counters.
    let (rounds, pairs) = if settings.quick { (4, 500) } else { (6, 2000) };
    rows.push(cpu::server_cpu(&store, &mut raw, rounds, pairs).await?);
    // The same as instructions, which do not move with the machine.
    if let Some(row) = instructions::server_instructions().await? {
        rows.push(row);
    }
    let kind_peer = DistributedLockRedis {
        provider: Arc::new(
            distributed_lock_redis::RedisLockProvider::new(url.clone())
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    driver::the_rest(
        BACKEND,
        &store,
        &baselines,
        Some(&kind_peer),
        settings,
        rows,
    )
    .await;
    Ok(())
}

/// Plain commands through one multiplexed connection, and rslock.
struct Redis {
    raw: ConnectionManager,
    peer: Arc<rslock::LockManager>,
}

#[async_trait]
impl PairBaselines for Redis {
    fn pairs_note(&self) -> &'static str {
        "raw: SET NX PX + DEL; peer: rslock lock + unlock"
    }

    async fn raw_pairs(&self, tasks: usize, ops: usize) -> Run {
        raw_pairs(&self.raw, tasks, ops).await
    }

    async fn peer_pairs(&self, tasks: usize, ops: usize) -> Option<Run> {
        Some(peer_pairs(&self.peer, tasks, ops).await)
    }
}

#[async_trait]
impl Baselines for Redis {
    fn peer_note(&self) -> &'static str {
        "rslock lock + unlock, retrying (rslock waits by polling)"
    }

    fn handoff_target(&self) -> &'static str {
        "p50 < 2 ms"
    }

    async fn peer_handoff(&self, waiters: usize, rounds: usize) -> Vec<Duration> {
        peer_handoff(&self.peer, waiters, rounds).await
    }

    async fn peer_contended(&self, tasks: usize, length: Duration) -> f64 {
        peer_contended(&self.peer, tasks, length).await
    }
}

async fn raw_pairs(raw: &ConnectionManager, tasks: usize, ops: usize) -> Run {
    let raw = raw.clone();
    throughput(tasks, ops, move |task| {
        let mut raw = raw.clone();
        async move {
            let key = format!("bench-raw-{task}");
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg("owner")
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut raw)
                .await
                .expect("SET");
            assert!(set.is_some());
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut raw)
                .await
                .expect("DEL");
        }
    })
    .await
}

async fn peer_pairs(peer: &Arc<rslock::LockManager>, tasks: usize, ops: usize) -> Run {
    let peer = peer.clone();
    throughput(tasks, ops, move |task| {
        let peer = peer.clone();
        async move {
            let key = format!("bench-rslock-{task}");
            let lock = peer.lock(key.as_bytes(), TTL).await.expect("rslock lock");
            peer.unlock(&lock).await;
        }
    })
    .await
}

/// Takes `key` with rslock, retrying (rslock waits by polling).
async fn peer_take(peer: &rslock::LockManager, key: &[u8]) -> rslock::Lock {
    loop {
        if let Ok(lock) = peer.lock(key, TTL).await {
            return lock;
        }
    }
}

async fn peer_handoff(
    peer: &Arc<rslock::LockManager>,
    waiters: usize,
    rounds: usize,
) -> Vec<Duration> {
    let last_release: Arc<Mutex<Option<Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let tasks: Vec<_> = (0..waiters)
        .map(|_| {
            let (peer, last_release, samples) =
                (peer.clone(), last_release.clone(), samples.clone());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let lock = peer_take(&peer, b"bench-rslock-handoff").await;
                    let acquired = Instant::now();
                    if let Some(released) = last_release.lock().expect("lock").take() {
                        samples
                            .lock()
                            .expect("lock")
                            .push(acquired.duration_since(released));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    *last_release.lock().expect("lock") = Some(Instant::now());
                    peer.unlock(&lock).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("handoff task");
    }
    samples.lock().expect("lock").clone()
}

async fn peer_contended(peer: &Arc<rslock::LockManager>, tasks: usize, length: Duration) -> f64 {
    let grants = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + length;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (peer, grants) = (peer.clone(), grants.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    if let Ok(lock) = peer.lock(b"bench-rslock-contended", TTL).await {
                        grants.fetch_add(1, Ordering::Relaxed);
                        peer.unlock(&lock).await;
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("contended task");
    }
    count(grants.load(Ordering::Relaxed)) / start.elapsed().as_secs_f64()
}

/// distributed-lock-redis: a semaphore on a sorted set and a reader-writer
/// lock, both waiting by polling with backoff.
struct DistributedLockRedis {
    provider: Arc<distributed_lock_redis::RedisLockProvider>,
}

#[async_trait]
impl driver::KindPeer for DistributedLockRedis {
    fn note(&self) -> &'static str {
        "distributed-lock-redis 0.2 (polls with backoff, 10 to 200 ms; no fencing, no queue)"
    }

    async fn semaphore(&self, tasks: usize, permits: u32, length: Duration) -> f64 {
        use distributed_lock_core::traits::{DistributedSemaphore, LockHandle, SemaphoreProvider};
        let name = format!("bench-dlr-semaphore-{}", lock_core::LeaseId::random());
        let grants = Arc::new(AtomicUsize::new(0));
        let stop = Instant::now() + length;
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (provider, grants, name) =
                    (self.provider.clone(), grants.clone(), name.clone());
                tokio::spawn(async move {
                    let semaphore = provider.create_semaphore(&name, permits);
                    while Instant::now() < stop {
                        let wait = stop.saturating_duration_since(Instant::now());
                        if let Ok(ticket) = semaphore.acquire(Some(wait)).await {
                            grants.fetch_add(1, Ordering::Relaxed);
                            ticket.release().await.expect("peer semaphore release");
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("peer semaphore task");
        }
        count(grants.load(Ordering::Relaxed)) / start.elapsed().as_secs_f64()
    }

    async fn reader_heavy(
        &self,
        readers: usize,
        hold: Duration,
        length: Duration,
    ) -> ours::ReaderHeavy {
        use distributed_lock_core::traits::{
            DistributedReaderWriterLock, LockHandle, ReaderWriterLockProvider,
        };
        let name = format!("bench-dlr-rw-{}", lock_core::LeaseId::random());
        let (reads, writes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = Instant::now() + length;
        let start = Instant::now();
        let spawn = |write: bool| {
            let (provider, name) = (self.provider.clone(), name.clone());
            let grants = if write { &writes } else { &reads }.clone();
            tokio::spawn(async move {
                let lock = provider.create_reader_writer_lock(&name);
                let mut longest = Duration::ZERO;
                // A wait may last to the end of the run: the peer is not
                // fair, and a side can starve.
                while Instant::now() < stop {
                    let asked = Instant::now();
                    let wait = Some(stop.saturating_duration_since(asked));
                    if write {
                        let handle = lock.acquire_write(wait).await;
                        longest = longest.max(asked.elapsed());
                        if let Ok(handle) = handle {
                            grants.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(hold).await;
                            handle.release().await.expect("peer write release");
                        }
                    } else {
                        let handle = lock.acquire_read(wait).await;
                        longest = longest.max(asked.elapsed());
                        if let Ok(handle) = handle {
                            grants.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(hold).await;
                            handle.release().await.expect("peer read release");
                        }
                    }
                }
                longest
            })
        };
        let writer = spawn(true);
        let handles: Vec<_> = (0..readers).map(|_| spawn(false)).collect();
        for handle in handles {
            handle.await.expect("peer reader");
        }
        let longest_write_wait = writer.await.expect("peer writer");
        let elapsed = start.elapsed().as_secs_f64();
        ours::ReaderHeavy {
            reads_per_second: count(reads.load(Ordering::Relaxed)) / elapsed,
            writes_per_second: count(writes.load(Ordering::Relaxed)) / elapsed,
            longest_write_wait,
        }
    }
}
