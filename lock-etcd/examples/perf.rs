//! Performance figures of the etcd store on a throwaway etcd started by the
//! test harness. Run with `cargo run --release --example perf`.
//!
//! Prints, side by side in one run:
//! - round trips per operation, counted by etcd itself (its `/metrics`);
//! - uncontended acquire + release throughput through `LeaseLocker`, with 1
//!   and 16 tasks, against two raw transactions through the same client
//!   and against etcd-client's own lock/unlock API;
//! - the round trips of one renewal round of 10,000 held locks;
//! - the handoff time from `unlock` to a waiting `lock()` acquiring.

// Counts far below 2^52 become rates.
#![allow(clippy::cast_precision_loss)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use conformance_tests::harness::EtcdServer;
use etcd_client::{Client, Compare, CompareOp, LockOptions, PutOptions, Txn, TxnOp};
use lock_core::{LeaseLocker, LeaseStore, Locker, LockerOptions};
use lock_etcd::{EtcdConfig, EtcdStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const RUN: Duration = Duration::from_secs(1);
const ROUNDS: usize = 5;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Error> {
    let server = EtcdServer::start().await?;
    let addr = server.addr()?;
    let store = EtcdStore::connect_with(EtcdConfig::new(server.endpoints())).await?;
    println!("etcd at {addr}; minimum ttl {:?}", store.min_ttl());

    round_trips_per_operation(&store, addr).await?;

    println!(
        "\nuncontended acquire + release, ops/s: median of {ROUNDS} interleaved runs of {RUN:?} each"
    );
    println!(
        "{:>6} {:>12} {:>12} {:>14} {:>8} {:>8} {:>16}",
        "tasks",
        "LeaseLocker",
        "2 raw txns",
        "etcd lock API",
        "vs raw",
        "vs API",
        "txn + plain del"
    );
    for tasks in [1, 16] {
        let (mut ours, mut raw, mut api) = (Vec::new(), Vec::new(), Vec::new());
        let mut plain = Vec::new();
        let (mut vs_raw, mut vs_api) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let o = locker_throughput(&store, tasks).await?;
            let r = raw_throughput(store.client(), tasks, false).await?;
            let a = lock_api_throughput(store.client(), tasks).await?;
            plain.push(raw_throughput(store.client(), tasks, true).await?);
            ours.push(o);
            raw.push(r);
            api.push(a);
            vs_raw.push(o / r);
            vs_api.push(o / a);
        }
        println!(
            "{tasks:>6} {:>12.0} {:>12.0} {:>14.0} {:>8.2} {:>8.2} {:>16.0}",
            median_f(&mut ours),
            median_f(&mut raw),
            median_f(&mut api),
            median_f(&mut vs_raw),
            median_f(&mut vs_api),
            median_f(&mut plain),
        );
    }

    renewal_of_many_locks(&store, addr, 10_000).await?;
    handoff(&server, 100).await?;
    Ok(())
}

fn options(owner: &str, lease: Duration) -> Result<LockerOptions, Error> {
    Ok(LockerOptions::builder()
        .owner(owner)
        .lease(lease)
        .without_warnings()
        .fencing(std::env::var("NOFENCE").is_err())
        .build()?)
}

/// Counts what etcd handled during one acquire + release, and during one
/// renewal of one lock.
async fn round_trips_per_operation(
    store: &EtcdStore,
    addr: std::net::SocketAddr,
) -> Result<(), Error> {
    let locker = LeaseLocker::new(store.clone(), options("counter", Duration::from_secs(30))?)?;
    // Warm up: the lease grant and the keep-alive stream.
    locker.try_lock("perf/warm-up").await?.unlock().await?;
    const N: u64 = 200;
    let before = metrics(addr).await?;
    for i in 0..N {
        locker
            .try_lock(&format!("perf/count/{i}"))
            .await?
            .unlock()
            .await?;
    }
    let after = metrics(addr).await?;
    let per = |name: &str| {
        (after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0)) / N as f64
    };
    println!(
        "\nper acquire + release (sequential, {N} times): {:.2} Txn, {:.2} Range, {:.2} LeaseKeepAlive messages, {:.2} LeaseGrant",
        per("Txn"),
        per("Range"),
        per("LeaseKeepAlive"),
        per("LeaseGrant")
    );
    // Acquire alone: timed against one raw transaction of the same shape.
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    let client = store.client().clone();
    for i in 0..N {
        let key = format!("perf/latency/{i}");
        let start = Instant::now();
        let guard = locker.try_lock(&key).await?;
        ours.push(start.elapsed());
        guard.unlock().await?;
        let raw_key = format!("perf/raw-latency/{i}");
        let start = Instant::now();
        client.kv_client().txn(acquire_txn(&raw_key, 0)).await?;
        raw.push(start.elapsed());
        client.kv_client().delete(raw_key, None).await?;
    }
    println!(
        "acquire latency: median {:?} (one raw transaction of the same shape: {:?})",
        median(&mut ours),
        median(&mut raw)
    );
    locker.close().await?;
    Ok(())
}

async fn locker_throughput(store: &EtcdStore, tasks: usize) -> Result<f64, Error> {
    let locker = Arc::new(LeaseLocker::new(
        store.clone(),
        options("bench", Duration::from_secs(30))?,
    )?);
    locker.try_lock("perf/warm").await?.unlock().await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (locker, done, stop) = (locker.clone(), done.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let key = format!("perf/locker/{tasks}/{t}");
            while !stop.load(Ordering::Relaxed) {
                let guard = locker.try_lock(&key).await?;
                guard.unlock().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, lock_core::LockError>(())
        }));
    }
    let rate = measure(&done, &stop, handles).await?;
    locker.close().await?;
    Ok(rate)
}

/// The acquire transaction's shape, raw: put-if-absent with a lease, else
/// read.
fn acquire_txn(key: &str, lease: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            "raw",
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)])
}

/// Two raw transactions per round: the acquire's shape, then a release
/// comparing the value (or, with `plain_delete`, an unconditional delete,
/// which no lock may use but etcd's own unlock does).
async fn raw_throughput(client: &Client, tasks: usize, plain_delete: bool) -> Result<f64, Error> {
    let lease = client.lease_client().grant(60, None).await?.id();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (client, done, stop) = (client.clone(), done.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let key = format!("perf/raw/{tasks}/{t}");
            let mut kv = client.kv_client();
            while !stop.load(Ordering::Relaxed) {
                kv.txn(acquire_txn(&key, lease)).await?;
                if plain_delete {
                    kv.delete(key.as_str(), None).await?;
                } else {
                    let release = Txn::new()
                        .when([Compare::value(key.as_str(), CompareOp::Equal, "raw")])
                        .and_then([TxnOp::delete(key.as_str(), None)]);
                    kv.txn(release).await?;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    let rate = measure(&done, &stop, handles).await?;
    client.lease_client().revoke(lease).await?;
    Ok(rate)
}

async fn lock_api_throughput(client: &Client, tasks: usize) -> Result<f64, Error> {
    let lease = client.lease_client().grant(60, None).await?.id();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (client, done, stop) = (client.clone(), done.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let name = format!("perf/api/{tasks}/{t}");
            let mut locks = client.lock_client();
            while !stop.load(Ordering::Relaxed) {
                let held = locks
                    .lock(name.as_str(), Some(LockOptions::new().with_lease(lease)))
                    .await?;
                locks.unlock(held.key()).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    let rate = measure(&done, &stop, handles).await?;
    client.lease_client().revoke(lease).await?;
    Ok(rate)
}

async fn measure<E>(
    done: &AtomicU64,
    stop: &AtomicBool,
    handles: Vec<tokio::task::JoinHandle<Result<(), E>>>,
) -> Result<f64, Error>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let first = done.load(Ordering::Relaxed);
    tokio::time::sleep(RUN).await;
    let count = done.load(Ordering::Relaxed) - first;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// Holds `count` locks through one locker and counts what etcd handles
/// during its renewal rounds.
async fn renewal_of_many_locks(
    store: &EtcdStore,
    addr: std::net::SocketAddr,
    count: usize,
) -> Result<(), Error> {
    let lease = Duration::from_secs(9);
    let locker = Arc::new(LeaseLocker::new(store.clone(), options("holder", lease)?)?);
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..16 {
        let locker = locker.clone();
        handles.push(tokio::spawn(async move {
            let mut guards = Vec::new();
            for i in (t..count).step_by(16) {
                guards.push(locker.try_lock(&format!("perf/many/{i}")).await?);
            }
            Ok::<_, lock_core::LockError>(guards)
        }));
    }
    let mut guards = Vec::new();
    for handle in handles {
        guards.extend(handle.await??);
    }
    println!(
        "\nacquired {} locks in {:?} ({:.0}/s)",
        guards.len(),
        started.elapsed(),
        guards.len() as f64 / started.elapsed().as_secs_f64()
    );
    // Count renewal rounds by watching one lock's deadline move.
    let probe = &guards[0];
    let mut deadline = probe.valid_until();
    // Start counting right after a round.
    while probe.valid_until() == deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    deadline = probe.valid_until();
    let before = metrics(addr).await?;
    let window_start = Instant::now();
    let mut rounds = 0;
    while rounds < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if probe.valid_until() != deadline {
            deadline = probe.valid_until();
            rounds += 1;
        }
    }
    let after = metrics(addr).await?;
    let window = window_start.elapsed();
    let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
    println!(
        "renewing {} held locks: {rounds} rounds in {window:?}; per round {:.1} LeaseKeepAlive messages, {:.1} LeaseTimeToLive calls, {:.1} Txn, {:.1} Range",
        guards.len(),
        delta("LeaseKeepAlive") / f64::from(rounds),
        delta("LeaseTimeToLive") / f64::from(rounds),
        delta("Txn") / f64::from(rounds),
        delta("Range") / f64::from(rounds),
    );
    assert!(guards.iter().all(|guard| !guard.is_expired()));
    // Time one renewal call of the whole batch directly.
    let entries: Vec<lock_core::RenewEntry<'_>> = guards
        .iter()
        .map(|guard| lock_core::RenewEntry::held(guard.key(), guard.lease_id()))
        .collect();
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let outcomes = store.renew(&entries, lease).await?;
        times.push(start.elapsed());
        assert_eq!(outcomes.len(), entries.len());
    }
    println!(
        "one renew() call of all {} locks: median {:?}",
        entries.len(),
        median(&mut times)
    );
    drop(entries);
    drop(guards);
    locker.close().await?;
    Ok(())
}

/// Median time from the holder's `unlock()` to a waiting `lock()` holding
/// the lock, each locker on its own client.
async fn handoff(server: &EtcdServer, rounds: usize) -> Result<(), Error> {
    let connect = || EtcdStore::connect_with(EtcdConfig::new(server.endpoints()));
    let lease = Duration::from_secs(10);
    let holder = LeaseLocker::new(connect().await?, options("holder", lease)?)?;
    let waiter = Arc::new(LeaseLocker::new(
        connect().await?,
        options("waiter", lease)?,
    )?);
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let key = format!("perf/handoff/{i}");
        let guard = holder.try_lock(&key).await?;
        let task = tokio::spawn({
            let (waiter, key) = (waiter.clone(), key.clone());
            async move {
                let guard = waiter.lock(&key, Duration::from_secs(10)).await?;
                let at = Instant::now();
                guard.unlock().await?;
                Ok::<_, lock_core::LockError>(at)
            }
        });
        // Let the waiter find it held and start watching.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let released = Instant::now();
        guard.unlock().await?;
        let acquired = task.await??;
        times.push(acquired - released);
    }
    times.sort();
    println!(
        "\nhandoff unlock -> waiting lock() acquired, {rounds} rounds: median {:?}, p90 {:?}, max {:?}",
        times[rounds / 2],
        times[rounds * 9 / 10],
        times[rounds - 1]
    );
    holder.close().await?;
    waiter.close().await?;
    Ok(())
}

fn median_f(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// etcd's gRPC counters by method: unary calls handled, stream messages
/// received.
async fn metrics(addr: std::net::SocketAddr) -> Result<HashMap<String, f64>, Error> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let mut counts = HashMap::new();
    for line in body.lines() {
        let counted = (line.starts_with("grpc_server_handled_total{")
            && line.contains("grpc_type=\"unary\""))
            || (line.starts_with("grpc_server_msg_received_total{")
                && line.contains("grpc_type=\"bidi_stream\""));
        if !counted {
            continue;
        }
        let Some(method) = line
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *counts.entry(method.to_owned()).or_insert(0.0) += value;
    }
    Ok(counts)
}
