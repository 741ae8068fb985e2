//! `dlock-chaos`: randomized fault runs against every backend, with a
//! history checker.
//!
//! ```text
//! dlock-chaos [--seconds N] [--backend sqlite|postgres|redis|etcd]... [--seed S]
//! ```
//!
//! For each backend: a throwaway server behind a fault proxy, worker
//! processes taking, holding, writing through a fenced register and
//! releasing locks at random (with cancelled waits and dropped guards),
//! and a nemesis injecting faults at random: black-holed, reset and slowed
//! connections, server kill and restart, and SIGSTOP of a worker for longer
//! than its lease. Then a quiet period, and the checks of `check.rs`. Prints
//! per backend the operations, the faults and `violations: N` (with the
//! first few and the seed that reproduces the run); exits 1 on violations.
#![forbid(unsafe_code)]

mod check;
mod clock;
mod register;
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{EtcdServer, PostgresServer, RedisServer};
use rand::{Rng, SeedableRng};
use rustix::process::{Pid, Signal, kill_process};

use crate::check::Excuse;
use crate::clock::{nanos, now_ns};
use crate::register::Register;

/// The lock ids every worker contends for.
pub(crate) const KEYS: [&str; 2] = ["chaos-a", "chaos-b"];
/// The lease of every locker (etcd's minimum is 2 s).
pub(crate) const LEASE: Duration = Duration::from_secs(2);
/// Tasks per worker process.
pub(crate) const TASKS: usize = 3;
/// Worker processes per backend.
const WORKERS: usize = 3;
/// How long the run goes on after the last fault.
const QUIET: Duration = Duration::from_secs(12);

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
        let [_, url, log, register, seed, index] = args.as_slice() else {
            eprintln!("dlock-chaos worker: bad arguments");
            return std::process::ExitCode::from(64);
        };
        let worker = worker::WorkerArgs {
            url: url.clone(),
            log: PathBuf::from(log),
            register: PathBuf::from(register),
            seed: seed.parse().unwrap_or(0),
            index: index.parse().unwrap_or(0),
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
                    "dlock-chaos: unknown argument {other:?}; usage: dlock-chaos [--seconds N] [--backend sqlite|postgres|redis|etcd]... [--seed S]"
                );
                return std::process::ExitCode::from(64);
            }
        }
    }
    if backends.is_empty() {
        backends = ["sqlite", "postgres", "redis", "etcd"]
            .map(String::from)
            .to_vec();
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

/// The server under test, when there is one to hurt.
enum Server {
    None,
    Postgres(PostgresServer),
    Redis(RedisServer),
    Etcd(EtcdServer),
}

impl Server {
    fn kill(&mut self) -> Result<(), String> {
        match self {
            Server::None => Ok(()),
            Server::Postgres(s) => s.kill().map_err(|e| e.to_string()),
            Server::Redis(s) => s.kill().map_err(|e| e.to_string()),
            Server::Etcd(s) => s.kill().map_err(|e| e.to_string()),
        }
    }

    async fn restart(&mut self) -> Result<(), String> {
        match self {
            Server::None => Ok(()),
            Server::Postgres(s) => s.restart().await.map_err(|e| e.to_string()),
            Server::Redis(s) => s.restart().await.map_err(|e| e.to_string()),
            Server::Etcd(s) => s.restart().await.map_err(|e| e.to_string()),
        }
    }
}

fn signal(child: &Child, signal: Signal) {
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

async fn run_backend(backend: &str, length: Duration, seed: u64) -> Result<usize, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (mut server, proxy, url) = match backend {
        "sqlite" => (
            Server::None,
            None,
            format!("sqlite:{}", dir.path().join("locks.db").display()),
        ),
        "postgres" => {
            let server = PostgresServer::start_local()
                .await
                .map_err(|e| e.to_string())?;
            let proxy = FaultProxy::start(server.addr())
                .await
                .map_err(|e| e.to_string())?;
            let url = server.url_via(proxy.listen_addr());
            (Server::Postgres(server), Some(proxy), url)
        }
        "redis" => {
            let server = RedisServer::start().await.map_err(|e| e.to_string())?;
            let proxy = FaultProxy::start(server.addr())
                .await
                .map_err(|e| e.to_string())?;
            let url = server.url_via(proxy.listen_addr());
            (Server::Redis(server), Some(proxy), url)
        }
        "etcd" => {
            let server = EtcdServer::start().await.map_err(|e| e.to_string())?;
            let addr = server.addr().map_err(|e| e.to_string())?;
            let proxy = FaultProxy::start(addr).await.map_err(|e| e.to_string())?;
            let url = format!("etcd://{}", proxy.listen_addr());
            (Server::Etcd(server), Some(proxy), url)
        }
        other => return Err(format!("unknown backend {other:?}")),
    };
    let register = Register::default();
    let socket = dir.path().join("register.sock");
    register.serve(&socket).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let logs: Vec<PathBuf> = (0..WORKERS)
        .map(|i| dir.path().join(format!("worker-{i}.log")))
        .collect();
    let mut workers = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let worker = Command::new(&exe)
            .arg("worker")
            .arg(&url)
            .arg(log)
            .arg(&socket)
            .arg(
                seed.wrapping_add(u64::try_from(i).unwrap_or(0) + 1)
                    .to_string(),
            )
            .arg(i.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        workers.push(worker);
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut excuses: Vec<Excuse> = Vec::new();
    let mut faults: Vec<&'static str> = Vec::new();
    let stop_at = now_ns() + nanos(length);
    while now_ns() < stop_at {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2000))).await;
        let mut kinds = vec!["pause"];
        if proxy.is_some() {
            kinds.extend(["black-hole", "reset", "latency", "restart"]);
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        faults.push(kind);
        match kind {
            "pause" => {
                let victim = rng.random_range(0..workers.len());
                let hold = LEASE + Duration::from_millis(rng.random_range(300..1500));
                let from = now_ns();
                signal(&workers[victim], Signal::STOP);
                tokio::time::sleep(hold).await;
                signal(&workers[victim], Signal::CONT);
                excuses.push(Excuse {
                    from,
                    to: now_ns() + nanos(LEASE),
                    client_prefix: format!("w{victim}/"),
                });
            }
            "black-hole" | "reset" | "latency" => {
                let Some(proxy) = &proxy else { continue };
                let (mode, hold) = match kind {
                    "black-hole" => (
                        FaultMode::BlackHole,
                        Duration::from_millis(rng.random_range(500..4000)),
                    ),
                    "reset" => (FaultMode::Reset, Duration::from_millis(200)),
                    _ => (
                        FaultMode::Latency(Duration::from_millis(rng.random_range(50..800))),
                        Duration::from_secs(2),
                    ),
                };
                proxy.set_mode(mode);
                tokio::time::sleep(hold).await;
                proxy.set_mode(FaultMode::PassThrough);
            }
            _ => {
                let from = now_ns();
                server.kill()?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
                server.restart().await?;
                if matches!(server, Server::Redis(_)) {
                    // Without persistence the restart lost every lock:
                    // holders learn it at their next renewal. Fencing is
                    // the defence, not exclusion.
                    excuses.push(Excuse {
                        from,
                        to: now_ns() + nanos(LEASE),
                        client_prefix: String::new(),
                    });
                }
            }
        }
    }
    // Let everything heal and settle, then watch the quiet period.
    // Clients reconnect (etcd's balancer can take seconds) and the last
    // faulted leases run out; then every id must be granted again.
    let quiet_from = now_ns() + nanos(3 * LEASE);
    tokio::time::sleep(QUIET).await;
    for worker in &workers {
        signal(worker, Signal::TERM);
    }
    let mut worker_errors = Vec::new();
    for worker in workers {
        let output = tokio::task::spawn_blocking(move || worker.wait_with_output())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            worker_errors.push(String::from_utf8_lossy(&output.stderr).into_owned());
        }
    }
    let events = read_events(&logs)?;
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
    let mut violations = check::check(&events, &decisions, &excuses, quiet_from, &KEYS);
    for error in worker_errors {
        violations.push(format!("a worker failed: {}", error.trim()));
    }
    let grants = events.iter().filter(|e| e["kind"] == "granted").count();
    let attempts = grants
        + events
            .iter()
            .filter(|e| {
                matches!(
                    e["kind"].as_str(),
                    Some("not-granted" | "store-error" | "cancelled" | "other")
                )
            })
            .count();
    let stale = decisions.iter().filter(|d| !d.accepted).count();
    let blocked = events.iter().filter(|e| e["kind"] == "blocked").count();
    let closed = events.iter().filter(|e| e["kind"] == "closed").count();
    let cancelled = events.iter().filter(|e| e["kind"] == "cancelled").count();
    let mut counted: Vec<(&str, usize)> = Vec::new();
    for fault in &faults {
        match counted.iter_mut().find(|(kind, _)| kind == fault) {
            Some((_, n)) => *n += 1,
            None => counted.push((fault, 1)),
        }
    }
    let counted: Vec<String> = counted
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    println!(
        "{backend}: {attempts} lock attempts ({cancelled} cancelled), {grants} grants, {} register writes ({stale} stale refused), {closed} lockers closed mid-run; faults: {}, thread blocks {blocked}; violations: {}",
        decisions.len(),
        if counted.is_empty() {
            "none".to_owned()
        } else {
            counted.join(", ")
        },
        violations.len()
    );
    for violation in violations.iter().take(5) {
        println!("  violation: {violation}");
    }
    if !violations.is_empty() {
        println!(
            "  reproduce with: dlock-chaos --backend {backend} --seed {seed} --seconds {}",
            length.as_secs()
        );
    }
    drop(proxy);
    Ok(violations.len())
}

fn read_events(logs: &[PathBuf]) -> Result<Vec<serde_json::Value>, String> {
    let mut events = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(Path::new(log)).map_err(|e| e.to_string())?;
        for line in text.lines() {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
                events.push(event);
            }
        }
    }
    Ok(events)
}
