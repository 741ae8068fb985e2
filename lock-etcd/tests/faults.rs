//! Faults against real etcd: the cluster leader killed under contention, a
//! black-holed holder, and a connection reset in the middle of an
//! acquisition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{EtcdCluster, HarnessError, shared_etcd};
use conformance_tests::history::{CheckOptions, EventKind, History};
use conformance_tests::register::FencedRegister;
use conformance_tests::{locker_options, unique_key};
use lock_core::{LeaseLocker, LeaseStore, LockError, LockStatus, Locker};
use lock_etcd::{EtcdConfig, EtcdStore};
use tokio::time::Instant;

/// Logs to the test's output, filtered by `RUST_LOG` (default: warnings).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The reason to skip when the harness cannot provide a server.
fn skip(error: HarnessError) -> String {
    match error.skip_reason() {
        Some(reason) => reason,
        None => panic!("{error}"),
    }
}

async fn store(endpoints: Vec<String>) -> EtcdStore {
    EtcdStore::connect_with(EtcdConfig::new(endpoints))
        .await
        .expect("connect to etcd")
}

async fn locker(endpoints: Vec<String>, owner: &str) -> LeaseLocker<EtcdStore> {
    let store = store(endpoints).await;
    let options = locker_options(&store.capabilities(), owner);
    LeaseLocker::new(store, options).expect("the options fit")
}

async fn holder_of(store: &EtcdStore, key: &str) -> Option<String> {
    store
        .inspect(key)
        .await
        .expect("inspect")
        .and_then(|info| info.holder)
        .map(|holder| holder.owner)
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after
/// `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < give_up, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader of a 3-member cluster is killed while some lockers hold locks
/// and others contend for one key through a fenced register: no two live
/// holders at once, tokens increase, the register sees no stale token,
/// contention goes on under the new leader, and every held lock is either
/// still held (and etcd agrees) or was lost no later than its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_while_locks_are_held_and_lockers_contend() {
    init_logs();
    let mut cluster = match EtcdCluster::start(3).await {
        Ok(cluster) if !cluster.is_external() => cluster,
        Ok(_) => return eprintln!("skipped: an external cluster cannot be killed"),
        Err(error) => return eprintln!("skipped: {}", skip(error)),
    };
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader");
    let endpoints = cluster.endpoints();
    let history = Arc::new(History::new());
    let register = Arc::new(FencedRegister::new());
    let stop = Arc::new(AtomicBool::new(false));
    let key = unique_key("leader_kill");

    // Holders: each takes a lock of its own and watches its deadline.
    let mut holders = Vec::new();
    for h in 0..3 {
        let owner = format!("holder-{h}");
        let locker = locker(endpoints.clone(), &owner).await;
        let guard = locker
            .try_lock(&format!("{key}/held/{h}"))
            .await
            .expect("a free key");
        history.granted(&guard, &owner);
        let (history, stop) = (history.clone(), stop.clone());
        holders.push(tokio::spawn(async move {
            let mut last = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) && !guard.is_expired() {
                history.observe(&guard, &owner, &mut last);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            history.observe(&guard, &owner, &mut last);
            (locker, guard, owner)
        }));
    }

    // Contenders: 4 lockers x 2 tasks take the contended key over and over.
    let grants_after_kill = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut contenders = Vec::new();
    for l in 0..4 {
        let locker = Arc::new(locker(endpoints.clone(), &format!("contender-{l}")).await);
        for t in 0..2 {
            let client = format!("contender-{l}/task-{t}");
            let (locker, history, register, stop, key) = (
                locker.clone(),
                history.clone(),
                register.clone(),
                stop.clone(),
                format!("{key}/contended"),
            );
            let (killed, grants_after_kill) = (killed.clone(), grants_after_kill.clone());
            contenders.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let guard = match locker.lock(&key, Duration::from_secs(5)).await {
                        Ok(guard) => guard,
                        // The election: try again.
                        Err(LockError::Timeout { .. } | LockError::Store(_)) => continue,
                        Err(other) => panic!("{client}: {other}"),
                    };
                    history.granted(&guard, &client);
                    if killed.load(Ordering::SeqCst) {
                        grants_after_kill.fetch_add(1, Ordering::SeqCst);
                    }
                    let token = guard.fencing_token().cloned().expect("fencing is on");
                    let accepted = register.increment(&token).is_ok();
                    history.record(
                        &guard,
                        &client,
                        EventKind::RegisterWrite { token, accepted },
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    history.record(&guard, &client, EventKind::Releasing);
                    // A failed release leaves the key to expire.
                    let _ = guard.unlock().await;
                }
            }));
        }
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    cluster.kill(leader).expect("kill the leader");
    killed.store(true, Ordering::SeqCst);
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    // Contention goes on under the new leader.
    wait_until(
        Duration::from_secs(20),
        "grants under the new leader",
        || {
            let grants = grants_after_kill.clone();
            async move { grants.load(Ordering::SeqCst) >= 5 }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for contender in contenders {
        tokio::time::timeout(Duration::from_secs(30), contender)
            .await
            .expect("contenders stop")
            .expect("contender task");
    }

    // Each held lock is still held, and etcd agrees, or it was lost.
    let survivors: Vec<String> = cluster
        .endpoints()
        .into_iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(_, endpoint)| endpoint)
        .collect();
    let observer = store(survivors).await;
    for holder in holders {
        let (locker, guard, owner) = holder.await.expect("holder task");
        let status = *guard.status().borrow();
        if status.is_live() {
            assert_eq!(
                holder_of(&observer, guard.key()).await.as_deref(),
                Some(owner.as_str()),
                "{owner} believes it holds its lock but etcd disagrees"
            );
        } else {
            assert_eq!(status, LockStatus::Lost, "{owner}");
        }
        drop(guard);
        locker.close().await.ok();
    }
    history
        .check(CheckOptions {
            faults_injected: false,
            expiry_tolerance: Duration::from_millis(200),
        })
        .unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!(
        register.rejected(),
        vec![],
        "stale tokens reached the register"
    );
    assert!(register.value() > 0);
}

/// A holder whose connection is black-holed warns at `warn_after`, expires
/// at its local deadline while etcd still holds its key, and another client
/// takes the lock only after etcd expired the lease, with a larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_during_keep_alive_warns_then_expires_before_etcd() {
    init_logs();
    let server = match shared_etcd().await {
        Ok(server) => server,
        Err(error) => return eprintln!("skipped: {}", skip(error)),
    };
    let proxy = FaultProxy::start(server.addr().expect("address"))
        .await
        .expect("proxy");
    let alice = locker(vec![proxy.listen_addr().to_string()], "alice").await;
    let bob = locker(server.endpoints(), "bob").await;
    let observer = store(server.endpoints()).await;
    let id = unique_key("black_hole");

    let acquired = Instant::now();
    let guard = alice.try_lock(&id).await.expect("a free key");
    let mut warnings = guard.warnings().expect("warnings are on");
    // Let one renewal through first, so the keep-alive stream is open.
    let mut status = guard.status();
    tokio::time::sleep(alice.options().heartbeat() + Duration::from_millis(200)).await;
    assert_eq!(*status.borrow_and_update(), LockStatus::Held);
    proxy.set_mode(FaultMode::BlackHole);

    let warned = tokio::time::timeout(alice.options().lease(), warnings.recv())
        .await
        .expect("a warning before the lease ends");
    assert_eq!(warned.as_deref(), Some(id.as_str()));
    assert!(acquired.elapsed() >= alice.options().warn_after());
    let lost = tokio::time::timeout(alice.options().lease(), guard.lost())
        .await
        .expect("lost before a second lease passes");
    assert_eq!(lost, LockStatus::Lost);
    let expired = Instant::now();
    assert_eq!(
        holder_of(&observer, guard.key()).await.as_deref(),
        Some("alice"),
        "etcd expired the lease before the holder gave up"
    );
    let taken = bob
        .lock(&id, Duration::from_secs(15))
        .await
        .expect("bob takes over once etcd expires alice's lease");
    assert!(Instant::now() > expired);
    assert!(taken.fencing_token() > guard.fencing_token());
    proxy.set_mode(FaultMode::PassThrough);
    taken.unlock().await.expect("unlock");
}

/// Connections reset while an acquisition's reply is on its way back: the
/// key was granted in etcd, the caller got an error, and the background
/// release failed too. Although the same store keeps renewing another lock
/// on the same etcd lease, the orphaned key is deleted, never kept alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_during_acquire_leaves_no_lease_that_anyone_renews() {
    init_logs();
    let server = match shared_etcd().await {
        Ok(server) => server,
        Err(error) => return eprintln!("skipped: {}", skip(error)),
    };
    let proxy = FaultProxy::start(server.addr().expect("address"))
        .await
        .expect("proxy");
    let alice = locker(vec![proxy.listen_addr().to_string()], "alice").await;
    let bob = locker(server.endpoints(), "bob").await;
    let observer = store(server.endpoints()).await;
    let base = unique_key("reset_during_acquire");
    let (kept, orphan) = (format!("{base}/kept"), format!("{base}/orphan"));

    let kept_guard = alice.try_lock(&kept).await.expect("a free key");
    // Replies stop; requests still reach etcd.
    proxy.set_mode(FaultMode::CutServerToClient);
    let attempt = tokio::spawn({
        let (alice, orphan) = (alice.clone(), orphan.clone());
        async move { alice.try_lock(&orphan).await }
    });
    wait_until(
        Duration::from_secs(5),
        "the acquisition applied in etcd",
        || async { holder_of(&observer, &orphan).await.is_some() },
    )
    .await;
    // Reset before the reply gets back: the caller sees an error, and the
    // locker's background release fails as well.
    proxy.set_mode(FaultMode::Reset);
    let result = attempt.await.expect("attempt task");
    assert!(matches!(result, Err(LockError::Store(_))), "{result:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        holder_of(&observer, &orphan).await.as_deref(),
        Some("alice"),
        "the background release was expected to fail"
    );
    proxy.set_mode(FaultMode::PassThrough);

    let limit = alice.options().lease() * 2;
    let taken = bob
        .lock(&orphan, limit)
        .await
        .expect("the orphaned key is freed although its etcd lease lives");
    // Alice's etcd lease was kept alive all along for the other lock.
    assert!(!kept_guard.is_expired(), "alice lost her other lock");
    assert_eq!(holder_of(&observer, &kept).await.as_deref(), Some("alice"));
    taken.unlock().await.expect("unlock");
    kept_guard.unlock().await.expect("unlock");
}
