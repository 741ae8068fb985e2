//! PostgresStore under faults, against real servers: partitions and resets
//! through the fault proxy, a server restart, a killed LISTEN connection,
//! hostile configuration, garbage rows, and steps of the server's wall
//! clock.

use std::sync::Arc;
use std::time::Duration;

use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{PostgresServer, or_skip, shared_postgres};
use conformance_tests::history::{CheckOptions, EventKind, History};
use conformance_tests::register::FencedRegister;
use conformance_tests::{eventually, holder_of, unique_key};
use lock_core::{
    AcquireOutcome, AcquireRequest, LeaseId, LeaseLocker, LeaseStore, LockError, LockStatus,
    Locker, LockerOptions, Semaphore, StoreErrorKind,
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

/// A 2 s lease renewed every 500 ms, warning at 1.2 s, 250 ms per call.
fn options(owner: &str) -> LockerOptions {
    LockerOptions::builder()
        .owner(owner)
        .lease(Duration::from_secs(2))
        .heartbeat(Duration::from_millis(500))
        .warn_after(Duration::from_millis(1200))
        .store_timeout(Duration::from_millis(250))
        .build()
        .unwrap()
}

/// A 10 s lease renewed every second, 500 ms per call.
fn long_lease_options(owner: &str) -> LockerOptions {
    LockerOptions::builder()
        .owner(owner)
        .lease(Duration::from_secs(10))
        .heartbeat(Duration::from_secs(1))
        .store_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_holder_warns_then_expires_before_the_server_and_is_taken_over() {
    let Some(server) = or_skip(shared_postgres().await) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let alice = LeaseLocker::new(
        client(&server.url_via(proxy.listen_addr())).await,
        options("alice"),
    )
    .unwrap();
    let direct = client(server.url()).await;
    let bob = LeaseLocker::new(direct.clone(), options("bob")).unwrap();
    let id = unique_key("black_hole");

    let guard = alice.try_lock(&id).await.unwrap();
    let mut warnings = guard.warnings().unwrap();
    proxy.set_mode(FaultMode::BlackHole);
    let waiter = tokio::spawn({
        let id = id.clone();
        async move { bob.lock(&id, Duration::from_secs(20)).await }
    });

    assert!(warnings.recv().await.is_some(), "warned while cut off");
    assert_eq!(guard.lost().await, LockStatus::Lost);
    let expired_locally = Instant::now();
    // The server still has Alice's lease: the holder gave up first.
    assert_eq!(holder_of(&direct, &id).await.as_deref(), Some("alice"));
    let taken = waiter.await.unwrap().unwrap();
    assert!(Instant::now() > expired_locally);
    assert!(taken.fencing_token() > guard.fencing_token());
    proxy.set_mode(FaultMode::PassThrough);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_during_acquire_leaves_no_renewed_lease() {
    let Some(server) = or_skip(shared_postgres().await) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    // One connection, with the acquire statement already prepared on it,
    // so the attempt below is a single request.
    let store = PostgresStore::builder()
        .max_connections(1)
        .connect(&server.url_via(proxy.listen_addr()))
        .await
        .unwrap();
    let alice = LeaseLocker::new(store, options("alice")).unwrap();
    alice
        .try_lock(&unique_key("warm-up"))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
    let direct = client(server.url()).await;
    let id = unique_key("reset_during_acquire");

    // The request reaches the server, the reply does not; then the
    // connection is reset.
    proxy.set_mode(FaultMode::CutServerToClient);
    let attempt = tokio::spawn({
        let (alice, id) = (alice.clone(), id.clone());
        async move { alice.try_lock(&id).await }
    });
    eventually(
        Duration::from_secs(5),
        "the grant reaches the server",
        || async { holder_of(&direct, &id).await.is_some() },
    )
    .await;
    proxy.set_mode(FaultMode::Reset);
    let error = attempt.await.unwrap().unwrap_err();
    assert!(matches!(error, LockError::Store(_)), "{error:?}");
    proxy.set_mode(FaultMode::PassThrough);

    // Nobody renews the maybe-granted lease: it is gone within its ttl.
    eventually(
        Duration::from_secs(4),
        "the lease is released or expires",
        || async { holder_of(&direct, &id).await.is_none() },
    )
    .await;
    assert_eq!(alice.held_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_keeps_holders_exclusive_and_tokens_increasing() {
    let Some(mut server) = or_skip(PostgresServer::start_local().await) else {
        return;
    };
    let history = Arc::new(History::new());
    let register = Arc::new(FencedRegister::new());
    let id = unique_key("restart");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let locker =
            LeaseLocker::new(client(server.url()).await, options(&format!("w{w}"))).unwrap();
        let (history, register, id, stop) =
            (history.clone(), register.clone(), id.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = format!("w{w}");
            let mut grants = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok(guard) = locker.lock(&id, Duration::from_millis(500)).await else {
                    continue;
                };
                history.granted(&guard, &client);
                let token = guard.fencing_token().cloned().unwrap();
                let accepted = register.increment(&token).is_ok();
                history.record(
                    &guard,
                    &client,
                    EventKind::RegisterWrite { token, accepted },
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                if guard.is_expired() {
                    history.record(
                        &guard,
                        &client,
                        EventKind::Expired {
                            deadline: Duration::ZERO,
                        },
                    );
                } else {
                    history.record(&guard, &client, EventKind::Releasing);
                }
                let _ = guard.unlock().await;
                grants += 1;
            }
            grants
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = register.accepted().last().cloned();
    server.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut grants = 0;
    for worker in workers {
        grants += worker.await.unwrap();
    }
    if let Err(violation) = history.check(CheckOptions::default()) {
        panic!("{violation}");
    }
    assert!(register.rejected().is_empty());
    let after = register.accepted().last().cloned();
    assert!(
        after > before,
        "no grant after the restart ({before:?} then {after:?})"
    );
    assert!(grants > 4, "only {grants} grants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_get_the_lock_when_the_listen_connection_is_killed() {
    let Some(server) = or_skip(shared_postgres().await) else {
        return;
    };
    let alice = LeaseLocker::new(client(server.url()).await, options("alice")).unwrap();
    let waiting_store = client(server.url()).await;
    let bob = LeaseLocker::new(waiting_store.clone(), options("bob")).unwrap();
    let admin = client(server.url()).await;
    let id = unique_key("listen_killed");

    let guard = alice.try_lock(&id).await.unwrap();
    let waiter = tokio::spawn({
        let id = id.clone();
        async move { bob.lock(&id, Duration::from_secs(20)).await }
    });
    // Wait until the LISTEN connection exists, then kill it.
    let channel = waiting_store.channel().to_owned();
    let listen = format!("LISTEN \"{channel}\"");
    eventually(
        Duration::from_secs(5),
        "the LISTEN connection is up",
        || async {
            let killed: Vec<(bool,)> = sqlx::query_as(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
            )
            .bind(&listen)
            .fetch_all(admin.pool())
            .await
            .unwrap();
            killed.iter().any(|(done,)| *done)
        },
    )
    .await;
    let released = Instant::now();
    guard.unlock().await.unwrap();
    let won = waiter.await.unwrap().unwrap();
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "{:?}",
        released.elapsed()
    );
    assert!(won.fencing_token() > guard.fencing_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_table_names_are_refused_before_any_sql() {
    let Some(server) = or_skip(shared_postgres().await) else {
        return;
    };
    for table in [
        "locks; DROP TABLE users; --",
        "\"locks\"",
        "a.b.c",
        "",
        "1st",
    ] {
        let error = PostgresStore::builder()
            .table(table)
            .connect(server.url())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Invalid, "{table:?}");
        assert!(error.to_string().contains("not an identifier"), "{error}");
    }
    let error = PostgresStore::connect("postgres://user:hunter2@[::1:5432/db")
        .await
        .unwrap_err();
    assert!(
        !format!("{error} {error:?}").contains("hunter2"),
        "password leaked"
    );
    let store = PostgresStore::builder()
        .table("public.dlock_custom_table")
        .connect(server.url())
        .await
        .unwrap();
    let locker = LeaseLocker::new(store, options("alice")).unwrap();
    assert!(locker.try_lock("x").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_key_row_is_a_clear_error() {
    let Some(server) = or_skip(shared_postgres().await) else {
        return;
    };
    let store = client(server.url()).await;
    let locker = LeaseLocker::new(store.clone(), options("alice")).unwrap();
    let id = unique_key("garbage");
    // A shared holder: its limit is what a second shared request checks.
    let _guard = Semaphore::new(&locker, &id, 2).try_acquire().await.unwrap();

    sqlx::query("UPDATE dlock_leases SET holder_limit = 0 WHERE key = $1")
        .bind(&id)
        .execute(store.pool())
        .await
        .unwrap();
    let error = store.inspect(&id).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Corrupt);
    assert_eq!(error.key(), Some(id.as_str()));
    let other = LeaseLocker::new(store.clone(), options("bob")).unwrap();
    match Semaphore::new(&other, &id, 2).try_acquire().await {
        Err(LockError::Store(error)) => {
            assert_eq!(error.kind(), StoreErrorKind::Corrupt);
            assert!(error.to_string().contains("limit"), "{error}");
        }
        other => panic!("expected a Corrupt store error, got {other:?}"),
    }

    sqlx::query("UPDATE dlock_leases SET holder_limit = 1, token = -7 WHERE key = $1")
        .bind(&id)
        .execute(store.pool())
        .await
        .unwrap();
    let error = store.inspect(&id).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Corrupt);
    assert!(error.to_string().contains("-7"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_deleted_by_hand_leave_the_key_usable() {
    let Some(server) = or_skip(shared_postgres().await) else {
        return;
    };
    let store = client(server.url()).await;
    let alice = LeaseLocker::new(store.clone(), options("alice")).unwrap();
    let bob = LeaseLocker::new(store.clone(), options("bob")).unwrap();
    let id = unique_key("deleted_by_hand");
    let guard = alice.try_lock(&id).await.unwrap();

    // The key row still counts the entry an operator deleted.
    sqlx::query("DELETE FROM dlock_leases_entries WHERE key = $1")
        .bind(&id)
        .execute(store.pool())
        .await
        .unwrap();
    let taken = bob.try_lock(&id).await.expect("the key is free");
    assert!(taken.fencing_token() > guard.fencing_token());
    taken.unlock().await.unwrap();
    let again = bob.try_lock(&id).await.expect("and free again");
    again.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serializable_default_does_not_break_contended_acquires() {
    let Some(server) = or_skip(PostgresServer::start().await) else {
        return;
    };
    server
        .psql(&format!(
            "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'serializable'",
            server.database()
        ))
        .await
        .unwrap();
    let store = client(server.url()).await;
    let (level,): (String,) = sqlx::query_as("SHOW transaction_isolation")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        level, "read committed",
        "the store pins its isolation level"
    );
    let factory = move || {
        let url = server.url().to_owned();
        async move { client(&url).await }
    };
    conformance_tests::cases::concurrent_acquires_grant_exactly_one(&factory).await;
}

// The server's wall clock stepped (its own, under libfaketime): expiry
// follows `clock_timestamp()`, so a step forward ends leases early and a
// step back lengthens them; the client's deadlines are untouched.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_forward_ends_the_lease_early_and_fencing_refuses_the_old_holder() {
    let Some(server) = or_skip(PostgresServer::start_local_with_clock().await) else {
        return;
    };
    let alice = LeaseLocker::new(client(server.url()).await, long_lease_options("alice")).unwrap();
    let bob = LeaseLocker::new(client(server.url()).await, long_lease_options("bob")).unwrap();
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
    let Some(server) = or_skip(PostgresServer::start_local_with_clock().await) else {
        return;
    };
    let store = client(server.url()).await;
    let alice = LeaseLocker::new(store.clone(), long_lease_options("alice")).unwrap();
    let bob = LeaseLocker::new(client(server.url()).await, long_lease_options("bob")).unwrap();
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
