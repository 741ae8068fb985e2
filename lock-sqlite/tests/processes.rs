//! Several processes contending on one database file: this test binary
//! starts copies of itself as workers.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use lock_core::{LeaseLocker, Locker, LockerOptions};
use lock_sqlite::SqliteStore;

const WORKER_DB: &str = "DLOCK_SQLITE_WORKER_DB";
const WORKER_LOG: &str = "DLOCK_SQLITE_WORKER_LOG";
const WORKERS: usize = 4;
const ROUNDS: usize = 8;

/// The worker role: a no-op unless started by the test below.
#[test]
fn contention_worker() {
    let (Ok(db), Ok(log)) = (std::env::var(WORKER_DB), std::env::var(WORKER_LOG)) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        let options = LockerOptions::builder()
            .owner(format!("worker-{}", std::process::id()))
            .lease(Duration::from_secs(5))
            .build()
            .unwrap();
        let locker = LeaseLocker::new(store, options).unwrap();
        for _ in 0..ROUNDS {
            let guard = locker
                .lock("shared-job", Duration::from_secs(60))
                .await
                .unwrap();
            let token = guard.fencing_token().unwrap().clone();
            append(&log, &format!("start {token}\n"));
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(!guard.is_expired());
            append(&log, &format!("end {token}\n"));
            guard.unlock().await.unwrap();
        }
        locker.close().await.unwrap();
    });
}

/// One `write` per line on an append-only file: lines never interleave.
fn append(path: &str, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(line.as_bytes()).unwrap();
}

#[test]
fn processes_contending_on_one_file_take_turns_with_increasing_tokens() {
    if std::env::var(WORKER_DB).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locks.db");
    let log = dir.path().join("log");
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "contention_worker",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(WORKER_DB, &db)
                .env(WORKER_LOG, &log)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "a worker failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2 * WORKERS * ROUNDS, "{log}");
    let mut last: Option<u64> = None;
    for (i, pair) in lines.chunks(2).enumerate() {
        let start = pair[0].strip_prefix("start ").expect("a start line");
        let end = pair[1]
            .strip_prefix("end ")
            .expect("its end line: holders overlapped");
        assert_eq!(
            start, end,
            "grant {i}: another holder ended inside this one"
        );
        let token: u64 = start.parse().unwrap();
        assert!(
            last.is_none_or(|last| token > last),
            "token {token} after {last:?}"
        );
        last = Some(token);
    }
}
