//! Configuring and connecting a [`PostgresStore`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{StoreError, StoreErrorKind};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::busy::BusyKeys;
use crate::error::map_error;
use crate::listen::Listener;
use crate::store::{Inner, PostgresStore, Statements};

/// The default table name.
pub const DEFAULT_TABLE: &str = "dlock_leases";

/// What the entries table's name adds to the key table's.
pub(crate) const ENTRIES_SUFFIX: &str = "_entries";

/// The longest table name part: the entries table's name must stay within
/// PostgreSQL's 63 bytes.
const MAX_TABLE_PART: usize = 63 - ENTRIES_SUFFIX.len();

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
    /// The table holding the key rows: an identifier, optionally qualified
    /// by a schema (`locks` or `ops.locks`), of letters, digits and `_`,
    /// starting with a letter or `_`, at most 55 bytes (the schema at most
    /// 63). The entries live beside it in `<table>_entries`. Default
    /// [`DEFAULT_TABLE`].
    #[must_use]
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Whether building the store creates the tables if they are missing
    /// and converts a table of the previous layout (default true). Without
    /// it, call [`PostgresStore::migrate`] once; building then only checks
    /// that the table is not of the previous layout.
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
    /// Waiting for a grant uses one more connection, outside the pool.
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Connects a pool to `url` (`postgres://user:password@host:port/db`,
    /// with `sslmode=require` etc. for TLS) and builds the store. The pool
    /// opens one connection at once (so errors show here), pins READ
    /// COMMITTED, does not ping connections before use (one round trip per
    /// operation; a broken connection fails its statement with a retryable
    /// error), and the tables are created or converted when
    /// [`migrate_on_connect`](Self::migrate_on_connect) is on.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a bad URL or table name (the message
    /// never contains the password), or a table of the previous layout
    /// with migration off; a store error when the server cannot be reached
    /// or the migration fails.
    pub async fn connect(self, url: &str) -> Result<PostgresStore, StoreError> {
        // Refuse a bad table name before touching the network.
        TableNames::new(&self.table)?;
        let options = PgConnectOptions::from_str(url).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Invalid,
                "not a PostgreSQL connection URL (postgres://user@host:port/database)",
            )
        })?;
        let options = options.options([
            ("default_transaction_isolation", r"read\ committed"),
            // A plain index scan marks the index entries of released
            // entries dead as it passes them; a bitmap scan would visit
            // them again at every statement until a vacuum.
            ("enable_bitmapscan", "off"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.connect_timeout)
            // A ping before every statement would double the round trips;
            // a broken connection fails its statement (retryable) instead.
            .test_before_acquire(false)
            // Opens one connection now, so an unreachable server or refused
            // credentials are reported here, with their cause.
            .connect_with(options)
            .await
            .map_err(|e| map_error(e, None))?;
        self.build_with_pool(pool).await
    }

    /// Builds the store on an existing pool (see the crate docs on isolation
    /// levels).
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a bad table name, or a table of the
    /// previous layout with migration off; a store error when the
    /// migration fails.
    pub async fn build_with_pool(self, pool: PgPool) -> Result<PostgresStore, StoreError> {
        let names = TableNames::new(&self.table)?;
        let mut channel = format!("dlock:{}", self.table);
        channel.truncate(63);
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                sql: Statements::new(&names),
                names,
                table: self.table,
                channel,
                listener: Arc::new(Listener::new()),
                busy: BusyKeys::default(),
            }),
        };
        if self.migrate {
            store.migrate().await?;
        } else {
            store.refuse_previous_layout().await?;
        }
        Ok(store)
    }
}

/// The two tables' names, checked and quoted for SQL, and as text for
/// `to_regclass`.
#[derive(Debug, Clone)]
pub(crate) struct TableNames {
    pub(crate) keys: String,
    pub(crate) entries: String,
}

impl TableNames {
    pub(crate) fn new(table: &str) -> Result<Self, StoreError> {
        let invalid = || {
            StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "table name {:?} is not an identifier (letters, digits and _, starting with a letter or _, at most {MAX_TABLE_PART} bytes, optionally qualified by a schema of at most 63)",
                    table.chars().take(80).collect::<String>()
                ),
            )
        };
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 {
            return Err(invalid());
        }
        let last = parts.len() - 1;
        let mut quoted = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let mut chars = part.chars();
            let starts_well = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            let max = if i == last { MAX_TABLE_PART } else { 63 };
            if !starts_well || !rest_ok || part.len() > max {
                return Err(invalid());
            }
            quoted.push(format!("\"{part}\""));
        }
        let keys = quoted.join(".");
        let entries = format!("{}{ENTRIES_SUFFIX}\"", &keys[..keys.len() - 1]);
        Ok(Self { keys, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked_and_quoted() {
        let names = TableNames::new("dlock_leases").unwrap();
        assert_eq!(names.keys, "\"dlock_leases\"");
        assert_eq!(names.entries, "\"dlock_leases_entries\"");
        let names = TableNames::new("ops.locks").unwrap();
        assert_eq!(names.keys, "\"ops\".\"locks\"");
        assert_eq!(names.entries, "\"ops\".\"locks_entries\"");
        assert_eq!(TableNames::new("_x1").unwrap().keys, "\"_x1\"");
        let longest = "x".repeat(55);
        assert_eq!(
            TableNames::new(&longest).unwrap().entries.len(),
            63 + 2,
            "the entries table's name fits PostgreSQL's 63 bytes"
        );
        assert!(TableNames::new(&format!("{}.t", "s".repeat(63))).is_ok());
        for hostile in [
            "",
            "1abc",
            "locks; DROP TABLE users",
            "locks\"",
            "a.b.c",
            "a b",
            "émoji",
            ".locks",
            &"x".repeat(56),
            &"x".repeat(64),
        ] {
            let error = TableNames::new(hostile).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Invalid, "{hostile:?}");
        }
    }
}
