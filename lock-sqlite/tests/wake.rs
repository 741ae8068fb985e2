//! A release wakes the wait of the entry it promotes, in the same process,
//! and no other wait.

use conformance_tests::cases::same_process_release_wakes_only_the_entry_it_promotes;
use lock_sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_only_the_waiter_it_promotes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("wake.db"))
        .await
        .expect("open");
    same_process_release_wakes_only_the_entry_it_promotes(&store).await;
}
