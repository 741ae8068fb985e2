//! The [`LeaseStore`] operations, one module each: the script each one
//! runs (`src/lua/`), its arguments, and what its reply means. Shared here:
//! reading the scripts' replies, and the error for a key another program
//! overwrote.

mod acquire;
mod inspect;
mod release;
mod renew;
mod wait;

use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, LeaseId, LeaseInfo,
    LeaseStore, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
};
use redis::Value;

use crate::error::unexpected_reply;
use crate::keys::RedisKeys;
use crate::store::RedisStore;

#[async_trait]
impl LeaseStore for RedisStore {
    async fn acquire(&self, request: AcquireRequest<'_>) -> Result<AcquireOutcome, StoreError> {
        acquire::acquire(self, request).await
    }

    async fn renew(
        &self,
        leases: &[RenewEntry<'_>],
        ttl: Duration,
    ) -> Result<Vec<RenewOutcome>, StoreError> {
        renew::renew(self, leases, ttl).await
    }

    async fn release(
        &self,
        key: &str,
        lease_id: LeaseId,
        fencing: Fencing,
    ) -> Result<ReleaseOutcome, StoreError> {
        release::release(self, key, lease_id, fencing).await
    }

    async fn inspect(&self, key: &str) -> Result<Option<LeaseInfo>, StoreError> {
        inspect::inspect(self, key).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_min_ttl(Duration::from_millis(1))
            .with_ttl_granularity(Duration::from_millis(1))
            .with_max_key_len(lock_core::MAX_KEY_LEN)
            .with_max_batch(self.inner.max_batch)
            .with_native_wait(true)
            .with_fencing(true)
    }

    async fn wait_for_change(&self, key: &str, max: Duration) {
        wait::wait_for_change(self, key, max).await;
    }
}

/// The error for a lock whose Redis key holds data dlock did not write
/// (`which` 2: the fencing key; otherwise the lock key), logged as well.
fn corrupt(op: &str, key: &str, keys: &RedisKeys, which: i64, what: &str) -> StoreError {
    let name = if which == 2 { &keys.fence } else { &keys.lock };
    tracing::error!(
        key = %key,
        redis_key = ?name,
        what,
        "{op}: a lock's Redis key holds data dlock did not write"
    );
    StoreError::corrupt(
        key,
        format!(
            "the Redis key {name:?} {what}: another program wrote to it; \
             delete the key to free the lock"
        ),
    )
}

/// The `corrupt` error a script answered with: which key, and what it
/// found there.
fn corrupt_reply(op: &str, key: &str, keys: &RedisKeys, items: &[Value]) -> StoreError {
    match (int_at(op, key, items, 0), bytes_at(op, key, items, 1)) {
        (Ok(which), Ok(what)) => corrupt(op, key, keys, which, &String::from_utf8_lossy(what)),
        (Err(error), _) | (_, Err(error)) => error,
    }
}

/// The ttl in whole milliseconds, rounded up (Redis's `PX` unit).
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000).max(1)).unwrap_or(u64::MAX)
}

fn fencing_arg(fencing: Fencing) -> &'static str {
    if fencing.is_enabled() { "1" } else { "0" }
}

/// A script's reply as its items, the first being the status word.
fn reply_items(op: &str, key: &str, reply: Value) -> Result<(Vec<u8>, Vec<Value>), StoreError> {
    let Value::Array(mut items) = reply else {
        return Err(unexpected_reply(op, key, "not an array"));
    };
    if items.is_empty() {
        return Err(unexpected_reply(op, key, "empty"));
    }
    let status = match items.remove(0) {
        Value::BulkString(status) => status,
        Value::SimpleString(status) => status.into_bytes(),
        _ => return Err(unexpected_reply(op, key, "no status word")),
    };
    Ok((status, items))
}

fn bytes_at<'a>(
    op: &str,
    key: &str,
    items: &'a [Value],
    index: usize,
) -> Result<&'a [u8], StoreError> {
    match items.get(index) {
        Some(Value::BulkString(bytes)) => Ok(bytes),
        Some(Value::SimpleString(text)) => Ok(text.as_bytes()),
        _ => Err(unexpected_reply(op, key, "missing string")),
    }
}

fn int_at(op: &str, key: &str, items: &[Value], index: usize) -> Result<i64, StoreError> {
    match items.get(index) {
        Some(Value::Int(value)) => Ok(*value),
        _ => Err(unexpected_reply(op, key, "missing integer")),
    }
}

/// A token as the scripts write it (decimal), or none for "".
fn token_of(key: &str, bytes: &[u8]) -> Result<Option<FencingToken>, StoreError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| StoreError::corrupt(key, "the fencing token is not a decimal number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_milliseconds() {
        assert_eq!(ttl_millis(Duration::from_micros(1)), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_millis(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_millis(Duration::ZERO), 1);
    }
}
