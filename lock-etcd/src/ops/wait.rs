//! wait_for_grant: a watch on the key's range, deciding locally from the
//! deletions it reports when the entry holds.

use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions};
use lock_core::{FencingToken, LeaseId, LockMode, StoreError, WaitOutcome};
use tokio::time::Instant;

use super::{queue_of, read_queue};
use crate::error::{is_compacted, store_error};
use crate::queue::Ahead;
use crate::registry::Standing;
use crate::store::EtcdStore;

/// How long a wait whose watch failed sleeps before answering `Changed`
/// (at most), so a waiter polls about once a second while etcd is away.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the waiting entry is and what stands ahead of it.
struct Waiter {
    create_revision: i64,
    mode: LockMode,
    limit: u32,
    ahead: Ahead,
}

/// How a watch ended.
enum Watched {
    /// Every entry ahead is gone or compatible: the entry holds.
    Holds,
    /// The entry itself was deleted (released, expired).
    Gone,
    /// The watch cannot go on from the revision it knew (compacted,
    /// cancelled by etcd, closed): read the queue again.
    Resync,
}

/// Watches the key's range (entries and old lock key) for deletions from
/// just after the revision at which the store last read the queue (when it
/// added the entry, or renewed it), so a deletion in between is not
/// missed; the entries that were ahead then are all that can stand in the
/// way. Answers `Granted` once every entry ahead is gone or compatible
/// (the release that promotes the entry is its notification, with no
/// request of its own), `Changed` when the entry itself is gone or the
/// watch failed, `TimedOut` after `max`. What the watch learnt is kept for
/// the next wait and renewal.
///
/// An entry this store does not track (added through another client) is
/// placed by one read first.
pub(super) async fn wait_for_grant(
    store: &EtcdStore,
    key: &str,
    lease_id: LeaseId,
    max: Duration,
) -> WaitOutcome {
    let deadline = Instant::now() + max;
    match tokio::time::timeout_at(deadline, watch_for_grant(store, key, lease_id)).await {
        Ok(Ok(outcome)) => outcome,
        Err(_) => WaitOutcome::TimedOut,
        Ok(Err(error)) => {
            tracing::debug!(key, %error, "watching the queue failed; the waiter polls");
            tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_AFTER_FAILURE)).await;
            WaitOutcome::Changed
        }
    }
}

async fn watch_for_grant(
    store: &EtcdStore,
    key: &str,
    lease_id: LeaseId,
) -> Result<WaitOutcome, StoreError> {
    let granted = |create_revision: i64| {
        store.inner.registry.lock().promote(key, lease_id);
        WaitOutcome::Granted {
            token: u64::try_from(create_revision)
                .ok()
                .map(FencingToken::from),
        }
    };
    loop {
        let standing = store.inner.registry.lock().standing(key, lease_id);
        let mut waiter = match standing {
            Some(Standing::Holds(create_revision)) => return Ok(granted(create_revision)),
            Some(Standing::Waits {
                create_revision,
                mode,
                limit,
                ahead: Some(ahead),
            }) => Waiter {
                create_revision,
                mode,
                limit,
                ahead,
            },
            // Nothing known ahead: read the queue.
            _ => match place(store, key, lease_id).await? {
                Some(waiter) => waiter,
                None => return Ok(WaitOutcome::Changed),
            },
        };
        if waiter.ahead.holds(waiter.mode, waiter.limit) {
            return Ok(granted(waiter.create_revision));
        }
        match watch(store, key, lease_id, &mut waiter).await? {
            Watched::Holds => return Ok(granted(waiter.create_revision)),
            Watched::Gone => return Ok(WaitOutcome::Changed),
            Watched::Resync => {
                store.inner.registry.lock().set_ahead(key, lease_id, None);
            }
        }
    }
}

/// Reads the queue and places the entry in it; `None` when it is not
/// there.
async fn place(
    store: &EtcdStore,
    key: &str,
    lease_id: LeaseId,
) -> Result<Option<Waiter>, StoreError> {
    let inner = &store.inner;
    let txn = etcd_client::Txn::new().and_then([read_queue(&inner.layout, key)]);
    let reply = inner
        .conn
        .txn(&txn)
        .await
        .map_err(|error| store_error(error, "read queue", Some(key)))?;
    let queue = queue_of(store, key, &reply, 0)?;
    let Some(index) = queue.position(lease_id) else {
        return Ok(None);
    };
    let seen = &queue.entries[index];
    let ahead = queue.ahead_of(index);
    inner
        .registry
        .lock()
        .set_ahead(key, lease_id, Some(ahead.clone()));
    Ok(Some(Waiter {
        create_revision: seen.create_revision,
        mode: seen.mode,
        limit: seen.limit.unwrap_or(1),
        ahead,
    }))
}

/// Follows deletions in the key's range from after `waiter.ahead.revision`
/// until the entry holds or is gone, keeping the registry's copy of what
/// is ahead up to date.
async fn watch(
    store: &EtcdStore,
    key: &str,
    lease_id: LeaseId,
    waiter: &mut Waiter,
) -> Result<Watched, StoreError> {
    let inner = &store.inner;
    let layout = &inner.layout;
    let (start, end) = layout.range(key);
    let own = layout.entry_key(key, lease_id);
    let options = WatchOptions::new()
        .with_range(end)
        .with_start_revision(waiter.ahead.revision + 1)
        .with_filters([WatchFilterType::NoPut]);
    let opened = inner
        .conn
        .call(|client| {
            let (mut watches, start) = (client.watch_client(), start.clone());
            let options = options.clone();
            async move { watches.watch(start, Some(options)).await }
        })
        .await;
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(error) if is_compacted(&error) => return Ok(Watched::Resync),
        Err(error) => return Err(store_error(error, "watch", Some(key))),
    };
    loop {
        let Some(reply) = stream
            .message()
            .await
            .map_err(|error| store_error(error, "watch", Some(key)))?
        else {
            return Ok(Watched::Resync);
        };
        if reply.canceled() || reply.compact_revision() > 0 {
            return Ok(Watched::Resync);
        }
        let mut changed = false;
        for event in reply.events() {
            let Some(kv) = event.kv() else { continue };
            if event.event_type() != EventType::Delete {
                continue;
            }
            if kv.key() == own.as_slice() {
                return Ok(Watched::Gone);
            }
            waiter.ahead.deleted(layout, kv.key());
            // Events come in revision order: everything up to this one was
            // seen (the header's revision may be ahead of events still to
            // come).
            waiter.ahead.revision = waiter.ahead.revision.max(kv.mod_revision());
            changed = true;
        }
        if changed {
            inner
                .registry
                .lock()
                .set_ahead(key, lease_id, Some(waiter.ahead.clone()));
            if waiter.ahead.holds(waiter.mode, waiter.limit) {
                return Ok(Watched::Holds);
            }
        }
    }
}
