//! Cases for semaphores and reader-writer locks: the same queue with a
//! limit and shared entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::{
    AcquireRequest, LeaseId, LeaseStore, LockError, LockKind, LockMode, Locker, RwLock, Semaphore,
};
use tokio::time::Instant;

use crate::support::{StoreFactory, eventually, expiry_slack, granted, locker, unique_key};

/// How long waits that should succeed may take.
const LONG_WAIT: Duration = Duration::from_secs(15);

async fn waiting<S: LeaseStore>(store: &S, key: &str) -> usize {
    store
        .inspect(key)
        .await
        .unwrap_or_else(|error| panic!("inspect {key:?} failed: {error}"))
        .map_or(0, |info| info.waiting)
}

/// Counts holders inside a critical section and remembers the most at once.
#[derive(Default)]
struct Occupancy {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Occupancy {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// 16 tasks on 4 lockers share a semaphore of 3 permits: never more than 3
/// holders at once, and 3 at some point; permits' tokens all differ.
pub async fn semaphore_never_has_more_holders_than_permits<F: StoreFactory>(factory: &F) {
    let id = unique_key("semaphore_never_has_more_holders_than_permits");
    let occupancy = Arc::new(Occupancy::default());
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for l in 0..4 {
        let locker = Arc::new(locker(factory, &format!("locker-{l}")).await);
        for _ in 0..4 {
            let (locker, id) = (locker.clone(), id.clone());
            let (occupancy, tokens) = (occupancy.clone(), tokens.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..3 {
                    let permit = Semaphore::new(&*locker, &id, 3)
                        .acquire(LONG_WAIT)
                        .await
                        .unwrap();
                    occupancy.enter();
                    tokens.lock().unwrap().push(permit.fencing_token().cloned());
                    // Until the permits were all in use once (or a while
                    // passed): a store whose waiters learn of their grant
                    // late still shows three holders at once.
                    let give_up = Instant::now() + Duration::from_secs(3);
                    while occupancy.most.load(Ordering::SeqCst) < 3 && Instant::now() < give_up {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    occupancy.leave();
                    permit.unlock().await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("semaphore task");
    }
    let most = occupancy.most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} holders of a 3-permit semaphore at once");
    assert_eq!(most, 3, "the permits were never all in use at once");
    let mut tokens = tokens.lock().unwrap().clone();
    let count = tokens.len();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), count, "two permits carried one token");
}

/// Permits go to waiters in arrival order (as their tokens show).
pub async fn semaphore_grants_permits_in_arrival_order<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let holder = locker(factory, "holder").await;
    let id = unique_key("semaphore_grants_permits_in_arrival_order");
    let semaphore = Semaphore::new(&holder, &id, 2);
    let first = semaphore.try_acquire().await.unwrap();
    let second = semaphore.try_acquire().await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..4 {
        let locker = locker(factory, &format!("waiter-{i}")).await;
        let (key, order) = (id.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let permit = Semaphore::new(&locker, &key, 2)
                .acquire(LONG_WAIT)
                .await
                .unwrap();
            // Two permits are granted at once, so their holders may get
            // here in any order: the store's grant order is in the tokens.
            order
                .lock()
                .unwrap()
                .push((i, permit.fencing_token().cloned()));
            tokio::time::sleep(Duration::from_millis(50)).await;
            permit.unlock().await.unwrap();
        }));
        eventually(LONG_WAIT, "the waiter is in line", || async {
            waiting(&store, &id).await == i + 1
        })
        .await;
    }
    first.unlock().await.unwrap();
    second.unlock().await.unwrap();
    for waiter in waiters {
        waiter.await.expect("waiter task");
    }
    let mut order = order.lock().unwrap().clone();
    order.sort_by(|a, b| a.1.cmp(&b.1));
    let waiters: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        waiters,
        [0, 1, 2, 3],
        "permits out of arrival order: {order:?}"
    );
}

/// A permit whose holder died is free again within its lease.
pub async fn semaphore_dead_holder_frees_its_permit_within_its_lease<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let caps = store.capabilities();
    let alice = locker(factory, "alice").await;
    let id = unique_key("semaphore_dead_holder_frees_its_permit_within_its_lease");
    let ttl = alice.options().lease();
    let started = Instant::now();
    for _ in 0..2 {
        let request = AcquireRequest::new(&id, "dead", LeaseId::random(), ttl)
            .with_mode(LockMode::Shared, 2)
            .with_fencing(if caps.fencing {
                lock_core::Fencing::Enabled
            } else {
                lock_core::Fencing::Disabled
            });
        granted(store.acquire(request).await.unwrap());
    }
    let limit = ttl + expiry_slack(&caps);
    let permit = Semaphore::new(&alice, &id, 2).acquire(limit).await;
    let took = started.elapsed();
    assert!(permit.is_ok(), "no permit after {took:?}: {permit:?}");
    assert!(
        took >= ttl.mul_f64(0.99),
        "a live permit was taken after {took:?}"
    );
}

/// Readers hold together; a writer waits for them and then holds alone.
pub async fn rwlock_readers_share_and_a_writer_holds_alone<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let carol = locker(factory, "carol").await;
    let id = unique_key("rwlock_readers_share_and_a_writer_holds_alone");
    let a = RwLock::new(&alice, &id).try_read().await.unwrap();
    let b = RwLock::new(&bob, &id).try_read().await.unwrap();
    let info = store.inspect(&id).await.unwrap().expect("held");
    assert_eq!(info.holders.len(), 2, "{info:?}");
    let writer = tokio::spawn({
        let id = id.clone();
        async move {
            let guard = RwLock::new(&carol, &id).write(LONG_WAIT).await.unwrap();
            (Instant::now(), guard)
        }
    });
    eventually(LONG_WAIT, "the writer is in line", || async {
        waiting(&store, &id).await == 1
    })
    .await;
    a.unlock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "the writer held beside a reader");
    let readers_gone = Instant::now();
    b.unlock().await.unwrap();
    let (granted_at, guard) = writer.await.expect("writer task");
    assert!(granted_at >= readers_gone);
    match RwLock::new(&alice, &id).try_read().await {
        Err(LockError::Taken { holder, .. }) => assert_eq!(holder.as_deref(), Some("carol")),
        other => panic!("a reader beside the writer: {other:?}"),
    }
    guard.unlock().await.unwrap();
}

/// A waiting writer blocks the readers that come after it: a stream of
/// readers does not starve it.
pub async fn rwlock_a_waiting_writer_is_not_starved_by_readers<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let alice = locker(factory, "alice").await;
    let writer_locker = locker(factory, "writer").await;
    let late = Arc::new(locker(factory, "late-reader").await);
    let id = unique_key("rwlock_a_waiting_writer_is_not_starved_by_readers");
    let first = RwLock::new(&alice, &id).try_read().await.unwrap();
    let writer = tokio::spawn({
        let id = id.clone();
        async move {
            let guard = RwLock::new(&writer_locker, &id)
                .write(LONG_WAIT)
                .await
                .unwrap();
            let at = Instant::now();
            tokio::time::sleep(Duration::from_millis(100)).await;
            guard.unlock().await.unwrap();
            at
        }
    });
    eventually(LONG_WAIT, "the writer is in line", || async {
        waiting(&store, &id).await == 1
    })
    .await;
    assert!(
        matches!(
            RwLock::new(&*late, &id).try_read().await,
            Err(LockError::Taken { .. })
        ),
        "a reader overtook the waiting writer"
    );
    let reader = tokio::spawn({
        let (late, id) = (late.clone(), id.clone());
        async move {
            let guard = RwLock::new(&*late, &id).read(LONG_WAIT).await.unwrap();
            let at = Instant::now();
            guard.unlock().await.unwrap();
            at
        }
    });
    eventually(LONG_WAIT, "the late reader is in line", || async {
        waiting(&store, &id).await == 2
    })
    .await;
    first.unlock().await.unwrap();
    let writer_at = writer.await.expect("writer task");
    let reader_at = reader.await.expect("reader task");
    assert!(
        reader_at > writer_at,
        "the late reader went before the writer"
    );
}

/// Shared requests with another number of permits than the id's shared
/// holders (a semaphore of 2 beside one of 3, readers beside a semaphore)
/// are refused, naming both; an exclusive request on a semaphore's id waits
/// for every permit.
pub async fn mixed_permit_counts_on_one_id_are_refused<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let id = unique_key("mixed_permit_counts_on_one_id_are_refused");
    let held = Semaphore::new(&alice, &id, 3).try_acquire().await.unwrap();
    for kind in [LockKind::Permit { permits: 2 }, LockKind::Read] {
        for wait in [Duration::ZERO, Duration::from_millis(200)] {
            match bob.acquire(&id, kind, wait).await {
                Err(error @ LockError::LimitMismatch { .. }) => {
                    let message = error.to_string();
                    assert!(message.contains("3 permits"), "{message}");
                }
                other => panic!("{kind} beside a 3-permit semaphore: {other:?}"),
            }
        }
    }
    let drain = tokio::spawn(async move {
        let guard = bob.lock(&id, LONG_WAIT).await;
        (Instant::now(), guard)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    held.unlock().await.unwrap();
    let (granted_at, guard) = drain.await.expect("exclusive task");
    guard.expect("the exclusive request is granted once the permit is back");
    assert!(granted_at >= released);
}

/// Exclusive entries ignore the limit: while a mutex (or a writer) holds
/// alone, readers and any semaphore wait their turn instead of being refused
/// for the limit the exclusive request carried, and get the id once it is
/// released; after that, another semaphore of the id may take another count
/// once every shared holder is gone.
pub async fn shared_requests_wait_behind_an_exclusive_holder<F: StoreFactory>(factory: &F) {
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let id = unique_key("shared_requests_wait_behind_an_exclusive_holder");
    let held = alice.try_lock(&id).await.unwrap();
    for kind in [LockKind::Read, LockKind::Permit { permits: 3 }] {
        match bob.acquire(&id, kind, Duration::ZERO).await {
            Err(LockError::Taken { .. }) => {}
            other => panic!("{kind} beside a mutex holder: {other:?}"),
        }
    }
    let reader = tokio::spawn(async move {
        let guard = RwLock::new(&bob, &id).read(LONG_WAIT).await;
        (bob, id, guard)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.unlock().await.unwrap();
    let (bob, id, guard) = reader.await.expect("reader task");
    let reading = guard.expect("the reader is granted once the mutex is released");
    reading.unlock().await.unwrap();
    let permit = Semaphore::new(&bob, &id, 2)
        .acquire(LONG_WAIT)
        .await
        .expect("no shared holder is left: a new count may start");
    permit.unlock().await.unwrap();
}

/// Inspect shows every holder and how many wait.
pub async fn inspect_shows_every_holder_and_how_many_wait<F: StoreFactory>(factory: &F) {
    let store = factory.connect().await;
    let alice = locker(factory, "alice").await;
    let bob = locker(factory, "bob").await;
    let carol = Arc::new(locker(factory, "carol").await);
    let id = unique_key("inspect_shows_every_holder_and_how_many_wait");
    let _a = Semaphore::new(&alice, &id, 2).try_acquire().await.unwrap();
    let _b = Semaphore::new(&bob, &id, 2).try_acquire().await.unwrap();
    let waiter = tokio::spawn({
        let (carol, id) = (carol.clone(), id.clone());
        async move { Semaphore::new(&*carol, &id, 2).acquire(LONG_WAIT).await }
    });
    eventually(LONG_WAIT, "carol is in line", || async {
        waiting(&store, &id).await == 1
    })
    .await;
    let info = alice.inspect(&id).await.unwrap().expect("held");
    let owners: Vec<&str> = info.holders.iter().map(|h| h.owner.as_str()).collect();
    assert_eq!(owners, ["alice", "bob"], "{info:?}");
    assert!(info.holders.iter().all(|h| h.mode == LockMode::Shared));
    assert_eq!(info.waiting, 1);
    assert_eq!(info.limit, Some(2));
    waiter.abort();
}
