//! The store's own etcd leases, and keep-alives coalesced across callers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions};
use lock_core::StoreError;
use tokio::time::Instant;

use crate::error::{is_lease_not_found, store_error};

/// What a keep-alive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAlive {
    /// The lease lives; a keep-alive sent at `sent` set it to `ttl`, so it
    /// lasts at least until `sent + ttl` by the server's clock.
    Alive { sent: Instant, ttl: Duration },
    /// The lease is gone (expired or revoked): every key on it was deleted.
    Gone,
}

/// One etcd lease granted by this store, shared by every lock it holds with
/// the same ttl.
pub(crate) struct EtcdLease {
    pub(crate) id: i64,
    /// The ttl etcd granted (whole seconds).
    pub(crate) ttl: Duration,
    dead: AtomicBool,
    /// Bytes of etcd keys attached through this store (bounds the size of a
    /// time-to-live reply listing them).
    pub(crate) key_bytes: AtomicUsize,
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
            .field("ttl", &self.ttl)
            .field("dead", &self.is_dead())
            .finish_non_exhaustive()
    }
}

impl EtcdLease {
    /// Grants a lease of `ttl_secs`.
    pub(crate) async fn grant(
        client: &Client,
        ttl_secs: i64,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let sent = Instant::now();
        let mut lease_client = client.lease_client();
        let response = tokio::time::timeout(timeout, lease_client.grant(ttl_secs, None))
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
            ttl: Duration::from_secs(granted),
            dead: AtomicBool::new(false),
            key_bytes: AtomicUsize::new(0),
            refreshed: Mutex::new(sent),
            keeper: tokio::sync::Mutex::new(Keeper::default()),
        })
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
        self.refreshed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the lease has surely run out at `now` unless something we do
    /// not know of kept it alive (no successful refresh for a whole ttl).
    pub(crate) fn surely_expired(&self, now: Instant) -> bool {
        self.is_dead() || *self.refreshed_at() + self.ttl <= now
    }

    /// Keeps the lease alive with a keep-alive sent no earlier than `after`,
    /// sharing one keep-alive among concurrent callers: a caller finding
    /// that a keep-alive sent after its own `after` has already succeeded
    /// takes that answer without sending another.
    pub(crate) async fn keep_alive(
        &self,
        client: &Client,
        after: Instant,
        timeout: Duration,
    ) -> Result<KeepAlive, StoreError> {
        if self.is_dead() {
            return Ok(KeepAlive::Gone);
        }
        let mut keeper = self.keeper.lock().await;
        if self.is_dead() {
            return Ok(KeepAlive::Gone);
        }
        let refreshed = *self.refreshed_at();
        if refreshed >= after {
            return Ok(KeepAlive::Alive {
                sent: refreshed,
                ttl: self.ttl,
            });
        }
        if keeper.in_flight {
            keeper.stream = None;
        }
        let sent = Instant::now();
        keeper.in_flight = true;
        let result = tokio::time::timeout(timeout, self.send_keep_alive(client, &mut keeper)).await;
        keeper.in_flight = false;
        let outcome = match result {
            Ok(Ok(Some(ttl))) => {
                let mut refreshed = self.refreshed_at();
                *refreshed = (*refreshed).max(sent);
                Ok(KeepAlive::Alive { sent, ttl })
            }
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

    /// One keep-alive round trip; `None` when the lease is gone.
    async fn send_keep_alive(
        &self,
        client: &Client,
        keeper: &mut Keeper,
    ) -> Result<Option<Duration>, StoreError> {
        let map = |error| store_error(error, "lease keep-alive", None);
        if let Some((sender, stream)) = keeper.stream.as_mut() {
            sender.keep_alive().await.map_err(map)?;
            return match stream.message().await.map_err(map)? {
                Some(reply) if reply.ttl() > 0 => Ok(Some(ttl_of(reply.ttl()))),
                Some(_) => Ok(None),
                None => Err(StoreError::unavailable(
                    "the etcd lease keep-alive stream closed",
                )),
            };
        }
        // Opening the stream sends the first keep-alive and reads its reply.
        match client.lease_client().keep_alive(self.id).await {
            Ok(stream) => {
                keeper.stream = Some(stream);
                Ok(Some(self.ttl))
            }
            Err(error) if is_lease_not_found(&error) => Ok(None),
            Err(error) => Err(map(error)),
        }
    }

    /// The etcd keys attached to the lease, or `None` when it is gone.
    pub(crate) async fn attached_keys(
        &self,
        client: &Client,
        timeout: Duration,
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let mut lease_client = client.lease_client();
        let request =
            lease_client.time_to_live(self.id, Some(LeaseTimeToLiveOptions::new().with_keys()));
        match tokio::time::timeout(timeout, request).await {
            Err(_) => Err(StoreError::timeout("etcd lease time-to-live timed out")),
            Ok(Err(error)) if is_lease_not_found(&error) => Ok(None),
            Ok(Err(error)) => Err(store_error(error, "lease time-to-live", None)),
            Ok(Ok(reply)) if reply.ttl() <= 0 => Ok(None),
            Ok(Ok(reply)) => Ok(Some(reply.keys().to_vec())),
        }
    }

    /// Revokes the lease (deleting every key on it), in the background.
    pub(crate) fn revoke_in_background(client: &Client, id: i64, timeout: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut lease_client = client.lease_client();
        runtime.spawn(async move {
            let _ = tokio::time::timeout(timeout, lease_client.revoke(id)).await;
        });
    }
}

pub(crate) fn ttl_of(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}
