//! `dlock-chaos`: randomized fault runs against every backend, with a
//! history checker.
//!
//! ```text
//! dlock-chaos [--seconds N] [--backend B]... [--seed S]
//! ```
//!
//! For each backend (sqlite, postgres, redis, redis-cluster, etcd,
//! etcd-cluster, dynamodb on moto): throwaway servers behind fault proxies, worker processes
//! taking, holding, writing through a fenced register and releasing locks at
//! random (with cancelled waits, dropped guards, closed lockers and blocked
//! runtime threads) on two mutexes, a semaphore of 2 permits and a
//! reader-writer lock, and a nemesis injecting faults at random: black-holed,
//! reset and slowed connections, server kill and restart (for clusters: the
//! etcd leader or a follower, a Redis master), SIGSTOP of a server or of a
//! worker for longer than its lease, SIGKILL of a worker. Then a quiet
//! period, and a final phase: a holder takes every lock, a waiter lines up
//! for each and is killed, more waiters line up, and the holder is killed.
//! Then every key's queue must be empty. The checks of `check.rs` run over
//! the whole history. Prints per backend the operations, the faults and
//! `violations: N` (with the first few and the seed that reproduces the
//! run); exits 1 on violations.
#![forbid(unsafe_code)]

mod check;
mod clock;
mod register;
mod target;
mod worker;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::check::{Excuse, Phases, Violation};
use crate::clock::{nanos, now_ns};
use crate::register::Register;
use crate::target::{BACKENDS, Target};
use crate::worker::Mode;

/// What kind of lock a key of the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Mutex,
    /// A semaphore of this many permits.
    Semaphore(u32),
    /// A reader-writer lock: workers read more often than they write.
    ReadWrite,
}

/// A lock id every worker contends for, and its kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunKey {
    pub(crate) id: &'static str,
    pub(crate) kind: KeyKind,
}

/// The lock ids every worker contends for: two mutexes, a semaphore of 2
/// and a reader-writer lock, on the same queue machinery.
pub(crate) const KEYS: [RunKey; 4] = [
    RunKey {
        id: "chaos-a",
        kind: KeyKind::Mutex,
    },
    RunKey {
        id: "chaos-b",
        kind: KeyKind::Mutex,
    },
    RunKey {
        id: "chaos-sem",
        kind: KeyKind::Semaphore(2),
    },
    RunKey {
        id: "chaos-rw",
        kind: KeyKind::ReadWrite,
    },
];
/// The lease of every locker (etcd's minimum is 2 s).
pub(crate) const LEASE: Duration = Duration::from_secs(2);
/// Tasks per worker process.
pub(crate) const TASKS: usize = 3;
/// Worker processes per backend.
const WORKERS: usize = 3;
/// How long the run goes on after the last fault.
const QUIET: Duration = Duration::from_secs(12);
/// How long the final phase's waiters ask for a lock: long enough for the
/// dead holder's lease to run out and every other waiter to have its turn.
pub(crate) const LIVENESS_WAIT: Duration = Duration::from_secs(20);
/// How long a lock may stay taken after its holder was killed: its ttl,
/// plus 0.5 s for the waiter to see it free; on etcd plus up to 0.5 s until
/// the leader revokes an expired lease (it looks every 500 ms).
fn outlive_bound(backend: &str) -> Duration {
    let store = if backend.starts_with("etcd") {
        Duration::from_millis(500)
    } else if backend == "dynamodb" {
        // Expiry by the clients' clocks, past the allowed skew; waiters
        // poll (at most a second apart).
        target::DYNAMODB_SKEW + Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    LEASE + Duration::from_millis(500) + store
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dlock-chaos: {error}");
            return std::process::ExitCode::from(70);
        }
    };
    if args.first().map(String::as_str) == Some("worker") {
        let [_, mode, url, log, register, seed, name] = args.as_slice() else {
            eprintln!("dlock-chaos worker: bad arguments");
            return std::process::ExitCode::from(64);
        };
        let Some(mode) = Mode::parse(mode) else {
            eprintln!("dlock-chaos worker: unknown mode {mode:?}");
            return std::process::ExitCode::from(64);
        };
        let worker = worker::WorkerArgs {
            mode,
            url: url.clone(),
            log: PathBuf::from(log),
            register: PathBuf::from(register),
            seed: seed.parse().unwrap_or(0),
            name: name.clone(),
        };
        return match runtime.block_on(worker::run(worker)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("dlock-chaos worker: {error}");
                std::process::ExitCode::from(1)
            }
        };
    }
    let mut seconds = 60u64;
    let mut seed: u64 = rand::random();
    let mut backends: Vec<String> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--seconds" => seconds = rest.next().and_then(|s| s.parse().ok()).unwrap_or(seconds),
            "--seed" => seed = rest.next().and_then(|s| s.parse().ok()).unwrap_or(seed),
            "--backend" => backends.extend(rest.next().cloned()),
            other => {
                eprintln!(
                    "dlock-chaos: unknown argument {other:?}; usage: dlock-chaos [--seconds N] [--backend {}]... [--seed S]",
                    BACKENDS.join("|")
                );
                return std::process::ExitCode::from(64);
            }
        }
    }
    if backends.is_empty() {
        backends = BACKENDS.map(String::from).to_vec();
    }
    let (mut passed, mut failed) = (0, 0);
    for backend in &backends {
        match runtime.block_on(run_backend(backend, Duration::from_secs(seconds), seed)) {
            Ok(0) => passed += 1,
            Ok(_) => failed += 1,
            Err(error) => {
                println!("{backend}: could not run: {error}");
                failed += 1;
            }
        }
    }
    println!("chaos: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}

fn signal(child: &Child, signal: Signal) {
    if let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw)
    {
        let _ = kill_process(pid, signal);
    }
}

/// The worker processes of one run, and where they log.
struct Workers {
    exe: PathBuf,
    url: String,
    socket: PathBuf,
    dir: PathBuf,
    seed: u64,
    spawned: usize,
    /// The `random` workers now running, by name.
    running: Vec<(String, Child)>,
    logs: Vec<PathBuf>,
}

impl Workers {
    /// Starts worker `w<N>` in `mode`.
    fn spawn(&mut self, mode: Mode) -> Result<(String, Child), String> {
        let name = format!("w{}", self.spawned);
        self.spawned += 1;
        let log = self.dir.join(format!("{name}.log"));
        let seed = self
            .seed
            .wrapping_add(u64::try_from(self.spawned).unwrap_or(0));
        let child = Command::new(&self.exe)
            .arg("worker")
            .arg(mode.name())
            .arg(&self.url)
            .arg(&log)
            .arg(&self.socket)
            .arg(seed.to_string())
            .arg(&name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.logs.push(log);
        Ok((name, child))
    }

    fn spawn_random(&mut self) -> Result<(), String> {
        let worker = self.spawn(Mode::Random)?;
        self.running.push(worker);
        Ok(())
    }
}

/// Reads lines from a worker's stdout until `expected`, for at most `wait`.
async fn expect_line(child: &mut Child, expected: &str, wait: Duration) -> bool {
    let Some(stdout) = child.stdout.take() else {
        return false;
    };
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(wait, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == expected {
                return true;
            }
        }
        false
    })
    .await;
    found.unwrap_or(false)
}

/// Waits for a worker to exit; its stderr if it failed.
async fn finish(child: Child, wait: Duration) -> Option<String> {
    match tokio::time::timeout(wait, child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.success() => None,
        Ok(Ok(output)) => Some(describe(output.status, &output.stderr)),
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("did not finish within {} s", wait.as_secs())),
    }
}

fn describe(status: ExitStatus, stderr: &[u8]) -> String {
    format!("{status}: {}", String::from_utf8_lossy(stderr).trim())
}

/// The final phase: after the faults, a holder takes every lock; waiters
/// start asking for them; the holder is killed. Returns when the holder was
/// killed (if it got the locks) and what went wrong.
async fn final_phase(workers: &mut Workers) -> Result<(Option<u64>, Vec<String>), String> {
    let mut problems = Vec::new();
    let (holder_name, mut holder) = workers.spawn(Mode::Hold)?;
    if !expect_line(&mut holder, "held", LIVENESS_WAIT + Duration::from_secs(15)).await {
        let _ = holder.start_kill();
        let error = finish(holder, Duration::from_secs(10)).await;
        problems.push(format!(
            "after the faults, holder {holder_name} asked for every lock for {} s and did not get them: {}",
            LIVENESS_WAIT.as_secs(),
            error.unwrap_or_default()
        ));
        return Ok((None, problems));
    }
    // A waiter that dies in line: its entries must not hold the queue
    // beyond their waiter ttl, which ends before the holder's lease.
    let (doomed_name, mut doomed) = workers.spawn(Mode::Doomed)?;
    if !expect_line(&mut doomed, "queued", Duration::from_secs(40)).await {
        problems.push(format!("waiter {doomed_name} could not line up"));
    }
    let _ = doomed.start_kill();
    let _ = doomed.wait().await;
    let mut waiters = Vec::new();
    for _ in 0..WORKERS {
        let (name, mut waiter) = workers.spawn(Mode::Wait)?;
        if !expect_line(&mut waiter, "ready", Duration::from_secs(40)).await {
            problems.push(format!("waiter {name} could not open its lockers"));
        }
        waiters.push((name, waiter));
    }
    // Every waiter has called lock() by now, or is about to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = now_ns();
    holder.start_kill().map_err(|e| e.to_string())?;
    let _ = holder.wait().await;
    for (name, waiter) in waiters {
        let wait = LIVENESS_WAIT * u32::try_from(KEYS.len()).unwrap_or(1) + Duration::from_secs(20);
        if let Some(error) = finish(waiter, wait).await {
            problems.push(format!("waiter {name} failed: {error}"));
        }
    }
    Ok((Some(killed_at), problems))
}

async fn run_backend(backend: &str, length: Duration, seed: u64) -> Result<usize, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut target = Target::start(backend, dir.path()).await?;
    let register = Register::default();
    let socket = dir.path().join("register.sock");
    register.serve(&socket).map_err(|e| e.to_string())?;
    let mut workers = Workers {
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        url: target.url.clone(),
        socket,
        dir: dir.path().to_owned(),
        seed,
        spawned: 0,
        running: Vec::new(),
        logs: Vec::new(),
    };
    for _ in 0..WORKERS {
        workers.spawn_random()?;
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut excuses: Vec<Excuse> = Vec::new();
    // Each fault with when it began and ended.
    let mut faults: Vec<(&'static str, u64, u64)> = Vec::new();
    let mut worker_errors = Vec::new();
    let stop_at = now_ns() + nanos(length);
    while now_ns() < stop_at {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2000))).await;
        let mut kinds = vec!["pause-worker", "kill-worker"];
        kinds.extend(target.fault_kinds());
        let kind = kinds[rng.random_range(0..kinds.len())];
        let began = now_ns();
        match kind {
            "pause-worker" => {
                let victim = rng.random_range(0..workers.running.len());
                let (name, child) = &workers.running[victim];
                let hold = LEASE + Duration::from_millis(rng.random_range(300..1500));
                let from = now_ns();
                signal(child, Signal::STOP);
                tokio::time::sleep(hold).await;
                signal(child, Signal::CONT);
                excuses.push(Excuse {
                    from,
                    to: now_ns() + nanos(LEASE),
                    client_prefix: format!("{name}/"),
                });
            }
            "kill-worker" => {
                // A holder dies without a word: its leases stay until their
                // ttl runs out, and a new worker takes its place.
                let victim = rng.random_range(0..workers.running.len());
                let (_, mut child) = workers.running.swap_remove(victim);
                let _ = child.start_kill();
                let _ = child.wait().await;
                workers.spawn_random()?;
            }
            _ => {
                if let Some((from, to)) = target.inject(kind, &mut rng).await? {
                    excuses.push(Excuse {
                        from,
                        to,
                        client_prefix: String::new(),
                    });
                }
            }
        }
        faults.push((kind, began, now_ns()));
    }
    // Let everything heal and settle, then watch the quiet period.
    // Clients reconnect (etcd's balancer can take seconds) and the last
    // faulted leases run out; then every id must be granted again.
    let quiet_from = now_ns() + nanos(3 * LEASE);
    tokio::time::sleep(QUIET).await;
    let running = std::mem::take(&mut workers.running);
    for (_, child) in &running {
        signal(child, Signal::TERM);
    }
    for (name, child) in running {
        if let Some(error) = finish(child, Duration::from_secs(30)).await {
            worker_errors.push(format!("worker {name} failed: {error}"));
        }
    }
    let (holder_killed_at, final_problems) = final_phase(&mut workers).await?;
    worker_errors.extend(final_problems);
    // Every wait ended, cancelled or served, and every holder let go or
    // died: no entry may be left in any key's queue once the dead ones'
    // ttls ran out.
    worker_errors.extend(leftover_entries(&target.url).await);

    let events = read_events(&workers.logs)?;
    // A task that blocked its runtime thread stalls the tasks queued behind
    // it too, and the locker's own task: the whole worker process counts as
    // paused meanwhile, as it would with a long GC pause.
    for blocked in events.iter().filter(|e| e["kind"] == "blocked") {
        let client = blocked["w"].as_str().unwrap_or("");
        let process = client
            .split_once('/')
            .map_or(client, |(process, _)| process);
        excuses.push(Excuse {
            from: blocked["from"].as_u64().unwrap_or(0),
            to: blocked["to"].as_u64().unwrap_or(u64::MAX) + nanos(LEASE),
            client_prefix: format!("{process}/"),
        });
    }
    let decisions = register.decisions();
    let phases = Phases {
        quiet_from,
        holder_killed_at,
        outlive_bound: nanos(outlive_bound(backend)),
    };
    let mut report = check::check(&events, &decisions, &excuses, &phases, &KEYS);
    report
        .violations
        .extend(worker_errors.into_iter().map(Violation::new));
    let violations = &report.violations;
    let count = |kinds: &[&str]| {
        events
            .iter()
            .filter(|e| kinds.contains(&e["kind"].as_str().unwrap_or("")))
            .count()
    };
    let grants = count(&["granted"]);
    let attempts = count(&[
        "granted",
        "not-granted",
        "store-error",
        "cancelled",
        "other",
    ]);
    let stale = decisions.iter().filter(|d| !d.accepted).count();
    let mut counted: Vec<(&str, usize)> = Vec::new();
    for (fault, _, _) in &faults {
        match counted.iter_mut().find(|(kind, _)| kind == fault) {
            Some((_, n)) => *n += 1,
            None => counted.push((fault, 1)),
        }
    }
    let counted: Vec<String> = counted
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    let outlived: Vec<String> = report
        .outlived
        .iter()
        .map(|(key, ns)| format!("{key} {} ms", ns / 1_000_000))
        .collect();
    println!(
        "{backend}: {attempts} lock attempts ({} cancelled), {grants} grants, {} register writes ({stale} stale refused), {} lockers closed mid-run, {} warnings, {} locks lost; faults: {}, thread blocks {}; overlaps excused {}; dead holder's locks free after: {}; violations: {}",
        count(&["cancelled"]),
        decisions.len(),
        count(&["closed"]),
        count(&["warned"]),
        count(&["lost"]),
        if counted.is_empty() {
            "none".to_owned()
        } else {
            counted.join(", ")
        },
        count(&["blocked"]),
        report.excused_overlaps,
        if outlived.is_empty() {
            "-".to_owned()
        } else {
            outlived.join(", ")
        },
        violations.len()
    );
    for violation in violations.iter().take(5) {
        println!("  violation: {}", violation.text);
    }
    if let Some((key, from, to)) = violations.iter().find_map(|v| v.slice.clone()) {
        print_slice(&events, &faults, &key, from, to);
    }
    let failed = violations.len();
    if failed > 0 {
        println!(
            "  reproduce with: dlock-chaos --backend {backend} --seed {seed} --seconds {}",
            length.as_secs()
        );
        drop(target);
        let kept = dir.keep();
        println!(
            "  every event and each worker's log (*.trace) are kept in {}",
            kept.display()
        );
    }
    Ok(failed)
}

/// The entries still queued or holding on the run's keys, a lease after the
/// last process let go (the longest a dead entry may live).
async fn leftover_entries(url: &str) -> Vec<String> {
    let options = match dlock::LockerOptions::builder().lease(LEASE).build() {
        Ok(options) => options,
        Err(error) => return vec![error.to_string()],
    };
    let locker = match dlock::open(url, options).await {
        Ok(locker) => locker,
        Err(error) => return vec![format!("could not open the store to inspect it: {error}")],
    };
    let give_up = now_ns() + nanos(LEASE + Duration::from_secs(3));
    let mut left = Vec::new();
    loop {
        left.clear();
        for key in KEYS {
            match locker.inspect(key.id).await {
                Ok(Some(info)) if !info.holders.is_empty() || info.waiting > 0 => {
                    left.push(format!(
                        "{}: {} holder(s) and {} waiting entries left after every process let go",
                        key.id,
                        info.holders.len(),
                        info.waiting
                    ))
                }
                Ok(_) => {}
                Err(error) => left.push(format!("{}: inspect failed: {error}", key.id)),
            }
        }
        if left.is_empty() || now_ns() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = locker.close().await;
    left
}

/// Prints the history around a violation: the lock id's events from a
/// second before to a second after, and the faults of that time.
fn print_slice(
    events: &[serde_json::Value],
    faults: &[(&str, u64, u64)],
    key: &str,
    from: u64,
    to: u64,
) {
    let (from, to) = (from.saturating_sub(1_000_000_000), to + 1_000_000_000);
    println!("  history of {key} from {from} to {to} (ns on the run's monotonic clock):");
    for (kind, began, ended) in faults {
        if *began <= to && from <= *ended + 3_000_000_000 {
            println!("    fault {kind} [{began}, {ended})");
        }
    }
    let mut slice: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["k"] == key || e["kind"] == "blocked")
        .filter(|e| (from..=to).contains(&e["at"].as_u64().unwrap_or(0)))
        .collect();
    slice.sort_by_key(|e| e["at"].as_u64().unwrap_or(0));
    for event in slice.iter().take(80) {
        println!("    {event}");
    }
}

fn read_events(logs: &[PathBuf]) -> Result<Vec<serde_json::Value>, String> {
    let mut events = Vec::new();
    for log in logs {
        let text = match std::fs::read_to_string(Path::new(log)) {
            Ok(text) => text,
            // A worker killed before it opened its log wrote nothing.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error.to_string()),
        };
        for line in text.lines() {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
                events.push(event);
            }
        }
    }
    Ok(events)
}
