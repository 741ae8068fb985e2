//! Network faults between a client and Redis, injected by the fault proxy:
//! a black hole while renewing, a reset in the middle of an acquisition,
//! latency above the ttl. Bounded in time; waits on signals and deadlines.

mod common;

use std::time::Duration;

use common::bounded;
use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::shared_redis;
use conformance_tests::unique_key;
use lock_core::{LeaseLocker, LockError, LockStatus, Locker, LockerOptions};
use lock_redis::RedisStore;
use tokio::time::Instant;

const LEASE: Duration = Duration::from_millis(1500);

fn options(owner: &str) -> LockerOptions {
    LockerOptions::builder()
        .owner(owner)
        .lease(LEASE)
        .heartbeat(LEASE / 3)
        .warn_after(LEASE * 2 / 3)
        .store_timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

async fn locker(url: &str, owner: &str) -> LeaseLocker<RedisStore> {
    let store = RedisStore::builder(url)
        .response_timeout(Some(Duration::from_millis(500)))
        .connect()
        .await
        .unwrap();
    LeaseLocker::new(store, options(owner)).unwrap()
}

async fn holder(locker: &LeaseLocker<RedisStore>, id: &str) -> Option<String> {
    locker
        .inspect(id)
        .await
        .unwrap()
        .and_then(|info| info.holder)
        .map(|holder| holder.owner)
}

/// Polls until `id` has no holder, failing after `limit`.
async fn wait_free(locker: &LeaseLocker<RedisStore>, id: &str, limit: Duration) {
    let give_up = Instant::now() + limit;
    while holder(locker, id).await.is_some() {
        assert!(
            Instant::now() < give_up,
            "{id:?} still held after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A holder whose connection turns into a black hole warns, then expires
/// at its local deadline while Redis still has its lease; another client
/// gets the lock only once Redis expired it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_during_renewals_expires_the_holder_before_redis_does() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let proxy = FaultProxy::start(server.addr()).await.unwrap();
        let alice = locker(&server.url_via(proxy.listen_addr()), "alice").await;
        let bob = locker(server.url(), "bob").await;
        let id = unique_key("black-hole");

        let sent = Instant::now();
        let guard = alice.try_lock(&id).await.unwrap();
        let mut warnings = guard.warnings().expect("warnings are on");
        proxy.set_mode(FaultMode::BlackHole);

        assert_eq!(warnings.recv().await.as_deref(), Some(id.as_str()));
        assert_eq!(guard.lost().await, LockStatus::Lost);
        let expired = Instant::now();
        assert!(expired < sent + LEASE, "the holder outlived its lease");
        assert_eq!(
            holder(&bob, &id).await.as_deref(),
            Some("alice"),
            "Redis expired the lease before the holder gave up"
        );
        let taken = bob.lock(&id, Duration::from_secs(10)).await.unwrap();
        let took_over = Instant::now();
        assert!(
            took_over >= sent + LEASE.mul_f64(0.99),
            "taken over {:?} after the grant, before Redis's expiry",
            took_over - sent
        );
        assert!(taken.fencing_token() > guard.fencing_token());

        proxy.set_mode(FaultMode::PassThrough);
        taken.unlock().await.unwrap();
        bob.close().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), alice.close()).await;
    })
    .await;
}

/// An acquisition whose request reached Redis but whose reply was cut off
/// by a reset fails with a retryable error, and leaves no lease that
/// anyone renews: it is released in the background or ends with its ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_during_acquire_leaves_no_renewed_lease() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let proxy = FaultProxy::start(server.addr()).await.unwrap();
        let alice = locker(&server.url_via(proxy.listen_addr()), "alice").await;
        let bob = locker(server.url(), "bob").await;
        let id = unique_key("reset-during-acquire");
        // Warm the connection and the script cache up.
        alice
            .try_lock(&unique_key("warm-up"))
            .await
            .unwrap()
            .unlock()
            .await
            .unwrap();

        // The request gets through, the grant does not come back.
        proxy.set_mode(FaultMode::CutServerToClient);
        let attempt = tokio::spawn({
            let (alice, id) = (alice.clone(), id.clone());
            async move { alice.try_lock(&id).await }
        });
        let give_up = Instant::now() + Duration::from_secs(5);
        while holder(&bob, &id).await.is_none() {
            assert!(
                Instant::now() < give_up,
                "the acquisition never reached Redis"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.set_mode(FaultMode::Reset);
        let granted_by = Instant::now();
        match attempt.await.unwrap() {
            Err(LockError::Store(error)) => assert!(error.is_retryable(), "{error}"),
            other => panic!("expected a store error, got {other:?}"),
        }
        assert_eq!(alice.held_count(), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.set_mode(FaultMode::PassThrough);

        // Nobody renews it: gone by its ttl at the latest.
        wait_free(&bob, &id, LEASE + Duration::from_secs(1)).await;
        assert!(granted_by.elapsed() < LEASE + Duration::from_secs(1));
        assert_eq!(alice.held_count(), 0);
        let guard = bob.lock(&id, Duration::from_secs(5)).await.unwrap();
        // Alice's client works again after the reset.
        assert!(matches!(
            alice.try_lock(&id).await,
            Err(LockError::Taken { holder: Some(h), .. }) if h == "bob"
        ));
        guard.unlock().await.unwrap();
        bob.close().await.unwrap();
        alice.close().await.unwrap();
    })
    .await;
}

/// With a one-way latency above the ttl, acquisitions time out and are
/// never used (a grant that lands is released or expires unrenewed); a
/// holder whose renewals start taking longer than its lease expires
/// locally before anyone else gets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_above_the_ttl_never_gives_two_holders() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let proxy = FaultProxy::start(server.addr()).await.unwrap();
        let alice = locker(&server.url_via(proxy.listen_addr()), "alice").await;
        let bob = locker(server.url(), "bob").await;

        // A holder whose connection slows down.
        let id = unique_key("latency-holder");
        let guard = alice.try_lock(&id).await.unwrap();
        let latency = LEASE + Duration::from_millis(100);
        proxy.set_mode(FaultMode::Latency(latency));
        let waiter = tokio::spawn({
            let (bob, id) = (bob.clone(), id.clone());
            async move {
                let guard = bob.lock(&id, Duration::from_secs(20)).await;
                (guard, Instant::now())
            }
        });
        assert_eq!(guard.lost().await, LockStatus::Lost);
        let alice_gave_up = Instant::now();
        let (taken, bob_got_it) = waiter.await.unwrap();
        let taken = taken.unwrap();
        assert!(bob_got_it > alice_gave_up, "two holders at once");
        assert!(taken.fencing_token() > guard.fencing_token());
        taken.unlock().await.unwrap();

        // Acquisitions through the slow link time out, retryably.
        let id = unique_key("latency-acquire");
        let sent = Instant::now();
        match alice.try_lock(&id).await {
            Err(LockError::Store(error)) => assert!(error.is_retryable(), "{error}"),
            other => panic!("expected a store timeout, got {other:?}"),
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(alice.held_count(), 0);
        // The late grant lands on Redis after the latency, and is never
        // renewed: gone within latency + ttl (sooner when the background
        // release, sent after the timeout, lands too).
        let give_up = sent + latency + Duration::from_secs(2);
        while holder(&bob, &id).await.as_deref() != Some("alice") {
            assert!(Instant::now() < give_up, "the late grant never landed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wait_free(&bob, &id, LEASE + Duration::from_secs(1)).await;
        assert!(sent.elapsed() < latency + LEASE + Duration::from_secs(1));
        let guard = bob.lock(&id, 3 * LEASE).await.unwrap();
        guard.unlock().await.unwrap();

        proxy.set_mode(FaultMode::PassThrough);
        bob.close().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), alice.close()).await;
    })
    .await;
}
