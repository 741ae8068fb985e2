//! A lock's Redis keys overwritten by another program: clear `Corrupt`
//! errors naming the key, never a panic; a renewal batch only loses the
//! overwritten entry. The previous version's fencing hash with garbage in
//! it is reported the same way when a lock is migrated.

mod common;

use std::time::Duration;

use common::bounded;
use conformance_tests::harness::{RedisReply, RedisServer, shared_redis};
use conformance_tests::{grant, locker_options, unique_key};
use lock_core::{
    AcquireRequest, Fencing, LeaseId, LeaseLocker, LeaseStore, LockError, LockStatus, Locker,
    RenewEntry, RenewOutcome, StoreError, StoreErrorKind,
};
use lock_redis::RedisStore;

const TTL: Duration = Duration::from_secs(30);

async fn redis(server: &RedisServer, args: &[&str]) {
    let reply = server.command(args).await.expect("redis-cli command");
    assert!(
        !matches!(reply, RedisReply::Error(_)),
        "{args:?}: {reply:?}"
    );
}

fn assert_corrupt(error: &StoreError, key: &str, redis_key: &str) {
    assert_eq!(error.kind(), StoreErrorKind::Corrupt, "{error}");
    assert_eq!(error.key(), Some(key), "{error}");
    assert!(!error.is_retryable());
    let shown = error.to_string();
    assert!(shown.contains(&format!("{redis_key:?}")), "{shown}");
}

/// The ways another program can overwrite a key: a foreign string, another
/// type, a string that looks almost like a lease.
fn garbage(name: &str) -> Vec<Vec<String>> {
    vec![
        vec!["SET".into(), name.into(), "notours".into()],
        vec!["HSET".into(), name.into(), "field".into(), "value".into()],
        vec!["RPUSH".into(), name.into(), "item".into()],
        vec![
            "SET".into(),
            name.into(),
            format!("{}-owner", "z".repeat(32)),
        ],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_lock_key_is_a_corrupt_error_naming_the_key() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        for (round, command) in garbage("LOCK").into_iter().enumerate() {
            let key = unique_key(&format!("corrupt-lock-{round}"));
            let names = store.redis_keys(&key);
            let (lease, _) = grant(&store, &key, "alice", TTL).await;
            let command: Vec<String> = command
                .into_iter()
                .map(|arg| {
                    if arg == "LOCK" {
                        names.lock.clone()
                    } else {
                        arg
                    }
                })
                .collect();
            redis(server, &["DEL", &names.lock]).await;
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            redis(server, &args).await;

            let request = AcquireRequest::new(&key, "bob", LeaseId::random(), TTL);
            let error = store.acquire(request).await.unwrap_err();
            assert_corrupt(&error, &key, &names.lock);
            let error = store.inspect(&key).await.unwrap_err();
            assert_corrupt(&error, &key, &names.lock);
            let error = store
                .release(&key, lease, Fencing::Enabled)
                .await
                .unwrap_err();
            assert_corrupt(&error, &key, &names.lock);
            let entry = [RenewEntry::held(&key, lease)];
            assert_eq!(
                store.renew(&entry, TTL).await.unwrap(),
                [RenewOutcome::Lost]
            );
            // Nothing was changed by any of these.
            let kind = server.command(&["TYPE", &names.lock]).await.unwrap();
            assert_ne!(kind.as_text().as_deref(), Some("none"), "{command:?}");
            // Deleting the garbage frees the lock again.
            redis(server, &["DEL", &names.lock]).await;
            grant(&store, &key, "bob", TTL).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_fencing_key_is_a_corrupt_error_naming_it() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let cases: Vec<Vec<&str>> = vec![
            vec!["SET", "FENCE", "notours"],
            vec!["HSET", "FENCE", "token", "twelve"],
            vec!["HSET", "FENCE", "token", "99999999999999999999"],
        ];
        for (round, command) in cases.into_iter().enumerate() {
            let key = unique_key(&format!("corrupt-fence-{round}"));
            let names = store.redis_keys(&key);
            let args: Vec<&str> = command
                .iter()
                .map(|arg| {
                    if *arg == "FENCE" {
                        names.fence.as_str()
                    } else {
                        arg
                    }
                })
                .collect();
            redis(server, &args).await;
            let request = AcquireRequest::new(&key, "bob", LeaseId::random(), TTL);
            let error = store.acquire(request).await.unwrap_err();
            assert_corrupt(&error, &key, &names.fence);
            assert_eq!(
                server.command(&["EXISTS", &names.lock]).await.unwrap(),
                RedisReply::Integer(0),
                "no lease was granted"
            );
            if round < 2 {
                let error = store.inspect(&key).await.unwrap_err();
                assert_corrupt(&error, &key, &names.fence);
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_overwritten_key_loses_only_its_own_lease_in_a_renewal_batch() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let base = unique_key("corrupt-batch");
        let mut held = Vec::new();
        for i in 0..5 {
            let key = format!("{base}/{i}");
            let (lease, _) = grant(&store, &key, "alice", TTL).await;
            held.push((key, lease));
        }
        let victim = store.redis_keys(&held[2].0).lock;
        redis(server, &["SET", &victim, "notours"]).await;
        let entries: Vec<RenewEntry<'_>> = held
            .iter()
            .map(|(key, lease_id)| RenewEntry::held(key, *lease_id))
            .collect();
        let outcomes = store.renew(&entries, TTL).await.unwrap();
        for (i, outcome) in outcomes.iter().enumerate() {
            if i == 2 {
                assert_eq!(*outcome, RenewOutcome::Lost);
            } else {
                assert!(
                    matches!(outcome, RenewOutcome::Renewed { .. }),
                    "{i}: {outcome:?}"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockers_report_overwritten_keys_and_holders_lose_them() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();
        let caps = store.capabilities();
        let locker = LeaseLocker::new(store, locker_options(&caps, "alice")).unwrap();
        let id = unique_key("corrupt-locker");
        let guard = locker.try_lock(&id).await.unwrap();
        let names = locker.store().redis_keys(&id);
        redis(server, &["SET", &names.lock, "notours"]).await;
        // The holder learns at its next renewal that the lease is gone.
        let limit = locker.options().heartbeat() + locker.options().store_timeout() * 2;
        let status = tokio::time::timeout(limit, guard.lost()).await;
        assert_eq!(status, Ok(LockStatus::Lost));
        // A new attempt is a clear, non-retryable error naming the key.
        match locker.lock(&id, Duration::from_secs(5)).await {
            Err(LockError::Store(error)) => assert_corrupt(&error, &id, &names.lock),
            other => panic!("expected a Corrupt store error, got {other:?}"),
        }
        redis(server, &["DEL", &names.lock]).await;
        locker.close().await.unwrap();
    })
    .await;
}

fn queue<'a>(key: &'a str, owner: &'a str) -> AcquireRequest<'a> {
    AcquireRequest::new(key, owner, LeaseId::random(), TTL).queued(TTL)
}

/// The waiting entries' sorted set and hash overwritten: errors name them,
/// and nothing is lost or granted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_queue_keys_are_corrupt_errors_naming_them() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let store = RedisStore::connect(server.url()).await.unwrap();

        // The sorted set holds a string.
        let key = unique_key("corrupt-queue");
        let names = store.redis_keys(&key);
        let (alice, _) = grant(&store, &key, "alice", TTL).await;
        let bob = queue(&key, "bob");
        store.acquire(bob).await.unwrap();
        redis(server, &["DEL", &names.queue]).await;
        redis(server, &["SET", &names.queue, "notours"]).await;
        let error = store.acquire(queue(&key, "carol")).await.unwrap_err();
        assert_corrupt(&error, &key, &names.queue);
        let error = store.inspect(&key).await.unwrap_err();
        assert_corrupt(&error, &key, &names.queue);
        let error = store
            .release(&key, bob.lease_id, Fencing::Enabled)
            .await
            .unwrap_err();
        assert_corrupt(&error, &key, &names.queue);
        let error = store
            .release(&key, alice, Fencing::Enabled)
            .await
            .unwrap_err();
        assert_corrupt(&error, &key, &names.queue);
        let waiting = [RenewEntry::waiting(&key, bob.lease_id, TTL)];
        assert_eq!(
            store.renew(&waiting, TTL).await.unwrap(),
            [RenewOutcome::Lost]
        );

        // A waiting entry that is not ours.
        let key = unique_key("corrupt-waiting");
        let names = store.redis_keys(&key);
        let (alice, _) = grant(&store, &key, "alice", TTL).await;
        let bob = queue(&key, "bob");
        store.acquire(bob).await.unwrap();
        redis(
            server,
            &["HSET", &names.waiting, &bob.lease_id.to_string(), "garbage"],
        )
        .await;
        let error = store.inspect(&key).await.unwrap_err();
        assert_corrupt(&error, &key, &names.waiting);
        let error = store
            .release(&key, alice, Fencing::Enabled)
            .await
            .unwrap_err();
        assert_corrupt(&error, &key, &names.waiting);
        // Alice still holds: the failed release changed nothing.
        let held = [RenewEntry::held(&key, alice)];
        assert!(matches!(
            store.renew(&held, TTL).await.unwrap()[0],
            RenewOutcome::Renewed { .. }
        ));
    })
    .await;
}
