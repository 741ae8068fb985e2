//! Locker options and lock-id validation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::BootClockFn;
use crate::{Capabilities, Fencing, LockError};

/// The longest lock key (prefix plus id) in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The longest owner name in bytes.
pub const MAX_OWNER_LEN: usize = 256;
/// The largest [`LockerOptions::max_clock_skew`] accepted.
const MAX_CLOCK_SKEW_LIMIT: Duration = Duration::from_secs(3600);

/// Validated options of a [`LeaseLocker`](crate::LeaseLocker). Built by
/// [`LockerOptions::builder`]; [`LockerOptions::default`] gives the defaults.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_core::LockerOptions;
///
/// let options = LockerOptions::builder()
///     .owner("billing-worker-1")
///     .prefix("billing/")
///     .lease(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(options.heartbeat(), Duration::from_secs(10));
/// # Ok::<(), lock_core::LockError>(())
/// ```
#[derive(Clone)]
pub struct LockerOptions {
    owner: String,
    prefix: String,
    lease: Duration,
    heartbeat: Duration,
    warn_after: Duration,
    warnings: bool,
    drift: f64,
    margin: Duration,
    store_timeout: Duration,
    fencing: Fencing,
    waiter_ttl: Duration,
    /// Whether `waiter_ttl` was chosen by the user (else the default,
    /// which a store's minimum ttl may raise).
    waiter_ttl_chosen: bool,
    max_clock_skew: Duration,
    pub(crate) boot_clock: Option<BootClockFn>,
}

impl LockerOptions {
    /// A builder with every option at its default.
    pub fn builder() -> LockerOptionsBuilder {
        LockerOptionsBuilder::default()
    }

    /// The owner name stored with every lease (default: `host-pid-random`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The prefix put before every lock id to form the store key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lease time requested from the store (default 60 s).
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// How often held leases are renewed (default lease / 3).
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// How long after the acquisition or the last good renewal a lock turns
    /// [`Expiring`](crate::LockStatus::Expiring) and warns (default
    /// lease − 10 s when that leaves room, else halfway between heartbeat
    /// and the local deadline).
    pub fn warn_after(&self) -> Duration {
        self.warn_after
    }

    /// Whether [`LockGuard::warnings`](crate::LockGuard::warnings) gives a
    /// warning receiver (default true).
    pub fn warnings_enabled(&self) -> bool {
        self.warnings
    }

    /// The bound on clock-rate difference between client and store (default
    /// 0.01, i.e. 1 %).
    pub fn drift(&self) -> f64 {
        self.drift
    }

    /// Time given up at the end of every lease to cover expiry granularity
    /// (default 5 ms).
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// The bound on every store call (default 1 s, or heartbeat / 2 when
    /// that is shorter).
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// Whether grants carry fencing tokens (default enabled).
    pub fn fencing(&self) -> Fencing {
        self.fencing
    }

    /// How far apart the clients' wall clocks may be, for stores whose
    /// expiry follows them ([`ExpiryClock::Client`](crate::ExpiryClock),
    /// DynamoDB): another client takes over an expired lease only once its
    /// own clock is this much past the lease's end (default 10 s, as the
    /// library dlock descends from). Store-clock backends ignore it.
    pub fn max_clock_skew(&self) -> Duration {
        self.max_clock_skew
    }

    /// How long a waiting entry of [`Locker::lock`](crate::Locker::lock)
    /// lives in the store's queue after its last renewal (default two
    /// heartbeats, at most the lease). Waiting entries are renewed with the
    /// held ones; an entry whose process died is skipped by the queue this
    /// long after its last renewal, promoted or not.
    pub fn waiter_ttl(&self) -> Duration {
        self.waiter_ttl
    }

    /// The local validity of a lease the store applied for `ttl`, counted
    /// from when its request was sent: `ttl * (1 - drift) - margin`.
    pub fn usable(&self, ttl: Duration) -> Duration {
        usable(ttl, self.drift, self.margin)
    }

    /// These options fitted to a store: a default waiter ttl below the
    /// store's minimum ttl is raised to it (at most to the lease).
    pub(crate) fn fitted_to(mut self, caps: &Capabilities) -> Self {
        if !self.waiter_ttl_chosen && self.waiter_ttl < caps.min_ttl {
            self.waiter_ttl = caps.min_ttl.min(self.lease);
        }
        self
    }

    /// Checks the options against a store's capabilities.
    pub(crate) fn check_against(&self, caps: &Capabilities) -> Result<(), LockError> {
        if self.lease < caps.min_ttl {
            return Err(LockError::InvalidConfig(format!(
                "lease {:?} is below this store's minimum ttl {:?}; set lease to at least {:?}",
                self.lease, caps.min_ttl, caps.min_ttl
            )));
        }
        if self.waiter_ttl < caps.min_ttl {
            return Err(LockError::InvalidConfig(format!(
                "waiter_ttl {:?} is below this store's minimum ttl {:?}; set waiter_ttl (and the lease) to at least {:?}",
                self.waiter_ttl, caps.min_ttl, caps.min_ttl
            )));
        }
        if self.fencing.is_enabled() && !caps.fencing {
            return Err(LockError::InvalidConfig(
                "this store cannot mint fencing tokens; disable fencing with .fencing(false)"
                    .into(),
            ));
        }
        let max_key_len = caps.max_key_len.min(MAX_KEY_LEN);
        if self.prefix.len() >= max_key_len {
            return Err(LockError::InvalidConfig(format!(
                "prefix is {} bytes, leaving no room for lock ids in this store's {max_key_len}-byte keys; shorten the prefix",
                self.prefix.len()
            )));
        }
        Ok(())
    }

    /// Validates `id` and returns the store key (prefix + id).
    pub(crate) fn key_for(&self, id: &str, caps: &Capabilities) -> Result<String, LockError> {
        validate_id(id)?;
        let max = caps.max_key_len.min(MAX_KEY_LEN);
        let len = self.prefix.len() + id.len();
        if len > max {
            return Err(LockError::InvalidId {
                reason: format!(
                    "the key (prefix and id) is {len} bytes; at most {max} bytes are allowed"
                ),
            });
        }
        let mut key = String::with_capacity(len);
        key.push_str(&self.prefix);
        key.push_str(id);
        Ok(key)
    }
}

impl Default for LockerOptions {
    fn default() -> Self {
        LockerOptionsBuilder::default()
            .resolve()
            .unwrap_or_else(|_| unreachable!("the default options are valid"))
    }
}

impl fmt::Debug for LockerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockerOptions")
            .field("owner", &self.owner)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("heartbeat", &self.heartbeat)
            .field("warn_after", &self.warn_after)
            .field("warnings", &self.warnings)
            .field("drift", &self.drift)
            .field("margin", &self.margin)
            .field("store_timeout", &self.store_timeout)
            .field("fencing", &self.fencing)
            .field("waiter_ttl", &self.waiter_ttl)
            .field("max_clock_skew", &self.max_clock_skew)
            .finish_non_exhaustive()
    }
}

fn usable(ttl: Duration, drift: f64, margin: Duration) -> Duration {
    ttl.mul_f64(1.0 - drift).saturating_sub(margin)
}

/// Checks a lock id: non-empty, no NUL, at most [`MAX_KEY_LEN`] bytes.
pub(crate) fn validate_id(id: &str) -> Result<(), LockError> {
    if id.is_empty() {
        return Err(LockError::InvalidId {
            reason: "the id is empty".into(),
        });
    }
    if id.contains('\0') {
        return Err(LockError::InvalidId {
            reason: "the id contains a NUL character".into(),
        });
    }
    if id.len() > MAX_KEY_LEN {
        return Err(LockError::InvalidId {
            reason: format!(
                "the id is {} bytes; at most {MAX_KEY_LEN} bytes are allowed",
                id.len()
            ),
        });
    }
    Ok(())
}

#[derive(Clone, Copy, Default)]
enum WarnSetting {
    #[default]
    Default,
    After(Duration),
    Disabled,
}

/// Builds [`LockerOptions`]; every setter is optional and
/// [`build`](LockerOptionsBuilder::build) checks the combination.
#[derive(Clone, Default)]
pub struct LockerOptionsBuilder {
    owner: Option<String>,
    prefix: String,
    lease: Option<Duration>,
    heartbeat: Option<Duration>,
    warn: WarnSetting,
    drift: Option<f64>,
    margin: Option<Duration>,
    store_timeout: Option<Duration>,
    fencing: Option<bool>,
    waiter_ttl: Option<Duration>,
    max_clock_skew: Option<Duration>,
    boot_clock: Option<BootClockFn>,
}

impl fmt::Debug for LockerOptionsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockerOptionsBuilder")
            .field("owner", &self.owner)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl LockerOptionsBuilder {
    /// The owner name stored with every lease: who holds a lock, for
    /// operators and error messages. Default `hostname-pid-random`.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// A prefix put before every lock id (namespacing: two lockers with
    /// different prefixes never contend).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease time requested from the store. Default 60 s.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How often to renew held leases. Default lease / 3.
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// When, after the acquisition or the last good renewal, a lock turns
    /// `Expiring` and its warning fires.
    #[must_use]
    pub fn warn_after(mut self, warn_after: Duration) -> Self {
        self.warn = WarnSetting::After(warn_after);
        self
    }

    /// No warning receivers ([`LockGuard::warnings`](crate::LockGuard::warnings)
    /// returns `None`). The status still turns `Expiring` at the default
    /// warn time.
    #[must_use]
    pub fn without_warnings(mut self) -> Self {
        self.warn = WarnSetting::Disabled;
        self
    }

    /// The bound on clock-rate difference between client and store, a
    /// fraction in `[0, 0.5)`. Default 0.01.
    #[must_use]
    pub fn drift(mut self, drift: f64) -> Self {
        self.drift = Some(drift);
        self
    }

    /// Time given up at the end of every lease. Default 5 ms.
    #[must_use]
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }

    /// The bound on every store call. Default 1 s, or heartbeat / 2 when
    /// that is shorter.
    #[must_use]
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = Some(timeout);
        self
    }

    /// Whether grants carry fencing tokens. Default true. Without fencing,
    /// stores may delete released keys.
    #[must_use]
    pub fn fencing(mut self, enabled: bool) -> Self {
        self.fencing = Some(enabled);
        self
    }

    /// How long a waiting entry lives in the store's queue after its last
    /// renewal. Default two heartbeats, at most the lease. It must outlast a
    /// heartbeat plus the store timeout (after drift and margin), so that
    /// a renewal round always reaches it in time.
    #[must_use]
    pub fn waiter_ttl(mut self, waiter_ttl: Duration) -> Self {
        self.waiter_ttl = Some(waiter_ttl);
        self
    }

    /// How far apart the clients' wall clocks may be, for stores whose
    /// expiry follows them (DynamoDB). Default 10 s. Keep clocks
    /// synchronized (NTP, chrony, Amazon Time Sync) well within it: a client
    /// whose clock runs further ahead can take over a live lease (fencing
    /// tokens still protect a fenced resource).
    #[must_use]
    pub fn max_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = Some(skew);
        self
    }

    /// Replaces the boot clock (time since boot, suspend included) used to
    /// detect system suspend. For tests that simulate a suspend.
    #[doc(hidden)]
    #[must_use]
    pub fn boot_clock(mut self, clock: Arc<dyn Fn() -> Option<Duration> + Send + Sync>) -> Self {
        self.boot_clock = Some(clock);
        self
    }

    /// Checks the combination and builds the options.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`], with a message naming the fix, when a
    /// duration is zero, the heartbeat is not shorter than the lease, the
    /// store timeout is not shorter than the heartbeat, a renewal could not
    /// finish before the local deadline, the warning would come after the
    /// deadline or before the first renewal, the drift is outside `[0, 0.5)`,
    /// or the owner or prefix is unusable.
    pub fn build(self) -> Result<LockerOptions, LockError> {
        self.resolve()
    }

    fn resolve(self) -> Result<LockerOptions, LockError> {
        let invalid = |message: String| Err(LockError::InvalidConfig(message));
        let lease = self.lease.unwrap_or(Duration::from_secs(60));
        if lease.is_zero() {
            return invalid("lease must be longer than zero".into());
        }
        let heartbeat = self.heartbeat.unwrap_or(lease / 3);
        if heartbeat.is_zero() {
            return invalid("heartbeat must be longer than zero".into());
        }
        if heartbeat >= lease {
            return invalid(format!(
                "heartbeat {heartbeat:?} must be shorter than the lease {lease:?}; use lease / 3"
            ));
        }
        let drift = self.drift.unwrap_or(0.01);
        if !(0.0..0.5).contains(&drift) {
            return invalid(format!(
                "drift {drift} must be a fraction in [0, 0.5); the default is 0.01"
            ));
        }
        let margin = self.margin.unwrap_or(Duration::from_millis(5));
        let usable_lease = usable(lease, drift, margin);
        if usable_lease.is_zero() {
            return invalid(format!(
                "margin {margin:?} leaves nothing of the lease {lease:?}; use a smaller margin or a longer lease"
            ));
        }
        let store_timeout = self
            .store_timeout
            .unwrap_or_else(|| Duration::from_secs(1).min(heartbeat / 2));
        if store_timeout.is_zero() {
            return invalid("store_timeout must be longer than zero".into());
        }
        if store_timeout >= heartbeat {
            return invalid(format!(
                "store_timeout {store_timeout:?} must be shorter than the heartbeat {heartbeat:?}; use at most heartbeat / 2"
            ));
        }
        if heartbeat + store_timeout >= usable_lease {
            return invalid(format!(
                "a renewal sent after heartbeat {heartbeat:?} may take store_timeout {store_timeout:?} and end after the usable lease {usable_lease:?} (lease minus drift and margin); shorten heartbeat or store_timeout, or lengthen the lease"
            ));
        }
        let (warn_after, warnings) = match self.warn {
            WarnSetting::After(warn_after) => (warn_after, true),
            WarnSetting::Default => (default_warn_after(lease, heartbeat, usable_lease), true),
            WarnSetting::Disabled => (default_warn_after(lease, heartbeat, usable_lease), false),
        };
        if warn_after.is_zero() {
            return invalid("warn_after must be longer than zero".into());
        }
        if warn_after >= usable_lease {
            return invalid(format!(
                "warn_after {warn_after:?} must be shorter than the usable lease {usable_lease:?} (lease minus drift and margin), or the warning comes after the lock expired"
            ));
        }
        if warn_after <= heartbeat {
            return invalid(format!(
                "warn_after {warn_after:?} must be longer than the heartbeat {heartbeat:?}, or every healthy lock warns before its renewal"
            ));
        }
        let waiter_ttl = self
            .waiter_ttl
            .unwrap_or_else(|| (2 * heartbeat).min(lease));
        if waiter_ttl.is_zero() {
            return invalid("waiter_ttl must be longer than zero".into());
        }
        let usable_waiter_ttl = usable(waiter_ttl, drift, margin);
        if heartbeat + store_timeout >= usable_waiter_ttl {
            return invalid(format!(
                "waiter_ttl {waiter_ttl:?} leaves {usable_waiter_ttl:?} after drift and margin, not more than heartbeat {heartbeat:?} plus store_timeout {store_timeout:?}: a waiting entry could expire between two renewals; use at least twice the heartbeat"
            ));
        }
        let max_clock_skew = self
            .max_clock_skew
            .unwrap_or(crate::lease::DEFAULT_MAX_CLOCK_SKEW);
        if max_clock_skew > MAX_CLOCK_SKEW_LIMIT {
            return invalid(format!(
                "max_clock_skew {max_clock_skew:?} is more than an hour: with clocks that far apart, synchronize them (NTP, chrony) instead"
            ));
        }
        let owner = match self.owner {
            Some(owner) => owner,
            None => default_owner(),
        };
        if owner.is_empty() || owner.contains('\0') || owner.len() > MAX_OWNER_LEN {
            return invalid(format!(
                "owner must be 1 to {MAX_OWNER_LEN} bytes without NUL characters"
            ));
        }
        if self.prefix.contains('\0') {
            return invalid("prefix must not contain NUL characters".into());
        }
        if self.prefix.len() >= MAX_KEY_LEN {
            return invalid(format!(
                "prefix is {} bytes, leaving no room for lock ids in {MAX_KEY_LEN}-byte keys; shorten the prefix",
                self.prefix.len()
            ));
        }
        Ok(LockerOptions {
            owner,
            prefix: self.prefix,
            lease,
            heartbeat,
            warn_after,
            warnings,
            drift,
            margin,
            store_timeout,
            fencing: if self.fencing.unwrap_or(true) {
                Fencing::Enabled
            } else {
                Fencing::Disabled
            },
            waiter_ttl,
            waiter_ttl_chosen: self.waiter_ttl.is_some(),
            max_clock_skew,
            boot_clock: self.boot_clock,
        })
    }
}

/// lease − 10 s (the original's 50 s for a 60 s lease) when it falls between
/// the heartbeat and the deadline; else halfway between them.
fn default_warn_after(lease: Duration, heartbeat: Duration, usable_lease: Duration) -> Duration {
    let ten_before = lease.saturating_sub(Duration::from_secs(10));
    if ten_before > heartbeat && ten_before < usable_lease {
        ten_before
    } else {
        heartbeat + (usable_lease.saturating_sub(heartbeat)) / 2
    }
}

/// `hostname-pid-random`: unique per process run, readable by operators.
fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let host: String = host.chars().take(128).collect();
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
