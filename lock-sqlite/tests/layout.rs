//! A database file written by the previous version of the store (one row
//! per key holding its lease) is converted when opened; a table of another
//! layout is refused.

use std::path::Path;
use std::time::Duration;

use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, LeaseId, LeaseStore, ReleaseOutcome, RenewEntry,
    RenewOutcome, StoreErrorKind,
};
use lock_sqlite::SqliteStore;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

const TTL: Duration = Duration::from_secs(30);

/// The previous version's table, as its `schema.sql` created it.
const PREVIOUS_SCHEMA: &str = "CREATE TABLE dlock_leases (
    key TEXT PRIMARY KEY NOT NULL,
    owner TEXT,
    lease_id BLOB,
    expires_ms INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    previous_owner TEXT
) WITHOUT ROWID";

/// A held lease of the previous version.
fn old_lease() -> LeaseId {
    LeaseId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
}

async fn pool(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    SqlitePool::connect_with(options).await.unwrap()
}

/// A file with a table of the previous layout: a released key (token 5), a
/// held one (token 9, owner "old", [`old_lease`]), an expired one (token
/// 3) and one held without fencing (token 0).
async fn previous_layout(path: &Path) -> SqlitePool {
    let pool = pool(path).await;
    sqlx::query(PREVIOUS_SCHEMA).execute(&pool).await.unwrap();
    let now = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
    sqlx::query(&format!(
        "INSERT INTO dlock_leases (key, owner, lease_id, expires_ms, token) VALUES
            ('released', NULL, NULL, {now}, 5),
            ('held', 'old', $1, {now} + 30000, 9),
            ('expired', 'gone', $2, {now} - 1000, 3),
            ('unfenced', 'plain', $3, {now} + 30000, 0)"
    ))
    .bind(&old_lease().to_bytes()[..])
    .bind(&LeaseId::random().to_bytes()[..])
    .bind(&LeaseId::random().to_bytes()[..])
    .execute(&pool)
    .await
    .unwrap();
    pool
}

async fn grant_token(store: &SqliteStore, key: &str) -> u64 {
    let request = AcquireRequest::new(key, "new", LeaseId::random(), TTL);
    match store.acquire(request).await.unwrap() {
        AcquireOutcome::Acquired(grant) => grant.token.and_then(|t| t.to_u64()).unwrap(),
        other => panic!("{key}: expected a grant, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_of_the_previous_layout_is_converted_keeping_leases_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    let old = previous_layout(&path).await;
    let store = SqliteStore::open(&path).await.unwrap();

    // The held lease goes on, under its lease id, and holds the key.
    let info = store.inspect("held").await.unwrap().unwrap();
    assert_eq!(info.holder.map(|h| h.owner).as_deref(), Some("old"));
    assert_eq!(info.last_token.and_then(|t| t.to_u64()), Some(9));
    let request = AcquireRequest::new("held", "new", LeaseId::random(), TTL);
    assert!(matches!(
        store.acquire(request).await.unwrap(),
        AcquireOutcome::Held(holder) if holder.owner == "old"
    ));
    let renewed = store
        .renew(&[RenewEntry::held("held", old_lease())], TTL)
        .await
        .unwrap();
    assert!(matches!(renewed[..], [RenewOutcome::Renewed { .. }]));
    let released = store.release("held", old_lease(), Fencing::Enabled).await;
    assert_eq!(released.unwrap(), ReleaseOutcome::Released);

    // Tokens go on from each key's counter.
    assert_eq!(grant_token(&store, "held").await, 10);
    assert_eq!(grant_token(&store, "released").await, 6);
    assert_eq!(grant_token(&store, "expired").await, 4);
    let info = store.inspect("unfenced").await.unwrap().unwrap();
    assert_eq!(info.holder.map(|h| h.owner).as_deref(), Some("plain"));
    assert_eq!(grant_token(&store, "fresh").await, 1);

    // A process of the previous version fails rather than grant beside.
    let old_acquire = sqlx::query("UPDATE dlock_leases SET lease_id = $1 WHERE key = 'fresh'")
        .bind(&LeaseId::random().to_bytes()[..])
        .execute(&old)
        .await;
    assert!(old_acquire.is_err(), "the lease columns are gone");

    // Opening again changes nothing.
    let again = SqliteStore::open(&path).await.unwrap();
    let info = again.inspect("held").await.unwrap().unwrap();
    assert_eq!(info.last_token.and_then(|t| t.to_u64()), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_opening_together_convert_the_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.db");
    previous_layout(&path).await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("every process opens"));
    }
    let info = stores[3].inspect("held").await.unwrap().unwrap();
    assert_eq!(info.holder.map(|h| h.owner).as_deref(), Some("old"));
    assert_eq!(grant_token(&stores[0], "released").await, 6);
}

#[tokio::test]
async fn a_table_of_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let pool = pool(&path).await;
    sqlx::query("CREATE TABLE invoices (key TEXT PRIMARY KEY, amount REAL)")
        .execute(&pool)
        .await
        .unwrap();
    let error = SqliteStore::builder()
        .table("invoices")
        .open(&path)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Invalid);
    assert!(error.to_string().contains("not a dlock table"), "{error}");
}
