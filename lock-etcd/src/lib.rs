//! dlock's etcd store: leased, fenced locks on etcd leases and revisions.
//!
//! [`EtcdStore`] implements [`lock_core::LeaseStore`] with
//! [`etcd-client`](etcd_client); put it in a [`lock_core::LeaseLocker`] to
//! get locks with heartbeats, warnings, waiting and fencing tokens.
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{LeaseLocker, Locker, LockerOptions};
//! use lock_etcd::EtcdStore;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = EtcdStore::connect("etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379").await?;
//! let options = LockerOptions::builder()
//!     .owner("invoice-worker-7")
//!     .lease(Duration::from_secs(15))
//!     .build()?;
//! let locker = LeaseLocker::new(store, options)?;
//! let guard = locker.lock("invoice-run", Duration::from_secs(60)).await?;
//! println!("holding it with fencing token {:?}", guard.fencing_token());
//! guard.unlock().await?;
//! locker.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Connecting
//!
//! `etcd://[user[:password]@]host:port[,host:port...][/namespace][?options]`,
//! or `etcds://` for TLS (see [`EtcdConfig::from_url`] for the options, and
//! [`EtcdConfig`] to build the same in code). TLS needs this crate's `tls`
//! feature. The password is kept out of every `Debug`, `Display`, error and
//! log line.
//!
//! # What is stored
//!
//! Under the namespace (default `dlock/`), per lock key (the locker's
//! prefix and the lock id):
//!
//! | etcd key | value | etcd lease | lives |
//! | --- | --- | --- | --- |
//! | `<namespace>lock/<key>` | `dlock1:<lease id, 32 hex digits>:<owner>` | the holder's store lease | while held |
//! | `<namespace>fence/<key>` | empty | none | forever, once a grant used fencing |
//!
//! The owner is the tail of the value, so owners and ids may contain any
//! character. A lock key whose value is not of this form (another program
//! wrote it) makes `acquire` and `inspect` fail with
//! [`StoreErrorKind::Corrupt`](lock_core::StoreErrorKind::Corrupt) naming
//! the key, rather than guess.
//!
//! # Leases and renewals
//!
//! Each store grants its **own** etcd leases, one per ttl (more only past
//! 3 MiB of keys on one), and attaches every lock it grants to the lease of
//! its ttl. It never relies on the server's implicit lock lease (etcd's lock
//! service creates a 60 s lease nobody renews).
//!
//! - **acquire** is one transaction: if the lock key does not exist
//!   (`create_revision == 0`) put it with the store lease (and touch the
//!   fence key); otherwise read the holder. Alongside it, in the same round
//!   trip, goes a keep-alive of the store lease (shared by concurrent
//!   callers), so the reported ttl is never counted from an older
//!   keep-alive; with a [lease slack](EtcdConfig::lease_slack) of 1 s it is
//!   skipped when the lease had one within the last second (see *Time to
//!   live*). If the lease turns out gone
//!   (expired between calls), the key went with it and the store grants a
//!   fresh lease and tries again: a key whose lease expired is never
//!   reported acquired.
//! - **renew** of a whole batch costs one keep-alive of each store lease
//!   the batch is on (for a locker: one) and, concurrently, one
//!   `LeaseTimeToLive` with `keys = true` that lists the keys still attached
//!   to it. An entry is `Renewed` when its lease lives and still carries its
//!   key under this store's grant of its lease id; `Lost` when the lease is
//!   gone (keep-alive answered TTL <= 0, or the lease is unknown) or its
//!   key was deleted (released through another client, deleted by an
//!   operator). Renewing 10,000 locks is one keep-alive and one
//!   time-to-live, so [`Capabilities::max_batch`](lock_core::Capabilities)
//!   is effectively unlimited. The applied ttl reported is the lock's (see
//!   *Time to live*), whatever `ttl` the renewal asks for: etcd cannot
//!   change a lease's ttl.
//!
//!   *Why the lease's key list.* A keep-alive alone cannot tell that one
//!   key of the lease was deleted. A range read over the namespace would
//!   return every client's locks; a watch on the prefix would have to be
//!   kept and resynchronized across reconnects and compaction. The lease's
//!   key list is exactly this store's keys, is answered by the leader from
//!   memory, and needs no state beyond the grants the store made. The
//!   values need no re-reading: nobody else puts keys on this store's
//!   lease, and the store remembers which lease id it put under each key.
//! - Keys on the store lease that no grant covers any more would be kept
//!   alive by keep-alives sent for the other locks: an acquisition whose
//!   reply was lost or abandoned (and whose background release failed
//!   too), or a lock whose renewals stopped while others go on. The store
//!   cleans them up in the background, each deletion comparing the exact
//!   value: it remembers the value of every acquisition of unknown outcome
//!   and deletes it at the next sweep (at most once a second, on
//!   acquisitions and renewals); renewals also delete keys of the lease's
//!   key list that no grant claims, and locks no renewal covered for their
//!   whole ttl; and an acquisition that finds the key taken by such a key
//!   of its own store deletes it and takes the key. So a shared etcd lease
//!   does not keep an unwanted lock alive much beyond its ttl, and never
//!   beyond the etcd lease once the store goes quiet.
//! - **release** is one transaction deleting the lock key only if its value
//!   carries the lease id (never by key alone). **inspect** reads the lock
//!   and fence keys in one transaction, and the holder's remaining time
//!   from its lease. **wait_for_change** watches the lock key for deletes
//!   (release or expiry) from the revision at which it was last seen held.
//!
//! # Time to live
//!
//! etcd counts leases in whole seconds, with a server minimum (on etcd 3.4
//! with default settings, 2 s: a request for 1 s is granted 2 s). The store
//! learns the minimum when connecting by granting a 1 s lease; it reports
//! it as [`Capabilities::min_ttl`](lock_core::Capabilities), with a
//! granularity of 1 s, and [`LeaseLocker::new`](lock_core::LeaseLocker::new)
//! refuses a lease below it.
//!
//! The ttl a grant or renewal reports as applied is the requested ttl
//! rounded up to whole seconds (at least the minimum), and it is counted
//! from the moment the call began. By default the store's etcd lease for it
//! is granted for exactly that ttl, and every grant sends a keep-alive of
//! the lease alongside its transaction (one more request, no more waiting):
//! a lock whose holder died is free within its ttl of the holder's last
//! renewal, plus etcd's expiry lag of up to about half a second.
//! [`EtcdConfig::lease_slack`] (URL option `lease_slack_s=1`) grants the
//! etcd lease a second longer instead: a grant made within a second of the
//! lease's last successful keep-alive then lasts its whole reported ttl
//! without a keep-alive of its own, which saves a request per acquisition
//! on a busy store; the price is that a dead holder's lock is taken over up
//! to a second later.
//!
//! **Leader changes re-arm leases**: a new leader gives every lease its full
//! ttl again, so expiry moves later, never earlier. Holders are safe (their
//! deadline counted from the request); a takeover after a dead holder may
//! take up to a ttl longer.
//!
//! # Fencing
//!
//! The fencing token of a grant is the lock key's **create revision**.
//! etcd revisions only grow, so tokens strictly increase per key across
//! release, expiry and takeover, with nothing kept (the fence key only
//! serves [`inspect`](lock_core::LeaseStore::inspect)'s `last_token`).
//!
//! A resource outside etcd checks the token as the
//! [`FencingToken`](lock_core::FencingToken) recipe says. Data in the same
//! etcd cluster can do better: make the write conditional on the lock key
//! still having the create revision of your grant, in one transaction
//! ([`EtcdStore::fence_compare`] builds the comparison). A holder paused
//! past its lease then cannot write at all, since its key is gone or was
//! created again at a later revision:
//!
//! ```no_run
//! use std::time::Duration;
//! use etcd_client::{Txn, TxnOp};
//! use lock_core::{LeaseLocker, Locker, LockerOptions};
//! use lock_etcd::EtcdStore;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = EtcdStore::connect("etcd://127.0.0.1:2379").await?;
//! let locker = LeaseLocker::new(store.clone(), LockerOptions::default())?;
//! let guard = locker.lock("report", Duration::from_secs(10)).await?;
//! let token = guard.fencing_token().ok_or("fencing is on by default")?;
//!
//! let fenced_write = Txn::new()
//!     .when([store.fence_compare(guard.key(), token).ok_or("token out of range")?])
//!     .and_then([TxnOp::put("reports/nightly", "body", None)]);
//! let reply = store.client().clone().txn(fenced_write).await?;
//! if !reply.succeeded() {
//!     // The lock was lost (expired, taken over): the write did not happen.
//!     return Err("lost the lock".into());
//! }
//! guard.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! **Snapshot restores.** `etcdctl snapshot restore` without
//! `--bump-revision` starts the restored cluster at the snapshot's revision:
//! every revision granted after the snapshot is issued **again**, so new
//! tokens can be smaller than, or equal to, tokens already handed out, and a
//! resource that remembers the largest token it accepted would refuse every
//! holder until revisions catch up (or accept a duplicate). Restore with
//! `--bump-revision N --mark-compacted` (etcd 3.5's `etcdutl`; etcd 3.4's
//! `etcdctl` lacks it), N larger than the revisions issued since the
//! snapshot, to keep tokens increasing. `tests/restore.rs` restores a
//! snapshot with etcd 3.4 and shows the reissued token refused.
//!
//! # Errors
//!
//! All etcd-client and gRPC errors are mapped in one place: unreachable
//! servers, broken connections, `Unavailable` and leader changes are
//! [`Unavailable`](lock_core::StoreErrorKind::Unavailable), deadlines are
//! [`Timeout`](lock_core::StoreErrorKind::Timeout) (both retryable, and
//! possibly applied), "too many requests" is
//! [`Busy`](lock_core::StoreErrorKind::Busy), refused credentials are
//! [`Auth`](lock_core::StoreErrorKind::Auth).
//!
//! # Limits
//!
//! - A store renews only the grants it made itself (its own etcd leases):
//!   a renewal of a lease granted through another `EtcdStore` is `Lost`.
//!   Releases work from any client.
//! - Held answers carry no remaining time (finding it is another round
//!   trip); waiters are woken by the watch instead. `inspect` reports it.
//! - The previous owner of an expired lock is unknown: etcd deleted the key.
//! - Fence keys stay: one empty key per lock id ever granted with fencing
//!   (as SQL stores keep one row). Delete `<namespace>fence/` keys of ids
//!   that are retired for good, if they pile up.
//! - Each waiting `lock()` call opens a watch stream of its own for as long
//!   as it waits (streams share the connection).
#![forbid(unsafe_code)]

mod config;
mod conn;
mod error;
mod layout;
mod lease;
mod ops;
mod queue;
mod registry;
mod store;
mod sweep;

pub use config::{DEFAULT_NAMESPACE, EtcdConfig, EtcdTls};
pub use store::EtcdStore;

/// The etcd client crate this store is built on, for fenced transactions of
/// your own.
pub use etcd_client;
