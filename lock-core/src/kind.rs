//! What a lock request asks for: a mutex, a semaphore's permit, or a side
//! of a reader-writer lock; and the handles that name one id and kind.

use std::fmt;
use std::time::Duration;

use crate::{LockError, LockGuard, LockMode, Locker};

/// The limit reader-writer locks use: readers share without bound, a
/// writer holds alone.
const RW_LIMIT: u32 = u32::MAX;

/// What kind of lock a request takes on an id.
///
/// Every kind waits in the same first-come, first-served queue: no request
/// overtakes an earlier one still waiting. Exclusive requests hold alone,
/// whatever else uses the id: a mutex is the writer side of a
/// reader-writer lock on the same id, and an exclusive request on a
/// semaphore's id waits for every permit to be returned and keeps new
/// ones out meanwhile. Shared requests (permits, readers) must agree on the
/// number of permits: a semaphore of 2 beside one of 3, or readers beside a
/// semaphore, are refused with [`LockError::LimitMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockKind {
    /// A mutex: one holder at a time, alone. What [`Locker::try_lock`] and
    /// [`Locker::lock`] take; the same as [`LockKind::Write`].
    Exclusive,
    /// One permit of a semaphore of `permits`: at most `permits` holders at
    /// a time.
    Permit {
        /// How many holders the semaphore admits at once (1 to
        /// `u32::MAX - 1`).
        permits: u32,
    },
    /// The shared side of a reader-writer lock: readers hold together.
    Read,
    /// The exclusive side of a reader-writer lock: a writer holds alone,
    /// waits for the readers before it, and blocks the readers after it
    /// (writers are not starved). The same entry as
    /// [`LockKind::Exclusive`].
    Write,
}

impl LockKind {
    /// The entry mode and the key's limit of this kind.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] for a semaphore of 0 or `u32::MAX`
    /// permits.
    pub fn mode_and_limit(self) -> Result<(LockMode, u32), LockError> {
        match self {
            Self::Exclusive | Self::Write => Ok((LockMode::Exclusive, 1)),
            Self::Permit { permits } if permits == 0 || permits == RW_LIMIT => {
                Err(LockError::InvalidConfig(format!(
                    "a semaphore needs 1 to {} permits, not {permits}",
                    RW_LIMIT - 1
                )))
            }
            Self::Permit { permits } => Ok((LockMode::Shared, permits)),
            Self::Read => Ok((LockMode::Shared, RW_LIMIT)),
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exclusive => f.write_str("exclusive lock"),
            Self::Permit { permits } => write!(f, "permit of {permits}"),
            Self::Read => f.write_str("read lock"),
            Self::Write => f.write_str("write lock"),
        }
    }
}

/// How a key's shared limit reads in messages.
pub(crate) fn describe_limit(limit: u32) -> String {
    match limit {
        1 => "a semaphore of 1 permit".to_owned(),
        RW_LIMIT => "the readers of a reader-writer lock".to_owned(),
        permits => format!("a semaphore of {permits} permits"),
    }
}

/// A semaphore of `permits` on one id: at most `permits` guards live at a
/// time, across every locker on the store, granted in arrival order.
///
/// Each permit is a [`LockGuard`] with its own status, warnings, deadline
/// and fencing token. With several holders at once, a token orders grants
/// (every permit's token is larger than every earlier permit's) but does
/// not make a holder exclusive: a resource that must have one writer at a
/// time needs a mutex, or the write side of a [`RwLock`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_core::{LeaseLocker, LockError, LockerOptions, MemoryStore, Semaphore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), LockError> {
/// let locker = LeaseLocker::new(MemoryStore::new(), LockerOptions::default())?;
/// let uploads = Semaphore::new(&locker, "uploads", 2);
/// let first = uploads.try_acquire().await?;
/// let second = uploads.acquire(Duration::from_secs(1)).await?;
/// assert!(matches!(uploads.try_acquire().await, Err(LockError::Taken { .. })));
/// first.unlock().await?;
/// let third = uploads.try_acquire().await?;
/// assert!(third.fencing_token() > second.fencing_token());
/// # Ok(())
/// # }
/// ```
pub struct Semaphore<'a, L: Locker + ?Sized> {
    locker: &'a L,
    id: String,
    permits: u32,
}

impl<'a, L: Locker + ?Sized> Semaphore<'a, L> {
    /// The semaphore `id` of `permits` permits, taken through `locker`.
    pub fn new(locker: &'a L, id: impl Into<String>, permits: u32) -> Self {
        Self {
            locker,
            id: id.into(),
            permits,
        }
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How many permits the semaphore has.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    fn kind(&self) -> LockKind {
        LockKind::Permit {
            permits: self.permits,
        }
    }

    /// Takes a permit if one is free and nobody waits.
    ///
    /// # Errors
    ///
    /// As [`Locker::try_acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`Locker::try_acquire`].
    pub async fn try_acquire(&self) -> Result<LockGuard, LockError> {
        self.locker.try_acquire(&self.id, self.kind()).await
    }

    /// Takes a permit, waiting in line up to `max_wait`.
    ///
    /// # Errors
    ///
    /// As [`Locker::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`Locker::acquire`].
    pub async fn acquire(&self, max_wait: Duration) -> Result<LockGuard, LockError> {
        self.locker.acquire(&self.id, self.kind(), max_wait).await
    }
}

impl<L: Locker + ?Sized> fmt::Debug for Semaphore<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("id", &self.id)
            .field("permits", &self.permits)
            .finish_non_exhaustive()
    }
}

/// A reader-writer lock on one id: readers hold together, a writer alone.
/// Fair: a waiting writer blocks the readers that come after it, so a
/// stream of readers never starves a writer, and every request is granted
/// in arrival order.
///
/// Each side is a [`LockGuard`]. Readers' fencing tokens order their grants
/// but do not exclude each other; a resource written under the lock should
/// check the tokens of writers (the write side is exclusive).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lock_core::{LeaseLocker, LockError, LockerOptions, MemoryStore, RwLock};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), LockError> {
/// let locker = LeaseLocker::new(MemoryStore::new(), LockerOptions::default())?;
/// let config = RwLock::new(&locker, "config");
/// let a = config.try_read().await?;
/// let b = config.try_read().await?;
/// assert!(matches!(config.try_write().await, Err(LockError::Taken { .. })));
/// a.unlock().await?;
/// b.unlock().await?;
/// let writer = config.write(Duration::from_secs(1)).await?;
/// assert!(matches!(config.try_read().await, Err(LockError::Taken { .. })));
/// writer.unlock().await?;
/// # Ok(())
/// # }
/// ```
pub struct RwLock<'a, L: Locker + ?Sized> {
    locker: &'a L,
    id: String,
}

impl<'a, L: Locker + ?Sized> RwLock<'a, L> {
    /// The reader-writer lock `id`, taken through `locker`.
    pub fn new(locker: &'a L, id: impl Into<String>) -> Self {
        Self {
            locker,
            id: id.into(),
        }
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Takes the read side if no writer holds or waits.
    ///
    /// # Errors
    ///
    /// As [`Locker::try_acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`Locker::try_acquire`].
    pub async fn try_read(&self) -> Result<LockGuard, LockError> {
        self.locker.try_acquire(&self.id, LockKind::Read).await
    }

    /// Takes the read side, waiting in line up to `max_wait`.
    ///
    /// # Errors
    ///
    /// As [`Locker::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`Locker::acquire`].
    pub async fn read(&self, max_wait: Duration) -> Result<LockGuard, LockError> {
        self.locker
            .acquire(&self.id, LockKind::Read, max_wait)
            .await
    }

    /// Takes the write side if nobody holds or waits.
    ///
    /// # Errors
    ///
    /// As [`Locker::try_acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`Locker::try_acquire`].
    pub async fn try_write(&self) -> Result<LockGuard, LockError> {
        self.locker.try_acquire(&self.id, LockKind::Write).await
    }

    /// Takes the write side, waiting in line up to `max_wait`.
    ///
    /// # Errors
    ///
    /// As [`Locker::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`Locker::acquire`].
    pub async fn write(&self, max_wait: Duration) -> Result<LockGuard, LockError> {
        self.locker
            .acquire(&self.id, LockKind::Write, max_wait)
            .await
    }
}

impl<L: Locker + ?Sized> fmt::Debug for RwLock<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
