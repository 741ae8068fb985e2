//! Errors: [`LockError`] for users, [`StoreError`] for backends.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What kind of failure a [`StoreError`] is; decides [`StoreError::is_retryable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached, or the connection broke. Retryable.
    /// The operation may or may not have taken effect.
    Unavailable,
    /// The operation did not finish in time. Retryable. The operation may or
    /// may not have taken effect.
    Timeout,
    /// The store refused for a passing reason: overload, a serialization
    /// failure, a busy database file. Retryable; the operation did not apply.
    Busy,
    /// A stored value could not be understood, for example because another
    /// program wrote to a lock key. Not retryable.
    Corrupt,
    /// The store refused the credentials or the permissions. Not retryable.
    Auth,
    /// The request or the store's set-up is wrong (a missing table, a key the
    /// store cannot hold). Not retryable.
    Invalid,
    /// Anything else. Not retryable.
    Other,
}

impl StoreErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "store unavailable",
            Self::Timeout => "store timed out",
            Self::Busy => "store busy",
            Self::Corrupt => "corrupt lock data",
            Self::Auth => "store refused credentials",
            Self::Invalid => "invalid store request",
            Self::Other => "store error",
        }
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure reported by a [`LeaseStore`](crate::LeaseStore).
///
/// Each backend maps its driver's errors to a [`StoreErrorKind`] in one
/// place. The message must never contain secrets such as passwords.
#[derive(Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    key: Option<String>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// A new error of `kind` with a human-readable `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            key: None,
            source: None,
        }
    }

    /// The store could not be reached (see [`StoreErrorKind::Unavailable`]).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }

    /// The operation did not finish in time (see [`StoreErrorKind::Timeout`]).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Timeout, message)
    }

    /// The value stored under `key` could not be understood.
    pub fn corrupt(key: &str, message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Corrupt, message).with_key(key)
    }

    /// Names the lock key the error is about.
    #[must_use]
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    /// Attaches the underlying driver error.
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The message, without kind or key.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The lock key the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout | StoreErrorKind::Busy
        )
    }

    /// Whether the failed operation may nevertheless have taken effect in the
    /// store (its reply was lost). An acquire that fails this way must be
    /// treated as "maybe held".
    pub fn is_ambiguous(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout | StoreErrorKind::Other
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(key) = &self.key {
            write!(f, " (key {key:?})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StoreError");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(key) = &self.key {
            d.field("key", key);
        }
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

/// Everything that can go wrong for a user of [`Locker`](crate::Locker) and
/// [`LockGuard`](crate::LockGuard).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is held by someone else, or by this same locker (locks are
    /// not reentrant).
    #[error("lock {id:?} is taken{}", describe_holder(.holder.as_deref(), *.retry_after))]
    Taken {
        /// The lock id asked for (without the locker's prefix).
        id: String,
        /// The owner name of the current holder, when the store reports it.
        holder: Option<String>,
        /// How long the current lease still runs by the store's clock, when
        /// the store reports it: a retry before then will fail unless the
        /// holder releases.
        retry_after: Option<Duration>,
    },
    /// [`Locker::lock`](crate::Locker::lock) waited `waited` without getting
    /// the lock.
    #[error("timed out after {waited:?} waiting for lock {id:?}{}", describe_holder(.holder.as_deref(), None))]
    Timeout {
        /// The lock id asked for.
        id: String,
        /// How long the call waited.
        waited: Duration,
        /// The holder seen at the last attempt, when known.
        holder: Option<String>,
    },
    /// The locker was closed; no new locks can be taken through it.
    #[error("the locker is closed")]
    Closed,
    /// The lock id's shared holders and waiters use another number of
    /// permits (semaphores of different sizes, or readers beside a
    /// semaphore, on one id).
    #[error(
        "lock {id:?} is in use as {}, not as {}: every shared holder and waiter of one id must ask for the same number of permits",
        crate::kind::describe_limit(*.existing),
        crate::kind::describe_limit(*.requested)
    )]
    LimitMismatch {
        /// The lock id asked for.
        id: String,
        /// The limit this request asked for.
        requested: u32,
        /// The limit the id's current holders and waiters use.
        existing: u32,
    },
    /// The lock id is not acceptable.
    #[error("invalid lock id: {reason}")]
    InvalidId {
        /// Why, naming the rule that was broken.
        reason: String,
    },
    /// The options are inconsistent or unusable with this store.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn describe_holder(holder: Option<&str>, retry_after: Option<Duration>) -> String {
    match (holder, retry_after) {
        (Some(holder), Some(left)) => format!(" by {holder:?} for another {left:?}"),
        (Some(holder), None) => format!(" by {holder:?}"),
        (None, Some(left)) => format!(" for another {left:?}"),
        (None, None) => String::new(),
    }
}

impl LockError {
    /// Whether the same call may succeed later: the lock was taken, the wait
    /// timed out, or the store failed in a retryable way.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Taken { .. } | Self::Timeout { .. } => true,
            Self::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}
