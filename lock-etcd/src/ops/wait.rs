//! wait_for_change: a watch on the lock key for its deletion.

use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions};
use lock_core::StoreError;
use tokio::time::Instant;

use crate::error::{is_compacted, store_error};
use crate::store::EtcdStore;

/// A watch on the lock key for deletes (release or expiry), from the
/// revision at which this store last saw it held (or from now, after
/// reading it), so a release in between is not missed. Returns at once for
/// a free key, and on any watch failure after sleeping out `max` (the
/// locker re-polls in any case).
pub(super) async fn wait_for_change(store: &EtcdStore, key: &str, max: Duration) {
    let deadline = Instant::now() + max;
    match tokio::time::timeout_at(deadline, wait_for_release(store, key)).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(error)) => {
            tracing::debug!(key, %error, "watch failed; waiting out the poll interval");
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Returns once `key` is free: at once when it is, else when a watch from
/// after the revision it was seen held at reports a delete (or can no
/// longer tell: cancelled, compacted, closed).
async fn wait_for_release(store: &EtcdStore, key: &str) -> Result<(), StoreError> {
    let inner = &store.inner;
    let etcd_key = inner.layout.lock_key(key);
    let seen = inner.registry.lock().seen_held_at(key);
    let revision = match seen {
        Some(revision) => revision,
        None => {
            let reply = inner
                .conn
                .get(&etcd_key)
                .await
                .map_err(|error| store_error(error, "get", Some(key)))?;
            if reply.kvs().is_empty() {
                return Ok(());
            }
            reply.header().map_or(0, |header| header.revision())
        }
    };
    let options = WatchOptions::new()
        .with_start_revision(revision + 1)
        .with_filters([WatchFilterType::NoPut]);
    let watch = inner.conn.call(|client| {
        let (mut watches, etcd_key) = (client.watch_client(), etcd_key.clone());
        let options = options.clone();
        async move { watches.watch(etcd_key, Some(options)).await }
    });
    let mut stream = match watch.await {
        Ok(stream) => stream,
        Err(error) if is_compacted(&error) => return Ok(()),
        Err(error) => return Err(store_error(error, "watch", Some(key))),
    };
    loop {
        let Some(reply) = stream
            .message()
            .await
            .map_err(|error| store_error(error, "watch", Some(key)))?
        else {
            return Ok(());
        };
        if reply.canceled() || reply.compact_revision() > 0 {
            return Ok(());
        }
        if reply
            .events()
            .iter()
            .any(|event| event.event_type() == EventType::Delete)
        {
            return Ok(());
        }
    }
}
