//! Cases for the per-key queue, through raw store calls: arrival order,
//! handoff in the release's own step, waiting entries that expire, renewal
//! of waiting entries in the holders' batches, and the store's grant
//! notifications.

use std::time::Duration;

use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, LeaseId, LeaseStore, LockMode, Queued, ReleaseOutcome,
    RenewEntry, RenewOutcome, WaitOutcome,
};
use tokio::time::Instant;

use crate::support::{
    StoreFactory, expiry_slack, grant, granted, held, holder_of, queued, short_ttl, unique_key,
};

/// Adds a waiting entry for `owner` (or fails the case when it is granted).
pub(crate) async fn enqueue<S: LeaseStore>(
    store: &S,
    key: &str,
    owner: &str,
    ttl: Duration,
    waiter_ttl: Duration,
) -> (LeaseId, Queued) {
    let lease_id = LeaseId::random();
    let request = AcquireRequest::new(key, owner, lease_id, ttl).queued(waiter_ttl);
    let outcome = store
        .acquire(request)
        .await
        .unwrap_or_else(|error| panic!("queueing on {key:?} failed: {error}"));
    (lease_id, queued(outcome))
}

/// Renews one entry the caller believes waits.
pub(crate) async fn renew_waiting<S: LeaseStore>(
    store: &S,
    key: &str,
    lease_id: LeaseId,
    ttl: Duration,
    waiter_ttl: Duration,
) -> RenewOutcome {
    let outcomes = store
        .renew(&[RenewEntry::waiting(key, lease_id, waiter_ttl)], ttl)
        .await
        .unwrap_or_else(|error| panic!("renewing a waiting entry of {key:?} failed: {error}"));
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    outcomes.into_iter().next().unwrap_or(RenewOutcome::Lost)
}

/// Waiters are granted in arrival order, each in the release of the one
/// before, with tokens increasing in that order.
pub async fn queue_grants_waiters_in_arrival_order<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("queue_grants_waiters_in_arrival_order");
    let (mut holding, first) = grant(&store, &key, "holder", ttl).await;
    let mut last_token = first.token;
    let mut waiters = Vec::new();
    for i in 0..4 {
        let (lease, queued) = enqueue(&store, &key, &format!("waiter-{i}"), ttl, ttl).await;
        assert_eq!(
            queued.holder.map(|holder| holder.owner).as_deref(),
            Some("holder")
        );
        waiters.push(lease);
    }
    for (i, lease) in waiters.into_iter().enumerate() {
        let released = store
            .release(&key, holding, Fencing::Enabled)
            .await
            .unwrap();
        assert_eq!(released, ReleaseOutcome::Released);
        // Nobody asked again: the release itself handed the key over.
        let owner = format!("waiter-{i}");
        assert_eq!(
            holder_of(&store, &key).await.as_deref(),
            Some(owner.as_str())
        );
        let RenewOutcome::Granted(granted) = renew_waiting(&store, &key, lease, ttl, ttl).await
        else {
            panic!("{owner} holds but its renewal does not say so");
        };
        assert!(
            granted.token > last_token,
            "{owner}: {granted:?} after {last_token:?}"
        );
        last_token = granted.token;
        holding = lease;
    }
}

/// A try (a request that does not queue) is refused while entries wait, and
/// the holder that releases and asks again goes behind them.
pub async fn queue_release_and_ask_again_goes_behind_the_waiters<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("queue_release_and_ask_again_goes_behind_the_waiters");
    let (alice, _) = grant(&store, &key, "alice", ttl).await;
    let (bob, _) = enqueue(&store, &key, "bob", ttl, ttl).await;
    let (_, outcome) = crate::support::acquire(&store, &key, "carol", ttl).await;
    assert_eq!(held(outcome).owner, "alice");
    store.release(&key, alice, Fencing::Enabled).await.unwrap();
    let (alice_again, queued) = enqueue(&store, &key, "alice", ttl, ttl).await;
    assert_eq!(
        queued.holder.map(|holder| holder.owner).as_deref(),
        Some("bob")
    );
    store.release(&key, bob, Fencing::Enabled).await.unwrap();
    assert_eq!(holder_of(&store, &key).await.as_deref(), Some("alice"));
    let info = store.inspect(&key).await.unwrap().expect("known key");
    assert_eq!(info.waiting, 0, "{info:?}");
    assert!(matches!(
        renew_waiting(&store, &key, alice_again, ttl, ttl).await,
        RenewOutcome::Granted(_)
    ));
}

/// A waiting entry that is not renewed expires after its waiter ttl, even
/// once promoted: the entry behind it holds by then.
pub async fn queue_dead_waiter_delays_by_at_most_its_waiter_ttl<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let waiter_ttl = short_ttl(&caps);
    let ttl = 30 * waiter_ttl;
    let key = unique_key("queue_dead_waiter_delays_by_at_most_its_waiter_ttl");
    let (alice, _) = grant(&store, &key, "alice", ttl).await;
    let dead_since = Instant::now();
    let (_dead, dead_queued) = enqueue(&store, &key, "dead", ttl, waiter_ttl).await;
    let (carol, _) = enqueue(&store, &key, "carol", ttl, 30 * waiter_ttl).await;
    store.release(&key, alice, Fencing::Enabled).await.unwrap();
    // The requested waiter ttl: a store may round it up to its
    // granularity, which short_ttl already is.
    let limit = waiter_ttl + expiry_slack(&caps);
    loop {
        match renew_waiting(&store, &key, carol, ttl, 30 * waiter_ttl).await {
            RenewOutcome::Granted(_) => break,
            RenewOutcome::Waiting { .. } => {}
            other => panic!("carol's entry: {other:?}"),
        }
        assert!(
            dead_since.elapsed() < limit,
            "a dead waiter held the queue for more than {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dead_since.elapsed() >= dead_queued.ttl.mul_f64(0.99),
        "the dead waiter's entry ended after {:?}, before its waiter ttl",
        dead_since.elapsed()
    );
}

/// A holder that died delays the next entry by at most its ttl: the
/// waiting entry holds once the store expired the holder.
pub async fn queue_dead_holder_delays_by_at_most_its_ttl<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let ttl = short_ttl(&caps);
    let key = unique_key("queue_dead_holder_delays_by_at_most_its_ttl");
    let granted_at = Instant::now();
    let (_, dead) = grant(&store, &key, "dead", ttl).await;
    let (bob, queued) = enqueue(&store, &key, "bob", 30 * ttl, 30 * ttl).await;
    if let Some(after) = queued.retry_after {
        assert!(
            after <= dead.ttl,
            "retry_after {after:?} > the holder's ttl"
        );
    }
    let limit = dead.ttl + expiry_slack(&caps);
    loop {
        match renew_waiting(&store, &key, bob, 30 * ttl, 30 * ttl).await {
            RenewOutcome::Granted(grant) => {
                assert!(grant.token > dead.token);
                break;
            }
            RenewOutcome::Waiting { .. } => {}
            other => panic!("bob's entry: {other:?}"),
        }
        assert!(
            granted_at.elapsed() < limit,
            "a dead holder held the queue for more than {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(granted_at.elapsed() >= dead.ttl.mul_f64(0.99));
}

/// A waiting entry released by its owner (a cancelled wait) leaves nothing
/// behind: the holder's release then frees the key.
pub async fn queue_released_waiter_leaves_no_entry<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("queue_released_waiter_leaves_no_entry");
    let (alice, _) = grant(&store, &key, "alice", ttl).await;
    let (bob, _) = enqueue(&store, &key, "bob", ttl, ttl).await;
    let info = store.inspect(&key).await.unwrap().expect("known key");
    assert_eq!(info.waiting, 1, "{info:?}");
    assert_eq!(
        store.release(&key, bob, Fencing::Enabled).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        store.inspect(&key).await.unwrap().map(|info| info.waiting),
        Some(0)
    );
    store.release(&key, alice, Fencing::Enabled).await.unwrap();
    assert_eq!(holder_of(&store, &key).await, None);
    let (_, carol) = grant(&store, &key, "carol", ttl).await;
    assert!(carol.token.is_some());
}

/// Held and waiting entries renew in one batch, answered in order.
pub async fn queue_waiting_entries_renew_in_the_holders_batch<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let base = unique_key("queue_waiting_entries_renew_in_the_holders_batch");
    let (mine, _) = grant(&store, &format!("{base}/a"), "me", ttl).await;
    grant(&store, &format!("{base}/b"), "other", ttl).await;
    let (waiting, _) = enqueue(&store, &format!("{base}/b"), "me", ttl, ttl).await;
    let (promoted_holder, _) = grant(&store, &format!("{base}/c"), "other", ttl).await;
    let (promoted, _) = enqueue(&store, &format!("{base}/c"), "me", ttl, ttl).await;
    store
        .release(&format!("{base}/c"), promoted_holder, Fencing::Enabled)
        .await
        .unwrap();
    let keys = [
        format!("{base}/a"),
        format!("{base}/b"),
        format!("{base}/c"),
    ];
    let outcomes = store
        .renew(
            &[
                RenewEntry::held(&keys[0], mine),
                RenewEntry::waiting(&keys[1], waiting, ttl),
                RenewEntry::waiting(&keys[2], promoted, ttl),
                RenewEntry::waiting(&keys[1], LeaseId::random(), ttl),
            ],
            ttl,
        )
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    assert!(
        matches!(outcomes[0], RenewOutcome::Renewed { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], RenewOutcome::Waiting { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], RenewOutcome::Granted(grant) if grant.token.is_some()),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[3], RenewOutcome::Lost);
}

/// A request sent again with the same lease id (its reply was lost) adds
/// no second entry.
pub async fn queue_retried_request_adds_no_second_entry<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("queue_retried_request_adds_no_second_entry");
    grant(&store, &key, "alice", ttl).await;
    let lease_id = LeaseId::random();
    for _ in 0..2 {
        let request = AcquireRequest::new(&key, "bob", lease_id, ttl).queued(ttl);
        queued(store.acquire(request).await.unwrap());
    }
    let info = store.inspect(&key).await.unwrap().expect("known key");
    assert_eq!(info.waiting, 1, "{info:?}");
}

/// Waiters arriving together all line up, each in a place of its own: no
/// request fails because the others changed the key meanwhile (a store
/// that retried a refused write a bounded number of times gave up as busy
/// here), and none is lost or counted twice.
pub async fn queue_waiters_arriving_together_all_line_up<F: StoreFactory>(factory: &F) {
    const WAITERS: usize = 20;
    let store = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("queue_waiters_arriving_together_all_line_up");
    grant(&store, &key, "holder", ttl).await;
    let outcomes = futures_util::future::join_all((0..WAITERS).map(|_| {
        let request = AcquireRequest::new(&key, "waiter", LeaseId::random(), ttl).queued(ttl);
        store.acquire(request)
    }))
    .await;
    let mut tokens = Vec::new();
    for outcome in outcomes {
        let outcome = outcome.unwrap_or_else(|error| panic!("a waiter did not line up: {error}"));
        tokens.extend(queued(outcome).token);
    }
    let minted = tokens.len();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), minted, "two waiters share a place");
    let info = store.inspect(&key).await.unwrap().expect("known key");
    assert_eq!(info.waiting, WAITERS, "{info:?}");
}

/// Shared requests with another limit than the key's live shared entries
/// are refused, naming the limit in use, queued or not; exclusive requests
/// ignore the limit; once no shared entry lives, any limit goes.
pub async fn queue_refuses_a_limit_mismatch<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("queue_refuses_a_limit_mismatch");
    let shared = |owner: &'static str, limit: u32| {
        AcquireRequest::new(&key, owner, LeaseId::random(), ttl).with_mode(LockMode::Shared, limit)
    };
    let first = shared("alice", 2);
    let alice = first.lease_id;
    granted(store.acquire(first).await.unwrap());
    for queue in [None, Some(ttl)] {
        let mut request = shared("bob", 3);
        if let Some(waiter_ttl) = queue {
            request = request.queued(waiter_ttl);
        }
        let outcome = store.acquire(request).await.unwrap();
        assert_eq!(outcome, AcquireOutcome::LimitMismatch { limit: 2 });
    }
    // An exclusive request waits for the shared holder, whatever the limit.
    let (_, outcome) = crate::support::acquire(&store, &key, "carol", ttl).await;
    assert_eq!(held(outcome).owner, "alice");
    let info = store.inspect(&key).await.unwrap().expect("known key");
    assert_eq!(info.limit, Some(2), "{info:?}");
    store.release(&key, alice, Fencing::Enabled).await.unwrap();
    granted(store.acquire(shared("bob", 3)).await.unwrap());
}

/// With native waits, the release that promotes a waiting entry tells it.
pub async fn wait_for_grant_hears_the_handoff<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let waiter = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("wait_for_grant_hears_the_handoff");
    let (alice, _) = grant(&store, &key, "alice", ttl).await;
    let (bob, queued) = enqueue(&waiter, &key, "bob", ttl, ttl).await;
    let max = Duration::from_secs(20);
    let start = Instant::now();
    let wait = waiter.wait_for_grant(&key, bob, max);
    let release = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.release(&key, alice, Fencing::Enabled).await.unwrap();
    };
    let (heard, ()) = tokio::join!(wait, release);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "woke after {:?}",
        start.elapsed()
    );
    match heard {
        WaitOutcome::Granted { token } => {
            if let (Some(heard), Some(announced)) = (token, queued.token) {
                assert_eq!(heard, announced);
            }
        }
        // A store may only say something changed; the entry holds anyway.
        WaitOutcome::Changed => {
            assert_eq!(holder_of(&store, &key).await.as_deref(), Some("bob"));
        }
        other => panic!("{other:?} although the entry was promoted"),
    }
}

/// For stores without notifications that wake the waits of their own
/// process ([`lock_core::LocalWakers::wake_where`]): a release through
/// `store` ends the wait of the entry it promotes, through the same store,
/// long before the wait's maximum, and no other wait (not the entry still
/// waiting behind it, not a wait on another key). Not part of
/// [`conformance_suite!`](crate::conformance_suite), which also runs stores
/// that only poll; call it from the store's own tests.
pub async fn same_process_release_wakes_only_the_entry_it_promotes<S: LeaseStore>(store: &S) {
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("same_process_release_wakes_only_the_entry_it_promotes");
    let other_key = format!("{key}-other");
    let (holder, _) = grant(store, &key, "holder", ttl).await;
    let (next, _) = enqueue(store, &key, "next", ttl, ttl).await;
    let (behind, _) = enqueue(store, &key, "behind", ttl, ttl).await;
    // Without a wake, each wait lasts its whole maximum.
    let max = Duration::from_secs(20);
    let mut next_wait = std::pin::pin!(store.wait_for_grant(&key, next, max));
    let mut behind_wait = std::pin::pin!(store.wait_for_grant(&key, behind, max));
    let mut elsewhere = std::pin::pin!(store.wait_for_grant(&other_key, next, max));
    // One poll each registers the waits before the release.
    tokio::select! {
        biased;
        outcome = &mut next_wait => panic!("the wait ended before any release: {outcome:?}"),
        outcome = &mut behind_wait => panic!("the wait behind ended: {outcome:?}"),
        outcome = &mut elsewhere => panic!("the other key's wait ended: {outcome:?}"),
        () = std::future::ready(()) => {}
    }
    let released = Instant::now();
    assert_eq!(
        store.release(&key, holder, Fencing::Enabled).await.unwrap(),
        ReleaseOutcome::Released
    );
    let heard = next_wait.await;
    assert!(
        matches!(heard, WaitOutcome::Changed | WaitOutcome::Granted { .. }),
        "{heard:?}"
    );
    assert!(released.elapsed() < max / 4, "{:?}", released.elapsed());
    // Woken, the waiter renews its entry and learns that it holds.
    let outcomes = store
        .renew(&[RenewEntry::waiting(&key, next, ttl)], ttl)
        .await
        .unwrap();
    assert!(
        matches!(outcomes[..], [RenewOutcome::Granted(_)]),
        "{outcomes:?}"
    );
    // The entry still waiting, and the wait on another key, sleep on.
    let asleep = Duration::from_millis(200);
    assert!(
        tokio::time::timeout(asleep, behind_wait).await.is_err(),
        "the entry still waiting was woken"
    );
    assert!(
        tokio::time::timeout(asleep, elsewhere).await.is_err(),
        "a wait on another key was woken"
    );
}

/// For the same stores: a release that comes after the store answered that
/// an entry waits, but before its owner waits, still ends that wait at
/// once (the store announced the wait when it answered,
/// [`lock_core::LocalWakers::expect_wait`]): after a queueing acquisition,
/// and after a renewal that found the entry still waiting. Without it, the
/// promoted waiter sleeps to its next poll while the lock sits unused. Not
/// part of [`conformance_suite!`](crate::conformance_suite); call it from
/// the store's own tests.
pub async fn a_release_before_the_wait_still_wakes_the_promoted_entry<S: LeaseStore>(store: &S) {
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("a_release_before_the_wait_still_wakes_the_promoted_entry");
    let max = Duration::from_secs(20);
    let (holder, _) = grant(store, &key, "holder", ttl).await;
    let (next, _) = enqueue(store, &key, "next", ttl, ttl).await;
    let (last, _) = enqueue(store, &key, "last", ttl, ttl).await;
    let mut releaser = holder;
    for (promoted, name) in [(next, "next"), (last, "last")] {
        if name == "last" {
            // This time the last look is a renewal that finds it waiting.
            let outcomes = store
                .renew(&[RenewEntry::waiting(&key, last, ttl)], ttl)
                .await
                .unwrap();
            assert!(
                matches!(outcomes[..], [RenewOutcome::Waiting { .. }]),
                "{outcomes:?}"
            );
        }
        assert_eq!(
            store
                .release(&key, releaser, Fencing::Enabled)
                .await
                .unwrap(),
            ReleaseOutcome::Released
        );
        let started = Instant::now();
        let heard = store.wait_for_grant(&key, promoted, max).await;
        assert!(
            matches!(heard, WaitOutcome::Changed | WaitOutcome::Granted { .. }),
            "{name}: {heard:?}"
        );
        assert!(
            started.elapsed() < max / 4,
            "{name} slept {:?} after the release that promoted it",
            started.elapsed()
        );
        let outcomes = store
            .renew(&[RenewEntry::waiting(&key, promoted, ttl)], ttl)
            .await
            .unwrap();
        assert!(
            matches!(outcomes[..], [RenewOutcome::Granted(_)]),
            "{name}: {outcomes:?}"
        );
        releaser = promoted;
    }
}

/// A wait returns by its maximum when nothing happens, never claiming a
/// grant.
pub async fn wait_for_grant_returns_by_its_maximum<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let ttl = 30 * short_ttl(&store.capabilities());
    let key = unique_key("wait_for_grant_returns_by_its_maximum");
    grant(&store, &key, "alice", ttl).await;
    let (bob, _) = enqueue(&store, &key, "bob", ttl, ttl).await;
    let max = Duration::from_millis(300);
    let start = Instant::now();
    let heard = store.wait_for_grant(&key, bob, max).await;
    assert!(
        start.elapsed() < max + Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(
        !matches!(heard, WaitOutcome::Granted { .. }),
        "a grant was claimed while alice holds"
    );
}
