//! Leased, fenced distributed locks on Redis: the [`RedisStore`] backend of
//! dlock, for a single Redis server (with or without replicas) and for
//! Redis Cluster.
//!
//! [`RedisStore`] implements [`lock_core::LeaseStore`]; put it under a
//! [`lock_core::LeaseLocker`] to get locks with heartbeats, warnings,
//! fencing tokens, semaphores and reader-writer locks, and fair waiting:
//! each lock is a first-come-first-served queue kept in Redis, and a
//! release hands the lock to the next entry in the same script, telling it
//! over Redis pub/sub.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{LeaseLocker, Locker, LockerOptions};
//! use lock_redis::RedisStore;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One server: redis://, or rediss:// for TLS.
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! // A Cluster: redis+cluster://host:port,host:port (any of its nodes).
//! // let store = RedisStore::connect("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").await?;
//!
//! let options = LockerOptions::builder()
//!     .owner("report-worker-1")
//!     .lease(Duration::from_secs(30))
//!     .build()?;
//! let locker = LeaseLocker::new(store, options)?;
//! let guard = locker.lock("nightly-report", Duration::from_secs(10)).await?;
//! let token = guard.fencing_token().cloned().expect("fencing is on by default");
//! // Pass `token` with every write to the protected resource, which must
//! // refuse tokens smaller than the largest it has seen (see below).
//! guard.unlock().await?;
//! locker.close().await?;
//! # let _ = token;
//! # Ok(())
//! # }
//! ```
//!
//! # Connecting
//!
//! [`RedisStore::connect`] takes a URL; [`RedisStore::builder`] also sets
//! the key prefix, the renewal batch limit, timeouts and a private TLS root
//! certificate.
//!
//! | URL | connects to |
//! | --- | --- |
//! | `redis://[user:password@]host[:port][/db]` | one server (or a proxy in front of one) |
//! | `rediss://...` | the same over TLS |
//! | `redis+cluster://[user:password@]host:port[,host:port...][/?query]` | a Redis Cluster, discovered from any of the listed nodes; credentials and query apply to every node |
//! | `rediss+cluster://...` | the same over TLS |
//! | `redis+unix:///path/to/socket`, `unix:///path/to/socket` | one server on a Unix socket |
//!
//! The store opens one connection (one per node in a Cluster), which
//! reconnects by itself; it is shared by all clones of the store and
//! carries the grant notifications as well (RESP3).
//!
//! # What it guarantees, and what it does not
//!
//! **A single Redis server, and Redis with replicas, give efficiency
//! locks**: they keep two well-behaved clients from doing the same work
//! most of the time. They are not a safety guarantee on their own:
//!
//! - Replication is asynchronous. A replica promoted (by Sentinel, by hand,
//!   or by Cluster failover) before it received a lock key grants that lock
//!   a second time while the first holder still works, and it may also have
//!   missed fencing-counter updates. `WAIT` does not change this: it is not
//!   consensus, and a promoted replica that acknowledged nothing can still
//!   win.
//! - Expiry follows the Redis server's wall clock. A clock stepped forward
//!   (NTP, an operator, a VM migration) ends leases early, while holders
//!   still count on them. dlock's holders give up `drift` and `margin`
//!   before their lease's nominal end, which covers slow drift but not
//!   steps.
//! - A holder paused longer than its lease (GC, swapping, `SIGSTOP`, a
//!   blocked executor) acts after someone else took over, whatever the
//!   store.
//!
//! **Fencing is the defence.** Every grant carries a
//! [`FencingToken`](lock_core::FencingToken) larger than every earlier
//! grant's for the key: a resource that remembers the largest token it
//! has accepted and refuses smaller ones stays safe through all of the
//! above (two simultaneous holders can exist, but only the newest can
//! write). A token is the entry's sequence number, taken from a per-key
//! counter when the entry joins the queue (granted at once or waiting) and
//! floored at the server's `TIME` in microseconds:
//! `token = max(counter + 1, now_us)`; entries hold in sequence order, so
//! grants carry increasing tokens. So tokens keep
//! increasing even across a restart without persistence (which loses
//! every lock and counter), as long as the server's clock does not step
//! back across the restart by more than the downtime. After a failover to
//! a replica that missed updates, the floor protects tokens only if the
//! replica's clock is past the lost tokens; use persistence
//! (`appendonly yes`, `appendfsync always` for the strictest) and
//! `min-replicas-to-write` to narrow that window, and treat fencing as the
//! guarantee you can check.
//!
//! **Redis Cluster** (`redis+cluster://`) spreads locks over the shards by
//! their hash slot; each lock lives on one master and inherits exactly
//! the single-server properties above for that master, including losing
//! locks when a replica is promoted after the master fails. Cluster mode
//! adds no consensus across shards. A renewal batch costs one script call
//! per hash tag present in it (at most 256, see [`RedisKeys`]), sent
//! concurrently. Grant notifications use sharded pub/sub (`SPUBLISH` /
//! `SSUBSCRIBE`, Redis 7), so they stay on the key's shard.
//!
//! # Requirements
//!
//! Redis 6 or later (RESP3: change notifications share the connection
//! with the commands); Redis 7 for Cluster mode (sharded pub/sub). Lua
//! scripting must be allowed (`EVALSHA`, `SCRIPT LOAD`), and with ACLs the
//! user needs the store's keys (`~dlock:*` by default) and channels
//! (`&dlock:*`). The scripts make the names of a lock's other keys from
//! the one they are given (all share its hash slot).
//!
//! **Upgrading from the previous version** (a lock was a `lock` string
//! with `PX` and a `fence` hash): stop its clients first. The first
//! operation on such a lock carries its lease and its token counter over
//! to the new layout (the lease keeps holding and can be renewed and
//! released); clients of the previous version that run on afterwards find
//! values they cannot read and report the lock as corrupt.
//!
//! # How it works
//!
//! Each lock is a queue of entries (see [`LeaseStore`](lock_core::LeaseStore)):
//! the entries that hold are kept in one state string with the token
//! counter; entries that wait sit in a sorted set (by sequence number) and
//! a hash, which exist only while someone waits. Expiry times are the
//! server's clock (`TIME`), compared inside the scripts. Each
//! [`LeaseStore`](lock_core::LeaseStore) operation is one Lua script, run
//! with `EVALSHA` (re-loaded by `redis::Script` after `NOSCRIPT`, for
//! example after a restart emptied the script cache), so one round trip.
//! Every script first applies the queue's rule: expired holders are
//! dropped, and waiting entries hold by position (an exclusive entry
//! alone, shared ones together up to the limit, none overtaking an
//! earlier one); entries that start holding this way are told on the
//! lock's channel (`PUBLISH`, or `SPUBLISH` in Cluster mode) in the same
//! script.
//!
//! - **acquire** (`src/lua/acquire.lua`): a lock whose state is its
//!   counter alone, or was left by a fast release, is granted with one
//!   read and one write (the fast path: no waiters, no sorted set).
//!   Otherwise the entry holds at once when it would hold at the end of
//!   the queue; else a queueing request adds a waiting entry (its token is
//!   fixed then: it is its sequence number) and answers how soon an entry
//!   ahead may expire; a try answers the first holder. A retried request
//!   (its first reply was lost) finds its own entry.
//! - **renew** (`src/lua/renew.lua`): for each entry, held or waiting,
//!   extends it if it is live and carries its lease id (a waiting entry
//!   that holds by now is extended to the lease ttl and answers its
//!   grant); never creates. One call per batch (per hash tag in Cluster
//!   mode), one `TIME` per call.
//! - **release** (`src/lua/release.lua`): removes the lease's live entry;
//!   the entries behind it that hold now are told in the same script. A
//!   lone holder is released with one read and one write in place (its
//!   lease id is overwritten, `SETRANGE`), and publishes nothing. The counter stays; with
//!   [`Fencing::Disabled`](lock_core::Fencing::Disabled) a lock left empty
//!   is deleted.
//! - **inspect** (`src/lua/inspect.lua`): holders, waiting entries,
//!   limit, last token.
//! - **wait_for_grant** subscribes to the lock's channel on the store's
//!   connection (one subscription per channel, shared by all the store's
//!   waiters, kept for a couple of seconds after the last one leaves) and
//!   waits for a message naming its lease, a lost connection (`Changed`:
//!   messages may have been missed) or the deadline. Grants for the
//!   store's own waiting entries are kept from before their acquisition is
//!   sent, so one published before the wait began is not lost; when the
//!   subscription is younger than the entry, the wait looks at the store
//!   once after subscribing.
//!
//! The scripts are written for the server's time, which is what decides
//! throughput on a busy server: their fast paths make few Lua C calls
//! (each costs about a quarter of a `SET`), and they take few arguments
//! (each costs about as much): the publish command is part of the script
//! text (one text for a standalone server, one for a Cluster), and a
//! release with fencing on sends its lease id alone.
//!
//! The keys and values are described at [`RedisKeys`]. A lock's key that
//! holds something else (another program wrote to it) gives a
//! [`StoreErrorKind::Corrupt`](lock_core::StoreErrorKind::Corrupt) error
//! naming the key on acquire, release and inspect, before anything is
//! written; a renewal batch answers `Lost` for such an entry and logs the
//! error, so that one overwritten key does not fail the renewal of every
//! other lock in the batch.
//!
//! Errors from the `redis` crate are mapped in one place: connection, I/O
//! and timeout errors, `READONLY`, `BUSY`, `LOADING`, `TRYAGAIN`,
//! `CLUSTERDOWN` and `MASTERDOWN` are retryable; the rest are not.
//! Passwords in URLs never appear in `Debug` output, errors or logs.
//!
//! # Logging
//!
//! `tracing` events under the `lock_redis` target: connection (debug),
//! takeovers (debug), overwritten keys (error), notification trouble
//! (debug).
#![forbid(unsafe_code)]

mod batch;
mod builder;
mod conn;
mod error;
mod keys;
mod ops;
mod store;
mod target;
mod waiters;

pub use builder::{DEFAULT_MAX_BATCH, DEFAULT_PREFIX, RedisStoreBuilder};
pub use keys::RedisKeys;
pub use store::RedisStore;
