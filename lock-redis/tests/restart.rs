//! redis-server killed and restarted without persistence while locks are
//! held and waiters wait: every lock and counter is gone, yet tokens issued
//! afterwards are larger than every token issued before, holders learn of
//! the loss at their next renewal, and waiters get the locks. And the script
//! cache emptied (as a restart or failover empties it) under held locks.

mod common;

use std::time::Duration;

use common::bounded;
use conformance_tests::harness::{RedisReply, RedisServer};
use conformance_tests::unique_key;
use lock_core::{FencingToken, LeaseLocker, LockStatus, Locker, LockerOptions};
use lock_redis::RedisStore;
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(3);

async fn locker(url: &str, owner: &str) -> LeaseLocker<RedisStore> {
    let store = RedisStore::connect(url).await.unwrap();
    let options = LockerOptions::builder()
        .owner(owner)
        .lease(LEASE)
        .heartbeat(LEASE / 3)
        .store_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    LeaseLocker::new(store, options).unwrap()
}

fn token(guard: &lock_core::LockGuard) -> FencingToken {
    guard.fencing_token().cloned().expect("fencing is on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_increasing_and_holders_learn_of_the_loss_after_a_restart() {
    bounded(async {
        let mut server = start_or_skip!(RedisServer::start());
        if server.is_external() {
            eprintln!("skipped: an external server cannot be restarted");
            return;
        }
        let url = server.url().to_owned();
        let alice = locker(&url, "alice").await;
        let bob = locker(&url, "bob").await;
        let base = unique_key("restart");
        let ids: Vec<String> = (0..3).map(|i| format!("{base}/{i}")).collect();

        // Tokens before: a few grants per key, then hold every key.
        let mut before = Vec::new();
        for id in &ids {
            for _ in 0..3 {
                let guard = alice.try_lock(id).await.unwrap();
                before.push(token(&guard));
                guard.unlock().await.unwrap();
            }
        }
        let mut held = Vec::new();
        for id in &ids {
            let guard = alice.try_lock(id).await.unwrap();
            before.push(token(&guard));
            held.push(guard);
        }
        let largest = before.iter().max().cloned().unwrap();

        // Bob waits for two of them; wait until both waits are subscribed.
        let waiters: Vec<_> = ids[..2]
            .iter()
            .map(|id| {
                let (bob, id) = (bob.clone(), id.clone());
                tokio::spawn(async move { bob.lock(&id, Duration::from_secs(60)).await })
            })
            .collect();
        let store = alice.store();
        let give_up = Instant::now() + Duration::from_secs(10);
        for id in &ids[..2] {
            let channel = store.redis_keys(id).channel;
            loop {
                let reply = server.command(&["PUBSUB", "NUMSUB", &channel]).await.unwrap();
                let subscribed = matches!(
                    &reply,
                    RedisReply::Array(items) if matches!(items.get(1), Some(RedisReply::Integer(n)) if *n > 0)
                );
                if subscribed {
                    break;
                }
                assert!(Instant::now() < give_up, "bob never waited on {id:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        let deadlines: Vec<Instant> = held.iter().map(|g| g.valid_until().unwrap()).collect();
        server.kill().unwrap();
        server.restart().await.unwrap();
        // Nothing survived (the waited-for keys may already be Bob's).
        let unwaited = store.redis_keys(&ids[2]);
        for name in [&unwaited.lock, &unwaited.fence] {
            let exists = server.command(&["EXISTS", name]).await.unwrap();
            assert_eq!(exists, RedisReply::Integer(0), "{name} survived");
        }

        // Holders learn it at their next renewal, before their deadline.
        for (guard, deadline) in held.iter().zip(&deadlines) {
            let status = tokio::time::timeout_at(*deadline, guard.lost()).await;
            assert_eq!(status, Ok(LockStatus::Lost), "{} kept past its deadline", guard.id());
        }

        // The waiters get their locks, with larger tokens than ever before.
        for waiter in waiters {
            let guard = waiter.await.unwrap().unwrap();
            assert!(token(&guard) > largest, "{} after {largest}", token(&guard));
            guard.unlock().await.unwrap();
        }
        // So does every later grant, on old keys and new.
        let fresh = format!("{base}/fresh");
        for id in ids.iter().chain([&fresh]) {
            let guard = alice.lock(id, Duration::from_secs(10)).await.unwrap();
            assert!(token(&guard) > largest, "{id}: {} after {largest}", token(&guard));
            guard.unlock().await.unwrap();
        }
        alice.close().await.unwrap();
        bob.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_script_cache_is_reloaded_by_renewals_acquisitions_and_releases() {
    bounded(async {
        let server = start_or_skip!(RedisServer::start());
        let flush = || async {
            let reply = server.command(&["SCRIPT", "FLUSH"]).await.unwrap();
            assert_eq!(reply, RedisReply::Simple("OK".to_owned()));
        };
        let alice = locker(server.url(), "alice").await;
        let bob = locker(server.url(), "bob").await;
        let id = unique_key("noscript");
        let guard = alice.try_lock(&id).await.unwrap();
        let first = token(&guard);

        // Renewals: the lock outlives its first deadline.
        flush().await;
        let first_deadline = guard.valid_until().unwrap();
        tokio::time::sleep_until(first_deadline + LEASE / 3).await;
        assert_eq!(*guard.status().borrow(), LockStatus::Held);
        assert!(guard.valid_until().unwrap() > first_deadline);

        // An acquisition that finds the lock held.
        flush().await;
        match bob.try_lock(&id).await {
            Err(lock_core::LockError::Taken { holder, .. }) => {
                assert_eq!(holder.as_deref(), Some("alice"));
            }
            other => panic!("expected Taken, got {other:?}"),
        }

        // A release, then a grant.
        flush().await;
        guard.unlock().await.unwrap();
        flush().await;
        let next = bob.try_lock(&id).await.expect("free once released");
        assert!(token(&next) > first);
        next.unlock().await.unwrap();
    })
    .await;
}
