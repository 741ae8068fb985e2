//! PostgreSQL: dlock's PostgresStore against the same work as raw
//! statements through the same pool, and against session-bound advisory
//! locks (no lease, no token: reported for context).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conformance_tests::harness::PostgresServer;
use lock_postgres::PostgresStore;
use sqlx::PgPool;

use crate::Settings;
use crate::driver::{self, Baselines, PairBaselines};
use crate::measure::{Run, throughput};
use crate::report::Row;

const BACKEND: &str = "postgres";

pub(crate) async fn run(
    settings: &Settings,
    rows: &mut Vec<Row>,
    versions: &mut Vec<String>,
) -> Result<(), String> {
    let server = PostgresServer::start().await.map_err(|e| e.to_string())?;
    let store = PostgresStore::builder()
        .max_connections(20)
        .connect(server.url())
        .await
        .map_err(|e| e.to_string())?;
    let pool = store.pool().clone();
    let (version,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
    versions.push(format!("PostgreSQL {version}"));
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_raw_locks (key text PRIMARY KEY, owner text NOT NULL, expires_at timestamptz NOT NULL)")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    let baselines = Postgres { pool };
    driver::pairs(BACKEND, &store, &baselines, settings, [600, 3000], rows).await;
    driver::the_rest(BACKEND, &store, &baselines, None, settings, rows).await;
    Ok(())
}

/// Raw statements and advisory locks on the store's own pool.
struct Postgres {
    pool: PgPool,
}

#[async_trait]
impl PairBaselines for Postgres {
    fn pairs_note(&self) -> &'static str {
        "raw: INSERT ON CONFLICT DO NOTHING + DELETE; peer: pg_try_advisory_lock + pg_advisory_unlock"
    }

    async fn raw_pairs(&self, tasks: usize, ops: usize) -> Run {
        raw_pairs(&self.pool, tasks, ops).await
    }

    async fn peer_pairs(&self, tasks: usize, ops: usize) -> Option<Run> {
        Some(advisory_pairs(&self.pool, tasks, ops).await)
    }
}

#[async_trait]
impl Baselines for Postgres {
    fn peer_note(&self) -> &'static str {
        "blocking pg_advisory_lock, woken by the server's lock manager"
    }

    fn handoff_target(&self) -> &'static str {
        "p50 < 5 ms"
    }

    async fn peer_handoff(&self, waiters: usize, rounds: usize) -> Vec<Duration> {
        advisory_handoff(&self.pool, waiters, rounds).await
    }

    async fn peer_contended(&self, tasks: usize, length: Duration) -> f64 {
        advisory_contended(&self.pool, tasks, length).await
    }
}

async fn raw_pairs(pool: &PgPool, tasks: usize, ops: usize) -> Run {
    let pool = pool.clone();
    throughput(tasks, ops, move |task| {
        let (pool, key) = (pool.clone(), format!("raw-{tasks}-{task}"));
        async move {
            sqlx::query("INSERT INTO bench_raw_locks VALUES ($1, 'o', clock_timestamp() + interval '60 seconds') ON CONFLICT (key) DO NOTHING")
                .bind(&key)
                .execute(&pool)
                .await
                .expect("raw insert");
            sqlx::query("DELETE FROM bench_raw_locks WHERE key = $1 AND owner = 'o'")
                .bind(&key)
                .execute(&pool)
                .await
                .expect("raw delete");
        }
    })
    .await
}

async fn advisory_pairs(pool: &PgPool, tasks: usize, ops: usize) -> Run {
    let pool = pool.clone();
    throughput(tasks, ops, move |task| {
        let pool = pool.clone();
        async move {
            // Session-bound: lock and unlock on the same connection.
            let mut connection = pool.acquire().await.expect("connection");
            let key = i64::try_from(task).unwrap_or(0);
            let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut *connection)
                .await
                .expect("advisory lock");
            assert!(locked);
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut *connection)
                .await
                .expect("advisory unlock");
        }
    })
    .await
}

async fn advisory_handoff(pool: &PgPool, waiters: usize, rounds: usize) -> Vec<Duration> {
    let key: i64 = 7_777_001;
    let last_release: Arc<Mutex<Option<Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..waiters {
        let mut connection = pool.acquire().await.expect("connection").detach();
        let (last_release, samples) = (last_release.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(key)
                    .execute(&mut connection)
                    .await
                    .expect("advisory lock");
                let acquired = Instant::now();
                if let Some(released) = last_release.lock().expect("lock").take() {
                    samples
                        .lock()
                        .expect("lock")
                        .push(acquired.duration_since(released));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                *last_release.lock().expect("lock") = Some(Instant::now());
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(&mut connection)
                    .await
                    .expect("advisory unlock");
            }
        }));
    }
    for task in tasks {
        task.await.expect("handoff task");
    }
    samples.lock().expect("lock").clone()
}

async fn advisory_contended(pool: &PgPool, tasks: usize, length: Duration) -> f64 {
    let key: i64 = 7_777_002;
    let grants = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Instant::now() + length;
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let mut connection = pool.acquire().await.expect("connection").detach();
        let grants = grants.clone();
        handles.push(tokio::spawn(async move {
            while Instant::now() < stop {
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(key)
                    .execute(&mut connection)
                    .await
                    .expect("advisory lock");
                grants.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(&mut connection)
                    .await
                    .expect("advisory unlock");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("contended task");
    }
    crate::measure::count(grants.load(std::sync::atomic::Ordering::Relaxed))
        / start.elapsed().as_secs_f64()
}
