//! etcd: dlock's EtcdStore against the same two transactions raw through
//! the same client crate, and against etcd's own lock service (the
//! `Lock`/`Unlock` API, on one kept lease).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance_tests::harness::EtcdServer;
use etcd_client::{Client, Compare, CompareOp, LockOptions, PutOptions, Txn, TxnOp};
use lock_core::{LeaseLocker, LockerOptions};
use lock_etcd::{EtcdConfig, EtcdStore};

use crate::Settings;
use crate::measure::{Run, count, median, ms, percentile, throughput};
use crate::ours;
use crate::report::Row;

const BACKEND: &str = "etcd";

pub(crate) async fn run(
    settings: &Settings,
    rows: &mut Vec<Row>,
    versions: &mut Vec<String>,
) -> Result<(), String> {
    let server = EtcdServer::start().await.map_err(|e| e.to_string())?;
    let endpoints = server.endpoints();
    let store = EtcdStore::connect_with(EtcdConfig::new(endpoints.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let client = Client::connect(endpoints, None)
        .await
        .map_err(|e| e.to_string())?;
    let status = client
        .maintenance_client()
        .status()
        .await
        .map_err(|e| e.to_string())?;
    versions.push(format!("etcd {}", status.version()));
    let lease = client
        .lease_client()
        .grant(600, None)
        .await
        .map_err(|e| e.to_string())?
        .id();
    let locker =
        LeaseLocker::new(store.clone(), LockerOptions::default()).map_err(|e| e.to_string())?;

    for tasks in [1usize, 16] {
        let ops = settings.ops(if tasks == 1 { 600 } else { 2400 });
        let (mut ours_rates, mut store_rates, mut raw_rates, mut peer_rates) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for rep in 0..settings.reps {
            ours_rates.push(
                ours::pairs(&locker, tasks, ops, &format!("etcd{tasks}-{rep}"))
                    .await
                    .per_second,
            );
            store_rates.push(ours::store_pairs(&store, tasks, ops).await.per_second);
            raw_rates.push(raw_pairs(&client, lease, tasks, ops).await.per_second);
            peer_rates.push(api_pairs(&client, lease, tasks, ops).await.per_second);
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
            note: "raw: put-if-absent txn + delete-if-value txn; peer: etcd Lock + Unlock API"
                .into(),
        });
    }

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
            "one keep-alive and one LeaseTimeToLive per call, whatever N; one round renewing all: {:.1} ms",
            ms(renewal.round)
        ),
    });

    let lockers = |n: usize| -> Vec<LeaseLocker<EtcdStore>> {
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
    let mut peer_handoff = api_handoff(&client, lease, 8, settings.rounds(25)).await;
    rows.push(Row {
        backend: BACKEND,
        scenario: "3. Handoff among 8 waiters",
        metric: "release to next acquire, p50 ms".into(),
        higher_is_better: false,
        ours: ms(percentile(&mut ours_handoff, 50)),
        raw: None,
        peer: Some(ms(percentile(&mut peer_handoff, 50))),
        note: format!(
            "p99: dlock {:.2} ms, etcd Lock API {:.2} ms (woken by the server's watch); target p50 < 5 ms",
            ms(percentile(&mut ours_handoff, 99)),
            ms(percentile(&mut peer_handoff, 99))
        ),
    });

    let length = settings.length();
    let ours_grants = ours::contended(lockers(16), length).await;
    let peer_grants = api_contended(&client, lease, 16, length).await;
    rows.push(Row {
        backend: BACKEND,
        scenario: "4. Contended throughput",
        metric: "grants/s, 16 tasks on one key".into(),
        higher_is_better: true,
        ours: ours_grants,
        raw: None,
        peer: Some(peer_grants),
        note: "peer: etcd Lock + Unlock API (a server-side queue)".into(),
    });
    let _ = client.lease_client().revoke(lease).await;
    Ok(())
}

async fn raw_pairs(client: &Client, lease: i64, tasks: usize, ops: usize) -> Run {
    let client = client.clone();
    throughput(tasks, ops, move |task| {
        let mut kv = client.kv_client();
        async move {
            let key = format!("bench/raw/{task}");
            let acquire = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    "raw",
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            kv.txn(acquire).await.expect("raw acquire");
            let release = Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, "raw")])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            kv.txn(release).await.expect("raw release");
        }
    })
    .await
}

async fn api_pairs(client: &Client, lease: i64, tasks: usize, ops: usize) -> Run {
    let client = client.clone();
    throughput(tasks, ops, move |task| {
        let mut locks = client.lock_client();
        async move {
            let name = format!("bench/api/{task}");
            let held = locks
                .lock(name.as_str(), Some(LockOptions::new().with_lease(lease)))
                .await
                .expect("etcd lock");
            locks.unlock(held.key()).await.expect("etcd unlock");
        }
    })
    .await
}

async fn api_handoff(client: &Client, lease: i64, waiters: usize, rounds: usize) -> Vec<Duration> {
    let last_release: Arc<Mutex<Option<Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let tasks: Vec<_> = (0..waiters)
        .map(|_| {
            let (mut locks, last_release, samples) =
                (client.lock_client(), last_release.clone(), samples.clone());
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let held = locks
                        .lock(
                            "bench/api-handoff",
                            Some(LockOptions::new().with_lease(lease)),
                        )
                        .await
                        .expect("etcd lock");
                    let acquired = Instant::now();
                    if let Some(released) = last_release.lock().expect("lock").take() {
                        samples
                            .lock()
                            .expect("lock")
                            .push(acquired.duration_since(released));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    *last_release.lock().expect("lock") = Some(Instant::now());
                    locks.unlock(held.key()).await.expect("etcd unlock");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("handoff task");
    }
    samples.lock().expect("lock").clone()
}

async fn api_contended(client: &Client, lease: i64, tasks: usize, length: Duration) -> f64 {
    let grants = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + length;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (mut locks, grants) = (client.lock_client(), grants.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    let held = locks
                        .lock(
                            "bench/api-contended",
                            Some(LockOptions::new().with_lease(lease)),
                        )
                        .await
                        .expect("etcd lock");
                    grants.fetch_add(1, Ordering::Relaxed);
                    locks.unlock(held.key()).await.expect("etcd unlock");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("contended task");
    }
    count(grants.load(Ordering::Relaxed)) / start.elapsed().as_secs_f64()
}
