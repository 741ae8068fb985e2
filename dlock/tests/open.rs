//! The facade against real servers: stores and lockers opened from URLs
//! that carry a password in every position their scheme accepts, whose
//! `Debug` output and errors never show it; `open_store` and the table
//! setting.
// With some backends left out, some helpers go unused.
#![cfg_attr(
    not(all(
        feature = "sqlite",
        feature = "postgres",
        feature = "redis",
        feature = "etcd",
        feature = "dynamodb"
    )),
    allow(unused_imports, dead_code)
)]

use std::fmt::Debug;

use dlock::{LeaseLocker, Locker, LockerOptions, OpenError, Opener};

/// The password the URLs of these tests carry.
const SECRET: &str = "S3CRETpw";

/// `text` does not show the password.
fn assert_hidden(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the password: {text}");
}

/// Neither `Debug` nor `Display` of `error` shows the password.
fn assert_error_hidden(url: &str, error: &OpenError) {
    assert_hidden(url, &format!("{error:?}"));
    assert_hidden(url, &error.to_string());
}

/// `Debug` of `value` does not show the password.
fn assert_debug_hidden(url: &str, value: &impl Debug) {
    assert_hidden(url, &format!("{value:?}"));
}

#[test]
fn openers_and_options_never_show_a_password() {
    for url in [
        format!("postgres://app:{SECRET}@db:5432/x"),
        format!("postgresql://app@db/x?password={SECRET}&sslmode=require"),
        format!("postgres://app@db/x?sslpassword={SECRET}"),
        format!("redis://:{SECRET}@h:6379"),
        format!("redis://{SECRET}@h:6379"),
        format!("rediss://app:{SECRET}@h"),
        format!("redis+cluster://a:1,b:2/?password={SECRET}"),
        format!("etcd://root:{SECRET}@a:2379,b:2379/ns/"),
        format!("etcds://root:{SECRET}@a"),
        SECRET.to_owned(),
        format!("app:{SECRET}@db:5432"),
    ] {
        let opener = Opener::new(url.as_str()).table("locks");
        assert_debug_hidden(&url, &opener);
        assert!(format!("{opener:?}").contains("locks"), "{opener:?}");
        if url.contains("://") {
            assert_hidden(&url, &dlock::url::redact(&url));
        }
    }
    let options = LockerOptions::builder()
        .owner("worker")
        .prefix("billing/")
        .build()
        .unwrap();
    assert_debug_hidden("options", &options);
}

#[tokio::test]
async fn a_table_is_refused_where_the_backend_keeps_none() {
    let error = Opener::new("memory:")
        .table("locks")
        .open_store()
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(error, OpenError::Options(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("the memory backend keeps no tables"),
        "{error}"
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_sqlite_store_opened_by_url_takes_its_table_and_can_be_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/locks.db", dir.path().display());
    let store = Opener::new(&url)
        .table("job_locks")
        .open_store()
        .await
        .unwrap();
    // `Arc<dyn LeaseStore>` is a store: a locker of one's own on it.
    let locker = LeaseLocker::new(store, LockerOptions::default()).unwrap();
    let guard = locker.try_lock("report").await.unwrap();
    assert_eq!(guard.fencing_token().and_then(|t| t.to_u64()), Some(1));
    guard.unlock().await.unwrap();
    let sqlite = dlock::sqlite::SqliteStore::builder()
        .table("job_locks")
        .open(dir.path().join("locks.db"))
        .await
        .unwrap();
    let info = dlock::LeaseStore::inspect(&sqlite, "report").await.unwrap();
    assert!(info.is_some(), "the lock went to the table asked for");
    let default = dlock::sqlite::SqliteStore::open(dir.path().join("locks.db"))
        .await
        .unwrap();
    let info = dlock::LeaseStore::inspect(&default, "report")
        .await
        .unwrap();
    assert!(info.is_none(), "not to the default table");
    assert_debug_hidden(&url, &sqlite);
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::{Duration, Instant};

    use conformance_tests::harness::{or_skip, pick_free_port, shared_postgres};

    use super::*;

    /// URLs of `user` on `authority`/`database`, with `parameter` (`a=b`
    /// or empty), and the password in each position PostgreSQL takes one.
    fn urls(user: &str, authority: &str, database: &str, parameter: &str) -> [String; 3] {
        let (first, more) = match parameter {
            "" => (String::new(), String::new()),
            parameter => (format!("?{parameter}"), format!("&{parameter}")),
        };
        [
            format!("postgres://{user}:{SECRET}@{authority}/{database}{first}"),
            format!("postgresql://{user}@{authority}/{database}?password={SECRET}{more}"),
            format!("postgres://{user}@{authority}/{database}?sslpassword={SECRET}{more}"),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_lockers_and_errors_never_show_the_password() {
        let Some(server) = or_skip(shared_postgres().await) else {
            return;
        };
        let authority = server.addr().to_string();
        // Trust authentication: any password opens.
        for url in urls("postgres", &authority, server.database(), "") {
            let store = dlock::postgres::PostgresStore::connect(&url).await.unwrap();
            assert_debug_hidden(&url, &store);
            let locker = LeaseLocker::new(store, LockerOptions::default()).unwrap();
            assert_debug_hidden(&url, &locker);
            let locker = Opener::new(&url)
                .table("dlock_facade_debug")
                .open(LockerOptions::default())
                .await
                .unwrap();
            locker.close().await.unwrap();
        }
        let closed = format!("127.0.0.1:{}", pick_free_port().unwrap());
        let failing = [
            urls("dlock_no_such_role", &authority, server.database(), ""),
            urls("app", &closed, "db", ""),
            urls("app", "127.0.0.1:notaport", "db", ""),
            urls("app", "127.0.0.1", "db", "sslmode=bogus"),
        ];
        for url in failing.concat() {
            let error = dlock::open(&url, LockerOptions::default())
                .await
                .map(|_| ())
                .unwrap_err();
            assert_error_hidden(&url, &error);
            let error = dlock::postgres::PostgresStore::connect(&url)
                .await
                .unwrap_err();
            assert_hidden(&url, &format!("{error:?}"));
            assert_hidden(&url, &error.to_string());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_opens_by_url_in_its_table_within_the_connect_timeout() {
        let Some(server) = or_skip(shared_postgres().await) else {
            return;
        };
        let store = Opener::new(server.url())
            .table("dlock_facade_jobs")
            .open_store()
            .await
            .unwrap();
        let locker = LeaseLocker::new(store, LockerOptions::default()).unwrap();
        let guard = locker.try_lock("report").await.unwrap();
        let rows = server
            .psql("SELECT count(*) FROM dlock_facade_jobs WHERE key = 'report'")
            .await
            .unwrap();
        assert_eq!(rows.trim(), "1");
        guard.unlock().await.unwrap();

        let closed = format!("postgres://app@127.0.0.1:{}/db", pick_free_port().unwrap());
        let start = Instant::now();
        let error = Opener::new(&closed)
            .connect_timeout(Duration::from_millis(300))
            .open_store()
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1), "{error}");
        assert!(error.to_string().contains("Connection refused"), "{error}");
    }
}

#[cfg(feature = "redis")]
mod redis {
    use conformance_tests::harness::{RedisServer, or_skip};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_and_errors_never_show_the_password() {
        let Some(server) = or_skip(RedisServer::start().await) else {
            return;
        };
        if server.is_external() {
            eprintln!("skipped: the Redis server is shared; its password stays as it is");
            return;
        }
        server
            .command(&[
                "ACL",
                "SETUSER",
                "app",
                "on",
                &format!(">{SECRET}"),
                "~*",
                "&*",
                "+@all",
            ])
            .await
            .unwrap();
        server
            .command(&["CONFIG", "SET", "requirepass", SECRET])
            .await
            .unwrap();
        let addr = server.addr();
        let mut opened = 0;
        for url in [
            format!("redis://:{SECRET}@{addr}"),
            format!("redis://app:{SECRET}@{addr}/0"),
            format!("redis://{SECRET}@{addr}"),
            format!("redis://{addr}/?password={SECRET}"),
            format!("redis://nobody:{SECRET}@{addr}"),
            format!("redis://:{SECRET}@{addr}/notadb"),
        ] {
            match dlock::redis::RedisStore::connect(&url).await {
                Ok(store) => {
                    opened += 1;
                    assert_debug_hidden(&url, &store);
                }
                Err(error) => {
                    assert_hidden(&url, &format!("{error:?}"));
                    assert_hidden(&url, &error.to_string());
                }
            }
            if let Err(error) = dlock::open(&url, LockerOptions::default()).await {
                assert_error_hidden(&url, &error);
            }
        }
        assert!(opened >= 2, "the right password opens");
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use conformance_tests::harness::{EtcdServer, or_skip};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_and_errors_never_show_the_password() {
        let Some(server) = or_skip(EtcdServer::start().await) else {
            return;
        };
        if server.is_external() {
            eprintln!("skipped: the etcd server is shared; its authentication stays as it is");
            return;
        }
        let mut client = dlock::etcd::etcd_client::Client::connect(server.endpoints(), None)
            .await
            .unwrap();
        client.user_add("root", SECRET, None).await.unwrap();
        client.user_grant_role("root", "root").await.unwrap();
        client.auth_enable().await.unwrap();
        let addr = server.addr().unwrap();

        let url = format!("etcd://root:{SECRET}@{addr}/ns/");
        let store = dlock::etcd::EtcdStore::connect(&url).await.unwrap();
        assert_debug_hidden(&url, &store);
        let locker = dlock::open(&url, LockerOptions::default()).await.unwrap();
        locker.close().await.unwrap();

        for url in [
            format!("etcd://nobody:{SECRET}@{addr}"),
            format!("etcd://root:{SECRET}@{addr}?bogus=1"),
        ] {
            let error = dlock::etcd::EtcdStore::connect(&url).await.unwrap_err();
            assert_hidden(&url, &format!("{error:?}"));
            assert_hidden(&url, &error.to_string());
            let error = dlock::open(&url, LockerOptions::default())
                .await
                .map(|_| ())
                .unwrap_err();
            assert_error_hidden(&url, &error);
        }
    }
}

#[cfg(feature = "dynamodb")]
mod dynamodb {
    use conformance_tests::harness::{or_skip, shared_moto};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_opened_by_url_locks_and_never_shows_the_secret_key() {
        let Some(server) = or_skip(shared_moto().await) else {
            return;
        };
        let url = format!(
            "dynamodb://AKIDOPEN:{SECRET}@dlock_open?region=us-east-1&endpoint={}&create_table=true",
            server.endpoint()
        );
        let store = dlock::dynamodb::DynamoStore::connect(&url).await.unwrap();
        assert_debug_hidden(&url, &store);
        let locker = dlock::open(&url, LockerOptions::default()).await.unwrap();
        let first = locker.try_lock("job").await.unwrap();
        let token = first.fencing_token().cloned().unwrap();
        first.unlock().await.unwrap();
        let second = locker.try_lock("job").await.unwrap();
        assert!(second.fencing_token().cloned().unwrap() > token);
        second.unlock().await.unwrap();
        locker.close().await.unwrap();

        let bad = format!("dynamodb://AKIDOPEN:{SECRET}@dlock_open?region=us-east-1&colour=blue");
        let error = dlock::open_store(&bad).await.map(|_| ()).unwrap_err();
        assert_error_hidden(&bad, &error);
    }
}
