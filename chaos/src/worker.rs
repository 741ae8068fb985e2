//! A worker process: several tasks taking, holding, writing through the
//! fenced register and releasing locks at random, recording what they see.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dlock::{LockError, LockGuard, LockerOptions};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Mutex;

use crate::clock::{nanos, now_ns, ns_of};
use crate::register::RegisterClient;
use crate::{KEYS, LEASE, TASKS};

/// What a worker needs to know.
pub(crate) struct WorkerArgs {
    pub(crate) url: String,
    pub(crate) log: PathBuf,
    pub(crate) register: PathBuf,
    pub(crate) seed: u64,
    pub(crate) index: usize,
}

type Log = Arc<std::sync::Mutex<std::io::BufWriter<std::fs::File>>>;

fn record(log: &Log, event: serde_json::Value) {
    let mut log = log.lock().expect("log lock");
    let _ = writeln!(log, "{event}");
}

fn event(worker: &str, key: &str, guard: Option<&LockGuard>, kind: &str) -> serde_json::Value {
    json!({
        "at": now_ns(),
        "w": worker,
        "k": key,
        "lease": guard.map(|g| g.lease_id().to_string()),
        "kind": kind,
    })
}

/// Writes through the fenced register with `token` and records whether it
/// was accepted.
async fn write_through(
    register: &Mutex<RegisterClient>,
    log: &Log,
    client: &str,
    key: &str,
    guard: &LockGuard,
    token: u64,
) {
    let accepted = register
        .lock()
        .await
        .write(key, token)
        .await
        .unwrap_or(false);
    let mut write = event(client, key, Some(guard), "write");
    write["token"] = json!(token);
    write["accepted"] = json!(accepted);
    record(log, write);
}

pub(crate) async fn run(args: WorkerArgs) -> Result<(), String> {
    let file = std::fs::File::create(&args.log).map_err(|e| e.to_string())?;
    let log: Log = Arc::new(std::sync::Mutex::new(std::io::BufWriter::new(file)));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            term.recv().await;
            stop.store(true, Ordering::SeqCst);
        });
    }
    let worker = format!("w{}", args.index);
    let options = LockerOptions::builder()
        .owner(&worker)
        .lease(LEASE)
        .build()
        .map_err(|e| e.to_string())?;
    let register = Arc::new(Mutex::new(
        RegisterClient::connect(&args.register)
            .await
            .map_err(|e| e.to_string())?,
    ));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (log, stop, register) = (log.clone(), stop.clone(), register.clone());
        let (url, options) = (args.url.clone(), options.clone());
        let mut locker = dlock::open(&url, options.clone())
            .await
            .map_err(|e| e.to_string())?;
        let client = format!("{worker}/t{task}");
        let seed = args.seed ^ (u64::try_from(task).unwrap_or(0) << 32);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while !stop.load(Ordering::SeqCst) {
                // Now and then the whole locker goes: close releases every
                // lock it holds, and a new one takes its place.
                if rng.random_range(0..50) == 0 {
                    let _ = locker.close().await;
                    record(&log, event(&client, "", None, "closed"));
                    match dlock::open(&url, options.clone()).await {
                        Ok(reopened) => locker = reopened,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                let key = KEYS[rng.random_range(0..KEYS.len())];
                let wait = [
                    Duration::ZERO,
                    Duration::from_millis(500),
                    Duration::from_secs(2),
                    Duration::from_secs(5),
                ][rng.random_range(0..4)];
                let cancel_after = (rng.random_range(0..10) == 0).then(|| {
                    Duration::from_millis(
                        rng.random_range(0..=u64::try_from(wait.as_millis()).unwrap_or(0)),
                    )
                });
                let called = now_ns();
                let attempt = locker.lock(key, wait);
                let result = match cancel_after {
                    Some(cut) => match tokio::time::timeout(cut, attempt).await {
                        Ok(result) => result,
                        Err(_) => {
                            let mut cancelled = event(&client, key, None, "cancelled");
                            cancelled["called"] = json!(called);
                            record(&log, cancelled);
                            continue;
                        }
                    },
                    None => attempt.await,
                };
                let guard = match result {
                    Ok(guard) => guard,
                    Err(error) => {
                        let reason = match &error {
                            LockError::Taken { .. } | LockError::Timeout { .. } => "not-granted",
                            LockError::Store(_) => "store-error",
                            _ => "other",
                        };
                        let mut failed = event(&client, key, None, reason);
                        failed["called"] = json!(called);
                        failed["wait"] = json!(nanos(wait));
                        record(&log, failed);
                        if reason != "not-granted" {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        continue;
                    }
                };
                let token = guard.fencing_token().and_then(|t| t.to_u64()).unwrap_or(0);
                let mut deadline = guard.valid_until().map_or(0, ns_of);
                let mut granted = event(&client, key, Some(&guard), "granted");
                granted["token"] = json!(token);
                granted["deadline"] = json!(deadline);
                granted["called"] = json!(called);
                record(&log, granted);

                write_through(&register, &log, &client, key, &guard, token).await;

                // A careless holder never looks at its lock while working
                // and writes at the end whatever happened: only fencing
                // stops it when it was paused past its lease.
                let careless = rng.random_range(0..10) < 3;
                // Now and then a holder blocks its runtime thread (a long
                // synchronous call) for longer than its lease.
                if rng.random_range(0..25) == 0 {
                    let mut blocked = event(&client, key, Some(&guard), "blocked");
                    blocked["from"] = json!(now_ns());
                    std::thread::sleep(LEASE + Duration::from_millis(300));
                    blocked["to"] = json!(now_ns());
                    record(&log, blocked);
                }
                let mut expired = false;
                for _ in 0..rng.random_range(0..4) {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
                    if careless {
                        continue;
                    }
                    match guard.valid_until() {
                        Some(until) => {
                            let now_deadline = ns_of(until);
                            if now_deadline > deadline {
                                deadline = now_deadline;
                                let mut renewed = event(&client, key, Some(&guard), "renewed");
                                renewed["deadline"] = json!(deadline);
                                record(&log, renewed);
                            }
                        }
                        None => {
                            let mut lost = event(&client, key, Some(&guard), "expired");
                            lost["deadline"] = json!(deadline);
                            record(&log, lost);
                            expired = true;
                            break;
                        }
                    }
                }
                if !expired {
                    // A last write before letting go: a holder paused while
                    // holding writes here late, with its old token.
                    if careless && guard.is_expired() {
                        let mut lost = event(&client, key, Some(&guard), "expired");
                        lost["deadline"] = json!(deadline);
                        lost["careless"] = json!(true);
                        record(&log, lost);
                    }
                    write_through(&register, &log, &client, key, &guard, token).await;
                    record(&log, event(&client, key, Some(&guard), "releasing"));
                }
                if rng.random_range(0..10) < 7 {
                    let _ = guard.unlock().await;
                } else {
                    drop(guard);
                }
            }
            let _ = locker.close().await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    log.lock()
        .map_err(|_| "log lock poisoned".to_owned())?
        .flush()
        .map_err(|e| e.to_string())
}
