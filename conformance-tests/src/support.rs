//! What every case uses: the store factory, unique keys, ttls fitted to the
//! store, and small assertions on outcomes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Grant, Holder, LeaseId, LeaseLocker, LeaseStore,
    LockerOptions, Queued,
};
use tokio::time::Instant;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes store clients for the suite: every call gives a new client (its
/// own connections) on the same backend, so cases can play several
/// processes. Implemented for every `Fn() -> impl Future<Output = S>`.
pub trait StoreFactory: Send + Sync + 'static {
    /// The store type.
    type Store: LeaseStore;

    /// A new client on the backend under test.
    fn connect(&self) -> BoxFuture<'_, Self::Store>;
}

impl<F, Fut, S> StoreFactory for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = S> + Send + 'static,
    S: LeaseStore,
{
    type Store = S;

    fn connect(&self) -> BoxFuture<'_, S> {
        Box::pin(self())
    }
}

/// A factory that hands out clones of one store: for in-process stores
/// whose clones share their data (such as `MemoryStore`), or a store type
/// whose clone is a new handle on the same backend.
pub fn shared<S: LeaseStore + Clone>(store: S) -> impl StoreFactory<Store = S> {
    move || {
        let store = store.clone();
        async move { store }
    }
}

/// A key no other case (or run) uses: `dlock-conformance/<case>/<random>`.
pub fn unique_key(case: &str) -> String {
    format!("dlock-conformance/{case}/{:016x}", rand::random::<u64>())
}

/// The shortest ttl the cases use on this store: 1 s, or the store's
/// minimum, rounded up to its granularity.
pub fn short_ttl(caps: &Capabilities) -> Duration {
    round_up(
        caps.min_ttl.max(Duration::from_secs(1)),
        caps.ttl_granularity,
    )
}

/// `ttl` rounded up to a multiple of `granularity`.
pub fn round_up(ttl: Duration, granularity: Duration) -> Duration {
    if granularity.is_zero() {
        return ttl;
    }
    let steps = ttl.as_nanos().div_ceil(granularity.as_nanos());
    let nanos = steps.saturating_mul(granularity.as_nanos());
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Locker options fitted to the store: lease of two short ttls, heartbeat a
/// third of it.
pub fn locker_options(caps: &Capabilities, owner: &str) -> LockerOptions {
    let lease = 2 * short_ttl(caps);
    LockerOptions::builder()
        .owner(owner)
        .lease(lease)
        .heartbeat(lease / 3)
        .store_timeout((lease / 6).min(Duration::from_secs(1)))
        .fencing(caps.fencing)
        .build()
        .expect("the suite's options are valid")
}

/// A locker over a new client of the factory.
pub async fn locker<F: StoreFactory>(factory: &F, owner: &str) -> LeaseLocker<F::Store> {
    let store = factory.connect().await;
    let caps = store.capabilities();
    LeaseLocker::new(store, locker_options(&caps, owner)).expect("the suite's options fit")
}

/// One raw acquisition with a fresh lease id.
pub async fn acquire<S: LeaseStore>(
    store: &S,
    key: &str,
    owner: &str,
    ttl: Duration,
) -> (LeaseId, AcquireOutcome) {
    let lease_id = LeaseId::random();
    let outcome = store
        .acquire(AcquireRequest::new(key, owner, lease_id, ttl))
        .await
        .unwrap_or_else(|error| panic!("acquire {key:?} failed: {error}"));
    (lease_id, outcome)
}

/// Asserts a grant.
pub fn granted(outcome: AcquireOutcome) -> Grant {
    match outcome {
        AcquireOutcome::Acquired(grant) => grant,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Asserts the key was held.
pub fn held(outcome: AcquireOutcome) -> Holder {
    match outcome {
        AcquireOutcome::Held(holder) => holder,
        other => panic!("expected Held, got {other:?}"),
    }
}

/// Asserts the entry was queued.
pub fn queued(outcome: AcquireOutcome) -> Queued {
    match outcome {
        AcquireOutcome::Queued(queued) => queued,
        other => panic!("expected Queued, got {other:?}"),
    }
}

/// A raw grant, asserting it was granted; returns its lease id and grant.
pub async fn grant<S: LeaseStore>(
    store: &S,
    key: &str,
    owner: &str,
    ttl: Duration,
) -> (LeaseId, Grant) {
    let (lease_id, outcome) = acquire(store, key, owner, ttl).await;
    (lease_id, granted(outcome))
}

/// The live holder's owner name, if any.
pub async fn holder_of<S: LeaseStore>(store: &S, key: &str) -> Option<String> {
    store
        .inspect(key)
        .await
        .unwrap_or_else(|error| panic!("inspect {key:?} failed: {error}"))
        .and_then(|info| info.holder)
        .map(|holder| holder.owner)
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after
/// `limit`.
pub async fn eventually<Fut>(limit: Duration, what: &str, mut condition: impl FnMut() -> Fut)
where
    Fut: Future<Output = bool>,
{
    let give_up = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < give_up, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes `key` by retrying until the store expired the current lease (at
/// most `limit`); returns the lease id, the grant and when it was granted.
pub async fn grant_after_expiry<S: LeaseStore>(
    store: &S,
    key: &str,
    owner: &str,
    ttl: Duration,
    limit: Duration,
) -> (LeaseId, Grant) {
    let give_up = Instant::now() + limit;
    loop {
        let (lease_id, outcome) = acquire(store, key, owner, ttl).await;
        match outcome {
            AcquireOutcome::Acquired(grant) => return (lease_id, grant),
            other => {
                assert!(
                    Instant::now() < give_up,
                    "{key:?} still held after {limit:?}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// How long a store may take past a ttl to expire a lease (etcd's expiry
/// lags by up to about half a second; leader changes re-arm leases).
pub fn expiry_slack(caps: &Capabilities) -> Duration {
    Duration::from_secs(2) + caps.ttl_granularity
}
