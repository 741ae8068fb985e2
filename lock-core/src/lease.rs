//! The vocabulary of the [`LeaseStore`](crate::LeaseStore) protocol.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::FencingToken;

/// A random 128-bit identifier the locker mints for every acquisition.
///
/// Stores compare lease ids, never timestamps or owner names, to decide
/// whether a renewal or a release comes from the current holder.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(u128);

impl LeaseId {
    /// A new random lease id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A lease id with the given value (for stores reading one back, and
    /// for tests).
    pub fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The value.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// The value as 16 big-endian bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Reads 16 big-endian bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for LeaseId {
    /// 32 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({self})")
    }
}

/// A string that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a lease id (expected 32 hex digits)")]
pub struct ParseLeaseIdError;

impl FromStr for LeaseId {
    type Err = ParseLeaseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseLeaseIdError);
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| ParseLeaseIdError)
    }
}

/// Whether the lock's fencing state must survive a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fencing {
    /// Mint a token on every grant and keep the per-key counter forever
    /// (stores keep released rows or counter keys).
    Enabled,
    /// No tokens; stores may delete released keys entirely.
    Disabled,
}

impl Fencing {
    /// Whether tokens are minted.
    pub fn is_enabled(self) -> bool {
        self == Self::Enabled
    }
}

/// The default of [`LockerOptions::max_clock_skew`](crate::LockerOptions::max_clock_skew):
/// 10 s, as the library dlock descends from.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(10);

/// How an entry holds its key: alone, or together with other shared entries
/// up to the key's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LockMode {
    /// Holds alone: a mutex, or the writer side of a reader-writer lock.
    #[default]
    Exclusive,
    /// Holds together with other shared entries, at most `limit` at once: a
    /// semaphore's permit, or the reader side of a reader-writer lock.
    Shared,
}

impl LockMode {
    /// `"exclusive"` or `"shared"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exclusive => "exclusive",
            Self::Shared => "shared",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One acquisition attempt, as passed to
/// [`LeaseStore::acquire`](crate::LeaseStore::acquire).
///
/// A key is a queue of entries (see [`LeaseStore`](crate::LeaseStore)); a
/// request asks to add one entry, holding at once or, with
/// [`queue`](AcquireRequest::queue), waiting in line.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AcquireRequest<'a> {
    /// The full lock key (the locker's prefix and the lock id), already
    /// validated: non-empty, no NUL, within the store's maximum length.
    pub key: &'a str,
    /// The locker's owner name, stored so others can see who holds the key.
    pub owner: &'a str,
    /// The lease id this grant would carry.
    pub lease_id: LeaseId,
    /// The requested time to live, counted by the store's clock.
    pub ttl: Duration,
    /// Whether to mint a fencing token.
    pub fencing: Fencing,
    /// How the entry holds: alone or shared.
    pub mode: LockMode,
    /// How many shared entries may hold the key at once (N for a semaphore
    /// of N permits, `u32::MAX` for the readers of a reader-writer lock).
    /// Shared requests on one key must agree on it while the key has live
    /// shared entries; exclusive entries hold alone whatever it is, and
    /// neither set nor check it.
    pub limit: u32,
    /// `Some(waiter_ttl)`: when the entry cannot hold at once, add it to
    /// the key's queue as a waiting entry that expires `waiter_ttl` after
    /// its last renewal. `None`: hold at once or add nothing.
    pub queue: Option<Duration>,
    /// How far clients' wall clocks may be apart, for stores whose expiry
    /// follows the clients' clocks ([`ExpiryClock::Client`](crate::ExpiryClock::Client)): an entry
    /// counts as expired for this request only once the requester's clock
    /// is this much past its `expires_at`. A store may record it with the
    /// entry for the entry's later renewals. Store-clock backends ignore it.
    pub max_clock_skew: Duration,
}

impl<'a> AcquireRequest<'a> {
    /// An exclusive request with limit 1 (a mutex), fencing enabled, that
    /// does not queue.
    pub fn new(key: &'a str, owner: &'a str, lease_id: LeaseId, ttl: Duration) -> Self {
        Self {
            key,
            owner,
            lease_id,
            ttl,
            fencing: Fencing::Enabled,
            mode: LockMode::Exclusive,
            limit: 1,
            queue: None,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
        }
    }

    /// Sets the clock skew allowed between clients (client-clock stores).
    #[must_use]
    pub fn with_max_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = skew;
        self
    }

    /// Sets the mode and the key's limit (at least 1).
    #[must_use]
    pub fn with_mode(mut self, mode: LockMode, limit: u32) -> Self {
        self.mode = mode;
        self.limit = limit.max(1);
        self
    }

    /// Queues the entry when it cannot hold at once; it waits for at most
    /// `waiter_ttl` after its last renewal.
    #[must_use]
    pub fn queued(mut self, waiter_ttl: Duration) -> Self {
        self.queue = Some(waiter_ttl);
        self
    }

    /// Sets whether a fencing token is minted.
    #[must_use]
    pub fn with_fencing(mut self, fencing: Fencing) -> Self {
        self.fencing = fencing;
        self
    }
}

/// The answer to an acquisition: granted, queued, or held by others.
/// Losing the race is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireOutcome {
    /// The entry holds the key.
    Acquired(Grant),
    /// The entry cannot hold at once and the request did not ask to queue
    /// (or the store declined to): nothing was added. The holder is the
    /// first live holder of the key.
    Held(Holder),
    /// The entry waits in the key's queue.
    Queued(Queued),
    /// A shared request whose limit differs from the one the key's live
    /// shared entries agreed on: nothing was added.
    LimitMismatch {
        /// The limit the key's live shared entries agreed on.
        limit: u32,
    },
}

/// A waiting entry, as [`AcquireOutcome::Queued`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Queued {
    /// The waiter ttl the store applied (at least the requested one).
    pub ttl: Duration,
    /// The fencing token the entry will carry once it holds, when the
    /// store knows it already (stores whose tokens are the entries'
    /// sequence numbers do).
    pub token: Option<FencingToken>,
    /// The first live holder of the key, when there is one.
    pub holder: Option<Holder>,
    /// How soon an entry ahead may expire, when known: the entry may hold
    /// from then on without any release.
    pub retry_after: Option<Duration>,
}

impl Queued {
    /// A waiting entry with the applied waiter `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            token: None,
            holder: None,
            retry_after: None,
        }
    }

    /// Sets the token the entry will carry.
    #[must_use]
    pub fn with_token(mut self, token: FencingToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Sets the first live holder.
    #[must_use]
    pub fn with_holder(mut self, holder: Holder) -> Self {
        self.holder = Some(holder);
        self
    }

    /// Sets how soon an entry ahead may expire.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grant {
    /// The time to live the store actually applied (a store may round up,
    /// never down).
    pub ttl: Duration,
    /// The fencing token minted in the same atomic step as the grant, when
    /// fencing is enabled.
    pub token: Option<FencingToken>,
    /// The owner of an expired lease that this grant took over.
    pub previous_owner: Option<String>,
}

impl Grant {
    /// A grant with the applied `ttl`, no token, no previous owner.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            token: None,
            previous_owner: None,
        }
    }

    /// Sets the fencing token.
    #[must_use]
    pub fn with_token(mut self, token: FencingToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Records the owner of the expired lease that was taken over.
    #[must_use]
    pub fn with_previous_owner(mut self, owner: impl Into<String>) -> Self {
        self.previous_owner = Some(owner.into());
        self
    }
}

/// A live holder of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's owner name.
    pub owner: String,
    /// How long the lease still runs by the store's clock, when known (may
    /// be a lower bound: etcd truncates to whole seconds).
    pub remaining: Option<Duration>,
    /// How it holds.
    pub mode: LockMode,
}

impl Holder {
    /// An exclusive holder with an unknown remaining time.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            remaining: None,
            mode: LockMode::Exclusive,
        }
    }

    /// Sets how it holds.
    #[must_use]
    pub fn with_mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the remaining time.
    #[must_use]
    pub fn with_remaining(mut self, remaining: Duration) -> Self {
        self.remaining = Some(remaining);
        self
    }
}

/// One entry of a renewal batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewEntry<'a> {
    /// The full lock key.
    pub key: &'a str,
    /// The lease id the renewal must match.
    pub lease_id: LeaseId,
    /// `Some(waiter_ttl)` when the locker believes the entry waits: a
    /// still-waiting entry is extended by `waiter_ttl` and answered
    /// [`RenewOutcome::Waiting`]; one that holds by now is extended by the
    /// batch's ttl and answered [`RenewOutcome::Granted`] with its token.
    /// `None` for a held entry.
    pub wait_ttl: Option<Duration>,
}

impl<'a> RenewEntry<'a> {
    /// An entry the locker holds.
    pub fn held(key: &'a str, lease_id: LeaseId) -> Self {
        Self {
            key,
            lease_id,
            wait_ttl: None,
        }
    }

    /// An entry the locker believes waits, with its waiter ttl.
    pub fn waiting(key: &'a str, lease_id: LeaseId, waiter_ttl: Duration) -> Self {
        Self {
            key,
            lease_id,
            wait_ttl: Some(waiter_ttl),
        }
    }
}

/// The answer for one entry of a renewal batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenewOutcome {
    /// The holding entry was extended; `ttl` is the time to live the store
    /// applied, counted from when it processed the request.
    Renewed {
        /// The applied time to live.
        ttl: Duration,
    },
    /// An entry renewed as waiting holds now: it was extended by the
    /// batch's ttl (the grant's `ttl`), and carries its token.
    Granted(Grant),
    /// The entry still waits; it was extended by its waiter ttl.
    Waiting {
        /// The applied waiter ttl.
        ttl: Duration,
        /// How soon an entry ahead may expire, when known.
        retry_after: Option<Duration>,
    },
    /// The entry is gone: released, expired by the store's clock, or
    /// superseded. A renewal never recreates it.
    Lost,
}

/// What [`LeaseStore::wait_for_grant`](crate::LeaseStore::wait_for_grant)
/// learned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitOutcome {
    /// The store told the waiting entry it holds now (a release handed the
    /// key to it); its expiry was not moved by the grant. The token, when
    /// the notification carried it.
    Granted {
        /// The entry's fencing token, when known.
        token: Option<FencingToken>,
    },
    /// The key's queue may have changed: the caller should renew the entry
    /// to learn where it stands.
    Changed,
    /// Nothing was heard within the maximum wait.
    TimedOut,
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The entry was live (holding or waiting) and is now gone; entries it
    /// kept waiting hold from now on.
    Released,
    /// The entry was not live: already released, expired or superseded.
    /// Nothing was changed.
    NotHeld,
}

/// What a store knows about a key, for operators and the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The first live holder, or `None` when the key is free.
    pub holder: Option<Holder>,
    /// Every live holder, in the order they were granted.
    pub holders: Vec<Holder>,
    /// How many live entries wait.
    pub waiting: usize,
    /// The limit the key's live shared entries agreed on, when it has any.
    pub limit: Option<u32>,
    /// The largest fencing token minted (or reserved for a waiting entry)
    /// for the key, when fencing is kept: every later grant's token is
    /// larger.
    pub last_token: Option<FencingToken>,
}

impl LeaseInfo {
    /// Information about a key with the given live holders (in grant
    /// order) and last token (or none), nobody waiting.
    pub fn new(holders: Vec<Holder>, last_token: Option<FencingToken>) -> Self {
        Self {
            holder: holders.first().cloned(),
            holders,
            waiting: 0,
            limit: None,
            last_token,
        }
    }

    /// Sets how many live entries wait.
    #[must_use]
    pub fn with_waiting(mut self, waiting: usize) -> Self {
        self.waiting = waiting;
        self
    }

    /// Sets the key's limit.
    #[must_use]
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}
