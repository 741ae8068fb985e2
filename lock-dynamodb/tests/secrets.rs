//! A secret key or session token never shows: not in `Debug` of the config
//! or the store, not in URL errors or connection errors, not in the logs
//! of the store and the SDK at any level.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance_tests::harness::{pick_free_port, shared_moto, skip_unless_available};
use conformance_tests::unique_key;
use lock_core::{AcquireRequest, Fencing, LeaseId, LeaseStore, RenewEntry, StoreErrorKind};
use lock_dynamodb::{DynamoConfig, DynamoStore};

const SECRET: &str = "S3CRET-key-Zq9";
const TOKEN: &str = "T0KEN-session-Xw4";

#[track_caller]
fn assert_hidden(what: &str, shown: &str) {
    assert!(
        !shown.contains(SECRET),
        "{what} shows the secret key: {shown}"
    );
    assert!(
        !shown.contains(TOKEN),
        "{what} shows the session token: {shown}"
    );
}

#[track_caller]
fn assert_error_hides(what: &str, error: &lock_core::StoreError) {
    assert_hidden(what, &format!("{error} | {error:?}"));
}

#[test]
fn config_debug_and_url_errors_never_show_a_secret() {
    let url = format!(
        "dynamodb://AKIDEXAMPLE:{SECRET}@locks?region=eu-west-1&session_token={TOKEN}&endpoint=http://127.0.0.1:9"
    );
    let config = DynamoConfig::from_url(&url).expect("parses");
    let shown = format!("{config:?}");
    assert_hidden("Debug of the config", &shown);
    assert!(shown.contains("AKIDEXAMPLE:***@locks"), "{shown}");
    let built = DynamoConfig::new("locks").credentials("AKID", SECRET, Some(TOKEN.to_owned()));
    assert_hidden("Debug of a built config", &format!("{built:?}"));

    for bad in [
        format!("dynamodb://AKID:{SECRET}@locks?colour=blue&session_token={TOKEN}"),
        format!("dynamodb://AKID:{SECRET}@locks?{SECRET}={TOKEN}"),
        format!("dynamodb://AKID:{SECRET}@locks?secret_key={SECRET}"),
        format!("dynamodb://AKID:{SECRET}@locks?create_table=maybe&session_token={TOKEN}"),
        format!("dynamodb://AKID:{SECRET}@locks?max_clock_skew=soon&session_token={TOKEN}"),
        format!("dynamodb://AKID:{SECRET}@/path?session_token={TOKEN}"),
        format!("dynamodb://AKID:{SECRET}@a,b"),
        format!("dynamodb://AKID:{SECRET}@locks/extra"),
        format!("dynamodb://:{SECRET}@locks"),
        format!("dynamodb://AKID:{SECRET}%zz@locks"),
        format!("dynamodb://AKID:{SECRET}@lo cks"),
        format!("dynamodb:AKID:{SECRET}@locks"),
        format!("dynamodb://locks?session_token={TOKEN}"),
        SECRET.to_owned(),
        format!("http://AKID:{SECRET}@locks"),
    ] {
        let error = DynamoConfig::from_url(&bad).expect_err(&bad);
        assert_eq!(error.kind(), StoreErrorKind::Invalid, "{bad}: {error}");
        assert_error_hides(&bad, &error);
    }
}

/// Collects everything logged on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

/// On a current-thread runtime, so every task (the SDK's connection tasks
/// too) logs to this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn store_debug_errors_and_logs_never_show_a_secret() {
    if let Some(reason) = skip_unless_available(shared_moto()).await {
        eprintln!("skipped: {reason}");
        return;
    }
    let server = common::moto().await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let url = format!(
        "dynamodb://AKIDEXAMPLE:{SECRET}@{}?endpoint={}&region=us-east-1&create_table=true&session_token={TOKEN}",
        common::TABLE,
        server.endpoint()
    );
    let store = DynamoStore::connect(&url).await.expect("connect to moto");
    assert_hidden("Debug of the store", &format!("{store:?}"));
    let key = unique_key("store_debug_errors_and_logs_never_show_a_secret");
    let lease = LeaseId::random();
    store
        .acquire(AcquireRequest::new(
            &key,
            "me",
            lease,
            Duration::from_secs(10),
        ))
        .await
        .expect("acquire");
    store
        .renew(&[RenewEntry::held(&key, lease)], Duration::from_secs(10))
        .await
        .expect("renew");
    store.inspect(&key).await.expect("inspect");
    store
        .release(&key, lease, Fencing::Enabled)
        .await
        .expect("release");

    // Nothing listens there.
    let port = pick_free_port().expect("a free port");
    let unreachable = format!(
        "dynamodb://AKIDEXAMPLE:{SECRET}@{}?endpoint=http://127.0.0.1:{port}&region=us-east-1&session_token={TOKEN}",
        common::TABLE
    );
    let error = DynamoStore::connect(&unreachable)
        .await
        .expect_err("nothing listens");
    assert!(error.is_retryable(), "{error:?}");
    assert_error_hides("a connection error", &error);

    let missing_table = format!(
        "dynamodb://AKIDEXAMPLE:{SECRET}@no-such-table?endpoint={}&region=us-east-1&session_token={TOKEN}",
        server.endpoint()
    );
    let error = DynamoStore::connect(&missing_table)
        .await
        .expect_err("the table is missing");
    assert_eq!(error.kind(), StoreErrorKind::Invalid, "{error}");
    assert!(error.to_string().contains("create_table=true"), "{error}");
    assert_error_hides("a missing-table error", &error);

    let logs = captured.text();
    // The SDK's trace logs show the signed requests, headers included (the
    // access key id is there); the session token shows redacted.
    assert!(
        logs.contains("AKIDEXAMPLE") && logs.contains("x-amz-security-token"),
        "the SDK logged no request to check: {} bytes",
        logs.len()
    );
    assert_hidden("the logs", &logs);
}
