//! What the test binaries share: the moto server, a table, and stores on it
//! with dummy credentials given to the client (never set in the process's
//! environment).
#![allow(dead_code, unreachable_pub)]

use conformance_tests::harness::{MotoServer, shared_moto};
use lock_core::LeaseStore;
use lock_dynamodb::{DynamoConfig, DynamoStore};

/// The table every test of a binary shares (each test uses keys of its
/// own); created on first use.
pub const TABLE: &str = "dlock-tests";

/// moto's dummy key: it accepts any.
pub const ACCESS_KEY_ID: &str = "AKIDDLOCKTESTS";
pub const SECRET_ACCESS_KEY: &str = "dlock-test-secret";

/// Logs to the test's output, filtered by `RUST_LOG` (default: warnings).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The binary's moto server.
///
/// # Panics
///
/// When it cannot be started (callers skip first with
/// `skip_unless_available(shared_moto())`).
pub async fn moto() -> &'static MotoServer {
    shared_moto().await.expect("the shared moto server starts")
}

/// Settings for the shared table at `endpoint`, creating it when missing.
pub fn config(endpoint: &str) -> DynamoConfig {
    DynamoConfig::new(TABLE)
        .region("us-east-1")
        .endpoint(endpoint)
        .credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None)
        .create_table(true)
}

/// A new client of the shared table, its settings adjusted by `adjust`.
pub async fn store_with(adjust: impl FnOnce(DynamoConfig) -> DynamoConfig) -> DynamoStore {
    init_logs();
    let server = moto().await;
    DynamoStore::connect_with(adjust(config(server.endpoint())))
        .await
        .expect("connect to moto")
}

/// The owner of the key's first live holder, if any.
pub async fn holder_of(store: &DynamoStore, key: &str) -> Option<String> {
    store
        .inspect(key)
        .await
        .expect("inspect")
        .and_then(|info| info.holder)
        .map(|holder| holder.owner)
}
