//! release: `src/lua/release.lua` deletes the lock key while it carries
//! the lease id, and publishes on the key's channel.

use std::sync::LazyLock;

use lock_core::{Fencing, LeaseId, ReleaseOutcome, StoreError};
use redis::Script;

use super::{corrupt_reply, fencing_arg, reply_items};
use crate::error::{map_redis_error, unexpected_reply};
use crate::store::RedisStore;

static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/release.lua")));

/// One script call. The fencing counter stays, unless `fencing` is
/// disabled. Replies: `released`, `notheld` or `corrupt`.
pub(super) async fn release(
    store: &RedisStore,
    key: &str,
    lease_id: LeaseId,
    fencing: Fencing,
) -> Result<ReleaseOutcome, StoreError> {
    let keys = store.redis_keys(key);
    let mut invocation = RELEASE.prepare_invoke();
    invocation
        .key(&keys.lock)
        .key(&keys.fence)
        .arg(lease_id.to_string())
        .arg(fencing_arg(fencing))
        .arg(&keys.channel)
        .arg(store.inner.conn.publish_command());
    let reply = store
        .inner
        .conn
        .eval(&invocation)
        .await
        .map_err(|error| map_redis_error("release", Some(key), error))?;
    let (status, items) = reply_items("release", key, reply)?;
    match status.as_slice() {
        b"released" => Ok(ReleaseOutcome::Released),
        b"notheld" => Ok(ReleaseOutcome::NotHeld),
        b"corrupt" => Err(corrupt_reply("release", key, &keys, &items)),
        _ => Err(unexpected_reply("release", key, "unknown status")),
    }
}
