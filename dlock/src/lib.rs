//! dlock: leased, fenced distributed locks, opened from a URL.
//!
//! This crate re-exports everything of [`lock_core`] (the [`url`] module
//! included: where secrets hide in connection URLs, and how they are kept
//! out of messages), each backend crate behind its cargo feature
//! ([`sqlite`], [`postgres`], [`redis`], [`etcd`], [`dynamodb`]), and adds [`open`] and
//! [`open_store`], which pick a backend by the URL's scheme, and
//! [`Opener`] for the settings a URL does not carry:
//!
//! | URL | backend | cargo feature |
//! | --- | --- | --- |
//! | `sqlite:PATH` or `sqlite://PATH` | `lock_sqlite::SqliteStore`, one file shared by the processes of a host | `sqlite` (default) |
//! | `postgres://user:pass@host:port/db` (or `postgresql://`) | `lock_postgres::PostgresStore` | `postgres` |
//! | `redis://[user:pass@]host:port[/db]`, `rediss://` (TLS) | `lock_redis::RedisStore`, one server | `redis` |
//! | `redis+cluster://host:port,host:port`, `rediss+cluster://` | `lock_redis::RedisStore`, a Redis Cluster | `redis` |
//! | `etcd://[user:pass@]host:port[,host:port...][/namespace]`, `etcds://` (TLS) | `lock_etcd::EtcdStore` | `etcd` |
//! | `dynamodb://TABLE?region=R[&endpoint=URL][&create_table=true]` | `lock_dynamodb::DynamoStore`; expiry by the clients' clocks within `max_clock_skew` | `dynamodb` |
//! | `memory:` | [`MemoryStore`], this process only | always |
//!
//! Opening waits at most the connect timeout for the backend (by default
//! the locker's store timeout, 1 s), and an unreachable backend is reported
//! with its cause. No error, log line or `Debug` output of this crate shows
//! a password, wherever the URL carries it.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use dlock::{Locker, LockerOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let locker = dlock::open("sqlite:/var/lib/myapp/locks.db", LockerOptions::default()).await?;
//! let guard = locker.lock("nightly-report", Duration::from_secs(10)).await?;
//! println!("fencing token {}", guard.fencing_token().expect("fencing is on"));
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The store itself, to wrap it (with metrics, say) before building a
//! locker on it:
//!
//! ```no_run
//! use dlock::{LeaseLocker, LockerOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = dlock::Opener::new("postgres://app@db.internal/app")
//!     .table("job_locks")
//!     .open_store()
//!     .await?;
//! let locker = LeaseLocker::new(store, LockerOptions::default())?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use lock_core::*;

/// The DynamoDB backend: the `lock-dynamodb` crate.
#[cfg(feature = "dynamodb")]
pub use lock_dynamodb as dynamodb;
/// The etcd backend: the `lock-etcd` crate.
#[cfg(feature = "etcd")]
pub use lock_etcd as etcd;
/// The PostgreSQL backend: the `lock-postgres` crate.
#[cfg(feature = "postgres")]
pub use lock_postgres as postgres;
/// The Redis backend: the `lock-redis` crate.
#[cfg(feature = "redis")]
pub use lock_redis as redis;
/// The SQLite backend: the `lock-sqlite` crate.
#[cfg(feature = "sqlite")]
pub use lock_sqlite as sqlite;

/// `url` with its secrets hidden, for errors and `Debug`:
/// [`url::redact`], but only the scheme of a `scheme:rest` URL whose rest
/// holds an `@`: `user:password@host`, its scheme forgotten, reads as the
/// opaque URL `user:...`, whose password `redact` would not know to hide.
fn redact(url: &str) -> String {
    match url.split_once(':') {
        Some((scheme, rest))
            if is_scheme(scheme) && !rest.starts_with("//") && rest.contains('@') =>
        {
            format!("{scheme}:***")
        }
        _ => url::redact(url),
    }
}

/// The connect timeout of [`Opener::open_store`] when none is set: the
/// locker's default store timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The backends [`open`] knows, whether or not their feature is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `memory:`
    Memory,
    /// `sqlite:PATH`
    Sqlite,
    /// `postgres://` / `postgresql://`
    Postgres,
    /// `redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`
    Redis,
    /// `etcd://`, `etcds://`
    Etcd,
    /// `dynamodb://TABLE`
    DynamoDb,
}

impl Backend {
    /// The cargo feature that compiles the backend in (`None`: always).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::Memory => None,
            Self::Sqlite => Some("sqlite"),
            Self::Postgres => Some("postgres"),
            Self::Redis => Some("redis"),
            Self::Etcd => Some("etcd"),
            Self::DynamoDb => Some("dynamodb"),
        }
    }

    /// Whether this build includes the backend.
    pub fn is_enabled(self) -> bool {
        match self {
            Self::Memory => true,
            Self::Sqlite => cfg!(feature = "sqlite"),
            Self::Postgres => cfg!(feature = "postgres"),
            Self::Redis => cfg!(feature = "redis"),
            Self::Etcd => cfg!(feature = "etcd"),
            Self::DynamoDb => cfg!(feature = "dynamodb"),
        }
    }

    /// Whether the backend keeps its locks in a table
    /// ([`Opener::table`]).
    pub fn has_table(self) -> bool {
        matches!(self, Self::Sqlite | Self::Postgres)
    }

    /// The backend of `url`, by its scheme.
    ///
    /// # Errors
    ///
    /// [`OpenError::UnknownScheme`], or [`OpenError::Invalid`] when `url`
    /// has no scheme.
    pub fn of_url(url: &str) -> Result<Self, OpenError> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme)
            .filter(|scheme| is_scheme(scheme))
            .ok_or_else(|| OpenError::Invalid {
                url: redact(url),
                reason: "no scheme (expected e.g. sqlite:PATH or postgres://...)".into(),
            })?;
        match scheme.to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+unix" => {
                Ok(Self::Redis)
            }
            "etcd" | "etcds" => Ok(Self::Etcd),
            "dynamodb" => Ok(Self::DynamoDb),
            other => Err(OpenError::UnknownScheme {
                scheme: other.to_owned(),
            }),
        }
    }
}

/// A URL scheme: a letter, then letters, digits, `+`, `-` and `.`.
fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Etcd => "etcd",
            Self::DynamoDb => "dynamodb",
        })
    }
}

/// Why [`open`], [`open_store`] or an [`Opener`] failed. Neither `Display`
/// nor `Debug` shows a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL's scheme names no backend.
    #[error(
        "unknown backend scheme {scheme:?}: use sqlite:PATH, postgres://..., redis://..., redis+cluster://..., etcd://..., dynamodb://TABLE, or memory:"
    )]
    UnknownScheme {
        /// The scheme found.
        scheme: String,
    },
    /// The backend exists but this build left it out.
    #[error(
        "the {backend} backend is not compiled in: enable the `{feature}` feature of the dlock crate"
    )]
    FeatureDisabled {
        /// The backend asked for.
        backend: Backend,
        /// The feature to enable.
        feature: &'static str,
    },
    /// The URL, or a setting such as the table name, cannot be used: a
    /// mistake of the caller's.
    #[error("cannot use the backend {url}: {reason}")]
    Invalid {
        /// The URL, secrets replaced by `***`.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend could not be reached, refused the credentials, or could
    /// not be set up.
    #[error("cannot open {backend} backend: {source}")]
    Store {
        /// The backend.
        backend: Backend,
        /// What the store said.
        source: StoreError,
    },
    /// The locker options do not fit the backend.
    #[error(transparent)]
    Options(#[from] LockError),
}

/// Opens a locker on the backend `url` names (see the crate docs for the
/// forms), with `options`; connecting waits at most the options' store
/// timeout. [`Opener`] sets a table or another connect timeout.
///
/// # Errors
///
/// [`OpenError`]: an unknown scheme, a backend whose feature is off (the
/// message names the feature), an invalid URL, an unreachable backend or
/// refused credentials (with the cause), or options the backend does not
/// accept. Passwords never appear in errors.
///
/// # Cancel safety
///
/// Cancel-safe as the backend's own connect: dropping the future closes what it
/// opened, and nothing is locked yet.
pub async fn open(url: &str, options: LockerOptions) -> Result<Arc<dyn Locker>, OpenError> {
    Opener::new(url).open(options).await
}

/// Opens the store the backend `url` names, for a [`LeaseLocker`] of your
/// own or to wrap it: `Arc<dyn LeaseStore>` is itself a [`LeaseStore`].
/// Connecting waits at most 1 s (see [`Opener::connect_timeout`]).
///
/// # Errors
///
/// As [`open`], but for the options.
///
/// # Cancel safety
///
/// Cancel-safe as the backend's own connect: dropping the future closes what it
/// opened, and nothing is locked yet.
pub async fn open_store(url: &str) -> Result<Arc<dyn LeaseStore>, OpenError> {
    Opener::new(url).open_store().await
}

/// Opens a backend from its URL, with the settings a URL does not carry.
///
/// `Debug` shows the URL with its secrets replaced by `***`.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use dlock::{LockerOptions, Opener};
///
/// # async fn run() -> Result<(), dlock::OpenError> {
/// let locker = Opener::new("postgres://app@db.internal/app")
///     .table("ops.job_locks")
///     .connect_timeout(Duration::from_secs(3))
///     .open(LockerOptions::default())
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Opener {
    url: String,
    table: Option<String>,
    connect_timeout: Option<Duration>,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("url", &redact(&self.url))
            .field("table", &self.table)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Opener {
    /// An opener for the backend `url` names (see the crate docs for the
    /// forms).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            table: None,
            connect_timeout: None,
        }
    }

    /// The table holding the locks, for backends that keep one (PostgreSQL,
    /// optionally schema-qualified, and SQLite; see
    /// [`Backend::has_table`]). Default: the store's own, `dlock_leases`.
    /// Opening another backend with a table set fails with
    /// [`OpenError::Options`].
    #[must_use]
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// How long connecting may wait for the backend (PostgreSQL, Redis,
    /// etcd unless its URL sets `connect_timeout_ms`). Default: the
    /// locker's store timeout for [`open`](Self::open), 1 s for
    /// [`open_store`](Self::open_store).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The backend the URL names.
    ///
    /// # Errors
    ///
    /// As [`Backend::of_url`].
    pub fn backend(&self) -> Result<Backend, OpenError> {
        Backend::of_url(&self.url)
    }

    /// Opens a locker with `options`.
    ///
    /// # Errors
    ///
    /// As [`open`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe as the backend's own connect: dropping the future closes
    /// what it opened, and nothing is locked yet.
    pub async fn open(&self, options: LockerOptions) -> Result<Arc<dyn Locker>, OpenError> {
        let timeout = self.connect_timeout.unwrap_or(options.store_timeout());
        self.connect(timeout).await?.into_locker(options)
    }

    /// Opens the store.
    ///
    /// # Errors
    ///
    /// As [`open_store`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe as the backend's own connect: dropping the future closes
    /// what it opened, and nothing is locked yet.
    pub async fn open_store(&self) -> Result<Arc<dyn LeaseStore>, OpenError> {
        let timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        Ok(self.connect(timeout).await?.into_shared())
    }

    #[cfg_attr(
        not(any(
            feature = "postgres",
            feature = "redis",
            feature = "etcd",
            feature = "dynamodb"
        )),
        allow(unused_variables)
    )]
    async fn connect(&self, connect_timeout: Duration) -> Result<Opened, OpenError> {
        let backend = self.backend()?;
        if !backend.is_enabled() {
            return Err(OpenError::FeatureDisabled {
                backend,
                feature: backend.feature().unwrap_or("default"),
            });
        }
        if self.table.is_some() && !backend.has_table() {
            return Err(OpenError::Options(LockError::InvalidConfig(format!(
                "a table is set, but the {backend} backend keeps no tables (PostgreSQL and SQLite do); keep locks apart with a prefix instead"
            ))));
        }
        let url = self.url.as_str();
        let opened = match backend {
            Backend::Memory => Opened::Memory(MemoryStore::new()),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => {
                let path = sqlite_path(url)?;
                if let Some(parent) = std::path::Path::new(&path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|error| OpenError::Store {
                        backend,
                        source: StoreError::unavailable(format!(
                            "sqlite: cannot create the directory {}: {error}",
                            parent.display()
                        ))
                        .with_source(error),
                    })?;
                }
                let mut builder = lock_sqlite::SqliteStore::builder();
                if let Some(table) = &self.table {
                    builder = builder.table(table);
                }
                let store = builder.open(&path).await;
                Opened::Sqlite(store.map_err(|e| store_error(backend, url, e))?)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let mut builder =
                    lock_postgres::PostgresStore::builder().connect_timeout(connect_timeout);
                if let Some(table) = &self.table {
                    builder = builder.table(table);
                }
                let store = builder.connect(url).await;
                Opened::Postgres(store.map_err(|e| store_error(backend, url, e))?)
            }
            #[cfg(feature = "redis")]
            Backend::Redis => {
                let store = lock_redis::RedisStore::builder(url)
                    .connect_timeout(connect_timeout)
                    .connect()
                    .await;
                Opened::Redis(store.map_err(|e| store_error(backend, url, e))?)
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd => {
                let mut config = lock_etcd::EtcdConfig::from_url(url)
                    .map_err(|e| store_error(backend, url, e))?;
                let url_sets_timeout = url::ConnectionUrl::parse(url)
                    .is_ok_and(|parsed| parsed.query_value("connect_timeout_ms").is_some());
                if !url_sets_timeout {
                    config = config.connect_timeout(connect_timeout);
                }
                let store = lock_etcd::EtcdStore::connect_with(config).await;
                Opened::Etcd(store.map_err(|e| store_error(backend, url, e))?)
            }
            #[cfg(feature = "dynamodb")]
            Backend::DynamoDb => {
                let store = lock_dynamodb::DynamoStore::connect(url).await;
                Opened::DynamoDb(store.map_err(|e| store_error(backend, url, e))?)
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(OpenError::FeatureDisabled {
                    backend,
                    feature: backend.feature().unwrap_or("default"),
                });
            }
        };
        Ok(opened)
    }
}

/// A store [`Opener::connect`] made, by backend: a locker is built on the
/// store's own type, without a virtual call per operation.
enum Opened {
    Memory(MemoryStore),
    #[cfg(feature = "sqlite")]
    Sqlite(lock_sqlite::SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(lock_postgres::PostgresStore),
    #[cfg(feature = "redis")]
    Redis(lock_redis::RedisStore),
    #[cfg(feature = "etcd")]
    Etcd(lock_etcd::EtcdStore),
    #[cfg(feature = "dynamodb")]
    DynamoDb(lock_dynamodb::DynamoStore),
}

impl Opened {
    fn into_locker(self, options: LockerOptions) -> Result<Arc<dyn Locker>, OpenError> {
        fn locker<S: LeaseStore>(
            store: S,
            options: LockerOptions,
        ) -> Result<Arc<dyn Locker>, OpenError> {
            Ok(Arc::new(LeaseLocker::new(store, options)?))
        }
        match self {
            Self::Memory(store) => locker(store, options),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => locker(store, options),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => locker(store, options),
            #[cfg(feature = "redis")]
            Self::Redis(store) => locker(store, options),
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => locker(store, options),
            #[cfg(feature = "dynamodb")]
            Self::DynamoDb(store) => locker(store, options),
        }
    }

    fn into_shared(self) -> Arc<dyn LeaseStore> {
        match self {
            Self::Memory(store) => Arc::new(store),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => Arc::new(store),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => Arc::new(store),
            #[cfg(feature = "redis")]
            Self::Redis(store) => Arc::new(store),
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => Arc::new(store),
            #[cfg(feature = "dynamodb")]
            Self::DynamoDb(store) => Arc::new(store),
        }
    }
}

/// A store refusing its URL or settings is the caller's mistake; anything
/// else means the backend could not be reached, refused the credentials,
/// or could not be set up.
#[cfg_attr(
    not(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "redis",
        feature = "etcd",
        feature = "dynamodb"
    )),
    allow(dead_code)
)]
fn store_error(backend: Backend, url: &str, source: StoreError) -> OpenError {
    match source.kind() {
        StoreErrorKind::Invalid => OpenError::Invalid {
            url: redact(url),
            reason: source.message().to_owned(),
        },
        _ => OpenError::Store { backend, source },
    }
}

/// The file path of a `sqlite:PATH` or `sqlite://PATH` URL.
#[cfg(feature = "sqlite")]
fn sqlite_path(url: &str) -> Result<String, OpenError> {
    let rest = &url["sqlite:".len()..];
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(OpenError::Invalid {
            url: redact(url),
            reason: "no file path (expected sqlite:PATH)".into(),
        });
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_name_backends() {
        assert_eq!(
            Backend::of_url("sqlite:/tmp/x.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(Backend::of_url("SQLITE://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::of_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(Backend::of_url("memory:").unwrap(), Backend::Memory);
        assert_eq!(Backend::of_url("rediss://h:6380").unwrap(), Backend::Redis);
        assert_eq!(
            Backend::of_url("redis+cluster://a:1,b:2").unwrap(),
            Backend::Redis
        );
        assert_eq!(Backend::of_url("etcds://a:1").unwrap(), Backend::Etcd);
        let unknown = Backend::of_url("mongodb://h").unwrap_err();
        assert!(unknown.to_string().contains("sqlite:PATH"), "{unknown}");
        for schemeless in ["no-scheme", "S3 CRET:x", ":S3CRET@h"] {
            let error = Backend::of_url(schemeless).unwrap_err();
            assert!(matches!(error, OpenError::Invalid { .. }), "{error}");
            assert!(!error.to_string().contains("S3"), "{error}");
        }
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            redact("postgres://app@db/x?password=S3CRET&sslmode=bogus"),
            "postgres://app@db/x?password=***&sslmode=bogus"
        );
        assert_eq!(redact("redis://S3CRET@h:6379"), "redis://***@h:6379");
        assert_eq!(redact("app:S3CRET@db:5432/x"), "app:***");
        assert_eq!(redact("postgres:app:S3CRET@db/x"), "postgres:***");
        assert_eq!(redact("S3CRET"), "<not a URL>");
        assert_eq!(
            redact("sqlite:/var/lib/locks.db"),
            "sqlite:/var/lib/locks.db"
        );
    }

    #[test]
    fn a_disabled_backend_names_its_feature() {
        let error = OpenError::FeatureDisabled {
            backend: Backend::Postgres,
            feature: "postgres",
        };
        assert_eq!(
            error.to_string(),
            "the postgres backend is not compiled in: enable the `postgres` feature of the dlock crate"
        );
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_urls_give_paths() {
        assert_eq!(sqlite_path("sqlite:/tmp/a.db").unwrap(), "/tmp/a.db");
        assert_eq!(sqlite_path("sqlite:///tmp/a.db").unwrap(), "/tmp/a.db");
        assert_eq!(sqlite_path("sqlite:rel.db").unwrap(), "rel.db");
        assert!(sqlite_path("sqlite:").is_err());
    }

    #[tokio::test]
    async fn memory_opens() {
        let locker = open("memory:", LockerOptions::default()).await.unwrap();
        assert!(locker.try_lock("x").await.is_ok());
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_opens_creating_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}/nested/locks.db", dir.path().display());
        let locker = open(&url, LockerOptions::default()).await.unwrap();
        let guard = locker.try_lock("x").await.unwrap();
        assert_eq!(
            guard.fencing_token().and_then(FencingToken::to_u64),
            Some(1)
        );
    }
}
