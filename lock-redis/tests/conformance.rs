//! The whole conformance suite against a single redis-server and against a
//! 3-master Redis Cluster, both started by the harness (or named by
//! `DLOCK_TEST_REDIS_URL` / `DLOCK_TEST_REDIS_CLUSTER_URLS`). Every store
//! the suite asks for is a new client with its own connection.

mod common;

use conformance_tests::harness::{shared_redis, shared_redis_cluster, skip_unless_available};
use lock_redis::RedisStore;

conformance_tests::conformance_suite!(
    redis_single,
    || async {
        let server = shared_redis().await.expect("the shared redis-server");
        RedisStore::connect(server.url())
            .await
            .expect("connecting to the shared redis-server")
    },
    skip_if = skip_unless_available(shared_redis())
);

conformance_tests::conformance_suite!(
    redis_cluster,
    || async {
        let cluster = shared_redis_cluster().await.expect("the shared cluster");
        RedisStore::connect(&crate::common::cluster_url(cluster))
            .await
            .expect("connecting to the shared cluster")
    },
    skip_if = skip_unless_available(shared_redis_cluster())
);
