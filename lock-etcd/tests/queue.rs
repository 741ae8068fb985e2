//! The etcd store's queue beyond the shared suite: shared entries
//! (semaphores, reader-writer locks) granted by position, tries that never
//! leave an entry, promoted entries moved to the holder's lease with their
//! token, lock keys of the previous version holding ahead of every entry,
//! and a waiting entry nobody renews deleted although its etcd lease lives.

use std::time::Duration;

use conformance_tests::harness::{EtcdServer, HarnessError, shared_etcd};
use conformance_tests::unique_key;
use etcd_client::{GetOptions, PutOptions};
use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, FencingToken, LeaseId, LeaseStore, LockMode,
    ReleaseOutcome, RenewEntry, RenewOutcome, WaitOutcome,
};
use lock_etcd::{EtcdConfig, EtcdStore};
use tokio::time::Instant;

async fn server() -> Option<&'static EtcdServer> {
    match shared_etcd().await {
        Ok(server) => Some(server),
        Err(error) => {
            eprintln!("skipped: {}", skip_reason(error));
            None
        }
    }
}

fn skip_reason(error: HarnessError) -> String {
    error.skip_reason().unwrap_or_else(|| panic!("{error}"))
}

async fn connect(server: &EtcdServer) -> EtcdStore {
    EtcdStore::connect_with(EtcdConfig::new(server.endpoints()))
        .await
        .expect("connect")
}

/// A long ttl, so nothing expires during a case unless it means to.
fn long(store: &EtcdStore) -> Duration {
    store.min_ttl() * 15
}

async fn acquire(
    store: &EtcdStore,
    key: &str,
    owner: &str,
    mode: LockMode,
    limit: u32,
    queue: bool,
) -> (LeaseId, AcquireOutcome) {
    let lease_id = LeaseId::random();
    let mut request = AcquireRequest::new(key, owner, lease_id, long(store)).with_mode(mode, limit);
    if queue {
        request = request.queued(long(store));
    }
    let outcome = store.acquire(request).await.expect("acquire");
    (lease_id, outcome)
}

fn token_of(outcome: &AcquireOutcome) -> FencingToken {
    match outcome {
        AcquireOutcome::Acquired(grant) => grant.token.clone().expect("a token"),
        AcquireOutcome::Queued(queued) => queued.token.clone().expect("a token"),
        other => panic!("no token: {other:?}"),
    }
}

/// How many keys the lock key's range holds in etcd.
async fn keys_in_range(store: &EtcdStore, key: &str) -> usize {
    let (start, end) = store.etcd_queue_range(key);
    let reply = store
        .client()
        .clone()
        .get(
            start,
            Some(GetOptions::new().with_range(end).with_count_only()),
        )
        .await
        .expect("count");
    usize::try_from(reply.count()).expect("a count")
}

async fn granted_by_wait(store: &EtcdStore, key: &str, lease_id: LeaseId) -> Option<FencingToken> {
    match store
        .wait_for_grant(key, lease_id, Duration::from_secs(10))
        .await
    {
        WaitOutcome::Granted { token } => token,
        other => panic!("expected a grant, heard {other:?}"),
    }
}

/// A semaphore of 3: three shared entries hold together, a fourth try is
/// refused with nothing added, a fourth queued entry waits and is granted,
/// by its watch, when one permit is released; tokens follow grant order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_grants_up_to_its_limit_then_queues() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let waiter = connect(server).await;
    let key = unique_key("semaphore");
    let mut permits = Vec::new();
    let mut last = None;
    for i in 0..3 {
        let (lease_id, outcome) =
            acquire(&store, &key, &format!("p{i}"), LockMode::Shared, 3, false).await;
        let token = token_of(&outcome);
        assert!(Some(&token) > last.as_ref(), "{outcome:?}");
        last = Some(token);
        permits.push(lease_id);
    }
    let (_, refused) = acquire(&store, &key, "try", LockMode::Shared, 3, false).await;
    match refused {
        AcquireOutcome::Held(holder) => {
            assert_eq!(holder.owner, "p0");
            assert_eq!(holder.mode, LockMode::Shared);
        }
        other => panic!("a full semaphore granted a try: {other:?}"),
    }
    assert_eq!(
        keys_in_range(&store, &key).await,
        3,
        "a refused try added an entry"
    );
    let info = store.inspect(&key).await.unwrap().expect("a known key");
    assert_eq!(info.holders.len(), 3, "{info:?}");
    assert_eq!(info.limit, Some(3));

    let (fourth, queued) = acquire(&waiter, &key, "p3", LockMode::Shared, 3, true).await;
    let AcquireOutcome::Queued(queued) = queued else {
        panic!("expected Queued, got {queued:?}");
    };
    assert!(queued.token > last);
    let wait = waiter.wait_for_grant(&key, fourth, Duration::from_secs(10));
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .release(&key, permits[1], Fencing::Enabled)
            .await
            .unwrap()
    };
    let (heard, released) = tokio::join!(wait, release);
    assert_eq!(released, ReleaseOutcome::Released);
    assert_eq!(
        heard,
        WaitOutcome::Granted {
            token: queued.token
        }
    );
    let info = store.inspect(&key).await.unwrap().expect("a known key");
    let owners: Vec<&str> = info.holders.iter().map(|h| h.owner.as_str()).collect();
    assert_eq!(owners, ["p0", "p2", "p3"]);
    assert_eq!(info.waiting, 0);
}

/// A reader-writer lock: readers hold together; a writer waits for them
/// and blocks the readers after it (a try of theirs is refused, a queued
/// one waits); the writer holds once the readers left, alone, and the
/// reader behind it once it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_blocks_later_readers() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let key = unique_key("rw");
    let limit = 100;
    let (r1, first) = acquire(&store, &key, "r1", LockMode::Shared, limit, true).await;
    let (r2, second) = acquire(&store, &key, "r2", LockMode::Shared, limit, false).await;
    assert!(matches!(first, AcquireOutcome::Acquired(_)), "{first:?}");
    assert!(matches!(second, AcquireOutcome::Acquired(_)), "{second:?}");
    let (writer, outcome) = acquire(&store, &key, "w", LockMode::Exclusive, limit, true).await;
    let writer_token = token_of(&outcome);
    assert!(matches!(outcome, AcquireOutcome::Queued(_)), "{outcome:?}");
    let (_, refused) = acquire(&store, &key, "r3", LockMode::Shared, limit, false).await;
    assert!(matches!(refused, AcquireOutcome::Held(_)), "{refused:?}");
    let (r4, outcome) = acquire(&store, &key, "r4", LockMode::Shared, limit, true).await;
    assert!(matches!(outcome, AcquireOutcome::Queued(_)), "{outcome:?}");

    store.release(&key, r1, Fencing::Enabled).await.unwrap();
    let renewal = store
        .renew(
            &[RenewEntry::waiting(&key, writer, long(&store))],
            long(&store),
        )
        .await
        .unwrap();
    assert!(
        matches!(renewal[0], RenewOutcome::Waiting { .. }),
        "the writer holds with a reader left: {renewal:?}"
    );
    store.release(&key, r2, Fencing::Enabled).await.unwrap();
    assert_eq!(
        granted_by_wait(&store, &key, writer).await,
        Some(writer_token)
    );
    let info = store.inspect(&key).await.unwrap().expect("a known key");
    let owners: Vec<&str> = info.holders.iter().map(|h| h.owner.as_str()).collect();
    assert_eq!(owners, ["w"]);
    assert_eq!(info.waiting, 1);
    store.release(&key, writer, Fencing::Enabled).await.unwrap();
    assert!(granted_by_wait(&store, &key, r4).await.is_some());
}

/// Many tries on a semaphore at once: exactly its limit are granted, and
/// the others leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tries_fill_a_semaphore_exactly() {
    let Some(server) = server().await else { return };
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(connect(server).await);
    }
    let key = unique_key("semaphore_race");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(16));
    let tries = (0..16).map(|i| {
        let (store, key, barrier) = (stores[i % 4].clone(), key.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let (_, outcome) =
                acquire(&store, &key, &format!("t{i}"), LockMode::Shared, 5, false).await;
            matches!(outcome, AcquireOutcome::Acquired(_))
        })
    });
    let mut granted = 0;
    for attempt in tries.collect::<Vec<_>>() {
        granted += usize::from(attempt.await.expect("try"));
    }
    assert_eq!(granted, 5);
    assert_eq!(keys_in_range(&stores[0], &key).await, 5);
    let info = stores[0].inspect(&key).await.unwrap().expect("a known key");
    assert_eq!((info.holders.len(), info.waiting), (5, 0), "{info:?}");
}

/// A waiting entry stays on the waiter's etcd lease when promoted, until
/// its renewal as held moves it to the holder's lease: same key, same
/// create revision (its token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_entry_moves_to_the_holders_lease_keeping_its_token() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let key = unique_key("promoted");
    let ttl = long(&store);
    let waiter_ttl = store.min_ttl() * 3;
    let (holder, _) = acquire(&store, &key, "alice", LockMode::Exclusive, 1, false).await;
    let bob = LeaseId::random();
    let request = AcquireRequest::new(&key, "bob", bob, ttl).queued(waiter_ttl);
    let queued = store.acquire(request).await.unwrap();
    let token = token_of(&queued);
    let entry = store.etcd_entry_key(&key, bob);
    let mut client = store.client().clone();
    let before = client.get(entry.clone(), None).await.unwrap().kvs()[0].clone();

    store.release(&key, holder, Fencing::Enabled).await.unwrap();
    assert_eq!(
        granted_by_wait(&store, &key, bob).await,
        Some(token.clone())
    );
    let promoted = client.get(entry.clone(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(promoted.lease(), before.lease(), "moved before its renewal");
    let left = client
        .lease_client()
        .time_to_live(promoted.lease(), None)
        .await
        .unwrap()
        .ttl();
    assert!(
        u64::try_from(left).unwrap() <= waiter_ttl.as_secs(),
        "a promoted entry keeps its waiter expiry: {left} s left"
    );

    let renewed = store
        .renew(&[RenewEntry::held(&key, bob)], ttl)
        .await
        .unwrap();
    assert_eq!(renewed, vec![RenewOutcome::Renewed { ttl }]);
    let moved = client.get(entry, None).await.unwrap().kvs()[0].clone();
    assert_ne!(moved.lease(), before.lease(), "still on the waiter's lease");
    assert_eq!(moved.create_revision(), before.create_revision());
    assert_eq!(
        Some(token),
        u64::try_from(moved.create_revision())
            .ok()
            .map(FencingToken::from)
    );
    let left = client
        .lease_client()
        .time_to_live(moved.lease(), None)
        .await
        .unwrap()
        .ttl();
    assert!(
        u64::try_from(left).unwrap() > waiter_ttl.as_secs(),
        "{left} s left"
    );
}

/// A lock key written by the previous version (`<namespace>lock/<key>`,
/// `dlock1:` value) holds ahead of every entry: tries are refused naming
/// its owner, queued entries wait behind it and are granted by their watch
/// once it is deleted; tokens keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_lock_key_holds_ahead_of_every_entry() {
    let Some(server) = server().await else { return };
    let store = connect(server).await;
    let key = unique_key("legacy");
    let (old_key, _) = store.etcd_queue_range(&key);
    let mut client = store.client().clone();
    let old_lease = client.lease_client().grant(60, None).await.unwrap().id();
    let old_lease_id = LeaseId::random();
    let put = client
        .put(
            old_key.clone(),
            format!("dlock1:{old_lease_id}:old-version"),
            Some(PutOptions::new().with_lease(old_lease)),
        )
        .await
        .unwrap();
    let old_token = put.header().unwrap().revision();

    for mode in [LockMode::Exclusive, LockMode::Shared] {
        let (_, outcome) = acquire(&store, &key, "new", mode, 1, false).await;
        match outcome {
            AcquireOutcome::Held(holder) => assert_eq!(holder.owner, "old-version"),
            other => panic!("granted beside an old lock: {other:?}"),
        }
    }
    // The old lock is exclusive: it holds alone whatever the limit.
    let (_, other_limit) = acquire(&store, &key, "new", LockMode::Shared, 4, false).await;
    assert!(
        matches!(&other_limit, AcquireOutcome::Held(holder) if holder.owner == "old-version"),
        "{other_limit:?}"
    );
    let info = store.inspect(&key).await.unwrap().expect("a known key");
    assert_eq!(
        info.holder.map(|holder| holder.owner).as_deref(),
        Some("old-version")
    );

    let (first, queued) = acquire(&store, &key, "first", LockMode::Exclusive, 1, true).await;
    let (second, _) = acquire(&store, &key, "second", LockMode::Exclusive, 1, true).await;
    let AcquireOutcome::Queued(queued) = queued else {
        panic!("expected Queued behind the old lock, got {queued:?}");
    };
    assert_eq!(
        queued.holder.map(|holder| holder.owner).as_deref(),
        Some("old-version")
    );
    let token = queued.token.clone().expect("a token");
    assert!(token > FencingToken::from(u64::try_from(old_token).unwrap()));
    let renewal = store
        .renew(
            &[RenewEntry::waiting(&key, first, long(&store))],
            long(&store),
        )
        .await
        .unwrap();
    assert!(
        matches!(renewal[0], RenewOutcome::Waiting { .. }),
        "{renewal:?}"
    );

    // The old holder releases (as the previous version does: by value).
    let wait = store.wait_for_grant(&key, first, Duration::from_secs(10));
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.delete(old_key.clone(), None).await.unwrap();
    };
    let (heard, ()) = tokio::join!(wait, release);
    assert_eq!(heard, WaitOutcome::Granted { token: Some(token) });
    store.release(&key, first, Fencing::Enabled).await.unwrap();
    assert!(granted_by_wait(&store, &key, second).await.is_some());
    client.lease_client().revoke(old_lease).await.unwrap();
}

/// A waiting entry whose waiter stopped renewing it (its process lives
/// and keeps the shared waiter lease alive for another entry) is deleted
/// after its waiter ttl, promoted or not: the entry behind it holds by
/// then, not much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_entry_nobody_renews_ends_with_its_waiter_ttl_on_a_shared_lease() {
    let Some(server) = server().await else { return };
    let holder_store = connect(server).await;
    let store = connect(server).await;
    let key = unique_key("stale_waiter");
    let ttl = long(&store);
    let waiter_ttl = store.min_ttl();
    let (holder, _) = acquire(&holder_store, &key, "alice", LockMode::Exclusive, 1, false).await;
    let dead_since = Instant::now();
    let request = AcquireRequest::new(&key, "dead", LeaseId::random(), ttl).queued(waiter_ttl);
    let AcquireOutcome::Queued(dead) = store.acquire(request).await.unwrap() else {
        panic!("expected Queued");
    };
    let carol = LeaseId::random();
    let request = AcquireRequest::new(&key, "carol", carol, ttl).queued(waiter_ttl);
    assert!(matches!(
        store.acquire(request).await.unwrap(),
        AcquireOutcome::Queued(_)
    ));
    // The holder leaves: the dead waiter is promoted, carol waits.
    holder_store
        .release(&key, holder, Fencing::Enabled)
        .await
        .unwrap();
    let limit = dead.ttl + Duration::from_secs(3);
    let granted = loop {
        let outcome = store
            .renew(&[RenewEntry::waiting(&key, carol, waiter_ttl)], ttl)
            .await
            .unwrap();
        match &outcome[0] {
            RenewOutcome::Granted(_) => break dead_since.elapsed(),
            RenewOutcome::Waiting { .. } => {}
            other => panic!("carol's entry: {other:?}"),
        }
        assert!(
            dead_since.elapsed() < limit,
            "a waiter nobody renews held the queue for more than {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        granted >= dead.ttl.mul_f64(0.99),
        "the dead waiter's entry ended after {granted:?}, before its waiter ttl"
    );
}
