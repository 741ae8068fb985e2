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

/// One acquisition attempt, as passed to
/// [`LeaseStore::acquire`](crate::LeaseStore::acquire).
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
}

impl<'a> AcquireRequest<'a> {
    /// A request with fencing enabled.
    pub fn new(key: &'a str, owner: &'a str, lease_id: LeaseId, ttl: Duration) -> Self {
        Self {
            key,
            owner,
            lease_id,
            ttl,
            fencing: Fencing::Enabled,
        }
    }

    /// Sets whether a fencing token is minted.
    #[must_use]
    pub fn with_fencing(mut self, fencing: Fencing) -> Self {
        self.fencing = fencing;
        self
    }
}

/// The answer to an acquisition: granted, or held by someone else. Losing
/// the race is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The lease was granted.
    Acquired(Grant),
    /// A live lease exists.
    Held(Holder),
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

/// The current holder of a live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's owner name.
    pub owner: String,
    /// How long the lease still runs by the store's clock, when known.
    pub remaining: Option<Duration>,
}

impl Holder {
    /// A holder with an unknown remaining time.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            remaining: None,
        }
    }

    /// Sets the remaining time.
    #[must_use]
    pub fn with_remaining(mut self, remaining: Duration) -> Self {
        self.remaining = Some(remaining);
        self
    }
}

/// One lease of a renewal batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewEntry<'a> {
    /// The full lock key.
    pub key: &'a str,
    /// The lease id the renewal must match.
    pub lease_id: LeaseId,
}

/// The answer for one lease of a renewal batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease was extended; `ttl` is the time to live the store applied,
    /// counted from when it processed the request.
    Renewed {
        /// The applied time to live.
        ttl: Duration,
    },
    /// The lease is gone: released, expired by the store's clock, or
    /// superseded. A renewal never recreates it.
    Lost,
}

/// The answer to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The lease was live and is now released.
    Released,
    /// The lease was not live: already released, expired or superseded.
    /// Nothing was changed.
    NotHeld,
}

/// What a store knows about a key, for operators and the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The live holder, or `None` when the key is free.
    pub holder: Option<Holder>,
    /// The last fencing token minted for the key, when fencing is kept.
    pub last_token: Option<FencingToken>,
}

impl LeaseInfo {
    /// Information about a key with the given live holder (or none) and
    /// last token (or none).
    pub fn new(holder: Option<Holder>, last_token: Option<FencingToken>) -> Self {
        Self { holder, last_token }
    }
}

/// What a store can do; the locker validates its options against these and
/// the conformance suite skips the cases they rule out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The shortest time to live the store honours.
    pub min_ttl: Duration,
    /// The store rounds time to live up to a multiple of this.
    pub ttl_granularity: Duration,
    /// The longest key, in bytes, the store accepts.
    pub max_key_len: usize,
    /// The most leases one [`renew`](crate::LeaseStore::renew) call takes.
    pub max_batch: usize,
    /// Whether [`wait_for_change`](crate::LeaseStore::wait_for_change) is
    /// woken by the store rather than only sleeping.
    pub native_wait: bool,
    /// Whether the store can mint fencing tokens.
    pub fencing: bool,
}

impl Capabilities {
    /// Defaults: 1 ms minimum and granularity, 1024-byte keys, batches of
    /// 1000, no native wait, fencing supported.
    pub fn new() -> Self {
        Self {
            min_ttl: Duration::from_millis(1),
            ttl_granularity: Duration::from_millis(1),
            max_key_len: 1024,
            max_batch: 1000,
            native_wait: false,
            fencing: true,
        }
    }

    /// Sets [`Capabilities::min_ttl`].
    #[must_use]
    pub fn with_min_ttl(mut self, value: Duration) -> Self {
        self.min_ttl = value;
        self
    }

    /// Sets [`Capabilities::ttl_granularity`].
    #[must_use]
    pub fn with_ttl_granularity(mut self, value: Duration) -> Self {
        self.ttl_granularity = value;
        self
    }

    /// Sets [`Capabilities::max_key_len`].
    #[must_use]
    pub fn with_max_key_len(mut self, value: usize) -> Self {
        self.max_key_len = value;
        self
    }

    /// Sets [`Capabilities::max_batch`] (at least 1).
    #[must_use]
    pub fn with_max_batch(mut self, value: usize) -> Self {
        self.max_batch = value.max(1);
        self
    }

    /// Sets [`Capabilities::native_wait`].
    #[must_use]
    pub fn with_native_wait(mut self, value: bool) -> Self {
        self.native_wait = value;
        self
    }

    /// Sets [`Capabilities::fencing`].
    #[must_use]
    pub fn with_fencing(mut self, value: bool) -> Self {
        self.fencing = value;
        self
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}
