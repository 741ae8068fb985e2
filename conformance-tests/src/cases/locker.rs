//! Cases for `Locker` and `LockGuard` on top of the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lock_core::{Fencing, LeaseLocker, LeaseStore, LockError, LockStatus, Locker, LockerOptions};
use tokio::time::Instant;

use crate::faulty::FaultyStore;
use crate::support::{StoreFactory, eventually, holder_of, locker, locker_options, unique_key};

/// A second locker is told who holds the lock and for how long; the same
/// locker is refused too (no reentrancy).
pub async fn locker_try_lock_reports_the_holder<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let id = unique_key("locker_try_lock_reports_the_holder");
    let _guard = alice.try_lock(&id).await.unwrap();
    for locker in [&bob, &alice] {
        match locker.try_lock(&id).await {
            Err(LockError::Taken {
                holder,
                retry_after,
                ..
            }) => {
                assert_eq!(holder.as_deref(), Some("alice"));
                if let Some(left) = retry_after {
                    assert!(left <= alice.options().lease() * 2, "{left:?}");
                }
            }
            other => panic!("expected Taken, got {other:?}"),
        }
    }
}

/// A waiting `lock()` gets the lock soon after the holder releases it, with
/// a larger token.
pub async fn locker_lock_waits_for_a_release<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let id = unique_key("locker_lock_waits_for_a_release");
    let guard = alice.try_lock(&id).await.unwrap();
    let first = guard.fencing_token().cloned();
    let waiter = tokio::spawn({
        let id = id.clone();
        async move { bob.lock(&id, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    guard.unlock().await.unwrap();
    let won = waiter.await.expect("waiter task").unwrap();
    let handoff = released.elapsed();
    assert!(
        handoff < Duration::from_millis(1500),
        "handoff took {handoff:?}"
    );
    assert!(won.fencing_token().cloned() > first);
}

/// `lock()` gives up after `max_wait` with Timeout naming the holder.
pub async fn locker_lock_times_out_naming_the_holder<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let id = unique_key("locker_lock_times_out_naming_the_holder");
    let _guard = alice.try_lock(&id).await.unwrap();
    let max_wait = Duration::from_millis(700);
    let start = Instant::now();
    match bob.lock(&id, max_wait).await {
        Err(LockError::Timeout { holder, waited, .. }) => {
            assert_eq!(holder.as_deref(), Some("alice"));
            assert!(waited >= max_wait, "{waited:?}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let took = start.elapsed();
    assert!(took < max_wait + Duration::from_secs(1), "{took:?}");
}

/// Heartbeats keep a lock held for several lease times.
pub async fn locker_heartbeat_keeps_a_lock_past_its_lease<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let id = unique_key("locker_heartbeat_keeps_a_lock_past_its_lease");
    let guard = alice.try_lock(&id).await.unwrap();
    let lease = alice.options().lease();
    let until = Instant::now() + lease * 5 / 2;
    while Instant::now() < until {
        tokio::time::sleep(lease / 4).await;
        assert!(!guard.is_expired());
        assert!(matches!(
            bob.try_lock(&id).await,
            Err(LockError::Taken { .. })
        ));
    }
    assert_eq!(*guard.status().borrow(), LockStatus::Held);
}

/// When the store no longer has the lease, the holder learns it at the next
/// renewal, before its local deadline.
pub async fn locker_detects_a_lost_lease_at_the_next_renewal<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let store = factory.connect().await;
    let id = unique_key("locker_detects_a_lost_lease_at_the_next_renewal");
    let guard = alice.try_lock(&id).await.unwrap();
    let deadline = guard.valid_until().expect("live");
    store
        .release(guard.key(), guard.lease_id(), Fencing::Enabled)
        .await
        .unwrap();
    let limit = alice.options().heartbeat() + alice.options().store_timeout() * 2;
    let status = tokio::time::timeout(limit, guard.lost()).await;
    assert_eq!(status, Ok(LockStatus::Lost), "not noticed within {limit:?}");
    assert!(Instant::now() < deadline, "noticed only at the deadline");
    assert!(guard.is_expired());
}

/// Dropping a guard releases the lock in the background, long before its
/// lease would end.
pub async fn locker_dropping_a_guard_releases_it<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let store = factory.connect().await;
    let id = unique_key("locker_dropping_a_guard_releases_it");
    let guard = alice.try_lock(&id).await.unwrap();
    drop(guard);
    let limit = alice.options().lease() / 2;
    eventually(limit, "the dropped guard's lease is released", || async {
        holder_of(&store, &id).await.is_none()
    })
    .await;
}

/// Close releases every lock, and later acquisitions fail with Closed.
pub async fn locker_close_releases_every_lock<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let store = factory.connect().await;
    let base = unique_key("locker_close_releases_every_lock");
    let mut guards = Vec::new();
    for i in 0..5 {
        guards.push(alice.try_lock(&format!("{base}/{i}")).await.unwrap());
    }
    alice.close().await.unwrap();
    for guard in &guards {
        assert!(guard.is_expired());
        assert_eq!(
            holder_of(&store, guard.key()).await,
            None,
            "{}",
            guard.key()
        );
    }
    assert!(matches!(
        alice.try_lock(&base).await,
        Err(LockError::Closed)
    ));
}

/// `lock()` calls cancelled at random points, while waiting or in the
/// middle of an acquisition, never leave a lease held and renewed.
pub async fn locker_cancelled_lock_calls_leave_no_renewed_lease<F: StoreFactory>(factory: &F) {
    let holder = locker(factory, "holder").await;
    let waiter = locker(factory, "waiter").await;
    let store = factory.connect().await;
    let base = unique_key("locker_cancelled_lock_calls_leave_no_renewed_lease");
    let mut keys = Vec::new();
    for round in 0..12 {
        let key = format!("{base}/{round}");
        let held = holder.try_lock(&key).await.unwrap();
        let cut = Duration::from_micros(rand::random_range(0..40_000));
        let release_at = Duration::from_micros(rand::random_range(0..40_000));
        let wait = tokio::time::timeout(cut, waiter.lock(&key, Duration::from_secs(30)));
        let release = async {
            tokio::time::sleep(release_at).await;
            held.unlock().await.unwrap();
        };
        if let (Ok(won), ()) = tokio::join!(wait, release) {
            won.unwrap().unlock().await.unwrap();
        }
        keys.push(key);
    }
    let limit = waiter.options().lease();
    eventually(limit, "no lease left behind", || async {
        for key in &keys {
            if holder_of(&store, key).await.is_some() {
                return false;
            }
        }
        waiter.held_count() == 0
    })
    .await;
}

/// A lease below the store's minimum ttl is refused when the locker is
/// made, with a message giving the minimum.
pub async fn locker_rejects_a_lease_below_the_store_minimum<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let min = store.capabilities().min_ttl;
    let lease = min / 2;
    let options = LockerOptions::builder()
        .lease(lease)
        .heartbeat(lease / 3)
        .store_timeout(lease / 7)
        .margin(Duration::ZERO)
        .build()
        .expect("valid on their own");
    match LeaseLocker::new(store, options) {
        Err(LockError::InvalidConfig(message)) => {
            assert!(message.contains(&format!("{min:?}")), "{message}");
        }
        Ok(_) => panic!("a lease of {lease:?} was accepted below the minimum {min:?}"),
        Err(other) => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// Waiters still get the lock, by re-polling, when every notification is
/// lost.
pub async fn locker_waiters_acquire_when_notifications_are_lost<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let deaf = FaultyStore::new(factory.connect().await);
    deaf.deaf.store(true, Ordering::SeqCst);
    let caps = deaf.capabilities();
    let bob = LeaseLocker::new(deaf, locker_options(&caps, "bob")).unwrap();
    let id = unique_key("locker_waiters_acquire_when_notifications_are_lost");
    let guard = alice.try_lock(&id).await.unwrap();
    let waiter = tokio::spawn({
        let id = id.clone();
        async move { bob.lock(&id, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let released = Instant::now();
    guard.unlock().await.unwrap();
    waiter.await.expect("waiter task").unwrap();
    // Re-polls back off to at most a second.
    assert!(
        released.elapsed() < Duration::from_millis(2500),
        "{:?}",
        released.elapsed()
    );
}

/// A holder cut off from the store warns at `warn_after`, expires at its
/// local deadline while the store still has the lease, and another client
/// gets the lock only once the store expired it.
pub async fn locker_cut_off_holder_warns_then_expires_before_the_store<F: StoreFactory>(
    factory: &F,
) {
    let cut = std::sync::Arc::new(FaultyStore::new(factory.connect().await));
    let caps = cut.capabilities();
    let alice = LeaseLocker::from_arc(cut.clone(), locker_options(&caps, "alice")).unwrap();
    let bob = locker(factory, "bob").await;
    let id = unique_key("locker_cut_off_holder_warns_then_expires_before_the_store");
    let acquired = Instant::now();
    let guard = alice.try_lock(&id).await.unwrap();
    let mut warnings = guard.warnings().expect("warnings are on");
    cut.set_cut(true);

    assert_eq!(warnings.recv().await.as_deref(), Some(id.as_str()));
    assert!(acquired.elapsed() >= alice.options().warn_after());
    assert_eq!(guard.lost().await, LockStatus::Lost);
    let expired = Instant::now();
    // The store must still hold the lease: the holder gave up first.
    let holder = cut.inspect(&id).await.unwrap().and_then(|info| info.holder);
    assert_eq!(
        holder.map(|h| h.owner).as_deref(),
        Some("alice"),
        "store expired first"
    );
    let taken = bob.lock(&id, Duration::from_secs(30)).await.unwrap();
    assert!(
        Instant::now() > expired,
        "taken over before the holder expired"
    );
    assert!(taken.fencing_token() > guard.fencing_token());
}

/// A holder whose lock was lost and taken over unlocks without freeing the
/// new holder's lock.
pub async fn locker_stale_unlock_leaves_the_new_holder<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let store = factory.connect().await;
    let id = unique_key("locker_stale_unlock_leaves_the_new_holder");
    let stale = alice.try_lock(&id).await.unwrap();
    // The lease disappears from the store (as after an expiry) and Bob takes it.
    store
        .release(stale.key(), stale.lease_id(), Fencing::Enabled)
        .await
        .unwrap();
    let fresh = bob.lock(&id, Duration::from_secs(10)).await.unwrap();
    stale.unlock().await.unwrap();
    assert_eq!(holder_of(&store, &id).await.as_deref(), Some("bob"));
    assert!(!fresh.is_expired());
}
