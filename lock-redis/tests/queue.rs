//! The queue on Redis beyond the shared suite: shared entries (semaphores,
//! reader-writer locks), locks left by the previous version, and grant
//! notifications that must not be lost.

mod common;

use std::time::Duration;

use common::bounded;
use conformance_tests::harness::{RedisReply, RedisServer, shared_redis};
use conformance_tests::{granted, queued, unique_key};
use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, FencingToken, LeaseId, LeaseStore, LockMode,
    ReleaseOutcome, RenewEntry, RenewOutcome, WaitOutcome,
};
use lock_redis::RedisStore;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

fn shared(key: &str, owner: &str, limit: u32) -> AcquireRequest<'static> {
    let key: &'static str = Box::leak(key.to_owned().into_boxed_str());
    let owner: &'static str = Box::leak(owner.to_owned().into_boxed_str());
    AcquireRequest::new(key, owner, LeaseId::random(), TTL).with_mode(LockMode::Shared, limit)
}

async fn renew_waiting(store: &RedisStore, key: &str, lease_id: LeaseId) -> RenewOutcome {
    let entry = [RenewEntry::waiting(key, lease_id, TTL)];
    store.renew(&entry, TTL).await.unwrap().remove(0)
}

async fn redis(server: &RedisServer, args: &[&str]) -> RedisReply {
    let reply = server.command(args).await.expect("redis-cli command");
    assert!(
        !matches!(reply, RedisReply::Error(_)),
        "{args:?}: {reply:?}"
    );
    reply
}

/// A semaphore of 3: three shared entries hold together, the fourth waits
/// and holds once one of them is released, with a larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_entries_hold_together_up_to_the_limit() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("semaphore");
        let mut tokens = Vec::new();
        let mut permits = Vec::new();
        for i in 0..3 {
            let request = shared(&key, &format!("p{i}"), 3);
            let grant = granted(store.acquire(request).await.unwrap());
            tokens.push(grant.token.clone().unwrap());
            permits.push(request.lease_id);
        }
        assert!(tokens.windows(2).all(|pair| pair[0] < pair[1]));
        let info = store.inspect(&key).await.unwrap().unwrap();
        let owners: Vec<&str> = info.holders.iter().map(|h| h.owner.as_str()).collect();
        assert_eq!(owners, ["p0", "p1", "p2"]);
        assert!(info.holders.iter().all(|h| h.mode == LockMode::Shared));
        assert_eq!(info.limit, Some(3));

        // Full: a try is refused, a queueing request waits.
        let refused = store.acquire(shared(&key, "try", 3)).await.unwrap();
        assert!(
            matches!(refused, AcquireOutcome::Held(ref h) if h.owner == "p0"),
            "{refused:?}"
        );
        let fourth = shared(&key, "p3", 3).queued(TTL);
        let waiting = queued(store.acquire(fourth).await.unwrap());
        assert!(waiting.token.clone().unwrap() > tokens[2]);
        assert!(matches!(
            renew_waiting(&store, &key, fourth.lease_id).await,
            RenewOutcome::Waiting { .. }
        ));
        // Releasing the middle permit hands it over in the same step.
        let released = store
            .release(&key, permits[1], Fencing::Enabled)
            .await
            .unwrap();
        assert_eq!(released, ReleaseOutcome::Released);
        match renew_waiting(&store, &key, fourth.lease_id).await {
            RenewOutcome::Granted(grant) => assert_eq!(grant.token, waiting.token),
            other => panic!("the fourth permit: {other:?}"),
        }
        let info = store.inspect(&key).await.unwrap().unwrap();
        let owners: Vec<&str> = info.holders.iter().map(|h| h.owner.as_str()).collect();
        assert_eq!(owners, ["p0", "p2", "p3"]);
        assert_eq!(info.waiting, 0);
    })
    .await;
}

/// A reader-writer lock: readers share, a writer waits for them and blocks
/// the readers that come after it, then readers share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_blocks_later_readers() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("reader-writer");
        let limit = 10;
        let first = shared(&key, "reader-1", limit);
        granted(store.acquire(first).await.unwrap());
        let second = shared(&key, "reader-2", limit);
        granted(store.acquire(second).await.unwrap());
        let writer = AcquireRequest::new(&key, "writer", LeaseId::random(), TTL)
            .with_mode(LockMode::Exclusive, limit)
            .queued(TTL);
        let writer_token = queued(store.acquire(writer).await.unwrap()).token;
        // A reader after the waiting writer waits too, even with room left.
        let late = shared(&key, "reader-3", limit).queued(TTL);
        let late_token = queued(store.acquire(late).await.unwrap()).token;
        assert!(late_token > writer_token);
        let try_read = store.acquire(shared(&key, "try", limit)).await.unwrap();
        assert!(matches!(try_read, AcquireOutcome::Held(_)), "{try_read:?}");

        store
            .release(&key, first.lease_id, Fencing::Enabled)
            .await
            .unwrap();
        assert!(matches!(
            renew_waiting(&store, &key, writer.lease_id).await,
            RenewOutcome::Waiting { .. }
        ));
        store
            .release(&key, second.lease_id, Fencing::Enabled)
            .await
            .unwrap();
        let info = store.inspect(&key).await.unwrap().unwrap();
        assert_eq!(info.holders.len(), 1, "{info:?}");
        assert_eq!(info.holders[0].owner, "writer");
        assert_eq!(info.holders[0].mode, LockMode::Exclusive);
        assert_eq!(info.waiting, 1);
        assert!(matches!(
            renew_waiting(&store, &key, late.lease_id).await,
            RenewOutcome::Waiting { .. }
        ));
        store
            .release(&key, writer.lease_id, Fencing::Enabled)
            .await
            .unwrap();
        match renew_waiting(&store, &key, late.lease_id).await {
            RenewOutcome::Granted(grant) => assert_eq!(grant.token, late_token),
            other => panic!("the late reader: {other:?}"),
        }
        // Readers share again.
        granted(
            store
                .acquire(shared(&key, "reader-4", limit))
                .await
                .unwrap(),
        );
    })
    .await;
}

/// A lease and counter written by the previous version are carried over:
/// the lease still holds (its holder can renew and release it), and later
/// tokens are larger than the old counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_the_previous_version_are_carried_over() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("previous-version");
        let names = store.redis_keys(&key);
        let old = LeaseId::random();
        let value = format!("{old}:old-owner");
        // Tokens of the previous version were floored at the clock too;
        // this one is far ahead of it.
        let old_token: u64 = 8_000_000_000_000_000;
        redis(server, &["SET", &names.lock, &value, "PX", "30000"]).await;
        redis(
            server,
            &[
                "HSET",
                &names.fence,
                "token",
                &old_token.to_string(),
                "holder",
                &value,
            ],
        )
        .await;

        let info = store.inspect(&key).await.unwrap().unwrap();
        assert_eq!(
            info.holder.as_ref().map(|h| h.owner.as_str()),
            Some("old-owner")
        );
        assert!(info.holder.unwrap().remaining.unwrap() <= Duration::from_secs(30));
        assert_eq!(info.last_token, Some(FencingToken::from(old_token)));
        // Migrated: one string, no expiry, no fencing hash.
        assert_eq!(
            redis(server, &["EXISTS", &names.fence]).await,
            RedisReply::Integer(0)
        );
        assert_eq!(
            redis(server, &["PTTL", &names.lock]).await,
            RedisReply::Integer(-1)
        );

        let bob = AcquireRequest::new(&key, "bob", LeaseId::random(), TTL);
        assert!(matches!(
            store.acquire(bob).await.unwrap(),
            AcquireOutcome::Held(ref h) if h.owner == "old-owner"
        ));
        renewed_as_held(&store, &key, old).await;
        assert_eq!(
            store.release(&key, old, Fencing::Enabled).await.unwrap(),
            ReleaseOutcome::Released
        );
        let grant = granted(store.acquire(bob).await.unwrap());
        assert!(grant.token.unwrap() > FencingToken::from(old_token));

        // A counter alone (the old lease was released) is carried over too.
        let key = unique_key("previous-counter");
        let names = store.redis_keys(&key);
        redis(
            server,
            &["HSET", &names.fence, "token", &old_token.to_string()],
        )
        .await;
        let grant = granted(
            store
                .acquire(AcquireRequest::new(&key, "carol", LeaseId::random(), TTL))
                .await
                .unwrap(),
        );
        assert_eq!(grant.token, Some(FencingToken::from(old_token + 1)));
        assert_eq!(
            redis(server, &["EXISTS", &names.fence]).await,
            RedisReply::Integer(0)
        );

        // A short token (not 16 digits) cannot take the lone holder's
        // form, whose fields the fast paths read by position, and is
        // written with 16 digits in the general form: its holder is
        // carried over, renewed and released all the same.
        let key = unique_key("previous-short-token");
        let names = store.redis_keys(&key);
        let old = LeaseId::random();
        let value = format!("{old}:old-owner");
        redis(server, &["SET", &names.lock, &value, "PX", "30000"]).await;
        redis(server, &["HSET", &names.fence, "token", "41"]).await;
        renewed_as_held(&store, &key, old).await;
        match redis(server, &["GET", &names.lock]).await {
            RedisReply::Bulk(state) => {
                assert!(state.starts_with(b"0000000000000041,"), "{state:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.release(&key, old, Fencing::Enabled).await.unwrap(),
            ReleaseOutcome::Released
        );
        assert_eq!(
            store.release(&key, old, Fencing::Enabled).await.unwrap(),
            ReleaseOutcome::NotHeld
        );
        let dave = AcquireRequest::new(&key, "dave", LeaseId::random(), TTL);
        let grant = granted(store.acquire(dave).await.unwrap());
        assert!(grant.token.unwrap() > FencingToken::from(41_u64));
    })
    .await;
}

/// Renews `lease` on `key` as held, which must succeed.
async fn renewed_as_held(store: &RedisStore, key: &str, lease: LeaseId) {
    let renewed = store
        .renew(&[RenewEntry::held(key, lease)], TTL)
        .await
        .unwrap();
    assert!(
        matches!(renewed[0], RenewOutcome::Renewed { .. }),
        "{renewed:?}"
    );
}

/// A grant published before the waiter subscribed (its channel was not
/// subscribed when it queued) is not lost: the wait looks at the store
/// once and reports it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_before_the_wait_subscribed_is_not_lost() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let holder = RedisStore::connect(server.url()).await.unwrap();
        let waiter = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("grant-before-wait");
        let (alice, _) = conformance_tests::grant(&holder, &key, "alice", TTL).await;
        let bob = AcquireRequest::new(&key, "bob", LeaseId::random(), TTL).queued(TTL);
        let token = queued(waiter.acquire(bob).await.unwrap()).token;
        // Nobody listens on the channel yet: the message goes nowhere.
        holder.release(&key, alice, Fencing::Enabled).await.unwrap();
        let start = Instant::now();
        let heard = waiter
            .wait_for_grant(&key, bob.lease_id, Duration::from_secs(20))
            .await;
        assert_eq!(heard, WaitOutcome::Granted { token });
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    })
    .await;
}

/// Once subscribed, a grant is heard even when it comes between two waits
/// of the same entry, and grants for other entries do not wake it as
/// granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_between_waits_are_kept_for_their_entry() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let holder = RedisStore::connect(server.url()).await.unwrap();
        let waiter = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("grant-between-waits");
        let (alice, _) = conformance_tests::grant(&holder, &key, "alice", TTL).await;
        let bob = AcquireRequest::new(&key, "bob", LeaseId::random(), TTL).queued(TTL);
        let bob_token = queued(waiter.acquire(bob).await.unwrap()).token;
        let carol = AcquireRequest::new(&key, "carol", LeaseId::random(), TTL).queued(TTL);
        let carol_token = queued(waiter.acquire(carol).await.unwrap()).token;
        // Carol's first wait subscribes and times out: she is not first.
        let heard = waiter
            .wait_for_grant(&key, carol.lease_id, Duration::from_millis(200))
            .await;
        assert_eq!(heard, WaitOutcome::TimedOut);
        // While nobody waits (the subscription lingers), the key moves on
        // twice: Bob holds, then Carol.
        holder.release(&key, alice, Fencing::Enabled).await.unwrap();
        waiter
            .release(&key, bob.lease_id, Fencing::Enabled)
            .await
            .unwrap();
        let heard = waiter
            .wait_for_grant(&key, carol.lease_id, Duration::from_secs(20))
            .await;
        assert_eq!(
            heard,
            WaitOutcome::Granted {
                token: carol_token.clone()
            }
        );
        assert!(bob_token < carol_token);
    })
    .await;
}

/// A lost connection wakes every waiter with `Changed`: notifications may
/// have been missed while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_wakes_waiters_with_a_change() {
    bounded(async {
        // Its own server: every other client's connection is cut.
        let server = start_or_skip!(RedisServer::start());
        let holder = RedisStore::connect(server.url()).await.unwrap();
        let waiter = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("lost-connection");
        conformance_tests::grant(&holder, &key, "alice", TTL).await;
        let bob = AcquireRequest::new(&key, "bob", LeaseId::random(), TTL).queued(TTL);
        queued(waiter.acquire(bob).await.unwrap());
        let channel = waiter.redis_keys(&key).channel;
        let wait = tokio::spawn({
            let (waiter, key) = (waiter.clone(), key.clone());
            async move {
                waiter
                    .wait_for_grant(&key, bob.lease_id, Duration::from_secs(30))
                    .await
            }
        });
        conformance_tests::eventually(Duration::from_secs(10), "the wait subscribes", || async {
            let reply = server
                .command(&["PUBSUB", "NUMSUB", &channel])
                .await
                .unwrap();
            matches!(
                &reply,
                RedisReply::Array(items) if matches!(items.get(1), Some(RedisReply::Integer(n)) if *n > 0)
            )
        })
        .await;
        // Every connection but redis-cli's: the waiter's among them.
        for kind in ["pubsub", "normal"] {
            redis(&server, &["CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes"]).await;
        }
        let heard = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(heard, WaitOutcome::Changed);
    })
    .await;
}
