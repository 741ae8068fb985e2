//! Shared entries through raw store calls: a semaphore (shared, limit N)
//! and a reader-writer lock (shared readers, exclusive writers); waiting
//! entries learn they hold by renewing.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, LeaseId, LeaseStore, LockMode, ReleaseOutcome,
    RenewEntry, RenewOutcome,
};

use crate::support::{StoreFactory, unique_key};

const TTL: Duration = Duration::from_secs(30);

/// One request: `mode` with `limit`, queueing or not.
async fn ask<S: LeaseStore>(
    store: &S,
    key: &str,
    owner: &str,
    mode: LockMode,
    limit: u32,
    queue: bool,
) -> (LeaseId, AcquireOutcome) {
    let lease_id = LeaseId::random();
    let mut request = AcquireRequest::new(key, owner, lease_id, TTL).with_mode(mode, limit);
    if queue {
        request = request.queued(TTL);
    }
    let outcome = store
        .acquire(request)
        .await
        .unwrap_or_else(|error| panic!("{owner} asking for {key:?} failed: {error}"));
    (lease_id, outcome)
}

fn token(outcome: &AcquireOutcome) -> u64 {
    let token = match outcome {
        AcquireOutcome::Acquired(grant) => grant.token.clone(),
        AcquireOutcome::Queued(queued) => queued.token.clone(),
        other => panic!("expected a grant or a queued entry, got {other:?}"),
    };
    token.and_then(|token| token.to_u64()).expect("a token")
}

/// Renews an entry believed waiting: its token when it holds now.
async fn holds<S: LeaseStore>(store: &S, key: &str, lease_id: LeaseId) -> Option<u64> {
    let outcome = store
        .renew(&[RenewEntry::waiting(key, lease_id, TTL)], TTL)
        .await
        .unwrap_or_else(|error| panic!("renewing a waiting entry of {key:?} failed: {error}"));
    match &outcome[..] {
        [RenewOutcome::Granted(grant)] => grant.token.as_ref().and_then(|t| t.to_u64()),
        [RenewOutcome::Waiting { .. }] => None,
        other => panic!("{other:?}"),
    }
}

/// Owners of the key's holders, in grant order, and how many wait.
async fn queue_of<S: LeaseStore>(store: &S, key: &str) -> (Vec<String>, usize) {
    let info = store
        .inspect(key)
        .await
        .unwrap_or_else(|error| panic!("inspect {key:?} failed: {error}"))
        .expect("known key");
    let holders = info.holders.iter().map(|h| h.owner.clone()).collect();
    (holders, info.waiting)
}

/// A semaphore of 3 grants 3 shared entries, refuses a fourth, queues a
/// fifth and hands it the permit a release frees, in the release's step.
pub async fn shared_a_semaphore_grants_up_to_its_limit_and_hands_a_freed_permit_to_the_next<
    F: StoreFactory,
>(
    factory: &F,
) {
    let store = factory.connect().await;
    let key = unique_key("semaphore");
    let mut permits = Vec::new();
    for i in 0..3 {
        let (lease, outcome) =
            ask(&store, &key, &format!("p{i}"), LockMode::Shared, 3, false).await;
        assert!(
            matches!(outcome, AcquireOutcome::Acquired(_)),
            "{outcome:?}"
        );
        permits.push((lease, token(&outcome)));
    }
    assert!(permits.windows(2).all(|pair| pair[0].1 < pair[1].1));
    let (_, refused) = ask(&store, &key, "p3", LockMode::Shared, 3, false).await;
    assert!(matches!(refused, AcquireOutcome::Held(ref holder) if holder.owner == "p0"));
    let (waiter, queued) = ask(&store, &key, "p4", LockMode::Shared, 3, true).await;
    assert!(token(&queued) > permits[2].1);
    let info = store.inspect(&key).await.unwrap().expect("known key");
    assert_eq!(
        (info.holders.len(), info.waiting, info.limit),
        (3, 1, Some(3))
    );
    assert!(info.holders.iter().all(|h| h.mode == LockMode::Shared));

    assert_eq!(holds(&store, &key, waiter).await, None);
    let released = store.release(&key, permits[1].0, Fencing::Enabled).await;
    assert_eq!(released.unwrap(), ReleaseOutcome::Released);
    assert_eq!(holds(&store, &key, waiter).await, Some(token(&queued)));
    assert_eq!(
        queue_of(&store, &key).await,
        (vec!["p0".into(), "p2".into(), "p4".into()], 0)
    );
}

/// A waiting writer holds once the readers before it are gone, and readers
/// that came after it wait, though readers hold.
pub async fn shared_a_waiting_writer_waits_for_the_readers_before_it_and_blocks_those_after<
    F: StoreFactory,
>(
    factory: &F,
) {
    let store = factory.connect().await;
    let key = unique_key("rw");
    let limit = 64;
    let (r1, _) = ask(&store, &key, "r1", LockMode::Shared, limit, false).await;
    let (r2, _) = ask(&store, &key, "r2", LockMode::Shared, limit, false).await;
    let (writer, _) = ask(&store, &key, "w", LockMode::Exclusive, limit, true).await;
    // A reader after the waiting writer waits, though readers hold.
    let (r3, queued) = ask(&store, &key, "r3", LockMode::Shared, limit, true).await;
    assert!(matches!(queued, AcquireOutcome::Queued(_)), "{queued:?}");
    let (_, refused) = ask(&store, &key, "r4", LockMode::Shared, limit, false).await;
    assert!(matches!(refused, AcquireOutcome::Held(_)), "{refused:?}");
    assert_eq!(
        queue_of(&store, &key).await,
        (vec!["r1".into(), "r2".into()], 2)
    );

    store.release(&key, r1, Fencing::Enabled).await.unwrap();
    assert_eq!(
        holds(&store, &key, writer).await,
        None,
        "a reader still holds"
    );
    store.release(&key, r2, Fencing::Enabled).await.unwrap();
    assert!(holds(&store, &key, writer).await.is_some());
    assert_eq!(queue_of(&store, &key).await, (vec!["w".into()], 1));
    assert_eq!(
        holds(&store, &key, r3).await,
        None,
        "a reader beside the writer"
    );
    store.release(&key, writer, Fencing::Enabled).await.unwrap();
    assert!(holds(&store, &key, r3).await.is_some());
    assert_eq!(queue_of(&store, &key).await, (vec!["r3".into()], 0));
}

/// Releasing an exclusive holder promotes the shared entries behind it up
/// to the limit; a waiting reader that gives up makes room for the next.
pub async fn shared_an_exclusive_release_promotes_the_shared_entries_behind_it_up_to_the_limit<
    F: StoreFactory,
>(
    factory: &F,
) {
    let store = factory.connect().await;
    let key = unique_key("promote_many");
    let (writer, _) = ask(&store, &key, "w", LockMode::Exclusive, 2, false).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let (lease, _) = ask(&store, &key, &format!("r{i}"), LockMode::Shared, 2, true).await;
        readers.push(lease);
    }
    store.release(&key, writer, Fencing::Enabled).await.unwrap();
    assert_eq!(
        queue_of(&store, &key).await,
        (vec!["r0".into(), "r1".into()], 1)
    );
    assert!(holds(&store, &key, readers[0]).await.is_some());
    assert_eq!(
        holds(&store, &key, readers[2]).await,
        None,
        "beyond the limit"
    );
    // The writer's place freed by a waiting reader that gives up.
    store
        .release(&key, readers[1], Fencing::Enabled)
        .await
        .unwrap();
    assert!(holds(&store, &key, readers[2]).await.is_some());
}

/// A waiting writer that gives up lets the readers it blocked hold.
pub async fn shared_releasing_a_waiting_writer_promotes_the_readers_it_blocked<F: StoreFactory>(
    factory: &F,
) {
    let store = factory.connect().await;
    let key = unique_key("writer_gives_up");
    let (_r1, _) = ask(&store, &key, "r1", LockMode::Shared, 8, false).await;
    let (writer, _) = ask(&store, &key, "w", LockMode::Exclusive, 8, true).await;
    let (r2, _) = ask(&store, &key, "r2", LockMode::Shared, 8, true).await;
    assert_eq!(holds(&store, &key, r2).await, None);
    store.release(&key, writer, Fencing::Enabled).await.unwrap();
    assert!(holds(&store, &key, r2).await.is_some());
    assert_eq!(
        queue_of(&store, &key).await,
        (vec!["r1".into(), "r2".into()], 0)
    );
}

/// Twelve clients asking at once for a semaphore of 3: exactly 3 hold.
pub async fn shared_concurrent_shared_requests_never_exceed_the_limit<F: StoreFactory>(
    factory: &F,
) {
    for round in 0..5 {
        let key = unique_key("shared_race");
        let mut clients = Vec::new();
        for _ in 0..12 {
            clients.push(factory.connect().await);
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
        let mut attempts = Vec::new();
        for (i, store) in clients.into_iter().enumerate() {
            let (key, barrier) = (key.clone(), barrier.clone());
            attempts.push(tokio::spawn(async move {
                barrier.wait().await;
                let (_, outcome) =
                    ask(&store, &key, &format!("c{i}"), LockMode::Shared, 3, false).await;
                matches!(outcome, AcquireOutcome::Acquired(_))
            }));
        }
        let mut granted = 0;
        for attempt in attempts {
            granted += usize::from(attempt.await.unwrap());
        }
        assert_eq!(granted, 3, "round {round}");
    }
}
