//! Configuring and connecting a [`PostgresStore`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lock_core::url::{ConnectionUrl, is_secret_parameter};
use lock_core::{StoreError, StoreErrorKind};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};

use crate::busy::BusyKeys;
use crate::error::{Target, connect_error};
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
    /// with `sslmode=require` etc. for TLS) and builds the store.
    ///
    /// One connection is opened first, on its own, within the
    /// [connect timeout](Self::connect_timeout): an unreachable server, an
    /// unknown host or refused credentials fail here at once, saying which.
    /// The pool then pins READ COMMITTED, does not ping connections before
    /// use (one round trip per operation; a broken connection fails its
    /// statement with a retryable error), and the tables are created when
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
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future closes the pool; schema changes run in
    /// a transaction, which the server rolls back when its connection goes.
    pub async fn connect(self, url: &str) -> Result<PostgresStore, StoreError> {
        // Refuse a bad table name before touching the network.
        TableNames::new(&self.table)?;
        let options = connect_options(url)?.options([
            ("default_transaction_isolation", r"read\ committed"),
            // A plain index scan marks the index entries of released
            // entries dead as it passes them; a bitmap scan would visit
            // them again at every statement until a vacuum.
            ("enable_bitmapscan", "off"),
        ]);
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
    /// [`StoreErrorKind::Invalid`] for a bad table name, or a table of the
    /// previous layout with migration off; a store error when the
    /// migration fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: schema changes run in a transaction, which the server rolls
    /// back when its connection goes; the pool stays as it was.
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
