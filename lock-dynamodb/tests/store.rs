//! What is particular to the DynamoDB store: its table, its key item, idle
//! expiry, fencing off, and the costs of its operations.

mod common;

use std::time::Duration;

use conformance_tests::harness::{shared_moto, skip_unless_available};
use conformance_tests::unique_key;
use lock_core::{
    AcquireOutcome, AcquireRequest, Fencing, LeaseId, LeaseStore, ReleaseOutcome, StoreErrorKind,
};
use lock_dynamodb::aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use lock_dynamodb::{DynamoConfig, DynamoStore};

async fn skip() -> Option<String> {
    skip_unless_available(shared_moto()).await
}

fn request<'a>(key: &'a str, lease_id: LeaseId) -> AcquireRequest<'a> {
    AcquireRequest::new(key, "me", lease_id, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_created_only_when_asked() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let endpoint = common::moto().await.endpoint();
    let table = format!("created-{:08x}", rand_suffix());
    let settings = || {
        DynamoConfig::new(&table)
            .region("us-east-1")
            .endpoint(endpoint)
            .credentials(common::ACCESS_KEY_ID, common::SECRET_ACCESS_KEY, None)
    };
    let error = DynamoStore::connect_with(settings())
        .await
        .expect_err("the table is missing");
    assert_eq!(error.kind(), StoreErrorKind::Invalid, "{error}");
    assert!(error.to_string().contains(&table), "{error}");
    assert!(error.to_string().contains("create_table=true"), "{error}");

    let store = DynamoStore::connect_with(settings().create_table(true))
        .await
        .expect("created");
    let key = unique_key("a_missing_table_is_created_only_when_asked");
    let outcome = store
        .acquire(request(&key, LeaseId::random()))
        .await
        .expect("acquire on the new table");
    assert!(matches!(outcome, AcquireOutcome::Acquired(_)));
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_another_key_schema_is_refused() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let store = common::store_with(|config| config).await;
    let table = format!("other-schema-{:08x}", rand_suffix());
    store
        .client()
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .expect("key schema"),
        )
        .send()
        .await
        .expect("create a table of another schema");
    let error = DynamoStore::connect_with(
        DynamoConfig::new(&table)
            .region("us-east-1")
            .endpoint(common::moto().await.endpoint())
            .credentials(common::ACCESS_KEY_ID, common::SECRET_ACCESS_KEY, None)
            .create_table(true),
    )
    .await
    .map(|_| ())
    .expect_err("another key schema");
    assert_eq!(error.kind(), StoreErrorKind::Invalid, "{error}");
    assert!(error.to_string().contains("lock_key"), "{error}");
}

/// Someone wrote garbage to a key's item: a corrupt error naming the key,
/// never a panic or a grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_key_item_is_corrupt_naming_the_key() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let store = common::store_with(|config| config).await;
    let key = unique_key("garbage_in_a_key_item_is_corrupt_naming_the_key");
    store
        .client()
        .put_item()
        .table_name(store.table())
        .item("lock_key", AttributeValue::S(key.clone()))
        .item("fence", AttributeValue::S("many".into()))
        .item("entries", AttributeValue::N("1".into()))
        .send()
        .await
        .expect("put garbage");
    for error in [
        store
            .acquire(request(&key, LeaseId::random()))
            .await
            .map(|_| ()),
        store.inspect(&key).await.map(|_| ()),
    ] {
        let error = error.expect_err("garbage");
        assert_eq!(error.kind(), StoreErrorKind::Corrupt, "{error}");
        assert_eq!(error.key(), Some(key.as_str()));
    }
}

/// With fencing off, the release of a key's last entry deletes its item;
/// with fencing on, the item (and its counter) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_decides_whether_a_released_key_keeps_its_item() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let store = common::store_with(|config| config).await;
    let base = unique_key("fencing_decides_whether_a_released_key_keeps_its_item");
    for fencing in [Fencing::Enabled, Fencing::Disabled] {
        let key = format!("{base}/{fencing:?}");
        let lease = LeaseId::random();
        store
            .acquire(request(&key, lease).with_fencing(fencing))
            .await
            .expect("acquire");
        assert_eq!(
            store.release(&key, lease, fencing).await.expect("release"),
            ReleaseOutcome::Released
        );
        let kept = store.inspect(&key).await.expect("inspect");
        match fencing {
            Fencing::Enabled => assert!(
                kept.is_some_and(|info| info.last_token.is_some()),
                "the counter went with the release"
            ),
            Fencing::Disabled => assert_eq!(kept, None, "the item stayed"),
        }
    }
}

/// With idle expiry, the store mints no tokens (deleting an item forgets
/// its counter): it says so, refuses fenced requests, and stamps every
/// write with the TTL attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_expiry_goes_only_with_fencing_off() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let endpoint = common::moto().await.endpoint().to_owned();
    let short =
        DynamoStore::connect_with(common::config(&endpoint).idle_expiry(Duration::from_secs(60)))
            .await
            .expect_err("an idle expiry of a minute");
    assert_eq!(short.kind(), StoreErrorKind::Invalid, "{short}");

    let store =
        common::store_with(|config| config.idle_expiry(Duration::from_secs(24 * 3600))).await;
    assert!(!store.capabilities().fencing);
    let key = unique_key("idle_expiry_goes_only_with_fencing_off");
    let fenced = store
        .acquire(request(&key, LeaseId::random()))
        .await
        .expect_err("a fenced request");
    assert_eq!(fenced.kind(), StoreErrorKind::Invalid, "{fenced}");
    let outcome = store
        .acquire(request(&key, LeaseId::random()).with_fencing(Fencing::Disabled))
        .await
        .expect("an unfenced request");
    let AcquireOutcome::Acquired(grant) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(grant.token, None);
    let item = store
        .client()
        .get_item()
        .table_name(store.table())
        .key("lock_key", AttributeValue::S(key.clone()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
        .expect("the key item");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let AttributeValue::N(expiry) = &item["idle_expiry"] else {
        panic!("{item:?}");
    };
    let expiry: u64 = expiry.parse().expect("a number");
    assert!(
        (now_s + 24 * 3600 - 60..=now_s + 24 * 3600 + 60).contains(&expiry),
        "{expiry} vs now {now_s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_only_the_waiter_it_promotes() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let store = common::store_with(|config| config).await;
    conformance_tests::cases::same_process_release_wakes_only_the_entry_it_promotes(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_before_the_wait_still_wakes_the_promoted_waiter() {
    if let Some(reason) = skip().await {
        eprintln!("skipped: {reason}");
        return;
    }
    let store = common::store_with(|config| config).await;
    conformance_tests::cases::a_release_before_the_wait_still_wakes_the_promoted_entry(&store)
        .await;
}
