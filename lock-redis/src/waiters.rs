//! Change notifications: one subscription per channel, shared by every
//! waiter of the store, fed by the connection's RESP3 push messages.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

/// How long a channel stays subscribed after its last waiter left: a waiter
/// re-polling in a loop finds it still subscribed and saves a round trip.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// Waiters by channel.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    channels: Mutex<HashMap<Vec<u8>, Channel>>,
    /// Serializes SUBSCRIBE and UNSUBSCRIBE so they reach the server in the
    /// order the registry decided them.
    pub(crate) ops: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Channel {
    waiters: usize,
    notify: Arc<Notify>,
    subscribed: bool,
    /// Bumped whenever the last waiter leaves; an unsubscription scheduled
    /// then goes ahead only if nothing happened since.
    idle: u64,
}

/// What [`Waiters::enter`] found.
pub(crate) struct Entered {
    pub(crate) notify: Arc<Notify>,
    pub(crate) subscribed: bool,
}

impl Waiters {
    fn channels(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Channel>> {
        // Every update under this lock is complete before it can panic.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a waiter on `channel`.
    pub(crate) fn enter(&self, channel: &[u8]) -> Entered {
        let mut channels = self.channels();
        let entry = channels.entry(channel.to_vec()).or_insert_with(|| Channel {
            waiters: 0,
            notify: Arc::new(Notify::new()),
            subscribed: false,
            idle: 0,
        });
        entry.waiters += 1;
        Entered {
            notify: entry.notify.clone(),
            subscribed: entry.subscribed,
        }
    }

    /// Whether `channel` is subscribed (call under `ops`).
    pub(crate) fn is_subscribed(&self, channel: &[u8]) -> bool {
        self.channels()
            .get(channel)
            .is_some_and(|entry| entry.subscribed)
    }

    /// Records that `channel` is subscribed (call under `ops`).
    pub(crate) fn mark_subscribed(&self, channel: &[u8]) {
        if let Some(entry) = self.channels().get_mut(channel) {
            entry.subscribed = true;
        }
    }

    /// Unregisters a waiter. Returns the idle mark to pass to
    /// [`take_idle`](Self::take_idle) after [`LINGER`] when it was the last
    /// waiter of a subscribed channel.
    pub(crate) fn leave(&self, channel: &[u8]) -> Option<u64> {
        let mut channels = self.channels();
        let Entry::Occupied(mut entry) = channels.entry(channel.to_vec()) else {
            return None;
        };
        let state = entry.get_mut();
        state.waiters = state.waiters.saturating_sub(1);
        if state.waiters > 0 {
            return None;
        }
        if !state.subscribed {
            entry.remove();
            return None;
        }
        state.idle += 1;
        Some(state.idle)
    }

    /// Removes `channel` if it stayed without waiters since `idle` was
    /// handed out; returns whether it did (then the caller unsubscribes,
    /// still under `ops`).
    pub(crate) fn take_idle(&self, channel: &[u8], idle: u64) -> bool {
        let mut channels = self.channels();
        match channels.entry(channel.to_vec()) {
            Entry::Occupied(entry) if entry.get().waiters == 0 && entry.get().idle == idle => {
                entry.remove();
                true
            }
            _ => false,
        }
    }

    /// Handles a push message from the connection: a message on a channel
    /// wakes its waiters; a lost connection wakes everyone, since messages
    /// may be lost until it is back.
    pub(crate) fn on_push(&self, push: &PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(Value::BulkString(channel)) = push.data.first()
                    && let Some(entry) = self.channels().get(channel.as_slice())
                {
                    entry.notify.notify_waiters();
                }
            }
            PushKind::Disconnection => {
                tracing::debug!("redis connection lost; waking every waiter to re-poll");
                for entry in self.channels().values() {
                    entry.notify.notify_waiters();
                }
            }
            _ => {}
        }
    }

    /// How many channels are registered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.channels().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_waiter_schedules_the_unsubscription() {
        let waiters = Waiters::default();
        let first = waiters.enter(b"c");
        assert!(!first.subscribed);
        waiters.mark_subscribed(b"c");
        let second = waiters.enter(b"c");
        assert!(second.subscribed);
        assert_eq!(waiters.leave(b"c"), None);
        let idle = waiters.leave(b"c").expect("last waiter");
        // A waiter came and went in between: the old mark is stale.
        waiters.enter(b"c");
        let newer = waiters.leave(b"c").expect("last again");
        assert!(!waiters.take_idle(b"c", idle));
        assert!(waiters.take_idle(b"c", newer));
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn unsubscribed_channels_go_at_once() {
        let waiters = Waiters::default();
        waiters.enter(b"c");
        assert_eq!(waiters.leave(b"c"), None);
        assert_eq!(waiters.len(), 0);
    }

    #[tokio::test]
    async fn messages_wake_the_channel_waiters() {
        let waiters = Waiters::default();
        let entered = waiters.enter(b"c");
        let notified = entered.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        waiters.on_push(&PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(b"c".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ],
        });
        tokio::time::timeout(Duration::from_secs(1), notified)
            .await
            .expect("woken");
    }
}
