//! Connecting: an unreachable server, an unknown host, refused credentials
//! and a server that never answers are reported within the connect timeout,
//! each with its cause, and never with the password.

use std::time::Duration;

use conformance_tests::fault_proxy::{FaultMode, FaultProxy};
use conformance_tests::harness::{or_skip, pick_free_port, shared_postgres};
use lock_core::{StoreError, StoreErrorKind};
use lock_postgres::PostgresStore;
use tokio::time::Instant;

const SECRET: &str = "S3CRETpw";
const TIMEOUT: Duration = Duration::from_millis(800);

/// Connects to `url` with [`TIMEOUT`]; the error, checked to come within
/// it (and a margin) and without the password.
async fn refused(url: &str) -> StoreError {
    let start = Instant::now();
    let error = PostgresStore::builder()
        .connect_timeout(TIMEOUT)
        .connect(url)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        start.elapsed() < TIMEOUT + Duration::from_millis(500),
        "{url}: {error} after {:?}",
        start.elapsed()
    );
    assert!(!error.to_string().contains(SECRET), "{error}");
    assert!(!format!("{error:?}").contains(SECRET), "{error:?}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_to_connect_come_within_the_timeout_with_their_cause() {
    let closed = format!("127.0.0.1:{}", pick_free_port().unwrap());
    let error = refused(&format!("postgres://app:{SECRET}@{closed}/db")).await;
    assert_eq!(error.kind(), StoreErrorKind::Unavailable);
    assert!(
        error.message().starts_with(&format!(
            "postgres: cannot connect to {closed} as \"app\": Connection refused"
        )),
        "{error}"
    );

    let error = refused(&format!(
        "postgres://app@no-such-host.invalid/db?password={SECRET}"
    ))
    .await;
    assert_eq!(error.kind(), StoreErrorKind::Unavailable);
    assert!(
        error
            .message()
            .contains("failed to lookup address information"),
        "{error}"
    );

    let error = refused(&format!("postgres:app:{SECRET}@{closed}/db")).await;
    assert_eq!(error.kind(), StoreErrorKind::Invalid, "{error}");

    let Some(server) = or_skip(shared_postgres().await) else {
        return;
    };
    let addr = server.addr();
    let error = refused(&format!(
        "postgres://dlock_no_such_role:{SECRET}@{addr}/postgres"
    ))
    .await;
    assert_eq!(error.kind(), StoreErrorKind::Auth);
    assert!(
        error
            .message()
            .contains("role \"dlock_no_such_role\" does not exist (SQLSTATE 28000)"),
        "{error}"
    );

    let proxy = FaultProxy::start(addr).await.unwrap();
    proxy.set_mode(FaultMode::BlackHole);
    let via = proxy.listen_addr();
    let error = refused(&format!("postgres://app:{SECRET}@{via}/db")).await;
    assert_eq!(error.kind(), StoreErrorKind::Timeout);
    assert_eq!(
        error.message(),
        format!("postgres: cannot connect to {via} as \"app\": no answer within 800ms")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_secret_parameter_keeps_the_others() {
    let Some(server) = or_skip(shared_postgres().await) else {
        return;
    };
    let url = format!(
        "{}?sslpassword={SECRET}&application_name=dlock",
        server.url()
    );
    let store = PostgresStore::connect(&url).await.unwrap();
    let name: (String,) = sqlx::query_as("SELECT current_setting('application_name')")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(name.0, "dlock", "the other parameters are kept");
}
