//! The [`LeaseStore`] operations, one module each: the script each one
//! runs (`src/lua/`), its arguments, and what its reply means. Shared here:
//! the scripts' common part, reading their replies, and the error for a
//! key another program overwrote.

mod acquire;
mod inspect;
mod release;
mod renew;
mod wait;

use std::time::Duration;

use async_trait::async_trait;
use lock_core::{
    AcquireOutcome, AcquireRequest, Capabilities, Fencing, FencingToken, Holder, LeaseId,
    LeaseInfo, LeaseStore, LockMode, ReleaseOutcome, RenewEntry, RenewOutcome, StoreError,
    WaitOutcome,
};
use redis::{Script, ScriptInvocation, Value};

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

    async fn wait_for_grant(&self, key: &str, lease_id: LeaseId, max: Duration) -> WaitOutcome {
        wait::wait_for_grant(self, key, lease_id, max).await
    }
}

/// One operation's script: `body` with the shared part
/// (`src/lua/common.lua`) in place of its `--[[common]]` line, after the
/// script's fast path; once with `PUBLISH` for a standalone server, once
/// with `SPUBLISH` for a Cluster. The command is part of the text rather
/// than an argument, as every argument costs the server time on each call.
struct OpScript {
    standalone: Script,
    cluster: Script,
}

/// The line of `common.lua` that names the publish command.
const PUBLISH_LINE: &str = "local publish = 'PUBLISH'";

impl OpScript {
    fn new(body: &str) -> Self {
        let text = body.replacen("--[[common]]", include_str!("../lua/common.lua"), 1);
        Self {
            standalone: Script::new(&text),
            cluster: Script::new(&text.replacen(PUBLISH_LINE, "local publish = 'SPUBLISH'", 1)),
        }
    }

    /// A call of the script as `store`'s deployment needs it.
    fn invocation(&self, store: &RedisStore) -> ScriptInvocation<'_> {
        if store.inner.conn.is_cluster() {
            self.cluster.prepare_invoke()
        } else {
            self.standalone.prepare_invoke()
        }
    }
}

/// The mode letter of an entry: `x` or `s`, upper case when the entry
/// mints no token.
fn mode_letter(mode: LockMode, fencing: Fencing) -> char {
    match (mode, fencing.is_enabled()) {
        (LockMode::Exclusive, true) => 'x',
        (LockMode::Shared, true) => 's',
        (LockMode::Exclusive, false) => 'X',
        (LockMode::Shared, false) => 'S',
    }
}

/// A mode letter as the scripts store it.
fn mode_of(op: &str, key: &str, letter: &[u8]) -> Result<LockMode, StoreError> {
    match letter {
        b"x" | b"X" => Ok(LockMode::Exclusive),
        b"s" | b"S" => Ok(LockMode::Shared),
        _ => Err(unexpected_reply(op, key, "unknown mode")),
    }
}

/// The error for a lock whose Redis key holds data dlock did not write
/// (`which`: the script key index), logged as well.
fn corrupt(op: &str, key: &str, keys: &RedisKeys, which: i64, what: &str) -> StoreError {
    let name = keys.script_key(which);
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
             delete the lock's keys (see RedisKeys) to free the lock"
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

/// The ttl in whole milliseconds, rounded up (the unit of the scripts).
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000).max(1)).unwrap_or(u64::MAX)
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
        .and_then(|text| text.parse::<u64>().ok())
        .map(|value| Some(FencingToken::from(value)))
        .ok_or_else(|| StoreError::corrupt(key, "the fencing token is not a decimal number"))
}

/// A duration in ms from a script, `None` when negative (none known).
fn millis(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// A holder from the owner, remaining ms and mode items at `at`.
fn holder_at(op: &str, key: &str, items: &[Value], at: usize) -> Result<Holder, StoreError> {
    let owner = bytes_at(op, key, items, at)?;
    let owner = std::str::from_utf8(owner)
        .map_err(|_| StoreError::corrupt(key, "a holder's owner is not UTF-8"))?;
    let mut holder =
        Holder::new(owner).with_mode(mode_of(op, key, bytes_at(op, key, items, at + 2)?)?);
    if let Some(remaining) = millis(int_at(op, key, items, at + 1)?) {
        holder = holder.with_remaining(remaining);
    }
    Ok(holder)
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

    #[test]
    fn mode_letters_carry_fencing() {
        assert_eq!(mode_letter(LockMode::Exclusive, Fencing::Enabled), 'x');
        assert_eq!(mode_letter(LockMode::Shared, Fencing::Enabled), 's');
        assert_eq!(mode_letter(LockMode::Shared, Fencing::Disabled), 'S');
    }

    #[test]
    fn cluster_scripts_publish_to_the_shard() {
        assert_eq!(
            include_str!("../lua/common.lua")
                .matches(PUBLISH_LINE)
                .count(),
            1
        );
        let script = OpScript::new("--[[common]]");
        assert_ne!(script.standalone.get_hash(), script.cluster.get_hash());
    }

    #[test]
    fn fast_paths_write_and_read_the_released_mark_of_common() {
        let common = include_str!("../lua/common.lua");
        let mark = common
            .lines()
            .find_map(|line| line.strip_prefix("local RELEASED = "))
            .expect("RELEASED in common.lua");
        assert_eq!(
            mark.len(),
            33 + 2,
            "as long as a lease id and its mode letter, quoted"
        );
        for fast_path in [
            include_str!("../lua/acquire.lua"),
            include_str!("../lua/release.lua"),
        ] {
            assert!(fast_path.contains(mark));
        }
    }

    #[test]
    fn every_script_gets_the_common_part() {
        for body in [
            include_str!("../lua/acquire.lua"),
            include_str!("../lua/release.lua"),
            include_str!("../lua/renew.lua"),
            include_str!("../lua/inspect.lua"),
        ] {
            assert_eq!(body.matches("--[[common]]").count(), 1);
        }
    }
}
