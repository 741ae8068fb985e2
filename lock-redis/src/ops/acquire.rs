//! acquire: `src/lua/acquire.lua` adds an entry to the lock's queue:
//! holding at once (minting its token), waiting, or nothing.

use std::sync::LazyLock;
use std::time::Duration;

use lock_core::{AcquireOutcome, AcquireRequest, Grant, LockMode, Queued, StoreError};
use redis::Value;

use super::{
    OpScript, bytes_at, corrupt_reply, holder_at, int_at, millis, mode_letter, reply_items,
    token_of, ttl_millis,
};
use crate::error::{map_redis_error, unexpected_reply};
use crate::store::RedisStore;

static ACQUIRE: LazyLock<OpScript> =
    LazyLock::new(|| OpScript::new(include_str!("../lua/acquire.lua")));

/// One script call. Replies: the token alone (a free key granted), or
/// `granted`, `held`, `queued`, `limit` or `corrupt` with their fields.
pub(super) async fn acquire(
    store: &RedisStore,
    request: AcquireRequest<'_>,
) -> Result<AcquireOutcome, StoreError> {
    let outcome = send(store, request).await;
    // A failed call may have queued the entry: its record stays until the
    // entry is released.
    if request.queue.is_some()
        && matches!(outcome, Ok(ref outcome) if !matches!(outcome, AcquireOutcome::Queued(_)))
    {
        store.inner.waiters.forget(request.lease_id);
    }
    outcome
}

async fn send(
    store: &RedisStore,
    request: AcquireRequest<'_>,
) -> Result<AcquireOutcome, StoreError> {
    let key = request.key;
    let keys = store.redis_keys(key);
    let ttl_ms = ttl_millis(request.ttl);
    let waiter_ms = request.queue.map(ttl_millis);
    let mut invocation = ACQUIRE.invocation(store);
    // Ready made for the fast path: what a grant writes between the token
    // and the renewal time (both the server's clock).
    invocation.key(&keys.lock).arg(format!(
        ",{}{},{ttl_ms:020},{},{},",
        request.lease_id,
        mode_letter(request.mode, request.fencing),
        // Exclusive entries neither set nor check the limit: 0 keeps the
        // lone holder's form free of one.
        if request.mode == LockMode::Shared {
            request.limit.max(1)
        } else {
            0
        },
        request.owner
    ));
    if let Some(ms) = waiter_ms {
        invocation.arg(ms);
    }
    // Grants for the entry are kept from before it can be queued.
    if request.queue.is_some() {
        store
            .inner
            .waiters
            .queueing(request.lease_id, tokio::time::Instant::now());
    }
    let reply = store
        .inner
        .conn
        .eval(&invocation)
        .await
        .map_err(|error| map_redis_error("acquire", Some(key), error))?;
    let grant = Grant::new(Duration::from_millis(ttl_ms));
    let reply = match reply {
        // The fast path: a free key, granted.
        Value::BulkString(token) => {
            let token = token_of(key, &token)?;
            return Ok(AcquireOutcome::Acquired(match token {
                Some(token) if request.fencing.is_enabled() => grant.with_token(token),
                _ => grant,
            }));
        }
        other => other,
    };
    let (status, items) = reply_items("acquire", key, reply)?;
    match status.as_slice() {
        b"granted" => {
            let mut grant = grant;
            if let Some(token) = token_of(key, bytes_at("acquire", key, &items, 0)?)? {
                grant = grant.with_token(token);
            }
            let previous = bytes_at("acquire", key, &items, 1)?;
            if !previous.is_empty() {
                let owner = String::from_utf8_lossy(previous).into_owned();
                tracing::debug!(key, previous_owner = %owner, "took over an expired lease");
                grant = grant.with_previous_owner(owner);
            }
            Ok(AcquireOutcome::Acquired(grant))
        }
        b"held" => Ok(AcquireOutcome::Held(holder_at("acquire", key, &items, 0)?)),
        b"queued" => {
            let waiter_ttl = Duration::from_millis(waiter_ms.unwrap_or(ttl_ms));
            let mut queued = Queued::new(waiter_ttl);
            if let Some(token) = token_of(key, bytes_at("acquire", key, &items, 0)?)? {
                queued = queued.with_token(token);
            }
            if !bytes_at("acquire", key, &items, 1)?.is_empty() {
                queued = queued.with_holder(holder_at("acquire", key, &items, 1)?);
            }
            if let Some(after) = millis(int_at("acquire", key, &items, 4)?) {
                queued = queued.with_retry_after(after);
            }
            Ok(AcquireOutcome::Queued(queued))
        }
        b"limit" => {
            let limit = int_at("acquire", key, &items, 0)?;
            let limit = u32::try_from(limit)
                .map_err(|_| unexpected_reply("acquire", key, "limit out of range"))?;
            Ok(AcquireOutcome::LimitMismatch { limit })
        }
        b"corrupt" => Err(corrupt_reply("acquire", key, &keys, &items)),
        _ => Err(unexpected_reply("acquire", key, "unknown status")),
    }
}
