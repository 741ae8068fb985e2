//! `lock-bench`: dlock's locks measured side by side with the same work as
//! raw backend operations through the same client, and with a peer library
//! on the same server. Writes `BENCHMARKS.md` and
//! `target/bench/results.json`.
//!
//! ```text
//! lock-bench [--quick] [--backend NAME]... [--client-threads N] [--out PATH] [--json PATH]
//! ```
//!
//! The client runs on one runtime worker thread unless `--client-threads`
//! says otherwise (see [`CLIENT_THREADS`]).
//!
//! Scenarios: 1. uncontended acquire+release (1 and 16 tasks); 2. renewal
//! cost with 10,000 held locks (store calls per heartbeat, wall time, client
//! memory per lock); 3. handoff among 8 waiters; 4. contended throughput
//! (16 tasks, one key); 5. core overhead on MemoryStore. Each scenario runs
//! its subjects interleaved in one process, several repetitions, medians.
#![forbid(unsafe_code)]

mod driver;
mod dynamodb;
mod etcd;
mod measure;
mod memory;
mod ours;
mod postgres;
mod redis;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use report::Row;

/// How much to measure.
pub(crate) struct Settings {
    quick: bool,
    reps: usize,
    held: usize,
}

impl Settings {
    /// Operations per repetition: a quarter in quick mode.
    fn ops(&self, full: usize) -> usize {
        if self.quick { full / 4 } else { full }
    }

    /// Rounds of scenario 1: many short ones, so that each ratio has a
    /// spread and no subject always runs first.
    fn pair_rounds(&self) -> usize {
        if self.quick { 8 } else { 12 }
    }

    /// Rounds per waiter in the handoff scenario.
    fn rounds(&self, full: usize) -> usize {
        if self.quick { full / 3 } else { full }
    }

    /// Length of the contended scenario.
    fn length(&self) -> Duration {
        if self.quick {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        }
    }
}

const BACKENDS: [&str; 6] = ["memory", "sqlite", "postgres", "redis", "etcd", "dynamodb"];

/// Runtime worker threads for the client unless `--client-threads` says
/// otherwise: one, so that the servers keep the other core of a two-core
/// machine. With two, the client's workers and the server fought over the
/// cores, and one round's ratio to raw swung from 0.26 to 2.4 within a run.
const CLIENT_THREADS: usize = 1;

/// The command line.
struct Args {
    quick: bool,
    backends: Vec<String>,
    out: PathBuf,
    json_out: PathBuf,
    client_threads: usize,
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!(
                "lock-bench: {message}; usage: lock-bench [--quick] [--backend {}]... [--client-threads N] [--out PATH] [--json PATH]",
                BACKENDS.join("|")
            );
            return std::process::ExitCode::from(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(error) => {
            eprintln!("lock-bench: starting the runtime: {error}");
            std::process::ExitCode::from(71)
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut parsed = Args {
        quick: false,
        backends: Vec::new(),
        out: PathBuf::from("BENCHMARKS.md"),
        json_out: PathBuf::from("target/bench/results.json"),
        client_threads: CLIENT_THREADS,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => parsed.quick = true,
            "--backend" => parsed.backends.push(value()?),
            "--out" => parsed.out = PathBuf::from(value()?),
            "--json" => parsed.json_out = PathBuf::from(value()?),
            "--client-threads" => {
                parsed.client_threads = value()?
                    .parse()
                    .ok()
                    .filter(|threads| *threads > 0)
                    .ok_or("--client-threads takes a positive number")?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

async fn run(args: Args) -> std::process::ExitCode {
    let Args {
        quick,
        mut backends,
        out,
        json_out,
        client_threads,
    } = args;
    if backends.is_empty() {
        backends = BACKENDS.iter().map(|b| (*b).to_owned()).collect();
    }
    let settings = Settings {
        quick,
        reps: if quick { 3 } else { 5 },
        held: 10_000,
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut versions: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for backend in &backends {
        eprintln!("lock-bench: {backend}…");
        let result = match backend.as_str() {
            "memory" => {
                rows.push(
                    memory::core_overhead(if quick { 100_000 } else { 500_000 }, settings.reps)
                        .await,
                );
                rows.push(memory::memory_per_lock(100_000).await);
                let store = lock_core::MemoryStore::new();
                driver::fairness("memory", &store, &settings, None, &mut rows).await;
                driver::kinds("memory", &store, None, &settings, &mut rows).await;
                Ok(())
            }
            "sqlite" => sqlite(&settings, &mut rows).await,
            "postgres" => postgres::run(&settings, &mut rows, &mut versions).await,
            "redis" => redis::run(&settings, &mut rows, &mut versions).await,
            "etcd" => etcd::run(&settings, &mut rows, &mut versions).await,
            "dynamodb" => dynamodb::run(&settings, &mut rows, &mut versions).await,
            other => Err(format!(
                "unknown backend {other:?} (known: {})",
                BACKENDS.join(", ")
            )),
        };
        if let Err(error) = result {
            eprintln!("lock-bench: {backend} failed: {error}");
            failures.push(format!("{backend}: {error}"));
        }
    }
    rows.sort_by_key(|row| row.scenario);
    let header = header(quick, client_threads, &versions);
    let notes = notes(&failures);
    let markdown = report::markdown(&header, &rows, &notes);
    if let Err(error) = std::fs::write(&out, markdown) {
        eprintln!("lock-bench: writing {}: {error}", out.display());
        return std::process::ExitCode::from(73);
    }
    if let Some(parent) = json_out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let json = serde_json::to_string_pretty(&report::json(&rows)).unwrap_or_default();
    if let Err(error) = std::fs::write(&json_out, json) {
        eprintln!("lock-bench: writing {}: {error}", json_out.display());
        return std::process::ExitCode::from(73);
    }
    eprintln!(
        "lock-bench: wrote {} and {}",
        out.display(),
        json_out.display()
    );
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

/// SQLite: the fairness scenario on a database file of its own (its other
/// figures are local file writes, with no network peer to compare).
async fn sqlite(settings: &Settings, rows: &mut Vec<Row>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = lock_sqlite::SqliteStore::builder()
        .open(dir.path().join("bench.db"))
        .await
        .map_err(|e| e.to_string())?;
    driver::fairness("sqlite", &store, settings, None, rows).await;
    driver::kinds("sqlite", &store, None, settings, rows).await;
    Ok(())
}

fn header(quick: bool, client_threads: usize, versions: &[String]) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .map(|line| line.split_whitespace().nth(1).unwrap_or("?").to_owned())
        })
        .unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "# Benchmarks\n\nRegenerated by `scripts/bench`{}. Machine: {cpu}, {cores} cores, {memory} kB memory; {rustc}; {}. Servers run on loopback on the same machine, so client and server share the cores; the client runs on {client_threads} runtime worker thread(s).\n\nEach scenario runs dlock, the raw baseline (the same work as plain operations through the same client) and the peer interleaved in one process, {} repetitions, medians. Ratios are dlock / raw and dlock / peer: above 1 is better for throughput, below 1 is better for latency and calls.",
        if quick { " --quick" } else { "" },
        versions.join(", "),
        if quick { 3 } else { 5 }
    )
}

fn notes(failures: &[String]) -> String {
    // The notes are Markdown of their own, kept beside the code.
    let mut notes = String::from(include_str!("../NOTES.md"));
    for failure in failures {
        notes.push_str(&format!("- Not measured: {failure}\n"));
    }
    notes
}
