//! The shared conformance suite against a single etcd member and against a
//! 3-member cluster, both started by the harness (or named by
//! `DLOCK_TEST_ETCD_URL` / `DLOCK_TEST_ETCD_CLUSTER_URLS`).

use conformance_tests::harness::{shared_etcd, shared_etcd_cluster, skip_unless_available};
use lock_etcd::{EtcdConfig, EtcdStore};

/// A new client (its own connection and etcd leases) on the single member.
async fn single_member_store() -> EtcdStore {
    let server = shared_etcd().await.expect("the shared etcd starts");
    EtcdStore::connect_with(EtcdConfig::new(server.endpoints()))
        .await
        .expect("connect to the shared etcd")
}

/// A new client on the 3-member cluster, knowing every member.
async fn cluster_store() -> EtcdStore {
    let cluster = shared_etcd_cluster()
        .await
        .expect("the shared etcd cluster starts");
    EtcdStore::connect_with(EtcdConfig::new(cluster.endpoints()))
        .await
        .expect("connect to the shared etcd cluster")
}

conformance_tests::conformance_suite!(
    etcd_single,
    single_member_store,
    skip_if = skip_unless_available(shared_etcd())
);

conformance_tests::conformance_suite!(
    etcd_cluster,
    cluster_store,
    skip_if = skip_unless_available(shared_etcd_cluster())
);
