//! PostgresStore when the server's wall clock steps: expiry follows
//! `clock_timestamp()`, so a step forward ends leases early and a step back
//! lengthens them. The server runs under a clock of its own (libfaketime);
//! the machine's clock and the client's deadlines are untouched.

use std::time::Duration;

use conformance_tests::harness::{PostgresServer, or_skip};
use conformance_tests::register::FencedRegister;
use conformance_tests::unique_key;
use lock_core::{
    AcquireOutcome, AcquireRequest, LeaseId, LeaseLocker, LeaseStore, LockError, LockStatus,
    Locker, LockerOptions,
};
use lock_postgres::PostgresStore;
use tokio::time::{Instant, timeout};

async fn client(url: &str) -> PostgresStore {
    PostgresStore::builder()
        .max_connections(4)
        .connect(url)
        .await
        .expect("connect")
}

/// A 10 s lease renewed every second, 500 ms per call.
fn options(owner: &str) -> LockerOptions {
    LockerOptions::builder()
        .owner(owner)
        .lease(Duration::from_secs(10))
        .heartbeat(Duration::from_secs(1))
        .store_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_forward_ends_the_lease_early_and_fencing_refuses_the_old_holder() {
    let Some(mut server) = or_skip(PostgresServer::start_local_with_clock().await) else {
        return;
    };
    let alice = LeaseLocker::new(client(server.url()).await, options("alice")).unwrap();
    let bob = LeaseLocker::new(client(server.url()).await, options("bob")).unwrap();
    let id = unique_key("clock_forward");
    let register = FencedRegister::new();

    let guard = alice.try_lock(&id).await.unwrap();
    let mut warnings = guard.warnings().unwrap();
    let alice_token = guard.fencing_token().cloned().unwrap();
    let alice_deadline = guard.valid_until().unwrap();
    register.increment(&alice_token).unwrap();

    server.clock().unwrap().set_offset(60).unwrap();
    // By the server's clock Alice's lease ended 50 s ago: Bob gets the lock
    // long before Alice's own deadline. Only fencing keeps the two apart.
    let bob_guard = bob.try_lock(&id).await.expect("taken over at once");
    let taken_over = Instant::now();
    assert!(
        taken_over + Duration::from_secs(5) < alice_deadline,
        "taken over within Alice's lease"
    );
    let bob_token = bob_guard.fencing_token().cloned().unwrap();
    assert!(bob_token > alice_token, "{bob_token} after {alice_token}");
    register.increment(&bob_token).unwrap();
    assert!(
        register.increment(&alice_token).is_err(),
        "the register refuses Alice's token once it has seen Bob's"
    );

    // Alice learns at her next renewal, warned first, well before her own
    // deadline.
    let status = timeout(Duration::from_secs(4), guard.lost())
        .await
        .expect("the failed renewal reports the loss within a few heartbeats");
    assert_eq!(status, LockStatus::Lost);
    assert!(Instant::now() < alice_deadline);
    assert!(warnings.try_recv().is_some(), "Expiring came before Lost");
    assert!(!bob_guard.is_expired());
    bob_guard.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_keeps_the_holder_exclusive_and_a_dead_holders_lock_taken_longer() {
    let Some(mut server) = or_skip(PostgresServer::start_local_with_clock().await) else {
        return;
    };
    let store = client(server.url()).await;
    let alice = LeaseLocker::new(store.clone(), options("alice")).unwrap();
    let bob = LeaseLocker::new(client(server.url()).await, options("bob")).unwrap();
    let id = unique_key("clock_back");

    let guard = alice.try_lock(&id).await.unwrap();
    server.clock().unwrap().set_offset(-30).unwrap();
    // Renewals go on across the step (each one sets expiry from the
    // server's new "now"), and nobody else gets in.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        match bob.try_lock(&id).await {
            Err(LockError::Taken { holder, .. }) => assert_eq!(holder.as_deref(), Some("alice")),
            other => panic!("expected Taken, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(*guard.status().borrow(), LockStatus::Held);
    let alice_token = guard.fencing_token().cloned().unwrap();
    guard.unlock().await.unwrap();
    let bob_guard = bob.try_lock(&id).await.expect("free once released");
    assert!(bob_guard.fencing_token().cloned().unwrap() > alice_token);
    bob_guard.unlock().await.unwrap();

    // A holder that dies right before a step back leaves its lock taken for
    // its ttl plus the step.
    let dead_id = unique_key("clock_back_dead");
    let granted = store
        .acquire(AcquireRequest::new(
            &dead_id,
            "dead",
            LeaseId::random(),
            Duration::from_secs(3),
        ))
        .await
        .unwrap();
    assert!(matches!(granted, AcquireOutcome::Acquired(_)));
    server.clock().unwrap().set_offset(-60).unwrap();
    match bob.try_lock(&dead_id).await {
        Err(LockError::Taken {
            holder,
            retry_after: Some(left),
            ..
        }) => {
            assert_eq!(holder.as_deref(), Some("dead"));
            assert!(
                left > Duration::from_secs(30),
                "the 3 s lease now ends 30 s + later by the server's clock: {left:?} left"
            );
        }
        other => panic!("expected Taken with a retry time, got {other:?}"),
    }
}
