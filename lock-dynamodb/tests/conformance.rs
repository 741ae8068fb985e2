//! The shared conformance suite against DynamoDB's protocol, served by a
//! moto server the harness starts (or `DLOCK_TEST_DYNAMODB_URL`).

mod common;

use std::time::Duration;

use conformance_tests::harness::{shared_moto, skip_unless_available};
use lock_dynamodb::DynamoStore;

/// The clock skew the suite runs with: inside the suite's expiry slack
/// (2 s), and not zero, so every case goes through the client-clock rule
/// (takeover and promotion only past an entry's end plus the skew).
const SUITE_SKEW: Duration = Duration::from_millis(250);

/// The shortest ttl the suite uses here: moto is one Python process
/// serving a couple of hundred requests a second, too slow for the renewal
/// rounds and store timeouts of sub-second leases (the suite's timeout is a
/// sixth of the lease).
const SUITE_MIN_TTL: Duration = Duration::from_secs(3);

/// A new client (its own SDK client and connections) of the shared table.
async fn store() -> DynamoStore {
    common::store_with(|config| config.max_clock_skew(SUITE_SKEW).min_ttl(SUITE_MIN_TTL)).await
}

conformance_tests::conformance_suite!(
    dynamodb_moto,
    store,
    skip_if = skip_unless_available(shared_moto())
);
