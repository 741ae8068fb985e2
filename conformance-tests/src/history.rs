//! The history checker: records what every client saw and checks that the
//! locks behaved as locks.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lock_core::{FencingToken, LeaseId, LockGuard};
use tokio::time::Instant;

/// What happened, as one client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A lock was granted; `deadline` is its local deadline.
    Granted {
        /// The grant's fencing token.
        token: Option<FencingToken>,
        /// The guard's `valid_until` right after the grant.
        deadline: Duration,
    },
    /// The holder saw its deadline move (a renewal got through).
    Renewed {
        /// The new deadline.
        deadline: Duration,
    },
    /// The lock's warning fired.
    Warned,
    /// The guard reported the lock lost; `deadline` is the last deadline the
    /// holder had seen.
    Expired {
        /// The last deadline seen before expiry.
        deadline: Duration,
    },
    /// The holder is about to release (recorded before the store is asked).
    Releasing,
    /// A release finished; `acted` says whether the store changed anything.
    Released {
        /// Whether the store reported the lease released (not "not held").
        acted: bool,
    },
    /// The holder wrote to the fenced register.
    RegisterWrite {
        /// The token offered.
        token: FencingToken,
        /// Whether the register accepted it.
        accepted: bool,
    },
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, since the history started.
    pub at: Duration,
    /// The lock key.
    pub key: String,
    /// Which client (locker owner and task).
    pub client: String,
    /// The lease it concerns.
    pub lease: LeaseId,
    /// What happened.
    pub kind: EventKind,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10.3?} {} {} lease {}…: {:?}",
            self.at,
            self.key,
            self.client,
            &self.lease.to_string()[..8],
            self.kind
        )
    }
}

/// A history of events from many clients, with real (tokio) timestamps.
#[derive(Debug)]
pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// What a check should allow for.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Whether faults were injected (process pauses, partitions): then
    /// overlapping holders are expected and only fencing is checked.
    pub faults_injected: bool,
    /// How late an expiry may be observed after its deadline (scheduling
    /// delay of the observing task).
    pub expiry_tolerance: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            faults_injected: false,
            expiry_tolerance: Duration::from_millis(100),
        }
    }
}

/// A broken rule, with the slice of history that shows it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The rule that was broken.
    pub rule: String,
    /// The events around the violation.
    pub slice: Vec<Event>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "history violation: {}", self.rule)?;
        for event in &self.slice {
            writeln!(f, "  {event}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

impl History {
    /// An empty history starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    fn events(&self) -> MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }

    /// Records an event about `guard` now.
    pub fn record(&self, guard: &LockGuard, client: &str, kind: EventKind) {
        self.record_lease(guard.key(), guard.lease_id(), client, kind);
    }

    /// Records an event about a lease now.
    pub fn record_lease(&self, key: &str, lease: LeaseId, client: &str, kind: EventKind) {
        let at = self.since_start(Instant::now());
        self.events().push(Event {
            at,
            key: key.to_owned(),
            client: client.to_owned(),
            lease,
            kind,
        });
    }

    /// Records a grant, with the guard's token and deadline.
    pub fn granted(&self, guard: &LockGuard, client: &str) {
        let deadline = guard
            .valid_until()
            .map_or(Duration::ZERO, |until| self.since_start(until));
        let token = guard.fencing_token().cloned();
        self.record(guard, client, EventKind::Granted { token, deadline });
    }

    /// Records the guard's current deadline if it moved, or its expiry.
    pub fn observe(&self, guard: &LockGuard, client: &str, last_deadline: &mut Duration) {
        match guard.valid_until() {
            Some(until) => {
                let deadline = self.since_start(until);
                if deadline > *last_deadline {
                    *last_deadline = deadline;
                    self.record(guard, client, EventKind::Renewed { deadline });
                }
            }
            None => self.record(
                guard,
                client,
                EventKind::Expired {
                    deadline: *last_deadline,
                },
            ),
        }
    }

    /// Every event so far, in recording order.
    pub fn snapshot(&self) -> Vec<Event> {
        self.events().clone()
    }

    /// Checks every rule:
    ///
    /// 1. fencing tokens strictly increase per key in grant order;
    /// 2. the register accepted tokens only in increasing order;
    /// 3. without faults, no two holders' `[grant, release or deadline)`
    ///    intervals overlap;
    /// 4. every expiry was observed no later than its deadline (plus the
    ///    tolerance);
    /// 5. without faults, a release that changed the store came from the
    ///    key's latest grant.
    ///
    /// # Errors
    ///
    /// The first [`Violation`] found, with its slice of history.
    pub fn check(&self, options: CheckOptions) -> Result<(), Violation> {
        let events = self.snapshot();
        let mut by_key: HashMap<&str, Vec<&Event>> = HashMap::new();
        for event in &events {
            by_key.entry(&event.key).or_default().push(event);
        }
        for key_events in by_key.values() {
            check_tokens(key_events)?;
            check_register(key_events)?;
            check_expiry(key_events, options.expiry_tolerance)?;
            if !options.faults_injected {
                check_exclusion(key_events)?;
                check_releases(key_events)?;
            }
        }
        Ok(())
    }
}

fn violation(rule: String, events: &[&Event], around: usize) -> Violation {
    let from = around.saturating_sub(6);
    let to = (around + 6).min(events.len());
    Violation {
        rule,
        slice: events[from..to].iter().map(|e| (*e).clone()).collect(),
    }
}

fn check_tokens(events: &[&Event]) -> Result<(), Violation> {
    let mut last: Option<(&FencingToken, usize)> = None;
    for (i, event) in events.iter().enumerate() {
        if let EventKind::Granted {
            token: Some(token), ..
        } = &event.kind
        {
            if let Some((previous, _)) = last
                && token <= previous
            {
                return Err(violation(
                    format!(
                        "fencing token {token} granted after {previous} on key {}",
                        event.key
                    ),
                    events,
                    i,
                ));
            }
            last = Some((token, i));
        }
    }
    Ok(())
}

fn check_register(events: &[&Event]) -> Result<(), Violation> {
    let mut last: Option<&FencingToken> = None;
    for (i, event) in events.iter().enumerate() {
        if let EventKind::RegisterWrite {
            token,
            accepted: true,
        } = &event.kind
        {
            if last.is_some_and(|last| token <= last) {
                return Err(violation(
                    format!("the fenced register accepted stale token {token}"),
                    events,
                    i,
                ));
            }
            last = Some(token);
        }
    }
    Ok(())
}

fn check_expiry(events: &[&Event], tolerance: Duration) -> Result<(), Violation> {
    for (i, event) in events.iter().enumerate() {
        if let EventKind::Expired { deadline } = event.kind
            && deadline > Duration::ZERO
            && event.at > deadline + tolerance
        {
            return Err(violation(
                format!(
                    "expiry observed at {:?}, after the deadline {deadline:?} (tolerance {tolerance:?})",
                    event.at
                ),
                events,
                i,
            ));
        }
    }
    Ok(())
}

/// Each holder's interval: from its grant to its release or expiry,
/// bounded by the last deadline it saw.
fn check_exclusion(events: &[&Event]) -> Result<(), Violation> {
    struct Interval {
        start: Duration,
        end: Duration,
        index: usize,
    }
    let mut open: HashMap<LeaseId, (Duration, Duration, usize)> = HashMap::new();
    let mut intervals = Vec::new();
    for (i, event) in events.iter().enumerate() {
        match &event.kind {
            EventKind::Granted { deadline, .. } => {
                open.insert(event.lease, (event.at, *deadline, i));
            }
            EventKind::Renewed { deadline } => {
                if let Some(entry) = open.get_mut(&event.lease) {
                    entry.1 = entry.1.max(*deadline);
                }
            }
            EventKind::Releasing | EventKind::Expired { .. } => {
                if let Some((start, deadline, index)) = open.remove(&event.lease) {
                    intervals.push(Interval {
                        start,
                        end: event.at.min(deadline),
                        index,
                    });
                }
            }
            _ => {}
        }
    }
    for (_, (start, deadline, index)) in open {
        intervals.push(Interval {
            start,
            end: deadline,
            index,
        });
    }
    intervals.sort_by_key(|interval| interval.start);
    for pair in intervals.windows(2) {
        if pair[1].start < pair[0].end {
            return Err(violation(
                format!(
                    "two holders at once: one held [{:?}, {:?}), the next was granted at {:?}",
                    pair[0].start, pair[0].end, pair[1].start
                ),
                events,
                pair[1].index,
            ));
        }
    }
    Ok(())
}

fn check_releases(events: &[&Event]) -> Result<(), Violation> {
    let mut current: Option<LeaseId> = None;
    for (i, event) in events.iter().enumerate() {
        match event.kind {
            EventKind::Granted { .. } => current = Some(event.lease),
            EventKind::Released { acted: true } if current != Some(event.lease) => {
                return Err(violation(
                    "a release changed the store for a lease that was not the latest grant".into(),
                    events,
                    i,
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "k";

    fn grant(history: &History, lease: LeaseId, token: u64, deadline_ms: u64) {
        history.record_lease(
            KEY,
            lease,
            "c",
            EventKind::Granted {
                token: Some(FencingToken::from(token)),
                deadline: Duration::from_millis(deadline_ms),
            },
        );
    }

    async fn at(ms: u64, start: Instant) {
        tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_handoff_passes() {
        let history = History::new();
        let (a, b) = (LeaseId::random(), LeaseId::random());
        grant(&history, a, 1, 1000);
        at(100, history.start).await;
        history.record_lease(KEY, a, "c", EventKind::Releasing);
        at(110, history.start).await;
        grant(&history, b, 2, 1110);
        assert!(history.check(CheckOptions::default()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn two_live_holders_are_a_violation() {
        let history = History::new();
        let (a, b) = (LeaseId::random(), LeaseId::random());
        grant(&history, a, 1, 1000);
        at(500, history.start).await;
        grant(&history, b, 2, 1500);
        let violation = history.check(CheckOptions::default()).unwrap_err();
        assert!(violation.rule.contains("two holders"), "{violation}");
        assert_eq!(violation.slice.len(), 2);
        // With faults injected, overlap is expected and only fencing counts.
        let faults = CheckOptions {
            faults_injected: true,
            ..CheckOptions::default()
        };
        assert!(history.check(faults).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_past_its_deadline_overlaps_the_next() {
        let history = History::new();
        let (a, b) = (LeaseId::random(), LeaseId::random());
        grant(&history, a, 1, 300);
        at(200, history.start).await;
        history.record_lease(
            KEY,
            a,
            "c",
            EventKind::Renewed {
                deadline: Duration::from_millis(900),
            },
        );
        at(600, history.start).await;
        grant(&history, b, 2, 1600);
        assert!(history.check(CheckOptions::default()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_going_backwards_are_a_violation() {
        let history = History::new();
        let (a, b) = (LeaseId::random(), LeaseId::random());
        grant(&history, a, 5, 100);
        at(200, history.start).await;
        grant(&history, b, 5, 300);
        let violation = history.check(CheckOptions::default()).unwrap_err();
        assert!(
            violation.rule.contains("fencing token 5 granted after 5"),
            "{violation}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_register_write_and_a_late_expiry_are_violations() {
        let history = History::new();
        let lease = LeaseId::random();
        for token in [3u64, 2] {
            let token = FencingToken::from(token);
            let kind = EventKind::RegisterWrite {
                token,
                accepted: true,
            };
            history.record_lease(KEY, lease, "c", kind);
        }
        let violation = history.check(CheckOptions::default()).unwrap_err();
        assert!(violation.rule.contains("stale token 2"), "{violation}");

        let history = History::new();
        at(500, history.start).await;
        let kind = EventKind::Expired {
            deadline: Duration::from_millis(300),
        };
        history.record_lease(KEY, lease, "c", kind);
        let violation = history.check(CheckOptions::default()).unwrap_err();
        assert!(violation.rule.contains("after the deadline"), "{violation}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_acting_on_another_lease_is_a_violation() {
        let history = History::new();
        let (a, b) = (LeaseId::random(), LeaseId::random());
        grant(&history, a, 1, 100);
        at(200, history.start).await;
        grant(&history, b, 2, 1200);
        history.record_lease(KEY, a, "c", EventKind::Released { acted: true });
        let violation = history.check(CheckOptions::default()).unwrap_err();
        assert!(
            violation.rule.contains("not the latest grant"),
            "{violation}"
        );
    }
}
