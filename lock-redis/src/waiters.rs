//! Grant notifications: one subscription per lock channel, shared by every
//! waiter of the store, fed by the connection's RESP3 push messages; and
//! the grants heard for this store's waiting entries, kept until their
//! waiter asks, so that a grant heard before the wait began is not lost.
//! A grant wakes only the waiters of the leases it names, not every waiter
//! of the channel in this process (which would look, find nothing and go
//! back to sleep at every handoff).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lock_core::{FencingToken, LeaseId};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a channel stays subscribed after its last waiter left: a waiter
/// waiting again in a loop finds it still subscribed and saves a round
/// trip.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// Past this many records, records older than [`RECORD_AGE`] are dropped
/// (their waits, if any, look at the store instead).
const MAX_RECORDS: usize = 4096;
const RECORD_AGE: Duration = Duration::from_secs(600);

/// Waiters by channel, and this store's waiting entries by lease id.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    state: Mutex<State>,
    /// Serializes SUBSCRIBE and UNSUBSCRIBE so they reach the server in the
    /// order the registry decided them.
    pub(crate) ops: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    channels: HashMap<Vec<u8>, Channel>,
    records: HashMap<LeaseId, Record>,
    /// The waits in progress, by lease id: what wakes them.
    listeners: HashMap<LeaseId, Listener>,
    /// Bumped whenever the connection is lost: notifications may have been
    /// missed.
    epoch: u64,
}

#[derive(Debug)]
struct Channel {
    waiters: usize,
    /// Since when the subscription is known to be active.
    subscribed_since: Option<Instant>,
    /// Bumped whenever the last waiter leaves; an unsubscription scheduled
    /// then goes ahead only if nothing happened since.
    idle: u64,
}

/// What wakes the waits of one lease (one, unless a caller waits twice at
/// once).
#[derive(Debug)]
struct Listener {
    notify: Arc<Notify>,
    waits: usize,
}

/// A waiting entry of this store: since when grants for it are heard (the
/// acquisition's send time, or a look at the store), and the grant heard.
#[derive(Debug)]
struct Record {
    since: Instant,
    granted: Option<Option<FencingToken>>,
}

/// What [`Waiters::enter`] found.
pub(crate) struct Entered {
    pub(crate) notify: Arc<Notify>,
    pub(crate) epoch: u64,
}

/// Where a waiting entry stands, as far as notifications tell.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// A grant was heard.
    Granted(Option<FencingToken>),
    /// The connection was lost since the wait began.
    Changed,
    /// Nothing yet, and every grant since the entry was queued would have
    /// been heard.
    Covered,
    /// Nothing yet, but a grant may have been missed: look at the store.
    Uncovered,
}

impl Waiters {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is complete before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that an acquisition that may queue `lease_id` is sent now:
    /// grants for it are kept from now on.
    pub(crate) fn queueing(&self, lease_id: LeaseId, sent: Instant) {
        let mut state = self.state();
        if state.records.len() >= MAX_RECORDS {
            state
                .records
                .retain(|_, record| sent.saturating_duration_since(record.since) < RECORD_AGE);
        }
        state.records.insert(
            lease_id,
            Record {
                since: sent,
                granted: None,
            },
        );
    }

    /// Forgets `lease_id` (it was not queued, or it was released).
    pub(crate) fn forget(&self, lease_id: LeaseId) {
        self.state().records.remove(&lease_id);
    }

    /// Registers a waiter for `lease_id` on `channel`.
    pub(crate) fn enter(&self, channel: &[u8], lease_id: LeaseId) -> Entered {
        let mut state = self.state();
        let epoch = state.epoch;
        state
            .channels
            .entry(channel.to_vec())
            .or_insert_with(|| Channel {
                waiters: 0,
                subscribed_since: None,
                idle: 0,
            })
            .waiters += 1;
        let listener = state.listeners.entry(lease_id).or_insert_with(|| Listener {
            notify: Arc::new(Notify::new()),
            waits: 0,
        });
        listener.waits += 1;
        Entered {
            notify: listener.notify.clone(),
            epoch,
        }
    }

    /// Since when `channel` is subscribed (call under `ops`).
    pub(crate) fn subscribed_since(&self, channel: &[u8]) -> Option<Instant> {
        self.state()
            .channels
            .get(channel)
            .and_then(|entry| entry.subscribed_since)
    }

    /// Records that `channel` is subscribed from `since` (call under
    /// `ops`).
    pub(crate) fn mark_subscribed(&self, channel: &[u8], since: Instant) {
        if let Some(entry) = self.state().channels.get_mut(channel) {
            entry.subscribed_since = Some(since);
        }
    }

    /// What was heard for `lease_id` since the wait that began at `epoch`,
    /// with `channel` subscribed since `subscribed` (a grant heard is taken).
    pub(crate) fn heard(&self, lease_id: LeaseId, epoch: u64, subscribed: Instant) -> Heard {
        let mut state = self.state();
        if state.epoch != epoch {
            return Heard::Changed;
        }
        match state.records.get_mut(&lease_id) {
            Some(record) => match record.granted.take() {
                Some(token) => {
                    state.records.remove(&lease_id);
                    Heard::Granted(token)
                }
                None if record.since >= subscribed => Heard::Covered,
                None => Heard::Uncovered,
            },
            None => Heard::Uncovered,
        }
    }

    /// A look at the store at `at` found `lease_id` waiting: grants since
    /// `subscribed` are heard.
    pub(crate) fn covered(&self, lease_id: LeaseId, subscribed: Instant) {
        let mut state = self.state();
        let record = state.records.entry(lease_id).or_insert(Record {
            since: subscribed,
            granted: None,
        });
        record.since = record.since.max(subscribed);
    }

    /// Unregisters a waiter of `lease_id`. Returns the idle mark to pass to
    /// [`take_idle`](Self::take_idle) after [`LINGER`] when it was the last
    /// waiter of a subscribed channel.
    pub(crate) fn leave(&self, channel: &[u8], lease_id: LeaseId) -> Option<u64> {
        let mut state = self.state();
        if let Entry::Occupied(mut listener) = state.listeners.entry(lease_id) {
            listener.get_mut().waits -= 1;
            if listener.get().waits == 0 {
                listener.remove();
            }
        }
        let Entry::Occupied(mut entry) = state.channels.entry(channel.to_vec()) else {
            return None;
        };
        let channel = entry.get_mut();
        channel.waiters = channel.waiters.saturating_sub(1);
        if channel.waiters > 0 {
            return None;
        }
        if channel.subscribed_since.is_none() {
            entry.remove();
            return None;
        }
        channel.idle += 1;
        Some(channel.idle)
    }

    /// Removes `channel` if it stayed without waiters since `idle` was
    /// handed out; returns whether it did (then the caller unsubscribes,
    /// still under `ops`).
    pub(crate) fn take_idle(&self, channel: &[u8], idle: u64) -> bool {
        let mut state = self.state();
        match state.channels.entry(channel.to_vec()) {
            Entry::Occupied(entry) if entry.get().waiters == 0 && entry.get().idle == idle => {
                entry.remove();
                true
            }
            _ => false,
        }
    }

    /// Handles a push message from the connection: a grant message records
    /// the grants of this store's entries and wakes their waiters; a lost
    /// connection wakes everyone, since messages may be lost until it is
    /// back.
    pub(crate) fn on_push(&self, push: &PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return;
                };
                let mut state = self.state();
                for grant in payload.split(|byte| *byte == b' ') {
                    let Some((lease_id, token)) = parse_grant(grant) else {
                        continue;
                    };
                    if let Some(record) = state.records.get_mut(&lease_id) {
                        record.granted = Some(token);
                        if let Some(listener) = state.listeners.get(&lease_id) {
                            listener.notify.notify_waiters();
                        }
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::debug!("redis connection lost; waking every waiter to look again");
                let mut state = self.state();
                state.epoch += 1;
                for entry in state.channels.values_mut() {
                    // Resubscribed by the connection once it is back, but
                    // not known to be: the next wait subscribes again.
                    entry.subscribed_since = None;
                }
                for listener in state.listeners.values() {
                    listener.notify.notify_waiters();
                }
            }
            _ => {}
        }
    }

    /// How many channels are registered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().channels.len()
    }
}

/// One `<lease id>:<token>` of a grant message (the token empty when the
/// entry mints none).
fn parse_grant(grant: &[u8]) -> Option<(LeaseId, Option<FencingToken>)> {
    let text = std::str::from_utf8(grant).ok()?;
    let (lease_id, token) = text.split_once(':')?;
    let lease_id = lease_id.parse().ok()?;
    let token = if token.is_empty() {
        None
    } else {
        Some(FencingToken::from(token.parse::<u64>().ok()?))
    };
    Some((lease_id, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &[u8], payload: String) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(channel.to_vec()),
                Value::BulkString(payload.into_bytes()),
            ],
        }
    }

    #[test]
    fn the_last_waiter_schedules_the_unsubscription() {
        let waiters = Waiters::default();
        let (first, second) = (LeaseId::random(), LeaseId::random());
        waiters.enter(b"c", first);
        waiters.mark_subscribed(b"c", Instant::now());
        waiters.enter(b"c", second);
        assert!(waiters.subscribed_since(b"c").is_some());
        assert_eq!(waiters.leave(b"c", first), None);
        let idle = waiters.leave(b"c", second).expect("last waiter");
        // A waiter came and went in between: the old mark is stale.
        waiters.enter(b"c", first);
        let newer = waiters.leave(b"c", first).expect("last again");
        assert!(!waiters.take_idle(b"c", idle));
        assert!(waiters.take_idle(b"c", newer));
        assert_eq!(waiters.len(), 0);
        assert!(waiters.state().listeners.is_empty());
    }

    #[test]
    fn unsubscribed_channels_go_at_once() {
        let waiters = Waiters::default();
        let lease = LeaseId::random();
        waiters.enter(b"c", lease);
        assert_eq!(waiters.leave(b"c", lease), None);
        assert_eq!(waiters.len(), 0);
    }

    #[tokio::test]
    async fn a_grant_heard_before_the_wait_is_kept_for_it() {
        let waiters = Waiters::default();
        let mine = LeaseId::random();
        let subscribed = Instant::now();
        waiters.queueing(mine, subscribed);
        let entered = waiters.enter(b"c", mine);
        waiters.on_push(&message(
            b"c",
            format!("{}:42 {}:", LeaseId::random(), mine),
        ));
        assert_eq!(
            waiters.heard(mine, entered.epoch, subscribed),
            Heard::Granted(None)
        );
        // Taken: heard once.
        assert_eq!(
            waiters.heard(mine, entered.epoch, subscribed),
            Heard::Uncovered
        );
        let other = LeaseId::random();
        waiters.queueing(other, subscribed);
        waiters.on_push(&message(b"c", format!("{other}:7")));
        assert_eq!(
            waiters.heard(other, entered.epoch, subscribed),
            Heard::Granted(Some(FencingToken::from(7u64)))
        );
    }

    #[tokio::test]
    async fn a_grant_wakes_only_the_waiter_of_its_lease() {
        let waiters = Waiters::default();
        let now = Instant::now();
        let (granted, passed_over) = (LeaseId::random(), LeaseId::random());
        waiters.queueing(granted, now);
        waiters.queueing(passed_over, now);
        let granted_wait = waiters.enter(b"c", granted);
        let passed_over_wait = waiters.enter(b"c", passed_over);
        let woken = granted_wait.notify.notified();
        let not_woken = passed_over_wait.notify.notified();
        tokio::pin!(woken, not_woken);
        woken.as_mut().enable();
        not_woken.as_mut().enable();
        waiters.on_push(&message(b"c", format!("{granted}:9")));
        // A zero timeout polls once: ready, or not.
        assert!(tokio::time::timeout(Duration::ZERO, woken).await.is_ok());
        assert!(
            tokio::time::timeout(Duration::ZERO, not_woken)
                .await
                .is_err()
        );
        assert_eq!(
            waiters.heard(passed_over, passed_over_wait.epoch, now),
            Heard::Covered
        );
    }

    #[tokio::test]
    async fn grants_of_other_clients_are_not_kept() {
        let waiters = Waiters::default();
        let entered = waiters.enter(b"c", LeaseId::random());
        let foreign = LeaseId::random();
        waiters.on_push(&message(b"c", format!("{foreign}:1")));
        assert_eq!(
            waiters.heard(foreign, entered.epoch, Instant::now()),
            Heard::Uncovered
        );
        assert!(waiters.state().records.is_empty());
    }

    #[tokio::test]
    async fn a_wait_is_covered_only_when_subscribed_before_the_entry_was_queued() {
        let waiters = Waiters::default();
        let lease = LeaseId::random();
        let before = Instant::now();
        let sent = before + Duration::from_millis(5);
        waiters.queueing(lease, sent);
        let entered = waiters.enter(b"c", lease);
        assert_eq!(waiters.heard(lease, entered.epoch, before), Heard::Covered);
        let later = sent + Duration::from_millis(5);
        assert_eq!(waiters.heard(lease, entered.epoch, later), Heard::Uncovered);
        waiters.covered(lease, later);
        assert_eq!(waiters.heard(lease, entered.epoch, later), Heard::Covered);
    }

    #[tokio::test]
    async fn a_lost_connection_wakes_every_waiter_with_a_change() {
        let waiters = Waiters::default();
        let lease = LeaseId::random();
        let now = Instant::now();
        waiters.queueing(lease, now);
        let entered = waiters.enter(b"c", lease);
        waiters.mark_subscribed(b"c", now);
        let notified = entered.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        waiters.on_push(&PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        });
        tokio::time::timeout(Duration::from_secs(1), notified)
            .await
            .expect("woken");
        assert_eq!(waiters.heard(lease, entered.epoch, now), Heard::Changed);
        assert_eq!(waiters.subscribed_since(b"c"), None);
    }
}
