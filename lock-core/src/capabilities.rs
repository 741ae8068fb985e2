//! What a store can do: [`Capabilities`] and [`ExpiryClock`].

use std::time::Duration;

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
    /// Whether [`wait_for_grant`](crate::LeaseStore::wait_for_grant) is
    /// woken by the store (a release notifies the entry it promotes) rather
    /// than only sleeping.
    pub native_wait: bool,
    /// Whether the store can mint fencing tokens.
    pub fencing: bool,
    /// Without native waits, the longest a waiting `lock()` goes between
    /// two polls of its entry (its first polls come sooner); a store whose
    /// requests cost money or time raises it. Default 250 ms.
    pub poll_interval: Duration,
    /// Whose clock decides expiry: the store's own (every store that can
    /// read its clock inside a conditional write), or the clients' wall
    /// clocks within [`LockerOptions::max_clock_skew`](crate::LockerOptions::max_clock_skew).
    pub clock: ExpiryClock,
}

/// Whose clock decides when an entry has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ExpiryClock {
    /// The store's own clock, read in the same atomic step as each
    /// decision; clients' clocks are never compared.
    #[default]
    Store,
    /// The clients' wall clocks: a grant records `expires_at` by the
    /// granting client's clock, and another client treats the entry as
    /// expired only once its own clock is past `expires_at +
    /// max_clock_skew`. Sound while every client's clock is within
    /// `max_clock_skew` of the others' (NTP, chrony, Amazon Time Sync).
    Client,
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
            poll_interval: Duration::from_millis(250),
            clock: ExpiryClock::Store,
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

    /// Sets [`Capabilities::poll_interval`] (at least 1 ms).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets [`Capabilities::clock`].
    #[must_use]
    pub fn with_clock(mut self, clock: ExpiryClock) -> Self {
        self.clock = clock;
        self
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}
