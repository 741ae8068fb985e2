//! inspect: `src/lua/inspect.lua` reads the holders, how many wait, the
//! limit and the last token.

use std::sync::LazyLock;

use lock_core::{LeaseInfo, StoreError};

use super::{OpScript, bytes_at, corrupt_reply, holder_at, int_at, reply_items, token_of};
use crate::error::{map_redis_error, unexpected_reply};
use crate::store::RedisStore;

static INSPECT: LazyLock<OpScript> =
    LazyLock::new(|| OpScript::new(include_str!("../lua/inspect.lua")));

/// One script call. Replies: `none` (no state), `info` (last token or "",
/// limit, waiting count, then owner, remaining ms and mode per holder), or
/// `corrupt`.
pub(super) async fn inspect(
    store: &RedisStore,
    key: &str,
) -> Result<Option<LeaseInfo>, StoreError> {
    let keys = store.redis_keys(key);
    let mut invocation = INSPECT.invocation(store);
    invocation.key(&keys.lock);
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
            let token = token_of(key, bytes_at("inspect", key, &items, 0)?)?;
            let limit = int_at("inspect", key, &items, 1)?;
            let waiting = int_at("inspect", key, &items, 2)?;
            let mut holders = Vec::new();
            let mut at = 3;
            while at < items.len() {
                holders.push(holder_at("inspect", key, &items, at)?);
                at += 3;
            }
            let mut info =
                LeaseInfo::new(holders, token).with_waiting(usize::try_from(waiting).unwrap_or(0));
            if let Ok(limit @ 1..) = u32::try_from(limit) {
                info = info.with_limit(limit);
            }
            Ok(Some(info))
        }
        b"corrupt" => Err(corrupt_reply("inspect", key, &keys, &items)),
        _ => Err(unexpected_reply("inspect", key, "unknown status")),
    }
}
