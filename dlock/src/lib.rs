//! dlock: leased, fenced distributed locks, opened from a URL.
//!
//! This crate re-exports everything of [`lock_core`] and adds [`open`],
//! which picks a backend by the URL's scheme:
//!
//! | URL | backend | cargo feature |
//! | --- | --- | --- |
//! | `sqlite:PATH` or `sqlite://PATH` | `lock_sqlite::SqliteStore`, one file shared by the processes of a host | `sqlite` (default) |
//! | `postgres://user:pass@host:port/db` (or `postgresql://`) | `lock_postgres::PostgresStore` | `postgres` |
//! | `redis://[user:pass@]host:port[/db]`, `rediss://` (TLS) | `lock_redis::RedisStore`, one server | `redis` |
//! | `redis+cluster://host:port,host:port`, `rediss+cluster://` | `lock_redis::RedisStore`, a Redis Cluster | `redis` |
//! | `etcd://[user:pass@]host:port[,host:port...][/namespace]`, `etcds://` (TLS) | `lock_etcd::EtcdStore` | `etcd` |
//! | `memory:` | [`MemoryStore`], this process only | always |
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
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

pub use lock_core::*;

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
        }
    }

    /// The backend of `url`, by its scheme.
    ///
    /// # Errors
    ///
    /// [`OpenError::UnknownScheme`] or [`OpenError::InvalidUrl`].
    pub fn of_url(url: &str) -> Result<Self, OpenError> {
        let Some((scheme, _)) = url.split_once(':') else {
            return Err(OpenError::InvalidUrl {
                url: redact(url),
                reason: "no scheme (expected e.g. sqlite:PATH or postgres://...)".into(),
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+unix" => {
                Ok(Self::Redis)
            }
            "etcd" | "etcds" => Ok(Self::Etcd),
            other => Err(OpenError::UnknownScheme {
                scheme: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Etcd => "etcd",
        })
    }
}

/// Why [`open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL's scheme names no backend.
    #[error(
        "unknown backend scheme {scheme:?}: use sqlite:PATH, postgres://..., redis://..., redis+cluster://..., or memory:"
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
    /// The URL does not parse for its backend (printed without password).
    #[error("invalid backend URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend could not be reached or set up.
    #[error("cannot open {backend} backend: {source}")]
    Store {
        /// The backend.
        backend: Backend,
        /// What the store said.
        source: StoreError,
    },
    /// The options do not fit the backend.
    #[error(transparent)]
    Options(#[from] LockError),
}

/// Opens a locker on the backend `url` names (see the crate docs for the
/// forms), with `options`.
///
/// # Errors
///
/// [`OpenError`]: an unknown scheme, a backend whose feature is off (the
/// message names the feature), an invalid URL, an unreachable backend, or
/// options the backend does not accept. Passwords never appear in errors.
pub async fn open(url: &str, options: LockerOptions) -> Result<Arc<dyn Locker>, OpenError> {
    let backend = Backend::of_url(url)?;
    if !backend.is_enabled() {
        return Err(OpenError::FeatureDisabled {
            backend,
            feature: backend.feature().unwrap_or("default"),
        });
    }
    match backend {
        Backend::Memory => locker(MemoryStore::new(), options),
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            let path = sqlite_path(url)?;
            if let Some(parent) = std::path::Path::new(&path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|error| OpenError::InvalidUrl {
                    url: redact(url),
                    reason: format!("cannot create {}: {error}", parent.display()),
                })?;
            }
            let store = lock_sqlite::SqliteStore::open(&path).await;
            locker(store.map_err(|e| open_error(backend, url, e))?, options)
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let store = lock_postgres::PostgresStore::connect(url).await;
            locker(store.map_err(|e| open_error(backend, url, e))?, options)
        }
        #[cfg(feature = "redis")]
        Backend::Redis => {
            let store = lock_redis::RedisStore::connect(url).await;
            locker(store.map_err(|e| open_error(backend, url, e))?, options)
        }
        #[cfg(feature = "etcd")]
        Backend::Etcd => {
            let store = lock_etcd::EtcdStore::connect(url).await;
            locker(store.map_err(|e| open_error(backend, url, e))?, options)
        }
        #[allow(unreachable_patterns)]
        _ => Err(OpenError::FeatureDisabled {
            backend,
            feature: backend.feature().unwrap_or("default"),
        }),
    }
}

/// A store refusing its URL is the caller's mistake; anything else means
/// the backend could not be reached or set up.
#[cfg_attr(
    not(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "redis",
        feature = "etcd"
    )),
    allow(dead_code)
)]
fn open_error(backend: Backend, url: &str, source: StoreError) -> OpenError {
    match source.kind() {
        StoreErrorKind::Invalid => OpenError::InvalidUrl {
            url: redact(url),
            reason: source.message().to_owned(),
        },
        _ => OpenError::Store { backend, source },
    }
}

fn locker<S: LeaseStore>(store: S, options: LockerOptions) -> Result<Arc<dyn Locker>, OpenError> {
    Ok(Arc::new(LeaseLocker::new(store, options)?))
}

/// The file path of a `sqlite:PATH` or `sqlite://PATH` URL.
#[cfg(feature = "sqlite")]
fn sqlite_path(url: &str) -> Result<String, OpenError> {
    let rest = &url["sqlite:".len()..];
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(OpenError::InvalidUrl {
            url: redact(url),
            reason: "no file path (expected sqlite:PATH)".into(),
        });
    }
    Ok(path.to_owned())
}

/// `url` with the password of its user-info part replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
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
        let unknown = Backend::of_url("mongodb://h").unwrap_err();
        assert!(unknown.to_string().contains("sqlite:PATH"), "{unknown}");
        assert!(matches!(
            Backend::of_url("no-scheme"),
            Err(OpenError::InvalidUrl { .. })
        ));
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

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:hunter2@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("sqlite:/tmp/a.db"), "sqlite:/tmp/a.db");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://:***@h:6379");
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
    async fn memory_and_sqlite_open() {
        let locker = open("memory:", LockerOptions::default()).await.unwrap();
        assert!(locker.try_lock("x").await.is_ok());
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
