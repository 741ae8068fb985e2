//! A release wakes the wait of the entry it promotes, in the same process,
//! and no other wait.

use std::time::Duration;

use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, LeaseId, LeaseStore, ReleaseOutcome, RenewEntry,
    RenewOutcome, WaitOutcome,
};
use lock_sqlite::SqliteStore;

const TTL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_only_the_waiter_it_promotes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("wake.db"))
        .await
        .expect("open");
    let key = "a_release_wakes_only_the_waiter_it_promotes";
    let other_key = "another key";
    let (holder, next, behind) = (LeaseId::random(), LeaseId::random(), LeaseId::random());
    assert!(matches!(
        store
            .acquire(AcquireRequest::new(key, "holder", holder, TTL))
            .await
            .expect("acquire"),
        AcquireOutcome::Acquired(_)
    ));
    for waiter in [next, behind] {
        assert!(matches!(
            store
                .acquire(AcquireRequest::new(key, "waiter", waiter, TTL).queued(TTL))
                .await
                .expect("queue"),
            AcquireOutcome::Queued(_)
        ));
    }
    // Nothing notifies across processes: without a wake, each wait lasts
    // its whole maximum.
    let max = Duration::from_secs(20);
    let mut next_wait = std::pin::pin!(store.wait_for_grant(key, next, max));
    let mut behind_wait = std::pin::pin!(store.wait_for_grant(key, behind, max));
    let mut elsewhere = std::pin::pin!(store.wait_for_grant(other_key, next, max));
    // One poll each registers the waits before the release.
    tokio::select! {
        biased;
        outcome = &mut next_wait => panic!("the wait ended before any release: {outcome:?}"),
        outcome = &mut behind_wait => panic!("the wait behind ended: {outcome:?}"),
        outcome = &mut elsewhere => panic!("the other key's wait ended: {outcome:?}"),
        () = std::future::ready(()) => {}
    }
    let released = std::time::Instant::now();
    assert_eq!(
        store
            .release(key, holder, Fencing::Enabled)
            .await
            .expect("release"),
        ReleaseOutcome::Released
    );
    assert_eq!(next_wait.await, WaitOutcome::Changed);
    assert!(released.elapsed() < max / 4, "{:?}", released.elapsed());
    let outcomes = store
        .renew(&[RenewEntry::waiting(key, next, TTL)], TTL)
        .await
        .expect("renew");
    assert!(
        matches!(outcomes[..], [RenewOutcome::Granted(_)]),
        "{outcomes:?}"
    );
    // The entry still waiting, and the wait on another key, sleep on.
    let asleep = Duration::from_millis(200);
    assert!(tokio::time::timeout(asleep, behind_wait).await.is_err());
    assert!(tokio::time::timeout(asleep, elsewhere).await.is_err());
}
