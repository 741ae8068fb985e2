//! Running server processes and helper commands on behalf of the harness.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tracing::{debug, warn};

use super::{HarnessError, POLL_INTERVAL, redact_url};

/// How much of a log's end is shown in errors.
const LOG_TAIL_BYTES: u64 = 6 * 1024;
const LOG_TAIL_LINES: usize = 40;

/// A server process the harness started: it can be killed, restarted with
/// the same command line, paused and resumed. Dropping it kills it.
///
/// Signals go to the process and all of its descendants, because some
/// servers (PostgreSQL) serve connections from child processes that put
/// themselves in their own process groups.
pub(super) struct ServerProcess {
    server: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    working_dir: PathBuf,
    log_path: PathBuf,
    run_as: Option<(u32, u32)>,
    environment: Vec<(OsString, OsString)>,
    child: Option<Child>,
    watchdog: Option<Child>,
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServerProcess")
            .field("program", &self.program)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("log_path", &self.log_path)
            .finish_non_exhaustive()
    }
}

impl ServerProcess {
    /// Describes a process; nothing runs until [`ServerProcess::spawn`].
    pub(super) fn new(
        server: &'static str,
        program: PathBuf,
        args: Vec<OsString>,
        working_dir: &Path,
        log_path: PathBuf,
    ) -> Self {
        ServerProcess {
            server,
            program,
            args,
            working_dir: working_dir.to_owned(),
            log_path,
            run_as: None,
            environment: Vec::new(),
            child: None,
            watchdog: None,
        }
    }

    /// Runs the process with this user and group id (when the harness runs
    /// as root and the server refuses to).
    pub(super) fn with_user(mut self, uid: u32, gid: u32) -> Self {
        self.run_as = Some((uid, gid));
        self
    }

    /// Adds these variables to the process's environment.
    pub(super) fn with_environment(mut self, variables: Vec<(OsString, OsString)>) -> Self {
        self.environment.extend(variables);
        self
    }

    /// Starts the process, appending its output to the log file.
    pub(super) fn spawn(&mut self) -> Result<(), HarnessError> {
        let server = self.server;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|error| {
                HarnessError::io(
                    server,
                    format!("opening {}", self.log_path.display()),
                    error,
                )
            })?;
        // A marker makes a restart's output easy to tell from the first run's.
        let marker = format!(
            "--- dlock harness: starting {} ---\n",
            self.program.display()
        );
        log.write_all(marker.as_bytes())
            .map_err(|error| HarnessError::io(server, "writing the log", error))?;
        let stderr_log = log
            .try_clone()
            .map_err(|error| HarnessError::io(server, "duplicating the log handle", error))?;

        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.environment.iter().map(|(name, value)| (name, value)))
            .current_dir(&self.working_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr_log)
            // Its own process group keeps terminal signals (Ctrl-C on the
            // test run) from reaching the server before the harness can
            // clean up.
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().map_err(|error| {
            HarnessError::io(
                server,
                format!("spawning {}", self.program.display()),
                error,
            )
        })?;
        debug!(server, pid = child.id(), program = %self.program.display(), "server process started");
        self.watchdog = spawn_watchdog(server, child.id(), scratch_dir(&self.working_dir));
        self.child = Some(child);
        Ok(())
    }

    /// Whether the process has been spawned and has not exited.
    pub(super) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// `Some(status)` once the spawned process has exited.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Fails with the end of the log if the process is not running.
    pub(super) fn ensure_running(&mut self, during: &str) -> Result<(), HarnessError> {
        if self.child.is_none() {
            return Err(self.start_failed(format!("the process is not running ({during})")));
        }
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(self.start_failed(format!("exited with {status} {during}"))),
        }
    }

    /// A `StartFailed` error carrying the end of this process's log.
    pub(super) fn start_failed(&self, reason: String) -> HarnessError {
        HarnessError::StartFailed {
            server: self.server,
            reason,
            log_tail: log_tail(&self.log_path),
        }
    }

    /// Kills the process and all its descendants with `SIGKILL` and waits for
    /// the process. Does nothing if it is not running.
    pub(super) fn kill(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            // Stop it before the server's pid can be reused.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Only signal a process not yet reaped: once reaped, its pid may
        // belong to an unrelated process.
        let still_running = matches!(child.try_wait(), Ok(None));
        if let Some(pid) = pid_of(&child).filter(|_| still_running) {
            // Freeze it first so that it cannot fork children the kill would
            // miss; SIGKILL works on a stopped process.
            send(pid, Signal::STOP);
            let descendants = descendants_of(pid);
            send(pid, Signal::KILL);
            for descendant in descendants {
                send(descendant, Signal::KILL);
            }
        }
        match child.wait() {
            Ok(status) => debug!(server = self.server, %status, "server process killed"),
            Err(error) => warn!(server = self.server, %error, "waiting for a killed server failed"),
        }
    }

    /// Stops the process and its descendants with `SIGSTOP`.
    pub(super) fn pause(&mut self) -> Result<(), HarnessError> {
        let pid = self.running_pid("pause")?;
        // The parent first, so that it forks nothing unstopped meanwhile.
        send(pid, Signal::STOP);
        for descendant in descendants_of(pid) {
            send(descendant, Signal::STOP);
        }
        Ok(())
    }

    /// Continues the process and its descendants with `SIGCONT`.
    pub(super) fn resume(&mut self) -> Result<(), HarnessError> {
        let pid = self.running_pid("resume")?;
        for descendant in descendants_of(pid) {
            send(descendant, Signal::CONT);
        }
        send(pid, Signal::CONT);
        Ok(())
    }

    fn running_pid(&mut self, operation: &'static str) -> Result<Pid, HarnessError> {
        let server = self.server;
        let not_running = || HarnessError::Unsupported {
            server,
            operation,
            reason: "the server is not running (killed, or exited)".to_owned(),
        };
        if !self.is_running() {
            return Err(not_running());
        }
        self.child.as_ref().and_then(pid_of).ok_or_else(not_running)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A shell that kills the server when this process exits, however it
/// exits: it waits to read from a pipe only this process holds open, and
/// the pipe closes with the process. Servers kept in statics (which are
/// never dropped) and servers of a killed test run die with it, and their
/// scratch directory (`dir`) goes too: an etcd data directory alone is
/// hundreds of megabytes.
fn spawn_watchdog(server: &'static str, pid: u32, dir: Option<&Path>) -> Option<Child> {
    let spawned = Command::new("sh")
        .args([
            "-c",
            "read _ignored; kill -KILL \"$1\" 2>/dev/null; if [ -n \"$2\" ]; then sleep 1; rm -rf -- \"$2\"; fi",
            "dlock-watchdog",
        ])
        .arg(pid.to_string())
        .arg(dir.map(Path::as_os_str).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(watchdog) => Some(watchdog),
        Err(error) => {
            warn!(server, %error, "no watchdog: the server outlives a killed test run");
            None
        }
    }
}

/// The scratch directory the harness made (`dlock-*` in the temporary
/// directory) that `dir` is or lies in, which the watchdog may remove. A
/// cluster's nodes work one level below their cluster's directory, and the
/// whole of it goes.
fn scratch_dir(dir: &Path) -> Option<&Path> {
    let temp = std::env::temp_dir();
    dir.ancestors().find(|candidate| {
        candidate.parent() == Some(temp.as_path())
            && candidate
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("dlock-"))
    })
}

fn pid_of(child: &Child) -> Option<Pid> {
    Pid::from_raw(i32::try_from(child.id()).ok()?)
}

fn send(pid: Pid, signal: Signal) {
    // The process may have exited already; that is not worth more than a
    // debug line.
    if let Err(error) = kill_process(pid, signal) {
        debug!(pid = pid.as_raw_pid(), ?signal, %error, "sending a signal failed");
    }
}

/// Every process below `root` in the process tree, read from `/proc`.
fn descendants_of(root: Pid) -> Vec<Pid> {
    let mut children_by_parent: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(parent) = parent_pid_from_stat(&stat) {
            children_by_parent.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root.as_raw_pid()];
    while let Some(parent) = queue.pop() {
        for &child in children_by_parent.get(&parent).into_iter().flatten() {
            if let Some(pid) = Pid::from_raw(child) {
                found.push(pid);
                queue.push(child);
            }
        }
    }
    found
}

/// The parent pid in a `/proc/<pid>/stat` line: `pid (comm) state ppid ...`.
/// The command name may contain spaces and parentheses, so parse after the
/// last `)`.
fn parent_pid_from_stat(stat: &str) -> Option<i32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// The last lines of a log file, for error messages.
pub(super) fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        let start = length.saturating_sub(LOG_TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let first = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[first..].join("\n")
        }
        Err(error) => format!("(the log {} could not be read: {error})", path.display()),
    }
}

/// Polls `probe` until it returns true, failing with the log tail as soon as
/// any of `processes` exits, or when `timeout` has passed.
pub(super) async fn wait_until<Probe, ProbeFuture>(
    processes: &mut [&mut ServerProcess],
    what: &str,
    timeout: Duration,
    mut probe: Probe,
) -> Result<(), HarnessError>
where
    Probe: FnMut() -> ProbeFuture,
    ProbeFuture: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        for process in processes.iter_mut() {
            process.ensure_running(&format!("while waiting for {what}"))?;
        }
        if probe().await {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            let reason = format!("{what} did not happen within {timeout:?}");
            let mut error_source = processes.iter();
            return Err(match error_source.next() {
                Some(process) => process.start_failed(reason),
                None => HarnessError::StartFailed {
                    server: "server",
                    reason,
                    log_tail: String::new(),
                },
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The command line of `command` for messages, with URL passwords redacted.
fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| redact_url(&part.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a helper program to completion within `timeout` and returns its
/// standard output; a non-zero exit is an error carrying its output.
pub(super) async fn run_command(
    server: &'static str,
    command: Command,
    timeout: Duration,
) -> Result<String, HarnessError> {
    let description = describe(&command);
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            return Err(HarnessError::io(
                server,
                format!("running `{description}`"),
                error,
            ));
        }
        Err(_elapsed) => {
            return Err(HarnessError::CommandFailed {
                server,
                command: description,
                output: format!("no exit within {timeout:?}; killed"),
            });
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(HarnessError::CommandFailed {
            server,
            command: description,
            output: format!(
                "{}\n{}{}",
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// Like [`run_command`] but blocking, for use in `Drop`: discards output and
/// kills the program if it has not exited within `timeout`.
pub(super) fn run_command_blocking(
    server: &'static str,
    mut command: Command,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let description = describe(&command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| HarnessError::io(server, format!("running `{description}`"), error))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(HarnessError::CommandFailed {
                    server,
                    command: description,
                    output: status.to_string(),
                });
            }
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(POLL_INTERVAL),
            Ok(None) => {
                // Best effort: the error below is what matters.
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::CommandFailed {
                    server,
                    command: description,
                    output: format!("no exit within {timeout:?}; killed"),
                });
            }
            Err(error) => {
                return Err(HarnessError::io(
                    server,
                    format!("waiting for `{description}`"),
                    error,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_are_the_harness_own_and_cover_a_cluster_node() {
        let temp = std::env::temp_dir();
        let cluster = temp.join("dlock-redis-cluster-x1");
        assert_eq!(scratch_dir(&cluster), Some(cluster.as_path()));
        assert_eq!(scratch_dir(&cluster.join("node0")), Some(cluster.as_path()));
        assert_eq!(scratch_dir(&temp.join("someone-else")), None);
        assert_eq!(scratch_dir(&temp.join("someone-else/dlock-x")), None);
        assert_eq!(scratch_dir(&temp), None);
        assert_eq!(scratch_dir(Path::new("/var/lib/dlock-x")), None);
    }

    #[test]
    fn parses_parent_pid_even_with_odd_command_names() {
        assert_eq!(parent_pid_from_stat("42 (postgres) S 7 42 42 0"), Some(7));
        assert_eq!(parent_pid_from_stat("42 (a) b (c)) R 9 1 1"), Some(9));
        assert_eq!(parent_pid_from_stat("garbage"), None);
    }

    #[tokio::test]
    async fn a_server_that_exits_fails_with_its_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = ServerProcess::new(
            "test",
            PathBuf::from("/bin/sh"),
            vec!["-c".into(), "echo 'port already in use' >&2; exit 3".into()],
            dir.path(),
            dir.path().join("server.log"),
        );
        process.spawn().unwrap();
        let error = wait_until(
            &mut [&mut process],
            "readiness",
            Duration::from_secs(10),
            || async { false },
        )
        .await
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains("port already in use"), "{message}");
    }

    #[tokio::test]
    async fn kill_then_restart_runs_the_same_command_again() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("server.log");
        let starts_logged = || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            log.matches("started\n").count()
        };
        let mut process = ServerProcess::new(
            "test",
            PathBuf::from("/bin/sh"),
            vec!["-c".into(), "echo started; exec sleep 60".into()],
            dir.path(),
            log_path.clone(),
        );
        process.spawn().unwrap();
        wait_until(
            &mut [&mut process],
            "first start",
            Duration::from_secs(10),
            || std::future::ready(starts_logged() == 1),
        )
        .await
        .unwrap();
        process.pause().unwrap();
        process.resume().unwrap();
        process.kill();
        assert!(!process.is_running());
        assert!(process.pause().is_err());
        process.spawn().unwrap();
        wait_until(
            &mut [&mut process],
            "second start",
            Duration::from_secs(10),
            || std::future::ready(starts_logged() == 2),
        )
        .await
        .unwrap();
    }
}
