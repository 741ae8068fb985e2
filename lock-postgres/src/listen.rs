//! One LISTEN connection per store, shared by all its waiters.
//!
//! Releases `NOTIFY` the store's channel with the key as payload; the
//! listener task wakes one waiter of that key in this process. Notifications sent while
//! the connection is down are lost (sqlx reconnects, but LISTEN/NOTIFY has
//! no replay), so every reconnect wakes every waiter, and waiters re-poll
//! on a timer anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

/// The waiters of each key, and whether LISTEN is in place.
pub(crate) struct Listener {
    waiters: Mutex<HashMap<String, Waiters>>,
    listening: watch::Sender<bool>,
    task: Mutex<Option<AbortHandle>>,
}

struct Waiters {
    notify: Arc<Notify>,
    count: usize,
}

/// A registration for one key's changes; unregisters on drop.
pub(crate) struct Interest<'a> {
    listener: &'a Listener,
    key: String,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Interest<'_> {
    fn drop(&mut self) {
        let mut waiters = self.listener.waiters();
        if let Some(entry) = waiters.get_mut(&self.key) {
            entry.count -= 1;
            if entry.count == 0 {
                waiters.remove(&self.key);
            }
        }
    }
}

impl Listener {
    pub(crate) fn new() -> Self {
        Self {
            waiters: Mutex::new(HashMap::new()),
            listening: watch::Sender::new(false),
            task: Mutex::new(None),
        }
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Waiters>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `key`.
    pub(crate) fn interest(&self, key: &str) -> Interest<'_> {
        let mut waiters = self.waiters();
        let entry = waiters.entry(key.to_owned()).or_insert_with(|| Waiters {
            notify: Arc::new(Notify::new()),
            count: 0,
        });
        entry.count += 1;
        Interest {
            listener: self,
            key: key.to_owned(),
            notify: entry.notify.clone(),
        }
    }

    /// Wakes one waiter of `key`: only one can win the lock, and a crowd
    /// of losers would cost a statement each per release. If the woken
    /// waiter loses anyway, or was cancelled, the others still re-poll on
    /// their timers, and the next release wakes another.
    fn wake(&self, key: &str) {
        if let Some(entry) = self.waiters().get(key) {
            entry.notify.notify_one();
        }
    }

    fn wake_all(&self) {
        for entry in self.waiters().values() {
            entry.notify.notify_waiters();
        }
    }

    /// Starts the listener task if it is not running, and waits up to
    /// `max` for LISTEN to be in place.
    pub(crate) async fn ensure_started(
        self: &Arc<Self>,
        pool: &PgPool,
        channel: &str,
        max: Duration,
    ) {
        {
            let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
            if task.is_none() {
                let listener = Arc::downgrade(self);
                let handle = tokio::spawn(run(listener, pool.clone(), channel.to_owned()));
                *task = Some(handle.abort_handle());
            }
        }
        let mut listening = self.listening.subscribe();
        let _ = tokio::time::timeout(max, listening.wait_for(|on| *on)).await;
    }

    /// Whether the LISTEN connection is up.
    pub(crate) fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.take() {
            task.abort();
        }
    }
}

/// The listener task: (re)connects, LISTENs, dispatches notifications.
/// Ends when the store is dropped.
async fn run(listener: std::sync::Weak<Listener>, pool: PgPool, channel: String) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connection = async {
            let mut connection = PgListener::connect_with(&pool).await?;
            connection.listen(&channel).await?;
            Ok::<_, sqlx::Error>(connection)
        }
        .await;
        let mut connection = match connection {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "LISTEN connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        {
            let Some(listener) = listener.upgrade() else {
                return;
            };
            listener.listening.send_replace(true);
            // Whatever was released while we were not listening is unknown.
            listener.wake_all();
        }
        loop {
            let received = connection.try_recv().await;
            let Some(listener) = listener.upgrade() else {
                return;
            };
            match received {
                Ok(Some(notification)) => listener.wake(notification.payload()),
                Ok(None) => {
                    // The connection dropped; sqlx reconnects and re-LISTENs
                    // on the next call. Notifications in between are lost.
                    tracing::debug!("LISTEN connection lost; reconnecting");
                    listener.wake_all();
                }
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                    listener.listening.send_replace(false);
                    listener.wake_all();
                    break;
                }
            }
        }
    }
}
