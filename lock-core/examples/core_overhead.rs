//! Core overhead: acquire+unlock pairs per second on `MemoryStore`, one
//! task, no I/O. Run with
//! `cargo run --release -p lock-core --example core_overhead [-- PAIRS]`.

use std::time::{Duration, Instant};

use lock_core::{LeaseLocker, LockError, Locker, LockerOptions, MemoryStore};

fn main() -> Result<(), LockError> {
    let pairs: u32 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(500_000);
    for flavor in ["current_thread", "multi_thread"] {
        let runtime = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .expect("runtime");
        let elapsed = runtime.block_on(run(pairs))?;
        let rate = f64::from(pairs) / elapsed.as_secs_f64();
        println!(
            "{flavor:>14}: {pairs} acquire+unlock pairs in {elapsed:.2?}: {rate:.0} pairs/s ({:.2} us/pair)",
            elapsed.as_secs_f64() * 1e6 / f64::from(pairs)
        );
    }
    Ok(())
}

async fn run(pairs: u32) -> Result<Duration, LockError> {
    let locker = LeaseLocker::new(MemoryStore::new(), LockerOptions::default())?;
    // Warm up: start the background task and size the tables.
    for _ in 0..10_000 {
        locker.try_lock("warm-up").await?.unlock().await?;
    }
    let ids: Vec<String> = (0..1024).map(|i| format!("job-{i}")).collect();
    let start = Instant::now();
    for i in 0..pairs {
        let guard = locker.try_lock(&ids[i as usize % ids.len()]).await?;
        guard.unlock().await?;
    }
    let elapsed = start.elapsed();
    locker.close().await?;
    Ok(elapsed)
}
