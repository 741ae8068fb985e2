//! release: `src/lua/release.lua` removes the lease's live entry; the
//! entries it kept waiting hold from that step on and are told on the
//! lock's channel.

use std::sync::LazyLock;

use lock_core::{Fencing, LeaseId, LockMode, ReleaseOutcome, StoreError};
use redis::Value;

use super::{OpScript, corrupt_reply, mode_letter, reply_items};
use crate::error::{map_redis_error, unexpected_reply};
use crate::store::RedisStore;

static RELEASE: LazyLock<OpScript> =
    LazyLock::new(|| OpScript::new(include_str!("../lua/release.lua")));

/// One script call. The counter stays, unless `fencing` is disabled and
/// the lock is left without entries. Replies: 1 released, 0 not held, or
/// `corrupt`.
pub(super) async fn release(
    store: &RedisStore,
    key: &str,
    lease_id: LeaseId,
    fencing: Fencing,
) -> Result<ReleaseOutcome, StoreError> {
    store.inner.waiters.forget(lease_id);
    let keys = store.redis_keys(key);
    let mut invocation = RELEASE.invocation(store);
    // The fast path looks for the entry an exclusive lock with this
    // fencing writes; a second argument only when the counter may go.
    invocation.key(&keys.lock).arg(format!(
        "{lease_id}{}",
        mode_letter(LockMode::Exclusive, fencing)
    ));
    if !fencing.is_enabled() {
        invocation.arg(0);
    }
    let reply = store
        .inner
        .conn
        .eval(&invocation)
        .await
        .map_err(|error| map_redis_error("release", Some(key), error))?;
    match reply {
        Value::Int(1) => Ok(ReleaseOutcome::Released),
        Value::Int(0) => Ok(ReleaseOutcome::NotHeld),
        reply => {
            let (status, items) = reply_items("release", key, reply)?;
            match status.as_slice() {
                b"corrupt" => Err(corrupt_reply("release", key, &keys, &items)),
                _ => Err(unexpected_reply("release", key, "unknown status")),
            }
        }
    }
}
