//! dlock's DynamoDB store: leased, fenced locks on one DynamoDB table,
//! through the official AWS SDK, with expiry by the clients' wall clocks.
//!
//! [`DynamoStore`] implements [`lock_core::LeaseStore`] with the queue
//! contract (a key is a first-come, first-served queue of entries: mutex,
//! semaphore of N permits, reader-writer lock), and passes the whole
//! conformance suite. Use it through [`lock_core::LeaseLocker`] (or the
//! `dlock` facade's `dynamodb://` URLs).
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{LeaseLocker, Locker, LockerOptions};
//! use lock_dynamodb::DynamoStore;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store = DynamoStore::connect("dynamodb://locks?region=eu-west-1").await?;
//! let options = LockerOptions::builder()
//!     .lease(Duration::from_secs(60))
//!     .max_clock_skew(Duration::from_secs(10))
//!     .build()?;
//! let locker = LeaseLocker::new(store, options)?;
//! let guard = locker.lock("nightly-report", Duration::from_secs(30)).await?;
//! let token = guard.fencing_token().cloned();
//! // ... write to the resource, passing `token` so it can refuse stale writers ...
//! guard.unlock().await?;
//! # let _ = token;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! While the clients' clocks are within `max_clock_skew` of each other (see
//! below):
//!
//! - **Mutual exclusion by position**: entries hold in arrival order, an
//!   exclusive one alone, shared ones up to the key's limit; a grant lasts
//!   its whole ttl unless released; nobody else holds until the holder's
//!   lease has ended by its own clock and the skew has passed.
//! - **The holder knows first**: its renewal and release succeed only
//!   while its entry is ahead of its own clock, and the locker's local
//!   deadline (monotonic clock, drift and margin) ends before that.
//! - **Fencing tokens** (the entries' sequence numbers) strictly increase
//!   per key across release, expiry, takeover and restarts of clients: the
//!   counter lives in the key's item, which is never deleted while fencing
//!   is on. They hold even when the clock assumption fails.
//! - **Every decision is one conditional write** on the key's item (or a
//!   read that changes nothing); DynamoDB applies writes to one item one at
//!   a time, with strongly consistent reads.
//!
//! The crate needs Rust 1.94.1 (the AWS SDK's minimum), newer than the
//! rest of the workspace.
//!
//! # Time: the clients' clocks, within `max_clock_skew`
//!
//! DynamoDB cannot read its own clock inside a conditional write, so this
//! store cannot follow the rest of dlock ("expiry by the store's clock").
//! It keeps the rule of the library dlock descends from, and says so in its
//! capabilities ([`ExpiryClock::Client`](lock_core::ExpiryClock::Client)):
//!
//! - a grant (and each renewal) records `expires_at` by the **writing
//!   client's** wall clock, along with the clock skew that client allows;
//! - another client counts an entry as expired only once **its own** wall
//!   clock is past `expires_at + max_clock_skew` (the larger of the entry's
//!   skew and its own): only then does it take the key over or let the
//!   entries behind it hold;
//! - the holder itself stops earlier: its renewal and release are
//!   conditional on `expires_at` being ahead of its own clock, and the
//!   locker keeps its local deadline on the monotonic clock as with every
//!   store.
//!
//! `max_clock_skew` comes from
//! [`LockerOptions::max_clock_skew`](lock_core::LockerOptions::max_clock_skew)
//! (default 10 s), or from [`DynamoConfig::max_clock_skew`] /
//! `max_clock_skew=` in the URL, which overrides it for every request of
//! the store. A dead holder's key is taken over `max_clock_skew` after its
//! lease ends.
//!
//! **The assumption**: every client's wall clock is within `max_clock_skew`
//! of every other's. Keep clocks synchronized (NTP, chrony, Amazon Time Sync
//! Service on EC2) with a bound well inside the skew. **When it does not
//! hold**: a client whose clock runs ahead by more than the skew counts a
//! live lease as expired and takes the key over while its holder still
//! acts (a client running behind is only slow to take over). Mutual
//! exclusion is then gone; fencing still protects a fenced resource,
//! because the new grant carries a larger token and the resource refuses
//! the old holder's writes (see [`lock_core::FencingToken`]). A wall clock
//! stepped forward on a holder's host makes that holder give up early
//! (it counts its own entry expired): safe, but the lock is lost.
//!
//! # Key schema
//!
//! One table, partition key `lock_key` (S), no sort key. Everything about a
//! lock key is **one item**:
//!
//! | attribute | type | meaning |
//! | --- | --- | --- |
//! | `lock_key` | S | the lock key (partition key), byte for byte |
//! | `fence` | N | the last sequence number handed out: the fencing counter |
//! | `entries` | N | how many entries the item stores (live or not yet removed) |
//! | `e:<lease id>` | S | an entry's settings: `{H\|W}{x\|s} LIMIT TTL_MS SKEW_MS OWNER` (`H` once told it holds, `W` waiting; `x` exclusive, `s` shared; the limit it agreed to, e.g. 1 for a mutex; its ttl; the clock skew its owner allows; the owner name) |
//! | `s:<lease id>` | N | its sequence number, which is its fencing token |
//! | `x:<lease id>` | N | its expiry, ms since the epoch by the clock of its last writer |
//! | `idle_expiry` | N | epoch seconds, only with [idle expiry](DynamoConfig::idle_expiry) |
//! | `format` | N | not written by this version (format 1); a later format will set it, and this version refuses such items |
//!
//! Entries are ordered by sequence number; who holds is decided by
//! position, by each reader's clock: walk the live entries in order; an
//! entry holds when every one before it holds and it is compatible
//! (exclusive: first; shared: every entry before it shared and fewer than
//! its limit). `fence` stays when the key is released, so tokens keep
//! increasing across release, expiry and takeover.
//!
//! **Why one item** rather than an item per entry: every decision (is the
//! key free, where does a new entry go, does the limit match, which token
//! comes next) is then one conditional write on one item, atomic without
//! `TransactWriteItems` (which costs twice the write units and fails on
//! any concurrent transaction on the same items), and a waiting entry
//! learns its position from one read. An entry is three scalar attributes
//! rather than a map, so a renewal writes one number and items stay small.
//! The cost: an item is at most 400 KB, which bounds one key's queue to
//! some 1,000 entries with 256-byte owner names (several thousand with
//! short ones); a longer queue is refused with a retryable error. Each
//! write consumes write units for the whole item (1 WCU per KB), so long
//! queues cost more per operation.
//!
//! **Stale reads are checked.** A client that reads the item, counts an
//! entry as expired and then writes (a takeover, a promotion) makes its
//! write conditional on that entry's expiry being still the one it read:
//! the entry's owner may have renewed it in between, and a renewal moves no
//! counter. At most 64 entries count as expired in one decision (the
//! condition's size); further ones count as live until removed.
//!
//! # Operations and their cost
//!
//! | operation | requests | notes |
//! | --- | --- | --- |
//! | acquire, key free | 1 `UpdateItem` | condition `entries = 0` (or no item); bumps `fence`, adds the entry, returns the token |
//! | acquire, key held, no queue | 1 `UpdateItem` (refused) | the refused condition returns the item (`ReturnValuesOnConditionCheckFailure`), which answers `Held` |
//! | acquire, queueing an exclusive entry | 2 `UpdateItem` | the refused fast path, then a write that takes the next sequence number from `fence` in the write itself, conditional only on the entry not being stored yet (and on the expiry of each entry it removes as expired): other clients' arrivals and releases do not refuse it, so waiters arriving together line up in the order their writes land; a third write when the entries ahead left in between and it holds on arrival (it is told so before it is answered) |
//! | acquire, takeover or queueing a shared entry | 2 `UpdateItem` | the refused fast path, then a write conditional on `fence` and `entries` unchanged (shared entries must agree on their limit, which a read decides), and on the expiry of each entry it removes as expired; repeated, at most 16 times, while other clients change the item |
//! | renew a held entry | 1 `UpdateItem` per entry | condition: its `x:` ahead of the renewer's clock and its `e:` starting with `H` |
//! | renew (or poll) a waiting entry | 1 strongly consistent `GetItem`; plus 1 `UpdateItem` when it holds by now, or when less than its waiter ttl is left | a waiting entry is given up to a second more than its waiter ttl, so polls within that second only read |
//! | release | 1 `UpdateItem` | condition: its `x:` ahead of the releaser's clock; with fencing off, a `DeleteItem` removes the item when the entry was its last |
//! | inspect | 1 strongly consistent `GetItem` | |
//!
//! **Waiting entries** are given half as long again as the waiter ttl
//! asked for, at most a second more (and report that ttl): a renewal or a
//! poll writes only when less than the requested waiter ttl is left, so
//! polls coming close together are reads, not writes to the one item
//! everyone writes. A waiter that died holds up the queue for at most that
//! applied ttl (plus the clock skew).
//!
//! **Renewal batches**: DynamoDB has no conditional write per item in a
//! batch (`BatchWriteItem` takes no conditions, `TransactWriteItems` is all
//! or nothing), so a renewal batch sends its entries' `UpdateItem`s
//! concurrently, at most [`DynamoConfig::renew_concurrency`] (default 64)
//! in flight per store. A heartbeat over N held locks costs N requests and
//! about `N / 64` round trips of wall time; keep that well inside the
//! locker's `store_timeout`, or raise the concurrency.
//!
//! **No notifications**: DynamoDB Streams are not a per-waiter signal, so
//! [`Capabilities::native_wait`](lock_core::Capabilities::native_wait) is
//! false: waiters learn of a grant by renewing their waiting entry (the
//! locker does it, at the heartbeat, on its own polls and when an entry
//! ahead may end; `retry_after` points at that entry's end, then at its end
//! plus the skew). A release through a store that has waits on the key
//! asks for the item as it left it, and wakes the waits of the entries
//! that hold now ([`lock_core::LocalWakers::wake_where`]): a waiter in the
//! same process learns of the handoff in one request, not at its next poll
//! (up to a second), and only it looks (moto, which answers one request at
//! a time, fell behind when every waiter of a key looked at each release).
//! The wait exists from the moment the store answers that an entry waits
//! ([`lock_core::LocalWakers::expect_wait`]), so a release between that
//! answer and its owner's wait is not missed; and a released key's read in
//! flight is not shared with the waiter it wakes, which must see the item
//! as the release left it. Waiters in other processes poll.
//!
//! # Idle expiry
//!
//! With [`DynamoConfig::idle_expiry`] (`idle_expiry=` in the URL), every
//! write sets `idle_expiry` to the writer's clock plus that duration, and
//! `create_table=true` turns DynamoDB's TTL on for that attribute, so items
//! of keys nobody used for that long disappear. Deleting an item forgets its
//! fencing counter, and tokens could then go backwards; so a store with idle
//! expiry reports no fencing in its capabilities and refuses fenced
//! requests: use it with fencing off
//! ([`LockerOptions`](lock_core::LockerOptions) `fencing(false)`). With
//! fencing on, items are kept (with fencing off and no idle expiry, a
//! release that leaves a key empty deletes its item).
//!
//! # URL
//!
//! ```text
//! dynamodb://[ACCESS_KEY_ID:SECRET_ACCESS_KEY@]TABLE[?region=R][&endpoint=URL][&create_table=true]
//!           [&max_clock_skew=10s][&idle_expiry=24h][&renew_concurrency=64][&session_token=T]
//! ```
//!
//! See [`DynamoConfig::from_url`]. Without a key in the URL, credentials
//! come from the standard AWS chain (environment, shared files, web
//! identity, ECS and EC2 metadata), and so does the region. Secrets never
//! appear in `Debug` output, errors or logs: URLs are shown through
//! [`lock_core::url::ConnectionUrl::redacted`].
//!
//! IAM permissions: `dynamodb:GetItem`, `UpdateItem` and `DeleteItem` on
//! the table; `DescribeTable` (checked at connect when allowed);
//! `CreateTable` and `UpdateTimeToLive` with `create_table=true`.
//!
//! # Errors
//!
//! SDK errors map to [`lock_core::StoreError`] in one function: throttling,
//! 5xx and transport failures are retryable; refused credentials and
//! permissions are `Auth`; a missing table is `Invalid`, naming the fix.
//! A refused condition is an outcome (`Held`, `Lost`, `NotHeld`), never an
//! error. The store sends each request once (the SDK's retries are off):
//! the locker owns retries.
//!
//! # Cargo features and TLS
//!
//! None. The SDK is used without its default features: HTTPS is hyper 1
//! with rustls and the *ring* provider (no aws-lc, no OpenSSL), and
//! credentials come from the standard chain without SSO or
//! `credential_process` support; an application that needs those loads
//! its own [`aws_config::SdkConfig`] and passes it with
//! [`DynamoConfig::sdk_config`].
#![forbid(unsafe_code)]

mod clock;
mod config;
mod error;
mod item;
mod store;
mod table;

pub use clock::{OffsetClock, SystemClock, WallClock};
pub use config::{DEFAULT_RENEW_CONCURRENCY, DynamoConfig};
pub use store::DynamoStore;

/// The AWS SDK crates the store is built on, for callers that pass their
/// own configuration or use [`DynamoStore::client`].
pub use aws_config;
pub use aws_sdk_dynamodb;
