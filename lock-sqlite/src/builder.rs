//! Opening a [`SqliteStore`]: the file, its pool, and its tables.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{StoreError, StoreErrorKind};
use sqlx::Executor as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{map_error, open_error};
use crate::store::{Inner, SqliteStore, Statements};
use lock_core::LocalWakers;

/// The default table name.
pub const DEFAULT_TABLE: &str = "dlock_leases";

/// How long opening waits for other processes setting the file up.
const OPEN_PATIENCE: Duration = Duration::from_secs(5);

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

/// What the file holds under the store's table names.
#[derive(Debug, PartialEq, Eq)]
enum Layout {
    /// No key table.
    Missing,
    /// One row per key with its lease (the previous version).
    Previous,
    /// Key rows and entries (this version).
    Current,
    /// A key table of this version without its entries table, or a table of
    /// neither layout.
    Other { columns: Vec<String> },
}

impl SqliteStoreBuilder {
    /// The table holding the key rows: letters, digits and `_`, starting
    /// with a letter or `_`, at most 63 bytes. The entries live beside it
    /// in `<table>_entries`. Default [`DEFAULT_TABLE`].
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
    /// tables. A table of the previous layout (one row per key holding its
    /// lease) is converted in place: its live leases become holding
    /// entries, its token counters stay, and its lease columns go, so that
    /// processes of the previous version still using the file fail their
    /// statements from then on instead of granting beside this one.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a bad table name, or a table of
    /// neither layout under that name; a store error when the file cannot
    /// be opened or created.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: schema changes run in a transaction, which SQLite rolls
    /// back when its connection goes; the database file may be left created,
    /// empty.
    pub async fn open(self, path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_owned();
        let names = TableNames::new(&self.table)?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(self.busy_timeout);
        // Another process creating the file or the tables holds the write
        // lock for a moment; opening waits for it a little longer than one
        // busy timeout.
        let give_up = tokio::time::Instant::now() + OPEN_PATIENCE.max(self.busy_timeout * 2);
        loop {
            match self.try_open(&path, &names, options.clone()).await {
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
        names: &TableNames,
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
                sql: Statements::new(names),
                wakers: LocalWakers::default(),
            }),
        };
        // Taking the write lock only when the tables need work.
        let mut connection = store
            .inner
            .pool
            .acquire()
            .await
            .map_err(|e| map_error(e, None))?;
        let layout = store.layout(&mut connection, names).await?;
        drop(connection);
        if layout != Layout::Current {
            store.prepare_tables(names).await?;
        }
        Ok(store)
    }
}

/// The tables' and the trigger's names, checked: as text, and quoted for
/// SQL.
#[derive(Debug, Clone)]
pub(crate) struct TableNames {
    pub(crate) keys: String,
    pub(crate) entries: String,
    pub(crate) trigger: String,
    pub(crate) quoted_keys: String,
    pub(crate) quoted_entries: String,
    pub(crate) quoted_trigger: String,
}

impl TableNames {
    pub(crate) fn new(table: &str) -> Result<Self, StoreError> {
        let mut chars = table.chars();
        let starts_well = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || table.len() > 63
        {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "table name {:?} is not an identifier (letters, digits and _, starting with a letter or _, at most 63 bytes)",
                    table.chars().take(80).collect::<String>()
                ),
            ));
        }
        let entries = format!("{table}_entries");
        let trigger = format!("{table}_counter");
        Ok(Self {
            quoted_keys: format!("\"{table}\""),
            quoted_entries: format!("\"{entries}\""),
            quoted_trigger: format!("\"{trigger}\""),
            keys: table.to_owned(),
            entries,
            trigger,
        })
    }
}

impl SqliteStore {
    async fn layout(
        &self,
        connection: &mut SqliteConnection,
        names: &TableNames,
    ) -> Result<Layout, StoreError> {
        let mut columns = Vec::with_capacity(2);
        for (table, trigger) in [
            (&names.keys, &names.trigger),
            (&names.entries, &String::new()),
        ] {
            let rows: Vec<(String,)> = sqlx::query_as(&self.inner.sql.layout)
                .bind(table)
                .bind(trigger)
                .fetch_all(&mut *connection)
                .await
                .map_err(|e| map_error(e, None))?;
            columns.push(rows.into_iter().map(|(name,)| name).collect::<Vec<_>>());
        }
        let entries = columns.pop().unwrap_or_default();
        let keys = columns.pop().unwrap_or_default();
        let has = |columns: &[String], name: &str| columns.iter().any(|c| c == name);
        Ok(if keys.is_empty() {
            Layout::Missing
        } else if has(&keys, "lease_id") {
            Layout::Previous
        } else if has(&keys, "token") && has(&keys, "#trigger") && has(&entries, "taken_from") {
            Layout::Current
        } else {
            Layout::Other { columns: keys }
        })
    }

    /// Creates or converts the tables, under the write lock.
    async fn prepare_tables(&self, names: &TableNames) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut transaction = inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_error(e, None))?;
        // Again under the lock: another process may have done it.
        let layout = self.layout(&mut transaction, names).await?;
        match &layout {
            Layout::Current => {}
            Layout::Missing => {
                (&mut *transaction)
                    .execute(sqlx::raw_sql(&inner.sql.schema))
                    .await
                    .map_err(|e| map_error(e, None))?;
            }
            Layout::Previous => {
                tracing::info!(table = %names.keys, "converting the table of the previous layout");
                for sql in [&inner.sql.schema, &inner.sql.upgrade] {
                    (&mut *transaction)
                        .execute(sqlx::raw_sql(sql))
                        .await
                        .map_err(|e| map_error(e, None))?;
                }
            }
            Layout::Other { columns } if columns == &["key", "token"] => {
                // Key rows of this version whose entries table or trigger
                // is missing.
                (&mut *transaction)
                    .execute(sqlx::raw_sql(&inner.sql.schema))
                    .await
                    .map_err(|e| map_error(e, None))?;
            }
            Layout::Other { .. } => {
                return Err(StoreError::new(
                    StoreErrorKind::Invalid,
                    format!(
                        "table {:?} exists but is not a dlock table: choose another table name",
                        names.keys
                    ),
                ));
            }
        }
        transaction.commit().await.map_err(|e| map_error(e, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked() {
        let names = TableNames::new("dlock_leases").unwrap();
        assert_eq!(names.quoted_keys, "\"dlock_leases\"");
        assert_eq!(names.quoted_entries, "\"dlock_leases_entries\"");
        for hostile in ["", "1x", "x; DROP TABLE y", "a.b", "x\"", &"y".repeat(64)] {
            assert_eq!(
                TableNames::new(hostile).unwrap_err().kind(),
                StoreErrorKind::Invalid,
                "{hostile:?}"
            );
        }
    }
}
