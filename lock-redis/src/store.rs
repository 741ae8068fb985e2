//! [`RedisStore`]: the store handle and what it tells about itself. The
//! operations are in [`crate::ops`], connecting in [`crate::builder`] and
//! [`crate::conn`].

use std::fmt;
use std::sync::Arc;

use crate::builder::RedisStoreBuilder;
use crate::conn::Conn;
use crate::keys::RedisKeys;
use crate::waiters::Waiters;

/// A [`LeaseStore`](lock_core::LeaseStore) on a single Redis server (with
/// or without replicas) or a Redis Cluster. See the [crate
/// documentation](crate) for what it guarantees, the key layout and the
/// URL forms.
///
/// Every operation is one Lua script call (one round trip); a renewal batch
/// is one call per batch, or one per hash slot in Cluster mode. Clones share
/// the connection. Dropping the last clone closes it. `Debug` shows the URL
/// with its secrets hidden.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use lock_core::{LeaseLocker, Locker, LockerOptions};
/// use lock_redis::RedisStore;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("billing:")
///     .connect()
///     .await?;
/// let locker = LeaseLocker::new(store, LockerOptions::default())?;
/// let guard = locker.lock("invoice-run", Duration::from_secs(10)).await?;
/// // ... write with guard.fencing_token() ...
/// guard.unlock().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) conn: Conn,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) prefix: String,
    /// The URL, redacted.
    pub(crate) target: String,
    pub(crate) max_batch: usize,
}

impl RedisStore {
    /// Connects to `url` with the default prefix, batch limit and timeouts:
    ///
    /// - `redis://[user:password@]host[:port][/db]`: one server;
    /// - `rediss://...`: one server over TLS (system root certificates, or
    ///   those given to [`RedisStoreBuilder::tls_root_certificate`]);
    /// - `redis+cluster://[user:password@]host:port[,host:port...]` (and
    ///   `rediss+cluster://` for TLS): a Redis Cluster, from any of its
    ///   nodes; the credentials and query apply to every node;
    /// - `redis+unix:///path` and `unix:///path`: a Unix socket.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future closes the connections it opened;
    /// nothing is written to the server.
    pub async fn connect(url: &str) -> Result<Self, lock_core::StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder for a store on `url` (see [`RedisStore::connect`] for the
    /// URL forms).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url.into())
    }

    /// The Redis names the lock key `key` uses (see [`RedisKeys`] for the
    /// layout): for operators, and tests that poke at the data.
    pub fn redis_keys(&self, key: &str) -> RedisKeys {
        RedisKeys::new(&self.inner.prefix, key)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.conn.is_cluster()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.target)
            .field("cluster", &self.is_cluster())
            .field("prefix", &self.inner.prefix)
            .field("max_batch", &self.inner.max_batch)
            .finish()
    }
}
