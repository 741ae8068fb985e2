//! SQLite store for dlock: locks shared by the processes of one host
//! through one database file. The embedded default of the `dlock` program.
//!
//! Every lock is a row; acquire is one upsert (`INSERT ... ON CONFLICT DO
//! UPDATE ... WHERE <lease expired> RETURNING`), a batch renewal one
//! `UPDATE` over a JSON array, release a compare-and-set on the lease id.
//! Expiry follows the database's own clock (`unixepoch('subsec')`, in
//! milliseconds), which every process of the host shares: a step of the
//! host's wall clock forward ends leases early (the next process takes the
//! lock; the holder learns at its next renewal, and fencing tokens keep the
//! two apart), a step back lengthens them. The file runs in
//! WAL mode with a busy timeout, so readers never block and writers wait
//! briefly for each other.
//!
//! There are no change notifications across processes: waiters in other
//! processes poll (with backoff, and never later than the holder's lease
//! end); waiters in the same process are woken at once.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{LeaseLocker, Locker, LockerOptions};
//! use lock_sqlite::SqliteStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::open("/var/lib/myapp/locks.db").await?;
//! let locker = LeaseLocker::new(store, LockerOptions::default())?;
//! let guard = locker.lock("nightly-report", Duration::from_secs(30)).await?;
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! Grants are serialized by SQLite's write lock; fencing tokens are a
//! per-row counter kept across releases and durable with the file. The
//! database must be on a local file system: SQLite's locking is unreliable
//! on network file systems.
#![forbid(unsafe_code)]

mod error;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, Holder, LeaseId,
    LeaseInfo, LeaseStore, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError, StoreErrorKind,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Notify;

use crate::error::{map_error, open_error};

/// The default table name.
pub const DEFAULT_TABLE: &str = "dlock_leases";

/// How long opening waits for other processes setting the file up.
const OPEN_PATIENCE: Duration = Duration::from_secs(5);

/// The database's clock in milliseconds.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// A [`LeaseStore`] on an SQLite database file. Clones share the pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    path: PathBuf,
    sql: Statements,
    /// Wakes waiters of this process on every release.
    released: Notify,
}

struct Statements {
    schema: String,
    acquire: String,
    renew: String,
    release_keep: String,
    release_delete: String,
    inspect: String,
}

impl Statements {
    fn for_table(table: &str) -> Self {
        let fill = |template: &str| template.replace("{table}", table).replace("{now}", NOW_MS);
        Self {
            schema: fill(include_str!("sql/schema.sql")),
            acquire: fill(include_str!("sql/acquire.sql")),
            renew: fill(include_str!("sql/renew.sql")),
            release_keep: fill(include_str!("sql/release_keep.sql")),
            release_delete: fill(include_str!("sql/release_delete.sql")),
            inspect: fill(include_str!("sql/inspect.sql")),
        }
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Configures and opens a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteStoreBuilder {
    table: String,
    busy_timeout: Duration,
    max_connections: u32,
}

impl Default for SqliteStoreBuilder {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            busy_timeout: Duration::from_millis(500),
            max_connections: 4,
        }
    }
}

impl SqliteStoreBuilder {
    /// The table holding the locks: letters, digits and `_`, starting with a
    /// letter or `_`, at most 63 bytes. Default [`DEFAULT_TABLE`].
    #[must_use]
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long a statement waits for another process's write lock before
    /// failing with a retryable `Busy` error (default 500 ms; keep it below
    /// the locker's store timeout).
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The pool size (default 4).
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Opens (creating if missing) the database file at `path` and its
    /// table.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a bad table name; a store error when
    /// the file cannot be opened or created.
    pub async fn open(self, path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        let table = check_table(&self.table)?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(self.busy_timeout);
        // Another process creating the file or the table holds the write
        // lock for a moment; opening waits for it a little longer than one
        // busy timeout.
        let give_up = tokio::time::Instant::now() + OPEN_PATIENCE.max(self.busy_timeout * 2);
        loop {
            match self.try_open(&path, &table, options.clone()).await {
                Err(error)
                    if error.kind() == StoreErrorKind::Busy
                        && tokio::time::Instant::now() < give_up =>
                {
                    tracing::debug!(%error, "database busy while opening; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => return result,
            }
        }
    }

    async fn try_open(
        &self,
        path: &Path,
        table: &str,
        options: SqliteConnectOptions,
    ) -> Result<SqliteStore, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(self.max_connections)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| open_error(e, path))?;
        let store = SqliteStore {
            inner: Arc::new(Inner {
                pool,
                path: path.to_owned(),
                sql: Statements::for_table(table),
                released: Notify::new(),
            }),
        };
        // Creating the table takes the write lock: only when it is missing.
        let exists: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind(&self.table)
                .fetch_optional(&store.inner.pool)
                .await
                .map_err(|e| map_error(e, None))?;
        if exists.is_none() {
            sqlx::query(&store.inner.sql.schema)
                .execute(&store.inner.pool)
                .await
                .map_err(|e| map_error(e, None))?;
        }
        Ok(store)
    }
}

/// Checks a table name; returns it quoted.
fn check_table(table: &str) -> Result<String, StoreError> {
    let mut chars = table.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || table.len() > 63 {
        return Err(StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "table name {:?} is not an identifier (letters, digits and _, starting with a letter or _, at most 63 bytes)",
                table.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(format!("\"{table}\""))
}

impl SqliteStore {
    /// A builder with the defaults.
    pub fn builder() -> SqliteStoreBuilder {
        SqliteStoreBuilder::default()
    }

    /// Opens (creating if missing) the database at `path` with the default
    /// table.
    ///
    /// # Errors
    ///
    /// As [`SqliteStoreBuilder::open`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::builder().open(path).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    async fn holder(&self, key: &str) -> Result<Option<Holder>, StoreError> {
        Ok(self.inspect(key).await?.and_then(|info| info.holder))
    }
}

fn millis(duration: Duration) -> i64 {
    // Round up: a lease never ends earlier than asked.
    i64::try_from(duration.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

fn decode_token(key: &str, token: i64) -> Result<FencingToken, StoreError> {
    u64::try_from(token)
        .map(FencingToken::from)
        .map_err(|_| StoreError::corrupt(key, format!("negative fencing counter {token}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let key = request.key;
        let increment: i64 = if request.fencing.is_enabled() { 1 } else { 0 };
        // Held, then free by the time its holder is read: try again.
        for _ in 0..3 {
            let granted: Option<(i64, Option<String>)> = sqlx::query_as(&self.inner.sql.acquire)
                .bind(key)
                .bind(request.owner)
                .bind(&request.lease_id.to_bytes()[..])
                .bind(millis(request.ttl))
                .bind(increment)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(|e| map_error(e, Some(key)))?;
            if let Some((token, previous)) = granted {
                let mut grant = Grant::new(Duration::from_millis(
                    u64::try_from(millis(request.ttl)).unwrap_or(u64::MAX),
                ));
                if request.fencing.is_enabled() {
                    grant = grant.with_token(decode_token(key, token)?);
                }
                if let Some(previous) = previous {
                    grant = grant.with_previous_owner(previous);
                }
                return Ok(AcquireOutcome::Acquired(grant));
            }
            if let Some(holder) = self.holder(key).await? {
                return Ok(AcquireOutcome::Held(holder));
            }
        }
        Err(StoreError::new(
            StoreErrorKind::Busy,
            "the key changed hands during every attempt to read its holder",
        )
        .with_key(key))
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<(&str, String)> = leases
            .iter()
            .map(|entry| (entry.key, hex(&entry.lease_id.to_bytes())))
            .collect();
        let batch = serde_json::to_string(&batch).map_err(|e| {
            StoreError::new(StoreErrorKind::Other, "encoding a batch").with_source(e)
        })?;
        let renewed: Vec<(String, Vec<u8>)> = sqlx::query_as(&self.inner.sql.renew)
            .bind(batch)
            .bind(millis(ttl))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, None))?;
        let renewed: HashSet<(String, Vec<u8>)> = renewed.into_iter().collect();
        let applied = Duration::from_millis(u64::try_from(millis(ttl)).unwrap_or(u64::MAX));
        Ok(leases
            .iter()
            .map(|entry| {
                let pair = (entry.key.to_owned(), entry.lease_id.to_bytes().to_vec());
                if renewed.contains(&pair) {
                    RenewOutcome::Renewed { ttl: applied }
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
        let done = sqlx::query(sql)
            .bind(key)
            .bind(&lease_id.to_bytes()[..])
            .execute(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        if done.rows_affected() == 0 {
            return Ok(ReleaseOutcome::NotHeld);
        }
        self.inner.released.notify_waiters();
        Ok(ReleaseOutcome::Released)
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let row: Option<(Option<String>, bool, i64, i64)> = sqlx::query_as(&self.inner.sql.inspect)
            .bind(key)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| map_error(e, Some(key)))?;
        let Some((owner, live, remaining_ms, token)) = row else {
            return Ok(None);
        };
        let token = decode_token(key, token)?;
        let holder = if live {
            let owner =
                owner.ok_or_else(|| StoreError::corrupt(key, "a live lease row has no owner"))?;
            let remaining = Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0));
            Some(Holder::new(owner).with_remaining(remaining))
        } else {
            None
        };
        let last_token = (token.to_u64() != Some(0)).then_some(token);
        Ok(Some(LeaseInfo::new(holder, last_token)))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_min_ttl(Duration::from_millis(10))
            .with_ttl_granularity(Duration::from_millis(1))
            .with_max_key_len(lock_core::MAX_KEY_LEN)
            .with_max_batch(1000)
            .with_native_wait(false)
            .with_fencing(true)
    }

    async fn wait_for_change(&self, key: &str, max: Duration) {
        let released = self.inner.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        // Registered first: a release by this process in between is seen.
        if matches!(self.holder(key).await, Ok(None)) {
            return;
        }
        let _ = tokio::time::timeout(max, released).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked() {
        assert_eq!(check_table("dlock_leases").unwrap(), "\"dlock_leases\"");
        for hostile in ["", "1x", "x; DROP TABLE y", "a.b", "x\"", &"y".repeat(64)] {
            assert_eq!(
                check_table(hostile).unwrap_err().kind(),
                StoreErrorKind::Invalid,
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn ttls_round_up_to_milliseconds() {
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_millis(3)), 3);
    }
}
