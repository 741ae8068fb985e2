//! Cases for fair waiting through the locker: `lock()` lines up in the
//! store's queue, is handed the lock without asking again, and leaves no
//! entry behind when it gives up.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{LeaseLocker, LeaseStore, LockError, Locker};
use tokio::time::Instant;

use crate::cases::queue::enqueue;
use crate::faulty::FaultyStore;
use crate::support::{
    StoreFactory, eventually, expiry_slack, locker, locker_options, round_up, unique_key,
};

/// How long waits that should succeed may take: long enough for a loaded
/// machine, short enough that a store which stalls fails in good time.
const LONG_WAIT: Duration = Duration::from_secs(15);

/// How many entries wait on `key`.
async fn waiting<S: LeaseStore>(store: &S, key: &str) -> usize {
    store
        .inspect(key)
        .await
        .unwrap_or_else(|error| panic!("inspect {key:?} failed: {error}"))
        .map_or(0, |info| info.waiting)
}

/// Waiters from several lockers get the lock in the order they asked, with
/// tokens increasing in that order.
pub async fn locker_waiters_are_granted_in_arrival_order<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let holder = locker(factory, "holder").await;
    let id = unique_key("locker_waiters_are_granted_in_arrival_order");
    let guard = holder.try_lock(&id).await.unwrap();
    let granted = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let locker = locker(factory, &format!("waiter-{i}")).await;
        let (key, granted) = (id.clone(), granted.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locker.lock(&key, LONG_WAIT).await.unwrap();
            let token = guard.fencing_token().cloned();
            granted.lock().unwrap().push((i, token));
            tokio::time::sleep(Duration::from_millis(20)).await;
            guard.unlock().await.unwrap();
        }));
        eventually(Duration::from_secs(10), "the waiter is in line", || async {
            waiting(&store, &id).await == i + 1
        })
        .await;
    }
    guard.unlock().await.unwrap();
    for waiter in waiters {
        waiter.await.expect("waiter task");
    }
    let granted = granted.lock().unwrap().clone();
    let order: Vec<usize> = granted.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, [0, 1, 2, 3, 4], "grants out of arrival order");
    assert!(
        granted.windows(2).all(|pair| pair[0].1 < pair[1].1),
        "tokens do not increase in grant order: {granted:?}"
    );
}

/// The holder that unlocks and asks again goes behind the one waiting, and
/// `try_lock` meanwhile is refused: a key with waiters is not free.
pub async fn locker_releasing_holder_goes_behind_the_waiters<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let carol = locker(factory, "carol").await;
    let id = unique_key("locker_releasing_holder_goes_behind_the_waiters");
    let first = alice.try_lock(&id).await.unwrap();
    let waiter = tokio::spawn({
        let id = id.clone();
        async move {
            let guard = bob.lock(&id, LONG_WAIT).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Before the unlock: a store may tell the next waiter before it
            // answers the release itself.
            let unlocking = Instant::now();
            guard.unlock().await.unwrap();
            unlocking
        }
    });
    eventually(Duration::from_secs(10), "bob is in line", || async {
        waiting(&store, &id).await == 1
    })
    .await;
    first.unlock().await.unwrap();
    let again = alice.lock(&id, LONG_WAIT).await.unwrap();
    let alice_again = Instant::now();
    let bob_unlocking = waiter.await.expect("waiter task");
    assert!(
        alice_again >= bob_unlocking,
        "alice got the lock back before bob had his turn"
    );
    match carol.try_lock(&id).await {
        Err(LockError::Taken { holder, .. }) => assert_eq!(holder.as_deref(), Some("alice")),
        other => panic!("expected Taken, got {other:?}"),
    }
    assert!(again.fencing_token() > first.fencing_token());
}

/// A waiter is handed the lock by the store: it makes no acquisition after
/// the one that put it in line.
pub async fn locker_promoted_waiter_makes_no_acquire_call<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let counting = Arc::new(FaultyStore::new(factory.connect().await));
    let caps = counting.capabilities();
    let bob = LeaseLocker::from_arc(counting.clone(), locker_options(&caps, "bob")).unwrap();
    let id = unique_key("locker_promoted_waiter_makes_no_acquire_call");
    let guard = alice.try_lock(&id).await.unwrap();
    let waiter = tokio::spawn({
        let id = id.clone();
        async move { bob.lock(&id, LONG_WAIT).await }
    });
    eventually(Duration::from_secs(10), "bob is in line", || async {
        waiting(&*counting, &id).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    guard.unlock().await.unwrap();
    let won = waiter.await.expect("waiter task").unwrap();
    assert!(won.fencing_token() > guard.fencing_token());
    assert_eq!(
        counting.acquire_calls.load(Ordering::SeqCst),
        1,
        "the promoted waiter asked again"
    );
    if caps.native_wait {
        let handoff = released.elapsed();
        assert!(handoff < Duration::from_secs(1), "handoff took {handoff:?}");
    }
}

/// A `lock()` that times out, and one that is cancelled while waiting,
/// leave no entry in the queue.
pub async fn locker_abandoned_waits_leave_no_entry<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let id = unique_key("locker_abandoned_waits_leave_no_entry");
    let guard = alice.try_lock(&id).await.unwrap();
    match bob.lock(&id, Duration::from_millis(500)).await {
        Err(LockError::Timeout { holder, .. }) => assert_eq!(holder.as_deref(), Some("alice")),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(
        waiting(&store, &id).await,
        0,
        "a timed-out wait left its entry"
    );
    let cancelled = tokio::spawn({
        let id = id.clone();
        async move { bob.lock(&id, LONG_WAIT).await }
    });
    eventually(Duration::from_secs(10), "bob is in line", || async {
        waiting(&store, &id).await == 1
    })
    .await;
    cancelled.abort();
    let limit = alice.options().store_timeout() * 4 + Duration::from_secs(1);
    eventually(limit, "the cancelled wait's entry is removed", || async {
        waiting(&store, &id).await == 0
    })
    .await;
    guard.unlock().await.unwrap();
    let carol = locker(factory, "carol").await;
    carol.try_lock(&id).await.expect("the key is free");
}

/// A waiter whose process died delays the queue by at most its waiter ttl,
/// even when the holder's release promotes it.
pub async fn locker_dead_waiter_delays_the_queue_by_at_most_its_waiter_ttl<F: StoreFactory>(
    factory: &F,
) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let id = unique_key("locker_dead_waiter_delays_the_queue_by_at_most_its_waiter_ttl");
    let guard = alice.try_lock(&id).await.unwrap();
    let waiter_ttl = alice.options().waiter_ttl();
    let dead_since = Instant::now();
    let (_, dead) = enqueue(&store, &id, "dead", alice.options().lease(), waiter_ttl).await;
    // Against the requested waiter ttl (rounded up to the store's
    // granularity), not what the store claims to apply.
    let limit = round_up(waiter_ttl, caps.ttl_granularity) + expiry_slack(&caps);
    let waiter = tokio::spawn({
        let id = id.clone();
        async move { bob.lock(&id, limit).await }
    });
    eventually(Duration::from_secs(10), "bob is in line", || async {
        waiting(&store, &id).await == 2
    })
    .await;
    guard.unlock().await.unwrap();
    let won = waiter.await.expect("waiter task");
    let took = dead_since.elapsed();
    assert!(
        won.is_ok(),
        "bob waited {took:?} behind a dead waiter: {won:?}"
    );
    assert!(took < limit, "bob waited {took:?} behind a dead waiter");
    assert!(
        took >= dead.ttl.mul_f64(0.99),
        "the dead entry ended early: {took:?}"
    );
}

/// Waiting entries renew in the held locks' batches: one locker holding
/// some locks and waiting for others makes one renewal call per heartbeat
/// for all of them.
pub async fn locker_waiting_entries_ride_the_renewal_batch<F: StoreFactory>(factory: &F) {
    let other = locker(factory, "other").await;
    let counting = Arc::new(FaultyStore::new(factory.connect().await));
    let caps = counting.capabilities();
    let options = locker_options(&caps, "me");
    let heartbeat = options.heartbeat();
    let me = LeaseLocker::from_arc(counting.clone(), options).unwrap();
    let base = unique_key("locker_waiting_entries_ride_the_renewal_batch");
    let mut held = Vec::new();
    let mut blockers = Vec::new();
    let mut waits = Vec::new();
    for i in 0..8 {
        held.push(me.try_lock(&format!("{base}/held/{i}")).await.unwrap());
        let key = format!("{base}/waited/{i}");
        blockers.push(other.try_lock(&key).await.unwrap());
        let me = me.clone();
        waits.push(tokio::spawn(async move { me.lock(&key, LONG_WAIT).await }));
    }
    eventually(Duration::from_secs(10), "every wait is in line", || async {
        me.held_count() == 8 && me.waiting_count() == 8
    })
    .await;
    let before = counting.renew_sizes().len();
    tokio::time::sleep(heartbeat * 3).await;
    let sizes = counting.renew_sizes()[before..].to_vec();
    // Rounds carry every entry, held and waiting alike; a waiting call's
    // own polls (single entries) come on top.
    let rounds: Vec<usize> = sizes.iter().copied().filter(|size| *size > 1).collect();
    let batch = 16.min(caps.max_batch);
    assert!(
        (2..=4).contains(&(rounds.len() / 16usize.div_ceil(caps.max_batch))),
        "renewal calls in three heartbeats: {sizes:?}"
    );
    assert!(
        rounds.iter().all(|size| *size == batch || 16 % batch != 0),
        "{sizes:?}"
    );
    if caps.native_wait {
        let polls = sizes.len() - rounds.len();
        assert!(
            polls <= 3 * 8,
            "{polls} polls by 8 waits in three heartbeats: {sizes:?}"
        );
    }
    for wait in &waits {
        assert!(!wait.is_finished());
    }
    drop(blockers);
    for wait in waits {
        wait.await
            .expect("wait task")
            .expect("granted once released");
    }
}
