//! The README's example, compiled: take a lock on the default backend, work
//! with its fencing token while watching for its loss, release it.

use std::time::Duration;

use dlock::{FencingToken, LockerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = LockerOptions::builder()
        .owner("report-worker")
        .lease(Duration::from_secs(30))
        .build()?;
    let dir = std::env::temp_dir().join("dlock-readme-example");
    let locker = dlock::open(&format!("sqlite:{}/locks.db", dir.display()), options).await?;

    let guard = locker
        .lock("nightly-report", Duration::from_secs(5))
        .await?;
    let token = guard
        .fencing_token()
        .cloned()
        .expect("fencing is on by default");
    tokio::select! {
        _ = guard.lost() => eprintln!("lock lost; stopping"),
        () = write_report(&token) => {}
    }
    guard.unlock().await?;
    locker.close().await?;
    Ok(())
}

async fn write_report(token: &FencingToken) {
    println!("writing the report with fencing token {token}");
}
