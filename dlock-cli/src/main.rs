//! `dlock`: run a command under a distributed lock.
//!
//! ```text
//! dlock run [--backend URL] [--table NAME] [--prefix STR] [--lease DUR] [--heartbeat DUR]
//!           [--warn-after DUR] [--wait DUR] [--kill-grace DUR] [--owner NAME]
//!           [--permits N | --shared] ID -- COMMAND [ARGS...]
//! dlock status [--backend URL] [--table NAME] [--prefix STR] [--json] ID
//! ```
//!
//! Exit codes: the command's own (128 + signal when a signal ended it, or
//! when SIGINT, SIGTERM or SIGHUP reached dlock before it started); 75
//! when the lock could not be had in time; 64 for a bad argument, option
//! or URL; 69 when the backend is unreachable or refuses the credentials;
//! 127 when the command cannot be started. No password of the backend URL
//! is ever printed.
#![forbid(unsafe_code)]

mod status;

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dlock::{
    LockError, LockGuard, LockKind, Locker, LockerOptions, LockerOptionsBuilder, OpenError, Opener,
};
use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

/// Bad arguments or URL (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// The backend cannot be reached (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// Internal failure (EX_SOFTWARE).
const EXIT_SOFTWARE: u8 = 70;
/// The lock was not had in time (EX_TEMPFAIL): try again later.
const EXIT_NOT_LOCKED: u8 = 75;
/// The command could not be started, as shells say.
const EXIT_CANNOT_RUN: u8 = 127;

#[derive(Parser)]
#[command(
    name = "dlock",
    version,
    about = "Run a command under a leased, fenced distributed lock"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take the lock ID, run COMMAND while renewing it, release it when the
    /// command exits. The command sees DLOCK_LOCK_ID, DLOCK_OWNER and
    /// DLOCK_FENCING_TOKEN; it gets SIGTERM when the lock starts expiring
    /// and SIGKILL --kill-grace after the lock is lost.
    Run(RunArgs),
    /// Show who holds the lock ID (every holder of a semaphore or of a
    /// shared lock), for how long, how many wait, and its last fencing
    /// token.
    Status(StatusArgs),
}

/// Where the locks are: the backend, its table, and the key prefix.
#[derive(Args)]
struct BackendArg {
    /// Backend URL: sqlite:PATH, postgres://..., redis://...,
    /// redis+cluster://..., etcd://..., memory:. Default: a SQLite file in
    /// the user's state directory. Passwords in it are never printed.
    #[arg(long, env = "DLOCK_URL", hide_env_values = true, value_name = "URL")]
    backend: Option<String>,
    /// The table holding the locks, on PostgreSQL (optionally
    /// schema-qualified: ops.locks) and SQLite; created if missing.
    /// Default: dlock_leases.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// A prefix put before the lock id to form the stored key: programs
    /// using different prefixes never contend for a lock. Default: none.
    #[arg(
        long,
        value_name = "STR",
        default_value = "",
        hide_default_value = true
    )]
    prefix: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    backend: BackendArg,
    /// Lease time, renewed while the command runs.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    lease: Duration,
    /// How often the lease is renewed; shorter than the lease. Default: a
    /// third of the lease.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    heartbeat: Option<Duration>,
    /// How long after the last good renewal the lock counts as expiring and
    /// the command gets SIGTERM; between the heartbeat and the lease.
    /// Default: 10s before the lease ends when that leaves room, else
    /// halfway between the heartbeat and the end of the lease.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    warn_after: Option<Duration>,
    /// How long to wait for the lock; 0 makes one attempt.
    #[arg(long, default_value = "0", value_parser = parse_duration, value_name = "DUR")]
    wait: Duration,
    /// Time between losing the lock and SIGKILL of the command.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DUR")]
    kill_grace: Duration,
    /// Owner name stored with the lock. Default: dlock-HOST-PID.
    #[arg(long)]
    owner: Option<String>,
    /// Take one of N permits of a semaphore on ID: at most N commands run
    /// at a time (every run on ID must give the same N).
    #[arg(long, value_name = "N", conflicts_with = "shared", value_parser = clap::value_parser!(u32).range(1..u32::MAX as i64))]
    permits: Option<u32>,
    /// Take ID shared, as a reader: shared runs go together, a run without
    /// --shared (or --permits) is exclusive and waits for them, and keeps
    /// later readers waiting meanwhile.
    #[arg(long)]
    shared: bool,
    /// The lock id.
    id: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

impl RunArgs {
    /// The kind of lock the flags ask for.
    fn kind(&self) -> LockKind {
        match (self.permits, self.shared) {
            (Some(permits), _) => LockKind::Permit { permits },
            (None, true) => LockKind::Read,
            (None, false) => LockKind::Exclusive,
        }
    }

    /// `exclusive`, `shared` or `permit`, for the command's environment.
    fn kind_name(&self) -> &'static str {
        match self.kind() {
            LockKind::Permit { .. } => "permit",
            LockKind::Read => "shared",
            _ => "exclusive",
        }
    }
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    backend: BackendArg,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The lock id.
    id: String,
}

/// Durations in humantime form (`30s`, `2m`, `1h 30m`), or `0`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|error| format!("{error} (examples: 30s, 2m, 1h)"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dlock: cannot start: {error}");
            return ExitCode::from(EXIT_SOFTWARE);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Status(args) => status(args).await,
        }
    });
    ExitCode::from(code)
}

/// The backend URL: the flag, `DLOCK_URL`, or the state-directory default.
fn backend_url(arg: &BackendArg) -> Result<String, u8> {
    if let Some(url) = &arg.backend {
        return Ok(url.clone());
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")));
    match state {
        Some(dir) => Ok(format!("sqlite:{}", dir.join("dlock/locks.db").display())),
        None => {
            eprintln!("dlock: no --backend, DLOCK_URL or HOME to find the default lock file");
            Err(EXIT_USAGE)
        }
    }
}

fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!("dlock-{host}-{}", std::process::id())
}

/// Opens the locker of `backend` with `options`; connecting waits at most
/// the options' store timeout.
async fn open(backend: &BackendArg, options: LockerOptions) -> Result<Arc<dyn Locker>, u8> {
    let url = backend_url(backend)?;
    let mut opener = Opener::new(url);
    if let Some(table) = &backend.table {
        opener = opener.table(table);
    }
    opener.open(options).await.map_err(|error| {
        eprintln!("dlock: {error}");
        match error {
            OpenError::Store { .. } => EXIT_UNAVAILABLE,
            _ => EXIT_USAGE,
        }
    })
}

/// Options from the flags; a combination the builder refuses is a usage
/// error, reported with the builder's message.
fn options(builder: LockerOptionsBuilder) -> Result<LockerOptions, u8> {
    builder.build().map_err(|error| {
        eprintln!("dlock: {error}");
        EXIT_USAGE
    })
}

async fn run(args: RunArgs) -> u8 {
    match run_inner(args).await {
        Ok(code) | Err(code) => code,
    }
}

async fn run_inner(args: RunArgs) -> Result<u8, u8> {
    let owner = args.owner.clone().unwrap_or_else(default_owner);
    let mut builder = LockerOptions::builder()
        .owner(&owner)
        .prefix(&args.backend.prefix)
        .lease(args.lease);
    if let Some(heartbeat) = args.heartbeat {
        builder = builder.heartbeat(heartbeat);
    }
    if let Some(warn_after) = args.warn_after {
        builder = builder.warn_after(warn_after);
    }
    let options = options(builder)?;
    // Listening starts before anything is asked of the backend: a signal
    // that arrives before the command runs then ends dlock cleanly, its lock
    // released, instead of killing it with the lock held for a whole lease.
    let mut signals = Signals::listen().map_err(|error| {
        eprintln!("dlock: cannot listen for signals: {error}");
        EXIT_SOFTWARE
    })?;
    let locker = tokio::select! {
        locker = open(&args.backend, options) => locker?,
        signal = signals.recv() => return Err(exit_code_of_signal(signal)),
    };
    let guard = tokio::select! {
        guard = acquire(&*locker, &args.id, args.kind(), args.wait) => guard,
        signal = signals.recv() => {
            if std::io::stderr().is_terminal() {
                // Clears the waiting line.
                eprint!("\r\x1b[K");
            }
            // The cancelled attempt releases whatever it was granted; close
            // waits for that release.
            let _ = locker.close().await;
            return Err(exit_code_of_signal(signal));
        }
    };
    let guard = match guard {
        Ok(guard) => guard,
        Err(code) => {
            let _ = locker.close().await;
            return Err(code);
        }
    };
    if let Some(signal) = signals.pending() {
        let _ = guard.unlock().await;
        let _ = locker.close().await;
        return Err(exit_code_of_signal(signal));
    }
    let token = guard
        .fencing_token()
        .map(ToString::to_string)
        .unwrap_or_default();

    let mut command = tokio::process::Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .env("DLOCK_LOCK_ID", &args.id)
        .env("DLOCK_OWNER", &owner)
        .env("DLOCK_FENCING_TOKEN", &token)
        .env("DLOCK_KIND", args.kind_name());
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!(
                "dlock: cannot run {}: {error}",
                args.command[0].to_string_lossy()
            );
            let _ = guard.unlock().await;
            let _ = locker.close().await;
            return Err(EXIT_CANNOT_RUN);
        }
    };
    let status = supervise(child, &mut signals, &guard, &args.id, args.kill_grace).await;
    if let Err(error) = guard.unlock().await {
        eprintln!(
            "dlock: releasing {:?} failed (it expires by itself): {error}",
            args.id
        );
    }
    let _ = locker.close().await;
    Ok(match status {
        Ok(status) => exit_code_of(status),
        Err(error) => {
            eprintln!("dlock: waiting for the command failed: {error}");
            EXIT_SOFTWARE
        }
    })
}

/// The shell's convention for a process ended by `signal`: 128 + its number.
fn exit_code_of_signal(signal: Signal) -> u8 {
    u8::try_from(128 + signal.as_raw()).unwrap_or(EXIT_SOFTWARE)
}

/// The signals dlock passes on to its command (SIGINT, SIGTERM, SIGHUP).
/// Tokio records a signal from the moment a stream exists, so none is lost
/// between the streams' creation and the first `recv`.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::INT,
            _ = self.terminate.recv() => Signal::TERM,
            _ = self.hangup.recv() => Signal::HUP,
        }
    }

    /// A signal that has already arrived, if any.
    fn pending(&mut self) -> Option<Signal> {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        [
            (&mut self.interrupt, Signal::INT),
            (&mut self.terminate, Signal::TERM),
            (&mut self.hangup, Signal::HUP),
        ]
        .into_iter()
        .find_map(|(stream, signal)| stream.poll_recv(&mut context).is_ready().then_some(signal))
    }
}

/// The shell's convention: the exit code, or 128 + the signal that ended
/// the process.
fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(EXIT_SOFTWARE),
        (None, Some(signal)) => u8::try_from(128 + (signal & 0x7f)).unwrap_or(EXIT_SOFTWARE),
        (None, None) => EXIT_SOFTWARE,
    }
}

/// Takes the lock, waiting up to `wait` and showing the holder on a
/// terminal meanwhile.
async fn acquire(
    locker: &dyn Locker,
    id: &str,
    kind: LockKind,
    wait: Duration,
) -> Result<LockGuard, u8> {
    let result = if wait.is_zero() {
        locker.try_acquire(id, kind).await
    } else {
        let attempt = locker.acquire(id, kind, wait);
        tokio::pin!(attempt);
        let show = std::io::stderr().is_terminal();
        let start = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut shown = false;
        let result = loop {
            tokio::select! {
                result = &mut attempt => break result,
                _ = ticker.tick(), if show => {
                    let holders = match locker.inspect(id).await {
                        Ok(Some(info)) if !info.holders.is_empty() => status::owners(&info),
                        _ => "someone".to_owned(),
                    };
                    eprint!(
                        "\r\x1b[Kdlock: waiting for {id:?}, held by {holders} ({}s)",
                        start.elapsed().as_secs()
                    );
                    shown = true;
                }
            }
        };
        if shown {
            eprint!("\r\x1b[K");
        }
        result
    };
    result.map_err(|error| match error {
        LockError::Taken {
            holder,
            retry_after,
            ..
        } => {
            let left = retry_after
                .map(|left| format!(" for another {}", humantime::format_duration(round(left))))
                .unwrap_or_default();
            eprintln!(
                "dlock: lock {id:?} is held by {}{left}",
                holder.as_deref().unwrap_or("someone")
            );
            EXIT_NOT_LOCKED
        }
        LockError::Timeout { holder, waited, .. } => {
            eprintln!(
                "dlock: lock {id:?} is held by {}; gave up after {}",
                holder.as_deref().unwrap_or("someone"),
                humantime::format_duration(round(waited))
            );
            EXIT_NOT_LOCKED
        }
        LockError::Store(error) => {
            eprintln!("dlock: backend unavailable: {error}");
            EXIT_UNAVAILABLE
        }
        other @ (LockError::InvalidId { .. }
        | LockError::InvalidConfig(_)
        | LockError::LimitMismatch { .. }) => {
            eprintln!("dlock: {other}");
            EXIT_USAGE
        }
        other => {
            eprintln!("dlock: {other}");
            EXIT_SOFTWARE
        }
    })
}

/// To the millisecond, for messages.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Waits for the command, forwarding SIGINT and SIGTERM to it, sending it
/// SIGTERM when the lock starts expiring and SIGKILL `grace` after the lock
/// is lost.
async fn supervise(
    mut child: tokio::process::Child,
    signals: &mut Signals,
    guard: &LockGuard,
    id: &str,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(Pid::from_raw);
    let send = |signal: Signal| {
        if let Some(pid) = pid {
            let _ = kill_process(pid, signal);
        }
    };
    let mut warned = false;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        // In order: a lock lost without warning time reports Expiring and
        // Lost at once, and the expiring message should come first.
        tokio::select! {
            biased;
            status = child.wait() => return status,
            signal = signals.recv() => send(signal),
            _ = guard.expiring(), if !warned => {
                warned = true;
                eprintln!("dlock: lock {id:?} is expiring (renewals are failing): sending SIGTERM to the command");
                send(Signal::TERM);
            }
            _ = guard.lost(), if kill_at.is_none() && !killed => {
                eprintln!(
                    "dlock: lock {id:?} was lost: SIGKILL to the command in {}",
                    humantime::format_duration(grace)
                );
                if !warned {
                    warned = true;
                    send(Signal::TERM);
                }
                kill_at = Some(Instant::now() + grace);
            }
            () = sleep_until_some(kill_at), if kill_at.is_some() => {
                kill_at = None;
                killed = true;
                send(Signal::KILL);
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn status(args: StatusArgs) -> u8 {
    let locker = match options(LockerOptions::builder().prefix(&args.backend.prefix)) {
        Ok(options) => open(&args.backend, options).await,
        Err(code) => Err(code),
    };
    let locker = match locker {
        Ok(locker) => locker,
        Err(code) => return code,
    };
    let info = match locker.inspect(&args.id).await {
        Ok(info) => info,
        Err(LockError::Store(error)) => {
            eprintln!("dlock: backend unavailable: {error}");
            return EXIT_UNAVAILABLE;
        }
        Err(error) => {
            eprintln!("dlock: {error}");
            return EXIT_USAGE;
        }
    };
    if args.json {
        println!("{}", status::json(&args.id, info.as_ref()));
    } else {
        println!("{}", status::text(&args.id, info.as_ref()));
    }
    let _ = locker.close().await;
    0
}
