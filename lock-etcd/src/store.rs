//! [`EtcdStore`]: the store handle, connecting, and what it tells about
//! itself. The operations are in [`crate::ops`], the memory of entries in
//! [`crate::registry`], the clean-ups in [`crate::sweep`], the waiters'
//! watches in [`crate::watches`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions};
use lock_core::{Capabilities, FencingToken, LeaseId, StoreError, StoreErrorKind};

use crate::config::EtcdConfig;
use crate::conn::Conn;
use crate::error::store_error;
use crate::layout::Layout;
use crate::lease::EtcdLease;
use crate::registry::Registry;
use crate::watches::Watches;

/// The batch limit reported to the locker: renewals cost the same whatever
/// their size, so effectively none.
const MAX_BATCH: usize = 1 << 20;

/// A [`LeaseStore`](lock_core::LeaseStore) on etcd: each key's queue is one
/// etcd key per entry, attached to the store's own etcd leases, ordered by
/// create revision (which is also the fencing token); waits are watches.
/// `Debug` shows the URL it was connected with, secrets hidden.
///
/// Cloning gives another handle on the same session (same connection, same
/// etcd leases, same watches). See the [crate documentation](crate) for
/// the layout in etcd, the transactions, how renewals and waiting work, and
/// the fencing recipe.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use lock_core::{LeaseLocker, Locker, LockerOptions};
/// use lock_etcd::EtcdStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = EtcdStore::connect("etcd://127.0.0.1:2379,127.0.0.2:2379/myapp/").await?;
/// let options = LockerOptions::builder()
///     .owner("report-worker")
///     .lease(Duration::from_secs(10))
///     .build()?;
/// let locker = LeaseLocker::new(store, options)?;
/// let guard = locker.lock("nightly-report", Duration::from_secs(30)).await?;
/// // ... work, passing guard.fencing_token() to what you write ...
/// guard.unlock().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) conn: Conn,
    pub(crate) layout: Layout,
    pub(crate) config: EtcdConfig,
    pub(crate) min_ttl_secs: u64,
    pub(crate) capabilities: Capabilities,
    /// What the store remembers of its leases, grants and acquisitions.
    pub(crate) registry: Registry,
    /// Whether a clean-up pass of the sweeper runs.
    pub(crate) cleaning: AtomicBool,
    /// The watches of the keys this store's waiters wait on.
    pub(crate) watches: Arc<Watches>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("url", &self.inner.config.redacted_url())
            .field("endpoints", &self.inner.config.endpoints)
            .field("namespace", &self.inner.layout.namespace())
            .field("user", &self.inner.config.user_name())
            .field("tls", &self.inner.config.tls.is_some())
            .field("min_ttl_secs", &self.inner.min_ttl_secs)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster of `url` (see
    /// [`EtcdConfig::from_url`] for the form, e.g.
    /// `etcd://host:2379,host:2379/namespace/`).
    ///
    /// # Errors
    ///
    /// As [`EtcdConfig::from_url`] and [`EtcdStore::connect_with`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future closes the connections it opened; an
    /// etcd lease it may have granted expires on its own ttl.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(EtcdConfig::from_url(url)?).await
    }

    /// Connects with `config`, authenticates when credentials are set, and
    /// learns the server's minimum lease ttl (by granting a 1 s lease, unless
    /// [`EtcdConfig::min_ttl`] declared it).
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Invalid`] for no endpoints or TLS without the `tls`
    /// feature; [`StoreErrorKind::Auth`] for refused credentials;
    /// [`StoreErrorKind::Unavailable`] or [`StoreErrorKind::Timeout`] when
    /// etcd cannot be reached.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future closes the connections it opened; an
    /// etcd lease it may have granted expires on its own ttl.
    pub async fn connect_with(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                "no etcd endpoints given",
            ));
        }
        let options = connect_options(&config)?;
        let timeout = config.request_timeout;
        let client = tokio::time::timeout(
            config.connect_timeout + timeout,
            Client::connect(config.endpoints(), Some(options)),
        )
        .await
        .map_err(|_| StoreError::timeout("connecting to etcd timed out"))?
        .map_err(|error| store_error(error, "connect", None))?;
        let conn = Conn::new(client, timeout, config.endpoints.len());
        let min_ttl_secs = match config.min_ttl {
            Some(min_ttl) => ceil_secs(min_ttl).max(1),
            None => {
                // The lease granted for 1 s shows the server's minimum.
                let probe = EtcdLease::grant(&conn, 1, Duration::ZERO).await?;
                probe.revoke_in_background(&conn);
                probe.granted.as_secs()
            }
        };
        let capabilities = Capabilities::new()
            .with_min_ttl(Duration::from_secs(min_ttl_secs))
            .with_ttl_granularity(Duration::from_secs(1))
            .with_max_key_len(lock_core::MAX_KEY_LEN)
            .with_max_batch(MAX_BATCH)
            .with_native_wait(true)
            .with_fencing(true);
        tracing::debug!(
            endpoints = ?config.endpoints,
            namespace = %config.namespace,
            min_ttl_secs,
            "connected to etcd"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                layout: Layout::new(&config.namespace),
                config,
                min_ttl_secs,
                capabilities,
                registry: Registry::default(),
                cleaning: AtomicBool::new(false),
                watches: Arc::default(),
            }),
        })
    }

    /// The etcd client, for transactions of your own (such as fenced
    /// writes, see [`EtcdStore::fence_compare`]).
    pub fn client(&self) -> &Client {
        &self.inner.conn.client
    }

    /// The key namespace every etcd key of this store starts with.
    pub fn namespace(&self) -> &str {
        self.inner.layout.namespace()
    }

    /// The etcd key of the entry of `lease_id` on lock key `key` (the
    /// locker's prefix and the lock id, as
    /// [`LockGuard::key`](lock_core::LockGuard::key) gives it, and
    /// [`LockGuard::lease_id`](lock_core::LockGuard::lease_id)):
    /// `<namespace>lock/<key>\0<lease id, 32 hex digits>`.
    pub fn etcd_entry_key(&self, key: &str, lease_id: LeaseId) -> Vec<u8> {
        self.inner.layout.entry_key(key, lease_id)
    }

    /// The etcd key range `[start, end)` holding every entry of lock key
    /// `key` (and the previous version's lock key, `start` itself): for a
    /// range read or a watch of the key's queue.
    pub fn etcd_queue_range(&self, key: &str) -> (Vec<u8>, Vec<u8>) {
        self.inner.layout.range(key)
    }

    /// The etcd key whose mod revision is the last fencing token granted for
    /// `key`: `<namespace>fence/<key>`.
    pub fn etcd_fence_key(&self, key: &str) -> Vec<u8> {
        self.inner.layout.fence_key(key)
    }

    /// A transaction comparison that holds only while the entry of
    /// `lease_id` on `key` is still the one that carried `token`: its key
    /// exists and was created at revision `token` (a held lock's token is
    /// its entry's create revision). Put it in the `when` of a transaction
    /// that writes the protected data, and the write commits only while the
    /// lock is held (see the crate documentation). `None` when the token is
    /// larger than any etcd revision.
    pub fn fence_compare(
        &self,
        key: &str,
        lease_id: LeaseId,
        token: &FencingToken,
    ) -> Option<Compare> {
        let revision = i64::try_from(token.to_u64()?).ok()?;
        Some(Compare::create_revision(
            self.etcd_entry_key(key, lease_id),
            CompareOp::Equal,
            revision,
        ))
    }

    /// The server's minimum lease ttl, as learnt when connecting.
    pub fn min_ttl(&self) -> Duration {
        Duration::from_secs(self.inner.min_ttl_secs)
    }

    /// How many entries (held locks and waiting `lock()` calls) this store
    /// made and still tracks (for tests and diagnostics).
    pub fn tracked_locks(&self) -> usize {
        self.inner.registry.lock().tracked()
    }

    /// Whole seconds of etcd ttl for a requested `ttl`: rounded up, at least
    /// the server's minimum.
    pub(crate) fn ttl_secs(&self, ttl: Duration) -> u64 {
        ceil_secs(ttl).max(self.inner.min_ttl_secs)
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        // etcd refuses pings more often than every 5 s by default.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some((user, password)) = &config.user {
        options = options.with_user(user.clone(), password.0.clone());
    }
    if let Some(tls) = &config.tls {
        options = with_tls(options, tls)?;
    }
    Ok(options)
}

#[cfg(feature = "tls")]
fn with_tls(
    options: ConnectOptions,
    tls: &crate::config::EtcdTls,
) -> Result<ConnectOptions, StoreError> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let mut settings = TlsOptions::new();
    if let Some(ca) = &tls.ca_pem {
        settings = settings.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &tls.identity_pem {
        settings = settings.identity(Identity::from_pem(cert, &key.0));
    }
    if let Some(domain) = &tls.domain {
        settings = settings.domain_name(domain.clone());
    }
    Ok(options.with_tls(settings))
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    _options: ConnectOptions,
    _tls: &crate::config::EtcdTls,
) -> Result<ConnectOptions, StoreError> {
    Err(StoreError::new(
        StoreErrorKind::Invalid,
        "TLS to etcd needs lock-etcd's `tls` feature",
    ))
}
