//! acquire: `src/lua/acquire.lua` grants a free (or expired) lock key and
//! mints its fencing token, or answers the holder.

use std::sync::LazyLock;
use std::time::Duration;

use lock_core::{AcquireOutcome, AcquireRequest, Grant, StoreError};
use redis::Script;

use super::{bytes_at, corrupt_reply, fencing_arg, int_at, reply_items, token_of, ttl_millis};
use crate::error::{map_redis_error, unexpected_reply};
use crate::keys::{holder_of, lock_value, owner_of};
use crate::store::RedisStore;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/acquire.lua")));

/// One script call. Replies: `granted` (token, previous owner's lock
/// value or ""), `held` (the holder's lock value and `PTTL`), or `corrupt`.
pub(super) async fn acquire(
    store: &RedisStore,
    request: AcquireRequest<'_>,
) -> Result<AcquireOutcome, StoreError> {
    let key = request.key;
    let keys = store.redis_keys(key);
    let ttl_ms = ttl_millis(request.ttl);
    let mut invocation = ACQUIRE.prepare_invoke();
    invocation
        .key(&keys.lock)
        .key(&keys.fence)
        .arg(lock_value(request.lease_id, request.owner))
        .arg(ttl_ms)
        .arg(fencing_arg(request.fencing));
    let reply = store
        .inner
        .conn
        .eval(&invocation)
        .await
        .map_err(|error| map_redis_error("acquire", Some(key), error))?;
    let (status, items) = reply_items("acquire", key, reply)?;
    match status.as_slice() {
        b"granted" => {
            let mut grant = Grant::new(Duration::from_millis(ttl_ms));
            if let Some(token) = token_of(key, bytes_at("acquire", key, &items, 0)?)? {
                grant = grant.with_token(token);
            }
            let previous = bytes_at("acquire", key, &items, 1)?;
            if !previous.is_empty() {
                let owner = owner_of(key, previous)?;
                tracing::debug!(key, previous_owner = %owner, "took over an expired lease");
                grant = grant.with_previous_owner(owner);
            }
            Ok(AcquireOutcome::Acquired(grant))
        }
        b"held" => {
            let value = bytes_at("acquire", key, &items, 0)?;
            let pttl = int_at("acquire", key, &items, 1)?;
            Ok(AcquireOutcome::Held(holder_of(key, value, pttl)?))
        }
        b"corrupt" => Err(corrupt_reply("acquire", key, &keys, &items)),
        _ => Err(unexpected_reply("acquire", key, "unknown status")),
    }
}
