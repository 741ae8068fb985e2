//! [`EtcdStore`]: the `LeaseStore` on etcd leases and revisions.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchFilterType, WatchOptions,
};
use futures_util::future::join_all;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, Holder, LeaseId,
    LeaseInfo, LeaseStore, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError, StoreErrorKind,
};
use tokio::time::Instant;

use crate::config::EtcdConfig;
use crate::conn::Conn;
use crate::error::{is_compacted, is_lease_not_found, store_error};
use crate::layout::{Layout, LockValue, decode_value, encode_value, excerpt, value_bounds};
use crate::lease::{EtcdLease, KeepAlive, ttl_of};

/// The most bytes of etcd keys one etcd lease carries before the store
/// opens another for the same ttl: a renewal lists a lease's keys in one
/// reply, and gRPC replies are limited to 4 MiB.
const MAX_KEY_BYTES_PER_LEASE: usize = 3 << 20;
/// How many orphaned keys one clean-up pass deletes at most.
const CLEANUP_BATCH: usize = 256;
/// How many "seen held at revision" notes the store keeps for watches.
const MAX_SEEN_HELD: usize = 4096;
/// How many acquisitions of unknown outcome the store remembers.
const MAX_IN_DOUBT: usize = 10_000;
/// The batch limit reported to the locker: renewals cost the same whatever
/// their size, so effectively none.
const MAX_BATCH: usize = 1 << 20;

/// A [`LeaseStore`] on etcd: locks are keys attached to the store's own etcd
/// leases, fencing tokens are the keys' create revisions, waits are watches.
///
/// Cloning gives another handle on the same session (same connection, same
/// etcd leases). See the [crate documentation](crate) for the layout in
/// etcd, how renewals work, and the fencing recipe.
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
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    layout: Layout,
    config: EtcdConfig,
    min_ttl_secs: u64,
    capabilities: Capabilities,
    state: Mutex<State>,
    /// Serializes lease grants, so concurrent acquisitions share one.
    granting: tokio::sync::Mutex<()>,
    cleaning: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The etcd lease new grants of each ttl (whole seconds) go on.
    current: HashMap<u64, Arc<EtcdLease>>,
    /// Locks this store granted and has not seen end, by lock key.
    held: HashMap<String, Held>,
    /// Acquisitions under way: lock key and lease id.
    pending: HashMap<String, Vec<LeaseId>>,
    /// The revision at which a lock key was last seen held (a watch for its
    /// release starts after it).
    seen_held: HashMap<String, i64>,
    /// Acquisitions whose outcome is unknown: lock key and the value they
    /// may have put.
    in_doubt: Vec<(String, Vec<u8>)>,
    /// When acquisitions next look for expired grants of this store.
    next_sweep: Option<Instant>,
}

struct Held {
    lease_id: LeaseId,
    lease: Arc<EtcdLease>,
    value: Vec<u8>,
    /// When the last grant or renewal that covered this lock was sent.
    refreshed: Instant,
}

impl Held {
    /// Whether the lock's own ttl ran out at `now` without a renewal (the
    /// etcd lease may still live, kept alive for other locks).
    fn stale(&self, now: Instant) -> bool {
        self.refreshed + self.lease.applied() <= now
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
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
                state: Mutex::new(State::default()),
                granting: tokio::sync::Mutex::new(()),
                cleaning: AtomicBool::new(false),
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

    /// The etcd key that holds the lease on lock key `key` (the locker's
    /// prefix and the lock id, as [`LockGuard::key`](lock_core::LockGuard::key)
    /// gives it): `<namespace>lock/<key>`.
    pub fn etcd_lock_key(&self, key: &str) -> Vec<u8> {
        self.inner.layout.lock_key(key)
    }

    /// The etcd key whose mod revision is the last fencing token granted for
    /// `key`: `<namespace>fence/<key>`.
    pub fn etcd_fence_key(&self, key: &str) -> Vec<u8> {
        self.inner.layout.fence_key(key)
    }

    /// A transaction comparison that holds only while the lock on `key` is
    /// still the grant that carried `token`: the lock key exists and was
    /// created at revision `token`. Put it in the `when` of a transaction
    /// that writes the protected data, and the write commits only while the
    /// lock is held (see the crate documentation). `None` when the token is
    /// larger than any etcd revision.
    pub fn fence_compare(&self, key: &str, token: &FencingToken) -> Option<Compare> {
        let revision = i64::try_from(token.to_u64()?).ok()?;
        Some(Compare::create_revision(
            self.etcd_lock_key(key),
            CompareOp::Equal,
            revision,
        ))
    }

    /// The server's minimum lease ttl, as learnt when connecting.
    pub fn min_ttl(&self) -> Duration {
        Duration::from_secs(self.inner.min_ttl_secs)
    }

    /// How many locks this store granted and still tracks (for tests and
    /// diagnostics).
    pub fn tracked_locks(&self) -> usize {
        self.inner.state().held.len()
    }

    /// Whole seconds of etcd ttl for a requested `ttl`: rounded up, at least
    /// the server's minimum.
    fn ttl_secs(&self, ttl: Duration) -> u64 {
        ceil_secs(ttl).max(self.inner.min_ttl_secs)
    }

    /// The lease a new grant of `ttl_secs` goes on: the current one, unless
    /// it is gone, has surely run out, or carries too many keys.
    async fn lease_for(
        &self,
        ttl_secs: u64,
        now: Instant,
        key_len: usize,
    ) -> Result<Arc<EtcdLease>, StoreError> {
        if let Some(lease) = self.inner.usable_lease(ttl_secs, now, key_len) {
            return Ok(lease);
        }
        let _granting = self.inner.granting.lock().await;
        if let Some(lease) = self.inner.usable_lease(ttl_secs, now, key_len) {
            return Ok(lease);
        }
        let slack = self.inner.config.lease_slack;
        let secs = i64::try_from(ttl_secs + slack.as_secs()).map_err(|_| {
            StoreError::new(StoreErrorKind::Invalid, "the ttl is too long for etcd")
        })?;
        let lease = Arc::new(EtcdLease::grant(&self.inner.conn, secs, slack).await?);
        let mut state = self.inner.state();
        if let Some(old) = state.current.insert(ttl_secs, lease.clone())
            && old.surely_expired(Instant::now())
        {
            // Its keys are gone with it.
            state.held.retain(|_, held| !Arc::ptr_eq(&held.lease, &old));
        }
        Ok(lease)
    }

    /// Reads the holder from a refused acquisition.
    fn holder_of(&self, key: &str, reply: &TxnResponse, revision: i64) -> Result<Seen, StoreError> {
        let kv = first_kv(reply, 0).ok_or_else(|| {
            StoreError::unavailable("etcd refused the acquisition without naming the holder")
                .with_key(key)
        })?;
        let value = self.inner.decode_live(key, &kv)?;
        let mut state = self.inner.state();
        let now = Instant::now();
        match state.held.get(key) {
            Some(held) if held.lease_id == value.lease_id => {
                if held.stale(now) {
                    // Our own grant, whose ttl ran out while other locks kept
                    // the shared etcd lease alive: expired by the contract.
                    return Ok(Seen::Ours(held.value.clone()));
                }
            }
            _ => {
                let on_our_lease = state.current.values().any(|lease| lease.id == kv.lease());
                let pending = state
                    .pending
                    .get(key)
                    .is_some_and(|ids| ids.contains(&value.lease_id));
                if on_our_lease && !pending {
                    // Put by this store, but no grant of it claims the key:
                    // an acquisition whose outcome was lost.
                    return Ok(Seen::Ours(kv.value().to_vec()));
                }
            }
        }
        if state.seen_held.len() >= MAX_SEEN_HELD {
            state.seen_held.clear();
        }
        state.seen_held.insert(key.to_owned(), revision);
        // etcd does not say how long the holder's lease runs without another
        // round trip; waiters are woken by a watch instead.
        Ok(Seen::Holder(Holder::new(value.owner)))
    }

    async fn wait_for_release(&self, key: &str) -> Result<(), StoreError> {
        let etcd_key = self.inner.layout.lock_key(key);
        let seen = self.inner.state().seen_held.get(key).copied();
        let revision = match seen {
            Some(revision) => revision,
            None => {
                let reply = self
                    .inner
                    .conn
                    .get(&etcd_key)
                    .await
                    .map_err(|error| store_error(error, "get", Some(key)))?;
                if reply.kvs().is_empty() {
                    return Ok(());
                }
                reply.header().map_or(0, |header| header.revision())
            }
        };
        let options = WatchOptions::new()
            .with_start_revision(revision + 1)
            .with_filters([WatchFilterType::NoPut]);
        let watch = self.inner.conn.call(|client| {
            let (mut watches, etcd_key) = (client.watch_client(), etcd_key.clone());
            let options = options.clone();
            async move { watches.watch(etcd_key, Some(options)).await }
        });
        let mut stream = match watch.await {
            Ok(stream) => stream,
            Err(error) if is_compacted(&error) => return Ok(()),
            Err(error) => return Err(store_error(error, "watch", Some(key))),
        };
        loop {
            let Some(reply) = stream
                .message()
                .await
                .map_err(|error| store_error(error, "watch", Some(key)))?
            else {
                return Ok(());
            };
            if reply.canceled() || reply.compact_revision() > 0 {
                return Ok(());
            }
            if reply
                .events()
                .iter()
                .any(|event| event.event_type() == EventType::Delete)
            {
                return Ok(());
            }
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is complete before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn usable_lease(&self, ttl_secs: u64, now: Instant, key_len: usize) -> Option<Arc<EtcdLease>> {
        let state = self.state();
        let lease = state.current.get(&ttl_secs)?;
        let fits = lease.attached_bytes() + key_len <= MAX_KEY_BYTES_PER_LEASE;
        (fits && !lease.surely_expired(now)).then(|| lease.clone())
    }

    /// The lease is gone: stop granting on it, forget the locks on it.
    fn lease_gone(&self, lease: &Arc<EtcdLease>) {
        lease.mark_dead();
        let mut state = self.state();
        state
            .current
            .retain(|_, current| !Arc::ptr_eq(current, lease));
        state
            .held
            .retain(|_, held| !Arc::ptr_eq(&held.lease, lease));
    }

    /// Forgets the lock on `key` if it is still the grant of `lease_id`.
    fn forget(&self, key: &str, lease_id: LeaseId) {
        let mut state = self.state();
        if state
            .held
            .get(key)
            .is_some_and(|held| held.lease_id == lease_id)
            && let Some(held) = state.held.remove(key)
        {
            held.lease.detach(self.layout.lock_key(key).len());
        }
    }

    /// A live lock key's value, or a `Corrupt` error naming it.
    fn decode_live(&self, key: &str, kv: &KeyValue) -> Result<LockValue, StoreError> {
        let value = decode_value(kv.value()).map_err(|why| {
            StoreError::corrupt(
                key,
                format!(
                    "etcd key {:?} does not hold a dlock lease: {why} (value {}); delete it or use another namespace",
                    String::from_utf8_lossy(kv.key()),
                    excerpt(kv.value())
                ),
            )
        })?;
        if kv.lease() == 0 {
            return Err(StoreError::corrupt(
                key,
                format!(
                    "etcd key {:?} holds a dlock value but no etcd lease, so it would never expire; delete it",
                    String::from_utf8_lossy(kv.key())
                ),
            ));
        }
        Ok(value)
    }
}

/// Marks an acquisition as under way until dropped, so a renewal's clean-up
/// does not mistake its fresh key for an orphan. Dropped unsettled (an
/// error, or the caller gave up), it records the value it may have put, for
/// the next sweep to delete.
struct Pending<'a> {
    inner: &'a Inner,
    key: &'a str,
    lease_id: LeaseId,
    value: &'a [u8],
    settled: bool,
}

impl<'a> Pending<'a> {
    fn new(inner: &'a Inner, key: &'a str, lease_id: LeaseId, value: &'a [u8]) -> Self {
        inner
            .state()
            .pending
            .entry(key.to_owned())
            .or_default()
            .push(lease_id);
        Self {
            inner,
            key,
            lease_id,
            value,
            settled: false,
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        if let Some(ids) = state.pending.get_mut(self.key) {
            if let Some(at) = ids.iter().position(|id| *id == self.lease_id) {
                ids.swap_remove(at);
            }
            if ids.is_empty() {
                state.pending.remove(self.key);
            }
        }
        if !self.settled {
            if state.in_doubt.len() >= MAX_IN_DOUBT {
                state.in_doubt.remove(0);
            }
            state
                .in_doubt
                .push((self.key.to_owned(), self.value.to_vec()));
        }
    }
}

/// Who holds a key an acquisition found taken.
enum Seen {
    /// Someone else (or a live grant of this store).
    Holder(Holder),
    /// A key this store put that no live grant of it claims (its ttl ran
    /// out, or the acquisition's outcome was lost); its value.
    Ours(Vec<u8>),
}

/// A key on a store lease that may have to be deleted.
struct Orphan {
    key: String,
    /// Its value, when the store knows it.
    value: Option<Vec<u8>>,
    /// The lease it is on, when known (needed when the value is not).
    lease: Option<Arc<EtcdLease>>,
    /// From an acquisition of unknown outcome: remembered again when the
    /// clean-up fails.
    in_doubt: bool,
}

/// What a renewal learnt about one etcd lease.
enum LeaseCheck {
    Alive {
        ttl: Duration,
        keys: HashSet<Vec<u8>>,
    },
    Gone,
}

#[async_trait]
impl LeaseStore for EtcdStore {
    /// One transaction: if the lock key does not exist, put it on the
    /// store's etcd lease for this ttl (and touch the fence key), else read
    /// the holder. A keep-alive of that etcd lease, sent after this call
    /// began, runs concurrently (shared with other callers), so the applied
    /// ttl is counted from no earlier than the request.
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let started = Instant::now();
        let key = request.key;
        let ttl_secs = self.ttl_secs(request.ttl);
        let lock_key = self.inner.layout.lock_key(key);
        let value = encode_value(request.lease_id, request.owner);
        let fencing = request.fencing.is_enabled();
        let mut pending = Pending::new(&self.inner, key, request.lease_id, &value);
        for _ in 0..3 {
            let lease = self.lease_for(ttl_secs, started, lock_key.len()).await?;
            let mut grant_ops = vec![TxnOp::put(
                lock_key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease.id)),
            )];
            if fencing {
                grant_ops.push(TxnOp::put(
                    self.inner.layout.fence_key(key),
                    Vec::new(),
                    None,
                ));
            }
            let txn = Txn::new()
                .when([Compare::create_revision(
                    lock_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(grant_ops)
                .or_else([TxnOp::get(lock_key.clone(), None)]);
            let (reply, kept) = tokio::join!(
                self.inner.conn.txn(&txn),
                lease.keep_alive(&self.inner.conn, started)
            );
            let reply = match reply {
                Ok(reply) => reply,
                Err(error) if is_lease_not_found(&error) => {
                    self.inner.lease_gone(&lease);
                    continue;
                }
                Err(error) => return Err(store_error(error, "acquire", Some(key))),
            };
            let revision = reply.header().map_or(0, |header| header.revision());
            self.sweep(started);
            if !reply.succeeded() {
                match self.holder_of(key, &reply, revision)? {
                    Seen::Holder(holder) => {
                        pending.settled = true;
                        return Ok(AcquireOutcome::Held(holder));
                    }
                    Seen::Ours(value) => {
                        self.delete_if_value(key, value).await?;
                        continue;
                    }
                }
            }
            let ttl = match kept {
                Ok(KeepAlive::Alive { ttl, .. }) => ttl,
                Ok(KeepAlive::Gone) => {
                    // The lease ended after the put: the key went with it.
                    self.inner.lease_gone(&lease);
                    continue;
                }
                // Granted, but for how long is unknown: report the failure;
                // the locker releases the maybe-granted lease by id.
                Err(error) => return Err(error.with_key(key)),
            };
            let token = u64::try_from(revision).map_err(|_| {
                StoreError::unavailable("etcd answered a grant without its revision").with_key(key)
            })?;
            {
                let mut state = self.inner.state();
                lease.attach(lock_key.len());
                let replaced = state.held.insert(
                    key.to_owned(),
                    Held {
                        lease_id: request.lease_id,
                        lease: lease.clone(),
                        value: value.clone(),
                        refreshed: started,
                    },
                );
                if let Some(old) = replaced {
                    old.lease.detach(lock_key.len());
                }
                state.seen_held.remove(key);
            }
            pending.settled = true;
            let mut grant = Grant::new(ttl);
            if fencing {
                grant = grant.with_token(FencingToken::from(token));
            }
            return Ok(AcquireOutcome::Acquired(grant));
        }
        Err(StoreError::unavailable("etcd leases kept ending during the acquisition").with_key(key))
    }

    /// One keep-alive and one time-to-live (listing the lease's keys) per
    /// etcd lease the batch is on, all concurrently: for a locker, one etcd
    /// lease and so one round trip whatever the number of locks. An entry is
    /// renewed when its etcd lease lives and still carries its key with this
    /// store's grant of its lease id; it is `Lost` otherwise, or when no
    /// renewal covered it for its whole ttl. The applied ttl is the etcd
    /// lease's (`ttl` is only used when granting).
    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        _ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let mut groups: Vec<Arc<EtcdLease>> = Vec::new();
        let slots: Vec<Option<usize>> = {
            let state = self.inner.state();
            leases
                .iter()
                .map(|entry| {
                    let held = state.held.get(entry.key)?;
                    if held.lease_id != entry.lease_id || held.stale(started) {
                        return None;
                    }
                    let slot = groups
                        .iter()
                        .position(|lease| Arc::ptr_eq(lease, &held.lease))
                        .unwrap_or_else(|| {
                            groups.push(held.lease.clone());
                            groups.len() - 1
                        });
                    Some(slot)
                })
                .collect()
        };
        let conn = &self.inner.conn;
        let checks = join_all(groups.iter().map(|lease| async move {
            let (kept, keys) =
                tokio::join!(lease.keep_alive(conn, started), lease.attached_keys(conn));
            match (kept?, keys?) {
                (KeepAlive::Alive { ttl, .. }, Some(keys)) => Ok(LeaseCheck::Alive {
                    ttl,
                    keys: keys.into_iter().collect(),
                }),
                _ => Ok::<_, StoreError>(LeaseCheck::Gone),
            }
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        for (lease, check) in groups.iter().zip(&checks) {
            if matches!(check, LeaseCheck::Gone) {
                self.inner.lease_gone(lease);
            }
        }
        let mut outcomes = Vec::with_capacity(leases.len());
        let mut lost = Vec::new();
        {
            let mut state = self.inner.state();
            for (entry, slot) in leases.iter().zip(&slots) {
                let renewed = slot.and_then(|slot| match &checks[slot] {
                    LeaseCheck::Alive { ttl, keys }
                        if keys.contains(&self.inner.layout.lock_key(entry.key)) =>
                    {
                        Some(*ttl)
                    }
                    _ => None,
                });
                match renewed {
                    Some(ttl) => {
                        if let Some(held) = state.held.get_mut(entry.key)
                            && held.lease_id == entry.lease_id
                        {
                            held.refreshed = held.refreshed.max(started);
                        }
                        outcomes.push(RenewOutcome::Renewed { ttl });
                    }
                    None => {
                        lost.push((entry.key, entry.lease_id));
                        outcomes.push(RenewOutcome::Lost);
                    }
                }
            }
        }
        for (key, lease_id) in lost {
            self.inner.forget(key, lease_id);
        }
        for (lease, check) in groups.iter().zip(checks) {
            if let LeaseCheck::Alive { keys, .. } = check {
                self.clean_up_orphans(lease, keys, started);
            }
        }
        self.sweep(started);
        Ok(outcomes)
    }

    /// One transaction deleting the lock key only if its value carries
    /// `lease_id` (two value comparisons bracket every value of that lease
    /// id, whatever the owner). Fencing needs nothing kept: the next grant's
    /// create revision is larger anyway, and the fence key stays.
    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        _fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        let lock_key = self.inner.layout.lock_key(key);
        let (low, high) = value_bounds(lease_id);
        let txn = Txn::new()
            .when([
                Compare::value(lock_key.clone(), CompareOp::Greater, low),
                Compare::value(lock_key.clone(), CompareOp::Less, high),
            ])
            .and_then([TxnOp::delete(lock_key, None)]);
        let reply = self
            .inner
            .conn
            .txn(&txn)
            .await
            .map_err(|error| store_error(error, "release", Some(key)))?;
        self.inner.forget(key, lease_id);
        Ok(if reply.succeeded() {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NotHeld
        })
    }

    /// Reads the lock key and the fence key in one transaction, then the
    /// holder's remaining time from its etcd lease. `last_token` is the
    /// fence key's mod revision: the token of the last grant made with
    /// fencing, kept after release and expiry. `None` for a key never
    /// granted (or granted only without fencing and now free).
    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let layout = &self.inner.layout;
        let txn = Txn::new().and_then([
            TxnOp::get(layout.lock_key(key), None),
            TxnOp::get(layout.fence_key(key), None),
        ]);
        let reply = self
            .inner
            .conn
            .txn(&txn)
            .await
            .map_err(|error| store_error(error, "inspect", Some(key)))?;
        let lock = first_kv(&reply, 0);
        let fence = first_kv(&reply, 1);
        let last_token = fence
            .as_ref()
            .and_then(|kv| u64::try_from(kv.mod_revision()).ok())
            .map(FencingToken::from);
        let holder = match &lock {
            None => None,
            Some(kv) => {
                let owner = self.inner.decode_live(key, kv)?.owner;
                let id = kv.lease();
                let remaining = self.inner.conn.call(|client| {
                    let mut leases = client.lease_client();
                    async move { leases.time_to_live(id, None).await }
                });
                match remaining.await {
                    Ok(reply) if reply.ttl() >= 0 => {
                        Some(Holder::new(owner).with_remaining(ttl_of(reply.ttl())))
                    }
                    // The lease ran out; etcd is deleting the key.
                    Ok(_) => None,
                    Err(error) if is_lease_not_found(&error) => None,
                    Err(error) => return Err(store_error(error, "inspect", Some(key))),
                }
            }
        };
        if lock.is_none() && fence.is_none() {
            return Ok(None);
        }
        Ok(Some(LeaseInfo::new(holder, last_token)))
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.clone()
    }

    /// A watch on the lock key for deletes (release or expiry), from the
    /// revision at which this store last saw it held (or from now, after
    /// reading it), so a release in between is not missed. Returns at once
    /// for a free key, and on any watch failure after sleeping out `max`
    /// (the locker re-polls in any case).
    async fn wait_for_change(&self, key: &str, max: Duration) {
        let deadline = Instant::now() + max;
        match tokio::time::timeout_at(deadline, self.wait_for_release(key)).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(error)) => {
                tracing::debug!(key, %error, "watch failed; waiting out the poll interval");
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

impl EtcdStore {
    /// Keys on `lease` (listed in `keys`) that no grant of this store
    /// covers any more: acquisitions whose reply was lost or abandoned, and
    /// locks no renewal covered for their whole ttl. Deleted in the
    /// background; without this, keep-alives for other locks would keep
    /// them alive forever.
    fn clean_up_orphans(&self, lease: &Arc<EtcdLease>, keys: HashSet<Vec<u8>>, now: Instant) {
        let orphans: Vec<Orphan> = {
            let state = self.inner.state();
            keys.iter()
                .filter_map(|etcd_key| {
                    let key = self.inner.layout.lock_key_of(etcd_key)?;
                    let value = match state.held.get(key) {
                        Some(held) if Arc::ptr_eq(&held.lease, lease) => {
                            if !held.stale(now) {
                                return None;
                            }
                            Some(held.value.clone())
                        }
                        _ if state.pending.contains_key(key) => return None,
                        _ => None,
                    };
                    Some(Orphan {
                        key: key.to_owned(),
                        value,
                        lease: Some(lease.clone()),
                        in_doubt: false,
                    })
                })
                .take(CLEANUP_BATCH)
                .collect()
        };
        self.spawn_cleanup(orphans);
    }

    /// At most once a second: deletes, in the background, the locks of this
    /// store whose ttl ran out without a renewal while their etcd lease was
    /// kept alive for others, and the keys acquisitions of unknown outcome
    /// may have put.
    fn sweep(&self, now: Instant) {
        let orphans: Vec<Orphan> = {
            let mut state = self.inner.state();
            if state.next_sweep.is_some_and(|next| now < next) {
                return;
            }
            if self.inner.cleaning.load(Ordering::Acquire) {
                return;
            }
            state.next_sweep = Some(now + Duration::from_secs(1));
            let mut orphans: Vec<Orphan> = state
                .held
                .iter()
                .filter(|(_, held)| held.stale(now) && !held.lease.is_dead())
                .take(CLEANUP_BATCH)
                .map(|(key, held)| Orphan {
                    key: key.clone(),
                    value: Some(held.value.clone()),
                    lease: Some(held.lease.clone()),
                    in_doubt: false,
                })
                .collect();
            let take = state.in_doubt.len().min(CLEANUP_BATCH);
            orphans.extend(state.in_doubt.drain(..take).map(|(key, value)| Orphan {
                key,
                value: Some(value),
                lease: None,
                in_doubt: true,
            }));
            orphans
        };
        self.spawn_cleanup(orphans);
    }

    /// Deletes `orphans` in a background task, one pass at a time.
    fn spawn_cleanup(&self, orphans: Vec<Orphan>) {
        if orphans.is_empty() {
            return;
        }
        let requeue = |orphans: Vec<Orphan>| {
            let mut state = self.inner.state();
            for orphan in orphans {
                if let (true, Some(value)) = (orphan.in_doubt, orphan.value) {
                    state.in_doubt.push((orphan.key, value));
                }
            }
        };
        if self.inner.cleaning.swap(true, Ordering::AcqRel) {
            return requeue(orphans);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.cleaning.store(false, Ordering::Release);
            return requeue(orphans);
        };
        let store = self.clone();
        runtime.spawn(async move {
            let _done = CleaningDone(&store.inner.cleaning);
            let mut orphans = orphans.into_iter();
            while let Some(orphan) = orphans.next() {
                let work = store.delete_orphan(&orphan);
                let failed = match tokio::time::timeout(store.inner.conn.timeout, work).await {
                    Ok(Ok(true)) => {
                        tracing::warn!(
                            key = %orphan.key,
                            "deleted a lock key that no holder renews (an acquisition whose reply was lost, or a lock whose renewals stopped)"
                        );
                        false
                    }
                    Ok(Ok(false)) => false,
                    Ok(Err(error)) => {
                        tracing::debug!(key = %orphan.key, %error, "orphan clean-up failed; retrying later");
                        true
                    }
                    Err(_) => true,
                };
                if failed {
                    let mut state = store.inner.state();
                    for orphan in std::iter::once(orphan).chain(orphans.by_ref()) {
                        if let (true, Some(value)) = (orphan.in_doubt, orphan.value) {
                            state.in_doubt.push((orphan.key, value));
                        }
                    }
                    break;
                }
            }
        });
    }

    /// Deletes `orphan` if it is still on its lease and no live grant or
    /// acquisition of this store claims it; whether it did.
    async fn delete_orphan(&self, orphan: &Orphan) -> Result<bool, StoreError> {
        let key = orphan.key.as_str();
        let value = match &orphan.value {
            Some(value) => value.clone(),
            None => {
                let reply = self
                    .inner
                    .conn
                    .get(&self.inner.layout.lock_key(key))
                    .await
                    .map_err(|error| store_error(error, "get", Some(key)))?;
                match (reply.kvs().first(), &orphan.lease) {
                    (Some(found), Some(lease)) if found.lease() == lease.id => {
                        found.value().to_vec()
                    }
                    _ => return Ok(false),
                }
            }
        };
        let Ok(decoded) = decode_value(&value) else {
            return Ok(false);
        };
        {
            let now = Instant::now();
            let state = self.inner.state();
            let claimed = state
                .held
                .get(key)
                .is_some_and(|held| held.lease_id == decoded.lease_id && !held.stale(now));
            let pending = state
                .pending
                .get(key)
                .is_some_and(|ids| ids.contains(&decoded.lease_id));
            if claimed || pending {
                return Ok(false);
            }
        }
        self.delete_if_value(key, value).await
    }

    /// Deletes lock `key` if it holds exactly `value`, and forgets the grant
    /// it carried; whether it was deleted.
    async fn delete_if_value(&self, key: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        let lock_key = self.inner.layout.lock_key(key);
        let decoded = decode_value(&value).ok();
        let txn = Txn::new()
            .when([Compare::value(lock_key.clone(), CompareOp::Equal, value)])
            .and_then([TxnOp::delete(lock_key, None)]);
        let reply = self
            .inner
            .conn
            .txn(&txn)
            .await
            .map_err(|error| store_error(error, "clean-up", Some(key)))?;
        if let Some(decoded) = decoded {
            self.inner.forget(key, decoded.lease_id);
        }
        Ok(reply.succeeded())
    }
}

struct CleaningDone<'a>(&'a AtomicBool);

impl Drop for CleaningDone<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The first key-value of the `index`-th operation's range reply.
fn first_kv(reply: &TxnResponse, index: usize) -> Option<KeyValue> {
    match reply.op_responses().into_iter().nth(index)? {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
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
