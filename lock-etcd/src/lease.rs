//! The store's own etcd leases, and keep-alives coalesced across callers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions};
use lock_core::StoreError;
use tokio::time::Instant;

use crate::conn::Conn;
use crate::error::{is_lease_not_found, store_error};

/// What a keep-alive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAlive {
    /// The lease lives, for at least `ttl` (the applied ttl) counted from
    /// the caller's start.
    Alive { ttl: Duration },
    /// The lease is gone (expired or revoked): every key on it was deleted.
    Gone,
}

/// One etcd lease granted by this store, shared by every lock it holds with
/// the same ttl.
pub(crate) struct EtcdLease {
    pub(crate) id: i64,
    /// The ttl etcd granted (whole seconds).
    pub(crate) granted: Duration,
    /// How much of `granted` is slack beyond the ttl reported for locks: a
    /// grant or renewal within this time after the lease's last successful
    /// keep-alive needs no keep-alive of its own to last its whole ttl.
    slack: Duration,
    dead: AtomicBool,
    /// Bytes of etcd keys attached through this store (bounds the size of a
    /// time-to-live reply listing them).
    key_bytes: AtomicUsize,
    /// The send time of the latest grant or keep-alive that succeeded.
    refreshed: Mutex<Instant>,
    keeper: tokio::sync::Mutex<Keeper>,
}

#[derive(Default)]
struct Keeper {
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// A keep-alive was sent and its reply not read (its caller was
    /// cancelled): the stream's next reply would be stale.
    in_flight: bool,
}

impl std::fmt::Debug for EtcdLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLease")
            .field("id", &format_args!("{:x}", self.id))
            .field("granted", &self.granted)
            .field("dead", &self.is_dead())
            .finish_non_exhaustive()
    }
}

impl EtcdLease {
    /// Grants a lease of `ttl_secs`, of which `slack` is beyond the ttl
    /// reported for its locks.
    pub(crate) async fn grant(
        conn: &Conn,
        ttl_secs: i64,
        slack: Duration,
    ) -> Result<Self, StoreError> {
        let sent = Instant::now();
        let request = conn.call(|client| {
            let mut leases = client.lease_client();
            async move { leases.grant(ttl_secs, None).await }
        });
        let response = tokio::time::timeout(conn.timeout, request)
            .await
            .map_err(|_| StoreError::timeout("etcd lease grant timed out"))?
            .map_err(|error| store_error(error, "lease grant", None))?;
        let granted = u64::try_from(response.ttl()).unwrap_or(0);
        if granted == 0 {
            return Err(StoreError::unavailable(format!(
                "etcd granted a lease with ttl {}: {}",
                response.ttl(),
                response.error()
            )));
        }
        tracing::debug!(lease = %format_args!("{:x}", response.id()), ttl = granted, "granted an etcd lease");
        Ok(Self {
            id: response.id(),
            granted: Duration::from_secs(granted),
            slack,
            dead: AtomicBool::new(false),
            key_bytes: AtomicUsize::new(0),
            refreshed: Mutex::new(sent),
            keeper: tokio::sync::Mutex::new(Keeper::default()),
        })
    }

    /// The ttl reported for locks on this lease: the granted ttl less the
    /// slack.
    pub(crate) fn applied(&self) -> Duration {
        self.granted.saturating_sub(self.slack)
    }

    /// Counts `len` bytes of etcd key attached through this store.
    pub(crate) fn attach(&self, len: usize) {
        self.key_bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// Uncounts `len` bytes of etcd key.
    pub(crate) fn detach(&self, len: usize) {
        let _ = self
            .key_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bytes| {
                Some(bytes.saturating_sub(len))
            });
    }

    /// Bytes of etcd keys attached through this store.
    pub(crate) fn attached_bytes(&self) -> usize {
        self.key_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(crate) fn mark_dead(&self) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            tracing::info!(lease = %format_args!("{:x}", self.id), "etcd lease gone");
        }
    }

    fn refreshed_at(&self) -> MutexGuard<'_, Instant> {
        self.refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the lease has surely run out at `now` unless something we do
    /// not know of kept it alive (no successful refresh for a whole ttl).
    pub(crate) fn surely_expired(&self, now: Instant) -> bool {
        self.is_dead() || *self.refreshed_at() + self.granted <= now
    }

    /// Makes sure the lease lasts at least [`applied`](Self::applied)
    /// counted from `start`: that a keep-alive (or the grant) sent no
    /// earlier than `start` less the slack succeeded, sending one if needed.
    /// Concurrent callers share one keep-alive: a caller finding that one
    /// sent late enough has already succeeded takes that answer without
    /// sending another.
    pub(crate) async fn keep_alive(
        &self,
        conn: &Conn,
        start: Instant,
    ) -> Result<KeepAlive, StoreError> {
        let after = start.checked_sub(self.slack).unwrap_or(start);
        let alive = KeepAlive::Alive {
            ttl: self.applied(),
        };
        if self.is_dead() {
            return Ok(KeepAlive::Gone);
        }
        if *self.refreshed_at() >= after {
            return Ok(alive);
        }
        let mut keeper = self.keeper.lock().await;
        if self.is_dead() {
            return Ok(KeepAlive::Gone);
        }
        if *self.refreshed_at() >= after {
            return Ok(alive);
        }
        if keeper.in_flight {
            keeper.stream = None;
        }
        let sent = Instant::now();
        keeper.in_flight = true;
        let result =
            tokio::time::timeout(conn.timeout, self.send_keep_alive(conn, &mut keeper)).await;
        keeper.in_flight = false;
        let outcome = match result {
            Ok(Ok(Some(ttl))) if ttl >= self.granted => {
                let mut refreshed = self.refreshed_at();
                *refreshed = (*refreshed).max(sent);
                Ok(alive)
            }
            Ok(Ok(Some(ttl))) => Err(StoreError::unavailable(format!(
                "etcd kept a lease of {:?} alive for only {ttl:?}",
                self.granted
            ))),
            Ok(Ok(None)) => {
                self.mark_dead();
                Ok(KeepAlive::Gone)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StoreError::timeout("etcd lease keep-alive timed out")),
        };
        if outcome.is_err() || self.is_dead() {
            keeper.stream = None;
        }
        outcome
    }

    /// One keep-alive round trip; `None` when the lease is gone. A failure
    /// on an open stream (its member died, say) is tried once more on a new
    /// stream: a keep-alive sent twice only refreshes twice.
    async fn send_keep_alive(
        &self,
        conn: &Conn,
        keeper: &mut Keeper,
    ) -> Result<Option<Duration>, StoreError> {
        let map = |error| store_error(error, "lease keep-alive", None);
        if let Some((sender, stream)) = keeper.stream.as_mut() {
            let reply = match sender.keep_alive().await {
                Ok(()) => stream.message().await,
                Err(error) => Err(error),
            };
            match reply {
                Ok(Some(reply)) if reply.ttl() > 0 => return Ok(Some(ttl_of(reply.ttl()))),
                Ok(Some(_)) => return Ok(None),
                Ok(None) | Err(_) => {
                    tracing::debug!("etcd keep-alive stream broke; opening another");
                    keeper.stream = None;
                }
            }
        }
        // Opening the stream sends the first keep-alive and reads its reply.
        let id = self.id;
        let opened = conn
            .call(|client| {
                let mut leases = client.lease_client();
                async move { leases.keep_alive(id).await }
            })
            .await;
        match opened {
            Ok(stream) => {
                keeper.stream = Some(stream);
                Ok(Some(self.granted))
            }
            Err(error) if is_lease_not_found(&error) => Ok(None),
            Err(error) => Err(map(error)),
        }
    }

    /// The etcd keys attached to the lease, or `None` when it is gone.
    pub(crate) async fn attached_keys(
        &self,
        conn: &Conn,
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let id = self.id;
        let request = conn.call(|client| {
            let mut leases = client.lease_client();
            async move {
                leases
                    .time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
                    .await
            }
        });
        match tokio::time::timeout(conn.timeout, request).await {
            Err(_) => Err(StoreError::timeout("etcd lease time-to-live timed out")),
            Ok(Err(error)) if is_lease_not_found(&error) => Ok(None),
            Ok(Err(error)) => Err(store_error(error, "lease time-to-live", None)),
            // etcd truncates the remaining time to whole seconds: 0 is a
            // lease with less than a second left, -1 one that is gone. (The
            // keep-alive sent alongside tells whether it was extended.)
            Ok(Ok(reply)) if reply.ttl() < 0 => Ok(None),
            Ok(Ok(reply)) => Ok(Some(reply.keys().to_vec())),
        }
    }

    /// Revokes the lease (deleting every key on it), in the background.
    pub(crate) fn revoke_in_background(&self, conn: &Conn) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (conn, id) = (conn.clone(), self.id);
        runtime.spawn(async move {
            let revoke = conn.call(|client| {
                let mut leases = client.lease_client();
                async move { leases.revoke(id).await }
            });
            let _ = tokio::time::timeout(conn.timeout, revoke).await;
        });
    }
}

pub(crate) fn ttl_of(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}
