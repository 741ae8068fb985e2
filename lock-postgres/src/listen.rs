//! The store's one LISTEN connection, and the waits it wakes.
//!
//! A release that promotes waiting entries sends one notification per
//! promoted entry, payload `<seq>:<lease id in hex>:<key>`. The listener
//! task hands each to the [`wait_for_grant`](lock_core::LeaseStore::wait_for_grant)
//! call of that lease id in this process, if any, and records it for the
//! entries this store queued, so that a grant heard while no call waits is
//! not lost.
//!
//! Notifications sent while the connection is down are lost (LISTEN /
//! NOTIFY has no replay). Each LISTEN in place is an *epoch*: every
//! (re)connection wakes every wait with `Changed`, and a wait whose entry
//! was last looked at in another epoch (or never, by this store) looks at
//! its position once after subscribing, so no grant falls between the two.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use lock_core::{FencingToken, LeaseId, WaitOutcome};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How long an entry queued through this store is remembered without news:
/// after that a wait looks at its position again.
const REMEMBER: Duration = Duration::from_secs(600);

/// The LISTEN connection's state and the waits of this process.
pub(crate) struct Listener {
    state: Mutex<State>,
    /// `Some(epoch)` while LISTEN is in place.
    listening: watch::Sender<Option<u64>>,
    task: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct State {
    /// The `wait_for_grant` calls in progress, by lease id.
    waits: HashMap<LeaseId, Arc<Slot>>,
    /// Entries this store queued (or a wait looked at), by lease id.
    known: HashMap<LeaseId, Known>,
    /// When `known` is next pruned of old entries.
    prune_at: usize,
    /// The last epoch handed out.
    epoch: u64,
}

/// What is known of a waiting entry.
struct Known {
    key: String,
    /// The epoch whose notifications cover every grant of the entry since
    /// it was queued or last looked at; `None` when no LISTEN covered it.
    covered: Option<u64>,
    /// The grant heard for it, with its token.
    granted: Option<u64>,
    since: Instant,
}

/// One wait: what it heard, and its wake-up.
struct Slot {
    key: String,
    heard: Mutex<Option<WaitOutcome>>,
    wake: Notify,
}

impl Slot {
    fn tell(&self, outcome: WaitOutcome) {
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        // A grant is never overwritten by a later "something changed".
        if !matches!(*heard, Some(WaitOutcome::Granted { .. })) {
            *heard = Some(outcome);
        }
        drop(heard);
        self.wake.notify_one();
    }

    fn take(&self) -> Option<WaitOutcome> {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// A registered wait; unregisters on drop.
pub(crate) struct Registration<'a> {
    listener: &'a Listener,
    lease_id: LeaseId,
    slot: Arc<Slot>,
}

impl Registration<'_> {
    /// Waits for news until `deadline`: `None` at the deadline.
    pub(crate) async fn heard(&self, deadline: Instant) -> Option<WaitOutcome> {
        loop {
            let woken = self.slot.wake.notified();
            if let Some(outcome) = self.slot.take() {
                return Some(outcome);
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return self.slot.take();
            }
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut state = self.listener.state();
        if state
            .waits
            .get(&self.lease_id)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot))
        {
            state.waits.remove(&self.lease_id);
        }
    }
}

/// A parsed notification.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Promotion<'a> {
    pub(crate) seq: u64,
    pub(crate) lease_id: LeaseId,
    pub(crate) key: &'a str,
}

/// Reads `<seq>:<lease id in hex>:<key>`.
pub(crate) fn parse(payload: &str) -> Option<Promotion<'_>> {
    let (seq, rest) = payload.split_once(':')?;
    let (lease_id, key) = rest.split_once(':')?;
    Some(Promotion {
        seq: seq.parse().ok()?,
        lease_id: lease_id.parse().ok()?,
        key,
    })
}

impl Listener {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            listening: watch::Sender::new(None),
            task: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is complete before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the listener task if it is not running; does not wait.
    pub(crate) fn start(self: &Arc<Self>, pool: &PgPool, channel: &str) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.is_none() {
            let listener = Arc::downgrade(self);
            let handle = tokio::spawn(run(listener, pool.clone(), channel.to_owned()));
            *task = Some(handle.abort_handle());
        }
    }

    /// The current epoch, while LISTEN is in place.
    pub(crate) fn epoch(&self) -> Option<u64> {
        *self.listening.borrow()
    }

    /// Waits until LISTEN is in place, at most until `deadline`.
    pub(crate) async fn listening(&self, deadline: Instant) -> Option<u64> {
        let mut listening = self.listening.subscribe();
        let up = tokio::time::timeout_at(deadline, listening.wait_for(Option::is_some)).await;
        match up {
            Ok(Ok(epoch)) => *epoch,
            _ => None,
        }
    }

    /// Remembers an entry this store queued; `covered` is the epoch that
    /// was in place before the request was sent.
    pub(crate) fn queued(&self, key: &str, lease_id: LeaseId, covered: Option<u64>) {
        let now = Instant::now();
        let mut state = self.state();
        state.known.insert(
            lease_id,
            Known {
                key: key.to_owned(),
                covered,
                granted: None,
                since: now,
            },
        );
        if state.known.len() > state.prune_at {
            state
                .known
                .retain(|_, known| now.duration_since(known.since) < REMEMBER);
            state.prune_at = (2 * state.known.len()).max(1024);
        }
    }

    /// Forgets an entry: it holds, or is gone.
    pub(crate) fn forget(&self, lease_id: LeaseId) {
        let mut state = self.state();
        if !state.known.is_empty() {
            state.known.remove(&lease_id);
        }
    }

    /// Registers a wait for `lease_id` on `key`; what was heard before is
    /// in [`Listener::granted`].
    pub(crate) fn register(&self, key: &str, lease_id: LeaseId) -> Registration<'_> {
        let slot = Arc::new(Slot {
            key: key.to_owned(),
            heard: Mutex::new(None),
            wake: Notify::new(),
        });
        self.state().waits.insert(lease_id, slot.clone());
        Registration {
            listener: self,
            lease_id,
            slot,
        }
    }

    /// The token of a grant heard for the entry before its wait began.
    pub(crate) fn granted(&self, key: &str, lease_id: LeaseId) -> Option<u64> {
        let state = self.state();
        state
            .known
            .get(&lease_id)
            .filter(|known| known.key == key)
            .and_then(|known| known.granted)
    }

    /// Whether every grant of the entry since it was last looked at was
    /// sent while `epoch` was listening.
    pub(crate) fn covers(&self, key: &str, lease_id: LeaseId, epoch: u64) -> bool {
        self.state()
            .known
            .get(&lease_id)
            .is_some_and(|known| known.key == key && known.covered == Some(epoch))
    }

    /// Records that the entry's position was looked at while `epoch` was
    /// listening.
    pub(crate) fn looked_at(&self, key: &str, lease_id: LeaseId, epoch: u64) {
        let now = Instant::now();
        let mut state = self.state();
        let known = state.known.entry(lease_id).or_insert_with(|| Known {
            key: key.to_owned(),
            covered: None,
            granted: None,
            since: now,
        });
        if known.key == key {
            known.covered = Some(epoch);
        }
    }

    /// A release promoted an entry.
    fn promoted(&self, promotion: &Promotion<'_>) {
        let mut state = self.state();
        if let Some(known) = state.known.get_mut(&promotion.lease_id)
            && known.key == promotion.key
        {
            known.granted = Some(promotion.seq);
        }
        if let Some(slot) = state.waits.get(&promotion.lease_id)
            && slot.key == promotion.key
        {
            slot.tell(WaitOutcome::Granted {
                token: Some(FencingToken::from(promotion.seq)),
            });
        }
    }

    /// LISTEN went down or came back: what was sent meanwhile is unknown.
    fn wake_all(&self) {
        for slot in self.state().waits.values() {
            slot.tell(WaitOutcome::Changed);
        }
    }

    fn set_listening(&self, up: bool) {
        let epoch = if up {
            let mut state = self.state();
            state.epoch += 1;
            Some(state.epoch)
        } else {
            None
        };
        self.listening.send_replace(epoch);
        self.wake_all();
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
async fn run(listener: Weak<Listener>, pool: PgPool, channel: String) {
    // A connection of its own, outside the store's pool: a LISTEN
    // connection never goes back, and must not starve the statements.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut backoff = Duration::from_millis(50);
    loop {
        let connection = async {
            let mut connection = PgListener::connect_with(&pool).await?;
            // Reconnect here, where the epoch changes, not inside recv.
            connection.eager_reconnect(false);
            connection.listen(&channel).await?;
            Ok::<_, sqlx::Error>(connection)
        }
        .await;
        let mut connection = match connection {
            Ok(connection) => connection,
            Err(error) => {
                if listener.strong_count() == 0 {
                    return;
                }
                tracing::warn!(%error, "LISTEN connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        match listener.upgrade() {
            Some(listener) => listener.set_listening(true),
            None => return,
        }
        loop {
            let received = connection.try_recv().await;
            let Some(listener) = listener.upgrade() else {
                return;
            };
            match received {
                Ok(Some(notification)) => match parse(notification.payload()) {
                    Some(promotion) => listener.promoted(&promotion),
                    None => tracing::debug!(
                        payload = notification.payload(),
                        "ignoring a notification that names no entry"
                    ),
                },
                Ok(None) => {
                    tracing::debug!("LISTEN connection lost; reconnecting");
                    listener.set_listening(false);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                    listener.set_listening(false);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_sequence_the_lease_and_the_key() {
        let lease_id = LeaseId::from_u128(0xabc);
        let payload = format!("42:{lease_id}:a:b\nc");
        assert_eq!(
            parse(&payload),
            Some(Promotion {
                seq: 42,
                lease_id,
                key: "a:b\nc"
            })
        );
        for garbage in [
            "",
            "42",
            "42:xyz:k",
            "-1:00000000000000000000000000000abc:k",
        ] {
            assert_eq!(parse(garbage), None, "{garbage:?}");
        }
    }
}
