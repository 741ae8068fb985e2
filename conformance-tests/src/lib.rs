//! The shared conformance suite of dlock stores, and the test
//! infrastructure every store's tests use.
//!
//! - [`cases`]: public async case functions, each checking one contract of
//!   `LeaseStore`, `Locker` or `LockGuard` against stores made by a
//!   [`StoreFactory`];
//! - [`conformance_suite!`]: one `#[tokio::test]` per case for a factory,
//!   skipping what the store's capabilities rule out; [`run_all`] for a
//!   single test;
//! - [`history`]: the history checker, and [`register`]: the fenced register
//!   the contention race writes through;
//! - `harness` (feature `harness`): throwaway redis-server, Redis Cluster,
//!   etcd (single and cluster) and PostgreSQL instances on free loopback
//!   ports;
//! - [`faulty::FaultyStore`]: a store wrapper that fails calls, loses
//!   notifications and counts round trips, switchable at run time;
//! - `fault_proxy` (feature `harness`): a TCP proxy that black-holes,
//!   resets, delays or cuts one direction at run time.
//!
//! A third-party store depends on `lock-core` and this crate without
//! features: the cases need nothing else (`lock_core::async_trait`
//! implements the trait). The `harness` feature adds the servers and the
//! proxy this workspace's own backend tests use.
//!
//! # Running the suite against a store
//!
//! ```no_run
//! // tests/conformance.rs of a store crate:
//! // Every test gets a factory; each `connect()` gives a new client of
//! // the same backend (here: clones of one in-memory store).
//! conformance_tests::conformance_suite!(
//!     memory_store,
//!     conformance_tests::shared(lock_core::MemoryStore::new())
//! );
//! ```
#![forbid(unsafe_code)]

pub mod cases;
#[cfg(feature = "harness")]
pub mod fault_proxy;
pub mod faulty;
#[cfg(feature = "harness")]
pub mod harness;
pub mod history;
pub mod register;
mod suite;
mod support;

pub use suite::{__CaseFn, Requirement, Summary, run_all, skip_reason};
pub use support::{
    BoxFuture, StoreFactory, acquire, eventually, expiry_slack, grant, grant_after_expiry, granted,
    held, holder_of, locker, locker_options, queued, round_up, shared, short_ttl, unique_key,
};
