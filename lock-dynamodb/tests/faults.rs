//! Faults between a client and DynamoDB's protocol (moto), through the
//! fault proxy: a reply delayed past another client's renewal, a holder cut
//! off from the store, connections reset.

mod common;

use std::time::Duration;

use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{shared_moto, skip_unless_available};
use conformance_tests::{locker_options, unique_key};
use lock_core::{
    AcquireOutcome, AcquireRequest, LeaseId, LeaseLocker, LeaseStore, LockStatus, Locker,
    RenewEntry, RenewOutcome,
};
use lock_dynamodb::DynamoStore;
use tokio::time::{Instant, sleep_until};

const SKEW: Duration = Duration::from_millis(250);

async fn skip() -> Option<String> {
    skip_unless_available(shared_moto()).await
}

/// A store sending its requests through `proxy`.
async fn store_via(proxy: &FaultProxy) -> DynamoStore {
    let endpoint = common::moto().await.endpoint_via(proxy.listen_addr());
    common::store_with(|config| config.endpoint(endpoint).max_clock_skew(SKEW)).await
}

async fn proxy() -> FaultProxy {
    FaultProxy::start(common::moto().await.addr())
        .await
        .expect("the fault proxy starts")
}

/// A client whose reply comes late judges the holder's entry expired from
/// what it read before the holder renewed it: its write must not remove
/// the renewed entry. The holder renews at 550 ms (lease 600 ms); the other
/// client's read is served at about 500 ms and reaches it at about 700 ms,
/// past the lease's end; its write arrives after the renewal and is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_decided_on_a_stale_read_does_not_remove_a_renewed_entry() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let proxy = proxy().await;
    let holder = common::store_with(|config| config.max_clock_skew(Duration::ZERO)).await;
    let late = {
        let endpoint = common::moto().await.endpoint_via(proxy.listen_addr());
        common::store_with(|config| config.endpoint(endpoint).max_clock_skew(Duration::ZERO)).await
    };
    let key = unique_key("a_write_decided_on_a_stale_read_does_not_remove_a_renewed_entry");
    let ttl = Duration::from_millis(600);
    let started = Instant::now();
    let lease = LeaseId::random();
    let granted = holder
        .acquire(AcquireRequest::new(&key, "holder", lease, ttl))
        .await
        .expect("acquire");
    assert!(
        matches!(granted, AcquireOutcome::Acquired(_)),
        "{granted:?}"
    );

    proxy.set_mode(FaultMode::Latency(Duration::from_millis(200)));
    sleep_until(started + Duration::from_millis(300)).await;
    let late_key = key.clone();
    let late_attempt = tokio::spawn(async move {
        late.acquire(AcquireRequest::new(
            &late_key,
            "late",
            LeaseId::random(),
            ttl,
        ))
        .await
        .expect("acquire")
    });
    sleep_until(started + Duration::from_millis(550)).await;
    // Renewed for long: the late client's retry after its refused write
    // must still find it live.
    let renewal = holder
        .renew(&[RenewEntry::held(&key, lease)], Duration::from_secs(10))
        .await;
    let outcome = late_attempt.await.expect("the late client's task");
    let renewed = renewal.expect("renew");
    if !matches!(renewed[0], RenewOutcome::Renewed { .. }) {
        // Too slow a machine to play the scene: the lease ended first.
        eprintln!("skipped: the holder's renewal came after its lease ended: {renewed:?}");
        return;
    }
    assert!(
        matches!(outcome, AcquireOutcome::Held(_)),
        "a client took a lease renewed after its read: {outcome:?}"
    );
    assert_eq!(
        common::holder_of(&holder, &key).await.as_deref(),
        Some("holder")
    );
}

/// A holder cut off from the store (its proxy black-holes) gives the lock
/// up by its local deadline, before another client can take the key over
/// (its end plus the clock skew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holder_gives_up_before_another_client_takes_over() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let proxy = proxy().await;
    let cut_off_store = store_via(&proxy).await;
    let options = locker_options(&cut_off_store.capabilities(), "cut-off");
    let lease = options.lease();
    let cut_off = LeaseLocker::new(cut_off_store, options).expect("options fit");
    let other = common::store_with(|config| config.max_clock_skew(SKEW)).await;
    let key = unique_key("a_cut_off_holder_gives_up_before_another_client_takes_over");
    let guard = cut_off.try_lock(&key).await.expect("a free key");
    proxy.set_mode(FaultMode::BlackHole);
    let cut_at = Instant::now();
    let mut status = guard.status();
    let lost_at = tokio::time::timeout(lease + Duration::from_secs(2), async {
        loop {
            if matches!(*status.borrow_and_update(), LockStatus::Lost) {
                return Instant::now();
            }
            if status.changed().await.is_err() {
                return Instant::now();
            }
        }
    })
    .await
    .expect("the cut-off holder gives the lock up by its deadline");
    let taken_at = loop {
        let outcome = other
            .acquire(AcquireRequest::new(&key, "other", LeaseId::random(), lease))
            .await
            .expect("acquire");
        if matches!(outcome, AcquireOutcome::Acquired(_)) {
            break Instant::now();
        }
        assert!(
            cut_at.elapsed() < 2 * lease + Duration::from_secs(3),
            "never taken over"
        );
        sleep_until(Instant::now() + Duration::from_millis(20)).await;
    };
    assert!(
        lost_at < taken_at,
        "taken over {:?} after the cut, the holder gave up only {:?} after it",
        taken_at - cut_at,
        lost_at - cut_at
    );
    proxy.set_mode(FaultMode::PassThrough);
}

/// Connections reset by the network are retryable store errors, and the
/// store works again once they are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_are_retryable_errors() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let proxy = proxy().await;
    let store = store_via(&proxy).await;
    let key = unique_key("reset_connections_are_retryable_errors");
    proxy.set_mode(FaultMode::Reset);
    let error = store
        .acquire(AcquireRequest::new(
            &key,
            "me",
            LeaseId::random(),
            Duration::from_secs(5),
        ))
        .await
        .expect_err("every connection is reset");
    assert!(error.is_retryable(), "{error:?}");
    assert!(error.is_ambiguous(), "{error:?}");
    proxy.set_mode(FaultMode::PassThrough);
    let outcome = store
        .acquire(AcquireRequest::new(
            &key,
            "me",
            LeaseId::random(),
            Duration::from_secs(5),
        ))
        .await
        .expect("acquire once connections pass");
    assert!(
        matches!(outcome, AcquireOutcome::Acquired(_)),
        "{outcome:?}"
    );
}
