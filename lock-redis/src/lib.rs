//! Leased, fenced distributed locks on Redis: the [`RedisStore`] backend of
//! dlock, for a single Redis server (with or without replicas) and for
//! Redis Cluster.
//!
//! [`RedisStore`] implements [`lock_core::LeaseStore`]; put it under a
//! [`lock_core::LeaseLocker`] to get locks with heartbeats, warnings,
//! fencing tokens and waiting woken by Redis pub/sub.
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
//! carries the change notifications as well (RESP3).
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
//! write). Tokens come from a per-key counter incremented in the same
//! script as the grant and floored at the server's `TIME` in
//! microseconds: `token = max(counter + 1, now_us)`. So tokens keep
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
//! concurrently. Release notifications use sharded pub/sub (`SPUBLISH` /
//! `SSUBSCRIBE`, Redis 7), so they stay on the key's shard.
//!
//! # Requirements
//!
//! Redis 6 or later (RESP3: change notifications share the connection
//! with the commands); Redis 7 for Cluster mode (sharded pub/sub). Lua
//! scripting must be allowed (`EVALSHA`, `SCRIPT LOAD`), and with ACLs the
//! user needs the store's keys (`~dlock:*` by default) and channels
//! (`&dlock:*`).
//!
//! # How it works
//!
//! Each [`LeaseStore`](lock_core::LeaseStore) operation is one Lua script,
//! run with `EVALSHA` (re-loaded by `redis::Script` after `NOSCRIPT`, for
//! example after a restart emptied the script cache), so one round trip:
//!
//! - **acquire** (`src/lua/acquire.lua`): if the lock key is absent (never
//!   set, released, or expired by Redis), sets it with `PX ttl` to
//!   `<lease id>:<owner>` and mints the fencing token in the fencing hash;
//!   otherwise answers the holder and its `PTTL`. A retried request (its
//!   first reply was lost) finds its own lease and is granted again. When
//!   the previous lease expired without release, the grant names its
//!   owner (`previous_owner`).
//! - **renew** (`src/lua/renew.lua`): for each entry, `PEXPIRE` if the key
//!   still carries the entry's lease id; never creates. One call per batch
//!   (per hash tag in Cluster mode).
//! - **release** (`src/lua/release.lua`): deletes the lock key if it
//!   carries the lease id, keeps the fencing counter (deletes it too with
//!   [`Fencing::Disabled`](lock_core::Fencing::Disabled)), and publishes on
//!   the key's channel.
//! - **inspect** (`src/lua/inspect.lua`): holder, remaining time, last
//!   token.
//! - **wait_for_change** subscribes to the key's channel on the store's
//!   connection (one subscription per channel, shared by all the store's
//!   waiters, kept for a couple of seconds after the last one leaves), then
//!   re-checks the key's `PTTL`, then waits for a message, the key's
//!   expiry or the deadline, whichever comes first. A lost connection
//!   wakes every waiter, and the locker re-polls in any case.
//!
//! The keys and values are described at [`RedisKeys`]. A lock key that
//! holds something else (another program wrote to it) gives a
//! [`StoreErrorKind::Corrupt`](lock_core::StoreErrorKind::Corrupt) error
//! naming the key on acquire, release and inspect; a renewal batch answers
//! `Lost` for such a key (its lease is gone) and logs the error, so that
//! one overwritten key does not fail the renewal of every other lock in
//! the batch.
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
