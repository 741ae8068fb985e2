//! SQLite store for dlock: locks shared by the processes of one host
//! through one database file. The embedded default of the `dlock` program.
//!
//! # What is stored
//!
//! - **`<table>`** (default `dlock_leases`), one row per key: the sequence
//!   counter, the last sequence number (and fencing token) handed out,
//!   kept when the key's entries go.
//! - **`<table>_entries`**, one row per entry, keyed by (key, sequence
//!   number): lease id, owner, mode (shared or not), the limit it agreed
//!   on, expiry in milliseconds by the database's clock, whether a
//!   statement saw it hold, and the owner of the holding entry that expired
//!   and was deleted when it was granted (the grant's previous owner).
//! - **`<table>_counter`**, a trigger: every entry added moves its key's
//!   counter to its sequence number and deletes the key's expired entries,
//!   inside the adding statement.
//!
//! Who holds is decided by position, in every statement, as
//! [`LeaseStore`](lock_core::LeaseStore) describes: live entries in
//! sequence order; an exclusive entry holds when first, a shared one when
//! no entry before it is exclusive and fewer than the limit are before it.
//! A release is a plain delete: the entries behind hold from that
//! statement on.
//!
//! # The statements
//!
//! Each in its own file under `src/sql/`, and each a single statement, so
//! the database's write lock is held only while SQLite runs it (never
//! across an `await`):
//!
//! - **acquire**: `add.sql`, one `INSERT ... SELECT ... RETURNING` that
//!   decides on the latest state whether the entry holds, waits, or is not
//!   added (the same lease id already has an entry, another limit is in
//!   use, or it would wait and the request does not queue). When it added
//!   nothing, `state.sql` reads the queue to say why (`Held`,
//!   `LimitMismatch`, or the entry of a request sent again, extended by
//!   `extend.sql`); when it queued, the same read gives the holder and how
//!   soon an entry ahead may expire. The uncontended grant is one
//!   statement.
//! - **renew**: `renew.sql`, every entry of a batch in one `UPDATE ...
//!   FROM` over a JSON array, held and waiting alike: a waiting entry that
//!   holds by now is extended to the holders' ttl and reported granted with
//!   its token.
//! - **release**: `release.sql`, a delete by key, lease id and liveness;
//!   with fencing off, `drop_key.sql` then deletes a key left without any
//!   entry, counter included.
//! - **inspect**: `inspect.sql`.
//!
//! The file runs in WAL mode with a busy timeout, so readers never block
//! and writers wait briefly for each other; several processes share it.
//! Expiry follows the database's own clock (`unixepoch('subsec')`, in
//! milliseconds), which every process of the host shares: a step of the
//! host's wall clock forward ends leases early (the next process takes the
//! lock; the holder learns at its next renewal, and fencing tokens keep the
//! two apart), a step back lengthens them.
//!
//! # Waiting
//!
//! There are no notifications across processes
//! ([`Capabilities::native_wait`](lock_core::Capabilities::native_wait) is
//! false): a waiter learns that it holds by renewing its entry, which the
//! locker does with backoff (and in its holders' renewal batches). A
//! release by this process reads the queue it left and wakes this
//! process's waits of the entries that hold now, which renew at once; the
//! entries still waiting sleep on.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{LeaseLocker, Locker, LockerOptions};
//! use lock_sqlite::SqliteStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::open("/var/lib/myapp/locks.db").await?;
//! let locker = LeaseLocker::new(store, LockerOptions::default())?;
//! let guard = locker.lock("nightly-report", Duration::from_secs(30)).await?;
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! Grants are serialized by SQLite's write lock; entries hold in sequence
//! order; fencing tokens are the key's counter, kept across releases and
//! durable with the file, and shared holders each carry their own. The
//! database must be on a local file system: SQLite's locking is unreliable
//! on network file systems.
//!
//! **A dead waiter** (its process gone) costs the queue at most its waiter
//! ttl: its entry expires then, promoted or not (holding by position does
//! not extend it), and the entries behind it hold from that moment; they
//! learn it at their next renewal. Its row is deleted by the next entry
//! added to the key. A dead holder costs its ttl.
//!
//! # The previous layout
//!
//! Versions before the queue kept one row per key holding its lease
//! (`owner`, `lease_id`, `expires_ms`, `token`, `previous_owner`). Opening
//! such a file converts it in place, in one write transaction: live leases
//! become holding entries with their tokens, the counters stay, the lease
//! columns go, so processes of the previous version still using the file
//! fail their statements from then on instead of granting beside this one.
#![forbid(unsafe_code)]

mod builder;
mod error;
mod queue;
mod store;

pub use builder::{DEFAULT_TABLE, SqliteStoreBuilder};
pub use store::SqliteStore;
