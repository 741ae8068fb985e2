//! [`RedisStoreBuilder`]: the URL, key prefix, batch limit, timeouts and
//! TLS root of a store, and connecting with them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{StoreError, StoreErrorKind};

use crate::conn::{Conn, ConnSettings};
use crate::store::{Inner, RedisStore};
use crate::target::{Target, redact_url};
use crate::waiters::Waiters;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "dlock:";
/// The default (and largest sensible) number of leases per renewal call.
pub const DEFAULT_MAX_BATCH: usize = 1000;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a [`RedisStore`]: URL, key prefix, batch limit and timeouts.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use lock_redis::RedisStore;
///
/// # async fn demo() -> Result<(), lock_core::StoreError> {
/// let store = RedisStore::builder("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")
///     .prefix("jobs:")
///     .max_batch(500)
///     .response_timeout(Some(Duration::from_millis(500)))
///     .connect()
///     .await?;
/// assert!(store.is_cluster());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    max_batch: usize,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
    root_certificate: Option<Vec<u8>>,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("max_batch", &self.max_batch)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("root_certificate", &self.root_certificate.is_some())
            .finish()
    }
}

impl RedisStoreBuilder {
    /// A builder for `url` with the defaults.
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            prefix: DEFAULT_PREFIX.to_owned(),
            max_batch: DEFAULT_MAX_BATCH,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: Some(DEFAULT_RESPONSE_TIMEOUT),
            root_certificate: None,
        }
    }

    /// Puts `prefix` before every Redis key and channel name the store uses
    /// (default [`DEFAULT_PREFIX`], `dlock:`). It may not contain `{` or
    /// `}`, which would change the keys' hash slots.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most leases one renewal call takes (default
    /// [`DEFAULT_MAX_BATCH`]; at least 1). The locker splits larger rounds.
    #[must_use]
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// How long to wait for a connection (default 2 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may wait for its reply before it fails with a
    /// retryable timeout (default 2 s; `None`: no limit of the store's own,
    /// the locker's `store_timeout` still applies).
    #[must_use]
    pub fn response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Trusts the certificate authorities of `pem` (PEM-encoded) instead of
    /// the system's for `rediss://` and `rediss+cluster://` (a private CA,
    /// as most Redis deployments with TLS have). Ignored for plain
    /// connections.
    #[must_use]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificate = Some(pem.into());
        self
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for a URL or prefix that cannot be used;
    /// [`StoreErrorKind::Auth`] when the server refuses the credentials;
    /// [`StoreErrorKind::Unavailable`] or [`StoreErrorKind::Timeout`] when
    /// no connection could be made. No message shows the URL's secrets.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future closes the connections it opened;
    /// nothing is written to the server.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        if self.prefix.contains(['{', '}']) {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "the key prefix {:?} contains `{{` or `}}`, which would change the keys' hash slots; remove them",
                    self.prefix
                ),
            ));
        }
        let target = Target::parse(&self.url)?;
        let waiters = Arc::new(Waiters::default());
        let settings = ConnSettings {
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            root_certificate: self.root_certificate.as_deref(),
        };
        let conn = Conn::open(&target, &settings, &waiters).await?;
        let target = target.redacted();
        tracing::debug!(target = %target, prefix = %self.prefix, "connected to redis");
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                waiters,
                prefix: self.prefix,
                target,
                max_batch: self.max_batch,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let builder = RedisStore::builder("redis://user:hunter2@localhost:6379");
        let shown = format!("{builder:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user:***@localhost"), "{shown}");
    }
}
