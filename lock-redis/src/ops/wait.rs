//! wait_for_change: a subscription to the key's release channel (shared
//! through [`Waiters`](crate::waiters::Waiters)), a re-check of the key,
//! then a wait for a message, the key's expiry or the deadline.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use crate::builder::DEFAULT_RESPONSE_TIMEOUT;
use crate::store::{Inner, RedisStore};
use crate::waiters::LINGER;

/// Subscribes to the key's channel on the store's connection (once per
/// channel for all the store's waiters), then re-checks the key's `PTTL`,
/// then waits for a message, the key's expiry or `max`, whichever comes
/// first. A failed subscription sleeps out `max` (the locker re-polls in
/// any case).
pub(super) async fn wait_for_change(store: &RedisStore, key: &str, max: Duration) {
    let give_up = Instant::now() + max;
    let keys = store.redis_keys(key);
    let channel = keys.channel.into_bytes();
    let inner = &store.inner;
    let waiters = &inner.waiters;
    let entered = waiters.enter(&channel);
    let _leave = Leave {
        inner: Arc::downgrade(inner),
        channel: &channel,
    };
    let notified = entered.notify.notified();
    tokio::pin!(notified);
    // Listen before subscribing and re-checking, so a release in between is
    // not missed.
    notified.as_mut().enable();
    if !entered.subscribed {
        let subscribed = tokio::time::timeout_at(give_up, async {
            let _ops = waiters.ops.lock().await;
            if waiters.is_subscribed(&channel) {
                return Ok(());
            }
            inner.conn.subscribe(&channel).await?;
            waiters.mark_subscribed(&channel);
            Ok::<(), redis::RedisError>(())
        })
        .await;
        match subscribed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(key, %error, "subscribing failed; waiting without notifications");
                tokio::time::sleep_until(give_up).await;
                return;
            }
            Err(_) => return,
        }
    }
    // Subscribed: now see whether the key is still held, and for how long
    // (expiry is not notified).
    let mut wake_at = give_up;
    match tokio::time::timeout_at(
        give_up,
        inner.conn.query(redis::cmd("PTTL").arg(&keys.lock)),
    )
    .await
    {
        Ok(Ok(Value::Int(-2))) => return,
        Ok(Ok(Value::Int(ms))) if ms >= 0 => {
            let ms = u64::try_from(ms).unwrap_or(0);
            wake_at = wake_at.min(Instant::now() + Duration::from_millis(ms));
        }
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::debug!(key, %error, "re-checking the key failed; waiting for a notification");
        }
        Err(_) => return,
    }
    let _ = tokio::time::timeout_at(wake_at, notified).await;
}

/// Unregisters a waiter when its wait ends (or is cancelled), and schedules
/// the unsubscription of a channel left without waiters.
struct Leave<'a> {
    inner: Weak<Inner>,
    channel: &'a [u8],
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let Some(idle) = inner.waiters.leave(self.channel) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = self.inner.clone();
        let channel = self.channel.to_vec();
        runtime.spawn(async move {
            tokio::time::sleep(LINGER).await;
            let Some(inner) = weak.upgrade() else { return };
            let _ops = inner.waiters.ops.lock().await;
            if inner.waiters.take_idle(&channel, idle) {
                let unsubscribe = inner.conn.unsubscribe(&channel);
                match tokio::time::timeout(DEFAULT_RESPONSE_TIMEOUT, unsubscribe).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "unsubscribing failed"),
                    Err(_) => tracing::debug!("unsubscribing timed out"),
                }
            }
        });
    }
}
