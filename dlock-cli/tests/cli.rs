//! End-to-end tests of the `dlock` program, through the built binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use conformance_tests::harness::{FakeClock, or_skip};

/// A scratch directory with its own default lock file.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `dlock` with the default backend in this scratch directory.
    fn dlock(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dlock"));
        command
            .env("XDG_STATE_HOME", self.dir.path())
            .env_remove("DLOCK_URL")
            .stdin(Stdio::null());
        command
    }

    fn output(&self, args: &[&str]) -> Output {
        self.dlock().args(args).output().unwrap()
    }

    fn status_json(&self, id: &str) -> serde_json::Value {
        let output = self.output(&["status", "--json", id]);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn wait_until_held(&self, id: &str) {
        wait_for(Duration::from_secs(10), || {
            self.status_json(id)["held"] == true
        });
    }
}

fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < give_up, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let give_up = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            panic!("dlock did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn log_run(log: &Path) -> String {
    format!(
        "echo \"start $DLOCK_FENCING_TOKEN\" >> {log}; sleep 0.3; echo \"end $DLOCK_FENCING_TOKEN\" >> {log}",
        log = log.display()
    )
}

#[test]
fn runs_of_one_id_never_overlap_and_tokens_increase() {
    runs_take_turns(None);
}

/// Three runs of one id at once, on `backend` (default: the SQLite file):
/// the commands never overlap and see increasing tokens.
fn runs_take_turns(backend: Option<&str>) {
    let scratch = Scratch::new();
    let log = scratch.path("log");
    let runs: Vec<Child> = (0..3)
        .map(|_| {
            let mut command = scratch.dlock();
            if let Some(backend) = backend {
                command.env("DLOCK_URL", backend);
            }
            command
                .args(["run", "--wait", "30s", "report", "--", "sh", "-c"])
                .arg(log_run(&log))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut run in runs {
        assert!(wait_with_limit(&mut run, Duration::from_secs(30)).success());
    }
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 6, "{log}");
    let mut last = 0u64;
    for pair in lines.chunks(2) {
        let start = pair[0].strip_prefix("start ").expect("a start");
        assert_eq!(
            pair[1],
            format!("end {start}"),
            "two runs overlapped:\n{log}"
        );
        let token: u64 = start.parse().unwrap();
        assert!(token > last, "token {token} after {last}");
        last = token;
    }
}

#[test]
fn no_wait_against_a_held_lock_exits_75_naming_the_holder() {
    let scratch = Scratch::new();
    let mut holder = scratch
        .dlock()
        .args([
            "run",
            "--owner",
            "nightly-holder",
            "job",
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    scratch.wait_until_held("job");
    let output = scratch.output(&["run", "--wait", "0", "job", "--", "true"]);
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    let message = stderr(&output);
    assert!(message.contains("held by nightly-holder"), "{message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    let waited = scratch.output(&["run", "--wait", "300ms", "job", "--", "true"]);
    assert_eq!(waited.status.code(), Some(75));
    assert!(
        stderr(&waited).contains("gave up after"),
        "{}",
        stderr(&waited)
    );

    terminate(&holder);
    let status = wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "sleep died of the forwarded SIGTERM"
    );
    assert_eq!(scratch.status_json("job")["held"], false);
}

#[test]
fn the_commands_exit_code_and_death_by_signal_pass_through() {
    let scratch = Scratch::new();
    let output = scratch.output(&["run", "a", "--", "sh", "-c", "exit 7"]);
    assert_eq!(output.status.code(), Some(7));
    let output = scratch.output(&["run", "a", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(output.status.code(), Some(128 + 9));
    let output = scratch.output(&[
        "run",
        "a",
        "--",
        "sh",
        "-c",
        "echo $DLOCK_LOCK_ID $DLOCK_OWNER $DLOCK_FENCING_TOKEN",
    ]);
    assert!(output.status.success());
    let seen = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(fields[0], "a");
    assert!(fields[1].starts_with("dlock-"), "{seen}");
    assert_eq!(fields[2], "3", "the third grant of lock a");
    let output = scratch.output(&["run", "a", "--", "/no/such/command"]);
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(
        scratch.status_json("a")["held"],
        false,
        "released after a failed start"
    );
}

#[test]
fn sigterm_to_dlock_reaches_the_command_and_releases_the_lock() {
    let scratch = Scratch::new();
    let marker = scratch.path("got-term");
    let ready = scratch.path("trap-set");
    let script = term_trapping_script(&marker, &ready);
    let mut run = scratch
        .dlock()
        .args(["run", "service", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || ready.exists());
    terminate(&run);
    let status = wait_with_limit(&mut run, Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "term");
    assert_eq!(scratch.status_json("service")["held"], false);
}

#[test]
fn sigterm_while_waiting_ends_dlock_without_running_the_command() {
    let scratch = Scratch::new();
    let ready = scratch.path("holder-ready");
    let mut holder = scratch
        .dlock()
        .args([
            "run",
            "job",
            "--",
            "sh",
            "-c",
            &format!("touch {}; exec sleep 30", ready.display()),
        ])
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || ready.exists());
    let before = scratch.status_json("job");
    let ran = scratch.path("waiter-ran");
    let mut waiter = scratch
        .dlock()
        .args(["run", "--wait", "60s", "job", "--", "touch"])
        .arg(&ran)
        .spawn()
        .unwrap();
    // dlock catches TERM from before it asks for the lock; until then the
    // default action would kill it, so wait for the handler.
    wait_for(Duration::from_secs(10), || catches_sigterm(waiter.id()));
    terminate(&waiter);
    let status = wait_with_limit(&mut waiter, Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "ended by dlock, not by the signal"
    );
    assert!(!ran.exists(), "the command must not run");
    let status = scratch.status_json("job");
    assert_eq!(status["held"], true);
    assert_eq!(
        status["holder"], before["holder"],
        "the waiter was never granted the lock"
    );
    assert_eq!(status["waiting"], 0, "the waiter left the line: {status}");
    terminate(&holder);
    let _ = wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(scratch.status_json("job")["held"], false);
}

#[test]
fn a_host_clock_stepped_forward_ends_the_sqlite_lease_and_the_command_is_told() {
    let scratch = Scratch::new();
    // Every dlock here follows one fake wall clock: stepping it is a step of
    // the host's clock, which SQLite's expiry follows.
    let Some(clock) = or_skip(FakeClock::new(scratch.dir.path())) else {
        return;
    };
    let marker = scratch.path("got-term");
    let ready = scratch.path("trap-set");
    let script = term_trapping_script(&marker, &ready);
    let mut holder = scratch
        .dlock()
        .envs(clock.environment())
        .args(["run", "--lease", "6s", "job", "--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || ready.exists());

    clock.set_offset(3600).unwrap();
    let next = scratch
        .dlock()
        .envs(clock.environment())
        .args(["run", "job", "--", "sh", "-c", "echo $DLOCK_FENCING_TOKEN"])
        .output()
        .unwrap();
    assert!(
        next.status.success(),
        "the lease ended with the step: {next:?}"
    );
    assert_eq!(String::from_utf8_lossy(&next.stdout).trim(), "2");
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder's command was still running while another took the lock"
    );

    // The holder's next renewal (every 2 s) finds the lease gone.
    let status = wait_with_limit(&mut holder, Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "the command got SIGTERM");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "term");
    let mut message = String::new();
    std::io::Read::read_to_string(&mut holder.stderr.take().unwrap(), &mut message).unwrap();
    assert!(message.contains("is expiring"), "{message}");
}

/// A shell script that runs until SIGTERM, then writes "term" to `marker`
/// and exits 3. It creates `ready` once its trap is set: a TERM before that
/// would end the shell by default.
fn term_trapping_script(marker: &Path, ready: &Path) -> String {
    format!(
        "trap 'echo term > {}; exit 3' TERM; touch {}; while :; do sleep 0.05; done",
        marker.display(),
        ready.display()
    )
}

/// SIGTERM to a child process.
fn terminate(child: &Child) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

/// Whether the process `pid` has a handler for SIGTERM (Linux: bit 14 of
/// `SigCgt` in /proc/PID/status).
fn catches_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << 14) != 0)
}

#[test]
fn bad_arguments_and_urls_exit_64_with_a_clear_message() {
    let scratch = Scratch::new();
    let output = scratch.output(&["run", "--backend", "mongodb://db/x", "a", "--", "true"]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("unknown backend scheme \"mongodb\""),
        "{}",
        stderr(&output)
    );
    let output = scratch.output(&["run", "--backend", "sqlite:", "a", "--", "true"]);
    assert_eq!(output.status.code(), Some(64));
    let output = scratch.output(&["run", "a"]);
    assert_eq!(output.status.code(), Some(64), "a missing command");
    let output = scratch.output(&["run", "--lease", "soon", "a", "--", "true"]);
    assert_eq!(output.status.code(), Some(64));
    let output = scratch.output(&["run", "--lease", "0", "a", "--", "true"]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("lease must be longer than zero"),
        "{}",
        stderr(&output)
    );
    let output = scratch.output(&["status", "--backend", "memory:", "--json", "x"]);
    assert!(output.status.success());
}

#[test]
fn prefixes_keep_locks_apart() {
    let scratch = Scratch::new();
    let ready = scratch.path("holder-ready");
    let mut holder = scratch
        .dlock()
        .args(["run", "--prefix", "billing/", "job", "--", "sh", "-c"])
        .arg(format!("touch {}; exec sleep 30", ready.display()))
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || ready.exists());
    let output = scratch.output(&["status", "--prefix", "billing/", "--json", "job"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["held"], true, "{output:?}");
    assert_eq!(
        scratch.status_json("job")["held"],
        false,
        "no prefix, another lock"
    );
    let other = scratch.output(&["run", "--prefix", "reports/", "job", "--", "true"]);
    assert!(other.status.success(), "{other:?}");
    let same = scratch.output(&["run", "--prefix", "billing/", "job", "--", "true"]);
    assert_eq!(same.status.code(), Some(75), "{same:?}");

    terminate(&holder);
    let _ = wait_with_limit(&mut holder, Duration::from_secs(10));
}

#[test]
fn timing_flags_the_locker_refuses_exit_64_with_its_message() {
    let scratch = Scratch::new();
    for (flags, message) in [
        (
            &["--lease", "10s", "--heartbeat", "10s"][..],
            "heartbeat 10s must be shorter than the lease 10s",
        ),
        (
            &["--lease", "10s", "--heartbeat", "3s", "--warn-after", "2s"][..],
            "warn_after 2s must be longer than the heartbeat 3s",
        ),
        (
            &["--lease", "10s", "--warn-after", "10s"][..],
            "warn_after 10s must be shorter than the usable lease",
        ),
    ] {
        let output = scratch.output(&[&["run"][..], flags, &["a", "--", "true"]].concat());
        assert_eq!(output.status.code(), Some(64), "{flags:?}: {output:?}");
        let text = stderr(&output);
        assert!(text.contains(message), "{flags:?}: {text}");
        assert_eq!(text.lines().count(), 1, "one line: {text}");
    }
    let output = scratch.output(&[
        "run",
        "--lease",
        "9s",
        "--heartbeat",
        "1s",
        "--warn-after",
        "2s",
        "a",
        "--",
        "true",
    ]);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn a_table_of_its_own_on_sqlite() {
    let scratch = Scratch::new();
    let output = scratch.output(&["run", "--table", "nightly", "job", "--", "true"]);
    assert!(output.status.success(), "{output:?}");
    let output = scratch.output(&["status", "--table", "nightly", "--json", "job"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["last_token"], "1", "{output:?}");
    assert_eq!(
        scratch.status_json("job")["last_token"],
        serde_json::Value::Null,
        "the default table never saw the lock"
    );
    let output = scratch.output(&["status", "--table", "no such", "job"]);
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(
        stderr(&output).contains("is not an identifier"),
        "{}",
        stderr(&output)
    );
    let output = scratch.output(&["status", "--backend", "memory:", "--table", "locks", "job"]);
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(
        stderr(&output).contains("the memory backend keeps no tables"),
        "{}",
        stderr(&output)
    );
}

mod redis {
    use super::*;
    use conformance_tests::harness::RedisServer;

    #[test]
    fn runs_take_turns_on_redis_and_an_unreachable_one_exits_69() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let Some(server) = or_skip(runtime.block_on(RedisServer::start())) else {
            return;
        };
        runs_take_turns(Some(server.url()));
        let scratch = Scratch::new();
        let output = scratch.output(&[
            "run",
            "--backend",
            "redis://:pw@127.0.0.1:1",
            "a",
            "--",
            "true",
        ]);
        assert_eq!(output.status.code(), Some(69), "{output:?}");
        assert!(!stderr(&output).contains("pw@"), "{}", stderr(&output));
    }
}

mod etcd {
    use super::*;
    use conformance_tests::harness::EtcdServer;

    #[test]
    fn runs_take_turns_on_etcd() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let Some(server) = or_skip(runtime.block_on(EtcdServer::start())) else {
            return;
        };
        let hosts: Vec<String> = server
            .endpoints()
            .iter()
            .map(|endpoint| endpoint.trim_start_matches("http://").to_owned())
            .collect();
        runs_take_turns(Some(&format!("etcd://{}", hosts.join(","))));
    }
}

mod dynamodb {
    use super::*;
    use conformance_tests::harness::shared_moto;

    #[test]
    fn runs_take_turns_on_dynamodb_and_status_reads_the_table() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let Some(server) = or_skip(runtime.block_on(shared_moto())) else {
            return;
        };
        let url = format!(
            "dynamodb://AKIDCLI:cli-secret@dlock_cli_runs?region=us-east-1&endpoint={}&create_table=true",
            server.endpoint()
        );
        runs_take_turns(Some(&url));
        let scratch = Scratch::new();
        let output = scratch.output(&["status", "--json", "--backend", &url, "report"]);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(!text.contains("cli-secret"), "{text}");
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status["held"], false, "{status}");
        assert!(status["last_token"].is_string(), "{status}");
    }
}

mod postgres {
    use super::*;
    use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
    use conformance_tests::harness::shared_postgres;

    #[test]
    fn an_unreachable_backend_exits_69_without_showing_the_password() {
        let scratch = Scratch::new();
        let output = scratch.output(&[
            "run",
            "--backend",
            "postgres://app:hunter2@127.0.0.1:1/db",
            "a",
            "--",
            "true",
        ]);
        assert_eq!(output.status.code(), Some(69), "{output:?}");
        assert!(!stderr(&output).contains("hunter2"), "{}", stderr(&output));
    }

    #[test]
    fn warn_after_says_when_the_command_hears_the_lock_is_expiring() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let Some(server) = or_skip(runtime.block_on(shared_postgres())) else {
            return;
        };
        let proxy = runtime.block_on(FaultProxy::start(server.addr())).unwrap();
        let scratch = Scratch::new();
        let marker = scratch.path("got-term");
        let ready = scratch.path("trap-set");
        let script = term_trapping_script(&marker, &ready);
        // By default a 30 s lease warns 20 s after the last renewal.
        let mut run = scratch
            .dlock()
            .args(["run", "--backend", &server.url_via(proxy.listen_addr())])
            .args(["--table", "dlock_cli_flags", "--lease", "30s"])
            .args(["--heartbeat", "1s", "--warn-after", "3s"])
            .args(["job", "--", "sh", "-c", &script])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(10), || ready.exists());
        let status = |table: &[&str]| {
            let output = scratch.output(
                &[
                    &["status", "--backend", server.url()][..],
                    table,
                    &["--json", "job"],
                ]
                .concat(),
            );
            serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
        };
        assert_eq!(status(&["--table", "dlock_cli_flags"])["held"], true);
        assert_eq!(status(&[])["held"], false, "not in the default table");

        let cut = Instant::now();
        proxy.set_mode(FaultMode::BlackHole);
        let exit = wait_with_limit(&mut run, Duration::from_secs(15));
        assert_eq!(exit.code(), Some(3), "the command got SIGTERM");
        assert!(
            cut.elapsed() < Duration::from_secs(8),
            "warned {:?} after the cut",
            cut.elapsed()
        );
        let mut message = String::new();
        std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut message).unwrap();
        assert!(message.contains("is expiring"), "{message}");
        proxy.set_mode(FaultMode::PassThrough);
    }

    #[test]
    fn a_lost_lock_kills_the_command() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let Some(server) = or_skip(runtime.block_on(shared_postgres())) else {
            return;
        };
        let proxy = runtime.block_on(FaultProxy::start(server.addr())).unwrap();
        let scratch = Scratch::new();
        let url = server.url_via(proxy.listen_addr());
        // The command ignores SIGTERM: only the SIGKILL after the grace ends it.
        let mut run = scratch
            .dlock()
            .args([
                "run",
                "--backend",
                &url,
                "--lease",
                "2s",
                "--kill-grace",
                "300ms",
            ])
            .args(["stubborn", "--", "sh", "-c", "trap '' TERM; exec sleep 60"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(10), || {
            let output =
                scratch.output(&["status", "--backend", server.url(), "--json", "stubborn"]);
            serde_json::from_slice::<serde_json::Value>(&output.stdout)
                .is_ok_and(|status| status["held"] == true)
        });
        proxy.set_mode(FaultMode::BlackHole);
        let status = wait_with_limit(&mut run, Duration::from_secs(15));
        assert_eq!(status.code(), Some(128 + 9), "killed by SIGKILL");
        let mut message = String::new();
        std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut message).unwrap();
        assert!(message.contains("is expiring"), "{message}");
        assert!(message.contains("was lost"), "{message}");
        proxy.set_mode(FaultMode::PassThrough);
        drop(proxy);
    }
}

/// Starts `dlock run ARGS -- sh -c 'touch STARTED; until [ -e RELEASE ]; do sleep 0.05; done'`:
/// a command that says it started and holds until told.
fn holding_run(scratch: &Scratch, args: &[&str], name: &str) -> (Child, PathBuf, PathBuf) {
    let started = scratch.path(&format!("{name}.started"));
    let release = scratch.path(&format!("{name}.release"));
    let script = format!(
        "echo \"$DLOCK_KIND\" > {started}; until [ -e {release} ]; do sleep 0.05; done",
        started = started.display(),
        release = release.display()
    );
    let child = scratch
        .dlock()
        .arg("run")
        .args(args)
        .args(["--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    (child, started, release)
}

#[test]
fn permits_let_at_most_n_commands_run_at_once() {
    let scratch = Scratch::new();
    let (mut a, a_started, a_release) =
        holding_run(&scratch, &["--permits", "2", "--owner", "a", "slots"], "a");
    let (mut b, b_started, b_release) =
        holding_run(&scratch, &["--permits", "2", "--owner", "b", "slots"], "b");
    wait_for(Duration::from_secs(10), || {
        a_started.exists() && b_started.exists()
    });
    assert_eq!(
        std::fs::read_to_string(&a_started).unwrap().trim(),
        "permit"
    );
    let status = scratch.status_json("slots");
    assert_eq!(
        status["holders"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    assert_eq!(status["limit"], 2);

    // No permit free: one attempt exits 75, naming the holders.
    let third = scratch.output(&["run", "--permits", "2", "slots", "--", "true"]);
    assert_eq!(third.status.code(), Some(75), "{}", stderr(&third));
    // Another number of permits on the same id is a usage error.
    let mismatch = scratch.output(&["run", "--permits", "3", "slots", "--", "true"]);
    assert_eq!(mismatch.status.code(), Some(64), "{}", stderr(&mismatch));
    assert!(
        stderr(&mismatch).contains("2 permits"),
        "{}",
        stderr(&mismatch)
    );

    // A waiting run gets the first permit given back.
    let mut c = scratch
        .dlock()
        .args([
            "run",
            "--permits",
            "2",
            "--wait",
            "20s",
            "slots",
            "--",
            "true",
        ])
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        scratch.status_json("slots")["waiting"] == 1
    });
    std::fs::write(&a_release, "").unwrap();
    assert!(wait_with_limit(&mut a, Duration::from_secs(10)).success());
    assert!(wait_with_limit(&mut c, Duration::from_secs(20)).success());
    std::fs::write(&b_release, "").unwrap();
    assert!(wait_with_limit(&mut b, Duration::from_secs(10)).success());
}

#[test]
fn shared_runs_go_together_and_an_exclusive_run_waits_for_them() {
    let scratch = Scratch::new();
    let (mut r1, r1_started, r1_release) = holding_run(&scratch, &["--shared", "db"], "r1");
    let (mut r2, r2_started, r2_release) = holding_run(&scratch, &["--shared", "db"], "r2");
    wait_for(Duration::from_secs(10), || {
        r1_started.exists() && r2_started.exists()
    });
    assert_eq!(
        std::fs::read_to_string(&r1_started).unwrap().trim(),
        "shared"
    );
    let text = scratch.output(&["status", "db"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("held shared by 2"),
        "{text:?}"
    );

    let busy = scratch.output(&["run", "db", "--", "true"]);
    assert_eq!(busy.status.code(), Some(75), "{}", stderr(&busy));
    // The writer lines up; a reader coming after it waits too.
    let (mut writer, writer_started, writer_release) =
        holding_run(&scratch, &["--wait", "20s", "db"], "w");
    wait_for(Duration::from_secs(10), || {
        scratch.status_json("db")["waiting"] == 1
    });
    let late = scratch.output(&["run", "--shared", "db", "--", "true"]);
    assert_eq!(
        late.status.code(),
        Some(75),
        "a reader overtook the writer: {}",
        stderr(&late)
    );

    std::fs::write(&r1_release, "").unwrap();
    std::fs::write(&r2_release, "").unwrap();
    assert!(wait_with_limit(&mut r1, Duration::from_secs(10)).success());
    assert!(wait_with_limit(&mut r2, Duration::from_secs(10)).success());
    wait_for(Duration::from_secs(20), || writer_started.exists());
    assert_eq!(
        std::fs::read_to_string(&writer_started).unwrap().trim(),
        "exclusive"
    );
    let during = scratch.output(&["run", "--shared", "db", "--", "true"]);
    assert_eq!(
        during.status.code(),
        Some(75),
        "a reader beside the writer: {}",
        stderr(&during)
    );
    std::fs::write(&writer_release, "").unwrap();
    assert!(wait_with_limit(&mut writer, Duration::from_secs(10)).success());
    let after = scratch.output(&["run", "--shared", "db", "--", "true"]);
    assert!(after.status.success(), "{}", stderr(&after));
}
