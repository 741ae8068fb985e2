//! Servers shared by every test of one test binary: started on first use,
//! killed when the test process exits (see the watchdog in `process`).
//!
//! Tests that kill, restart or pause a server must start their own instead.

use std::future::Future;

use tokio::sync::OnceCell;

use super::{EtcdCluster, EtcdServer, HarnessError, PostgresServer, RedisCluster, RedisServer};

static REDIS: OnceCell<RedisServer> = OnceCell::const_new();
static REDIS_CLUSTER: OnceCell<RedisCluster> = OnceCell::const_new();
static ETCD: OnceCell<EtcdServer> = OnceCell::const_new();
static ETCD_CLUSTER: OnceCell<EtcdCluster> = OnceCell::const_new();
static POSTGRES: OnceCell<PostgresServer> = OnceCell::const_new();

/// The test binary's single redis-server.
///
/// # Errors
///
/// As [`RedisServer::start`]; a failed start is tried again by the next
/// caller.
pub async fn shared_redis() -> Result<&'static RedisServer, HarnessError> {
    REDIS.get_or_try_init(RedisServer::start).await
}

/// The test binary's 3-master Redis Cluster.
///
/// # Errors
///
/// As [`RedisCluster::start`].
pub async fn shared_redis_cluster() -> Result<&'static RedisCluster, HarnessError> {
    REDIS_CLUSTER
        .get_or_try_init(|| RedisCluster::start(3))
        .await
}

/// The test binary's single-member etcd.
///
/// # Errors
///
/// As [`EtcdServer::start`].
pub async fn shared_etcd() -> Result<&'static EtcdServer, HarnessError> {
    ETCD.get_or_try_init(EtcdServer::start).await
}

/// The test binary's 3-member etcd cluster.
///
/// # Errors
///
/// As [`EtcdCluster::start`].
pub async fn shared_etcd_cluster() -> Result<&'static EtcdCluster, HarnessError> {
    ETCD_CLUSTER.get_or_try_init(|| EtcdCluster::start(3)).await
}

/// The test binary's PostgreSQL database (a fresh database on the machine's
/// server, or a cluster of its own).
///
/// # Errors
///
/// As [`PostgresServer::start`].
pub async fn shared_postgres() -> Result<&'static PostgresServer, HarnessError> {
    POSTGRES.get_or_try_init(PostgresServer::start).await
}

/// The server a test asked for, or `None` after printing why the test
/// skips (the server is missing and the run does not require it).
///
/// ```no_run
/// # async fn test() {
/// use conformance_tests::harness::{PostgresServer, or_skip};
///
/// let Some(server) = or_skip(PostgresServer::start_local().await) else {
///     return;
/// };
/// # }
/// ```
///
/// # Panics
///
/// When the server is missing and the run requires every server
/// (`DLOCK_TEST_REQUIRE=1`), or when it was found but failed to start.
pub fn or_skip<T>(started: Result<T, HarnessError>) -> Option<T> {
    started
        .map_err(skip_reason_or_panic)
        .inspect_err(|reason| eprintln!("skipped: {reason}"))
        .ok()
}

/// Starts (or finds) a server for a test and says whether to skip: `None`
/// when the server is there, the reason when it is missing and the run
/// does not require it.
///
/// # Panics
///
/// When the server is missing and the run requires every server
/// (`DLOCK_TEST_REQUIRE=1`), or when it was found but failed to start.
pub async fn skip_unless_available<T>(
    start: impl Future<Output = Result<T, HarnessError>>,
) -> Option<String> {
    start.await.err().map(skip_reason_or_panic)
}

fn skip_reason_or_panic(error: HarnessError) -> String {
    error.skip_reason().unwrap_or_else(|| panic!("{error}"))
}
