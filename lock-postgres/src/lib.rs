//! PostgreSQL store for dlock: each key is a queue of entries in two
//! tables, every operation one statement.
//!
//! # What is stored
//!
//! - **`<table>`** (default `dlock_leases`), one row per key: the sequence
//!   counter (the last fencing token), the limit its live entries agreed
//!   on, how many entries it has (live or expired, until deleted) and how
//!   many of them are exclusive, and a version bumped by every release.
//! - **`<table>_entries`**, one row per entry, keyed by (key, sequence
//!   number): lease id, owner, mode (shared or not), expiry by the
//!   server's clock, and whether a statement saw it hold. The sequence
//!   number is taken from the key's counter when the entry arrives, and is
//!   its fencing token.
//!
//! Who holds is decided by position, in every statement, as
//! [`LeaseStore`](lock_core::LeaseStore) describes: live entries in sequence order, an exclusive
//! entry holds when first, a shared one when no entry before it is
//! exclusive and fewer than the limit are before it. Holding is never
//! written anywhere a decision reads it, so a release hands the key over
//! with no write to the entries it promotes.
//!
//! # The statements
//!
//! Each in its own file under `src/sql/`, run under READ COMMITTED:
//!
//! - **acquire**: `grant_free.sql` when the key has no entry at all (the
//!   uncontended case: one small statement that bumps the counter and adds
//!   a holding entry), else `acquire.sql`, which reads the queue, answers
//!   `Held` or `LimitMismatch` from its snapshot without a lock or a
//!   write, or locks the key row, deletes the entries it saw expired and
//!   adds the entry, holding or waiting as the key row's counts on its
//!   latest version decide. A request sent again with the same lease id
//!   finds its entry and adds none.
//! - **renew**: `renew.sql`, every entry of a batch in one `UPDATE ... FROM
//!   unnest(...)`, held and waiting alike: a waiting entry that holds by
//!   now is extended to the holders' ttl and reported granted with its
//!   token.
//! - **release**: `release_alone.sql` when the entry is the key's only one
//!   (no notification), else `release.sql`, which removes the entry and, in
//!   the same statement, sends one `NOTIFY` per entry that holds from then
//!   on. `NOTIFY` serializes commits across the database, so only a release
//!   that promotes someone sends it; the uncontended path never does. A
//!   release whose snapshot was overtaken by another writer of the key runs
//!   again behind the key row's lock (`lock_key.sql`, one transaction).
//! - **inspect**: `inspect.sql`; `position.sql` for a waiter that has just
//!   subscribed (see below).
//!
//! A store that found a key contended (an acquisition queued or was
//! refused, a release was not alone) goes straight to the full statements
//! for that key during the next second: the small ones would only find
//! other entries there, a round trip lost.
//!
//! Every statement that changes a key's queue takes the key row's lock
//! first and checks its decision against the row's latest version (the
//! counter, the counts and the version tell it what committed since its
//! snapshot); the entries it saw expired are deleted only if they still are
//! on their latest version, so a renewal that raced the statement is never
//! overridden. The pools the store makes pin READ COMMITTED and turn bitmap
//! scans off (plain index scans mark the index entries of released entries
//! dead as they pass them); a pool passed to
//! [`PostgresStoreBuilder::build_with_pool`] must not default to REPEATABLE
//! READ or SERIALIZABLE, and should turn bitmap scans off too.
//!
//! # Waiting
//!
//! [`wait_for_grant`](lock_core::LeaseStore::wait_for_grant) listens on the store's
//! channel (`dlock:<table>`) through one LISTEN connection per store,
//! outside the pool. A notification names the key, the promoted lease id
//! and its token; the listener hands it to the wait of that lease id and
//! keeps it for the entries this store queued, so a grant heard while no
//! call waits is not lost. Each reconnection wakes every wait with
//! `Changed` (notifications sent meanwhile are lost), and a wait whose
//! entry was queued before the current LISTEN was in place looks at its
//! position once after subscribing. Waiting entries are renewed in the
//! holders' batches; a promotion by an entry ahead expiring sends nothing,
//! and the waiter learns it from the `retry_after` it was given or at its
//! next renewal.
//!
//! # Time
//!
//! Expiry is decided by the server's `clock_timestamp()` (not `now()`,
//! which is the transaction's start), so it follows the server's wall
//! clock: a step forward ends leases early (another client can take a lock
//! while its holder's local deadline is still ahead; the holder learns at
//! its next renewal, and fencing tokens keep the two apart), a step back
//! makes a dead holder's lock stay taken longer by the step. Run the server
//! with a slewing clock (NTP/chrony slew mode) where that matters; the tests
//! in `tests/faults.rs` step a server's clock both ways.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{LeaseLocker, Locker, LockerOptions};
//! use lock_postgres::PostgresStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::builder()
//!     .table("job_locks")
//!     .connect("postgres://app@db.internal/app")
//!     .await?;
//! let locker = LeaseLocker::new(store, LockerOptions::default())?;
//! let guard = locker.lock("nightly-report", Duration::from_secs(30)).await?;
//! let token = guard.fencing_token().expect("fencing is on by default");
//! // Fence writes with the token, in the same database or another:
//! //   UPDATE report SET body = $1, fence = $2 WHERE id = 1 AND fence <= $2
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! On a single primary, grants are linearizable, entries hold in sequence
//! order, and fencing tokens strictly increase per key, across release,
//! expiry, takeover and server restarts (the counter is a committed
//! column). Shared holders each carry their own token. A failover to an
//! **asynchronous** standby can lose committed grants and increments, so a
//! token can be issued twice: run with synchronous replication
//! (`synchronous_commit = on` with `synchronous_standby_names`) where
//! fencing must survive failover. Tokens are `bigint`s.
//!
//! Keys with fencing and without should not be mixed on one table: a
//! release without fencing deletes a key left without entries, and with it
//! the counter.
//!
//! **A dead waiter** (its process gone) costs the queue at most its waiter
//! ttl: its entry expires then, promoted or not (a promotion does not
//! extend it), and the entries behind it hold from that moment; they learn
//! it from `retry_after` or their next renewal. Its row stays until the
//! next acquisition of the key that adds an entry deletes it; until then
//! the key takes the contended statements. A dead holder costs its ttl.
//!
//! # The previous layout
//!
//! Versions before the queue kept one row per key holding its lease
//! (`owner`, `lease_id`, `expires_at`, `token`, `previous_owner`,
//! `wanted_until`). [`PostgresStore::migrate`] (run on connect by default)
//! converts such a table in place, in one transaction: live leases become
//! holding entries with their tokens, the counters stay, the lease columns
//! go, so processes of the previous version still running fail instead of
//! granting beside this one. With
//! [`migrate_on_connect(false)`](PostgresStoreBuilder::migrate_on_connect)
//! such a table is refused with an error that says so.
#![forbid(unsafe_code)]

mod builder;
mod busy;
mod error;
mod listen;
mod schema;
mod store;

pub use builder::{DEFAULT_TABLE, PostgresStoreBuilder};
pub use store::PostgresStore;
