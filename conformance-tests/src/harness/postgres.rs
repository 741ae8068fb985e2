//! A fresh PostgreSQL database for each test server handle: on a server the
//! environment provides, or on a throwaway cluster the harness starts.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use tracing::{debug, warn};

use super::clock::FakeClock;
use super::process::{ServerProcess, run_command, run_command_blocking, wait_until};
use super::{
    HarnessError, SecretUrl, env_override, find_in_path, is_executable, redact_url,
    require_program, resolve_url, url_with_addr,
};

const SERVER: &str = "postgres";
const URL_VAR: &str = "DLOCK_TEST_POSTGRES_URL";
/// Tried when `DLOCK_TEST_POSTGRES_URL` is unset: a distribution's default
/// cluster with local trust authentication.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_PORT: u16 = 5432;
/// Where Debian and Ubuntu install the server binaries, one directory per
/// major version.
const DEBIAN_VERSIONS_DIR: &str = "/usr/lib/postgresql";
/// The account the server runs as when the harness runs as root (PostgreSQL
/// refuses to run as root).
const SERVER_ACCOUNT: &str = "postgres";

const CONNECT_TIMEOUT_SECS: &str = "3";
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const DROP_DATABASE_TIMEOUT: Duration = Duration::from_secs(15);

/// Distinguishes databases created by one process.
static DATABASE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A PostgreSQL database for one test run.
///
/// [`start`](PostgresServer::start) creates a fresh, uniquely named database
/// on the server named by `DLOCK_TEST_POSTGRES_URL` (a URL of the
/// `postgres://` form, for a role allowed to create databases), else on a
/// server at `127.0.0.1:5432` reachable as `postgres` without a password;
/// dropping the handle drops that database. When neither is reachable it
/// starts its own cluster like [`start_local`](PostgresServer::start_local).
///
/// Kill, restart, pause and resume work only on a cluster the harness
/// started; on a shared server they return [`HarnessError::Unsupported`].
#[derive(Debug)]
pub struct PostgresServer {
    url: SecretUrl,
    addr: SocketAddr,
    database: String,
    psql: PathBuf,
    kind: ServerKind,
    /// The server's own wall clock, on a cluster started with one.
    clock: Option<FakeClock>,
}

#[derive(Debug)]
enum ServerKind {
    /// A database created on a server someone else runs.
    Shared { admin_url: SecretUrl },
    /// A cluster the harness started; `process` is declared before `_dir`
    /// so the server dies before its data directory is removed.
    Local {
        process: Box<ServerProcess>,
        _dir: TempDir,
    },
}

impl PostgresServer {
    /// Provides a fresh database: on the configured or default server when
    /// one is reachable, else on a cluster of its own.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unavailable`] if `psql` is missing, if
    /// `DLOCK_TEST_POSTGRES_URL` is set but unusable, or if no server is
    /// reachable and none can be started; otherwise as
    /// [`start_local`](Self::start_local).
    pub async fn start() -> Result<PostgresServer, HarnessError> {
        let psql = require_program(SERVER, "psql", "the postgresql-client package")?;
        if let Some(admin_url) = env_override(URL_VAR) {
            return Self::on_shared_server(psql, admin_url).await;
        }
        match Self::on_shared_server(psql, DEFAULT_ADMIN_URL.to_owned()).await {
            Ok(server) => Ok(server),
            Err(error) => {
                debug!(%error, "no usable default PostgreSQL server; starting one");
                Self::start_local().await
            }
        }
    }

    /// Starts a throwaway cluster of its own (`initdb`, then `postgres`) on a
    /// free port, whatever servers exist, so that it can be killed, restarted
    /// and paused. Runs the server as the `postgres` account when the harness
    /// runs as root. The URL points at its `postgres` database.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unavailable`] if no server binaries are installed (or,
    /// as root, there is no `postgres` account); [`HarnessError::CommandFailed`]
    /// if `initdb` fails; [`HarnessError::StartFailed`], with the end of the
    /// server's log, if it does not come up.
    pub async fn start_local() -> Result<PostgresServer, HarnessError> {
        Self::start_local_cluster(false).await
    }

    /// Like [`start_local`](Self::start_local), with a wall clock of the
    /// server's own that [`clock`](Self::clock) steps (libfaketime): the
    /// clock `clock_timestamp()`, and so lease expiry, follows.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unavailable`] also when libfaketime is not installed;
    /// otherwise as [`start_local`](Self::start_local).
    pub async fn start_local_with_clock() -> Result<PostgresServer, HarnessError> {
        Self::start_local_cluster(true).await
    }

    async fn start_local_cluster(own_clock: bool) -> Result<PostgresServer, HarnessError> {
        let psql = require_program(SERVER, "psql", "the postgresql-client package")?;
        let bin_dir = find_server_bin_dir().ok_or_else(|| HarnessError::Unavailable {
            server: SERVER,
            reason: format!(
                "no `{URL_VAR}`, nothing usable at {DEFAULT_ADMIN_URL}, and no initdb/postgres \
                 in {DEBIAN_VERSIONS_DIR}/*/bin or PATH (install the postgresql package)"
            ),
        })?;
        let run_as = if rustix::process::geteuid().is_root() {
            Some(account_ids(SERVER_ACCOUNT)?)
        } else {
            None
        };

        let dir = tempfile::Builder::new()
            .prefix("dlock-postgres-")
            .tempdir()
            .map_err(|error| HarnessError::io(SERVER, "creating a temporary directory", error))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|error| {
                HarnessError::io(
                    SERVER,
                    format!("handing {} to {SERVER_ACCOUNT}", dir.path().display()),
                    error,
                )
            })?;
        }
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");

        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data_dir)
            .args([
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(dir.path());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        run_command(SERVER, initdb, INITDB_TIMEOUT).await?;

        let port = super::pick_free_port()
            .map_err(|error| HarnessError::io(SERVER, "picking a free port", error))?;
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            data_dir.into_os_string(),
            "-p".into(),
            port.to_string().into(),
        ];
        // Unix sockets go to the temporary directory: the system socket
        // directory may not exist or may not be writable.
        args.push("-k".into());
        args.push(dir.path().as_os_str().to_owned());
        for setting in [
            "listen_addresses=127.0.0.1",
            // Durability against OS crashes is irrelevant for throwaway
            // data, and fsync dominates test time. Commits are still written
            // to the OS before they return (synchronous_commit stays on), so
            // a killed server keeps them, as `kill` promises.
            "fsync=off",
            "full_page_writes=off",
            "max_connections=200",
        ] {
            args.push("-c".into());
            args.push(setting.into());
        }
        let mut process =
            ServerProcess::new(SERVER, bin_dir.join("postgres"), args, dir.path(), log_path);
        if let Some((uid, gid)) = run_as {
            process = process.with_user(uid, gid);
        }
        let clock = if own_clock {
            let clock = FakeClock::for_server(SERVER, dir.path())?;
            process = process.with_environment(clock.environment());
            Some(clock)
        } else {
            None
        };
        process.spawn()?;

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let url = format!("postgres://postgres@{addr}/postgres");
        let mut server = PostgresServer {
            url: SecretUrl(url),
            addr,
            database: "postgres".to_owned(),
            psql,
            kind: ServerKind::Local {
                process: Box::new(process),
                _dir: dir,
            },
            clock,
        };
        server.wait_ready().await?;
        debug!(%addr, "postgres cluster ready");
        Ok(server)
    }

    async fn on_shared_server(
        psql: PathBuf,
        admin_url: String,
    ) -> Result<PostgresServer, HarnessError> {
        let unavailable = |reason: String| HarnessError::Unavailable {
            server: SERVER,
            reason,
        };
        let addr = resolve_url(SERVER, &admin_url, DEFAULT_PORT)?;
        if let Err(error) = psql_command(&psql, &admin_url, "SELECT 1").await {
            return Err(unavailable(format!(
                "cannot run queries on {}: {error}",
                redact_url(&admin_url)
            )));
        }
        drop_abandoned_databases(&psql, &admin_url).await;
        let database = unique_database_name();
        psql_command(
            &psql,
            &admin_url,
            &format!("CREATE DATABASE \"{database}\""),
        )
        .await?;
        let url = url_with_database(&admin_url, &database).ok_or_else(|| {
            unavailable(format!(
                "`{}` is not a postgres:// URL",
                redact_url(&admin_url)
            ))
        })?;
        debug!(database, server = %redact_url(&admin_url), "created a test database");
        Ok(PostgresServer {
            url: SecretUrl(url),
            addr,
            database,
            psql,
            kind: ServerKind::Shared {
                admin_url: SecretUrl(admin_url),
            },
            clock: None,
        })
    }

    /// The URL of the test database, `postgres://...@host:port/dbname`.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The test database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The server's socket address (to put a fault proxy in front of it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// [`url`](Self::url) with host and port replaced by `addr`, e.g. a
    /// [`FaultProxy`](crate::fault_proxy::FaultProxy)'s listen address.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        url_with_addr(self.url(), addr)
    }

    /// Whether the database lives on a server the harness did not start.
    pub fn is_external(&self) -> bool {
        matches!(self.kind, ServerKind::Shared { .. })
    }

    /// Runs SQL on the test database with `psql` and returns its unaligned,
    /// tuples-only output (e.g. `"1\n"` for `select 1`).
    ///
    /// # Errors
    ///
    /// [`HarnessError::CommandFailed`] if `psql` fails (connection refused,
    /// SQL error) or takes longer than 30 seconds.
    pub async fn psql(&self, sql: &str) -> Result<String, HarnessError> {
        psql_command(&self.psql, self.url(), sql).await
    }

    /// Kills the server (the postmaster and its backends) with `SIGKILL` and
    /// waits for it. Committed data survives, as after a crash.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] on a shared server.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        self.process("kill")?.kill();
        Ok(())
    }

    /// Starts the server again on the same port and data directory (killing
    /// it first if it is running; crash recovery runs) and waits until it
    /// accepts queries.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] on a shared server;
    /// [`HarnessError::StartFailed`] if it does not come back.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        let process = self.process("restart")?;
        process.kill();
        process.spawn()?;
        self.wait_ready().await
    }

    /// Freezes the server and every backend with `SIGSTOP`: connections stay
    /// open, queries hang.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] on a shared or stopped server.
    pub fn pause(&mut self) -> Result<(), HarnessError> {
        self.process("pause")?.pause()
    }

    /// Continues a paused server with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Unsupported`] on a shared or stopped server.
    pub fn resume(&mut self) -> Result<(), HarnessError> {
        self.process("resume")?.resume()
    }

    /// The server's own wall clock, to step it.
    ///
    /// # Errors
    ///
    /// [`HarnessError::InvalidRequest`] unless the server was started with
    /// [`start_local_with_clock`](Self::start_local_with_clock).
    pub fn clock(&self) -> Result<&FakeClock, HarnessError> {
        self.clock
            .as_ref()
            .ok_or_else(|| HarnessError::InvalidRequest {
                server: SERVER,
                detail: "the server was not started with a clock of its own".to_owned(),
            })
    }

    fn process(&mut self, operation: &'static str) -> Result<&mut ServerProcess, HarnessError> {
        match &mut self.kind {
            ServerKind::Local { process, .. } => Ok(process),
            ServerKind::Shared { .. } => Err(HarnessError::unsupported(SERVER, operation)),
        }
    }

    /// Waits until the harness-started server runs queries (accepting TCP
    /// connections is not enough: it refuses them during recovery).
    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let url = self.url.as_str().to_owned();
        let psql = self.psql.clone();
        let process = self.process("wait for")?;
        wait_until(
            &mut [process],
            "`SELECT 1` to succeed",
            START_TIMEOUT,
            || {
                let (psql, url) = (psql.clone(), url.clone());
                async move { psql_command(&psql, &url, "SELECT 1").await.is_ok() }
            },
        )
        .await
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let ServerKind::Shared { admin_url } = &self.kind else {
            // A local cluster goes away with its process and directory.
            return;
        };
        // FORCE (PostgreSQL 13+) ends sessions a test left open; blocking
        // here is bounded by the timeout.
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        let command = psql_std_command(&self.psql, admin_url.as_str(), &sql);
        if let Err(error) = run_command_blocking(SERVER, command, DROP_DATABASE_TIMEOUT) {
            warn!(database = self.database, %error, "could not drop the test database");
        }
    }
}

/// A `psql` invocation that runs `sql` on `url` and fails on any error.
fn psql_std_command(psql: &Path, url: &str, sql: &str) -> Command {
    let mut command = Command::new(psql);
    command
        .args(["--no-psqlrc", "--quiet", "--no-align", "--tuples-only"])
        .args(["--set", "ON_ERROR_STOP=1"])
        .arg("--dbname")
        .arg(url)
        .arg("--command")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS);
    command
}

async fn psql_command(psql: &Path, url: &str, sql: &str) -> Result<String, HarnessError> {
    run_command(SERVER, psql_std_command(psql, url, sql), PSQL_TIMEOUT).await
}

/// A database name no other test run uses: process id, a counter and the
/// clock (in case process ids repeat across runs on a shared server).
fn unique_database_name() -> String {
    let counter = DATABASE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!("dlock_test_{}_{counter}_{nanos:09}", std::process::id())
}

/// Drops the test databases of earlier test processes that are gone: a
/// database kept in a static (a shared server) is never dropped by its own
/// process. Names carry the creating process's id.
async fn drop_abandoned_databases(psql: &Path, admin_url: &str) {
    let listing = psql_command(
        psql,
        admin_url,
        "SELECT datname FROM pg_database WHERE datname LIKE 'dlock\\_test\\_%'",
    )
    .await;
    let Ok(listing) = listing else { return };
    for name in listing.lines().map(str::trim) {
        let pid = name
            .strip_prefix("dlock_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        match psql_command(psql, admin_url, &drop).await {
            Ok(_) => debug!(database = name, "dropped an abandoned test database"),
            Err(error) => {
                debug!(database = name, %error, "could not drop an abandoned test database")
            }
        }
    }
}

/// `url` with its database (the path) replaced by `database`.
fn url_with_database(url: &str, database: &str) -> Option<String> {
    let parsed = lock_core::url::ConnectionUrl::parse(url).ok()?;
    Some(parsed.with_path(&format!("/{database}")))
}

/// The directory holding `initdb` and `postgres`: the newest version under
/// `/usr/lib/postgresql`, else wherever `initdb` is on `PATH`.
fn find_server_bin_dir() -> Option<PathBuf> {
    let has_server =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"));
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_VERSIONS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versioned.sort();
    if let Some((_, newest)) = versioned.pop() {
        return Some(newest);
    }
    let initdb = find_in_path("initdb")?;
    let dir = initdb.parent()?.to_owned();
    has_server(&dir).then_some(dir)
}

/// The user and group id of `account`, from `/etc/passwd`.
fn account_ids(account: &str) -> Result<(u32, u32), HarnessError> {
    let unavailable = |reason: String| HarnessError::Unavailable {
        server: SERVER,
        reason,
    };
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|error| {
        unavailable(format!(
            "running as root, and /etc/passwd is unreadable: {error}"
        ))
    })?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != account {
                return None;
            }
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or_else(|| {
            unavailable(format!(
                "running as root, PostgreSQL needs an unprivileged account, and there is no `{account}` account"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_the_database_in_urls() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "t1").as_deref(),
            Some("postgres://u:p@h:5432/t1?sslmode=disable")
        );
        assert_eq!(
            url_with_database("postgresql://h", "t2").as_deref(),
            Some("postgresql://h/t2")
        );
    }

    #[test]
    fn database_names_are_unique_and_plain() {
        let first = unique_database_name();
        let second = unique_database_name();
        assert_ne!(first, second);
        assert!(
            first
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || character == '_')
        );
    }
}
