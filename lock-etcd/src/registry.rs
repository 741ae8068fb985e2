//! The grant registry: what the store remembers between calls.
//!
//! An [`EtcdStore`](crate::EtcdStore) keeps no state in etcd beyond the
//! lock and fence keys, so everything it must remember lives here, under
//! one mutex that is never held across an `await`:
//!
//! - the etcd lease new grants of each ttl go on (`current`), and, through
//!   [`Registry::lease_for`], when to grant another;
//! - the locks this store granted and has not seen end (`held`): their
//!   lease id, etcd lease, exact value, and when a grant or renewal last
//!   covered them;
//! - the acquisitions under way (`pending`), and those that ended with an
//!   unknown outcome (`in_doubt`: the value they may have put);
//! - the revision at which a lock key was last seen held (`seen_held`),
//!   where a watch for its release starts.
//!
//! The rules it keeps:
//!
//! - A key is **claimed** by this store while a grant in `held` carries the
//!   lease id written in its value and has not gone a whole ttl without a
//!   renewal ([`Held::stale`]), or while an acquisition of that lease id is
//!   pending. Claimed keys are never deleted by clean-ups nor taken over by
//!   the store's own acquisitions ([`State::own_unclaimed`],
//!   [`State::claims`], [`State::claim_on_lease`]).
//! - A grant is forgotten only under its own lease id, so a newer grant of
//!   the same key stays ([`Registry::forget`]); and all grants of an etcd
//!   lease go when that lease is gone ([`Registry::lease_gone`]) or was
//!   replaced after surely running out.
//! - Every acquisition is pending from its first request until it settles
//!   ([`Pending`]); one that ends unsettled (an error, or its caller gave
//!   up) leaves its value in `in_doubt`, for the sweeper to delete by exact
//!   value. At most [`MAX_IN_DOUBT`] are kept, the oldest dropped first.
//! - Bytes of lock keys are counted per etcd lease while granted, and a
//!   lease stops taking grants past [`MAX_KEY_BYTES_PER_LEASE`], so the key
//!   list a renewal reads stays within a gRPC reply.
//! - `seen_held` keeps at most [`MAX_SEEN_HELD`] notes (all dropped when
//!   full: a watch without one reads the key first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lock_core::{LeaseId, StoreError, StoreErrorKind};
use tokio::time::Instant;

use crate::conn::Conn;
use crate::lease::EtcdLease;

/// The most bytes of etcd keys one etcd lease carries before the store
/// opens another for the same ttl: a renewal lists a lease's keys in one
/// reply, and gRPC replies are limited to 4 MiB.
const MAX_KEY_BYTES_PER_LEASE: usize = 3 << 20;
/// How many "seen held at revision" notes the store keeps for watches.
const MAX_SEEN_HELD: usize = 4096;
/// How many acquisitions of unknown outcome the store remembers.
const MAX_IN_DOUBT: usize = 10_000;

/// The store's memory of its leases, grants and acquisitions.
#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
    /// Serializes lease grants, so concurrent acquisitions share one.
    granting: tokio::sync::Mutex<()>,
}

/// The registry's content; reached through [`Registry::lock`].
#[derive(Default)]
pub(crate) struct State {
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

/// A lock this store granted.
pub(crate) struct Held {
    pub(crate) lease_id: LeaseId,
    pub(crate) lease: Arc<EtcdLease>,
    /// The exact value put under the lock key.
    pub(crate) value: Vec<u8>,
    /// The length of the etcd lock key, counted on `lease` while granted.
    pub(crate) key_bytes: usize,
    /// When the last grant or renewal that covered this lock was sent.
    pub(crate) refreshed: Instant,
}

impl Held {
    /// Whether the lock's own ttl ran out at `now` without a renewal (the
    /// etcd lease may still live, kept alive for other locks).
    pub(crate) fn stale(&self, now: Instant) -> bool {
        self.refreshed + self.lease.applied() <= now
    }
}

/// What the registry says of a key found on one of the store's etcd leases.
pub(crate) enum Claim {
    /// A live grant on that lease, or an acquisition under way, claims it.
    Claimed,
    /// The grant on that lease went a whole ttl without a renewal: its
    /// value.
    Stale(Vec<u8>),
    /// No grant on that lease knows it.
    Unknown,
}

impl Registry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is complete before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The etcd lease a new grant of `ttl_secs` goes on: the current one,
    /// unless it is gone, has surely run out, or carries too many key bytes
    /// to take `key_len` more; else a new one of `ttl_secs` plus `slack`,
    /// granted once for all concurrent callers.
    pub(crate) async fn lease_for(
        &self,
        conn: &Conn,
        slack: Duration,
        ttl_secs: u64,
        now: Instant,
        key_len: usize,
    ) -> Result<Arc<EtcdLease>, StoreError> {
        if let Some(lease) = self.lock().usable_lease(ttl_secs, now, key_len) {
            return Ok(lease);
        }
        let _granting = self.granting.lock().await;
        if let Some(lease) = self.lock().usable_lease(ttl_secs, now, key_len) {
            return Ok(lease);
        }
        let secs = i64::try_from(ttl_secs + slack.as_secs()).map_err(|_| {
            StoreError::new(StoreErrorKind::Invalid, "the ttl is too long for etcd")
        })?;
        let lease = Arc::new(EtcdLease::grant(conn, secs, slack).await?);
        let mut state = self.lock();
        if let Some(old) = state.current.insert(ttl_secs, lease.clone())
            && old.surely_expired(Instant::now())
        {
            // Its keys are gone with it.
            state.held.retain(|_, held| !Arc::ptr_eq(&held.lease, &old));
        }
        Ok(lease)
    }

    /// The etcd lease is gone: stop granting on it, forget the locks on it.
    pub(crate) fn lease_gone(&self, lease: &Arc<EtcdLease>) {
        lease.mark_dead();
        let mut state = self.lock();
        state
            .current
            .retain(|_, current| !Arc::ptr_eq(current, lease));
        state
            .held
            .retain(|_, held| !Arc::ptr_eq(&held.lease, lease));
    }

    /// Forgets the lock on `key` if it is still the grant of `lease_id`.
    pub(crate) fn forget(&self, key: &str, lease_id: LeaseId) {
        let mut state = self.lock();
        if state
            .held
            .get(key)
            .is_some_and(|held| held.lease_id == lease_id)
            && let Some(held) = state.held.remove(key)
        {
            held.lease.detach(held.key_bytes);
        }
    }
}

impl State {
    /// How many locks this store granted and still tracks.
    pub(crate) fn tracked(&self) -> usize {
        self.held.len()
    }

    fn usable_lease(&self, ttl_secs: u64, now: Instant, key_len: usize) -> Option<Arc<EtcdLease>> {
        let lease = self.current.get(&ttl_secs)?;
        let fits = lease.attached_bytes() + key_len <= MAX_KEY_BYTES_PER_LEASE;
        (fits && !lease.surely_expired(now)).then(|| lease.clone())
    }

    /// Records a grant of `key`, replacing (and uncounting) an older one;
    /// the key is no longer seen held by someone else.
    pub(crate) fn record_grant(&mut self, key: &str, held: Held) {
        held.lease.attach(held.key_bytes);
        if let Some(old) = self.held.insert(key.to_owned(), held) {
            old.lease.detach(old.key_bytes);
        }
        self.seen_held.remove(key);
    }

    /// The etcd lease of the live grant of `key` under `lease_id`: `None`
    /// when there is none, or its ttl ran out at `now` without a renewal.
    pub(crate) fn live_grant(
        &self,
        key: &str,
        lease_id: LeaseId,
        now: Instant,
    ) -> Option<&Arc<EtcdLease>> {
        let held = self.held.get(key)?;
        (held.lease_id == lease_id && !held.stale(now)).then_some(&held.lease)
    }

    /// A renewal sent at `sent` covered the grant of `key` under `lease_id`.
    pub(crate) fn renewed(&mut self, key: &str, lease_id: LeaseId, sent: Instant) {
        if let Some(held) = self.held.get_mut(key)
            && held.lease_id == lease_id
        {
            held.refreshed = held.refreshed.max(sent);
        }
    }

    /// Whether a live grant or a pending acquisition of this store claims
    /// `key` under `lease_id`.
    pub(crate) fn claims(&self, key: &str, lease_id: LeaseId, now: Instant) -> bool {
        let claimed = self.live_grant(key, lease_id, now).is_some();
        let pending = self
            .pending
            .get(key)
            .is_some_and(|ids| ids.contains(&lease_id));
        claimed || pending
    }

    /// What an acquisition that found `key` taken should make of it: the
    /// value to delete when this store put it and nothing claims it any
    /// more (its grant's ttl ran out, or it is the value of an acquisition
    /// whose outcome was lost); `None` when someone (or a live grant of
    /// this store) holds it. `found` is the lease id in the value, on etcd
    /// lease `etcd_lease`.
    pub(crate) fn own_unclaimed(
        &self,
        key: &str,
        found: LeaseId,
        etcd_lease: i64,
        value: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        match self.held.get(key) {
            Some(held) if held.lease_id == found => {
                // Our own grant, whose ttl ran out while other locks kept
                // the shared etcd lease alive: expired by the contract.
                held.stale(now).then(|| held.value.clone())
            }
            _ => {
                let on_our_lease = self.current.values().any(|lease| lease.id == etcd_lease);
                let pending = self
                    .pending
                    .get(key)
                    .is_some_and(|ids| ids.contains(&found));
                // Put by this store, but no grant of it claims the key: an
                // acquisition whose outcome was lost.
                (on_our_lease && !pending).then(|| value.to_vec())
            }
        }
    }

    /// Notes that `key` was seen held at `revision`.
    pub(crate) fn saw_held(&mut self, key: &str, revision: i64) {
        if self.seen_held.len() >= MAX_SEEN_HELD {
            self.seen_held.clear();
        }
        self.seen_held.insert(key.to_owned(), revision);
    }

    /// The revision at which `key` was last seen held, if noted.
    pub(crate) fn seen_held_at(&self, key: &str) -> Option<i64> {
        self.seen_held.get(key).copied()
    }

    /// Whether the lock `key`, listed on this store's etcd `lease`, is
    /// claimed, stale or unknown.
    pub(crate) fn claim_on_lease(&self, key: &str, lease: &Arc<EtcdLease>, now: Instant) -> Claim {
        match self.held.get(key) {
            Some(held) if Arc::ptr_eq(&held.lease, lease) => {
                if held.stale(now) {
                    Claim::Stale(held.value.clone())
                } else {
                    Claim::Claimed
                }
            }
            _ if self.pending.contains_key(key) => Claim::Claimed,
            _ => Claim::Unknown,
        }
    }

    /// Up to `limit` grants whose ttl ran out at `now` without a renewal
    /// while their etcd lease lives on: key, value and etcd lease.
    pub(crate) fn stale_grants(
        &self,
        now: Instant,
        limit: usize,
    ) -> Vec<(String, Vec<u8>, Arc<EtcdLease>)> {
        self.held
            .iter()
            .filter(|(_, held)| held.stale(now) && !held.lease.is_dead())
            .take(limit)
            .map(|(key, held)| (key.clone(), held.value.clone(), held.lease.clone()))
            .collect()
    }

    /// Takes up to `limit` of the oldest acquisitions of unknown outcome.
    pub(crate) fn take_in_doubt(&mut self, limit: usize) -> Vec<(String, Vec<u8>)> {
        let take = self.in_doubt.len().min(limit);
        self.in_doubt.drain(..take).collect()
    }

    /// Remembers again an acquisition of unknown outcome whose clean-up
    /// did not happen.
    pub(crate) fn requeue_in_doubt(&mut self, key: String, value: Vec<u8>) {
        self.in_doubt.push((key, value));
    }

    /// Whether a sweep is due at `now`.
    pub(crate) fn sweep_due(&self, now: Instant) -> bool {
        self.next_sweep.is_none_or(|next| now >= next)
    }

    /// Sets when the next sweep is due.
    pub(crate) fn sweep_next_at(&mut self, at: Instant) {
        self.next_sweep = Some(at);
    }
}

/// Marks an acquisition as under way until dropped, so a renewal's clean-up
/// does not mistake its fresh key for an orphan. Dropped unsettled (an
/// error, or the caller gave up), it records the value it may have put, for
/// the next sweep to delete.
pub(crate) struct Pending<'a> {
    registry: &'a Registry,
    key: &'a str,
    lease_id: LeaseId,
    value: &'a [u8],
    settled: bool,
}

impl<'a> Pending<'a> {
    pub(crate) fn new(
        registry: &'a Registry,
        key: &'a str,
        lease_id: LeaseId,
        value: &'a [u8],
    ) -> Self {
        registry
            .lock()
            .pending
            .entry(key.to_owned())
            .or_default()
            .push(lease_id);
        Self {
            registry,
            key,
            lease_id,
            value,
            settled: false,
        }
    }

    /// The outcome is known (granted, or held by someone else): nothing to
    /// clean up.
    pub(crate) fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
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
