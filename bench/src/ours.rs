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

/// Scenario 2: hold `n` locks through a counting store and watch renewals.
pub(crate) async fn renewal<S: LeaseStore + Clone>(store: S, n: usize) -> Renewal {
    let counting = Arc::new(FaultyStore::new(store.clone()));
    let heartbeat = Duration::from_secs(1);
    let options = LockerOptions::builder()
        .lease(Duration::from_secs(30))
        .heartbeat(heartbeat)
        .store_timeout(Duration::from_millis(500))
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
