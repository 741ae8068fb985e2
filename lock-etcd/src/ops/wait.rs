//! wait_for_grant: the key's feed of deletions (one watch per key and
//! store), from which the waiter decides locally when its entry holds.

use std::time::Duration;

use lock_core::{FencingToken, LeaseId, LockMode, StoreError, WaitOutcome};
use tokio::time::Instant;

use super::{queue_of, read_queue};
use crate::error::store_error;
use crate::queue::Ahead;
use crate::registry::Standing;
use crate::store::EtcdStore;
use crate::watches::{Gone, Subscription};

/// How long a wait whose queue read failed sleeps before answering
/// `Changed` (at most), so a waiter polls about once a second while etcd is
/// away.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the waiting entry is and what stands ahead of it.
struct Waiter {
    create_revision: i64,
    mode: LockMode,
    limit: u32,
    ahead: Ahead,
}

/// What the feed told.
enum Heard {
    Holds,
    /// The entry itself was deleted (released, expired).
    Gone,
    /// What is ahead is known only up to a revision the feed no longer
    /// covers: read the queue again.
    Reread,
    Nothing,
}

/// Follows the deletions in the key's range (entries and old lock key)
/// from the revision at which the store last read the queue (when it added
/// the entry, or renewed it): the entries that were ahead then are all
/// that can stand in the way. Answers `Granted` once every entry ahead is
/// gone or compatible (the release that promotes the entry is its
/// notification, with no request of its own), `Changed` when the entry
/// itself is gone or the queue could not be read, `TimedOut` after `max`.
/// What the wait learnt is kept for the next wait and renewal.
///
/// The deletions come from the store's watch of the key (see
/// [`crate::watches`]); when the entry's last read predates that watch,
/// or the entry is not tracked (added through another client), the wait
/// reads the queue once first.
pub(super) async fn wait_for_grant(
    store: &EtcdStore,
    key: &str,
    lease_id: LeaseId,
    max: Duration,
) -> WaitOutcome {
    let deadline = Instant::now() + max;
    let inner = &store.inner;
    let Some(subscription) = inner.watches.subscribe(&inner.conn, &inner.layout, key) else {
        tokio::time::sleep_until(deadline).await;
        return WaitOutcome::TimedOut;
    };
    match tokio::time::timeout_at(deadline, follow(store, key, lease_id, &subscription)).await {
        Ok(Ok(outcome)) => outcome,
        Err(_) => WaitOutcome::TimedOut,
        Ok(Err(error)) => {
            tracing::debug!(key, %error, "reading the queue failed; the waiter polls");
            tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_AFTER_FAILURE)).await;
            WaitOutcome::Changed
        }
    }
}

async fn follow(
    store: &EtcdStore,
    key: &str,
    lease_id: LeaseId,
    subscription: &Subscription,
) -> Result<WaitOutcome, StoreError> {
    let registry = &store.inner.registry;
    let granted = |create_revision: i64| {
        registry.lock().promote(key, lease_id);
        WaitOutcome::Granted {
            token: u64::try_from(create_revision).ok().map(FencingToken::from),
        }
    };
    let standing = registry.lock().standing(key, lease_id);
    let mut waiter = match standing {
        Some(Standing::Holds(create_revision)) => return Ok(granted(create_revision)),
        Some(Standing::Waits {
            create_revision,
            mode,
            limit,
            ahead: Some(ahead),
        }) => Some(Waiter {
            create_revision,
            mode,
            limit,
            ahead,
        }),
        _ => None,
    };
    let watch = &subscription.watch;
    loop {
        let changed = watch.changed.notified();
        tokio::pin!(changed);
        // Registered before looking, so no change of the feed is missed.
        changed.as_mut().enable();
        let heard = match &mut waiter {
            None => Heard::Reread,
            Some(waiter) => {
                let feed = watch.feed();
                if feed.from == 0 {
                    Heard::Nothing
                } else if waiter.ahead.revision < feed.dropped {
                    Heard::Reread
                } else {
                    let own = Gone::Entry(lease_id);
                    let mut heard = Heard::Nothing;
                    for (_, gone) in feed.after(waiter.ahead.revision) {
                        if *gone == own {
                            heard = Heard::Gone;
                            break;
                        }
                        waiter.ahead.deleted(*gone);
                    }
                    waiter.ahead.revision = waiter.ahead.revision.max(feed.seen);
                    drop(feed);
                    if matches!(heard, Heard::Nothing)
                        && waiter.ahead.holds(waiter.mode, waiter.limit)
                    {
                        heard = Heard::Holds;
                    }
                    heard
                }
            }
        };
        match heard {
            Heard::Holds => {
                let create_revision = waiter.as_ref().map_or(0, |w| w.create_revision);
                return Ok(granted(create_revision));
            }
            Heard::Gone => return Ok(WaitOutcome::Changed),
            Heard::Reread => {
                // Only once the feed's watch is open: the read then covers
                // every deletion the watch may not deliver.
                if watch.feed().from == 0 {
                    changed.await;
                    continue;
                }
                match place(store, key, lease_id).await? {
                    Some(placed) => waiter = Some(placed),
                    None => return Ok(WaitOutcome::Changed),
                }
                continue;
            }
            Heard::Nothing => {
                if let Some(waiter) = &waiter {
                    registry
                        .lock()
                        .set_ahead(key, lease_id, Some(waiter.ahead.clone()));
                }
                changed.await;
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
