//! Restoring a snapshot moves etcd's revisions back to the snapshot's, and
//! with them the fencing tokens (create revisions): tokens handed out after
//! the snapshot are issued again. etcd 3.4's `etcdctl snapshot restore` has
//! no `--bump-revision`; a resource that remembers the largest token it
//! accepted refuses the reissued ones, so fencing stays safe but that
//! resource refuses every holder until revisions catch up.

use std::time::Duration;

use conformance_tests::harness::{EtcdServer, or_skip};
use conformance_tests::register::FencedRegister;
use conformance_tests::{locker_options, unique_key};
use lock_core::{LeaseLocker, LeaseStore, Locker};
use lock_etcd::{EtcdConfig, EtcdStore};

async fn locker(url: &str, owner: &str) -> LeaseLocker<EtcdStore> {
    let store = EtcdStore::connect_with(EtcdConfig::new(vec![url.to_owned()]))
        .await
        .expect("connect to etcd");
    let options = locker_options(&store.capabilities(), owner);
    LeaseLocker::new(store, options).expect("the options fit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_snapshot_reissues_tokens_and_a_fenced_resource_refuses_them() {
    let Some(mut server) = or_skip(EtcdServer::start().await) else {
        return;
    };
    if server.is_external() {
        eprintln!("skipped: an external server cannot be restored");
        return;
    }
    let backup = tempfile::tempdir().unwrap();
    let snapshot = backup.path().join("etcd.snapshot");
    let id = unique_key("restore");
    let register = FencedRegister::new();

    let alice = locker(server.url(), "alice").await;
    let guard = alice.try_lock(&id).await.unwrap();
    register.increment(guard.fencing_token().unwrap()).unwrap();
    guard.unlock().await.unwrap();
    server.save_snapshot(&snapshot).await.unwrap();
    // Grants after the backup: the restore forgets them.
    for _ in 0..3 {
        let guard = alice.try_lock(&id).await.unwrap();
        register.increment(guard.fencing_token().unwrap()).unwrap();
        guard.unlock().await.unwrap();
    }
    let largest = register.accepted().last().cloned().unwrap();
    alice.close().await.unwrap();

    server.restore_snapshot(&snapshot).await.unwrap();
    let bob = locker(server.url(), "bob").await;
    let guard = tokio::time::timeout(
        Duration::from_secs(10),
        bob.lock(&id, Duration::from_secs(8)),
    )
    .await
    .expect("granted after the restore")
    .unwrap();
    let reissued = guard.fencing_token().cloned().unwrap();
    assert!(
        reissued <= largest,
        "revisions went back to the snapshot's: {reissued} after {largest}"
    );
    assert!(
        register.increment(&reissued).is_err(),
        "the fenced resource refuses a token it has seen (or one below it)"
    );
    guard.unlock().await.unwrap();
}
