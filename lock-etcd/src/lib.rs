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
//! prefix and the lock id), each key's queue is one etcd key per **entry**
//! (a lock held, a permit held, or a `lock()` call waiting), the recipe of
//! etcd's own lock service on the store's own leases:
//!
//! | etcd key | value | etcd lease | lives |
//! | --- | --- | --- | --- |
//! | `<namespace>lock/<key>\0<lease id>` | `dlock2:<limit>:<x or s>:<lease id>:<owner>` | the store's lease of the holder's ttl, or of the waiter's ttl while it waits | while the entry lives |
//! | `<namespace>fence/<key>` | empty | none | forever, once an entry was added with fencing |
//! | `<namespace>lock/<key>` | `dlock1:<lease id>:<owner>` | the old holder's | written only by the previous version (see *Upgrading*) |
//!
//! The lease id is the locker's, 32 hex digits; `x` is exclusive, `s`
//! shared; the owner is the tail of the value, so owners and ids may contain
//! any character. Lock keys contain no NUL byte, so the range from
//! `<namespace>lock/<key>` to `<namespace>lock/<key>\x01`
//! ([`EtcdStore::etcd_queue_range`]) holds exactly one lock key's entries
//! (and its old lock key): one range read, one range comparison and one
//! watch cover the whole queue. An entry's **create revision** orders the
//! queue and is its fencing token (a put on an existing key keeps it). The
//! fence key is put in the same transaction as every entry added with
//! fencing, so its mod revision is the key's last token. A key in the range
//! whose value is not of these forms (another program wrote it) makes
//! `acquire` and `inspect` fail with
//! [`StoreErrorKind::Corrupt`](lock_core::StoreErrorKind::Corrupt) naming
//! it, rather than guess.
//!
//! # The queue
//!
//! Who holds is decided by position, as [`lock_core::LeaseStore`] states:
//! by create revision, an exclusive entry holds when nothing is ahead of
//! it, a shared one when everything ahead is shared and fewer than the
//! limit. Nothing is written when an entry starts to hold.
//!
//! - **acquire** is one transaction (alongside a keep-alive of the etcd
//!   lease the entry goes on, see below):
//!   `if the range is empty (create_revision over the range = 0): put the
//!   entry on the holder's lease [and touch the fence key]`, else read the
//!   range by create revision. A queueing request (`lock()`) nests a second
//!   branch in the else: `if every value in the range starts with
//!   dlock2:<limit>: (two value comparisons over the range): put the entry
//!   on the waiter's lease [and the fence key], read the range`. So a
//!   request that does not queue never leaves an entry behind, a limit
//!   mismatch adds nothing, and a queueing request learns in the same
//!   round trip whether it holds, its token and what is ahead of it. Two
//!   cases take a second transaction: a shared entry that would hold behind
//!   shared holders (`put if no key of the range was created after the
//!   revision read`, or, when it was queued on the waiter's lease, a move
//!   to the holder's lease), and queueing behind an old lock key.
//! - **release** deletes the entry's key (its name carries the lease id, so
//!   nothing else is ever deleted; etcd's count of deleted keys tells
//!   whether it was live): one request, and the handoff. The entries it
//!   kept waiting hold from that revision on.
//! - **waiting** ([`wait_for_grant`](lock_core::LeaseStore::wait_for_grant)):
//!   the store remembers, from the read that placed the entry (its
//!   acquisition, or a renewal), which entries are ahead of it. Each store
//!   keeps one watch of the range per key its waiters wait on, opened at
//!   the current revision and shared by all of them, and buffers the
//!   deletions it reports. A release or an expiry (etcd deletes the keys of
//!   a lease that ran out) of an entry ahead arrives as a delete event, and
//!   the waiter decides locally when every entry ahead is gone or
//!   compatible: `Granted` with its token, no request of its own. A
//!   waiter whose read predates the watch (the first waiter on a key, or
//!   after the watch was opened again) reads the queue once more first.
//!   The watch is not started from the read's revision because etcd
//!   delivers a watch that starts in the past only after its catch-up
//!   loop, every 100 ms, which would delay handoffs by as much. A release
//!   sends events only to the watches of its key (one per store with
//!   waiters on it), and an uncontended key has none. A watch that breaks
//!   is opened again by the store; while it is down, waiters learn their
//!   turn from their renewals.
//! - A promoted entry keeps its waiter lease (and expiry) until its next
//!   renewal, which puts it again on the holder's lease, conditional on its
//!   create revision: same place, same token.
//! - **inspect** reads the range and the fence key in one transaction, then
//!   each holder's remaining time from its etcd lease.
//!
//! **What a dead waiter costs.** A waiting entry is attached to the store's
//! lease of the waiter ttl (a few heartbeats; the locker's `waiter_ttl`,
//! rounded up to whole seconds), so a waiter whose process died delays the
//! queue by at most its waiter ttl (plus etcd's expiry lag of up to about
//! half a second), promoted or not: a promoted entry stays on its waiter
//! lease until a renewal moves it. A waiter whose process lives but stopped
//! renewing its entry (while the store's other entries keep the shared
//! lease alive) is deleted by the store's clean-up within about a second
//! after its waiter ttl (see *Leases and renewals*).
//!
//! # Leases and renewals
//!
//! Each store grants its **own** etcd leases, one per ttl in whole seconds
//! (more only past 3 MiB of keys on one), and attaches every entry it adds
//! to the lease of its ttl: holders to the lease of the lock's ttl,
//! waiting entries to the lease of the waiter ttl. It never relies on the
//! server's implicit lock lease (etcd's lock service creates a 60 s lease
//! nobody renews).
//!
//! - Alongside each acquisition's transaction, in the same round trip, goes
//!   a keep-alive of the etcd lease the entry most likely goes on (the
//!   waiter's when the store already waits on the key or holds an entry of
//!   it, else the holder's; shared by concurrent callers), so the reported
//!   ttl is never counted from an older keep-alive (a wrong guess costs a
//!   keep-alive after the transaction); with a
//!   [lease slack](EtcdConfig::lease_slack) of
//!   1 s it is skipped when the lease had one within the last second (see
//!   *Time to live*). If the lease turns out gone (expired between calls),
//!   the entry went with it and the store grants a fresh lease and tries
//!   again: an entry whose lease expired is never reported.
//! - **renew** of a whole batch costs one keep-alive of each store lease
//!   the batch is on (for a locker with no waiting call: one) and,
//!   concurrently, one `LeaseTimeToLive` with `keys = true` that lists the
//!   keys still attached to it. A held entry is `Renewed` when its lease
//!   lives and still carries its key; `Lost` when the lease is gone
//!   (keep-alive answered TTL <= 0, or the lease is unknown) or its key was
//!   deleted (released through another client, deleted by an operator).
//!   Waiting entries of the batch add, concurrently, one transaction of
//!   range reads (one per key, up to 100 keys per transaction) that tells
//!   each whether it holds by now; those that do (and promoted entries
//!   renewed as held) are moved to the holder's lease in one more
//!   transaction for the whole batch, and answered `Granted`. Renewing
//!   10,000 held locks is one keep-alive and one time-to-live, so
//!   [`Capabilities::max_batch`](lock_core::Capabilities) is effectively
//!   unlimited. The applied ttl reported is the entry's lease's (see *Time
//!   to live*), whatever `ttl` the renewal asks for: etcd cannot change a
//!   lease's ttl.
//!
//!   *Why the lease's key list.* A keep-alive alone cannot tell that one
//!   key of the lease was deleted. A range read over the namespace would
//!   return every client's locks; a watch on the prefix would have to be
//!   kept and resynchronized across reconnects and compaction. The lease's
//!   key list is exactly this store's keys, is answered by the leader from
//!   memory, and needs no state beyond the entries the store made. The
//!   values need no re-reading: nobody else puts keys on this store's
//!   lease, and an entry's key carries its lease id.
//! - Keys on a store lease that no entry of the store claims any more
//!   would be kept alive by keep-alives sent for the other entries: an
//!   acquisition whose reply was lost or abandoned (and whose background
//!   release failed too), or an entry whose renewals stopped while others
//!   go on. Holding or waiting, such an entry would stall its queue. The
//!   store cleans them up in the background, each deletion comparing the
//!   exact value and etcd lease: it remembers the value of every
//!   acquisition of unknown outcome and deletes it at the next sweep (at
//!   most once a second, on acquisitions and renewals); renewals also
//!   delete keys of the leases' key lists that no entry claims, and
//!   entries no renewal covered for their whole ttl; and an acquisition or
//!   renewal that finds an entry of its own store whose ttl ran out in a
//!   queue it read deletes it. So a shared etcd lease does not keep an unwanted entry
//!   alive much beyond its ttl, and never beyond the etcd lease once the
//!   store goes quiet.
//!
//! # Upgrading from the previous layout
//!
//! The previous version of this store kept one key per lock,
//! `<namespace>lock/<key>` with a `dlock1:` value, and the same fence key.
//! That key is the first of its lock key's range, and the new store reads
//! a live one as an **exclusive holder ahead of every entry**: nothing is
//! granted until its holder releases it or its lease runs out, entries
//! queue behind it (waking when it is deleted), and `inspect` reports its
//! owner. Tokens keep increasing across the change (both are create
//! revisions; the fence key is shared). Nothing needs migrating: once the
//! old holders are gone, no old key is left. Do **not** run old and new
//! versions side by side on one namespace: the old version does not see
//! entries, so it would grant a lock the new one holds. Stop every process
//! of the old version, then start the new ones.
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
//! The fencing token of a grant is its entry's **create revision**. etcd
//! revisions only grow, and entries start holding in create-revision order,
//! so tokens strictly increase per key in grant order across release,
//! expiry and takeover, with nothing kept (the fence key only serves
//! [`inspect`](lock_core::LeaseStore::inspect)'s `last_token`). A waiting
//! entry knows its token when it queues; shared holders each carry their
//! own. With fencing disabled, grants carry no token and no fence key is
//! written.
//!
//! A resource outside etcd checks the token as the
//! [`FencingToken`](lock_core::FencingToken) recipe says. Data in the same
//! etcd cluster can do better: make the write conditional on the entry's
//! key still having the create revision of your grant, in one transaction
//! ([`EtcdStore::fence_compare`] builds the comparison from the guard's
//! key, lease id and token). A holder paused past its lease then cannot
//! write at all, since its entry is gone:
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
//!     .when([store
//!         .fence_compare(guard.key(), guard.lease_id(), token)
//!         .ok_or("token out of range")?])
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
//! - A store renews only the entries it made itself (its own etcd leases):
//!   a renewal of an entry added through another `EtcdStore` is `Lost`.
//!   Releases work from any client.
//! - Held and Queued answers carry no remaining time (finding it is another
//!   round trip), and queued entries no `retry_after`: an entry ahead that
//!   expires is deleted by etcd, which the waiter's watch reports.
//!   `inspect` reports remaining times.
//! - The previous owner of an expired lock is unknown: etcd deleted the key.
//! - A shared entry granted behind other shared holders takes a second
//!   transaction (see *The queue*); a mutex never does.
//! - Every acquisition of a busy key reads its whole queue (to answer and
//!   to know what is ahead of a new waiter): a queue of thousands of
//!   waiters makes each acquisition read thousands of entries.
//! - Fence keys stay: one empty key per lock id ever granted with fencing
//!   (as SQL stores keep one row). Delete `<namespace>fence/` keys of ids
//!   that are retired for good, if they pile up.
//! - A store keeps one watch stream open per key its waiters wait on (on
//!   its connection), from the first waiter until two seconds after the
//!   last one left.
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
mod watches;

pub use config::{DEFAULT_NAMESPACE, EtcdConfig, EtcdTls};
pub use store::EtcdStore;

/// The etcd client crate this store is built on, for fenced transactions of
/// your own.
pub use etcd_client;
