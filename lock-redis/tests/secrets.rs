//! A password in a Redis URL never shows: not in `Debug` of the builder or
//! the store, not in any URL error, not in connection errors, whatever its
//! place (`user:password@`, `:password@`, a lone `password@`, a
//! `password=` or `pass=` query parameter) and the scheme (`redis://`,
//! `rediss://`, `redis+cluster://`, `rediss+cluster://`, Unix sockets).
//! `rediss://` against a server is in `tests/tls.rs`.

mod common;

use std::time::Duration;

use common::{bounded, cluster_url};
use conformance_tests::harness::{pick_free_port, shared_redis, shared_redis_cluster};
use lock_core::{StoreError, StoreErrorKind};
use lock_redis::RedisStore;

const SECRET: &str = "S3CRET-pw";

const SCHEMES: [&str; 4] = ["redis", "rediss", "redis+cluster", "rediss+cluster"];

#[track_caller]
fn assert_hidden(what: &str, shown: &str) {
    assert!(!shown.contains(SECRET), "{what} shows the secret: {shown}");
}

#[track_caller]
fn assert_error_hides(url: &str, error: &StoreError) {
    assert_hidden(url, &format!("{error} | {error:?}"));
}

/// `scheme://...hosts...path` with the secret in each place a Redis URL
/// takes one.
fn urls_with_the_secret(scheme: &str, hosts: &str, path: &str) -> Vec<String> {
    vec![
        format!("{scheme}://user:{SECRET}@{hosts}{path}"),
        format!("{scheme}://:{SECRET}@{hosts}{path}"),
        format!("{scheme}://{SECRET}@{hosts}{path}"),
        format!("{scheme}://{hosts}{path}?password={SECRET}"),
        format!("{scheme}://user:{SECRET}@{hosts}{path}?protocol=resp3&pass={SECRET}"),
    ]
}

#[tokio::test]
async fn builder_debug_and_url_errors_never_show_the_secret() {
    for scheme in SCHEMES {
        for url in urls_with_the_secret(scheme, "a:1,b:2", "/") {
            let shown = format!("{:?}", RedisStore::builder(&url));
            assert_hidden(&url, &shown);
            assert!(
                shown.contains("@a:1,b:2") || shown.contains("=***"),
                "{shown}"
            );
        }
    }
    let mut bad = vec![
        SECRET.to_owned(),
        format!("{SECRET}@nowhere"),
        format!("redis:user:{SECRET}@h:1"),
        format!("redis+cluster://user:{SECRET}@/"),
        format!("redis+cluster://{SECRET}@/?password={SECRET}"),
    ];
    for scheme in SCHEMES {
        for hosts in ["h st:1", "[::1", "a:1,b:notaport"] {
            bad.extend(urls_with_the_secret(scheme, hosts, ""));
        }
        bad.push(format!("{scheme}://user:{SECRET}%zz@h:1"));
        bad.push(format!("{scheme}://user%ff:{SECRET}@h:1"));
    }
    for url in &bad {
        let error = RedisStore::connect(url).await.expect_err(url);
        assert_eq!(error.kind(), StoreErrorKind::Invalid, "{url}: {error}");
        assert_error_hides(url, &error);
        assert_hidden(url, &format!("{:?}", RedisStore::builder(url)));
    }
}

/// Connecting to a port nothing listens on (or a socket that does not
/// exist) fails, with the secret nowhere; so does a URL the `redis` crate
/// refuses after it parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_never_show_the_secret() {
    bounded(async {
        let port = pick_free_port().expect("a free port");
        let hosts = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("none.sock");
        let socket = socket.to_str().expect("UTF-8 path");
        let mut urls = Vec::new();
        for scheme in SCHEMES {
            urls.extend(urls_with_the_secret(scheme, &hosts, ""));
            urls.extend(urls_with_the_secret(scheme, &hosts, "/notadb"));
        }
        for scheme in ["redis+unix", "unix"] {
            urls.push(format!("{scheme}://{socket}?user=u&pass={SECRET}"));
            urls.push(format!("{scheme}://{socket}?password={SECRET}"));
        }
        let attempts = urls.iter().map(|url| async move {
            let connect = RedisStore::builder(url)
                .connect_timeout(Duration::from_millis(500))
                .connect();
            (url, connect.await)
        });
        for (url, outcome) in futures_util::future::join_all(attempts).await {
            let error = outcome.expect_err(url);
            assert_error_hides(url, &error);
        }
    })
    .await;
}

/// Stores connected with a secret in their URL (where the server takes
/// it: a lone `password@` is a user name without a password to the
/// `redis` crate, `:password@` is accepted by a default user without a
/// password, and `password=` is ignored) show it nowhere; credentials the
/// server refuses show it in no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_with_a_secret_in_their_url_never_show_it() {
    bounded(async {
        let server = start_or_skip!(shared_redis());
        let cluster = start_or_skip!(shared_redis_cluster());
        let single = server
            .url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let nodes = cluster_url(cluster)
            .trim_start_matches("redis+cluster://")
            .to_owned();
        for (scheme, hosts) in [("redis", &single), ("redis+cluster", &nodes)] {
            for url in [
                format!("{scheme}://{SECRET}@{hosts}/"),
                // The default user takes any password.
                format!("{scheme}://:{SECRET}@{hosts}/"),
                format!("{scheme}://{hosts}/?password={SECRET}"),
            ] {
                let store = RedisStore::connect(&url).await.expect(&url);
                let shown = format!("{store:?}");
                assert_hidden(&url, &shown);
                assert!(shown.contains("***"), "{shown}");
            }
            let url = format!("{scheme}://user:{SECRET}@{hosts}/");
            let error = RedisStore::connect(&url).await.expect_err(&url);
            assert_eq!(error.kind(), StoreErrorKind::Auth, "{url}: {error}");
            assert_error_hides(&url, &error);
        }
    })
    .await;
}
