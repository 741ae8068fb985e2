//! How `lock()` waits in line, on MemoryStore with tokio's paused time: the
//! store's notification, the renewal round as the fallback, entries that
//! expire while waiting, timeouts, close, and the deadline of a lock handed
//! over by the store.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{FaultyStore, holder_of, locker};
use lock_core::{
    AcquireRequest, LeaseId, LeaseStore, LockError, LockKind, Locker, MemoryStore, RwLock,
    Semaphore,
};
use tokio::time::{Instant, sleep};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

async fn waiting(store: &impl LeaseStore, key: &str) -> usize {
    store
        .inspect(key)
        .await
        .unwrap()
        .map_or(0, |info| info.waiting)
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order_and_ask_the_store_once() {
    let store = FaultyStore::new(MemoryStore::new());
    let holder = locker(store.clone(), "holder");
    let guard = holder.try_lock("job").await.unwrap();
    let mut waiters = Vec::new();
    for i in 0..4u64 {
        let waiter = locker(store.clone(), &format!("w{i}"));
        waiters.push(tokio::spawn(async move {
            let guard = waiter.lock("job", 30 * SEC).await.unwrap();
            let token = guard.fencing_token().and_then(|t| t.to_u64());
            sleep(100 * MS).await;
            guard.unlock().await.unwrap();
            (Instant::now(), token)
        }));
        sleep(MS).await;
    }
    let acquires = store.acquire_calls.load(Ordering::SeqCst);
    guard.unlock().await.unwrap();
    let start = Instant::now();
    let mut done = Vec::new();
    for waiter in waiters {
        done.push(waiter.await.unwrap());
    }
    // Each handed over at the previous one's release, in arrival order.
    for (i, (at, token)) in done.iter().enumerate() {
        assert_eq!(*at - start, 100 * MS * (u32::try_from(i).unwrap() + 1));
        assert_eq!(*token, Some(2 + u64::try_from(i).unwrap()));
    }
    assert_eq!(store.acquire_calls.load(Ordering::SeqCst), acquires);
}

#[tokio::test(start_paused = true)]
async fn a_lost_notification_costs_at_most_a_heartbeat() {
    let store = FaultyStore::new(MemoryStore::new());
    store.lose_notifications.store(true, Ordering::SeqCst);
    let a = locker(store.clone(), "a");
    let b = locker(store.clone(), "b");
    let guard = a.try_lock("job").await.unwrap();
    let waiter = tokio::spawn(async move { b.lock("job", 30 * SEC).await });
    sleep(1500 * MS).await;
    guard.unlock().await.unwrap();
    let released = Instant::now();
    let won = waiter.await.unwrap().unwrap();
    // The waiter learns it at its locker's next renewal round.
    assert!(released.elapsed() <= SEC, "{:?}", released.elapsed());
    assert!(!won.is_expired());
}

#[tokio::test(start_paused = true)]
async fn a_lock_handed_over_by_notification_lasts_from_the_entrys_last_renewal() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let b = locker(store.clone(), "b");
    let guard = a.try_lock("job").await.unwrap();
    let queued_at = Instant::now();
    let waiter = tokio::spawn(async move {
        let guard = b.lock("job", 30 * SEC).await.unwrap();
        (guard, b)
    });
    sleep(500 * MS).await;
    guard.unlock().await.unwrap();
    let (won, b) = waiter.await.unwrap();
    // Waiter ttl 2 s (two heartbeats), counted from the queueing request:
    // 2 s * 0.99 - 5 ms.
    let waiter_ttl = b.options().waiter_ttl();
    assert_eq!(waiter_ttl, 2 * SEC);
    assert_eq!(
        won.valid_until(),
        Some(queued_at + Duration::from_millis(1975))
    );
    // The next round renews it as held: the full lease from then on.
    sleep(SEC).await;
    let until = won.valid_until().unwrap();
    assert!(
        until >= Instant::now() + 2 * SEC,
        "{:?}",
        until - Instant::now()
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_entry_that_expired_lines_up_again() {
    let store = FaultyStore::new(MemoryStore::new());
    let a = locker(store.clone(), "a");
    let b = locker(store.clone(), "b");
    let guard = a.try_lock("job").await.unwrap();
    let waiter = tokio::spawn(async move { b.lock("job", 30 * SEC).await });
    sleep(10 * MS).await;
    // B's renewals fail long enough for its waiting entry to expire (A's
    // renewals fail too, so A's lock goes as well).
    store.fail_renew.store(true, Ordering::SeqCst);
    sleep(5 * SEC).await;
    assert!(guard.is_expired());
    store.fail_renew.store(false, Ordering::SeqCst);
    let won = waiter.await.unwrap().unwrap();
    assert!(!won.is_expired());
    assert_eq!(holder_of(&*store, "job").await.as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_wait_removes_its_entry_before_returning() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let b = locker(store.clone(), "b");
    let guard = a.try_lock("job").await.unwrap();
    assert!(matches!(
        b.lock("job", 2 * SEC).await,
        Err(LockError::Timeout { .. })
    ));
    assert_eq!(waiting(&store, "job").await, 0);
    assert_eq!(b.waiting_count(), 0);
    guard.unlock().await.unwrap();
    assert_eq!(holder_of(&store, "job").await, None);
}

#[tokio::test(start_paused = true)]
async fn closing_the_locker_ends_its_waits() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let b = locker(store.clone(), "b");
    let _guard = a.try_lock("job").await.unwrap();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.lock("job", 30 * SEC).await }
    });
    sleep(10 * MS).await;
    assert_eq!(waiting(&store, "job").await, 1);
    b.close().await.unwrap();
    assert!(matches!(waiter.await.unwrap(), Err(LockError::Closed)));
    assert_eq!(waiting(&store, "job").await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dead_waiter_ahead_is_skipped_after_its_waiter_ttl() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let b = locker(store.clone(), "b");
    let guard = a.try_lock("job").await.unwrap();
    // A waiter that died right after queueing: nobody renews its entry.
    store
        .acquire(AcquireRequest::new("job", "dead", LeaseId::random(), 3 * SEC).queued(2 * SEC))
        .await
        .unwrap();
    let start = Instant::now();
    let waiter = tokio::spawn(async move { b.lock("job", 30 * SEC).await });
    sleep(100 * MS).await;
    guard.unlock().await.unwrap();
    waiter.await.unwrap().unwrap();
    // Promoted at the release, the dead entry keeps its waiter expiry.
    let waited = start.elapsed();
    assert!(
        waited >= 2 * SEC && waited <= 2 * SEC + 5 * MS,
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn semaphores_and_rw_locks_share_one_queue_per_id() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let b = locker(store.clone(), "b");
    let slots = Semaphore::new(&a, "slots", 2);
    let one = slots.try_acquire().await.unwrap();
    let _two = slots.try_acquire().await.unwrap();
    assert!(matches!(
        slots.try_acquire().await,
        Err(LockError::Taken { .. })
    ));
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { Semaphore::new(&b, "slots", 2).acquire(30 * SEC).await }
    });
    sleep(10 * MS).await;
    one.unlock().await.unwrap();
    let three = waiter.await.unwrap().unwrap();
    assert!(three.fencing_token() > one.fencing_token());

    let rw = RwLock::new(&a, "rw");
    let reader = rw.try_read().await.unwrap();
    let writer = tokio::spawn({
        let b = b.clone();
        async move { RwLock::new(&b, "rw").write(30 * SEC).await }
    });
    sleep(10 * MS).await;
    // A waiting writer keeps later readers out.
    assert!(matches!(rw.try_read().await, Err(LockError::Taken { .. })));
    reader.unlock().await.unwrap();
    let writer = writer.await.unwrap().unwrap();
    // A mutex on the id is the writer side: taken while the writer holds.
    assert!(matches!(
        a.try_acquire("rw", LockKind::Exclusive).await,
        Err(LockError::Taken { .. })
    ));
    writer.unlock().await.unwrap();
    let _reader = rw.try_read().await.unwrap();
    assert!(matches!(
        a.try_acquire("rw", LockKind::Permit { permits: 2 }).await,
        Err(LockError::LimitMismatch { .. })
    ));
    assert!(matches!(
        a.try_acquire("x", LockKind::Permit { permits: 0 }).await,
        Err(LockError::InvalidConfig(_))
    ));
}
