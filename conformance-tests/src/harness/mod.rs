//! Throwaway database servers for tests: Redis (single node and cluster),
//! etcd (single member and cluster) and PostgreSQL.
//!
//! Each server runs on free loopback ports with its files in a temporary
//! directory; dropping the handle kills the process, waits for it and
//! removes the directory. Handles can also kill, restart (same ports, same
//! data directory), pause (`SIGSTOP`) and resume (`SIGCONT`) the server, to
//! inject faults.
//!
//! # Using existing servers
//!
//! These variables point the harness at a server that is already running
//! instead of starting one (kill, restart, pause and resume then return
//! [`HarnessError::Unsupported`]):
//!
//! | variable | used by |
//! | --- | --- |
//! | `DLOCK_TEST_REDIS_URL` | [`RedisServer::start`] |
//! | `DLOCK_TEST_REDIS_CLUSTER_URLS` (comma-separated) | [`RedisCluster::start`] |
//! | `DLOCK_TEST_ETCD_URL` | [`EtcdServer::start`] |
//! | `DLOCK_TEST_ETCD_CLUSTER_URLS` (comma-separated) | [`EtcdCluster::start`] |
//! | `DLOCK_TEST_POSTGRES_URL` | [`PostgresServer::start`] (a fresh database is created on it) |
//!
//! # Missing servers
//!
//! When a server can be neither found nor started (its binary is not
//! installed, the configured server is unreachable) the harness returns
//! [`HarnessError::Unavailable`]. Tests should skip with its reason, unless
//! [`require_servers`] says the run must have every server (CI sets
//! `DLOCK_TEST_REQUIRE=1`); [`HarnessError::skip_reason`] makes that
//! decision.

mod clock;
mod etcd;
mod moto;
pub mod ports;
mod postgres;
mod process;
mod redis;
mod shared;

use std::ffi::OsStr;
use std::fmt;

use lock_core::url::ConnectionUrl;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use clock::FakeClock;
pub use etcd::{EtcdCluster, EtcdServer};
pub use moto::{MotoServer, shared_moto};
pub use ports::{pick_free_port, pick_free_ports};
pub use postgres::PostgresServer;
pub use redis::{RedisCluster, RedisReply, RedisServer, redis_command};
pub use shared::{
    or_skip, shared_etcd, shared_etcd_cluster, shared_postgres, shared_redis, shared_redis_cluster,
    skip_unless_available,
};

/// Name of the variable that makes missing servers fail tests instead of
/// skipping them.
pub const REQUIRE_SERVERS_VAR: &str = "DLOCK_TEST_REQUIRE";

/// Whether this test run must have every server: `DLOCK_TEST_REQUIRE` is set
/// to `1` (or `true`/`yes`).
pub fn require_servers() -> bool {
    std::env::var(REQUIRE_SERVERS_VAR).is_ok_and(|value| {
        let value = value.trim();
        value == "1" || value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("yes")
    })
}

/// Everything that can go wrong while providing a test server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The server can be neither found nor started here: a test should skip
    /// with `reason`, unless [`require_servers`] is true.
    #[error("{server} is unavailable: {reason}")]
    Unavailable {
        /// Which server, e.g. `"redis"`.
        server: &'static str,
        /// Why, in words fit to print in a skip message.
        reason: String,
    },
    /// The server was found but did not come up.
    #[error("{server} failed to start: {reason}\n--- end of its log ---\n{log_tail}")]
    StartFailed {
        /// Which server.
        server: &'static str,
        /// What went wrong.
        reason: String,
        /// The last lines the server wrote to its log.
        log_tail: String,
    },
    /// The operation needs a server the harness started itself, but this one
    /// was provided through an environment variable.
    #[error("{operation} is not possible on {server}: {reason}")]
    Unsupported {
        /// Which server.
        server: &'static str,
        /// The refused operation, e.g. `"kill"`.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// A cluster member index was out of range.
    #[error("{server} has {size} members; there is no member {index}")]
    NoSuchMember {
        /// Which server.
        server: &'static str,
        /// The index asked for.
        index: usize,
        /// How many members the cluster has.
        size: usize,
    },
    /// The request cannot be served as asked, e.g. a Redis cluster of fewer
    /// than three masters.
    #[error("{server}: {detail}")]
    InvalidRequest {
        /// Which server.
        server: &'static str,
        /// What is wrong with the request.
        detail: String,
    },
    /// Something the harness waited for did not happen in time.
    #[error("{server}: timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// Which server.
        server: &'static str,
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        waited: Duration,
    },
    /// A helper program (`redis-cli`, `psql`, `initdb`, ...) failed.
    #[error("{server}: `{command}` failed: {output}")]
    CommandFailed {
        /// Which server it was run for.
        server: &'static str,
        /// The program and its arguments (secrets redacted).
        command: String,
        /// Its exit status and output.
        output: String,
    },
    /// The server answered something the harness could not make sense of.
    #[error("{server} sent an unexpected reply: {detail}")]
    Protocol {
        /// Which server.
        server: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// An I/O operation of the harness itself failed.
    #[error("{server}: {context}: {source}")]
    Io {
        /// Which server it was working on.
        server: &'static str,
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl HarnessError {
    /// The reason a test that got this error should be skipped rather than
    /// failed, or `None` if it should fail.
    ///
    /// [`Unavailable`](HarnessError::Unavailable) skips unless
    /// [`require_servers`] is true. [`Unsupported`](HarnessError::Unsupported)
    /// always skips: the test asked for a fault that a server provided by the
    /// environment cannot be put through. Everything else fails.
    pub fn skip_reason(&self) -> Option<String> {
        match self {
            HarnessError::Unavailable { .. } if !require_servers() => Some(self.to_string()),
            HarnessError::Unsupported { .. } => Some(self.to_string()),
            _ => None,
        }
    }

    fn io(server: &'static str, context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            server,
            context: context.into(),
            source,
        }
    }

    fn unsupported(server: &'static str, operation: &'static str) -> Self {
        HarnessError::Unsupported {
            server,
            operation,
            reason: "the server was provided by the environment, not started by the harness"
                .to_owned(),
        }
    }
}

/// A server URL that may carry a password: `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq)]
struct SecretUrl(String);

impl SecretUrl {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&redact_url(&self.0))
    }
}

/// `text` with its secrets hidden when it is a URL (through
/// [`lock_core::url`], the one redaction of the workspace); other text, such
/// as a server's command-line arguments, unchanged.
fn redact_url(text: &str) -> String {
    if text.contains("://") {
        lock_core::url::redact(text)
    } else {
        text.to_owned()
    }
}

/// `url` with its host and port replaced by `addr`, keeping credentials,
/// path and query: how a client is pointed at a [`FaultProxy`] in front of
/// the server.
///
/// [`FaultProxy`]: crate::fault_proxy::FaultProxy
fn url_with_addr(url: &str, addr: SocketAddr) -> String {
    match ConnectionUrl::parse(url) {
        Ok(parsed) if parsed.is_hierarchical() => parsed.with_hosts(&[addr.to_string()]),
        _ => url.to_owned(),
    }
}

/// Resolves the host and port of `url` (using `default_port` when the URL
/// has none) to a socket address.
fn resolve_url(
    server: &'static str,
    url: &str,
    default_port: u16,
) -> Result<SocketAddr, HarnessError> {
    let unavailable = |reason: String| HarnessError::Unavailable { server, reason };
    let parsed = ConnectionUrl::parse(url).map_err(|error| unavailable(error.to_string()))?;
    let host_port = parsed
        .hosts()
        .first()
        .ok_or_else(|| unavailable(format!("`{}` names no host", parsed.redacted())))?;
    // A bracketed IPv6 literal contains colons of its own.
    let has_port = match host_port.rfind(']') {
        Some(bracket) => host_port[bracket..].contains(':'),
        None => host_port.contains(':'),
    };
    let with_port = if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    let mut addresses = with_port
        .to_socket_addrs()
        .map_err(|error| unavailable(format!("cannot resolve `{with_port}`: {error}")))?;
    addresses
        .next()
        .ok_or_else(|| unavailable(format!("`{with_port}` resolves to no address")))
}

/// Checks that something accepts TCP connections at `addr` within `timeout`.
async fn check_reachable(
    server: &'static str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), HarnessError> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(error)) => Err(HarnessError::Unavailable {
            server,
            reason: format!("nothing accepts connections at {addr}: {error}"),
        }),
        Err(_elapsed) => Err(HarnessError::Unavailable {
            server,
            reason: format!("connecting to {addr} timed out after {timeout:?}"),
        }),
    }
}

/// The value of environment variable `name`, if set and not blank.
fn env_override(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Finds `program` in the directories of `PATH`.
fn find_in_path(program: impl AsRef<OsStr>) -> Option<PathBuf> {
    let program = program.as_ref();
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Finds a required program or explains, as an `Unavailable` error, how to
/// install it.
fn require_program(
    server: &'static str,
    program: &str,
    install_hint: &str,
) -> Result<PathBuf, HarnessError> {
    find_in_path(program).ok_or_else(|| HarnessError::Unavailable {
        server,
        reason: format!("`{program}` is not installed (install {install_hint})"),
    })
}

/// Interval of the bounded polling loops that wait for servers.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://alice:s3cret@db:5432/app?sslmode=disable"),
            "postgres://alice:***@db:5432/app?sslmode=disable"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://:pw@host"), "redis://:***@host");
    }

    #[test]
    fn replaces_host_and_port() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            url_with_addr("postgres://u:p@db.example:5432/app", addr),
            "postgres://u:p@127.0.0.1:4000/app"
        );
        assert_eq!(
            url_with_addr("http://127.0.0.1:2379", addr),
            "http://127.0.0.1:4000"
        );
    }

    #[test]
    fn resolves_urls_with_and_without_port() {
        let with_port = resolve_url("redis", "redis://127.0.0.1:7000/0", 6379);
        assert_eq!(with_port.ok(), "127.0.0.1:7000".parse().ok());
        let without_port = resolve_url("redis", "redis://127.0.0.1", 6379);
        assert_eq!(without_port.ok(), "127.0.0.1:6379".parse().ok());
    }
}
