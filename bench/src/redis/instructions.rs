//! Redis server instructions per uncontended acquire+release, counted by
//! valgrind's callgrind inside `redis-server`'s command processing
//! (`processCommand`, which runs every command a client sends, scripts
//! and the commands they call included). Unlike CPU time, a count does not
//! move with the machine's load, speed or caches: the ratio to
//! `SET NX PX` + `DEL` repeats from run to run to within about 1 %, where
//! the CPU-time ratio ([`super::cpu`]) moved from 9 to 12 between two
//! days. Skipped, with a message, where valgrind is not installed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lock_redis::RedisStore;
use redis::aio::ConnectionManager;
use tokio::process::{Child, Command};

use super::cpu::FLOOR_SCRIPT;
use crate::driver::spread;
use crate::measure::{count, median, paired_ratios};
use crate::ours;
use crate::report::Row;

/// Pairs per subject and round: valgrind runs the server about 50 times
/// slower, and a count needs no more (it repeats to within a few per mil).
const PAIRS: usize = 200;
const ROUNDS: usize = 2;

/// Instructions per pair of each subject, one value per round.
#[derive(Default)]
struct Counts {
    dlock: Vec<f64>,
    raw: Vec<f64>,
    floor: Vec<f64>,
}

/// The row, or `None` (after saying why on stderr) when valgrind or
/// `redis-server` is missing.
pub(super) async fn server_instructions() -> Result<Option<Row>, String> {
    let (Some(valgrind), Some(control), Some(server)) = (
        in_path("valgrind"),
        in_path("callgrind_control"),
        in_path("redis-server"),
    ) else {
        eprintln!(
            "lock-bench: no valgrind (or redis-server) here: skipping the server instruction count"
        );
        return Ok(None);
    };
    let dir = tempfile::Builder::new()
        .prefix("dlock-bench-callgrind-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let port = conformance_tests::harness::pick_free_port().map_err(|e| e.to_string())?;
    let out = dir.path().join("callgrind.out");
    let child = Command::new(valgrind)
        .arg("--tool=callgrind")
        .arg("--toggle-collect=processCommand")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(server)
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting redis-server under valgrind: {e}"))?;
    let mut counter = Counter {
        control,
        out,
        child,
        dumps: 0,
    };
    let counts = counter.count_all(port).await;
    counter.child.kill().await.map_err(|e| e.to_string())?;
    let mut counts = counts?;
    let to_raw = paired_ratios(&counts.dlock, &counts.raw);
    let floor_to_raw = paired_ratios(&counts.floor, &counts.raw);
    let to_floor = paired_ratios(&counts.dlock, &counts.floor);
    let floor = median(&mut counts.floor);
    Ok(Some(Row {
        backend: "redis",
        scenario: "1. Uncontended acquire+release",
        metric: "server instructions per acquire+release, thousands".into(),
        higher_is_better: false,
        ours: median(&mut counts.dlock) / 1000.0,
        raw: Some(median(&mut counts.raw) / 1000.0),
        peer: None,
        note: format!(
            "counted by valgrind's callgrind in redis-server's command processing, {PAIRS} pairs a subject in each of {ROUNDS} rounds; repeatable, unlike CPU time: dlock / SET NX PX + DEL per round {}; the floor (GET, TIME and SET in one script, twice): {:.1} thousand, {} times SET NX PX + DEL; dlock / floor {}",
            spread(to_raw),
            floor / 1000.0,
            spread(floor_to_raw),
            spread(to_floor),
        ),
    }))
}

/// A `redis-server` under callgrind, and how many dumps it wrote.
struct Counter {
    control: PathBuf,
    out: PathBuf,
    child: Child,
    dumps: usize,
}

impl Counter {
    async fn count_all(&mut self, port: u16) -> Result<Counts, String> {
        let url = format!("redis://127.0.0.1:{port}");
        let (store, mut raw) = connect(&url).await?;
        let floor = redis::Script::new(FLOOR_SCRIPT);
        // Loads the scripts, and lets every subject's keys exist once.
        ours::store_pairs(&store, 1, 10).await;
        super::raw_pairs(&raw, 1, 10).await;
        floor_pairs(&floor, &raw, 10).await?;
        let mut counts = Counts::default();
        for _ in 0..ROUNDS {
            self.zero().await?;
            ours::store_pairs(&store, 1, PAIRS).await;
            counts.dlock.push(self.dump().await? / count(PAIRS));
            self.zero().await?;
            super::raw_pairs(&raw, 1, PAIRS).await;
            counts.raw.push(self.dump().await? / count(PAIRS));
            self.zero().await?;
            floor_pairs(&floor, &raw, PAIRS).await?;
            counts.floor.push(self.dump().await? / count(PAIRS));
        }
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN")
            .arg("NOSAVE")
            .query_async(&mut raw)
            .await;
        Ok(counts)
    }

    fn pid(&self) -> Result<String, String> {
        self.child
            .id()
            .map(|pid| pid.to_string())
            .ok_or_else(|| "valgrind exited".to_owned())
    }

    async fn control(&self, option: &str) -> Result<(), String> {
        let status = Command::new(&self.control)
            .arg(option)
            .arg(self.pid()?)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("callgrind_control {option}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("callgrind_control {option}: {status}"))
        }
    }

    async fn zero(&mut self) -> Result<(), String> {
        self.control("-z").await
    }

    /// Dumps the counts since the last zero and reads their total.
    async fn dump(&mut self) -> Result<f64, String> {
        self.control("-d").await?;
        self.dumps += 1;
        let file = PathBuf::from(format!("{}.{}", self.out.display(), self.dumps));
        total(&file)
    }
}

/// `pairs` pairs of floor scripts.
async fn floor_pairs(
    floor: &redis::Script,
    raw: &ConnectionManager,
    pairs: usize,
) -> Result<(), String> {
    let mut raw = raw.clone();
    for _ in 0..2 * pairs {
        let _: i64 = floor
            .key("bench-instructions-floor")
            .arg("lease-and-token-and-owner-of-about-the-same-length")
            .invoke_async(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn connect(url: &str) -> Result<(RedisStore, ConnectionManager), String> {
    // valgrind takes a few seconds to bring the server up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let store = RedisStore::connect(url).await.map_err(|e| e.to_string())?;
            let raw = redis::Client::open(url)
                .map_err(|e| e.to_string())?
                .get_connection_manager()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((store, raw))
        };
        match attempt.await {
            Ok(connected) => return Ok(connected),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "redis-server under valgrind did not answer: {error}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The instruction total of a callgrind dump (its `summary:` or
/// `totals:` line).
fn total(file: &Path) -> Result<f64, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|value| value.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("{}: no instruction total", file.display()))
}

fn in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}
