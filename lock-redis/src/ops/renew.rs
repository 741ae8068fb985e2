//! renew: `src/lua/renew.lua` extends every lease of a batch that still
//! carries its lease id; one call per [batch](crate::batch), concurrently.

use std::sync::LazyLock;
use std::time::Duration;

use futures_util::future::join_all;
use lock_core::{RenewEntry, RenewOutcome, StoreError};
use redis::{Script, Value};

use super::{corrupt, ttl_millis};
use crate::batch::{Indexed, batches};
use crate::error::{map_redis_error, unexpected_reply};
use crate::keys::RedisKeys;
use crate::store::RedisStore;

static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/renew.lua")));

/// One script call per batch (per hash tag in Cluster mode), all
/// concurrently; the first failed call fails the round.
pub(super) async fn renew(
    store: &RedisStore,
    leases: &[RenewEntry<'_>],
    ttl: Duration,
) -> Result<Vec<RenewOutcome>, StoreError> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let ttl_ms = ttl_millis(ttl);
    let calls = batches(leases, store.is_cluster(), store.inner.max_batch);
    let results = join_all(
        calls
            .into_iter()
            .map(|batch| renew_batch(store, batch, ttl_ms)),
    )
    .await;
    let mut outcomes = vec![RenewOutcome::Lost; leases.len()];
    for result in results {
        for (index, outcome) in result? {
            outcomes[index] = outcome;
        }
    }
    Ok(outcomes)
}

/// One script call renewing `entries` (all of one hash slot in Cluster
/// mode).
async fn renew_batch(
    store: &RedisStore,
    entries: Vec<Indexed<'_, '_>>,
    ttl_ms: u64,
) -> Result<Vec<(usize, RenewOutcome)>, StoreError> {
    let first_key = entries.first().map_or("", |(_, entry)| entry.key);
    let keys: Vec<RedisKeys> = entries
        .iter()
        .map(|(_, e)| store.redis_keys(e.key))
        .collect();
    let mut invocation = RENEW.prepare_invoke();
    invocation.arg(ttl_ms);
    for ((_, entry), names) in entries.iter().zip(&keys) {
        invocation.key(&names.lock).arg(entry.lease_id.to_string());
    }
    let reply = store
        .inner
        .conn
        .eval(&invocation)
        .await
        .map_err(|error| map_redis_error("renew", Some(first_key), error))?;
    let Value::Array(codes) = reply else {
        return Err(unexpected_reply("renew", first_key, "not an array"));
    };
    if codes.len() != entries.len() {
        return Err(unexpected_reply(
            "renew",
            first_key,
            "wrong number of outcomes",
        ));
    }
    let applied = Duration::from_millis(ttl_ms);
    let mut outcomes = Vec::with_capacity(entries.len());
    for (((index, entry), names), code) in entries.into_iter().zip(&keys).zip(codes) {
        let outcome = match code {
            Value::Int(1) => RenewOutcome::Renewed { ttl: applied },
            Value::Int(0) => RenewOutcome::Lost,
            Value::Int(code @ (-1 | -2)) => {
                // One overwritten key must not fail the renewal of the
                // whole batch: its lease is gone, the others are fine.
                let what = if code == -1 {
                    "holds another type than a lease string"
                } else {
                    "holds a string that is not a lease"
                };
                let error = corrupt("renew", entry.key, names, 1, what);
                tracing::error!(%error, "renewal found an overwritten lock; its lease counts as lost");
                RenewOutcome::Lost
            }
            _ => return Err(unexpected_reply("renew", entry.key, "not an outcome code")),
        };
        outcomes.push((index, outcome));
    }
    Ok(outcomes)
}
