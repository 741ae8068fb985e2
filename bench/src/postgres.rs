//! PostgreSQL: dlock's PostgresStore against the same work as raw
//! statements through the same pool, and against session-bound advisory
//! locks (no lease, no token: reported for context).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance_tests::harness::PostgresServer;
use lock_core::{LeaseLocker, LockerOptions};
use lock_postgres::PostgresStore;
use sqlx::PgPool;

use crate::Settings;
use crate::measure::{median, ms, percentile, throughput};
use crate::ours;
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
    let locker =
        LeaseLocker::new(store.clone(), LockerOptions::default()).map_err(|e| e.to_string())?;

    // 1. Uncontended acquire+release, interleaved repetitions.
    for tasks in [1usize, 16] {
        let ops = settings.ops(if tasks == 1 { 600 } else { 3000 });
        let (mut ours_rates, mut raw_rates, mut peer_rates) = (Vec::new(), Vec::new(), Vec::new());
        let mut store_rates = Vec::new();
        let mut latencies = Vec::new();
        for rep in 0..settings.reps {
            let run = ours::pairs(&locker, tasks, ops, &format!("pg{tasks}-{rep}")).await;
            ours_rates.push(run.per_second);
            store_rates.push(ours::store_pairs(&store, tasks, ops).await.per_second);
            latencies.extend(run.latencies);
            raw_rates.push(raw_pairs(&pool, tasks, ops, rep).await.per_second);
            peer_rates.push(advisory_pairs(&pool, tasks, ops).await.per_second);
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
            note: "raw: INSERT ON CONFLICT DO NOTHING + DELETE; peer: pg_try_advisory_lock + pg_advisory_unlock".into(),
        });
        rows.push(Row {
            backend: BACKEND,
            scenario: "1. Uncontended acquire+release",
            metric: format!("pair latency p50 / p99 ms, {tasks} task(s)"),
            higher_is_better: false,
            ours: ms(percentile(&mut latencies, 50)),
            raw: None,
            peer: None,
            note: format!("p99 {:.2} ms", ms(percentile(&mut latencies, 99))),
        });
    }

    // 2. Renewal of 10,000 held locks.
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

    // 3. Handoff among 8 waiters.
    let mut ours_handoff = ours::handoff(lockers(&store, 8), settings.rounds(25)).await;
    let mut peer_handoff = advisory_handoff(&pool, 8, settings.rounds(25)).await;
    rows.push(Row {
        backend: BACKEND,
        scenario: "3. Handoff among 8 waiters",
        metric: "release to next acquire, p50 ms".into(),
        higher_is_better: false,
        ours: ms(percentile(&mut ours_handoff, 50)),
        raw: None,
        peer: Some(ms(percentile(&mut peer_handoff, 50))),
        note: format!(
            "p99: dlock {:.2} ms, peer {:.2} ms; peer: blocking pg_advisory_lock (woken by the server); target p50 < 5 ms",
            ms(percentile(&mut ours_handoff, 99)),
            ms(percentile(&mut peer_handoff, 99))
        ),
    });

    // 4. Contended throughput.
    let length = settings.length();
    let ours_grants = ours::contended(lockers(&store, 16), length).await;
    let peer_grants = advisory_contended(&pool, 16, length).await;
    rows.push(Row {
        backend: BACKEND,
        scenario: "4. Contended throughput",
        metric: "grants/s, 16 tasks on one key".into(),
        higher_is_better: true,
        ours: ours_grants,
        raw: None,
        peer: Some(peer_grants),
        note: "peer: blocking pg_advisory_lock".into(),
    });
    Ok(())
}

fn lockers(store: &PostgresStore, n: usize) -> Vec<LeaseLocker<PostgresStore>> {
    (0..n)
        .map(|i| {
            let options = LockerOptions::builder()
                .owner(format!("bench-{i}"))
                .build()
                .expect("options");
            LeaseLocker::new(store.clone(), options).expect("locker")
        })
        .collect()
}

async fn raw_pairs(pool: &PgPool, tasks: usize, ops: usize, rep: usize) -> crate::measure::Run {
    let pool = pool.clone();
    throughput(tasks, ops, move |task| {
        let (pool, key) = (pool.clone(), format!("raw-{tasks}-{rep}-{task}"));
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

async fn advisory_pairs(pool: &PgPool, tasks: usize, ops: usize) -> crate::measure::Run {
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
