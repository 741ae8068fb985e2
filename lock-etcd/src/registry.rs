//! The entry registry: what the store remembers between calls.
//!
//! An [`EtcdStore`](crate::EtcdStore) keeps no state in etcd beyond the
//! entry and fence keys, so everything it must remember lives here, under
//! one mutex that is never held across an `await`:
//!
//! - the etcd lease new entries of each ttl go on (`current`), and, through
//!   [`Registry::lease_for`], when to grant another;
//! - the entries this store made and has not seen end (`entries`, by lock
//!   key and lease id): their etcd lease, exact value, create revision, mode
//!   and limit, when a grant or renewal last covered them, and whether they
//!   hold ([`Phase`]); a waiting entry also keeps what is ahead of it
//!   ([`Ahead`]), so a watch can decide when it holds;
//! - the acquisitions under way (`pending`), and those that ended with an
//!   unknown outcome (`in_doubt`: the value they may have put).
//!
//! The rules it keeps:
//!
//! - An entry is **claimed** by this store while it is tracked and has not
//!   gone a whole ttl of its etcd lease without a renewal
//!   ([`Tracked::stale`]), or while an acquisition of its lease id is
//!   pending. Claimed entries are never deleted by clean-ups
//!   ([`State::own_unclaimed`], [`State::claims`],
//!   [`State::claim_on_lease`]).
//! - An entry is forgotten only under its own lease id; and all entries of
//!   an etcd lease go when that lease is gone ([`Registry::lease_gone`]) or
//!   was replaced after surely running out.
//! - Every acquisition is pending from its first request until it settles
//!   ([`Pending`]); one that ends unsettled (an error, or its caller gave
//!   up) leaves its value in `in_doubt`, for the sweeper to delete by exact
//!   value. At most [`MAX_IN_DOUBT`] are kept, the oldest dropped first.
//! - Bytes of entry keys are counted per etcd lease while tracked, and a
//!   lease stops taking entries past [`MAX_KEY_BYTES_PER_LEASE`], so the key
//!   list a renewal reads stays within a gRPC reply.
//! - What is ahead of a waiting entry is kept only up to [`MAX_AHEAD`]
//!   entries (a longer queue is read again by each wait).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lock_core::{LeaseId, LockMode, StoreError, StoreErrorKind};
use tokio::time::Instant;

use crate::conn::Conn;
use crate::lease::EtcdLease;
use crate::queue::{Ahead, Seen};

/// The most bytes of etcd keys one etcd lease carries before the store
/// opens another for the same ttl: a renewal lists a lease's keys in one
/// reply, and gRPC replies are limited to 4 MiB.
const MAX_KEY_BYTES_PER_LEASE: usize = 3 << 20;
/// How many acquisitions of unknown outcome the store remembers.
const MAX_IN_DOUBT: usize = 10_000;
/// The longest list of entries ahead a waiting entry remembers.
const MAX_AHEAD: usize = 10_000;

/// The store's memory of its leases, entries and acquisitions.
#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
    /// Serializes lease grants, so concurrent acquisitions share one.
    granting: tokio::sync::Mutex<()>,
}

/// The registry's content; reached through [`Registry::lock`].
#[derive(Default)]
pub(crate) struct State {
    /// The etcd lease new entries of each ttl (whole seconds) go on.
    current: HashMap<u64, Arc<EtcdLease>>,
    /// Entries this store made and has not seen end, by lock key and lease
    /// id.
    entries: HashMap<String, HashMap<LeaseId, Tracked>>,
    /// Acquisitions under way: lock key and lease ids.
    pending: HashMap<String, Vec<LeaseId>>,
    /// Acquisitions whose outcome is unknown.
    in_doubt: Vec<Doubt>,
    /// When acquisitions next look for expired entries of this store.
    next_sweep: Option<Instant>,
}

/// An acquisition of unknown outcome: the entry it may have put.
pub(crate) struct Doubt {
    pub(crate) key: String,
    pub(crate) lease_id: LeaseId,
    pub(crate) value: Vec<u8>,
}

/// Whether a tracked entry holds.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Holds, on an etcd lease of its holder's ttl.
    Held,
    /// Holds (a watch saw the entries ahead go), still on its waiter lease
    /// until a renewal moves it.
    Promoted,
    /// Waits; with what is ahead of it, when remembered.
    Waiting(Option<Ahead>),
}

/// An entry this store made.
pub(crate) struct Tracked {
    /// The etcd lease it is attached to.
    pub(crate) lease: Arc<EtcdLease>,
    /// The exact value of its key.
    pub(crate) value: Vec<u8>,
    /// Its create revision: its place in the queue and its token.
    pub(crate) create_revision: i64,
    pub(crate) mode: LockMode,
    pub(crate) limit: u32,
    /// The length of its etcd key, counted on `lease` while tracked.
    pub(crate) key_bytes: usize,
    /// When the last grant or renewal that covered it was sent.
    pub(crate) refreshed: Instant,
    pub(crate) phase: Phase,
}

impl Tracked {
    /// Whether the entry's own ttl ran out at `now` without a renewal (the
    /// etcd lease may still live, kept alive for other entries).
    pub(crate) fn stale(&self, now: Instant) -> bool {
        self.refreshed + self.lease.applied() <= now
    }
}

/// What the registry says of an entry found on one of the store's etcd
/// leases.
pub(crate) enum Claim {
    /// A live tracked entry, or an acquisition under way, claims it.
    Claimed,
    /// The tracked entry on that lease went a whole ttl without a renewal:
    /// its value.
    Stale(Vec<u8>),
    /// Nothing tracked knows it.
    Unknown,
}

/// Where a tracked entry stands, for a wait.
pub(crate) enum Standing {
    /// It holds: its token.
    Holds(i64),
    /// It waits, with what is ahead when remembered.
    Waits {
        create_revision: i64,
        mode: LockMode,
        limit: u32,
        ahead: Option<Ahead>,
    },
}

impl Registry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is complete before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The etcd lease a new entry of `ttl_secs` goes on: the current one,
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
            state.drop_lease(&old);
        }
        Ok(lease)
    }

    /// The etcd lease is gone: stop granting on it, forget the entries on
    /// it.
    pub(crate) fn lease_gone(&self, lease: &Arc<EtcdLease>) {
        lease.mark_dead();
        let mut state = self.lock();
        state
            .current
            .retain(|_, current| !Arc::ptr_eq(current, lease));
        state.drop_lease(lease);
    }

    /// Forgets the entry of `lease_id` on `key`.
    pub(crate) fn forget(&self, key: &str, lease_id: LeaseId) {
        self.lock().remove(key, lease_id);
    }
}

impl State {
    /// How many entries this store made and still tracks.
    pub(crate) fn tracked(&self) -> usize {
        self.entries.values().map(HashMap::len).sum()
    }

    fn usable_lease(&self, ttl_secs: u64, now: Instant, key_len: usize) -> Option<Arc<EtcdLease>> {
        let lease = self.current.get(&ttl_secs)?;
        let fits = lease.attached_bytes() + key_len <= MAX_KEY_BYTES_PER_LEASE;
        (fits && !lease.surely_expired(now)).then(|| lease.clone())
    }

    fn drop_lease(&mut self, lease: &Arc<EtcdLease>) {
        for of_key in self.entries.values_mut() {
            of_key.retain(|_, tracked| !Arc::ptr_eq(&tracked.lease, lease));
        }
        self.entries.retain(|_, of_key| !of_key.is_empty());
    }

    /// Records an entry, replacing (and uncounting) an older record of the
    /// same lease id.
    pub(crate) fn record(&mut self, key: &str, lease_id: LeaseId, mut tracked: Tracked) {
        tracked.lease.attach(tracked.key_bytes);
        if let Phase::Waiting(Some(ahead)) = &tracked.phase
            && ahead.len() > MAX_AHEAD
        {
            tracked.phase = Phase::Waiting(None);
        }
        let of_key = match self.entries.get_mut(key) {
            Some(of_key) => of_key,
            None => self.entries.entry(key.to_owned()).or_default(),
        };
        if let Some(old) = of_key.insert(lease_id, tracked) {
            old.lease.detach(old.key_bytes);
        }
    }

    /// Forgets an entry.
    pub(crate) fn remove(&mut self, key: &str, lease_id: LeaseId) -> Option<Tracked> {
        let of_key = self.entries.get_mut(key)?;
        let removed = of_key.remove(&lease_id);
        if of_key.is_empty() {
            self.entries.remove(key);
        }
        if let Some(removed) = &removed {
            removed.lease.detach(removed.key_bytes);
        }
        removed
    }

    /// Whether this store tracks an entry on `key`.
    pub(crate) fn has_entries(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub(crate) fn get(&self, key: &str, lease_id: LeaseId) -> Option<&Tracked> {
        self.entries.get(key)?.get(&lease_id)
    }

    pub(crate) fn get_mut(&mut self, key: &str, lease_id: LeaseId) -> Option<&mut Tracked> {
        self.entries.get_mut(key)?.get_mut(&lease_id)
    }

    /// The tracked entry of `lease_id` on `key`, unless its ttl ran out at
    /// `now` without a renewal.
    pub(crate) fn live(&self, key: &str, lease_id: LeaseId, now: Instant) -> Option<&Tracked> {
        self.get(key, lease_id)
            .filter(|tracked| !tracked.stale(now))
    }

    /// A renewal sent at `sent` covered the entry.
    pub(crate) fn renewed(&mut self, key: &str, lease_id: LeaseId, sent: Instant) {
        if let Some(tracked) = self.get_mut(key, lease_id) {
            tracked.refreshed = tracked.refreshed.max(sent);
        }
    }

    /// The entry now holds, on `lease` (its holder lease), as of a renewal
    /// sent at `sent`.
    pub(crate) fn moved(
        &mut self,
        key: &str,
        lease_id: LeaseId,
        lease: &Arc<EtcdLease>,
        sent: Instant,
    ) {
        if let Some(tracked) = self.get_mut(key, lease_id) {
            tracked.lease.detach(tracked.key_bytes);
            lease.attach(tracked.key_bytes);
            tracked.lease = lease.clone();
            tracked.phase = Phase::Held;
            tracked.refreshed = tracked.refreshed.max(sent);
        }
    }

    /// Where a tracked entry stands, for a wait.
    pub(crate) fn standing(&self, key: &str, lease_id: LeaseId) -> Option<Standing> {
        let tracked = self.get(key, lease_id)?;
        Some(match &tracked.phase {
            Phase::Held | Phase::Promoted => Standing::Holds(tracked.create_revision),
            Phase::Waiting(ahead) => Standing::Waits {
                create_revision: tracked.create_revision,
                mode: tracked.mode,
                limit: tracked.limit,
                ahead: ahead.clone(),
            },
        })
    }

    /// A wait learnt what is ahead of a waiting entry (or that it holds).
    pub(crate) fn set_ahead(&mut self, key: &str, lease_id: LeaseId, ahead: Option<Ahead>) {
        if let Some(tracked) = self.get_mut(key, lease_id)
            && let Phase::Waiting(known) = &mut tracked.phase
        {
            let newer = match (&ahead, &*known) {
                (Some(new), Some(old)) => new.revision >= old.revision,
                _ => true,
            };
            if newer {
                *known = ahead.filter(|ahead| ahead.len() <= MAX_AHEAD);
            }
        }
    }

    /// A wait saw every entry ahead of a waiting entry go: it holds.
    pub(crate) fn promote(&mut self, key: &str, lease_id: LeaseId) {
        if let Some(tracked) = self.get_mut(key, lease_id)
            && matches!(tracked.phase, Phase::Waiting(_))
        {
            tracked.phase = Phase::Promoted;
        }
    }

    /// Whether a live tracked entry or a pending acquisition of this store
    /// claims the entry of `lease_id` on `key`.
    pub(crate) fn claims(&self, key: &str, lease_id: LeaseId, now: Instant) -> bool {
        let pending = self
            .pending
            .get(key)
            .is_some_and(|ids| ids.contains(&lease_id));
        pending || self.live(key, lease_id, now).is_some()
    }

    /// What an acquisition or a renewal that read `key`'s queue should make
    /// of an entry `seen` in it: the value to delete when it is an entry of
    /// this store whose ttl ran out without a renewal while the shared etcd
    /// lease lived on (expired by the contract, but still in everyone's
    /// way); `None` otherwise. Untracked entries on the store's leases are
    /// left to the sweeper and the renewals' key lists, which look again
    /// before deleting: one read here may be older than a release that
    /// already forgot its entry.
    pub(crate) fn own_unclaimed(&self, key: &str, seen: &Seen, now: Instant) -> Option<Vec<u8>> {
        if seen.is_legacy() {
            return None;
        }
        let tracked = self.get(key, seen.lease_id)?;
        (tracked.stale(now) && tracked.lease.id == seen.etcd_lease).then(|| seen.value.clone())
    }

    /// Whether the entry of `lease_id` on `key`, listed on this store's
    /// etcd `lease`, is claimed, stale or unknown.
    pub(crate) fn claim_on_lease(
        &self,
        key: &str,
        lease_id: LeaseId,
        lease: &Arc<EtcdLease>,
        now: Instant,
    ) -> Claim {
        let pending = self
            .pending
            .get(key)
            .is_some_and(|ids| ids.contains(&lease_id));
        match self.get(key, lease_id) {
            _ if pending => Claim::Claimed,
            Some(tracked) if !tracked.stale(now) => Claim::Claimed,
            Some(tracked) if Arc::ptr_eq(&tracked.lease, lease) => {
                Claim::Stale(tracked.value.clone())
            }
            // Stale on another lease (it was moved): that lease's clean-up
            // deals with it.
            Some(_) => Claim::Claimed,
            None => Claim::Unknown,
        }
    }

    /// Up to `limit` entries whose ttl ran out at `now` without a renewal
    /// while their etcd lease lives on: key, lease id, value and etcd lease.
    pub(crate) fn stale_entries(
        &self,
        now: Instant,
        limit: usize,
    ) -> Vec<(String, LeaseId, Vec<u8>, Arc<EtcdLease>)> {
        self.entries
            .iter()
            .flat_map(|(key, of_key)| {
                of_key
                    .iter()
                    .map(move |(lease_id, tracked)| (key, lease_id, tracked))
            })
            .filter(|(_, _, tracked)| tracked.stale(now) && !tracked.lease.is_dead())
            .take(limit)
            .map(|(key, lease_id, tracked)| {
                (
                    key.clone(),
                    *lease_id,
                    tracked.value.clone(),
                    tracked.lease.clone(),
                )
            })
            .collect()
    }

    /// Takes up to `limit` of the oldest acquisitions of unknown outcome.
    pub(crate) fn take_in_doubt(&mut self, limit: usize) -> Vec<Doubt> {
        let take = self.in_doubt.len().min(limit);
        self.in_doubt.drain(..take).collect()
    }

    /// Remembers again an acquisition of unknown outcome whose clean-up
    /// did not happen.
    pub(crate) fn requeue_in_doubt(&mut self, doubt: Doubt) {
        self.in_doubt.push(doubt);
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
/// does not mistake its fresh entry for an orphan. Dropped unsettled (an
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

    /// The outcome is known (granted, queued, or refused): nothing to clean
    /// up.
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
            state.in_doubt.push(Doubt {
                key: self.key.to_owned(),
                lease_id: self.lease_id,
                value: self.value.to_vec(),
            });
        }
    }
}
