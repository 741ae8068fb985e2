//! The scenarios as dlock runs them, for any store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance_tests::faulty::FaultyStore;
use lock_core::{
    AcquireRequest, Fencing, LeaseId, LeaseLocker, LeaseStore, Locker, LockerOptions, RenewEntry,
};

use crate::measure::{Run, count, throughput};

/// Scenario 1: `tasks` tasks each taking and releasing distinct keys.
pub(crate) async fn pairs<S: LeaseStore>(
    locker: &LeaseLocker<S>,
    tasks: usize,
    ops: usize,
    tag: &str,
) -> Run {
    let locker = locker.clone();
    let tag = tag.to_owned();
    throughput(tasks, ops, move |task| {
        let (locker, key) = (locker.clone(), format!("bench-pairs-{tag}-{task}"));
        async move {
            let guard = locker.try_lock(&key).await.expect("uncontended acquire");
            guard.unlock().await.expect("release");
        }
    })
    .await
}

/// Scenario 1 without the locker: the store's own acquire and release
/// calls, to tell the locker's cost from the store's.
pub(crate) async fn store_pairs<S: LeaseStore + Clone>(store: &S, tasks: usize, ops: usize) -> Run {
    let store = store.clone();
    throughput(tasks, ops, move |task| {
        let store = store.clone();
        async move {
            let key = format!("bench-store-pairs-{task}");
            let lease = LeaseId::random();
            let request = AcquireRequest::new(&key, "bench", lease, Duration::from_secs(60));
            store.acquire(request).await.expect("acquire");
            store
                .release(&key, lease, Fencing::Enabled)
                .await
                .expect("release");
        }
    })
    .await
}

/// What renewing many locks cost.
pub(crate) struct Renewal {
    /// Store calls per heartbeat, counted over several heartbeats.
    pub(crate) calls_per_heartbeat: f64,
    /// The batch limit, for ceil(N / limit).
    pub(crate) batch_limit: usize,
    /// The wall time of one round renewing all of them (batches in parallel,
    /// as the locker sends them).
    pub(crate) round: Duration,
}

/// Scenario 2: hold `n` locks through a counting store and watch renewals,
/// one every `heartbeat`, each call allowed `store_timeout`.
pub(crate) async fn renewal<S: LeaseStore + Clone>(
    store: S,
    n: usize,
    heartbeat: Duration,
    store_timeout: Duration,
) -> Renewal {
    let counting = Arc::new(FaultyStore::new(store.clone()));
    let options = LockerOptions::builder()
        .lease(Duration::from_secs(30))
        .heartbeat(heartbeat)
        .store_timeout(store_timeout)
        .build()
        .expect("valid options");
    let locker = LeaseLocker::from_arc(counting.clone(), options).expect("locker");
    let mut guards = Vec::with_capacity(n);
    let tag = lock_core::LeaseId::random();
    for i in 0..n {
        let guard = locker
            .try_lock(&format!("bench-held-{tag}-{i}"))
            .await
            .expect("acquire");
        guards.push(guard);
    }
    // Settle on a heartbeat boundary, then count three heartbeats.
    tokio::time::sleep(heartbeat + heartbeat / 2).await;
    let before = counting.renew_calls();
    tokio::time::sleep(heartbeat * 3).await;
    let calls = counting.renew_calls() - before;
    let batch_limit = store.capabilities().max_batch;
    let entries: Vec<(String, LeaseId)> = guards
        .iter()
        .map(|guard| (guard.key().to_owned(), guard.lease_id()))
        .collect();
    // Time our own round between two of the locker's, so that the two do
    // not contend for the same rows: wait for one to start, give it time to
    // finish, then go.
    let seen = counting.renew_calls();
    while counting.renew_calls() == seen {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(heartbeat * 3 / 10).await;
    let start = Instant::now();
    let calls_in_round = entries.chunks(batch_limit).map(|chunk| {
        let store = store.clone();
        async move {
            let batch: Vec<RenewEntry<'_>> = chunk
                .iter()
                .map(|(key, lease_id)| RenewEntry::held(key, *lease_id))
                .collect();
            store
                .renew(&batch, Duration::from_secs(30))
                .await
                .expect("renew");
        }
    });
    futures_util::future::join_all(calls_in_round).await;
    let round = start.elapsed();
    drop(guards);
    let _ = locker.close().await;
    Renewal {
        calls_per_heartbeat: count(calls) / 3.0,
        batch_limit,
        round,
    }
}

/// Scenario 3: `lockers` waiters on one key, each taking and releasing it
/// in turn, `rounds` times each; returns release-to-acquire latencies.
pub(crate) async fn handoff<S: LeaseStore>(
    lockers: Vec<LeaseLocker<S>>,
    rounds: usize,
) -> Vec<Duration> {
    let key = format!("bench-handoff-{}", LeaseId::random());
    let last_release: Arc<Mutex<Option<Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let tasks: Vec<_> = lockers
        .into_iter()
        .map(|locker| {
            let (key, last_release, samples) = (key.clone(), last_release.clone(), samples.clone());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let guard = locker
                        .lock(&key, Duration::from_secs(60))
                        .await
                        .expect("handoff acquire");
                    let acquired = Instant::now();
                    if let Some(released) = last_release.lock().expect("lock").take() {
                        samples
                            .lock()
                            .expect("lock")
                            .push(acquired.duration_since(released));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    *last_release.lock().expect("lock") = Some(Instant::now());
                    guard.unlock().await.expect("handoff release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("handoff task");
    }
    samples.lock().expect("lock").clone()
}

/// Scenario 4: `lockers` tasks taking and releasing one key for `length`;
/// returns grants per second.
pub(crate) async fn contended<S: LeaseStore>(
    lockers: Vec<LeaseLocker<S>>,
    length: Duration,
) -> f64 {
    let key = format!("bench-contended-{}", LeaseId::random());
    let grants = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + length;
    let start = Instant::now();
    let tasks: Vec<_> = lockers
        .into_iter()
        .map(|locker| {
            let (key, grants) = (key.clone(), grants.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    let left = stop.saturating_duration_since(Instant::now());
                    if let Ok(guard) = locker.lock(&key, left).await {
                        grants.fetch_add(1, Ordering::Relaxed);
                        guard.unlock().await.expect("release");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("contended task");
    }
    count(grants.load(Ordering::Relaxed)) / start.elapsed().as_secs_f64()
}

/// What the fairness scenario saw.
pub(crate) struct Fairness {
    pub(crate) grants_per_second: f64,
    /// The longest a single `lock()` call waited.
    pub(crate) longest_wait: Duration,
    /// Jain's index over the tasks' grant counts: 1 when all got as many.
    pub(crate) jain: f64,
    /// Grants to the task that had just released, while others waited.
    pub(crate) straight_back: usize,
    pub(crate) grants: usize,
}

/// Who is in line, and who released last.
#[derive(Default)]
struct Line {
    waiting: Vec<usize>,
    last_releaser: Option<usize>,
}

/// Scenario 5: `tasks` tasks spread over `lockers`, each looping lock /
/// hold `hold` / unlock on one key for `length`.
pub(crate) async fn fairness<S: LeaseStore>(
    lockers: Vec<LeaseLocker<S>>,
    tasks: usize,
    hold: Duration,
    length: Duration,
) -> Fairness {
    let key = format!("bench-fairness-{}", LeaseId::random());
    // A lock() counts as waiting from its call, so the run starts with
    // each store's connections open (as many as tasks, all at once): one
    // that is still connecting when the first holder releases and asks
    // again has not lined up yet, and connecting is not queueing.
    futures_util::future::join_all((0..tasks).map(|task| {
        let locker = &lockers[task % lockers.len()];
        locker.store().inspect(&key)
    }))
    .await;
    let line: Arc<Mutex<Line>> = Arc::default();
    let stop = Instant::now() + length;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let locker = lockers[task % lockers.len()].clone();
            let (key, line) = (key.clone(), line.clone());
            tokio::spawn(async move {
                let (mut grants, mut longest, mut straight_back) = (0usize, Duration::ZERO, 0);
                while Instant::now() < stop {
                    line.lock().expect("line").waiting.push(task);
                    let asked = Instant::now();
                    let guard = locker
                        .lock(&key, Duration::from_secs(60))
                        .await
                        .expect("fair acquire");
                    longest = longest.max(asked.elapsed());
                    grants += 1;
                    {
                        let mut line = line.lock().expect("line");
                        line.waiting.retain(|&waiter| waiter != task);
                        if line.last_releaser == Some(task) && !line.waiting.is_empty() {
                            straight_back += 1;
                        }
                    }
                    tokio::time::sleep(hold).await;
                    line.lock().expect("line").last_releaser = Some(task);
                    guard.unlock().await.expect("fair release");
                }
                (grants, longest, straight_back)
            })
        })
        .collect();
    let mut counts = Vec::with_capacity(tasks);
    let (mut longest_wait, mut straight_back, mut total) = (Duration::ZERO, 0, 0);
    for handle in handles {
        let (grants, longest, back) = handle.await.expect("fairness task");
        counts.push(count(grants));
        total += grants;
        longest_wait = longest_wait.max(longest);
        straight_back += back;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (sum, squares): (f64, f64) = (counts.iter().sum(), counts.iter().map(|c| c * c).sum());
    Fairness {
        grants_per_second: sum / elapsed,
        longest_wait,
        jain: if squares > 0.0 {
            sum * sum / (count(tasks) * squares)
        } else {
            0.0
        },
        straight_back,
        grants: total,
    }
}

/// Scenario 7: `tasks` tasks spread over `lockers`, each looping acquire /
/// release of one permit of a semaphore of `permits` for `length`;
/// returns grants per second.
pub(crate) async fn semaphore<S: LeaseStore>(
    lockers: Vec<LeaseLocker<S>>,
    tasks: usize,
    permits: u32,
    length: Duration,
) -> f64 {
    let id = format!("bench-semaphore-{}", LeaseId::random());
    let grants = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + length;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let locker = lockers[task % lockers.len()].clone();
            let (id, grants) = (id.clone(), grants.clone());
            tokio::spawn(async move {
                let semaphore = lock_core::Semaphore::new(&locker, id, permits);
                while Instant::now() < stop {
                    let permit = semaphore
                        .acquire(Duration::from_secs(60))
                        .await
                        .expect("permit");
                    grants.fetch_add(1, Ordering::Relaxed);
                    permit.unlock().await.expect("permit release");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("semaphore task");
    }
    count(grants.load(Ordering::Relaxed)) / start.elapsed().as_secs_f64()
}

/// What the reader-heavy scenario saw.
pub(crate) struct ReaderHeavy {
    pub(crate) reads_per_second: f64,
    pub(crate) writes_per_second: f64,
    /// The longest the writer waited for one write.
    pub(crate) longest_write_wait: Duration,
}

/// Scenario 8: `readers` reader tasks and one writer on one reader-writer
/// lock, spread over `lockers`, each holding `hold` per grant, for
/// `length`.
pub(crate) async fn reader_heavy<S: LeaseStore>(
    lockers: Vec<LeaseLocker<S>>,
    readers: usize,
    hold: Duration,
    length: Duration,
) -> ReaderHeavy {
    let id = format!("bench-rw-{}", LeaseId::random());
    let (reads, writes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Instant::now() + length;
    let start = Instant::now();
    let spawn = |task: usize, write: bool| {
        let locker = lockers[task % lockers.len()].clone();
        let (id, grants) = (id.clone(), if write { &writes } else { &reads }.clone());
        tokio::spawn(async move {
            let lock = lock_core::RwLock::new(&locker, id);
            let mut longest = Duration::ZERO;
            while Instant::now() < stop {
                let asked = Instant::now();
                let guard = if write {
                    lock.write(Duration::from_secs(60)).await
                } else {
                    lock.read(Duration::from_secs(60)).await
                }
                .expect("reader-writer grant");
                longest = longest.max(asked.elapsed());
                grants.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                guard.unlock().await.expect("reader-writer release");
            }
            longest
        })
    };
    let writer = spawn(0, true);
    let handles: Vec<_> = (1..=readers).map(|task| spawn(task, false)).collect();
    for handle in handles {
        handle.await.expect("reader task");
    }
    let longest_write_wait = writer.await.expect("writer task");
    let elapsed = start.elapsed().as_secs_f64();
    ReaderHeavy {
        reads_per_second: count(reads.load(Ordering::Relaxed)) / elapsed,
        writes_per_second: count(writes.load(Ordering::Relaxed)) / elapsed,
        longest_write_wait,
    }
}
