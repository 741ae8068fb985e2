//! One watch per lock key that this store's waiters wait on: a feed of the
//! deletions in the key's range, shared by every waiting `lock()` call of
//! the store on that key.
//!
//! etcd delivers the events of a watch that starts at a past revision only
//! once its catch-up loop ran (every 100 ms): a waiter that opened its own
//! watch from the revision of its queue read would often hear its turn up
//! to 100 ms late. So the feed's watch starts at the current revision (it
//! is in step at once) and stays open while anyone waits on the key (and
//! [`LINGER`] after); a waiter whose queue read predates the watch reads the
//! queue once more, then follows the feed.
//!
//! The rules it keeps:
//!
//! - [`Feed::from`] is the first revision whose deletions the current watch
//!   surely delivers: the revision of its creation reply, plus one. Every
//!   deletion after [`Feed::dropped`] and up to [`Feed::seen`] is in
//!   `recent`; a waiter whose knowledge is older than `dropped` reads the
//!   queue again.
//! - A watch that fails (connection lost, cancelled by etcd) is opened
//!   again by the feed's task with a backoff; the new watch's `from` drops
//!   everything before it, so every waiter reads the queue again.
//! - The task ends, and leaves the store's map, once nobody subscribed for
//!   [`LINGER`]; subscribing and leaving happen under the map's lock, so a
//!   waiter never subscribes to a feed whose task is gone.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use etcd_client::{WatchFilterType, WatchOptions};
use lock_core::LeaseId;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conn::Conn;
use crate::layout::Layout;

/// How long a feed stays open with nobody waiting on its key.
const LINGER: Duration = Duration::from_secs(2);
/// The most deletions a feed remembers.
const MAX_RECENT: usize = 4096;
/// The longest wait before opening a failed watch again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The store's feeds, by lock key.
#[derive(Default)]
pub(crate) struct Watches {
    keys: Mutex<HashMap<String, Arc<KeyWatch>>>,
}

/// A deleted key of a lock key's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    Entry(LeaseId),
    /// The previous version's lock key.
    Legacy,
}

/// What a feed has received.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    /// The first revision whose deletions the current watch delivers; 0
    /// while no watch is open.
    pub(crate) from: i64,
    /// Deletions up to this revision are all in `recent` (or dropped).
    pub(crate) seen: i64,
    /// Deletions before or at this revision may be missing from `recent`.
    pub(crate) dropped: i64,
    /// Deletions received, by revision.
    pub(crate) recent: VecDeque<(i64, Gone)>,
}

impl Feed {
    /// The deletions after `revision`.
    pub(crate) fn after(&self, revision: i64) -> impl Iterator<Item = &(i64, Gone)> {
        let start = self.recent.partition_point(|(at, _)| *at <= revision);
        self.recent.range(start..)
    }
}

/// One lock key's feed.
pub(crate) struct KeyWatch {
    feed: Mutex<Feed>,
    /// Woken when the feed changes (a watch opened, deletions arrived).
    pub(crate) changed: Notify,
    subscribers: AtomicUsize,
}

impl KeyWatch {
    pub(crate) fn feed(&self) -> MutexGuard<'_, Feed> {
        // Updates under the lock are complete before they can panic.
        self.feed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A waiter's hold on a feed; leaving (dropping it) lets the feed end.
pub(crate) struct Subscription {
    pub(crate) watch: Arc<KeyWatch>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.watch.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Watches {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, Arc<KeyWatch>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a feed of `key` is open (someone of this store waits on it,
    /// or did a moment ago).
    pub(crate) fn is_watched(&self, key: &str) -> bool {
        self.keys().contains_key(key)
    }

    /// Subscribes to `key`'s feed, starting its task when there is none.
    /// `None` outside a tokio runtime.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        conn: &Conn,
        layout: &Layout,
        key: &str,
    ) -> Option<Subscription> {
        let mut keys = self.keys();
        if let Some(watch) = keys.get(key) {
            watch.subscribers.fetch_add(1, Ordering::AcqRel);
            return Some(Subscription {
                watch: watch.clone(),
            });
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let watch = Arc::new(KeyWatch {
            feed: Mutex::new(Feed::default()),
            changed: Notify::new(),
            subscribers: AtomicUsize::new(1),
        });
        keys.insert(key.to_owned(), watch.clone());
        let task = FeedTask {
            watches: Arc::downgrade(self),
            conn: conn.clone(),
            layout: layout.clone(),
            key: key.to_owned(),
            watch: watch.clone(),
        };
        runtime.spawn(task.run());
        Some(Subscription { watch })
    }
}

/// The task that keeps one key's watch open and fills its feed.
struct FeedTask {
    watches: Weak<Watches>,
    conn: Conn,
    layout: Layout,
    key: String,
    watch: Arc<KeyWatch>,
}

impl FeedTask {
    async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        let mut idle_since: Option<Instant> = None;
        loop {
            if self.leave_if_idle(&mut idle_since) {
                return;
            }
            let (start, end) = self.layout.range(&self.key);
            let options = WatchOptions::new()
                .with_range(end)
                .with_filters([WatchFilterType::NoPut]);
            let opened = self
                .conn
                .call(|client| {
                    let (mut watches, start) = (client.watch_client(), start.clone());
                    let options = options.clone();
                    async move { watches.watch(start, Some(options)).await }
                })
                .await;
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(key = %self.key, %error, "opening the queue's watch failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    () = tokio::time::sleep(LINGER / 2) => {
                        if self.leave_if_idle(&mut idle_since) {
                            return;
                        }
                        continue;
                    }
                };
                let reply = match message {
                    Ok(Some(reply)) if !reply.canceled() => reply,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::debug!(key = %self.key, %error, "the queue's watch broke; opening it again");
                        break;
                    }
                };
                backoff = Duration::from_millis(50);
                let mut feed = self.watch.feed();
                if reply.created() {
                    let revision = reply.header().map_or(0, |header| header.revision());
                    // Everything before the watch is unknown to it.
                    feed.recent.clear();
                    feed.from = revision + 1;
                    feed.seen = revision;
                    feed.dropped = revision;
                }
                for event in reply.events() {
                    let Some(kv) = event.kv() else { continue };
                    let gone = match self.layout.entry_of(kv.key()) {
                        Some((_, lease_id)) => Gone::Entry(lease_id),
                        None => Gone::Legacy,
                    };
                    let revision = kv.mod_revision();
                    if revision <= feed.seen {
                        continue;
                    }
                    feed.recent.push_back((revision, gone));
                    if feed.recent.len() > MAX_RECENT
                        && let Some((oldest, _)) = feed.recent.pop_front()
                    {
                        feed.dropped = oldest;
                    }
                }
                if let Some((last, _)) = feed.recent.back() {
                    feed.seen = feed.seen.max(*last);
                }
                drop(feed);
                self.watch.changed.notify_waiters();
                if self.leave_if_idle(&mut idle_since) {
                    return;
                }
            }
            // No watch: waiters wait for the next one (and then read again).
            {
                let mut feed = self.watch.feed();
                feed.from = 0;
            }
            self.watch.changed.notify_waiters();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Leaves the store's map once nobody subscribed for [`LINGER`] (or the
    /// store is gone); whether the task should end.
    fn leave_if_idle(&self, idle_since: &mut Option<Instant>) -> bool {
        let Some(watches) = self.watches.upgrade() else {
            return true;
        };
        if self.watch.subscribers.load(Ordering::Acquire) > 0 {
            *idle_since = None;
            return false;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < LINGER {
            return false;
        }
        let mut keys = watches.keys();
        if self.watch.subscribers.load(Ordering::Acquire) > 0 {
            *idle_since = None;
            return false;
        }
        if keys
            .get(&self.key)
            .is_some_and(|watch| Arc::ptr_eq(watch, &self.watch))
        {
            keys.remove(&self.key);
        }
        true
    }
}
