//! Leased, fenced distributed locks: the core of dlock.
//!
//! This crate holds what every backend shares:
//!
//! - [`LeaseStore`], the small trait a backend implements: one atomic
//!   conditional operation per method, no sleeping, no retrying;
//! - [`Locker`] and [`Lock`], the users' traits, and [`LockGuard`], a held
//!   lock;
//! - [`LeaseLocker`], the generic locker implementing [`Locker`] for every
//!   store: one background task per locker renews all held leases in
//!   batches, fires warnings and expiries from one timer queue, and releases
//!   dropped guards;
//! - [`LockerOptions`], [`FencingToken`], [`LockError`] and [`StoreError`];
//! - [`MemoryStore`], the reference store.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use lock_core::{LeaseLocker, Locker, LockerOptions, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lock_core::LockError> {
//! let options = LockerOptions::builder()
//!     .owner("report-worker")
//!     .lease(Duration::from_secs(30))
//!     .build()?;
//! let locker = LeaseLocker::new(MemoryStore::new(), options)?;
//!
//! let guard = locker.lock("nightly-report", Duration::from_secs(5)).await?;
//! let token = guard.fencing_token().expect("fencing is on by default");
//! println!("writing the report with fencing token {token}");
//! guard.unlock().await?;
//! locker.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What a lock guarantees, and what it does not
//!
//! Expiry is decided by the store's clock alone; no two machines' clocks are
//! ever compared. The holder keeps a conservative local deadline on its own
//! monotonic clock, counted from the moment the acquire or renew request was
//! **sent**:
//!
//! ```text
//! deadline = t_send + ttl_applied * (1 - drift) - margin
//! ```
//!
//! so, as long as the clocks' rates differ by less than `drift`, the holder
//! gives up before the store lets anyone else in. A second deadline on the
//! boot clock (which keeps counting through system suspend) covers laptops
//! and VMs that sleep.
//!
//! That still does not make a lease lock safe on its own: a holder paused
//! longer than its lease (GC, swapping, `SIGSTOP`, an executor blocked by a
//! long synchronous call, a suspended VM) can act after someone else took
//! over, because it cannot notice its own pause. Only a resource that checks
//! [fencing tokens](FencingToken) is safe against that: pass the token with
//! every write and have the resource refuse tokens smaller than the largest
//! it has accepted (see [`FencingToken`] for the recipe). Run lockers on a
//! multi-threaded runtime so that the renewal task is not starved by other
//! work.
//!
//! # Differences from the library dlock descends from
//!
//! - No synchronized clocks and no "max clock skew": takeover waits only for
//!   the store's own expiry. The one exception is a store that cannot read
//!   its clock inside a conditional write (DynamoDB,
//!   [`ExpiryClock::Client`]): it keeps the original's rule, with
//!   [`LockerOptions::max_clock_skew`] (default 10 s).
//! - Waiting is fair: [`Locker::lock`] lines up in a first-come,
//!   first-served queue kept by the store, which hands the lock to the next
//!   in line in the release's own step.
//! - Fencing is on by default (off only on request), tokens are arbitrary
//!   precision and strictly increase across release, expiry and takeover.
//! - Unlock reports store errors (the lock counts as released either way)
//!   and is cancel-safe; dropping a guard releases it in the background.
//! - Warnings re-arm after renewals recover, and a status watch and
//!   `expiring()` / `lost()` futures sit beside the warning receiver.
//! - Waiting for a lock ([`Locker::lock`]) is built in, woken by the store's
//!   change notifications.
//!
//! # Decisions beyond the design contract
//!
//! - A [`LockGuard`] keeps its locker's background task alive: dropping the
//!   last [`LeaseLocker`] handle while guards live does not release their
//!   locks behind the user's back (`open(url)?.try_lock(id)` would
//!   otherwise lose its lock at once). The task ends, releasing whatever is
//!   left, once handles and guards are all gone; [`Locker::close`] still
//!   releases everything at once.
//! - [`LeaseStore::release`] and [`AcquireRequest`] carry [`Fencing`], so a
//!   store knows whether a released key's counter must survive.
//! - [`LockStatus::Expiring`] is reached at `warn_after` even when warning
//!   receivers are disabled, so `expiring()` always means something.
//! - `lock(id, Duration::ZERO)` is exactly `try_lock(id)` (it answers
//!   [`LockError::Taken`], not a timeout).
//! - An `unlock` that finds the lease already gone (expired or taken over)
//!   returns `Ok(())` and logs a warning: the lock is not held either way.
//! - Background releases run at most 64 at a time, so closing a locker
//!   with thousands of locks queues them instead of timing them out in a
//!   connection pool.
//!
//! # Observability
//!
//! `tracing` events for acquisition, takeover, renewal failure, warning,
//! loss and release (targets under `lock_core`). With the `metrics` feature,
//! counters and store-latency histograms go to the `metrics` facade:
//! `dlock_acquire_total{outcome}`, `dlock_takeover_total`,
//! `dlock_renew_calls_total{outcome}`, `dlock_lost_total{reason}`,
//! `dlock_warnings_total`, `dlock_release_total{outcome}` and
//! `dlock_store_seconds{op}`.
#![forbid(unsafe_code)]

mod calls;
mod capabilities;
mod clock;
mod core;
mod error;
mod guard;
mod kind;
mod lease;
mod locker;
mod memory;
mod observe;
mod options;
mod queue;
mod registry;
mod scheduler;
mod state;
mod store;
mod token;
pub mod url;
mod waiter;
mod wakers;

/// The attribute that implements [`LeaseStore`] (and the other async
/// traits): a store needs no dependency beyond this crate.
pub use async_trait::async_trait;
pub use capabilities::{Capabilities, ExpiryClock};
pub use error::{LockError, StoreError, StoreErrorKind};
pub use guard::{Lock, LockGuard, Warnings};
pub use kind::{LockKind, RwLock, Semaphore};
pub use lease::{
    AcquireOutcome, AcquireRequest, DEFAULT_MAX_CLOCK_SKEW, Fencing, Grant, Holder, LeaseId,
    LeaseInfo, LockMode, ParseLeaseIdError, Queued, ReleaseOutcome, RenewEntry, RenewOutcome,
    WaitOutcome,
};
pub use locker::{LeaseLocker, Locker};
pub use memory::MemoryStore;
pub use options::{LockerOptions, LockerOptionsBuilder, MAX_KEY_LEN, MAX_OWNER_LEN};
pub use state::LockStatus;
pub use store::LeaseStore;
pub use token::{FencingToken, ParseTokenError};
pub use wakers::LocalWakers;
