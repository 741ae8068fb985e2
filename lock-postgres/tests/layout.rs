//! A table written by the previous version of the store (one row per key
//! holding its lease) is converted, or refused when migration is off; a
//! table of neither layout is refused.

use std::time::Duration;

use conformance_tests::harness::{PostgresServer, or_skip};
use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, LeaseId, LeaseStore, ReleaseOutcome, RenewEntry,
    RenewOutcome, StoreErrorKind,
};
use lock_postgres::PostgresStore;
use sqlx::PgPool;

const TTL: Duration = Duration::from_secs(30);

/// The previous version's table, as its `schema.sql` created it.
const PREVIOUS_SCHEMA: &str = "CREATE TABLE dlock_leases (
    key text PRIMARY KEY,
    owner text,
    lease_id bytea,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    token bigint NOT NULL DEFAULT 0,
    previous_owner text,
    wanted_until timestamptz NOT NULL DEFAULT '-infinity'
)";

/// A held lease of the previous version.
fn old_lease() -> LeaseId {
    LeaseId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef)
}

/// A fresh database with a table of the previous layout: a released key
/// (token 5), a held one (token 9, owner "old", [`old_lease`]), an expired
/// one (token 3) and one held without fencing (token 0).
async fn previous_layout() -> Option<(PostgresServer, PgPool)> {
    let server = or_skip(PostgresServer::start().await)?;
    let pool = PgPool::connect(server.url()).await.expect("connect");
    sqlx::query(PREVIOUS_SCHEMA).execute(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO dlock_leases (key, owner, lease_id, expires_at, token) VALUES
            ('released', NULL, NULL, now(), 5),
            ('held', 'old', $1, now() + interval '30 seconds', 9),
            ('expired', 'gone', $2, now() - interval '1 second', 3),
            ('unfenced', 'plain', $3, now() + interval '30 seconds', 0)",
    )
    .bind(&old_lease().to_bytes()[..])
    .bind(&LeaseId::random().to_bytes()[..])
    .bind(&LeaseId::random().to_bytes()[..])
    .execute(&pool)
    .await
    .unwrap();
    Some((server, pool))
}

async fn grant_token(store: &PostgresStore, key: &str) -> u64 {
    let request = AcquireRequest::new(key, "new", LeaseId::random(), TTL);
    match store.acquire(request).await.unwrap() {
        AcquireOutcome::Acquired(grant) => grant.token.and_then(|t| t.to_u64()).unwrap(),
        other => panic!("{key}: expected a grant, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_the_previous_layout_is_converted_keeping_leases_and_tokens() {
    let Some((server, pool)) = previous_layout().await else {
        return;
    };
    let store = PostgresStore::connect(server.url()).await.unwrap();

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
        .execute(&pool)
        .await;
    assert!(old_acquire.is_err(), "the lease columns are gone");

    // Converting twice changes nothing.
    store.migrate().await.unwrap();
    let info = store.inspect("held").await.unwrap().unwrap();
    assert_eq!(info.last_token.and_then(|t| t.to_u64()), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_convert_the_table_once() {
    let Some((server, _pool)) = previous_layout().await else {
        return;
    };
    let url = server.url().to_owned();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().expect("every process starts"));
    }
    let info = stores[3].inspect("held").await.unwrap().unwrap();
    assert_eq!(info.holder.map(|h| h.owner).as_deref(), Some("old"));
    assert_eq!(grant_token(&stores[0], "released").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migration_a_table_of_the_previous_layout_is_refused() {
    let Some((server, pool)) = previous_layout().await else {
        return;
    };
    let error = PostgresStore::builder()
        .migrate_on_connect(false)
        .connect(server.url())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Invalid);
    assert!(error.to_string().contains("migrate"), "{error}");
    // Nothing was changed.
    let (token,): (i64,) = sqlx::query_as("SELECT token FROM dlock_leases WHERE key = 'held'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(token, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_another_layout_is_refused() {
    let Some(server) = or_skip(PostgresServer::start().await) else {
        return;
    };
    let pool = PgPool::connect(server.url()).await.expect("connect");
    sqlx::query("CREATE TABLE invoices (key text PRIMARY KEY, amount numeric)")
        .execute(&pool)
        .await
        .unwrap();
    for migrate in [true, false] {
        let error = PostgresStore::builder()
            .table("invoices")
            .migrate_on_connect(migrate)
            .connect(server.url())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Invalid);
        assert!(error.to_string().contains("not a dlock table"), "{error}");
    }
}
