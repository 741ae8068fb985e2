//! Shared entries against a real PostgreSQL: a semaphore (shared, limit N)
//! and a reader-writer lock (shared readers, exclusive writers), through
//! raw store calls, with the grants a release hands out heard by
//! `wait_for_grant`.

use std::time::Duration;

use conformance_tests::harness::{or_skip, shared_postgres};
use conformance_tests::unique_key;
use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, LeaseId, LeaseStore, LockMode, ReleaseOutcome,
    RenewEntry, RenewOutcome, WaitOutcome,
};
use lock_postgres::PostgresStore;

const TTL: Duration = Duration::from_secs(30);

async fn client() -> Option<PostgresStore> {
    let server = or_skip(shared_postgres().await)?;
    Some(
        PostgresStore::builder()
            .max_connections(4)
            .connect(server.url())
            .await
            .expect("connect"),
    )
}

/// One request: `mode` with `limit`, queueing or not.
async fn ask(
    store: &PostgresStore,
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
    (lease_id, store.acquire(request).await.unwrap())
}

fn token(outcome: &AcquireOutcome) -> u64 {
    let token = match outcome {
        AcquireOutcome::Acquired(grant) => grant.token.clone(),
        AcquireOutcome::Queued(queued) => queued.token.clone(),
        other => panic!("expected a grant or a queued entry, got {other:?}"),
    };
    token.and_then(|token| token.to_u64()).expect("a token")
}

/// Renews an entry believed waiting: whether it holds now.
async fn holds(store: &PostgresStore, key: &str, lease_id: LeaseId) -> bool {
    let outcome = store
        .renew(&[RenewEntry::waiting(key, lease_id, TTL)], TTL)
        .await
        .unwrap();
    match &outcome[..] {
        [RenewOutcome::Granted(_)] => true,
        [RenewOutcome::Waiting { .. }] => false,
        other => panic!("{other:?}"),
    }
}

/// Owners of the key's holders, in grant order, and how many wait.
async fn queue_of(store: &PostgresStore, key: &str) -> (Vec<String>, usize) {
    let info = store.inspect(key).await.unwrap().expect("known key");
    let holders = info.holders.iter().map(|h| h.owner.clone()).collect();
    (holders, info.waiting)
}

/// Asserts that no grant of `lease_id` is heard for a while.
async fn hears_no_grant(store: &PostgresStore, key: &str, lease_id: LeaseId) {
    let heard = store
        .wait_for_grant(key, lease_id, Duration::from_millis(300))
        .await;
    assert!(
        !matches!(heard, WaitOutcome::Granted { .. }),
        "a grant was announced to a waiting entry"
    );
}

/// Waits for the grant notification of `lease_id`, failing on anything
/// else within a few seconds.
async fn hears_grant(store: &PostgresStore, key: &str, lease_id: LeaseId) -> u64 {
    match store
        .wait_for_grant(key, lease_id, Duration::from_secs(5))
        .await
    {
        WaitOutcome::Granted { token } => token.and_then(|t| t.to_u64()).expect("a token"),
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_grants_up_to_its_limit_and_hands_a_freed_permit_to_the_next() {
    let Some(store) = client().await else {
        return;
    };
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
    let info = store.inspect(&key).await.unwrap().unwrap();
    assert_eq!(
        (info.holders.len(), info.waiting, info.limit),
        (3, 1, Some(3))
    );
    assert!(info.holders.iter().all(|h| h.mode == LockMode::Shared));

    assert!(!holds(&store, &key, waiter).await);
    hears_no_grant(&store, &key, waiter).await;
    let wait = tokio::spawn({
        let (store, key) = (store.clone(), key.clone());
        async move { hears_grant(&store, &key, waiter).await }
    });
    // The middle permit goes: the waiter holds from that release on.
    let released = store.release(&key, permits[1].0, Fencing::Enabled).await;
    assert_eq!(released.unwrap(), ReleaseOutcome::Released);
    assert_eq!(wait.await.unwrap(), token(&queued));
    assert_eq!(
        queue_of(&store, &key).await,
        (vec!["p0".into(), "p2".into(), "p4".into()], 0)
    );
    assert!(holds(&store, &key, waiter).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_waits_for_the_readers_before_it_and_blocks_those_after() {
    let Some(store) = client().await else {
        return;
    };
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
    assert!(!holds(&store, &key, writer).await, "a reader still holds");
    let writer_wait = tokio::spawn({
        let (store, key) = (store.clone(), key.clone());
        async move { hears_grant(&store, &key, writer).await }
    });
    store.release(&key, r2, Fencing::Enabled).await.unwrap();
    writer_wait.await.unwrap();
    assert_eq!(queue_of(&store, &key).await, (vec!["w".into()], 1));
    assert!(!holds(&store, &key, r3).await, "a reader beside the writer");
    hears_no_grant(&store, &key, r3).await;

    let reader_wait = tokio::spawn({
        let (store, key) = (store.clone(), key.clone());
        async move { hears_grant(&store, &key, r3).await }
    });
    store.release(&key, writer, Fencing::Enabled).await.unwrap();
    reader_wait.await.unwrap();
    assert_eq!(queue_of(&store, &key).await, (vec!["r3".into()], 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_release_promotes_the_shared_entries_behind_it_up_to_the_limit() {
    let Some(store) = client().await else {
        return;
    };
    let key = unique_key("promote_many");
    let (writer, _) = ask(&store, &key, "w", LockMode::Exclusive, 2, false).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let (lease, outcome) = ask(&store, &key, &format!("r{i}"), LockMode::Shared, 2, true).await;
        readers.push((lease, token(&outcome)));
    }
    let waits: Vec<_> = readers[..2]
        .iter()
        .map(|(lease, _)| {
            let (store, key, lease) = (store.clone(), key.clone(), *lease);
            tokio::spawn(async move { hears_grant(&store, &key, lease).await })
        })
        .collect();
    store.release(&key, writer, Fencing::Enabled).await.unwrap();
    for (wait, (_, token)) in waits.into_iter().zip(&readers) {
        assert_eq!(wait.await.unwrap(), *token);
    }
    assert_eq!(
        queue_of(&store, &key).await,
        (vec!["r0".into(), "r1".into()], 1)
    );
    assert!(!holds(&store, &key, readers[2].0).await, "beyond the limit");
    hears_no_grant(&store, &key, readers[2].0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_a_waiting_writer_promotes_the_readers_it_blocked() {
    let Some(store) = client().await else {
        return;
    };
    let key = unique_key("writer_gives_up");
    let (_r1, _) = ask(&store, &key, "r1", LockMode::Shared, 8, false).await;
    let (writer, _) = ask(&store, &key, "w", LockMode::Exclusive, 8, true).await;
    let (r2, _) = ask(&store, &key, "r2", LockMode::Shared, 8, true).await;
    let wait = tokio::spawn({
        let (store, key) = (store.clone(), key.clone());
        async move { hears_grant(&store, &key, r2).await }
    });
    // The writer's wait ends (timeout, cancellation): the reader behind it
    // joins the one holding.
    store.release(&key, writer, Fencing::Enabled).await.unwrap();
    wait.await.unwrap();
    assert_eq!(
        queue_of(&store, &key).await,
        (vec!["r1".into(), "r2".into()], 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_shared_requests_never_exceed_the_limit() {
    let Some(store) = client().await else {
        return;
    };
    for round in 0..5 {
        let key = unique_key("shared_race");
        let mut clients = Vec::new();
        for _ in 0..12 {
            clients.push(client().await.unwrap_or_else(|| store.clone()));
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
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
        let (holders, waiting) = queue_of(&store, &key).await;
        assert_eq!((holders.len(), waiting), (3, 0));
    }
}
