//! RedisStore specifics beyond the shared suite: connection URLs and
//! secrets, the key layout in Cluster mode, takeovers naming the previous
//! owner, retried acquisitions.

mod common;

use std::time::Duration;

use common::{bounded, cluster_url};
use conformance_tests::harness::{RedisReply, shared_redis, shared_redis_cluster};
use conformance_tests::{grant, granted, unique_key};
use lock_core::{AcquireRequest, Fencing, LeaseId, LeaseStore, ReleaseOutcome, StoreErrorKind};
use lock_redis::RedisStore;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_those_of_redis() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let caps = store.capabilities();
        assert_eq!(caps.min_ttl, Duration::from_millis(1));
        assert_eq!(caps.ttl_granularity, Duration::from_millis(1));
        assert_eq!(caps.max_key_len, 1024);
        assert_eq!(caps.max_batch, 1000);
        assert!(caps.native_wait && caps.fencing);
        assert!(!store.is_cluster());
        let small = RedisStore::builder(server.url())
            .max_batch(7)
            .connect()
            .await
            .unwrap();
        assert_eq!(small.capabilities().max_batch, 7);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_errors_or_debug_output() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let url = server
            .url()
            .replacen("redis://", "redis://someone:hunter2@", 1);
        let error = RedisStore::connect(&url).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let builder = RedisStore::builder(&url);
        assert!(!format!("{builder:?}").contains("hunter2"));
        for bad in [
            "hunter2",
            "redis+cluster://:hunter2@/",
            "redis://:hunter2@[::1",
        ] {
            let error = RedisStore::connect(bad).await.unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Invalid, "{bad}: {error}");
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
        let store = RedisStore::connect(server.url()).await.unwrap();
        assert!(format!("{store:?}").contains(server.url()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_separate_stores_and_may_not_hold_braces() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let error = RedisStore::builder(server.url())
            .prefix("a{b}:")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Invalid);
        let billing = RedisStore::builder(server.url())
            .prefix("billing:")
            .connect()
            .await
            .unwrap();
        let jobs = RedisStore::builder(server.url())
            .prefix("jobs:")
            .connect()
            .await
            .unwrap();
        let key = unique_key("prefixes");
        grant(&billing, &key, "alice", Duration::from_secs(30)).await;
        grant(&jobs, &key, "bob", Duration::from_secs(30)).await;
        let names = billing.redis_keys(&key);
        assert!(names.lock.starts_with("billing:{"), "{names:?}");
        // An uncontended lock is one string.
        let reply = server
            .command(&[
                "EXISTS",
                &names.lock,
                &names.queue,
                &names.waiting,
                &names.fence,
            ])
            .await
            .unwrap();
        assert_eq!(reply, RedisReply::Integer(1));
    })
    .await;
}

/// A lease that expired without release is taken over naming its owner;
/// one that was released is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_name_the_previous_owner() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("previous-owner");
        let ttl = Duration::from_millis(200);
        let owner = "alice: with a colon\nand a newline 🔒";
        let (_, first) = grant(&store, &key, owner, ttl).await;
        let give_up = Instant::now() + Duration::from_secs(5);
        let takeover = loop {
            let request = AcquireRequest::new(&key, "bob", LeaseId::random(), ttl);
            match store.acquire(request).await.unwrap() {
                lock_core::AcquireOutcome::Acquired(grant) => break grant,
                lock_core::AcquireOutcome::Held(_) => {
                    assert!(Instant::now() < give_up, "never expired");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(takeover.previous_owner.as_deref(), Some(owner));
        assert!(takeover.token > first.token);
    })
    .await;
}

/// An acquisition sent again with the same lease id (its first reply was
/// lost) is granted again with the same token, not refused by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_acquisition_is_granted_again() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("retried-acquire");
        let lease = LeaseId::random();
        let request = AcquireRequest::new(&key, "alice", lease, Duration::from_secs(30));
        let first = granted(store.acquire(request).await.unwrap());
        let again = granted(store.acquire(request).await.unwrap());
        assert_eq!(first.token, again.token);
        assert_eq!(again.previous_owner, None);
        let other = AcquireRequest::new(&key, "alice", LeaseId::random(), Duration::from_secs(30));
        assert!(matches!(
            store.acquire(other).await.unwrap(),
            lock_core::AcquireOutcome::Held(_)
        ));
        let released = store.release(&key, lease, Fencing::Enabled).await.unwrap();
        assert_eq!(released, ReleaseOutcome::Released);
    })
    .await;
}

/// Without fencing, a release deletes every key of the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_without_fencing_leave_nothing_behind() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let key = unique_key("no-fencing");
        let names = store.redis_keys(&key);
        let (lease, _) = grant(&store, &key, "alice", Duration::from_secs(30)).await;
        store.release(&key, lease, Fencing::Enabled).await.unwrap();
        let request =
            AcquireRequest::new(&key, "alice", LeaseId::random(), Duration::from_secs(30))
                .with_fencing(Fencing::Disabled);
        let lease = request.lease_id;
        assert_eq!(granted(store.acquire(request).await.unwrap()).token, None);
        store.release(&key, lease, Fencing::Disabled).await.unwrap();
        let reply = server
            .command(&[
                "EXISTS",
                &names.lock,
                &names.queue,
                &names.waiting,
                &names.fence,
            ])
            .await
            .unwrap();
        assert_eq!(reply, RedisReply::Integer(0));
        assert_eq!(store.inspect(&key).await.unwrap(), None);
    })
    .await;
}

/// In a Cluster, the names of one lock share a slot whatever the key holds
/// (a naive `{key}` tag would not), and locks spread over the masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_of_one_lock_share_a_slot() {
    bounded(async {
        let cluster = start_or_skip!(shared_redis_cluster());
        let store = RedisStore::connect(&cluster_url(cluster)).await.unwrap();
        assert!(store.is_cluster());
        let slot = |name: String| async move {
            match cluster
                .command(0, &["CLUSTER", "KEYSLOT", &name])
                .await
                .unwrap()
            {
                RedisReply::Integer(slot) => slot,
                other => panic!("{other:?}"),
            }
        };
        let mut slots = std::collections::HashSet::new();
        for key in [
            "}starts-with-brace",
            "{tag}x",
            "a}b{c}",
            "line\nbreak",
            "🔒",
            "plain",
        ] {
            let names = store.redis_keys(key);
            let lock = slot(names.lock.clone()).await;
            for name in [&names.queue, &names.waiting, &names.fence, &names.channel] {
                assert_eq!(slot(name.clone()).await, lock, "{name:?}");
            }
            let (lease, _) = grant(&store, key, "alice", Duration::from_secs(30)).await;
            assert_eq!(
                store.release(key, lease, Fencing::Enabled).await.unwrap(),
                ReleaseOutcome::Released
            );
            slots.insert(lock);
        }
        assert!(slots.len() > 1, "every lock in one slot");
    })
    .await;
}
