//! The etcd store's own contract beyond the shared suite: the server's
//! minimum ttl, whole-second ttls, how long a dead holder's lock outlives
//! it, garbage in lock keys, credentials kept secret, the fencing recipe,
//! and renewals that notice deleted keys.

use std::time::Duration;

use conformance_tests::harness::{EtcdServer, HarnessError, shared_etcd};
use conformance_tests::unique_key;
use etcd_client::{PutOptions, Txn, TxnOp};
use lock_core::{
    AcquireOutcome, AcquireRequest, LeaseId, LeaseLocker, LeaseStore, LockError, Locker,
    LockerOptions, ReleaseOutcome, RenewEntry, RenewOutcome, StoreErrorKind, WaitOutcome,
};
use lock_etcd::{EtcdConfig, EtcdStore};

async fn server() -> Option<&'static EtcdServer> {
    match shared_etcd().await {
        Ok(server) => Some(server),
        Err(error) => {
            eprintln!("skipped: {}", skip_reason(error));
            None
        }
    }
}

fn skip_reason(error: HarnessError) -> String {
    error.skip_reason().unwrap_or_else(|| panic!("{error}"))
}

async fn connect(server: &EtcdServer) -> EtcdStore {
    EtcdStore::connect_with(EtcdConfig::new(server.endpoints()))
        .await
        .expect("connect")
}

fn etcd_url(server: &EtcdServer) -> String {
    let addr = server.addr().expect("address");
    format!("etcd://{addr}")
}

/// etcd's minimum lease ttl is learnt when connecting and reported; a
/// locker asking for less is refused when it is built, with a message
/// giving the minimum; a lease of exactly the minimum works.
#[tokio::test]
async fn a_lease_under_the_minimum_is_refused_at_build_time() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let min = store.capabilities().min_ttl;
    assert_eq!(min, store.min_ttl());
    if !server.is_external() {
        // etcd 3.4 with default settings grants 2 s for a request of 1 s.
        assert_eq!(min, Duration::from_secs(2));
    }
    let lease = min - Duration::from_millis(500);
    let options = LockerOptions::builder()
        .lease(lease)
        .heartbeat(lease / 3)
        .store_timeout(lease / 7)
        .build()
        .expect("valid on their own");
    match LeaseLocker::new(store.clone(), options) {
        Err(LockError::InvalidConfig(message)) => {
            assert!(message.contains(&format!("{min:?}")), "{message}");
            assert!(message.contains("minimum"), "{message}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    // The default waiter ttl (two heartbeats) would be below the minimum.
    let options = LockerOptions::builder()
        .lease(min)
        .heartbeat(min / 3)
        .store_timeout(min / 7)
        .waiter_ttl(min)
        .build()
        .expect("valid");
    let locker = LeaseLocker::new(store, options).expect("the minimum is accepted");
    let guard = locker.try_lock(&unique_key("minimum")).await.expect("lock");
    guard.unlock().await.expect("unlock");
}

/// ttls are whole seconds, rounded up, and at least the minimum: that is
/// what a grant reports as applied.
#[tokio::test]
async fn applied_ttls_are_whole_seconds_rounded_up() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let min = store.min_ttl();
    for (asked, applied) in [
        (Duration::from_millis(1), min),
        (min + Duration::from_millis(1), min + Duration::from_secs(1)),
        (Duration::from_millis(4500), Duration::from_secs(5).max(min)),
    ] {
        let key = unique_key("rounding");
        let request = AcquireRequest::new(&key, "alice", LeaseId::random(), asked);
        match store.acquire(request).await.expect("acquire") {
            AcquireOutcome::Acquired(grant) => assert_eq!(grant.ttl, applied, "{asked:?}"),
            other => panic!("not granted: {other:?}"),
        }
    }
}

/// How long after a grant that is never renewed (its holder died at once)
/// the entry waiting behind it holds: not before the holder's deadline,
/// and by default within the ttl plus etcd's expiry lag; with a lease slack
/// of 1 s, about a second later. The waiter hears it from its watch (etcd
/// deletes the expired entry), with no request of its own.
#[tokio::test]
async fn a_dead_holders_lock_is_free_within_its_ttl_unless_a_slack_is_set() {
    let Some(server) = server().await else { return };
    let waiter = connect(server).await;
    let ttl = waiter.min_ttl().max(Duration::from_secs(2));
    for slack in [Duration::ZERO, Duration::from_secs(1)] {
        let config = EtcdConfig::new(server.endpoints()).lease_slack(slack);
        let dead = EtcdStore::connect_with(config).await.expect("connect");
        let key = unique_key("dead-holder");
        let started = tokio::time::Instant::now();
        let request = AcquireRequest::new(&key, "dead", LeaseId::random(), ttl);
        let AcquireOutcome::Acquired(grant) = dead.acquire(request).await.expect("acquire") else {
            panic!("the key is new");
        };
        assert_eq!(grant.ttl, ttl);
        let next = LeaseId::random();
        let request = AcquireRequest::new(&key, "next", next, ttl).queued(ttl * 10);
        let AcquireOutcome::Queued(queued) = waiter.acquire(request).await.expect("queue") else {
            panic!("the key is held");
        };
        let heard = waiter
            .wait_for_grant(&key, next, Duration::from_secs(20))
            .await;
        let taken_over = started.elapsed();
        assert_eq!(
            heard,
            WaitOutcome::Granted {
                token: queued.token
            }
        );
        assert!(
            taken_over >= ttl,
            "{slack:?}: taken over after {taken_over:?}"
        );
        // etcd revokes expired leases on a 500 ms tick.
        let bound = ttl + slack + Duration::from_millis(800);
        assert!(
            taken_over <= bound,
            "{slack:?}: taken over after {taken_over:?}, bound {bound:?}"
        );
        if !slack.is_zero() {
            assert!(
                taken_over >= ttl + slack - Duration::from_millis(100),
                "the slack keeps the lock a second longer: {taken_over:?}"
            );
        }
        waiter
            .release(&key, next, lock_core::Fencing::Enabled)
            .await
            .expect("release");
        drop(dead);
    }
}

/// A key in a lock's range holding something that is not a dlock entry
/// (nor an old lock) gives a clear Corrupt error naming the key, from
/// acquire, inspect and the locker; release leaves it alone.
#[tokio::test]
async fn garbage_in_a_lock_key_is_a_corrupt_error() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let mut client = store.client().clone();
    let key = unique_key("garbage");
    let (old_lock_key, _) = store.etcd_queue_range(&key);
    let squatter = LeaseId::random();
    for etcd_key in [old_lock_key.clone(), store.etcd_entry_key(&key, squatter)] {
        client
            .put(etcd_key.clone(), "not a lock", None)
            .await
            .expect("put");

        let request = AcquireRequest::new(&key, "alice", LeaseId::random(), store.min_ttl());
        let error = store
            .acquire(request)
            .await
            .expect_err("garbage is not free");
        assert_eq!(error.kind(), StoreErrorKind::Corrupt);
        assert_eq!(error.key(), Some(key.as_str()));
        assert!(error.to_string().contains("not a lock"), "{error}");
        eprintln!("{error}");
        assert!(!error.is_retryable());
        let error = store.inspect(&key).await.expect_err("inspect");
        assert_eq!(error.kind(), StoreErrorKind::Corrupt);

        let options = LockerOptions::builder()
            .lease(store.min_ttl() * 2)
            .build()
            .expect("options");
        let locker = LeaseLocker::new(store.clone(), options).expect("locker");
        match locker.try_lock(&key).await {
            Err(LockError::Store(error)) => assert_eq!(error.kind(), StoreErrorKind::Corrupt),
            other => panic!("expected a Corrupt store error, got {other:?}"),
        }
        let released = store
            .release(&key, LeaseId::random(), lock_core::Fencing::Enabled)
            .await
            .expect("release");
        assert_eq!(released, ReleaseOutcome::NotHeld);
        client.delete(etcd_key, None).await.expect("delete");
    }

    // A dlock value without an etcd lease would never expire: also Corrupt.
    let value = format!("dlock1:{}:mallory", LeaseId::random());
    client
        .put(old_lock_key.clone(), value, Some(PutOptions::new()))
        .await
        .expect("put");
    let request = AcquireRequest::new(&key, "alice", LeaseId::random(), store.min_ttl());
    let error = store.acquire(request).await.expect_err("no lease");
    assert_eq!(error.kind(), StoreErrorKind::Corrupt);
    assert!(error.to_string().contains("never expire"), "{error}");
    client.delete(old_lock_key, None).await.expect("delete");
}

/// Passwords never show in errors or `Debug`, even when the server refuses
/// the connection.
#[tokio::test]
async fn credentials_stay_out_of_errors_and_debug() {
    let Some(server) = server().await else { return };
    let addr = server.addr().expect("address");
    // The test server has authentication disabled, so authenticating fails.
    let url = format!("etcd://dlock:hunter2-secret@{addr}");
    let config = EtcdConfig::from_url(&url).expect("parses");
    assert!(!format!("{config:?}").contains("hunter2"));
    match EtcdStore::connect(&url).await {
        Ok(store) => assert!(!format!("{store:?}").contains("hunter2")),
        Err(error) => {
            let shown = format!("{error} {error:?}");
            eprintln!("connecting with refused credentials: {error}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }
    let store = EtcdStore::connect(&etcd_url(server))
        .await
        .expect("connect");
    assert!(!format!("{store:?}").contains("hunter2"));
}

/// The fencing recipe: a write conditional on the entry's create revision
/// commits while the grant holds and fails once the lock was released and
/// granted again.
#[tokio::test]
async fn fenced_etcd_writes_fail_after_the_lock_moved_on() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let options = LockerOptions::builder()
        .lease(store.min_ttl() * 2)
        .build()
        .expect("options");
    let locker = LeaseLocker::new(store.clone(), options).expect("locker");
    let id = unique_key("fenced");
    let data = format!("{id}/data");
    let mut client = store.client().clone();

    let first = locker.try_lock(&id).await.expect("lock");
    let first_token = first.fencing_token().cloned().expect("token");
    let write = |guard: &lock_core::LockGuard, token: &lock_core::FencingToken, body: &str| {
        Txn::new()
            .when([store
                .fence_compare(&id, guard.lease_id(), token)
                .expect("fits")])
            .and_then([TxnOp::put(data.clone(), body, None)])
    };
    let reply = client
        .txn(write(&first, &first_token, "first"))
        .await
        .expect("txn");
    assert!(reply.succeeded(), "the holder's write commits");
    first.unlock().await.expect("unlock");

    let second = locker.try_lock(&id).await.expect("lock again");
    let second_token = second.fencing_token().cloned().expect("token");
    assert!(second_token > first_token);
    let stale = client
        .txn(write(&first, &first_token, "stale"))
        .await
        .expect("txn");
    assert!(!stale.succeeded(), "a stale holder's write is refused");
    let fresh = client
        .txn(write(&second, &second_token, "second"))
        .await
        .expect("txn");
    assert!(fresh.succeeded());
    let stored = client.get(data.clone(), None).await.expect("get");
    assert_eq!(stored.kvs()[0].value(), b"second");
    second.unlock().await.expect("unlock");
    client.delete(data, None).await.expect("delete");
}

/// One renewal call answers many locks at once, and notices a key deleted
/// behind its back (through another client) while the etcd lease lives.
#[tokio::test]
async fn a_renewal_notices_keys_deleted_behind_its_back() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let other = connect(server).await;
    let ttl = store.min_ttl() * 5;
    let base = unique_key("deleted_behind");
    let mut held = Vec::new();
    for i in 0..500 {
        let key = format!("{base}/{i}");
        let lease_id = LeaseId::random();
        let request = AcquireRequest::new(&key, "alice", lease_id, ttl);
        assert!(matches!(
            store.acquire(request).await.expect("acquire"),
            AcquireOutcome::Acquired(_)
        ));
        held.push((key, lease_id));
    }
    assert_eq!(store.tracked_locks(), 500);
    // Another client releases two of them with their lease ids.
    for (key, lease_id) in [&held[3], &held[400]] {
        let outcome = other
            .release(key, *lease_id, lock_core::Fencing::Enabled)
            .await
            .expect("release");
        assert_eq!(outcome, ReleaseOutcome::Released);
    }
    let entries: Vec<RenewEntry<'_>> = held
        .iter()
        .map(|(key, lease_id)| RenewEntry::held(key, *lease_id))
        .collect();
    let outcomes = store.renew(&entries, ttl).await.expect("renew");
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 3 || i == 400 {
            assert_eq!(*outcome, RenewOutcome::Lost, "entry {i}");
        } else {
            assert!(
                matches!(outcome, RenewOutcome::Renewed { .. }),
                "entry {i}: {outcome:?}"
            );
        }
    }
    assert_eq!(store.tracked_locks(), 498);
    for (key, lease_id) in &held {
        store
            .release(key, *lease_id, lock_core::Fencing::Enabled)
            .await
            .expect("release");
    }
    assert_eq!(store.tracked_locks(), 0);
}
