//! `rediss://` against a redis-server with TLS and a private CA (made with
//! the `openssl` command), started for this test on a free loopback port;
//! passwords in `rediss://` URLs stay hidden.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::bounded;
use conformance_tests::harness::pick_free_port;
use conformance_tests::{grant, unique_key};
use lock_core::{Fencing, LeaseLocker, LeaseStore, Locker, LockerOptions, ReleaseOutcome};
use lock_redis::RedisStore;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Runs `openssl` with `args` in `dir`; false when it is not installed.
fn openssl(dir: &Path, args: &[&str]) -> bool {
    match std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) => {
            assert!(status.success(), "openssl {args:?} failed");
            true
        }
        Err(_) => false,
    }
}

/// A CA and a server certificate for localhost / 127.0.0.1 in `dir`.
fn make_certificates(dir: &Path) -> bool {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=dlock-test-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    ];
    steps.iter().all(|args| openssl(dir, args))
}

fn start_tls_server(dir: &Path, port: u16) -> Option<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command.spawn().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_connect_over_tls_with_a_private_ca() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        if !make_certificates(dir.path()) {
            eprintln!("skipped: the openssl command is not installed");
            return;
        }
        let port = pick_free_port().unwrap();
        let Some(mut server) = start_tls_server(dir.path(), port) else {
            eprintln!("skipped: redis-server is not installed");
            return;
        };
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let url = format!("rediss://localhost:{port}");
        let give_up = Instant::now() + Duration::from_secs(10);
        let store = loop {
            match RedisStore::builder(&url)
                .tls_root_certificate(ca.clone())
                .connect()
                .await
            {
                Ok(store) => break store,
                Err(error) => {
                    if let Ok(Some(status)) = server.try_wait() {
                        panic!("redis-server with TLS exited ({status}); built without TLS?");
                    }
                    assert!(Instant::now() < give_up, "no TLS connection: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };

        let key = unique_key("tls");
        let (lease, grant) = grant(&store, &key, "alice", Duration::from_secs(30)).await;
        assert!(grant.token.is_some());
        assert_eq!(
            store.release(&key, lease, Fencing::Enabled).await.unwrap(),
            ReleaseOutcome::Released
        );

        // Notifications work over TLS too: a waiter is handed the lock.
        let options = |owner: &str| LockerOptions::builder().owner(owner).build().unwrap();
        let alice = LeaseLocker::new(store.clone(), options("alice")).unwrap();
        let other = RedisStore::builder(&url)
            .tls_root_certificate(ca.clone())
            .connect()
            .await
            .unwrap();
        let bob = LeaseLocker::new(other, options("bob")).unwrap();
        let guard = alice.try_lock(&key).await.unwrap();
        let waiter = tokio::spawn({
            let key = key.clone();
            async move { bob.lock(&key, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        guard.unlock().await.unwrap();
        waiter.await.unwrap().unwrap().unlock().await.unwrap();

        // Without the CA, the server's certificate is refused.
        let error = RedisStore::builder(&url)
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .unwrap_err();
        assert!(!error.to_string().is_empty());

        secrets_stay_hidden(port, &ca).await;
        server.kill().await.unwrap();
    })
    .await;
}

/// A password in a `rediss://` URL shows in no `Debug` output and no error:
/// for a store that connected, refused credentials, and a refused server
/// certificate.
async fn secrets_stay_hidden(port: u16, ca: &[u8]) {
    const SECRET: &str = "S3CRET-pw";
    let hidden = |url: &str, shown: String| {
        assert!(!shown.contains(SECRET), "{url} shows the secret: {shown}");
    };
    for url in [
        format!("rediss://{SECRET}@localhost:{port}"),
        format!("rediss://:{SECRET}@localhost:{port}"),
        format!("rediss://localhost:{port}/?password={SECRET}"),
    ] {
        let store = RedisStore::builder(&url)
            .tls_root_certificate(ca.to_vec())
            .connect()
            .await
            .expect(&url);
        hidden(&url, format!("{store:?}"));
    }
    let url = format!("rediss://user:{SECRET}@localhost:{port}");
    let error = RedisStore::builder(&url)
        .tls_root_certificate(ca.to_vec())
        .connect()
        .await
        .expect_err(&url);
    assert_eq!(error.kind(), lock_core::StoreErrorKind::Auth, "{error}");
    hidden(&url, format!("{error} {error:?}"));
    let error = RedisStore::builder(&url)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect_err(&url);
    hidden(&url, format!("{error} {error:?}"));
}
