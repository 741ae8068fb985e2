//! [`RedisStore`]: the `LeaseStore` on Redis and Redis Cluster.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, LeaseId, LeaseInfo,
    LeaseStore, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError, StoreErrorKind,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, IntoConnectionInfo, ProtocolVersion, PushInfo, RedisResult, Script,
    ScriptInvocation, TlsCertificates, Value,
};
use tokio::time::Instant;

use crate::error::{map_redis_error, unexpected_reply};
use crate::keys::{RedisKeys, holder_of, lock_value, owner_of};
use crate::url::{Target, redact};
use crate::waiters::{LINGER, Waiters};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/acquire.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/renew.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/release.lua")));
static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/inspect.lua")));

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "dlock:";
/// The default (and largest sensible) number of leases per renewal call.
pub const DEFAULT_MAX_BATCH: usize = 1000;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`LeaseStore`] on a single Redis server (with or without replicas) or
/// a Redis Cluster. See the [crate documentation](crate) for what it
/// guarantees, the key layout and the URL forms.
///
/// Every operation is one Lua script call (one round trip); a renewal batch
/// is one call per batch, or one per hash slot in Cluster mode. Clones share
/// the connection. Dropping the last clone closes it.
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
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    waiters: Arc<Waiters>,
    prefix: String,
    target: String,
    max_batch: usize,
}

/// The connection: a reconnecting single-server connection, or the Cluster
/// client's. Both speak RESP3, so subscriptions share them.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn eval(&self, invocation: &ScriptInvocation<'_>) -> RedisResult<Value> {
        match self {
            Self::Single(conn) => invocation.invoke_async(&mut conn.clone()).await,
            Self::Cluster(conn) => invocation.invoke_async(&mut conn.clone()).await,
        }
    }

    async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Self::Single(conn) => cmd.query_async(&mut conn.clone()).await,
            Self::Cluster(conn) => cmd.query_async(&mut conn.clone()).await,
        }
    }

    async fn subscribe(&self, channel: &[u8]) -> RedisResult<()> {
        match self {
            Self::Single(conn) => conn.clone().subscribe(channel).await,
            Self::Cluster(conn) => conn.clone().ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&self, channel: &[u8]) -> RedisResult<()> {
        match self {
            Self::Single(conn) => conn.clone().unsubscribe(channel).await,
            Self::Cluster(conn) => conn.clone().sunsubscribe(channel).await,
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The command a release publishes with: sharded in Cluster mode, so a
    /// message goes to the key's shard only.
    fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

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
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("max_batch", &self.max_batch)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("root_certificate", &self.root_certificate.is_some())
            .finish()
    }
}

impl RedisStoreBuilder {
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
    /// no connection could be made.
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
        if target.is_tls() {
            ensure_crypto_provider();
        }
        let waiters = Arc::new(Waiters::default());
        let push_waiters = Arc::downgrade(&waiters);
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            if let Some(waiters) = push_waiters.upgrade() {
                waiters.on_push(&push);
            }
            Ok(())
        };
        let map = |error| map_redis_error("connect", None, error);
        let conn = match &target {
            Target::Single { url, .. } => {
                let info = url.as_str().into_connection_info().map_err(map)?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let info = info.set_redis_settings(settings);
                let client = match (&self.root_certificate, target.is_tls()) {
                    (Some(pem), true) => Client::build_with_tls(info, certificates(pem)),
                    _ => Client::open(info),
                }
                .map_err(map)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(self.response_timeout)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_secs(1))
                    .set_number_of_retries(4)
                    .set_push_sender(on_push)
                    .set_automatic_resubscription();
                Conn::Single(
                    client
                        .get_connection_manager_with_config(config)
                        .await
                        .map_err(map)?,
                )
            }
            Target::Cluster { nodes, .. } => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(self.connect_timeout)
                    .push_sender(on_push);
                if let Some(timeout) = self.response_timeout {
                    builder = builder.response_timeout(timeout);
                }
                if let (Some(pem), true) = (&self.root_certificate, target.is_tls()) {
                    builder = builder.certs(certificates(pem));
                }
                let client = builder.build().map_err(map)?;
                Conn::Cluster(client.get_async_connection().await.map_err(map)?)
            }
        };
        let target = redact(&self.url);
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

fn certificates(pem: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// Installs rustls's `ring` provider for `rediss://` unless the program
/// installed a provider of its own.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
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
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder for a store on `url` (see [`RedisStore::connect`] for the
    /// URL forms).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_batch: DEFAULT_MAX_BATCH,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: Some(DEFAULT_RESPONSE_TIMEOUT),
            root_certificate: None,
        }
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

    fn corrupt(&self, op: &str, key: &str, keys: &RedisKeys, which: i64, what: &str) -> StoreError {
        let name = if which == 2 { &keys.fence } else { &keys.lock };
        tracing::error!(
            key = %key,
            redis_key = ?name,
            what,
            "{op}: a lock's Redis key holds data dlock did not write"
        );
        StoreError::corrupt(
            key,
            format!(
                "the Redis key {name:?} {what}: another program wrote to it; \
                 delete the key to free the lock"
            ),
        )
    }

    /// One script call renewing `entries` (all of one hash slot in Cluster
    /// mode).
    async fn renew_batch(
        &self,
        entries: Vec<(usize, &RenewEntry<'_>)>,
        ttl_ms: u64,
    ) -> Result<Vec<(usize, RenewOutcome)>, StoreError> {
        let first_key = entries.first().map_or("", |(_, entry)| entry.key);
        let keys: Vec<RedisKeys> = entries
            .iter()
            .map(|(_, e)| self.redis_keys(e.key))
            .collect();
        let mut invocation = RENEW.prepare_invoke();
        invocation.arg(ttl_ms);
        for ((_, entry), names) in entries.iter().zip(&keys) {
            invocation.key(&names.lock).arg(entry.lease_id.to_string());
        }
        let reply = self
            .inner
            .conn
            .eval(&invocation)
            .await
            .map_err(|error| map_redis_error("renew", Some(first_key), error))?;
        let Value::Array(codes) = reply else {
            return Err(unexpected_reply("renew", first_key, "not an array"));
        };
        if codes.len() != entries.len() {
            return Err(unexpected_reply(
                "renew",
                first_key,
                "wrong number of outcomes",
            ));
        }
        let applied = Duration::from_millis(ttl_ms);
        let mut outcomes = Vec::with_capacity(entries.len());
        for (((index, entry), names), code) in entries.into_iter().zip(&keys).zip(codes) {
            let outcome = match code {
                Value::Int(1) => RenewOutcome::Renewed { ttl: applied },
                Value::Int(0) => RenewOutcome::Lost,
                Value::Int(code @ (-1 | -2)) => {
                    // One overwritten key must not fail the renewal of the
                    // whole batch: its lease is gone, the others are fine.
                    let what = if code == -1 {
                        "holds another type than a lease string"
                    } else {
                        "holds a string that is not a lease"
                    };
                    let error = self.corrupt("renew", entry.key, names, 1, what);
                    tracing::error!(%error, "renewal found an overwritten lock; its lease counts as lost");
                    RenewOutcome::Lost
                }
                _ => return Err(unexpected_reply("renew", entry.key, "not an outcome code")),
            };
            outcomes.push((index, outcome));
        }
        Ok(outcomes)
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

/// The ttl in whole milliseconds, rounded up (Redis's `PX` unit).
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000).max(1)).unwrap_or(u64::MAX)
}

fn fencing_arg(fencing: Fencing) -> &'static str {
    if fencing.is_enabled() { "1" } else { "0" }
}

/// A script's reply as its items, the first being the status word.
fn reply_items(op: &str, key: &str, reply: Value) -> Result<(Vec<u8>, Vec<Value>), StoreError> {
    let Value::Array(mut items) = reply else {
        return Err(unexpected_reply(op, key, "not an array"));
    };
    if items.is_empty() {
        return Err(unexpected_reply(op, key, "empty"));
    }
    let status = match items.remove(0) {
        Value::BulkString(status) => status,
        Value::SimpleString(status) => status.into_bytes(),
        _ => return Err(unexpected_reply(op, key, "no status word")),
    };
    Ok((status, items))
}

fn bytes_at<'a>(
    op: &str,
    key: &str,
    items: &'a [Value],
    index: usize,
) -> Result<&'a [u8], StoreError> {
    match items.get(index) {
        Some(Value::BulkString(bytes)) => Ok(bytes),
        Some(Value::SimpleString(text)) => Ok(text.as_bytes()),
        _ => Err(unexpected_reply(op, key, "missing string")),
    }
}

fn int_at(op: &str, key: &str, items: &[Value], index: usize) -> Result<i64, StoreError> {
    match items.get(index) {
        Some(Value::Int(value)) => Ok(*value),
        _ => Err(unexpected_reply(op, key, "missing integer")),
    }
}

/// A token as the scripts write it (decimal), or none for "".
fn token_of(key: &str, bytes: &[u8]) -> Result<Option<FencingToken>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| StoreError::corrupt(key, "the fencing token is not a decimal number"))
}

#[async_trait]
impl LeaseStore for RedisStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let key = request.key;
        let keys = self.redis_keys(key);
        let ttl_ms = ttl_millis(request.ttl);
        let mut invocation = ACQUIRE.prepare_invoke();
        invocation
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(lock_value(request.lease_id, request.owner))
            .arg(ttl_ms)
            .arg(fencing_arg(request.fencing));
        let reply = self
            .inner
            .conn
            .eval(&invocation)
            .await
            .map_err(|error| map_redis_error("acquire", Some(key), error))?;
        let (status, items) = reply_items("acquire", key, reply)?;
        match status.as_slice() {
            b"granted" => {
                let mut grant = Grant::new(Duration::from_millis(ttl_ms));
                if let Some(token) = token_of(key, bytes_at("acquire", key, &items, 0)?)? {
                    grant = grant.with_token(token);
                }
                let previous = bytes_at("acquire", key, &items, 1)?;
                if !previous.is_empty() {
                    let owner = owner_of(key, previous)?;
                    tracing::debug!(key, previous_owner = %owner, "took over an expired lease");
                    grant = grant.with_previous_owner(owner);
                }
                Ok(AcquireOutcome::Acquired(grant))
            }
            b"held" => {
                let value = bytes_at("acquire", key, &items, 0)?;
                let pttl = int_at("acquire", key, &items, 1)?;
                Ok(AcquireOutcome::Held(holder_of(key, value, pttl)?))
            }
            b"corrupt" => Err(self.corrupt(
                "acquire",
                key,
                &keys,
                int_at("acquire", key, &items, 0)?,
                &String::from_utf8_lossy(bytes_at("acquire", key, &items, 1)?),
            )),
            _ => Err(unexpected_reply("acquire", key, "unknown status")),
        }
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ttl_ms = ttl_millis(ttl);
        // One call per batch; per hash tag (so per slot) in Cluster mode.
        let mut batches: Vec<Vec<(usize, &RenewEntry<'_>)>> = Vec::new();
        if self.is_cluster() {
            let mut by_tag: HashMap<String, Vec<(usize, &RenewEntry<'_>)>> = HashMap::new();
            for (index, entry) in leases.iter().enumerate() {
                by_tag
                    .entry(crate::keys::hash_tag(entry.key))
                    .or_default()
                    .push((index, entry));
            }
            for group in by_tag.into_values() {
                for chunk in group.chunks(self.inner.max_batch) {
                    batches.push(chunk.to_vec());
                }
            }
        } else {
            let all: Vec<(usize, &RenewEntry<'_>)> = leases.iter().enumerate().collect();
            for chunk in all.chunks(self.inner.max_batch) {
                batches.push(chunk.to_vec());
            }
        }
        let results = join_all(
            batches
                .into_iter()
                .map(|batch| self.renew_batch(batch, ttl_ms)),
        )
        .await;
        let mut outcomes = vec![RenewOutcome::Lost; leases.len()];
        for result in results {
            for (index, outcome) in result? {
                outcomes[index] = outcome;
            }
        }
        Ok(outcomes)
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        let keys = self.redis_keys(key);
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(lease_id.to_string())
            .arg(fencing_arg(fencing))
            .arg(&keys.channel)
            .arg(self.inner.conn.publish_command());
        let reply = self
            .inner
            .conn
            .eval(&invocation)
            .await
            .map_err(|error| map_redis_error("release", Some(key), error))?;
        let (status, items) = reply_items("release", key, reply)?;
        match status.as_slice() {
            b"released" => Ok(ReleaseOutcome::Released),
            b"notheld" => Ok(ReleaseOutcome::NotHeld),
            b"corrupt" => Err(self.corrupt(
                "release",
                key,
                &keys,
                int_at("release", key, &items, 0)?,
                &String::from_utf8_lossy(bytes_at("release", key, &items, 1)?),
            )),
            _ => Err(unexpected_reply("release", key, "unknown status")),
        }
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let keys = self.redis_keys(key);
        let mut invocation = INSPECT.prepare_invoke();
        invocation.key(&keys.lock).key(&keys.fence);
        let reply = self
            .inner
            .conn
            .eval(&invocation)
            .await
            .map_err(|error| map_redis_error("inspect", Some(key), error))?;
        let (status, items) = reply_items("inspect", key, reply)?;
        match status.as_slice() {
            b"none" => Ok(None),
            b"info" => {
                let value = bytes_at("inspect", key, &items, 0)?;
                let holder = if value.is_empty() {
                    None
                } else {
                    Some(holder_of(key, value, int_at("inspect", key, &items, 1)?)?)
                };
                let token = token_of(key, bytes_at("inspect", key, &items, 2)?)?;
                Ok(Some(LeaseInfo::new(holder, token)))
            }
            b"corrupt" => Err(self.corrupt(
                "inspect",
                key,
                &keys,
                int_at("inspect", key, &items, 0)?,
                &String::from_utf8_lossy(bytes_at("inspect", key, &items, 1)?),
            )),
            _ => Err(unexpected_reply("inspect", key, "unknown status")),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_min_ttl(Duration::from_millis(1))
            .with_ttl_granularity(Duration::from_millis(1))
            .with_max_key_len(lock_core::MAX_KEY_LEN)
            .with_max_batch(self.inner.max_batch)
            .with_native_wait(true)
            .with_fencing(true)
    }

    async fn wait_for_change(&self, key: &str, max: Duration) {
        let give_up = Instant::now() + max;
        let keys = self.redis_keys(key);
        let channel = keys.channel.into_bytes();
        let waiters = &self.inner.waiters;
        let entered = waiters.enter(&channel);
        let _leave = Leave {
            inner: Arc::downgrade(&self.inner),
            channel: &channel,
        };
        let notified = entered.notify.notified();
        tokio::pin!(notified);
        // Listen before subscribing and re-checking, so a release in
        // between is not missed.
        notified.as_mut().enable();
        if !entered.subscribed {
            let subscribed = tokio::time::timeout_at(give_up, async {
                let _ops = waiters.ops.lock().await;
                if waiters.is_subscribed(&channel) {
                    return Ok(());
                }
                self.inner.conn.subscribe(&channel).await?;
                waiters.mark_subscribed(&channel);
                Ok::<(), redis::RedisError>(())
            })
            .await;
            match subscribed {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(key, %error, "subscribing failed; waiting without notifications");
                    tokio::time::sleep_until(give_up).await;
                    return;
                }
                Err(_) => return,
            }
        }
        // Subscribed: now see whether the key is still held, and for how
        // long (expiry is not notified).
        let mut wake_at = give_up;
        match tokio::time::timeout_at(
            give_up,
            self.inner.conn.query(redis::cmd("PTTL").arg(&keys.lock)),
        )
        .await
        {
            Ok(Ok(Value::Int(-2))) => return,
            Ok(Ok(Value::Int(ms))) if ms >= 0 => {
                let ms = u64::try_from(ms).unwrap_or(0);
                wake_at = wake_at.min(Instant::now() + Duration::from_millis(ms));
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::debug!(key, %error, "re-checking the key failed; waiting for a notification");
            }
            Err(_) => return,
        }
        let _ = tokio::time::timeout_at(wake_at, notified).await;
    }
}

/// Unregisters a waiter when its wait ends (or is cancelled), and schedules
/// the unsubscription of a channel left without waiters.
struct Leave<'a> {
    inner: Weak<Inner>,
    channel: &'a [u8],
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let Some(idle) = inner.waiters.leave(self.channel) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = self.inner.clone();
        let channel = self.channel.to_vec();
        runtime.spawn(async move {
            tokio::time::sleep(LINGER).await;
            let Some(inner) = weak.upgrade() else { return };
            let _ops = inner.waiters.ops.lock().await;
            if inner.waiters.take_idle(&channel, idle) {
                let unsubscribe = inner.conn.unsubscribe(&channel);
                match tokio::time::timeout(DEFAULT_RESPONSE_TIMEOUT, unsubscribe).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "unsubscribing failed"),
                    Err(_) => tracing::debug!("unsubscribing timed out"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_milliseconds() {
        assert_eq!(ttl_millis(Duration::from_micros(1)), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_millis(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_millis(Duration::ZERO), 1);
    }

    #[test]
    fn builder_debug_hides_the_password() {
        let builder = RedisStore::builder("redis://user:hunter2@localhost:6379");
        let shown = format!("{builder:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user:***@localhost"), "{shown}");
    }
}
