//! renew: `src/lua/renew.lua` extends every entry of a batch that is still
//! live and carries its lease id, held and waiting alike; one call per
//! [batch](crate::batch), concurrently.

use std::sync::LazyLock;
use std::time::Duration;

use futures_util::future::join_all;
use lock_core::{FencingToken, Grant, LeaseId, RenewEntry, RenewOutcome, StoreError};
use redis::Value;

use super::{OpScript, corrupt, millis, token_of, ttl_millis};
use crate::batch::{Indexed, batches};
use crate::error::{map_redis_error, unexpected_reply};
use crate::keys::RedisKeys;
use crate::store::RedisStore;

static RENEW: LazyLock<OpScript> =
    LazyLock::new(|| OpScript::new(include_str!("../lua/renew.lua")));

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

/// What a waiting entry's look (no extension) found.
pub(super) enum Standing {
    /// It holds, with this token (when it mints one).
    Holds(Option<FencingToken>),
    /// It still waits.
    Waits,
    /// It is gone.
    Gone,
}

/// Looks where the waiting entry `lease_id` stands without extending it
/// (promoting whatever holds by position by now).
pub(super) async fn look(
    store: &RedisStore,
    key: &str,
    lease_id: LeaseId,
) -> Result<Standing, StoreError> {
    let keys = store.redis_keys(key);
    let mut invocation = RENEW.invocation(store);
    invocation
        .key(&keys.lock)
        .arg(1)
        .arg(lease_id.to_string())
        .arg("?");
    let reply = store
        .inner
        .conn
        .eval(&invocation)
        .await
        .map_err(|error| map_redis_error("renew", Some(key), error))?;
    let code = match reply {
        Value::Array(mut codes) if codes.len() == 1 => codes.remove(0),
        _ => return Err(unexpected_reply("renew", key, "not one outcome")),
    };
    let Value::BulkString(code) = code else {
        return Err(unexpected_reply("renew", key, "not an outcome string"));
    };
    Ok(match code.split_first() {
        Some((b'g', token)) => Standing::Holds(token_of(key, token)?),
        Some((b'w', _)) => Standing::Waits,
        _ => Standing::Gone,
    })
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
    let mut invocation = RENEW.invocation(store);
    invocation.arg(ttl_ms);
    let mut waiter_ms = Vec::with_capacity(entries.len());
    for ((_, entry), names) in entries.iter().zip(&keys) {
        let wait = entry.wait_ttl.map(ttl_millis);
        waiter_ms.push(wait);
        invocation
            .key(&names.lock)
            .arg(entry.lease_id.to_string())
            .arg(wait.map_or_else(String::new, |ms| ms.to_string()));
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
    for ((((index, entry), names), code), wait) in
        entries.into_iter().zip(&keys).zip(codes).zip(waiter_ms)
    {
        let Value::BulkString(code) = code else {
            return Err(unexpected_reply(
                "renew",
                entry.key,
                "not an outcome string",
            ));
        };
        let outcome = match code.split_first() {
            Some((b'r', _)) => RenewOutcome::Renewed { ttl: applied },
            Some((b'g', token)) => {
                let grant = Grant::new(applied);
                RenewOutcome::Granted(match token_of(entry.key, token)? {
                    Some(token) => grant.with_token(token),
                    None => grant,
                })
            }
            Some((b'w', after)) => RenewOutcome::Waiting {
                ttl: Duration::from_millis(wait.unwrap_or(ttl_ms)),
                retry_after: std::str::from_utf8(after)
                    .ok()
                    .and_then(|after| after.parse().ok())
                    .and_then(millis),
            },
            Some((b'l', _)) => RenewOutcome::Lost,
            Some((b'c', rest)) if !rest.is_empty() => {
                // One overwritten key must not fail the renewal of the
                // whole batch: its entry is gone, the others are fine.
                let which = i64::from(rest[0].wrapping_sub(b'0'));
                let what = String::from_utf8_lossy(&rest[1..]);
                let error = corrupt("renew", entry.key, names, which, &what);
                tracing::error!(%error, "renewal found an overwritten lock; its entry counts as lost");
                RenewOutcome::Lost
            }
            _ => return Err(unexpected_reply("renew", entry.key, "not an outcome code")),
        };
        outcomes.push((index, outcome));
    }
    Ok(outcomes)
}
