//! A release wakes the wait of the entry it promotes, in the same process,
//! and no other wait, even when it comes before that wait began.

use conformance_tests::cases::{
    a_release_before_the_wait_still_wakes_the_promoted_entry,
    same_process_release_wakes_only_the_entry_it_promotes,
};
use lock_sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_only_the_waiter_it_promotes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("wake.db"))
        .await
        .expect("open");
    same_process_release_wakes_only_the_entry_it_promotes(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_before_the_wait_still_wakes_the_promoted_waiter() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("early.db"))
        .await
        .expect("open");
    a_release_before_the_wait_still_wakes_the_promoted_entry(&store).await;
}
