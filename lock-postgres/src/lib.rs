//! PostgreSQL store for dlock: every lock is a row of one table, every
//! operation one statement.
//!
//! - **acquire**: one `INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE
//!   <lease expired>` that also increments the row's fencing counter; when
//!   the key is held, the same statement returns the holder and its
//!   remaining time.
//! - **renew**: every lease of a batch in one `UPDATE ... FROM unnest(...)`,
//!   matching key, lease id and liveness.
//! - **release**: compare-and-set on the lease id. With fencing on the row
//!   stays (lease cleared, counter kept), so tokens keep increasing; with it
//!   off the row is deleted. A `NOTIFY` in the same transaction wakes
//!   waiters, through one shared `LISTEN` connection per store, but only
//!   when a waiter has marked the row: `NOTIFY` serializes commits across
//!   the database, which would halve the throughput of uncontended locks.
//!
//! Expiry is decided by the server's `clock_timestamp()` (not `now()`,
//! which is the transaction's start), so it follows the server's wall
//! clock: a step forward ends leases early (another client can take a lock
//! while its holder's local deadline is still ahead; the holder learns at
//! its next renewal, and fencing tokens keep the two apart), a step back
//! makes a dead holder's lock stay taken longer by the step. Run the server
//! with a slewing clock (NTP/chrony slew mode) where that matters; the tests
//! in `tests/faults.rs` step a server's clock both ways.
//!
//! Statements run under READ COMMITTED, where the single-statement upsert
//! is a safe compare-and-set; pools the store makes pin that level at
//! connect time (`default_transaction_isolation`).
//! A pool passed in with [`PostgresStoreBuilder::build_with_pool`] must not
//! default to REPEATABLE READ or SERIALIZABLE, or contended acquisitions
//! fail with serialization errors.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{LeaseLocker, Locker, LockerOptions};
//! use lock_postgres::PostgresStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::builder()
//!     .table("job_locks")
//!     .connect("postgres://app@db.internal/app")
//!     .await?;
//! let locker = LeaseLocker::new(store, LockerOptions::default())?;
//! let guard = locker.lock("nightly-report", Duration::from_secs(30)).await?;
//! let token = guard.fencing_token().expect("fencing is on by default");
//! // Fence writes with the token, in the same database or another:
//! //   UPDATE report SET body = $1, fence = $2 WHERE id = 1 AND fence <= $2
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! On a single primary, grants are linearizable and fencing tokens strictly
//! increase per key, across release, expiry, takeover and server restarts
//! (the counter is a committed column). A failover to an **asynchronous**
//! standby can lose committed grants and increments, so a token can be
//! issued twice: run with synchronous replication
//! (`synchronous_commit = on` with `synchronous_standby_names`) where
//! fencing must survive failover. Tokens are `bigint`s.
//!
//! Keys with fencing and without should not be mixed on one table: a
//! release without fencing deletes the row, and with it the counter.
#![forbid(unsafe_code)]

mod error;
mod listen;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::url::{ConnectionUrl, is_secret_parameter};
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, Holder, LeaseId,
    LeaseInfo, LeaseStore, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError, StoreErrorKind,
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};

use crate::error::{Target, connect_error, map_error};
use crate::listen::Listener;

/// The default table name.
pub const DEFAULT_TABLE: &str = "dlock_leases";

/// The most leases one renewal statement carries.
const MAX_BATCH: usize = 5000;

/// A [`LeaseStore`] on a PostgreSQL table. Clones share the pool and the
/// LISTEN connection.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    table: String,
    channel: String,
    sql: Statements,
    listener: Arc<Listener>,
}

/// The statements, with the quoted table name filled in.
struct Statements {
    schema: String,
    acquire: String,
    renew: String,
    release_keep: String,
    release_delete: String,
    inspect: String,
    want: String,
}

impl Statements {
    fn for_table(quoted: &str) -> Self {
        let fill = |template: &str| template.replace("{table}", quoted);
        Self {
            schema: fill(include_str!("sql/schema.sql")),
            acquire: fill(include_str!("sql/acquire.sql")),
            renew: fill(include_str!("sql/renew.sql")),
            release_keep: fill(include_str!("sql/release_keep.sql")),
            release_delete: fill(include_str!("sql/release_delete.sql")),
            inspect: fill(include_str!("sql/inspect.sql")),
            want: fill(include_str!("sql/want.sql")),
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's options hold the password: never print them.
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

/// Configures and builds a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresStoreBuilder {
    table: String,
    migrate: bool,
    max_connections: u32,
    connect_timeout: Duration,
}

impl Default for PostgresStoreBuilder {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            migrate: true,
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl PostgresStoreBuilder {
    /// The table holding the locks: an identifier, optionally qualified by a
    /// schema (`locks` or `ops.locks`), of letters, digits and `_`, starting
    /// with a letter or `_`, at most 63 bytes a part. Default
    /// [`DEFAULT_TABLE`].
    #[must_use]
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Whether building the store creates the table if it is missing
    /// (default true). Without it, call [`PostgresStore::migrate`] once.
    #[must_use]
    pub fn migrate_on_connect(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// How long [`connect`](Self::connect) and every later wait for a
    /// pooled connection may take (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The size of the pool [`connect`](Self::connect) makes (default 10).
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Connects a pool to `url` (`postgres://user:password@host:port/db`,
    /// with `sslmode=require` etc. for TLS) and builds the store.
    ///
    /// One connection is opened first, on its own, within the
    /// [connect timeout](Self::connect_timeout): an unreachable server, an
    /// unknown host or refused credentials fail here at once, saying which.
    /// The pool then pins READ COMMITTED, does not ping connections before
    /// use (one round trip per operation; a broken connection fails its
    /// statement with a retryable error), and the table is created when
    /// [`migrate_on_connect`](Self::migrate_on_connect) is on.
    ///
    /// Query parameters the driver does not know and that may carry a
    /// secret (`sslpassword=`, say) are dropped with a warning that names
    /// them without their value.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a bad URL or table name (the message
    /// never contains the password); [`StoreErrorKind::Unavailable`] when
    /// the server cannot be reached (refused, host not found),
    /// [`StoreErrorKind::Timeout`] when it does not answer within the
    /// connect timeout, [`StoreErrorKind::Auth`] for refused credentials,
    /// each naming the server and the cause; a store error when the
    /// migration fails.
    pub async fn connect(self, url: &str) -> Result<PostgresStore, StoreError> {
        // Refuse a bad table name before touching the network.
        quote_table(&self.table)?;
        let options =
            connect_options(url)?.options([("default_transaction_isolation", r"read\ committed")]);
        // sqlx's pool retries a refused connection until its acquire
        // timeout and then reports only that it timed out; a connection of
        // our own learns the cause first.
        let first = connect_once(&options, self.connect_timeout).await?;
        let _ = tokio::time::timeout(self.connect_timeout, first.close()).await;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.connect_timeout)
            // A ping before every statement would double the round trips;
            // a broken connection fails its statement (retryable) instead.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| connect_error(e, &Target::of(&options)))?;
        self.build_with_pool(pool).await
    }

    /// Builds the store on an existing pool (see the crate docs on isolation
    /// levels).
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a bad table name; a store error when
    /// the migration fails.
    pub async fn build_with_pool(self, pool: PgPool) -> Result<PostgresStore, StoreError> {
        let quoted = quote_table(&self.table)?;
        let mut channel = format!("dlock:{}", self.table);
        channel.truncate(63);
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                sql: Statements::for_table(&quoted),
                table: self.table,
                channel,
                listener: Arc::new(Listener::new()),
            }),
        };
        if self.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }
}

/// Query parameters the driver reads (sqlx 0.8) whose names look like
/// secrets to [`is_secret_parameter`]: they are passed on.
const DRIVER_SECRET_PARAMETERS: &[&str] = &["password", "sslkey", "ssl-key"];

/// The driver's options for `url`.
///
/// The driver logs every query parameter it does not know, value included,
/// so those that may carry a secret are dropped here, logged by name only.
fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let invalid = |reason: &dyn fmt::Display| {
        StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "not a PostgreSQL connection URL (postgres://user@host:port/database): {reason}"
            ),
        )
    };
    // The shared parser refuses what it cannot read without repeating it.
    let parsed = ConnectionUrl::parse(url)?;
    if !parsed.is_hierarchical() {
        // The driver would read `postgres:user:password@host` as a
        // database name, which the server repeats in its refusal.
        return Err(invalid(&"no `//` after the scheme"));
    }
    let mut driver_url = url::Url::parse(url).map_err(|e| invalid(&e))?;
    let (kept, dropped): (Vec<_>, Vec<_>) =
        driver_url
            .query_pairs()
            .into_owned()
            .partition(|(name, _)| {
                !is_secret_parameter(name) || DRIVER_SECRET_PARAMETERS.contains(&name.as_str())
            });
    if !dropped.is_empty() {
        for (name, _) in &dropped {
            tracing::warn!(parameter = %name, "ignoring a connect parameter the driver does not know");
        }
        if kept.is_empty() {
            driver_url.set_query(None);
        } else {
            driver_url.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    PgConnectOptions::from_url(&driver_url).map_err(|error| {
        // The driver's reasons name values, never the password; hide it
        // anyway should one ever do.
        let mut reason = match &error {
            sqlx::Error::Configuration(reason) => reason.to_string(),
            other => other.to_string(),
        };
        let secrets = parsed.password().into_iter().chain(
            parsed
                .query()
                .iter()
                .filter(|(name, _)| is_secret_parameter(name))
                .map(|(_, value)| value.as_str()),
        );
        for secret in secrets.filter(|secret| !secret.is_empty()) {
            reason = reason.replace(secret, "***");
        }
        invalid(&reason)
    })
}

/// Opens one connection, within `timeout`, reporting why it failed.
async fn connect_once(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, StoreError> {
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(connect_error(error, &Target::of(options))),
        Err(_) => Err(StoreError::timeout(format!(
            "postgres: cannot connect to {}: no answer within {timeout:?}",
            Target::of(options)
        ))),
    }
}

/// Checks a table name and returns it quoted for SQL.
fn quote_table(table: &str) -> Result<String, StoreError> {
    let invalid = || {
        StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "table name {:?} is not an identifier (letters, digits and _, starting with a letter or _, at most 63 bytes, optionally schema-qualified)",
                table.chars().take(80).collect::<String>()
            ),
        )
    };
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 {
        return Err(invalid());
    }
    let mut quoted = Vec::with_capacity(parts.len());
    for part in parts {
        let mut chars = part.chars();
        let starts_well = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !starts_well || !rest_ok || part.len() > 63 {
            return Err(invalid());
        }
        quoted.push(format!("\"{part}\""));
    }
    Ok(quoted.join("."))
}

impl PostgresStore {
    /// A builder with the defaults.
    pub fn builder() -> PostgresStoreBuilder {
        PostgresStoreBuilder::default()
    }

    /// Connects to `url` with the default table, creating it if missing.
    ///
    /// # Errors
    ///
    /// As [`PostgresStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().connect(url).await
    }

    /// Creates the table if it does not exist. Safe to run concurrently
    /// from many processes (serialized by an advisory lock) and repeatedly.
    ///
    /// # Errors
    ///
    /// A store error when the database refuses (permissions, connection).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut transaction = self
            .inner
            .pool
            .begin()
            .await
            .map_err(|e| map_error(e, None))?;
        // Concurrent CREATE TABLE IF NOT EXISTS can still collide in the
        // catalog; one migration at a time per table.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("dlock migrate {}", self.inner.table))
            .execute(&mut *transaction)
            .await
            .map_err(|e| map_error(e, None))?;
        sqlx::query(&self.inner.sql.schema)
            .execute(&mut *transaction)
            .await
            .map_err(|e| map_error(e, None))?;
        transaction.commit().await.map_err(|e| map_error(e, None))
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The table name, as configured.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The NOTIFY channel releases are announced on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    async fn try_acquire(
        &self,
        request: &AcquireRequest<'_>,
    ) -> Result<Option<AcquireOutcome>, StoreError> {
        let key = request.key;
        let increment: i64 = if request.fencing.is_enabled() { 1 } else { 0 };
        let row: Option<(bool, i64, Option<String>, Option<i64>)> =
            sqlx::query_as(&self.inner.sql.acquire)
                .bind(key)
                .bind(request.owner)
                .bind(&request.lease_id.to_bytes()[..])
                .bind(micros(request.ttl))
                .bind(increment)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(|e| map_error(e, Some(key)))?;
        let Some((granted, token, owner, remaining_us)) = row else {
            // Held by a lease committed after this statement's snapshot.
            return Ok(None);
        };
        let token = decode_token(key, token)?;
        if granted {
            let mut grant = Grant::new(request.ttl);
            if request.fencing.is_enabled() {
                grant = grant.with_token(token);
            }
            if let Some(previous) = owner {
                grant = grant.with_previous_owner(previous);
            }
            return Ok(Some(AcquireOutcome::Acquired(grant)));
        }
        let Some(remaining_us) = remaining_us else {
            // Free in this statement's snapshot but held in the latest
            // version: a race with a concurrent grant.
            return Ok(None);
        };
        let owner =
            owner.ok_or_else(|| StoreError::corrupt(key, "a live lease row has no owner"))?;
        let remaining = Duration::from_micros(u64::try_from(remaining_us.max(0)).unwrap_or(0));
        Ok(Some(AcquireOutcome::Held(
            Holder::new(owner).with_remaining(remaining),
        )))
    }
}

/// A duration in whole microseconds, saturating.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn decode_token(key: &str, token: i64) -> Result<FencingToken, StoreError> {
    u64::try_from(token)
        .map(FencingToken::from)
        .map_err(|_| StoreError::corrupt(key, format!("negative fencing counter {token}")))
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        // The statement's snapshot can miss a grant that committed while it
        // ran; asking again sees it.
        for _ in 0..3 {
            if let Some(outcome) = self.try_acquire(&request).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Busy,
            "the key changed hands during every attempt to read its holder",
        )
        .with_key(request.key))
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = leases.iter().map(|entry| entry.key).collect();
        let ids: Vec<Vec<u8>> = leases
            .iter()
            .map(|entry| entry.lease_id.to_bytes().to_vec())
            .collect();
        let renewed: Vec<(String, Vec<u8>)> = sqlx::query_as(&self.inner.sql.renew)
            .bind(&keys)
            .bind(&ids)
            .bind(micros(ttl))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, None))?;
        let renewed: std::collections::HashSet<(String, Vec<u8>)> = renewed.into_iter().collect();
        Ok(leases
            .iter()
            .map(|entry| {
                let pair = (entry.key.to_owned(), entry.lease_id.to_bytes().to_vec());
                if renewed.contains(&pair) {
                    RenewOutcome::Renewed { ttl }
                } else {
                    RenewOutcome::Lost
                }
            })
            .collect())
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        let sql = if fencing.is_enabled() {
            &self.inner.sql.release_keep
        } else {
            &self.inner.sql.release_delete
        };
        let (released, _notified): (i64, i64) = sqlx::query_as(sql)
            .bind(key)
            .bind(&lease_id.to_bytes()[..])
            .bind(&self.inner.channel)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        Ok(if released > 0 {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NotHeld
        })
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let row: Option<(Option<String>, bool, Option<i64>, i64)> =
            sqlx::query_as(&self.inner.sql.inspect)
                .bind(key)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(|e| map_error(e, Some(key)))?;
        let Some((owner, live, remaining_us, token)) = row else {
            return Ok(None);
        };
        let token = decode_token(key, token)?;
        let holder = if live {
            let owner =
                owner.ok_or_else(|| StoreError::corrupt(key, "a live lease row has no owner"))?;
            let remaining = remaining_us
                .and_then(|us| u64::try_from(us).ok())
                .map(Duration::from_micros);
            let mut holder = Holder::new(owner);
            if let Some(remaining) = remaining {
                holder = holder.with_remaining(remaining);
            }
            Some(holder)
        } else {
            None
        };
        let last_token = (token.to_u64() != Some(0)).then_some(token);
        Ok(Some(LeaseInfo::new(holder, last_token)))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_min_ttl(Duration::from_millis(1))
            .with_ttl_granularity(Duration::from_millis(1))
            .with_max_key_len(lock_core::MAX_KEY_LEN)
            .with_max_batch(MAX_BATCH)
            .with_native_wait(true)
            .with_fencing(true)
    }

    async fn wait_for_change(&self, key: &str, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let inner = &self.inner;
        inner
            .listener
            .ensure_started(&inner.pool, &inner.channel, max)
            .await;
        let interest = inner.listener.interest(key);
        let notified = interest.notify.notified();
        tokio::pin!(notified);
        // Registered first, then re-checked: a release in between is seen.
        notified.as_mut().enable();
        if inner.listener.is_listening() {
            // Mark the row so that its release notifies, and re-check.
            let live: Result<Option<(bool,)>, _> = sqlx::query_as(&inner.sql.want)
                .bind(key)
                .bind(micros(max))
                .fetch_optional(&inner.pool)
                .await;
            match live {
                Ok(Some((true,))) => {}
                Ok(_) => return,
                // The caller re-polls; do not spin on a failing server.
                Err(_) => {}
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked_and_quoted() {
        assert_eq!(quote_table("dlock_leases").unwrap(), "\"dlock_leases\"");
        assert_eq!(quote_table("ops.locks").unwrap(), "\"ops\".\"locks\"");
        assert_eq!(quote_table("_x1").unwrap(), "\"_x1\"");
        for hostile in [
            "",
            "1abc",
            "locks; DROP TABLE users",
            "locks\"",
            "a.b.c",
            "a b",
            "émoji",
            ".locks",
            &"x".repeat(64),
        ] {
            let error = quote_table(hostile).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Invalid, "{hostile:?}");
        }
    }
}
