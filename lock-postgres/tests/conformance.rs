//! The shared conformance suite against a real PostgreSQL.

use conformance_tests::harness::{shared_postgres, skip_unless_available};
use lock_postgres::PostgresStore;

/// A new client (its own small pool) on the test database.
async fn client() -> PostgresStore {
    let server = shared_postgres().await.expect("postgres is available");
    PostgresStore::builder()
        .max_connections(4)
        .connect(server.url())
        .await
        .expect("connect to the test database")
}

conformance_tests::conformance_suite!(
    postgres,
    client,
    skip_if = skip_unless_available(shared_postgres())
);
