//! etcd: dlock's EtcdStore against the same two transactions raw through
//! the same client crate, and against etcd's own lock service (the
//! `Lock`/`Unlock` API, each task on a kept lease of its own: tasks sharing
//! a lease would share the lock's key and never exclude each other).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conformance_tests::harness::EtcdServer;
use etcd_client::{Client, Compare, CompareOp, LockOptions, PutOptions, Txn, TxnOp};
use lock_etcd::{EtcdConfig, EtcdStore};

use crate::Settings;
use crate::driver::{self, Baselines, PairBaselines};
use crate::measure::{Run, count, throughput};
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
    let mut leases = Vec::with_capacity(MAX_TASKS);
    for _ in 0..MAX_TASKS {
        let lease = client
            .lease_client()
            .grant(600, None)
            .await
            .map_err(|e| e.to_string())?;
        leases.push(lease.id());
    }
    let baselines = Etcd {
        client: client.clone(),
        leases: leases.clone(),
    };
    driver::pairs(BACKEND, &store, &baselines, settings, [600, 2400], rows).await;
    driver::the_rest(BACKEND, &store, &baselines, None, settings, rows).await;
    for lease in leases {
        let _ = client.lease_client().revoke(lease).await;
    }
    Ok(())
}

/// The most tasks a scenario runs (each needs a lease of its own).
const MAX_TASKS: usize = 16;

/// Raw transactions and etcd's lock service, a kept lease per task.
struct Etcd {
    client: Client,
    leases: Vec<i64>,
}

impl Etcd {
    /// The leases of `tasks` tasks, one each.
    fn leases(&self, tasks: usize) -> Arc<[i64]> {
        assert!(tasks <= self.leases.len(), "more tasks than leases");
        self.leases[..tasks].into()
    }
}

#[async_trait]
impl PairBaselines for Etcd {
    fn pairs_note(&self) -> &'static str {
        "raw: put-if-absent txn + delete-if-value txn; peer: etcd Lock + Unlock API"
    }

    async fn raw_pairs(&self, tasks: usize, ops: usize) -> Run {
        raw_pairs(&self.client, self.leases(tasks), tasks, ops).await
    }

    async fn peer_pairs(&self, tasks: usize, ops: usize) -> Option<Run> {
        Some(api_pairs(&self.client, self.leases(tasks), tasks, ops).await)
    }
}

#[async_trait]
impl Baselines for Etcd {
    fn peer_note(&self) -> &'static str {
        "etcd Lock + Unlock API, a server-side queue woken by watches"
    }

    fn handoff_target(&self) -> &'static str {
        "p50 < 5 ms"
    }

    async fn peer_handoff(&self, waiters: usize, rounds: usize) -> Vec<Duration> {
        api_handoff(&self.client, self.leases(waiters), rounds).await
    }

    async fn peer_contended(&self, tasks: usize, length: Duration) -> f64 {
        api_contended(&self.client, self.leases(tasks), length).await
    }
}

async fn raw_pairs(client: &Client, leases: Arc<[i64]>, tasks: usize, ops: usize) -> Run {
    let client = client.clone();
    throughput(tasks, ops, move |task| {
        let mut kv = client.kv_client();
        let lease = leases[task];
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

async fn api_pairs(client: &Client, leases: Arc<[i64]>, tasks: usize, ops: usize) -> Run {
    let client = client.clone();
    throughput(tasks, ops, move |task| {
        let mut locks = client.lock_client();
        let lease = leases[task];
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

async fn api_handoff(client: &Client, leases: Arc<[i64]>, rounds: usize) -> Vec<Duration> {
    let last_release: Arc<Mutex<Option<Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let tasks: Vec<_> = leases
        .iter()
        .map(|&lease| {
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

async fn api_contended(client: &Client, leases: Arc<[i64]>, length: Duration) -> f64 {
    let grants = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + length;
    let start = Instant::now();
    let handles: Vec<_> = leases
        .iter()
        .map(|&lease| {
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
