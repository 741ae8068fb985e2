//! The in-memory reference store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Grant, Holder, LeaseId,
    LeaseInfo, LeaseStore, LockMode, Queued, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
    WaitOutcome,
};

/// A complete [`LeaseStore`] in process memory: the reference every other
/// store is measured against, and a fast store for tests and single-process
/// programs. Clones share the same data.
///
/// Each key is a queue of entries ordered by a per-key sequence number,
/// which is also the fencing token (the counter is kept across release,
/// expiry and takeover while fencing is enabled). Who holds is decided by
/// position (see [`LeaseStore`]); a release or an expiry that promotes
/// waiting entries wakes them at once. Time is tokio's clock, so tests with
/// paused time drive its expiry.
///
/// # Examples
///
/// ```
/// use lock_core::{LeaseLocker, Locker, LockerOptions, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_core::LockError> {
/// let locker = LeaseLocker::new(MemoryStore::new(), LockerOptions::default())?;
/// let first = locker.try_lock("job").await?;
/// let first_token = first.fencing_token().cloned();
/// first.unlock().await?;
/// let second = locker.try_lock("job").await?;
/// assert!(second.fencing_token().cloned() > first_token);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: Mutex<HashMap<String, Slot>>,
    capabilities: Capabilities,
}

#[derive(Debug, Default)]
struct Slot {
    /// Entries by sequence number; expired ones are purged at every
    /// operation.
    entries: BTreeMap<u64, Entry>,
    /// The last sequence number handed out.
    counter: u64,
    /// The limit the live shared entries agreed on.
    limit: u32,
    /// The owner of the last holding entry that expired, until the key is
    /// granted again or released.
    expired_holder: Option<String>,
    /// Woken whenever entries start holding.
    changed: Arc<Notify>,
}

#[derive(Debug)]
struct Entry {
    owner: String,
    lease_id: LeaseId,
    mode: LockMode,
    expires_at: Instant,
    /// Whether the entry holds (holding never ends while the entry lives).
    holding: bool,
}

impl Slot {
    /// Drops expired entries and marks the entries that hold now; wakes
    /// waiters when some started holding.
    fn settle(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expires_at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(entry) = self.entries.remove(&seq)
                && entry.holding
            {
                self.expired_holder = Some(entry.owner);
            }
        }
        if self.promote() {
            self.changed.notify_waiters();
        }
    }

    /// Marks every entry that holds by position; whether any started to.
    fn promote(&mut self) -> bool {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let mut exclusive = false;
        let mut promoted = false;
        for (ahead, entry) in self.entries.values_mut().enumerate() {
            let holds = match entry.mode {
                LockMode::Exclusive => ahead == 0,
                LockMode::Shared => !exclusive && ahead < limit,
            };
            if !holds {
                break;
            }
            exclusive |= entry.mode == LockMode::Exclusive;
            promoted |= !entry.holding;
            entry.holding = true;
        }
        promoted
    }

    /// Whether a new entry of `mode` at the end of the queue would hold.
    fn would_hold(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Exclusive => self.entries.is_empty(),
            LockMode::Shared => {
                self.entries
                    .values()
                    .all(|entry| entry.mode == LockMode::Shared && entry.holding)
                    && self.entries.len() < usize::try_from(self.limit).unwrap_or(usize::MAX)
            }
        }
    }

    fn has_shared(&self) -> bool {
        self.entries
            .values()
            .any(|entry| entry.mode == LockMode::Shared)
    }

    fn find(&self, lease_id: LeaseId) -> Option<(u64, &Entry)> {
        self.entries
            .iter()
            .find(|(_, entry)| entry.lease_id == lease_id)
            .map(|(seq, entry)| (*seq, entry))
    }

    fn holders(&self, now: Instant) -> Vec<Holder> {
        self.entries
            .values()
            .filter(|entry| entry.holding)
            .map(|entry| {
                Holder::new(entry.owner.clone())
                    .with_remaining(entry.expires_at - now)
                    .with_mode(entry.mode)
            })
            .collect()
    }

    /// How soon an entry before `seq` may expire.
    fn retry_after(&self, seq: u64, now: Instant) -> Option<Duration> {
        self.entries
            .range(..seq)
            .map(|(_, entry)| entry.expires_at - now)
            .min()
    }
}

impl MemoryStore {
    /// An empty store with the default capabilities (native waits, batches
    /// of 1000, 1 ms minimum ttl).
    pub fn new() -> Self {
        Self::with_capabilities(Capabilities::new().with_native_wait(true))
    }

    /// An empty store reporting `capabilities` (for tests of the locker's
    /// batching and validation).
    pub fn with_capabilities(capabilities: Capabilities) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys: Mutex::new(HashMap::new()),
                capabilities,
            }),
        }
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Every update under this lock is complete before it can panic.
        self.inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of keys the store keeps (live, released with fencing
    /// state, or expired).
    pub fn len(&self) -> usize {
        self.keys().len()
    }

    /// Whether the store keeps no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn token(seq: u64, fencing: Fencing) -> Option<FencingToken> {
    fencing.is_enabled().then(|| FencingToken::from(seq))
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys();
        let slot = keys.entry(request.key.to_owned()).or_default();
        slot.settle(now);
        if let Some((seq, entry)) = slot.find(request.lease_id) {
            // Sent again after a lost reply: answer the entry as it stands.
            return Ok(if entry.holding {
                let grant = Grant::new(request.ttl);
                if let Some(entry) = slot.entries.get_mut(&seq) {
                    entry.expires_at = now + request.ttl;
                }
                AcquireOutcome::Acquired(match token(seq, request.fencing) {
                    Some(token) => grant.with_token(token),
                    None => grant,
                })
            } else {
                AcquireOutcome::Queued(Queued::new(request.queue.unwrap_or_default()))
            });
        }
        // Shared entries agree on the limit; exclusive ones hold alone
        // whatever it is.
        if request.mode == LockMode::Shared {
            if !slot.has_shared() {
                slot.limit = request.limit;
            } else if slot.limit != request.limit {
                return Ok(AcquireOutcome::LimitMismatch { limit: slot.limit });
            }
        }
        let holds = slot.would_hold(request.mode);
        let first_holder = || slot.holders(now).into_iter().next();
        let (expires_at, queued) = match (holds, request.queue) {
            (true, _) => (now + request.ttl, None),
            (false, Some(waiter_ttl)) => (now + waiter_ttl, Some(waiter_ttl)),
            (false, None) => {
                let holder = first_holder()
                    .ok_or_else(|| StoreError::corrupt(request.key, "a queue without holder"))?;
                return Ok(AcquireOutcome::Held(holder));
            }
        };
        let holder = first_holder();
        slot.counter += 1;
        let seq = slot.counter;
        slot.entries.insert(
            seq,
            Entry {
                owner: request.owner.to_owned(),
                lease_id: request.lease_id,
                mode: request.mode,
                expires_at,
                holding: holds,
            },
        );
        if let Some(waiter_ttl) = queued {
            let mut queued = Queued::new(waiter_ttl);
            if let Some(token) = token(seq, request.fencing) {
                queued = queued.with_token(token);
            }
            if let Some(holder) = holder {
                queued = queued.with_holder(holder);
            }
            if let Some(retry_after) = slot.retry_after(seq, now) {
                queued = queued.with_retry_after(retry_after);
            }
            return Ok(AcquireOutcome::Queued(queued));
        }
        let mut grant = Grant::new(request.ttl);
        if let Some(token) = token(seq, request.fencing) {
            grant = grant.with_token(token);
        }
        if let Some(previous) = slot.expired_holder.take() {
            grant = grant.with_previous_owner(previous);
        }
        Ok(AcquireOutcome::Acquired(grant))
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys();
        Ok(leases
            .iter()
            .map(|renewal| {
                let Some(slot) = keys.get_mut(renewal.key) else {
                    return RenewOutcome::Lost;
                };
                slot.settle(now);
                let Some((seq, entry)) = slot.find(renewal.lease_id) else {
                    return RenewOutcome::Lost;
                };
                let holding = entry.holding;
                let retry_after = slot.retry_after(seq, now);
                let Some(entry) = slot.entries.get_mut(&seq) else {
                    return RenewOutcome::Lost;
                };
                match (holding, renewal.wait_ttl) {
                    (true, None) => {
                        entry.expires_at = now + ttl;
                        RenewOutcome::Renewed { ttl }
                    }
                    (true, Some(_)) => {
                        entry.expires_at = now + ttl;
                        RenewOutcome::Granted(Grant::new(ttl).with_token(FencingToken::from(seq)))
                    }
                    (false, Some(waiter_ttl)) => {
                        entry.expires_at = now + waiter_ttl;
                        RenewOutcome::Waiting {
                            ttl: waiter_ttl,
                            retry_after,
                        }
                    }
                    // Renewed as held, but it waits: its holder is
                    // mistaken; drop the entry rather than let it block.
                    (false, None) => {
                        slot.entries.remove(&seq);
                        slot.settle(now);
                        RenewOutcome::Lost
                    }
                }
            })
            .collect())
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys();
        let Some(slot) = keys.get_mut(key) else {
            return Ok(ReleaseOutcome::NotHeld);
        };
        slot.settle(now);
        let Some((seq, entry)) = slot.find(lease_id) else {
            return Ok(ReleaseOutcome::NotHeld);
        };
        if entry.holding {
            slot.expired_holder = None;
        }
        slot.entries.remove(&seq);
        slot.settle(now);
        if !fencing.is_enabled() && slot.entries.is_empty() {
            keys.remove(key);
        }
        Ok(ReleaseOutcome::Released)
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let now = Instant::now();
        let mut keys = self.keys();
        Ok(keys.get_mut(key).map(|slot| {
            slot.settle(now);
            let holders = slot.holders(now);
            let waiting = slot.entries.len() - holders.len();
            let token = (slot.counter > 0).then(|| FencingToken::from(slot.counter));
            let info = LeaseInfo::new(holders, token).with_waiting(waiting);
            if slot.has_shared() {
                info.with_limit(slot.limit)
            } else {
                info
            }
        }))
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.clone()
    }

    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        let deadline = Instant::now() + max;
        loop {
            // Where the entry stands, and what to wait on.
            let check = || {
                let now = Instant::now();
                let mut keys = self.keys();
                let Some(slot) = keys.get_mut(key) else {
                    return Err(WaitOutcome::Changed);
                };
                slot.settle(now);
                match slot.find(lease_id) {
                    None => Err(WaitOutcome::Changed),
                    Some((seq, entry)) if entry.holding => Err(WaitOutcome::Granted {
                        token: Some(FencingToken::from(seq)),
                    }),
                    Some((seq, _)) => Ok((slot.changed.clone(), slot.retry_after(seq, now))),
                }
            };
            let (changed, retry_after) = match check() {
                Ok(waiting) => waiting,
                Err(outcome) => return outcome,
            };
            let notified = changed.notified();
            tokio::pin!(notified);
            // Registered before the second look, so no promotion is missed.
            notified.as_mut().enable();
            if let Err(outcome) = check() {
                return outcome;
            }
            // An entry ahead expiring promotes without a notification.
            let wake_at =
                retry_after.map_or(deadline, |after| (Instant::now() + after).min(deadline));
            if tokio::time::timeout_at(wake_at, notified).await.is_err() && wake_at >= deadline {
                return match check() {
                    Err(outcome) => outcome,
                    Ok(_) => WaitOutcome::TimedOut,
                };
            }
        }
    }
}
