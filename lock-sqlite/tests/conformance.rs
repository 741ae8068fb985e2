//! The shared conformance suite against a real SQLite database file.

use std::sync::OnceLock;

use lock_sqlite::SqliteStore;
use tempfile::TempDir;

/// One database file for the whole test binary.
fn database() -> &'static TempDir {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
}

/// A new client (its own pool) on the shared file.
async fn client() -> SqliteStore {
    SqliteStore::open(database().path().join("locks.db"))
        .await
        .expect("open the database")
}

conformance_tests::conformance_suite!(sqlite, client);
