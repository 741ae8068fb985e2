//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use conformance_tests::harness::RedisCluster;

/// Upper bound for any one test, so a hang fails instead of stalling CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `test`, failing it when it takes longer than [`TEST_TIMEOUT`].
pub async fn bounded(test: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
        panic!("test did not finish within {TEST_TIMEOUT:?}");
    }
}

/// The `redis+cluster://` URL of a harness cluster.
pub fn cluster_url(cluster: &RedisCluster) -> String {
    let hosts: Vec<String> = cluster
        .urls()
        .iter()
        .map(|url| {
            url.trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    format!("redis+cluster://{}", hosts.join(","))
}

/// Unwraps a started server, or ends the test with a printed reason when
/// the server is unavailable and not required.
#[macro_export]
macro_rules! start_or_skip {
    ($start:expr) => {
        match conformance_tests::harness::or_skip($start.await) {
            Some(server) => server,
            None => return,
        }
    };
}
