//! Redis: dlock's RedisStore against `SET NX PX` + `DEL` through the same
//! client crate, and against the `rslock` crate (Redlock on one server).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance_tests::harness::RedisServer;
use lock_core::{LeaseLocker, LockerOptions};
use lock_redis::RedisStore;
use redis::aio::ConnectionManager;

use crate::Settings;
use crate::measure::{Run, count, median, ms, percentile, throughput};
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
    let peer = Arc::new(rslock::LockManager::new(vec![url.clone()]));
    let locker =
        LeaseLocker::new(store.clone(), LockerOptions::default()).map_err(|e| e.to_string())?;

    for tasks in [1usize, 16] {
        let ops = settings.ops(if tasks == 1 { 2000 } else { 8000 });
        let (mut ours_rates, mut raw_rates, mut peer_rates) = (Vec::new(), Vec::new(), Vec::new());
        let mut store_rates = Vec::new();
        let mut latencies = Vec::new();
        for rep in 0..settings.reps {
            let run = ours::pairs(&locker, tasks, ops, &format!("redis{tasks}-{rep}")).await;
            ours_rates.push(run.per_second);
            store_rates.push(ours::store_pairs(&store, tasks, ops).await.per_second);
            latencies.extend(run.latencies);
            raw_rates.push(raw_pairs(&raw, tasks, ops).await.per_second);
            peer_rates.push(peer_pairs(&peer, tasks, ops).await.per_second);
        }
        rows.push(Row {
            backend: BACKEND,
            scenario: "1. Uncontended acquire+release",
            metric: format!("pairs/s through the store alone, no locker, {tasks} task(s)"),
            higher_is_better: true,
            ours: median(&mut store_rates),
            raw: Some(median(&mut raw_rates.clone())),
            peer: None,
            note: "the store's acquire and release calls alone: the locker's share is the difference to the plain pairs/s row".into(),
        });
        rows.push(Row {
            backend: BACKEND,
            scenario: "1. Uncontended acquire+release",
            metric: format!("pairs/s, {tasks} task(s)"),
            higher_is_better: true,
            ours: median(&mut ours_rates),
            raw: Some(median(&mut raw_rates)),
            peer: Some(median(&mut peer_rates)),
            note: "raw: SET NX PX + DEL; peer: rslock lock + unlock".into(),
        });
        rows.push(Row {
            backend: BACKEND,
            scenario: "1. Uncontended acquire+release",
            metric: format!("pair latency p50 ms, {tasks} task(s)"),
            higher_is_better: false,
            ours: ms(percentile(&mut latencies, 50)),
            raw: None,
            peer: None,
            note: format!("p99 {:.2} ms", ms(percentile(&mut latencies, 99))),
        });
    }

    // Where the time goes: server CPU per command, from Redis's own counters.
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    let per_call = |command: &str| -> f64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:")))
            .and_then(|fields| {
                fields
                    .split(',')
                    .find_map(|field| field.strip_prefix("usec_per_call="))
            })
            .and_then(|value| value.parse().ok())
            .unwrap_or(f64::NAN)
    };
    rows.push(Row {
        backend: BACKEND,
        scenario: "1. Uncontended acquire+release",
        metric: "server CPU per acquire+release, µs".into(),
        higher_is_better: false,
        ours: 2.0 * per_call("evalsha"),
        raw: Some(per_call("set") + per_call("del")),
        peer: None,
        note: format!(
            "from INFO commandstats: EVALSHA {:.2} µs a call (acquire or release script; rslock's unlock script counts here too), SET {:.2}, DEL {:.2}",
            per_call("evalsha"),
            per_call("set"),
            per_call("del")
        ),
    });

    let renewal = ours::renewal(store.clone(), settings.held).await;
    rows.push(Row {
        backend: BACKEND,
        scenario: "2. Renewal cost with 10,000 held locks",
        metric: format!("store calls per heartbeat, {} locks", settings.held),
        higher_is_better: false,
        ours: renewal.calls_per_heartbeat,
        raw: None,
        peer: None,
        note: format!(
            "ceil(N / batch limit {}) = {}; one round renewing all: {:.1} ms",
            renewal.batch_limit,
            settings.held.div_ceil(renewal.batch_limit),
            ms(renewal.round)
        ),
    });

    let lockers = |n: usize| -> Vec<LeaseLocker<RedisStore>> {
        (0..n)
            .map(|i| {
                let options = LockerOptions::builder()
                    .owner(format!("bench-{i}"))
                    .build()
                    .expect("options");
                LeaseLocker::new(store.clone(), options).expect("locker")
            })
            .collect()
    };
    let mut ours_handoff = ours::handoff(lockers(8), settings.rounds(25)).await;
    let mut peer_handoff = peer_handoff(&peer, 8, settings.rounds(25)).await;
    rows.push(Row {
        backend: BACKEND,
        scenario: "3. Handoff among 8 waiters",
        metric: "release to next acquire, p50 ms".into(),
        higher_is_better: false,
        ours: ms(percentile(&mut ours_handoff, 50)),
        raw: None,
        peer: Some(ms(percentile(&mut peer_handoff, 50))),
        note: format!(
            "p99: dlock {:.2} ms, rslock {:.2} ms; rslock retries by polling; target p50 < 2 ms",
            ms(percentile(&mut ours_handoff, 99)),
            ms(percentile(&mut peer_handoff, 99))
        ),
    });

    let length = settings.length();
    let ours_grants = ours::contended(lockers(16), length).await;
    let peer_grants = peer_contended(&peer, 16, length).await;
    rows.push(Row {
        backend: BACKEND,
        scenario: "4. Contended throughput",
        metric: "grants/s, 16 tasks on one key".into(),
        higher_is_better: true,
        ours: ours_grants,
        raw: None,
        peer: Some(peer_grants),
        note: "peer: rslock lock + unlock, retrying".into(),
    });
    Ok(())
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
