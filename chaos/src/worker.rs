//! The worker processes of a run, recording what they see, one JSON line
//! per event written straight to the file (a worker killed with SIGKILL
//! loses nothing it recorded):
//!
//! - `random`: several tasks taking, holding, writing through the fenced
//!   register and releasing locks at random, for the run's length;
//! - `hold`: takes every lock and holds it until it is killed (the dead
//!   holder of the final phase);
//! - `wait`: every task asks for every lock once with a long wait, holds it
//!   briefly and lets it go (the waiters of the final phase);
//! - `doomed`: asks for every lock with a long wait, says `queued`, and
//!   waits in line until it is killed (a waiter that dies in line).
//!
//! Mutexes are taken exclusively, the semaphore by permits, the
//! reader-writer lock mostly as a reader; only exclusive holders write
//! through the fenced register (several permit holders or readers at once
//! are allowed, and their tokens only order their grants).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dlock::{LockError, LockGuard, LockKind, LockStatus, Locker, LockerOptions};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Mutex;

use crate::clock::{nanos, now_ns, ns_of};
use crate::register::RegisterClient;
use crate::{KEYS, KeyKind, LEASE, LIVENESS_WAIT, RunKey, TASKS};

type DynLocker = Arc<dyn Locker>;

/// What a worker process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Random,
    Hold,
    Wait,
    Doomed,
}

impl Mode {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "random" => Some(Self::Random),
            "hold" => Some(Self::Hold),
            "wait" => Some(Self::Wait),
            "doomed" => Some(Self::Doomed),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Hold => "hold",
            Self::Wait => "wait",
            Self::Doomed => "doomed",
        }
    }
}

/// What a worker needs to know.
pub(crate) struct WorkerArgs {
    pub(crate) mode: Mode,
    pub(crate) url: String,
    pub(crate) log: PathBuf,
    pub(crate) register: PathBuf,
    pub(crate) seed: u64,
    /// The worker's name, e.g. `w3` (its clients are `w3/t0`, ...).
    pub(crate) name: String,
}

/// Where one task records its events.
#[derive(Clone)]
struct Recorder {
    file: Arc<std::sync::Mutex<std::fs::File>>,
    client: String,
    /// Events of the final phase's waiters are marked: the liveness checks
    /// look at them.
    final_phase: bool,
}

impl Recorder {
    fn event(&self, key: &str, guard: Option<&LockGuard>, kind: &str) -> serde_json::Value {
        let mut event = json!({
            "at": now_ns(),
            "w": self.client,
            "k": key,
            "lease": guard.map(|g| g.lease_id().to_string()),
            "kind": kind,
        });
        if self.final_phase {
            event["final"] = json!(true);
        }
        event
    }

    fn record(&self, event: &serde_json::Value) {
        // One write per line: a kill between events never tears one.
        let line = format!("{event}\n");
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = file.write_all(line.as_bytes());
    }

    fn note(&self, key: &str, guard: Option<&LockGuard>, kind: &str) {
        self.record(&self.event(key, guard, kind));
    }

    fn granted(&self, key: &str, guard: &LockGuard, called: u64, kind: LockKind) -> (u64, u64) {
        let token = guard.fencing_token().and_then(|t| t.to_u64()).unwrap_or(0);
        let deadline = guard.valid_until().map_or(0, ns_of);
        let mut granted = self.event(key, Some(guard), "granted");
        granted["token"] = json!(token);
        granted["deadline"] = json!(deadline);
        granted["called"] = json!(called);
        let (mode, limit) = match kind {
            LockKind::Permit { permits } => ("s", permits),
            LockKind::Read => ("s", u32::MAX),
            _ => ("x", 1),
        };
        granted["mode"] = json!(mode);
        granted["limit"] = json!(limit);
        self.record(&granted);
        self.watch_warnings(key, guard);
        (token, deadline)
    }

    fn failed(&self, key: &str, error: &LockError, called: u64, wait: Duration) -> &'static str {
        let reason = match error {
            LockError::Taken { .. } | LockError::Timeout { .. } => "not-granted",
            LockError::Store(_) => "store-error",
            LockError::LimitMismatch { .. } => "limit-mismatch",
            _ => "other",
        };
        let mut failed = self.event(key, None, reason);
        failed["called"] = json!(called);
        failed["wait"] = json!(nanos(wait));
        failed["error"] = json!(error.to_string());
        self.record(&failed);
        reason
    }

    /// Records the guard's warnings and its loss, as a holder that
    /// checkpoints on warnings sees them: the check wants a warning before
    /// every loss.
    fn watch_warnings(&self, key: &str, guard: &LockGuard) {
        let Some(mut warnings) = guard.warnings() else {
            return;
        };
        let status = guard.status();
        let recorder = self.clone();
        let (key, lease) = (key.to_owned(), guard.lease_id().to_string());
        tokio::spawn(async move {
            let event = |kind: &str| {
                let mut event = recorder.event(&key, None, kind);
                event["lease"] = json!(lease);
                event
            };
            while warnings.recv().await.is_some() {
                recorder.record(&event("warned"));
            }
            if *status.borrow() == LockStatus::Lost {
                recorder.record(&event("lost"));
            }
        });
    }

    /// Looks at a held lock's deadline as a careful holder does; records a
    /// later deadline, or the expiry. Returns whether the lock is still
    /// valid.
    fn poll(&self, key: &str, guard: &LockGuard, deadline: &mut u64) -> bool {
        let before = now_ns();
        match guard.valid_until() {
            Some(until) => {
                let until = ns_of(until);
                // valid_until answers only for a live lock: a deadline
                // already behind us is a lock counted valid too long.
                if until + 1_000_000 < before {
                    let mut stale = self.event(key, Some(guard), "valid-after-deadline");
                    stale["deadline"] = json!(until);
                    stale["asked"] = json!(before);
                    self.record(&stale);
                }
                if until > *deadline {
                    *deadline = until;
                    let mut renewed = self.event(key, Some(guard), "renewed");
                    renewed["deadline"] = json!(until);
                    self.record(&renewed);
                }
                true
            }
            None => {
                let mut lost = self.event(key, Some(guard), "expired");
                lost["deadline"] = json!(*deadline);
                self.record(&lost);
                false
            }
        }
    }

    /// Writes through the fenced register with `token` and records whether
    /// it was accepted.
    async fn write_through(
        &self,
        register: &Mutex<RegisterClient>,
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
        let mut write = self.event(key, Some(guard), "write");
        write["token"] = json!(token);
        write["accepted"] = json!(accepted);
        self.record(&write);
    }
}

/// Sends the stores' and lockers' logs to `<log>.trace`, stamped on the
/// events' clock, for reading next to the events when a check fails.
fn trace_to_file(log: &std::path::Path) -> Result<(), String> {
    struct Monotonic;
    impl tracing_subscriber::fmt::time::FormatTime for Monotonic {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            write!(w, "{}", now_ns())
        }
    }
    let file = std::fs::File::create(log.with_extension("trace")).map_err(|e| e.to_string())?;
    let filter = std::env::var("DLOCK_CHAOS_TRACE").unwrap_or_else(|_| {
        "warn,lock_core=info,lock_etcd=info,lock_redis=info,lock_postgres=info,lock_sqlite=info"
            .to_owned()
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_timer(Monotonic)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

pub(crate) async fn run(args: WorkerArgs) -> Result<(), String> {
    trace_to_file(&args.log)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|e| e.to_string())?;
    let file = Arc::new(std::sync::Mutex::new(file));
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
    let options = LockerOptions::builder()
        .owner(&args.name)
        .lease(LEASE)
        .build()
        .map_err(|e| e.to_string())?;
    let register = Arc::new(Mutex::new(
        RegisterClient::connect(&args.register)
            .await
            .map_err(|e| e.to_string())?,
    ));
    let tasks = match args.mode {
        Mode::Hold | Mode::Doomed => 1,
        Mode::Random | Mode::Wait => TASKS,
    };
    let mut lockers = Vec::new();
    for _ in 0..tasks {
        lockers.push(open_retrying(&args.url, &options).await?);
    }
    if args.mode == Mode::Wait {
        // The parent kills the holder once every waiter is about to ask.
        println!("ready");
    }
    let mut handles = Vec::new();
    for (task, locker) in lockers.into_iter().enumerate() {
        let recorder = Recorder {
            file: file.clone(),
            client: format!("{}/t{task}", args.name),
            final_phase: args.mode == Mode::Wait,
        };
        let seed = args.seed ^ (u64::try_from(task).unwrap_or(0) << 32);
        let (stop, register) = (stop.clone(), register.clone());
        let (url, options) = (args.url.clone(), options.clone());
        handles.push(tokio::spawn(async move {
            match args.mode {
                Mode::Random => {
                    random_task(locker, &url, &options, recorder, &register, &stop, seed).await;
                    Ok(())
                }
                Mode::Hold => hold_task(locker, recorder, &register).await,
                Mode::Wait => {
                    wait_task(locker, recorder, &register, task).await;
                    Ok(())
                }
                Mode::Doomed => {
                    doomed_task(locker).await;
                    Ok(())
                }
            }
        }));
    }
    for handle in handles {
        handle.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Opens a locker, retrying for a while: a worker started while the
/// nemesis is at work may find the store unreachable.
async fn open_retrying(url: &str, options: &LockerOptions) -> Result<DynLocker, String> {
    let give_up = now_ns() + nanos(Duration::from_secs(30));
    loop {
        match dlock::open(url, options.clone()).await {
            Ok(locker) => return Ok(locker),
            Err(error) if now_ns() > give_up => return Err(error.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn random_task(
    mut locker: DynLocker,
    url: &str,
    options: &LockerOptions,
    recorder: Recorder,
    register: &Mutex<RegisterClient>,
    stop: &AtomicBool,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::SeqCst) {
        // Now and then the whole locker goes: close releases every lock it
        // holds, and a new one takes its place.
        if rng.random_range(0..50) == 0 {
            let _ = locker.close().await;
            recorder.note("", None, "closed");
            match dlock::open(url, options.clone()).await {
                Ok(reopened) => locker = reopened,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let run_key = KEYS[rng.random_range(0..KEYS.len())];
        let key = run_key.id;
        let kind = match run_key.kind {
            KeyKind::ReadWrite if rng.random_range(0..3) == 0 => LockKind::Write,
            _ => kind_of(run_key, 0),
        };
        let exclusive = kind_is_exclusive(kind);
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
        let attempt = locker.acquire(key, kind, wait);
        let result = match cancel_after {
            Some(cut) => match tokio::time::timeout(cut, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    let mut cancelled = recorder.event(key, None, "cancelled");
                    cancelled["called"] = json!(called);
                    recorder.record(&cancelled);
                    continue;
                }
            },
            None => attempt.await,
        };
        let guard = match result {
            Ok(guard) => guard,
            Err(error) => {
                if recorder.failed(key, &error, called, wait) != "not-granted" {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let (token, mut deadline) = recorder.granted(key, &guard, called, kind);
        if exclusive {
            recorder.write_through(register, key, &guard, token).await;
        }

        // A careless holder never looks at its lock while working and
        // writes at the end whatever happened: only fencing stops it when it
        // was paused past its lease.
        let careless = rng.random_range(0..10) < 3;
        // Now and then a holder blocks its runtime thread (a long
        // synchronous call) for longer than its lease.
        if rng.random_range(0..25) == 0 {
            let mut blocked = recorder.event(key, Some(&guard), "blocked");
            blocked["from"] = json!(now_ns());
            std::thread::sleep(LEASE + Duration::from_millis(300));
            blocked["to"] = json!(now_ns());
            recorder.record(&blocked);
        }
        let mut expired = false;
        for _ in 0..rng.random_range(0..4) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
            if !careless && !recorder.poll(key, &guard, &mut deadline) {
                expired = true;
                break;
            }
        }
        if !expired {
            // A last write before letting go: a holder paused while holding
            // writes here late, with its old token.
            if careless && guard.is_expired() {
                let mut lost = recorder.event(key, Some(&guard), "expired");
                lost["deadline"] = json!(deadline);
                lost["careless"] = json!(true);
                recorder.record(&lost);
            }
            if exclusive {
                recorder.write_through(register, key, &guard, token).await;
            }
            recorder.note(key, Some(&guard), "releasing");
        }
        if rng.random_range(0..10) < 7 {
            let _ = guard.unlock().await;
        } else {
            drop(guard);
        }
    }
    let _ = locker.close().await;
}

/// Takes every lock (waiting as long as it takes), says `held`, and keeps
/// them, looking at their deadlines, until the process is killed.
async fn hold_task(
    locker: DynLocker,
    recorder: Recorder,
    register: &Mutex<RegisterClient>,
) -> Result<(), String> {
    let mut held = Vec::new();
    for run_key in KEYS {
        // Every permit of the semaphore, the write side of the other.
        let (kind, count) = match run_key.kind {
            KeyKind::Semaphore(permits) => (kind_of(run_key, 0), permits),
            KeyKind::Mutex | KeyKind::ReadWrite => (LockKind::Exclusive, 1),
        };
        let key = run_key.id;
        for _ in 0..count {
            let called = now_ns();
            let guard = match locker.acquire(key, kind, LIVENESS_WAIT).await {
                Ok(guard) => guard,
                Err(error) => {
                    recorder.failed(key, &error, called, LIVENESS_WAIT);
                    return Err(format!("the holder could not take {key}: {error}"));
                }
            };
            let (token, deadline) = recorder.granted(key, &guard, called, kind);
            if kind_is_exclusive(kind) {
                recorder.write_through(register, key, &guard, token).await;
            }
            held.push((key, guard, deadline));
        }
    }
    println!("held");
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (key, guard, deadline) in &mut held {
            recorder.poll(key, guard, deadline);
        }
    }
}

/// Asks for every lock once, starting at a different one per task, holds
/// each briefly and releases it.
async fn wait_task(
    locker: DynLocker,
    recorder: Recorder,
    register: &Mutex<RegisterClient>,
    task: usize,
) {
    for i in 0..KEYS.len() {
        let run_key = KEYS[(task + i) % KEYS.len()];
        let (key, kind) = (run_key.id, kind_of(run_key, task));
        let called = now_ns();
        match locker.acquire(key, kind, LIVENESS_WAIT).await {
            Ok(guard) => {
                let (token, mut deadline) = recorder.granted(key, &guard, called, kind);
                if kind_is_exclusive(kind) {
                    recorder.write_through(register, key, &guard, token).await;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
                if recorder.poll(key, &guard, &mut deadline) {
                    recorder.note(key, Some(&guard), "releasing");
                }
                let _ = guard.unlock().await;
            }
            Err(error) => {
                recorder.failed(key, &error, called, LIVENESS_WAIT);
            }
        }
    }
    let _ = locker.close().await;
}

/// Lines up for every lock, says `queued`, and waits until killed.
async fn doomed_task(locker: DynLocker) {
    let waits = KEYS.map(|run_key| {
        let locker = locker.clone();
        tokio::spawn(async move {
            let _ = locker
                .acquire(run_key.id, kind_of(run_key, 0), LIVENESS_WAIT * 10)
                .await;
        })
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("queued");
    for wait in waits {
        let _ = wait.await;
    }
}

/// How a task takes `key`: a mutex exclusively, a permit of the semaphore,
/// and the reader-writer lock as a reader or (for odd `task`s) a writer.
fn kind_of(key: RunKey, task: usize) -> LockKind {
    match key.kind {
        KeyKind::Mutex => LockKind::Exclusive,
        KeyKind::Semaphore(permits) => LockKind::Permit { permits },
        KeyKind::ReadWrite if task % 2 == 1 => LockKind::Write,
        KeyKind::ReadWrite => LockKind::Read,
    }
}

fn kind_is_exclusive(kind: LockKind) -> bool {
    matches!(kind, LockKind::Exclusive | LockKind::Write)
}
