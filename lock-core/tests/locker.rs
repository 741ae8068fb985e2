//! The generic locker's behaviour on MemoryStore, with tokio's paused time:
//! every duration below is exact virtual time, never a wall-clock wait.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{FaultyStore, holder_of, locker, paused_boot_clock, short_options};
use lock_core::{
    AcquireRequest, Capabilities, LeaseId, LeaseLocker, LeaseStore, Lock, LockError, LockStatus,
    Locker, LockerOptions, MemoryStore,
};
use tokio::time::{Instant, sleep};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// The local deadline of the short options: 3 s * 0.99 - 5 ms.
const DEADLINE: Duration = Duration::from_millis(2965);

#[tokio::test(start_paused = true)]
async fn acquire_grants_a_live_fenced_lock() {
    let store = MemoryStore::new();
    let locker = locker(store.clone(), "a");
    let start = Instant::now();
    let guard = locker.try_lock("job").await.unwrap();
    assert_eq!(guard.id(), "job");
    assert!(!guard.is_expired());
    assert_eq!(*guard.status().borrow(), LockStatus::Held);
    assert_eq!(guard.fencing_token().and_then(|t| t.to_u64()), Some(1));
    assert_eq!(guard.valid_until(), Some(start + DEADLINE));
    assert_eq!(holder_of(&store, "job").await.as_deref(), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn taken_by_another_locker_reports_holder_and_retry_after() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let b = locker(store, "b");
    let _guard = a.try_lock("job").await.unwrap();
    sleep(Duration::from_millis(400)).await;
    match b.try_lock("job").await {
        Err(LockError::Taken {
            id,
            holder,
            retry_after,
        }) => {
            assert_eq!(id, "job");
            assert_eq!(holder.as_deref(), Some("a"));
            assert_eq!(retry_after, Some(Duration::from_millis(2600)));
        }
        other => panic!("expected Taken, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn taken_by_the_same_locker_is_not_reentrant() {
    let locker = locker(MemoryStore::new(), "a");
    let _guard = locker.try_lock("job").await.unwrap();
    let error = locker.try_lock("job").await.unwrap_err();
    assert!(
        matches!(&error, LockError::Taken { holder: Some(h), .. } if h == "a"),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_a_lock_alive_for_many_leases() {
    let store = FaultyStore::new(MemoryStore::new());
    let locker = locker(store.clone(), "a");
    let guard = locker.try_lock("job").await.unwrap();
    let mut warnings = guard.warnings().unwrap();
    let start = Instant::now();
    // Ten leases long, checking twice a second, ending between two renewals.
    while start.elapsed() < 30 * SEC + Duration::from_millis(500) {
        sleep(Duration::from_millis(500)).await;
        assert!(!guard.is_expired(), "expired after {:?}", start.elapsed());
        assert_eq!(*guard.status().borrow(), LockStatus::Held);
        assert_eq!(holder_of(&store.inner, "job").await.as_deref(), Some("a"));
    }
    assert_eq!(warnings.try_recv(), None, "a healthy lock never warns");
    assert_eq!(store.renew_calls(), 30, "one renewal per heartbeat");
    assert!(guard.valid_until().unwrap() > Instant::now() + 2 * SEC);
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_warn_then_expire_locally_before_the_store_does() {
    let store = FaultyStore::new(MemoryStore::new());
    let locker = locker(store.clone(), "a");
    let start = Instant::now();
    let guard = locker.try_lock("job").await.unwrap();
    // A partition: nothing gets through to the store.
    store.fail_renew.store(true, Ordering::SeqCst);
    store.fail_release.store(true, Ordering::SeqCst);
    let mut warnings = guard.warnings().unwrap();

    assert_eq!(warnings.recv().await.as_deref(), Some("job"));
    assert_eq!(start.elapsed(), 2 * SEC, "warns at warn_after");
    assert_eq!(*guard.status().borrow(), LockStatus::Expiring);
    assert!(!guard.is_expired());

    assert_eq!(guard.lost().await, LockStatus::Lost);
    assert_eq!(start.elapsed(), DEADLINE, "expires at the local deadline");
    assert!(guard.is_expired());
    assert_eq!(guard.valid_until(), None);
    // The store's own expiry (at 3 s) has not come yet: the holder gave up first.
    let info = store.inner.inspect("job").await.unwrap().unwrap();
    let remaining = info
        .holder
        .expect("store still has the lease")
        .remaining
        .unwrap();
    assert_eq!(remaining, Duration::from_millis(35));
    assert_eq!(warnings.recv().await, None, "closed once the lock is lost");
    assert!(
        store.renew_calls() >= 4,
        "retried sooner than the heartbeat"
    );
}

#[tokio::test(start_paused = true)]
async fn warnings_rearm_after_renewals_recover() {
    let store = FaultyStore::new(MemoryStore::new());
    let locker = locker(store.clone(), "a");
    let start = Instant::now();
    let guard = locker.try_lock("job").await.unwrap();
    let mut warnings = guard.warnings().unwrap();
    let mut status = guard.status();

    store.fail_renew.store(true, Ordering::SeqCst);
    assert_eq!(warnings.recv().await.as_deref(), Some("job"));
    assert_eq!(start.elapsed(), 2 * SEC);

    store.fail_renew.store(false, Ordering::SeqCst);
    status.wait_for(|s| *s == LockStatus::Held).await.unwrap();
    let recovered = start.elapsed();
    assert!(recovered < DEADLINE, "recovered at {recovered:?}");

    store.fail_renew.store(true, Ordering::SeqCst);
    assert_eq!(warnings.recv().await.as_deref(), Some("job"));
    assert!(start.elapsed() > recovered + SEC, "a second, later warning");
    assert!(!guard.is_expired());
}

#[tokio::test(start_paused = true)]
async fn renewal_answered_lost_expires_the_lock_at_once() {
    let store = MemoryStore::new();
    let locker = locker(store.clone(), "a");
    let start = Instant::now();
    let guard = locker.try_lock("job").await.unwrap();
    // Someone frees the lease behind the holder's back.
    store
        .release("job", guard.lease_id(), lock_core::Fencing::Enabled)
        .await
        .unwrap();
    assert_eq!(guard.lost().await, LockStatus::Lost);
    assert_eq!(
        start.elapsed(),
        SEC,
        "at the first renewal, not the deadline"
    );
    assert!(guard.is_expired());
    assert_eq!(locker.held_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lock_lost_without_warning_time_still_warns_first() {
    let store = MemoryStore::new();
    let locker = locker(store.clone(), "a");
    let guard = locker.try_lock("job").await.unwrap();
    let mut warnings = guard.warnings().unwrap();
    let start = Instant::now();
    store
        .release("job", guard.lease_id(), lock_core::Fencing::Enabled)
        .await
        .unwrap();
    // The first renewal (at 1 s, before warn_after) finds the lease gone.
    assert_eq!(guard.lost().await, LockStatus::Lost);
    assert_eq!(start.elapsed(), SEC);
    assert_eq!(warnings.recv().await.as_deref(), Some("job"));
    assert_eq!(warnings.recv().await, None);

    // Time jumps past the deadline (a stalled runtime, a paused process):
    // the warning still comes before the loss.
    let guard = locker.try_lock("other").await.unwrap();
    let mut warnings = guard.warnings().unwrap();
    tokio::time::advance(4 * SEC).await;
    assert!(guard.is_expired());
    assert_eq!(*guard.status().borrow(), LockStatus::Lost);
    assert_eq!(warnings.recv().await.as_deref(), Some("other"));
    assert_eq!(warnings.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_succeeding_after_expiry_keeps_the_lock_expired_and_releases_it() {
    let store = FaultyStore::new(MemoryStore::new());
    let locker = locker(store.clone(), "a");
    let start = Instant::now();
    let guard = locker.try_lock("job").await.unwrap();
    store.fail_renew.store(true, Ordering::SeqCst);
    sleep(Duration::from_millis(2700)).await;
    // The next retry (at 2.75 s) reaches the store, but its reply arrives
    // only at 3.15 s, after the local deadline of 2.965 s. The release sent
    // at the deadline fails, so only the late renewal's handling can give
    // the lease back.
    store.set_renew_reply_delay(Duration::from_millis(400));
    store.fail_renew.store(false, Ordering::SeqCst);
    store.fail_release.store(true, Ordering::SeqCst);
    let renewed_before = store.renewed_entries.load(Ordering::SeqCst);

    assert_eq!(guard.lost().await, LockStatus::Lost);
    assert_eq!(start.elapsed(), DEADLINE);
    sleep(Duration::from_millis(100)).await;
    store.fail_release.store(false, Ordering::SeqCst);
    assert_eq!(holder_of(&store.inner, "job").await.as_deref(), Some("a"));
    sleep(Duration::from_millis(200)).await;
    assert!(store.renewed_entries.load(Ordering::SeqCst) > renewed_before);
    assert!(guard.is_expired(), "expiry is monotone");
    assert_eq!(*guard.status().borrow(), LockStatus::Lost);
    // The store had extended the lease to 5.75 s; the locker gave it back.
    assert_eq!(holder_of(&store.inner, "job").await, None);
}

#[tokio::test(start_paused = true)]
async fn unlock_is_idempotent_and_expires_even_when_the_store_fails() {
    let store = FaultyStore::new(MemoryStore::new());
    let locker = locker(store.clone(), "a");
    let guard = locker.try_lock("job").await.unwrap();
    store.fail_release.store(true, Ordering::SeqCst);

    let error = guard.unlock().await.unwrap_err();
    assert!(matches!(error, LockError::Store(_)), "{error:?}");
    assert!(guard.is_expired());
    assert_eq!(*guard.status().borrow(), LockStatus::Released);
    assert!(guard.unlock().await.is_ok(), "second unlock is a no-op");
    sleep(MS).await;
    assert_eq!(
        store.release_calls.load(Ordering::SeqCst),
        2,
        "one call, one background retry"
    );

    // The lease is still in the store; the background retry failed too, so
    // it ends with its ttl and is never renewed.
    store.fail_release.store(false, Ordering::SeqCst);
    let renewals = store.renew_calls();
    sleep(3 * SEC).await;
    assert_eq!(store.renew_calls(), renewals);
    assert_eq!(holder_of(&store.inner, "job").await, None);
}

#[tokio::test(start_paused = true)]
async fn a_failed_unlock_is_retried_in_the_background() {
    let store = FaultyStore::new(MemoryStore::new());
    let locker = locker(store.clone(), "a");
    let guard = locker.try_lock("job").await.unwrap();
    store.fail_release.store(true, Ordering::SeqCst);
    let unlock = guard.unlock();
    tokio::pin!(unlock);
    // Let the foreground release fail, then heal the store before the
    // background task picks up the retry.
    assert!(unlock.await.is_err());
    store.fail_release.store(false, Ordering::SeqCst);
    sleep(MS).await;
    // Whether the retry ran before or after the heal, the lease is not
    // renewed; after its ttl it is gone at the latest.
    sleep(3 * SEC).await;
    assert_eq!(holder_of(&store.inner, "job").await, None);
    assert!(locker.try_lock("job").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn dropping_a_guard_releases_it_in_the_background() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let guard = a.try_lock("job").await.unwrap();
    drop(guard);
    sleep(MS).await;
    assert_eq!(
        holder_of(&store, "job").await,
        None,
        "released well before its ttl"
    );
    assert_eq!(a.held_count(), 0);
    let b = locker(store, "b");
    assert!(b.try_lock("job").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn close_releases_everything_and_later_calls_get_closed() {
    let store = MemoryStore::new();
    let locker = locker(store.clone(), "a");
    let guards = [
        locker.try_lock("one").await.unwrap(),
        locker.try_lock("two").await.unwrap(),
        locker.try_lock("three").await.unwrap(),
    ];
    locker.close().await.unwrap();
    for guard in &guards {
        assert_eq!(*guard.status().borrow(), LockStatus::Released);
        assert!(guard.is_expired());
        assert_eq!(holder_of(&store, guard.id()).await, None);
        assert!(guard.unlock().await.is_ok());
    }
    assert!(matches!(
        locker.try_lock("four").await,
        Err(LockError::Closed)
    ));
    assert!(matches!(
        locker.lock("four", SEC).await,
        Err(LockError::Closed)
    ));
    assert!(locker.close().await.is_ok(), "closing twice is fine");
    assert!(locker.is_closed());
}

#[tokio::test(start_paused = true)]
async fn close_before_any_lock_and_dyn_locker() {
    let locker: Arc<dyn Locker> = Arc::new(locker(MemoryStore::new(), "a"));
    let guard = locker.try_lock("job").await.unwrap();
    let as_lock: &dyn Lock = &guard;
    assert_eq!(as_lock.id(), "job");
    assert!(!as_lock.is_expired());
    locker.close().await.unwrap();
    assert!(as_lock.is_expired());

    let never_used = LeaseLocker::new(MemoryStore::new(), LockerOptions::default()).unwrap();
    assert!(never_used.close().await.is_ok());
    assert!(matches!(
        never_used.try_lock("x").await,
        Err(LockError::Closed)
    ));
}

#[tokio::test(start_paused = true)]
async fn lock_waits_for_a_release_and_is_woken_at_once() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let b = locker(store, "b");
    let guard = a.try_lock("job").await.unwrap();
    let start = Instant::now();
    let waiter = tokio::spawn(async move { b.lock("job", 10 * SEC).await });
    sleep(Duration::from_millis(1500)).await;
    guard.unlock().await.unwrap();
    let won = waiter.await.unwrap().unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(1500),
        "woken by the release"
    );
    assert_eq!(won.fencing_token().and_then(|t| t.to_u64()), Some(2));
}

#[tokio::test(start_paused = true)]
async fn lock_times_out_naming_the_holder() {
    let store = MemoryStore::new();
    let a = locker(store.clone(), "a");
    let b = locker(store, "b");
    let _guard = a.try_lock("job").await.unwrap();
    let start = Instant::now();
    match b.lock("job", 2 * SEC).await {
        Err(LockError::Timeout { id, waited, holder }) => {
            assert_eq!(id, "job");
            assert_eq!(holder.as_deref(), Some("a"));
            assert!(waited >= 2 * SEC, "{waited:?}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= 2 * SEC && elapsed < 2 * SEC + 100 * MS,
        "{elapsed:?}"
    );
    // Zero wait is one attempt.
    assert!(matches!(
        b.lock("job", Duration::ZERO).await,
        Err(LockError::Taken { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn lock_takes_over_a_dead_holders_lease_when_the_store_expires_it() {
    let store = MemoryStore::new();
    // A holder that died right after acquiring: nobody renews its lease.
    store
        .acquire(AcquireRequest::new(
            "job",
            "dead",
            LeaseId::random(),
            3 * SEC,
        ))
        .await
        .unwrap();
    let b = locker(store.clone(), "b");
    let start = Instant::now();
    let guard = b.lock("job", 10 * SEC).await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= 3 * SEC && waited <= 3 * SEC + 5 * MS,
        "{waited:?}"
    );
    assert_eq!(guard.fencing_token().and_then(|t| t.to_u64()), Some(2));
    assert_eq!(holder_of(&store, "job").await.as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn dropping_lock_futures_at_many_points_never_leaves_a_renewed_lease() {
    let store = FaultyStore::new(MemoryStore::new());
    // Every acquisition is granted at once but answered 10 ms later, so
    // cancellation lands before, during and after grants.
    store.set_acquire_reply_delay(10 * MS);
    let holder = locker(store.clone(), "holder");
    let waiter = locker(store.clone(), "waiter");
    let mut keys = Vec::new();
    for cut in 0..40u64 {
        let free_key = format!("free-{cut}");
        let busy_key = format!("busy-{cut}");
        let held = holder.try_lock(&busy_key).await.unwrap();
        let cut = Duration::from_millis(cut);
        // Free key: cancelled before or after the grant's reply.
        if let Ok(result) = tokio::time::timeout(cut, waiter.lock(&free_key, SEC)).await {
            result.unwrap().unlock().await.unwrap();
        }
        // Busy key: cancelled while waiting, or during the acquisition
        // that follows the holder's release.
        let release_at = cut / 2;
        let wait = tokio::time::timeout(cut, waiter.lock(&busy_key, SEC));
        let release = async {
            sleep(release_at).await;
            held.unlock().await.unwrap();
        };
        let (result, ()) = tokio::join!(wait, release);
        if let Ok(result) = result {
            result.unwrap().unlock().await.unwrap();
        }
        keys.push(free_key);
        keys.push(busy_key);
    }
    sleep(50 * MS).await;
    assert_eq!(waiter.held_count(), 0, "nothing tracked, nothing renewed");
    for key in &keys {
        assert_eq!(holder_of(&store.inner, key).await, None, "{key} left held");
    }
    let renewals = store.renewed_entries.load(Ordering::SeqCst);
    sleep(10 * SEC).await;
    assert_eq!(store.renewed_entries.load(Ordering::SeqCst), renewals);
}

#[tokio::test(start_paused = true)]
async fn an_acquire_that_times_out_is_released_not_renewed() {
    let store = FaultyStore::new(MemoryStore::new());
    store.set_acquire_reply_delay(SEC);
    let locker = locker(store.clone(), "a");
    let error = locker.try_lock("job").await.unwrap_err();
    assert!(
        matches!(&error, LockError::Store(e) if e.kind() == lock_core::StoreErrorKind::Timeout),
        "{error:?}"
    );
    sleep(MS).await;
    assert_eq!(
        holder_of(&store.inner, "job").await,
        None,
        "maybe-held lease released"
    );
    assert_eq!(locker.held_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn prefixes_namespace_ids() {
    let store = MemoryStore::new();
    let options = |prefix: &str| {
        LockerOptions::builder()
            .owner(prefix)
            .prefix(prefix)
            .build()
            .unwrap()
    };
    let billing = LeaseLocker::new(store.clone(), options("billing/")).unwrap();
    let reports = LeaseLocker::new(store.clone(), options("reports/")).unwrap();
    let a = billing.try_lock("nightly").await.unwrap();
    let b = reports.try_lock("nightly").await.unwrap();
    assert_eq!(a.id(), "nightly");
    assert_eq!(a.key(), "billing/nightly");
    assert_eq!(b.key(), "reports/nightly");
    assert_eq!(
        holder_of(&store, "billing/nightly").await.as_deref(),
        Some("billing/")
    );
    assert_eq!(
        holder_of(&store, "reports/nightly").await.as_deref(),
        Some("reports/")
    );
    assert_eq!(holder_of(&store, "nightly").await, None);
    let info = reports.inspect("nightly").await.unwrap().unwrap();
    assert_eq!(info.holder.unwrap().owner, "reports/");
}

#[tokio::test(start_paused = true)]
async fn invalid_ids_are_rejected_before_the_store_is_called() {
    let store = FaultyStore::new(MemoryStore::new());
    let plain = locker(store.clone(), "a");
    let prefixed = LeaseLocker::new(
        store.clone(),
        LockerOptions::builder().prefix("p/").build().unwrap(),
    )
    .unwrap();
    let reason = |result: Result<_, LockError>| match result {
        Err(LockError::InvalidId { reason }) => reason,
        Err(other) => panic!("expected InvalidId, got {other:?}"),
        Ok(_) => panic!("expected InvalidId, got a lock"),
    };
    assert!(reason(plain.try_lock("").await).contains("empty"));
    assert!(reason(plain.try_lock("a\0b").await).contains("NUL"));
    assert!(reason(plain.try_lock(&"x".repeat(1025)).await).contains("1024"));
    assert!(reason(prefixed.try_lock(&"x".repeat(1023)).await).contains("prefix"));
    assert!(reason(plain.lock("", SEC).await).contains("empty"));
    assert!(matches!(
        plain.inspect("").await,
        Err(LockError::InvalidId { .. })
    ));
    assert_eq!(store.acquire_calls.load(Ordering::SeqCst), 0);

    for id in [
        "'; DROP TABLE locks; --",
        "%_*?{}[]",
        "line\nbreak",
        "🔒",
        &"x".repeat(1024),
    ] {
        let guard = plain.try_lock(id).await.unwrap();
        assert_eq!(guard.key(), id);
    }
    let small = MemoryStore::with_capabilities(Capabilities::new().with_max_key_len(8));
    let small = locker(small, "a");
    assert!(reason(small.try_lock("123456789").await).contains("at most 8 bytes"));
    assert!(small.try_lock("12345678").await.is_ok());
}

#[test]
fn every_invalid_option_combination_names_its_fix() {
    let b = LockerOptions::builder;
    let s = Duration::from_secs;
    let message = |builder: lock_core::LockerOptionsBuilder| match builder.build() {
        Err(LockError::InvalidConfig(message)) => message,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    assert!(message(b().lease(Duration::ZERO)).contains("lease must be longer than zero"));
    assert!(message(b().heartbeat(Duration::ZERO)).contains("heartbeat must be longer than zero"));
    assert!(message(b().lease(s(10)).heartbeat(s(10))).contains("shorter than the lease"));
    assert!(message(b().store_timeout(Duration::ZERO)).contains("store_timeout must be longer"));
    assert!(message(b().heartbeat(s(2)).store_timeout(s(2))).contains("at most heartbeat / 2"));
    assert!(
        message(b().lease(s(10)).heartbeat(s(9)).store_timeout(s(1)))
            .contains("shorten heartbeat or store_timeout")
    );
    assert!(message(b().warn_after(s(60))).contains("comes after the lock expired"));
    assert!(message(b().warn_after(s(10))).contains("longer than the heartbeat"));
    assert!(
        message(b().warn_after(Duration::ZERO)).contains("warn_after must be longer than zero")
    );
    assert!(message(b().drift(0.5)).contains("[0, 0.5)"));
    assert!(message(b().drift(-0.1)).contains("[0, 0.5)"));
    assert!(message(b().drift(f64::NAN)).contains("[0, 0.5)"));
    assert!(message(b().lease(s(1)).margin(s(1))).contains("smaller margin"));
    assert!(message(b().owner("")).contains("owner must be"));
    assert!(message(b().owner("a\0")).contains("owner must be"));
    assert!(message(b().owner("x".repeat(257))).contains("owner must be"));
    assert!(message(b().prefix("a\0")).contains("prefix must not"));
    assert!(message(b().prefix("x".repeat(1024))).contains("shorten the prefix"));

    let strict = MemoryStore::with_capabilities(Capabilities::new().with_min_ttl(s(2)));
    let short = b().lease(Duration::from_millis(1500)).build().unwrap();
    match LeaseLocker::new(strict, short) {
        Err(LockError::InvalidConfig(message)) => {
            assert!(message.contains("set lease to at least 2s"), "{message}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    let tokenless = MemoryStore::with_capabilities(Capabilities::new().with_fencing(false));
    match LeaseLocker::new(tokenless.clone(), LockerOptions::default()) {
        Err(LockError::InvalidConfig(message)) => assert!(message.contains(".fencing(false)")),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(LeaseLocker::new(tokenless, b().fencing(false).build().unwrap()).is_ok());

    let defaults = LockerOptions::default();
    assert_eq!(defaults.lease(), s(60));
    assert_eq!(defaults.heartbeat(), s(20));
    assert_eq!(defaults.warn_after(), s(50));
    assert_eq!(defaults.store_timeout(), s(1));
    let short = b().lease(s(3)).build().unwrap();
    assert!(short.warn_after() > short.heartbeat());
    assert!(short.warn_after() < short.usable(s(3)));
    assert!(short.store_timeout() < short.heartbeat());
}

#[tokio::test(start_paused = true)]
async fn fencing_tokens_strictly_increase_across_release_expiry_and_takeover() {
    let store = FaultyStore::new(MemoryStore::new());
    let a = locker(store.clone(), "a");
    let b = locker(store.clone(), "b");
    let token = |guard: &lock_core::LockGuard| guard.fencing_token().cloned().unwrap();
    let mut tokens = Vec::new();

    // Released by unlock.
    let guard = a.try_lock("job").await.unwrap();
    tokens.push(token(&guard));
    guard.unlock().await.unwrap();
    // Released by drop.
    let guard = b.try_lock("job").await.unwrap();
    tokens.push(token(&guard));
    drop(guard);
    sleep(MS).await;
    // Taken over from a dead holder whose lease expired in the store.
    let dead = store
        .inner
        .acquire(AcquireRequest::new("job", "dead", LeaseId::random(), SEC))
        .await
        .unwrap();
    match dead {
        lock_core::AcquireOutcome::Acquired(grant) => tokens.push(grant.token.unwrap()),
        held => panic!("expected a grant, got {held:?}"),
    }
    let guard = a.lock("job", 10 * SEC).await.unwrap();
    tokens.push(token(&guard));
    // Lost by local expiry (renewals failing), then taken over.
    store.fail_renew.store(true, Ordering::SeqCst);
    assert_eq!(guard.lost().await, LockStatus::Lost);
    store.fail_renew.store(false, Ordering::SeqCst);
    let guard = b.lock("job", 10 * SEC).await.unwrap();
    tokens.push(token(&guard));

    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    let info = b.inspect("job").await.unwrap().unwrap();
    assert_eq!(info.last_token.as_ref(), tokens.last());
    let other = a.try_lock("other-key").await.unwrap();
    assert_eq!(token(&other).to_u64(), Some(1), "tokens are per key");
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_locks_cost_ceil_n_over_batch_calls_per_heartbeat() {
    let store = FaultyStore::new(MemoryStore::with_capabilities(
        Capabilities::new().with_max_batch(1000),
    ));
    let locker = locker(store.clone(), "a");
    let mut guards = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        guards.push(locker.try_lock(&format!("lock-{i}")).await.unwrap());
    }
    sleep(MS).await;
    assert_eq!(locker.held_count(), 10_000);
    let (calls, entries) = (
        store.renew_calls(),
        store.renewed_entries.load(Ordering::SeqCst),
    );
    sleep(3 * SEC).await;
    assert_eq!(
        store.renew_calls() - calls,
        3 * 10,
        "10 calls per heartbeat, 3 heartbeats"
    );
    assert_eq!(
        store.renewed_entries.load(Ordering::SeqCst) - entries,
        3 * 10_000
    );
    assert!(guards.iter().all(|g| !g.is_expired()));
}

#[tokio::test(start_paused = true)]
async fn a_suspend_seen_on_the_boot_clock_expires_locks() {
    let boot = Arc::new(AtomicU64::new(1_000_000));
    let read = boot.clone();
    let options = LockerOptions::builder()
        .lease(3 * SEC)
        .heartbeat(SEC)
        .boot_clock(Arc::new(move || {
            Some(Duration::from_millis(read.load(Ordering::SeqCst)))
        }))
        .build()
        .unwrap();
    let locker = LeaseLocker::new(MemoryStore::new(), options).unwrap();
    let guard = locker.try_lock("job").await.unwrap();
    assert!(!guard.is_expired());
    // The machine slept 5 s: the boot clock moved, the monotonic one did not.
    boot.fetch_add(5_000, Ordering::SeqCst);
    assert!(guard.is_expired());
    assert_eq!(*guard.status().borrow(), LockStatus::Lost);
}

#[tokio::test(start_paused = true)]
async fn a_guard_keeps_renewing_after_the_locker_handle_is_dropped() {
    let store = MemoryStore::new();
    let guard = locker(store.clone(), "a").try_lock("job").await.unwrap();
    sleep(10 * SEC).await;
    assert!(!guard.is_expired());
    assert_eq!(holder_of(&store, "job").await.as_deref(), Some("a"));
    drop(guard);
    sleep(MS).await;
    assert_eq!(holder_of(&store, "job").await, None);
}

#[tokio::test(start_paused = true)]
async fn without_warnings_there_is_no_receiver_but_the_status_still_turns_expiring() {
    let store = FaultyStore::new(MemoryStore::new());
    let options = paused_boot_clock(LockerOptions::builder())
        .lease(3 * SEC)
        .heartbeat(SEC)
        .without_warnings()
        .build()
        .unwrap();
    let locker = LeaseLocker::new(store.clone(), options).unwrap();
    let guard = locker.try_lock("job").await.unwrap();
    assert!(guard.warnings().is_none());
    store.fail_renew.store(true, Ordering::SeqCst);
    assert_eq!(guard.expiring().await, LockStatus::Expiring);
    assert!(!guard.is_expired());
    assert_eq!(guard.lost().await, LockStatus::Lost);
}

#[tokio::test(start_paused = true)]
async fn a_warning_fired_before_the_receiver_was_made_is_delivered_once() {
    let store = FaultyStore::new(MemoryStore::new());
    let locker = locker(store.clone(), "a");
    let guard = locker.try_lock("job").await.unwrap();
    store.fail_renew.store(true, Ordering::SeqCst);
    assert_eq!(guard.expiring().await, LockStatus::Expiring);
    let mut late = guard.warnings().unwrap();
    assert_eq!(late.try_recv().as_deref(), Some("job"));
    assert_eq!(late.try_recv(), None);
    guard.unlock().await.unwrap();
    assert_eq!(late.recv().await, None);
}

#[test]
fn short_options_are_valid() {
    let options = short_options("x");
    assert_eq!(options.usable(options.lease()), DEADLINE);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_when_the_request_was_sent() {
    let store = FaultyStore::new(MemoryStore::new());
    let locker = locker(store.clone(), "a");
    store.set_acquire_reply_delay(Duration::from_millis(200));
    let start = Instant::now();
    let guard = locker.try_lock("job").await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(
        guard.valid_until(),
        Some(start + DEADLINE),
        "not from the reply"
    );

    // Renewal replies arrive 200 ms late too. The first renewal is sent a
    // heartbeat after the lock was registered (at 1.2 s) and answered at
    // 1.4 s: the deadline moves to its send time plus the usable lease.
    store.set_renew_reply_delay(Duration::from_millis(200));
    sleep(Duration::from_millis(1300)).await;
    let sent = start + Duration::from_millis(1200);
    assert_eq!(guard.valid_until(), Some(sent + DEADLINE));
}

/// A store whose releases share 4 "connections" and take 5 ms each.
struct NarrowStore {
    inner: MemoryStore,
    connections: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl LeaseStore for NarrowStore {
    async fn acquire(
        &self,
        request: AcquireRequest<'_>,
    ) -> Result<lock_core::AcquireOutcome, lock_core::StoreError> {
        self.inner.acquire(request).await
    }
    async fn renew(
        &self,
        leases: &[lock_core::RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<lock_core::RenewOutcome>, lock_core::StoreError> {
        self.inner.renew(leases, ttl).await
    }
    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: lock_core::Fencing,
    ) -> Result<lock_core::ReleaseOutcome, lock_core::StoreError> {
        let _connection = self.connections.acquire().await.unwrap();
        sleep(5 * MS).await;
        self.inner.release(key, lease_id, fencing).await
    }
    async fn inspect(
        &self,
        key: &str,
    ) -> Result<Option<lock_core::LeaseInfo>, lock_core::StoreError> {
        self.inner.inspect(key).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[tokio::test(start_paused = true)]
async fn closing_with_a_thousand_locks_on_a_narrow_store_releases_them_all() {
    let inner = MemoryStore::new();
    let store = NarrowStore {
        inner: inner.clone(),
        connections: tokio::sync::Semaphore::new(4),
    };
    let locker = locker(store, "a");
    let mut guards = Vec::new();
    for i in 0..1000 {
        guards.push(locker.try_lock(&format!("lock-{i}")).await.unwrap());
    }
    // 1000 releases through 4 connections take 1.25 s in all, longer than
    // the 500 ms store timeout: they must queue before their timeouts start.
    locker.close().await.unwrap();
    for guard in &guards {
        assert_eq!(
            holder_of(&inner, guard.key()).await,
            None,
            "{}",
            guard.key()
        );
    }
}
