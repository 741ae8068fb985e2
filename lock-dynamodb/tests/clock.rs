//! The client-clock rule: expiry follows the clients' wall clocks, and
//! another client takes an entry over only once its own clock is past the
//! entry's end plus the clock skew. Each test gives one store instance a
//! wall clock of its own ([`OffsetClock`]) to play a badly synchronized
//! host.

mod common;

use std::time::Duration;

use conformance_tests::harness::{shared_moto, skip_unless_available};
use conformance_tests::unique_key;
use lock_core::{
    AcquireOutcome, AcquireRequest, ExpiryClock, Fencing, LeaseId, LeaseStore, RenewEntry,
    RenewOutcome,
};
use lock_dynamodb::{DynamoStore, OffsetClock};
use tokio::time::{Instant, sleep_until};

async fn skip() -> Option<String> {
    skip_unless_available(shared_moto()).await
}

/// A store allowing `skew` whose wall clock is `offset_ms` off the
/// machine's (positive: ahead).
async fn store(skew: Duration, offset_ms: i64) -> DynamoStore {
    let clock = OffsetClock::new();
    clock.set_offset_millis(offset_ms);
    common::store_with(|config| config.max_clock_skew(skew).wall_clock(clock)).await
}

async fn acquire(
    store: &DynamoStore,
    key: &str,
    owner: &str,
    ttl: Duration,
) -> (LeaseId, AcquireOutcome) {
    let lease_id = LeaseId::random();
    let outcome = store
        .acquire(AcquireRequest::new(key, owner, lease_id, ttl))
        .await
        .expect("acquire");
    (lease_id, outcome)
}

fn token(outcome: &AcquireOutcome) -> Option<lock_core::FencingToken> {
    match outcome {
        AcquireOutcome::Acquired(grant) => grant.token.clone(),
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_says_expiry_follows_the_clients_clocks() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let store = store(Duration::from_secs(1), 0).await;
    assert_eq!(store.capabilities().clock, ExpiryClock::Client);
    assert!(!store.capabilities().native_wait);
}

/// The original's steal scenario: lease 1 s, skew 500 ms. Another client
/// is refused at 1.1 s (the lease is over by the holder's clock, not yet
/// past the skew) and granted after 1.6 s, with a larger token, naming the
/// previous owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_stolen_only_past_its_end_plus_the_skew() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let skew = Duration::from_millis(500);
    let ttl = Duration::from_secs(1);
    let holder = store(skew, 0).await;
    let thief = store(skew, 0).await;
    let key = unique_key("a_lease_is_stolen_only_past_its_end_plus_the_skew");
    let sent = Instant::now();
    let (lease, first) = acquire(&holder, &key, "holder", ttl).await;
    let first_token = token(&first);

    sleep_until(sent + Duration::from_millis(1100)).await;
    let (_, refused) = acquire(&thief, &key, "thief", ttl).await;
    let AcquireOutcome::Held(held_by) = refused else {
        panic!("granted at 1.1 s, inside the skew: {refused:?}");
    };
    assert_eq!(held_by.owner, "holder");
    // Its own end has passed: nothing of the lease remains.
    assert_eq!(held_by.remaining, Some(Duration::ZERO));
    // ... and the holder itself can no longer renew or release it.
    let renewed = holder
        .renew(&[RenewEntry::held(&key, lease)], ttl)
        .await
        .expect("renew");
    assert_eq!(renewed, vec![RenewOutcome::Lost]);

    sleep_until(sent + Duration::from_millis(1600)).await;
    let give_up = sent + Duration::from_secs(3);
    let stolen = loop {
        let (_, outcome) = acquire(&thief, &key, "thief", ttl).await;
        match outcome {
            AcquireOutcome::Acquired(grant) => break grant,
            other => {
                assert!(Instant::now() < give_up, "not granted by 3 s: {other:?}");
                sleep_until(Instant::now() + Duration::from_millis(20)).await;
            }
        }
    };
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "stolen after {:?}",
        sent.elapsed()
    );
    assert!(
        stolen.token > first_token,
        "{stolen:?} after {first_token:?}"
    );
    assert_eq!(stolen.previous_owner.as_deref(), Some("holder"));
}

/// A client whose clock runs ahead by less than the skew cannot take a
/// live lock, however often it tries; once the holder stops renewing, it
/// takes the key only after the lease's end (by the holder's clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ahead_by_less_than_the_skew_cannot_take_a_live_lock() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let skew = Duration::from_secs(2);
    let ttl = Duration::from_secs(2);
    let holder = store(skew, 0).await;
    let ahead = store(skew, 1_500).await;
    let key = unique_key("a_client_ahead_by_less_than_the_skew_cannot_take_a_live_lock");
    let (lease, first) = acquire(&holder, &key, "holder", ttl).await;
    let first_token = token(&first);
    // The holder renews every 300 ms for 3 s; the client ahead tries every
    // 50 ms meanwhile.
    let renewing_until = Instant::now() + Duration::from_secs(3);
    let mut last_renewal = Instant::now();
    let mut next_renewal = Instant::now() + Duration::from_millis(300);
    while Instant::now() < renewing_until {
        if Instant::now() >= next_renewal {
            let sent = Instant::now();
            let renewed = holder
                .renew(&[RenewEntry::held(&key, lease)], ttl)
                .await
                .expect("renew");
            assert!(
                matches!(renewed[0], RenewOutcome::Renewed { .. }),
                "{renewed:?}"
            );
            last_renewal = sent;
            next_renewal = sent + Duration::from_millis(300);
        }
        let (_, outcome) = acquire(&ahead, &key, "ahead", ttl).await;
        assert!(
            matches!(outcome, AcquireOutcome::Held(_)),
            "a client 1.5 s ahead took a live lease (skew 2 s): {outcome:?}"
        );
        sleep_until(Instant::now() + Duration::from_millis(50)).await;
    }
    // The holder stops: its lease ends at last_renewal + 2 s by its clock;
    // the client ahead may take it from last_renewal + 2 s + 2 s - 1.5 s.
    let give_up = last_renewal + Duration::from_secs(5);
    let taken = loop {
        let (_, outcome) = acquire(&ahead, &key, "ahead", ttl).await;
        match outcome {
            AcquireOutcome::Acquired(grant) => break grant,
            other => {
                assert!(Instant::now() < give_up, "never taken over: {other:?}");
                sleep_until(Instant::now() + Duration::from_millis(20)).await;
            }
        }
    };
    assert!(
        last_renewal.elapsed() >= ttl,
        "taken over {:?} after the last renewal, before the lease's end",
        last_renewal.elapsed()
    );
    assert!(taken.token > first_token);
}

/// What breaks when the assumption does not hold: a client whose clock
/// runs ahead by more than lease plus skew takes a live lease at once.
/// Mutual exclusion is gone, but its token is larger, so a fenced
/// resource refuses the first holder from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ahead_by_more_than_the_skew_steals_with_a_larger_token() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let skew = Duration::from_secs(1);
    let ttl = Duration::from_secs(30);
    let holder = store(skew, 0).await;
    let far_ahead = store(skew, 40_000).await;
    let key = unique_key("a_client_ahead_by_more_than_the_skew_steals_with_a_larger_token");
    let (lease, first) = acquire(&holder, &key, "holder", ttl).await;
    let (_, stolen) = acquire(&far_ahead, &key, "far-ahead", ttl).await;
    let AcquireOutcome::Acquired(stolen) = stolen else {
        panic!("a client 40 s ahead did not take a 30 s lease: {stolen:?}");
    };
    assert!(stolen.token > token(&first));
    assert_eq!(stolen.previous_owner.as_deref(), Some("holder"));
    // The first holder's entry is gone: its renewal says so.
    let renewed = holder
        .renew(&[RenewEntry::held(&key, lease)], ttl)
        .await
        .expect("renew");
    assert_eq!(renewed, vec![RenewOutcome::Lost]);
}

/// The skew a request asks for is recorded with its entry: a later client
/// allowing less still waits the entry's skew, and a waiting entry's
/// renewals judge the entries ahead with its own recorded skew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_keeps_the_skew_its_request_asked_for() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    // No store-wide skew: every request brings its own.
    let holder = common::store_with(|config| config).await;
    let other = common::store_with(|config| config).await;
    let key = unique_key("an_entry_keeps_the_skew_its_request_asked_for");
    let ttl = Duration::from_secs(1);
    let sent = Instant::now();
    let holding = LeaseId::random();
    let first = holder
        .acquire(
            AcquireRequest::new(&key, "holder", holding, ttl)
                .with_max_clock_skew(Duration::from_millis(800)),
        )
        .await
        .expect("acquire");
    assert!(matches!(first, AcquireOutcome::Acquired(_)));
    // A waiter allowing no skew at all, queued behind it.
    let waiter = LeaseId::random();
    let queued = other
        .acquire(
            AcquireRequest::new(&key, "waiter", waiter, Duration::from_secs(30))
                .with_max_clock_skew(Duration::ZERO)
                .queued(Duration::from_secs(30)),
        )
        .await
        .expect("queue");
    let AcquireOutcome::Queued(queued) = queued else {
        panic!("expected to queue: {queued:?}");
    };
    // The next look is due at the holder's end, never later.
    assert!(
        queued.retry_after.is_some_and(|after| after <= ttl),
        "{queued:?}"
    );
    // Past the holder's end but inside its 800 ms skew: still waiting.
    sleep_until(sent + Duration::from_millis(1300)).await;
    let outcome = other
        .renew(
            &[RenewEntry::waiting(&key, waiter, Duration::from_secs(30))],
            Duration::from_secs(30),
        )
        .await
        .expect("renew");
    let RenewOutcome::Waiting { retry_after, .. } = &outcome[0] else {
        panic!("promoted inside the holder's skew: {outcome:?}");
    };
    // The next look is when the skew has passed, not at once.
    assert!(
        retry_after
            .is_some_and(|after| after > Duration::ZERO && after <= Duration::from_millis(500)),
        "{outcome:?}"
    );
    sleep_until(sent + Duration::from_millis(1850)).await;
    let outcome = other
        .renew(
            &[RenewEntry::waiting(&key, waiter, Duration::from_secs(30))],
            Duration::from_secs(30),
        )
        .await
        .expect("renew");
    assert!(
        matches!(&outcome[0], RenewOutcome::Granted(grant) if grant.token.is_some()),
        "{outcome:?}"
    );
    assert_eq!(
        holder
            .release(&key, holding, Fencing::Enabled)
            .await
            .expect("release"),
        lock_core::ReleaseOutcome::NotHeld
    );
}
