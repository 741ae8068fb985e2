//! inspect: `src/lua/inspect.lua` reads the holder, its remaining time and
//! the last fencing token.

use std::sync::LazyLock;

use lock_core::{LeaseInfo, StoreError};
use redis::Script;

use super::{bytes_at, corrupt_reply, int_at, reply_items, token_of};
use crate::error::{map_redis_error, unexpected_reply};
use crate::keys::holder_of;
use crate::store::RedisStore;

static INSPECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/inspect.lua")));

/// One script call. Replies: `none` (neither the lock nor the fencing key
/// exists), `info` (the lock value or "", its `PTTL`, the last token or
/// ""), or `corrupt`.
pub(super) async fn inspect(
    store: &RedisStore,
    key: &str,
) -> Result<Option<LeaseInfo>, StoreError> {
    let keys = store.redis_keys(key);
    let mut invocation = INSPECT.prepare_invoke();
    invocation.key(&keys.lock).key(&keys.fence);
    let reply = store
        .inner
        .conn
        .eval(&invocation)
        .await
        .map_err(|error| map_redis_error("inspect", Some(key), error))?;
    let (status, items) = reply_items("inspect", key, reply)?;
    match status.as_slice() {
        b"none" => Ok(None),
        b"info" => {
            let value = bytes_at("inspect", key, &items, 0)?;
            let holder = if value.is_empty() {
                None
            } else {
                Some(holder_of(key, value, int_at("inspect", key, &items, 1)?)?)
            };
            let token = token_of(key, bytes_at("inspect", key, &items, 2)?)?;
            Ok(Some(LeaseInfo::new(holder, token)))
        }
        b"corrupt" => Err(corrupt_reply("inspect", key, &keys, &items)),
        _ => Err(unexpected_reply("inspect", key, "unknown status")),
    }
}
