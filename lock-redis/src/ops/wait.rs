//! wait_for_grant: a subscription to the lock's channel (shared through
//! [`Waiters`](crate::waiters::Waiters)), a look at the store when a grant
//! may have been published before the subscription, then a wait for the
//! grant message, a lost connection or the deadline.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lock_core::{LeaseId, WaitOutcome};
use tokio::time::Instant;

use super::renew::{Standing, look};
use crate::builder::DEFAULT_RESPONSE_TIMEOUT;
use crate::store::{Inner, RedisStore};
use crate::waiters::{Heard, LINGER};

/// Subscribes to the lock's channel on the store's connection (once per
/// channel for all the store's waiters); when the subscription is younger
/// than the entry, looks at the store once (the grant may have been
/// published before); then waits for the grant message, a lost connection
/// (`Changed`) or `max`. A failed subscription waits out `max` (the locker
/// renews the entry in any case).
pub(super) async fn wait_for_grant(
    store: &RedisStore,
    key: &str,
    lease_id: LeaseId,
    max: Duration,
) -> WaitOutcome {
    let give_up = Instant::now() + max;
    let channel = store.redis_keys(key).channel.into_bytes();
    let inner = &store.inner;
    let waiters = &inner.waiters;
    let entered = waiters.enter(&channel, lease_id);
    let _leave = Leave {
        inner: Arc::downgrade(inner),
        channel: &channel,
        lease_id,
    };
    let subscribed = tokio::time::timeout_at(give_up, async {
        let _ops = waiters.ops.lock().await;
        if let Some(since) = waiters.subscribed_since(&channel) {
            return Ok(since);
        }
        inner.conn.subscribe(&channel).await?;
        let since = Instant::now();
        waiters.mark_subscribed(&channel, since);
        Ok::<Instant, redis::RedisError>(since)
    })
    .await;
    let subscribed = match subscribed {
        Ok(Ok(since)) => since,
        Ok(Err(error)) => {
            tracing::debug!(key, %error, "subscribing failed; waiting without notifications");
            tokio::time::sleep_until(give_up).await;
            return WaitOutcome::TimedOut;
        }
        Err(_) => return WaitOutcome::TimedOut,
    };
    let mut looked = false;
    loop {
        let notified = entered.notify.notified();
        tokio::pin!(notified);
        // Listen before reading what was heard, so nothing slips between.
        notified.as_mut().enable();
        match waiters.heard(lease_id, entered.epoch, subscribed) {
            Heard::Granted(token) => return WaitOutcome::Granted { token },
            Heard::Changed => return WaitOutcome::Changed,
            Heard::Uncovered if !looked => {
                looked = true;
                match tokio::time::timeout_at(give_up, look(store, key, lease_id)).await {
                    Ok(Ok(Standing::Holds(token))) => {
                        waiters.forget(lease_id);
                        return WaitOutcome::Granted { token };
                    }
                    Ok(Ok(Standing::Waits)) => waiters.covered(lease_id, subscribed),
                    Ok(Ok(Standing::Gone)) => return WaitOutcome::Changed,
                    Ok(Err(error)) => {
                        tracing::debug!(key, %error, "looking at a waiting entry failed");
                        return WaitOutcome::Changed;
                    }
                    Err(_) => return WaitOutcome::TimedOut,
                }
                continue;
            }
            Heard::Covered | Heard::Uncovered => {}
        }
        if tokio::time::timeout_at(give_up, notified).await.is_err() {
            return match waiters.heard(lease_id, entered.epoch, subscribed) {
                Heard::Granted(token) => WaitOutcome::Granted { token },
                Heard::Changed => WaitOutcome::Changed,
                Heard::Covered | Heard::Uncovered => WaitOutcome::TimedOut,
            };
        }
    }
}

/// Unregisters a waiter when its wait ends (or is cancelled), and schedules
/// the unsubscription of a channel left without waiters.
struct Leave<'a> {
    inner: Weak<Inner>,
    channel: &'a [u8],
    lease_id: LeaseId,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let Some(idle) = inner.waiters.leave(self.channel, self.lease_id) else {
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
