//! DynamoDB on moto: dlock's DynamoStore against a raw conditional
//! `PutItem` + `DeleteItem` pair through the same SDK client. moto is a
//! Python server that answers one request at a time, nothing like
//! DynamoDB's speed: only the ratios mean anything. No peer library runs
//! here (the Go library dlock descends from is not a Rust crate).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use conformance_tests::harness::MotoServer;
use lock_dynamodb::DynamoStore;

use crate::Settings;
use crate::driver::{self, PairBaselines};
use crate::measure::{Run, ms, throughput};
use crate::ours;
use crate::report::Row;

const BACKEND: &str = "dynamodb";

pub(crate) async fn run(
    settings: &Settings,
    rows: &mut Vec<Row>,
    versions: &mut Vec<String>,
) -> Result<(), String> {
    let server = MotoServer::start().await.map_err(|e| e.to_string())?;
    versions.push("moto (DynamoDB's protocol, one request at a time)".into());
    let url = format!(
        "dynamodb://AKIDBENCH:bench-secret@dlock_bench?region=us-east-1&endpoint={}&create_table=true",
        server.endpoint()
    );
    let store = DynamoStore::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    let (client, table) = (store.client().clone(), store.table().to_owned());
    let baselines = RawItems { client, table };
    driver::pairs(BACKEND, &store, &baselines, settings, [150, 600], rows).await;
    // Renewal: DynamoDB has no conditional batch update, so a heartbeat is
    // one UpdateItem per lock, sent concurrently. moto answers a few hundred
    // requests a second: a thousand locks, a heartbeat of 5 s, and time
    // enough for a whole batch per call.
    let held = settings.held / 10;
    let renewal = ours::renewal(
        store.clone(),
        held,
        Duration::from_secs(5),
        Duration::from_secs(4),
    )
    .await;
    rows.push(Row {
        backend: BACKEND,
        scenario: "2. Renewal cost with 10,000 held locks",
        metric: format!("store calls per heartbeat, {held} locks"),
        higher_is_better: false,
        ours: renewal.calls_per_heartbeat,
        raw: None,
        peer: None,
        note: format!(
            "each renew call of up to {} entries sends one UpdateItem per entry ({held} per heartbeat); one round renewing all: {:.0} ms on moto",
            renewal.batch_limit,
            ms(renewal.round)
        ),
    });
    driver::fairness(BACKEND, &store, settings, None, rows).await;
    driver::kinds(BACKEND, &store, None, settings, rows).await;
    Ok(())
}

/// Raw items through the same client; no peer.
struct RawItems {
    client: Client,
    table: String,
}

#[async_trait]
impl PairBaselines for RawItems {
    fn pairs_note(&self) -> &'static str {
        "raw: conditional PutItem + conditional DeleteItem, same client"
    }

    async fn raw_pairs(&self, tasks: usize, ops: usize) -> Run {
        raw_pairs(&self.client, &self.table, tasks, ops).await
    }

    async fn peer_pairs(&self, _tasks: usize, _ops: usize) -> Option<Run> {
        None
    }
}

/// Conditional PutItem (absent) + conditional DeleteItem (still ours).
async fn raw_pairs(client: &Client, table: &str, tasks: usize, ops: usize) -> Run {
    let (client, table) = (client.clone(), table.to_owned());
    throughput(tasks, ops, move |task| {
        let (client, table) = (client.clone(), table.clone());
        async move {
            let key = AttributeValue::S(format!("bench-raw-{task}"));
            let expires = AttributeValue::N(
                (std::time::SystemTime::now() + Duration::from_secs(60))
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
                    .to_string(),
            );
            client
                .put_item()
                .table_name(&table)
                .item("lock_key", key.clone())
                .item("owner", AttributeValue::S("raw".into()))
                .item("expires_at", expires)
                .condition_expression("attribute_not_exists(lock_key)")
                .send()
                .await
                .expect("raw put");
            client
                .delete_item()
                .table_name(&table)
                .key("lock_key", key)
                .condition_expression("#owner = :owner")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":owner", AttributeValue::S("raw".into()))
                .send()
                .await
                .expect("raw delete");
        }
    })
    .await
}
