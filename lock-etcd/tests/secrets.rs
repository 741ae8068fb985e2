//! A password in an etcd URL never shows: not in `Debug` of the config or
//! the store, not in any URL error, not in connection errors, whatever its
//! place (`user:password@`, or a `password=` option, which etcd URLs do
//! not take) and the scheme (`etcd://`, `etcds://`).

use std::time::Duration;

use conformance_tests::harness::{EtcdServer, or_skip, pick_free_port};
use etcd_client::Client;
use lock_core::StoreErrorKind;
use lock_etcd::{EtcdConfig, EtcdStore};

const SECRET: &str = "S3CRET-pw";

#[track_caller]
fn assert_hidden(what: &str, shown: &str) {
    assert!(!shown.contains(SECRET), "{what} shows the secret: {shown}");
}

/// Checks that `error`, shown either way, hides the secret.
#[track_caller]
fn assert_error_hides(url: &str, error: &lock_core::StoreError) {
    assert_hidden(url, &format!("{error} | {error:?}"));
}

/// Every URL form with the secret, for `hosts`, both schemes.
fn urls_with_the_secret(hosts: &str, options: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for scheme in ["etcd", "etcds"] {
        urls.push(format!("{scheme}://user:{SECRET}@{hosts}/ns/{options}"));
        urls.push(format!("{scheme}://us%40er:{SECRET}@{hosts}{options}"));
    }
    urls
}

#[test]
fn config_debug_and_url_errors_never_show_the_secret() {
    for url in urls_with_the_secret("10.0.0.1:2379,10.0.0.2", "?request_timeout_ms=50") {
        let config = EtcdConfig::from_url(&url).expect("parses");
        let shown = format!("{config:?}");
        assert_hidden(&url, &shown);
        assert!(shown.contains(":***@10.0.0.1:2379,10.0.0.2"), "{shown}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().expect("UTF-8 path");
    let mut bad = Vec::new();
    for scheme in ["etcd", "etcds"] {
        bad.extend([
            // Options etcd URLs do not take, a secret among them.
            format!("{scheme}://h:1/?password={SECRET}"),
            format!("{scheme}://u:{SECRET}@h:1/?tls=true&password={SECRET}"),
            format!("{scheme}://u:{SECRET}@h:1/?token={SECRET}"),
            // Bad values of options it takes.
            format!("{scheme}://u:{SECRET}@h:1/?tls=maybe&password={SECRET}"),
            format!("{scheme}://u:{SECRET}@h:1/?min_ttl_s=soon&password={SECRET}"),
            format!("{scheme}://u:{SECRET}@h:1/?cert={missing}&password={SECRET}"),
            format!("{scheme}://u:{SECRET}@h:1/?ca={missing}&password={SECRET}"),
            format!("{scheme}://u:{SECRET}@h:1/?cert={missing}&key={missing}"),
            // Bad hosts, bad encodings, missing parts.
            format!("{scheme}://u:{SECRET}@"),
            format!("{scheme}://u:{SECRET}@/ns/?password={SECRET}"),
            format!("{scheme}://:{SECRET}@h:1"),
            format!("{scheme}://u:{SECRET}@h st:1"),
            format!("{scheme}://u:{SECRET}@a:1,b:notaport"),
            format!("{scheme}://u:{SECRET}@[::1"),
            format!("{scheme}://u:{SECRET}%zz@h:1"),
            format!("{scheme}://u%ff:{SECRET}@h:1"),
            format!("{scheme}://u:{SECRET}@h:1/%ff"),
            format!("{scheme}:u:{SECRET}@h:1"),
        ]);
    }
    bad.extend([
        SECRET.to_owned(),
        format!("u:{SECRET}@h:1"),
        format!("redis://u:{SECRET}@h:1"),
        format!("http://u:{SECRET}@h:1"),
    ]);
    for url in &bad {
        let error = EtcdConfig::from_url(url).expect_err(url);
        assert_eq!(error.kind(), StoreErrorKind::Invalid, "{url}: {error}");
        assert_error_hides(url, &error);
    }
}

/// Connecting to a port nothing listens on fails, with the secret nowhere.
#[tokio::test]
async fn connection_errors_never_show_the_secret() {
    let port = pick_free_port().expect("a free port");
    let options = "?connect_timeout_ms=500&request_timeout_ms=500";
    let mut urls = urls_with_the_secret(&format!("127.0.0.1:{port}"), options);
    // Without credentials the first request fails instead of the
    // authentication: the same rule.
    urls.push(format!("etcd://127.0.0.1:{port}/ns/{options}"));
    let attempts = urls.iter().map(|url| async move {
        let outcome = tokio::time::timeout(Duration::from_secs(30), EtcdStore::connect(url)).await;
        (url, outcome.expect("connecting gives up in time"))
    });
    for (url, outcome) in futures_util::future::join_all(attempts).await {
        let error = outcome.expect_err(url);
        assert!(error.is_retryable(), "{url}: {error}");
        assert_error_hides(url, &error);
    }
}

/// A server with authentication on: the store connected with the password
/// shows it nowhere, and refused credentials show it in no error.
#[tokio::test]
async fn stores_with_credentials_never_show_the_secret() {
    let Some(server) = or_skip(EtcdServer::start().await) else {
        return;
    };
    if server.is_external() {
        eprintln!("skipped: turning authentication on needs a server of this test's own");
        return;
    }
    let addr = server.addr().expect("address");
    let mut admin = Client::connect(server.endpoints(), None)
        .await
        .expect("connect");
    admin.user_add("root", SECRET, None).await.expect("user");
    // etcd has no root role until one is added.
    let _ = admin.role_add("root").await;
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.auth_enable().await.expect("auth enable");

    let url = format!("etcd://root:{SECRET}@{addr}/secret-ns/");
    let store = EtcdStore::connect(&url).await.expect("connect");
    let shown = format!("{store:?}");
    assert_hidden(&url, &shown);
    assert!(shown.contains("root:***@"), "{shown}");

    let config = EtcdConfig::new(server.endpoints()).user("root", SECRET);
    assert_hidden("a config built in code", &format!("{config:?}"));
    let store = EtcdStore::connect_with(config).await.expect("connect");
    assert_hidden("a store of a config built in code", &format!("{store:?}"));

    let url = format!("etcd://root:wrong-{SECRET}@{addr}");
    let error = EtcdStore::connect(&url).await.expect_err(&url);
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{url}: {error}");
    assert_error_hides(&url, &error);
}
